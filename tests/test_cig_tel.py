"""cryptify.cig.tel: secure calls into the PBX, with fakes for the SIF and cig-relay.

A real client CallAgent (KMS-issued keys) places the call, so the CIG's
side verifies and decapsulates a real I_MESSAGE; the SIF, the relay
control link and the UIF session are in-memory doubles.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.internet.defer import succeed
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.calls import Call, CallState, StubTelSide, session_records
from cryptify.cig.route import Router
from cryptify.cig.tel.bridge import PbxMedia, pbx_media
from cryptify.cig.tel.switch import TelSwitch, UifCalls
from cryptify.client.connection import ConnectionEnded
from cryptify.client.session import Answered, Attached, Incoming
from cryptify.config import load_cig_config
from cryptify.protocols.bridge_control import BridgeAdd, BridgeRemove, BridgeUpdate
from cryptify.protocols.sip.message import Request, Response, parse_datagram, response_to
from cryptify.protocols.sip.sdp import parse_sdp
from cryptify.protocols.umsg import Message, message
from tests.cig_support import (
    _INVITES,
    ANSWER,
    CALLEE,
    CALLER,
    CIG,
    FIXTURES,
    TelCase,
    cig_material,
)
from tests.fakes import RecordingLeg


class IncomingTests(TelCase):
    """Invites from secure clients to the PBX."""

    def test_full_call(self) -> None:
        """invite -> SIP leg; ringing; 200 -> BridgeAdd with the SSV key, talk; BYE -> hangup."""
        self.tel.handle(Incoming(self.invite()))
        [(call, leg)] = self.sif.legs
        self.assertEqual(
            (call.in_from, call.in_to, call.out_from, call.out_to, call.state),
            (CALLER, CALLEE, "sip:461111@secure.com", "sip:101@pbx.com", CallState.ROUTED),
        )
        self.assertEqual(call.caller_if_id, "s1")
        leg.trying()
        leg.ringing()
        self.assertEqual(self.types(), ["ringing"])
        leg.answered()
        [(command, args)] = self.bridge.sent
        self.assertIs(command, BridgeAdd)
        key = _INVITES[CALLEE, CALLER][1]
        self.assertEqual(
            args,
            {
                "call": "s1",
                "relay_host": "192.0.2.99",
                "relay_port": 146,
                "tag": b"T" * 8,
                "srtp_tx_key": key,
                "srtp_rx_key": key,
                "pbx_port": 1024,
                "pbx_host": "192.0.2.7",
                "pbx_remote_port": 6000,
                "pbx_codec": "PCMA",
                "pbx_dtmf_pt": 101,
            },
        )
        self.assertEqual(self.types(), ["ringing", "talk"])
        leg.hung_up()
        self.assertEqual(self.types(), ["ringing", "talk", "hangup"])
        self.assertEqual((self.out[-1]["session"], self.out[-1]["code"]), ("s1", "normal"))
        self.assertIs(self.bridge.sent[-1][0], BridgeRemove)
        self.assertEqual(self.tel.active, {})

    def offered(self, codecs: list[str]) -> dict[str, Any]:
        """Invite with ``codecs``, answer: the BridgeAdd arguments."""
        invite = self.invite()
        self.tel.handle(Incoming(attrs.evolve(invite, fields={**invite.fields, "codecs": codecs})))
        [(_, leg)] = self.sif.legs
        leg.answered()
        [(_, args)] = self.bridge.sent
        return args

    def test_opus_offered(self) -> None:
        """A caller offering opus first gets an Opus bridge and ``talk`` naming it."""
        self.assertEqual(self.offered(["opus", "PCMU"])["secure_codec"], "opus")
        self.assertEqual((self.out[-1].type, self.out[-1]["codec"]), ("talk", "opus"))

    def test_unknown_codec_offered(self) -> None:
        """A codec the CIG cannot bridge is passed over for the next one."""
        self.assertEqual(self.offered(["G729", "PCMA"])["secure_codec"], "PCMA")
        self.assertEqual(self.out[-1]["codec"], "PCMA")

    def test_media_moved(self) -> None:
        """A re-INVITE's new media (media_changed) sends BridgeUpdate with the
        new PBX address, codec, DTMF type and direction; on hold (c=0.0.0.0)
        the address stays and only the direction changes, and the secure
        caller is told ``hold``; before the bridge exists nothing is sent."""
        self.tel.handle(Incoming(self.invite()))
        [(call, leg)] = self.sif.legs
        self.tel.media_changed(call)  # not bridged yet
        self.assertEqual(self.bridge.sent, [])
        leg.answered()
        self.sif.sdp = ANSWER.replace(b"192.0.2.7", b"192.0.2.8").replace(
            b"6000 RTP/AVP 8", b"6002 RTP/AVP 0"
        )
        self.tel.media_changed(call)
        command, args = self.bridge.sent[-1]
        self.assertIs(command, BridgeUpdate)
        self.assertEqual(
            args,
            {"call": "s1", "pbx_host": "192.0.2.8", "pbx_remote_port": 6002, "pbx_codec": "PCMU",
             "pbx_dtmf_pt": 101, "pbx_srtp_profile": "", "pbx_direction": "sendrecv"},  # "": RTP
        )  # fmt: skip
        self.sif.sdp = ANSWER.replace(b"192.0.2.7", b"0.0.0.0")
        self.sif.direction = "recvonly"
        self.tel.media_changed(call)
        command, args = self.bridge.sent[-1]
        self.assertEqual((command, args["pbx_direction"]), (BridgeUpdate, "recvonly"))
        self.assertNotIn("pbx_host", args)
        self.assertEqual((self.out[-1].type, self.out[-1]["session"]), ("hold", "s1"))
        leg.hung_up()
        self.tel.media_changed(call)
        self.assertIs(self.bridge.sent[-1][0], BridgeRemove)

    def test_umsg_rows(self) -> None:
        """show umsg: BANG on the invite, GROWL once ringing, TALK, then HANGUP
        for 30 s; TIME counts seconds from the invite; ID is the session."""
        self.tel.handle(Incoming(self.invite()))
        [(_, leg)] = self.sif.legs
        self.assertEqual(self.tel.umsg_rows(), [[CALLER, CALLEE, "BANG", "0", "s1"]])
        leg.ringing()
        self.clock.advance(3)
        self.assertEqual(self.tel.umsg_rows()[0][2:4], ["GROWL", "3"])
        leg.answered()
        self.clock.advance(2)
        self.assertEqual(self.tel.umsg_rows()[0][2:4], ["TALK", "5"])
        leg.hung_up()
        self.assertEqual(self.tel.umsg_rows(), [[CALLER, CALLEE, "HANGUP", "5", "s1"]])
        self.clock.advance(31)
        self.assertEqual(self.tel.umsg_rows(), [])

    def test_own_messages_discarded(self) -> None:
        """A message to the CIG's own number is confirmed (the CRS drops it) and counted."""
        msg = message("message", message="m1", to=CIG, time=1, content=b"hi", **{"from": CALLER})
        self.tel.handle(Incoming(msg))
        self.assertEqual((self.out[-1].type, self.out[-1]["message"]), ("delivered", "m1"))
        self.assertEqual(self.tel.discarded, 1)

    def test_hangup_from_secure_side(self) -> None:
        """A UMSG hangup while talking ends the SIP leg and removes the bridge."""
        self.tel.handle(Incoming(self.invite()))
        [(call, leg)] = self.sif.legs
        leg.answered()
        self.tel.handle(Incoming(message("hangup", session="s1", code="normal", who="caller")))
        self.assertEqual(self.sif.hung_up, [call])
        self.assertEqual([c for c, _ in self.bridge.sent], [BridgeAdd, BridgeRemove])
        leg.hung_up()  # the SIF's late report changes nothing
        self.assertEqual(self.types(), ["talk"])

    def test_hangup_before_answer(self) -> None:
        """A UMSG hangup while ringing ends the SIP leg; no bridge was made."""
        self.tel.handle(Incoming(self.invite()))
        [(call, leg)] = self.sif.legs
        leg.ringing()
        self.tel.detached()
        self.assertEqual(self.sif.hung_up, [call])
        self.assertEqual(call.state, CallState.HANGUP)  # the fake SIF sent nothing
        leg.answered()
        self.assertEqual(self.bridge.sent, [])

    def test_rejected_by_pbx(self) -> None:
        """A SIP 486 becomes hangup busy; no bridge."""
        self.tel.handle(Incoming(self.invite()))
        [(call, leg)] = self.sif.legs
        leg.rejected(486)
        self.assertEqual((self.out[-1].type, self.out[-1]["code"]), ("hangup", "busy"))
        self.assertEqual(call.state, CallState.REJECT)
        self.assertEqual(self.bridge.sent, [])

    def test_bridge_refused(self) -> None:
        """A refused BridgeAdd hangs up both legs instead of talking."""
        self.bridge.refuse = True
        self.tel.handle(Incoming(self.invite()))
        [(call, leg)] = self.sif.legs
        leg.answered()
        self.assertEqual(self.sif.hung_up, [call])
        self.assertEqual((self.out[-1].type, self.out[-1]["code"]), ("hangup", "bridge-failed"))
        self.assertEqual(len(self.bridge.sent), 1)
        self.flushLoggedErrors()

    def test_unusable_sdp_answer(self) -> None:
        """A 200 without a usable SDP answer is hung up on both sides."""
        self.sif.sdp = b"garbage"
        self.tel.handle(Incoming(self.invite()))
        [(call, leg)] = self.sif.legs
        leg.answered()
        self.assertEqual(self.sif.hung_up, [call])
        self.assertEqual(self.bridge.sent, [])

    def test_bad_keys(self) -> None:
        """An I_MESSAGE signed by someone other than ``from`` is hung up bad-keys."""
        self.tel.handle(Incoming(self.invite(frm="tel:+469999")))
        self.assertEqual(self.sif.legs, [])
        self.assertEqual((self.out[-1].type, self.out[-1]["code"]), ("hangup", "bad-keys"))
        self.assertEqual(self.calls.calls[0].state, CallState.REJECT)

    def test_replay(self) -> None:
        """The same I_MESSAGE twice: the second is refused as a replay."""
        msg = self.invite()
        self.tel.handle(Incoming(msg))
        self.tel.handle(Incoming(message("invite", **{**dict(msg.fields), "session": "s2"})))
        self.assertEqual(len(self.sif.legs), 1)
        self.assertEqual((self.out[-1].type, self.out[-1]["code"]), ("hangup", "bad-keys"))

    def test_not_routed(self) -> None:
        """An invite no extension map matches is hung up not-found and logged failed."""
        self.tel.handle(Incoming(self.invite(to="tel:+8888")))
        self.assertEqual(self.sif.legs, [])
        self.assertEqual((self.out[-1].type, self.out[-1]["code"]), ("hangup", "not-found"))

    def test_other_events_ignored(self) -> None:
        """Non-invite events and hangups for unknown sessions do nothing."""
        self.tel.handle(Attached(CIG, "crs", 0, "ping", 1000, 0))
        self.tel.handle(Incoming(message("hangup", session="nope", code="normal", who="crs")))
        self.assertEqual((self.out, self.sif.legs), ([], []))

    def test_detached_session_sends_nothing(self) -> None:
        """With the UIF session gone, the SIP leg's reports send nothing."""
        self.tel.handle(Incoming(self.invite()))
        [(_, leg)] = self.sif.legs
        self.session.state = "closed"
        leg.ringing()
        self.assertEqual(self.out, [])


class SdpTests(SynchronousTestCase):
    """The PBX leg read from the SDP answer."""

    def test_media(self) -> None:
        """Address from c=, port, first G.711 codec and telephone-event type."""
        self.assertEqual(pbx_media(ANSWER), PbxMedia("192.0.2.7", 6000, "PCMA", 101))

    def test_unusable(self) -> None:
        """Garbage, no audio or a refused stream give None."""
        self.assertIsNone(pbx_media(b"x"))
        self.assertIsNone(pbx_media(ANSWER.replace(b"audio 6000", b"audio 0")))


class ThroughSifTests(TelCase):
    """The tel side over the real SIF (fake channel): SIP messages, show call, session.log."""

    def setUp(self) -> None:
        super().setUp()
        from cryptify.cig.calls import StubTelSide
        from cryptify.cig.sif.core import Sif
        from tests.fakes import FakeChannel

        config = load_cig_config(os.path.join(FIXTURES, "cig-simple.conf"))
        self.real = Sif(config, self.clock, StubTelSide(), self.calls)
        self.channel = FakeChannel()
        self.real.channel_to = lambda address: self.channel
        self.real.resolve = lambda host: succeed("192.0.2.50")
        self.tel.sip = self.real
        self.lines: list[str] = []

        def observe(line: str) -> None:
            self.lines.append(line.split(", ")[6])

        session_records.add(observe)
        self.addCleanup(session_records.remove, observe)

    def test_call_through_sif(self) -> None:
        """INVITE to the PBX, 180 -> ringing, 200 -> BridgeAdd and talk, UMSG hangup -> BYE."""
        self.tel.handle(Incoming(self.invite()))
        invite = self.channel.messages()[-1]
        assert isinstance(invite, Request)
        self.assertEqual((invite.method, invite.uri), ("INVITE", "sip:101@pbx.com"))
        offer = parse_sdp(invite.body).audio()
        assert offer is not None
        for status in (100, 180, 200):
            extra: tuple[tuple[str, str], ...] = (("Contact", "<sip:101@192.0.2.50:5070>"),)
            body = ANSWER if status == 200 else b""
            if body:
                extra += (("Content-Type", "application/sdp"),)
            response = response_to(invite.headers, status, to_tag="pbx1", extra=extra, body=body)
            self.real.message_received(response, self.channel)
        self.assertEqual(self.types(), ["ringing", "talk"])
        add = self.bridge.sent[0][1]
        self.assertEqual(
            (add["pbx_port"], add["pbx_host"], add["pbx_remote_port"], add["pbx_codec"]),
            (offer.port, "192.0.2.7", 6000, "PCMA"),
        )
        self.assertEqual(self.calls.rows()[0][4], "ANSWER")
        self.tel.handle(Incoming(message("hangup", session="s1", code="normal", who="caller")))
        bye = self.channel.messages()[-1]
        assert isinstance(bye, Request)
        self.assertEqual(bye.method, "BYE")
        self.assertIs(self.bridge.sent[-1][0], BridgeRemove)
        self.assertEqual(self.calls.rows()[0][4], "HANGUP")
        self.assertEqual(self.lines, ["routing", "routed", "trying", "ringing", "talk", "hangup"])
        self.real.stop()

    def test_call_from_pbx_through_sif(self) -> None:
        """PBX INVITE -> UMSG invite; talk -> BridgeAdd from the PBX's offer, then 200."""
        from tests.sip_support import invite as sip_invite

        self.real.tel = TelSwitch(StubTelSide(), self.tel_calls())
        self.real.message_received(parse_datagram(sip_invite()), self.channel)
        sent = self.out[-1]
        self.assertEqual((sent.type, sent["to"]), ("invite", "tel:+4670123456"))
        relay = {"relay-host": "192.0.2.99", "relay-port": 146, "relay-tag": b"C" * 8}
        self.tel.handle(
            Answered(sent["id"], message("session", id=sent["id"], session="s9", **relay))
        )
        self.tel.handle(Incoming(message("ringing", session="s9")))
        self.tel.handle(Incoming(message("talk", session="s9")))
        statuses = [m.status for m in self.channel.messages() if isinstance(m, Response)]
        self.assertEqual(statuses, [100, 180, 200])
        answer = parse_sdp(self.channel.messages()[-1].body).audio()
        assert answer is not None
        add = self.bridge.sent[0][1]
        self.assertEqual(
            (add["pbx_port"], add["pbx_host"], add["pbx_remote_port"], add["pbx_codec"]),
            (answer.port, "192.0.2.1", 6000, "PCMA"),
        )
        self.assertEqual(self.calls.rows()[0][4], "ANSWER")
        self.tel.handle(Incoming(message("hangup", session="s9", code="normal", who="callee")))
        self.assertEqual(self.channel.messages()[-1].method, "BYE")  # type: ignore[union-attr]
        self.assertIs(self.bridge.sent[-1][0], BridgeRemove)
        self.real.stop()

    def tel_calls(self) -> UifCalls:
        """A UifCalls whose current UmsgTel is this test's."""
        config = load_cig_config(os.path.join(FIXTURES, "cig-simple.conf"))
        found = UifCalls(
            self.clock, FakeUif(self.session), self.real, self.calls, Router(config), self.bridge
        )
        found.tel = self.tel
        return found


class FakeUif:
    """The UIF as UifCalls sees it: key material and a session."""

    def __init__(self, session: Any) -> None:
        self.material: Any = None
        self._session = session

    def session(self) -> Any:
        return self._session


class UifCallsTests(TelCase):
    """UifCalls: the UIF's events to a UmsgTel for the current key material."""

    def make(self) -> tuple[UifCalls, FakeUif]:
        uif = FakeUif(self.session)
        config = load_cig_config(os.path.join(FIXTURES, "cig-simple.conf"))
        return UifCalls(self.clock, uif, self.sif, self.calls, Router(config), self.bridge), uif

    def test_without_keys_ignored(self) -> None:
        """Without key material invites are not answered at all."""
        calls, _ = self.make()
        calls.handle(Incoming(self.invite()))
        self.assertEqual((calls.tel, self.sif.legs, self.out), (None, [], []))

    def test_invite_then_connection_ends(self) -> None:
        """An invite reaches the SIF; the connection ending hangs the SIP leg up."""
        calls, uif = self.make()
        uif.material = cig_material()
        calls.handle(Incoming(self.invite()))
        [(call, _)] = self.sif.legs
        calls.handle(ConnectionEnded("lost"))
        self.assertEqual(self.sif.hung_up, [call])

    def test_umsg_rows_with_descriptor(self) -> None:
        """While attached, show umsg ends with the message descriptor row,
        its TIME counted from the CIG's start; detached, no descriptor."""
        calls, uif = self.make()
        self.clock.advance(7)
        uif.material = cig_material()
        calls.handle(Incoming(self.invite()))
        rows = calls.umsg_rows()
        self.assertEqual([r[2] for r in rows], ["BANG", "ZERO"])
        self.assertEqual(rows[-1], ["ZERO", "ZERO", "ZERO", "7", "umsg"])
        uif._session = None
        self.assertEqual([r[2] for r in calls.umsg_rows()], ["BANG"])

    def test_new_keys_new_tel(self) -> None:
        """New key material replaces the UmsgTel, ending the old one's calls."""
        calls, uif = self.make()
        uif.material = cig_material()
        calls.handle(Incoming(self.invite()))
        first = calls.tel
        uif.material = attrs.evolve(cig_material())
        calls.handle(Attached(CIG, "crs", 0, "ping", 1000, 0))
        self.assertIsNot(calls.tel, first)
        self.assertEqual(len(self.sif.hung_up), 1)


class WiringTests(SynchronousTestCase):
    """The UIF forwards its events, and the cig plugin wires them to UifCalls."""

    def test_uif_forwards_events(self) -> None:
        """Uif.on_call_event gets the client's events; session() is the live session."""
        from cryptify.cig.tel.uif import Uif, store_blob
        from tests.umsg_support import World, WorldConnector

        world = World.make()
        keystore = os.path.join(self.mktemp(), "userdata")
        store_blob(keystore, cig_material().to_blob())
        connector = WorldConnector(world)
        uif = Uif(
            world.clock,
            keystore,
            "crs.test",
            5223,
            connector,
            lambda m: world.client_session(m.uri),
        )
        self.assertIsNone(uif.session())
        events: list[Any] = []
        uif.on_call_event = events.append
        uif.startService()
        self.assertIsInstance(events[0], Attached)
        session = uif.session()
        assert session is not None
        self.assertEqual(session.state, "attached")
        done = uif.stopService()
        connector.flush()
        self.successResultOf(done)

    def test_plugin_wires_uif_calls(self) -> None:
        """make_cig_service points the UIF's call events at a UifCalls on the real SIF."""
        from twisted.internet.testing import MemoryReactorClock

        from cryptify.cig.tel.uif import Uif
        from cryptify.plugins.cig import dev_cig_config, make_cig_service

        root = make_cig_service(dev_cig_config(self.mktemp()), MemoryReactorClock())
        [uif] = [s for s in root if isinstance(s, Uif)]
        handler = uif.on_call_event
        self.assertIsNotNone(handler)
        uif_calls = getattr(handler, "__self__", None)
        self.assertIsInstance(uif_calls, UifCalls)
        switch = uif_calls.sip.tel  # type: ignore[union-attr]
        self.assertIsInstance(switch, TelSwitch)
        self.assertIs(switch.uif_calls, uif_calls)


class FromPbxTests(TelCase):
    """Calls from the PBX to secure users: the CIG's own I_MESSAGE, UMSG invite."""

    def place(self) -> tuple[Call, RecordingLeg, Message]:
        """The SIF hands the tel side a routed call to the caller's number."""
        call = Call("sip:101@pbx.com", "sip:9461111@secure.com", "tel:+101", CALLER)
        leg = RecordingLeg()
        self.tel.place_call(call, leg)
        return call, leg, self.out[-1]

    def session_answer(self, sent: Message) -> None:
        """The CRS answers the invite with a relay session."""
        relay = {"relay-host": "192.0.2.99", "relay-port": 146, "relay-tag": b"C" * 8}
        answer = message("session", id=sent["id"], session="s9", **relay)
        self.tel.handle(Answered(sent["id"], answer))

    def test_full_call(self) -> None:
        """invite (the client decapsulates it) -> session, ringing, talk -> BridgeAdd; BYE."""
        call, leg, sent = self.place()
        self.assertEqual((sent.type, sent["to"]), ("invite", CALLER))
        incoming = message(
            "invite", session="s9", to=CALLER, mikey=sent["mikey"],
            **{"from": CIG, "relay-host": "192.0.2.99", "relay-port": 146,
               "relay-tag": b"B" * 8},
        )  # fmt: skip
        [event] = self.caller.handle(Incoming(incoming))
        self.assertEqual(event.kind, "incoming")
        self.session_answer(sent)
        self.assertEqual(call.callee_if_id, "s9")
        self.tel.handle(Incoming(message("ringing", session="s9")))
        self.tel.handle(Incoming(message("talk", session="s9")))
        self.assertEqual(leg.events, ["trying", "ringing", "answered"])
        [(command, args)] = self.bridge.sent
        self.assertIs(command, BridgeAdd)
        self.assertEqual(args["srtp_tx_key"], event.call.policy_key)
        self.assertEqual(
            (args["call"], args["tag"], args["pbx_host"]), ("s9", b"C" * 8, "192.0.2.7")
        )
        self.tel.hang_up(call)
        self.assertEqual((self.out[-1].type, self.out[-1]["session"]), ("hangup", "s9"))
        self.assertIs(self.bridge.sent[-1][0], BridgeRemove)
        self.assertEqual((self.tel.active, self.tel.outgoing), ({}, {}))

    def test_codecs_offered_and_answered(self) -> None:
        """The CIG offers PCMU then opus; the callee's ``codec`` sets the bridge's
        secure codec; one it did not offer is taken as PCMU."""
        for named, chosen in (("opus", "opus"), ("G729", "PCMU")):
            call, _, sent = self.place()
            self.assertEqual(sent["codecs"], ["PCMU", "opus"])
            self.session_answer(sent)
            self.bridge.sent.clear()
            self.tel.handle(Incoming(message("talk", session="s9", codec=named)))
            [(command, args)] = self.bridge.sent
            self.assertIs(command, BridgeAdd)
            self.assertEqual(args.get("secure_codec", "PCMU"), chosen)
            self.tel.hang_up(call)

    def test_pbx_user_shown(self) -> None:
        """A source mapped to an extension of the CIG's number goes in the
        invite's ``from``; the client shown it accepts the CIG's signature."""
        self.assertNotIn("from", self.place()[2].fields)
        call = Call("sip:101@pbx.com", "sip:9461111@secure.com", f"{CIG};101", CALLER)
        self.tel.place_call(call, RecordingLeg())
        sent = self.out[-1]
        self.assertEqual(sent["from"], f"{CIG};101")
        incoming = message(
            "invite", session="s9", to=CALLER, mikey=sent["mikey"],
            **{"from": f"{CIG};101", "relay-host": "192.0.2.99", "relay-port": 146,
               "relay-tag": b"B" * 8},
        )  # fmt: skip
        [event] = self.caller.handle(Incoming(incoming))
        self.assertEqual((event.kind, event.call.peer), ("incoming", f"{CIG};101"))

    def test_umsg_rows(self) -> None:
        """show umsg for a call from the PBX: BANG (no session yet: ID -), the
        session's ID once the CRS answers, GROWL, TALK, then HANGUP."""
        call, _, sent = self.place()
        self.assertEqual(self.tel.umsg_rows(), [["tel:+101", CALLER, "BANG", "0", "-"]])
        self.session_answer(sent)
        self.tel.handle(Incoming(message("ringing", session="s9")))
        self.assertEqual(self.tel.umsg_rows()[0][2:], ["GROWL", "0", "s9"])
        self.tel.handle(Incoming(message("talk", session="s9")))
        self.assertEqual(self.tel.umsg_rows()[0][2], "TALK")
        self.tel.hang_up(call)
        self.assertEqual([r[2] for r in self.tel.umsg_rows()], ["HANGUP"])

    def test_not_attached(self) -> None:
        """Without an attached session the call is refused 480 at once."""
        self.session.state = "closed"
        call = Call("sip:101@pbx.com", "sip:9461111@secure.com", "tel:+101", CALLER)
        leg = RecordingLeg()
        self.tel.place_call(call, leg)
        self.assertEqual(leg.events, ["rejected 480"])

    def test_crs_error(self) -> None:
        """An error answer to the invite rejects the SIP call with a matching status."""
        _, leg, sent = self.place()
        self.tel.handle(Answered(sent["id"], message("error", id=sent["id"], code="not-found")))
        self.assertEqual(leg.events, ["rejected 404"])

    def test_declined_by_user(self) -> None:
        """A hangup ``rejected`` while ringing rejects the SIP call 603."""
        _, leg, sent = self.place()
        self.session_answer(sent)
        self.tel.handle(Incoming(message("hangup", session="s9", code="rejected", who="callee")))
        self.assertEqual(leg.events, ["trying", "rejected 603"])

    def test_pbx_hangs_up_before_session(self) -> None:
        """A CANCEL before the CRS answers: the session is hung up when it arrives."""
        call, leg, sent = self.place()
        self.tel.hang_up(call)
        self.session_answer(sent)
        self.assertEqual((self.out[-1].type, self.out[-1]["session"]), ("hangup", "s9"))
        self.assertEqual(leg.events, [])

    def test_connection_lost(self) -> None:
        """The UIF connection ending hangs up answered calls and rejects pending ones."""
        _, leg, sent = self.place()
        self.session_answer(sent)
        self.tel.handle(Incoming(message("talk", session="s9")))
        _, leg2, _ = self.place()
        self.tel.detached()
        self.assertEqual(leg.events[-1], "hung up")
        self.assertEqual(leg2.events, ["rejected 480"])


class TelSwitchTests(SynchronousTestCase):
    """TelSwitch: the stub until the UIF has a UmsgTel; hangups go where the call went."""

    def test_stub_then_uif(self) -> None:
        """Without a UmsgTel calls go to the stub, and are hung up there."""
        stub = StubTelSide("ring")
        switch = TelSwitch(stub)
        call = Call("sip:a@b", "sip:c@d")
        switch.place_call(call, RecordingLeg())
        switch.hang_up(call)
        switch.hang_up(call)
        self.assertEqual((len(stub.legs), stub.hung_up), (1, [call]))
        holder = FakeUifCalls()
        switch.uif_calls = holder  # type: ignore[assignment]
        self.assertIs(switch.side(), stub)
        holder.tel = other = StubTelSide("answer")
        self.assertIs(switch.side(), other)
        # media changes go to the side that placed the call, else the current one
        switch.place_call(call, RecordingLeg())
        switch.media_changed(call)
        switch.media_changed(Call("sip:e@f", "sip:g@h"))
        self.assertEqual((len(other.media_changes), stub.media_changes), (2, []))


class FakeUifCalls:
    """A UifCalls stand-in: only its current tel side."""

    tel: Any = None
