"""
Thin Twisted adapters for SIP over UDP and TCP.

Each reads bytes, parses them into messages, and hands them with the
L{Channel} to answer on to a L{MessageSink}; parse errors go to the sink
too (it decides between a 4xx and silence). A sink that raises is logged
and the adapter goes on serving. A TCP connection that sends a message it
cannot frame is closed after the sink has seen the error.

A request's top Via is stamped with C{received} and C{rport} on arrival
(RFC 3261 18.2.1, RFC 3581), so that every response copies them; over
UDP its channel sends responses where RFC 3261 18.2.2 and RFC 3581 say:
the source address, at the source port when the Via has C{rport} and at
the sent-by port (or 5060) otherwise. C{channel.address} stays the source.

L{TcpConnector} opens the outbound TCP connections client transactions
use (C{;transport=tcp}), one per peer address, reused while it is open;
given C{tls}, it opens TLS connections instead (C{;transport=tls},
C{sips:}), the server's certificate checked against the name C{tls}
is called with (service_identity, through Twisted's
C{optionsForClientTLS}). A channel on TLS says so in C{secure}, for the
Via and Contact the SIF writes.

L{SipStreamFactory} bounds what inbound TCP may hold: a connection from
an address C{allowed} refuses, or beyond C{max_per_source} open ones from
that address, is closed as it is accepted (and reported to C{refused});
one that sends nothing for C{idle_timeout} seconds is closed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet import protocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cryptify.protocols.streams import abort
from cryptify.reactor import IReactor

from ..source_limit import SourceCounts
from .errors import SipParseError
from .message import Request, Response, StreamParser, parse_datagram, stamp_received
from .transaction import Address, Channel

log = Logger(namespace="cryptify.protocols.sip")

#: Inbound SIP TCP connections one source address may hold open.
MAX_TCP_PER_SOURCE = 64


class MessageSink(Protocol):
    """Where the adapters deliver what they read."""

    def message_received(self, message: Request | Response, channel: Channel) -> None: ...

    def parse_failed(self, error: SipParseError, channel: Channel) -> None: ...


#: Peer addresses a listening port remembers as checked (see L{UdpChannel}).
MAX_CHECKED_PEERS = 1024


@attrs.frozen
class UdpChannel:
    """
    The way back to a UDP peer: the listening port, the peer's address,
    and where what is sent goes (C{reply_to}, the address itself if unset).

    With C{checked} (the peer hosts the port's own C{write} has taken; its
    adapter keeps the set), a datagram to one of them goes straight to the
    port's socket: C{write} checks the form of the address at every send,
    which costs as much as the rest of the send. Any error is left to
    C{write}, which sends again, drops or raises as it always does.
    """

    transport: Any
    address: Address
    reliable: bool = False
    reply_to: Address | None = None
    checked: set[str] | None = None

    def send(self, data: bytes) -> None:
        where = self.reply_to or self.address
        checked = self.checked
        try:
            if checked is not None and where[0] in checked:
                try:
                    self.transport.socket.sendto(data, where)
                    return
                except OSError:
                    pass
            self.transport.write(data, where)
            if checked is not None and len(checked) < MAX_CHECKED_PEERS:
                checked.add(where[0])
        except OSError as exc:
            log.warn("cannot send to {peer}: {why}", peer=where, why=exc)


class SipDatagramProtocol(protocol.DatagramProtocol):
    """SIP over UDP: one message per datagram."""

    def __init__(self, sink: MessageSink) -> None:
        self.sink = sink
        #: Peer hosts this port's C{write} has taken (L{UdpChannel}).
        self.checked: set[str] = set()

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        source = (str(addr[0]), int(addr[1]))
        # Only a real port has a socket to send on directly.
        checked = self.checked if hasattr(self.transport, "socket") else None
        try:
            try:
                message = parse_datagram(data)
            except SipParseError as exc:
                reply_to = None
                if exc.is_request and exc.headers is not None:
                    exc.headers, reply_to = stamp_received(exc.headers, source)
                channel = UdpChannel(self.transport, source, reply_to=reply_to, checked=checked)
                self.sink.parse_failed(exc, channel)
                return
            if message is None:
                return
            reply_to = None
            if isinstance(message, Request):
                headers, reply_to = stamp_received(message.headers, source)
                if headers is not message.headers:
                    message = message.with_headers(headers)
            channel = UdpChannel(self.transport, source, reply_to=reply_to, checked=checked)
            self.sink.message_received(message, channel)
        except Exception:
            log.failure("error handling a SIP datagram from {peer}", peer=source)


class SipStreamProtocol(protocol.Protocol):
    """SIP over TCP: messages framed by Content-Length; this is the channel."""

    reliable = True

    def __init__(
        self,
        sink: MessageSink,
        on_lost: Callable[[SipStreamProtocol], None] | None = None,
        clock: IReactorTime | None = None,
        idle_timeout: float | None = None,
        secure: bool = False,
    ) -> None:
        #: Whether the connection is TLS.
        self.secure = secure
        #: Whether we opened it (L{TcpConnector}); the peer may then send
        #: its requests back on it (RFC 5923, the Via C{alias} we add).
        self.initiated = False
        self.sink = sink
        self.parser = StreamParser()
        self.address: Address = ("", 0)
        self.on_lost = on_lost
        self.open = False
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.idle: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.open = True
        assert self.transport is not None  # connectionMade: connected
        peer = self.transport.getPeer()
        self.address = (str(getattr(peer, "host", "")), int(getattr(peer, "port", 0)))
        self._rearm()

    def _rearm(self) -> None:
        if self.clock is None or self.idle_timeout is None or not self.open:
            return
        if self.idle is not None and self.idle.active():
            self.idle.reset(self.idle_timeout)
        else:
            self.idle = self.clock.callLater(self.idle_timeout, self._idle)

    def _idle(self) -> None:
        self.idle = None
        log.debug(
            "SIP TCP connection from {peer} idle for {seconds:.0f} s; closing it",
            peer=self.address,
            seconds=self.idle_timeout,
        )
        abort(self.transport)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.open = False
        if self.idle is not None and self.idle.active():
            self.idle.cancel()
        self.idle = None
        if self.on_lost is not None:
            self.on_lost(self)

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self._rearm()
        try:
            try:
                messages = self.parser.feed(data)
            except SipParseError as exc:
                self.sink.parse_failed(exc, self)
                if self.transport is not None:
                    self.transport.loseConnection()
                return
            for message in messages:
                if isinstance(message, Request):
                    headers, _ = stamp_received(message.headers, self.address)
                    message = message.with_headers(headers)
                self.sink.message_received(message, self)
        except Exception:
            log.failure("error handling SIP from {peer}", peer=self.address)


@implementer(IHandshakeListener)
class SipTlsStreamProtocol(SipStreamProtocol):
    """
    An outbound TLS connection: C{ready} fires once the handshake (the
    server's certificate checked) is done, or fails if the connection is
    lost before.
    """

    def __init__(self, sink: MessageSink, on_lost: Callable[[SipStreamProtocol], None]) -> None:
        super().__init__(sink, on_lost, secure=True)
        self.ready: Deferred[SipStreamProtocol] = Deferred()

    def handshakeCompleted(self) -> None:
        if not self.ready.called:
            self.ready.callback(self)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        if not self.ready.called:
            self.ready.errback(reason)


class SipStreamFactory(protocol.ServerFactory):
    """
    Builds a L{SipStreamProtocol} per inbound TCP connection, within the
    limits: C{allowed} source addresses only, at most C{max_per_source}
    open per address, closed after C{idle_timeout} silent seconds.
    Refused connections are closed at once and reported to C{refused}
    (source address, why).
    """

    noisy = False

    def __init__(
        self,
        sink: MessageSink,
        clock: IReactorTime | None = None,
        idle_timeout: float | None = None,
        max_per_source: int = MAX_TCP_PER_SOURCE,
        allowed: Callable[[str], bool] | None = None,
        refused: Callable[[str, str], None] | None = None,
        secure: bool = False,
    ) -> None:
        self.secure = secure
        self.sink = sink
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_per_source = max_per_source
        self.allowed = allowed
        self.refused = refused
        self.open = SourceCounts()

    def buildProtocol(self, addr: IAddress | None) -> SipStreamProtocol | None:
        host = str(getattr(addr, "host", ""))
        if self.allowed is not None and not self.allowed(host):
            self._refuse(host, "tcp connection, not a SIP peer")
            return None
        if not self.open.admit(host, self.max_per_source):
            self._refuse(host, f"more than {self.max_per_source} tcp connections")
            return None
        return SipStreamProtocol(
            self.sink,
            lambda proto: self.open.release(host),
            self.clock,
            self.idle_timeout,
            self.secure,
        )

    def _refuse(self, host: str, why: str) -> None:
        if self.refused is not None:
            self.refused(host, why)


class TcpConnector:
    """
    Outbound SIP over TCP: one connection per peer address, opened on
    first use and reused until it closes. What arrives on it goes to the
    sink like any other SIP.
    """

    def __init__(
        self,
        reactor: IReactor,
        sink: MessageSink,
        timeout: float = 5.0,
        tls: Callable[[str], IOpenSSLClientConnectionCreator] | None = None,
    ) -> None:
        self.reactor = reactor
        self.sink = sink
        self.timeout = timeout
        #: The TLS client options for a server name; None: plain TCP.
        self.tls = tls
        self.connections: dict[Address, SipStreamProtocol] = {}
        self.waiting: dict[Address, list[Deferred[Channel]]] = {}

    def channel(self, address: Address, name: str | None = None) -> Deferred[Channel]:
        """
        A connected channel to C{address} (fails if it cannot connect);
        over TLS the certificate must be valid for C{name} (the address
        itself if None).
        """
        existing = self.connections.get(address)
        if existing is not None and existing.open:
            return succeed(existing)
        waiter: Deferred[Channel] = Deferred()
        if address in self.waiting:
            self.waiting[address].append(waiter)
            return waiter
        self.waiting[address] = [waiter]
        host, port = address
        endpoint_type = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        endpoint: IStreamClientEndpoint = endpoint_type(
            self.reactor, host, port, timeout=self.timeout
        )
        if self.tls is not None:
            endpoint = wrapClientTLS(self.tls(name or host), endpoint)
        connecting: Deferred[SipStreamProtocol]
        if self.tls is not None:
            tls_proto = SipTlsStreamProtocol(self.sink, self._lost)
            tls_proto.initiated = True
            connecting = connectProtocol(endpoint, tls_proto).addCallback(
                lambda connected: tls_proto.ready
            )
        else:
            tcp_proto = SipStreamProtocol(self.sink, self._lost)
            tcp_proto.initiated = True
            connecting = connectProtocol(endpoint, tcp_proto)
        connecting.addCallbacks(
            lambda proto: self._done(address, proto), lambda failure: self._done(address, failure)
        )
        return waiter

    def _done(self, address: Address, result: SipStreamProtocol | Failure) -> None:
        waiters = self.waiting.pop(address, [])
        if isinstance(result, SipStreamProtocol):
            self.connections[address] = result
            result.address = address
        else:
            log.warn("cannot connect to SIP peer {peer}: {why}", peer=address, why=result.value)
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _lost(self, proto: SipStreamProtocol) -> None:
        for address, known in list(self.connections.items()):
            if known is proto:
                del self.connections[address]

    def close(self) -> None:
        """Close every connection (at shutdown)."""
        for proto in list(self.connections.values()):
            if proto.transport is not None:
                proto.transport.loseConnection()
        self.connections.clear()
