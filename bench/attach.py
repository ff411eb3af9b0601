"""Attach benchmark: N clients through real TLS + WebSocket + ECCSI attach.

    .venv/bin/python bench/attach.py [--clients 20000] [--per-server 15000]
                                     [--per-worker 10000] [--concurrency 200]

Starts CRS listener processes (the real UMSG server stack: TLS, wsproto,
attach core, registry, ECCSI verify; one account in memory instead of the
accounts directory), each holding at most ``--per-server`` clients because
a process may hold 20,000 open files here, and client worker processes
that attach their share of the clients from source addresses spread over
127.0.0.0/8.  When every client is attached and idle it samples the
servers' RSS, then stops everything and prints one JSON line:

- ``attaches_per_second``: clients / wall time from the first connect to
  the last ``attached``;
- ``attaches_per_server_cpu_second``: clients / CPU seconds the servers
  spent in that time (the per-core rate);
- ``server_rss_per_client_kb``: (RSS with everyone attached - RSS before)
  / clients, per server process;
- ``client_cpu_seconds``: what the load generator spent (it shares the
  machine's cores with the servers, so it bounds the measured rate).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PERIOD_URI = "tel:+{:012d}"


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- server


def serve(args: argparse.Namespace) -> None:
    from twisted.internet import reactor

    from cryptify.crs.attach.core import AttachCore
    from cryptify.crs.attach.registry import AttachRegistry
    from cryptify.crs.attach.tickets import TicketKey
    from cryptify.crs.attach.wiring import BACKLOG, Limits, UmsgServerFactory
    from cryptify.protocols.tls import server_context_factory

    kpak = bytes.fromhex(args.kpak)

    class Account:
        id = "bench"

        def kpak_for(self, period: str) -> bytes | None:
            return kpak if period == args.period else None

        def blacklisted(self, uri: str, period: str) -> bool:
            return False

    account = Account()

    class Accounts:
        def get(self, account_id: str) -> Any:
            return account if account_id == "bench" else None

    registry = AttachRegistry("bench", reactor.seconds)
    core = AttachCore(
        "bench",
        Accounts(),
        registry,
        reactor.seconds,
        tickets=TicketKey.derive("bench-pool-key"),
    )
    # The bench measures throughput: no quota, and time enough to attach under load.
    limits = Limits(
        max_unattached_per_address=100_000, max_unattached=100_000, attach_timeout=120.0
    )
    factory = UmsgServerFactory(core, reactor, limits)
    port = reactor.listenSSL(
        0,
        factory,
        server_context_factory(args.cert, args.key),
        backlog=BACKLOG,
        interface="127.0.0.1",
    )
    print(f"PORT {port.getHost().port}", flush=True)
    profile = os.environ.get("ATTACH_BENCH_PROFILE")
    if not profile:
        reactor.run()
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.runcall(reactor.run)
    profiler.dump_stats(profile)


# ---------------------------------------------------------------- worker


def fast_signer(ksak: int, kpak: bytes, uri: str, period: str) -> Any:
    """A user's signer without the key validation (the KMS just made the key)."""
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


def work(args: argparse.Namespace) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
    from twisted.internet.protocol import Factory

    from cryptify.client.connection import ConnectionEnded, UmsgClientProtocol
    from cryptify.client.session import Attached, ClientSession, Disconnected, Refused
    from cryptify.crypto.eccsi import EccsiKms
    from cryptify.protocols.tls import client_context_factory

    ksak = int(args.ksak, 16)
    kpak = EccsiKms(ksak).kpak
    creator = client_context_factory("127.0.0.1", args.ca)
    binds = args.bind.split(",")
    state = {"next": args.first, "inflight": 0, "attached": 0, "failed": 0, "start": 0.0}
    end = args.first + args.count
    keep: list[Any] = []
    tickets: dict[str, bytes | None] = {}

    def watcher(uri: str) -> Any:
        """Events of one connection: count its attach once, or its failure once."""
        outcome = {"done": False}

        def on_event(event: Any) -> None:
            if outcome["done"]:
                return
            if isinstance(event, Attached):
                outcome["done"] = True
                tickets[uri] = event.ticket
                state["resumed"] = state.get("resumed", 0) + int(event.resumed)
                settled("attached")
            elif isinstance(event, Refused | Disconnected | ConnectionEnded):
                outcome["done"] = True
                print(f"FAIL {uri} {event}", file=sys.stderr, flush=True)
                settled("failed")

        return on_event

    def settled(how: str) -> None:
        state[how] += 1
        state["inflight"] -= 1
        if state["attached"] + state["failed"] == args.count:
            done()
        else:
            launch()

    def launch() -> None:
        while state["inflight"] < args.concurrency and state["next"] < end:
            index = state["next"]
            state["next"] += 1
            state["inflight"] += 1
            uri = PERIOD_URI.format(index)

            def make(send: Any, uri: str = uri) -> ClientSession:
                return ClientSession(
                    "bench",
                    uri,
                    lambda period: fast_signer(ksak, kpak, uri, period),
                    send,
                    app="bench/1",
                )

            def build(make: Any = make, uri: str = uri) -> UmsgClientProtocol:
                proto = UmsgClientProtocol(make, reactor, watcher(uri), "127.0.0.1")
                proto.session.ticket = tickets.get(uri)
                keep.append(proto)
                return proto

            bind = (binds[index % len(binds)], 0)
            tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", args.port, timeout=30, bindAddress=bind)
            d = wrapClientTLS(creator, tcp).connect(Factory.forProtocol(build))
            d.addErrback(failed)

    def failed(failure: Any) -> None:
        print(f"ERR {failure.getErrorMessage()}", file=sys.stderr, flush=True)
        settled("failed")

    def done() -> None:
        elapsed = time.monotonic() - state["start"]
        print(
            json.dumps(
                {
                    "attached": state["attached"],
                    "failed": state["failed"],
                    "seconds": elapsed,
                    "resumed": state.get("resumed", 0),
                    "first": state["start_wall"],
                    "last": time.time(),
                }
            ),
            flush=True,
        )

    def start() -> None:
        state["start"] = time.monotonic()
        state["start_wall"] = time.time()
        launch()

    def reattach() -> None:
        """Phase 2: every client detaches, then attaches again with its ticket."""
        for proto in keep:
            proto.close("re-attach")
        keep.clear()
        state.update(next=args.first, inflight=0, attached=0, failed=0, resumed=0)
        reactor.callLater(1.0, start)

    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(reattach))
    reactor.callWhenRunning(start)
    reactor.run()


# ---------------------------------------------------------------- orchestration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20_000)
    parser.add_argument("--per-server", type=int, default=15_000)
    parser.add_argument("--per-worker", type=int, default=10_000)
    parser.add_argument(
        "--concurrency", type=int, default=400, help="attaches in flight, all workers together"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("kpak", "ksak", "period", "cert", "key", "ca", "bind"):
        parser.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    for hidden in ("port", "first", "count"):
        parser.add_argument(f"--{hidden}", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    if args.worker:
        work(args)
        return
    if not 1 <= args.clients <= 100_000:
        parser.error("--clients must be 1..100000")
    run(args)


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` shares differing by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run(args: argparse.Namespace) -> None:
    from cryptify.crypto.eccsi import EccsiKms
    from cryptify.crypto.identity import period_of
    from cryptify.tools.certs import generate_self_signed

    tmp = tempfile.mkdtemp(prefix="attach-bench-")
    cert, key = os.path.join(tmp, "crs.crt"), os.path.join(tmp, "crs.key")
    generate_self_signed(cert, key)
    kms = EccsiKms.generate()
    period = period_of(time.time())
    me = [sys.executable, os.path.abspath(__file__)]
    servers_n = math.ceil(args.clients / args.per_server)
    workers_n = sum(math.ceil(share / args.per_worker) for share in split(args.clients, servers_n))
    servers: list[tuple[subprocess.Popen[str], int]] = []
    tls = ["--cert", cert, "--key", key]
    workers: list[subprocess.Popen[str]] = []
    try:
        for _ in range(servers_n):
            proc = subprocess.Popen(
                [*me, "--serve", "--kpak", kms.kpak.hex(), "--period", period, *tls],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            servers.append((proc, int(line[1])))
        time.sleep(0.5)
        rss_before = [proc_rss_kb(p.pid) for p, _ in servers]
        cpu_before = [proc_cpu(p.pid) for p, _ in servers]
        # Split clients over servers, then each server's share over workers.
        first = 0
        per_server = split(args.clients, servers_n)
        address = 0
        for (_, port), share in zip(servers, per_server):
            for start in range(0, share, args.per_worker):
                count = min(args.per_worker, share - start)
                # about 10,000 source ports per address, addresses in 127.0.0.0/8
                binds = ",".join(
                    f"127.0.{(address + i) // 250}.{(address + i) % 250 + 2}"
                    for i in range(math.ceil(count / 10_000))
                )
                address += math.ceil(count / 10_000)
                workers.append(
                    subprocess.Popen(
                        [
                            *me,
                            *("--worker", "--port", str(port), "--ca", cert),
                            *("--ksak", f"{kms.ksak:x}", "--bind", binds),
                            *("--first", str(first), "--count", str(count)),
                            *("--concurrency", str(max(10, args.concurrency // workers_n))),
                        ],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
                first += count
        results = []
        for worker in workers:
            assert worker.stdout is not None
            results.append(json.loads(worker.stdout.readline()))
        cpu_after = [proc_cpu(p.pid) for p, _ in servers]
        time.sleep(2.0)  # idle
        rss_after = [proc_rss_kb(p.pid) for p, _ in servers]
        client_cpu = sum(proc_cpu(w.pid) for w in workers)
        # Phase 2: everyone re-attaches with the ticket of the first attach.
        cpu_before2 = [proc_cpu(p.pid) for p, _ in servers]
        for worker in workers:
            worker.send_signal(signal.SIGUSR1)
        again = []
        for worker in workers:
            assert worker.stdout is not None
            again.append(json.loads(worker.stdout.readline()))
        cpu_after2 = [proc_cpu(p.pid) for p, _ in servers]
        resumed = sum(r["resumed"] for r in again)
        wall2 = max(r["last"] for r in again) - min(r["first"] for r in again)
        server_cpu2 = sum(a - b for a, b in zip(cpu_after2, cpu_before2))
        attached = sum(r["attached"] for r in results)
        wall = max(r["last"] for r in results) - min(r["first"] for r in results)
        server_cpu = sum(a - b for a, b in zip(cpu_after, cpu_before))
        per_client = [
            (after - before) / share
            for after, before, share in zip(rss_after, rss_before, per_server)
        ]
        print(
            json.dumps(
                {
                    "bench": "attach",
                    "clients": args.clients,
                    "attached": attached,
                    "failed": sum(r["failed"] for r in results),
                    "server_processes": servers_n,
                    "client_processes": len(workers),
                    "seconds": round(wall, 2),
                    "attaches_per_second": round(attached / wall, 1),
                    "server_cpu_seconds": round(server_cpu, 2),
                    "attaches_per_server_cpu_second": round(attached / server_cpu, 1),
                    "client_cpu_seconds": round(client_cpu, 2),
                    "reattach_resumed": resumed,
                    "reattaches_per_second": round(resumed / wall2, 1),
                    "reattaches_per_server_cpu_second": round(resumed / server_cpu2, 1),
                    "server_rss_kb": rss_after,
                    "server_rss_per_client_kb": [round(x, 1) for x in per_client],
                    "projected_rss_100k_gb": round(max(per_client) * 100_000 / 1024**2, 2),
                    "cores": os.cpu_count(),
                }
            )
        )
    finally:
        for proc in workers + [p for p, _ in servers]:
            proc.terminate()
        for proc in workers + [p for p, _ in servers]:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
