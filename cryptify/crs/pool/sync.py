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
- :class:`ReplicaMonitor` reads ``INFO replication`` from
  ``redis_backup`` every :data:`REPLICA_POLL` seconds for ``show
  services`` and logs (and notifies) the link going down and up.
- :class:`BackupImport` (``db-backup read-from``) copies the messages kept
  in ``redis_backup`` into the local message store once, idempotently.

Both ends of a splice pass backpressure to each other (each transport is
the other's streaming producer), bound what they buffer before the other
end is ready, and close the other end when one closes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IAddress, IDelayedCall, IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cryptify.config import CrsConfig, CrsLocalConfig
from cryptify.crs.messages.store import MessageRefused, MessageStore
from cryptify.crs.pool.sync_core import (
    BadBackupMessage,
    FilterError,
    InfoError,
    ReplicaStatus,
    ReplicationFilter,
    backup_peer,
    check_backup_message,
    parse_replication_info,
    sync_psk,
)
from cryptify.crs.redis.instance import BACKUP, LOW, ReplicaOf
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
#: Seconds between two readings of the replica's INFO replication.
REPLICA_POLL = 5.0
#: Messages imported per round trip by ``read-from``.
IMPORT_CHUNK = 100
#: Where the imported message IDs are kept, per peer (a set in redis_low).
IMPORTED_PREFIX = "pool-import:"


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


class ReplicaMonitor(service.Service):
    """
    Reads ``INFO replication`` from ``redis_backup`` every
    :data:`REPLICA_POLL` seconds; :meth:`describe` is its ``show services``
    status.  ``client()`` returns the store's txredisapi client (raises
    while it is not connected).
    """

    name = "replica monitor"

    def __init__(
        self,
        peer: str,
        client: Callable[[], Any],
        clock: IReactorTime,
        notify: Callable[[str, str], None] = lambda unit, event: None,
    ) -> None:
        self.peer = peer
        self.client = client
        self.notify = notify
        self.status: ReplicaStatus | None = None
        self.problem = "not read yet"
        self.loop = LoopingCall(self.poll)
        self.loop.clock = clock

    def describe(self) -> str:
        """``active (...)`` while the link is up, else ``inactive (...)``."""
        if self.status is None:
            return f"inactive (replica of {self.peer}: {self.problem})"
        state = "active" if self.status.up else "inactive"
        return f"{state} (replica of {self.peer}: {self.status.describe()})"

    def _set(self, status: ReplicaStatus | None, problem: str = "") -> None:
        was = self.status is not None and self.status.up
        self.status, self.problem = status, problem
        now = status is not None and status.up
        if now != was:
            if now:
                log.info("db-backup: replica of {peer} link up", peer=self.peer)
            else:
                log.warn(
                    "db-backup: replica of {peer} link down ({why})",
                    peer=self.peer,
                    why=problem or (status.describe() if status else ""),
                )
            try:
                self.notify("db-backup", "up" if now else "down")
            except Exception:
                log.failure("notify db-backup failed")

    def poll(self) -> Deferred[None]:
        async def read() -> None:
            try:
                text = await self.client().execute_command("INFO", "replication")
                self._set(parse_replication_info(str(text)))
            except InfoError as exc:
                self._set(None, str(exc))
            except Exception as exc:
                self._set(None, f"redis_backup unreachable ({exc.__class__.__name__})")

        return defer.ensureDeferred(read())

    def startService(self) -> None:
        service.Service.startService(self)
        self.loop.start(REPLICA_POLL, now=True)

    def stopService(self) -> None:
        service.Service.stopService(self)
        if self.loop.running:
            self.loop.stop()


# -- db-backup read-from -------------------------------------------------------


class _Holder:
    """The message being posted by the import (read by the store synchronously)."""

    id = ""
    time = 0.0


class BackupImport(service.Service):
    """
    ``db-backup read-from``: the peer's messages kept in ``redis_backup``
    become messages of the local store, each once.  ``backup()`` and
    ``low()`` return the two stores (:class:`RedisStore`); ``ready()``
    fires once both are connected.

    Every inbox of the backup is read in order; each message is posted to
    the local store with its original ID, time, sender and recipient,
    through the store's own script, in the retry scope ``import:{ID}``
    of its sender: a second post of it answers the first (and stores
    nothing).  Its ID then goes into the set ``pool-import:{PEER}`` of
    ``redis_low``, so a later run skips it even after that retry scope has
    expired.  A run that stops half way (Redis gone, the CRS stopped)
    leaves nothing half done, and the next start finishes it.  The
    backup's ``known-uris`` become known locally.  The backup itself is
    only read.
    """

    name = "backup import"

    def __init__(
        self,
        peer: str,
        backup: Callable[[], Any],
        low: Callable[[], Any],
        ready: Callable[[], Deferred[Any]],
        clock: IReactorTime,
    ) -> None:
        self.peer = peer
        self.backup = backup
        self.low = low
        self.ready = ready
        self.clock = clock
        self.holder = _Holder()
        self.done: Deferred[dict[str, int]] | None = None

    def startService(self) -> None:
        service.Service.startService(self)
        self.done = defer.ensureDeferred(self._run())

    async def _run(self) -> dict[str, int]:
        try:
            await self.ready()
            return await self.run()
        except Exception:
            log.failure("db-backup read-from: import from {peer} stopped", peer=self.peer)
            return {}

    def _store(self) -> MessageStore:
        holder = self.holder
        return MessageStore(
            self.low,
            clock=lambda: holder.time,
            new_id=lambda: holder.id,
            scheduler=self.clock,
        )

    async def run(self) -> dict[str, int]:
        """Import every message not imported yet; return and log the counts."""
        backup, low = self.backup().client, self.low().client
        store = self._store()
        imported_key = IMPORTED_PREFIX + self.peer
        counts = {"imported": 0, "already": 0, "skipped": 0, "refused": 0}
        known = await backup.smembers("known-uris")
        if known:
            await low.sadd("known-uris", sorted(known))
        cursor = "0"
        while True:
            cursor, keys = await backup.scan(cursor, "inbox:*", 500)
            for inbox in sorted(str(k) for k in keys):
                # a page at a time: the backup is only read, so pages are stable
                start = 0
                while True:
                    page = await backup.lrange(inbox, start, start + IMPORT_CHUNK - 1)
                    if not page:
                        break
                    await self._chunk([str(i) for i in page], store, imported_key, counts)
                    start += len(page)
            if str(cursor) == "0":
                break
        log.info(
            "db-backup read-from {peer}: {imported} messages imported, {already} already "
            "there, {skipped} unusable skipped, {refused} refused (retried at next start)",
            peer=self.peer,
            **counts,
        )
        return counts

    async def _chunk(
        self, ids: list[str], store: MessageStore, imported_key: str, counts: dict[str, int]
    ) -> None:
        backup, low = self.backup().client, self.low().client
        seen = await low.execute_command("SMISMEMBER", imported_key, *ids)
        posts: list[tuple[str, Deferred[Any]]] = []
        for message_id, already in zip(ids, seen, strict=True):
            if str(already) == "1":
                counts["already"] += 1
                continue
            fields = await backup.hgetall(f"msg:{message_id}")
            if not fields:
                counts["skipped"] += 1
                continue
            try:
                message = check_backup_message(
                    message_id, {str(k): str(v) for k, v in fields.items()}
                )
            except BadBackupMessage as exc:
                log.warn(
                    "db-backup read-from: message {id} skipped: {why}",
                    id=message_id[:40],
                    why=str(exc),
                )
                counts["skipped"] += 1
                continue
            # the store reads the ID and time synchronously, in post()
            self.holder.id = message.id
            self.holder.time = (message.time_ms + 0.5) / 1000
            posts.append(
                (
                    message.id,
                    store.post(
                        message.sender,
                        f"import:{message.id}",
                        message.recipient,
                        message.account,
                        message.kind,
                        message.data,
                    ),
                )
            )
        for message_id, posting in posts:
            try:
                posted = await posting
            except MessageRefused as exc:
                log.warn(
                    "db-backup read-from: message {id} not imported: {why}",
                    id=message_id,
                    why=str(exc),
                )
                counts["refused"] += 1
                continue
            await low.sadd(imported_key, message_id)
            counts["already" if posted.duplicate else "imported"] += 1


# -- the services of one instance ----------------------------------------------


@attrs.define
class Sync:
    """What ``[POOL]`` and ``db-backup`` make this instance run, in start order.

    ``before_redis`` must start before the Redis children (the tunnel's port
    goes into ``redis_backup``'s ``replicaof``); ``after_redis`` after.
    ``probes``: ``show services`` rows.
    """

    before_redis: list[service.Service] = attrs.Factory(list)
    after_redis: list[service.Service] = attrs.Factory(list)
    probes: dict[str, Callable[[], bool | str]] = attrs.Factory(dict)
    tunnel: SyncTunnel | None = None
    monitor: ReplicaMonitor | None = None
    importer: BackupImport | None = None

    def backup_master(self) -> ReplicaOf | None:
        """What ``redis_backup`` replicates: the tunnel's loopback port."""
        if self.tunnel is None:
            return None
        return ReplicaOf("127.0.0.1", self.tunnel.port, None)


def build_sync(
    cfg: CrsConfig,
    local: CrsLocalConfig,
    me: str,
    reactor: Any,
    store: Callable[[str], Any],
    notify: Callable[[str, str], None],
) -> Sync:
    """
    The sync link's services for instance ``me``: the server end in any
    pool with a key; with ``replicate-from-peer`` the tunnel to the backup
    peer and the replica's monitor; with ``read-from`` the import.
    ``store(name)`` answers the connected store of a Redis (after start).
    """
    g = cfg.global_
    sync = Sync()
    names = cfg.pool.names
    peer = backup_peer(names, me)
    if peer is None or not g.key:
        if local.db_backup != "none":
            log.warn(
                "db-backup {mode} needs a pool of two or more with a [GLOBAL] key: ignored",
                mode=local.db_backup,
            )
        return sync
    key = g.key
    if local.db_backup == "replicate-from-peer":
        host = cfg.pool.host(peer)
        assert host is not None
        sync.tunnel = SyncTunnel.to_peer(
            reactor, key, me, peer, g.map_address(host.ip), g.sync_port
        )
        sync.before_redis.append(sync.tunnel)
        sync.monitor = ReplicaMonitor(peer, lambda: store(BACKUP).client, reactor, notify)
        sync.after_redis.append(sync.monitor)
        sync.probes["db-backup"] = sync.monitor.describe
    elif local.db_backup == "read-from":

        def ready() -> Deferred[Any]:
            return defer.gatherResults(
                [store(LOW).when_connected(), store(BACKUP).when_connected()]
            )

        sync.importer = BackupImport(
            peer, lambda: store(BACKUP), lambda: store(LOW), ready, reactor
        )
        sync.after_redis.append(sync.importer)
    server = sync_server(
        reactor,
        key,
        me,
        frozenset(names) - {me},
        g.listen.host,
        g.sync_port,
        (g.redis.low.host, g.redis.low.port),
        lambda: store(LOW).password,
    )
    sync.after_redis.append(server)
    sync.probes["sync"] = lambda: server.port is not None
    return sync
