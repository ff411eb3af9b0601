"""The server's WebSocket opening handshake (RFC 6455 section 4.2) without
wsproto and h11 for the requests clients send.

wsproto parses the client's upgrade request with h11 and answers it: about
0.2 ms of the CRS's CPU per connection, a tenth of a ticket re-attach.
:class:`ServerUpgrade` reads the request head itself when it is plainly
well-formed (a strict subset of what h11 and wsproto accept: ``GET``,
``HTTP/1.1``, visible ASCII, one each of ``Host``, ``Upgrade: websocket``,
``Connection`` with ``upgrade``, ``Sec-WebSocket-Version: 13``,
``Sec-WebSocket-Key`` and a ``Sec-WebSocket-Protocol`` offering
``umsg.1``, no body) and answers it with the very octets wsproto would
write.  Anything else, including every request wsproto refuses, goes to
:meth:`UmsgWebSocket.server` with every octet received so far, so odd and
hostile requests get exactly the answers and errors they always got (the
tests compare both routes on valid, mutated and random requests cut
anywhere).
"""

from __future__ import annotations

import base64
import hashlib
import re

from cryptify.protocols.umsg import MAX_MESSAGE, SUBPROTOCOL
from cryptify.protocols.umsg_ws import Opened, UmsgWebSocket, WsEvent

#: Longest request head the fast route reads; a longer one (or one still
#: incomplete at this size) goes to wsproto, which allows up to MAX_UPGRADE.
FAST_MAX = 8192

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_REQUEST_LINE = re.compile(rb"GET ([\x21-\x7e]+) HTTP/1\.1")
_HEADER = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*([\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)[ \t]*"
)
#: Headers wsproto or h11 act on: each must appear once for the fast route.
_SINGLE = frozenset(
    (
        b"host",
        b"upgrade",
        b"connection",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
    )
)
#: Headers that make h11 read a body or answer 100-continue: wsproto's route.
_BODY = frozenset((b"content-length", b"transfer-encoding", b"expect"))


def accept_response(key: bytes) -> bytes:
    """The 101 answer to a request with ``Sec-WebSocket-Key: key`` selecting
    ``umsg.1``, octet for octet as wsproto (h11) writes it."""
    # RFC 6455 fixes SHA-1 here (not a security use)
    token = base64.b64encode(hashlib.sha1(key + _GUID, usedforsecurity=False).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: "
        + token
        + b"\r\nSec-WebSocket-Protocol: "
        + SUBPROTOCOL.encode("ascii")
        + b"\r\n\r\n"
    )


def parse_request(head: bytes) -> tuple[str, bytes] | None:
    """(path, key) of a request head (without its final blank line) the fast
    route answers, or None to leave it to wsproto."""
    lines = head.split(b"\r\n")
    start = _REQUEST_LINE.fullmatch(lines[0])
    if start is None:
        return None
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        match = _HEADER.fullmatch(line)
        if match is None:
            return None
        name = match.group(1).lower()
        if name in _BODY or (name in _SINGLE and name in fields):
            return None
        fields[name] = match.group(2)
    try:
        host = fields[b"host"]
        key = fields[b"sec-websocket-key"]
        upgrade = fields[b"upgrade"]
        version = fields[b"sec-websocket-version"]
        connection = fields[b"connection"]
        protocols = fields[b"sec-websocket-protocol"]
    except KeyError:
        return None
    if upgrade.lower() != b"websocket" or version != b"13":
        return None
    if not any(token.strip().lower() == b"upgrade" for token in connection.split(b",")):
        return None
    if SUBPROTOCOL.encode("ascii") not in (p.strip() for p in protocols.split(b",")):
        return None
    try:
        host.decode("idna")  # wsproto decodes it (and fails on some): its route then
    except UnicodeError:
        return None
    return start.group(1).decode("ascii"), key


class ServerUpgrade:
    """Collects a connection's first octets until the request head is in,
    then hands over to a :class:`UmsgWebSocket`: open already (fast
    route), or a fresh server end fed everything (wsproto's route).

    :meth:`receive` returns None while it waits, else ``(ws, events)``:
    the WebSocket to feed from then on and what happened on it so far.
    """

    __slots__ = ("_buffer", "_max_message")

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buffer = b""
        self._max_message = max_message

    def receive(self, data: bytes) -> tuple[UmsgWebSocket, list[WsEvent]] | None:
        buffer = self._buffer + data if self._buffer else data
        end = buffer.find(b"\r\n\r\n")
        head = buffer if end < 0 else buffer[: end + 4]
        if head.count(b"\n") != head.count(b"\r\n"):
            # h11 also ends a head at a bare LF (and may refuse it early): its route
            return self._slow(buffer)
        if end < 0:
            if len(buffer) < FAST_MAX and _REQUEST_LINE_PREFIX.match(buffer[:4]):
                self._buffer = buffer
                return None
            return self._slow(buffer)
        parsed = parse_request(buffer[:end]) if end + 4 <= FAST_MAX else None
        if parsed is None:
            return self._slow(buffer)
        path, key = parsed
        ws = UmsgWebSocket(
            client=False, max_message=self._max_message, opened=True, out=[accept_response(key)]
        )
        self._buffer = b""
        events: list[WsEvent] = [Opened(path)]
        rest = buffer[end + 4 :]
        if rest:
            events.extend(ws.receive(rest))
        return ws, events

    def _slow(self, buffer: bytes) -> tuple[UmsgWebSocket, list[WsEvent]]:
        self._buffer = b""
        ws = UmsgWebSocket.server(self._max_message)
        return ws, ws.receive(buffer)


#: What a request can start with for the fast route to keep waiting.
_REQUEST_LINE_PREFIX = re.compile(rb"(?:G(?:E(?:T(?: )?)?)?)?\Z")
