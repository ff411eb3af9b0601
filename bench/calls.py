"""Call-setup benchmark: invite -> ringing -> talk -> hangup, signaling only.

    .venv/bin/python bench/calls.py [--pairs 200] [--workers 2] [--seconds 10]

Starts a real `twistd crs-relay` and `twistd crs` (managed Redis, one
account), issues keys for ``2 * pairs`` users, and runs ``--workers``
generator processes.  Each generator attaches its share of the pairs over
real TLS + WebSocket + ECCSI (the reference client's
:class:`~cryptify.client.session.ClientSession`), then each pair calls in
a loop: the caller sends ``invite`` (a real I_MESSAGE, built once per
caller: the CRS does not read it and the callee does not verify it here),
the callee answers ``ringing`` and ``talk`` as soon as the invite arrives,
and the caller sends ``hangup`` as soon as ``talk`` arrives; the next
invite goes when the callee has the ``hangup``.  Every call gets a real
relay session (``Add`` / ``Remove``).  No media.

One JSON line:

- ``setups_per_second``: completed calls (callee saw the hangup) / wall
  time of the measured window (after a warm-up second);
- ``crs_cpu_per_setup_ms`` / ``relay_cpu_per_setup_ms``: CPU the CRS and
  the relay spent per call in the window;
- ``setups_per_crs_cpu_second``: the CRS's per-core rate;
- ``generator_ceiling``: calls per generator CPU second, summed over the
  generators (what the load generator could drive if the CRS were free;
  it shares the machine's cores with the CRS, so it bounds the measure);
- ``redis_cpu_per_setup_ms``: ``redis_low`` and ``redis_high`` together;
- ``machine_ceiling``: CPUs available / (CRS + relay + Redis + generator
  CPU per call): what this machine could reach with every process
  CPU-bound and nothing else running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
BIN = os.path.dirname(sys.executable)

from bench._procs import BenchCrs, cpu_budget, proc_cpu  # noqa: E402

# ---------------------------------------------------------------- worker


def worker(spec: dict[str, Any]) -> None:
    """One generator process: attach the pairs, call in a loop, report."""
    from twisted.internet import defer, reactor, task

    from cryptify.client.connection import UmsgClientProtocol
    from cryptify.client.servers import session_maker, tls_connector
    from cryptify.client.session import Answered, Attached, Incoming
    from cryptify.crypto import mikey
    from cryptify.crypto.identity import tel_identifier
    from cryptify.crypto.keymaterial import KeyMaterial

    # bench/iw.py runs this worker against two operators in namespaces:
    # each URI at its operator's address (``host_of``), certificates
    # unchecked, callees of the other operator named by ``to_account``.
    connect = tls_connector(reactor, spec.get("ca"), spec.get("ca") is None)
    host_of: dict[str, str] = spec.get("host_of", {})
    to_account: dict[str, str] = spec.get("to_account", {})
    done = {"calls": 0, "measuring": False, "stop": False}
    protos: dict[str, UmsgClientProtocol] = {}
    attached: defer.Deferred[None] = defer.Deferred()
    waiting = {"n": 2 * len(spec["pairs"])}
    mikeys: dict[str, bytes] = {}
    peer_of: dict[str, str] = {}
    #: Per caller, when the current call's step began; per step, the
    #: measured durations (seconds): where a call's time goes.
    began: dict[str, float] = {}
    steps: dict[str, list[float]] = {"invite": [], "answer": [], "hangup": []}

    def step(name: str, caller: str) -> None:
        now = time.monotonic()
        if done["measuring"] and caller in began:
            steps[name].append(now - began[caller])
        began[caller] = now

    def invite(caller: str) -> None:
        if not done["stop"]:
            began[caller] = time.monotonic()
            callee = peer_of[caller]
            extra = {"to_account": to_account[callee]} if callee in to_account else {}
            protos[caller].session.request("invite", to=callee, mikey=mikeys[caller], **extra)

    def on_event(uri: str, event: Any) -> None:
        if isinstance(event, Attached):
            waiting["n"] -= 1
            if waiting["n"] == 0:
                attached.callback(None)
            return
        session = protos[uri].session
        if isinstance(event, Incoming):
            msg = event.message
            if msg.type == "invite":
                step("invite", peer_of[uri])  # invite sent -> callee offered
                session.notify("ringing", session=msg["session"])
                session.notify("talk", session=msg["session"])
            elif msg.type == "talk":
                step("answer", uri)  # callee offered -> caller has talk
                session.notify("hangup", session=msg["session"], code="normal")
            elif msg.type == "hangup":
                step("hangup", peer_of[uri])  # hangup sent -> callee has it
                if done["measuring"]:
                    done["calls"] += 1
                invite(uri if uri in mikeys else peer_of[uri])
        elif isinstance(event, Answered) and event.message.type == "error":
            print(f"error: {dict(event.message.fields)}", file=sys.stderr)
            reactor.callLater(0.1, invite, uri)

    async def run() -> None:
        for caller, callee, caller_keys, callee_keys in spec["pairs"]:
            peer_of[caller], peer_of[callee] = callee, caller
            for uri, blob in ((caller, caller_keys), (callee, callee_keys)):
                material = KeyMaterial.from_blob(blob)
                if uri == caller:
                    keys = material.for_period(spec["period"])
                    mikeys[uri] = mikey.build_i_message(
                        keys.signer(),
                        keys.public_key(),
                        tel_identifier(callee, spec["period"]),
                        now=time.time(),
                        idrs=mikey.tel_idrs(caller, callee),
                    ).data
                make = session_maker(material, "bench-calls")
                host = host_of.get(uri, "127.0.0.1")
                proto = UmsgClientProtocol(make, reactor, lambda e, u=uri: on_event(u, e), host)
                protos[uri] = proto
                from twisted.internet.protocol import Factory

                factory = Factory.forProtocol(lambda p=proto: p)  # type: ignore[misc]
                await connect(host, spec["port"], factory)
        await attached
        for caller, *_ in spec["pairs"]:
            invite(caller)
        await task.deferLater(reactor, spec["warmup"], lambda: None)
        cpu0, t0 = time.process_time(), time.monotonic()
        done["measuring"] = True
        with open(spec["started"], "w") as f:
            f.write("started")
        await task.deferLater(reactor, spec["seconds"], lambda: None)
        done["measuring"] = False
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        done["stop"] = True
        medians = {
            f"{name}_p50_ms": round(1000 * sorted(v)[len(v) // 2], 2) if v else None
            for name, v in steps.items()
        }
        report = {"calls": done["calls"], "cpu": cpu, "wall": wall, **medians}
        print(json.dumps(report), flush=True)
        for proto in protos.values():
            proto.close("done")

    task.react(lambda _: defer.ensureDeferred(run()))


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser()
    # Each pair has one call in progress at a time: throughput needs pairs
    # (and the CRS batches what arrives together, so more pairs cost less each).
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        with open(args.worker) as f:
            worker(json.load(f))
        return

    bench = BenchCrs("callsbench-")
    crs = bench.crs
    try:
        pairs = bench.pairs(args.pairs, "4680", "4681")
        # the window starts after attach + warm-up in each worker; sample CPU
        # around the same window from the outside (approximately).
        workers = bench.spawn_workers(
            __file__, args.workers, pairs, {"seconds": args.seconds, "warmup": args.warmup}
        )
        results = []
        redis = list(bench.redis_pids().values())

        def redis_cpu() -> float:
            return sum(proc_cpu(pid) for pid in redis)

        crs_cpu0, relay_cpu0, t0 = proc_cpu(crs.pid), proc_cpu(bench.relay.pid), time.monotonic()
        redis_cpu0 = redis_cpu()
        time.sleep(args.seconds * 0.9)
        crs_cpu1, relay_cpu1, t1 = proc_cpu(crs.pid), proc_cpu(bench.relay.pid), time.monotonic()
        redis_cpu1 = redis_cpu()
        for p in workers:
            out_text = p.stdout.read() if p.stdout else ""
            results.append(json.loads(out_text.strip().splitlines()[-1]))
        calls = sum(r["calls"] for r in results)
        wall = max(r["wall"] for r in results)
        rate = calls / wall
        window = t1 - t0
        crs_cpu, relay_cpu = crs_cpu1 - crs_cpu0, relay_cpu1 - relay_cpu0
        calls_in_window = rate * window
        generator_cpu = sum(r["cpu"] for r in results)
        per_call = (
            (crs_cpu + relay_cpu + redis_cpu1 - redis_cpu0) / calls_in_window
            + generator_cpu / calls
            if calls
            else 0.0
        )
        print(
            json.dumps(
                {
                    "bench": "calls",
                    "pairs": args.pairs,
                    "workers": args.workers,
                    "seconds": round(wall, 2),
                    "calls": calls,
                    "setups_per_second": round(rate, 1),
                    "crs_cpu_per_setup_ms": round(1000 * crs_cpu / calls_in_window, 3),
                    "relay_cpu_per_setup_ms": round(1000 * relay_cpu / calls_in_window, 3),
                    "redis_cpu_per_setup_ms": round(
                        1000 * (redis_cpu1 - redis_cpu0) / calls_in_window, 3
                    ),
                    "setups_per_crs_cpu_second": round(calls_in_window / crs_cpu, 1)
                    if crs_cpu
                    else None,
                    "generator_ceiling": round(sum(r["calls"] / r["cpu"] for r in results), 1),
                    "generator_cpu_seconds": round(generator_cpu, 2),
                    "generator_cpu_per_setup_ms": round(1000 * generator_cpu / calls, 3)
                    if calls
                    else None,
                    "machine_ceiling": round(cpu_budget() / per_call, 1) if per_call else None,
                    "target": 1000,
                }
            )
        )
    finally:
        bench.stop()


if __name__ == "__main__":
    main()
