"""Transfer from the PBX side (REFER, RFC 3515; Replaces, RFC 3891), in memory.

The parsers (hypothesis on hostile input), then REFERs in real calls
through the SIF and the tel side (fake channel, recording cig-relay link):
blind and attended, the target answering or refusing, the transferor
leaving early, calls in both directions.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.records import CallRecords
from cryptify.client.session import Incoming
from cryptify.protocols.bridge_control import BridgeUpdate
from cryptify.protocols.sip.errors import SipParseError
from cryptify.protocols.sip.message import Request, Response, parse_datagram, response_to
from cryptify.protocols.sip.refer import (
    ReferError,
    Replaces,
    parse_refer_to,
    parse_replaces,
    parse_sipfrag,
    sipfrag,
)
from cryptify.protocols.sip.sdp import parse_sdp
from cryptify.protocols.umsg import message
from tests.cig_support import ANSWER, SifTelCase

TARGET = "sip:201@192.0.2.60"
TARGET_SDP = ANSWER.replace(b"192.0.2.7", b"192.0.2.61").replace(b"6000", b"6100")


class ParserTests(SynchronousTestCase):
    def test_refer_to_forms(self) -> None:
        for value in (f"<{TARGET}>", TARGET, f'"Desk" <{TARGET}>;x=1', f"<{TARGET}?Subject=hi>"):
            self.assertEqual(parse_refer_to(value).uri, TARGET, value)
        self.assertIsNone(parse_refer_to(TARGET).replaces)

    def test_refer_to_with_replaces(self) -> None:
        found = parse_refer_to(
            f"<{TARGET}?Replaces=abc%40host%3Bto-tag%3Dt1%3Bfrom-tag%3Df1&Require=replaces>"
        )
        self.assertEqual(found.replaces, Replaces("abc@host", "t1", "f1"))
        self.assertEqual(found.replaces.render(), "abc@host;to-tag=t1;from-tag=f1")  # type: ignore[union-attr]

    def test_refused(self) -> None:
        for value in ("<tel:+4670123>", "", "<sip:>", "<sip:201@h?Replaces=x>", "x" * 2000):
            with self.assertRaises(ReferError, msg=value):
                parse_refer_to(value)

    def test_replaces(self) -> None:
        self.assertEqual(
            parse_replaces("a@b; from-tag=2 ;to-tag=1;early-only"), Replaces("a@b", "1", "2", True)
        )
        for bad in ("a@b;to-tag=1", ";to-tag=1;from-tag=2", "a@b;to-tag=1;to-tag=2;from-tag=3"):
            with self.assertRaises(ReferError, msg=bad):
                parse_replaces(bad)

    def test_sipfrag(self) -> None:
        self.assertEqual(parse_sipfrag(sipfrag(486, "Busy Here")), (486, "Busy Here"))
        self.assertEqual(sipfrag(200, "OK\r\nX: y"), b"SIP/2.0 200 OKX: y\r\n")
        for bad in (b"", b"SIP/2.0 99 x", b"HTTP/1.1 200 OK", b"\xff\xfe", b"x" * 5000):
            with self.assertRaises(ReferError, msg=repr(bad)):
                parse_sipfrag(bad)

    @given(st.text(max_size=300))
    def test_hostile_refer_to(self, value: str) -> None:
        """Any Refer-To: a SIP target or ReferError, never anything else."""
        try:
            found = parse_refer_to(value)
        except ReferError:
            return
        self.assertTrue(found.uri.startswith(("sip:", "sips:")))
        self.assertNotIn("?", found.uri)

    @given(st.text(max_size=200))
    def test_hostile_replaces(self, value: str) -> None:
        try:
            found = parse_replaces(value)
        except ReferError:
            return
        self.assertTrue(found.call_id and found.to_tag and found.from_tag)

    @given(st.binary(max_size=300))
    def test_hostile_sipfrag(self, body: bytes) -> None:
        try:
            status, _ = parse_sipfrag(body)
        except SipParseError:
            return
        self.assertTrue(100 <= status <= 699)


class TransferCase(SifTelCase):
    def setUp(self) -> None:
        super().setUp()
        self.said: list[str] = []
        self.calls.records = CallRecords(self.clock, None, True, self.said.append)
        self.cseq = 10

    def requests(self) -> list[Request]:
        return [m for m in self.channel.messages() if isinstance(m, Request)]

    def records(self) -> list[dict[str, Any]]:
        self.clock.advance(0)
        return [json.loads(line) for line in self.said]

    def pbx_request(self, invite: Request, method: str, extra: str = "") -> Response:
        """The PBX's request in the dialog of our answered C{invite}; its answer."""
        self.cseq += 1
        data = (
            f"{method} sip:127.0.0.1:5060 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bKpbx{self.cseq}\r\n"
            f"From: {invite.headers.get('To')};tag=pbx1\r\nTo: {invite.headers.get('From')}\r\n"
            f"Call-ID: {invite.call_id}\r\nCSeq: {self.cseq} {method}\r\n"
            f"Contact: <sip:101@192.0.2.50:5070>\r\nMax-Forwards: 70\r\n{extra}"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        before = len(self.channel.sent)
        self.real.message_received(parse_datagram(data), self.channel)
        answers = [m for m in self.channel.messages()[before:] if isinstance(m, Response)]
        return answers[0]

    def refer(self, invite: Request, refer_to: str = TARGET) -> Response:
        return self.pbx_request(invite, "REFER", f"Refer-To: <{refer_to}>\r\n")

    def notifies(self) -> list[tuple[str, bytes]]:
        return [
            (r.headers.get("Subscription-State") or "", r.body)
            for r in self.requests()
            if r.method == "NOTIFY"
        ]

    def target_invite(self) -> Request:
        [found] = [r for r in self.requests() if r.method == "INVITE" and r.uri == TARGET]
        return found

    def target_answers(self, status: int, tag: str = "tgt1") -> None:
        invite = self.target_invite()
        extra: tuple[tuple[str, str], ...] = (("Contact", "<sip:201@192.0.2.60>"),)
        body = b""
        if status == 200:
            body = TARGET_SDP
            extra += (("Content-Type", "application/sdp"),)
        self.real.message_received(
            response_to(invite.headers, status, to_tag=tag, extra=extra, body=body), self.channel
        )


class BlindTransferTests(TransferCase):
    def test_secure_callers_call_moved(self) -> None:
        """REFER -> 202, NOTIFY 100; INVITE to the target from our same RTP
        port; 180 -> NOTIFY 180; 200 -> ACK, NOTIFY 200 (terminated), BYE to
        the transferor, the bridge moved; the secure caller stays talking."""
        first = self.answer_invite()
        old_port = parse_sdp(first.body).audio().port  # type: ignore[union-attr]
        self.assertEqual(self.refer(first).status, 202)
        self.assertEqual(self.notifies(), [("active;expires=60", b"SIP/2.0 100 Trying\r\n")])
        notify = next(r for r in self.requests() if r.method == "NOTIFY")
        self.assertEqual((notify.call_id, notify.headers.get("Event")), (first.call_id, "refer"))
        new = self.target_invite()
        self.assertNotEqual(new.call_id, first.call_id)
        self.assertEqual(parse_sdp(new.body).audio().port, old_port)  # type: ignore[union-attr]
        self.assertEqual(new.from_.uri, first.from_.uri)
        invite_t = new
        self.real.message_received(response_to(invite_t.headers, 180, to_tag="tgt1"), self.channel)
        self.assertEqual(self.notifies()[-1][1], b"SIP/2.0 180 Ringing\r\n")
        self.target_answers(200)
        sent = self.requests()
        self.assertEqual(
            [(r.method, r.call_id == first.call_id) for r in sent[-3:]],
            [("ACK", False), ("NOTIFY", True), ("BYE", True)],
        )
        self.assertEqual(
            self.notifies()[-1], ("terminated;reason=noresource", b"SIP/2.0 200 OK\r\n")
        )
        command, args = self.bridge.sent[-1]
        self.assertEqual(
            (command, args["pbx_host"], args["pbx_remote_port"]), (BridgeUpdate, "192.0.2.61", 6100)
        )
        self.assertNotIn("hangup", [m.type for m in self.out])
        self.assertEqual(self.records(), [])
        # the transferor's 200 to our BYE, then the target hangs up: the call ends
        self.tel.handle(Incoming(message("hangup", session="s1", code="normal")))
        bye = self.requests()[-1]
        self.assertEqual((bye.method, bye.call_id), ("BYE", new.call_id))
        [record] = self.records()
        self.assertEqual((record["routed_to"], record["sip_call_id"]), (TARGET, new.call_id))
        self.assertEqual((record["ended_by"], record["result"]), ("secure", "answered"))

    def test_target_refuses(self) -> None:
        """486 from the target: NOTIFY 486 (terminated); the call stays as it was."""
        first = self.answer_invite()
        self.refer(first)
        updates = len(self.bridge.sent)
        self.target_answers(486)
        self.assertEqual(self.notifies()[-1][1], b"SIP/2.0 486 Busy Here\r\n")
        self.assertNotIn("BYE", [r.method for r in self.requests()])
        self.assertEqual(len(self.bridge.sent), updates)
        self.assertNotIn("hangup", [m.type for m in self.out])
        self.tel.handle(Incoming(message("hangup", session="s1", code="normal")))
        self.assertEqual(self.requests()[-1].call_id, first.call_id)  # BYE on the old leg

    def test_transferor_leaves_at_once(self) -> None:
        """The transferor BYEs right after 202: the secure caller is kept; the
        target's answer moves the call without a BYE to the gone transferor."""
        first = self.answer_invite()
        self.refer(first)
        self.assertEqual(self.pbx_request(first, "BYE").status, 200)
        self.assertNotIn("hangup", [m.type for m in self.out])
        self.target_answers(200)
        self.assertNotIn(("BYE", first.call_id), [(r.method, r.call_id) for r in self.requests()])
        self.assertEqual(self.bridge.sent[-1][1]["pbx_host"], "192.0.2.61")

    def test_transferor_gone_and_target_refuses(self) -> None:
        """Nothing left on the SIP side: the secure caller is hung up, one record."""
        first = self.answer_invite()
        self.refer(first)
        self.pbx_request(first, "BYE")
        self.target_answers(480)
        self.assertEqual(self.out[-1].type, "hangup")
        [record] = self.records()
        self.assertEqual(
            (record["ended_by"], record["reason"]), ("pbx", "transfer failed: SIP 480")
        )

    def test_attended_transfer_carries_replaces(self) -> None:
        """A Refer-To with Replaces: the INVITE to the target carries Replaces."""
        first = self.answer_invite()
        target = f"{TARGET}?Replaces=c2%40pbx%3Bto-tag%3Da%3Bfrom-tag%3Db"
        self.assertEqual(self.refer(first, target).status, 202)
        self.assertEqual(self.target_invite().headers.get("Replaces"), "c2@pbx;to-tag=a;from-tag=b")

    def test_attended_transfer_addr_spec(self) -> None:
        """baresip's form: the Refer-To without angle brackets, its ? headers and all."""
        first = self.answer_invite()
        value = f"{TARGET}?Replaces=c2%40pbx%3Bto-tag%3Da%3Bfrom-tag%3Db"
        self.assertEqual(self.pbx_request(first, "REFER", f"Refer-To: {value}\r\n").status, 202)
        self.assertEqual(self.target_invite().headers.get("Replaces"), "c2@pbx;to-tag=a;from-tag=b")

    def test_bad_and_overlapping_refers(self) -> None:
        first = self.answer_invite()
        self.assertEqual(self.pbx_request(first, "REFER").status, 400)
        self.assertEqual(self.refer(first, "tel:+4670").status, 400)
        self.assertEqual(self.refer(first).status, 202)
        self.assertEqual(self.refer(first).status, 491)

    def test_secure_caller_hangs_up_during_the_transfer(self) -> None:
        """The secure caller leaves while the target rings: its answer is hung up."""
        first = self.answer_invite()
        self.refer(first)
        self.tel.handle(Incoming(message("hangup", session="s1", code="normal")))
        self.target_answers(200)
        last = self.requests()[-1]
        self.assertEqual((last.method, last.call_id), ("BYE", self.target_invite().call_id))


class FromPbxTransferTests(TransferCase):
    def test_pbx_callers_call_moved(self) -> None:
        """A call the PBX placed to a secure user, transferred by the PBX: the
        INVITE to the target comes from the URI the PBX called; once moved,
        the secure user's hangup ends the target's leg."""
        self.pbx_call()
        [ok] = [m for m in self.channel.messages() if isinstance(m, Response) and m.status == 200]
        self.cseq += 1
        data = (
            "REFER sip:192.0.2.9:5060 SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKrefer1\r\n"
            f"From: {ok.headers.get('From')}\r\nTo: {ok.headers.get('To')}\r\n"
            f"Call-ID: {ok.call_id}\r\nCSeq: 5 REFER\r\nMax-Forwards: 70\r\n"
            f"Refer-To: <{TARGET}>\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        self.real.message_received(parse_datagram(data), self.channel)
        new = self.target_invite()
        self.assertEqual(new.from_.uri, "sip:94670123456@secure.com")
        self.target_answers(200)
        self.assertEqual(self.bridge.sent[-1][1]["pbx_host"], "192.0.2.61")
        old_bye = self.requests()[-1]
        self.assertEqual((old_bye.method, old_bye.call_id), ("BYE", ok.call_id))
        self.tel.handle(Incoming(message("hangup", session="s9", code="normal")))
        bye = self.requests()[-1]
        self.assertEqual((bye.method, bye.call_id), ("BYE", new.call_id))
        [record] = self.records()
        self.assertEqual(
            (record["direction"], record["routed_to"]), ("from-pbx", "tel:+4670123456")
        )
        self.assertEqual(record["sip_call_id"], new.call_id)
