"""Process helpers the benchmarks share (ports, waiting, CPU time).

The port and waiting helpers are the interop tests' own
(``tests/interop/_procs.py``); ``proc_cpu`` reads a process's CPU seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.interop._procs import free_port, unix_answers, wait_for  # noqa: E402

BIN = os.path.dirname(sys.executable)

__all__ = ["BenchCrs", "cpu_budget", "free_port", "proc_cpu", "unix_answers", "wait_for"]


def proc_cpu(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_budget() -> int:
    """CPUs this process may run on (the machine's ceiling for CPU-bound work)."""
    return len(os.sched_getaffinity(0))


class BenchCrs:
    """A real ``twistd crs-relay`` + ``twistd crs`` with one account, for a benchmark.

    ``kms`` issues users' keys for ``period``; ``stop()`` ends both and removes
    the scratch directory.
    """

    def __init__(self, prefix: str, crs_workers: int = 1) -> None:
        import socket
        import tempfile
        import time

        import attrs

        from cryptify.crypto.identity import period_of
        from cryptify.crypto.updatefile import seal_update_file
        from cryptify.kms.store import KmsAccount
        from tests.interop._procs import write_crs_conf

        self.dir = d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.port, relay_port = free_port(), free_port(socket.SOCK_DGRAM)
        self.conf = write_crs_conf(d, self.port, relay_port)
        self.crs_args: list[str] = []
        if crs_workers > 1:
            # the instance's worker processes (docs/workers.md)
            with open(os.path.join(d, "crs-local.conf"), "w") as f:
                f.write(f"workers {crs_workers}\n")
            self.crs_args = ["--local-config", os.path.join(d, "crs-local.conf")]
        self.ca = f"{d}/data/tls/crs.crt"
        self.relay = self.twistd("crs-relay")
        wait_for(lambda: unix_answers(f"{d}/relay.sock"), "relay")
        self.crs = self.twistd("crs")
        wait_for(lambda: unix_answers(f"{d}/crs.sock"), "CRS")
        secret = self.cli("create", "account", "acme", "-B", "16").split("shared secret ")[1]
        self.period = period_of(time.time())
        self.kms = attrs.evolve(KmsAccount.generate("acme"), revision=1)
        update = os.path.join(d, "acme.upd")
        with open(update, "wb") as f:
            f.write(seal_update_file(self.kms.update(self.period), secret.strip()))
        self.cli("apply", update)
        wait_for(lambda: "crs_relay   active" in self.cli("show", "services"), "relay link")

    def twistd(self, plugin: str) -> subprocess.Popen[bytes]:
        argv = [
            os.path.join(BIN, "twistd"),
            "-n",
            "--pidfile=",
            f"--logfile={self.dir}/{plugin}.log",
        ]
        extra = self.crs_args if plugin == "crs" else []
        proc = subprocess.Popen([*argv, plugin, "--config", self.conf, *extra], cwd=self.dir)
        self.procs.append(proc)
        return proc

    def crs_pids(self) -> list[int]:
        """The CRS's process and its workers (``show system``), for CPU sums."""
        import re

        workers = re.findall(r"app:attach/\d+\s+(\d+)", self.cli("show", "system"))
        return [self.crs.pid, *(int(pid) for pid in workers)]

    def redis_pids(self) -> dict[str, int]:
        """The CRS's Redis children, by instance name (Redis runs in ``DATA/NAME``)."""
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if not f.read().startswith("redis-server"):
                        continue
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if cwd.startswith(self.dir + os.sep):
                found[os.path.basename(cwd)] = int(entry)
        return found

    def cli(self, *args: str) -> str:
        return subprocess.run(
            [os.path.join(BIN, "crs-cli"), "--socket", f"{self.dir}/crs.sock", *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def pairs(self, count: int, first: str, second: str) -> list[list[str]]:
        """``count`` pairs of users (numbers ``first`` and ``second`` + n), with key blobs."""
        result = []
        for n in range(count):
            a, b = f"tel:+{first}{n:06d}", f"tel:+{second}{n:06d}"
            result.append(
                [
                    a,
                    b,
                    self.kms.issue(a, self.period).to_blob(),
                    self.kms.issue(b, self.period).to_blob(),
                ]
            )
        return result

    def spawn_workers(
        self, script: str, count: int, pairs: list[list[str]], settings: dict[str, object]
    ) -> list[subprocess.Popen[str]]:
        """Start ``count`` generator processes (``script --worker SPEC``) sharing
        ``pairs``; return once every one has attached and warmed up."""
        import json

        workers = []
        for w in range(count):
            spec = {
                "ca": self.ca,
                "port": self.port,
                "period": self.period,
                "pairs": pairs[w::count],
                "started": os.path.join(self.dir, f"worker{w}.started"),
                **settings,
            }
            path = os.path.join(self.dir, f"worker{w}.json")
            with open(path, "w") as f:
                json.dump(spec, f)
            workers.append(
                subprocess.Popen(
                    [sys.executable, script, "--worker", path], stdout=subprocess.PIPE, text=True
                )
            )
        started = [os.path.join(self.dir, f"worker{w}.started") for w in range(count)]
        wait_for(lambda: all(os.path.exists(p) for p in started), "generators", 600)
        return workers

    def stop(self) -> None:
        import shutil

        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
