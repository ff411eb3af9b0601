"""``db-backup``: watching the replica, importing from it, and building
the synchronization link's services.

- :class:`ReplicaMonitor` reads ``INFO replication`` from
  ``redis_backup`` every :data:`REPLICA_POLL` seconds for ``show
  services`` and logs (and notifies) the link going down and up.
- :class:`BackupImport` (``db-backup read-from``) copies the messages kept
  in ``redis_backup`` into the local message store once, idempotently.
- :func:`build_sync` makes what ``[POOL]`` and ``db-backup`` ask of this
  instance: the server end of :mod:`cryptify.crs.pool.sync` in any pool
  with a key, the tunnel and the monitor for ``replicate-from-peer``, the
  import for ``read-from``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cryptify.config import CrsConfig, CrsLocalConfig
from cryptify.crs.messages.store import MessageRefused, MessageStore
from cryptify.crs.pool.sync import SyncTunnel, sync_server
from cryptify.crs.pool.sync_core import (
    BadBackupMessage,
    InfoError,
    ReplicaStatus,
    backup_peer,
    check_backup_message,
    parse_replication_info,
)
from cryptify.crs.redis.instance import BACKUP, LOW, ReplicaOf
from cryptify.reactor import IReactor

log = Logger(namespace="cryptify.crs.pool.sync")

#: Seconds between two readings of the replica's INFO replication.
REPLICA_POLL = 5.0
#: Seconds before a failed ``read-from`` import is tried again, doubling
#: up to :data:`IMPORT_RETRY_MAX`.
IMPORT_RETRY = 1.0
IMPORT_RETRY_MAX = 30.0
#: Messages imported per round trip by ``read-from``.
IMPORT_CHUNK = 100
#: Where the imported message IDs are kept, per peer (a set in redis_low).
IMPORTED_PREFIX = "pool-import:"


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
    backup's known URIs (the message store's) become known locally.  The
    backup itself is only read.
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
        #: The wait before the next try after a failed run.
        self._pause: Deferred[None] | None = None

    def startService(self) -> None:
        service.Service.startService(self)
        self.done = defer.ensureDeferred(self._run())

    def stopService(self) -> None:
        service.Service.stopService(self)
        if self._pause is not None:
            self._pause.cancel()

    async def _run(self) -> dict[str, int]:
        """:meth:`run` once the stores are ready; a run that fails (a Redis
        child restarting, a command timing out on a busy host) is tried
        again, after 1 s doubling to 30 s, while the service runs: what it
        had imported is recorded, so the next run goes on from there."""
        delay = IMPORT_RETRY
        while self.running:
            try:
                await self.ready()
                return await self.run()
            except Exception:
                if not self.running:
                    break
                log.failure(
                    "db-backup read-from: import from {peer} failed; trying again in {delay:g} s",
                    peer=self.peer,
                    delay=delay,
                )
            self._pause = task.deferLater(self.clock, delay)
            try:
                await self._pause
            except defer.CancelledError:
                break
            finally:
                self._pause = None
            delay = min(2 * delay, IMPORT_RETRY_MAX)
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
        source = MessageStore(self.backup, self.clock.seconds)
        store = self._store()
        imported_key = IMPORTED_PREFIX + self.peer
        counts = {"imported": 0, "already": 0, "skipped": 0, "refused": 0}
        # the backup is read through the message store, which owns every key
        await store.learn(await source.known_uris())
        for recipient in await source.inboxes():
            # a page at a time: the backup is only read, so pages are stable
            start = 0
            while True:
                page = await source.inbox_page(recipient, start, IMPORT_CHUNK)
                if not page:
                    break
                await self._chunk(page, source, store, imported_key, counts)
                start += len(page)
        log.info(
            "db-backup read-from {peer}: {imported} messages imported, {already} already "
            "there, {skipped} unusable skipped, {refused} refused (retried at next start)",
            peer=self.peer,
            **counts,
        )
        return counts

    async def _chunk(
        self,
        ids: list[str],
        source: MessageStore,
        store: MessageStore,
        imported_key: str,
        counts: dict[str, int],
    ) -> None:
        low = self.low().client
        seen = await low.execute_command("SMISMEMBER", imported_key, *ids)
        posts: list[tuple[str, Deferred[Any]]] = []
        for message_id, already in zip(ids, seen, strict=True):
            if str(already) == "1":
                counts["already"] += 1
                continue
            fields = await source.raw_fields(message_id)
            if not fields:
                counts["skipped"] += 1
                continue
            try:
                message = check_backup_message(message_id, fields)
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
    reactor: IReactor,
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
