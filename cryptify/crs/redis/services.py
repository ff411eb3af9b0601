"""The CRS's Redis as services: supervised children or external servers, and their stores.

``redis managed`` (the default): :class:`ManagedRedis` runs the instances
of :func:`redis_instances` under a :class:`~cryptify.crs.redis.supervisor.RedisSupervisor`
and connects one :class:`~cryptify.crs.redis.store.RedisStore` to each.
``redis external``: :class:`ExternalRedis` only connects the stores, to
servers someone else runs (password from ``redis-password-file``).
Either answers :meth:`store` by name once started.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from twisted.application import service
from twisted.internet import defer
from twisted.python.failure import Failure

from cryptify.config import CrsConfig, CrsLocalConfig
from cryptify.config.crs import Endpoint
from cryptify.crs.redis.instance import (
    BACKUP,
    HIGH,
    LOW,
    RedisInstance,
    ReplicaOf,
    load_password,
)
from cryptify.crs.redis.store import RedisStore
from cryptify.crs.redis.supervisor import Notify, RedisSupervisor
from cryptify.reactor import IReactor
from cryptify.service import StartupError, attach

#: Called with the failure when the supervised Redis cannot start after
#: the reactor runs (the program then stops with that reason).
StartFailed = Callable[[Failure], None]


def wanted_redis(local: CrsLocalConfig) -> list[tuple[str, str]]:
    """(name, config field) of the Redis servers this instance uses."""
    wanted = [(HIGH, "high"), (LOW, "low")]
    if local.db_backup in ("replicate-from-peer", "read-from"):
        wanted.append(("redis_backup", "backup"))
    return wanted


def redis_instances(
    cfg: CrsConfig, local: CrsLocalConfig, backup_master: ReplicaOf | None = None
) -> list[RedisInstance]:
    """The Redis children this instance supervises (reads or makes passwords).

    ``backup_master``: what ``redis_backup`` replicates (the sync tunnel,
    with ``replicate-from-peer``); with ``read-from`` it runs on its own,
    serving what it kept.
    """
    g = cfg.global_
    data, logs = Path(g.data_dir) / "redis", Path(g.log_dir)
    instances = []
    for name, field in wanted_redis(local):
        where: Endpoint = getattr(g.redis, field)
        follows = name == BACKUP and local.db_backup == "replicate-from-peer"
        replica = backup_master if follows else None
        instances.append(
            RedisInstance(
                name=name,
                password=load_password(data, name),
                data_dir=data,
                log_dir=logs,
                host=where.host,
                port=where.port,
                replica_of=replica,
            )
        )
    return instances


def external_password(cfg: CrsConfig) -> str | None:
    """The password of external Redis servers, from redis-password-file."""
    path = cfg.global_.redis.password_file
    if not path:
        return None
    try:
        with open(path) as f:
            text: str = f.read().strip()
    except OSError as exc:
        raise StartupError(f"cannot read redis-password-file {path}: {exc.strerror}") from exc
    return text or None


class ExternalRedis(service.MultiService):
    """Stores connected to Redis servers someone else runs."""

    names = (HIGH, LOW)

    def __init__(self, cfg: CrsConfig, reactor: IReactor) -> None:
        service.MultiService.__init__(self)
        self.cfg = cfg
        self.reactor = reactor

    def store(self, name: str) -> RedisStore:
        """The store connected to Redis ``name`` (after start)."""
        for store in self:
            if isinstance(store, RedisStore) and store.name == name:
                return store
        raise KeyError(name)

    def status(self, name: str) -> bool:
        """Whether the store of ``name`` is connected (``show services``)."""
        return any(isinstance(s, RedisStore) and s.connected for s in self if s.name == name)

    def startService(self) -> None:
        g = self.cfg.global_
        password = external_password(self.cfg)
        for name, where in ((HIGH, g.redis.high), (LOW, g.redis.low)):
            attach(self, RedisStore.tcp(self.reactor, where.host, where.port, password, name))
        service.MultiService.startService(self)


class ManagedRedis(service.MultiService):
    """The supervised Redis children and the stores connected to them.

    The instances (and their password files) are made when the service
    starts, not when the tree is built.  The supervisor starts first; a
    failure to start stops the CRS with its reason (``start_failed``).  On
    stop the stores close before the children are stopped.
    """

    def __init__(
        self,
        cfg: CrsConfig,
        local: CrsLocalConfig,
        reactor: IReactor,
        notify: Notify,
        start_failed: StartFailed,
        backup_master: Callable[[], ReplicaOf | None] = lambda: None,
    ) -> None:
        service.MultiService.__init__(self)
        self.backup_master = backup_master
        self.cfg = cfg
        self.local = local
        self.reactor = reactor
        self.notify = notify
        self.start_failed = start_failed
        self.supervisor: RedisSupervisor | None = None
        self.stores: list[RedisStore] = []
        self.names = tuple(name for name, _ in wanted_redis(local))

    def store(self, name: str) -> RedisStore:
        """The store connected to Redis ``name`` (after start)."""
        for store in self.stores:
            if store.name == name:
                return store
        raise KeyError(name)

    def status(self, name: str) -> bool:
        """Whether the child ``name`` runs (``show services``)."""
        return self.supervisor is not None and self.supervisor.status().get(name) == "active"

    def startService(self) -> None:
        g = self.cfg.global_
        try:
            instances = redis_instances(self.cfg, self.local, self.backup_master())
        except (OSError, ValueError) as exc:
            raise StartupError(f"redis: {exc}") from exc
        self.supervisor = RedisSupervisor.with_reactor(
            self.reactor, instances, self.notify, executable=g.redis.binary
        )
        self.stores = [RedisStore.for_instance(self.reactor, i) for i in instances]
        attach(self, *self.stores)
        service.Service.startService(self)
        self.supervisor.startService().addErrback(self.start_failed)
        for store in self.stores:
            store.startService()

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)

        async def stop() -> None:
            for store in self.stores:
                await defer.maybeDeferred(store.stopService)
            if self.supervisor is not None:
                await self.supervisor.stopService()

        return defer.ensureDeferred(stop())


Redis = ManagedRedis | ExternalRedis


def stores_ready(redis: Redis) -> bool:
    """Whether both Redis stores are connected (clients may attach)."""
    try:
        return all(redis.store(name).connected for name in (HIGH, LOW))
    except KeyError:
        return False
