"""Postfix delivering into the CIG's read mailbox, for real.

Postfix (Debian ``postfix``) runs as its own instance from the test's
directory (``postfix -c DIR start``: its own main.cf and master.cf, queue
and data directories, an SMTP listener on a free loopback port, log to a
file). Its ``virtual`` delivery agent writes mail for ``pbx@cig.test``
into the read mailbox as Maildir (tmp/, then new/), as the mailbox's
owner. A mail submitted with the stdlib ``smtplib``, in the manual's
format, reaches a listening ``cryptify-client`` decrypted and verified as
sent by the CIG (``tel:+8888;101``), and the file is deleted; one the CIG
cannot take (HTML) is quarantined with its reason.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import time

from twisted.trial.unittest import SkipTest

from cryptify.cig.mail.core import MailMessage, build
from cryptify.protocols.message_payload import Attachment, MessageBody
from tests.interop._cigmail import CIG_URI, LISTENER, SLOW, CigMailCase
from tests.interop._procs import free_port, tcp_answers, wait_for

#: The mailbox owner Postfix delivers as (virtual_uid_maps must not be root).
OWNER, GROUP = "nobody", "nogroup"
#: The address whose mail goes to the read mailbox.
RECIPIENT = "pbx@cig.test"

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
showq unix n - n - - showq
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = cig-test.localdomain
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
local_transport = error:no local delivery here
alias_maps =
alias_database =
# the headers are the CIG's (sip: URIs): Postfix must not rewrite them
local_header_rewrite_clients =
virtual_mailbox_domains = cig.test
virtual_mailbox_base = {base}
virtual_mailbox_maps = texthash:{d}/conf/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
maillog_file_prefixes = {d}
maillog_file = {d}/maillog
biff = no
"""


class PostfixReadMailboxTests(CigMailCase):
    """Postfix's virtual agent writes into the read mailbox; the CIG posts what it finds."""

    mailbox_owner = OWNER
    mailbox_group = GROUP

    def setUp(self) -> None:
        if shutil.which("postfix") is None or not os.path.exists("/usr/lib/postfix/sbin/master"):
            raise SkipTest("postfix is not installed (Debian postfix)")
        if os.getuid() != 0:
            raise SkipTest("a Postfix instance is started as root")
        super().setUp()
        import grp
        import pwd

        uid, gid = pwd.getpwnam(OWNER).pw_uid, grp.getgrnam(GROUP).gr_gid
        self.postfix_dir = d = os.path.join(self.dir, "postfix")
        conf = os.path.join(d, "conf")
        for sub in ("conf", "spool", "data"):
            os.makedirs(os.path.join(d, sub))
        shutil.chown(os.path.join(d, "data"), "postfix")
        # the delivery agent runs as the mailbox owner: the way to the mailbox
        for where in (self.dir, os.path.dirname(self.outbox)):
            os.chmod(where, 0o755)
        self.smtp_port = free_port()
        base = os.path.dirname(self.outbox)
        with open(os.path.join(conf, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(d=d, base=base, uid=uid, gid=gid))
        with open(os.path.join(conf, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(port=self.smtp_port))
        with open(os.path.join(conf, "vmailbox"), "w") as f:
            # a trailing slash: Maildir delivery, relative to virtual_mailbox_base
            f.write(f"{RECIPIENT} {os.path.basename(self.outbox)}/\n")
        self.postfix_conf = conf
        self.addCleanup(self.stop_postfix)
        started = subprocess.run(
            ["postfix", "-c", conf, "start"], capture_output=True, text=True, timeout=SLOW
        )
        self.assertEqual(started.returncode, 0, started.stderr + self.maillog())
        wait_for(lambda: tcp_answers(self.smtp_port), "Postfix's SMTP port", SLOW)

    def stop_postfix(self) -> None:
        subprocess.run(["postfix", "-c", self.postfix_conf, "stop"], capture_output=True)
        pid_file = os.path.join(self.postfix_dir, "spool", "pid", "master.pid")
        deadline = time.monotonic() + 30
        while os.path.exists(pid_file) and time.monotonic() < deadline:
            time.sleep(0.1)

    def maillog(self) -> str:
        return self.read(os.path.join(self.postfix_dir, "maillog"))

    def submit(self, data: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=SLOW) as smtp:
            refused = smtp.sendmail("pbx-sender@cig-test.localdomain", [RECIPIENT], data)
        self.assertEqual(refused, {})

    def test_smtp_to_secure_user(self) -> None:
        """Mail over SMTP, delivered by Postfix (its Return-Path, Delivered-To and
        Received lines on top), reaches the listener verified as from tel:+8888;101
        with its attachment; the file is deleted once posted. An HTML mail is
        quarantined with its reason."""
        out = self.listen(LISTENER)
        mail = MailMessage(
            "sip:4622222@secure.example", "sip:101@pbx.example", int(time.time()),
            MessageBody("hej från Postfix", (Attachment("notes.txt", "text/plain", b"a\nb\n"),)),
        )  # fmt: skip
        self.submit(build(mail, "c" * 32))
        wait_for(
            lambda: f"from {CIG_URI};101: hej från Postfix" in self.read(out),
            "the mail at the listener",
            SLOW,
        )
        shown = self.read(out)
        self.assertIn("attachment notes.txt (text/plain, 4 octets)", shown)
        self.assertNotIn("FAILED TO VERIFY", shown)
        self.assertIn("status=sent (delivered to maildir)", self.maillog())
        wait_for(
            lambda: os.listdir(os.path.join(self.outbox, "new")) == [],
            "the file gone from new/",
            SLOW,
        )
        self.submit(
            b"To: <sip:4622222@secure.example>\nFrom: <sip:101@pbx.example>\n"
            b"Content-Type: text/html\n\n<p>no</p>\n"
        )
        quarantine = self.outbox + ".quarantine"
        wait_for(lambda: os.path.isdir(quarantine) and os.listdir(quarantine), "quarantine", SLOW)
        self.assertIn("Content-Type is not text/plain or multipart/mixed", self.cig_log())
