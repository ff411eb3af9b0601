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

This module holds the changes, their log records and the registers;
:mod:`~cryptify.crs.pool.changes_replica` the replica and the peers,
:mod:`~cryptify.crs.pool.changes_snapshot` compaction,
:mod:`~cryptify.crs.pool.changes_frames` the frames on the pool link.

Every instance keeps a
:class:`~cryptify.crs.pool.changes_replica.Replica`: the log of every
change it has applied (its own and its peers'), in the order it applied
them, and the *high-water mark* of each origin (the highest seq applied).
A change is applied exactly once, in order per origin, and only after what
it depends on (:meth:`Replica.verdict`), so the log order is a causal
order. Peers exchange their high-water marks and send each other the
changes the other lacks, in log order
(:class:`~cryptify.crs.pool.changes_replica.Peers`); an instance that was
down or cut off gets everything it missed, from any instance that has it.

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
A prefix every member has applied is folded into a snapshot (see
:mod:`~cryptify.crs.pool.changes_snapshot`), where every key is a
last-writer-wins register.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Mapping

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


#: The kinds whose effect is an account's (its register or its blacklist's).
ACCOUNT_KINDS = frozenset(
    {Kind.ACCOUNT_CREATE, Kind.ACCOUNT_DELETE, Kind.BLACKLIST_ADD, Kind.BLACKLIST_REMOVE}
)

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


def decode_records(data: bytes, limit: int = MAX_CHANGE) -> tuple[list[bytes], int]:
    """The whole records (each at most ``limit`` octets) at the start of a
    log file, and how many octets they take; what follows (a record cut by
    a crash, or garbage) is not a record and is left out."""
    records = []
    pos = 0
    while pos + _RECORD.size <= len(data):
        length, crc = _RECORD.unpack_from(data, pos)
        end = pos + _RECORD.size + length
        if length > limit or end > len(data):
            break
        payload = data[pos + _RECORD.size : end]
        if zlib.crc32(payload) != crc:
            break
        records.append(payload)
        pos = end
    return records, pos


# -- registers -------------------------------------------------------------


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
