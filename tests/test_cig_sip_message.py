"""SIP MESSAGE both ways through the CIG (RFC 3428, ``sip { messaging true; }``).

- :mod:`cryptify.cig.mail.sip`: what a PBX's MESSAGE may carry (hypothesis
  on the Content-Type and body checks) and the post key;
- the SIF answering the PBX's MESSAGEs (202 once posted, 404, 405, 413,
  415, 480/503 with Retry-After), and sending MESSAGEs to the PBX (digest
  challenges, timeouts, the UDP size limit);
- :class:`~cryptify.cig.mail.deskbase.MailDesk` sealing and posting the
  PBX's text, and sending secure users' messages on to the PBX, confirmed
  ``delivered`` only on a 2xx, retried on passing failures, refused back
  to the sender otherwise.

All in memory: a Clock, a recording SIP channel, a session whose posts
the test answers.
"""

from __future__ import annotations

import os
import time
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.mail import desk as deskbase
from cryptify.cig.mail.sip import (
    MAX_SIP_TEXT,
    MAX_UDP_MESSAGE,
    RETRY_AFTER,
    SipAnswer,
    SipTextError,
    media_type,
    post_key,
    text_of,
)
from cryptify.cig.mail.wiring import MailDesk
from cryptify.cig.route import Router
from cryptify.cig.sif.auth import Keyring
from cryptify.client.messages import MessageCrypto
from cryptify.client.session import Answered, Incoming
from cryptify.config import load_cig_config
from cryptify.config.cig_model import Mailboxes, PbxAccount
from cryptify.protocols.message_payload import Attachment, MessageBody
from cryptify.protocols.sip.locate import locate
from cryptify.protocols.sip.message import Request, Response, response_to
from cryptify.protocols.sip.transaction import T1
from cryptify.protocols.umsg import Message, message
from tests.fakes import FakeChannel, attached, material
from tests.sip_support import CREDENTIALS, FIXTURES, OutgoingCase, SifCase, challenge, verify

CIG = "tel:+8888"
USER = "tel:+4670123456"
PBX_USER = "sip:101@pbx.com"
#: What the simple configuration makes of a MESSAGE from PBX_USER to USER.
SIP_TO = "sip:94670123456@secure.com"


def sip_message(
    body: bytes = b"hello",
    content_type: str | None = "text/plain;charset=UTF-8",
    to: str = SIP_TO,
    frm: str = PBX_USER,
    call_id: str = "m1",
    cseq: int = 1,
    branch: str = "z9hG4bKm1",
) -> bytes:
    ctype = f"Content-Type: {content_type}\r\n" if content_type is not None else ""
    return (
        f"MESSAGE {to} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch};rport\r\n"
        f"From: <{frm}>;tag=f1\r\nTo: <{to}>\r\nCall-ID: {call_id}\r\n"
        f"CSeq: {cseq} MESSAGE\r\nMax-Forwards: 70\r\n"
        f"{ctype}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# ---------------------------------------------------------------- what a MESSAGE carries


class TextTests(SynchronousTestCase):
    """text_of() takes text/plain in UTF-8 and answers everything else with a status."""

    def test_taken(self) -> None:
        for ctype, body, text in (
            (None, b"hej", "hej"),
            ("text/plain", "hej å".encode(), "hej å"),
            ("Text/Plain; charset=utf-8", "å".encode(), "å"),
            ('text/plain; charset="UTF-8"', b"x", "x"),
            ("text/plain;charset=us-ascii;", b"plain", "plain"),
            ("text/plain; format=flowed; charset=UTF-8", b"", ""),
        ):
            with self.subTest(ctype=ctype):
                self.assertEqual(text_of(ctype, body), text)

    def test_refused(self) -> None:
        cases = {
            ("text/html", b"<b>x</b>"): 415,
            ("application/im-iscomposing+xml", b"x"): 415,
            ("message/cpim", b"x"): 415,
            ("text/plain; charset=ISO-8859-1", b"x"): 415,
            ("text/plain", b"\xff\xfe"): 415,
            ("text/plain; charset=us-ascii", "å".encode()): 415,
            ("text/plain", b"a\x00b"): 415,
            ("text/plain", b"x" * (MAX_SIP_TEXT + 1)): 413,
            ("text", b"x"): 400,
            ("text/plain; charset", b"x"): 400,
            ('text/plain; charset="a"b"', b"x"): 400,
            ("text/plain; x=" + "y" * 300, b"x"): 400,
        }
        for (ctype, body), status in cases.items():
            with self.subTest(ctype=ctype[:40], body=body[:10]):
                with self.assertRaises(SipTextError) as caught:
                    text_of(ctype, body)
                self.assertEqual(caught.exception.status, status)
        self.assertEqual(len(text_of("text/plain", b"x" * MAX_SIP_TEXT)), MAX_SIP_TEXT)

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.none(), st.text(max_size=300)), st.binary(max_size=200))
    def test_hostile(self, ctype: str | None, body: bytes) -> None:
        """Any Content-Type and body: the text, or a SipTextError with 400, 413 or 415."""
        try:
            text = text_of(ctype, body)
        except SipTextError as exc:
            self.assertIn(exc.status, (400, 413, 415))
            self.assertTrue(exc.reason)
        else:
            self.assertEqual(text.encode(), body)

    @settings(max_examples=200, deadline=None)
    @given(
        st.sampled_from(["text/plain", "TEXT/PLAIN", "text/Plain"]),
        st.lists(
            st.tuples(
                st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True).filter(
                    lambda n: n != "charset"
                ),
                st.from_regex(r"[A-Za-z0-9.-]{1,12}", fullmatch=True),
                st.booleans(),
            ),
            max_size=4,
        ),
        st.text(max_size=100).filter(lambda t: "\x00" not in t),
    )
    def test_parameters_kept(
        self, kind: str, params: list[tuple[str, str, bool]], text: str
    ) -> None:
        """Well-formed parameters (quoted or not) are read back; the text passes."""
        value = kind + "".join(f'; {n}="{v}"' if q else f";{n}={v}" for n, v, q in params)
        got_kind, got = media_type(value)
        self.assertEqual(got_kind, "text/plain")
        self.assertEqual(got, {n: v for n, v, _ in params})
        self.assertEqual(text_of(value + "; charset=UTF-8", text.encode()), text)

    def test_post_key(self) -> None:
        """Same request, same key; any part different, another key."""
        key = post_key("c", "t", "1 MESSAGE", b"x")
        self.assertEqual(len(key), 16)
        self.assertEqual(key, post_key("c", "t", "1 MESSAGE", b"x"))
        for other in (("c2", "t", "1 MESSAGE", b"x"), ("c", "t", "2 MESSAGE", b"x"),
                      ("c", "t2", "1 MESSAGE", b"x"), ("c", "t", "1 MESSAGE", b"y"),
                      ("ct", "", "1 MESSAGE", b"x")):  # fmt: skip
            self.assertNotEqual(key, post_key(*other))


# ---------------------------------------------------------------- the SIF, PBX -> secure


@attrs.define
class FakeDesk:
    """The mailboxes as the SIF sees them: posts recorded, answered by the test."""

    posts: list[tuple[str, str, str, bytes, Deferred[SipAnswer]]] = attrs.field(factory=list)

    def from_sip(self, sender: str, recipient: str, text: str, key: bytes) -> Deferred[SipAnswer]:
        done: Deferred[SipAnswer] = Deferred()
        self.posts.append((sender, recipient, text, key, done))
        return done


class SifInboundTests(SifCase):
    """MESSAGEs from the PBX: checked, routed, answered once the CRS has them."""

    def setUp(self) -> None:
        super().setUp()
        self.desk = FakeDesk()
        self.sif.messages = self.desk

    def final(self, sent: list[Request | Response]) -> Response:
        [response] = [m for m in sent if isinstance(m, Response)]
        return response

    def test_answered_202_once_posted(self) -> None:
        """Nothing is answered until the CRS stored it; then 202, once, even
        for a retransmission meanwhile."""
        self.assertEqual(self.send(sip_message("hej då".encode())), [])
        [(sender, recipient, text, key, done)] = self.desk.posts
        self.assertEqual((sender, recipient, text), ("tel:+8888;101", USER, "hej då"))
        self.assertEqual(key, post_key("m1", "f1", "1 MESSAGE", "hej då".encode()))
        self.assertEqual(self.send(sip_message("hej då".encode())), [])  # retransmission
        self.assertEqual(len(self.desk.posts), 1)
        done.callback(SipAnswer(202))
        response = self.final(self.channel.messages())
        self.assertEqual(response.status, 202)
        self.assertIsNotNone(response.to.tag)
        self.assertEqual(self.statuses(self.send(sip_message("hej då".encode()))), [202])
        self.clock.advance(64 * T1)

    def test_retry_after(self) -> None:
        """A CRS that is away: 503 with Retry-After."""
        self.send(sip_message())
        self.desk.posts[0][4].callback(SipAnswer(503, RETRY_AFTER, "away"))
        response = self.final(self.channel.messages())
        self.assertEqual((response.status, response.headers.get("Retry-After")), (503, "30"))
        self.clock.advance(64 * T1)

    def test_no_route_404(self) -> None:
        response = self.final(self.send(sip_message(to="sip:555@secure.com")))
        self.assertEqual(response.status, 404)
        self.assertEqual(self.desk.posts, [])
        self.clock.advance(64 * T1)

    def test_refused_bodies(self) -> None:
        """415 (with Accept: text/plain) for other media types, 413 for too large."""
        response = self.final(self.send(sip_message(b"<b/>", "text/html")))
        self.assertEqual((response.status, response.headers.get("Accept")), (415, "text/plain"))
        big = b"x" * (MAX_SIP_TEXT + 1)
        response = self.final(self.send(sip_message(big, branch="z9hG4bKm2", call_id="m2")))
        self.assertEqual(response.status, 413)
        self.assertEqual(self.desk.posts, [])
        self.clock.advance(64 * T1)

    def test_messaging_off_405(self) -> None:
        """messaging false: 405 with an Allow that does not list MESSAGE."""
        self.sif.config = attrs.evolve(
            self.sif.config,
            interfaces=attrs.evolve(
                self.sif.config.interfaces,
                sip=attrs.evolve(self.sif.config.interfaces.sip, messaging=False),
            ),
        )
        response = self.final(self.send(sip_message()))
        self.assertEqual(response.status, 405)
        self.assertNotIn("MESSAGE", response.headers.get("Allow") or "")
        self.clock.advance(64 * T1)

    def test_no_desk_480(self) -> None:
        self.sif.messages = None
        response = self.final(self.send(sip_message()))
        self.assertEqual((response.status, response.headers.get("Retry-After")), (480, "30"))
        self.clock.advance(64 * T1)


# ---------------------------------------------------------------- the SIF, secure -> PBX


class SifOutboundTests(OutgoingCase):
    """Sif.send_message: a MESSAGE to the PBX, its final status."""

    def setUp(self) -> None:
        super().setUp()
        self.sif.keyring = Keyring(
            (
                (
                    PbxAccount("sip:192.0.2.50:5070", "cig", password="trunk-secret"),
                    locate("sip:192.0.2.50:5070"),
                    CREDENTIALS,
                ),
            )
        )
        self.heard: list[int] = []

    def send_text(self, text: str = "hi there", to: str = "sip:101@192.0.2.50:5070") -> Request:
        self.sif.send_message("sip:4670123456@secure.com", to, text).addCallback(self.heard.append)
        sent = [m for m in self.channel.messages() if isinstance(m, Request)]
        return sent[-1] if sent else None  # type: ignore[return-value]

    def test_sent_and_answered(self) -> None:
        request = self.send_text("hej då")
        self.assertEqual(request.method, "MESSAGE")
        self.assertEqual(request.uri, "sip:101@192.0.2.50:5070")
        self.assertEqual(request.headers.get("Content-Type"), "text/plain;charset=UTF-8")
        self.assertEqual(request.body, "hej då".encode())
        self.assertEqual(request.from_.uri, "sip:4670123456@secure.com")
        self.assertIsNotNone(request.from_.tag)
        self.sif.message_received(response_to(request.headers, 202, to_tag="p"), self.channel)
        self.assertEqual(self.heard, [202])

    def test_challenged(self) -> None:
        """A 407 is answered with the PBX account's credentials (the body hashed in)."""
        request = self.send_text()
        self.sif.message_received(challenge(request), self.channel)
        again = self.channel.messages()[-1]
        assert isinstance(again, Request)
        self.assertTrue(verify(again, "Proxy-Authorization"))
        self.assertEqual(self.heard, [])
        self.sif.message_received(response_to(again.headers, 200, to_tag="p"), self.channel)
        self.assertEqual(self.heard, [200])

    def test_refused_and_timeout(self) -> None:
        request = self.send_text()
        self.sif.message_received(response_to(request.headers, 100), self.channel)
        self.sif.message_received(response_to(request.headers, 404, to_tag="p"), self.channel)
        self.send_text("two")
        self.clock.advance(64 * T1)
        self.assertEqual(self.heard, [404, 408])

    def test_limits(self) -> None:
        """Not a SIP URI: 484. Over 1300 octets on UDP: 513, nothing sent."""
        before = len(self.channel.sent)
        self.send_text(to="tel:+4612")
        self.send_text("x" * MAX_UDP_MESSAGE)
        self.assertEqual(self.heard, [484, 513])
        self.assertEqual(len(self.channel.sent), before)

    def test_over_tls(self) -> None:
        """A ;transport=tls URI: the name looked up, a TLS channel whose certificate
        must name it, a TLS Via; over a reliable transport the UDP limit does not apply."""
        tls = TlsChannel(reliable=True)
        asked: list[tuple[Any, str]] = []

        def tls_channel(address: Any, host: str) -> Deferred[Any]:
            asked.append((address, host))
            return succeed(tls)

        self.sif.resolve = lambda name: succeed("192.0.2.60")
        self.sif.tls_channel = tls_channel
        self.sif.send_message(
            "sip:4670123456@secure.com", "sip:101@pbx.example;transport=tls", "x" * 2000
        ).addCallback(self.heard.append)
        self.assertEqual(asked, [(("192.0.2.60", 5061), "pbx.example")])
        [request] = tls.messages()
        assert isinstance(request, Request)
        self.assertTrue((request.headers.get("Via") or "").startswith("SIP/2.0/TLS "))
        self.assertEqual(len(request.body), 2000)
        self.sif.message_received(response_to(request.headers, 200, to_tag="p"), tls)
        self.assertEqual(self.heard, [200])
        self.sif.send_message(
            "sip:4670123456@secure.com", "sip:101@pbx.example;transport=tls", "x" * 16384
        ).addCallback(self.heard.append)
        self.assertEqual((self.heard, len(tls.sent)), ([200, 513], 1))

    def test_no_transport(self) -> None:
        self.sif.channel_to = lambda address: None
        self.send_text()
        self.assertEqual(self.heard, [503])


# ---------------------------------------------------------------- the mailboxes' half


class TlsChannel(FakeChannel):
    """A recording channel that says it is TLS."""

    secure = True


@attrs.define
class FakeSip:
    """Sif.send_message as the desk sees it: sends recorded, answered by the test."""

    sent: list[tuple[str, str, str, Deferred[int]]] = attrs.field(factory=list)

    def send_message(self, sender: str, to: str, text: str) -> Deferred[int]:
        done: Deferred[int] = Deferred()
        self.sent.append((sender, to, text, done))
        return done


def crypto(uri: str) -> MessageCrypto:
    return MessageCrypto(material(uri))


class _Desk(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.session, self.sent = attached(CIG)
        self.config = load_cig_config(os.path.join(FIXTURES, "cig-simple.conf"))
        self.sip = FakeSip()
        self.messaging = True
        self.desk = MailDesk(
            self.clock, Mailboxes((), ()), (), lambda: material(CIG), lambda: self.session,
            gid=lambda: None, router=lambda: Router(self.config), sip=self.sip,
            messaging=lambda: self.messaging,
        )  # fmt: skip
        self.desk.startService()
        self.addCleanup(self.desk.stopService)

    def answer(self, sent: Message, type_: str = "posted", **fields: Any) -> None:
        if type_ == "posted":
            fields.setdefault("message", "m-answer")
        self.assertTrue(
            self.desk.handle(Answered(sent["id"], message(type_, id=sent["id"], **fields)))
        )


class DeskFromSipTests(_Desk):
    """MailDesk.from_sip: the PBX's text sealed for the secure user, answered by the CRS's word."""

    def post(self, sender: str = "tel:+8888;101") -> list[SipAnswer]:
        got: list[SipAnswer] = []
        self.desk.from_sip(sender, USER, "hej", b"k" * 16).addCallback(got.append)
        return got

    def test_posted_202(self) -> None:
        """Sealed for the user, signed as the PBX user's extension of the CIG, the
        request's key; 202 only once posted."""
        got = self.post()
        [post] = self.sent
        self.assertEqual((post.type, post["to"], post["key"]), ("post", USER, b"k" * 16))
        opened = crypto(USER).open(post["content"], CIG)
        self.assertEqual((opened.sender, opened.body.text), ("tel:+8888;101", "hej"))
        self.assertEqual(got, [])
        self.answer(post)
        self.assertEqual(got, [SipAnswer(202)])
        self.assertEqual(self.desk.sip_posted, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_foreign_sender_signed_as_cig(self) -> None:
        self.post("tel:+4699")
        opened = crypto(USER).open(self.sent[0]["content"], CIG)
        self.assertEqual(opened.sender, CIG)

    def test_crs_answers(self) -> None:
        for answer, expected in (
            (("error", {"code": "key-reused"}), 202),
            (("error", {"code": "not-found"}), 404),
            (("error", {"code": "too-large"}), 413),
            (("error", {"code": "unavailable"}), 503),
        ):
            with self.subTest(answer=answer):
                got = self.post()
                self.answer(self.sent[-1], answer[0], **answer[1])
                self.assertEqual(got[0].status, expected)
                if expected == 503:
                    self.assertEqual(got[0].retry_after, RETRY_AFTER)

    def test_no_answer_in_time(self) -> None:
        """The CRS silent: 503 with Retry-After; its late answer changes nothing."""
        got = self.post()
        self.clock.advance(deskbase.SIP_ANSWER_WITHIN)
        self.assertEqual([(a.status, a.retry_after) for a in got], [(503, RETRY_AFTER)])
        self.answer(self.sent[0])
        self.assertEqual(len(got), 1)

    def test_connection_lost(self) -> None:
        from cryptify.client.connection import ConnectionEnded

        got = self.post()
        self.desk.handle(ConnectionEnded("gone"))  # type: ignore[call-arg]
        self.assertEqual(got[0].status, 503)

    def test_not_attached_or_off(self) -> None:
        self.session.state = "connected"
        self.assertEqual(self.post()[0].status, 480)
        self.session.state = "attached"
        self.messaging = False
        self.assertEqual(self.post()[0].status, 405)
        self.assertEqual(self.sent, [])


def incoming(content: bytes, to: str = CIG + ";101", message_id: str = "m1") -> Incoming:
    return Incoming(
        message("message", message=message_id, to=to, time=5, content=content, **{"from": USER})
    )


class DeskToSipTests(_Desk):
    """A secure user's message to tel:+CIG;EXT, no write mailbox: a SIP MESSAGE to the PBX."""

    def deliver(self, body: MessageBody | None = None, message_id: str = "m1") -> bytes:
        content = crypto(USER).seal(
            CIG + ";101", body or MessageBody("till växeln"), self.clock.seconds()
        )
        self.assertTrue(self.desk.handle(incoming(content, message_id=message_id)))
        return content

    def refusal_text(self) -> str:
        [post] = [m for m in self.sent if m.type == "post"]
        self.assertEqual(post["to"], USER)
        return crypto(USER).open(post["content"], CIG).body.text

    def test_sent_then_delivered_on_2xx(self) -> None:
        """Routed by the maps; nothing confirmed until the PBX's 2xx."""
        self.deliver()
        [(sender, to, text, done)] = self.sip.sent
        self.assertEqual((sender, to, text), ("sip:4670123456@secure.com", PBX_USER, "till växeln"))
        self.assertEqual(self.sent, [])
        done.callback(200)
        self.assertEqual(self.sent, [message("delivered", message="m1")])
        self.assertEqual(self.desk.sip_sent, 1)

    def test_repeats(self) -> None:
        """The CRS sending it again while on its way sends nothing more; after
        the 2xx a repeat is confirmed without sending it again."""
        content = self.deliver()
        self.desk.handle(incoming(content))
        self.assertEqual(len(self.sip.sent), 1)
        self.sip.sent[0][3].callback(202)
        self.desk.handle(incoming(content))
        self.assertEqual(len(self.sip.sent), 1)
        self.assertEqual(self.sent, [message("delivered", message="m1")] * 2)

    def test_refused_by_pbx(self) -> None:
        """A 404 from the PBX: the sender gets a sealed 'Not delivered', and the
        message is confirmed once that is stored."""
        self.deliver()
        self.sip.sent[0][3].callback(404)
        text = self.refusal_text()
        self.assertTrue(text.startswith("Not delivered: sip:101@pbx.com did not take it (SIP 404)"))
        self.answer(self.sent[0])
        self.assertEqual(self.sent[-1], message("delivered", message="m1"))

    def test_passing_failure_retried_then_refused(self) -> None:
        """408/503: not confirmed, sent again with backoff; after SIP_ATTEMPTS refused."""
        self.deliver()
        delay = deskbase.RETRY_FIRST
        for attempt in range(1, deskbase.SIP_ATTEMPTS):
            self.sip.sent[-1][3].callback(503 if attempt % 2 else 408)
            self.assertEqual(self.sent, [])
            self.clock.advance(delay)
            self.assertEqual(len(self.sip.sent), attempt + 1)
            delay *= 2
        self.sip.sent[-1][3].callback(503)
        self.assertIn("(SIP 503)", self.refusal_text())

    def test_retry_then_success(self) -> None:
        self.deliver()
        self.sip.sent[0][3].callback(408)
        self.clock.advance(deskbase.RETRY_FIRST)
        self.sip.sent[1][3].callback(200)
        self.assertEqual(self.sent, [message("delivered", message="m1")])

    def test_attachments_refused(self) -> None:
        self.deliver(MessageBody("see", (Attachment("a.png", "image/png", b"x"),)))
        self.assertEqual(self.sip.sent, [])
        self.assertIn("takes SIP text messages only", self.refusal_text())

    def test_off_or_unrouted_refused_as_before(self) -> None:
        """messaging false, or no map for the address: the mailbox refusal."""
        self.messaging = False
        self.deliver()
        self.assertEqual(self.sip.sent, [])
        self.assertIn("no mailbox takes messages", self.refusal_text())
        self.sent.clear()
        self.messaging = True
        content = crypto(USER).seal(CIG, MessageBody("x"), self.clock.seconds())
        self.desk.handle(incoming(content, to=CIG, message_id="m2"))
        self.assertEqual(self.sip.sent, [])
        self.assertIn("no mailbox takes messages", self.refusal_text())


# ---------------------------------------------------------------- never acknowledged early


class ToSipMachine(RuleBasedStateMachine):
    """Secure user -> PBX under any order of PBX answers, CRS answers, repeats by
    the CRS, lost connections and time: a message is confirmed ``delivered`` only
    after the PBX's 2xx for it or once its refusal is stored; after a 2xx it is
    never sent to the PBX again; it is never on its way to the PBX twice at once."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.clock.advance(time.time())
        self.session, self.sent = attached(CIG)
        self.sip = FakeSip()
        config = load_cig_config(os.path.join(FIXTURES, "cig-simple.conf"))
        self.desk = MailDesk(
            self.clock, Mailboxes((), ()), (), lambda: material(CIG), lambda: self.session,
            gid=lambda: None, router=lambda: Router(config), sip=self.sip,
            messaging=lambda: True,
        )  # fmt: skip
        self.desk.startService()
        self.contents: dict[str, bytes] = {}
        self.accepted: set[str] = set()
        self.refusal_stored: set[str] = set()
        self.answered_sends: set[int] = set()
        self.answered_posts: set[int] = set()
        self.sends_after_accept = 0

    def teardown(self) -> None:
        self.desk.stopService()

    def _mid(self, text: str) -> str:
        return text.rsplit(" ", 1)[-1]

    @rule(n=st.integers(0, 2))
    def message_arrives(self, n: int) -> None:
        """A new message, or the CRS sending one again (same octets, same id)."""
        mid = f"m{n}"
        if mid not in self.contents:
            body = MessageBody(f"text {mid}")
            self.contents[mid] = crypto(USER).seal(CIG + ";101", body, self.clock.seconds())
        before = len(self.sip.sent)
        self.desk.handle(incoming(self.contents[mid], message_id=mid))
        if mid in self.accepted:
            self.sends_after_accept += len(self.sip.sent) - before

    @rule(data=st.data(), status=st.sampled_from([200, 202, 404, 486, 408, 480, 503]))
    def pbx_answers(self, data: st.DataObject, status: int) -> None:
        waiting = [i for i in range(len(self.sip.sent)) if i not in self.answered_sends]
        if not waiting:
            return
        i = data.draw(st.sampled_from(waiting))
        self.answered_sends.add(i)
        _, _, text, done = self.sip.sent[i]
        if 200 <= status < 300:
            self.accepted.add(self._mid(text))
        done.callback(status)

    @rule(data=st.data(), kind=st.sampled_from(["posted", "unavailable"]))
    def crs_answers_refusal(self, data: st.DataObject, kind: str) -> None:
        posts = [i for i, m in enumerate(self.sent) if m.type == "post"]
        waiting = [i for i in posts if i not in self.answered_posts]
        if not waiting:
            return
        i = data.draw(st.sampled_from(waiting))
        self.answered_posts.add(i)
        post = self.sent[i]
        if post["id"] not in self.desk.pending:
            return  # the connection ended meanwhile: nobody waits for it
        if kind == "posted":
            refused = [m for m, r in self.desk.refusals.items() if r.content == post["content"]]
            self.refusal_stored.update(refused)
            answer = message("posted", id=post["id"], message="r")
        else:
            answer = message("error", id=post["id"], code="unavailable")
        self.desk.handle(Answered(post["id"], answer))

    @rule()
    def connection_ends(self) -> None:
        from cryptify.client.connection import ConnectionEnded

        self.desk.handle(ConnectionEnded("gone"))

    @rule(seconds=st.sampled_from([1.0, 2.0, 5.0, 30.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def confirmed_only_when_done(self) -> None:
        for m in self.sent:
            if m.type == "delivered":
                mid = m["message"]
                assert mid in self.accepted or mid in self.refusal_stored, mid

    @invariant()
    def never_sent_again_after_2xx(self) -> None:
        assert self.sends_after_accept == 0

    @invariant()
    def one_send_at_a_time(self) -> None:
        waiting = [
            self._mid(text)
            for i, (_, _, text, _) in enumerate(self.sip.sent)
            if i not in self.answered_sends
        ]
        assert len(waiting) == len(set(waiting)), waiting


class FromSipMachine(RuleBasedStateMachine):
    """PBX -> secure user: whatever the CRS answers, when, and whether the connection
    lasts, the PBX gets 202 only for a post the CRS answered ``posted`` (or
    ``key-reused``: stored before), and every MESSAGE gets exactly one answer."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.clock.advance(time.time())
        self.session, self.sent = attached(CIG)
        self.desk = MailDesk(
            self.clock, Mailboxes((), ()), (), lambda: material(CIG), lambda: self.session,
            gid=lambda: None, messaging=lambda: True,
        )  # fmt: skip
        self.desk.startService()
        self.answers: list[list[SipAnswer]] = []
        self.stored_keys: set[bytes] = set()
        self.keys: list[bytes] = []
        self.answered_posts: set[int] = set()

    def teardown(self) -> None:
        # a MESSAGE the CRS never answers is answered 503 in time: each gets one answer
        self.clock.advance(deskbase.SIP_ANSWER_WITHIN)
        assert all(len(got) == 1 for got in self.answers), self.answers
        self.desk.stopService()

    @rule(n=st.integers(0, 3))
    def pbx_sends(self, n: int) -> None:
        got: list[SipAnswer] = []
        key = bytes([n]) * 16
        self.keys.append(key)
        self.answers.append(got)
        self.desk.from_sip("tel:+8888;101", USER, f"text {n}", key).addCallback(got.append)

    @rule(data=st.data(), kind=st.sampled_from(["posted", "key-reused", "unavailable"]))
    def crs_answers(self, data: st.DataObject, kind: str) -> None:
        waiting = [i for i in range(len(self.sent)) if i not in self.answered_posts]
        if not waiting:
            return
        i = data.draw(st.sampled_from(waiting))
        self.answered_posts.add(i)
        post = self.sent[i]
        if kind == "posted":
            self.stored_keys.add(post["key"])
            answer = message("posted", id=post["id"], message="s")
        elif kind == "key-reused":
            if post["key"] not in self.stored_keys:
                return  # the CRS says so only for a key it stored
            answer = message("error", id=post["id"], code="key-reused")
        else:
            answer = message("error", id=post["id"], code="unavailable")
        self.desk.handle(Answered(post["id"], answer))

    @rule()
    def connection_ends(self) -> None:
        from cryptify.client.connection import ConnectionEnded

        self.desk.handle(ConnectionEnded("gone"))

    @rule(seconds=st.sampled_from([1.0, deskbase.SIP_ANSWER_WITHIN]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def accepted_only_when_stored(self) -> None:
        for key, got in zip(self.keys, self.answers):
            assert len(got) <= 1, got
            if got and got[0].status == 202:
                assert key in self.stored_keys, key


class StateMachineTests(SynchronousTestCase):
    def test_to_sip(self) -> None:
        run_state_machine_as_test(
            ToSipMachine, settings=settings(max_examples=30, stateful_step_count=25, deadline=None)
        )

    def test_from_sip(self) -> None:
        run_state_machine_as_test(
            FromSipMachine,
            settings=settings(max_examples=30, stateful_step_count=25, deadline=None),
        )
