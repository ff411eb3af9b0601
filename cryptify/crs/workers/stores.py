"""A worker's Redis stores: connections to the Redis its parent supervises
(``redis managed``) or to the external servers (``redis external``)."""

from __future__ import annotations

from twisted.application import service

from cryptify.config import CrsConfig, CrsLocalConfig
from cryptify.crs.redis.instance import HIGH, LOW, RedisInstance
from cryptify.crs.redis.services import ExternalRedis, external_password, redis_instances
from cryptify.crs.redis.store import RedisStore
from cryptify.reactor import IReactor
from cryptify.service import attach


class WorkerRedis(ExternalRedis):
    """``redis_high`` and ``redis_low`` for one worker; the parent runs them.

    The passwords of supervised children are read from the files the
    parent made before it started its workers.
    """

    names = (HIGH, LOW)

    def __init__(self, cfg: CrsConfig, local: CrsLocalConfig, reactor: IReactor) -> None:
        super().__init__(cfg, reactor)
        self.local = local

    def _instances(self) -> dict[str, RedisInstance]:
        found = redis_instances(self.cfg, self.local)
        return {i.name: i for i in found if i.name in self.names}

    def connect(self, name: str, label: str | None = None) -> RedisStore:
        """A new store (not started) to Redis ``name``."""
        g = self.cfg.global_
        if g.redis.mode == "managed":
            store = RedisStore.for_instance(self.reactor, self._instances()[name])
        else:
            where = g.redis.high if name == HIGH else g.redis.low
            password = external_password(self.cfg)
            store = RedisStore.tcp(self.reactor, where.host, where.port, password, name)
        if label is not None:
            store.name = label
        return store

    def startService(self) -> None:
        for name in self.names:
            attach(self, self.connect(name))
        service.MultiService.startService(self)
