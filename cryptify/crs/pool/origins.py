"""Where a message's other copy may be: the forwarder's origin map, kept
durably so that a restart does not forget it.

A member that took a message forwarded (or handed) by a peer, or whose
forward to a peer timed out, remembers that peer under the message ID:
when the recipient confirms the message, that peer is told ``msg-gone``
and drops its copy (``docs/pool.md``, "Two copies of one ID").  The map
was in memory only, so a member restarted between storing and delivering
forgot it, and both copies could reach the recipient.  Now every entry
is also written to ``redis_low`` (``pool-origin:ID``, expiring with the
message, :data:`~cryptify.crs.messages.store.EXPIRE_AFTER`), and a lookup
that misses in memory asks Redis.  A write that fails (Redis out of reach)
is logged and the entry stays in memory only, as before.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cryptify.crs.messages.store import EXPIRE_AFTER

log = Logger(namespace="cryptify.crs.pool")

#: The ``redis_low`` key of a message's origin.
ORIGIN_KEY = "pool-origin:{}"


class OriginStore(Protocol):
    """The durable side of the origin map."""

    async def save(self, message_id: str, peer: str) -> None:
        """Remember ``peer`` for ``message_id`` (until the message expires)."""

    async def take(self, message_id: str) -> str | None:
        """The peer remembered for ``message_id`` (None: none), forgotten."""

    async def peek(self, message_id: str) -> str | None:
        """The peer remembered for ``message_id``, kept."""


class RedisOrigins:
    """:class:`OriginStore` in ``redis_low``; ``store`` returns its
    :class:`~cryptify.crs.redis.store.RedisStore`."""

    def __init__(self, store: Callable[[], Any], expire_after: float = EXPIRE_AFTER) -> None:
        self.store = store
        self.expire_after = int(expire_after) + 1

    async def save(self, message_id: str, peer: str) -> None:
        key = ORIGIN_KEY.format(message_id)
        await self.store().client.set(key, peer, expire=self.expire_after)

    async def take(self, message_id: str) -> str | None:
        client = self.store().client
        key = ORIGIN_KEY.format(message_id)
        found = await client.get(key)
        if found is not None:
            await client.delete(key)
        return None if found is None else str(found)

    async def peek(self, message_id: str) -> str | None:
        found = await self.store().client.get(ORIGIN_KEY.format(message_id))
        return None if found is None else str(found)


class MemoryOrigins:
    """:class:`OriginStore` in a dict (tests; a pool member without one
    keeps its origins in memory only)."""

    def __init__(self) -> None:
        self.entries: dict[str, str] = {}

    async def save(self, message_id: str, peer: str) -> None:
        self.entries[message_id] = peer

    async def take(self, message_id: str) -> str | None:
        return self.entries.pop(message_id, None)

    async def peek(self, message_id: str) -> str | None:
        return self.entries.get(message_id)


#: Origins kept in memory at most (the oldest are forgotten first; with an
#: :class:`OriginStore` they are still found there).
MAX_ORIGINS = 100_000


class OriginMap:
    """The origin map: the last :data:`MAX_ORIGINS` entries in memory and,
    with ``durable``, every entry in an :class:`OriginStore` too.  A lookup
    answers from memory when it can (synchronously: the Deferred has fired),
    and asks the store otherwise."""

    def __init__(self, durable: OriginStore | None = None) -> None:
        self.durable = durable
        self._memory: OrderedDict[str, str] = OrderedDict()

    def remember(self, message_id: str, peer: str) -> None:
        self._memory[message_id] = peer
        while len(self._memory) > MAX_ORIGINS:
            self._memory.popitem(last=False)
        if self.durable is not None:
            self._background(self.durable.save(message_id, peer), message_id)

    def take(self, message_id: str) -> Deferred[str | None]:
        """The origin of ``message_id`` (None: none known), forgotten."""
        known = self._memory.pop(message_id, None)
        if self.durable is None:
            return defer.succeed(known)
        if known is not None:
            self._background(self.durable.take(message_id), message_id)
            return defer.succeed(known)
        return defer.ensureDeferred(self.durable.take(message_id))

    def take_if(self, message_id: str, peer: str) -> Deferred[bool]:
        """Whether ``peer`` is the origin of ``message_id``; if so it is
        forgotten."""
        known = self._memory.get(message_id)
        if known is not None or self.durable is None:
            if known != peer:
                return defer.succeed(False)
            return self.take(message_id).addCallback(lambda _: True)
        durable = self.durable

        async def look() -> bool:
            if await durable.peek(message_id) != peer:
                return False
            await durable.take(message_id)
            return True

        return defer.ensureDeferred(look())

    def _background(self, work: Coroutine[Any, Any, object], message_id: str) -> None:
        defer.ensureDeferred(work).addErrback(
            lambda f: log.warn(
                "origin of message {id} not kept durably: {why}",
                id=message_id,
                why=f.getErrorMessage(),
            )
        )
