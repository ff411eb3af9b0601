"""cryptify-client processes attach to a real `twistd crs` with keys from cryptify-kms."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

from tests.interop._procs import (
    BIN,
    Twistd,
    free_port,
    kill_managed_redis,
    run_cli,
    short_tempdir,
    unix_answers,
    wait_for,
    write_crs_conf,
)


class ClientProgramTests(SynchronousTestCase):
    def setUp(self) -> None:
        if shutil.which("redis-server") is None:
            raise SkipTest("redis-server is not installed")
        d = self.dir = short_tempdir(self)
        self.port = free_port()
        self.conf = write_crs_conf(d, self.port, free_port(socket.SOCK_DGRAM), "notify /bin/true")
        self.socket = os.path.join(d, "crs.sock")
        self.clients: list[subprocess.Popen[bytes]] = []
        self.crs = Twistd(d, "crs", "--config", self.conf)
        self.addCleanup(self.stop_all)
        wait_for(lambda: unix_answers(self.socket), "CRS management socket")

    def stop_all(self) -> None:
        for proc in self.clients:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.crs.stop()
        kill_managed_redis(self.dir)

    def cli(self, *args: str) -> tuple[int, str, str]:
        return run_cli("crs-cli", "--socket", self.socket, *args)

    def client(self, keys: str, name: str) -> tuple[subprocess.Popen[bytes], str]:
        out = os.path.join(self.dir, f"{name}.out")
        cert = os.path.join(self.dir, "data", "tls", "crs.crt")
        with open(out, "wb") as f:
            proc = subprocess.Popen(
                [
                    os.path.join(BIN, "cryptify-client"),
                    "attach",
                    "--keys",
                    keys,
                    "--server",
                    f"127.0.0.1:{self.port}",
                    "--ca",
                    cert,
                ],
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.clients.append(proc)
        return proc, out

    def test_two_clients_attach(self) -> None:
        """Two cryptify-client processes attach and show up in show attach; a
        blacklisted one is refused; Ctrl-C detaches."""
        status, out, err = self.cli("create", "account", "acme", "-B", "32")
        self.assertEqual(status, 0, err)
        secret = out.split("shared secret ")[1].strip()
        period = time.strftime("%Y-%m", time.gmtime())
        kms = ("--store", os.path.join(self.dir, "kms"))
        self.assertEqual(run_cli("cryptify-kms", *kms, "init", "acme")[0], 0)
        keys = {}
        for uri in ("tel:+4611111", "tel:+4622222", "tel:+4633333"):
            keys[uri] = os.path.join(self.dir, f"{uri[5:]}.keys")
            status, _, err = run_cli(
                "cryptify-kms", *kms, "issue", "acme", uri, "--period", period, "-o", keys[uri]
            )
            self.assertEqual(status, 0, err)
        update = os.path.join(self.dir, "acme.upd")
        status, _, err = run_cli(
            "cryptify-kms",
            *kms,
            "update",
            "acme",
            "--secret",
            secret,
            "--period",
            period,
            "--blacklist",
            "tel:+4633333",
            "-o",
            update,
        )
        self.assertEqual(status, 0, err)
        self.assertEqual(self.cli("apply", update)[0], 0)

        first, out1 = self.client(keys["tel:+4611111"], "one")
        second, _out2 = self.client(keys["tel:+4622222"], "two")
        black, out3 = self.client(keys["tel:+4633333"], "three")

        def attached() -> list[list[str]]:
            _status, out, _ = self.cli("show", "attach")
            rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
            return rows if len(rows) == 2 else []

        rows = wait_for(attached, "two clients in show attach")
        assert isinstance(rows, list)
        self.assertEqual(sorted(r[0] for r in rows), ["tel:+4611111", "tel:+4622222"])
        for row in rows:
            self.assertEqual(row[1], "acme")
            self.assertTrue(row[3].startswith("cryptify-client/"))
            self.assertTrue(row[4].startswith("127.0.0.1:"))
            self.assertEqual(row[5], "crs1")

        def text(path: str) -> str:
            with open(path) as f:
                return f.read()

        wait_for(lambda: "attached tel:+4611111 to crs1" in text(out1), "client one output")
        wait_for(lambda: "refused: blacklisted" in text(out3), "blacklisted client refused")
        log = os.path.join(self.dir, "log", "crs.log")
        wait_for(lambda: "blacklisted" in text(log), "refusal in crs.log")
        # The attach and refusal lines, written straight into crs.log, in its format.
        self.assertRegex(
            text(log),
            r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| INFO \| attach\(\d+\) \] "
            r"tel:\+4611111 \(acme\) attached from 127\.0\.0\.1:\d+, version cryptify-client/",
        )
        self.assertRegex(
            text(log), r"\| WARN \| attach\(\d+\) \] attach refused for tel:\+4633333 \(acme\)"
        )

        first.send_signal(signal.SIGINT)
        first.wait(timeout=20)
        wait_for(
            lambda: "tel:+4611111" not in self.cli("show", "attach")[1], "first client detached"
        )
        self.assertIn("tel:+4622222", self.cli("show", "attach")[1])
        del second, black

    def test_replaced_client_stops(self) -> None:
        """Two cryptify-client processes with one identity: the one replaced stops
        with a clear message and exit status 1, and the other stays attached (they
        do not replace each other in turn)."""
        status, out, err = self.cli("create", "account", "acme", "-B", "32")
        self.assertEqual(status, 0, err)
        secret = out.split("shared secret ")[1].strip()
        period = time.strftime("%Y-%m", time.gmtime())
        kms = ("--store", os.path.join(self.dir, "kms"))
        self.assertEqual(run_cli("cryptify-kms", *kms, "init", "acme")[0], 0)
        keys = os.path.join(self.dir, "same.keys")
        status, _, err = run_cli(
            "cryptify-kms", *kms, "issue", "acme", "tel:+4655555", "--period", period, "-o", keys
        )
        self.assertEqual(status, 0, err)
        update = os.path.join(self.dir, "acme.upd")
        status, _, err = run_cli(
            "cryptify-kms", *kms, "update", "acme", "--secret", secret, "--period", period,
            "-o", update,
        )  # fmt: skip
        self.assertEqual(status, 0, err)
        self.assertEqual(self.cli("apply", update)[0], 0)

        def text(path: str) -> str:
            with open(path) as f:
                return f.read()

        first, out1 = self.client(keys, "first")
        wait_for(lambda: "attached tel:+4655555" in text(out1), "first client attached")
        second, out2 = self.client(keys, "second")
        wait_for(lambda: first.poll() is not None, "the replaced client exits")
        self.assertEqual(first.returncode, 1)
        self.assertIn("disconnected: replaced", text(out1))
        self.assertIn("stopped: another client attached the same URI", text(out1))
        self.assertEqual(text(out1).count("attached tel:+4655555"), 1)
        self.assertIn("attached tel:+4655555", text(out2))
        self.assertIsNone(second.poll())
        rows = self.cli("show", "attach")[1]
        self.assertEqual(rows.count("tel:+4655555"), 1)
