"""Hold and resume across the CIG, in memory.

SDP directions (hypothesis on hostile bodies), the bridge's held
directions, the SIF answering a PBX's hold and re-INVITing for the secure
side's, the tel side between UMSG ``hold``/``resume`` and the SIF, the
CRS passing ``hold``/``resume`` on, and the client's half.
"""

from __future__ import annotations

import itertools
import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.calls import CallTable, StubTelSide
from cryptify.cig.relay.bridge_core import (
    BridgeSpecError,
    CallBridge,
    PbxSide,
    SecureSide,
)
from cryptify.cig.sif.core import Sif
from cryptify.client.calls import HELD, RESUMED, TALKING, Call, CallAgent, CallError
from cryptify.client.session import Incoming
from cryptify.config import load_cig_config
from cryptify.crs.calls.core import SessionTable
from cryptify.crs.trace import TraceHub
from cryptify.protocols.bridge_control import BridgeUpdate
from cryptify.protocols.rtp import encode_rtp
from cryptify.protocols.sip.message import Request, Response, parse_datagram, response_to
from cryptify.protocols.sip.sdp import (
    DIRECTIONS,
    SdpError,
    mirror,
    parse_sdp,
    receives,
    render_sdp,
    sends,
    stream_direction,
    with_direction,
)
from cryptify.protocols.umsg import message
from tests.cig_support import ANSWER, SifTelCase
from tests.fakes import Att, FakeChannel, FakeParties, FakeRelay, attached, material
from tests.sip_support import FIXTURES, OFFER, invite, reinvite_request

KEY = bytes(range(30))


def sdp(session_attr: str = "", media_attr: str = "", address: str = "192.0.2.1") -> bytes:
    return (
        f"v=0\r\no=pbx 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n"
        + (f"a={session_attr}\r\n" if session_attr else "")
        + "m=audio 6000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
        + (f"a={media_attr}\r\n" if media_attr else "")
    ).encode()


class DirectionTests(SynchronousTestCase):
    def test_media_level(self) -> None:
        for direction in DIRECTIONS:
            self.assertEqual(stream_direction(parse_sdp(sdp(media_attr=direction))), direction)
        self.assertEqual(stream_direction(parse_sdp(sdp())), "sendrecv")

    def test_session_level_unless_the_stream_has_its_own(self) -> None:
        """RFC 8866 6.7: a session-level direction holds for streams without one."""
        self.assertEqual(stream_direction(parse_sdp(sdp("sendonly"))), "sendonly")
        self.assertEqual(stream_direction(parse_sdp(sdp("inactive", "sendrecv"))), "sendrecv")

    def test_rfc2543_hold(self) -> None:
        """c=0.0.0.0: the writer will not receive: sendonly (inactive if it did not send)."""
        self.assertEqual(stream_direction(parse_sdp(sdp(address="0.0.0.0"))), "sendonly")
        held = sdp(media_attr="recvonly", address="0.0.0.0")
        self.assertEqual(stream_direction(parse_sdp(held)), "inactive")

    def test_mirror_and_flags(self) -> None:
        mirrored = ["sendrecv", "recvonly", "sendonly", "inactive"]
        self.assertEqual([mirror(d) for d in DIRECTIONS], mirrored)
        self.assertEqual([sends(d) for d in DIRECTIONS], [True, True, False, False])
        self.assertEqual([receives(d) for d in DIRECTIONS], [True, False, True, False])

    def test_with_direction(self) -> None:
        """Our offer on hold: the direction set, the version one up, the rest kept."""
        ours = parse_sdp(ANSWER)
        held = parse_sdp(render_sdp(with_direction(ours, "sendonly")))
        self.assertEqual(stream_direction(held), "sendonly")
        self.assertEqual(int(held.version), int(ours.version) + 1)
        self.assertEqual(held.audio().formats, ours.audio().formats)  # type: ignore[union-attr]
        with self.assertRaises(SdpError):
            with_direction(ours, "sideways")

    @given(
        st.lists(
            st.sampled_from(
                [*DIRECTIONS, "sendrecv ", "SENDONLY", "sendonly:x", "recvonly:", "", "ptime:20"]
            ),
            max_size=4,
        ),
        st.lists(st.sampled_from([*DIRECTIONS, "foo", "rtpmap:8 PCMA/8000"]), max_size=4),
        st.sampled_from(["192.0.2.1", "0.0.0.0", "::", "0.0.0.0/127"]),
    )
    def test_any_direction_lines(
        self, session_attrs: list[str], media_attrs: list[str], address: str
    ) -> None:
        """Any mix of direction-like lines: a known direction, or SdpError, never
        anything else; the last valid media-level line wins, then the session's."""
        kind = "IP6" if ":" in address else "IP4"
        body = (
            f"v=0\r\no=pbx 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN {kind} {address}\r\nt=0 0\r\n"
            + "".join(f"a={a}\r\n" for a in session_attrs)
            + "m=audio 6000 RTP/AVP 8\r\n"
            + "".join(f"a={a}\r\n" for a in media_attrs)
        ).encode()
        try:
            found = stream_direction(parse_sdp(body))
        except SdpError:
            return
        self.assertIn(found, DIRECTIONS)
        own = [a for a in media_attrs if a in DIRECTIONS]
        shared = [a for a in session_attrs if a in DIRECTIONS]
        expected = own[-1] if own else shared[-1] if shared else "sendrecv"
        if address.split("/")[0] in ("0.0.0.0", "::"):
            expected = "sendonly" if sends(expected) else "inactive"
        self.assertEqual(found, expected)

    @given(st.binary(max_size=600))
    def test_hostile_bodies(self, body: bytes) -> None:
        """Anything at all: a direction or SdpError."""
        try:
            found = stream_direction(parse_sdp(b"v=0\r\no=a 1 1 IN IP4 1.2.3.4\r\n" + body))
        except SdpError:
            return
        self.assertIn(found, DIRECTIONS)


def bridge(direction: str = "sendrecv") -> CallBridge:
    secure = SecureSide("192.0.2.99", 146, b"T" * 8, KEY, KEY)
    return CallBridge("c1", secure, PbxSide("192.0.2.7", 6000, direction=direction))


def client_packet(bridge_: CallBridge, seq: int) -> bytes:
    """An SRTP packet from the secure side, protected with the bridge's own receive key."""
    from pylibsrtp import Policy, Session

    session = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    del bridge_
    return session.protect(encode_rtp(0, seq, 160 * seq, 77, b"\x11" * 160, False))


class BridgeDirectionTests(SynchronousTestCase):
    def test_recvonly_sends_nothing_to_the_pbx(self) -> None:
        """The PBX holds the call: secure audio is counted as held, not sent."""
        held = bridge("recvonly")
        self.assertIsNone(held.from_secure(client_packet(held, 1)))
        self.assertEqual((held.counters.held, held.counters.pbx_tx), (1, 0))
        held.update_pbx(PbxSide("192.0.2.7", 6000))
        self.assertIsNotNone(held.from_secure(client_packet(held, 2)))

    def test_sendonly_plays_nothing_from_the_pbx(self) -> None:
        """The secure side holds it: PBX audio is dropped, the secure side gets silence."""
        held = bridge("sendonly")
        for i in range(5):
            held.from_pbx(encode_rtp(8, i, 160 * i, 5, b"\x55" * 160, False))
        self.assertEqual(held.counters.held, 5)
        self.assertEqual(held.counters.pbx_rx, 5)
        self.assertEqual(len(held.tick()), 8 + 12 + 160 + 10)

    def test_inactive_both(self) -> None:
        held = bridge("inactive")
        self.assertIsNone(held.from_secure(client_packet(held, 1)))
        held.from_pbx(encode_rtp(8, 1, 160, 5, b"\x55" * 160, False))
        self.assertEqual(held.counters.held, 2)

    def test_unknown_direction_refused(self) -> None:
        with self.assertRaises(BridgeSpecError):
            bridge("sideways")


class PbxHoldsTests(SynchronousTestCase):
    """The PBX re-INVITEs a call it placed with sendonly/inactive, then sendrecv."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.tel = StubTelSide("answer")
        config = load_cig_config(os.path.join(FIXTURES, "cig-simple.conf"))
        self.sif = Sif(config, self.clock, self.tel, CallTable(self.clock))
        self.channel = FakeChannel()
        self.addCleanup(self.sif.stop)

    def send(self, data: bytes) -> list[Request | Response]:
        before = len(self.channel.sent)
        self.sif.message_received(parse_datagram(data), self.channel)  # type: ignore[arg-type]
        return self.channel.messages()[before:]

    def answered(self) -> Response:
        out = self.send(invite())
        ok = out[-1]
        assert isinstance(ok, Response) and ok.status == 200
        return ok

    def reinvite(self, ok: Response, cseq: int, body: bytes) -> Response:
        [response] = self.send(reinvite_request(ok, cseq, body))
        assert isinstance(response, Response)
        return response

    def test_hold_and_resume(self) -> None:
        """sendonly -> recvonly answered, inactive -> inactive, c=0.0.0.0 ->
        recvonly, sendrecv -> sendrecv; each goes to the tel side, and
        direction_of follows (our side of the leg)."""
        ok = self.answered()
        [call] = [c for c, _ in self.tel.legs]
        cases = [
            (OFFER.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n"), "recvonly"),
            (OFFER + "a=inactive\r\n", "inactive"),
            (OFFER.replace("c=IN IP4 192.0.2.1", "c=IN IP4 0.0.0.0"), "recvonly"),
            (OFFER + "a=sendrecv\r\n", "sendrecv"),
        ]
        for cseq, (offer, ours) in enumerate(cases, 2):
            response = self.reinvite(ok, cseq, offer.encode())
            self.assertEqual(response.status, 200)
            self.assertEqual(stream_direction(parse_sdp(response.body)), ours, offer)
            self.assertEqual(self.sif.direction_of(call), ours)
        self.assertEqual(len(self.tel.media_changes), 4)

    def test_reinvite_while_ours_is_pending_gets_491(self) -> None:
        ok = self.answered()
        [call] = [c for c, _ in self.tel.legs]
        self.assertTrue(self.sif.hold(call, True))
        self.assertFalse(self.sif.hold(call, False))  # one at a time
        response = self.reinvite(ok, 2, (OFFER + "a=sendonly\r\n").encode())
        self.assertEqual(response.status, 491)


class SecureHoldsTests(SifTelCase):
    """The secure party's hold and resume become re-INVITEs; the PBX's answer the bridge's."""

    def pbx_answers(self, request: Request, status: int = 200, direction: str = "") -> None:
        body = ANSWER + (f"a={direction}\r\n".encode() if direction else b"")
        extra: tuple[tuple[str, str], ...] = (("Contact", "<sip:101@192.0.2.50:5070>"),)
        if status == 200:
            extra += (("Content-Type", "application/sdp"),)
        response = response_to(
            request.headers, status, extra=extra, body=body if status == 200 else b""
        )
        self.real.message_received(response, self.channel)

    def requests(self) -> list[Request]:
        return [m for m in self.channel.messages() if isinstance(m, Request)]

    def test_secure_caller_holds_and_resumes(self) -> None:
        """UMSG hold -> re-INVITE (a=sendonly, next CSeq, same Call-ID and tags)
        -> 200 recvonly -> ACK and BridgeUpdate sendonly; resume -> sendrecv."""
        first = self.answer_invite()
        self.tel.handle(Incoming(message("hold", session="s1")))
        reinvite = self.requests()[-1]
        self.assertEqual((reinvite.method, reinvite.call_id), ("INVITE", first.call_id))
        self.assertEqual(reinvite.cseq.number, first.cseq.number + 1)
        self.assertEqual(reinvite.to.tag, "pbx1")
        self.assertEqual(stream_direction(parse_sdp(reinvite.body)), "sendonly")
        self.pbx_answers(reinvite, direction="recvonly")
        ack = self.requests()[-1]
        self.assertEqual((ack.method, ack.cseq.number), ("ACK", reinvite.cseq.number))
        command, args = self.bridge.sent[-1]
        self.assertEqual((command, args["pbx_direction"]), (BridgeUpdate, "sendonly"))
        self.assertNotIn("hold", [m.type for m in self.out])  # our own hold is not echoed
        self.tel.handle(Incoming(message("resume", session="s1")))
        again = self.requests()[-1]
        self.assertEqual(stream_direction(parse_sdp(again.body)), "sendrecv")
        self.pbx_answers(again)
        self.assertEqual(self.bridge.sent[-1][1]["pbx_direction"], "sendrecv")

    def test_refused_hold_keeps_the_media(self) -> None:
        """A 488 leaves the call as it was; a later hold is sent again."""
        self.answer_invite()
        self.tel.handle(Incoming(message("hold", session="s1")))
        updates = len(self.bridge.sent)
        self.pbx_answers(self.requests()[-1], 488)
        self.assertEqual(len(self.bridge.sent), updates)
        self.assertEqual(self.real.direction_of(self.calls.calls[0]), "sendrecv")
        self.tel.handle(Incoming(message("hold", session="s1")))
        again = self.requests()[-1]
        self.assertEqual(
            (again.method, stream_direction(parse_sdp(again.body))), ("INVITE", "sendonly")
        )
        self.pbx_answers(again, direction="recvonly")
        self.tel.handle(Incoming(message("hold", session="s1")))  # held already: nothing sent
        self.assertEqual(self.requests()[-1].method, "ACK")

    def test_pbx_hold_is_told_to_the_secure_side(self) -> None:
        """The PBX's re-INVITE with sendonly: the secure caller gets ``hold``, then ``resume``."""
        first = self.answer_invite()
        ok_to = "<sip:101@pbx.com>;tag=pbx1"
        for cseq, (extra, told) in enumerate((("a=sendonly\r\n", "hold"), ("", "resume")), 5):
            body = ANSWER + extra.encode()
            data = (
                "INVITE sip:127.0.0.1:5060 SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bKpbx{cseq}\r\n"
                f"From: {ok_to}\r\nTo: {first.headers.get('From')}\r\n"
                f"Call-ID: {first.call_id}\r\nCSeq: {cseq} INVITE\r\n"
                "Contact: <sip:101@192.0.2.50:5070>\r\nMax-Forwards: 70\r\n"
                "Content-Type: application/sdp\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            self.real.message_received(parse_datagram(data), self.channel)
            answer = self.channel.messages()[-1]
            assert isinstance(answer, Response)
            self.assertEqual(answer.status, 200)
            self.assertEqual((self.out[-1].type, self.out[-1]["session"]), (told, "s1"))

    def test_call_from_pbx_held_by_the_secure_callee(self) -> None:
        """A call the PBX placed: the secure callee's hold re-INVITEs the PBX's Contact."""
        self.pbx_call()
        self.tel.handle(Incoming(message("hold", session="s9")))
        reinvite = self.requests()[-1]
        self.assertEqual((reinvite.method, reinvite.uri), ("INVITE", "sip:101@192.0.2.1:5060"))
        [leg] = self.real.invites.values()
        self.assertEqual(reinvite.from_.tag, leg.local_tag)
        self.assertEqual(stream_direction(parse_sdp(reinvite.body)), "sendonly")
        self.pbx_answers(reinvite, direction="recvonly")
        self.assertEqual(self.bridge.sent[-1][1]["pbx_direction"], "sendonly")


class CrsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.parties = FakeParties()
        ids = (f"s{i}" for i in itertools.count(1))
        self.table = SessionTable(
            self.parties, FakeRelay(), self.clock, TraceHub(self.clock.seconds), lambda: next(ids)
        )
        for uri in ("tel:+1", "tel:+2"):
            self.parties.online[uri] = Att(uri)
        self.addCleanup(self.table.stop)

    def test_passed_to_the_other_party_while_talking(self) -> None:
        self.table.invite(Att("tel:+1"), 7, "tel:+2", b"mikey")
        self.table.hold("tel:+1", "s1", True)  # not talking yet
        self.table.talk("tel:+2", "s1")
        self.parties.take()
        self.table.hold("tel:+1", "s1", True)
        self.table.hold("tel:+2", "s1", False)
        self.table.hold("tel:+3", "s1", True)  # not a party
        sent = [(u, t, m.get("code")) for u, t, m in self.parties.take()]
        self.assertEqual(
            sent,
            [
                ("tel:+2", "hold", None),
                ("tel:+1", "resume", None),
                ("tel:+3", "error", "not-found"),
            ],
        )

    def test_refused_before_talk(self) -> None:
        self.table.invite(Att("tel:+1"), 7, "tel:+2", b"mikey")
        self.parties.take()
        self.table.hold("tel:+1", "s1", True)
        [(uri, kind, msg)] = self.parties.take()
        self.assertEqual((uri, kind, msg["code"]), ("tel:+1", "error", "unexpected"))


class ClientTests(SynchronousTestCase):
    def test_hold_resume_and_being_held(self) -> None:
        session, out = attached("tel:+1")
        agent = CallAgent(material("tel:+1"), lambda: 0.0, session)
        call = Call("tel:+2", True, TALKING, KEY, session="s1")
        agent.calls["s1"] = call
        agent.hold(call)
        agent.hold(call, False)
        sent = [(m.type, m["session"]) for m in out[-2:]]
        self.assertEqual(sent, [("hold", "s1"), ("resume", "s1")])
        [event] = agent.handle(Incoming(message("hold", session="s1")))
        self.assertEqual((event.kind, call.held), (HELD, True))
        [event] = agent.handle(Incoming(message("resume", session="s1")))
        self.assertEqual((event.kind, call.held), (RESUMED, False))
        ringing = Call("tel:+3", True, "ringing", KEY, session="s2")
        with self.assertRaises(CallError):
            agent.hold(ringing)
