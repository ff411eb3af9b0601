"""The fakes that the tests share: accounts with real ECCSI keys, client
objects, Redis connections, the message store, relay and call parties, a
recording SIP channel and SIP leg, a management connection pair, a client
session's key material, and a WebSocket pair.  Test modules import these
(and the fixtures in ``sip_support``, ``cig_support``, ``umsg_support``,
``interop/_crs``, ``interop/_sipp``, ``interop/_amp``) from here, never from
each other.

:class:`MemoryMessageStore` stands in for
:class:`~cryptify.crs.messages.store.MessageStore`; ``tests.test_messages``
and ``tests.interop.test_messages`` run one contract suite against both,
so the fake and the Lua scripts agree.
"""

from __future__ import annotations

import base64
import calendar
import itertools
import time
from collections.abc import Callable
from functools import cache
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test import iosim

from cryptify.client.session import (
    ClientSession,
)
from cryptify.crs.calls.session import RelayLegs
from cryptify.crs.messages.store import (
    KINDS,
    KNOWN_URIS,
    MAX_CONTENT,
    MAX_INBOX,
    STAT_PREFIX,
    MessageRefused,
    Posted,
    Stored,
    UriCounters,
    post_digest,
    stat_key,
)
from cryptify.crs.redis.store import RedisNotConnected
from cryptify.crypto.eccsi import EccsiKms, EccsiSigner
from cryptify.crypto.identity import period_of, tel_identifier
from cryptify.crypto.updatefile import seal_update_file
from cryptify.kms.store import KmsAccount
from cryptify.protocols import umsg
from cryptify.protocols.mgmt import (
    ManagementClient,
    ManagementProtocol,
)
from cryptify.protocols.sip.errors import SipParseError
from cryptify.protocols.sip.message import Request, Response, parse_datagram
from cryptify.protocols.sip.transaction import (
    ServerTransaction,
)
from cryptify.protocols.umsg import (
    Message,
)
from cryptify.protocols.umsg_ws import (
    Opened,
    UmsgWebSocket,
)

#: Tests run in this month (the clock starts on its 15th).
PERIOD = "2026-11"
START = float(calendar.timegm((2026, 11, 15, 12, 0, 0)))

_KMS: dict[str, EccsiKms] = {}
_SIGNERS: dict[tuple[str, str, str], EccsiSigner] = {}


def kms(account: str) -> EccsiKms:
    """One ECCSI KMS per account name, for the whole test run."""
    if account not in _KMS:
        _KMS[account] = EccsiKms.generate()
    return _KMS[account]


def signer(account: str, uri: str, period: str = PERIOD) -> EccsiSigner:
    """A user's ECCSI signing key (cached)."""
    key = (account, uri, period)
    if key not in _SIGNERS:
        identity = tel_identifier(uri, period)
        ssk, pvt = kms(account).issue(identity)
        _SIGNERS[key] = EccsiSigner(kms(account).kpak, identity, ssk, pvt)
    return _SIGNERS[key]


# -- accounts as the CMS makes them ----------------------------------------------

#: The CRS<->CMS shared secret of the test accounts.
SECRET = "c2VjcmV0LXNoYXJlZC13aXRoLWNtcw=="


@cache
def cms_account(account: str = "acme") -> KmsAccount:
    """One security domain per account name, for the whole test run."""
    return KmsAccount.generate(account)


def update_bytes(
    account: str = "acme",
    secret: str = SECRET,
    revision: int = 1,
    blacklist: tuple[str, ...] = (),
    period: str = "2026-11",
    with_next: bool = True,
) -> bytes:
    """A sealed update file for ``account``, as its CMS would send it."""
    domain = attrs.evolve(cms_account(account), revision=revision)
    return seal_update_file(domain.update(period, with_next, blacklist), secret)


@attrs.define
class FakeAccount:
    """An account with KPAKs for some periods and a blacklist."""

    id: str
    periods: tuple[str, ...] = (PERIOD,)
    black: set[str] = attrs.field(factory=set)

    def kpak_for(self, period: str) -> bytes | None:
        return kms(self.id).kpak if period in self.periods else None

    def blacklisted(self, uri: str, period: str) -> bool:
        return uri in self.black


@attrs.define
class FakeAccounts:
    by_id: dict[str, FakeAccount] = attrs.field(factory=dict)

    def add(self, account: FakeAccount) -> FakeAccount:
        self.by_id[account.id] = account
        return account

    def get(self, account_id: str) -> FakeAccount | None:
        return self.by_id.get(account_id)


@attrs.define
class FakeObjects:
    """Records client objects; ``fail`` makes the next store fail."""

    stored: list[tuple[Any, ...]] = attrs.field(factory=list)
    fail: bool = False
    #: What a store failure raises (``fail``).
    error: Callable[[], Exception] = lambda: RuntimeError("redis down")

    async def set_push_token(self, account: str, uri: str, token: str, kind: str) -> None:
        if self.fail:
            raise self.error()
        self.stored.append(("push", account, uri, token, kind))

    async def set_client_info(self, account: str, uri: str, info: dict[str, str]) -> None:
        if self.fail:
            raise RuntimeError("redis down")
        self.stored.append(("info", account, uri, info))


# -- attached clients -------------------------------------------------------------


class FakeConnection:
    """An attached client's connection: records what the CRS sends it and why it closed."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.reasons: list[str] = []

    def send(self, msg: Any) -> None:
        self.sent.append(msg)

    def disconnect(self, reason: str) -> None:
        self.reasons.append(reason)


class FakeSession:
    """An attach session as features see it: URI, account, connection id, send."""

    def __init__(self, uri: str, account: str = "acme", conn_id: str = "c1") -> None:
        self.uri, self.account, self.conn_id = uri, account, conn_id
        self.sent: list[Message] = []

    def send(self, msg: Message) -> None:
        self.sent.append(msg)


# -- Redis --------------------------------------------------------------------------


class FakeRedis:
    """The hash and set commands of a txredisapi connection, in memory."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.sets: dict[str, set[str]] = {}

    async def hmset(self, key: str, mapping: dict[str, str]) -> None:
        self.hashes.setdefault(key, {}).update(mapping)

    async def hset(self, key: str, field: str, value: str) -> None:
        self.hashes.setdefault(key, {})[field] = value

    async def hincrby(self, key: str, field: str, amount: int) -> int:
        fields = self.hashes.setdefault(key, {})
        fields[field] = str(int(fields.get(field, "0")) + amount)
        return int(fields[field])

    async def hgetall(self, key: str) -> dict[str, str]:
        return dict(self.hashes.get(key, {}))

    async def sadd(self, key: str, member: str) -> None:
        self.sets.setdefault(key, set()).add(member)

    async def srem(self, key: str, member: str) -> None:
        self.sets.get(key, set()).discard(member)

    async def sismember(self, key: str, member: str) -> bool:
        return member in self.sets.get(key, set())

    async def smembers(self, key: str) -> set[str]:
        return set(self.sets.get(key, set()))

    async def scard(self, key: str) -> int:
        return len(self.sets.get(key, set()))

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self.hashes.pop(key, None)
            self.sets.pop(key, None)


class FakeScripts:
    """A txredisapi connection's ``eval``: records each call, answers when told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], list[str], Deferred[Any]]] = []

    def eval(self, script: str, keys: list[str], args: list[str]) -> Deferred[Any]:
        answer: Deferred[Any] = Deferred()
        self.calls.append((script, keys, args, answer))
        return answer


class FakeStore:
    """A :class:`~cryptify.crs.redis.store.RedisStore` that is always connected to ``client``."""

    def __init__(self, client: Any = None, clock: Clock | None = None) -> None:
        self.client = FakeRedis() if client is None else client
        self.clock = clock

    def when_connected(self) -> Deferred[Any]:
        return defer.succeed(self.client)


# -- messages -----------------------------------------------------------------------


class MemoryMessageStore:
    """:class:`~cryptify.crs.messages.store.MessageStore` in memory: retry scopes,
    inboxes by base number in posting order, the inbox limit, known
    recipients.  ``down`` makes every call fail as when redis_low is out of
    reach.  ``clock`` gives the time stored with a message (ms)."""

    def __init__(
        self, clock: Callable[[], float] = lambda: 0.0, max_inbox: int = MAX_INBOX
    ) -> None:
        self.clock = clock
        self.max_inbox = max_inbox
        self.messages: dict[str, Stored] = {}
        self.scopes: dict[str, tuple[str, str]] = {}
        self.known: set[str] = set()
        #: The counters hashes, by key, as Redis keeps them.
        self.stats: dict[str, dict[str, str]] = {}
        self.ids = (f"m{n:04}" for n in itertools.count(1))
        self.down = False
        #: Retry scopes whose message was handed to another pool member.
        self.handed_scopes: set[str] = set()

    def _reachable(self) -> None:
        if self.down:
            raise RedisNotConnected("redis_low: not connected")

    def _inbox(self, owner: str) -> list[str]:
        return [m.id for m in self.messages.values() if m.recipient.split(";")[0] == owner]

    async def post(
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
    ) -> Posted:
        if kind not in KINDS:
            raise MessageRefused("malformed", f"unknown message kind {kind!r}")
        if len(data) > MAX_CONTENT:
            raise MessageRefused("too-large", f"content over {MAX_CONTENT} octets")
        if self.down:
            raise MessageRefused("unavailable", "message not stored (redis_low: not connected)")
        owner = recipient.split(";")[0]
        digest = post_digest(recipient, kind, data)
        first = self.scopes.get(f"{sender} {scope}")
        if f"{sender} {scope}" in self.handed_scopes:
            first = None
        if first is not None:
            if first[1] != digest:
                raise MessageRefused("key-reused", "used for another message")
            return Posted(first[0], duplicate=True)
        if known is not None and owner not in self.known:
            raise MessageRefused("not-found", f"{owner} is not known to this CRS")
        if len(self._inbox(owner)) >= self.max_inbox:
            raise MessageRefused("inbox-full", f"{owner} has {self.max_inbox} messages waiting")
        if message_id is None:
            message_id = next(self.ids)
        if time_ms is None:
            time_ms = int(self.clock() * 1000)
        stored = Stored(message_id, sender, recipient, account, kind, time_ms, data, scope)
        self.messages[message_id] = stored
        self.scopes[f"{sender} {scope}"] = (message_id, digest)
        self.handed_scopes.discard(f"{sender} {scope}")
        if counters is not None:
            row = self.stats.setdefault(counters, {})
            row["post"] = str(int(row.get("post", "0")) + 1)
            row["account"] = account
        return Posted(message_id, duplicate=False, stored=stored)

    async def submit(
        self, sender: str, scope: str, recipient: str, account: str, kind: str, data: bytes
    ) -> Posted:
        return await self.post(
            sender, scope, recipient, account, kind, data, KNOWN_URIS, stat_key(sender)
        )

    async def confirm(self, recipient: str, message_id: str) -> tuple[str, str] | None:
        return await self.delivered(recipient, message_id, STAT_PREFIX)

    async def remember(self, uri: str) -> bool:
        self._reachable()
        new = uri not in self.known
        self.known.add(uri)
        return new

    async def learn(self, uris: list[str]) -> int:
        self._reachable()
        new = set(uris) - self.known
        self.known.update(uris)
        return len(new)

    async def known_uris(self) -> list[str]:
        self._reachable()
        return sorted(self.known)

    async def mark_read(self, uri: str) -> None:
        self._reachable()
        self.stats.setdefault(stat_key(uri), {})["read"] = str(int(self.clock()))

    async def counters(self) -> list[UriCounters]:
        self._reachable()
        rows = []
        for uri in sorted(self.known):
            found = self.stats.get(stat_key(uri))
            if found:
                read = found.get("read", "")
                rows.append(
                    UriCounters(
                        uri,
                        int(found.get("post", "0")),
                        int(found.get("deliv", "0")),
                        int(read) if read.isdigit() else None,
                        found.get("account"),
                    )
                )
        return rows

    def add(self, recipient: str, count: int) -> list[str]:
        """``count`` messages waiting for ``recipient``; their IDs."""
        ids = []
        for n in range(count):
            message_id = next(self.ids)
            self.messages[message_id] = Stored(
                message_id, "tel:+1", recipient, "acme", "content", 0, b"%d" % n
            )
            ids.append(message_id)
        return ids

    async def get(self, message_id: str) -> Stored | None:
        self._reachable()
        return self.messages.get(message_id)

    async def waiting_ids(self, recipient: str, limit: int) -> list[str]:
        self._reachable()
        return self._inbox(recipient)[: max(limit, 0)]

    async def waiting(self, recipient: str, limit: int = MAX_INBOX) -> list[Stored]:
        return [self.messages[i] for i in await self.waiting_ids(recipient, limit)]

    async def inbox_page(self, recipient: str, start: int, count: int) -> list[str]:
        self._reachable()
        return self._inbox(recipient)[start : start + max(count, 0)]

    async def raw_fields(self, message_id: str) -> dict[str, str]:
        self._reachable()
        found = self.messages.get(message_id)
        if found is None:
            return {}
        return {
            "from": found.sender,
            "to": found.recipient,
            "inbox": found.recipient.split(";")[0],
            "account": found.account,
            "kind": found.kind,
            "time": str(found.time_ms),
            "data": base64.b64encode(found.data).decode("ascii"),
        }

    async def delivered(
        self, recipient: str, message_id: str, counters_prefix: str = ""
    ) -> tuple[str, str] | None:
        self._reachable()
        found = self.messages.get(message_id)
        if found is None or found.recipient.split(";")[0] != recipient:
            return None
        del self.messages[message_id]
        if counters_prefix:
            row = self.stats.setdefault(counters_prefix + found.sender, {})
            row["deliv"] = str(int(row.get("deliv", "0")) + 1)
        return found.sender, found.kind

    async def count(self, recipient: str) -> int:
        self._reachable()
        return len(self._inbox(recipient))

    async def handed(self, recipient: str, message_id: str) -> bool:
        self._reachable()
        found = self.messages.get(message_id)
        if found is None or found.recipient.split(";")[0] != recipient:
            return False
        del self.messages[message_id]
        if found.scope is not None:
            self.handed_scopes.add(f"{found.sender} {found.scope}")
        return True

    async def inboxes(self) -> list[str]:
        self._reachable()
        return sorted({m.recipient.split(";")[0] for m in self.messages.values()})


# -- calls --------------------------------------------------------------------------


@attrs.define
class Att:
    """An attached party of a call."""

    uri: str
    account: str = "acme"


class FakeParties:
    """Who is attached and known, and what the session table sent them."""

    def __init__(self) -> None:
        self.online: dict[str, Att] = {}
        self.known_uris: set[str] = set()
        self.sent: list[tuple[str, Message]] = []

    def attached(self, uri: str) -> Att | None:
        return self.online.get(uri)

    def known(self, uri: str) -> bool:
        return uri in self.known_uris

    def send(self, uri: str, msg: Message) -> None:
        self.sent.append((uri, msg))

    def take(self) -> list[tuple[str, str, dict[str, Any]]]:
        out = [(uri, m.type, dict(m.fields)) for uri, m in self.sent]
        self.sent.clear()
        return out


class FakeRelay:
    """Relay sessions at once (``auto``) or when the test fires ``pending``."""

    def __init__(self) -> None:
        self.pending: dict[str, defer.Deferred[RelayLegs]] = {}
        self.released: list[str] = []
        self.auto = True

    def allocate(self, session: str) -> defer.Deferred[RelayLegs]:
        if self.auto:
            return defer.succeed(RelayLegs("198.51.100.1", 146, b"A" * 8, b"B" * 8))
        d: defer.Deferred[RelayLegs] = defer.Deferred()
        self.pending[session] = d
        return d

    def release(self, session: str) -> None:
        self.released.append(session)


@attrs.define
class FakeChannel:
    """A channel that records what is sent on it."""

    reliable: bool = False
    address: tuple[str, int] = ("192.0.2.1", 5060)
    sent: list[bytes] = attrs.field(factory=list)

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def messages(self) -> list[Request | Response]:
        out = []
        for data in self.sent:
            message = parse_datagram(data)
            assert message is not None
            out.append(message)
        return out


class RecordingLeg:
    """A tel-side leg that records what the SIF reports."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def trying(self) -> None:
        self.events.append("trying")

    def ringing(self) -> None:
        self.events.append("ringing")

    def answered(self) -> None:
        self.events.append("answered")

    def rejected(self, status: int = 480) -> None:
        self.events.append(f"rejected {status}")

    def hung_up(self) -> None:
        self.events.append("hung up")


def pair(locator: amp.CommandLocator, cookie: str | None = None) -> tuple[Any, Any, Any]:
    server = ManagementProtocol(lambda proto: locator, cookie)
    client = ManagementClient()
    pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client))
    return server, client, pump


def call(client: Any, pump: Any, command: type[amp.Command], **kwargs: Any) -> Any:
    """Send a command, pump, and return its result (a Failure on error).

    The result is captured before pumping: AMP drops the connection when an
    error answer finds no errback on the call's Deferred.
    """
    results: list[Any] = []
    client.callRemote(command, **kwargs).addBoth(results.append)
    pump.flush()
    assert len(results) == 1
    return results[0]


_MATERIAL: dict[str, Any] = {}


def material(uri: str, account: str = "acme") -> Any:
    """Key material for ``uri`` in ``account`` (one KMS per account, per run)."""
    if account not in _MATERIAL:
        _MATERIAL[account] = KmsAccount.generate(account)
    if (uri, account) not in _MATERIAL:
        _MATERIAL[uri, account] = _MATERIAL[account].issue(uri, period_of(time.time()))
    return _MATERIAL[uri, account]


def attached(uri: str) -> tuple[ClientSession, list[Message]]:
    sent: list[Message] = []
    session = ClientSession("acme", uri, lambda p: None, sent.append)
    session.state = "attached"
    return session, sent


def opened_pair(max_message: int = umsg.MAX_MESSAGE) -> tuple[UmsgWebSocket, UmsgWebSocket]:
    client = UmsgWebSocket.connect("crs.test", max_message=max_message)
    server = UmsgWebSocket.server(max_message)
    events = server.receive(client.outgoing())
    assert events == [Opened("/")], events
    events = client.receive(server.outgoing())
    assert events == [Opened("/")], events
    return client, server


@attrs.define
class RecordingUser:
    """A transaction user that records what it is told."""

    requests: list[ServerTransaction] = attrs.field(factory=list)
    acks: list[Request] = attrs.field(factory=list)
    unacknowledged: list[ServerTransaction] = attrs.field(factory=list)
    errors: list[SipParseError] = attrs.field(factory=list)

    def request_received(self, transaction: ServerTransaction) -> None:
        self.requests.append(transaction)

    def ack_received(self, request: Request, channel: object) -> None:
        self.acks.append(request)

    def no_ack(self, transaction: ServerTransaction) -> None:
        self.unacknowledged.append(transaction)

    def bad_message(self, error: SipParseError, channel: object) -> None:
        self.errors.append(error)
