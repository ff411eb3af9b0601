"""
Tests for SDES SRTP on the SIF's PBX leg: C{RTP/SAVP} offers answered or
refused by the sip interface's C{srtp} mode, our offers, the keys handed
to the bridge (L{Sif.srtp_of}), and the tel side's bridge carrying them.
"""

from __future__ import annotations

import base64

import attrs
from twisted.logger import LogEvent, globalLogPublisher

from cryptify.cig.calls import Call
from cryptify.cig.sif.legs import OutCall, SipCall
from cryptify.cig.tel.bridge import Bridge
from cryptify.protocols.bridge_control import BridgeAdd, BridgeUpdate
from cryptify.protocols.sip.message import Request, Response, response_to
from cryptify.protocols.sip.sdes import parse_crypto
from cryptify.protocols.sip.sdp import SAVP, SrtpKeys, parse_sdp
from tests.sip_support import OFFER, OutgoingCase, SifCase, in_dialog, invite

THEIR_80 = bytes(range(30))
THEIR_32 = bytes(range(30, 60))


def inline(key: bytes) -> str:
    return "inline:" + base64.b64encode(key).decode()


SAVP_OFFER = OFFER.replace("RTP/AVP", "RTP/SAVP") + (
    f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {inline(THEIR_80)}\r\n"
    f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 {inline(THEIR_32)}\r\n"
)


class SrtpMode:
    """Sets the SIF's C{srtp} mode."""

    sif: object

    def mode(self, srtp: str) -> None:
        sif = self.sif
        config = sif.config  # type: ignore[attr-defined]
        sip = attrs.evolve(config.sip, srtp=srtp)
        interfaces = attrs.evolve(config.interfaces, sip=sip)
        sif.config = attrs.evolve(config, interfaces=interfaces)  # type: ignore[attr-defined]


class IncomingTests(SifCase, SrtpMode):
    """Calls from the PBX with RTP/SAVP or RTP/AVP offers."""

    def setUp(self) -> None:
        super().setUp()
        self.logged: list[LogEvent] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def call_in(self, body: str, call_id: str = "c1") -> list[Request | Response]:
        return self.send(invite(body=body, call_id=call_id, branch=f"z9hG4bK{call_id}"))

    def test_savp_offer_answered(self) -> None:
        """With srtp offer, a SAVP INVITE gets 200 with RTP/SAVP and our own key under the
        PBX's first tag; srtp_of pairs our key (to send) with the PBX's (to read)."""
        self.mode("offer")
        out = self.call_in(SAVP_OFFER)
        self.assertEqual(self.statuses(out), [100, 180, 200])
        ok = out[-1]
        assert isinstance(ok, Response)
        audio = parse_sdp(ok.body).audio()
        assert audio is not None
        self.assertEqual(audio.proto, SAVP)
        (ours,) = [parse_crypto(c) for c in audio.crypto]
        self.assertEqual((ours.tag, ours.suite), (1, "AES_CM_128_HMAC_SHA1_80"))
        self.assertNotEqual(ours.key, THEIR_80)
        call, _ = self.tel.legs[0]
        self.assertEqual(
            self.sif.srtp_of(call), SrtpKeys("AES_CM_128_HMAC_SHA1_80", ours.key, THEIR_80)
        )
        self.send(in_dialog("BYE", ok))
        text = repr(self.logged)
        for key in (ours.key, THEIR_80, THEIR_32):
            self.assertNotIn(base64.b64encode(key).decode(), text)

    def test_off_refuses_savp(self) -> None:
        """With srtp off (the default) a SAVP offer gets 488, as before."""
        self.assertEqual(self.statuses(self.call_in(SAVP_OFFER)), [100, 488])

    def test_require_refuses_plain(self) -> None:
        """With srtp require a plain RTP/AVP offer gets 488; a SAVP one is taken."""
        self.mode("require")
        self.assertEqual(self.statuses(self.call_in(OFFER)), [100, 488])
        self.assertEqual(self.statuses(self.call_in(SAVP_OFFER, "c2")), [100, 180, 200])

    def test_savp_without_usable_crypto_refused(self) -> None:
        """A SAVP offer whose lines we cannot honour gets 488 even with srtp offer."""
        self.mode("offer")
        body = (
            OFFER.replace("RTP/AVP", "RTP/SAVP")
            + f"a=crypto:1 F8_128_HMAC_SHA1_80 {inline(THEIR_80)}\r\n"
        )
        self.assertEqual(self.statuses(self.call_in(body)), [100, 488])

    def test_plain_call_has_no_keys(self) -> None:
        """A plain call under srtp offer is answered RTP/AVP; srtp_of is None."""
        self.mode("offer")
        ok = self.call_in(OFFER)[-1]
        assert isinstance(ok, Response)
        self.assertNotIn(b"a=crypto", ok.body)
        self.assertIsNone(self.sif.srtp_of(self.tel.legs[0][0]))
        self.send(in_dialog("BYE", ok))

    def test_reinvite_keeps_our_key(self) -> None:
        """A re-INVITE with the same suite keeps our key (the bridge's sessions
        go on); the PBX's new key is what srtp_of then gives to read with."""
        self.mode("offer")
        ok = self.call_in(SAVP_OFFER)[-1]
        assert isinstance(ok, Response)
        call, _ = self.tel.legs[0]
        before = self.sif.srtp_of(call)
        assert before is not None
        new_theirs = bytes(range(60, 90))
        body = (
            SAVP_OFFER.split("a=crypto")[0].replace("192.0.2.1", "192.0.2.7")
            + f"a=crypto:3 AES_CM_128_HMAC_SHA1_80 {inline(new_theirs)}\r\n"
        )
        to = ok.headers.get("To")
        data = (
            f"INVITE sip:192.0.2.9:5060 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKre2\r\n"
            f"From: {ok.headers.get('From')}\r\nTo: {to}\r\nCall-ID: {ok.call_id}\r\n"
            f"CSeq: 2 INVITE\r\nContact: <sip:101@192.0.2.1:5060>\r\n"
            f"Max-Forwards: 70\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
        (response,) = self.send(data)
        assert isinstance(response, Response)
        self.assertEqual(response.status, 200)
        after = self.sif.srtp_of(call)
        self.assertEqual(after, SrtpKeys("AES_CM_128_HMAC_SHA1_80", before.tx, new_theirs))
        self.assertEqual(self.tel.media_changes, [call])
        self.send(in_dialog("BYE", ok, cseq=3))

    def test_sdp_fields_not_in_reprs(self) -> None:
        """The call legs leave our SDP and the PBX's (both may hold keys) out of their
        reprs (the bodies of the SIP messages they keep are left out by L{Request})."""
        for leg in (SipCall, OutCall):
            hidden = {f.name for f in attrs.fields(leg) if not f.repr}
            self.assertLessEqual({"answer", "remote_sdp"}, hidden, leg)


class OutgoingTests(OutgoingCase, SrtpMode):
    """Calls the CIG places on the PBX."""

    def answer_with(self, invite: Request, body: str) -> None:
        extra = (("Contact", "<sip:101@192.0.2.50:5070>"), ("Content-Type", "application/sdp"))
        response = response_to(invite.headers, 200, to_tag="pbx1", extra=extra, body=body.encode())
        self.sif.message_received(response, self.channel)

    def test_offer_savp_and_keys_from_answer(self) -> None:
        """With srtp offer (or require) our INVITE offers RTP/SAVP with a line
        per suite; the PBX's answer picks a tag and srtp_of pairs the keys."""
        for mode in ("offer", "require"):
            self.mode(mode)
            invite = self.place()
            audio = parse_sdp(invite.body).audio()
            assert audio is not None
            self.assertEqual(audio.proto, SAVP)
            offered = {c.tag: c for c in map(parse_crypto, audio.crypto)}
            self.assertEqual(set(offered), {1, 2})
            answer = OFFER.replace("RTP/AVP", "RTP/SAVP") + (
                f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 {inline(THEIR_32)}\r\n"
            )
            self.answer_with(invite, answer)
            self.assertEqual(
                self.sif.srtp_of(self.call),
                SrtpKeys("AES_CM_128_HMAC_SHA1_32", offered[2].key, THEIR_32),
            )
            self.sif.hang_up(self.call)

    def test_off_offers_plain(self) -> None:
        """With srtp off our offer is plain RTP/AVP, no a=crypto."""
        invite = self.place()
        self.assertIn(b"RTP/AVP", invite.body)
        self.assertNotIn(b"a=crypto", invite.body)

    def test_plain_answer_to_savp_offer_is_an_error(self) -> None:
        """A PBX that answers our SAVP offer with RTP/AVP leaves no keys: the bridge
        is refused (srtp_of raises), rather than sending plain audio."""
        self.mode("offer")
        invite = self.place()
        self.answer_with(invite, OFFER)
        leg = Leg(self.call)
        bridge = Bridge(RecordingLink(), self.sif, leg)
        failures: list[object] = []
        bridge.add().addErrback(failures.append)
        self.assertEqual(len(failures), 1)
        self.assertIn("no SRTP keys agreed", str(failures[0]))
        self.sif.hang_up(self.call)

    def test_bridge_carries_keys(self) -> None:
        """The tel side's BridgeAdd carries the PBX leg's suite and both keys
        (ours to protect, the PBX's to unprotect); BridgeUpdate too."""
        self.mode("offer")
        invite = self.place()
        audio = parse_sdp(invite.body).audio()
        assert audio is not None
        ours = parse_crypto(audio.crypto[0]).key
        self.answer_with(
            invite,
            OFFER.replace("RTP/AVP", "RTP/SAVP")
            + f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {inline(THEIR_80)}\r\n",
        )
        link = RecordingLink()
        bridge = Bridge(link, self.sif, Leg(self.call))
        bridge.add()
        bridge.update()
        (add, add_args), (update, update_args) = link.sent
        self.assertEqual((add, update), (BridgeAdd, BridgeUpdate))
        for args in (add_args, update_args):
            self.assertEqual(
                (args["pbx_srtp_profile"], args["pbx_srtp_tx_key"], args["pbx_srtp_rx_key"]),
                ("AES_CM_128_HMAC_SHA1_80", ours, THEIR_80),
            )
        self.sif.hang_up(self.call)


@attrs.define
class Leg:
    """A secure leg as the bridge reads it."""

    call: Call
    session: str | None = "s1"
    relay_host: str = "192.0.2.99"
    relay_port: int = 146
    relay_tag: bytes = b"T" * 8
    policy_key: bytes = b"K" * 30
    secure_codec: str = "PCMU"


@attrs.define
class RecordingLink:
    """The cig-relay link: answers every command at once, records it."""

    sent: list[tuple[object, dict[str, object]]] = attrs.field(factory=list)

    async def call(self, command: object, **kwargs: object) -> dict[str, object]:
        self.sent.append((command, kwargs))
        return {"secure_port": 1, "pbx_port": 2, "updated": True}


class ReloadTests(SifCase):
    """C{srtp} changes with a reload (SIGHUP): the SIF reads it for each call."""

    def test_srtp_is_live(self) -> None:
        """The reload plan takes a changed srtp at once (a live directive), and
        the SIF answers the next SAVP offer instead of refusing it."""
        from cryptify.ops.cig import DIRECTIVES
        from cryptify.ops.reload import plan

        running = self.sif.config
        sip = attrs.evolve(running.sip, srtp="offer")
        loaded = attrs.evolve(running, interfaces=attrs.evolve(running.interfaces, sip=sip))
        result = plan(running, loaded, DIRECTIVES)
        self.assertEqual(result.config.sip.srtp, "offer")
        self.assertEqual(self.statuses(self.send(invite(body=SAVP_OFFER))), [100, 488])
        self.sif.config = result.config
        out = self.send(invite(body=SAVP_OFFER, call_id="c2", branch="z9hG4bKc2"))
        self.assertEqual(self.statuses(out), [100, 180, 200])
