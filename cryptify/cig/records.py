"""
Call records: one JSON line per call through the CIG (C{docs/sip.md}).

The L{CallTable} calls L{CallRecords.ended} when a call's last
C{session.log} event (C{hangup} or C{failed}) is written.  A call whose
media bridge is being removed waits for the bridge's last counters (the
octets of the PBX leg, L{CallTable.media_stats}) at most
L{MEDIA_WAIT} seconds; then its record is written, once, to the file of
C{logging { call_records "PATH"; }} and, with C{call_records_syslog
true}, to syslog.

The file is opened for appending (created 0640; an existing file loses
any permission for others, and a symbolic link is refused) and every
record is one C{write}, so a reader never sees half a line.
L{CallRecords.reopen} (SIGHUP) closes it and opens the path again, for
logrotate's C{postrotate} (or use its C{copytruncate}).  Records hold
URIs and addresses, never keys.
"""

from __future__ import annotations

import json
import os
import stat
import syslog
import time
from collections.abc import Callable

import attrs
from twisted.application import service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from cryptify.jsontypes import JsonObject
from cryptify.service import StartupError

from .calls import Call

log = Logger(namespace="cryptify.cig.records")

#: Seconds a record waits for its bridge's last counters.
MEDIA_WAIT = 2.0
#: The mode a new call records file gets; an existing one keeps no more than this.
RECORDS_MODE = 0o640
#: The longest record line written (a longer one has its URIs cut).
MAX_RECORD = 8192
#: The longest URI or reason kept in a record.
MAX_FIELD = 512


def iso_time(when: float | None) -> str | None:
    """C{2026-11-23T19:40:01.123Z}, or None."""
    if when is None:
        return None
    whole = int(when)
    millis = round((when - whole) * 1000)
    if millis >= 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def _field(value: str) -> str | None:
    return None if value == "-" else value[:MAX_FIELD]


def record_of(call: Call) -> JsonObject:
    """The call record of an ended call, as a dict ready for JSON."""
    from_pbx = call.source != "umsg"
    sip_id, umsg_id = (
        (call.caller_if_id, call.callee_if_id)
        if from_pbx
        else (call.callee_if_id, call.caller_if_id)
    )
    start, answer, end = call.started_at, call.answered_at, call.ended_at
    duration = round(end - answer, 3) if answer is not None and end is not None else 0.0
    return {
        "sip_call_id": _field(sip_id),
        "umsg_session": _field(umsg_id),
        "direction": "from-pbx" if from_pbx else "to-pbx",
        "from": _field(call.in_from),
        "to": _field(call.in_to),
        "routed_from": _field(call.out_from),
        "routed_to": _field(call.out_to),
        "source": _field(call.source),
        "start": iso_time(start),
        "answer": iso_time(answer),
        "end": iso_time(end),
        "duration": max(0.0, duration),
        "result": "answered" if answer is not None else "not answered",
        "ended_by": call.ended_by,
        "reason": None if call.end_reason is None else call.end_reason[:MAX_FIELD],
        "codec": call.codec,
        "octets_to_pbx": call.octets_to_pbx,
        "octets_from_pbx": call.octets_from_pbx,
    }


def record_line(call: Call) -> str:
    """The call's record as one line of JSON (no newline inside)."""
    return json.dumps(record_of(call), ensure_ascii=True, separators=(",", ":"))


def _to_syslog(line: str) -> None:
    syslog.syslog(syslog.LOG_INFO, "call record " + line)


def open_records(path: str) -> int:
    """
    Open C{path} for appending records: created with L{RECORDS_MODE}; an
    existing file keeps at most those permissions; a symbolic link or a
    file that is not a regular file is refused (OSError).
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, RECORDS_MODE)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & ~RECORDS_MODE:
            os.fchmod(fd, mode & RECORDS_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


@attrs.define(eq=False)
class CallRecords:
    """Writes each ended call's record to a file and, optionally, syslog."""

    clock: IReactorTime
    path: str | None = None
    to_syslog: bool = False
    syslog: Callable[[str], None] = _to_syslog
    written: int = 0
    failures: int = 0
    _fd: int | None = None
    _waiting: dict[Call, IDelayedCall] = attrs.field(factory=dict)

    @property
    def enabled(self) -> bool:
        return self.path is not None or self.to_syslog

    # --- the file -----------------------------------------------------------
    def open(self) -> None:
        """Open the file (at start, while privileged); OSError if it cannot be."""
        if self.path is not None and self._fd is None:
            self._fd = open_records(self.path)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def reopen(self) -> None:
        """Close the file and open the path again (SIGHUP, after logrotate)."""
        self.close()
        try:
            self.open()
        except OSError as exc:
            log.warn("cannot reopen call records {path}: {why}", path=self.path, why=str(exc))

    def configure(self, path: str | None, to_syslog: bool) -> None:
        """Another file or syslog setting (a reload)."""
        self.to_syslog = to_syslog
        if path != self.path:
            self.close()
            self.path = path
            self.reopen()

    # --- calls --------------------------------------------------------------
    def ended(self, call: Call) -> None:
        """C{call} ended: write its record once its bridge's counters are in."""
        if call.recorded or call in self._waiting or not self.enabled:
            return
        # The bridge's removal may be asked for later in this same turn.
        self._waiting[call] = self.clock.callLater(0, self._settle, call)

    def _settle(self, call: Call) -> None:
        if call.media_pending:
            self._waiting[call] = self.clock.callLater(MEDIA_WAIT, self._write, call)
        else:
            self._write(call)

    def media_done(self, call: Call) -> None:
        """The counters of C{call}'s bridge are in (or will not come)."""
        delayed = self._waiting.get(call)
        if delayed is not None and not call.media_pending:
            if delayed.active():
                delayed.cancel()
            self._write(call)

    def _write(self, call: Call) -> None:
        self._waiting.pop(call, None)
        if call.recorded:
            return
        call.recorded = True
        line = record_line(call)
        if len(line) > MAX_RECORD:  # pragma: no cover - fields are cut to MAX_FIELD
            line = line[:MAX_RECORD]
        self.written += 1
        if self._fd is not None:
            try:
                os.write(self._fd, (line + "\n").encode("ascii"))
            except OSError as exc:
                self.failures += 1
                log.warn("cannot write a call record: {why}", why=str(exc))
        if self.to_syslog:
            self.syslog(line)

    def stop(self) -> None:
        """Write what waits (at shutdown) and close the file."""
        for call, delayed in list(self._waiting.items()):
            if delayed.active():
                delayed.cancel()
            self._write(call)
        self.close()


class CallRecordsService(service.Service):
    """Opens the call records file at start (while privileged), closes it at stop."""

    def __init__(self, records: CallRecords) -> None:
        self.records = records

    def _open(self) -> None:
        try:
            self.records.open()
        except OSError as exc:
            raise StartupError(f"call records {self.records.path}: {exc.strerror or exc}") from None

    def privilegedStartService(self) -> None:
        self._open()
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        self._open()
        service.Service.startService(self)

    def stopService(self) -> None:
        self.records.stop()
        service.Service.stopService(self)
