"""
The CRS's connection to one Redis server, as a service.

L{RedisStore} keeps one txredisapi connection (password, database 0) to a
supervised instance or to an external server, and reconnects with
exponential backoff on the injected clock.  Later features ask for
L{RedisStore.client} (fails fast while disconnected) or wait on
L{RedisStore.when_connected}.

Only txredisapi's protocol is used: its connection helpers reach for the
global reactor, while this service connects through an endpoint with
Twisted's C{ClientService}, so tests can drive it with a C{Clock}.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from txredisapi import RedisProtocol

from cryptify.crs.redis.instance import RedisInstance
from cryptify.reactor import IReactor

#: first reconnection delay, doubled per failed attempt
RECONNECT_FIRST_DELAY = 0.5
#: reconnection delays never exceed this
RECONNECT_MAX_DELAY = 30.0
#: seconds a TCP connect may take
CONNECT_TIMEOUT = 5

log = Logger(namespace="cryptify.crs.store")

#: replies to AUTH/SELECT that no reconnection will change
_AUTH_ERRORS = (
    "WRONGPASS",
    "NOAUTH",
    "invalid password",
    "without any password",
    "DB index is out of range",
)


class RedisStoreError(Exception):
    """The store cannot serve requests."""


class RedisNotConnected(RedisStoreError):
    """There is no usable connection right now."""


class RedisAuthError(RedisStoreError):
    """The server refused our password or database: retrying will not help."""


class _NoQueue:
    """txredisapi's protocol hands itself back to a pool after MULTI/pipelines."""

    def put(self, connection: object) -> None:
        pass


class _StoreFactory(Factory):
    """Builds txredisapi protocols and takes their errors to the store."""

    isLazy = False
    noisy = False
    connectionQueue = _NoQueue()

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    def buildProtocol(self, addr: object) -> RedisProtocol:
        p = self._store.protocol(
            charset="utf-8",
            password=self._store.password,
            dbid=self._store.dbid,
            # Values stay the strings they were stored as: a base64 payload
            # or a token that happens to be all digits must not turn into int.
            convertNumbers=False,
        )
        p.factory = self
        # its class default is the global reactor's
        p.callLater = self._store.clock.callLater
        self._store._connecting(p)
        return p

    def stopTrying(self) -> None:
        """Called by the protocol before it gives up on a connection."""

    def connectionError(self, why: str) -> None:
        self._store._rejected(why)


class RedisStore(service.Service):
    """
    One Redis connection with reconnect.

    @param endpoint: an C{IStreamClientEndpoint} to the server.
    @param clock: an C{IReactorTime}, times the reconnection backoff.
    @param password: sent with AUTH on every connection; None for none.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        password: str | None,
        dbid: int = 0,
        name: str = "redis",
        first_delay: float = RECONNECT_FIRST_DELAY,
        max_delay: float = RECONNECT_MAX_DELAY,
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.clock = clock
        self.password = password
        self.dbid = dbid
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._service: ClientService | None = None
        self._connection: RedisProtocol | None = None
        self._rejections = 0
        self._waiters: list[Deferred[RedisProtocol]] = []
        self._fatal: RedisAuthError | None = None
        #: Builds each connection's protocol (a subscriber's, for pub/sub).
        self.protocol: Callable[..., RedisProtocol] = RedisProtocol
        #: Called with each new connection once it is usable (after AUTH).
        self.on_connect: list[Callable[[RedisProtocol], None]] = []

    @classmethod
    def tcp(
        cls, reactor: IReactor, host: str, port: int, password: str | None, name: str = "redis"
    ) -> RedisStore:
        """A store for the server at C{host}:C{port} (external mode too)."""
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
        return cls(endpoint, reactor, password, name=name)

    @classmethod
    def unix(
        cls, reactor: IReactor, path: str, password: str | None, name: str = "redis"
    ) -> RedisStore:
        """A store for the server on the UNIX socket C{path}."""
        endpoint = UNIXClientEndpoint(reactor, path, timeout=CONNECT_TIMEOUT)
        return cls(endpoint, reactor, password, name=name)

    @classmethod
    def for_instance(cls, reactor: IReactor, instance: RedisInstance) -> RedisStore:
        """A store for a supervised instance."""
        if instance.unix_socket is not None:
            return cls.unix(reactor, str(instance.unix_socket), instance.password, instance.name)
        assert instance.port is not None
        return cls.tcp(reactor, instance.host, instance.port, instance.password, instance.name)

    def startService(self) -> None:
        self.running = 1
        self._fatal = None
        self._service = ClientService(
            self.endpoint,
            _StoreFactory(self),
            retryPolicy=self.retry_delay,
            clock=self.clock,
        )
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        self.running = 0
        self._fail_waiters(RedisNotConnected(f"{self.name}: store stopped"))
        clientService, self._service = self._service, None
        if clientService is None or not clientService.running:
            return defer.succeed(None)
        d: Deferred[None] = clientService.stopService()
        return d

    def retry_delay(self, failures: int) -> float:
        """Seconds before the next attempt after C{failures} failed ones in a row."""
        # ClientService counts from the last TCP connection; connections closed
        # before they were usable count too, or we would retry in a tight loop
        failures = max(failures, self._rejections)
        return min(self.first_delay * (1 << min(max(failures - 1, 0), 16)), self.max_delay)

    @property
    def connected(self) -> bool:
        return self._connection is not None

    @property
    def client(self) -> RedisProtocol:
        """
        The live txredisapi protocol (C{get}, C{set}, C{hset}, ...).

        Ask again for each use: after a reconnection it is another object.
        @raise RedisNotConnected: while there is no usable connection.
        """
        if self._connection is None:
            raise RedisNotConnected(f"{self.name}: not connected")
        return self._connection

    def when_connected(self) -> Deferred[RedisProtocol]:
        """Fires with L{client} once connected; fails on auth errors or stop."""
        if self._fatal is not None:
            return defer.fail(self._fatal)
        if self._connection is not None:
            return defer.succeed(self._connection)
        if not self.running:
            return defer.fail(RedisNotConnected(f"{self.name}: store not started"))
        d: Deferred[RedisProtocol] = Deferred()
        self._waiters.append(d)
        return d

    def ping(self) -> Deferred[str]:
        """PING now; fails at once with L{RedisNotConnected} while disconnected."""
        return defer.maybeDeferred(lambda: self.client.ping())

    def _connecting(self, protocol: RedisProtocol) -> None:
        protocol.whenConnected().addCallback(self._ready)
        protocol.whenDisconnected().addCallback(self._lost)

    def _ready(self, protocol: RedisProtocol) -> None:
        self._connection = protocol
        self._rejections = 0
        log.info("{name}: connected", name=self.name)
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.callback(protocol)
        for hook in self.on_connect:
            hook(protocol)

    def _lost(self, protocol: RedisProtocol) -> None:
        if self._connection is protocol:
            self._connection = None
            if self.running:
                log.warn("{name}: connection lost, reconnecting", name=self.name)
        else:
            self._rejections += 1

    def _rejected(self, why: str) -> None:
        if not any(sign in why for sign in _AUTH_ERRORS):
            log.warn("{name}: {why}; reconnecting", name=self.name, why=why)
            return
        err = RedisAuthError(f"{self.name}: {why}")
        log.error("{name}: {why}; not reconnecting", name=self.name, why=why)
        self._fatal = err
        self._fail_waiters(err)
        if self._service is not None:
            self._service.stopService()

    def _fail_waiters(self, err: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.errback(err)
