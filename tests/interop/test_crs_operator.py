"""The CRS manual's operator procedures against a real ``twistd crs`` and ``crs-cli``.

A corrupt account among good ones on ``reload account``, the restore and
monthly update steps' ``chmod``, an update file dropped into an account's
directory, and Ctrl-C on ``crs-cli trace``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.interop._procs import (
    BIN,
    Twistd,
    free_port,
    run_cli,
    short_tempdir,
    unix_answers,
    wait_for,
    write_crs_conf,
)


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class CrsOperatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        if shutil.which("redis-server") is None:
            raise SkipTest("redis-server is not installed")
        self.dir = short_tempdir(self)
        self.conf = write_crs_conf(self.dir, free_port(), free_port(socket.SOCK_DGRAM))
        self.socket = os.path.join(self.dir, "crs.sock")
        self.accounts = os.path.join(self.dir, "accounts")
        self.crs = Twistd(self.dir, "crs", "--config", self.conf)
        self.addCleanup(self.stop)
        wait_for(lambda: unix_answers(self.socket), "CRS management socket")

    def stop(self) -> None:
        self.crs.stop()
        for name in ("redis_high", "redis_low"):
            try:
                with open(os.path.join(self.dir, "data", "redis", name, "redis.pid")) as f:
                    pid = f.read().strip()
            except OSError:
                continue
            if pid and os.path.exists(f"/proc/{pid}"):
                os.kill(int(pid), signal.SIGKILL)

    def cli(self, *args: str) -> tuple[int, str, str]:
        return run_cli("crs-cli", "--socket", self.socket, *args)

    def create(self, account: str) -> str:
        status, out, err = self.cli("create", "account", account, "-B", "16")
        self.assertEqual(status, 0, err)
        return out.split("shared secret ")[1].strip()

    def loaded(self) -> str:
        status, out, err = self.cli("show", "account")
        self.assertEqual(status, 0, err)
        return out.splitlines()[1].split()[-1]

    def test_reload_with_broken_accounts(self) -> None:
        """reload account names each broken file, reloads the rest, keeps the broken ones.

        acme's secret is random octets, beta gets a month file 200,000 arrays
        deep; gamma is restored by hand with the manual's chmod -R 644 and an
        update file dropped in its directory with chmod -R og+rw (CMS < 3.2.0).
        """
        self.create("acme")
        self.create("beta")
        gamma_secret = self.cli("create", "sharedSecret", "-B", "16")[1].strip()
        self.assertEqual(self.loaded(), "acme,beta")

        acme_secret = os.path.join(self.accounts, "acme", "secret")
        with open(acme_secret, "wb") as f:
            f.write(os.urandom(64) + b"\xff")
        deep = os.path.join(self.accounts, "beta", "2026-11.json")
        with open(deep, "w") as f:
            f.write("[" * 200_000 + "]" * 200_000)

        # gamma, restored from a back-up as the manual says, then an update dropped in
        gamma = os.path.join(self.accounts, "gamma")
        os.mkdir(gamma)
        with open(os.path.join(gamma, "secret"), "w") as f:
            f.write(gamma_secret + "\n")
        os.chmod(os.path.join(gamma, "secret"), 0o644)
        os.chmod(gamma, 0o755)
        period = time.strftime("%Y-%m", time.gmtime())
        kms = ("--store", os.path.join(self.dir, "kms"))
        self.assertEqual(run_cli("cryptify-kms", *kms, "init", "gamma")[0], 0)
        dropped = os.path.join(gamma, f"{period}.upd")
        status, _, err = run_cli(
            "cryptify-kms",
            *kms,
            "update",
            "gamma",
            "--secret",
            gamma_secret,
            "--period",
            period,
            "-o",
            dropped,
        )
        self.assertEqual(status, 0, err)
        for path in (gamma, os.path.join(gamma, "secret"), dropped):
            os.chmod(path, mode_of(path) | 0o066)

        status, out, err = self.cli("reload", "account")
        self.assertEqual(status, 1, out + err)
        self.assertEqual(out, "accounts reloaded, except for the 2 problem(s) above\n")
        self.assertNotIn("UNKNOWN", err)
        self.assertNotIn("Traceback", err)
        problems = err.splitlines()
        self.assertEqual(len(problems), 2, err)
        self.assertIn(f"{acme_secret}: the shared secret is not base64 text", problems[0])
        self.assertIn(f"{deep}: not a month file (JSON nested too deeply)", problems[1])
        self.assertEqual(self.loaded(), "acme,beta,gamma")
        self.assertEqual(mode_of(os.path.join(gamma, "secret")), 0o600)
        self.assertEqual(mode_of(gamma) & 0o022, 0)
        self.assertTrue(os.path.exists(dropped + ".applied"))
        updates = self.cli("show", "updates")[1].splitlines()
        gamma_row = next(row for row in updates if row.startswith("gamma"))
        self.assertNotIn("Not Available", gamma_row.split("  ", 1)[1].split("UTC")[0])
        log = self.crs.output()
        self.assertIn(f"{os.path.join(gamma, 'secret')} had mode 0666", log)
        self.assertNotIn(gamma_secret, log)
        self.assertNotIn("Traceback", log)

        # acme still works: the operator repairs the file and reloads
        with open(acme_secret, "w") as f:
            f.write("c2VjcmV0\n")
        status, out, err = self.cli("reload", "account")
        self.assertEqual(status, 1, out + err)
        self.assertEqual(len(err.splitlines()), 1, err)
        os.unlink(deep)
        self.assertEqual(self.cli("reload", "account")[0], 0)

    def test_trace_ctrl_c_is_quiet(self) -> None:
        """Ctrl-C on crs-cli trace ends it with status 0 and nothing on standard error."""
        tracer = subprocess.Popen(
            [os.path.join(BIN, "crs-cli"), "--socket", self.socket, "trace", "attach"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(lambda: tracer.poll() is None and tracer.kill())
        wait_for(lambda: "trace attach started" in self.crs.output(), "the trace to start")
        tracer.send_signal(signal.SIGINT)
        out, err = tracer.communicate(timeout=30)
        self.assertEqual((tracer.returncode, out, err), (0, "", ""))
