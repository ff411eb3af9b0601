"""Live traces for ``crs-cli trace ELEMENT``.

Producers call :meth:`TraceHub.emit` with an element (attach, session,
message, object, event) and the fields of one event; every CLI currently
tracing that element gets the line, in the manual's comma-separated layout
with the element as its header::

    attach, 2026-11-23 19:40:01.123, tel:+4670, attached, acme, 192.0.2.7, 50412, -

Emitting costs nothing when nobody traces.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.logger import ILogObserver, LogEvent, formatEvent
from zope.interface import implementer

from cryptify.logs import utc_timestamp

#: The elements ``trace`` accepts.
ELEMENTS = ("attach", "session", "message", "object", "event")

Subscriber = Callable[[str], None]


def _field(value: object) -> str:
    text = "-" if value is None or value == "" else str(value)
    # One event, one line: no separators or line breaks from client data.
    return "".join(c if c.isprintable() else "?" for c in text).replace(",", ";")


class TraceHub:
    """Fan trace events out to the CLIs tracing them."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.subscribers: dict[str, list[Subscriber]] = {e: [] for e in ELEMENTS}

    def subscribe(self, element: str, subscriber: Subscriber) -> Callable[[], None]:
        """Start sending ``element`` lines to ``subscriber``; return the unsubscribe."""
        if element not in self.subscribers:
            raise ValueError(f"unknown trace element {element!r}")
        self.subscribers[element].append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self.subscribers[element]:
                self.subscribers[element].remove(subscriber)

        return unsubscribe

    def active(self, element: str) -> bool:
        return bool(self.subscribers.get(element))

    def emit(self, element: str, *fields: object) -> None:
        """One event: ``element, time, fields...``."""
        subscribers = self.subscribers.get(element)
        if not subscribers:
            return
        stamp = utc_timestamp(self.clock())
        line = ", ".join([element, stamp, *(_field(f) for f in fields)])
        for subscriber in list(subscribers):
            subscriber(line)

    def event(self, module: str, information: str, kind: str = "dbg") -> None:
        """A debug event: ``Module, Type, Time, Information``."""
        subscribers = self.subscribers["event"]
        if not subscribers:
            return
        line = ", ".join([_field(module), kind, utc_timestamp(self.clock()), _field(information)])
        for subscriber in list(subscribers):
            subscriber(line)


@implementer(ILogObserver)
class EventTraceObserver:
    """Feeds this process's log events to ``trace event`` while someone traces.

    A log observer (add it to the global log publisher): each event from our
    own modules becomes ``Module, dbg, Time, Information``.  It costs one
    dictionary lookup per event when nobody is tracing.
    """

    def __init__(self, hub: TraceHub) -> None:
        self.hub = hub

    def __call__(self, event: LogEvent) -> None:
        if not self.hub.subscribers["event"]:
            return
        namespace = str(event.get("log_namespace") or "")
        if not namespace.startswith("cryptify") or event.get("log_file") is not None:
            return
        module = str(event.get("log_module") or namespace.rsplit(".", 1)[-1])
        self.hub.event(module, formatEvent(event))
