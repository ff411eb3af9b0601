"""The pool link's wire format (port 8090, inside TLS-PSK), sans-IO.

A link carries *frames*: a 4-octet big-endian length, then that many
octets of one item of the strict CBOR subset
(:mod:`cryptify.protocols.cbor_subset`), a map whose ``"t"`` names the
frame type.  The link itself knows the heartbeat::

    {"t": "beat", "from": NAME, "pid": INT, "map": null | MAP}

    MAP = {"epoch": INT, "author": NAME, "inc": INT,
           "members": [NAME, ...],            # the owners named below
           "runs": [INDEX | null, COUNT, ...]}  # owner runs, slot 0 first

``runs`` is the slot map as owner ranges: each pair gives an owner (an index
into ``members``, or null for a slot being handed over) and how many
consecutive slots it owns; the counts add up to exactly
:data:`~cryptify.crs.slots.SLOTS`.  Encodings are canonical (two adjacent
runs never have the same owner, ``members`` lists each owner once in order
of first appearance, no extra keys), so a map has exactly one encoding.

Every limit a peer controls is checked before the data is used:
:data:`MAX_FRAME` octets per frame, :data:`~cryptify.crs.pool.core.MAX_MEMBERS`
names of at most :data:`MAX_NAME` octets, integers in range.  Anything else
raises :class:`WireError` with what is wrong; nothing else escapes.
Whether the names are members of *this* pool is the core's check
(:meth:`~cryptify.crs.pool.core.PoolMember.receive`).

The link also sends, after each heartbeat, the members its sender sees
down (the second opinion a takeover waits for,
:meth:`~cryptify.crs.pool.core.PoolMember.confirmed`)::

    {"t": "pool-down", "down": [NAME, ...]}   # sorted, each once; [] for none

It is a frame of its own, not a heartbeat field, so that an instance
older than it ignores it (below) and a pool can still be upgraded one
instance at a time.

Any other frame type (forwarded messages, calls, operator changes) is an
:class:`Envelope`: the type (a short lower-case name) and the map's other
fields, which the module registered for that type checks
(:meth:`cryptify.crs.pool.wiring.PoolLink.handle`).  Those frames carry no
``from``: the connection's peer is known from its first heartbeat.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping
from typing import Any

import attrs

from cryptify.crs.pool.core import MAX_MEMBERS, Heartbeat, MapKey, PoolError, SlotMap
from cryptify.crs.slots import SLOTS
from cryptify.protocols import cbor_subset

#: Largest frame accepted (the worst map, 16,384 one-slot runs, is ~65 KiB).
MAX_FRAME = 128 * 1024
#: Longest instance name (UTF-8 octets).
MAX_NAME = 64
#: Largest epoch or incarnation accepted (an unsigned 63-bit number).
MAX_NUMBER = 2**63 - 1
#: Longest frame type name (ASCII lower case, digits and ``-``).
MAX_TYPE = 32
#: The heartbeat's frame type.
BEAT = "beat"
#: The frame type of a member's report of the members it sees down.
DOWN_REPORT = "pool-down"

_LENGTH = struct.Struct(">I")


class WireError(ValueError):
    """Octets that are not a valid pool frame; the message says why."""


# -- encoding -------------------------------------------------------------


def encode_map(slot_map: SlotMap) -> dict[str, object]:
    """A slot map as the canonical ``MAP`` value (owner runs)."""
    members: list[str] = []
    runs: list[int | None] = []
    previous: object = object()
    for owner in slot_map.owners:
        if owner == previous:
            count = runs[-1]
            assert count is not None
            runs[-1] = count + 1
            continue
        previous = owner
        if owner is None:
            runs.append(None)
        else:
            if owner not in members:
                members.append(owner)
            runs.append(members.index(owner))
        runs.append(1)
    key = slot_map.key
    return {
        "epoch": key.epoch,
        "author": key.author,
        "inc": key.incarnation,
        "members": members,
        "runs": runs,
    }


@attrs.frozen
class Frame:
    """A decoded heartbeat frame: the core's heartbeat and the sender's
    process id (for ``show system``)."""

    beat: Heartbeat
    pid: int = 0


@attrs.frozen
class Envelope:
    """A decoded frame of another type than the heartbeat: its ``type``
    and its other ``fields``, not yet checked (the handler of the type
    does that, raising :class:`WireError`)."""

    type: str
    fields: dict[str, object]


def _frame_type(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TYPE or not _valid_type(value):
        raise WireError(f"frame type {value!r} is not a name of 1 to {MAX_TYPE} a-z0-9-")
    return value


@functools.lru_cache(maxsize=256)
def _valid_type(value: str) -> bool:
    """Whether ``value`` (short enough) is a frame type name, remembered: a
    link carries a few names over and over; the cache is bounded against a
    peer's noise."""
    return all(c.isascii() and (c.islower() or c.isdigit() or c == "-") for c in value)


def encode_frame(frame_type: str, fields: Mapping[str, object]) -> bytes:
    """A frame of ``frame_type`` (not the heartbeat) with ``fields``, as a
    whole frame (length prefix included); raises :class:`WireError` when
    the type is not a valid name, a field is named ``t``, or the frame is
    over :data:`MAX_FRAME`."""
    if _frame_type(frame_type) == BEAT or "t" in fields:
        raise WireError("not a frame of its own type")
    payload = cbor_subset.encode({"t": frame_type, **fields})
    if len(payload) > MAX_FRAME:
        raise WireError(f"frame of {len(payload)} octets exceeds {MAX_FRAME}")
    return _LENGTH.pack(len(payload)) + payload


def encode_heartbeat(beat: Heartbeat, pid: int = 0) -> bytes:
    """One heartbeat as a whole frame (length prefix included)."""
    body = {
        "t": "beat",
        "from": beat.sender,
        "pid": pid,
        "map": None if beat.map is None else encode_map(beat.map),
    }
    payload = cbor_subset.encode(body)
    if len(payload) > MAX_FRAME:
        raise WireError(f"frame of {len(payload)} octets exceeds {MAX_FRAME}")
    return _LENGTH.pack(len(payload)) + payload


# -- decoding -------------------------------------------------------------


def _fields(value: Any, what: str, keys: set[str]) -> dict[str, object]:
    if not isinstance(value, dict):
        raise WireError(f"{what} is not a map")
    if set(value) != keys:
        missing = sorted(keys - set(value))
        extra = sorted(set(value) - keys)
        raise WireError(f"{what} fields wrong (missing {missing}, unexpected {extra})")
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise WireError(f"{what} is not a name")
    if len(value.encode("utf-8")) > MAX_NAME:
        raise WireError(f"{what} is longer than {MAX_NAME} octets")
    if not value.isprintable() or any(c.isspace() for c in value):
        raise WireError(f"{what} has spaces or unprintable characters")
    return value


def _number(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_NUMBER:
        raise WireError(f"{what} is not a number from 0 to {MAX_NUMBER}")
    return value


def decode_map(value: Any) -> SlotMap:
    """The slot map of a ``MAP`` value; raises :class:`WireError`."""
    fields = _fields(value, "map", {"epoch", "author", "inc", "members", "runs"})
    key = MapKey(
        _number(fields["epoch"], "epoch"),
        _name(fields["author"], "author"),
        _number(fields["inc"], "incarnation"),
    )
    members = fields["members"]
    if not isinstance(members, list) or len(members) > MAX_MEMBERS:
        raise WireError(f"members is not a list of at most {MAX_MEMBERS} names")
    names = [_name(m, "member") for m in members]
    if len(set(names)) != len(names):
        raise WireError("a member is listed twice")
    runs = fields["runs"]
    if not isinstance(runs, list) or len(runs) % 2 or len(runs) > 2 * SLOTS:
        raise WireError("runs is not a list of owner, count pairs")
    owners: list[str | None] = []
    first_use: list[int] = []
    previous: object = object()
    for index in range(0, len(runs), 2):
        who, count = runs[index], runs[index + 1]
        if who is not None and (type(who) is not int or not 0 <= who < len(names)):
            raise WireError(f"run {index // 2} names no listed member")
        if type(count) is not int or not 1 <= count <= SLOTS - len(owners):
            raise WireError(f"run {index // 2} has a bad count or goes past slot {SLOTS - 1}")
        if who == previous:
            raise WireError(f"run {index // 2} has the same owner as the run before it")
        previous = who
        if who is not None and who not in first_use:
            if who != len(first_use):
                raise WireError("members are not listed in order of first use")
            first_use.append(who)
        owners.extend([None if who is None else names[who]] * count)
    if len(owners) != SLOTS:
        raise WireError(f"runs cover {len(owners)} slots, not {SLOTS}")
    if len(first_use) != len(names):
        raise WireError("a listed member owns no slot")
    try:
        return SlotMap(key, tuple(owners))
    except PoolError as exc:  # pragma: no cover - the checks above cover it
        raise WireError(str(exc)) from exc


def decode_frame(payload: bytes) -> Frame | Envelope:
    """The heartbeat, or the :class:`Envelope` of another type, in one
    frame's payload (without the length prefix)."""
    if len(payload) > MAX_FRAME:
        raise WireError(f"frame of {len(payload)} octets exceeds {MAX_FRAME}")
    try:
        value = cbor_subset.decode(payload)
    except cbor_subset.CborError as exc:
        raise WireError(f"not canonical CBOR: {exc}") from None
    if not isinstance(value, dict):
        raise WireError("frame is not a map")
    frame_type = _frame_type(value.get("t"))
    if frame_type != BEAT:
        return Envelope(frame_type, {k: v for k, v in value.items() if k != "t"})
    fields = _fields(value, "frame", {"t", "from", "pid", "map"})
    sender = _name(fields["from"], "sender")
    pid = _number(fields["pid"], "pid")
    raw_map = fields["map"]
    return Frame(Heartbeat(sender, None if raw_map is None else decode_map(raw_map)), pid)


def encode_down(down: frozenset[str]) -> dict[str, object]:
    """The fields of a :data:`DOWN_REPORT` frame."""
    return {"down": sorted(down)}


def decode_down(fields: Mapping[str, object]) -> frozenset[str]:
    """The members a :data:`DOWN_REPORT` frame names; raises
    :class:`WireError` (whether they are members of this pool is the
    core's check)."""
    value = _fields(dict(fields), "down report", {"down"})["down"]
    if not isinstance(value, list) or len(value) > MAX_MEMBERS:
        raise WireError(f"down is not a list of at most {MAX_MEMBERS} names")
    names = [_name(n, "down member") for n in value]
    if names != sorted(set(names)):
        raise WireError("down is not sorted or lists a member twice")
    return frozenset(names)


class FrameReader:
    """Splits a byte stream into frame payloads (sans-IO).

    :meth:`feed` returns the payloads completed so far; a length above
    :data:`MAX_FRAME` raises :class:`WireError` at once, before its octets
    are buffered, and the reader is then unusable (drop the connection).
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._failed = False

    def feed(self, data: bytes) -> list[bytes]:
        if self._failed:
            raise WireError("the stream already failed")
        self._buffer += data
        frames: list[bytes] = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > self.max_frame:
                self._failed = True
                raise WireError(f"frame of {length} octets exceeds {self.max_frame}")
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            frames.append(bytes(self._buffer[_LENGTH.size : end]))
            del self._buffer[:end]
        return frames

    @property
    def buffered(self) -> int:
        """Octets held for an incomplete frame."""
        return len(self._buffer)
