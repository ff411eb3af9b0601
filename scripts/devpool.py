"""``make run-pool``: a two-instance CRS pool on two "hosts", stopped with Ctrl-C.

Each instance is a host of its own: a network namespace with one address
on a private bridge (``10.98.0.1`` and ``10.98.0.2``), running ``twistd
crs`` (with its supervised Redis) and ``twistd crs-relay`` with the same
``etc/pool/crs.conf`` and its own ``etc/pool/crsN-local.conf``.  A third
namespace holds the bridge and is the client host (``10.98.0.254``):
``ip netns exec PREFIX-clients ...`` runs a client there.  The management
sockets are files under ``run/pool/`` and answer ``crs-cli`` from the
ordinary shell.

Needs root (``ip netns``).  Everything the script makes (namespaces,
bridge, veth pairs, processes) is removed when it stops; namespaces left by
a run that was killed are removed at the next start.  ``--prefix`` names
the namespaces (default ``cryptify``), so that two runs do not meet.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

from _devprocs import last_lines, socket_answers, stop_in_order

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
ETC = os.path.join(HERE, "etc", "pool")
NOTIFY = os.path.join(HERE, "scripts", "notify.sh")
SUBNET = "10.98.0"
INSTANCES = ("crs1", "crs2")
START_TIMEOUT = 60.0
CLIENT_PORT = 5223


class PoolError(Exception):
    """The pool could not be set up; the message says why."""


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise PoolError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def namespaces(prefix: str) -> list[str]:
    """This run's namespace names: one per instance, then the client host."""
    return [f"{prefix}-{name}" for name in INSTANCES] + [f"{prefix}-clients"]


def remove_namespaces(prefix: str) -> None:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    present = {line.split()[0] for line in listed.splitlines() if line.strip()}
    for name in namespaces(prefix):
        if name in present:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def make_network(prefix: str) -> None:
    """The bridge in the client host and one veth to each instance's host."""
    *hosts, clients = namespaces(prefix)
    ip("netns", "add", clients)
    ip("-n", clients, "link", "set", "lo", "up")
    ip("-n", clients, "link", "add", "br0", "type", "bridge")
    ip("-n", clients, "addr", "add", f"{SUBNET}.254/24", "dev", "br0")
    ip("-n", clients, "link", "set", "br0", "up")
    for index, host in enumerate(hosts, 1):
        ip("netns", "add", host)
        ip("-n", host, "link", "set", "lo", "up")
        ip("-n", clients, "link", "add", f"vh{index}", "type", "veth", "peer", "name", "eth0")
        ip("-n", clients, "link", "set", "eth0", "netns", host)
        ip("-n", clients, "link", "set", f"vh{index}", "master", "br0", "up")
        ip("-n", host, "addr", "add", f"{SUBNET}.{index}/24", "dev", "eth0")
        ip("-n", host, "link", "set", "eth0", "up")


def programs(run: str, name: str) -> list[tuple[str, list[str], str]]:
    """(label, twistd arguments, socket to wait for) of one instance, in start order."""
    d = os.path.join(run, name)
    config = os.path.join(ETC, "crs.conf")
    relay = [
        "crs-relay",
        "--config",
        config,
        "--log-dir",
        os.path.join(d, "log"),
        "--control",
        os.path.join(d, "relay.sock"),
        "--notify",
        NOTIFY,
    ]
    crs = [
        "crs",
        "--config",
        config,
        "--local-config",
        os.path.join(ETC, f"{name}-local.conf"),
        "--data-dir",
        os.path.join(d, "data"),
        "--log-dir",
        os.path.join(d, "log"),
        "--accounts-dir",
        os.path.join(d, "accounts"),
        "--socket",
        os.path.join(d, "crs.sock"),
        "--relay-control",
        os.path.join(d, "relay.sock"),
        "--notify",
        NOTIFY,
    ]
    return [
        (f"{name}-relay", relay, os.path.join(d, "relay.sock")),
        (name, crs, os.path.join(d, "crs.sock")),
    ]


def start(run: str, namespace: str, label: str, args: list[str]) -> subprocess.Popen[bytes]:
    argv = [
        "ip",
        "netns",
        "exec",
        namespace,
        os.path.join(BIN, "twistd"),
        "-n",
        f"--pidfile={os.path.join(run, label + '.pid')}",
        f"--logfile={os.path.join(run, label + '.twistd.log')}",
        *args,
    ]
    env = dict(os.environ, CRYPTIFY_EVENTS_FILE=os.path.join(run, "events.log"))
    return subprocess.Popen(argv, cwd=HERE, env=env, start_new_session=True)


def stop_all(procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    """Stop the programs, the CRS instances first, the relays last."""
    ordered = [p for p in procs if not p[0].endswith("-relay")]
    stop_in_order(ordered + [p for p in procs if p[0].endswith("-relay")])


def tail(run: str, label: str) -> str:
    return last_lines(os.path.join(run, label + ".twistd.log"))


def banner(run: str, prefix: str) -> str:
    cli = os.path.join(BIN, "crs-cli")
    client = os.path.join(BIN, "cryptify-client")
    servers = " ".join(f"--server {SUBNET}.{i}:{CLIENT_PORT}" for i in (1, 2))
    lines = [
        "",
        f"A two-instance CRS pool is running (scratch files in {run}):",
        "",
    ]
    for index, name in enumerate(INSTANCES, 1):
        d = os.path.join(run, name)
        lines += [
            f"  {name}  host {prefix}-{name}, address {SUBNET}.{index}: clients :{CLIENT_PORT},"
            f" pool link :8090, sync :8091, relay :5146/udp",
            f"        management {os.path.join(d, 'crs.sock')}   logs {os.path.join(d, 'log')}",
        ]
    lines += [
        f"  clients  host {prefix}-clients, address {SUBNET}.254",
        f"  events   {os.path.join(run, 'events.log')} (what notify.sh was told)",
        "",
        "In another terminal (as root):",
        f"  {cli} --socket {os.path.join(run, 'crs1', 'crs.sock')} show system",
        f"  {cli} --socket {os.path.join(run, 'crs2', 'crs.sock')} show services",
        f"  ip netns exec {prefix}-clients {client} listen --keys KEYS {servers} --insecure",
        "Take a host down and up again to watch a takeover and the hand-back:",
        f"  ip -n {prefix}-crs2 link set eth0 down; sleep 10; ip -n {prefix}-crs2 link set eth0 up",
        "",
        "Ctrl-C stops everything and removes the namespaces.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--prefix", default="cryptify", help="namespace name prefix")
    parser.add_argument("--run-dir", default=os.path.join(HERE, "run", "pool"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("make run-pool needs root and ip (iproute2): it makes network namespaces")
        return 2
    run = os.path.abspath(args.run_dir)
    for name in INSTANCES:
        os.makedirs(os.path.join(run, name), mode=0o750, exist_ok=True)
    remove_namespaces(args.prefix)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        make_network(args.prefix)
        waits = []
        for name, namespace in zip(INSTANCES, namespaces(args.prefix), strict=False):
            for label, twistd_args, ready in programs(run, name):
                procs.append((label, start(run, namespace, label, twistd_args)))
                waits.append((label, ready))
        deadline = time.monotonic() + START_TIMEOUT
        for label, ready in waits:
            proc = dict(procs)[label]
            while not socket_answers(ready):
                if proc.poll() is not None or time.monotonic() > deadline or stopping:
                    print(f"{label} did not start:\n{tail(run, label)}", file=sys.stderr)
                    return 1
                time.sleep(0.1)
        print(banner(run, args.prefix), flush=True)
        while not stopping:
            for label, proc in procs:
                if proc.poll() is not None:
                    print(f"{label} exited unexpectedly:\n{tail(run, label)}", file=sys.stderr)
                    stopping = True
            time.sleep(0.5)
        return 0
    except PoolError as exc:
        print(f"cannot build the pool's network: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all(procs)
        remove_namespaces(args.prefix)
        print("all stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
