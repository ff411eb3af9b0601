"""Per-account statistics (``crs-cli stats enable|disable|clear|export ACCOUNT``).

Disabled by default.  Everything lives in ``redis_low``::

    stats-enabled          set of account IDs whose clients are counted
    stats-uris:{ACCOUNT}   set of the account's URIs that have statistics
    stats:{ACCOUNT}:{URI}  hash: session-outgoing, session-incoming,
                           message-outgoing, message-incoming,
                           system-outgoing, system-incoming, period

Counted only while the account is enabled:

- ``session-outgoing`` / ``session-incoming``: a call invited (the
  :class:`~cryptify.crs.calls.core.SessionTable` placed it: the callee is
  attached, the invite was not refused), caller and callee;
- ``message-outgoing`` / ``system-outgoing``: a content / system message
  the CRS stored for its sender (a repeated post is not counted again;
  acks are not counted);
- ``message-incoming`` / ``system-incoming``: such a message when its
  recipient confirms delivery (``delivered``), which happens exactly once;
- ``period``: the key period a client attached with; ``updated`` in the
  export says whether it is the current month's (``yes``/``no``).

``disable`` stops counting and keeps what was counted; ``clear`` forgets it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.logger import Logger

from cryptify.crypto.identity import period_of

if TYPE_CHECKING:
    from txredisapi import RedisProtocol

    from cryptify.crs.attach.registry import Attachment
    from cryptify.crs.calls.session import Party
    from cryptify.crs.redis.store import RedisStore

log = Logger(namespace="cryptify.crs.stats")

ENABLED = "stats-enabled"
COUNTERS = (
    "session-outgoing",
    "session-incoming",
    "message-outgoing",
    "message-incoming",
    "system-outgoing",
    "system-incoming",
)
#: ``stats export`` columns, in the manual's order.
COLUMNS = ("tel-uri", *COUNTERS, "updated")
#: Message kinds counted, and the counter prefix of each.
_MESSAGE_COUNTERS = {"content": "message", "system": "system"}


#: Seconds the set of enabled accounts is trusted before it is read again.
ENABLED_TTL = 5.0


def stats_key(account: str, uri: str) -> str:
    return f"stats:{account}:{uri}"


def index_key(account: str) -> str:
    return f"stats-uris:{account}"


class Statistics:
    """Counters of enabled accounts, in Redis; ``store`` returns the ``redis_low`` store."""

    def __init__(self, store: Callable[[], RedisStore], clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        # Which accounts count, re-read at most every ENABLED_TTL seconds: a
        # message of an account without statistics then costs no round trip.
        self._enabled: frozenset[str] = frozenset()
        self._enabled_at: float | None = None

    def _client(self) -> RedisProtocol:
        return self.store().client

    # -- operator actions --------------------------------------------------------

    async def enabled(self, account: str) -> bool:
        now = self.clock()
        if self._enabled_at is None or now - self._enabled_at >= ENABLED_TTL:
            members = await self._client().smembers(ENABLED)
            self._enabled = frozenset(str(m) for m in members)
            self._enabled_at = now
        return account in self._enabled

    def may_count(self, account: str) -> bool:
        """Whether counting for ``account`` may do anything, without a round trip:
        False only while the cached set of enabled accounts is fresh and
        lacks it (so callers skip the counting coroutine per message)."""
        if not account:
            return False
        if self._enabled_at is None or self.clock() - self._enabled_at >= ENABLED_TTL:
            return True
        return account in self._enabled

    async def enable(self, account: str) -> None:
        await self._client().sadd(ENABLED, account)
        self._enabled_at = None

    async def disable(self, account: str) -> None:
        await self._client().srem(ENABLED, account)
        self._enabled_at = None

    async def clear(self, account: str) -> int:
        """Forget the account's statistics; return how many URIs had some."""
        client = self._client()
        uris = sorted(await client.smembers(index_key(account)))
        keys = [stats_key(account, uri) for uri in uris] + [index_key(account)]
        await client.delete(*keys)
        return len(uris)

    async def export(self, account: str) -> list[list[str]]:
        """Rows of :data:`COLUMNS`, one per URI, sorted by URI."""
        client = self._client()
        current = period_of(self.clock())
        rows = []
        for uri in sorted(await client.smembers(index_key(account))):
            fields = await client.hgetall(stats_key(account, uri))
            updated = "yes" if fields.get("period") == current else "no"
            rows.append([uri, *(str(fields.get(c, "0")) for c in COUNTERS), updated])
        return rows

    # -- counting ----------------------------------------------------------------

    async def count(self, account: str, uri: str, counter: str) -> bool:
        """Add one to ``counter`` of ``uri`` if ``account`` is enabled; say whether."""
        if not account or not await self.enabled(account):
            return False
        client = self._client()
        await client.sadd(index_key(account), uri)
        await client.hincrby(stats_key(account, uri), counter, 1)
        return True

    async def attached(self, account: str, uri: str, period: str) -> None:
        """Record the key period a client of an enabled account attached with."""
        if not period or not await self.enabled(account):
            return
        client = self._client()
        await client.sadd(index_key(account), uri)
        await client.hset(stats_key(account, uri), "period", period)

    async def message_posted(self, account: str, uri: str, kind: str) -> None:
        prefix = _MESSAGE_COUNTERS.get(kind)
        if prefix is not None:
            await self.count(account, uri, f"{prefix}-outgoing")

    async def message_delivered(self, account: str, uri: str, kind: str) -> None:
        prefix = _MESSAGE_COUNTERS.get(kind)
        if prefix is not None:
            await self.count(account, uri, f"{prefix}-incoming")

    # -- hooks (fire and forget) ---------------------------------------------------

    def _background(self, work: Coroutine[defer.Deferred[object], object, None]) -> None:
        defer.ensureDeferred(work).addErrback(
            lambda f: log.debug("statistics not recorded: {why}", why=f.getErrorMessage())
        )

    def on_attach(self, attachment: Attachment) -> None:
        """An :class:`~cryptify.crs.attach.registry.AttachRegistry` ``on_attach`` listener."""
        period = getattr(attachment, "period", "") or period_of(attachment.since)
        self._background(self.attached(attachment.account, attachment.uri, period))

    def on_invite(self, caller: Party, callee: Party) -> None:
        """A :class:`~cryptify.crs.calls.core.SessionTable` ``on_invite`` hook."""

        async def run() -> None:
            await self.count(caller.account, caller.uri, "session-outgoing")
            await self.count(callee.account, callee.uri, "session-incoming")

        self._background(run())
