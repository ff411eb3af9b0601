"""Pool-wide operator changes, sans-IO: the frames on the pool link (a
change or a snapshot cut into parts, the high-water marks, the purge and
wakeup requests and their answers) and their checks."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from cryptify.crs.pool.changes_core import (
    MAX_CHANGE,
    MAX_TEXT,
    _number,
    check_marks,
    check_origin,
)
from cryptify.crs.pool.changes_snapshot import MAX_SNAPSHOT
from cryptify.crs.pool.wire import WireError

#: The frame types on the pool link.
CHANGE_FRAME = "pool-change"
SNAPSHOT_FRAME = "pool-snapshot"
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
#: Most parts one snapshot is cut into.
MAX_SNAPSHOT_PARTS = -(-MAX_SNAPSHOT // CHUNK)


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


def check_part(fields: Mapping[str, object], frame_type: str = CHANGE_FRAME) -> Part:
    """A ``pool-change`` (or ``pool-snapshot``: the snapshot's origin and
    its number there) frame's fields; :class:`WireError` if wrong."""
    _fields(fields, {"o", "s", "part", "parts", "data"}, frame_type)
    origin = check_origin(fields["o"])
    seq = _number(fields["s"], "seq", 1)
    most = MAX_SNAPSHOT_PARTS if frame_type == SNAPSHOT_FRAME else MAX_PARTS
    parts = fields["parts"]
    if type(parts) is not int or not 1 <= parts <= most:
        raise WireError(f"parts is not a number from 1 to {most}")
    part = fields["part"]
    if type(part) is not int or not 0 <= part < parts:
        raise WireError("part is not below parts")
    data = fields["data"]
    if type(data) is not bytes or len(data) > CHUNK:
        raise WireError(f"data is not at most {CHUNK} octets")
    return Part(origin, seq, part, parts, data)


class Assembly:
    """Joins one peer's ``pool-change`` parts into whole changes (or its
    ``pool-snapshot`` parts into a snapshot).

    Parts of a change come one after the other; a part that does not
    follow (its connection was replaced mid-change) drops what was held,
    and the change comes again at the next resync.  At most ``limit``
    octets are held.
    """

    def __init__(self, limit: int = MAX_CHANGE) -> None:
        self.limit = limit
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
        if self._size > self.limit:
            self.reset()
            raise WireError(f"change or snapshot exceeds {self.limit} octets")
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
