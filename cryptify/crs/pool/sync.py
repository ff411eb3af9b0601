"""The synchronization link (port 8091) and ``db-backup``: the Twisted side.

Redis speaks no TLS-PSK, so its replication is carried through a tunnel:

- :class:`SyncServer` (every pool member with a ``[GLOBAL]`` ``key``)
  listens on ``sync-port`` of the client listener's interface with
  TLS-PSK.  The PSK identity is the connecting member's name and the key
  :func:`~cryptify.crs.pool.sync_core.sync_psk`; a handshake with another
  key, an identity that is not a peer, or none within
  :data:`HANDSHAKE_TIMEOUT` closes the connection.  An authenticated
  connection is spliced to the local ``redis_low``: the server logs in
  to Redis with its password itself (the peer never learns it) and lets
  through only replication commands
  (:class:`~cryptify.crs.pool.sync_core.ReplicationFilter`).
- :class:`SyncTunnel` (``db-backup replicate-from-peer``) listens on an
  ephemeral loopback port; each connection there (``redis_backup``'s
  ``replicaof``) is spliced through TLS-PSK to the backup peer's
  ``sync-port`` (its ``[POOL]`` address with ``addr-map`` applied).
- The replica's monitor and ``read-from``'s import are in
  :mod:`cryptify.crs.pool.backup`, which also builds all of these.

Both ends of a splice pass backpressure to each other (each transport is
the other's streaming producer), bound what they buffer before the other
end is ready, and close the other end when one closes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IAddress, IDelayedCall, IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cryptify.crs.pool.sync_core import (
    FilterError,
    ReplicationFilter,
    sync_psk,
)
from cryptify.protocols.tls_psk import PskClientContextFactory, PskServerContextFactory
from cryptify.service import ListenService

log = Logger(namespace="cryptify.crs.pool.sync")

#: Seconds a peer has to finish the TLS-PSK handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds a TCP connection to the peer or to Redis may take.
CONNECT_TIMEOUT = 10
#: Tunnel connections open at once, per end (a replica needs one).
MAX_CONNECTIONS = 4
#: Octets held for an end that is not connected yet; more closes the splice.
MAX_PENDING = 64 * 1024
#: Longest answer Redis may give to the tunnel's own AUTH.
MAX_AUTH_ANSWER = 512


def _resp(*words: bytes) -> bytes:
    out = [b"*%d\r\n" % len(words)]
    for word in words:
        out.append(b"$%d\r\n%s\r\n" % (len(word), word))
    return b"".join(out)


class _End(Protocol):
    """One end of a splice: forwards to its partner once both are ready."""

    partner: _End | None = None
    ready = False
    closed = False

    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._pending_size = 0

    @property
    def _transport(self) -> Any:
        return self.transport

    def send(self, data: bytes) -> None:
        """Data from the partner: written now, or held until this end is ready."""
        if self.closed or not data:
            return
        if self.ready:
            self._transport.write(data)
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > MAX_PENDING:
            log.warn("sync tunnel: over {limit} octets held, closing", limit=MAX_PENDING)
            self.abort()

    def became_ready(self) -> None:
        """This end can write: flush what was held; splice if the partner is ready."""
        self.ready = True
        pending, self._pending = self._pending, []
        self._pending_size = 0
        for data in pending:
            self._transport.write(data)
        partner = self.partner
        if partner is not None and partner.ready:
            _couple(self, partner)

    def abort(self) -> None:
        """Close this end and its partner at once."""
        if self.transport is not None and not self.closed:
            self._transport.abortConnection()
        if self.partner is not None and self.partner.transport is not None:
            if not self.partner.closed:
                self.partner._transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self.ready = False
        partner = self.partner
        if partner is not None and partner.transport is not None and not partner.closed:
            partner._transport.loseConnection()


def _couple(a: _End, b: _End) -> None:
    """Each transport becomes the other's producer: a full write buffer
    on one side stops reading on the other."""
    a._transport.registerProducer(b._transport, True)
    b._transport.registerProducer(a._transport, True)


# -- server end (the instance whose redis_low is copied) ------------------------


@implementer(IHandshakeListener)
class _PeerConnection(_End):
    """A peer's TLS-PSK connection to sync-port, spliced to redis_low."""

    def __init__(self, factory: SyncServerFactory) -> None:
        super().__init__()
        self.factory = factory
        self.filter = ReplicationFilter()
        self.timer: IDelayedCall | None = None
        self.connecting: Deferred[Any] | None = None

    def connectionMade(self) -> None:
        self.factory.active.add(self)
        self.timer = self.factory.clock.callLater(HANDSHAKE_TIMEOUT, self._too_slow)

    def _too_slow(self) -> None:
        self.timer = None
        log.warn("sync link: no TLS-PSK handshake within {timeout}s", timeout=HANDSHAKE_TIMEOUT)
        self._transport.abortConnection()

    def handshakeCompleted(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.ready = True
        redis = _RedisConnection(self.factory.password())
        redis.partner, self.partner = self, redis
        self.connecting = self.factory.connect_low(Factory.forProtocol(lambda: redis))
        self.connecting.addErrback(self._no_redis)

    def _no_redis(self, failure: Failure) -> None:
        self.connecting = None
        if not self.closed:
            log.error("sync link: redis_low unreachable: {why}", why=failure.getErrorMessage())
            self._transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        try:
            accepted = self.filter.feed(data)
        except FilterError as exc:
            log.warn("sync link: peer refused: {why}", why=str(exc))
            self.abort()
            return
        if self.partner is not None:
            self.partner.send(accepted)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.active.discard(self)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.connecting is not None:
            connecting, self.connecting = self.connecting, None
            connecting.cancel()
        super().connectionLost(reason)


class _RedisConnection(_End):
    """The server end's connection to redis_low: logs in, then splices."""

    def __init__(self, password: str | None) -> None:
        super().__init__()
        self.password = password
        self.answer = b""

    def connectionMade(self) -> None:
        if self.partner is None or self.partner.closed:
            self._transport.loseConnection()
            return
        if self.password is None:
            self.became_ready()
            return
        self._transport.write(_resp(b"AUTH", self.password.encode("utf-8")))

    def dataReceived(self, data: bytes) -> None:
        if self.ready:
            if self.partner is not None:
                self.partner.send(data)
            return
        self.answer += data
        line, found, rest = self.answer.partition(b"\r\n")
        if not found:
            if len(self.answer) > MAX_AUTH_ANSWER:
                log.error("sync link: redis_low gave an over-long answer to AUTH")
                self.abort()
            return
        if line != b"+OK":
            log.error(
                "sync link: redis_low refused the login: {answer}",
                answer=line[:80].decode("utf-8", "replace"),
            )
            self.abort()
            return
        self.answer = b""
        self.became_ready()
        if rest and self.partner is not None:
            self.partner.send(rest)


class SyncServerFactory(Factory):
    """Builds the server end's connections, at most :data:`MAX_CONNECTIONS` at once."""

    noisy = False

    def __init__(
        self,
        clock: IReactorTime,
        connect_low: Callable[[Factory], Deferred[Any]],
        password: Callable[[], str | None],
    ) -> None:
        self.clock = clock
        self.connect_low = connect_low
        self.password = password
        self.active: set[_PeerConnection] = set()

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        if len(self.active) >= MAX_CONNECTIONS:
            log.warn(
                "sync link: {count} connections open, refusing {peer}",
                count=len(self.active),
                peer=addr,
            )
            return None
        return _PeerConnection(self)


def psk_lookup(
    peers: frozenset[str], psk: bytes
) -> Callable[[bytes, IAddress | None], bytes | None]:
    """The server's PSK lookup: the sync key for a peer's name, else nothing."""

    def lookup(identity: bytes, address: IAddress | None) -> bytes | None:
        name = identity.decode("ascii", "replace")
        return psk if name in peers else None

    return lookup


def sync_server(
    reactor: Any,
    key: str,
    me: str,
    peers: frozenset[str],
    interface: str,
    port: int,
    low: tuple[str, int],
    password: Callable[[], str | None],
) -> ListenService:
    """
    The server end as a service: TLS-PSK on ``interface:port``, spliced to
    ``redis_low`` at ``low`` (``password()`` read for each connection).
    """
    context = PskServerContextFactory(psk_lookup(peers, sync_psk(key)))

    def connect_low(factory: Factory) -> Deferred[Any]:
        endpoint = TCP4ClientEndpoint(reactor, low[0], low[1], timeout=CONNECT_TIMEOUT)
        connected: Deferred[Any] = endpoint.connect(factory)
        return connected

    def listen() -> Any:
        factory = SyncServerFactory(reactor, connect_low, password)
        return reactor.listenSSL(port, factory, context, interface=interface)

    return ListenService("sync link", f"{interface}:{port}", listen)


# -- client end (the instance with db-backup replicate-from-peer) --------------


class _LocalConnection(_End):
    """redis_backup's connection to the tunnel's loopback port."""

    def __init__(self, tunnel: SyncTunnel) -> None:
        super().__init__()
        self.tunnel = tunnel
        self.connecting: Deferred[Any] | None = None

    def connectionMade(self) -> None:
        self.tunnel.active.add(self)
        self.ready = True
        remote = _RemoteConnection(self.tunnel)
        remote.partner, self.partner = self, remote
        self.connecting = self.tunnel.connect_peer(Factory.forProtocol(lambda: remote))
        self.connecting.addCallbacks(self._connected, self._failed)

    def _connected(self, _: object) -> None:
        self.connecting = None

    def _failed(self, failure: Failure) -> None:
        self.connecting = None
        self.tunnel.report(False, failure.getErrorMessage())
        if not self.closed:
            self._transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.partner is not None:
            self.partner.send(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.tunnel.active.discard(self)
        if self.connecting is not None:
            connecting, self.connecting = self.connecting, None
            connecting.cancel()
        super().connectionLost(reason)


@implementer(IHandshakeListener)
class _RemoteConnection(_End):
    """The tunnel's TLS-PSK connection to the peer's sync-port."""

    def __init__(self, tunnel: SyncTunnel) -> None:
        super().__init__()
        self.tunnel = tunnel
        self.timer: IDelayedCall | None = None
        self.handshaken = False

    def connectionMade(self) -> None:
        self.timer = self.tunnel.clock.callLater(HANDSHAKE_TIMEOUT, self._too_slow)
        # TLS holds what is written before the handshake ends
        self.became_ready()

    def _too_slow(self) -> None:
        self.timer = None
        self.tunnel.report(False, "no TLS-PSK handshake in time")
        self.abort()

    def handshakeCompleted(self) -> None:
        self.handshaken = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.tunnel.report(True, "")

    def dataReceived(self, data: bytes) -> None:
        if self.partner is not None:
            self.partner.send(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if not self.handshaken:
            self.tunnel.report(False, reason.getErrorMessage())
        super().connectionLost(reason)


class SyncTunnel(service.Service):
    """
    The client end: a loopback listener whose connections go to the peer.

    ``connect_peer(factory)`` opens one TLS-PSK connection to the peer;
    ``listen(factory)`` binds the loopback port.  :attr:`port` is the port
    bound (``redis_backup``'s ``replicaof``), known once started.
    """

    name = "sync tunnel"

    def __init__(
        self,
        clock: IReactorTime,
        peer: str,
        connect_peer: Callable[[Factory], Deferred[Any]],
        listen: Callable[[Factory], Any],
    ) -> None:
        self.clock = clock
        self.peer = peer
        self.connect_peer = connect_peer
        self._listen = listen
        self.active: set[_LocalConnection] = set()
        self.listening: Any = None
        #: whether the last connection to the peer got through, and why not
        self.reached: bool | None = None

    @classmethod
    def to_peer(
        cls, reactor: Any, key: str, me: str, peer: str, address: str, port: int
    ) -> SyncTunnel:
        """A tunnel with ``reactor`` to ``address:port`` (already addr-mapped)."""
        tls = PskClientContextFactory(me.encode("ascii"), sync_psk(key))

        def connect_peer(factory: Factory) -> Deferred[Any]:
            tcp = TCP4ClientEndpoint(reactor, address, port, timeout=CONNECT_TIMEOUT)
            connected: Deferred[Any] = wrapClientTLS(tls, tcp).connect(factory)
            return connected

        def listen(factory: Factory) -> Any:
            return reactor.listenTCP(0, factory, interface="127.0.0.1")

        return cls(reactor, peer, connect_peer, listen)

    @property
    def port(self) -> int:
        if self.listening is None:
            raise RuntimeError("the sync tunnel is not listening")
        port: int = self.listening.getHost().port
        return port

    def report(self, reached: bool, why: str) -> None:
        """Log when the tunnel starts or stops getting through to the peer."""
        if reached == self.reached:
            return
        self.reached = reached
        if reached:
            log.info("sync tunnel to {peer} connected", peer=self.peer)
        else:
            log.warn("sync tunnel to {peer} failed: {why}", peer=self.peer, why=why)

    def _build(self) -> Protocol | None:
        if len(self.active) >= MAX_CONNECTIONS:
            log.warn("sync tunnel: {count} connections open, refusing", count=len(self.active))
            return None
        return _LocalConnection(self)

    def startService(self) -> None:
        if self.listening is None:
            factory = Factory()
            factory.buildProtocol = lambda addr: self._build()  # type: ignore[method-assign]
            factory.noisy = False
            self.listening = self._listen(factory)
            log.info(
                "sync tunnel to {peer} listening on 127.0.0.1:{port}",
                peer=self.peer,
                port=self.port,
            )
        service.Service.startService(self)

    def stopService(self) -> Deferred[None]:
        service.Service.stopService(self)
        for connection in list(self.active):
            connection.abort()
        listening, self.listening = self.listening, None
        if listening is None:
            return defer.succeed(None)
        return defer.maybeDeferred(listening.stopListening)


# -- the replica's state ------------------------------------------------------
