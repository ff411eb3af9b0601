"""The CIG's mailboxes for real: `cryptify-client send` -> `twistd crs` ->
`twistd cig` -> a write Maildir, and a file an external program drops into
a read Maildir -> `twistd cig` -> `twistd crs` -> `cryptify-client listen`.

Both directions are end-to-end sealed (docs/messages.md); the mailbox
directories are made with packaging/create_cig_maildir, the files are in
the manual's format (docs/cig-mail.md).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from twisted.trial.unittest import SkipTest

from cryptify.cig.mail.core import MailMessage, build, parse
from cryptify.protocols.message_payload import Attachment, MessageBody
from tests.interop._cigmail import CIG_URI, LISTENER, SENDER, SLOW, CigMailCase
from tests.interop._procs import free_port, tcp_answers, wait_for


class CigMailboxTests(CigMailCase):
    def test_secure_user_to_write_mailbox(self) -> None:
        """send with an attachment to tel:+8888;101 --wait: the delivered receipt
        comes only once the file is in the write mailbox's new/, in the
        manual's multipart format, decrypted."""
        picture = os.path.join(self.dir, "photo.png")
        with open(picture, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + os.urandom(3000))
        self.send(f"{CIG_URI};101", "hej PBX", "--attach", picture)
        [name] = os.listdir(os.path.join(self.inbox, "new"))
        self.assertEqual(os.listdir(os.path.join(self.inbox, "tmp")), [])
        path = os.path.join(self.inbox, "new", name)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o660)
        with open(path, "rb") as f:
            data = f.read()
        names = [line.split(b":")[0] for line in data.split(b"\n\n")[0].split(b"\n")]
        self.assertEqual(
            names,
            [b"To", b"From", b"Date", b"Content-Type", b"Content-Transfer-Encoding",
             b"Auto-Submitted", b"X-Responder-Type", b"X-Sender-URI", b"X-Sender-Domain"],
        )  # fmt: skip
        mail = parse(data)
        self.assertEqual(
            (mail.to, mail.sender), ("sip:101@pbx.example", "sip:4611111@secure.example")
        )
        with open(picture, "rb") as f:
            self.assertEqual(
                mail.body, MessageBody("hej PBX", (Attachment("photo.png", "image/png", f.read()),))
            )
        self.assertIn(b"X-Sender-URI: tel:+4611111\n", data)

    def test_read_mailbox_to_secure_user(self) -> None:
        """A file an external program moves into the read mailbox's new/ reaches
        the listening client, verified as from tel:+8888;101, and is deleted;
        a file in the wrong format is quarantined with its reason."""
        out = self.listen(LISTENER)
        mail = MailMessage(
            "sip:4622222@secure.example", "sip:101@pbx.example", int(time.time()),
            MessageBody("hello from the PBX", (Attachment("note.txt", "text/plain", b"hi\n"),)),
        )  # fmt: skip
        for name, data in (("1.ext.host", build(mail, "b" * 32)), ("2.ext.host", b"junk\n")):
            tmp = os.path.join(self.outbox, "tmp", name)
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, os.path.join(self.outbox, "new", name))
        wait_for(
            lambda: f"from {CIG_URI};101: hello from the PBX" in self.read(out),
            "the message at the listener",
            SLOW,
        )
        self.assertIn("attachment note.txt (text/plain, 3 octets)", self.read(out))
        self.assertNotIn("FAILED TO VERIFY", self.read(out))
        wait_for(
            lambda: os.listdir(os.path.join(self.outbox, "new")) == [],
            "the files gone from new/",
            SLOW,
        )
        self.assertEqual(os.listdir(self.outbox + ".quarantine"), ["2.ext.host"])
        self.assertIn("2.ext.host moved to", self.cig_log())


class DovecotImapTests(CigMailCase):
    """Dovecot serves the write mailbox over IMAP (its own configuration, loopback,
    the mailbox shared through the group as the manual's cigmail would be)."""

    mailbox_owner = "dovecot"
    mailbox_group = "dovecot"

    def setUp(self) -> None:
        if shutil.which("dovecot") is None:
            raise SkipTest("dovecot is not installed (Debian dovecot-imapd)")
        super().setUp()
        self.imap_port = free_port()
        state = os.path.join(self.dir, "dovecot")
        for sub in ("run", "state", "home", "index"):
            os.makedirs(os.path.join(state, sub))
        for sub in ("home", "index"):
            shutil.chown(os.path.join(state, sub), "dovecot", "dovecot")
        # dovecot's mail processes run as the dovecot user: the way to the mailbox
        for where in (self.dir, os.path.dirname(self.inbox)):
            os.chmod(where, 0o755)
        conf = os.path.join(state, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(
                f"""base_dir = {state}/run
state_dir = {state}/state
log_path = {state}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1
passdb {{
  driver = static
  args = password=interop
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={state}/home
}}
mail_location = maildir:{self.inbox}:INDEX={state}/index:CONTROL={state}/index
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
}}
service anvil {{
  chroot =
}}
"""
            )
        self.dovecot_log = os.path.join(state, "dovecot.log")
        self.dovecot = subprocess.Popen(
            ["dovecot", "-F", "-c", conf],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.addCleanup(self.stop_dovecot)
        wait_for(lambda: tcp_answers(self.imap_port), "dovecot's IMAP port", SLOW)

    def stop_dovecot(self) -> None:
        if self.dovecot.poll() is None:
            self.dovecot.send_signal(signal.SIGTERM)
            try:
                self.dovecot.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.dovecot.pid, signal.SIGKILL)
                self.dovecot.wait()

    def test_imap_fetch(self) -> None:
        """A secure user's message with an attachment, fetched over IMAP: the
        manual's headers, the decrypted text and the attachment's octets."""
        import email
        import email.policy
        import imaplib

        report = os.path.join(self.dir, "report.pdf")
        with open(report, "wb") as f:
            f.write(b"%PDF-1.4\n" + os.urandom(2000))
        self.send(f"{CIG_URI};4711", "Mötet är flyttat.", "--attach", report)
        imap = imaplib.IMAP4("127.0.0.1", self.imap_port)
        try:
            imap.login("cig", "interop")
            status, count = imap.select("INBOX")
            self.assertEqual((status, count), ("OK", [b"1"]), self.read(self.dovecot_log))
            status, data = imap.fetch("1", "(RFC822)")
            self.assertEqual(status, "OK")
            raw = data[0][1]
            assert isinstance(raw, bytes)
        finally:
            imap.logout()
        headers = email.message_from_bytes(raw, policy=email.policy.compat32)
        self.assertEqual(
            [(name, headers[name]) for name in ("To", "From", "X-Sender-URI", "X-Sender-Domain")],
            [("To", "<sip:4711@pbx.example>"), ("From", "<sip:4611111@secure.example>"),
             ("X-Sender-URI", SENDER), ("X-Sender-Domain", "acme")],
        )  # fmt: skip
        self.assertEqual(headers["Auto-Submitted"], "no")
        got = email.message_from_bytes(raw, policy=email.policy.default)
        self.assertEqual(got.get_content_type(), "multipart/mixed")
        text, attachment = list(got.iter_parts())
        self.assertEqual(text.get_content().rstrip("\n"), "Mötet är flyttat.")
        self.assertEqual(attachment.get_filename(), "report.pdf")
        self.assertEqual(attachment.get_content_type(), "application/pdf")
        with open(report, "rb") as f:
            self.assertEqual(attachment.get_content(), f.read())
