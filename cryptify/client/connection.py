"""The client's Twisted side: one UMSG connection, and a client that stays attached.

:class:`UmsgClientProtocol` runs a :class:`~cryptify.client.session.ClientSession`
over :class:`~cryptify.protocols.umsg_ws.UmsgWebSocket` (TLS is below it).
Once attached it pings the CRS after ``3/4`` of the keep-alive interval
the CRS announced without sending anything, and drops a connection whose
ping goes unanswered for :data:`PONG_TIMEOUT`.

:class:`AttachingClient` keeps one URI attached: it reconnects when the
connection ends, after a delay drawn uniformly from ``[0, min(cap,
first * 2**attempt)]`` ("full jitter"), so that thousands of clients
dropped at once (a CRS restart) come back spread out rather than as a
storm; ``attempt`` goes back to 0 once an attach succeeds.  ``moved``
reconnects at once to the named instance (at most :data:`MAX_MOVES` in a
row).

A pool gives its clients every instance's address (``servers``, e.g. the
addresses DNS gives for one name).  Every reconnect that does not follow
``moved`` goes to the next of them in turn, after the delay above: a
client whose instance died (or whose ``moved`` names one that cannot be
reached) reaches a survivor at its next try, and one that only lost its
connection comes back through the next instance, which moves it on to
the owner of its URI.  An attached connection that is lost goes first to
the ``standby`` its ``attached`` named (the instance that takes the URI's
slot if its own dies), so the clients of a dead instance come back to
their new owner without a ``moved``.  A load refusal (``unavailable``, ``attach-timeout``)
came from an instance that is up: the client tries that one again after
its ``retry-after``, up to :data:`MAX_STAYS` times in a row, rather than
the next address, which in a failover may be the dead instance.

``disconnect replaced`` means another client attached the same URI.
Reconnecting at once would take the URI back, that client would do the
same, and the two would replace each other every second for ever.  So
the client stops (:class:`GaveUp`), or, with ``stop_on_replaced=False``
(an unattended gateway), waits the whole ``max_delay`` before it tries
again.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IProtocol, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.client.session import (
    Attached,
    ClientEvent,
    ClientSession,
    Disconnected,
    Moved,
    Refused,
)
from cryptify.protocols.umsg import (
    Message,
    UmsgError,
    decode_from_server,
    encode_from_client,
)
from cryptify.protocols.umsg_ws import Closed, Failed, Opened, Received, UmsgWebSocket

log = Logger(namespace="cryptify.client")

#: Time the CRS has to answer a keep-alive ping.
PONG_TIMEOUT = 60.0
#: Time the client waits for the attach to complete.
ATTACH_TIMEOUT = 30.0
#: Most ``moved`` answers followed in a row.
MAX_MOVES = 3
#: Refusals that say the CRS was busy, not that the ticket is bad: the
#: client keeps its ticket, so that the next try costs no signature (a
#: pool's survivors refusing under a failover storm would otherwise get a
#: full ECCSI attach for every client they refused).
LOAD_REFUSALS = frozenset({"unavailable", "attach-timeout"})
#: Most tries in a row at an instance that answered with a load refusal
#: before going on to the next address.
MAX_STAYS = 3


@attrs.frozen
class ConnectionEnded:
    """The connection is gone; ``why`` says what ended it."""

    why: str


@attrs.frozen
class GaveUp:
    """The client stopped for good and will not reconnect; ``why`` says why."""

    why: str


Event = ClientEvent | ConnectionEnded | GaveUp

#: What :class:`GaveUp` says after ``disconnect replaced``.
REPLACED = (
    "another client attached the same URI and replaced this one; "
    "not reconnecting, so that the two do not replace each other in turn"
)


class UmsgClientProtocol(Protocol):
    """One UMSG connection from the client's side."""

    def __init__(
        self,
        make_session: Callable[[Callable[[Message], None]], ClientSession],
        clock: IReactorTime,
        on_event: Callable[[Event], None],
        host: str = "localhost",
    ) -> None:
        self.session = make_session(self.send)
        self.clock = clock
        self.on_event = on_event
        self.ws = UmsgWebSocket.connect(host)
        self.last_sent = 0.0
        self.ping_at: float | None = None
        self.timer: IDelayedCall | None = None
        self.why = "connection lost"
        self.done: defer.Deferred[str] = defer.Deferred()

    def connectionMade(self) -> None:
        self.last_sent = self.clock.seconds()
        # as the CRS's side: a message written while the previous one is
        # unacknowledged must not wait for the CRS's delayed ACK (Nagle)
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self._schedule(ATTACH_TIMEOUT)
        self.flush()

    def flush(self) -> None:
        out = self.ws.outgoing()
        if out and self.transport is not None:
            self.last_sent = self.clock.seconds()
            self.transport.write(out)

    def send(self, msg: Message) -> None:
        self.ws.send(encode_from_client(msg))
        self.flush()

    def dataReceived(self, data: bytes) -> None:
        self.ping_at = None
        for event in self.ws.receive(data):
            if isinstance(event, Opened):
                self.session.start()
            elif isinstance(event, Received):
                try:
                    msg = decode_from_server(event.data)
                except UmsgError as exc:
                    self.close(f"bad message from the CRS: {exc}")
                    return
                for result in self.session.received(msg):
                    self._event(result)
            elif isinstance(event, Failed):
                self.close(f"WebSocket error: {event.reason}", event.code)
            elif isinstance(event, Closed):
                self.why = self.why if self.why != "connection lost" else "closed by the CRS"
                self._lose()
        self.flush()

    def _event(self, event: ClientEvent) -> None:
        if isinstance(event, Attached):
            self._schedule(event.interval_ms / 1000 * 0.75)
        elif isinstance(event, Moved | Refused | Disconnected):
            self.why = type(event).__name__.lower()
            if isinstance(event, Refused) and event.local:
                self.close(event.reason)
        self.on_event(event)

    def close(self, why: str, code: int = 1000) -> None:
        """Leave: detach when attached, close the WebSocket and the connection."""
        self.why = why
        self.session.detach()
        self.ws.close(code, "")
        self.flush()
        self._lose()

    def _lose(self) -> None:
        self._cancel()
        if self.transport is not None:
            self.transport.loseConnection()

    # keep-alive

    def _schedule(self, delay: float) -> None:
        self._cancel()
        self.timer = self.clock.callLater(max(delay, 0.5), self._tick)

    def _cancel(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _tick(self) -> None:
        self.timer = None
        attached = self.session.attached
        if attached is None or self.session.state != "attached":
            self.close("attach timed out")
            return
        now = self.clock.seconds()
        if self.ping_at is not None and now - self.ping_at >= PONG_TIMEOUT:
            self.close("no pong from the CRS")
            return
        quiet = attached.interval_ms / 1000 * 0.75
        if attached.keepalive == "ws" and self.ping_at is None and now - self.last_sent >= quiet:
            self.ping_at = now
            self.ws.ping(b"ka")
            self.flush()
            self._schedule(PONG_TIMEOUT)
        elif self.ping_at is not None:
            self._schedule(PONG_TIMEOUT - (now - self.ping_at))
        else:
            self._schedule(self.last_sent + quiet - now)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel()
        self.on_event(ConnectionEnded(self.why))
        self.done.callback(self.why)


#: Opens a connection to HOST:PORT for a factory (TLS in the client, in memory in tests).
Connector = Callable[[str, int, IProtocolFactory], "defer.Deferred[IProtocol]"]


@attrs.define(eq=False)
class AttachingClient:
    """Keeps one URI attached: connect, attach, reconnect with backoff and jitter."""

    clock: IReactorTime
    connect: Connector
    make_session: Callable[[Callable[[Message], None]], ClientSession]
    host: str
    port: int
    on_event: Callable[[Event], None]
    first_delay: float = 1.0
    max_delay: float = 120.0
    rng: random.Random = attrs.field(factory=random.Random)
    attempt: int = 0
    moves: int = 0
    proto: UmsgClientProtocol | None = None
    #: Every address of the pool, tried in turn (``host``/``port`` is the
    #: one tried now); empty means ``host``/``port`` alone.
    servers: tuple[tuple[str, int], ...] = ()
    #: Index in ``servers`` of the address the current chain of moves began at.
    turn: int = 0
    #: The latest attach ticket, presented on the next attach.
    ticket: bytes | None = attrs.field(default=None, repr=False)
    timer: IDelayedCall | None = None
    running: bool = False
    #: The CRS's ``retry-after`` (ms) of the last refusal: wait at least this long.
    hint_ms: int | None = None
    #: After ``disconnect replaced``: stop (True) or wait ``max_delay`` (False).
    stop_on_replaced: bool = True
    #: Why the client gave up for good, once it has.
    gave_up: str | None = None
    #: Tries in a row at this address after load refusals; whether the
    #: last refusal asks to try the same address again.
    stays: int = 0
    _stay: bool = False
    #: The last ``attached``'s standby (host, port): the instance that takes
    #: the URI's slot if the one attached to dies; tried first when an
    #: attached connection is lost.
    standby: tuple[str, int] | None = None
    #: Whether the connection that ended had attached.
    _was_attached: bool = False
    #: Reconnect after exactly this long next time (``replaced``, not stopping).
    _hold_off: float | None = None
    _stopped: defer.Deferred[None] | None = None

    def start(self) -> None:
        if not self.servers:
            self.servers = ((self.host, self.port),)
        elif (self.host, self.port) in self.servers:
            self.turn = self.servers.index((self.host, self.port))
        self.running = True
        self._connect()

    def _next_server(self) -> None:
        """Go on to the address after the one just tried (or after the one
        the chain of moves began at, when a move led outside ``servers``)."""
        self.moves = 0  # a new chain of moves starts
        if not self.servers:
            return
        here = (self.host, self.port)
        if here in self.servers:
            self.turn = self.servers.index(here)
        self.turn = (self.turn + 1) % len(self.servers)
        self.host, self.port = self.servers[self.turn]

    def _go_standby(self, standby: tuple[str, int]) -> None:
        """An attached connection was lost: try the instance that takes the
        URI's slot if the one attached to died (it moves the client back if
        not), then the others in turn."""
        self.moves = 0
        self.host, self.port = standby
        if standby in self.servers:
            self.turn = self.servers.index(standby)

    def delay(self) -> float:
        """The next reconnect delay: full jitter over an exponential window."""
        window = min(self.max_delay, self.first_delay * 2 ** min(self.attempt, 30))
        return self.rng.uniform(0, window)

    def _connect(self) -> None:
        self.timer = None
        if not self.running:
            return

        def build() -> UmsgClientProtocol:
            proto = UmsgClientProtocol(self.make_session, self.clock, self._event, self.host)
            proto.session.ticket = self.ticket
            self.proto = proto
            return proto

        factory = Factory.forProtocol(build)
        factory.noisy = False
        d = self.connect(self.host, self.port, factory)
        d.addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        self._event(ConnectionEnded(f"cannot connect: {failure.getErrorMessage()}"))
        self._retry()

    def _event(self, event: Event) -> None:
        if isinstance(event, Attached):
            self.attempt = 0
            self.moves = 0
            self.stays = 0
            self.ticket = event.ticket
            self.standby = event.standby
            self._was_attached = True
        elif isinstance(event, Moved):
            self.host, self.port = event.host, event.port
            self.moves += 1
            # The ticket is kept: every instance of the pool accepts it
            # (docs/umsg.md 4.1), so the move costs no new signature.
        elif isinstance(event, Refused):
            if event.code not in LOAD_REFUSALS:
                self.ticket = None
            else:
                self._stay = True
            self.hint_ms = event.retry_after
        elif isinstance(event, Disconnected) and event.code == "replaced":
            self.ticket = None
            if self.stop_on_replaced:
                self.running = False
                self.gave_up = REPLACED
            else:
                self._hold_off = self.max_delay
        self.on_event(event)
        if isinstance(event, ConnectionEnded) and self.proto is not None:
            self.proto = None
            self._retry(moved=event.why == "moved")

    def _retry(self, moved: bool = False) -> None:
        if not self.running:
            if self.gave_up is not None:
                self.on_event(GaveUp(self.gave_up))
            if self._stopped is not None:
                done, self._stopped = self._stopped, None
                done.callback(None)
            return
        if self._hold_off is not None:
            delay, self._hold_off = self._hold_off, None
        elif moved and self.moves <= MAX_MOVES:
            delay = 0.0
        else:
            delay = self.delay()
            self.attempt += 1
        if not (moved and self.moves <= MAX_MOVES):
            if self._stay and self.stays < MAX_STAYS:
                self.stays += 1
            elif self._was_attached and self.standby is not None:
                self.stays = 0
                self._go_standby(self.standby)
            else:
                self.stays = 0
                self._next_server()
        self._stay = False
        self._was_attached = False
        if self.hint_ms is not None:
            delay = max(delay, self.hint_ms / 1000)
            self.hint_ms = None
        self.timer = self.clock.callLater(delay, self._connect)

    def stop(self) -> defer.Deferred[None]:
        """Detach and stop reconnecting; fires when the connection is gone."""
        self.running = False
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.proto is None:
            return defer.succeed(None)
        self._stopped = defer.Deferred()
        self.proto.close("stopped")
        return self._stopped
