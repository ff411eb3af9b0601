"""The CIG's secure side for real: `twistd cig` attaches to a real `twistd crs`."""

from __future__ import annotations

import os
import shutil
import socket
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.interop._procs import (
    Twistd,
    cli_ok,
    free_port,
    kill_managed_redis,
    short_tempdir,
    tcp_answers,
    unix_answers,
    wait_for,
    write_crs_conf,
)

CIG_URI = "tel:+8888"


class CigUifTests(SynchronousTestCase):
    def setUp(self) -> None:
        if shutil.which("redis-server") is None:
            raise SkipTest("redis-server is not installed")
        d = self.dir = short_tempdir(self)
        self.crs_port = free_port()
        self.crs_conf = write_crs_conf(
            d, self.crs_port, free_port(socket.SOCK_DGRAM), "notify /bin/true"
        )
        self.crs_socket = os.path.join(d, "crs.sock")
        self.mgmt_port = free_port()
        self.cookie = os.path.join(d, "mgmt.cookie")
        self.cig_conf = os.path.join(d, "cig.conf")
        with open(self.cig_conf, "w") as f:
            f.write(
                f"""interfaces {{
    sip {{
        bind 127.0.0.1 {free_port()};
    }}
}}
crs {{
    address 127.0.0.1 {self.crs_port};
    keystore "{d}/userdata";
    ca "{d}/data/tls/crs.crt";
}}
relay {{
    control "{d}/cig-relay.sock";
}}
management {{
    bind 127.0.0.1 {self.mgmt_port};
    cookie "{self.cookie}";
    socket "{d}/cig.sock";
}}
logging {{
    dir "{d}/cig-log";
}}
notify "/bin/true";
"""
            )
        self.procs: list[Twistd] = []
        self.addCleanup(self.stop_all)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        kill_managed_redis(self.dir)

    def ok(self, program: str, *args: str, stdin: str | None = None) -> str:
        return cli_ok(self, program, *args, stdin=stdin)

    def cig_cli(self, *args: str, stdin: str | None = None) -> str:
        where = ("--address", f"127.0.0.1:{self.mgmt_port}", "--cookie", self.cookie)
        return self.ok("cig-cli", *where, *args, stdin=stdin)

    def test_set_key_then_attached(self) -> None:
        """cig-keys piped into cig-cli set-key: the CIG attaches its number to the CRS."""
        self.procs.append(Twistd(self.dir, "crs", "--config", self.crs_conf))
        wait_for(lambda: unix_answers(self.crs_socket), "CRS management socket")
        out = self.ok(
            "crs-cli", "--socket", self.crs_socket, "create", "account", "acme", "-B", "16"
        )
        secret = out.split("shared secret ")[1].strip()
        period = time.strftime("%Y-%m", time.gmtime())
        kms = ("--store", os.path.join(self.dir, "kms"))
        self.ok("cryptify-kms", *kms, "init", "acme")
        blob = self.ok("cryptify-kms", *kms, "cig-keys", "acme", CIG_URI, "--reveal")
        update = os.path.join(self.dir, "acme.upd")
        self.ok(
            "cryptify-kms",
            *kms,
            "update",
            "acme",
            "--secret",
            secret,
            "--period",
            period,
            "-o",
            update,
        )
        self.ok("crs-cli", "--socket", self.crs_socket, "apply", update)

        self.procs.append(Twistd(self.dir, "cig", "--config", self.cig_conf))
        wait_for(lambda: tcp_answers(self.mgmt_port), "CIG management port")
        status = self.cig_cli("status")
        self.assertIn("Crypto state              NO KEYS", status)
        self.assertIn("Connection state          DISCONNECTED", status)

        out = self.cig_cli("set-key", stdin=blob)
        self.assertIn(f"key material set for {CIG_URI} (acme)", out)
        keystore = os.path.join(self.dir, "userdata", f".ks.{CIG_URI}")
        self.assertEqual(os.stat(keystore).st_mode & 0o777, 0o600)

        wait_for(
            lambda: "Connection state          CONNECTED" in self.cig_cli("status"),
            "the CIG attached",
        )
        status = self.cig_cli("status")
        self.assertIn(f"Public ID                 {CIG_URI}", status)
        self.assertIn("Security Domain           acme", status)
        self.assertIn("CRS Address               127.0.0.1", status)
        self.assertIn("Crypto state              OK", status)
        self.assertIn(f"Crypto period 1           {period}", status)
        rows = self.ok("crs-cli", "--socket", self.crs_socket, "show", "attach").splitlines()
        self.assertIn(CIG_URI, [row.split()[0] for row in rows[1:] if row.strip()])
