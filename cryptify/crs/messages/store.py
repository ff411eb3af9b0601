"""Store-and-forward messages, kept durably in ``redis_low``.

Keys (one recipient's inbox is a list, so messages leave in the order they
were posted, which keeps every sender's order)::

    msg:{ID}              hash: from, to, inbox, account, kind, time (ms), data (base64), dedup
    inbox:{URI}           list of message IDs, oldest first (URI without extension)
    dedup:{SENDER}:{SCOPE}  "ID DIGEST": what a post became (expires with the message);
                          "ID DIGEST handed" once handed to another pool member
    msg-expiry            sorted set: message ID by time stored

A post is one Lua function, so it is all or nothing.  Its retry scope
(:func:`retry_scope`) says which posts are the same message: the
client's 128-bit message ``key`` when the post has one (unique across
connections, processes and devices), else the request id *on the
connection it came on* -- never a request id alone, which every new
connection starts again from 1.  A repeat in the same scope with the
same recipient, kind and content (the digest) answers the ID stored the
first time instead of storing the message twice; a repeat with anything
else different is refused ``key-reused`` and stores nothing.  A full
inbox refuses the post, and the message, its index and its
de-duplication key are written together.  The posts (and the
deliveries) that arrive in one reactor turn go to Redis as one script
call (:mod:`cryptify.crs.redis.batch`); a post Redis fails is refused on
its own: ``unavailable`` (retry later, same key) when Redis could not
be reached, ``internal`` otherwise.  The CRS acknowledges a post
(``posted``) only after the script has run; with ``redis_low``'s
append-only file a Redis restart keeps it.  A message leaves the store
when its recipient confirms delivery (``delivered``) or when it expires
(:meth:`MessageStore.expire`, counted).

The recipient is kept as posted (``tel:+8888;101`` keeps its extension,
which a CIG needs to route it); the inbox is the base number's.

Content is opaque: the CRS stores the octets it received.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.crs.redis.batch import BatchFailed, ScriptBatch
from cryptify.protocols.umsg import base_uri

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
#: The set of URIs that have attached to this CRS, or in a pool to any of
#: its members, at some time (a post to any other is refused ``not-found``).
KNOWN_URIS = "known-uris"
#: Per-URI counters for ``show message``: ``msgstat:{URI}`` is a hash of
#: ``post``, ``deliv``, ``read`` (Unix seconds) and ``account``.
STAT_PREFIX = "msgstat:"


def stat_key(uri: str) -> str:
    """The counters hash of ``uri``."""
    return STAT_PREFIX + uri


#: A batch of posts (:class:`~cryptify.crs.redis.batch.ScriptBatch`).  ARGV:
#: inbox limit, de-duplication seconds, then per post (one argument, the
#: fields joined by NUL octets): ID, sender,
#: de-duplication key, recipient (as posted), inbox owner (its base
#: number), account, kind, time (ms), data, known set or '', counters hash
#: or '', digest.  Answers per post: 1 stored, -1 inbox full, -2 recipient
#: unknown, -3 the retry key was used for another message, "0 ID" a
#: repeat.  The expiry index is written first, so a post that fails half
#: way is still swept away; the de-duplication key and the counters last,
#: so a repeat of it is stored anew and it is not counted.
_POST = """
local HEADER, STRIDE = 2, 12
local function item(f)
  local id, sender, dedup, to, owner = f[1], f[2], f[3], f[4], f[5]
  local account, kind, time = f[6], f[7], f[8]
  local known, counters, digest = f[10], f[11], f[12]
  local existing = redis.call('GET', dedup)
  if existing then
    local first, kept, state = string.match(existing, '^(%S+) (%S+)( ?%S*)$')
    if state ~= ' handed' then
      if first == nil or kept ~= digest then return '-3' end
      return '0 ' .. first
    end
  end
  if known ~= '' and redis.call('SISMEMBER', known, owner) == 0 then return '-2' end
  local inbox = 'inbox:' .. owner
  if redis.call('LLEN', inbox) >= tonumber(ARGV[1]) then return '-1' end
  redis.call('ZADD', 'msg-expiry', time, id)
  redis.call('HSET', 'msg:' .. id, 'from', sender, 'to', to, 'inbox', owner,
             'account', account, 'kind', kind, 'time', time, 'data', f[9],
             'dedup', dedup)
  redis.call('RPUSH', inbox, id)
  redis.call('SET', dedup, id .. ' ' .. digest, 'EX', ARGV[2])
  if counters ~= '' then
    redis.call('HINCRBY', counters, 'post', 1)
    redis.call('HSET', counters, 'account', account)
  end
  return '1'
end
"""

#: A batch of deliveries.  ARGV: per delivery (fields joined as above): recipient, message ID,
#: counters prefix or ''.  Answers per delivery: '' when the message is not
#: (or no longer) in the recipient's inbox, else "SENDER KIND".
_DELIVERED = """
local HEADER, STRIDE = 0, 3
local function item(f)
  local id, prefix = f[2], f[3]
  if redis.call('LREM', 'inbox:' .. f[1], 1, id) == 0 then return '' end
  local key = 'msg:' .. id
  local fields = redis.call('HMGET', key, 'from', 'kind')
  redis.call('DEL', key)
  redis.call('ZREM', 'msg-expiry', id)
  if not fields[1] then return '' end
  if prefix ~= '' then redis.call('HINCRBY', prefix .. fields[1], 'deliv', 1) end
  return fields[1] .. ' ' .. (fields[2] or 'content')
end
"""

#: A message handed to another pool member: drop it here like a delivery,
#: and mark its de-duplication key ``handed`` (same expiry): a copy of it
#: coming back (the slot moved back) is stored again, while a copy of a
#: message delivered here, or still here, is answered as a repeat.  KEYS:
#: the inbox; ARGV: the message ID.  Answers 1 when it was there.
_HANDED = """
local id = ARGV[1]
if redis.call('LREM', KEYS[1], 1, id) == 0 then return 0 end
local key = 'msg:' .. id
local dedup = redis.call('HGET', key, 'dedup')
redis.call('DEL', key)
redis.call('ZREM', 'msg-expiry', id)
if dedup then
  local existing = redis.call('GET', dedup)
  if existing and string.match(existing, '^%S+ %S+$') then
    redis.call('SET', dedup, existing .. ' handed', 'KEEPTTL')
  end
end
return 1
"""

_EXPIRE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local key = 'msg:' .. id
  local fields = redis.call('HMGET', key, 'inbox', 'to', 'dedup')
  local owner, dedup = fields[1] or fields[2], fields[3]
  if owner then redis.call('LREM', 'inbox:' .. owner, 1, id) end
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


def too_large(data: bytes) -> defer.Deferred[Any] | None:
    """The refusal of content over :data:`MAX_CONTENT` (as the store gives
    it, also where a post goes on elsewhere), or None if it fits."""
    if len(data) > MAX_CONTENT:
        return defer.fail(MessageRefused("too-large", f"content over {MAX_CONTENT} octets"))
    return None


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
    #: The retry scope it was posted in (:func:`retry_scope`), when known:
    #: a copy handed to another pool instance carries it, so that the copy
    #: and a retry of the post made there are recognised as one message.
    scope: str | None = None


@attrs.frozen
class UriCounters:
    """One URI's message counters (a row of ``show message``)."""

    uri: str
    posted: int
    delivered: int
    #: When it last fetched (Unix seconds), None if never.
    read: int | None
    account: str | None


def _count(value: str | None) -> int:
    return int(value) if value is not None and value.isascii() and value.isdigit() else 0


@attrs.frozen
class Posted:
    """The answer to a post: the stored ID, whether it was a repeat, and
    (for a new message) the message as stored."""

    id: str
    duplicate: bool
    stored: Stored | None = None


def new_message_id(now: float) -> str:
    """A fresh message ID at ``now`` (time-ordered prefix, random tail)."""
    return f"{int(now * 1000):x}-{secrets.token_hex(8)}"


def retry_scope(key: bytes | None, connection: str, request_id: int | None) -> str:
    """Which posts of one sender are the same message.

    With a message ``key`` (16 octets the client chose at random for this
    message), the key alone: a retry from another connection, process or
    device is recognised.  Without one, the request id on this connection
    (``connection`` is unique to it, across restarts): a repeat on the same
    connection is recognised, and a later connection that starts its ids
    again from 1 is never mistaken for a repeat.
    """
    if key is not None:
        return "key:" + key.hex()
    return f"conn:{connection}:{request_id}"


def post_digest(to: str, kind: str, data: bytes) -> str:
    """What a repeat must match: recipient (as posted), kind and content."""
    h = hashlib.sha256()
    for part in (to.encode("utf-8"), kind.encode("ascii"), data):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:32]


class MessageStore:
    """Durable inboxes in Redis.  ``store`` returns the ``redis_low`` store.

    Posts and deliveries are batched per reactor turn on ``scheduler``
    (by default the store's own clock, :attr:`RedisStore.clock`).
    """

    def __init__(
        self,
        store: Callable[[], Any],
        clock: Callable[[], float],
        max_inbox: int = MAX_INBOX,
        expire_after: float = EXPIRE_AFTER,
        new_id: Callable[[], str] | None = None,
        scheduler: IReactorTime | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.max_inbox = max_inbox
        self.expire_after = expire_after
        self.new_id = new_id or (lambda: new_message_id(self.clock()))
        self.scheduler = scheduler
        self.expired = 0
        self.posts = ScriptBatch(
            "message posts",
            _POST,
            12,
            self._client,
            self._scheduler,
            lambda: (str(self.max_inbox), str(int(self.expire_after) + 1)),
        )
        self.deliveries = ScriptBatch(
            "message deliveries", _DELIVERED, 3, self._client, self._scheduler
        )

    def _client(self) -> Any:
        return self.store().client

    def _scheduler(self) -> IReactorTime:
        if self.scheduler is not None:
            return self.scheduler
        clock: IReactorTime = self.store().clock
        return clock

    def post(
        self,
        sender: str,
        scope: str,
        recipient: str,
        account: str,
        kind: str,
        data: bytes,
        known: str | None = None,
        counters: str | None = None,
        message_id: str | None = None,
        time_ms: int | None = None,
    ) -> defer.Deferred[Posted]:
        """Store a message once; a repeat in the same ``scope`` answers the first ID.

        ``scope``: the post's retry scope (:func:`retry_scope`);
        ``recipient``: the URI as posted (an extension is kept; the inbox
        is its base number's); ``known``: a set the recipient must be in
        (else ``not-found``); ``counters``: a hash whose ``post`` field
        counts new posts -- both in the same atomic step as the store, so a
        post costs no round trip of its own.  ``message_id`` and ``time_ms``
        keep the ID and time a message was given where it was first posted
        (a message forwarded or handed over by another pool instance);
        by default a new ID and now.  Fails with
        :class:`MessageRefused`: ``key-reused`` when the scope was used for
        another message, ``unavailable`` when Redis could not be reached,
        ``internal`` when Redis did not store it for another reason.
        """
        if kind not in KINDS:
            return defer.fail(MessageRefused("malformed", f"unknown message kind {kind!r}"))
        refused = too_large(data)
        if refused is not None:
            return refused
        if message_id is None:
            message_id = self.new_id()
        now_ms = int(self.clock() * 1000) if time_ms is None else time_ms
        owner = base_uri(recipient)
        args = (
            message_id,
            sender,
            f"dedup:{sender}:{scope}",
            recipient,
            owner,
            account,
            kind,
            str(now_ms),
            base64.b64encode(data).decode("ascii"),
            known or "",
            counters or "",
            post_digest(recipient, kind, data),
        )

        def answered(line: str) -> Posted:
            if line == "1":
                stored = Stored(message_id, sender, recipient, account, kind, now_ms, data, scope)
                return Posted(message_id, duplicate=False, stored=stored)
            if line.startswith("0 "):
                return Posted(line[2:], duplicate=True)
            if line == "-3":
                raise MessageRefused(
                    "key-reused", "this retry key was used for a different message"
                )
            if line == "-2":
                raise MessageRefused("not-found", f"{owner} is not known to this CRS")
            if line == "-1":
                raise MessageRefused("inbox-full", f"{owner} has {self.max_inbox} messages waiting")
            raise MessageRefused("internal", f"message not stored: unexpected answer {line[:40]!r}")

        return self.posts.add(args).addCallbacks(answered, _not_stored)

    def submit(
        self, sender: str, scope: str, recipient: str, account: str, kind: str, data: bytes
    ) -> defer.Deferred[Posted]:
        """A client's post: only to a known recipient, counted in the sender's counters."""
        return self.post(
            sender, scope, recipient, account, kind, data, KNOWN_URIS, stat_key(sender)
        )

    def confirm(self, recipient: str, message_id: str) -> defer.Deferred[tuple[str, str] | None]:
        """A client's ``delivered``: drop the message, count it for its sender."""
        return self.delivered(recipient, message_id, STAT_PREFIX)

    async def remember(self, uri: str) -> bool:
        """``uri`` attached: it may receive posts from now on (waits for
        Redis).  True when it was not known before."""
        await self.store().when_connected()
        return bool(int(await self._client().sadd(KNOWN_URIS, uri)))

    async def learn(self, uris: list[str]) -> int:
        """``uris`` attached at another pool member: take posts for them
        here too.  How many were new."""
        if not uris:
            return 0
        return int(await self._client().sadd(KNOWN_URIS, uris))

    async def known_uris(self, batch: int = 1000) -> list[str]:
        """Every known URI (an ``SSCAN`` of the set, so Redis is never
        blocked by one long answer)."""
        client = self._client()
        found: set[str] = set()
        cursor: object = 0
        while True:
            cursor, members = await client.sscan(KNOWN_URIS, cursor, None, batch)
            found.update(str(m) for m in members)
            if str(cursor) == "0":
                return sorted(found)

    async def mark_read(self, uri: str) -> None:
        """``uri`` fetched its messages now."""
        await self._client().hset(stat_key(uri), "read", str(int(self.clock())))

    async def counters(self) -> list[UriCounters]:
        """The counters of every known URI that has any, by URI."""
        client = self._client()
        rows = []
        for uri in sorted(await client.smembers(KNOWN_URIS)):
            found = await client.hgetall(stat_key(uri))
            if not found:
                continue
            read = found.get("read", "")
            rows.append(
                UriCounters(
                    uri,
                    _count(found.get("post")),
                    _count(found.get("deliv")),
                    int(read) if read.isascii() and read.isdigit() else None,
                    found.get("account"),
                )
            )
        return rows

    async def get(self, message_id: str) -> Stored | None:
        """One stored message, or None when it is gone."""
        fields = await self._client().hgetall(f"msg:{message_id}")
        if not fields:
            return None
        sender = fields["from"]
        dedup = fields.get("dedup", "")
        prefix = f"dedup:{sender}:"
        return Stored(
            str(message_id),
            sender,
            fields["to"],
            fields["account"],
            fields["kind"],
            int(fields["time"]),
            base64.b64decode(fields["data"]),
            dedup[len(prefix) :] if dedup.startswith(prefix) else None,
        )

    async def inboxes(self, batch: int = 500) -> list[str]:
        """Every URI that has messages waiting (a ``SCAN`` of the inboxes)."""
        client = self._client()
        found: set[str] = set()
        cursor: object = "0"
        while True:
            cursor, keys = await client.scan(cursor, "inbox:*", batch)
            found.update(str(k)[len("inbox:") :] for k in keys)
            if str(cursor) == "0":
                return sorted(found)

    async def inbox_page(self, recipient: str, start: int, count: int) -> list[str]:
        """The IDs at ``start``.. (at most ``count``) of ``recipient``'s inbox."""
        ids = await self._client().lrange(f"inbox:{recipient}", start, start + count - 1)
        return [str(i) for i in ids]

    async def raw_fields(self, message_id: str) -> dict[str, str]:
        """A message's hash as stored, unchecked (empty when it is gone):
        for an import that checks every field itself (``db-backup read-from``)."""
        fields = await self._client().hgetall(f"msg:{message_id}")
        return {str(k): str(v) for k, v in fields.items()}

    async def waiting_ids(self, recipient: str, limit: int) -> list[str]:
        """The IDs of the first ``limit`` messages waiting for ``recipient``, oldest first."""
        if limit <= 0:
            return []
        ids = await self._client().lrange(f"inbox:{recipient}", 0, limit - 1)
        return [str(i) for i in ids]

    async def waiting(self, recipient: str, limit: int = MAX_INBOX) -> list[Stored]:
        """The recipient's messages, oldest first."""
        result = []
        for message_id in await self.waiting_ids(recipient, limit):
            stored = await self.get(message_id)
            if stored is not None:
                result.append(stored)
        return result

    def delivered(
        self, recipient: str, message_id: str, counters_prefix: str = ""
    ) -> defer.Deferred[tuple[str, str] | None]:
        """The recipient has the message: drop it; return (sender, kind) or None if unknown.

        With ``counters_prefix``, the hash ``PREFIX + sender`` counts it in
        its ``deliv`` field, in the same step.  The de-duplication key stays
        until it expires: a sender repeating the post now gets the same ID
        back, not a second delivery.
        """

        def answered(line: str) -> tuple[str, str] | None:
            if not line:
                return None
            sender, _, kind = line.rpartition(" ")
            return sender, kind

        return self.deliveries.add((recipient, message_id, counters_prefix)).addCallbacks(
            answered, _not_stored
        )

    async def count(self, recipient: str) -> int:
        return int(await self._client().llen(f"inbox:{recipient}"))

    async def handed(self, recipient: str, message_id: str) -> bool:
        """Another pool member stored the message for us: drop it here, and
        let a copy of it that comes back later be stored again."""
        client = self._client()
        return bool(int(await client.eval(_HANDED, [f"inbox:{recipient}"], [message_id])))

    async def stored(self) -> int:
        """How many messages are stored, waiting for delivery (every one is in ``msg-expiry``)."""
        return int(await self._client().zcard("msg-expiry"))

    async def expire(self, batch: int = 1000) -> int:
        """Drop messages older than ``expire_after``; return (and count) how many."""
        cutoff = int((self.clock() - self.expire_after) * 1000)
        dropped = int(await self._client().eval(_EXPIRE, ["msg-expiry"], [str(cutoff), str(batch)]))
        self.expired += dropped
        return dropped


def _not_stored(failure: Failure) -> Failure:
    """A batch item Redis did not do becomes a refusal with the reason."""
    if failure.check(BatchFailed):
        failed: Any = failure.value
        code = "unavailable" if failed.transient else "internal"
        raise MessageRefused(code, f"message not stored ({failure.getErrorMessage()})")
    return failure


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
        service.Service.startService(self)
        self.loop.start(EXPIRY_SWEEP, now=False)

    def stopService(self) -> None:
        service.Service.stopService(self)
        if self.loop.running:
            self.loop.stop()
