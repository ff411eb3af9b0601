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
import socket
import subprocess
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from cryptify.cig.mail.core import MailMessage, build, parse
from cryptify.protocols.message_payload import Attachment, MessageBody
from tests.interop._procs import (
    BIN,
    Twistd,
    cli_ok,
    free_port,
    kill_managed_redis,
    provision,
    short_tempdir,
    tcp_answers,
    unix_answers,
    wait_for,
    write_crs_conf,
)

CIG_URI = "tel:+8888"
SENDER = "tel:+4611111"
LISTENER = "tel:+4622222"
TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Generous: eight agents share two cores.
SLOW = 90.0


class _CigMailCase(SynchronousTestCase):
    """A real CRS with two users, and a real CIG attached with a write and a read mailbox."""

    #: Owner and group of the mailboxes (create_cig_maildir's CIG_MAILDIR_*).
    mailbox_owner = "root"
    mailbox_group = "root"

    def setUp(self) -> None:
        if shutil.which("redis-server") is None:
            raise SkipTest("redis-server is not installed")
        d = self.dir = short_tempdir(self)
        self.procs: list[Twistd] = []
        self.clients: list[subprocess.Popen[bytes]] = []
        self.addCleanup(self.stop_all)
        self.crs_port = free_port()
        crs_conf = write_crs_conf(
            d, self.crs_port, free_port(socket.SOCK_DGRAM), "notify /bin/true"
        )
        self.crs_socket = os.path.join(d, "crs.sock")
        self.procs.append(Twistd(d, "crs", "--config", crs_conf))
        wait_for(lambda: unix_answers(self.crs_socket), "CRS management socket", SLOW)
        period = time.strftime("%Y-%m", time.gmtime())
        self.keys = provision(d, self.crs_socket, "acme", [SENDER, LISTENER], period)
        kms = ("--store", os.path.join(d, "kms"))
        blob = cli_ok(self, "cryptify-kms", *kms, "cig-keys", "acme", CIG_URI, "--reveal")

        self.inbox = os.path.join(d, "mail", "in")
        self.outbox = os.path.join(d, "mail", "out")
        env = dict(
            os.environ, CIG_MAILDIR_OWNER=self.mailbox_owner, CIG_MAILDIR_GROUP=self.mailbox_group
        )
        for box in (self.inbox, self.outbox):
            subprocess.run(
                [os.path.join(TOP, "packaging", "create_cig_maildir"), box],
                env=env,
                check=True,
                capture_output=True,
            )
        self.mgmt_port = free_port()
        self.cookie = os.path.join(d, "mgmt.cookie")
        cig_conf = os.path.join(d, "cig.conf")
        with open(cig_conf, "w") as f:
            f.write(
                f"""interfaces {{ sip {{ bind 127.0.0.1 {free_port()}; }} }}
crs {{ address 127.0.0.1 {self.crs_port}; keystore "{d}/userdata"; ca "{d}/data/tls/crs.crt"; }}
relay {{ control "{d}/cig-relay.sock"; }}
management {{ bind 127.0.0.1 {self.mgmt_port}; cookie "{self.cookie}"; socket "{d}/cig.sock"; }}
logging {{ dir "{d}/cig-log"; }}
notify "/bin/true";
translate_map secure {{ rule match "tel:+{{n}}" translation "sip:{{n}}@secure.example"; }}
translate_map pbx {{ rule match "tel:+8888;{{ext}}" translation "sip:{{ext}}@pbx.example"; }}
translate_map pbxsrc {{ rule match "sip:{{ext}}@pbx.example" translation "tel:+8888;{{ext}}"; }}
translate_map users {{ rule match "sip:{{n}}@secure.example" translation "tel:+{{n}}"; }}
mailboxes {{
    write {{ path "{self.inbox}"; map_from translate_map secure; map_to translate_map pbx; }}
    read {{ path "{self.outbox}"; map_from translate_map pbxsrc; map_to translate_map users; }}
}}
"""
            )
        self.procs.append(Twistd(d, "cig", "--config", cig_conf))
        wait_for(lambda: tcp_answers(self.mgmt_port), "CIG management port", SLOW)
        self.cig_cli("set-key", stdin=blob)
        wait_for(
            lambda: "Connection state          CONNECTED" in self.cig_cli("status"),
            "the CIG attached",
            SLOW,
        )

    def stop_all(self) -> None:
        for proc in self.clients:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for twistd in reversed(self.procs):
            twistd.stop()
        kill_managed_redis(self.dir)

    def cig_cli(self, *args: str, stdin: str | None = None) -> str:
        where = ("--address", f"127.0.0.1:{self.mgmt_port}", "--cookie", self.cookie)
        return cli_ok(self, "cig-cli", *where, *args, stdin=stdin)

    def client_args(self, uri: str) -> list[str]:
        cert = os.path.join(self.dir, "data", "tls", "crs.crt")
        return ["--keys", self.keys[uri], "--server", f"127.0.0.1:{self.crs_port}", "--ca", cert]

    def listen(self, uri: str) -> str:
        out = os.path.join(self.dir, "listen.out")
        with open(out, "wb") as f:
            proc = subprocess.Popen(
                [os.path.join(BIN, "cryptify-client"), "listen", *self.client_args(uri)],
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.clients.append(proc)
        wait_for(lambda: f"attached {uri}" in self.read(out), "the listener attached", SLOW)
        return out

    def read(self, path: str) -> str:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except OSError:
            return ""

    def cig_log(self) -> str:
        return self.read(os.path.join(self.dir, "cig-log", "cig.log"))

    def send(self, to: str, text: str, *extra: str) -> None:
        """cryptify-client send ... --wait, which must succeed."""
        done = subprocess.run(
            [os.path.join(BIN, "cryptify-client"), "send", to, text,
             *self.client_args(SENDER), *extra, "--wait"],
            capture_output=True, text=True, timeout=SLOW * 2,
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr + self.cig_log())


class CigMailboxTests(_CigMailCase):
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


class DovecotImapTests(_CigMailCase):
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
