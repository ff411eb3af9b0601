"""What the CIG mailbox and SIP MESSAGE interop tests share: a real CRS
(redis-server, twistd crs) with two provisioned users, and a real
``twistd cig`` attached to it with keys, a write and a read Maildir (made
with packaging/create_cig_maildir), and, for subclasses, more cig.conf
(:attr:`CigMailCase.cig_extra`, :meth:`CigMailCase.sip_interface`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

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


class CigMailCase(SynchronousTestCase):
    """A real CRS with two users, and a real CIG attached with a write and a read mailbox."""

    #: Owner and group of the mailboxes (create_cig_maildir's CIG_MAILDIR_*).
    mailbox_owner = "root"
    mailbox_group = "root"

    #: More command-line arguments of twistd cig.
    cig_args: tuple[str, ...] = ()

    def mailboxes(self) -> str:
        """The ``mailboxes`` block: a write mailbox for ``tel:+8888;EXT``, a read one."""
        return f"""mailboxes {{
    write {{ path "{self.inbox}"; map_from translate_map secure; map_to translate_map pbx; }}
    read {{ path "{self.outbox}"; map_from translate_map pbxsrc; map_to translate_map users; }}
}}"""

    def cig_extra(self) -> str:
        """More cig.conf statements (maps, say)."""
        return ""

    def sip_interface(self) -> str:
        """The body of ``interfaces { ... }``."""
        return f"sip {{ bind 127.0.0.1 {self.sip_port}; }}"

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
        for attempt in (1, 2):
            self.mgmt_port = free_port()
            self.sip_port = free_port(socket.SOCK_DGRAM)
            self.cookie = os.path.join(d, "mgmt.cookie")
            cig_conf = os.path.join(d, "cig.conf")
            with open(cig_conf, "w") as f:
                f.write(
                    f"""interfaces {{ {self.sip_interface()} }}
crs {{ address 127.0.0.1 {self.crs_port}; keystore "{d}/userdata"; ca "{d}/data/tls/crs.crt"; }}
relay {{ control "{d}/cig-relay.sock"; }}
management {{ bind 127.0.0.1 {self.mgmt_port}; cookie "{self.cookie}"; socket "{d}/cig.sock"; }}
logging {{ dir "{d}/cig-log"; }}
notify "/bin/true";
translate_map secure {{ rule match "tel:+{{n}}" translation "sip:{{n}}@secure.example"; }}
translate_map pbx {{ rule match "tel:+8888;{{ext}}" translation "sip:{{ext}}@pbx.example"; }}
translate_map pbxsrc {{ rule match "sip:{{ext}}@pbx.example" translation "tel:+8888;{{ext}}"; }}
translate_map users {{ rule match "sip:{{n}}@secure.example" translation "tel:+{{n}}"; }}
{self.mailboxes()}
{self.cig_extra()}
"""
                )
            self.procs.append(Twistd(d, "cig", "--config", cig_conf, *self.cig_args))
            cig = self.procs[-1]
            wait_for(
                lambda: tcp_answers(self.mgmt_port) or cig.proc.poll() is not None,
                "CIG management port",
                SLOW,
            )
            if cig.proc.poll() is None:
                break
            # a port free_port gave was taken by a test running beside this
            # one before the CIG bound it: once more with new ports
            self.procs.remove(cig)
            self.assertEqual(attempt, 1, f"the CIG did not start:\n{cig.output()}")
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
