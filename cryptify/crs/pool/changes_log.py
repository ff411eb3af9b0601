"""The durable pool change log file, ``data-dir/pool-changes`` (mode 0600:
it holds account secrets and update files).

Records (length, CRC-32, CBOR): a header naming the log's identity
(``{"log": ID}``), then one record per change, each appended and
fsync'ed before the change is applied, confirmed or answered.  After a
compaction (:mod:`~cryptify.crs.pool.changes_snapshot`) the header also
carries the snapshot's marks, clock and number of winners
(``{"log", "hw", "at", "n", "fresh"}``), the winners follow it, then the
changes beyond the snapshot.  A compaction or a snapshot taken from a
peer rewrites the whole file: a hidden temporary file with mode 0600,
fsync'ed, renamed over the log, and the directory fsync'ed, so a crash
leaves the old log or the new one.  ``fresh`` says the snapshot came
from a peer and no change was logged after it: its effects are carried
out again at the next start (a crash may have cut them).
"""

from __future__ import annotations

import os

import attrs
from twisted.logger import Logger

from cryptify.crs.pool.changes_core import Change, decode_records, encode_record
from cryptify.crs.pool.changes_snapshot import MAX_SNAPSHOT, Snapshot
from cryptify.crs.pool.wire import WireError
from cryptify.files import write_atomically
from cryptify.protocols import cbor_subset
from cryptify.service import StartupError

log = Logger(namespace="cryptify.crs.pool.changes")

#: Largest change log read at start.
MAX_LOG_BYTES = 1024 * 1024 * 1024


@attrs.frozen
class Loaded:
    """What a change log holds."""

    log_id: int
    snapshot: Snapshot | None
    changes: list[Change]
    #: The snapshot came from a peer and nothing was logged after it.
    fresh: bool = False


def _header(log_id: int, snapshot: Snapshot | None, fresh: bool) -> bytes:
    if snapshot is None:
        return cbor_subset.encode({"log": log_id})
    return cbor_subset.encode({"log": log_id, **snapshot.header(), "fresh": fresh})


class ChangeLog:
    """The durable change log file (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def open(self, now: float) -> Loaded:
        """The log's identity, snapshot and changes; a new log if there is
        none.  A record cut by a crash at the end is cut off; anything else
        unreadable stops the start."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_LOG_BYTES + 1)
        except FileNotFoundError:
            data = b""
        if len(data) > MAX_LOG_BYTES:
            raise StartupError(f"{self.path} is larger than {MAX_LOG_BYTES} octets")
        records, used = decode_records(data)
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        if not records:
            if data:
                log.warn(
                    "{path}: no whole record in its {size} octets (a crash while it was"
                    " made): starting a new change log",
                    path=self.path,
                    size=len(data),
                )
            log_id = int(now * 1_000_000)
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600
            )
            os.fchmod(self._fd, 0o600)
            self.append(_header(log_id, None, False))
            self._sync_dir()
            return Loaded(log_id, None, [])
        try:
            loaded = self._parse(records)
        except (WireError, cbor_subset.CborError) as exc:
            raise StartupError(f"{self.path}: not a change log ({exc})") from None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        os.fchmod(self._fd, 0o600)
        if used < len(data):
            log.warn(
                "{path}: {cut} octets after the last whole record cut off (a crash mid-write)",
                path=self.path,
                cut=len(data) - used,
            )
            os.ftruncate(self._fd, used)
            os.fsync(self._fd)
        return loaded

    @staticmethod
    def _parse(records: list[bytes]) -> Loaded:
        header = cbor_subset.decode(records[0])
        if not isinstance(header, dict) or set(header) not in (
            {"log"},
            {"log", "hw", "at", "n", "fresh"},
        ):
            raise WireError("no log header")
        log_id = header["log"]
        if type(log_id) is not int or log_id < 0:
            raise WireError("bad log identity")
        if "n" not in header:
            return Loaded(log_id, None, [Change.decode(r) for r in records[1:]])
        count, fresh = header["n"], header["fresh"]
        if type(count) is not int or not 0 <= count < len(records) or type(fresh) is not bool:
            raise WireError("bad snapshot header")
        snapshot = Snapshot.from_header(header, records[1 : 1 + count])
        changes = [Change.decode(r) for r in records[1 + count :]]
        return Loaded(log_id, snapshot, changes, fresh and not changes)

    def append(self, payload: bytes) -> None:
        """Write one record and fsync it; OSError when it could not be."""
        if self._fd is None:
            raise OSError("the change log is not open")
        record = encode_record(payload)
        written = 0
        while written < len(record):
            written += os.write(self._fd, record[written:])
        os.fsync(self._fd)

    def rewrite(
        self, log_id: int, snapshot: Snapshot, changes: list[bytes], *, fresh: bool
    ) -> None:
        """Replace the log with ``snapshot`` and the encoded ``changes``
        after it, atomically and durably; OSError when it could not be
        (the old log is then as it was, or, if only the directory's fsync
        failed, the new one is in place: either reads back to the same
        state, since a log's changes covered by its snapshot are skipped)."""
        if self._fd is None:
            raise OSError("the change log is not open")
        winners = [encode_record(c.encode()) for c in snapshot.winners]
        if sum(len(w) for w in winners) > MAX_SNAPSHOT:
            raise OSError(f"the snapshot would exceed {MAX_SNAPSHOT} octets")
        data = b"".join(
            [encode_record(_header(log_id, snapshot, fresh)), *winners]
            + [encode_record(c) for c in changes]
        )
        write_atomically(self.path, data, 0o600)
        # the new file is in place: appends go to it from now on, whatever follows
        old, self._fd = self._fd, None
        os.close(old)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._sync_dir()

    def _sync_dir(self) -> None:
        dir_fd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


__all__ = ["MAX_LOG_BYTES", "ChangeLog", "Loaded"]
