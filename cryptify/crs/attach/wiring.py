"""The CRS's UMSG listener: Twisted adapter around the WebSocket and attach cores.

One :class:`UmsgServerProtocol` per client connection (TLS is done by the
port underneath): octets go to :class:`~cryptify.protocols.umsg_ws.UmsgWebSocket`,
complete messages are decoded and handed to the connection's
:class:`~cryptify.crs.attach.core.AttachSession`.

The factory enforces the limits (:class:`Limits`) that keep a flood of
half-open, slow or garbage connections from starving attached clients:

- at most ``max_unattached_per_address`` connections from one source
  address, and ``max_unattached`` in all, may be waiting to attach.  When
  a new connection would exceed a quota, the oldest waiting connection
  of that address (or, for the global quota, of all) that has not sent a
  single octet of WebSocket yet is closed to make room; only when every
  waiting connection has started talking is the new one closed instead,
  at once, before its TLS handshake costs anything.  Idle sockets from a
  busy address (a carrier NAT) thus cannot lock out the real clients
  behind the same address, and admitting a connection costs the same
  however many idle ones there are (ordered dicts, no scan);
- at most ``max_handshakes`` connections may be in progress (accepted, not
  yet attached): at that many the listening port stops accepting, and it
  starts again at three quarters of it (:mod:`cryptify.crs.attach.admission`),
  so a reconnect storm waits in the kernel's accept queue instead of
  filling one reactor turn with thousands of TLS handshakes; while it is
  paused, connections silent for ``STALE_SILENT`` are closed to make room;
- a connection must attach within ``attach_timeout`` seconds;
- a message (and the HTTP upgrade request) may not exceed ``max_message``.

Keep-alive: a WebSocket ping goes to a client that has been silent for its
keep-alive interval (by default ``PING_AFTER``, a little over 20 minutes);
a client that does not answer within ``pong_timeout`` is dropped.
``keep-alive CIDR tcp|ws MS`` rules in crs.conf choose the method and
interval per client address (first match wins); ``tcp`` turns on TCP
keep-alive with that idle time instead of WebSocket pings.  Timers are
sweeps over the connections (one every ``sweep`` seconds for keep-alive,
every second for attach timeouts), not one delayed call per connection.
"""

from __future__ import annotations

import socket
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Protocol as Interface
from typing import runtime_checkable

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.config.crs import CrsGlobal, KeepAlive
from cryptify.crs.attach.admission import MAX_HANDSHAKES, STALE_SILENT, Admission
from cryptify.crs.attach.core import AttachCore, AttachSession
from cryptify.crs.attach.parking import ParkingLot
from cryptify.protocols.streams import abort
from cryptify.protocols.umsg import (
    MAX_MESSAGE,
    Message,
    UmsgError,
    decode_from_client,
    encode_from_server,
)
from cryptify.protocols.umsg_ws import (
    GOING_AWAY,
    NORMAL,
    POLICY,
    TOO_BIG,
    Closed,
    Failed,
    Received,
    UmsgWebSocket,
)
from cryptify.protocols.websocket_handshake import ServerUpgrade
from cryptify.service import ListenService

log = Logger(namespace="cryptify.crs.umsg")

SECOND = 1.0
MINUTE = 60 * SECOND
#: Silence after which the CRS pings a client (default keep-alive interval).
PING_AFTER = 20 * MINUTE + 30 * SECOND
#: Time a pinged client has to answer.
PONG_TIMEOUT = 60 * SECOND
#: Listen backlog of the client port: Twisted's default (50) would make the
#: kernel drop the SYNs of a reconnect wave and the clients retry a second later.
#: While admission control pauses accepting, a storm waits here; a SYN dropped
#: on a full queue costs a client a connect timeout and a doubled backoff, so
#: the queue holds a few thousand (Linux caps it at ``net.core.somaxconn``,
#: 4096 by default).
BACKLOG = 4096
#: Time a closing connection has to flush before it is aborted.
CLOSE_GRACE = 5 * SECOND
#: TCP keep-alive probes before the kernel gives up (``tcp`` rules).
TCP_KEEPALIVE_PROBES = 4

#: WebSocket close code for each UMSG reason to end a connection.
_WS_CLOSE = {"too-large": TOO_BIG, "shutdown": GOING_AWAY, "keepalive": GOING_AWAY}
_WS_NORMAL = ("moved", "detach", "replaced")


@attrs.frozen
class Limits:
    """Limits of the client listener (crs.conf may set them; these are safe defaults)."""

    max_message: int = MAX_MESSAGE
    attach_timeout: float = 10 * SECOND
    max_unattached_per_address: int = 64
    max_unattached: int = 8192
    #: Connections in progress (accepted, not attached) before accepting pauses.
    max_handshakes: int = MAX_HANDSHAKES
    ping_after: float = PING_AFTER
    pong_timeout: float = PONG_TIMEOUT
    #: How often the keep-alive sweep runs.
    sweep: float = 5 * SECOND
    #: How often the attach-timeout sweep runs.
    attach_sweep: float = 1 * SECOND

    @classmethod
    def from_config(cls, g: CrsGlobal) -> Limits:
        """The limits crs.conf sets (``client-max-message`` and the like)."""
        return cls(
            max_message=g.client_max_message,
            attach_timeout=g.client_attach_timeout,
            max_unattached_per_address=g.client_max_unattached_per_address,
            max_unattached=g.client_max_unattached,
            max_handshakes=g.client_max_handshakes,
        )


class UmsgServerProtocol(Protocol):
    """One client connection: WebSocket + attach session."""

    factory: UmsgServerFactory
    ws: UmsgWebSocket
    #: The opening handshake's reader until the upgrade request is in.
    upgrade: ServerUpgrade | None = None
    session: AttachSession
    host = ""
    port = 0
    started = 0.0
    last_seen = 0.0
    ping_at: float | None = None
    interval = PING_AFTER
    ending = False
    abort_call: IDelayedCall | None = None
    #: The WebSocket close code of a framing failure (0: from the UMSG code).
    ws_close = 0
    #: Nothing received yet (above TLS): the first to go when the quota is full.
    silent = True

    def connectionMade(self) -> None:
        factory = self.factory
        assert self.transport is not None
        peer = self.transport.getPeer()
        self.host, self.port = str(getattr(peer, "host", "")), int(getattr(peer, "port", 0))
        self.started = self.last_seen = factory.clock.seconds()
        if not factory.admit(self):
            self.ending = True
            abort(self.transport)
            return
        # Each UMSG message is written as it is made: without this, one
        # written while the previous one is unacknowledged waits for the
        # client's delayed ACK (Nagle), about 40 ms: a call's invite after
        # the last call's hangup, its talk after ringing.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        method, interval = factory.keepalive(self.host)
        self.interval = interval / 1000
        if method == "tcp":
            tcp_keepalive(self.transport, self.interval)
        # Until the upgrade request is in, a WebSocket that is neither open
        # nor handshaking: closing it writes nothing, as wsproto's would.
        self.ws = UmsgWebSocket(client=False, max_message=factory.limits.max_message)
        self.upgrade = ServerUpgrade(factory.limits.max_message)
        self.session = factory.core.session(self, self.host, self.port, (method, interval))

    def dataReceived(self, data: bytes) -> None:
        if self.ending:
            return
        factory = self.factory
        self.last_seen = factory.clock.seconds()
        self.ping_at = None
        if self.silent:
            self.silent = False
            factory.heard(self)
        if self.upgrade is not None:
            handed = self.upgrade.receive(data)
            if handed is None:
                return
            self.ws, events = handed
            self.upgrade = None
        else:
            events = self.ws.receive(data)
        for event in events:
            if isinstance(event, Received):
                try:
                    msg = decode_from_client(event.data, factory.limits.max_message)
                except UmsgError as exc:
                    self.session.protocol_error(exc)
                else:
                    self.session.received(msg)
            elif isinstance(event, Failed):
                # The close carries the WebSocket's own code (RFC 6455
                # section 7.4.1: 1002 framing, 1003 text, 1007, 1009).
                self.ws_close = event.code
                code = "too-large" if event.code == TOO_BIG else "malformed"
                self.session.protocol_error(UmsgError(code, event.reason))
                self.end(code)
            elif isinstance(event, Closed):
                self.session.lost("client closed")
                self.end("closed")
            if self.ending:
                break
        self.flush()

    def flush(self) -> None:
        out = self.ws.outgoing()
        if out and self.transport is not None:
            self.transport.write(out)

    # Peer (for the attach session)

    def send(self, msg: Message) -> None:
        if self.ending:
            return
        self.ws.send(encode_from_server(msg))
        self.flush()

    def promoted(self) -> None:
        self.factory.promote(self)

    def end(self, code: str) -> None:
        if self.ending:
            return
        self.ending = True
        self.factory.forget(self)
        ws_code = self.ws_close or _WS_CLOSE.get(code, NORMAL if code in _WS_NORMAL else POLICY)
        self.ws.close(ws_code, code)
        self.flush()
        if self.transport is not None:
            self.transport.loseConnection()
            # A peer that does not read would keep a closing connection forever.
            self.abort_call = self.factory.clock.callLater(CLOSE_GRACE, self.abort)

    def evict(self) -> None:
        """Closed to make room for a newer connection (it never said a word)."""
        self.ending = True
        self.factory.forget(self)
        self.session.lost("evicted")
        abort(self.transport)

    def abort(self) -> None:
        self.abort_call = None
        abort(self.transport)

    # timers (called by the factory's sweeps)

    def tick(self, now: float) -> None:
        """Keep-alive: ping after silence; drop when the ping goes unanswered."""
        if self.ending or not self.session.attached:
            return
        if self.ping_at is None:
            if now - self.last_seen >= self.interval:
                self.ping_at = now
                self.ws.ping(b"ka")
                self.flush()
        elif now - self.ping_at >= self.factory.limits.pong_timeout:
            self.session.protocol_error(UmsgError("keepalive", "no pong in time"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.abort_call is not None and self.abort_call.active():
            self.abort_call.cancel()
        self.abort_call = None
        self.factory.forget(self)
        session = getattr(self, "session", None)
        if session is not None:
            session.lost("connection lost")
        self.ending = True


def tcp_keepalive(transport: object, idle: float) -> None:
    """Turn on TCP keep-alive on the socket under ``transport`` (TLS or not)."""
    tcp = getattr(transport, "transport", transport)
    handle: object = getattr(tcp, "getHandle", lambda: None)()
    if not isinstance(handle, socket.socket):
        return
    seconds = max(1, int(idle))
    handle.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", seconds),
        ("TCP_KEEPINTVL", min(seconds, 75)),
        ("TCP_KEEPCNT", TCP_KEEPALIVE_PROBES),
    ):
        if hasattr(socket, option):
            handle.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


@runtime_checkable
class PausablePort(Interface):
    """A listening port that can stop and resume accepting (Twisted's TCP and
    TLS ports), with the most connections one accept turn takes."""

    numberAccepts: int

    def stopReading(self) -> None: ...

    def startReading(self) -> None: ...


class UmsgServerFactory(ServerFactory[UmsgServerProtocol]):
    """The client listener's factory: admission, limits, sweeps."""

    protocol = UmsgServerProtocol
    noisy = False

    def __init__(
        self,
        core: AttachCore,
        clock: IReactorTime,
        limits: Limits | None = None,
        keepalive_rule: Callable[[str], KeepAlive | None] = lambda host: None,
    ) -> None:
        self.core = core
        self.clock = clock
        self.limits = limits or Limits()
        self.keepalive_rule = keepalive_rule
        #: Connections that have not attached yet.
        self.pending: set[UmsgServerProtocol] = set()
        #: The same, oldest first (the attach-timeout sweep stops at the first
        #: one not due) ...
        self._arrivals: OrderedDict[UmsgServerProtocol, None] = OrderedDict()
        #: ... and those of them that have sent nothing yet, oldest first,
        #: in all and per source address (the ones closed to make room).
        self._silent: OrderedDict[UmsgServerProtocol, None] = OrderedDict()
        self._silent_from: dict[str, OrderedDict[UmsgServerProtocol, None]] = {}
        self.unattached: Counter[str] = Counter()
        #: Silent connections closed to make room for a newer one.
        self.evicted = 0
        #: Attached connections kept alive with WebSocket pings.
        self.live: set[UmsgServerProtocol] = set()
        self.refused_early = 0
        self._loops: list[task.LoopingCall] = []
        #: Admission control: the listening port it pauses, when listening.
        self.admission = Admission()
        self.port: PausablePort | None = None
        #: Attaches waiting for an owner of their slot (a pool's), made
        #: with the core before its listeners.
        self.parking: ParkingLot | None = getattr(core, "parking", None)
        if self.parking is not None:
            self.parking.on_change.append(self._admit_more)

    def listening(self, port: object) -> None:
        """The listening port to pause and resume (None: not listening; one
        that cannot pause is not controlled)."""
        self.port = port if isinstance(port, PausablePort) else None
        self.admission = Admission()
        self._admit_more()

    def _admit_more(self) -> None:
        """Pause or resume accepting for the connections in progress now, and
        let one accept turn take no more than there is room for."""
        port = self.port
        if port is None:
            return
        # Parked attaches (cryptify.crs.attach.parking) wait at no cost.
        parked = 0 if self.parking is None else self.parking.count
        count, limit = len(self.pending) - parked, self.limits.max_handshakes
        what = self.admission.update(count, limit)
        if what == "pause":
            port.stopReading()
            if self.admission.pauses % 1000 == 1:
                log.info(
                    "client listener: {count} connections in progress, accepting paused"
                    " until {low} ({pauses} pauses so far)",
                    count=count,
                    low=Admission.low_water(limit),
                    pauses=self.admission.pauses,
                )
        elif what == "resume":
            port.startReading()
        if not self.admission.paused:
            port.numberAccepts = Admission.room(count, limit)

    def keepalive(self, host: str) -> tuple[str, int]:
        """(method, interval ms) for a client at ``host``: first rule, else the default."""
        try:
            rule = self.keepalive_rule(host)
        except ValueError:
            rule = None
        if rule is None:
            return "ws", int(self.limits.ping_after * 1000)
        return rule.method, rule.interval_ms

    def admit(self, proto: UmsgServerProtocol) -> bool:
        """Count a new connection as unattached, making room if needed, or refuse it.

        Over a quota, the oldest silent connection in it (per address, then in
        all) is closed for the new one; with none silent the new one is refused.
        """
        limits = self.limits
        host = proto.host
        if self.unattached[host] >= limits.max_unattached_per_address:
            if not self._make_room(self._silent_from.get(host), host):
                return False
        if len(self.pending) >= limits.max_unattached:
            if not self._make_room(self._silent, host):
                return False
        self.pending.add(proto)
        self._arrivals[proto] = None
        self._silent[proto] = None
        self._silent_from.setdefault(host, OrderedDict())[proto] = None
        self.unattached[host] += 1
        self._admit_more()
        return True

    def _make_room(self, silent: OrderedDict[UmsgServerProtocol, None] | None, host: str) -> bool:
        """Close the oldest connection of ``silent``; False (refuse) if there is none."""
        if not silent:
            self.refused_early += 1
            if self.refused_early % 1000 == 1:
                log.warn(
                    "too many unattached connections ({count} from {host}), all of them "
                    "talking; closing new ones",
                    count=self.unattached[host],
                    host=host,
                )
            return False
        victim = next(iter(silent))
        self.evicted += 1
        if self.evicted % 1000 == 1:
            log.warn(
                "too many unattached connections ({count} from {host}); closing the "
                "oldest silent ones to make room ({evicted} so far)",
                count=self.unattached[host],
                host=host,
                evicted=self.evicted,
            )
        victim.evict()
        return True

    def heard(self, proto: UmsgServerProtocol) -> None:
        """The connection sent its first octets: no longer the first to go."""
        self._not_silent(proto)

    def _not_silent(self, proto: UmsgServerProtocol) -> None:
        if self._silent.pop(proto, 0) is None:
            per_host = self._silent_from[proto.host]
            del per_host[proto]
            if not per_host:
                del self._silent_from[proto.host]

    def promote(self, proto: UmsgServerProtocol) -> None:
        """The connection attached: it no longer counts as unattached."""
        if proto in self.pending:
            self._unpend(proto)
            if proto.session.keepalive[0] == "ws":
                self.live.add(proto)

    def forget(self, proto: UmsgServerProtocol) -> None:
        if proto in self.pending:
            self._unpend(proto)
        self.live.discard(proto)

    def _unpend(self, proto: UmsgServerProtocol) -> None:
        self.pending.discard(proto)
        del self._arrivals[proto]
        self._not_silent(proto)
        self.unattached[proto.host] -= 1
        if self.unattached[proto.host] <= 0:
            del self.unattached[proto.host]
        self._admit_more()

    # sweeps

    def sweep_attach(self) -> None:
        """Refuse connections that did not attach in time."""
        deadline = self.clock.seconds() - self.limits.attach_timeout
        due = []
        for proto in self._arrivals:
            if proto.started > deadline:
                break
            due.append(proto)
        for proto in due:
            if hasattr(proto, "session"):
                proto.session.timed_out()
            proto.end("attach-timeout")
        if self.admission.paused:
            self._evict_stale()

    def _evict_stale(self) -> None:
        """Accepting is paused: close the connections in progress that have
        been silent for :data:`STALE_SILENT`, oldest first, to make room."""
        deadline = self.clock.seconds() - STALE_SILENT
        stale = []
        for proto in self._silent:
            if proto.started > deadline:
                break
            stale.append(proto)
        for proto in stale:
            self.evicted += 1
            proto.evict()
        if stale:
            log.info(
                "client listener paused: closed {count} connections silent for {grace}s"
                " to make room",
                count=len(stale),
                grace=STALE_SILENT,
            )

    def sweep_keepalive(self) -> None:
        """Ping silent clients; drop those that did not answer."""
        now = self.clock.seconds()
        for proto in list(self.live):
            proto.tick(now)

    def startFactory(self) -> None:
        limits = self.limits
        for period, call in (
            (limits.attach_sweep, self.sweep_attach),
            (limits.sweep, self.sweep_keepalive),
        ):
            loop = task.LoopingCall(call)
            loop.clock = self.clock
            loop.start(period, now=False)
            self._loops.append(loop)

    def stopFactory(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()

    def disconnect_all(self, reason: str = "shutdown") -> int:
        """Tell every attached client ``reason`` and close; return how many."""
        registry = self.core.registry
        attachments = [a for a in registry.matching() if isinstance(a.conn, AttachSession)]
        return registry.disconnect(attachments, reason)


class UmsgListenService(ListenService):
    """The client listener as a service: on stop, stop listening, tell every
    attached client the CRS is shutting down, and give them a moment to go."""

    def __init__(
        self,
        where: str,
        listen: Callable[[], object],
        factory: UmsgServerFactory,
        clock: IReactorTime,
        grace: float = 0.5,
    ) -> None:
        super().__init__("client TLS", where, listen)
        self.factory = factory
        self.clock = clock
        self.grace = grace

    def _bind(self) -> None:
        super()._bind()
        self.factory.listening(self.port)

    def stopService(self) -> defer.Deferred[object]:
        service.Service.stopService(self)
        port, self.port = self.port, None
        self.factory.listening(None)

        async def run() -> None:
            if port is not None:
                await defer.maybeDeferred(port.stopListening)
            count = self.factory.disconnect_all("shutdown")
            if count:
                log.info("told {count} attached clients the CRS is shutting down", count=count)
                await task.deferLater(self.clock, self.grace, lambda: None)

        return defer.ensureDeferred(run())
