"""What the CIG SIP-side tests share: SIP request builders and the
L{SifCase}/L{OutgoingCase} fixtures (a Sif with recording channels)."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.calls import CallTable, StubTelSide, session_records
from cryptify.cig.sif.core import Sif
from cryptify.config import load_cig_config
from cryptify.protocols.sip.digest import (
    Challenge,
    Credentials,
    parse_params,
    response_digest,
)
from cryptify.protocols.sip.message import Request, Response, parse_datagram, response_to
from cryptify.protocols.sip.transport import SipDatagramProtocol
from tests.fakes import FakeChannel, RecordingLeg

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "config")


OFFER = (
    "v=0\r\no=pbx 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    "m=audio 6000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)


CONTACT = (("Content-Type", "application/sdp"), ("Contact", "<sip:101@192.0.2.50:5070>"))


def invite(
    to: str = "sip:94670123456@secure.com",
    frm: str = "sip:101@pbx.com",
    call_id: str = "c1",
    branch: str = "z9hG4bK1",
    body: str = OFFER,
    extra: str = "",
) -> bytes:
    return (
        f"INVITE {to} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch};rport\r\n"
        f"From: <{frm}>;tag=f1\r\nTo: <{to}>\r\nCall-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\nContact: <sip:101@192.0.2.1:5060>\r\nMax-Forwards: 70\r\n"
        f"{extra}Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def in_dialog(method: str, ok: Response, cseq: int = 2, branch: str = "z9hG4bK2") -> bytes:
    to = ok.headers.get("To")
    return (
        f"{method} sip:192.0.2.9:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n"
        f"From: {ok.headers.get('From')}\r\nTo: {to}\r\nCall-ID: {ok.call_id}\r\n"
        f"CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class SifCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.tel = StubTelSide("answer")
        self.calls = CallTable(self.clock)
        config = load_cig_config(os.path.join(FIXTURES, "cig-simple.conf"))
        self.sif = Sif(config, self.clock, self.tel, self.calls)
        self.channel = FakeChannel()
        self.protocol = SipDatagramProtocol(self.sif)
        self.session: list[str] = []

        session_records.add(self.session.append)
        self.addCleanup(session_records.remove, self.session.append)
        self.addCleanup(self.assert_no_timers)

    def assert_no_timers(self) -> None:
        self.sif.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def send(self, data: bytes) -> list[Request | Response]:
        before = len(self.channel.sent)
        self.sif.message_received(parse_datagram(data), self.channel)  # type: ignore[arg-type]
        return self.channel.messages()[before:]

    def statuses(self, messages: list[Request | Response]) -> list[int]:
        return [m.status for m in messages if isinstance(m, Response)]

    def states(self) -> list[str]:
        return [line.split(", ")[6] for line in self.session]


class OutgoingCase(SifCase):
    """A SIF placing calls on a fake channel, reporting to a L{RecordingLeg}."""

    def setUp(self) -> None:
        super().setUp()
        self.sif.channel_to = lambda address: self.channel
        self.leg = RecordingLeg()

    def place(self, to: str = "sip:101@192.0.2.50:5070") -> Request:
        from cryptify.cig.calls import Call

        self.call = Call("tel:+4670123456", "tel:+8888;101", "sip:4670123456@secure.com", to)
        self.sif.place_call(self.call, self.leg)
        sent = self.channel.messages()
        if not sent:
            return None  # type: ignore[return-value]
        invite = sent[-1]
        assert isinstance(invite, Request)
        return invite

    def answer(self, invite: Request, status: int, tag: str = "pbx1") -> None:
        from cryptify.protocols.sip.message import response_to

        extra = (("Contact", "<sip:101@192.0.2.50:5070>"),)
        body = b""
        if status == 200:
            body = OFFER.encode()
            extra += (("Content-Type", "application/sdp"),)
        response = response_to(invite.headers, status, to_tag=tag, extra=extra, body=body)
        self.sif.message_received(response, self.channel)


CREDENTIALS = Credentials("cig", "trunk-secret")


def challenge(
    request: Request,
    status: int = 407,
    realm: str = "pbx.example",
    nonce: str = "n1",
    stale: bool = False,
    algorithm: str = "MD5",
) -> Response:
    """A 401/407 to C{request} with one Digest challenge."""
    header = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
    value = f'Digest realm="{realm}", nonce="{nonce}", qop="auth", algorithm={algorithm}'
    if stale:
        value += ", stale=TRUE"
    return response_to(request.headers, status, to_tag="pbx1", extra=((header, value),))


def verify(request: Request, header: str, credentials: Credentials = CREDENTIALS) -> bool:
    """What the PBX would do: recompute the response from the request and the password."""
    value = request.headers.get(header)
    assert value is not None, f"no {header}"
    params = parse_params(value.partition(" ")[2])
    found = Challenge(
        "WWW-Authenticate",
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=params["algorithm"].upper(),
        qop=(params["qop"],) if "qop" in params else (),
    )
    expected, _ = response_digest(
        found,
        credentials,
        request.method,
        params["uri"],
        params.get("cnonce", ""),
        int(params.get("nc", "1"), 16),
        request.body,
    )
    return params["response"] == expected and params["uri"] == request.uri


def reinvite_request(ok: Response, cseq: int, body: str | bytes) -> bytes:
    """The PBX's re-INVITE in the dialog of a call it placed (C{ok}: our 200)."""
    octets = body.encode() if isinstance(body, str) else body
    return (
        f"INVITE sip:192.0.2.9:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKre{cseq}\r\n"
        f"From: {ok.headers.get('From')}\r\nTo: {ok.headers.get('To')}\r\n"
        f"Call-ID: {ok.call_id}\r\n"
        f"CSeq: {cseq} INVITE\r\nContact: <sip:101@192.0.2.1:5060>\r\n"
        f"Max-Forwards: 70\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(octets)}\r\n\r\n"
    ).encode() + octets
