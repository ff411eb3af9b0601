"""Pool members' messaging in memory, for the forwarding tests.

:class:`Net` joins :class:`FakeLink` s (what
:class:`~cryptify.crs.pool.forward.Forwarder` needs of the pool link):
frames go through the real encoding (``encode_frame``/``decode_frame``)
into a queue the test delivers, loses or cuts; each link has its own view
of who owns which slot.  :class:`Node` is one member: its
:class:`MemoryMessageStore` (kept across :meth:`Node.restart`, as Redis
with its append-only file is), its registry, Messaging and Forwarder.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport

from cryptify.config.crs_model import CrsConfig, CrsGlobal, Pool, PoolHost
from cryptify.crs.attach.registry import Attachment, AttachRegistry
from cryptify.crs.messages.store import Stored
from cryptify.crs.messages.wiring import Messaging
from cryptify.crs.pool.forward import Forwarder
from cryptify.crs.pool.origins import Gone, MemoryOrigins
from cryptify.crs.pool.wire import Envelope, decode_frame, encode_frame
from cryptify.crs.pool.wiring import PoolLink, _InboundFactory, _LinkProtocol
from cryptify.crs.slots import slot_of
from cryptify.crs.trace import TraceHub
from cryptify.protocols.umsg import message
from tests.fakes import MemoryMessageStore


class FakeLink:
    """One member's end of the pool link, in memory."""

    def __init__(self, net: Net, me: str) -> None:
        self.net = net
        self.me = me
        #: This member's view: slot -> owner (absent: ``default``).
        self.slots: dict[int, str | None] = {}
        self.default: str | None = None
        self.handlers: dict[str, Callable[[str, dict[str, object]], None]] = {}
        self.listeners: list[Callable[[str, bool], None]] = []
        self.watchers: list[Callable[[], bool]] = []

    @property
    def peers(self) -> list[str]:
        return sorted(n for n in self.net.links if n != self.me)

    def owner(self, slot: int) -> str | None:
        return self.slots.get(slot, self.default)

    def set_owner(self, uri: str, owner: str | None) -> None:
        self.slots[slot_of(uri)] = owner
        for watcher in list(self.watchers):
            watcher()

    def link_up(self, peer: str) -> bool:
        return self.net.connected(self.me, peer)

    def send(self, peer: str, frame_type: str, fields: dict[str, object]) -> bool:
        frame = decode_frame(encode_frame(frame_type, fields)[4:])
        assert isinstance(frame, Envelope)
        if not self.net.connected(self.me, peer):
            self.net.dropped.append((self.me, peer, frame))
            return False
        if frame_type in self.net.lose_next:
            # lost on the way (the connection cut after it was written)
            self.net.lose_next.discard(frame_type)
            self.net.dropped.append((self.me, peer, frame))
            return True
        self.net.queue.append((self.me, peer, frame))
        return True

    def handle(self, frame_type: str, handler: Callable[[str, dict[str, object]], None]) -> None:
        self.handlers[frame_type] = handler

    def on_link(self, listener: Callable[[str, bool], None]) -> None:
        self.listeners.append(listener)

    def watch(self, watcher: Callable[[], bool]) -> None:
        self.watchers.append(watcher)


class Net:
    """The links between members: who is connected, the frames under way."""

    def __init__(self) -> None:
        self.links: dict[str, FakeLink] = {}
        self.cut: set[frozenset[str]] = set()
        self.queue: list[tuple[str, str, Envelope]] = []
        #: Every frame lost (sent on no connection, cut, lost, a crash).
        self.dropped: list[tuple[str, str, Envelope]] = []
        #: Frame types whose next frame sent is lost (sent, never received).
        self.lose_next: set[str] = set()

    def drop(self, keep: Callable[[tuple[str, str, Envelope]], bool]) -> None:
        """Lose the queued frames ``keep`` refuses."""
        self.dropped += [q for q in self.queue if not keep(q)]
        self.queue = [q for q in self.queue if keep(q)]

    def connected(self, a: str, b: str) -> bool:
        return a in self.links and b in self.links and frozenset((a, b)) not in self.cut

    def link(self, me: str) -> FakeLink:
        self.links[me] = link = FakeLink(self, me)
        return link

    def set_link(self, a: str, b: str, up: bool) -> None:
        """Cut or join ``a`` and ``b``; both hear of it (as on_link says)."""
        pair = frozenset((a, b))
        if up == (pair not in self.cut):
            return
        if up:
            self.cut.discard(pair)
        else:
            self.cut.add(pair)
            self.drop(lambda q: frozenset(q[:2]) != pair)
        for me, peer in ((a, b), (b, a)):
            for listener in list(self.links[me].listeners):
                listener(peer, up)

    def deliver(self, limit: int | None = None) -> int:
        """Hand queued frames to their receivers (those sent meanwhile too)."""
        done = 0
        while self.queue and (limit is None or done < limit):
            src, dst, frame = self.queue.pop(0)
            if not self.connected(src, dst):
                continue
            self.links[dst].handlers[frame.type](src, frame.fields)
            done += 1
        return done

    def lose(self) -> None:
        self.drop(lambda q: False)


class Conn:
    """A client connection: records what it was sent."""

    def __init__(self, uri: str, conn_id: str) -> None:
        self.uri, self.account, self.conn_id = uri, "acme", conn_id
        self.sent: list[Any] = []
        self.closed = False
        #: How many of the messages received were confirmed.
        self.done = 0

    def send(self, msg: Any) -> None:
        self.sent.append(msg)

    def disconnect(self, reason: str) -> None:
        self.closed = True

    def of(self, kind: str) -> list[Any]:
        return [m for m in self.sent if m.type == kind]


class RecordingStore(MemoryMessageStore):
    """The memory store, recording every delivery a client confirmed."""

    def __init__(self, clock: Callable[[], float], confirmed: list[Stored], prefix: str) -> None:
        super().__init__(clock)
        self.confirmed = confirmed
        self.ids = (f"{prefix}-s{n}" for n in itertools.count(1))
        #: Called with each message a client confirmed, before it is recorded.
        self.witness: Callable[[Stored], None] | None = None

    async def confirm(self, recipient: str, message_id: str) -> tuple[str, str] | None:
        found = self.messages.get(message_id)
        result = await self.delivered(recipient, message_id, "msgstat:")
        if result is not None and found is not None:
            if self.witness is not None:
                self.witness(found)
            self.confirmed.append(found)
        return result


class NodeOrigins(MemoryOrigins):
    """The origin map's durable side, in the same ``redis_low`` as the
    node's store: out of reach when the store is."""

    def __init__(self, store: MemoryMessageStore) -> None:
        super().__init__()
        self.store = store

    async def save(self, message_id: str, peer: str) -> None:
        self.store._reachable()
        await super().save(message_id, peer)

    async def take(self, message_id: str) -> str | None:
        self.store._reachable()
        return await super().take(message_id)

    async def peek(self, message_id: str) -> str | None:
        self.store._reachable()
        return await super().peek(message_id)

    async def save_follow(self, message_id: str, origin: str, holder: str) -> None:
        self.store._reachable()
        await super().save_follow(message_id, origin, holder)

    async def peek_follow(self, message_id: str) -> tuple[str, str] | None:
        self.store._reachable()
        return await super().peek_follow(message_id)

    async def forget_follow(self, message_id: str) -> None:
        self.store._reachable()
        await super().forget_follow(message_id)

    async def find(self, message_id: str) -> tuple[str | None, tuple[str, str] | None]:
        self.store._reachable()
        return await super().find(message_id)

    async def add_gones(
        self, gones: list[Gone], message_id: str, origin: bool, follow: bool
    ) -> None:
        self.store._reachable()
        await super().add_gones(gones, message_id, origin, follow)

    async def remove_gones(self, gones: list[Gone]) -> None:
        self.store._reachable()
        await super().remove_gones(gones)

    async def pending_gones(self, now: float) -> list[Gone]:
        self.store._reachable()
        return await super().pending_gones(now)


class Node:
    """One pool member's messaging over a :class:`FakeLink` (or the real
    ``PoolLink`` given as ``link``)."""

    def __init__(
        self,
        net: Net | None,
        name: str,
        clock: Clock,
        confirmed: list[Stored],
        store: RecordingStore | None = None,
        link: Any = None,
    ) -> None:
        self.net, self.name, self.clock = net, name, clock
        self.store = store or RecordingStore(clock.seconds, confirmed, name)
        #: The durable origin map, kept across restarts as the store is.
        self.origins = NodeOrigins(self.store)
        self.traces: list[str] = []
        self.ids = 0
        self.start(link)

    def start(self, link: Any = None) -> None:
        assert self.net is not None or link is not None
        self.link = link if link is not None else self.net.link(self.name)  # type: ignore[union-attr]
        trace = TraceHub(self.clock.seconds)
        trace.subscribe("message", self.traces.append)
        self.registry = AttachRegistry(self.name, self.clock.seconds, trace)
        self.messaging = Messaging(
            self.store,  # type: ignore[arg-type]
            self.registry,
            trace,
            scheduler=self.clock,
        )
        self.registry.on_attach.append(self.messaging.attached)
        self.forwarder = Forwarder(
            self.link,
            self.store,  # type: ignore[arg-type]
            self.messaging,
            self.clock,
            new_id=self.new_id,
            origins=self.origins,
        )
        self.forwarder.startService()

    def new_id(self) -> str:
        self.ids += 1
        return f"{self.name}-{self.ids}"

    def crash(self) -> None:
        """Gone at once: nothing it had under way runs on (its store stays)."""
        for pending in self.forwarder._pending.values():
            if pending.timer.active():
                pending.timer.cancel()
        self.forwarder._pending.clear()
        if self.forwarder._ack_timer is not None and self.forwarder._ack_timer.active():
            self.forwarder._ack_timer.cancel()
        self.forwarder._acks.clear()
        if self.forwarder._loop.running:
            self.forwarder._loop.stop()
        self.forwarder.running = False
        for box in list(self.messaging.outboxes.values()):
            if box.retry is not None and box.retry.active():
                box.retry.cancel()
        for attachment in self.registry.matching():
            attachment.conn.disconnect("crash")
        assert self.net is not None
        del self.net.links[self.name]
        self.net.drop(lambda q: self.name not in q[:2])

    def restart(self) -> None:
        """Crash and start again with the same store and the links' views."""
        slots, default = self.link.slots, self.link.default
        self.crash()
        self.start()
        self.link.slots, self.link.default = slots, default

    def attach(self, uri: str) -> Conn:
        conn = Conn(uri, f"{self.name}:{uri}:{len(self.registry.matching())}")
        self.registry.attach(
            Attachment(uri, "acme", self.clock.seconds(), "1", "192.0.2.1", 1, conn)
        )
        return conn

    def detach(self, uri: str) -> None:
        attachment = self.registry.get(uri)
        if attachment is not None:
            attachment.conn.disconnect("moved")
            self.registry.detach(uri, attachment.conn, "moved")

    def post(self, conn: Conn, request: int, to: str, content: bytes, key: bytes) -> None:
        self.messaging.post(
            conn,  # type: ignore[arg-type]
            message("post", id=request, to=to, content=content, key=key),
        )

    def confirm_all(self) -> None:
        """Every attached client confirms what it received and has not confirmed."""
        for attachment in self.registry.matching():
            conn = attachment.conn
            assert isinstance(conn, Conn)
            while conn.done < len(conn.of("message")):
                got = conn.of("message")[conn.done]
                conn.done += 1
                self.messaging.delivered(
                    conn,  # type: ignore[arg-type]
                    message("delivered", message=got["message"]),
                )


class LinkPair:
    """Two real :class:`PoolLink` s (crs1, crs2) on a memory reactor, joined
    by memory transports both ways, each with a :class:`Node` on it.
    ``cut`` makes the wires carry nothing (and the links then drop the
    silent connections and connect again)."""

    KEY = "the-pool-shared-secret"

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_800_000_000.0)
        hosts = (PoolHost("crs1", "192.0.2.1"), PoolHost("crs2", "192.0.2.2"))
        config = CrsConfig(global_=CrsGlobal(key=self.KEY), pool=Pool(hosts))
        self.links = [
            PoolLink(config, name, self.reactor, lambda u, e: None, incarnation=lambda: 100)
            for name in ("crs1", "crs2")
        ]
        self.confirmed: list[Stored] = []
        self.nodes = [
            Node(None, link.me, self.reactor, self.confirmed, link=link)  # type: ignore[arg-type]
            for link in self.links
        ]
        for link in self.links:
            link.startService()
        self.cut = False
        self.wires: list[list[Any]] = []
        self.protos: list[_LinkProtocol] = []

    def connect(self) -> None:
        """Open the outgoing connections that are not open (as ClientService would)."""
        for a, b in ((0, 1), (1, 0)):
            if any(w[0] == (a, b) and not w[5] for w in self.wires):
                continue
            out = _LinkProtocol(self.links[a], self.links[b].me)
            out_t = StringTransport()
            into = _InboundFactory(self.links[b]).buildProtocol(IPv4Address("TCP", "192.0.2.9", 1))
            assert isinstance(into, _LinkProtocol)
            into_t = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 1))
            out.makeConnection(out_t)
            into.makeConnection(into_t)
            self.protos += [out, into]
            self.wires.append([(a, b), out, out_t, into, into_t, False])

    def pump(self) -> None:
        for wire in self.wires:
            _, out, out_t, into, into_t, dead = wire
            if dead:
                continue
            if out_t.disconnecting or into_t.disconnecting:
                wire[5] = True
                for proto in (out, into):
                    proto.connectionLost(None)
                continue
            for src_t, dst in ((out_t, into), (into_t, out)):
                data = src_t.value()
                src_t.clear()
                if data and not self.cut:
                    dst.dataReceived(data)

    def flow(self, seconds: float) -> None:
        for _ in range(int(seconds / 0.5)):
            self.connect()
            self.reactor.advance(0.5)
            for _ in range(3):
                self.pump()

    def stop(self) -> None:
        for wire in self.wires:
            if not wire[5]:
                wire[5] = True
                wire[1].connectionLost(None)
                wire[3].connectionLost(None)
        for node in self.nodes:
            node.forwarder.stopService()
        for link in self.links:
            link.stopService()
