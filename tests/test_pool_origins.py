"""The forwarder's origin map (``cryptify.crs.pool.origins``) in memory."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.pool import origins as origins_module
from cryptify.crs.pool.origins import MemoryOrigins, OriginMap, RedisOrigins
from tests.contracts import OriginStoreContract
from tests.fakes import FakeStore


class MemoryOriginsContractTests(OriginStoreContract, SynchronousTestCase):
    def setUp(self) -> None:
        self.origins = MemoryOrigins()

    def drive(self, work: Coroutine[Any, Any, None]) -> None:
        self.successResultOf(defer.ensureDeferred(work))


class _Down(MemoryOrigins):
    async def save(self, message_id: str, peer: str) -> None:
        raise ConnectionError("redis_low: not connected")


class OriginMapTests(SynchronousTestCase):
    def test_memory_first_durable_after_restart(self) -> None:
        """An entry is answered from memory at once; a new map on the same
        durable store (a restart) still finds it there, once."""
        durable = MemoryOrigins()
        first = OriginMap(durable)
        first.remember("m1", "crs2")
        self.assertEqual(durable.entries, {"m1": "crs2"})
        self.assertEqual(self.successResultOf(first.take("m1")), "crs2")
        self.assertEqual(durable.entries, {})
        first.remember("m2", "crs2")
        again = OriginMap(durable)
        self.assertFalse(self.successResultOf(again.take_if("m2", "crs3")))
        self.assertTrue(self.successResultOf(again.take_if("m2", "crs2")))
        self.assertIsNone(self.successResultOf(again.take("m2")))

    def test_memory_only_without_store(self) -> None:
        """Without a durable store the map is the bounded memory one."""
        self.patch(origins_module, "MAX_ORIGINS", 2)
        origins = OriginMap()
        for n in range(3):
            origins.remember(f"m{n}", "crs2")
        self.assertIsNone(self.successResultOf(origins.take("m0")))
        self.assertTrue(self.successResultOf(origins.take_if("m2", "crs2")))

    def test_store_out_of_reach(self) -> None:
        """A write the store refuses (logged as a warning) leaves the entry
        in memory, which still answers."""
        origins = OriginMap(_Down())
        origins.remember("m1", "crs2")
        self.assertEqual(self.successResultOf(origins.take("m1")), "crs2")

    def test_redis_keys(self) -> None:
        """In redis_low each origin is the key pool-origin:ID, expiring with
        the message."""
        calls: list[tuple[Any, ...]] = []

        class Client:
            async def set(self, key: str, value: str, expire: int) -> None:
                calls.append(("set", key, value, expire))

            async def get(self, key: str) -> str | None:
                return "crs2" if key == "pool-origin:m1" else None

            async def delete(self, *keys: str) -> None:
                calls.append(("delete", *keys))

        store = RedisOrigins(lambda: FakeStore(Client()), expire_after=60)
        self.successResultOf(defer.ensureDeferred(store.save("m1", "crs2")))
        self.assertEqual(self.successResultOf(defer.ensureDeferred(store.take("m1"))), "crs2")
        self.assertIsNone(self.successResultOf(defer.ensureDeferred(store.take("m9"))))
        self.assertEqual(
            calls, [("set", "pool-origin:m1", "crs2", 61), ("delete", "pool-origin:m1")]
        )
