"""A small HTTP/2 client on Twisted and ``h2``: what APNs and FCM need.

One TLS connection (ALPN ``h2``) per origin, opened at the first request,
reused for every request after it and opened again once lost.  Requests
are whole (small) bodies; responses are read whole, up to
:data:`MAX_BODY` bytes.  ``h2`` does all of the framing; this module only
moves bytes and matches streams to requests.

Failures come out as :class:`Unreachable` (no connection, connection lost,
no answer within :data:`REQUEST_TIMEOUT`, stream reset, GOAWAY) so the
callers treat them all as "the provider is down: back off".
"""

from __future__ import annotations

from typing import cast
from urllib.parse import urlsplit

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import H2Error
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.reactor import IReactor

log = Logger(namespace="cryptify.push.h2")

#: Longest response body read (bigger answers are cut off as an error).
MAX_BODY = 64 * 1024
#: Most response header bytes accepted.
MAX_HEADER_LIST = 16 * 1024
#: Seconds a request may wait for its whole answer.
REQUEST_TIMEOUT = 30.0
#: Seconds a connection attempt may take.
CONNECT_TIMEOUT = 15.0
#: Requests in flight on one connection, at most.
MAX_STREAMS = 100


class Unreachable(Exception):
    """The origin could not be reached or did not answer."""


@attrs.frozen
class Response:
    """A whole HTTP/2 response."""

    status: int
    headers: dict[str, str]
    body: bytes


@attrs.define
class _Stream:
    done: Deferred[Response]
    status: int = 0
    headers: dict[str, str] = attrs.field(factory=dict)
    body: bytearray = attrs.field(factory=bytearray)
    timer: IDelayedCall | None = None


class H2ClientProtocol(Protocol):
    """One HTTP/2 connection: send requests, match answers to streams."""

    def __init__(self, clock: IReactorTime, timeout: float = REQUEST_TIMEOUT) -> None:
        self.clock = clock
        self.timeout = timeout
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.local_settings.max_header_list_size = MAX_HEADER_LIST
        self.streams: dict[int, _Stream] = {}
        self.open = False
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.open = True
        self.conn.initiate_connection()
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def request(
        self, method: str, path: str, authority: str, headers: list[tuple[str, str]], body: bytes
    ) -> Deferred[Response]:
        """Send one request; the Deferred fires with its whole answer."""
        if not self.open:
            return defer.fail(Unreachable("connection closed"))
        if len(self.streams) >= MAX_STREAMS:
            return defer.fail(Unreachable("too many requests in flight"))
        stream_id = self.conn.get_next_available_stream_id()
        all_headers = [
            (":method", method),
            (":scheme", "https"),
            (":authority", authority),
            (":path", path),
            *headers,
            ("content-length", str(len(body))),
        ]
        stream = _Stream(Deferred(lambda d: self._cancel(stream_id)))
        self.streams[stream_id] = stream
        try:
            self.conn.send_headers(stream_id, all_headers, end_stream=not body)
            if body:
                if len(body) > self.conn.local_flow_control_window(stream_id):
                    raise Unreachable("request body larger than the flow-control window")
                size = self.conn.max_outbound_frame_size
                for start in range(0, len(body), size):
                    last = start + size >= len(body)
                    self.conn.send_data(stream_id, body[start : start + size], end_stream=last)
        except (H2Error, Unreachable) as exc:
            self.streams.pop(stream_id, None)
            return defer.fail(Unreachable(f"request not sent: {exc}"))
        stream.timer = self.clock.callLater(self.timeout, self._timed_out, stream_id)
        self._flush()
        return stream.done

    def _cancel(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        if stream.timer is not None and stream.timer.active():
            stream.timer.cancel()
        try:
            self.conn.reset_stream(stream_id)
            self._flush()
        except H2Error:
            pass

    def _timed_out(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.timer = None
            self._cancel(stream_id)
            stream.done.errback(Unreachable(f"no answer within {self.timeout:g} s"))

    def _finish(self, stream_id: int, result: Response | Failure) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        if stream.timer is not None and stream.timer.active():
            stream.timer.cancel()
        if isinstance(result, Failure):
            stream.done.errback(result)
        else:
            stream.done.callback(result)

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except H2Error as exc:
            log.warn("HTTP/2 protocol error from the server: {why}", why=str(exc))
            self._flush()
            if self.transport is not None:
                self.transport.loseConnection()
            return
        for event in events:
            self._event(event)
        self._flush()

    def _event(self, event: Event) -> None:
        if isinstance(event, ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                headers = {str(k): str(v) for k, v in event.headers}
                stream.headers = headers
                try:
                    stream.status = int(headers.get(":status", "0"))
                except ValueError:
                    stream.status = 0
        elif isinstance(event, DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.body += event.data
                if len(stream.body) > MAX_BODY:
                    self._cancel(event.stream_id)
                    stream.done.errback(Unreachable("answer larger than allowed"))
        elif isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self._finish(
                    event.stream_id, Response(stream.status, stream.headers, bytes(stream.body))
                )
        elif isinstance(event, StreamReset):
            self._finish(
                event.stream_id,
                Failure(Unreachable(f"stream reset by the server ({event.error_code})")),
            )
        elif isinstance(event, ConnectionTerminated):
            self.open = False
            last = event.last_stream_id or 0
            for stream_id in [s for s in self.streams if s > last]:
                self._finish(stream_id, Failure(Unreachable("the server is going away")))
            if not self.streams and self.transport is not None:
                self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        why = reason.getErrorMessage() if reason is not None else "closed"
        self.open = False
        for stream_id in list(self.streams):
            self._finish(stream_id, Failure(Unreachable(f"connection lost: {why}")))
        if not self.lost.called:
            self.lost.callback(None)


def h2_tls_options(host: str, ca_path: str | None) -> IOpenSSLClientConnectionCreator:
    """TLS 1.2+ with ALPN ``h2``, verifying ``host`` against the platform's
    CAs or the ones in ``ca_path``."""
    if ca_path is None:
        trust = platformTrust()
    else:
        with open(ca_path, "rb") as f:
            certs = x509.load_pem_x509_certificates(f.read())
        trust = trustRootFromCertificates(
            [Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in certs]
        )
    options: IOpenSSLClientConnectionCreator = optionsForClientTLS(
        host, trustRoot=trust, acceptableProtocols=[b"h2"]
    )
    return options


class H2Client:
    """Requests to one origin (``https://host[:port]``) over one reused connection."""

    def __init__(
        self,
        reactor: IReactor,
        origin: str,
        ca_path: str | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"not an https origin: {origin!r}")
        self.reactor = reactor
        self.host = parts.hostname
        self.port = parts.port or 443
        self.authority = self.host if self.port == 443 else f"{self.host}:{self.port}"
        self.ca_path = ca_path
        self.timeout = timeout
        self._proto: H2ClientProtocol | None = None
        self._connecting: Deferred[H2ClientProtocol] | None = None
        self._waiting: list[Deferred[H2ClientProtocol]] = []

    def _endpoint(self) -> IStreamClientEndpoint:
        tcp = HostnameEndpoint(self.reactor, self.host, self.port, timeout=CONNECT_TIMEOUT)
        return wrapClientTLS(h2_tls_options(self.host, self.ca_path), tcp)

    def _connection(self) -> Deferred[H2ClientProtocol]:
        if self._proto is not None and self._proto.open:
            return defer.succeed(self._proto)
        waiter: Deferred[H2ClientProtocol] = Deferred()
        self._waiting.append(waiter)
        if self._connecting is None:
            factory = Factory.forProtocol(lambda: H2ClientProtocol(self.reactor, self.timeout))
            # the factory builds H2ClientProtocol
            self._connecting = cast("Deferred[H2ClientProtocol]", self._endpoint().connect(factory))
            self._connecting.addBoth(self._connected)
        return waiter

    def _connected(self, result: H2ClientProtocol | Failure) -> None:
        self._connecting = None
        waiting, self._waiting = self._waiting, []
        if isinstance(result, Failure):
            why = Unreachable(f"{self.authority}: {result.getErrorMessage()}")
            for waiter in waiting:
                waiter.errback(why)
            return
        self._proto = result
        for waiter in waiting:
            waiter.callback(result)

    async def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Response:
        """Send a request to this origin and return its whole answer."""
        proto = await self._connection()
        return await proto.request(method, path, self.authority, headers or [], body)

    def close(self) -> Deferred[None]:
        """Close the connection, if any; fires once it is closed."""
        proto, self._proto = self._proto, None
        if proto is None or proto.transport is None or proto.lost.called:
            return defer.succeed(None)
        proto.open = False
        proto.transport.loseConnection()
        return proto.lost
