"""Where a message's other copy may be: the forwarder's origin map and
follow map, and the ``msg-gone`` not yet acknowledged, all kept durably so
that a restart does not forget them.

A member that took a message forwarded (or handed) by a peer, or whose
forward (or hand-off) to a peer timed out, remembers that peer under the
message ID (the *origin*): when the recipient confirms the message, that
peer is told ``msg-gone`` and drops its copy (``docs/pool.md``, "Two
copies of one ID").  A member that handed such a copy on to a third member
remembers both (the *follow* entry: the origin and the member holding the
copy now) and passes the origin's ``msg-gone`` on.  Each ``msg-gone`` is
sent until the peer acknowledges it (``msg-gone-ok``) or the message
expires: the *pending* set (:mod:`cryptify.crs.pool.gone`).

In ``redis_low`` (:class:`RedisOrigins`): ``pool-origin:ID`` (the peer),
``pool-follow:ID`` (``ORIGIN HOLDER``), both expiring with the message
(:data:`~cryptify.crs.messages.store.EXPIRE_AFTER`), and the sorted set
``pool-gone`` (members ``PEER ID RECIPIENT``, scored by the time after
which the message has expired everywhere).  The maps keep the last
:data:`MAX_ORIGINS` entries in memory too, and a lookup that misses in
memory asks Redis.  A write that fails (Redis out of reach) is logged and
the entry stays in memory only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cryptify.crs.messages.store import EXPIRE_AFTER

log = Logger(namespace="cryptify.crs.pool")

#: The ``redis_low`` key of a message's origin.
ORIGIN_KEY = "pool-origin:{}"
#: The ``redis_low`` key of a copy handed on and followed.
FOLLOW_KEY = "pool-follow:{}"
#: The ``redis_low`` sorted set of the ``msg-gone`` not acknowledged yet.
GONE_KEY = "pool-gone"
#: Adds pending ``msg-gone`` (ARGV: score, member, ...) to KEYS[1] and
#: deletes the other KEYS (an origin, a follow entry): one round trip.
_ADD_GONES = """
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
for i = 1, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 0
"""


@attrs.frozen
class Gone:
    """A ``msg-gone`` to send ``peer`` until it acknowledges it: message
    ``id`` was confirmed by ``recipient``; the message has expired
    everywhere after ``until`` (Unix time, seconds)."""

    peer: str
    id: str
    recipient: str
    until: float

    def member(self) -> str:
        """Its member of the ``pool-gone`` set (none of the three has a space)."""
        return f"{self.peer} {self.id} {self.recipient}"

    @classmethod
    def parse(cls, member: str, until: float) -> Gone | None:
        parts = member.split(" ")
        if len(parts) != 3 or not all(parts):
            return None
        return cls(parts[0], parts[1], parts[2], until)


class OriginStore(Protocol):
    """The durable side of the origin map, the follow map and the pending
    ``msg-gone``."""

    async def save(self, message_id: str, peer: str) -> None:
        """Remember ``peer`` for ``message_id`` (until the message expires)."""

    async def take(self, message_id: str) -> str | None:
        """The peer remembered for ``message_id`` (None: none), forgotten."""

    async def peek(self, message_id: str) -> str | None:
        """The peer remembered for ``message_id``, kept."""

    async def save_follow(self, message_id: str, origin: str, holder: str) -> None:
        """The copy of ``message_id`` whose twin may be at ``origin`` went
        to ``holder`` (until the message expires)."""

    async def peek_follow(self, message_id: str) -> tuple[str, str] | None:
        """(origin, holder) of ``message_id`` followed, or None."""

    async def forget_follow(self, message_id: str) -> None:
        """Forget the follow entry of ``message_id``."""

    async def find(self, message_id: str) -> tuple[str | None, tuple[str, str] | None]:
        """The origin and the follow entry of ``message_id`` at once."""

    async def add_gones(
        self, gones: list[Gone], message_id: str, origin: bool, follow: bool
    ) -> None:
        """Keep ``gones`` until :meth:`remove_gones` and, in the same step,
        forget the origin (``origin``) and the follow entry (``follow``)
        of ``message_id``."""

    async def remove_gones(self, gones: list[Gone]) -> None:
        """``gones`` were acknowledged (or have expired)."""

    async def pending_gones(self, now: float) -> list[Gone]:
        """Every ``msg-gone`` kept that expires after ``now`` (those that
        expired are forgotten)."""


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

    async def save_follow(self, message_id: str, origin: str, holder: str) -> None:
        key = FOLLOW_KEY.format(message_id)
        await self.store().client.set(key, f"{origin} {holder}", expire=self.expire_after)

    async def peek_follow(self, message_id: str) -> tuple[str, str] | None:
        return _follow_entry(await self.store().client.get(FOLLOW_KEY.format(message_id)))

    async def forget_follow(self, message_id: str) -> None:
        await self.store().client.delete(FOLLOW_KEY.format(message_id))

    async def find(self, message_id: str) -> tuple[str | None, tuple[str, str] | None]:
        keys = [ORIGIN_KEY.format(message_id), FOLLOW_KEY.format(message_id)]
        origin, follow = await self.store().client.mget(keys)
        return (None if origin is None else str(origin)), _follow_entry(follow)

    async def add_gones(
        self, gones: list[Gone], message_id: str, origin: bool, follow: bool
    ) -> None:
        keys = [GONE_KEY]
        if origin:
            keys.append(ORIGIN_KEY.format(message_id))
        if follow:
            keys.append(FOLLOW_KEY.format(message_id))
        argv: list[object] = []
        for gone in gones:
            argv += [int(gone.until), gone.member()]
        await self.store().client.eval(_ADD_GONES, keys, argv)

    async def remove_gones(self, gones: list[Gone]) -> None:
        if gones:
            await self.store().client.zrem(GONE_KEY, *[g.member() for g in gones])

    async def pending_gones(self, now: float) -> list[Gone]:
        client = self.store().client
        await client.zremrangebyscore(GONE_KEY, "-inf", f"({int(now)}")
        found = await client.zrangebyscore(GONE_KEY, int(now), "+inf", withscores=True)
        gones = [Gone.parse(str(member), float(score)) for member, score in found]
        return [g for g in gones if g is not None]


class MemoryOrigins:
    """:class:`OriginStore` in dicts (tests; a pool member without one
    keeps its origins in memory only)."""

    def __init__(self) -> None:
        self.entries: dict[str, str] = {}
        self.follows: dict[str, tuple[str, str]] = {}
        self.gones: dict[str, Gone] = {}

    async def save(self, message_id: str, peer: str) -> None:
        self.entries[message_id] = peer

    async def take(self, message_id: str) -> str | None:
        return self.entries.pop(message_id, None)

    async def peek(self, message_id: str) -> str | None:
        return self.entries.get(message_id)

    async def save_follow(self, message_id: str, origin: str, holder: str) -> None:
        self.follows[message_id] = (origin, holder)

    async def peek_follow(self, message_id: str) -> tuple[str, str] | None:
        return self.follows.get(message_id)

    async def forget_follow(self, message_id: str) -> None:
        self.follows.pop(message_id, None)

    async def find(self, message_id: str) -> tuple[str | None, tuple[str, str] | None]:
        return await self.peek(message_id), await self.peek_follow(message_id)

    async def add_gones(
        self, gones: list[Gone], message_id: str, origin: bool, follow: bool
    ) -> None:
        for gone in gones:
            self.gones[gone.member()] = gone
        if origin:
            self.entries.pop(message_id, None)
        if follow:
            self.follows.pop(message_id, None)

    async def remove_gones(self, gones: list[Gone]) -> None:
        for gone in gones:
            self.gones.pop(gone.member(), None)

    async def pending_gones(self, now: float) -> list[Gone]:
        for key in [k for k, g in self.gones.items() if g.until < now]:
            del self.gones[key]
        return sorted(self.gones.values(), key=lambda g: (g.until, g.member()))


#: Origins (and follow entries) kept in memory at most (the oldest are
#: forgotten first; with an :class:`OriginStore` they are still found there).
MAX_ORIGINS = 100_000


class OriginMap:
    """The origin map and the follow map: the last :data:`MAX_ORIGINS`
    entries of each in memory and, with ``durable``, every entry in an
    :class:`OriginStore` too.  A lookup answers from memory when it can
    (synchronously: the Deferred has fired), and asks the store otherwise."""

    def __init__(self, durable: OriginStore | None = None) -> None:
        self.durable = durable
        self._memory: OrderedDict[str, str] = OrderedDict()
        self._follows: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def remember(self, message_id: str, peer: str) -> None:
        _bounded(self._memory, message_id, peer)
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

    def peek(self, message_id: str) -> Deferred[str | None]:
        """The origin of ``message_id`` (None: none known), kept."""
        known = self._memory.get(message_id)
        if known is not None or self.durable is None:
            return defer.succeed(known)
        return defer.ensureDeferred(self.durable.peek(message_id))

    def forget(self, message_id: str) -> Deferred[None]:
        """Forget the origin of ``message_id`` (fires once the store did)."""
        self._memory.pop(message_id, None)
        if self.durable is None:
            return defer.succeed(None)
        return defer.ensureDeferred(self.durable.take(message_id)).addCallback(lambda _: None)

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

    # -- the follow map ------------------------------------------------------

    def follow(self, message_id: str, holder: str) -> Deferred[None]:
        """This member's copy of ``message_id`` goes to ``holder``: if
        another member may hold a twin (its origin), the origin's
        ``msg-gone`` is passed on to ``holder`` from now on.  Fires once
        the follow entry is stored (before the origin is forgotten)."""

        async def move() -> None:
            origin = await self.peek(message_id)
            if origin is None or origin == holder:
                return
            _bounded(self._follows, message_id, (origin, holder))
            if self.durable is not None:
                try:
                    await self.durable.save_follow(message_id, origin, holder)
                except Exception as e:
                    log.warn(
                        "copy of message {id} handed to {holder} not followed durably: {why}",
                        id=message_id,
                        holder=holder,
                        why=str(e),
                    )
                    return
            await self.forget(message_id)

        return defer.ensureDeferred(move())

    def forgotten(self, message_id: str) -> None:
        """The store forgot ``message_id``'s origin and follow entry
        (:meth:`OriginStore.add_gones`): so does the memory."""
        self._memory.pop(message_id, None)
        self._follows.pop(message_id, None)

    def lookup(self, message_id: str) -> Deferred[tuple[str | None, tuple[str, str] | None]]:
        """The origin and the follow entry of ``message_id``: from memory
        when it has either, else from the store in one round trip."""
        origin, followed = self._memory.get(message_id), self._follows.get(message_id)
        if origin is not None or followed is not None or self.durable is None:
            return defer.succeed((origin, followed))
        return defer.ensureDeferred(self.durable.find(message_id))

    def _background(self, work: Coroutine[Any, Any, object], message_id: str) -> None:
        defer.ensureDeferred(work).addErrback(
            lambda f: log.warn(
                "origin of message {id} not kept durably: {why}",
                id=message_id,
                why=f.getErrorMessage(),
            )
        )


def _follow_entry(found: object) -> tuple[str, str] | None:
    parts = str(found).split(" ") if found is not None else []
    return (parts[0], parts[1]) if len(parts) == 2 else None


def _bounded(entries: OrderedDict[str, Any], key: str, value: Any) -> None:
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > MAX_ORIGINS:
        entries.popitem(last=False)
