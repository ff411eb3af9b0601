"""End-to-end sealed messages in the client: Messenger opening what comes,
``cryptify-client send`` sealing once (with attachments) and ``listen``
showing text and attachments, FAILED TO VERIFY, and repeats.

Real key material (tests.test_client_calls.material); no reactor (Clock).
"""

from __future__ import annotations

import argparse
import io
import os
import time
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.client import cli
from cryptify.client.messages import MessageCrypto, Messenger, Posted, Received
from cryptify.client.session import Incoming
from cryptify.crypto.keymaterial import write_key_material
from cryptify.protocols.message_payload import (
    Attachment,
    MessageBody,
    OpenedMessage,
    PayloadError,
)
from cryptify.protocols.umsg import MAX_CONTENT, message
from tests.fakes import attached, material

A, B, C = "tel:+461111", "tel:+462222", "tel:+463333"
PNG = Attachment("pic.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)))


def crypto(uri: str) -> MessageCrypto:
    return MessageCrypto(material(uri))


def incoming(content: bytes, message_id: str = "m1", sender: str = A, to: str = B) -> Incoming:
    return Incoming(
        message("message", message=message_id, to=to, time=5, content=content, **{"from": sender})
    )


class MessengerOpensTests(SynchronousTestCase):
    """A Messenger with a MessageCrypto reports content opened or refused."""

    def setUp(self) -> None:
        self.session, self.sent = attached(B)
        self.messenger = Messenger(self.session, crypto=crypto(B))
        self.now = time.time()

    def receive(self, content: bytes, message_id: str = "m1", sender: str = A) -> Received:
        [got] = self.messenger.handle(incoming(content, message_id, sender))
        self.assertIsInstance(got, Received)
        assert isinstance(got, Received)
        return got

    def test_opened_with_attachments(self) -> None:
        """A message A sealed for B arrives opened: text, attachments, sender."""
        body = MessageBody("hello B", (PNG,))
        got = self.receive(crypto(A).seal(B, body, self.now))
        self.assertIsNone(got.refused)
        assert got.opened is not None
        self.assertEqual((got.opened.sender, got.opened.body), (A, body))
        self.assertIsNone(got.repeat_of)

    def test_sender_extension_of_the_crs_from(self) -> None:
        """A sender's header may carry an extension of the number the CRS
        vouches for (a CIG writing for a PBX user)."""
        got = self.receive(crypto(A).seal(B, MessageBody("x"), self.now, sender=A + ";101"))
        assert got.opened is not None
        self.assertEqual(got.opened.sender, A + ";101")

    def test_tampered(self) -> None:
        """One flipped octet in the sealed body: refused bad-signature, no text."""
        content = bytearray(crypto(A).seal(B, MessageBody("secret"), self.now))
        content[-200] ^= 1
        got = self.receive(bytes(content))
        self.assertIsNone(got.opened)
        assert got.refused is not None
        self.assertEqual(got.refused.reason, "bad-signature")

    def test_mis_addressed(self) -> None:
        """A payload sealed for C and posted to B is refused mis-addressed."""
        got = self.receive(crypto(A).seal(C, MessageBody("for C"), self.now))
        assert got.refused is not None
        self.assertEqual(got.refused.reason, "mis-addressed")

    def test_wrongly_signed(self) -> None:
        """A payload signed by A but delivered as from C is refused sender-mismatch."""
        got = self.receive(crypto(A).seal(B, MessageBody("x"), self.now), sender=C)
        assert got.refused is not None
        self.assertEqual(got.refused.reason, "sender-mismatch")

    def test_garbage(self) -> None:
        """Content that is not a payload is refused malformed."""
        got = self.receive(b"plain text from an old client")
        assert got.refused is not None
        self.assertEqual(got.refused.reason, "malformed")

    def test_replayed_under_another_id(self) -> None:
        """The same sealed message again under another id is a repeat of the first;
        the same id again is not reported at all."""
        content = crypto(A).seal(B, MessageBody("once"), self.now)
        first = self.receive(content, "m1")
        self.assertIsNone(first.repeat_of)
        self.assertEqual(self.messenger.handle(incoming(content, "m1")), [])
        again = self.receive(content, "m2")
        self.assertEqual(again.repeat_of, "m1")
        other = self.receive(crypto(A).seal(B, MessageBody("once"), self.now), "m3")
        self.assertIsNone(other.repeat_of)  # a new seal is a new message

    def test_fingerprints_bounded(self) -> None:
        """The repeat memory forgets the oldest past its limit."""
        from cryptify.client import messages

        self.patch(messages, "FINGERPRINT_LIMIT", 1)
        self.receive(crypto(A).seal(B, MessageBody("1"), self.now), "m1")
        self.receive(crypto(A).seal(B, MessageBody("2"), self.now), "m2")
        self.assertEqual(list(self.messenger.fingerprints.values()), ["m2"])

    @settings(max_examples=50, deadline=None)
    @given(st.binary(max_size=600))
    def test_random_content_never_crashes(self, content: bytes) -> None:
        """Random octets as content: always reported refused, never opened, never raised."""
        self.messenger.seen.clear()
        got = self.receive(content)
        self.assertIsNone(got.opened)
        self.assertIsInstance(got.refused, PayloadError)

    def test_seal_without_keys_for_period(self) -> None:
        """Sealing at a time the key material has no period for: wrong-period."""
        error = self.assertRaises(
            PayloadError, crypto(A).seal, B, MessageBody("x"), 86400.0 * 365 * 10
        )
        self.assertEqual(error.reason, "wrong-period")


def opened(text: str, *attachments: Attachment, sender: str = A) -> OpenedMessage:
    return OpenedMessage(sender, B, "2026-12", 0, MessageBody(text, attachments), b"f" * 32)


class DescribeReceivedTests(SynchronousTestCase):
    """What listen prints for a received message."""

    def test_text_and_attachments(self) -> None:
        """Text, then one line per attachment with its type and size."""
        got = Received("m1", A, B, 0, b"..", None, opened=opened("hi there", PNG))
        self.assertEqual(
            cli.describe(got),
            f"message m1 from {A}: hi there\n  attachment pic.png (image/png, 264 octets)",
        )

    def test_failed_to_verify_never_shows_text(self) -> None:
        """A refused message says FAILED TO VERIFY and why, and nothing of its octets."""
        content = b"the secret plaintext"
        got = Received("m1", A, B, 0, content, None, refused=PayloadError("bad-signature", "x"))
        line = cli.describe(got)
        self.assertEqual(
            line, f"message m1 from {A}: FAILED TO VERIFY (bad-signature: x); not shown"
        )
        self.assertNotIn("secret", line)

    def test_repeat(self) -> None:
        """A repeat names the first id and does not show the text again."""
        got = Received("m2", A, B, 0, b"..", None, opened=opened("hi"), repeat_of="m1")
        self.assertEqual(
            cli.describe(got), f"message m2 from {A}: repeat of message m1, not shown again"
        )

    def test_control_characters_escaped(self) -> None:
        """Terminal control characters in the text are shown escaped; lines stay."""
        got = Received("m1", A, B, 0, b"..", None, opened=opened("a\x1b[2Jb\nc\u2028"))
        self.assertEqual(cli.describe(got), f"message m1 from {A}: a\\u001b[2Jb\nc\\u2028")


class AttachmentFileTests(SynchronousTestCase):
    """send --attach FILE reads the file as an attachment."""

    def write(self, name: str, data: bytes) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_name_and_type(self) -> None:
        """The base name, a media type from the name, the octets."""
        self.assertEqual(
            cli.read_attachment(self.write("a.png", b"x")), Attachment("a.png", "image/png", b"x")
        )
        self.assertEqual(
            cli.read_attachment(self.write("blob", b"y")).media_type, "application/octet-stream"
        )

    def test_too_large(self) -> None:
        """A file over the size of a message is refused before anything is sent."""
        path = self.write("big.bin", b"z" * (MAX_CONTENT + 1))
        self.assertEqual(
            self.assertRaises(PayloadError, cli.read_attachment, path).reason, "too-large"
        )

    def test_cli_errors(self) -> None:
        """A missing file, or attachments too large together: exit 1 saying why."""
        keys = self.mktemp()
        write_key_material(keys, material(A))
        common = ("--keys", keys, "--server", "h:1", "--insecure")
        out, err = io.StringIO(), io.StringIO()
        status = cli.run(["send", B, "hi", *common, "--attach", "/nonexistent/f"], out, err)
        self.assertEqual(status, 1)
        self.assertIn("cannot attach", err.getvalue())


@attrs.define
class _FakePhone:
    """Enough of a Phone for send_main: records posts, answers them from a script."""

    crypto: MessageCrypto
    answers: list[str | None]
    posts: list[tuple[str, bytes, bytes]] = attrs.field(factory=list)
    messenger: Any = attrs.field(factory=lambda: argparse.Namespace(attached=True))
    stopped: bool = False

    def start(self) -> defer.Deferred[Any]:
        return defer.succeed("attached")

    def post(self, to: str, content: bytes, key: bytes, to_account: str | None = None) -> int:
        self.posts.append((to, content, key))
        return len(self.posts)

    def until(self, predicate: Any) -> defer.Deferred[Any]:
        n = len(self.posts)
        error = self.answers[n - 1]
        event = Posted(n, None if error else f"m{n}", error, key=self.posts[-1][2], retry_after=10)
        return defer.succeed(event) if predicate(event) else defer.Deferred()

    def stop(self) -> defer.Deferred[None]:
        self.stopped = True
        return defer.succeed(None)


class SendTests(SynchronousTestCase):
    """send seals the message once, before its first attempt."""

    def send(self, answers: list[str | None], **fields: Any) -> tuple[int, str, _FakePhone]:
        clock = Clock()
        clock.advance(time.time())
        phone = _FakePhone(crypto(A), answers)
        self.patch(cli, "make_phone", lambda reactor, args, out: phone)
        out = io.StringIO()
        args = argparse.Namespace(uri=B, text="hi", attachments=(PNG,), wait=False)
        for name, value in fields.items():
            setattr(args, name, value)
        d = defer.ensureDeferred(cli.send_main(clock, args, out))
        clock.advance(1)
        clock.advance(1)
        return self.successResultOf(d), out.getvalue(), phone

    def test_retries_post_the_same_sealed_octets(self) -> None:
        """After unavailable the same post goes again: same key, same sealed content,
        which B opens to the text and attachment."""
        status, _, phone = self.send(["unavailable", "unavailable", None])
        self.assertEqual(status, 0)
        self.assertEqual(len(phone.posts), 3)
        self.assertEqual(len(set(phone.posts)), 1)
        to, content, _ = phone.posts[0]
        self.assertEqual(to, B)
        got = crypto(B).open(content, A)
        self.assertEqual(got.body, MessageBody("hi", (PNG,)))

    def test_unsealable_is_not_sent(self) -> None:
        """A message that cannot be sealed (bad recipient) is not posted: exit 1."""
        status, out, phone = self.send([None], uri="sip:bob@example.com")
        self.assertEqual((status, phone.posts), (1, []))
        self.assertIn("cannot send: malformed", out)

    def test_refused_post(self) -> None:
        """A refusal that is not retryable ends send with 1 after one attempt."""
        status, _, phone = self.send(["not-found"])
        self.assertEqual((status, len(phone.posts), phone.stopped), (1, 1, True))
