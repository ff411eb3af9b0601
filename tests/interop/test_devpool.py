"""
``make run-pool`` (scripts/devpool.py): two CRS instances from the
``etc/pool/`` samples, each in a network namespace of its own, form a pool
(both ``show system`` views give each instance its half of the slots, the
pool link and the replica of the peer's store are up), and Ctrl-C stops
everything and removes the namespaces.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid

from twisted.trial.unittest import SkipTest, TestCase

from cryptify.crs.slots import SLOTS
from tests.interop._procs import run_cli, short_tempdir, wait_for

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(HERE, "scripts", "devpool.py")
CEILING = 120.0


def netns_names() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


class DevPoolTests(TestCase):
    timeout = 400

    def setUp(self) -> None:
        if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("redis-server") is None:
            raise SkipTest("needs root, ip (iproute2) and redis-server")
        self.run_dir = short_tempdir(self)
        self.prefix = "crt" + uuid.uuid4().hex[:6]
        self.proc = subprocess.Popen(
            [sys.executable, SCRIPT, "--prefix", self.prefix, "--run-dir", self.run_dir],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=CEILING)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        for name in netns_names():
            if name.startswith(self.prefix + "-"):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def cli(self, name: str, *args: str) -> str:
        sock = os.path.join(self.run_dir, name, "crs.sock")
        status, out, _ = run_cli("crs-cli", "--socket", sock, *args)
        return out if status == 0 else ""

    def formed(self) -> bool:
        want = {"crs1": f"0-{SLOTS // 2 - 1}", "crs2": f"{SLOTS // 2}-{SLOTS - 1}"}
        for name in want:
            rows = [r.split() for r in self.cli(name, "show", "system").splitlines()[1:]]
            if {r[0]: r[3] for r in rows if len(r) == 4} != want:
                return False
        return True

    def test_pool_forms_and_stops_clean(self) -> None:
        wait_for(self.formed, "the two instances to form a pool", CEILING)
        self.assertEqual(
            {n for n in netns_names() if n.startswith(self.prefix + "-")},
            {f"{self.prefix}-crs1", f"{self.prefix}-crs2", f"{self.prefix}-clients"},
        )
        wait_for(
            lambda: "link up" in self.cli("crs2", "show", "services"),
            "crs2's replica of crs1's store",
            CEILING,
        )
        services = self.cli("crs1", "show", "services")
        self.assertRegex(services, r"crs1\s+pool_link_crs2\s+active")
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=CEILING)
        self.assertEqual(self.proc.returncode, 0, out)
        self.assertIn("A two-instance CRS pool is running", out)
        self.assertIn("all stopped", out)
        self.assertEqual({n for n in netns_names() if n.startswith(self.prefix + "-")}, set())
