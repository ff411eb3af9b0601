"""A lean failover generator for bench/pool.py (``--generator lean``).

The reference client (``AttachingClient`` over Twisted's TLS) costs the
generator about 2.3 ms of CPU per re-attach, twice what the CRS spends on
its side; on a 2-core host shared with the pool, the generators then set
the failover time.  This process keeps the same clients with the same
reconnect rules as :class:`cryptify.client.connection.AttachingClient`
(full jitter over ``first_delay * 2**attempt``; a lost attached
connection goes to the ``standby`` its ``attached`` named, then the
others in turn; ``moved`` followed at once, at most 3 in a row; a load
refusal retried at the same address after its ``retry-after``, at most 3
times), but with no Twisted, no Deferreds and no per-connection objects
beyond one small record: non-blocking sockets, pyOpenSSL connections made
from the reference client's own TLS context (the same versions, ciphers
and key-exchange groups, so the CRS does the same handshake), one epoll
loop, and the UMSG frames built once per client.

It and bench/pool.py's reference worker count alike and speak the same
JSON lines to bench/pool.py (``ready``, then ``done``): both keep a
:class:`FailoverTally`.
"""

from __future__ import annotations

import base64
import errno
import heapq
import json
import os
import random
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL

from cryptify.protocols.tls import client_context_factory
from cryptify.protocols.umsg import (
    attach_signed_octets,
    decode_from_server,
    encode_from_client,
    message,
)

CONNECT_TIMEOUT = 10.0
#: The reference client's ATTACH_TIMEOUT.
ATTACH_TIMEOUT = 30.0
MAX_MOVES = 3
MAX_STAYS = 3
LOAD_REFUSALS = {"unavailable", "attach-timeout"}

NEW, CONNECTING, HANDSHAKE, UPGRADE, ATTACHING, ATTACHED = range(6)


def client_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A final client frame, masked with the zero key (the CRS unmasks any key)."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 0x10000:
        head = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack(">H", size)
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack(">Q", size)
    return head + b"\0\0\0\0" + payload


def server_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Whole (opcode, payload) frames at the front of ``buf`` (removed)."""
    out = []
    while len(buf) >= 2:
        size = buf[1] & 0x7F
        at = 2
        if size == 126:
            if len(buf) < 4:
                break
            size = struct.unpack(">H", buf[2:4])[0]
            at = 4
        elif size == 127:
            if len(buf) < 10:
                break
            size = struct.unpack(">Q", buf[2:10])[0]
            at = 10
        if len(buf) < at + size:
            break
        out.append((buf[0] & 0x0F, bytes(buf[at : at + size])))
        del buf[: at + size]
    return out


def print_line(line: dict[str, Any]) -> None:
    """One JSON line to bench/pool.py (the generator's stdout)."""
    print(json.dumps(line), flush=True)


class FailoverTally:
    """What a failover generator counts, the lean one here and bench/pool.py's
    reference one alike, and its two JSON lines to bench/pool.py (``ready``
    once each of its clients has attached once, then ``done``).

    An orphan is a client attached to the victim at ``ready``; it is back
    the first time it attaches anywhere else after that (counted once,
    however often it attaches again).  The ceiling starts when an orphan's
    connection is first lost; at it, ``done`` says ``complete`` false with
    how many came back.  ``others_lost`` counts the clients, not the
    connections, of the survivors that lost theirs.  Moves, refusals,
    connect failures and full attaches count from ``ready`` on.
    """

    def __init__(
        self,
        clients: int,
        ceiling: float,
        clock: Callable[[], float] = time.time,
        emit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.clients, self.ceiling, self.clock = clients, ceiling, clock
        self.emit = emit or print_line
        self.failover = False
        self.attached_once: set[int] = set()
        self.orphans: set[int] = set()
        self.back: dict[int, float] = {}
        self.first_lost: float | None = None
        self.resumed = self.full_attaches = self.moves = self.connect_failures = 0
        self.refusals: dict[str, int] = {}
        self.connect_errors: dict[str, int] = {}
        self.others_lost: set[int] = set()
        self.reported = False

    def attached(self, index: int, elsewhere: bool, resumed: bool) -> bool:
        """Client ``index`` attached (``elsewhere``: not at the victim); True
        when this is its first attach (the generator then starts another)."""
        if index not in self.attached_once:
            self.attached_once.add(index)
            return True
        if not self.failover:
            return False
        if not resumed:
            self.full_attaches += 1
        if index in self.orphans and elsewhere and index not in self.back:
            self.back[index] = self.clock()
            self.resumed += int(resumed)
            if len(self.back) == len(self.orphans):
                self.report(True)
        return False

    def all_attached(self) -> bool:
        return len(self.attached_once) == self.clients

    def ready(self, orphans: set[int]) -> None:
        """Every client has attached once; ``orphans`` are the victim's."""
        self.failover = True
        self.orphans = orphans
        self.emit({"event": "ready", "orphans": len(orphans)})
        if not orphans:
            self.report(True)

    def moved(self) -> None:
        if self.failover:
            self.moves += 1

    def refused(self, code: str) -> None:
        if self.failover:
            self.refusals[code] = self.refusals.get(code, 0) + 1

    def cannot_connect(self, why: str) -> None:
        if self.failover:
            self.connect_failures += 1
            short = why[:60]
            self.connect_errors[short] = self.connect_errors.get(short, 0) + 1

    def lost(self, index: int) -> bool:
        """A connection of client ``index`` ended (not a failed connect);
        True when it is the first of an orphan's (the ceiling starts)."""
        if not self.failover:
            return False
        if index not in self.orphans:
            self.others_lost.add(index)
        elif self.first_lost is None:
            self.first_lost = self.clock()
            return True
        return False

    def overdue(self) -> bool:
        """Whether the ceiling has passed since the first orphan was lost."""
        return self.first_lost is not None and self.clock() - self.first_lost > self.ceiling

    def report(self, complete: bool) -> None:
        """The ``done`` line (once): ``complete`` when every orphan is back."""
        if self.reported:
            return
        self.reported = True
        self.emit(self.done(complete))

    def done(self, complete: bool) -> dict[str, Any]:
        times = sorted(self.back.values())
        return {
            "event": "done",
            "complete": complete,
            "orphans": len(self.orphans),
            "reattached": len(times),
            "first_lost": self.first_lost,
            "last": times[-1] if times else None,
            "times": times,
            "resumed": self.resumed,
            "full_attaches": self.full_attaches,
            "moves": self.moves,
            "connect_failures": self.connect_failures,
            "refusals": self.refusals,
            "connect_errors": self.connect_errors,
            "others_lost": len(self.others_lost),
        }


class Client:
    __slots__ = (
        "attempt",
        "bind",
        "buf",
        "deadline",
        "generation",
        "hint",
        "host",
        "index",
        "moved",
        "moves",
        "servers",
        "sock",
        "standby",
        "state",
        "stay",
        "stays",
        "ticket",
        "tls",
        "turn",
        "uri",
        "was_attached",
    )

    def __init__(
        self, index: int, uri: str, ticket: bytes, bind: str, servers: list[str], home: str
    ) -> None:
        self.index, self.uri, self.bind = index, uri, bind
        self.ticket: bytes | None = ticket
        self.servers = servers
        self.host = home
        self.turn = servers.index(home) if home in servers else 0
        self.sock: socket.socket | None = None
        self.tls: SSL.Connection | None = None
        self.state = NEW
        self.buf = bytearray()
        self.attempt = self.moves = self.stays = 0
        self.stay = self.was_attached = self.moved = False
        self.standby: str | None = None
        self.hint: int | None = None
        self.deadline = 0.0
        self.generation = 0


def lean_work(spec: dict[str, Any]) -> None:
    from bench.attach import fast_signer

    ksak, kpak = int(spec["ksak"], 16), bytes.fromhex(spec["kpak"])
    port = spec["port"]
    servers = [h for h, _ in spec["servers"]]
    victim = spec["victim"]
    first_delay = spec["first_delay"]
    rng = random.Random(spec["seed"])
    creator = client_context_factory("localhost", None, verify=False)
    context: SSL.Context = creator._context  # type: ignore[attr-defined]
    trace = bool(os.environ.get("POOL_BENCH_TRACE"))
    poll = select.epoll()
    by_fd: dict[int, Client] = {}
    timers: list[tuple[float, int, int, Client]] = []
    seq = [0]
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade_tail = (
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: umsg.1\r\n\r\n"
    )
    order_rng = random.Random(spec["seed"])
    clients = []
    for index, (uri, home, ticket, bind) in enumerate(spec["clients"]):
        order = list(servers)
        order_rng.shuffle(order)
        clients.append(Client(index, uri, bytes.fromhex(ticket), bind, order, home))
    tally = FailoverTally(len(clients), spec["ceiling"])
    launched = 0
    signers: dict[str, Any] = {}

    def say(c: Client, what: str) -> None:
        if trace and tally.failover and c.index in tally.orphans:
            print(f"{time.time():.3f} {c.index} {c.host} {what}", file=sys.stderr, flush=True)

    def at(when: float, c: Client) -> None:
        seq[0] += 1
        heapq.heappush(timers, (when, seq[0], c.generation, c))

    def connect(c: Client) -> None:
        c.generation += 1
        c.buf.clear()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind((c.bind, 0))
            err = sock.connect_ex((c.host, port))
        except OSError as exc:
            sock.close()
            failed(c, f"cannot connect: {exc}")
            return
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            failed(c, f"cannot connect: {os.strerror(err)}")
            return
        c.sock, c.state = sock, CONNECTING
        c.deadline = time.monotonic() + CONNECT_TIMEOUT
        by_fd[sock.fileno()] = c
        poll.register(sock.fileno(), select.EPOLLOUT)
        at(c.deadline, c)

    def failed(c: Client, why: str) -> None:
        """A connect that did not happen (counted as the reference counts it)."""
        tally.cannot_connect(why)
        say(c, f"ConnectionEnded(why={why!r})")
        retry(c)

    def close(c: Client) -> None:
        if c.sock is not None:
            fd = c.sock.fileno()
            by_fd.pop(fd, None)
            try:
                poll.unregister(fd)
            except (OSError, ValueError):
                pass
            c.sock.close()
        c.sock = c.tls = None
        c.generation += 1

    def ended(c: Client, why: str) -> None:
        """The connection ended (after connecting): close it and retry."""
        was = c.state
        close(c)
        c.state = NEW
        say(c, f"ConnectionEnded(why={why!r})")
        if was == ATTACHED:
            tally.lost(c.index)
        retry(c, moved=c.moved)

    def retry(c: Client, moved: bool = False) -> None:
        c.moved = False
        if moved and c.moves <= MAX_MOVES:
            delay = 0.0
        else:
            window = min(120.0, first_delay * 2 ** min(c.attempt, 30))
            delay = rng.uniform(0, window)
            c.attempt += 1
            if c.stay and c.stays < MAX_STAYS:
                c.stays += 1
            elif c.was_attached and c.standby is not None:
                c.stays = c.moves = 0
                c.host = c.standby
                if c.standby in c.servers:
                    c.turn = c.servers.index(c.standby)
            else:
                c.stays = c.moves = 0
                if c.host in c.servers:
                    c.turn = c.servers.index(c.host)
                c.turn = (c.turn + 1) % len(c.servers)
                c.host = c.servers[c.turn]
        c.stay = c.was_attached = False
        if c.hint is not None:
            delay = max(delay, c.hint / 1000)
            c.hint = None
        c.state = NEW
        at(time.monotonic() + delay, c)

    def send(c: Client, data: bytes) -> None:
        assert c.tls is not None
        c.tls.sendall(data)

    def step(c: Client) -> None:
        """Readiness on ``c``'s socket: advance its state machine."""
        if c.state == CONNECTING:
            assert c.sock is not None
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                close(c)
                c.state = NEW
                failed(c, f"cannot connect: Connection was refused by other side: {err}")
                return
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = SSL.Connection(context, c.sock)
            tls.set_tlsext_host_name(b"localhost")
            tls.set_connect_state()
            c.tls, c.state = tls, HANDSHAKE
            c.deadline = time.monotonic() + ATTACH_TIMEOUT
            at(c.deadline, c)
        if c.state == HANDSHAKE:
            assert c.tls is not None and c.sock is not None
            try:
                c.tls.do_handshake()
            except SSL.WantReadError:
                poll.modify(c.sock.fileno(), select.EPOLLIN)
                return
            except SSL.WantWriteError:
                poll.modify(c.sock.fileno(), select.EPOLLOUT)
                return
            except SSL.Error as exc:
                ended(c, f"connection lost: {exc}")
                return
            poll.modify(c.sock.fileno(), select.EPOLLIN)
            send(c, f"GET / HTTP/1.1\r\nHost: {c.host}\r\n{upgrade_tail}".encode())
            c.state = UPGRADE
            return
        # UPGRADE, ATTACHING, ATTACHED: read what there is.
        assert c.tls is not None
        # What came before a close is read first: a `moved` or `refused`
        # is often followed at once by the CRS's close.
        closed: str | None = None
        while True:
            try:
                data = c.tls.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                closed = "closed by the CRS"
                break
            except SSL.Error as exc:
                closed = f"connection lost: {exc}"
                break
            if not data:
                closed = "connection lost"
                break
            c.buf += data
        generation = c.generation
        if c.state == UPGRADE:
            end = c.buf.find(b"\r\n\r\n")
            if end < 0:
                if closed is not None:
                    ended(c, closed)
                return
            if b" 101 " not in c.buf[: c.buf.find(b"\r\n")]:
                ended(c, "upgrade refused")
                return
            del c.buf[: end + 4]
            send(
                c,
                client_frame(
                    encode_from_client(
                        message(
                            "attach",
                            id=1,
                            account="acme",
                            uri=c.uri,
                            versions=[1],
                            app="bench/1",
                            ticket=c.ticket or None,
                        )
                    )
                ),
            )
            c.state = ATTACHING
        for opcode, payload in server_frames(c.buf):
            if opcode == 0x9 and closed is None:
                send(c, client_frame(payload, 0xA))
            elif opcode == 0x8:
                ended(c, "closed by the CRS")
                return
            elif opcode == 0x2:
                if not umsg(c, decode_from_server(payload)):
                    return
        if closed is not None and c.generation == generation:
            ended(c, closed)

    def umsg(c: Client, msg: Any) -> bool:
        """One message from the CRS; False when the connection was closed."""
        kind = msg.type
        if kind == "attached":
            c.state = ATTACHED
            c.attempt = c.moves = c.stays = 0
            c.ticket = msg.get("ticket") or c.ticket
            standby = msg.get("standby-host")
            c.standby = str(standby) if standby is not None else None
            c.was_attached = True
            resumed = bool(msg.get("resumed", False))
            say(c, f"Attached(uri={c.uri!r}, crs={msg['crs']!r})")
            attached(c, resumed)
            return True
        if kind == "challenge":
            period = msg["period"]
            if period not in signers:
                signers[period] = {}
            signer = signers[period].get(c.uri)
            if signer is None:
                signer = signers[period][c.uri] = fast_signer(ksak, kpak, c.uri, period)
            octets = attach_signed_octets(msg["nonce"], "acme", c.uri, period)
            send(
                c,
                client_frame(
                    encode_from_client(message("prove", id=1, signature=signer.sign(octets)))
                ),
            )
            return True
        if kind == "moved":
            say(c, f"Moved(crs={msg['crs']!r}, host={msg['host']!r})")
            tally.moved()
            c.host = str(msg["host"])
            c.moves += 1
            c.moved = True
            ended(c, "moved")
            return False
        if kind == "refused":
            code = str(msg["code"])
            say(c, f"Refused(code={code!r})")
            tally.refused(code)
            if code in LOAD_REFUSALS:
                c.stay = True
            else:
                c.ticket = None
            retry_after = msg.get("retry-after")
            c.hint = int(retry_after) if retry_after is not None else None
            ended(c, "refused")
            return False
        if kind == "disconnect":
            ended(c, f"disconnect {msg['code']}")
            return False
        return True

    def attached(c: Client, resumed: bool) -> None:
        if tally.attached(c.index, c.host != victim, resumed):
            launch()
            if tally.all_attached():
                ready()

    def launch() -> None:
        nonlocal launched
        while launched < len(clients) and launched - len(tally.attached_once) < spec["concurrency"]:
            connect(clients[launched])
            launched += 1

    def ready() -> None:
        tally.ready({c.index for c in clients if c.host == victim})

    launch()
    if tally.all_attached():
        ready()  # no clients here
    while True:
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, generation, c = heapq.heappop(timers)
            if generation != c.generation:
                continue  # a stale timer
            if c.state == NEW:
                connect(c)
            elif c.state == ATTACHED:
                continue
            elif now < c.deadline:
                at(c.deadline, c)
            elif c.state == CONNECTING:
                # a failed connect, as the reference client's TCP timeout is
                close(c)
                c.state = NEW
                failed(c, "cannot connect: connect timed out")
            else:
                ended(c, "attach-timeout")
        if tally.overdue():
            tally.report(False)
        timeout = min(1.0, max(0.0, timers[0][0] - now)) if timers else 1.0
        for fd, _events in poll.poll(timeout):
            c = by_fd.get(fd)
            if c is not None:
                try:
                    step(c)
                except (OSError, SSL.Error) as exc:
                    ended(c, f"connection lost: {exc}")
                except Exception as exc:  # a malformed answer: drop this connection only
                    ended(c, f"connection lost: {type(exc).__name__}: {exc}")
