"""UMSG over WebSocket (RFC 6455), sans-IO: wsproto's handshake, then our own frames.

:class:`UmsgWebSocket` is one end of a connection, server or client.  Feed
it the octets TLS delivered with :meth:`UmsgWebSocket.receive`; it returns
the events that happened (:class:`Opened`, :class:`Received`,
:class:`PongReceived`, :class:`Closed`) and keeps the octets to write in
:meth:`UmsgWebSocket.outgoing`.  It answers pings itself, refuses a
handshake without the ``umsg.1`` subprotocol, refuses text messages and
messages larger than ``max_message`` (close codes 1003 and 1009) and turns
any framing error into a close with 1002.

wsproto does the HTTP upgrade.  After it, wsproto is dropped and the frames
are read and written here (:class:`UmsgWebSocket` ``_parse``,
:func:`server_frame`, :func:`client_frame`): same checks, in the same
order, with the same close codes and reasons as wsproto 1.x without
extensions (none is ever negotiated), which the tests check against
wsproto byte for byte.  The one deliberate difference: a frame that would
take a message past ``max_message`` fails (1009) as soon as its header is
in (a text frame: its first payload octet), instead of once the excess has
arrived, so an oversized message is never buffered or waited for.
"""

from __future__ import annotations

import os
from codecs import getincrementaldecoder

import attrs
import h11
from wsproto.connection import ConnectionType
from wsproto.events import (
    AcceptConnection,
    Event,
    RejectConnection,
    RejectData,
    Request,
)
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from cryptify.protocols.umsg import MAX_MESSAGE, SUBPROTOCOL

#: Largest opening handshake request the server reads, octets (request line
#: and headers): a larger one is answered 400 and closed, however it arrives.
MAX_UPGRADE = 32 * 1024

#: Close codes used (RFC 6455 section 7.4.1).
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
INVALID_DATA = 1007
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

# Opcodes (RFC 6455 section 5.2).
_CONTINUATION = 0x0
_TEXT = 0x1
_BINARY = 0x2
_CLOSE = 0x8
_PING = 0x9
_PONG = 0xA
_OPCODES = frozenset((_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG))
_OPCODE_REPR = {_TEXT: "<Opcode.TEXT: 1>", _BINARY: "<Opcode.BINARY: 2>"}
#: Close codes a peer may not send (section 7.4.1) and the codes defined
#: below 3000 (wsproto's CloseReason): others below 3000 are refused.
_LOCAL_ONLY = frozenset((1005, 1006, 1015))
_KNOWN_CLOSE = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013))
#: Below this size XOR over one big integer is cheapest, above it four
#: ``bytes.translate`` over the stripes of the payload (measured).
_INT_MASK_LIMIT = 512
_XOR_TABLE = [bytes(a ^ b for a in range(256)) for b in range(256)]
_from_bytes = int.from_bytes


def mask(data: bytes, key: bytes) -> bytes:
    """``data`` XOR the 4-octet ``key`` repeated (RFC 6455 section 5.3); its own inverse."""
    size = len(data)
    if size <= _INT_MASK_LIMIT:
        if not size:
            return b""
        stream = (key * ((size >> 2) + 1))[:size]
        return (_from_bytes(data) ^ _from_bytes(stream)).to_bytes(size)
    out = bytearray(data)
    table = _XOR_TABLE
    out[0::4] = out[0::4].translate(table[key[0]])
    out[1::4] = out[1::4].translate(table[key[1]])
    out[2::4] = out[2::4].translate(table[key[2]])
    out[3::4] = out[3::4].translate(table[key[3]])
    return bytes(out)


def _header(first: int, mask_bit: int, size: int) -> bytes:
    if size < 126:
        return bytes((first, mask_bit | size))
    if size < 1 << 16:
        return bytes((first, mask_bit | 126)) + size.to_bytes(2, "big")
    return bytes((first, mask_bit | 127)) + size.to_bytes(8, "big")


def server_frame(data: bytes, opcode: int = _BINARY) -> bytes:
    """One unmasked, final frame carrying ``data`` (RFC 6455 section 5.2)."""
    size = len(data)
    if size < 126:
        return bytes((0x80 | opcode, size)) + data
    return _header(0x80 | opcode, 0, size) + data


def client_frame(data: bytes, opcode: int = _BINARY) -> bytes:
    """One masked, final frame carrying ``data``; a fresh random key per frame.

    The key comes from ``os.urandom`` (RFC 6455 section 10.3: it must not be
    predictable from earlier frames).
    """
    key = os.urandom(4)
    size = len(data)
    if size < 126:
        return bytes((0x80 | opcode, 0x80 | size)) + key + mask(data, key)
    return _header(0x80 | opcode, 0x80, size) + key + mask(data, key)


def _close_payload(code: int, reason: str) -> bytes:
    """A close frame's payload as wsproto writes it for ``code`` and ``reason``."""
    if code in _LOCAL_ONLY:
        code = NORMAL
    return code.to_bytes(2, "big") + _truncate_utf8(reason.encode("utf-8"), 123)


def _truncate_utf8(data: bytes, size: int) -> bytes:
    if len(data) <= size:
        return data
    return data[:size].decode("utf-8", errors="ignore").encode("utf-8")


class _ProtocolFailure(Exception):
    """A framing error: fail the WebSocket with ``code``."""

    def __init__(self, reason: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.code = code


@attrs.define(slots=True)
class UmsgWebSocket:
    """One WebSocket end carrying UMSG: the handshake, then frames."""

    client: bool
    max_message: int = MAX_MESSAGE
    host: str = "localhost"
    path: str = "/"
    _handshake: H11Handshake | None = None
    _opened: bool = False
    _out: list[bytes] = attrs.field(factory=list)
    #: The fragments so far of a message sent in several frames.
    _partial: bytearray | None = None
    #: Octets received but not parsed yet (an incomplete frame) ...
    _rest: bytearray | None = None
    #: ... and how many octets ``_rest`` must hold before parsing again.
    _need: int = 0
    _closed: bool = False
    _failed: bool = False
    #: Octets fed to the handshake so far (the server checks MAX_UPGRADE).
    _fed: int = 0

    @classmethod
    def server(cls, max_message: int = MAX_MESSAGE) -> UmsgWebSocket:
        """The CRS end: waits for the client's upgrade request."""
        ws = cls(client=False, max_message=max_message)
        ws._handshake = H11Handshake(ConnectionType.SERVER)
        # h11's own bound (16 KiB by default) applies only to what is still
        # incomplete, so its effect depended on how the request was cut:
        # bound the incomplete request here, the complete one in _accept.
        ws._handshake._h11_connection = h11.Connection(
            h11.SERVER, max_incomplete_event_size=MAX_UPGRADE
        )
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
        return self._opened and not self._closed

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
        """Queue one binary message (no-op once closing).

        One final frame, no extension (none is ever accepted): masked with a
        fresh key from the client, unmasked from the server.
        """
        if self._opened and not self._closed:
            self._out.append(client_frame(data) if self.client else server_frame(data))

    def ping(self, payload: bytes = b"") -> None:
        """Queue a ping."""
        if self._opened and not self._closed:
            self._out.append(self._control(_PING, payload))

    def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Queue a close frame (or, during the handshake, nothing: just close)."""
        if self._closed:
            return
        self._closed = True
        if self._opened:
            self._out.append(self._control(_CLOSE, _close_payload(code, reason)))

    def receive(self, data: bytes) -> list[WsEvent]:
        """Feed received octets; return what happened."""
        if self._closed or self._failed:
            return []
        events: list[WsEvent] = []
        if self._opened:
            self._parse(data, events)
            return events
        try:
            if self._handshake is not None:
                self._handshake_data(data, events)
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

    def _control(self, opcode: int, payload: bytes) -> bytes:
        if len(payload) > 125:
            raise ValueError("payload too long for control frame")
        return client_frame(payload, opcode) if self.client else server_frame(payload, opcode)

    def _fail(
        self, events: list[WsEvent], code: int, reason: str, exc: Exception | None = None
    ) -> None:
        if not self._opened:
            # During the handshake there is no WebSocket to close: answer the
            # HTTP request with an error if we can, and close the transport.
            hint: object = getattr(exc, "event_hint", None)
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
        self._rest = self._partial = None
        events.append(Failed(code, reason))

    def _handshake_data(self, data: bytes, events: list[WsEvent]) -> None:
        hs = self._handshake
        assert hs is not None
        self._fed += len(data)
        hs.receive_data(data)
        for event in hs.events():
            if isinstance(event, Request):
                self._accept(hs, event, events)
            elif isinstance(event, AcceptConnection):
                if event.subprotocol != SUBPROTOCOL:
                    self._handshake = None
                    self._fail(events, PROTOCOL_ERROR, "server did not select umsg.1")
                    return
                self._open(hs, events, event)
            elif isinstance(event, RejectConnection | RejectData):
                self._handshake = None
                status = getattr(event, "status_code", 0)
                self._fail(events, PROTOCOL_ERROR, f"upgrade refused ({status})")
                return
            if self._handshake is None:
                return

    def _accept(self, hs: H11Handshake, request: Request, events: list[WsEvent]) -> None:
        size = self._fed - len(hs._h11_connection.trailing_data[0])
        if size > MAX_UPGRADE:
            self._reject(hs, events, b"upgrade request larger than 32 KiB\n", "request too large")
            return
        if SUBPROTOCOL not in request.subprotocols:
            self._reject(hs, events, b"subprotocol umsg.1 required\n", "no umsg.1 subprotocol")
            return
        self._out.append(hs.send(AcceptConnection(subprotocol=SUBPROTOCOL)))
        self._open(hs, events, request)

    def _reject(self, hs: H11Handshake, events: list[WsEvent], body: bytes, reason: str) -> None:
        """Answer the upgrade request 400 with ``body`` and close."""
        reject = RejectConnection(
            status_code=400, headers=[(b"content-type", b"text/plain")], has_body=True
        )
        self._out.append(hs.send(reject))
        self._out.append(hs.send(RejectData(data=body, body_finished=True)))
        self._handshake = None
        self._closed = True
        events.append(Closed(PROTOCOL_ERROR, reason))

    def _open(self, hs: H11Handshake, events: list[WsEvent], event: Event) -> None:
        # Octets the peer sent right behind the handshake belong to frames.
        # wsproto's frame layer (hs.connection) is not used: dropped with hs.
        trailing, _ = hs._h11_connection.trailing_data
        self._opened = True
        self._handshake = None
        path = event.target if isinstance(event, Request) else self.path
        events.append(Opened(path))
        if trailing:
            self._parse(bytes(trailing), events)

    def _parse(self, data: bytes, events: list[WsEvent]) -> None:
        """Read the frames in ``_rest`` + ``data``; keep an incomplete one in ``_rest``."""
        rest = self._rest
        if rest is not None:
            rest += data
            if len(rest) < self._need:
                return
            data = bytes(rest)
            self._rest = None
        try:
            pos = self._frames(data, events)
        except _ProtocolFailure as exc:
            self._fail(events, exc.code, str(exc)[:100])
            return
        if pos < len(data) and not (self._closed or self._failed):
            self._rest = bytearray(data[pos:]) if pos else bytearray(data)

    def _frames(self, data: bytes, events: list[WsEvent]) -> int:
        """Handle the complete frames at the start of ``data``; return where they end.

        The checks and their order are wsproto's (FrameDecoder.parse_header,
        MessageDecoder, FrameProtocol._process_close), so that any input fails
        with the same code and reason as before.  ``_need`` is set to the
        octets needed before looking again.
        """
        size = len(data)
        pos = 0
        client = self.client
        while True:
            avail = size - pos
            if avail < 2:
                self._need = 2
                return pos
            first = data[pos]
            second = data[pos + 1]
            opcode = first & 0x0F
            if opcode not in _OPCODES:
                raise _ProtocolFailure(f"Invalid opcode {opcode:#x}")
            fin = first & 0x80
            length = second & 0x7F
            if opcode & 0x08:
                if not fin:
                    raise _ProtocolFailure("Invalid attempt to fragment control frame")
                if length > 125:
                    raise _ProtocolFailure("Control frame with payload len > 125")
            head = 2
            if length == 126:
                if avail < 4:
                    self._need = 4
                    return pos
                length = (data[pos + 2] << 8) | data[pos + 3]
                if length <= 125:
                    raise _ProtocolFailure("Payload length used 2 bytes when 1 would have sufficed")
                head = 4
            elif length == 127:
                if avail < 10:
                    self._need = 10
                    return pos
                length = _from_bytes(data[pos + 2 : pos + 10])
                if length <= 0xFFFF:
                    raise _ProtocolFailure("Payload length used 8 bytes when 2 would have sufficed")
                if length >> 63:
                    raise _ProtocolFailure("8-byte payload length with non-zero MSB")
                head = 10
            if first & 0x70:
                raise _ProtocolFailure("Reserved bit set unexpectedly")
            if second & 0x80:
                if client:
                    raise _ProtocolFailure("client received unexpected masked frame")
                head += 4
                if avail < head:
                    self._need = head
                    return pos
            elif not client:
                raise _ProtocolFailure("server received unexpected unmasked frame")
            start = pos + head
            end = start + length
            if opcode & 0x08:
                if end > size:
                    self._need = head + length
                    return pos
                payload = data[start:end]
                if not client:
                    payload = mask(payload, data[start - 4 : start])
                pos = end
                if self._control_frame(opcode, payload, events):
                    return pos
                continue
            partial = self._partial
            # A binary or continuation frame (in sequence) whose header
            # announces more than the limit fails (1009) at once: no payload
            # octet is waited for, none is buffered.
            if (
                opcode != _TEXT
                and (partial is None) == (opcode != _CONTINUATION)
                and length + (0 if partial is None else len(partial)) > self.max_message
            ):
                raise _ProtocolFailure(f"message larger than {self.max_message} octets", TOO_BIG)
            # A data frame: wsproto checks it once the first payload octet is in.
            if length and avail == head:
                self._need = head + 1
                return pos
            if partial is None:
                if opcode == _CONTINUATION:
                    raise _ProtocolFailure("unexpected CONTINUATION")
            elif opcode != _CONTINUATION:
                raise _ProtocolFailure(f"expected CONTINUATION, got {_OPCODE_REPR[opcode]}")
            if opcode == _TEXT:
                self._text(data, start, min(end, size), bool(fin and end <= size))
            if length + (0 if partial is None else len(partial)) > self.max_message:
                raise _ProtocolFailure(f"message larger than {self.max_message} octets", TOO_BIG)
            if end > size:
                self._need = head + length
                return pos
            payload = data[start:end]
            if not client:
                payload = mask(payload, data[start - 4 : start])
            pos = end
            if fin:
                if partial is None:
                    events.append(Received(payload))
                else:
                    partial += payload
                    self._partial = None
                    events.append(Received(bytes(partial)))
            elif partial is None:
                self._partial = bytearray(payload)
            else:
                partial += payload

    def _text(self, data: bytes, start: int, end: int, final: bool) -> None:
        """A text frame: 1003, or 1007 if its first octets are not UTF-8 (as wsproto)."""
        chunk = data[start:end]
        if not self.client:
            chunk = mask(chunk, data[start - 4 : start])
        try:
            getincrementaldecoder("utf-8")().decode(chunk, final)
        except UnicodeDecodeError as exc:
            raise _ProtocolFailure(str(exc), INVALID_DATA) from None
        raise _ProtocolFailure("UMSG uses binary messages only", UNSUPPORTED_DATA)

    def _control_frame(self, opcode: int, payload: bytes, events: list[WsEvent]) -> bool:
        """Handle a ping, pong or close; return whether to stop reading."""
        if opcode == _PING:
            self._out.append(self._control(_PONG, payload))
            return False
        if opcode == _PONG:
            events.append(PongReceived())
            return False
        if not payload:
            code, reason = 1005, ""
        elif len(payload) == 1:
            raise _ProtocolFailure("CLOSE with 1 byte payload")
        else:
            code = (payload[0] << 8) | payload[1]
            if code < 1000 or code > 4999:
                raise _ProtocolFailure("CLOSE with invalid code")
            if code in _LOCAL_ONLY:
                raise _ProtocolFailure("remote CLOSE with local-only reason")
            if code <= 2999 and code not in _KNOWN_CLOSE:
                raise _ProtocolFailure("CLOSE with unknown reserved code")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _ProtocolFailure(
                    "Error decoding CLOSE reason: " + str(exc), INVALID_DATA
                ) from None
        # Echo the close (its code and reason; none when it had none) and stop.
        self._out.append(self._control(_CLOSE, payload))
        self._closed = True
        self._rest = self._partial = None
        events.append(Closed(code, reason))
        return True
