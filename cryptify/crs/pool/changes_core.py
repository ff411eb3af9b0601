"""Pool-wide operator changes, sans-IO: the ordered, durable change log
every instance of a pool keeps, and how instances bring each other up to
date.

An operator command that acts on the whole pool (``create account``,
``delete account``, ``blacklist add|remove``, ``apply``, ``reload
account``, the remote-admin commands) becomes a :class:`Change`: its
*origin* (``NAME:LOGID``, the instance and the identity of its change log),
its *seq* (1, 2, 3 ... per origin), its *stamp* time ``at`` (milliseconds,
a hybrid clock: never below any stamp the instance has seen, so a change
made after seeing another always has a higher stamp, whatever the clocks
say), its *deps* (what the instance had applied when it made it: origin
to highest seq) and its kind and arguments.

Every instance keeps a :class:`Replica`: the log of every change it has
applied (its own and its peers'), in the order it applied them, and the
*high-water mark* of each origin (the highest seq applied).  A change is
applied exactly once, in order per origin, and only after what it depends
on (:meth:`Replica.verdict`), so the log order is a causal order.  Peers
exchange their high-water marks and send each other the changes the other
lacks, in log order (:class:`Peers`); an instance that was down or cut off
gets everything it missed, from any instance that has it.

Convergence.  Changes from different origins may be applied in different
orders on different instances.  Accounts and blacklist entries are
therefore *last-writer-wins registers*: an account's register holds the
winning create or delete (the higher stamp ``(at, origin, seq)``), a
blacklist entry's register the winning add or remove; a change that loses
is recorded in the log but changes nothing.  What an instance's accounts
should be (:meth:`Replica.account_plan`) is a function of the set of
changes applied, not of their order, so once every instance has every
change they all hold the same accounts and blacklists.  A blacklist entry
older than its account's winning create belongs to an earlier account of
that name and does not count.  ``apply``, ``reload`` and the admin
commands are carried out in causal order on each instance; an update file
is idempotent (an older revision than the one applied is refused), and
two admin commands made concurrently on both sides of a partition on the
same admin take effect in the order each instance receives them.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Iterable, Mapping
from typing import TypeVar

import attrs

from cryptify.crs.pool.wire import MAX_NAME, WireError
from cryptify.protocols import cbor_subset

#: Longest change accepted (an update file is at most 16 MiB, see
#: :data:`cryptify.crs.accounts.MAX_UPDATE_BYTES`, plus room for the rest).
MAX_CHANGE = 16 * 1024 * 1024 + 4096
#: Most origins (instance names times change logs) a deps or high-water map names.
MAX_ORIGINS = 256
#: Largest sequence number or stamp accepted (an unsigned 63-bit number).
MAX_NUMBER = 2**63 - 1
#: Longest text argument of a change (account IDs, URIs, names, secrets).
MAX_TEXT = 4096
#: Largest binary argument (an update file).
MAX_BLOB = 16 * 1024 * 1024
#: Log record header: length and CRC-32 of the record's CBOR.
_RECORD = struct.Struct(">II")

K = TypeVar("K")


class Kind(enum.Enum):
    """What a change does; the value is its name on the wire and in the log."""

    ACCOUNT_CREATE = "account-create"
    ACCOUNT_DELETE = "account-delete"
    BLACKLIST_ADD = "blacklist-add"
    BLACKLIST_REMOVE = "blacklist-remove"
    APPLY = "apply"
    RELOAD = "reload"
    ADMIN_CREATE = "admin-create"
    ADMIN_DELETE = "admin-delete"
    ADMIN_ACCOUNT_ADD = "admin-account-add"
    ADMIN_ACCOUNT_DELETE = "admin-account-delete"
    ADMIN_AUTH_ADD = "admin-auth-add"
    ADMIN_AUTH_DELETE = "admin-auth-delete"
    IW_ADD = "iw-add"
    IW_DELETE = "iw-delete"


#: The arguments of each kind: name to type (text or octets).
ARGS: dict[Kind, dict[str, type]] = {
    Kind.ACCOUNT_CREATE: {"account": str, "secret": str},
    Kind.ACCOUNT_DELETE: {"account": str},
    Kind.BLACKLIST_ADD: {"account": str, "uri": str},
    Kind.BLACKLIST_REMOVE: {"account": str, "uri": str},
    Kind.APPLY: {"data": bytes},
    Kind.RELOAD: {},
    Kind.ADMIN_CREATE: {"name": str, "key": bytes},
    Kind.ADMIN_DELETE: {"name": str},
    Kind.ADMIN_ACCOUNT_ADD: {"name": str, "account": str},
    Kind.ADMIN_ACCOUNT_DELETE: {"name": str, "account": str},
    Kind.ADMIN_AUTH_ADD: {"name": str, "account": str, "authorization": str},
    Kind.ADMIN_AUTH_DELETE: {"name": str, "account": str, "authorization": str},
    Kind.IW_ADD: {"ip": str, "secret": str, "comment": str},
    Kind.IW_DELETE: {"ip": str},
}
#: Arguments never written to crs.log.
SECRET_ARGS = frozenset({"secret", "data", "key"})


def _number(value: object, what: str, low: int = 0) -> int:
    if type(value) is not int or not low <= value <= MAX_NUMBER:
        raise WireError(f"{what} is not a number from {low} to {MAX_NUMBER}")
    return value


def check_origin(value: object) -> str:
    """``NAME:LOGID``: an instance name and a decimal log identity."""
    if not isinstance(value, str) or value.count(":") != 1:
        raise WireError("origin is not NAME:LOGID")
    name, log_id = value.split(":")
    if (
        not name
        or len(name.encode("utf-8")) > MAX_NAME
        or not name.isprintable()
        or any(c.isspace() for c in name)
    ):
        raise WireError("origin's name is not a name of 1 to 64 printable octets")
    if not log_id.isascii() or not log_id.isdigit() or len(log_id) > 20:
        raise WireError("origin's log identity is not a decimal number")
    return value


def check_marks(value: object, what: str) -> dict[str, int]:
    """A map origin -> seq (deps, high-water marks)."""
    if not isinstance(value, dict) or len(value) > MAX_ORIGINS:
        raise WireError(f"{what} is not a map of at most {MAX_ORIGINS} origins")
    return {check_origin(k): _number(v, f"{what} seq", 1) for k, v in value.items()}


@attrs.frozen
class Change:
    """One operator change (see the module docstring)."""

    origin: str
    seq: int
    at: int
    deps: Mapping[str, int]
    kind: Kind
    args: Mapping[str, str | bytes] = attrs.field(repr=False)

    @property
    def stamp(self) -> tuple[int, str, int]:
        """The last-writer-wins order: time, then origin, then seq."""
        return (self.at, self.origin, self.seq)

    @property
    def id(self) -> tuple[str, int]:
        return (self.origin, self.seq)

    def text(self, name: str) -> str:
        """A text argument (its type was checked when the change was made
        or decoded)."""
        value = self.args[name]
        if not isinstance(value, str):
            raise TypeError(f"{self.kind.value} argument {name} is not text")
        return value

    def octets(self, name: str) -> bytes:
        """A binary argument."""
        value = self.args[name]
        if not isinstance(value, bytes):
            raise TypeError(f"{self.kind.value} argument {name} is not octets")
        return value

    def describe(self) -> str:
        """The change for crs.log: kind and arguments, secrets left out."""
        shown = " ".join(
            f"{k}={'(hidden)' if k in SECRET_ARGS or not isinstance(v, str) else v}"
            for k, v in sorted(self.args.items())
        )
        return f"{self.kind.value} {shown}".rstrip() + f" ({self.origin} #{self.seq})"

    def encode(self) -> bytes:
        return cbor_subset.encode(
            {
                "o": self.origin,
                "s": self.seq,
                "at": self.at,
                "d": dict(self.deps),
                "k": self.kind.value,
                "a": dict(self.args),
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Change:
        """A change from its CBOR; :class:`WireError` says what is wrong."""
        if len(data) > MAX_CHANGE:
            raise WireError(f"change of {len(data)} octets exceeds {MAX_CHANGE}")
        try:
            value = cbor_subset.decode(data)
        except cbor_subset.CborError as exc:
            raise WireError(f"change is not canonical CBOR: {exc}") from None
        if not isinstance(value, dict) or set(value) != {"o", "s", "at", "d", "k", "a"}:
            raise WireError("change is not a map of o, s, at, d, k, a")
        origin = check_origin(value["o"])
        seq = _number(value["s"], "seq", 1)
        at = _number(value["at"], "at")
        deps = check_marks(value["d"], "deps")
        try:
            kind = Kind(value["k"])
        except ValueError:
            raise WireError(f"unknown change kind {str(value['k'])[:40]!r}") from None
        args = value["a"]
        spec = ARGS[kind]
        if not isinstance(args, dict) or set(args) != set(spec):
            raise WireError(f"{kind.value} needs the arguments {sorted(spec)}")
        for name, wanted in spec.items():
            arg = args[name]
            if not isinstance(arg, (str, bytes)) or type(arg) is not wanted:
                raise WireError(f"{kind.value} argument {name} is not {wanted.__name__}")
            limit = MAX_BLOB if wanted is bytes else MAX_TEXT
            if len(arg) > limit:
                raise WireError(f"{kind.value} argument {name} is longer than {limit}")
        if deps.get(origin, 0) != seq - 1:
            raise WireError("a change must depend on its origin's previous change")
        return cls(origin, seq, at, deps, kind, args)


# -- the log file ----------------------------------------------------------


def encode_record(payload: bytes) -> bytes:
    """One log record: length, CRC-32, then the octets."""
    return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload


def decode_records(data: bytes) -> tuple[list[bytes], int]:
    """The whole records at the start of a log file, and how many octets
    they take; what follows (a record cut by a crash, or garbage) is not
    a record and is left out."""
    records = []
    pos = 0
    while pos + _RECORD.size <= len(data):
        length, crc = _RECORD.unpack_from(data, pos)
        end = pos + _RECORD.size + length
        if length > MAX_CHANGE or end > len(data):
            break
        payload = data[pos + _RECORD.size : end]
        if zlib.crc32(payload) != crc:
            break
        records.append(payload)
        pos = end
    return records, pos


# -- the replica -----------------------------------------------------------


class Verdict(enum.Enum):
    APPLY = "apply"
    #: Already applied (a change sent twice): confirm, do nothing.
    DUPLICATE = "duplicate"
    #: Not yet: an earlier change of its origin, or one it depends on, is
    #: missing; the sender will send those first.
    WAIT = "wait"


@attrs.frozen
class Register:
    """A last-writer-wins register: the winning change's stamp and value."""

    stamp: tuple[int, str, int]
    present: bool
    secret: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class AccountPlan:
    """What an account should be on this instance, from the changes applied.

    ``present`` is None when no change named the account (the pool leaves
    it as it is); ``listed`` and ``unlisted`` are the blacklist entries the
    pool says are on and off (other entries are left as they are).
    """

    account: str
    present: bool | None
    secret: str | None = attrs.field(repr=False)
    listed: frozenset[str]
    unlisted: frozenset[str]


def outcome(
    plan: AccountPlan, have: tuple[str, frozenset[str]] | None
) -> tuple[str, frozenset[str]] | None:
    """What an account should be (secret and operator blacklist, or None
    for no account) given the pool's ``plan`` and what the instance ``have``s.

    An account the pool never named stays as it is, its blacklist changed
    by the entries the pool did name.
    """
    if plan.present is False:
        return None
    if plan.present and plan.secret is not None:
        secret = plan.secret
        base = have[1] if have is not None else frozenset()
    elif have is not None:
        secret, base = have
    else:
        return None
    return secret, frozenset((base | plan.listed) - plan.unlisted)


class Replica:
    """One instance's change log in memory: high-water marks, the
    registers, and the changes to hand to peers (see the module docstring).

    ``records`` are the changes already in the durable log, in order.
    """

    def __init__(self, name: str, log_id: int, records: Iterable[Change] = ()) -> None:
        self.name = name
        self.origin = check_origin(f"{name}:{log_id}")
        self.log: list[Change] = []
        self.encoded: dict[tuple[str, int], bytes] = {}
        self.hw: dict[str, int] = {}
        self.clock = 0
        self.accounts: dict[str, Register] = {}
        self.blacklist: dict[tuple[str, str], Register] = {}
        for change in records:
            self.commit(change)

    def make(self, kind: Kind, args: Mapping[str, str | bytes], now_ms: int) -> Change:
        """A new change of this instance (not yet committed)."""
        at = max(now_ms, self.clock + 1)
        seq = self.hw.get(self.origin, 0) + 1
        change = Change(self.origin, seq, at, dict(self.hw), kind, dict(args))
        # the encoding checks the arguments as a peer would
        Change.decode(change.encode())
        return change

    def verdict(self, change: Change) -> Verdict:
        have = self.hw.get(change.origin, 0)
        if change.seq <= have:
            return Verdict.DUPLICATE
        if change.seq != have + 1:
            return Verdict.WAIT
        if any(self.hw.get(o, 0) < s for o, s in change.deps.items()):
            return Verdict.WAIT
        return Verdict.APPLY

    def commit(self, change: Change) -> None:
        """Take a change whose verdict is APPLY (once it is in the durable log)."""
        if self.verdict(change) is not Verdict.APPLY:
            raise ValueError(f"change {change.id} is not next")
        self.log.append(change)
        self.encoded[change.id] = change.encode()
        self.hw[change.origin] = change.seq
        self.clock = max(self.clock, change.at)
        if change.kind in (Kind.ACCOUNT_CREATE, Kind.ACCOUNT_DELETE):
            key = change.text("account")
            present = change.kind is Kind.ACCOUNT_CREATE
            secret = change.text("secret") if present else None
            self._set(self.accounts, key, Register(change.stamp, present, secret))
        elif change.kind in (Kind.BLACKLIST_ADD, Kind.BLACKLIST_REMOVE):
            entry = (change.text("account"), change.text("uri"))
            listed = change.kind is Kind.BLACKLIST_ADD
            self._set(self.blacklist, entry, Register(change.stamp, listed))

    @staticmethod
    def _set(table: dict[K, Register], key: K, value: Register) -> None:
        old = table.get(key)
        if old is None or value.stamp > old.stamp:
            table[key] = value

    def account_plan(self, account: str) -> AccountPlan:
        reg = self.accounts.get(account)
        listed, unlisted = set(), set()
        for (name, uri), entry in self.blacklist.items():
            if name != account:
                continue
            if entry.present and (reg is None or entry.stamp > reg.stamp):
                listed.add(uri)
            else:
                unlisted.add(uri)
        return AccountPlan(
            account,
            None if reg is None else reg.present,
            None if reg is None else reg.secret,
            frozenset(listed),
            frozenset(unlisted),
        )

    def missing(self, marks: Mapping[str, int]) -> list[Change]:
        """The changes of the log beyond ``marks``, in log order."""
        return [c for c in self.log if c.seq > marks.get(c.origin, 0)]

    def covers(self, marks: Mapping[str, int], change_id: tuple[str, int]) -> bool:
        origin, seq = change_id
        return marks.get(origin, 0) >= seq


class Peers:
    """Who has what: each peer's reported high-water marks and what has
    been sent to it since (sans-IO; the wiring sends and receives).

    - When a peer's link comes up, :meth:`up` (then send our marks).
    - When a peer's marks arrive, :meth:`marks`: the changes to send it.
    - Every resync interval, :meth:`resync`: what was sent but never
      confirmed is sent again (a frame lost with its connection).
    """

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.reported: dict[str, dict[str, int]] = {}
        self.sent: dict[str, dict[str, int]] = {}
        self.live: set[str] = set()

    def up(self, peer: str) -> None:
        self.live.add(peer)
        self.sent[peer] = dict(self.reported.get(peer, {}))

    def down(self, peer: str) -> None:
        self.live.discard(peer)
        self.sent.pop(peer, None)

    def _due(self, peer: str) -> list[Change]:
        sent = self.sent.setdefault(peer, dict(self.reported.get(peer, {})))
        due = self.replica.missing(sent)
        for change in due:
            sent[change.origin] = max(sent.get(change.origin, 0), change.seq)
        return due

    def marks(self, peer: str, marks: Mapping[str, int], again: bool = False) -> list[Change]:
        """A peer reported its marks; ``again`` when it asks for a resend
        (it had to drop a change it could not apply yet)."""
        reported = dict(marks)
        self.reported[peer] = reported
        sent = self.sent.setdefault(peer, {})
        if again:
            self.sent[peer] = dict(reported)
        else:
            for origin, seq in reported.items():
                sent[origin] = max(sent.get(origin, 0), seq)
        if peer not in self.live:
            return []
        return self._due(peer)

    def resync(self) -> dict[str, list[Change]]:
        due = {}
        for peer in sorted(self.live):
            self.sent[peer] = dict(self.reported.get(peer, {}))
            found = self._due(peer)
            if found:
                due[peer] = found
        return due

    def new(self) -> dict[str, list[Change]]:
        """A change was committed here: what to send each live peer now."""
        due = {}
        for peer in sorted(self.live):
            found = self._due(peer)
            if found:
                due[peer] = found
        return due

    def has(self, peer: str, change_id: tuple[str, int]) -> bool:
        return self.replica.covers(self.reported.get(peer, {}), change_id)


# -- frames ----------------------------------------------------------------

#: The frame types on the pool link.
CHANGE_FRAME = "pool-change"
MARKS_FRAME = "pool-marks"
PURGE_FRAME = "pool-purge"
PURGED_FRAME = "pool-purged"
WAKEUP_FRAME = "pool-wakeup"
WOKEN_FRAME = "pool-woken"
#: Longest answer to a wakeup request, in characters.
MAX_RESULT = 512
#: Octets of a change per ``pool-change`` frame (a frame is at most 128 KiB).
CHUNK = 96 * 1024
#: Most parts one change is cut into.
MAX_PARTS = -(-MAX_CHANGE // CHUNK)


def _fields(fields: Mapping[str, object], keys: set[str], what: str) -> None:
    if set(fields) != keys:
        raise WireError(f"{what} frame needs the fields {sorted(keys)}")


def change_frames(change_id: tuple[str, int], data: bytes) -> list[dict[str, object]]:
    """The ``pool-change`` frames' fields carrying one encoded change."""
    origin, seq = change_id
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
    return [
        {"o": origin, "s": seq, "part": i, "parts": len(chunks), "data": chunk}
        for i, chunk in enumerate(chunks)
    ]


@attrs.frozen
class Part:
    origin: str
    seq: int
    part: int
    parts: int
    data: bytes = attrs.field(repr=False)


def check_part(fields: Mapping[str, object]) -> Part:
    """A ``pool-change`` frame's fields; :class:`WireError` if wrong."""
    _fields(fields, {"o", "s", "part", "parts", "data"}, CHANGE_FRAME)
    origin = check_origin(fields["o"])
    seq = _number(fields["s"], "seq", 1)
    parts = fields["parts"]
    if type(parts) is not int or not 1 <= parts <= MAX_PARTS:
        raise WireError(f"parts is not a number from 1 to {MAX_PARTS}")
    part = fields["part"]
    if type(part) is not int or not 0 <= part < parts:
        raise WireError("part is not below parts")
    data = fields["data"]
    if type(data) is not bytes or len(data) > CHUNK:
        raise WireError(f"data is not at most {CHUNK} octets")
    return Part(origin, seq, part, parts, data)


class Assembly:
    """Joins one peer's ``pool-change`` parts into whole changes.

    Parts of a change come one after the other; a part that does not
    follow (its connection was replaced mid-change) drops what was held,
    and the change comes again at the next resync.  At most
    :data:`MAX_CHANGE` octets are held.
    """

    def __init__(self) -> None:
        self._key: tuple[str, int, int] | None = None
        self._next = 0
        self._held: list[bytes] = []
        self._size = 0

    def reset(self) -> None:
        self._key, self._next, self._held, self._size = None, 0, [], 0

    def feed(self, part: Part) -> bytes | None:
        key = (part.origin, part.seq, part.parts)
        if part.part == 0:
            self.reset()
            self._key = key
        elif key != self._key or part.part != self._next:
            self.reset()
            return None
        self._size += len(part.data)
        if self._size > MAX_CHANGE:
            self.reset()
            raise WireError(f"change exceeds {MAX_CHANGE} octets")
        self._held.append(part.data)
        self._next = part.part + 1
        if self._next < part.parts:
            return None
        data = b"".join(self._held)
        self.reset()
        return data


def check_marks_frame(fields: Mapping[str, object]) -> tuple[dict[str, int], bool]:
    """A ``pool-marks`` frame: the peer's high-water marks, and whether it
    asks for a resend."""
    _fields(fields, {"hw", "again"}, MARKS_FRAME)
    again = fields["again"]
    if type(again) is not bool:
        raise WireError("again is not a boolean")
    return check_marks(fields["hw"], "hw"), again


@attrs.frozen
class Purge:
    """A ``pool-purge`` request: disconnect the account's clients (one URI's or all)."""

    id: int
    account: str
    uri: str | None


def check_purge(fields: Mapping[str, object]) -> Purge:
    _fields(fields, {"id", "account", "uri"}, PURGE_FRAME)
    request = _number(fields["id"], "id")
    account, uri = fields["account"], fields["uri"]
    if not isinstance(account, str) or not 1 <= len(account) <= MAX_TEXT:
        raise WireError("account is not text")
    if uri is not None and (not isinstance(uri, str) or not 1 <= len(uri) <= MAX_TEXT):
        raise WireError("uri is not text or null")
    return Purge(request, account, uri)


def check_purged(fields: Mapping[str, object]) -> tuple[int, int]:
    """A ``pool-purged`` answer: request id and how many were disconnected."""
    _fields(fields, {"id", "purged"}, PURGED_FRAME)
    return _number(fields["id"], "id"), _number(fields["purged"], "purged")


@attrs.frozen
class Wakeup:
    """A ``pool-wakeup`` request: wake this client if its token is here."""

    id: int
    account: str
    uri: str


def check_wakeup(fields: Mapping[str, object]) -> Wakeup:
    _fields(fields, {"id", "account", "uri"}, WAKEUP_FRAME)
    request = _number(fields["id"], "id")
    account, uri = fields["account"], fields["uri"]
    if not isinstance(account, str) or not 1 <= len(account) <= MAX_TEXT:
        raise WireError("account is not text")
    if not isinstance(uri, str) or not 1 <= len(uri) <= MAX_TEXT:
        raise WireError("uri is not text")
    return Wakeup(request, account, uri)


def check_woken(fields: Mapping[str, object]) -> tuple[int, str]:
    """A ``pool-woken`` answer: request id and what happened there."""
    _fields(fields, {"id", "result"}, WOKEN_FRAME)
    result = fields["result"]
    if not isinstance(result, str) or len(result) > MAX_RESULT:
        raise WireError(f"result is not text of at most {MAX_RESULT} characters")
    return _number(fields["id"], "id"), result


# -- what the CLI is told ----------------------------------------------------


@attrs.frozen
class Report:
    """Which instances have applied a change: ``applied`` (this one first),
    and ``pending`` with why (``down``, ``not confirmed yet``)."""

    applied: tuple[str, ...]
    pending: tuple[tuple[str, str], ...] = ()
    problems: tuple[str, ...] = ()

    def text(self, done: str = "applied on") -> str:
        words = [f"{done} {' '.join(self.applied)}"]
        if self.pending:
            words.append("pending on " + " ".join(f"{name} ({why})" for name, why in self.pending))
        text = "; ".join(words)
        if self.problems:
            text += "; here: " + "; ".join(self.problems)
        return text
