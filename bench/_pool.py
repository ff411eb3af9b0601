"""A pool of real ``twistd crs`` instances in network namespaces, for a benchmark.

The namespaces, the bridge and the instances' crs.conf are the pool
interop tests' own (``tests/interop/_pool.py``, ``_netns.py``), as
``bench/_procs.py`` takes the tests' process helpers; what differs here
is that nothing runs under trial: :class:`Cleanups` stands in for the
test case (its ``addCleanup``), and :meth:`BenchPool.close` undoes
everything, last made first.

The client host (the switch namespace, ``10.99.0.254``) also gets
``client_addresses`` addresses in ``10.98.0.0/16`` on the bridge, and each
instance a route to them, so that thousands of clients come from many
addresses as they would from many hosts (the CRS limits unattached
connections per address).
"""

from __future__ import annotations

import calendar
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench._procs import ROOT, proc_cpu, unix_answers, wait_for

assert ROOT in sys.path
from cryptify.crs.slots import SLOTS, slot_of  # noqa: E402
from tests.interop._pool import CLIENT_PORT, SUBNET, PoolNet, address, crs_conf  # noqa: E402
from tests.interop._procs import Twistd, kill_managed_redis, run_cli  # noqa: E402

#: The pool key of tests/interop/_pool.py's crs.conf (tickets derive from it).
POOL_KEY = "failover-test-pool-key"
#: Longest wait for the pool to form or an instance to come up.
CEILING = 120.0
#: What the survivors log when a peer's heartbeats stop (cryptify/crs/pool/wiring.py).
DOWN_LINE = re.compile(r"pool link to (\S+) down: .*the last arrived at ([0-9.]+)")
#: The coordinator's crs.log line for a takeover map: who was down.
TAKEOVER_LINE = re.compile(
    r"\] pool map \S+: took over the slots of members that are down \(([^)]*)\)"
)
#: When a crs.log line was written (UTC, as the CRS writes it).
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(\.\d+)? \|")
#: What an instance logs when its own event loop ran late (at most every 10 s).
LAG_LINE = re.compile(r"event loop ran ([0-9.]+)s late")


def line_time(line: str) -> float | None:
    """When a crs.log ``line`` was written (Unix time), or None."""
    match = STAMP.match(line)
    if match is None:
        return None
    whole = calendar.timegm(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S"))
    return whole + float(match.group(2) or 0)


class Cleanups:
    """``addCleanup`` for code written for trial test cases; :meth:`run`
    calls them, last added first, and goes on past failures."""

    def __init__(self) -> None:
        self._calls: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def addCleanup(self, call: Callable[..., object], *args: Any) -> None:
        self._calls.append((call, args))

    def run(self) -> None:
        while self._calls:
            call, args = self._calls.pop()
            try:
                call(*args)
            except Exception as exc:  # keep cleaning up
                print(f"cleanup {call}: {exc}", file=sys.stderr)


def client_address(index: int) -> str:
    """The ``index``-th client address (0-based) in 10.98.0.0/16."""
    return f"10.98.{index // 250}.{index % 250 + 1}"


class BenchPool:
    """``count`` instances (crs1..crsN at 10.99.0.1..N, client port 5223), one
    account ``acme`` whose ECCSI KMS is :attr:`kms`, for key period
    :attr:`period`.  ``settings``: more ``[GLOBAL]`` lines for every
    instance's crs.conf (e.g. ``client-max-handshakes 512``)."""

    def __init__(self, count: int, client_addresses: int, settings: str = "") -> None:
        from cryptify.crypto.identity import period_of

        self.count = count
        self.cleanups = Cleanups()
        self.dir = tempfile.mkdtemp(prefix="pool-bench-", dir="/tmp")
        self.cleanups.addCleanup(shutil.rmtree, self.dir, True)
        self.net = PoolNet(self.cleanups, self.dir, count)  # Cleanups for the test case
        self.client_addresses = [client_address(i) for i in range(client_addresses)]
        self._add_client_addresses()
        self.accounts = os.path.join(self.dir, "accounts")
        os.makedirs(self.accounts)
        self.dirs: list[str] = []
        self.procs: dict[int, Twistd] = {}
        for index in range(1, count + 1):
            d = os.path.join(self.dir, f"crs{index}")
            os.makedirs(d)
            conf = crs_conf(d, count, self.accounts)
            if settings:
                with open(conf) as f:
                    text = f.read()
                with open(conf, "w") as f:
                    f.write(text.replace("[POOL]\n", settings.rstrip("\n") + "\n[POOL]\n", 1))
            with open(os.path.join(d, "crs-local.conf"), "w") as f:
                f.write(f"crsname crs{index}\ndb-backup none\nworkers 1\n")
            self.dirs.append(d)
        self.cleanups.addCleanup(self._stop_all)
        for index in range(1, count + 1):
            self.start(index)
        for index in range(1, count + 1):
            wait_for(lambda i=index: unix_answers(self.socket(i)), f"crs{index}", CEILING)
        self.period = period_of(time.time())
        self.kms = self._provision()
        wait_for(self.formed, "the pool to form", CEILING)

    # -- network ---------------------------------------------------------

    def _add_client_addresses(self) -> None:
        batch = "".join(f"addr add {a}/16 dev br0\n" for a in self.client_addresses)
        subprocess.run(
            [*self.net.switch.prefix(), "ip", "-batch", "-"], input=batch, text=True, check=True
        )
        for host in self.net.hosts:
            host.run("ip", "route", "add", "10.98.0.0/16", "via", f"{SUBNET}.254")

    # -- instances -------------------------------------------------------

    def socket(self, index: int) -> str:
        return os.path.join(self.dirs[index - 1], "crs.sock")

    def start(self, index: int) -> None:
        d = self.dirs[index - 1]
        self.procs[index] = Twistd(
            d,
            "crs",
            *("--config", os.path.join(d, "crs.conf")),
            *("--local-config", os.path.join(d, "crs-local.conf")),
            prefix=tuple(self.net.hosts[index - 1].prefix(d)),
        )

    def pid(self, index: int) -> int:
        return self.procs[index].proc.pid

    def cpu(self, index: int) -> float:
        return proc_cpu(self.pid(index))

    def kill(self, index: int) -> None:
        """``kill -9`` of the instance and its Redis children (a host dying)."""
        proc = self.procs.pop(index)
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait(timeout=CEILING)
        kill_managed_redis(self.dirs[index - 1])

    def _stop_all(self) -> None:
        for index in list(self.procs):
            self.procs.pop(index).stop()
        for d in self.dirs:
            kill_managed_redis(d)

    def cli(self, index: int, *args: str) -> str:
        status, out, err = run_cli("crs-cli", "--socket", self.socket(index), *args)
        if status != 0:
            raise RuntimeError(f"crs{index} {args}: {out}{err}")
        return out

    def crs_log(self, index: int) -> str:
        try:
            with open(os.path.join(self.dirs[index - 1], "log", "crs.log")) as f:
                return f.read()
        except OSError:
            return ""

    def last_heartbeat(self, victim: int) -> float | None:
        """When ``victim``'s last heartbeat arrived at a survivor (the latest
        over the survivors), from the survivors' crs.log; None until one
        logged the link down."""
        seen = []
        for index in self.procs:
            for match in DOWN_LINE.finditer(self.crs_log(index)):
                if match.group(1) == f"crs{victim}":
                    seen.append(float(match.group(2)))
        return max(seen) if seen else None

    def takeover_at(self, victim: int, killed_at: float) -> float | None:
        """When the coordinator wrote the map that took ``victim``'s slots
        over after it was killed at ``killed_at`` (Unix time, from its
        crs.log line; an earlier takeover was a false failover), or None."""
        seen = []
        for index in self.procs:
            for line in self.crs_log(index).splitlines():
                match = TAKEOVER_LINE.search(line)
                when = line_time(line) if match else None
                if match and when is not None and when >= killed_at:
                    if f"crs{victim}" in match.group(1).split(","):
                        seen.append(when)
        return min(seen) if seen else None

    def pool_events(self, victim: int, killed_at: float) -> dict[str, float]:
        """From the living instances' crs.log: how often one declared a live
        peer down (a peer other than ``victim``, or ``victim`` before it was
        killed at ``killed_at``: its heartbeats were late, a false
        failover), how many maps they wrote or adopted, and the longest own
        loop lag they logged (lags of 1 s or more, at most one line per 10 s)."""
        false_downs = maps = 0
        lag = 0.0
        for index in self.procs:
            for line in self.crs_log(index).splitlines():
                match = DOWN_LINE.search(line)
                late = LAG_LINE.search(line)
                if match and (
                    match.group(1) != f"crs{victim}" or (line_time(line) or killed_at) < killed_at
                ):
                    false_downs += 1
                elif "] pool map " in line:
                    maps += 1
                elif late:
                    lag = max(lag, float(late.group(1)))
        return {
            "live_peer_declared_down": false_downs,
            "map_changes_seen": maps,
            "max_loop_lag_logged": lag,
        }

    # -- the pool --------------------------------------------------------

    def home(self, index: int) -> str:
        first = (index - 1) * SLOTS // self.count
        last = index * SLOTS // self.count - 1
        return f"{first}-{last}"

    def formed(self) -> bool:
        want = {f"crs{i}": self.home(i) for i in range(1, self.count + 1)}
        for index in self.procs:
            try:
                rows = self.cli(index, "show", "system").splitlines()[1:]
            except RuntimeError:
                return False
            if {r.split()[0]: r.split()[3] for r in rows if r.strip()} != want:
                return False
        return True

    def owner_index(self, uri: str) -> int:
        """The instance that owns ``uri`` in the formed pool (its home range)."""
        return slot_of(uri) * self.count // SLOTS + 1

    def _provision(self) -> Any:
        """Account ``acme`` on crs1 with a fresh KMS's update file; the
        others read it from the shared accounts directory."""
        import attrs

        from cryptify.crypto.updatefile import seal_update_file
        from cryptify.kms.store import KmsAccount

        out = self.cli(1, "create", "account", "acme", "-B", "16")
        secret = out.split("shared secret ")[1].strip()
        kms = attrs.evolve(KmsAccount.generate("acme"), revision=1)
        update = os.path.join(self.dir, "acme.upd")
        with open(update, "wb") as f:
            f.write(seal_update_file(kms.update(self.period), secret))
        self.cli(1, "apply", update)
        for index in range(2, self.count + 1):
            self.cli(index, "reload", "account")
        return kms

    def in_client_host(self, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        """A process in the client host (the switch namespace)."""
        return subprocess.Popen([*self.net.switch.prefix(self.dir), *argv], text=True, **kw)

    def close(self) -> None:
        self.cleanups.run()


__all__ = ["CLIENT_PORT", "POOL_KEY", "BenchPool", "address", "client_address"]


def run_generators(
    host: Any, specs: list[dict[str, Any]], script: str, tag: str, seconds: float
) -> tuple[list[dict[str, Any]], dict[Any, float]]:
    """Run one generator process of bench/``script`` per spec in the client
    host of ``host`` (a pool or two operators: ``dir``, ``procs``, ``cpu``,
    ``in_client_host``); their reports, and each CRS's CPU seconds over
    0.9 of ``seconds`` once all have started."""
    path_of = os.path.join(ROOT, "bench", script)
    workers, started = [], []
    for w, spec in enumerate(specs):
        mark = os.path.join(host.dir, f"{tag}-{w}.started")
        path = os.path.join(host.dir, f"{tag}-{w}.json")
        with open(path, "w") as f:
            json.dump({**spec, "started": mark}, f)
        started.append(mark)
        workers.append(
            host.in_client_host([sys.executable, path_of, "--worker", path], stdout=subprocess.PIPE)
        )
    results = []
    try:
        deadline = time.monotonic() + 300
        while not all(os.path.exists(m) for m in started) and time.monotonic() < deadline:
            time.sleep(0.05)
        cpu0 = {i: host.cpu(i) for i in host.procs}
        time.sleep(seconds * 0.9)
        cpu1 = {i: host.cpu(i) for i in host.procs}
        for p in workers:
            out = p.stdout.read() if p.stdout else ""
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in workers:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results, {i: cpu1[i] - cpu0[i] for i in cpu0}
