"""Inter-working benchmark: message and call set-up rates across operators against inside one.

    .venv/bin/python bench/iw.py [--pairs 50] [--seconds 10] [--no-calls | --no-messages]

Needs root (network namespaces).  Two operators, each a single real
``twistd crs`` (managed Redis) in its own network namespace on the bridge
of ``tests/interop/_pool.py`` (A at 10.99.0.1 hosting account ``alpha``,
B at 10.99.0.2 hosting ``beta``, each with its own KMS), each with the
other in ``iw-crs.conf``, and its ``crs-relay``.  From the client host,
same run: bench/messages.py's load, senders attached at A posting to
recipients attached at A (inside one operator), then to recipients
attached at B with ``to-account beta`` (every post stored at B over the
inter-working link before ``posted``), one post in flight per pair; then
bench/calls.py's load the same two ways (invite, ringing, talk, hangup in
a loop per pair, no media; across, each call also gets a relay session at
B bridged to A's).  One JSON line:

- ``inside_messages_per_second``, ``across_messages_per_second`` and
  ``across_to_inside``; ``inside_setups_per_second``,
  ``across_setups_per_second`` and ``calls_across_to_inside`` (issue 18's
  target for both ratios: at least 0.8);
- for each message part (``inside``, ``across``): ``p50_ms``/``p99_ms``
  (post to message), ``errors``, the CRSs' CPU seconds in the window and
  per message, and the generator's ceiling (messages per generator CPU
  second: the generators share the two cores with both CRSs); for each
  call part (``calls_inside``, ``calls_across``) the set-ups per second,
  the CRSs', the relays' and the generators' CPU seconds, each operator's
  server CPU (CRS and relay) per set-up, and where a call's time goes
  (the generators' medians): ``invite_p50_ms`` (invite sent to the callee
  offered it), ``answer_p50_ms`` (offered to the caller told ``talk``:
  ``ringing`` and ``talk`` back), ``hangup_p50_ms`` (hangup sent to the
  callee told);
- ``calls_across_to_inside_per_operator_cpu``: the call ratio for
  operators on hosts of their own, the inside operator's server CPU per
  set-up over the busier across operator's (on this one host both
  operators' servers and the generators share the cores, so across calls
  pay for two operators' work: ``calls_across_to_inside`` counts that);
- ``load_average`` before the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench._pool import CLIENT_PORT, Cleanups, run_generators  # noqa: E402
from bench._procs import proc_cpu, unix_answers, wait_for  # noqa: E402
from tests.interop._pool import PoolNet, address, crs_conf  # noqa: E402
from tests.interop._procs import Twistd, kill_managed_redis, run_cli  # noqa: E402

SECRET = "BenchOperatorsSecret42"
HOSTED = {1: "alpha", 2: "beta"}
CEILING = 120.0


class Operators:
    """Operators A (1) and B (2), each one instance, linked both ways."""

    def __init__(self, pinned: bool = False) -> None:
        from cryptify.crypto.identity import period_of

        self.pinned = pinned
        self.cleanups = Cleanups()
        self.dir = tempfile.mkdtemp(prefix="iw-bench-", dir="/tmp")
        self.cleanups.addCleanup(shutil.rmtree, self.dir, True)
        self.net = PoolNet(self.cleanups, self.dir, 2)  # Cleanups for the test case
        self.dirs: list[str] = []
        self.procs: dict[int | str, Twistd] = {}
        for index, peer in ((1, 2), (2, 1)):
            d = os.path.join(self.dir, f"op{index}")
            os.makedirs(d)
            conf = crs_conf(d, 2, f"{d}/accounts", pool=False)
            with open(conf) as f:
                text = f.read()
            with open(conf, "w") as f:  # the relay address clients (and the peer) reach
                f.write(text.replace("relay 0.0.0.0 ", f"relay {address(index)} "))
            iw = os.path.join(d, "iw-crs.conf")
            with open(os.open(iw, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(f"iw-crs {address(peer)} {SECRET}\n")
            with open(os.path.join(d, "crs-local.conf"), "w") as f:
                f.write("db-backup none\n")
            self.dirs.append(d)
        self.cleanups.addCleanup(self._stop_all)
        for index in (1, 2):
            d = self.dirs[index - 1]
            self.procs[index] = Twistd(
                d,
                "crs",
                *("--config", os.path.join(d, "crs.conf")),
                *("--local-config", os.path.join(d, "crs-local.conf")),
                prefix=(*self.net.hosts[index - 1].prefix(d), *self.pin(index)),
            )
        for index in (1, 2):
            d = self.dirs[index - 1]
            # keyed "relayN": run_generators measures its CPU beside the CRSs'
            self.procs[f"relay{index}"] = Twistd(
                d,
                "crs-relay",
                *("--config", os.path.join(d, "crs.conf")),
                prefix=(*self.net.hosts[index - 1].prefix(d), *self.pin(index)),
            )
        for index in (1, 2):
            wait_for(lambda i=index: unix_answers(self.socket(i)), f"op{index}", CEILING)
        self.period = period_of(time.time())
        self.kms = {index: self._provision(index, account) for index, account in HOSTED.items()}
        wait_for(lambda: self.link_up(1) and self.link_up(2), "the iw link", CEILING)

    def pin(self, index: int) -> tuple[str, ...]:
        """With ``--pin``, operator N's CRS and relay run on core N-1 only:
        each operator has a core of its own, as on a host of its own."""
        return ("taskset", "-c", str(index - 1)) if self.pinned else ()

    def socket(self, index: int) -> str:
        return os.path.join(self.dirs[index - 1], "crs.sock")

    def cli(self, index: int, *args: str) -> str:
        status, out, err = run_cli("crs-cli", "--socket", self.socket(index), *args)
        if status != 0:
            raise RuntimeError(f"op{index} {args}: {out}{err}")
        return out

    def link_up(self, index: int) -> bool:
        rows = self.cli(index, "show", "iw-crs").splitlines()[1:]
        return any(r.split()[1:2] == ["up"] for r in rows)

    def cpu(self, index: int | str) -> float:
        return proc_cpu(self.procs[index].proc.pid)

    def _provision(self, index: int, account: str) -> Any:
        import attrs

        from cryptify.crypto.updatefile import seal_update_file
        from cryptify.kms.store import KmsAccount

        out = self.cli(index, "create", "account", account, "-B", "16")
        secret = out.split("shared secret ")[1].strip()
        kms = attrs.evolve(KmsAccount.generate(account), revision=1)
        update = os.path.join(self.dir, f"{account}.upd")
        with open(update, "wb") as f:
            f.write(seal_update_file(kms.update(self.period), secret))
        self.cli(index, "apply", update)
        return kms

    def _stop_all(self) -> None:
        for index in list(self.procs):
            self.procs.pop(index).stop()
        for d in self.dirs:
            kill_managed_redis(d)

    def in_client_host(self, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen([*self.net.switch.prefix(self.dir), *argv], text=True, **kw)

    def close(self) -> None:
        self.cleanups.run()


def relay_up(ops: Operators, index: int) -> bool:
    rows = [line.split() for line in ops.cli(index, "show", "services").splitlines()]
    return any(row[1:3] == ["crs_relay", "active"] for row in rows)


def call_rate(ops: Operators, args: argparse.Namespace, across: bool) -> dict[str, Any]:
    """bench/calls.py's workers: callers at A, callees at A or B."""
    tag = "calls-across" if across else "calls-inside"
    first = 50_000_000 if across else 70_000_000
    home = 2 if across else 1
    pairs, host_of, to_account = [], {}, {}
    for n in range(args.pairs):
        caller, callee = f"tel:+4683{first + n:08d}", f"tel:+4684{first + n:08d}"
        pairs.append(
            [
                caller,
                callee,
                ops.kms[1].issue(caller, ops.period).to_blob(),
                ops.kms[home].issue(callee, ops.period).to_blob(),
            ]
        )
        host_of[caller], host_of[callee] = address(1), address(home)
        if across:
            to_account[callee] = HOSTED[2]
    extra = {"host_of": host_of, "to_account": to_account}
    results, cpu = run_workers(ops, args, "calls.py", tag, pairs, extra)
    calls = sum(r["calls"] for r in results)
    wall = max(r["wall"] for r in results)
    steps = {  # where a call's time goes (the generators' medians, averaged)
        key: round(sum(r[key] for r in results) / len(results), 2)
        for key in ("invite_p50_ms", "answer_p50_ms", "hangup_p50_ms")
        if all(r.get(key) is not None for r in results)
    }
    in_window = calls / wall * args.seconds * 0.9 if wall else 0.0
    return {
        "pairs": len(pairs),
        "setups_per_second": round(calls / wall, 1) if wall else 0.0,
        "crs_cpu_seconds": {k: v for k, v in cpu.items() if k.startswith("op")},
        "relay_cpu_seconds": {k: v for k, v in cpu.items() if k.startswith("relay")},
        # each operator's server CPU (CRS and relay) per call set-up: what
        # bounds its rate on a host of its own
        "operator_cpu_per_setup_ms": {
            f"op{n}": round(1000 * (cpu[f"op{n}"] + cpu[f"relay{n}"]) / in_window, 3)
            for n in (1, 2)
            if in_window and cpu[f"op{n}"] + cpu[f"relay{n}"] > 0.05
        },
        "generator_cpu_seconds": round(sum(r["cpu"] for r in results), 2),
        **steps,
    }


def run_workers(
    ops: Operators,
    args: argparse.Namespace,
    script_name: str,
    tag: str,
    pairs: list[list[str]],
    extra: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Two generator processes of bench/``script_name`` in the client host;
    their reports and the CRSs' CPU seconds in the window."""
    specs = [
        {
            "port": CLIENT_PORT,
            "period": ops.period,
            "pairs": pairs[w::2],
            "seconds": args.seconds,
            "warmup": 1.0,
            **extra,
        }
        for w in range(2)
    ]
    results, cpu = run_generators(ops, specs, script_name, tag, args.seconds)
    return results, {
        (f"op{i}" if isinstance(i, int) else i): round(seconds, 2) for i, seconds in cpu.items()
    }


def rate(ops: Operators, args: argparse.Namespace, across: bool) -> dict[str, Any]:
    """bench/messages.py's workers: senders at A, recipients at A or B."""
    tag = "across" if across else "inside"
    first = 30_000_000 if across else 10_000_000
    pairs = []
    host_of: dict[str, str] = {}
    to_account: dict[str, str] = {}
    for n in range(args.pairs):
        sender = f"tel:+4681{first + n:08d}"
        recipient = f"tel:+4682{first + n:08d}"
        home = 2 if across else 1
        blobs = [
            ops.kms[1].issue(sender, ops.period).to_blob(),
            ops.kms[home].issue(recipient, ops.period).to_blob(),
        ]
        pairs.append([sender, recipient, *blobs])
        host_of[sender], host_of[recipient] = address(1), address(home)
        if across:
            to_account[recipient] = HOSTED[2]
    extra = {"host_of": host_of, "to_account": to_account, "depth": 1, "size": 64}
    results, cpu = run_workers(ops, args, "messages.py", tag, pairs, extra)
    crs_cpu = {k: v for k, v in cpu.items() if k.startswith("op")}
    messages = sum(r["messages"] for r in results)
    wall = max(r["wall"] for r in results)
    generator_cpu = sum(r["cpu"] for r in results)
    latencies = sorted(x for r in results for x in r["latencies"])
    per_second = messages / wall if wall else 0.0
    in_window = per_second * args.seconds * 0.9
    return {
        "pairs": len(pairs),
        "messages_per_second": round(per_second, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
        "errors": sum(r["errors"] for r in results),
        "crs_cpu_seconds": crs_cpu,
        "crs_cpu_per_message_ms": (
            round(1000 * sum(crs_cpu.values()) / in_window, 3) if in_window else None
        ),
        "generator_ceiling": round(messages / generator_cpu, 1) if generator_cpu else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-calls", dest="calls", action="store_false")
    parser.add_argument("--no-messages", dest="messages", action="store_false")
    parser.add_argument("--pin", action="store_true", help="each operator on a core of its own")
    args = parser.parse_args()
    load = os.getloadavg()
    ops = Operators(args.pin)
    calls: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    try:
        if args.messages:
            messages["inside"] = rate(ops, args, across=False)
            messages["across"] = rate(ops, args, across=True)
        if args.calls:
            wait_for(lambda: relay_up(ops, 1) and relay_up(ops, 2), "the relays", CEILING)
            calls["calls_inside"] = call_rate(ops, args, across=False)
            calls["calls_across"] = call_rate(ops, args, across=True)
    finally:
        ops.close()
    result: dict[str, Any] = {"bench": "iw"}
    if messages:
        inside, across = messages["inside"], messages["across"]
        result["inside_messages_per_second"] = inside["messages_per_second"]
        result["across_messages_per_second"] = across["messages_per_second"]
        result["across_to_inside"] = ratio(
            across["messages_per_second"], inside["messages_per_second"]
        )
    if calls:
        result["inside_setups_per_second"] = calls["calls_inside"]["setups_per_second"]
        result["across_setups_per_second"] = calls["calls_across"]["setups_per_second"]
        result["calls_across_to_inside"] = ratio(
            result["across_setups_per_second"], result["inside_setups_per_second"]
        )
        # the same ratio for operators on hosts of their own: set-ups per
        # CPU-second of the busiest operator's servers, across over inside
        inside_cpu = calls["calls_inside"]["operator_cpu_per_setup_ms"].get("op1")
        across_cpu = max(calls["calls_across"]["operator_cpu_per_setup_ms"].values(), default=0)
        if inside_cpu and across_cpu:
            result["calls_across_to_inside_per_operator_cpu"] = ratio(inside_cpu, across_cpu)
    result.update(**messages, **calls)
    result["pinned"] = args.pin
    result["load_average"] = [round(x, 2) for x in load]
    print(json.dumps(result))


def ratio(across: float, inside: float) -> float | None:
    return round(across / inside, 3) if inside else None


if __name__ == "__main__":
    main()
