"""Store-and-forward messages, kept durably in ``redis_low``.

Keys (one recipient's inbox is a list, so messages leave in the order they
were posted, which keeps every sender's order)::

    msg:{ID}            hash: from, to, account, kind, time (ms), data (base64)
    inbox:{URI}         list of message IDs, oldest first
    dedup:{SENDER}:{N}  the ID a client's post N became (expires with the message)
    msg-expiry          sorted set: message ID by time stored

A post is one Lua script, so it is all or nothing: a repeated post (same
sender, same client id) answers the ID stored the first time instead of
storing the message twice, a full inbox refuses the post, and the message,
its index and its de-duplication key are written together.  The CRS
acknowledges a post (``posted``) only after the script has run; with
``redis_low``'s append-only file a Redis restart keeps it.  A message leaves
the store when its recipient confirms delivery (``delivered``) or when it
expires (:meth:`MessageStore.expire`, counted).

Content is opaque: the CRS stores the octets it received.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="cryptify.crs.message")

#: Messages one recipient may have waiting.
MAX_INBOX = 1000
#: Largest content stored, octets.
MAX_CONTENT = 48 * 1024
#: Undelivered messages are dropped after this many seconds (7 days).
EXPIRE_AFTER = 7 * 24 * 3600.0
#: Seconds between sweeps for expired messages.
EXPIRY_SWEEP = 60.0
#: Kinds of stored messages.
KINDS = ("content", "ack", "system")

_POST = """
if KEYS[5] ~= '' and redis.call('SISMEMBER', KEYS[5], ARGV[2]) == 0 then return {-2, ''} end
local existing = redis.call('GET', KEYS[3])
if existing then return {0, existing} end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[7]) then return {-1, ''} end
if KEYS[6] ~= '' then
  redis.call('HINCRBY', KEYS[6], 'post', 1)
  redis.call('HSET', KEYS[6], 'account', ARGV[3])
end
redis.call('HSET', KEYS[1], 'from', ARGV[1], 'to', ARGV[2], 'account', ARGV[3],
           'kind', ARGV[4], 'time', ARGV[5], 'data', ARGV[6], 'dedup', KEYS[3])
redis.call('RPUSH', KEYS[2], ARGV[9])
redis.call('SET', KEYS[3], ARGV[9], 'EX', ARGV[8])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[9])
return {1, ARGV[9]}
"""

_DELIVERED = """
local removed = redis.call('LREM', KEYS[2], 1, ARGV[1])
if removed == 0 then return {} end
local fields = redis.call('HMGET', KEYS[1], 'from', 'kind', 'dedup')
if ARGV[2] ~= '' and fields[1] then
  redis.call('HINCRBY', ARGV[2] .. fields[1], 'deliv', 1)
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return fields
"""

_EXPIRE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local key = 'msg:' .. id
  local to = redis.call('HGET', key, 'to')
  local dedup = redis.call('HGET', key, 'dedup')
  if to then redis.call('LREM', 'inbox:' .. to, 1, id) end
  if dedup then redis.call('DEL', dedup) end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], id)
end
return #ids
"""


class MessageRefused(Exception):
    """A post the store will not take; ``code`` is the UMSG error code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@attrs.frozen
class Stored:
    """A message as delivered to its recipient."""

    id: str
    sender: str
    recipient: str
    account: str
    kind: str
    time_ms: int
    data: bytes


@attrs.frozen
class Posted:
    """The answer to a post: the stored ID, whether it was a repeat, and
    (for a new message) the message as stored."""

    id: str
    duplicate: bool
    stored: Stored | None = None


def new_message_id() -> str:
    """A fresh message ID (time-ordered prefix, random tail)."""
    return f"{int(time.time() * 1000):x}-{secrets.token_hex(8)}"


class MessageStore:
    """Durable inboxes in Redis.  ``store`` returns the ``redis_low`` store."""

    def __init__(
        self,
        store: Callable[[], Any],
        clock: Callable[[], float] = time.time,
        max_inbox: int = MAX_INBOX,
        expire_after: float = EXPIRE_AFTER,
        new_id: Callable[[], str] = new_message_id,
    ) -> None:
        self.store = store
        self.clock = clock
        self.max_inbox = max_inbox
        self.expire_after = expire_after
        self.new_id = new_id
        self.expired = 0

    def _client(self) -> Any:
        return self.store().client

    async def post(
        self,
        sender: str,
        client_id: int,
        recipient: str,
        account: str,
        kind: str,
        data: bytes,
        known: str | None = None,
        counters: str | None = None,
    ) -> Posted:
        """Store a message once; a repeat of the same post answers the first ID.

        ``known``: a set the recipient must be in (else ``not-found``);
        ``counters``: a hash whose ``post`` field counts new posts -- both
        in the same atomic script as the store, so a post is one round trip.
        """
        if kind not in KINDS:
            raise MessageRefused("malformed", f"unknown message kind {kind!r}")
        if len(data) > MAX_CONTENT:
            raise MessageRefused("too-large", f"content over {MAX_CONTENT} octets")
        message_id = self.new_id()
        now_ms = int(self.clock() * 1000)
        keys = [
            f"msg:{message_id}",
            f"inbox:{recipient}",
            f"dedup:{sender}:{client_id}",
            "msg-expiry",
            known or "",
            counters or "",
        ]
        args = [
            sender,
            recipient,
            account,
            kind,
            str(now_ms),
            base64.b64encode(data).decode("ascii"),
            str(self.max_inbox),
            str(int(self.expire_after) + 1),
            message_id,
        ]
        status, stored_id = await self._client().eval(_POST, keys, args)
        if int(status) == -2:
            raise MessageRefused("not-found", f"{recipient} is not known to this CRS")
        if int(status) == -1:
            raise MessageRefused("inbox-full", f"{recipient} has {self.max_inbox} messages waiting")
        if int(status) == 0:
            return Posted(str(stored_id), duplicate=True)
        stored = Stored(message_id, sender, recipient, account, kind, now_ms, data)
        return Posted(message_id, duplicate=False, stored=stored)

    async def get(self, message_id: str) -> Stored | None:
        """One stored message, or None when it is gone."""
        fields = await self._client().hgetall(f"msg:{message_id}")
        if not fields:
            return None
        return Stored(
            str(message_id),
            fields["from"],
            fields["to"],
            fields["account"],
            fields["kind"],
            int(fields["time"]),
            base64.b64decode(fields["data"]),
        )

    async def waiting(self, recipient: str, limit: int = 100) -> list[Stored]:
        """The recipient's messages, oldest first."""
        ids = await self._client().lrange(f"inbox:{recipient}", 0, limit - 1)
        result = []
        for message_id in ids:
            stored = await self.get(str(message_id))
            if stored is not None:
                result.append(stored)
        return result

    async def delivered(
        self, recipient: str, message_id: str, counters_prefix: str = ""
    ) -> tuple[str, str] | None:
        """The recipient has the message: drop it; return (sender, kind) or None if unknown.

        With ``counters_prefix``, the hash ``PREFIX + sender`` counts it in
        its ``deliv`` field, in the same script.
        """
        keys = [f"msg:{message_id}", f"inbox:{recipient}", "msg-expiry"]
        fields = await self._client().eval(_DELIVERED, keys, [message_id, counters_prefix])
        if not fields:
            return None
        # The de-duplication key stays until it expires: a sender repeating
        # the post now gets the same ID back, not a second delivery.
        sender, kind, _dedup = fields
        return str(sender), str(kind)

    async def count(self, recipient: str) -> int:
        return int(await self._client().llen(f"inbox:{recipient}"))

    async def expire(self, batch: int = 1000) -> int:
        """Drop messages older than ``expire_after``; return (and count) how many."""
        cutoff = int((self.clock() - self.expire_after) * 1000)
        dropped = int(await self._client().eval(_EXPIRE, ["msg-expiry"], [str(cutoff), str(batch)]))
        self.expired += dropped
        return dropped


class MessageExpiry(service.Service):
    """Drop expired messages every :data:`EXPIRY_SWEEP` seconds while running."""

    def __init__(self, store: MessageStore, clock: Any) -> None:
        self.store = store
        self.loop = LoopingCall(self.sweep)
        self.loop.clock = clock

    def sweep(self) -> defer.Deferred[None]:
        async def run() -> None:
            try:
                dropped = await self.store.expire()
            except Exception as exc:
                log.debug("message expiry skipped: {why}", why=str(exc))
                return
            if dropped:
                log.info("{count} undelivered messages expired", count=dropped)

        return defer.ensureDeferred(run())

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.loop.start(EXPIRY_SWEEP, now=False)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self.loop.running:
            self.loop.stop()
