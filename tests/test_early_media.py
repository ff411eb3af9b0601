"""Early media (RFC 3960): a PBX's 183 with SDP bridges the call before the
answer, so the secure caller hears the PBX's ringback; in memory, through
the real SIF and tel side with a recording cig-relay link."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.tel.bridge import BridgeState
from cryptify.client.session import Incoming
from cryptify.protocols.bridge_control import BridgeAdd, BridgeRemove, BridgeUpdate
from cryptify.protocols.umsg import message
from tests.cig_support import ANSWER, SifTelCase

MOVED = ANSWER.replace(b"192.0.2.7", b"192.0.2.8").replace(b"m=audio 6000", b"m=audio 6002")


class EarlyMediaTests(SifTelCase):
    def commands(self) -> list[type]:
        return [command for command, _ in self.bridge.sent]

    def test_183_bridges_before_the_answer(self) -> None:
        """183 with SDP: BridgeAdd at once (the caller hears the PBX), ringing
        sent; the 200 with the same SDP: BridgeUpdate, then talk."""
        invite = self.answer_invite((100, 183))
        self.assertEqual(self.commands(), [BridgeAdd])
        add = self.bridge.sent[0][1]
        self.assertEqual((add["pbx_host"], add["pbx_remote_port"]), ("192.0.2.7", 6000))
        self.assertEqual([m.type for m in self.out], ["ringing"])
        self.assertEqual(self.calls.calls[0].state.value, "RING")
        self.pbx_responds(invite, 200, ANSWER)
        self.assertEqual(self.commands(), [BridgeAdd, BridgeUpdate])
        self.assertEqual([m.type for m in self.out], ["ringing", "talk"])
        self.assertEqual(self.calls.calls[0].state.value, "ANSWER")

    def test_180_then_183(self) -> None:
        """A 180 first, then a 183 with SDP: one ringing, the bridge at the 183."""
        invite = self.answer_invite((100, 180))
        self.assertEqual(self.commands(), [])
        self.pbx_responds(invite, 183, ANSWER)
        self.pbx_responds(invite, 183, MOVED)  # a later early SDP changes nothing
        self.assertEqual(self.commands(), [BridgeAdd])
        self.assertEqual([m.type for m in self.out], ["ringing"])

    def test_answer_moves_the_media(self) -> None:
        """The 200's SDP differs from the 183's: the bridge follows the 200."""
        invite = self.answer_invite((183,))
        self.pbx_responds(invite, 200, MOVED)
        update = self.bridge.sent[-1][1]
        self.assertEqual((update["pbx_host"], update["pbx_remote_port"]), ("192.0.2.8", 6002))

    def test_answer_without_sdp_keeps_the_early_media(self) -> None:
        """A 200 without a body: the 183's SDP was the answer."""
        invite = self.answer_invite((183,))
        self.pbx_responds(invite, 200)
        update = self.bridge.sent[-1][1]
        self.assertEqual((update["pbx_host"], update["pbx_remote_port"]), ("192.0.2.7", 6000))
        self.assertEqual([m.type for m in self.out], ["ringing", "talk"])

    def test_answer_while_the_early_bridge_is_being_added(self) -> None:
        """The 200 comes before cig-relay answered the early BridgeAdd: talk waits for it."""
        self.bridge.hold_adds = True
        invite = self.answer_invite((183,))
        self.pbx_responds(invite, 200, ANSWER)
        self.assertEqual([m.type for m in self.out], ["ringing"])
        self.bridge.held.pop().callback({})
        self.assertEqual([m.type for m in self.out], ["ringing", "talk"])
        self.assertEqual(self.commands(), [BridgeAdd, BridgeUpdate])

    def test_rejected_after_early_media(self) -> None:
        """486 after the 183: the early bridge is removed, the caller hung up."""
        invite = self.answer_invite((183,))
        self.pbx_responds(invite, 486)
        self.assertEqual(self.commands(), [BridgeAdd, BridgeRemove])
        self.assertEqual(self.out[-1].type, "hangup")
        self.assertEqual(self.out[-1]["code"], "busy")

    def test_caller_hangs_up_during_early_media(self) -> None:
        """The caller gives up while hearing the ringback: CANCEL, bridge removed."""
        self.answer_invite((183,))
        self.tel.handle(Incoming(message("hangup", session="s1", code="normal")))
        self.assertEqual(self.channel.messages()[-1].method, "CANCEL")  # type: ignore[union-attr]
        self.assertEqual(self.commands(), [BridgeAdd, BridgeRemove])

    def test_unusable_early_sdp(self) -> None:
        """A 183 whose SDP cannot be bridged: no early media, the answer bridges."""
        invite = self.answer_invite((100,))
        self.pbx_responds(invite, 183, b"v=0\r\no=x 1 1 IN IP4 192.0.2.7\r\ns=-\r\nt=0 0\r\n")
        self.assertEqual(self.commands(), [])
        self.assertEqual(self.tel.active["s1"].bridge.lifecycle.state, BridgeState.NONE)
        self.pbx_responds(invite, 200, ANSWER)
        self.assertEqual(self.commands(), [BridgeAdd])
        self.assertEqual([m.type for m in self.out], ["ringing", "talk"])

    def test_180_with_sdp_is_early_media_too(self) -> None:
        """Any 18x with an SDP body counts (some PBXs send 180 with SDP)."""
        invite = self.answer_invite((100,))
        self.pbx_responds(invite, 180, ANSWER)
        self.assertEqual(self.commands(), [BridgeAdd])
        self.assertEqual([m.type for m in self.out], ["ringing"])


class NewPbxStreamTests(SynchronousTestCase):
    """A new SSRC from the PBX restarts the playout on its own timeline."""

    def test_new_ssrc_after_early_media(self) -> None:
        from cryptify.cig.relay.bridge_core import CallBridge, PbxSide, SecureSide
        from cryptify.protocols.rtp import encode_rtp

        key = bytes(range(30))
        bridge = CallBridge(
            "c1", SecureSide("192.0.2.99", 146, b"T" * 8, key, key), PbxSide("192.0.2.7", 6000)
        )
        for i in range(50):  # a second of ringback, timestamps 0..
            bridge.from_pbx(encode_rtp(0, i, 160 * i, 0x11, b"\x10" * 160, False))
            bridge.tick()
        for i in range(20):  # the answering phone: another SSRC, timestamps from 0 again
            bridge.from_pbx(encode_rtp(0, i, 160 * i, 0x22, b"\x20" * 160, False))
            bridge.tick()
        stats = bridge.snapshot()
        self.assertEqual(stats["late"], 0, stats)
        self.assertEqual(stats["resyncs"], 1, stats)
        rtcp = b"\x80\xc8\x00\x06" + b"\x00" * 24  # an RTCP sender report: not a new stream
        bridge.from_pbx(rtcp)
        self.assertEqual(bridge.snapshot()["resyncs"], 1)
