"""Pool failover benchmark: N clients, one instance killed, time until its clients are back.

    .venv/bin/python bench/pool.py [--clients 20000] [--instances N] [--workers W]
                                   [--concurrency 200] [--ceiling 300]
                                   [--max-handshakes N]

Needs root (network namespaces).  Builds a pool of real ``twistd crs``
instances (managed Redis), each in its own network namespace with its own
address (``bench/_pool.py``, the pool interop tests' harness), one account,
and attaches ``--clients`` clients from the client host (generator
processes in the switch namespace, one per 5,000 clients by default,
clients spread over 10.98.0.0/16 as if from many hosts).  Each client is the reference client's
``AttachingClient`` with every instance's address (``servers``, as DNS
gives them, in an order of its own as resolvers shuffle them), starting
at its URI's owner: it reconnects with the client's
own backoff (``docs/client.md``), to the next address in turn, following
``moved``.  Clients start with the attach ticket a previous attach would
have given them (minted with the pool key; a refused ticket falls back to
a full ECCSI attach, counted as ``full_attaches``).

Then the last instance is killed with ``kill -9`` (and its Redis, as when
a host dies).  The failover time is from its last heartbeat (when it
arrived at a survivor: the survivors' crs.log line ``pool link to crsN
down: ... the last arrived at T``) to the moment the last of its clients
was attached at a survivor.  One JSON line:

- ``failover_seconds``: the figure above (null unless every orphan came
  back within ``--ceiling``: ``complete``); ``half_back_seconds`` and
  ``p90_back_seconds``: until half and nine tenths of the orphans were
  back (null if they never were); ``takeover_seconds``: last heartbeat
  to the coordinator's takeover map (about 1 s after a kill, 3 s of
  missed heartbeats otherwise, more when the survivors' loops run late);
  ``kill_to_last_heartbeat_seconds``;
- ``orphans`` (clients attached to the killed instance), ``reattached``
  (each counted once), ``resumed`` (with a ticket), ``full_attaches``,
  ``moves`` (moved answers followed, mostly to the dead instance before
  the takeover), ``connect_failures``, ``refusals``, ``others_lost``
  (clients of the survivors that lost their connection, each once:
  should be 0); the generators count alike
  (``bench/_pool_lean.py``'s ``FailoverTally``);
  ``live_peer_declared_down`` (times a survivor declared another *live*
  instance down because its heartbeats came late, the victim before its
  kill included: a false failover, which moves that instance's clients
  too; should be 0) and
  ``map_changes_seen`` (map lines in the survivors' crs.log);
  ``max_loop_lag_logged`` (the longest own event-loop lag a survivor
  logged, lags of 1 s or more) and ``max_handshakes`` (the instances'
  ``client-max-handshakes``, ``--max-handshakes``);
- ``generator_cpu_seconds`` and ``generator_ceiling`` (re-attaches per
  generator CPU second; the generator shares the cores with the pool),
  ``survivors_cpu_seconds`` and ``reattaches_per_survivor_cpu_second``;
- ``messages``: the message phase, run first on the whole pool, see
  :func:`message_rates`: bench/messages.py's load, each URI attached at
  its owner; the single-instance rate, the cross-instance rate and their
  ratio (``--no-cross`` leaves the cross-instance part out).

``--generator lean`` (the default) runs the clients in
``bench/_pool_lean.py``: the reference client's reconnect rules (standby
first, ``moved``, load refusals, full-jitter backoff) and its TLS context,
without Twisted, at about half its CPU per re-attach, so that on a host
shared with the pool the generators take less of the cores the survivors
need; ``--generator reference`` runs ``AttachingClient`` itself.

``POOL_BENCH_TRACE=1`` prints every event of the dead instance's clients
to stderr (one line each, with the time), to see where a slow failover
spends its time.

Issue 15's target: under 10 s for 20,000 clients.  One process may hold
20,000 open files here, so a survivor cannot hold 20,000 clients: by
default the bench takes the fewest instances whose survivors can hold all
the clients after one dies (3 for 20,000).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import select
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

URI = "tel:+4670{:07d}"
#: Clients per client address (the CRS allows 64 unattached per address).
PER_ADDRESS = 50
#: Clients per generator process by default: the clients' side of a TLS
#: re-attach costs about as much CPU as the server's, so with 2 generators for
#: 20,000 clients the generators, not the survivors, were the slower side.
CLIENTS_PER_WORKER = 5_000
#: Files a CRS instance keeps open besides its clients (Redis, logs, links).
FILES_RESERVE = 300


# ---------------------------------------------------------------- worker


def work(spec_path: str) -> None:
    """A generator process (in the client host): attach its clients, then
    report when those of the victim are attached elsewhere."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory

    from bench._pool_lean import FailoverTally, lean_work
    from bench.attach import fast_signer
    from cryptify.client.connection import AttachingClient, ConnectionEnded, Event
    from cryptify.client.session import Attached, ClientSession, Moved, Refused
    from cryptify.protocols.stdtls import TLSClientFactory
    from cryptify.protocols.tls import client_context_factory

    with open(spec_path) as f:
        spec = json.load(f)
    if spec.get("generator") == "lean":
        lean_work(spec)
        return
    ksak, kpak = int(spec["ksak"], 16), bytes.fromhex(spec["kpak"])
    servers = tuple((h, p) for h, p in spec["servers"])
    victim = spec["victim"]
    creator = client_context_factory("localhost", None, verify=False)
    trace = bool(os.environ.get("POOL_BENCH_TRACE"))
    connectors: dict[str, Any] = {}

    def connector(bind: str) -> Any:
        if bind not in connectors:

            def connect(host: str, port: int, factory: Factory[Any]) -> Any:
                tcp = TCP4ClientEndpoint(reactor, host, port, timeout=10, bindAddress=(bind, 0))
                # the reference client's TLS (client/servers.py's tls_connector)
                tls = TLSClientFactory(creator, factory, reactor)
                return tcp.connect(tls).addCallback(lambda proto: proto.wrapped)

            connectors[bind] = connect
        return connectors[bind]

    tally = FailoverTally(len(spec["clients"]), spec["ceiling"])
    clients: list[AttachingClient] = []
    launched = 0

    def on_event(index: int) -> Any:
        def event(e: Event) -> None:
            client = clients[index]
            if trace and tally.failover and index in tally.orphans:
                print(f"{time.time():.3f} {index} {client.host} {e}", file=sys.stderr, flush=True)
            if isinstance(e, Attached):
                if tally.attached(index, client.host != victim, e.resumed):
                    launch()
                    if tally.all_attached():
                        ready()
            elif isinstance(e, Moved):
                tally.moved()
            elif isinstance(e, Refused):
                tally.refused(e.code)
            elif isinstance(e, ConnectionEnded):
                if e.why.startswith("cannot connect"):
                    tally.cannot_connect(e.why)
                elif tally.lost(index):
                    reactor.callLater(spec["ceiling"], tally.report, False)

        return event

    def make_session(uri: str) -> Any:
        signers: dict[str, Any] = {}

        def signer_for(p: str) -> Any:
            if p not in signers:
                signers[p] = fast_signer(ksak, kpak, uri, p)
            return signers[p]

        return lambda send: ClientSession("acme", uri, signer_for, send, app="bench/1")

    shuffle = random.Random(spec["seed"]).shuffle
    for index, (uri, home, ticket, bind) in enumerate(spec["clients"]):
        # Each client gets the addresses in an order of its own, as DNS
        # resolvers shuffle them, so the clients of a dead instance spread
        # over the survivors instead of all trying the same one next.
        order = list(servers)
        shuffle(order)
        client = AttachingClient(
            reactor,
            connector(bind),
            make_session(uri),
            home,
            spec["port"],
            on_event(index),
            first_delay=spec["first_delay"],
            servers=tuple(order),
        )
        client.ticket = bytes.fromhex(ticket)
        clients.append(client)

    def launch() -> None:
        nonlocal launched
        while launched < len(clients) and launched - len(tally.attached_once) < spec["concurrency"]:
            clients[launched].start()
            launched += 1

    def ready() -> None:
        tally.ready({i for i, c in enumerate(clients) if c.host == victim})

    def begin() -> None:
        launch()
        if tally.all_attached():
            ready()  # no clients here

    reactor.callWhenRunning(begin)
    reactor.run()


# ---------------------------------------------------------------- messages


def message_pairs(pool: Any, count: int, cross: bool) -> tuple[list[list[str]], dict[str, str]]:
    """``count`` (sender, recipient, sender keys, recipient keys) pairs whose
    two URIs crs1 owns (``cross`` False) or crs1 the sender's and crs2 the
    recipient's (``cross`` True); and each URI's owner address."""
    from bench._pool import address

    want = (1, 2) if cross else (1, 1)
    found: dict[int, list[str]] = {1: [], 2: []}
    n = 0
    base = 20_000_000 if cross else 10_000_000
    while len(found[want[0]]) < count or len(found[want[1]]) < (2 * count if not cross else count):
        uri = f"tel:+4671{base + n:08d}"
        n += 1
        owner = pool.owner_index(uri)
        if owner in found:
            found[owner].append(uri)
    if cross:
        senders, recipients = found[1][:count], found[2][:count]
    else:
        senders, recipients = found[1][:count], found[1][count : 2 * count]
    pairs = []
    for a, b in zip(senders, recipients):
        blobs = [pool.kms.issue(u, pool.period).to_blob() for u in (a, b)]
        pairs.append([a, b, *blobs])
    host_of = {u: address(pool.owner_index(u)) for p in pairs for u in p[:2]}
    return pairs, host_of


def message_rate(pool: Any, args: argparse.Namespace, cross: bool) -> dict[str, Any]:
    """bench/messages.py's load (pairs posting with one post in flight,
    each acknowledged once stored, the next posted when it is delivered)
    from the client host, each URI attached at its owner."""
    from bench._pool import CLIENT_PORT, run_generators

    pairs, host_of = message_pairs(pool, args.pairs, cross)
    specs = [
        {
            "port": CLIENT_PORT,
            "period": pool.period,
            "pairs": pairs[w::2],
            "host_of": host_of,
            "seconds": args.message_seconds,
            "warmup": 1.0,
            "depth": 1,
            "size": 64,
        }
        for w in range(2)
    ]
    results, cpu = run_generators(
        pool, specs, "messages.py", f"messages{int(cross)}", args.message_seconds
    )
    messages = sum(r["messages"] for r in results)
    wall = max(r["wall"] for r in results)
    generator_cpu = sum(r["cpu"] for r in results)
    latencies = sorted(x for r in results for x in r["latencies"])
    rate = messages / wall if wall else 0.0
    in_window = rate * args.message_seconds * 0.9
    crs_cpu = {f"crs{i}": round(seconds, 2) for i, seconds in cpu.items()}
    return {
        "pairs": len(pairs),
        "messages_per_second": round(rate, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
        "errors": sum(r["errors"] for r in results),
        "crs_cpu_seconds": crs_cpu,
        "crs_cpu_per_message_ms": (
            round(1000 * sum(crs_cpu.values()) / in_window, 3) if in_window else None
        ),
        "generator_ceiling": round(messages / generator_cpu, 1) if generator_cpu else None,
    }


def message_rates(pool: Any, args: argparse.Namespace) -> dict[str, Any]:
    """THE MESSAGES PHASE (issue 15 section 6): the message rate with sender
    and recipient at different instances against both at one, same run,
    same pool.  Target: ``cross_to_single`` at least 0.8.

    The cross-instance part has each sender attached at crs1 posting to a
    recipient attached at crs2, every post forwarded over the 8090 link
    (``--no-cross`` leaves it out).
    """
    if args.pairs <= 0:
        return {"measured": False, "why": "--pairs 0"}
    single = message_rate(pool, args, cross=False)
    result: dict[str, Any] = {
        "measured": True,
        "single_instance": single,
        "single_instance_messages_per_second": single["messages_per_second"],
        "cross_instance_messages_per_second": None,
        "cross_to_single": None,
    }
    if not args.cross:
        result["cross_why"] = "not measured: --no-cross"
        return result
    cross = message_rate(pool, args, cross=True)
    result["cross_instance"] = cross
    result["cross_instance_messages_per_second"] = cross["messages_per_second"]
    if single["messages_per_second"]:
        result["cross_to_single"] = round(
            cross["messages_per_second"] / single["messages_per_second"], 3
        )
    return result


# ---------------------------------------------------------------- orchestration


class JsonLines:
    """The generators' JSON lines, one from each per :meth:`read`.

    Read from the pipes themselves and kept here: a buffered reader would
    hold a second line where ``select`` cannot see it (a generator with no
    orphans writes ``ready`` and ``done`` at once)."""

    def __init__(self, procs: list[subprocess.Popen[str]]) -> None:
        self.procs = procs
        self.buffers = [bytearray() for _ in procs]

    def read(self, timeout: float) -> list[dict[str, Any]]:
        """The next line of each generator (in their order), within ``timeout``."""
        got: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while True:
            for i, buf in enumerate(self.buffers):
                end = buf.find(b"\n")
                if i not in got and end >= 0:
                    got[i] = json.loads(bytes(buf[:end]))
                    del buf[: end + 1]
            if len(got) == len(self.procs):
                return [got[i] for i in range(len(self.procs))]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{len(self.procs) - len(got)} generators did not answer in {timeout}s"
                )
            waiting = {
                p.stdout.fileno(): i for i, p in enumerate(self.procs) if i not in got and p.stdout
            }
            readable, _, _ = select.select(list(waiting), [], [], min(left, 5.0))
            for fd in readable:
                i = waiting[fd]
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"generator {i} ended (exit {self.procs[i].wait()})")
                self.buffers[i] += chunk


def merge_done(done: list[dict[str, Any]]) -> dict[str, Any]:
    """The generators' ``done`` lines as one: counts summed (refusals and
    connect errors per code), the back times merged in order, complete
    when every generator was."""
    merged: dict[str, Any] = {
        "complete": all(d["complete"] for d in done),
        "times": sorted(t for d in done for t in d["times"]),
        "first_lost": min((d["first_lost"] for d in done if d["first_lost"]), default=None),
    }
    for key in (
        "orphans",
        "reattached",
        "resumed",
        "full_attaches",
        "moves",
        "connect_failures",
        "others_lost",
    ):
        merged[key] = sum(d[key] for d in done)
    for key in ("refusals", "connect_errors"):
        tally: dict[str, int] = {}
        for d in done:
            for code, count in d[key].items():
                tally[code] = tally.get(code, 0) + count
        merged[key] = tally
    return merged


def back_at(times: list[float], orphans: int, fraction: float) -> float | None:
    """When ``fraction`` of the ``orphans`` were back (``times`` sorted);
    None if that many never came back."""
    index = int(orphans * fraction)
    return times[index] if index < len(times) else None


def histogram(offsets: list[float]) -> list[int]:
    """How many of ``offsets`` (seconds) fall in each whole second from 0."""
    counts: list[int] = []
    for offset in offsets:
        second = max(0, int(offset))
        counts.extend([0] * (second + 1 - len(counts)))
        counts[second] += 1
    return counts


def instances_for(clients: int) -> int:
    """The fewest instances whose survivors can hold every client after one dies."""
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FILES_RESERVE
    return max(2, 1 + math.ceil(clients / files))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench._pool import CLIENT_PORT, POOL_KEY, BenchPool, address
    from bench._procs import proc_cpu
    from cryptify.crs.attach.admission import MAX_HANDSHAKES
    from cryptify.crs.attach.tickets import TicketKey

    instances = args.instances or instances_for(args.clients)
    victim = instances
    workers_n = args.workers or max(2, math.ceil(args.clients / CLIENTS_PER_WORKER))
    workers_n = min(workers_n, args.clients)  # no generator without clients
    addresses = math.ceil(args.clients / PER_ADDRESS)
    settings = f"client-max-handshakes {args.max_handshakes}\n" if args.max_handshakes else ""
    pool = BenchPool(instances, addresses, settings)
    workers: list[subprocess.Popen[str]] = []
    try:
        messages = message_rates(pool, args)
        kms = pool.kms
        tickets = TicketKey.derive(POOL_KEY)
        now = time.time()
        clients = []
        for n in range(args.clients):
            uri = URI.format(n)
            home = address(pool.owner_index(uri))
            ticket = tickets.issue("acme", uri, pool.period, now).hex()
            clients.append([uri, home, ticket, pool.client_addresses[n // PER_ADDRESS]])
        servers = [[address(i), CLIENT_PORT] for i in range(1, instances + 1)]
        began = time.monotonic()
        for w in range(workers_n):
            spec = {
                "ksak": f"{kms.eccsi.ksak:x}",
                "kpak": kms.eccsi.kpak.hex(),
                "period": pool.period,
                "port": CLIENT_PORT,
                "servers": servers,
                "victim": address(victim),
                "clients": clients[w::workers_n],
                "concurrency": max(10, args.concurrency // workers_n),
                "first_delay": args.first_delay,
                "ceiling": args.ceiling,
                "seed": w,
                "generator": args.generator,
            }
            path = os.path.join(pool.dir, f"worker{w}.json")
            with open(path, "w") as f:
                json.dump(spec, f)
            workers.append(
                pool.in_client_host(
                    [sys.executable, os.path.abspath(__file__), "--worker", path],
                    stdout=subprocess.PIPE,
                )
            )
        lines = JsonLines(workers)
        ready = lines.read(args.ceiling * 4)
        attach_seconds = time.monotonic() - began
        time.sleep(2.0)  # idle: keep-alives only
        survivors = [i for i in range(1, instances + 1) if i != victim]
        gen_cpu = [proc_cpu(w.pid) for w in workers]
        srv_cpu = [pool.cpu(i) for i in survivors]
        killed_at = time.time()
        pool.kill(victim)
        done = merge_done(lines.read(args.ceiling + 60))
        gen_cpu = [proc_cpu(w.pid) - c for w, c in zip(workers, gen_cpu)]
        srv_cpu = [pool.cpu(i) - c for i, c in zip(survivors, srv_cpu)]
        last_beat = pool.last_heartbeat(victim)
        orphans, reattached, times = done["orphans"], done["reattached"], done["times"]
        complete = done["complete"]
        generator = sum(gen_cpu)
        survivor_cpu = sum(srv_cpu)

        def since_beat(t: float | None) -> float | None:
            return round(t - last_beat, 2) if t is not None and last_beat is not None else None

        result = {
            "bench": "pool",
            "clients": args.clients,
            "instances": instances,
            "killed": f"crs{victim}",
            "orphans": orphans,
            "reattached": reattached,
            "complete": complete,
            "failover_seconds": since_beat(times[-1]) if complete and times else None,
            "half_back_seconds": since_beat(back_at(times, orphans, 0.5)),
            "p90_back_seconds": since_beat(back_at(times, orphans, 0.9)),
            "back_within_10s": (
                round(sum(1 for t in times if t - last_beat <= 10) / orphans, 3)
                if last_beat is not None and orphans
                else None
            ),
            "first_lost_seconds": since_beat(done["first_lost"]),
            "back_per_second": (
                histogram([t - last_beat for t in times]) if last_beat is not None else None
            ),
            "takeover_seconds": since_beat(pool.takeover_at(victim, killed_at)),
            "kill_to_last_heartbeat_seconds": (
                round(killed_at - last_beat, 2) if last_beat is not None else None
            ),
            **{
                key: done[key]
                for key in (
                    "resumed",
                    "full_attaches",
                    "moves",
                    "connect_failures",
                    "refusals",
                    "connect_errors",
                    "others_lost",
                )
            },
            **pool.pool_events(victim, killed_at),
            "generator_processes": workers_n,
            "generator_cpu_seconds": round(generator, 2),
            "generator_ceiling": round(reattached / generator, 1) if generator else None,
            "survivors_cpu_seconds": round(survivor_cpu, 2),
            "reattaches_per_survivor_cpu_second": (
                round(reattached / survivor_cpu, 1) if survivor_cpu else None
            ),
            "first_delay": args.first_delay,
            "generator": args.generator,
            "max_handshakes": args.max_handshakes or MAX_HANDSHAKES,
            "initial_attach_seconds": round(attach_seconds, 1),
            "ready": [r["orphans"] for r in ready],
            "load_average": os.getloadavg()[0],
            "cores": os.cpu_count(),
        }
        result["messages"] = messages
        return result
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20_000)
    parser.add_argument(
        "--instances", type=int, default=0, help="pool size (default: the fewest that fit)"
    )
    parser.add_argument("--workers", type=int, default=0, help="generator processes")
    parser.add_argument(
        "--concurrency", type=int, default=200, help="initial attaches in flight, all workers"
    )
    parser.add_argument(
        "--first-delay",
        type=float,
        default=1.0,
        help="the clients' first reconnect window, s (the reference client's)",
    )
    parser.add_argument(
        "--max-handshakes",
        type=int,
        default=0,
        help="the instances' client-max-handshakes (default: the CRS default)",
    )
    parser.add_argument("--ceiling", type=float, default=300.0, help="longest wait, s")
    parser.add_argument(
        "--generator",
        choices=("lean", "reference"),
        default="lean",
        help="the clients: lean (bench/_pool_lean.py, the reference client's rules at a"
        " fraction of its CPU) or the reference client itself",
    )
    parser.add_argument(
        "--pairs", type=int, default=100, help="message phase: pairs (0: no message phase)"
    )
    parser.add_argument(
        "--message-seconds", type=float, default=10.0, help="message phase: measured window"
    )
    parser.add_argument(
        "--no-cross",
        dest="cross",
        action="store_false",
        help="leave out the phase with sender and recipient on different instances",
    )
    parser.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work(args.worker)
        return
    if not 1 <= args.clients <= 100_000:
        parser.error("--clients must be 1..100000")
    if args.instances and args.instances < 2:
        parser.error("--instances must be at least 2")
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
