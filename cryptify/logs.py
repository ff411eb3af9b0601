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


def _text(event: LogEvent) -> str:
    text = formatEvent(event)
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
    return formatEvent(event) + "\n"


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
    ) -> None:
        self.directory = directory
        self.file_name = name
        self.style = style
        self.main = main
        self.publisher = publisher
        self.observer: _FilteringObserver | None = None
        self.file: IO[str] | LogFile | None = None

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
        inner = FileLogObserver(cast(IO[str], self.file), formatter)
        self.observer = _FilteringObserver(self.file_name, self.main, inner)
        self.publisher.addObserver(self.observer)

    def stopService(self) -> None:
        service.Service.stopService(self)
        if self.observer is not None:
            self.publisher.removeObserver(self.observer)
            self.observer = None
        if self.file is not None:
            self.file.close()
            self.file = None
