"""Message benchmark: messages per second end to end (post -> delivered), with latency.

    .venv/bin/python bench/messages.py [--pairs 100] [--workers 2] [--depth 1] [--seconds 10]
                                       [--generator lean|reference]
                                       [--crs-workers 1]

Starts a real `twistd crs-relay` and `twistd crs` (managed Redis, one
account), issues keys for ``2 * pairs`` users, and runs ``--workers``
generator processes.  Each generator attaches its share of the pairs over
real TLS + WebSocket + ECCSI (the reference client's
:class:`~cryptify.client.session.ClientSession` signs the challenge).
The default ``lean`` generator then drives its long-lived connections from
one epoll loop over stdlib TLS sockets, writing frames made from
templates (:mod:`cryptify.client.loadgen`: the CBOR and WebSocket framing
of a pair's post is built once, only the request id and the content are
put in), so that it costs a fraction of what the CRS does per message;
``--generator reference`` runs the reference client on Twisted instead
(what a real client costs).  Each sender keeps
``--depth`` posts in flight to its recipient: the CRS stores each one
durably in ``redis_low`` (AOF), answers ``posted`` and sends it to the
recipient as ``message``; the recipient confirms with ``delivered`` (the
CRS drops it and tells the sender) and, at that moment, the sender posts
the next one.  A message's latency is from the sender's ``post`` to the
recipient's ``message`` (both ends live in the same generator process, so
one monotonic clock times both).

One JSON line:

- ``messages_per_second``: messages the recipients received in the
  measured window (after a warm-up) / wall time of the window;
- ``p50_ms`` / ``p99_ms``: post -> message latency in that window;
- ``crs_cpu_per_message_ms``: CPU the CRS spent per message (with
  ``--crs-workers N``, its worker processes too; its Redis children not
  included);
- ``generator_ceiling``: messages per generator CPU second, summed (the
  generators share the machine's cores with the CRS, so this bounds it);
- ``redis_cpu_per_message_ms`` / ``generator_cpu_per_message_ms``: the same
  for ``redis_low`` and for the generators;
- ``machine_ceiling``: CPUs available / (CRS + Redis + generator CPU per
  message): the rate this machine could reach if every process were
  CPU-bound and nothing else ran on it.  When ``messages_per_second`` is
  close to it, the machine, not one process, is the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
BIN = os.path.dirname(sys.executable)

from bench._procs import BenchCrs, cpu_budget, proc_cpu  # noqa: E402

# ---------------------------------------------------------------- worker


def worker(spec: dict[str, Any]) -> None:
    """One generator process: lean when the spec says so (bench/messages.py
    does by default; bench/pool.py and bench/iw.py run the reference client)."""
    if spec.get("generator", "reference") == "lean":
        lean_worker(spec)
    else:
        reference_worker(spec)


def _attach_blocking(host: str, port: int, ca: str | None, blob: str) -> Any:
    """A TLS + WebSocket connection attached as the key blob's user, made with
    blocking calls (the reference client's sans-IO session signs the
    challenge); returns the TLS socket, set up for the lean loop."""
    import socket
    import ssl

    from cryptify.client.servers import session_maker
    from cryptify.client.session import Attached, Refused
    from cryptify.crypto.keymaterial import KeyMaterial
    from cryptify.protocols.umsg import decode_from_server, encode_from_client
    from cryptify.protocols.umsg_ws import Opened, Received, UmsgWebSocket

    if ca is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    raw = socket.create_connection((host, port), timeout=30)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = context.wrap_socket(raw, server_hostname=host)
    ws = UmsgWebSocket.connect(host)
    session = session_maker(KeyMaterial.from_blob(blob), "bench-messages")(
        lambda msg: ws.send(encode_from_client(msg))
    )
    while True:
        out = ws.outgoing()
        if out:
            tls.sendall(out)
        data = tls.recv(65536)
        if not data:
            raise RuntimeError("the CRS closed the connection during the attach")
        for event in ws.receive(data):
            if isinstance(event, Opened):
                session.start()
            elif isinstance(event, Received):
                for result in session.received(decode_from_server(event.data)):
                    if isinstance(result, Attached):
                        tls.settimeout(None)
                        return tls
                    if isinstance(result, Refused):
                        raise RuntimeError(f"attach refused: {result}")


def lean_worker(spec: dict[str, Any]) -> None:
    """One lean generator process: blocking attach, then one epoll loop over
    stdlib TLS sockets writing pre-encoded frames (cryptify.client.loadgen)."""
    import select

    import cbor2

    from cryptify.client.loadgen import PostTemplate, ServerFrames, delivered_frame

    host_of: dict[str, str] = spec.get("host_of", {})
    to_account: dict[str, str] = spec.get("to_account", {})
    size = max(8, spec["size"])
    padding = b"\x00" * (size - 8)
    pack, unpack, monotonic = (
        struct.Struct(">d").pack,
        struct.Struct(">d").unpack_from,
        time.monotonic,
    )
    loads = cbor2.loads
    state = {"messages": 0, "measuring": False, "stop": False, "errors": 0}
    latencies: list[float] = []
    poll = select.epoll()
    # per file descriptor: (socket, frame reader, handler)
    conns: dict[int, tuple[Any, ServerFrames, Any]] = {}
    senders: dict[str, Any] = {}

    class Sender:
        __slots__ = ("next_id", "template", "tls")

        def __init__(self, tls: Any, template: PostTemplate) -> None:
            self.tls, self.template, self.next_id = tls, template, 1

        def post(self) -> None:
            if state["stop"]:
                return
            request_id = self.next_id
            self.next_id = request_id + 1 if request_id < 0xFFFFFFFF else 1
            self.tls.sendall(self.template.frame(request_id, pack(monotonic()) + padding))

        def received(self, payload: bytes) -> None:
            # posted and delivered need no work; an error is counted
            if b"error" in payload:
                fields = loads(payload)
                if fields.get("type") == "error":
                    state["errors"] += 1
                    if state["errors"] <= 5:
                        print(f"error: {fields}", file=sys.stderr)

    class Recipient:
        __slots__ = ("sender", "tls")

        def __init__(self, tls: Any, sender: Sender) -> None:
            self.tls, self.sender = tls, sender

        def received(self, payload: bytes) -> None:
            fields = loads(payload)
            if fields.get("type") != "message":
                return
            self.tls.sendall(delivered_frame(fields["message"]))
            if state["measuring"]:
                state["messages"] += 1
                latencies.append(monotonic() - unpack(fields["content"])[0])
            self.sender.post()

    for sender_uri, recipient_uri, sender_keys, recipient_keys in spec["pairs"]:
        tls = _attach_blocking(
            host_of.get(sender_uri, "127.0.0.1"), spec["port"], spec.get("ca"), sender_keys
        )
        sender = Sender(tls, PostTemplate(recipient_uri, size, to_account.get(recipient_uri)))
        senders[sender_uri] = sender
        conns[tls.fileno()] = (tls, ServerFrames(), sender)
        tls = _attach_blocking(
            host_of.get(recipient_uri, "127.0.0.1"), spec["port"], spec.get("ca"), recipient_keys
        )
        conns[tls.fileno()] = (tls, ServerFrames(), Recipient(tls, sender))
    for fd in conns:
        poll.register(fd, select.EPOLLIN)
    for sender in senders.values():
        for _ in range(spec["depth"]):
            sender.post()

    def serve(until: float) -> None:
        while True:
            now = monotonic()
            if now >= until:
                return
            for fd, _ in poll.poll(min(0.05, until - now)):
                tls, frames, handler = conns[fd]
                data = tls.recv(262144)
                while tls.pending():
                    data += tls.recv(262144)
                if not data:
                    raise RuntimeError("the CRS closed a connection")
                for payload in frames.feed(data):
                    handler.received(payload)

    serve(monotonic() + spec["warmup"])
    cpu0, t0 = time.process_time(), monotonic()
    state["measuring"] = True
    with open(spec["started"], "w") as f:
        f.write("started")
    serve(t0 + spec["seconds"])
    state["measuring"] = False
    cpu, wall = time.process_time() - cpu0, monotonic() - t0
    state["stop"] = True
    report = {
        "messages": state["messages"],
        "cpu": cpu,
        "wall": wall,
        "errors": state["errors"],
        "latencies": latencies,
    }
    print(json.dumps(report), flush=True)
    for tls, _, _ in conns.values():
        tls.close()


def reference_worker(spec: dict[str, Any]) -> None:
    """One generator process on the reference client (``--generator reference``):
    attach the pairs, keep posts in flight, report."""
    from twisted.internet import defer, reactor, task
    from twisted.internet.protocol import Factory

    from cryptify.client.connection import UmsgClientProtocol
    from cryptify.client.servers import session_maker, tls_connector
    from cryptify.client.session import Answered, Attached, Incoming
    from cryptify.crypto.keymaterial import KeyMaterial

    # bench/pool.py runs this worker against pool instances in namespaces:
    # each URI at its owner's address (``host_of``), certificates unchecked.
    connect = tls_connector(reactor, spec.get("ca"), spec.get("ca") is None)
    host_of: dict[str, str] = spec.get("host_of", {})
    done: dict[str, Any] = {"messages": 0, "measuring": False, "stop": False, "errors": 0}
    latencies: list[float] = []
    protos: dict[str, UmsgClientProtocol] = {}
    attached: defer.Deferred[None] = defer.Deferred()
    waiting = {"n": 2 * len(spec["pairs"])}
    sender_of: dict[str, str] = {}
    padding = b"\x00" * max(0, spec["size"] - 8)

    # bench/iw.py: recipients of another operator's account are named so
    to_account: dict[str, str] = spec.get("to_account", {})

    def post(sender: str, recipient: str) -> None:
        if not done["stop"]:
            content = struct.pack(">d", time.monotonic()) + padding
            extra = {"to_account": to_account[recipient]} if recipient in to_account else {}
            protos[sender].session.request("post", to=recipient, content=content, **extra)

    def on_event(uri: str, event: Any) -> None:
        if isinstance(event, Attached):
            waiting["n"] -= 1
            if waiting["n"] == 0:
                attached.callback(None)
            return
        if isinstance(event, Incoming) and event.message.type == "message":
            msg = event.message
            protos[uri].session.notify("delivered", message=msg["message"])
            if done["measuring"]:
                done["messages"] += 1
                (sent,) = struct.unpack(">d", msg["content"][:8])
                latencies.append(time.monotonic() - sent)
            post(sender_of[uri], uri)
        elif isinstance(event, Answered) and event.message.type == "error":
            done["errors"] += 1
            if done["errors"] <= 5:
                print(f"error: {dict(event.message.fields)}", file=sys.stderr)

    async def run() -> None:
        for sender, recipient, sender_keys, recipient_keys in spec["pairs"]:
            sender_of[recipient] = sender
            for uri, blob in ((sender, sender_keys), (recipient, recipient_keys)):
                make = session_maker(KeyMaterial.from_blob(blob), "bench-messages")
                host = host_of.get(uri, "127.0.0.1")
                proto = UmsgClientProtocol(make, reactor, lambda e, u=uri: on_event(u, e), host)
                protos[uri] = proto
                factory = Factory.forProtocol(lambda p=proto: p)  # type: ignore[misc]
                await connect(host, spec["port"], factory)
        await attached
        for sender, recipient, *_ in spec["pairs"]:
            for _ in range(spec["depth"]):
                post(sender, recipient)
        await task.deferLater(reactor, spec["warmup"], lambda: None)
        cpu0, t0 = time.process_time(), time.monotonic()
        done["measuring"] = True
        with open(spec["started"], "w") as f:
            f.write("started")
        await task.deferLater(reactor, spec["seconds"], lambda: None)
        done["measuring"] = False
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        done["stop"] = True
        report = {
            "messages": done["messages"],
            "cpu": cpu,
            "wall": wall,
            "errors": done["errors"],
            "latencies": latencies,
        }
        print(json.dumps(report), flush=True)
        for proto in protos.values():
            proto.close("done")

    task.react(lambda _: defer.ensureDeferred(run()))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    # Posts in flight are pairs * depth, and latency is that over the rate
    # (Little's law): the default keeps the queue short enough for the p99 target.
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    # lean: pre-encoded frames over stdlib TLS (cryptify.client.loadgen);
    # reference: the reference client on Twisted, as a real client costs
    parser.add_argument("--generator", choices=("lean", "reference"), default="lean")
    # workers N in the CRS's crs-local.conf (its CPU is then summed over them)
    parser.add_argument("--crs-workers", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        with open(args.worker) as f:
            worker(json.load(f))
        return

    bench = BenchCrs("msgbench-", args.crs_workers)
    try:
        pairs = bench.pairs(args.pairs, "4682", "4683")
        # the window starts after attach + warm-up in each worker; sample CPU
        # around the same window from the outside (approximately).
        workers = bench.spawn_workers(
            __file__,
            args.workers,
            pairs,
            {
                "seconds": args.seconds,
                "warmup": args.warmup,
                "depth": args.depth,
                "size": args.size,
                "generator": args.generator,
            },
        )
        results = []
        redis = bench.redis_pids()
        low = redis.get("redis_low")
        crs_pids = bench.crs_pids()
        crs_cpu0, t0 = sum(proc_cpu(p) for p in crs_pids), time.monotonic()
        redis_cpu0 = proc_cpu(low) if low else 0.0
        time.sleep(args.seconds * 0.9)
        crs_cpu1, t1 = sum(proc_cpu(p) for p in crs_pids), time.monotonic()
        redis_cpu1 = proc_cpu(low) if low else 0.0
        for p in workers:
            out_text = p.stdout.read() if p.stdout else ""
            results.append(json.loads(out_text.strip().splitlines()[-1]))
        messages = sum(r["messages"] for r in results)
        wall = max(r["wall"] for r in results)
        rate = messages / wall
        window = t1 - t0
        crs_cpu = crs_cpu1 - crs_cpu0
        in_window = rate * window
        latencies = [x for r in results for x in r["latencies"]]
        per_message = {
            "crs": crs_cpu / in_window if in_window else 0.0,
            "redis": (redis_cpu1 - redis_cpu0) / in_window if in_window else 0.0,
            "generator": sum(r["cpu"] for r in results) / messages if messages else 0.0,
        }
        total = sum(per_message.values())
        print(
            json.dumps(
                {
                    "bench": "messages",
                    "pairs": args.pairs,
                    "workers": args.workers,
                    "crs_workers": args.crs_workers,
                    "depth": args.depth,
                    "size": args.size,
                    "generator": args.generator,
                    "seconds": round(wall, 2),
                    "messages": messages,
                    "messages_per_second": round(rate, 1),
                    "p50_ms": round(1000 * percentile(latencies, 0.50), 2),
                    "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
                    "errors": sum(r["errors"] for r in results),
                    "crs_cpu_per_message_ms": round(1000 * crs_cpu / in_window, 3)
                    if in_window
                    else None,
                    "redis_cpu_per_message_ms": round(1000 * per_message["redis"], 3),
                    "generator_cpu_per_message_ms": round(1000 * per_message["generator"], 3),
                    "generator_ceiling": round(
                        sum(r["messages"] / r["cpu"] for r in results if r["cpu"]), 1
                    ),
                    "machine_ceiling": round(cpu_budget() / total, 1) if total else None,
                    "target": {"messages_per_second": 10000, "p99_ms": 50},
                }
            )
        )
    finally:
        bench.stop()


if __name__ == "__main__":
    main()
