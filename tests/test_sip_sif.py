"""
Tests for L{cryptify.cig.sif.core}: the SIP interface core, driven in memory
with a fake channel, a L{Clock} and a tel-side double.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import DNSLookupError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.calls import (
    CALL_LINGER,
    STUB_KEEPS,
    Call,
    CallTable,
    SessionLogService,
    SessionRecords,
    StubTelSide,
    session_line,
)
from cryptify.cig.sif.core import Sif
from cryptify.cig.sif.legs import NO_ANSWER_AFTER, SipCall
from cryptify.config import parse_cig_config
from cryptify.protocols.sip.message import Request, Response, parse_datagram, response_to
from cryptify.protocols.sip.sdp import parse_sdp
from cryptify.protocols.sip.transaction import T1, Channel
from cryptify.protocols.sip.transport import SipDatagramProtocol
from tests.fakes import FakeChannel
from tests.sip_support import CONTACT, OFFER, OutgoingCase, SifCase, in_dialog, invite
from tests.torture import TORTURE_MAPS, TREATMENTS, call_id_of, read_torture


class CallTests(SifCase):
    """
    Calls from the PBX routed to the tel side.
    """

    def test_answered_call(self) -> None:
        """
        A routed INVITE gets 100, 180 and 200 with an SDP answer (PCMA
        first, as offered, on a port of rtp_port_range); show call lists
        it as ANSWER; session.log says routing, routed, trying, ringing,
        talk; the PBX's BYE hangs up both sides.
        """
        out = self.send(invite())
        self.assertEqual(self.statuses(out), [100, 180, 200])
        ok = out[-1]
        assert isinstance(ok, Response)
        self.assertEqual(ok.headers.get("Contact"), "<sip:192.168.1.1:5060>")
        audio = parse_sdp(ok.body).audio()
        assert audio is not None
        self.assertEqual(audio.formats, ("8", "0", "101"))
        self.assertTrue(1024 <= audio.port <= 2048)
        call, _ = self.tel.legs[0]
        self.assertEqual((call.out_from, call.out_to), ("tel:+8888;101", "tel:+4670123456"))
        self.assertEqual(
            self.calls.rows(),
            [
                [
                    "sip:101@pbx.com",
                    "sip:94670123456@secure.com",
                    "tel:+8888;101",
                    "tel:+4670123456",
                    "ANSWER",
                    "udp:192.0.2.1:5060",
                ]
            ],
        )
        self.assertEqual(self.states(), ["routing", "routed", "trying", "ringing", "talk"])
        self.assertEqual(self.session[-1].split(", ")[7:], ["c1", "stub-1", "udp:192.0.2.1:5060"])
        # the ACK stops the 2xx retransmissions
        ack = in_dialog("ACK", ok, cseq=1, branch="z9hG4bKack")
        self.send(ack)
        self.clock.advance(10)
        self.assertEqual(len(self.channel.sent), 3)
        out = self.send(in_dialog("BYE", ok))
        self.assertEqual(self.statuses(out), [200])
        self.assertEqual(self.tel.hung_up, [call])
        self.assertEqual(self.calls.rows()[0][4], "HANGUP")
        self.assertEqual(self.states()[-1], "hangup")
        self.clock.advance(CALL_LINGER)
        self.assertEqual(self.calls.rows(), [])

    def reinvite(self, ok: Response, cseq: int, body: str | bytes) -> Response:
        to = ok.headers.get("To")
        octets = body.encode() if isinstance(body, str) else body
        data = (
            f"INVITE sip:192.0.2.9:5060 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKre{cseq}\r\n"
            f"From: {ok.headers.get('From')}\r\nTo: {to}\r\nCall-ID: {ok.call_id}\r\n"
            f"CSeq: {cseq} INVITE\r\nContact: <sip:101@192.0.2.1:5060>\r\n"
            f"Max-Forwards: 70\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(octets)}\r\n\r\n"
        ).encode() + octets
        out = self.send(data)
        self.assertEqual(len(out), 1)
        response = out[0]
        assert isinstance(response, Response)
        return response

    def test_reinvite_moves_media(self) -> None:
        """
        A re-INVITE with a new offer (another address and port, PCMU only)
        is answered from the same RTP port with PCMU and a newer SDP
        version; the tel side hears of it and media_of gives the new offer.
        Without a body the last answer is repeated; with no codec in common
        it is refused with 488 and nothing changes.
        """
        out = self.send(invite())
        ok = out[-1]
        assert isinstance(ok, Response)
        call, _ = self.tel.legs[0]
        first = parse_sdp(ok.body)
        moved = OFFER.replace("192.0.2.1", "192.0.2.7").replace(
            "6000 RTP/AVP 8 0", "7000 RTP/AVP 0"
        )
        response = self.reinvite(ok, 2, moved)
        self.assertEqual(response.status, 200)
        answer = parse_sdp(response.body)
        audio, first_audio = answer.audio(), first.audio()
        assert audio is not None and first_audio is not None
        self.assertEqual(audio.port, first_audio.port)
        self.assertEqual(audio.formats, ("0", "101"))
        self.assertEqual(answer.session_id, first.session_id)
        self.assertEqual(int(answer.version), int(first.version) + 1)
        self.assertEqual(self.tel.media_changes, [call])
        media = self.sif.media_of(call)
        assert media is not None
        self.assertEqual(media, (first_audio.port, moved.encode()))
        again = self.reinvite(ok, 3, "")
        self.assertEqual((again.status, again.body), (200, response.body))
        refused = self.reinvite(ok, 4, OFFER.replace("RTP/AVP 8 0 101", "RTP/AVP 18"))
        self.assertEqual(refused.status, 488)
        self.assertEqual(self.tel.media_changes, [call])
        self.assertEqual(self.sif.media_of(call), media)
        self.send(in_dialog("BYE", ok, cseq=5))

    @settings(max_examples=60, deadline=None)
    @given(body=st.one_of(
        st.binary(max_size=300),
        st.tuples(st.integers(0, len(OFFER)), st.binary(max_size=12), st.integers(0, 12)).map(
            lambda t: OFFER.encode()[: t[0]] + t[1] + OFFER.encode()[t[0] + t[2] :]
        ),
    ))  # fmt: skip
    def test_fuzzed_reinvite_offers(self, body: bytes) -> None:
        """
        Any body in a re-INVITE gets an answer, never an exception: the tel
        side hears of new media only with a 200, and when it does not, the
        call's media stay as they were; the call goes on to its BYE.
        """
        self.fuzz_count = getattr(self, "fuzz_count", 0) + 1
        n = self.fuzz_count
        out = self.send(invite(call_id=f"re{n}", branch=f"z9hG4bKre{n}"))
        ok = out[-1]
        assert isinstance(ok, Response) and ok.status == 200
        call = self.tel.legs[-1][0]
        before = self.sif.media_of(call)
        changes = len(self.tel.media_changes)
        response = self.reinvite(ok, 2, body)
        self.assertIn(response.status, (200, 400, 488))
        if len(self.tel.media_changes) > changes:
            self.assertEqual(response.status, 200)
            self.assertEqual(len(self.tel.media_changes), changes + 1)
        else:
            self.assertEqual(self.sif.media_of(call), before)
        bye = self.send(in_dialog("BYE", ok, cseq=3))
        self.assertEqual(self.statuses(bye), [200])

    def test_route_refused(self) -> None:
        """
        An INVITE no extension map takes is answered 404 and listed as
        REJECT; session.log says routing, failed.
        """
        out = self.send(invite(to="sip:4670123456@secure.com"))
        self.assertEqual(self.statuses(out), [100, 404])
        self.assertEqual(self.tel.legs, [])
        self.assertEqual(self.calls.rows()[0][4], "REJECT")
        self.assertEqual(self.states(), ["routing", "failed"])
        self.send(in_dialog("ACK", out[-1], cseq=1, branch="z9hG4bK1"))  # type: ignore[arg-type]
        self.clock.advance(CALL_LINGER)

    def test_rejected_by_tel(self) -> None:
        """
        A leg the tel side declines is answered with its status (603).
        """
        self.tel.mode = "reject"
        out = self.send(invite())
        self.assertEqual(self.statuses(out), [100, 603])
        self.assertEqual(self.calls.rows()[0][4], "REJECT")
        self.clock.advance(64 * T1)
        self.clock.advance(CALL_LINGER)

    def test_cancel_while_ringing(self) -> None:
        """
        A CANCEL while ringing gets 200, the INVITE 487, and the tel leg is
        hung up.
        """
        self.tel.mode = "ring"
        out = self.send(invite())
        self.assertEqual(self.statuses(out), [100, 180])
        self.assertEqual(self.calls.rows()[0][4], "RING")
        cancel = invite().replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL")
        out = self.send(cancel)
        self.assertEqual(self.statuses(out), [200, 487])
        self.assertEqual(len(self.tel.hung_up), 1)
        self.assertEqual(self.calls.rows()[0][4], "HANGUP")
        self.clock.advance(64 * T1)
        self.clock.advance(CALL_LINGER)

    def test_hangup_from_tel(self) -> None:
        """
        The tel side hanging up sends a BYE in the dialog to the PBX.
        """
        out = self.send(invite())
        ok = out[-1]
        self.send(in_dialog("ACK", ok, cseq=1, branch="z9hG4bKack"))  # type: ignore[arg-type]
        _, leg = self.tel.legs[0]
        leg.hung_up()
        bye = self.channel.messages()[-1]
        assert isinstance(bye, Request)
        self.assertEqual((bye.method, bye.uri), ("BYE", "sip:101@192.0.2.1:5060"))
        self.assertEqual((bye.from_.tag, bye.to.tag), (ok.to.tag, "f1"))  # type: ignore[union-attr]
        self.assertEqual(self.calls.rows()[0][4], "HANGUP")
        self.clock.advance(64 * T1)
        self.clock.advance(CALL_LINGER)

    def test_no_common_codec(self) -> None:
        """
        An offer without G.711 gets 488 and no tel leg.
        """
        body = OFFER.replace("8 0 101", "18")
        out = self.send(invite(body=body))
        self.assertEqual(self.statuses(out), [100, 488])
        self.assertEqual(self.tel.legs, [])
        self.clock.advance(64 * T1)

    def test_offerless_invite(self) -> None:
        """
        An INVITE without SDP gets our offer in the 200.
        """
        out = self.send(invite(body=""))
        ok = out[-1]
        assert isinstance(ok, Response)
        audio = parse_sdp(ok.body).audio()
        assert audio is not None
        self.assertEqual(audio.formats, ("0", "8", "101"))
        self.clock.advance(64 * T1)
        self.clock.advance(CALL_LINGER)

    def test_refusals(self) -> None:
        """
        Max-Forwards 0 gets 483, an unknown Require 420, a non-SDP body 415.
        """
        out = self.send(invite(call_id="a").replace(b"Max-Forwards: 70", b"Max-Forwards: 0"))
        self.assertEqual(self.statuses(out), [483])
        out = self.send(invite(call_id="b", branch="z9hG4bKb", extra="Require: foo\r\n"))
        self.assertEqual(self.statuses(out), [420])
        self.assertEqual(out[0].headers.get("Unsupported"), "foo")
        body = invite(call_id="c", branch="z9hG4bKc").replace(b"application/sdp", b"text/plain")
        self.assertEqual(self.statuses(self.send(body)), [415])
        self.clock.advance(64 * T1)


class NoAnswerTests(SifCase):
    def test_unanswered_call_ends_on_both_sides(self) -> None:
        """
        A call the secure side leaves ringing past NO_ANSWER_AFTER gets 480
        towards the PBX, and the tel side is told to stop ringing.
        """
        self.tel.mode = "ring"
        got = self.send(invite(call_id="na", branch="z9hG4bKna"))
        self.assertIn(180, self.statuses(got))
        self.assertEqual(self.tel.hung_up, [])
        before = len(self.channel.sent)
        self.clock.advance(NO_ANSWER_AFTER)
        self.assertEqual(self.statuses(self.channel.messages()[before:]), [480])
        self.assertEqual([call for call, _ in self.tel.legs], self.tel.hung_up)
        self.assertEqual(len(self.tel.hung_up), 1)


class MethodTests(SifCase):
    """
    OPTIONS, unsupported methods, MESSAGE and malformed requests.
    """

    def request(self, method: str, cseq_method: str | None = None) -> bytes:
        return (
            f"{method} sip:cig@192.0.2.9 SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKm\r\n"
            "From: <sip:101@pbx.com>;tag=x\r\nTo: <sip:94670123456@secure.com>\r\n"
            f"Call-ID: m1\r\nCSeq: 7 {cseq_method or method}\r\nContent-Length: 2\r\n\r\nhi"
        ).encode()

    def test_options(self) -> None:
        """
        OPTIONS is answered 200 with Allow.
        """
        out = self.send(self.request("OPTIONS"))
        self.assertEqual(self.statuses(out), [200])
        self.assertEqual(
            out[0].headers.get("Allow"), "INVITE, ACK, BYE, CANCEL, OPTIONS, REFER, MESSAGE"
        )
        self.clock.advance(64 * T1)

    def test_unsupported(self) -> None:
        """
        REGISTER (known, not ours) gets 405 with Allow; an unknown method 501.
        """
        self.assertEqual(self.statuses(self.send(self.request("REGISTER"))), [405])
        self.channel.sent.clear()
        out = self.send(self.request("FROB").replace(b"branch=z9hG4bKm", b"branch=z9hG4bKn"))
        self.assertEqual(self.statuses(out), [501])
        self.clock.advance(64 * T1)

    def test_message(self) -> None:
        """
        With messaging true and no secure side to post it (no mailboxes
        wired in), a routed MESSAGE gets 480 with Retry-After; the rest is
        in tests.test_cig_sip_message.
        """
        [response] = self.send(self.request("MESSAGE"))
        assert isinstance(response, Response)
        self.assertEqual((response.status, response.headers.get("Retry-After")), (480, "30"))
        self.clock.advance(64 * T1)

    def test_bye_without_dialog(self) -> None:
        """
        A BYE for no dialog gets 481.
        """
        data = self.request("BYE").replace(b"secure.com>", b"secure.com>;tag=zz")
        self.assertEqual(self.statuses(self.send(data)), [481])
        self.clock.advance(64 * T1)

    def test_bad_request_answered(self) -> None:
        """
        A malformed request that can be answered gets 400 (with a Warning);
        one that cannot (no Via), silence.
        """
        data = self.request("OPTIONS", cseq_method="INVITE")
        self.assertEqual(self.statuses(self.send(data)), [400])
        self.channel.sent.clear()
        self.send_raw(self.request("OPTIONS").replace(b"Content-Length: 2", b"Content-Length: 99"))
        self.assertEqual(self.statuses(self.channel.messages()), [400])
        self.channel.sent.clear()
        self.send_raw(b"OPTIONS sip:x SIP/2.0\r\nFrom: <sip:a@b>\r\n\r\n")
        self.assertEqual(self.channel.sent, [])

    def send_raw(self, data: bytes) -> None:
        from cryptify.protocols.sip.errors import SipParseError

        try:
            message = parse_datagram(data)
        except SipParseError as exc:
            self.sif.parse_failed(exc, self.channel)
            return
        assert message is not None
        self.sif.message_received(message, self.channel)

    def test_contact_with_unbalanced_quote(self) -> None:
        """
        A Contact whose quotes do not balance (hypothesis found one) is
        answered 400 like any unusable Contact, instead of an exception.
        """
        data = invite(call_id="uq", branch="z9hG4bKuq").replace(
            b"Contact: <sip:101@192.0.2.1:5060>", b'Contact: "101 <sip:101@192.0.2.1:5060>'
        )
        self.send_raw(data)
        statuses = [m.status for m in self.channel.messages() if isinstance(m, Response)]
        self.assertEqual(statuses, [400])

    def test_list_headers_with_unbalanced_quote(self) -> None:
        """
        Require and Accept, read as comma lists, with quotes that do not
        balance: the INVITE gets one final answer, never an exception.
        """
        for n, header in enumerate((b'Require: "x\r\n', b'Accept: "x\r\n')):
            self.channel.sent.clear()
            self.send_raw(invite(call_id=f"lq{n}", branch=f"z9hG4bKlq{n}", extra=header.decode()))
            finals = [
                m.status
                for m in self.channel.messages()
                if isinstance(m, Response) and m.status >= 200
            ]
            self.assertEqual(len(finals), 1, header)
            self.assertTrue(400 <= finals[0] < 500, finals)

    @settings(max_examples=100, deadline=None)
    @given(cut=st.integers(0, 700), insert=st.binary(max_size=8), drop=st.integers(0, 8))
    def test_fuzzed_invites(self, cut: int, insert: bytes, drop: int) -> None:
        """
        Mangled INVITEs never raise out of the SIF: each gets responses or
        silence.
        """
        self.fuzz_count = getattr(self, "fuzz_count", 0) + 1
        n = self.fuzz_count
        base = invite(call_id=f"fz{n}", branch=f"z9hG4bKfz{n}")
        self.send_raw(base[:cut] + insert + base[cut + drop :])


class FakeUdpTransport:
    """Records datagrams written."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.written.append((data, addr))


class AdapterTests(SifCase):
    """
    The UDP and TCP adapters feed the core and answer on the same path.
    """

    def test_udp(self) -> None:
        """
        A datagram is answered to its source; garbage and keep-alives are
        not; a sink that raises is logged and the adapter keeps serving.
        """
        transport = FakeUdpTransport()
        self.protocol.transport = transport  # type: ignore[assignment]
        self.protocol.datagramReceived(b"\r\n\r\n", ("192.0.2.7", 5080))
        self.protocol.datagramReceived(b"\x00\xff garbage", ("192.0.2.7", 5080))
        self.assertEqual(transport.written, [])
        self.protocol.datagramReceived(invite(), ("192.0.2.7", 5080))
        self.assertEqual([addr for _, addr in transport.written], [("192.0.2.7", 5080)] * 3)

        class Broken:
            def message_received(self, message: object, channel: object) -> None:
                raise RuntimeError("boom")

            def parse_failed(self, error: object, channel: object) -> None:
                raise RuntimeError("boom")

        broken = SipDatagramProtocol(Broken())  # type: ignore[arg-type]
        broken.transport = transport  # type: ignore[assignment]
        broken.datagramReceived(invite(), ("192.0.2.7", 5080))
        broken.datagramReceived(b"junk", ("192.0.2.7", 5080))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.clock.advance(64 * T1)

    def test_udp_checked_peer_sent_directly(self) -> None:
        """
        On a real port, the first datagram to a peer goes through the
        port's C{write} (which checks the address); later ones go straight
        to its socket; a socket error is left to C{write}, which sends
        again or reports it (logged, the adapter keeps serving).
        """

        class Socket:
            def __init__(self) -> None:
                self.sent: list[tuple[str, int]] = []
                self.error: OSError | None = None

            def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
                if self.error is not None:
                    raise self.error
                self.sent.append(addr)
                return len(data)

        class Port(FakeUdpTransport):
            def __init__(self) -> None:
                super().__init__()
                self.socket = Socket()
                self.refuse = False

            def write(self, data: bytes, addr: tuple[str, int]) -> None:
                if self.refuse:
                    raise OSError("no buffer space")
                super().write(data, addr)

        port = Port()
        self.protocol.transport = port  # type: ignore[assignment]
        self.protocol.datagramReceived(invite(), ("192.0.2.7", 5080))
        self.assertEqual([addr for _, addr in port.written], [("192.0.2.7", 5080)])
        self.assertEqual(port.socket.sent, [("192.0.2.7", 5080)] * 2)
        self.assertEqual(self.protocol.checked, {"192.0.2.7"})
        port.socket.error = OSError("interrupted")
        self.protocol.datagramReceived(invite(call_id="c2", branch="z9hG4bK2"), ("192.0.2.7", 5080))
        self.assertEqual(len(port.written), 4)
        port.refuse = True
        self.protocol.datagramReceived(invite(call_id="c3", branch="z9hG4bK3"), ("192.0.2.7", 5080))
        self.assertEqual(len(port.written), 4)
        self.clock.advance(64 * T1)

    def test_tcp(self) -> None:
        """
        Over TCP, messages split across segments are answered on the
        connection; an unframeable message closes it.
        """
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from cryptify.protocols.sip.transport import SipStreamFactory

        proto = SipStreamFactory(self.sif).buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        proto.makeConnection(transport)
        data = invite().replace(b"UDP", b"TCP")
        proto.dataReceived(data[:50])
        proto.dataReceived(data[50:])
        out = transport.value()
        self.assertEqual(out.count(b"SIP/2.0 200 OK"), 1)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: x\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        self.clock.advance(64 * T1)


class ResponseRoutingTests(SifCase):
    """
    Where responses over UDP go (RFC 3261 18.2.2, RFC 3581) and what the
    top Via of each response says about the request's source.
    """

    def options(self, via: str, call_id: str) -> bytes:
        return (
            "OPTIONS sip:cig@192.0.2.9 SIP/2.0\r\n"
            f"Via: {via}\r\nVia: SIP/2.0/UDP 192.0.2.99;branch=z9hG4bKlower\r\n"
            "From: <sip:101@pbx.com>;tag=x\r\nTo: <sip:cig@192.0.2.9>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()

    def test_destinations(self) -> None:
        """
        With C{rport} the answer goes to the source address and port, and
        the Via gets C{received} and C{rport=PORT}; without it, to the
        source address at the sent-by port (or 5060), C{received} added
        only when the sent-by is a name or another address. C{maddr} is not
        followed. Lower Vias are copied unchanged, and a request that cannot
        be parsed is answered the same way.
        """
        transport = FakeUdpTransport()
        self.protocol.transport = transport  # type: ignore[assignment]
        source = ("192.0.2.7", 40123)
        cases = [
            ("SIP/2.0/UDP 192.0.2.7:5080;branch=z9hG4bK1", ("192.0.2.7", 5080), ""),
            ("SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK2", ("192.0.2.7", 5060), ""),
            (
                "SIP/2.0/UDP pbx.example.com:5070;branch=z9hG4bK3",
                ("192.0.2.7", 5070),
                ";received=192.0.2.7",
            ),
            (
                "SIP/2.0/UDP 198.51.100.1;branch=z9hG4bK4;maddr=203.0.113.9",
                ("192.0.2.7", 5060),
                ";received=192.0.2.7",
            ),
            (
                "SIP/2.0/UDP 192.0.2.7:5080;rport;branch=z9hG4bK5",
                source,
                ";received=192.0.2.7;rport=40123",
            ),
            (
                "SIP/2.0/UDP nat.example.com;branch=z9hG4bK6;rport",
                source,
                ";received=192.0.2.7;rport=40123",
            ),
        ]
        for i, (via, where, added) in enumerate(cases):
            with self.subTest(via=via):
                transport.written.clear()
                self.protocol.datagramReceived(self.options(via, f"r{i}"), source)
                [(data, addr)] = transport.written
                self.assertEqual(addr, where)
                response = parse_datagram(data)
                assert isinstance(response, Response)
                vias = response.headers.values("Via")
                top = vias[0]
                self.assertIn(added or ";branch", top)
                if not added:
                    self.assertNotIn("received", top)
                self.assertEqual(vias[1], "SIP/2.0/UDP 192.0.2.99;branch=z9hG4bKlower")
        transport.written.clear()
        bad = self.options("SIP/2.0/UDP pbx.example.com;rport;branch=z9hG4bK7", "r9")
        self.protocol.datagramReceived(bad.replace(b"1 OPTIONS", b"1 INVITE"), source)
        [(data, addr)] = transport.written
        self.assertEqual(addr, source)
        self.assertIn(";received=192.0.2.7;rport=40123", data.decode())
        self.clock.advance(64 * T1)

    def test_tcp_stamped(self) -> None:
        """
        Over TCP the answer goes back on the connection, its Via stamped too.
        """
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from cryptify.protocols.sip.transport import SipStreamFactory

        proto = SipStreamFactory(self.sif).buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        proto.makeConnection(transport)
        proto.dataReceived(self.options("SIP/2.0/TCP pbx.example.com;rport;branch=z9hG4bK8", "t"))
        self.assertIn(b";received=192.0.2.7;rport=40000", transport.value())
        self.clock.advance(64 * T1)


class TortureTreatmentTests(SynchronousTestCase):
    """
    Every RFC 4475 message through the UDP adapter and the SIF, in memory:
    the answer RFC 4475 asks for, sent where RFC 3261 18.2.2 and RFC 3581
    say. (tests/interop/test_sip_torture.py does the same over real UDP.)
    """

    source = ("127.0.0.1", 40000)

    def setUp(self) -> None:
        self.fresh()

    def fresh(self) -> None:
        """A new SIF, with no transaction from an earlier message."""
        self.clock = Clock()
        self.tel = StubTelSide("answer")
        config = parse_cig_config(
            TORTURE_MAPS + "interfaces { tel { extension map tel2sip; source map telsrc; }"
            " sip { extension map sip2tel; bind 127.0.0.1 5999; messaging true; } }"
        )
        self.sif = Sif(config, self.clock, self.tel, CallTable(self.clock))
        self.transport = FakeUdpTransport()
        self.protocol = SipDatagramProtocol(self.sif)
        self.protocol.transport = self.transport  # type: ignore[assignment]
        self.addCleanup(self.sif.stop)

    def test_every_message(self) -> None:
        """
        Each message, sent alone from 127.0.0.1:40000, gets its final
        status (after at most a 100) at the address its Via says, or,
        for a response, nothing.
        """
        for name, treatment in sorted(TREATMENTS.items()):
            with self.subTest(name=name, section=treatment.section):
                self.fresh()
                self.protocol.datagramReceived(read_torture(name), self.source)
                answers = [(parse_datagram(d), a) for d, a in self.transport.written]
                if treatment.final is None:
                    self.assertEqual(answers, [], name)
                    continue
                statuses = [m.status for m, _ in answers if isinstance(m, Response)]
                self.assertEqual(statuses[-1:], [treatment.final], f"{name}: {treatment.why}")
                self.assertLessEqual(set(statuses[:-1]), {100, 180}, name)
                port = self.source[1] if treatment.where == "source" else int(treatment.where)
                self.assertEqual({a for _, a in answers}, {("127.0.0.1", port)}, name)
                self.assertEqual({m.call_id for m, _ in answers}, {call_id_of(name)}, name)

    def test_bext01_unsupported(self) -> None:
        """
        C{bext01}: the 420 lists the Require options, not the Proxy-Require ones.
        """
        self.protocol.datagramReceived(read_torture("bext01"), self.source)
        [(data, _)] = self.transport.written
        response = parse_datagram(data)
        assert isinstance(response, Response)
        self.assertEqual(
            response.headers.get("Unsupported"), "nothingSupportsThis, nothingSupportsThisEither"
        )
        self.clock.advance(64 * T1)

    def test_rfc2543_call(self) -> None:
        """
        C{inv2543}: the RFC 2543 INVITE (no From tag, no branch, no Contact,
        no Max-Forwards) is answered 200; its ACK stops the 200 and its BYE
        ends the call. The CIG's own BYE would go to the caller's From URI.
        """
        self.protocol.datagramReceived(read_torture("inv2543"), self.source)
        ok = parse_datagram(self.transport.written[-1][0])
        assert isinstance(ok, Response) and ok.status == 200
        call = self.sif.dialogs[(ok.call_id, ok.to.tag or "", "")]
        assert isinstance(call, SipCall) and call.dialog is not None
        self.assertEqual(
            call.dialog.remote_target, "sip:+13035551111@ift.client.example.net;user=phone"
        )
        head = (
            "Via: SIP/2.0/UDP iftgw.example.com\r\n"
            "From: <sip:+13035551111@ift.client.example.net;user=phone>\r\n"
            f"To: {ok.headers.get('To')}\r\nCall-ID: {ok.call_id}\r\n"
        )
        self.transport.written.clear()
        self.protocol.datagramReceived(
            f"ACK sip:UserB@example.com SIP/2.0\r\n{head}CSeq: 56 ACK\r\n\r\n".encode(),
            self.source,
        )
        self.clock.advance(10)
        self.assertEqual(self.transport.written, [])
        self.protocol.datagramReceived(
            f"BYE sip:UserB@example.com SIP/2.0\r\n{head}CSeq: 57 BYE\r\n\r\n".encode(),
            self.source,
        )
        [(data, addr)] = self.transport.written
        bye_ok = parse_datagram(data)
        assert isinstance(bye_ok, Response)
        self.assertEqual((bye_ok.status, addr), (200, ("127.0.0.1", 5060)))
        self.assertTrue(call.ended)
        self.clock.advance(64 * T1)


class StubTelSideTests(SynchronousTestCase):
    """
    The stub tel side (C{twistd cig --tel-stub}) keeps its latest legs and
    hang-ups for inspection, not every call of a long run.
    """

    def test_keeps_latest(self) -> None:
        """
        Past twice L{STUB_KEEPS} legs the oldest half goes; the ids it
        gives legs keep counting.
        """

        class Leg:
            def trying(self) -> None:
                pass

            def ringing(self) -> None:
                pass

            def answered(self) -> None:
                pass

        stub = StubTelSide("answer")
        calls = [Call(f"sip:{n}@pbx", "sip:cig") for n in range(2 * STUB_KEEPS + 5)]
        for call in calls:
            stub.place_call(call, Leg())  # type: ignore[arg-type]
            stub.hang_up(call)
        self.assertEqual(len(stub.legs), STUB_KEEPS + 5)
        self.assertEqual(stub.legs[-1][0], calls[-1])
        self.assertEqual(stub.hung_up[-1], calls[-1])
        self.assertLess(len(stub.hung_up), 2 * STUB_KEEPS)
        self.assertEqual(calls[-1].callee_if_id, f"stub-{len(calls)}")


class SessionLineTests(SynchronousTestCase):
    """
    The session.log record format.
    """

    def test_format(self) -> None:
        """
        The manual's nine comma-separated fields, UTC time second, then
        the call's source.
        """
        from cryptify.cig.calls import Call

        call = Call(
            "sip:101@pbx.com", "sip:9467@secure.com", "tel:+8888;101", "tel:+467", None, "c1"
        )
        call.source = "tcp:[2001:db8::1]:5060"
        line = session_line(call, "routed", 0.0)
        self.assertEqual(
            line,
            "event, 1970-01-01 00:00:00.000, sip:101@pbx.com, sip:9467@secure.com, "
            "tel:+8888;101, tel:+467, routed, c1, -, tcp:[2001:db8::1]:5060",
        )

    def test_peer_control_characters(self) -> None:
        """
        A URI from a PBX with control characters stays on its one record,
        the characters written as escapes.
        """
        from cryptify.cig.calls import Call

        call = Call("sip:1\x1b[2J@pbx.com", "sip:2@secure.com", "tel:+1", "tel:+2", None, "c2")
        line = session_line(call, "routed", 0.0)
        self.assertIn("sip:1\\x1b[2J@pbx.com,", line)
        self.assertTrue(line.isprintable())


class SessionLogServiceTests(SynchronousTestCase):
    """
    C{session.log} on disk: the records of one reactor turn in one write.
    """

    def setUp(self) -> None:
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="cry-sessionlog-")
        self.clock = Clock()
        self.records = SessionRecords()
        self.service = SessionLogService(self.dir, self.clock, self.records)
        self.service.startService()
        self.addCleanup(self._cleanup)

    def _cleanup(self) -> None:
        import shutil

        if self.service.running:
            self.service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        shutil.rmtree(self.dir)

    def content(self) -> str:
        with open(os.path.join(self.dir, "session.log")) as f:
            return f.read()

    def test_turn_written_at_its_end(self) -> None:
        """
        Records reach the file, in order, when the turn that made them
        ends; a later turn's records follow.
        """
        self.records.write("one")
        self.records.write("two")
        self.assertEqual(self.content(), "")
        self.clock.advance(0)
        self.assertEqual(self.content(), "one\ntwo\n")
        self.records.write("three")
        self.clock.advance(0)
        self.assertEqual(self.content(), "one\ntwo\nthree\n")

    def test_stop_writes_what_is_pending(self) -> None:
        """Stopping writes the records not yet written and stops observing."""
        self.records.write("last")
        self.service.stopService()
        self.assertEqual(self.content(), "last\n")
        self.assertEqual(self.records.observers, [])

    def test_call_table_events(self) -> None:
        """The call table's events are the records written."""
        from cryptify.cig.calls import Call

        table = CallTable(self.clock)
        # The table writes to the process's records: watch those here.
        self.service.stopService()
        service = SessionLogService(self.dir, self.clock)
        service.startService()
        call = Call("sip:101@pbx.com", "sip:9467@secure.com")
        table.event(call, "routing")
        self.clock.advance(0)
        service.stopService()
        self.assertIn(", routing, ", self.content())


class OutgoingCallTests(OutgoingCase):
    """
    Calls the tel side places towards the PBX through the SIF.
    """

    def test_answered_then_bye_from_pbx(self) -> None:
        """
        The INVITE carries our offer; 100, 180 and 200 reach the leg as
        trying, ringing, answered; the 200 is ACKed in the dialog; the
        PBX's BYE hangs the leg up.
        """
        invite = self.place()
        self.assertEqual((invite.method, invite.uri), ("INVITE", "sip:101@192.0.2.50:5070"))
        self.assertEqual(invite.from_.uri, "sip:4670123456@secure.com")
        audio = parse_sdp(invite.body).audio()
        assert audio is not None
        self.assertTrue(1024 <= audio.port <= 2048)
        for status in (100, 180, 200):
            self.answer(invite, status)
        self.assertEqual(self.leg.events, ["trying", "ringing", "answered"])
        ack = self.channel.messages()[-1]
        assert isinstance(ack, Request)
        self.assertEqual((ack.method, str(ack.cseq), ack.to.tag), ("ACK", "1 ACK", "pbx1"))
        self.assertEqual(self.calls.rows()[0][4], "ANSWER")
        self.assertEqual(self.states(), ["trying", "ringing", "talk"])
        bye = (
            "BYE sip:192.168.1.1:5060 SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bKbye\r\n"
            f"From: <sip:101@192.0.2.50:5070>;tag=pbx1\r\nTo: {invite.headers.get('From')}\r\n"
            f"Call-ID: {invite.call_id}\r\nCSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        self.assertEqual(self.statuses(self.send(bye)), [200])
        self.assertEqual(self.leg.events[-1], "hung up")
        self.assertEqual(self.calls.rows()[0][4], "HANGUP")
        self.clock.advance(64 * T1)
        self.clock.advance(CALL_LINGER)

    def test_hang_up_after_answer(self) -> None:
        """
        The tel side hanging up an answered call sends BYE.
        """
        invite = self.place()
        self.answer(invite, 200)
        self.sif.hang_up(self.call)
        bye = self.channel.messages()[-1]
        assert isinstance(bye, Request)
        self.assertEqual((bye.method, bye.uri), ("BYE", "sip:101@192.0.2.50:5070"))
        self.answer(bye, 200)  # type: ignore[arg-type]
        self.clock.advance(64 * T1)
        self.clock.advance(CALL_LINGER)

    def test_cancel_while_ringing(self) -> None:
        """
        Hanging up while it rings sends CANCEL on the INVITE's branch; the
        487 is ACKed by the transaction and not reported as a rejection.
        """
        invite = self.place()
        self.answer(invite, 180)
        self.sif.hang_up(self.call)
        cancel = self.channel.messages()[-1]
        assert isinstance(cancel, Request)
        self.assertEqual(cancel.method, "CANCEL")
        self.assertEqual(cancel.vias[0].branch, invite.vias[0].branch)
        self.answer(invite, 487)
        last = self.channel.messages()[-1]
        self.assertEqual(getattr(last, "method", None), "ACK")
        self.assertEqual(self.leg.events, ["ringing"])
        self.assertEqual(self.calls.rows()[0][4], "HANGUP")
        self.clock.advance(64 * T1)
        self.clock.advance(CALL_LINGER)

    def test_cancel_waits_for_provisional(self) -> None:
        """
        Hanging up before any provisional response sends the CANCEL when
        the first one arrives.
        """
        invite = self.place()
        self.sif.hang_up(self.call)
        self.assertEqual(
            len([m for m in self.channel.messages() if getattr(m, "method", "") == "CANCEL"]), 0
        )
        self.answer(invite, 100)
        self.assertEqual(getattr(self.channel.messages()[-1], "method", None), "CANCEL")
        self.clock.advance(64 * T1)
        self.clock.advance(CALL_LINGER)

    def test_rejected_and_timeout(self) -> None:
        """
        A 486 is reported with its status; silence is 408 after timer B.
        """
        invite = self.place()
        self.answer(invite, 486)
        self.assertEqual(self.leg.events, ["rejected 486"])
        self.assertEqual(self.calls.rows()[0][4], "REJECT")
        self.leg.events.clear()
        self.place()
        self.clock.advance(64 * T1)
        self.assertEqual(self.leg.events, ["rejected 408"])
        self.clock.advance(CALL_LINGER)

    def test_unreachable_uris(self) -> None:
        """
        A TEL URI is refused with 484, a host name with 502 when the SIF
        has no resolver.
        """
        self.assertIsNone(self.place("tel:+101"))
        self.assertIsNone(self.place("sip:101@pbx.com"))
        self.assertEqual(self.leg.events, ["rejected 484", "rejected 502"])


class FakeResolver:
    """A resolver the test answers by hand: C{pending[name]} per lookup."""

    def __init__(self) -> None:
        self.pending: dict[str, Deferred[str]] = {}

    def __call__(self, name: str) -> Deferred[str]:
        self.pending[name] = Deferred()
        return self.pending[name]


class LocatedCallTests(OutgoingCase):
    """
    Calls to host names (looked up with the resolver) and over TCP.
    """

    def setUp(self) -> None:
        super().setUp()
        self.resolver = FakeResolver()
        self.sif.resolve = self.resolver
        self.udp_to: list[tuple[str, int]] = []
        self.tcp_to: list[tuple[str, int]] = []
        self.tcp = FakeChannel(reliable=True)

        def udp(address: tuple[str, int]) -> FakeChannel:
            self.udp_to.append(address)
            return self.channel

        def tcp(address: tuple[str, int]) -> Deferred[Channel]:
            self.tcp_to.append(address)
            return succeed(self.tcp)

        self.sif.channel_to = udp
        self.sif.tcp_channel = tcp

    def test_name_resolved(self) -> None:
        """
        A host name is looked up; the INVITE goes to its address on the
        default port 5060, keeping the name in the request-URI.
        """
        self.assertIsNone(self.place("sip:101@pbx.com"))
        self.assertEqual(self.channel.sent, [])
        self.resolver.pending["pbx.com"].callback("192.0.2.60")
        self.assertEqual(self.udp_to, [("192.0.2.60", 5060)])
        invite = self.channel.messages()[-1]
        assert isinstance(invite, Request)
        self.assertEqual(invite.uri, "sip:101@pbx.com")
        self.answer(invite, 486)
        self.assertEqual(self.leg.events, ["rejected 486"])
        self.clock.advance(64 * T1)
        self.clock.advance(CALL_LINGER)

    def test_lookup_fails(self) -> None:
        """A name that does not resolve is refused with 502; the RTP port comes back."""
        self.place("sip:101@nowhere.example:5070")
        self.assertEqual(len(self.sif.rtp_ports.used), 1)
        self.resolver.pending["nowhere.example"].errback(DNSLookupError("nowhere.example"))
        self.assertEqual(self.leg.events, ["rejected 502"])
        self.assertEqual(self.sif.rtp_ports.used, set())

    def test_hang_up_while_resolving(self) -> None:
        """Hanging up before the lookup ends sends nothing and reports nothing."""
        self.place("sip:101@pbx.com")
        self.sif.hang_up(self.call)
        self.resolver.pending["pbx.com"].callback("192.0.2.60")
        self.assertEqual((self.channel.sent, self.leg.events), ([], []))

    def test_tcp(self) -> None:
        """
        C{;transport=tcp} sends on the TCP channel with a TCP Via and a
        Contact asking for TCP; nothing is retransmitted on it.
        """
        self.place("sip:101@192.0.2.50:5070;transport=tcp")
        self.assertEqual(self.tcp_to, [("192.0.2.50", 5070)])
        invite = self.tcp.messages()[-1]
        assert isinstance(invite, Request)
        self.assertEqual(invite.vias[0].transport, "TCP")
        self.assertIn(";transport=tcp", invite.headers.get("Contact") or "")
        self.clock.advance(10 * T1)
        self.assertEqual(len(self.tcp.sent), 1)
        self.sif.message_received(
            response_to(invite.headers, 200, to_tag="t", extra=CONTACT, body=OFFER.encode()),
            self.tcp,
        )
        self.assertEqual(self.leg.events, ["answered"])
        self.assertEqual(getattr(self.tcp.messages()[-1], "method", None), "ACK")
        self.sif.hang_up(self.call)
        self.clock.advance(64 * T1)
        self.clock.advance(CALL_LINGER)

    def test_no_tcp(self) -> None:
        """Without a TCP transport a C{;transport=tcp} URI is refused with 503."""
        self.sif.tcp_channel = None
        self.place("sip:101@192.0.2.50;transport=tcp")
        self.assertEqual(self.leg.events, ["rejected 503"])
