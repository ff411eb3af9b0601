"""Log files in the operator manuals' formats.

Every process logs through ``twisted.logger``.  A :class:`LogFileService`
adds an observer that renders the events into one of the manuals' line
formats, in UTC, into a file in the log directory:

``crs`` style (crs.log, crs_relay.log)::

    [2026-11-23 19:40:01.123 | INFO | attach(4242) ] client attached

``cig`` style (cig.log, relay.log)::

    [2026-11-23 19:40:01.123] route[INFO]: call routed

The manuals name the types DEBUG, INFO, WARN and INIT.  Errors and critical
events are written as WARN (with the failure's traceback indented below), and
an event that carries ``log_type="INIT"`` (start-up and configuration lines)
is written as INIT.

The module of a line is the event's ``log_module`` if it has one, else the
last component of its logger namespace.  Events that carry a ``log_file``
key are written only by the observer of that name (for example
``session.log``); the others are written by the process's main log.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import IO, cast

import attrs
from twisted.application import service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogPublisher,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

_LEVEL_TYPES = {
    LogLevel.debug: "DEBUG",
    LogLevel.info: "INFO",
    LogLevel.warn: "WARN",
    LogLevel.error: "WARN",
    LogLevel.critical: "WARN",
}

#: Rotate a log file when it reaches this size.
ROTATE_BYTES = 50 * 1024 * 1024
#: Rotated files kept per log.
ROTATED_FILES = 10


@functools.lru_cache(maxsize=4)
def _utc_second(whole: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(whole))


def utc_timestamp(when: float) -> str:
    """Render seconds since the epoch as ``YYYY-MM-DD HH:MM:SS.mmm`` in UTC."""
    whole = int(when)
    millis = int((when - whole) * 1000)
    return f"{_utc_second(whole)}.{millis:03d}"


def event_type(event: LogEvent) -> str:
    """The manuals' type word for an event (DEBUG, INFO, WARN, INIT)."""
    explicit = event.get("log_type")
    if isinstance(explicit, str):
        return explicit
    level = event.get("log_level", LogLevel.info)
    return _LEVEL_TYPES.get(level, "INFO")


def event_module(event: LogEvent) -> str:
    """The module name shown on a line."""
    module = event.get("log_module")
    if isinstance(module, str):
        return module
    namespace = event.get("log_namespace") or "-"
    return str(namespace).rsplit(".", 1)[-1]


def one_line(text: str) -> str:
    """``text`` as one line: control characters (line breaks above all)
    shown as escapes, so that a value a peer sent (a URI, an account
    name, a SIP header) cannot forge or split lines of the log."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _text(event: LogEvent) -> str:
    text = one_line(formatEvent(event))
    failure = event.get("log_failure")
    if failure is not None:
        try:
            trace = failure.getTraceback()
        except Exception:  # a broken failure must not break logging
            trace = repr(failure)
        text = text + "\n" + "\n".join("    " + line for line in trace.rstrip().splitlines())
    return text


def format_crs(event: LogEvent, pid: int | None = None) -> str:
    """Render one event as a crs.log line (with trailing newline)."""
    pid = os.getpid() if pid is None else pid
    stamp = utc_timestamp(event.get("log_time", time.time()))
    return f"[{stamp} | {event_type(event)} | {event_module(event)}({pid}) ] {_text(event)}\n"


def format_cig(event: LogEvent) -> str:
    """Render one event as a cig.log / relay.log line (with trailing newline)."""
    stamp = utc_timestamp(event.get("log_time", time.time()))
    return f"[{stamp}] {event_module(event)}[{event_type(event)}]: {_text(event)}\n"


def format_plain(event: LogEvent) -> str:
    """Render an event as its message alone (session.log style records)."""
    return one_line(formatEvent(event)) + "\n"


FORMATS: dict[str, Callable[[LogEvent], str]] = {
    "crs": format_crs,
    "cig": format_cig,
    "plain": format_plain,
}


def wants_event(event: LogEvent, file_name: str, main: bool) -> bool:
    """Whether the observer of ``file_name`` writes ``event``.

    A main log writes our own events and anyone's warnings and errors,
    except events addressed to another file with ``log_file``.
    """
    target = event.get("log_file")
    if target is not None:
        return bool(target == file_name)
    if not main:
        return False
    namespace = str(event.get("log_namespace") or "")
    if namespace.startswith("cryptify"):
        return True
    level = event.get("log_level", LogLevel.info)
    return bool(level >= LogLevel.warn)


@implementer(ILogObserver)
@attrs.define
class _FilteringObserver:
    file_name: str
    main: bool
    inner: ILogObserver

    def __call__(self, event: LogEvent) -> None:
        if wants_event(event, self.file_name, self.main):
            self.inner(event)


@attrs.define(eq=False)
class LineSink:
    """Where a busy kind of line goes: to each observer (a
    :class:`LogFileService` writes them to its file; tests watch them).

    Not through ``twisted.logger``: a line made per call or per relay
    command would have the global publisher, twistd's own log and the main
    log's filter each format it, which cost more than the work it records.
    """

    observers: list[Callable[[str], None]] = attrs.field(factory=list)

    def add(self, observer: Callable[[str], None]) -> None:
        self.observers.append(observer)

    def remove(self, observer: Callable[[str], None]) -> None:
        self.observers.remove(observer)

    def write(self, line: str) -> None:
        """Pass ``line`` (without its newline) to every observer."""
        for observer in self.observers:
            observer(line)


def crs_line(kind: str, module: str, text: str, when: float | None = None) -> str:
    """A crs.log-style line (no newline) made without an event, for a
    :class:`LineSink`; the same text :func:`format_crs` gives an event."""
    stamp = utc_timestamp(time.time() if when is None else when)
    return f"[{stamp} | {kind} | {module}({os.getpid()}) ] {one_line(text)}"


def open_log_file(directory: str, name: str) -> LogFile:
    """Open (creating the directory) a size-rotated log file."""
    os.makedirs(directory, mode=0o750, exist_ok=True)
    return LogFile(
        name,
        directory,
        rotateLength=ROTATE_BYTES,
        defaultMode=0o640,
        maxRotatedFiles=ROTATED_FILES,
    )


class LogFileService(service.Service):
    """Write this process's events into ``DIRECTORY/NAME`` while running.

    Started first and stopped last in a service tree, so that start-up and
    shutdown lines are in the file.  ``main`` says whether it is the
    process's main log (our events and everyone's warnings) or a log that
    only takes events addressed to it with ``log_file``.
    """

    def __init__(
        self,
        directory: str,
        name: str,
        style: str = "crs",
        main: bool = True,
        publisher: LogPublisher = globalLogPublisher,
        lines: LineSink | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self.directory = directory
        self.file_name = name
        self.style = style
        self.main = main
        self.publisher = publisher
        self.observer: _FilteringObserver | None = None
        self.file: IO[str] | LogFile | None = None
        #: Busy lines written to this file, those of one reactor turn in one
        #: write at the end of the turn (``clock`` is needed with it).
        self.lines = lines
        self.clock = clock
        self.pending: list[str] = []
        self.flush: IDelayedCall | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.file_name)

    def privilegedStartService(self) -> None:
        # Open the file before privileges are shed, like twistd does for its own.
        self._open()
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        self._open()
        service.Service.startService(self)

    def _open(self) -> None:
        if self.observer is not None:
            return
        self.file = open_log_file(self.directory, self.file_name)
        formatter = FORMATS[self.style]
        # FileLogObserver only writes and flushes, which LogFile does.
        inner: ILogObserver = FileLogObserver(cast(IO[str], self.file), formatter)
        if self.lines is not None:
            inner = self._after_pending(inner)
            self.lines.add(self._line)
        self.observer = _FilteringObserver(self.file_name, self.main, inner)
        self.publisher.addObserver(self.observer)

    def _after_pending(self, inner: ILogObserver) -> ILogObserver:
        """``inner``, writing the turn's busy lines first: the file keeps
        the order things happened in."""

        def observe(event: LogEvent) -> None:
            self._write()
            inner(event)

        return cast(ILogObserver, observe)

    def _line(self, line: str) -> None:
        self.pending.append(line + "\n")
        if self.flush is None and self.clock is not None:
            self.flush = self.clock.callLater(0, self._write)
        elif self.clock is None:
            self._write()

    def _write(self) -> None:
        if self.flush is not None:
            if self.flush.active():
                self.flush.cancel()
            self.flush = None
        if self.file is not None and self.pending:
            self.file.write("".join(self.pending))
        self.pending.clear()

    def stopService(self) -> None:
        service.Service.stopService(self)
        if self.observer is not None:
            self.publisher.removeObserver(self.observer)
            self.observer = None
        if self.lines is not None and self._line in self.lines.observers:
            self.lines.remove(self._line)
        self._write()
        if self.file is not None:
            self.file.close()
            self.file = None
