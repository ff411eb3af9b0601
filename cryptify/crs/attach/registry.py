"""Who is attached to this CRS instance.

The UMSG server calls :meth:`AttachRegistry.attach` when a client has
proven its identity and :meth:`AttachRegistry.detach` when its connection
ends; the registry keeps one attachment per URI (a second attach of the
same URI replaces the first, whose connection is told why and closed),
writes crs.log lines and ``trace attach`` events (states attached,
detached, moved), and answers the operator's ``show attach`` and
``purge``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import attrs
from twisted.logger import Logger

from cryptify.crs.trace import TraceHub
from cryptify.logs import LineSink, crs_line
from cryptify.protocols.umsg import Message

log = Logger(namespace="cryptify.crs.attach")

#: URIs remembered in ``seen`` at most.
MAX_SEEN = 1_000_000

ATTACHED = "attached"
DETACHED = "detached"
MOVED = "moved"


class Connection(Protocol):
    """What the registry needs of an attached client's connection."""

    def disconnect(self, reason: str) -> None:
        """Tell the client why, then close."""

    def send(self, msg: Message) -> None:
        """Deliver a UMSG message to the client."""


@attrs.define(eq=False)
class Attachment:
    """One attached client."""

    uri: str
    account: str
    since: float
    version: str
    host: str
    port: int
    conn: Connection
    #: The key period the client proved itself with (``YYYY-MM``).
    period: str = ""


class AttachRegistry:
    """The attached clients of this instance, by URI."""

    def __init__(
        self,
        crs_name: str,
        clock: Callable[[], float],
        trace: TraceHub | None = None,
    ) -> None:
        self.crs_name = crs_name
        self.clock = clock
        self.trace = trace or TraceHub(clock)
        #: Where the attach, detach, move and refusal lines go when the
        #: process's crs.log takes them directly (one per client event: not
        #: worth twisted.logger's formatting for every observer); without
        #: an observer they are log events as any other.
        self.lines: LineSink | None = None
        self.by_uri: dict[str, Attachment] = {}
        #: URIs that attached to this process since it started (callees that
        #: are known but offline get not-connected rather than not-found).
        self.seen: set[str] = set()
        #: Called with every new attachment (e.g. to remember observed clients).
        self.on_attach: list[Callable[[Attachment], object]] = []

    def __len__(self) -> int:
        return len(self.by_uri)

    def get(self, uri: str) -> Attachment | None:
        return self.by_uri.get(uri)

    def _log(self, kind: str, fmt: str, **fields: object) -> None:
        """One client event's crs.log line: to :attr:`lines` when it has an
        observer, else as a log event (INFO or WARN)."""
        lines = self.lines
        if lines is not None and lines.observers:
            lines.write(crs_line(kind, "attach", fmt.format(**fields)))
        elif kind == "WARN":
            log.warn(fmt, **fields)
        else:
            log.info(fmt, **fields)

    def _event(
        self, state: str, uri: str | None, account: str | None, host: str, port: int, reason: str
    ) -> None:
        self.trace.emit("attach", uri, state, account, host, port, reason)

    def attach(self, attachment: Attachment) -> None:
        """Record an attach; an earlier attachment of the URI is replaced and closed."""
        previous = self.by_uri.get(attachment.uri)
        self.by_uri[attachment.uri] = attachment
        if len(self.seen) < MAX_SEEN:
            self.seen.add(attachment.uri)
        if previous is not None and previous.conn is not attachment.conn:
            self._log(
                "INFO",
                "{uri} attached again from {host}:{port}; closing the earlier connection",
                uri=attachment.uri,
                host=attachment.host,
                port=attachment.port,
            )
            self._event(
                DETACHED, previous.uri, previous.account, previous.host, previous.port, "replaced"
            )
            previous.conn.disconnect("replaced")
        self._log(
            "INFO",
            "{uri} ({account}) attached from {host}:{port}, version {version}",
            uri=attachment.uri,
            account=attachment.account,
            host=attachment.host,
            port=attachment.port,
            version=attachment.version,
        )
        self._event(
            ATTACHED, attachment.uri, attachment.account, attachment.host, attachment.port, "-"
        )
        for listener in self.on_attach:
            try:
                listener(attachment)
            except Exception:
                log.failure("attach listener failed")

    def detach(self, uri: str, conn: Connection, reason: str) -> None:
        """Forget an attachment when its connection ends (if it is still the current one)."""
        current = self.by_uri.get(uri)
        if current is None or current.conn is not conn:
            return
        del self.by_uri[uri]
        self._log("INFO", "{uri} detached: {reason}", uri=uri, reason=reason)
        self._event(DETACHED, uri, current.account, current.host, current.port, reason)

    def moved(self, uri: str, account: str, host: str, port: int, owner: str) -> None:
        """A client was told to move to the instance that owns its slot."""
        self._log("INFO", "{uri} told to move to {owner}", uri=uri, owner=owner)
        self._event(MOVED, uri, account, host, port, f"slot owned by {owner}")

    def refused(
        self, uri: str | None, account: str | None, host: str, port: int, reason: str
    ) -> None:
        """An attach was refused (never attached)."""
        self._log(
            "WARN",
            "attach refused for {uri} ({account}) from {host}:{port}: {reason}",
            uri=uri or "-",
            account=account or "-",
            host=host,
            port=port,
            reason=reason,
        )
        self._event(DETACHED, uri, account, host, port, f"refused: {reason}")

    def matching(self, account: str | None = None, uri: str | None = None) -> list[Attachment]:
        """Attachments of an account and/or a URI."""
        return [
            a
            for a in self.by_uri.values()
            if (account is None or a.account == account) and (uri is None or a.uri == uri)
        ]

    def disconnect(self, attachments: Iterable[Attachment], reason: str) -> int:
        """Close the given attachments' connections, telling them why; return how many."""
        count = 0
        for attachment in list(attachments):
            self.detach(attachment.uri, attachment.conn, reason)
            attachment.conn.disconnect(reason)
            count += 1
        return count

    def rows(self) -> list[list[str]]:
        """``show attach`` rows: URI ACCOUNT TIME VERSION IP:PORT CRS."""
        now = self.clock()
        return [
            [
                a.uri,
                a.account,
                str(int(now - a.since)),
                a.version,
                f"{a.host}:{a.port}",
                self.crs_name,
            ]
            for a in sorted(self.by_uri.values(), key=lambda a: a.uri)
        ]
