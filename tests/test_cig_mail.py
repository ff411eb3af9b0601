"""The CIG's mailboxes: the manual's message format (build and parse, with
hypothesis), the translate maps both ways, and MailDesk writing messages
to write mailboxes and posting files of read mailboxes.

In memory but for the Maildirs, which are real directories in the test's
temporary directory; time is a Clock; the CRS is a list of what the
session sent and answers the test feeds back.
"""

from __future__ import annotations

import os
import stat
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.mail import core
from cryptify.cig.mail import desk as deskbase
from cryptify.cig.mail.core import MailError, MailMessage, build, parse
from cryptify.cig.mail.wiring import MailDesk
from cryptify.client.connection import ConnectionEnded
from cryptify.client.messages import MessageCrypto
from cryptify.client.session import Answered, Attached, Incoming
from cryptify.config.cig_model import Mailbox, Mailboxes, TranslateMap, TranslateRule
from cryptify.protocols.message_payload import Attachment, MessageBody
from cryptify.protocols.umsg import Message, message
from tests.fakes import attached, material

A = "tel:+461111"
CIG = "tel:+468888"
#: 2015-11-26 17:15:44 UTC, the manual's example date.
MANUAL_DATE = 1448558144
PNG = Attachment("filename.png", "image/png", bytes(range(200)))

MAPS = (
    TranslateMap("secure", (TranslateRule("tel:+{n}", "sip:{n}@secure.example"),)),
    TranslateMap("pbx", (TranslateRule("tel:+468888;{ext}", "sip:{ext}@pbx.example"),)),
    TranslateMap("pbx9", (TranslateRule("tel:+468888;9{ext}", "sip:{ext}@nine.example"),)),
    TranslateMap("pbxsrc", (TranslateRule("sip:{ext}@pbx.example", "tel:+468888;{ext}"),)),
    TranslateMap("securedst", (TranslateRule("sip:{n}@secure.example", "tel:+{n}"),)),
)


def crypto(uri: str) -> MessageCrypto:
    return MessageCrypto(material(uri))


def maildir(base: str, name: str) -> str:
    path = os.path.join(base, name)
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(path, sub))
    return path


# ---------------------------------------------------------------- the format


class FormatTests(SynchronousTestCase):
    """build() writes the manual's format; parse() reads it."""

    def test_text_plain_exactly(self) -> None:
        """Headers in the issue's order, the manual's Date form, LF endings,
        the text with one final LF (trailing newlines of the text dropped)."""
        mail = MailMessage(
            "sip:124@example.com", "sip:456@example.net", MANUAL_DATE, MessageBody("Hi\nthere\n\n"),
            sender_uri="tel:+12345", sender_domain="Example Domain",
        )  # fmt: skip
        self.assertEqual(
            build(mail, "unused"),
            b"To: <sip:124@example.com>\n"
            b"From: <sip:456@example.net>\n"
            b"Date: 26 Nov 2015 17:15:44 +0000\n"
            b'Content-Type: text/plain; charset="UTF-8"\n'
            b"Content-Transfer-Encoding: 8bit\n"
            b"Auto-Submitted: no\n"
            b"X-Responder-Type: tel-uri\n"
            b"X-Sender-URI: tel:+12345\n"
            b"X-Sender-Domain: Example Domain\n"
            b"\n"
            b"Hi\nthere\n",
        )

    def test_multipart(self) -> None:
        """With attachments: multipart/mixed, the text first, each attachment
        base64 with its Content-Disposition filename; it reads back."""
        body = MessageBody("héllo", (PNG, Attachment('a "q".txt', "text/plain", b"x\n")))
        data = build(MailMessage("t@x", "f@y", MANUAL_DATE, body), "BOUNDARY42")
        text = data.decode("utf-8")
        self.assertIn('Content-Type: multipart/mixed; boundary="BOUNDARY42"\n', text)
        first, second, third = text.split("--BOUNDARY42\n")[1:]
        self.assertTrue(first.startswith('Content-Type: text/plain; charset="UTF-8"\n'))
        self.assertIn(
            "Content-Transfer-Encoding: base64\n"
            'Content-Disposition: attachment; filename="filename.png"\n',
            second,
        )
        self.assertIn('filename="a \\"q\\".txt"', third)
        self.assertTrue(text.endswith("--BOUNDARY42--\n"))
        self.assertEqual(parse(data).body, body)

    def test_long_lines_become_base64(self) -> None:
        """A text line over 998 octets (or a CR) is sent base64: no line is over 1,000."""
        for text in ("é" * 2000, "a\rb"):
            data = build(MailMessage("t", "f", 0, MessageBody(text)), "b")
            self.assertIn(b"Content-Transfer-Encoding: base64\n", data)
            self.assertTrue(all(len(line) <= 998 for line in data.split(b"\n")))
            self.assertEqual(parse(data).body.text, text)

    def test_header_injection_refused(self) -> None:
        """A translated address with a line break cannot be written."""
        mail = MailMessage("a>\nBcc: <x", "f", 0, MessageBody("x"))
        self.assertEqual(self.assertRaises(MailError, build, mail, "b").reason, "malformed")

    def test_manual_examples_parse(self) -> None:
        """Both of the manual's examples, its multipart header folded without
        indentation as printed there."""
        plain = (
            b"To: <sip:124@example.com>\nFrom: <sip:456@example.net>\n"
            b"Date: 26 Nov 2015 17:15:44 +0000\nAuto-Submitted: no\nX-Sender-URI: tel:+12345\n"
            b'X-Sender-Domain: Example Domain\nContent-Type: text/plain; charset="UTF-8"\n'
            b"Content-Transfer-Encoding: 8bit\n\nThis is the text message in plaintext.\n\n"
        )
        got = parse(plain)
        self.assertEqual((got.to, got.sender), ("sip:124@example.com", "sip:456@example.net"))
        self.assertEqual(got.body, MessageBody("This is the text message in plaintext."))
        multi = (
            b"To: <sip:124@example.com>\nFrom: <sip:456@example.net>\n"
            b"Content-Transfer-Encoding: 8bit\nContent-Type: multipart/mixed;\n"
            b"boundary=e9lafbk45d361b43c2f051a6b732e44n\n\n"
            b'--e9lafbk45d361b43c2f051a6b732e44n\nContent-Type: text/plain; charset="UTF-8"\n\n'
            b"This is the text message in plaintext.\n"
            b"--e9lafbk45d361b43c2f051a6b732e44n\nContent-Type: image/png\n"
            b"Content-Transfer-Encoding: base64\n"
            b'Content-Disposition: attachment; filename="filename.png"\n\n'
            b"YwF6Iq1GI8fUeBNAVJIIJez4e8pLu3jzENEMGLrtVyTC5QVMJ/yr5xDC6n\n"
            b"jPVB4NXqxT+mWhR+N3YygRNIN4okh5sYx9h7N1H0nm0lp2F2n0fvfkWmQ\n"
            b"CD1kvLyiwPAsTkNJpdQ7MBZlc2n/0U9VaG7i/GAk1Mz09rAgIeCBvDwM=\n"
            b"--e9lafbk45d361b43c2f051a6b732e44n--\n"
        )
        got = parse(multi)
        self.assertEqual(got.body.text, "This is the text message in plaintext.")
        [png] = got.body.attachments
        self.assertEqual(
            (png.name, png.media_type, len(png.data)), ("filename.png", "image/png", 128)
        )

    def test_refusals(self) -> None:
        """Each way a file can be wrong has its reason."""
        head = b"To: <a>\nFrom: <b>\n"
        for data, reason in (
            (b"x" * (core.MAX_FILE + 1), "oversized"),
            (head + b"\n\xff\xfe", "charset"),
            (head + b"\n" + b"y" * 1001 + b"\n", "long-line"),
            (b"From: <b>\n\nhi", "malformed"),
            (head + b"hi", "malformed"),
            (head + b"Content-Type: text/html\n\n<p>", "content-type"),
            (head + b"Content-Type: text/plain; charset=latin1\n\nhi", "charset"),
            (head + b"Content-Transfer-Encoding: base64\n\n!!!", "encoding"),
            (head + b"Content-Transfer-Encoding: x-uuencode\n\nhi", "encoding"),
            (head + b"Content-Type: multipart/mixed; boundary=B\n\n--B\n\nhi\n", "malformed"),
            (
                head + b"Content-Type: multipart/mixed; boundary=B\n\n--B\n\nhi\n--B\n"
                b"Content-Type: image/png\n\nAAAA\n--B--\n",
                "attachment",
            ),
            (
                head + b"Content-Type: multipart/mixed; boundary=B\n\n--B\n\nhi\n--B\n"
                b"Content-Transfer-Encoding: base64\n"
                b'Content-Disposition: attachment; filename="../etc/passwd"\n\nAAAA\n--B--\n',
                "attachment",
            ),
        ):
            self.assertEqual(self.assertRaises(MailError, parse, data).reason, reason, data[:80])

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=2000))
    def test_parse_random_octets(self, data: bytes) -> None:
        """Random octets: a MailMessage or a MailError, nothing else."""
        try:
            parse(data)
        except MailError as exc:
            self.assertIn(exc.reason, core.REASONS)

    @settings(max_examples=100, deadline=None)
    @given(
        st.text(max_size=300),
        st.lists(
            st.tuples(
                st.text(
                    st.characters(
                        blacklist_characters="/\\",
                        blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cf", "Co", "Cn", "Zs"),
                    ),
                    min_size=1,
                    max_size=20,
                ),
                st.binary(max_size=300),
            ),
            max_size=3,
        ),
        st.data(),
    )
    def test_round_trip_and_mutations(self, text: str, files: Any, data: Any) -> None:
        """What build() writes, parse() reads back (text without trailing
        newlines); any one octet changed or cut gives a message or a MailError."""
        text = text.replace("\r", "").rstrip("\n")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return
        attachments = []
        for name, octets in files:
            if name in (".", ".."):
                continue
            attachments.append(Attachment(name, "application/octet-stream", octets))
        body = MessageBody(text, tuple(attachments))
        octets = build(MailMessage("t@x", "f@y", 0, body), "b0undary-" + "7" * 20)
        self.assertEqual(parse(octets).body, body)
        position = data.draw(st.integers(0, len(octets) - 1))
        for mutated in (
            octets[:position]
            + bytes([octets[position] ^ data.draw(st.integers(1, 255))])
            + octets[position + 1 :],
            octets[:position],
        ):
            try:
                parse(mutated)
            except MailError:
                pass


class MapTests(SynchronousTestCase):
    """The translate maps, write and read direction."""

    def test_write_targets(self) -> None:
        """Every write mailbox whose two maps both match, in order."""
        boxes = (
            Mailbox("/m/one", "secure", "pbx"),
            Mailbox("/m/nine", "secure", "pbx9"),
            Mailbox("/m/two", "secure", "pbx"),
        )
        got = core.write_targets(boxes, MAPS, A, CIG + ";101")
        self.assertEqual(
            [(t.mailbox.path, t.sender, t.to) for t in got],
            [("/m/one", "sip:461111@secure.example", "sip:101@pbx.example"),
             ("/m/two", "sip:461111@secure.example", "sip:101@pbx.example")],
        )  # fmt: skip
        self.assertEqual(core.write_targets(boxes, MAPS, A, "tel:+469999;1"), [])

    def test_read_route(self) -> None:
        """From must map to the CIG's own number (an extension allowed), To to a tel URI."""
        box = Mailbox("/m/r", "pbxsrc", "securedst")
        mail = MailMessage("sip:461111@secure.example", "sip:101@pbx.example", 0, MessageBody(""))
        self.assertEqual(core.read_route(box, MAPS, mail, CIG), core.ReadRoute(CIG + ";101", A))
        other = Mailbox("/m/r", "securedst", "securedst")  # From maps to a user, not the CIG
        bad = MailMessage("sip:461111@secure.example", "sip:462222@secure.example", 0, mail.body)
        self.assertEqual(
            self.assertRaises(MailError, core.read_route, other, MAPS, bad, CIG).reason, "no-route"
        )
        nowhere = MailMessage("someone@else", "sip:101@pbx.example", 0, mail.body)
        self.assertEqual(
            self.assertRaises(MailError, core.read_route, box, MAPS, nowhere, CIG).reason,
            "no-route",
        )

    def test_migration_example(self) -> None:
        """The manual's migration maps (its stray brace removed) give what the old maps gave."""
        from cryptify.config import cig_migrate

        text = (
            'map telmap { entry asterisk tel "tel:+8888;{series}" sip "sip:{series}@pbx.com"; }\n'
            'map telsrc { entry all sip "sip:{series}@{discard}" tel "tel:+8888;{series}"; }\n'
            'map sipsrc { entry all sip "tel:+{series}" tel "sip:{series}@{discard}" ; }\n'
            'map sipmap { entry all tel "sip:{series}@secure.com" sip "tel:+{series}" ; }\n'
        )
        made = {m.name: m for m in cig_migrate.migrate_maps(text).maps}
        read = Mailbox("/r", "telsrc", "sipmap")
        write = Mailbox("/w", "sipsrc", "telmap")
        mail = MailMessage("sip:4612@secure.com", "sip:101@pbx.com", 0, MessageBody(""))
        self.assertEqual(
            core.read_route(read, tuple(made.values()), mail, "tel:+8888"),
            core.ReadRoute("tel:+8888;101", "tel:+4612"),
        )
        [target] = core.write_targets((write,), tuple(made.values()), "tel:+4612", "tel:+8888;7")
        self.assertEqual((target.sender, target.to), ("sip:4612@", "sip:7@pbx.com"))


# ---------------------------------------------------------------- the desk


class _Desk(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = self.mktemp()
        os.makedirs(self.base)
        self.clock = Clock()
        self.clock.advance(time.time())
        self.session, self.sent = attached(CIG)
        self.logged: list[LogEvent] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def desk(
        self, read: tuple[Mailbox, ...] = (), write: tuple[Mailbox, ...] = (), **kw: Any
    ) -> MailDesk:
        desk = MailDesk(
            self.clock, Mailboxes(read, write), MAPS, lambda: material(CIG), lambda: self.session,
            gid=lambda: None, **kw,
        )  # fmt: skip
        desk.startService()
        self.addCleanup(desk.stopService)
        return desk

    def log_text(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(formatEvent(e) for e in self.logged)

    def answer(self, desk: MailDesk, sent: Message, type_: str = "posted", **fields: Any) -> None:
        if type_ == "posted":
            fields.setdefault("message", "m-answer")
        self.assertTrue(desk.handle(Answered(sent["id"], message(type_, id=sent["id"], **fields))))


def incoming(
    content: bytes, to: str = CIG + ";101", message_id: str = "m1", sender: str = A
) -> Incoming:
    return Incoming(
        message("message", message=message_id, to=to, time=5, content=content, **{"from": sender})
    )


class WriteMailboxTests(_Desk):
    """Messages to the CIG go to every matching write mailbox, then are confirmed."""

    def setUp(self) -> None:
        super().setUp()
        self.one = maildir(self.base, "one")
        self.two = maildir(self.base, "two")
        self.nine = maildir(self.base, "nine")
        self.boxes = (
            Mailbox(self.one, "secure", "pbx"),
            Mailbox(self.nine, "secure", "pbx9"),
            Mailbox(self.two, "secure", "pbx"),
        )

    def files(self, box: str, sub: str = "new") -> list[str]:
        return sorted(os.listdir(os.path.join(box, sub)))

    def test_written_to_every_match_then_delivered(self) -> None:
        """Both matching mailboxes get the file in new/ (tmp/ empty, mode 0660),
        the other none; delivered only afterwards."""
        desk = self.desk(write=self.boxes)
        body = MessageBody("to the PBX", (PNG,))
        content = crypto(A).seal(CIG + ";101", body, self.clock.seconds())
        self.assertTrue(desk.handle(incoming(content)))
        for box in (self.one, self.two):
            [name] = self.files(box)
            self.assertEqual(self.files(box, "tmp"), [])
            path = os.path.join(box, "new", name)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o660)
            with open(path, "rb") as f:
                data = f.read()
            got = parse(data)
            self.assertEqual(
                (got.to, got.sender, got.body),
                ("sip:101@pbx.example", "sip:461111@secure.example", body),
            )
            self.assertIn(b"X-Sender-URI: tel:+461111\nX-Sender-Domain: acme\n", data)
        self.assertEqual(self.files(self.nine), [])
        self.assertEqual(self.sent, [message("delivered", message="m1")])

    def test_the_same_message_again_is_one_file(self) -> None:
        """The CRS sending a message again (our confirmation was lost) is confirmed
        again and not written twice, also after the reader took the first copy;
        a CIG that forgot it (a restart) replaces its own file in new/."""
        desk = self.desk(write=self.boxes[:1])
        content = crypto(A).seal(CIG + ";101", MessageBody("x"), self.clock.seconds())
        desk.handle(incoming(content))
        [name] = self.files(self.one)
        os.rename(os.path.join(self.one, "new", name), os.path.join(self.one, "cur", name))
        desk.handle(incoming(content))
        self.assertEqual(self.files(self.one), [])
        self.assertEqual(self.sent, [message("delivered", message="m1")] * 2)
        os.rename(os.path.join(self.one, "cur", name), os.path.join(self.one, "new", name))
        desk.done.clear()
        desk.handle(incoming(content))
        self.assertEqual(self.files(self.one), [name])

    def test_group_set(self) -> None:
        """The file takes the mail group (injected here)."""
        desk = self.desk(write=self.boxes[:1])
        desk.gid = lambda: 4242
        desk.handle(incoming(crypto(A).seal(CIG + ";101", MessageBody("x"), self.clock.seconds())))
        [name] = self.files(self.one)
        self.assertEqual(os.stat(os.path.join(self.one, "new", name)).st_gid, 4242)

    def test_no_match_refused_to_sender(self) -> None:
        """No write mailbox takes it: logged, a sealed 'Not delivered' reply from the
        address written to goes to the sender, and only once that is stored is
        the message confirmed."""
        desk = self.desk(write=self.boxes)
        content = crypto(A).seal(CIG, MessageBody("nobody"), self.clock.seconds())
        desk.handle(incoming(content, to=CIG))
        [post] = self.sent
        self.assertEqual((post.type, post["to"]), ("post", A))
        reply = crypto(A).open(post["content"], CIG)
        self.assertEqual(reply.sender, CIG)
        self.assertTrue(reply.body.text.startswith("Not delivered: no mailbox takes messages"))
        self.assertIn("no write mailbox takes it", self.log_text())
        self.answer(desk, post)
        self.assertEqual(self.sent[1:], [message("delivered", message="m1")])
        for box in (self.one, self.two, self.nine):
            self.assertEqual(self.files(box), [])

    def test_refusal_repeated_unchanged(self) -> None:
        """A refusal whose post did not get through goes again with the same key and octets."""
        desk = self.desk(write=self.boxes)
        content = crypto(A).seal(CIG, MessageBody("x"), self.clock.seconds())
        desk.handle(incoming(content, to=CIG))
        self.answer(desk, self.sent[0], "error", code="unavailable")
        self.clock.advance(deskbase.RETRY_FIRST)
        first, second = self.sent
        self.assertEqual((first["key"], first["content"]), (second["key"], second["content"]))
        self.answer(desk, second)
        self.assertEqual(self.sent[-1], message("delivered", message="m1"))

    def test_failed_to_verify_refused(self) -> None:
        """Content that does not verify is never written; the sender is told."""
        desk = self.desk(write=self.boxes)
        desk.handle(incoming(b"not a payload"))
        [post] = self.sent
        self.assertIn(
            "failed to verify (malformed)", crypto(A).open(post["content"], CIG).body.text
        )
        self.assertEqual(self.files(self.one), [])

    def test_write_failure_not_confirmed(self) -> None:
        """A mailbox that cannot be written: not confirmed, tried again with backoff,
        confirmed once it works."""
        broken = os.path.join(self.base, "broken")
        os.makedirs(os.path.join(broken, "new"))
        desk = self.desk(write=(Mailbox(broken, "secure", "pbx"),))
        desk.handle(incoming(crypto(A).seal(CIG + ";101", MessageBody("x"), self.clock.seconds())))
        self.assertEqual(self.sent, [])
        self.assertIn("not written to", self.log_text())
        self.clock.advance(deskbase.RETRY_FIRST)
        self.assertEqual(self.sent, [])
        os.makedirs(os.path.join(broken, "tmp"))
        self.clock.advance(deskbase.RETRY_FIRST * 2)
        self.assertEqual(self.sent, [message("delivered", message="m1")])
        self.assertEqual(len(self.files(broken)), 1)

    def test_other_events_pass(self) -> None:
        """Invites and answers to others' requests are not the desk's."""
        desk = self.desk(write=self.boxes)
        self.assertFalse(desk.handle(Incoming(message("talk", session="s"))))
        self.assertFalse(desk.handle(Answered(99, message("ok", id=99))))


class WiringTests(SynchronousTestCase):
    """The desk sits in the CIG's tree and sees the UIF's events before the calls."""

    def test_in_the_tree_and_first(self) -> None:
        """make_cig_service has a 'mail' service; the UIF's events reach it
        first, and a message event it takes goes no further."""
        from twisted.internet import reactor

        from cryptify.plugins.cig import dev_cig_config, make_cig_service

        root = make_cig_service(dev_cig_config(self.mktemp()), reactor)
        desk = root.getServiceNamed("mail")
        self.assertIsInstance(desk, MailDesk)
        uif = root.getServiceNamed("uif")
        uif_calls = uif.on_call_event.__self__  # type: ignore[union-attr]
        self.assertEqual(uif_calls.mail, desk.handle)
        # SIP MESSAGE both ways: the SIF posts through the desk, the desk sends through the SIF
        sif = uif_calls.sip
        self.assertIs(sif.messages, desk)
        self.assertIs(desk.sip, sif)
        self.assertIs(desk.router(), sif.router)
        self.assertFalse(desk.messaging())  # the development configuration: messaging false
        seen: list[Any] = []
        desk.handle = lambda event: seen.append(event) or True  # type: ignore[method-assign]
        uif_calls.mail = desk.handle
        event = incoming(b"x")
        uif.on_call_event(event)  # type: ignore[misc]
        self.assertEqual(seen, [event])


def mail_file(
    text: str = "from the PBX",
    to: str = "sip:461111@secure.example",
    sender: str = "sip:101@pbx.example",
    attachments: tuple[Attachment, ...] = (),
) -> bytes:
    return build(MailMessage(to, sender, MANUAL_DATE, MessageBody(text, attachments)), "B" * 32)


class ReadMailboxTests(_Desk):
    """Files in a read mailbox's new/ are posted, and deleted only once posted."""

    def setUp(self) -> None:
        super().setUp()
        self.box = maildir(self.base, "out")
        self.mailbox = Mailbox(self.box, "pbxsrc", "securedst")

    def put(self, name: str, data: bytes) -> str:
        path = os.path.join(self.box, "new", name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def posts(self) -> list[Message]:
        return [m for m in self.sent if m.type == "post"]

    def quarantine(self) -> list[str]:
        folder = self.box + deskbase.QUARANTINE_SUFFIX
        return sorted(os.listdir(folder)) if os.path.isdir(folder) else []

    def test_posted_then_deleted(self) -> None:
        """At start the file is parsed, routed, sealed as tel:+8888;EXT and posted;
        it stays until posted, then is deleted."""
        path = self.put("1.a.host", mail_file(attachments=(PNG,)))
        desk = self.desk(read=(self.mailbox,))
        self.clock.advance(0)
        [post] = self.posts()
        self.assertEqual(post["to"], A)
        opened = crypto(A).open(post["content"], CIG)
        self.assertEqual(opened.sender, CIG + ";101")
        self.assertEqual(opened.body, MessageBody("from the PBX", (PNG,)))
        self.assertTrue(os.path.exists(path))
        self.answer(desk, post)
        self.assertFalse(os.path.exists(path))
        self.assertEqual((desk.posted, desk.quarantined), (1, 0))

    def test_not_attached_waits_for_attach(self) -> None:
        """Without an attached session nothing is posted; the attach scans again."""
        self.session.state = "closed"
        path = self.put("1.a.host", mail_file())
        desk = self.desk(read=(self.mailbox,))
        self.clock.advance(0)
        self.assertEqual(self.posts(), [])
        self.session.state = "attached"
        self.assertFalse(desk.handle(Attached(CIG, "crs1", 1, "ping", 1000, 0)))
        self.clock.advance(0)
        self.assertEqual(len(self.posts()), 1)
        self.assertTrue(os.path.exists(path))

    def test_unavailable_backoff_same_post(self) -> None:
        """A CRS that answers unavailable, or a connection that ends: the file stays,
        and the same post (key and octets) goes again later, each time later."""
        path = self.put("1.a.host", mail_file())
        desk = self.desk(read=(self.mailbox,))
        self.clock.advance(0)
        self.answer(desk, self.posts()[0], "error", code="unavailable")
        self.clock.advance(deskbase.RETRY_FIRST - 0.1)
        self.assertEqual(len(self.posts()), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.posts()), 2)
        desk.handle(ConnectionEnded("lost"))
        self.clock.advance(deskbase.RETRY_FIRST * 2 - 0.1)
        self.assertEqual(len(self.posts()), 2)
        self.clock.advance(0.1)
        first, second, third = self.posts()
        self.assertEqual(
            {(p["key"], p["content"]) for p in (first, second, third)},
            {(first["key"], first["content"])},
        )
        self.assertTrue(os.path.exists(path))
        self.answer(desk, third)
        self.assertFalse(os.path.exists(path))

    def test_restart_no_loss_no_duplicate(self) -> None:
        """A CIG that stopped after the CRS stored the post but before deleting the
        file: the next one posts it with the same key; key-reused (new octets, same
        scope) means stored, and the file goes; nothing was lost meanwhile."""
        path = self.put("1.a.host", mail_file())
        first = self.desk(read=(self.mailbox,))
        self.clock.advance(0)
        [post] = self.posts()
        first.stopService()
        self.assertTrue(os.path.exists(path))
        second = self.desk(read=(self.mailbox,))
        self.clock.advance(0)
        again = self.posts()[-1]
        self.assertEqual(again["key"], post["key"])
        self.assertNotEqual(again["content"], post["content"])
        self.answer(second, again, "error", code="key-reused")
        self.assertFalse(os.path.exists(path))
        self.assertEqual(self.quarantine(), [])

    def test_other_files_other_keys(self) -> None:
        """Two files, even with the same octets, get different keys."""
        self.put("1.a.host", mail_file())
        self.put("2.a.host", mail_file())
        self.desk(read=(self.mailbox,))
        self.clock.advance(0)
        first, second = self.posts()
        self.assertNotEqual(first["key"], second["key"])

    def test_quarantined_with_reason(self) -> None:
        """Each undeliverable file is moved beside the mailbox, its reason logged,
        its octets kept; the CIG goes on with the next one."""
        cases = {
            "bad-format": (b"no header at all", "malformed"),
            "charset": (mail_file().replace(b"from the PBX", b"\xff\xfe"), "charset"),
            "long-line": (
                mail_file("x").replace(b"\nx\n", b"\n" + b"x" * 1200 + b"\n"),
                "long-line",
            ),
            "no-route": (mail_file(to="somebody@elsewhere"), "no-route"),
            "from-not-cig": (mail_file(sender="sip:461111@secure.example"), "no-route"),
            "oversized": (b"x" * (core.MAX_FILE + 1), "oversized"),
        }
        for name, (data, _) in cases.items():
            self.put(name, data)
        os.symlink("/etc/passwd", os.path.join(self.box, "new", "symlink"))
        os.mkfifo(os.path.join(self.box, "new", "fifo"))
        os.mkdir(os.path.join(self.box, "new", "directory"))
        self.put("good", mail_file())
        desk = self.desk(read=(self.mailbox,))
        self.clock.advance(0)
        self.assertEqual(len(self.posts()), 1)
        self.assertEqual(self.quarantine(), sorted([*cases, "symlink", "fifo", "directory"]))
        self.assertEqual(sorted(os.listdir(os.path.join(self.box, "new"))), ["good"])
        folder = self.box + deskbase.QUARANTINE_SUFFIX
        for name, (data, reason) in cases.items():
            with open(os.path.join(folder, name), "rb") as f:
                self.assertEqual(f.read(), data)
            self.assertIn(f"new/{name} moved to {folder}: {reason}", self.log_text())
        self.assertIn("symlink moved to", self.log_text())
        self.assertIn("a symbolic link", self.log_text())
        self.assertIn("not a regular file", self.log_text())
        self.assertTrue(os.path.islink(os.path.join(folder, "symlink")))
        self.assertEqual(desk.quarantined, 9)

    def test_quarantine_keeps_earlier(self) -> None:
        """A name already in quarantine is not replaced."""
        self.put("x", b"bad one")
        self.desk(read=(self.mailbox,))
        self.clock.advance(0)
        self.put("x", b"bad two")
        self.clock.advance(deskbase.SCAN_INTERVAL)
        self.assertEqual(self.quarantine(), ["x", "x.2"])

    def test_refused_by_crs_quarantined(self) -> None:
        """A recipient the CRS does not know: the file is quarantined."""
        self.put("1.a.host", mail_file())
        desk = self.desk(read=(self.mailbox,))
        self.clock.advance(0)
        self.answer(desk, self.posts()[0], "error", code="not-found")
        self.assertEqual(self.quarantine(), ["1.a.host"])
        self.assertIn("refused by the CRS: not-found", self.log_text())

    def test_periodic_scan(self) -> None:
        """A file that no notification announced is found by the periodic scan."""
        self.desk(read=(self.mailbox,))
        self.clock.advance(0)
        self.put("late", mail_file())
        self.clock.advance(deskbase.SCAN_INTERVAL - 1)
        self.assertEqual(self.posts(), [])
        self.clock.advance(1)
        self.assertEqual(len(self.posts()), 1)

    def test_inotify_scans_at_once(self) -> None:
        """The watch on new/ (IN_MOVED_TO, IN_CLOSE_WRITE, and IN_CREATE for the
        link() of Postfix's delivery agents) starts a scan right away."""
        from twisted.internet import inotify

        watches: list[tuple[Any, int, Any]] = []

        class FakeNotifier:
            def startReading(self) -> None:
                pass

            def loseConnection(self) -> None:
                pass

            def watch(self, path: Any, mask: int, callbacks: Any) -> None:
                watches.append((path, mask, callbacks))

        self.desk(read=(self.mailbox,), inotify=FakeNotifier)
        self.clock.advance(0)
        [(path, mask, [callback])] = watches
        self.assertEqual(path.path, os.path.abspath(os.path.join(self.box, "new")))
        self.assertEqual(mask, inotify.IN_MOVED_TO | inotify.IN_CLOSE_WRITE | inotify.IN_CREATE)
        self.put("now", mail_file())
        callback(None, path, inotify.IN_MOVED_TO)
        self.clock.advance(0)
        self.assertEqual(len(self.posts()), 1)
        self.put("linked", mail_file("two"))
        callback(None, path, inotify.IN_CREATE)
        self.clock.advance(0)
        self.assertEqual(len(self.posts()), 2)

    def test_in_flight_bounded(self) -> None:
        """At most MAX_IN_FLIGHT posts wait at once; each answer lets the next go."""
        for n in range(deskbase.MAX_IN_FLIGHT + 3):
            self.put(f"{n:03d}", mail_file(str(n)))
        desk = self.desk(read=(self.mailbox,))
        self.clock.advance(0)
        self.assertEqual(len(self.posts()), deskbase.MAX_IN_FLIGHT)
        self.answer(desk, self.posts()[0])
        self.clock.advance(0)
        self.assertEqual(len(self.posts()), deskbase.MAX_IN_FLIGHT + 1)


class SampleConfigTests(SynchronousTestCase):
    """The README's mailbox example holds for etc/cig.conf's maps."""

    def test_readme_addresses(self) -> None:
        """A secure user's message to tel:+8888;101 is written with the README's
        headers; the README's file reaches tel:+4622222 from tel:+8888;101."""
        from cryptify.config import load_cig_config

        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        cfg = load_cig_config(os.path.join(here, "etc", "cig.conf"))
        [target] = core.write_targets(
            cfg.mailboxes.write, cfg.translate_maps, "tel:+4611111", "tel:+8888;101"
        )
        self.assertEqual(
            (target.to, target.sender), ("sip:101@pbx.local", "sip:94611111@pbx.local")
        )
        mail = parse(
            b"To: <sip:94622222@pbx.local>\nFrom: <sip:101@pbx.local>\n\nhello from the PBX\n"
        )
        route = core.read_route(cfg.mailboxes.read[0], cfg.translate_maps, mail, "tel:+8888")
        self.assertEqual(route, core.ReadRoute("tel:+8888;101", "tel:+4622222"))


class LogSafetyTests(_Desk):
    """A file name cannot forge cig.log lines."""

    def test_control_characters_escaped(self) -> None:
        """A name with a line break is logged with it escaped, and still quarantined."""
        box = maildir(self.base, "out")
        name = "x\n[2026-12-02] mail[INFO]: forged"
        with open(os.path.join(box, "new", name), "wb") as f:
            f.write(b"junk")
        self.desk(read=(Mailbox(box, "pbxsrc", "securedst"),))
        self.clock.advance(0)
        self.assertEqual(os.listdir(box + deskbase.QUARANTINE_SUFFIX), [name])
        text = self.log_text()
        self.assertIn("x\\x0a[2026-12-02] mail[INFO]: forged moved to", text)
        self.assertNotIn("\n[2026-12-02] mail[INFO]: forged", text)


class MissingMailboxTests(_Desk):
    """A read mailbox that is not there is reported once, and used once it is."""

    def test_reported_once_then_used(self) -> None:
        """One log line while new/ cannot be read, however many scans; once it
        exists, its files are posted."""
        box = os.path.join(self.base, "later")
        self.desk(read=(Mailbox(box, "pbxsrc", "securedst"),))
        for _ in range(3):
            self.clock.advance(deskbase.SCAN_INTERVAL)
        self.assertEqual(self.log_text().count("cannot read"), 1)
        maildir(self.base, "later")
        with open(os.path.join(box, "new", "1"), "wb") as f:
            f.write(mail_file())
        self.clock.advance(deskbase.SCAN_INTERVAL)
        self.assertIn("can be read again", self.log_text())
        self.assertEqual([m.type for m in self.sent], ["post"])
