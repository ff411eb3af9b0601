"""Attach benchmark: full attaches, ticket re-attaches and idle RSS on the real ``twistd crs``.

    .venv/bin/python bench/attach.py [--clients 2000] [--workers 2] [--concurrency 200]

Starts a real ``twistd crs-relay`` and ``twistd crs`` (managed Redis, the
accounts directory with one account applied from a KMS update file:
:class:`bench._procs.BenchCrs`) and ``--workers`` generator processes.
Each generator holds its share of ``--clients`` users (ECCSI keys issued
for the current month) and attaches them over real TLS + WebSocket with
the reference client's :class:`~cryptify.client.session.ClientSession`,
``--concurrency`` attaches in flight over all generators, from source
addresses spread over 127.0.0.0/8 (at most :data:`PER_ADDRESS` in flight
from one, under the CRS's ``client-max-unattached-per-address``).

Phases, each timed with the CRS's (and its Redis children's) CPU around it:

1. **full attach**: every client attaches (TLS handshake, WebSocket
   upgrade, ``attach``, ``challenge``, ``prove`` with an ECCSI signature
   the CRS verifies with a signer it has not seen, ``attached`` with a
   ticket); then everyone stays attached and idle for two seconds and the
   CRS's RSS is read;
2. everyone detaches and closes (not measured);
3. **re-attach**: every client attaches again with its ticket (TLS
   handshake, WebSocket upgrade, ``attach`` with the ticket, ``attached``:
   no ECCSI).

One JSON line:

- ``attaches_per_crs_cpu_second`` / ``reattaches_per_crs_cpu_second``:
  operations per CPU second of the CRS process, which runs on one core:
  the per-core rates the targets (``target``) are stated in;
- ``attaches_per_server_cpu_second`` / ``reattaches_...``: the same with
  the CRS's Redis children's CPU added;
- ``attaches_per_second`` / ``reattaches_per_second``: wall-clock rates on
  this machine, which the generators share with the CRS;
- ``crs_cpu_per_attach_ms``, ``redis_cpu_per_attach_ms``,
  ``generator_cpu_per_attach_ms`` (and ``..._per_reattach_ms``);
- ``generator_ceiling`` / ``generator_reattach_ceiling``: operations per
  generator CPU second, summed over the generators (they bound the wall
  rates), and ``machine_ceiling``: CPUs / (CRS + Redis + generator CPU
  per full attach);
- ``crs_rss_per_idle_client_kb``: (CRS RSS with every client attached
  and idle - RSS before the first attach) / clients, and
  ``projected_rss_100k_gb`` for 100,000 clients.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench._procs import BenchCrs, cpu_budget, proc_cpu  # noqa: E402

#: Attaches in flight from one source address, at most (the CRS's default
#: ``client-max-unattached-per-address`` is 64).
PER_ADDRESS = 32
#: The issue's targets, per CRS core.
TARGET = {
    "attaches_per_crs_cpu_second": 1000,
    "reattaches_per_crs_cpu_second": 3000,
    "crs_rss_per_idle_client_kb": 40,
}


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------- worker


def fast_signer(ksak: int, kpak: bytes, uri: str, period: str) -> Any:
    """A user's ECCSI signer without the client's key validation (the KMS
    just issued the key; the validation is the client's cost, not the CRS's)."""
    from cryptify.crypto import eccsi
    from cryptify.crypto.identity import tel_identifier

    identity = tel_identifier(uri, period)
    ssk, pvt = eccsi.EccsiKms(ksak).issue(identity)
    signer = object.__new__(eccsi.EccsiSigner)
    for name, value in (
        ("kpak", kpak),
        ("identity", identity),
        ("ssk", ssk),
        ("pvt", pvt),
        ("hs", eccsi.hash_hs(kpak, identity, pvt)),
    ):
        object.__setattr__(signer, name, value)
    return signer


def worker(spec: dict[str, Any]) -> None:
    """One generator: build the signers, then obey ``attach``/``close``/``quit``
    lines on stdin, answering each with one JSON line."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory

    from cryptify.client.connection import ConnectionEnded, UmsgClientProtocol
    from cryptify.client.session import Attached, ClientSession, Disconnected, Refused
    from cryptify.protocols.stdtls import TLSClientFactory
    from cryptify.protocols.tls import client_context_factory

    ksak = int(spec["ksak"], 16)
    kpak = bytes.fromhex(spec["kpak"])
    period = spec["period"]
    uris: list[str] = spec["uris"]
    signers = {uri: fast_signer(ksak, kpak, uri, period) for uri in uris}
    creator = client_context_factory("127.0.0.1", spec["ca"])
    binds: list[str] = spec["binds"]
    concurrency: int = spec["concurrency"]
    tickets: dict[str, bytes | None] = {}
    live: dict[str, UmsgClientProtocol] = {}
    state: dict[str, Any] = {}

    def report(**fields: Any) -> None:
        print(json.dumps(fields), flush=True)

    def watcher(uri: str) -> Any:
        outcome = {"done": False}

        def on_event(event: Any) -> None:
            if outcome["done"]:
                return
            if isinstance(event, Attached):
                outcome["done"] = True
                tickets[uri] = event.ticket
                state["resumed"] += int(event.resumed)
                settled("attached")
            elif isinstance(event, Refused | Disconnected | ConnectionEnded):
                outcome["done"] = True
                if state["failed"] < 5:
                    print(f"FAIL {uri} {event}", file=sys.stderr, flush=True)
                settled("failed")

        return on_event

    def settled(how: str) -> None:
        state[how] += 1
        state["inflight"] -= 1
        if state["attached"] + state["failed"] == len(uris):
            report(
                attached=state["attached"],
                failed=state["failed"],
                resumed=state["resumed"],
                cpu=time.process_time() - state["cpu"],
                first=state["first"],
                last=time.time(),
            )
        else:
            launch()

    def launch() -> None:
        while state["inflight"] < concurrency and state["next"] < len(uris):
            index = state["next"]
            state["next"] += 1
            state["inflight"] += 1
            uri = uris[index]

            def make(send: Any, uri: str = uri) -> ClientSession:
                signer = signers[uri]
                return ClientSession("acme", uri, lambda _period: signer, send, app="bench/1")

            def build(make: Any = make, uri: str = uri) -> UmsgClientProtocol:
                proto = UmsgClientProtocol(make, reactor, watcher(uri), "127.0.0.1")
                proto.session.ticket = tickets.get(uri)
                live[uri] = proto
                return proto

            bind = (binds[index % len(binds)], 0)
            tcp = TCP4ClientEndpoint(
                reactor, "127.0.0.1", spec["port"], timeout=60, bindAddress=bind
            )
            # the reference client's TLS (client/servers.py's tls_connector)
            d = tcp.connect(TLSClientFactory(creator, Factory.forProtocol(build), reactor))
            d.addErrback(failed)

    def failed(failure: Any) -> None:
        if state["failed"] < 5:
            print(f"ERR {failure.getErrorMessage()}", file=sys.stderr, flush=True)
        settled("failed")

    def attach() -> None:
        state.update(next=0, inflight=0, attached=0, failed=0, resumed=0)
        state.update(cpu=time.process_time(), first=time.time())
        launch()

    def close() -> None:
        from twisted.internet.defer import DeferredList

        protos = list(live.values())
        live.clear()
        for proto in protos:
            proto.close("bench re-attach")
        DeferredList([p.done for p in protos]).addCallback(lambda _: report(closed=len(protos)))

    commands = {"attach": attach, "close": close, "quit": reactor.stop}

    def read_commands() -> None:
        for line in sys.stdin:
            command = commands.get(line.strip())
            if command is not None:
                reactor.callFromThread(command)

    threading.Thread(target=read_commands, daemon=True).start()
    reactor.callWhenRunning(report, ready=len(uris))
    reactor.run()


# ---------------------------------------------------------------- orchestration


class Generators:
    """The generator processes, driven by command lines."""

    def __init__(self, procs: list[Any]) -> None:
        self.procs = procs

    def ask(self, command: str) -> list[dict[str, Any]]:
        for proc in self.procs:
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        return [json.loads(proc.stdout.readline()) for proc in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            try:
                proc.stdin.write("quit\n")
                proc.stdin.flush()
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(20)
            except Exception:
                proc.kill()


class Profiler:
    """py-spy (from the bench's Python environment) on the CRS during one phase."""

    def __init__(self, prefix: str | None, pid: int, phase: str) -> None:
        import subprocess

        self.proc = None
        if prefix:
            spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
            argv = [spy, "record", "-p", str(pid), "-f", "raw", "-r", "250", "-o"]
            self.proc = subprocess.Popen(
                [*argv, f"{prefix}-{phase}.txt"], stdout=subprocess.DEVNULL
            )
            time.sleep(1.0)

    def stop(self) -> None:
        import signal

        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(60)


class Meter:
    """CPU of the CRS and its Redis children over a phase."""

    def __init__(self, bench: BenchCrs) -> None:
        self.crs = bench.crs.pid
        self.redis = list(bench.redis_pids().values())

    def sample(self) -> tuple[float, float]:
        return proc_cpu(self.crs), sum(proc_cpu(pid) for pid in self.redis)


def spawn(bench: BenchCrs, args: argparse.Namespace, kpak: bytes, ksak: int) -> Generators:
    import subprocess

    uris = [f"tel:+4690{n:07d}" for n in range(args.clients)]
    # enough source addresses that no one has more than PER_ADDRESS in flight
    per_worker = max(1, args.concurrency // args.workers)
    addresses = max(1, -(-per_worker // PER_ADDRESS))
    procs = []
    for w in range(args.workers):
        spec = {
            "ca": bench.ca,
            "port": bench.port,
            "period": bench.period,
            "kpak": kpak.hex(),
            "ksak": f"{ksak:x}",
            "uris": uris[w :: args.workers],
            "concurrency": per_worker,
            "binds": [f"127.0.{w + 1}.{a + 2}" for a in range(addresses)],
        }
        path = os.path.join(bench.dir, f"worker{w}.json")
        with open(path, "w") as f:
            json.dump(spec, f)
        procs.append(
            subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--worker", path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    generators = Generators(procs)
    for proc in procs:
        assert json.loads(proc.stdout.readline())["ready"]
    return generators


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    parser.add_argument(
        "--concurrency", type=int, default=200, help="attaches in flight, all generators together"
    )
    parser.add_argument("--idle", type=float, default=2.0, help="seconds idle before the RSS")
    parser.add_argument(
        "--profile",
        metavar="PREFIX",
        help="py-spy the CRS in each phase into PREFIX-attach.txt, PREFIX-reattach.txt"
        " (collapsed stacks; the profiler's sampling costs the CRS some CPU)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        with open(args.worker) as f:
            worker(json.load(f))
        return
    if not 1 <= args.clients <= 15_000:
        # one CRS process: 20,000 open files here, Redis and logs included
        parser.error("--clients must be 1..15000")
    run(args)


def run(args: argparse.Namespace) -> None:
    bench = BenchCrs("attachbench-")
    generators: Generators | None = None
    try:
        meter = Meter(bench)
        generators = spawn(bench, args, bench.kms.kpak, bench.kms.eccsi.ksak)
        time.sleep(1.0)
        rss0 = proc_rss_kb(meter.crs)
        spy = Profiler(args.profile, meter.crs, "attach")
        crs0, redis0 = meter.sample()
        first = generators.ask("attach")
        crs1, redis1 = meter.sample()
        spy.stop()
        time.sleep(args.idle)
        rss1 = proc_rss_kb(meter.crs)
        closed = generators.ask("close")
        time.sleep(1.0)  # the CRS's side of the closes
        spy = Profiler(args.profile, meter.crs, "reattach")
        crs2, redis2 = meter.sample()
        again = generators.ask("attach")
        crs3, redis3 = meter.sample()
        spy.stop()

        def phase(results: list[dict[str, Any]], crs: float, redis: float, key: str) -> Any:
            done = sum(r[key] for r in results)
            gen = sum(r["cpu"] for r in results)
            wall = max(r["last"] for r in results) - min(r["first"] for r in results)
            return {
                "done": done,
                "wall": wall,
                "crs": crs,
                "redis": redis,
                "gen": gen,
                "ceiling": sum(r[key] / r["cpu"] for r in results if r["cpu"]),
            }

        full = phase(first, crs1 - crs0, redis1 - redis0, "attached")
        re = phase(again, crs3 - crs2, redis3 - redis2, "resumed")

        def per(value: float, count: int) -> float | None:
            return round(1000 * value / count, 3) if count else None

        def rate(count: int, seconds: float) -> float | None:
            return round(count / seconds, 1) if seconds > 0 else None

        n, m = full["done"], re["done"]
        rss_per_client = (rss1 - rss0) / n if n else 0.0
        per_attach = (full["crs"] + full["redis"] + full["gen"]) / n if n else 0.0
        print(
            json.dumps(
                {
                    "bench": "attach",
                    "clients": args.clients,
                    "generators": args.workers,
                    "concurrency": args.concurrency,
                    "attached": n,
                    "failed": sum(r["failed"] for r in first),
                    "attaches_per_second": rate(n, full["wall"]),
                    "attaches_per_crs_cpu_second": rate(n, full["crs"]),
                    "attaches_per_server_cpu_second": rate(n, full["crs"] + full["redis"]),
                    "crs_cpu_per_attach_ms": per(full["crs"], n),
                    "redis_cpu_per_attach_ms": per(full["redis"], n),
                    "generator_cpu_per_attach_ms": per(full["gen"], n),
                    "generator_ceiling": round(full["ceiling"], 1),
                    "machine_ceiling": round(cpu_budget() / per_attach, 1) if per_attach else None,
                    "closed": sum(r["closed"] for r in closed),
                    "reattached": m,
                    "reattach_failed": sum(r["failed"] for r in again),
                    "reattaches_per_second": rate(m, re["wall"]),
                    "reattaches_per_crs_cpu_second": rate(m, re["crs"]),
                    "reattaches_per_server_cpu_second": rate(m, re["crs"] + re["redis"]),
                    "crs_cpu_per_reattach_ms": per(re["crs"], m),
                    "redis_cpu_per_reattach_ms": per(re["redis"], m),
                    "generator_cpu_per_reattach_ms": per(re["gen"], m),
                    "generator_reattach_ceiling": round(re["ceiling"], 1),
                    "crs_rss_kb": [rss0, rss1],
                    "crs_rss_per_idle_client_kb": round(rss_per_client, 1),
                    "projected_rss_100k_gb": round(rss_per_client * 100_000 / 1024**2, 2),
                    "cpus": cpu_budget(),
                    "load": round(os.getloadavg()[0], 1),
                    "target": TARGET,
                }
            )
        )
    finally:
        if generators is not None:
            generators.stop()
        bench.stop()


if __name__ == "__main__":
    main()
