"""UMSG over WebSocket (RFC 6455), sans-IO, on wsproto.

:class:`UmsgWebSocket` is one end of a connection, server or client.  Feed
it the octets TLS delivered with :meth:`UmsgWebSocket.receive`; it returns
the events that happened (:class:`Opened`, :class:`Received`,
:class:`PongReceived`, :class:`Closed`) and keeps the octets to write in
:meth:`UmsgWebSocket.outgoing`.  It answers pings itself, refuses a
handshake without the ``umsg.1`` subprotocol, refuses text messages and
messages larger than ``max_message`` (close codes 1003 and 1009) and turns
any framing error into a close with 1002.  After the handshake only the
frame layer is kept (the HTTP parser is dropped), which keeps an idle
connection small.
"""

from __future__ import annotations

from typing import Any

import attrs
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from cryptify.protocols.umsg import MAX_MESSAGE, SUBPROTOCOL

#: Close codes used (RFC 6455 section 7.4.1).
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
POLICY = 1008
TOO_BIG = 1009


@attrs.frozen
class Opened:
    """The WebSocket handshake completed with subprotocol ``umsg.1``."""

    path: str = "/"


@attrs.frozen
class Received:
    """One complete binary message (one UMSG message, still encoded)."""

    data: bytes


@attrs.frozen
class PongReceived:
    """The peer answered a ping."""


@attrs.frozen
class Failed:
    """The peer broke the rules (framing, text, size, handshake).

    Input is ignored from now on.  The owner may still send (a refusal,
    say) and must then :meth:`UmsgWebSocket.close` with ``code`` and close
    the transport.
    """

    code: int
    reason: str


@attrs.frozen
class Closed:
    """The WebSocket is closed; the transport should be closed."""

    code: int
    reason: str


WsEvent = Opened | Received | PongReceived | Failed | Closed


def server_frame(data: bytes) -> bytes:
    """One unmasked, final binary frame carrying ``data`` (RFC 6455 section 5.2)."""
    size = len(data)
    if size < 126:
        return bytes((0x82, size)) + data
    if size < 1 << 16:
        return b"\x82\x7e" + size.to_bytes(2, "big") + data
    return b"\x82\x7f" + size.to_bytes(8, "big") + data


@attrs.define(slots=True)
class UmsgWebSocket:
    """One WebSocket end carrying UMSG: the handshake, then frames."""

    client: bool
    max_message: int = MAX_MESSAGE
    host: str = "localhost"
    path: str = "/"
    _handshake: H11Handshake | None = None
    _conn: Connection | None = None
    _out: list[bytes] = attrs.field(factory=list)
    _partial: bytearray | None = None
    _closed: bool = False
    _failed: bool = False

    @classmethod
    def server(cls, max_message: int = MAX_MESSAGE) -> UmsgWebSocket:
        """The CRS end: waits for the client's upgrade request."""
        ws = cls(client=False, max_message=max_message)
        ws._handshake = H11Handshake(ConnectionType.SERVER)
        return ws

    @classmethod
    def connect(cls, host: str, path: str = "/", max_message: int = MAX_MESSAGE) -> UmsgWebSocket:
        """The client end: queues the upgrade request offering ``umsg.1``."""
        ws = cls(client=True, max_message=max_message, host=host, path=path)
        ws._handshake = H11Handshake(ConnectionType.CLIENT)
        ws._out.append(
            ws._handshake.send(Request(host=host, target=path, subprotocols=[SUBPROTOCOL]))
        )
        return ws

    @property
    def open(self) -> bool:
        """Whether messages can be sent."""
        return self._conn is not None and self._conn.state is ConnectionState.OPEN

    @property
    def closed(self) -> bool:
        """Whether the WebSocket is closed or closing."""
        return self._closed

    def outgoing(self) -> bytes:
        """The octets to write now (and forget them)."""
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def send(self, data: bytes) -> None:
        """Queue one binary message (no-op once closing)."""
        if self.open:
            assert self._conn is not None
            if self.client:
                self._out.append(bytes(self._conn.send(BytesMessage(data=data))))
            else:
                # The server's frames are unmasked and no extension is ever
                # accepted (see _accept), so one frame is a header and the
                # octets: what wsproto writes, without its per-frame work.
                self._out.append(server_frame(data))

    def ping(self, payload: bytes = b"") -> None:
        """Queue a ping."""
        if self.open:
            assert self._conn is not None
            self._out.append(bytes(self._conn.send(Ping(payload=payload))))

    def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Queue a close frame (or, during the handshake, nothing: just close)."""
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        if conn is not None and conn.state in (
            ConnectionState.OPEN,
            ConnectionState.REMOTE_CLOSING,
        ):
            self._out.append(bytes(conn.send(CloseConnection(code=code, reason=reason))))

    def receive(self, data: bytes) -> list[WsEvent]:
        """Feed received octets; return what happened."""
        if self._closed or self._failed:
            return []
        events: list[WsEvent] = []
        try:
            if self._handshake is not None:
                self._handshake_data(data, events)
            elif self._conn is not None and not self._conn_closed():
                self._conn.receive_data(data)
                self._frames(events)
        except (RemoteProtocolError, LocalProtocolError) as exc:
            self._fail(events, PROTOCOL_ERROR, str(exc)[:100], exc)
        return events

    def connection_lost(self) -> list[WsEvent]:
        """The transport closed; report Closed once if not reported already."""
        if self._closed:
            return []
        self._closed = True
        return [Closed(1006, "connection lost")]

    # ------------------------------------------------------------ internals

    def _conn_closed(self) -> bool:
        return self._conn is None or self._conn.state is ConnectionState.CLOSED

    def _fail(
        self, events: list[WsEvent], code: int, reason: str, exc: Exception | None = None
    ) -> None:
        if self._conn is None:
            # During the handshake there is no WebSocket to close: answer the
            # HTTP request with an error if we can, and close the transport.
            hint: Any = getattr(exc, "event_hint", None)
            if self._handshake is not None and isinstance(hint, RejectConnection):
                try:
                    self._out.append(self._handshake.send(hint))
                except LocalProtocolError:
                    pass
            self._handshake = None
            self._closed = True
            events.append(Closed(code, reason))
            return
        self._failed = True
        events.append(Failed(code, reason))

    def _handshake_data(self, data: bytes, events: list[WsEvent]) -> None:
        hs = self._handshake
        assert hs is not None
        hs.receive_data(data)
        for event in hs.events():
            if isinstance(event, Request):
                self._accept(hs, event, events)
            elif isinstance(event, AcceptConnection):
                if event.subprotocol != SUBPROTOCOL:
                    self._handshake = None
                    self._fail(events, PROTOCOL_ERROR, "server did not select umsg.1")
                    return
                self._opened(hs, events, event)
            elif isinstance(event, RejectConnection | RejectData):
                self._handshake = None
                status = getattr(event, "status_code", 0)
                self._fail(events, PROTOCOL_ERROR, f"upgrade refused ({status})")
                return
            if self._handshake is None:
                return

    def _accept(self, hs: H11Handshake, request: Request, events: list[WsEvent]) -> None:
        if SUBPROTOCOL not in request.subprotocols:
            reject = RejectConnection(
                status_code=400,
                headers=[(b"content-type", b"text/plain")],
                has_body=True,
            )
            self._out.append(hs.send(reject))
            self._out.append(
                hs.send(RejectData(data=b"subprotocol umsg.1 required\n", body_finished=True))
            )
            self._handshake = None
            self._closed = True
            events.append(Closed(PROTOCOL_ERROR, "no umsg.1 subprotocol"))
            return
        self._out.append(hs.send(AcceptConnection(subprotocol=SUBPROTOCOL)))
        self._opened(hs, events, request)

    def _opened(self, hs: H11Handshake, events: list[WsEvent], event: Event) -> None:
        conn = hs.connection
        assert conn is not None
        if not self.client:
            # Octets the client sent right behind its request belong to frames.
            trailing, _ = hs._h11_connection.trailing_data
            if trailing:
                conn.receive_data(bytes(trailing))
        self._conn = conn
        self._handshake = None
        path = event.target if isinstance(event, Request) else self.path
        events.append(Opened(path))
        self._frames(events)

    def _frames(self, events: list[WsEvent]) -> None:
        conn = self._conn
        assert conn is not None
        for event in conn.events():
            if isinstance(event, BytesMessage):
                if not self._collect(event, events):
                    return
            elif isinstance(event, Ping):
                if conn.state is ConnectionState.OPEN:
                    self._out.append(bytes(conn.send(event.response())))
            elif isinstance(event, Pong):
                events.append(PongReceived())
            elif isinstance(event, TextMessage):
                self._fail(events, UNSUPPORTED_DATA, "UMSG uses binary messages only")
                return
            elif isinstance(event, CloseConnection):
                if conn.state is ConnectionState.OPEN:
                    # wsproto reports a framing error as a close it did not send.
                    self._fail(events, int(event.code), (event.reason or "")[:100])
                    return
                if conn.state is ConnectionState.REMOTE_CLOSING:
                    self._out.append(bytes(conn.send(event.response())))
                already = self._closed
                self._closed = True
                if not already:
                    events.append(Closed(event.code, event.reason or ""))
                return

    def _collect(self, event: BytesMessage, events: list[WsEvent]) -> bool:
        chunk = event.data
        if self._partial is None:
            if event.message_finished and len(chunk) <= self.max_message:
                events.append(Received(bytes(chunk)))
                return True
            self._partial = bytearray()
        self._partial += chunk
        if len(self._partial) > self.max_message:
            self._partial = None
            self._fail(events, TOO_BIG, f"message larger than {self.max_message} octets")
            return False
        if event.message_finished:
            events.append(Received(bytes(self._partial)))
            self._partial = None
        return True
