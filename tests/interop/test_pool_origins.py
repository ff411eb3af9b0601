"""The pool forwarder's durable origin map on a real redis-server (the
contract its memory fake keeps in ``tests.test_pool_origins``)."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Coroutine
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, TestCase

from cryptify.crs.pool.origins import RedisOrigins
from cryptify.crs.redis.store import RedisStore
from tests.contracts import OriginStoreContract
from tests.interop._procs import durable_redis, free_port, short_tempdir

PASSWORD = "interop-secret"


class RedisOriginsContractTests(OriginStoreContract, TestCase):
    timeout = 60

    def setUp(self) -> Any:
        if shutil.which("redis-server") is None:
            raise SkipTest("redis-server is not installed")
        port = free_port()
        proc = durable_redis(port, PASSWORD, short_tempdir(self))

        def stop() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=10)

        self.addCleanup(stop)
        redis = RedisStore.tcp(reactor, "127.0.0.1", port, PASSWORD, "redis_low")
        redis.startService()
        self.addCleanup(redis.stopService)
        self.origins = RedisOrigins(lambda: redis)
        return redis.when_connected()

    def drive(self, work: Coroutine[Any, Any, None]) -> defer.Deferred[None]:
        return defer.ensureDeferred(work)
