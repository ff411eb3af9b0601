"""Compaction of the pool change log, sans-IO: the snapshot a folded
prefix becomes.

Once every member of the pool has applied a prefix of the changes (each
member's high-water marks, as it last reported them, cover it), that
prefix is *folded*: what it leaves is, per key, the change that won
(last writer wins, the higher stamp ``(at, origin, seq)``), and that is
all an instance needs of it.  A :class:`Snapshot` holds those winners,
the high-water marks the folded prefix reaches (its *base*) and the
hybrid clock; the log keeps only what lies beyond the base.  The set a
base covers is the intersection of what every member applied, each a
causal (dependency-closed) set, so it is causal too, and the rest of the
log replays after it in its old order.

A member whose marks are below a peer's base for some origin (its log
was lost, or it is new to the pool) cannot be sent the folded changes
one by one: it is sent the snapshot and merges it (:meth:`Replica.install
<cryptify.crs.pool.changes_core.Replica.install>`): its marks become the
larger of each, and of each key's winners the higher stamp wins, so the
result is what applying every folded change would have given.

The keys: an account, a blacklist entry (account and URI), the update
file (``apply``), ``reload``, an admin, an admin's account, an admin's
authorization on one, an inter-working peer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from cryptify.crs.pool.changes_core import (
    MAX_CHANGE,
    Change,
    Kind,
    check_marks,
    decode_records,
    encode_record,
)
from cryptify.crs.pool.wire import WireError
from cryptify.protocols import cbor_subset

#: Largest snapshot sent or received (its winners, one record each).
MAX_SNAPSHOT = 256 * 1024 * 1024
#: Most winners one snapshot holds.
MAX_WINNERS = 4_000_000

Key = tuple[str, ...]


def key_of(change: Change) -> Key:
    """What a change is the last writer of."""
    kind = change.kind
    if kind in (Kind.ACCOUNT_CREATE, Kind.ACCOUNT_DELETE):
        return ("account", change.text("account"))
    if kind in (Kind.BLACKLIST_ADD, Kind.BLACKLIST_REMOVE):
        return ("blacklist", change.text("account"), change.text("uri"))
    if kind in (Kind.APPLY, Kind.RELOAD):
        return (kind.value,)
    if kind in (Kind.ADMIN_CREATE, Kind.ADMIN_DELETE):
        return ("admin", change.text("name"))
    if kind in (Kind.ADMIN_ACCOUNT_ADD, Kind.ADMIN_ACCOUNT_DELETE):
        return ("admin-account", change.text("name"), change.text("account"))
    if kind in (Kind.ADMIN_AUTH_ADD, Kind.ADMIN_AUTH_DELETE):
        return (
            "admin-auth",
            change.text("name"),
            change.text("account"),
            change.text("authorization"),
        )
    return ("iw", change.text("ip"))


def fold(winners: Mapping[Key, Change], changes: Iterable[Change]) -> dict[Key, Change]:
    """``winners`` with ``changes`` folded in: per key the higher stamp."""
    result = dict(winners)
    for change in changes:
        key = key_of(change)
        old = result.get(key)
        if old is None or change.stamp > old.stamp:
            result[key] = change
    return result


def covered(marks: Mapping[str, int], change_id: tuple[str, int]) -> bool:
    origin, seq = change_id
    return marks.get(origin, 0) >= seq


@attrs.frozen
class Snapshot:
    """A folded prefix: its ``base`` marks, the clock, the winners by stamp."""

    base: Mapping[str, int]
    clock: int
    winners: tuple[Change, ...] = attrs.field(repr=False)

    @classmethod
    def of(cls, base: Mapping[str, int], clock: int, winners: Mapping[Key, Change]) -> Snapshot:
        ordered = tuple(sorted(winners.values(), key=lambda c: c.stamp))
        return cls({o: s for o, s in sorted(base.items()) if s > 0}, clock, ordered)

    def by_key(self) -> dict[Key, Change]:
        return {key_of(c): c for c in self.winners}

    def header(self) -> dict[str, object]:
        return {"hw": dict(self.base), "at": self.clock, "n": len(self.winners)}

    def encode(self) -> bytes:
        """The snapshot as records: its header, then one per winner."""
        parts = [encode_record(cbor_subset.encode(self.header()))]
        parts.extend(encode_record(c.encode()) for c in self.winners)
        return b"".join(parts)

    @classmethod
    def from_header(cls, header: Mapping[str, object], records: list[bytes]) -> Snapshot:
        """A snapshot from its header's fields and its winners' records;
        :class:`WireError` says what is wrong."""
        base = check_marks(header.get("hw"), "snapshot hw")
        clock = header.get("at")
        count = header.get("n")
        if type(clock) is not int or clock < 0:
            raise WireError("snapshot at is not a number")
        if type(count) is not int or not 0 <= count <= MAX_WINNERS or count != len(records):
            raise WireError("snapshot n is not the number of its winners")
        winners = [Change.decode(r) for r in records]
        keys = set()
        for change in winners:
            if not covered(base, change.id):
                raise WireError(f"snapshot winner {change.id} is beyond its hw")
            key = key_of(change)
            if key in keys:
                raise WireError("snapshot has two winners for one key")
            keys.add(key)
        return cls(base, clock, tuple(sorted(winners, key=lambda c: c.stamp)))

    @classmethod
    def decode(cls, data: bytes) -> Snapshot:
        if len(data) > MAX_SNAPSHOT:
            raise WireError(f"snapshot of {len(data)} octets exceeds {MAX_SNAPSHOT}")
        records, used = decode_records(data, MAX_CHANGE)
        if used != len(data) or not records:
            raise WireError("snapshot is not whole records")
        try:
            header = cbor_subset.decode(records[0])
        except cbor_subset.CborError as exc:
            raise WireError(f"snapshot header is not canonical CBOR: {exc}") from None
        if not isinstance(header, dict) or set(header) != {"hw", "at", "n"}:
            raise WireError("snapshot header is not a map of hw, at, n")
        return cls.from_header(header, records[1:])


__all__ = ["MAX_SNAPSHOT", "Key", "Snapshot", "covered", "fold", "key_of"]
