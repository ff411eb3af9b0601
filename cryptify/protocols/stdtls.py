"""
A lean TLS layer over memory BIOs, in place of Twisted's
C{TLSMemoryBIOProtocol}: the CRS's client port (5223) and the reference
client's connections to it.

L{TLSServerFactory} and L{TLSClientFactory} wrap an inner factory
(WebSocket + UMSG) as C{TLSMemoryBIOFactory} does, and each connection's
L{TLSProtocol} is the inner protocol's transport:

- the inner protocol is connected at once, before any TLS octet; on the
  server the TLS state is made when the first octet arrives (admission
  control may close a connection before its handshake costs anything);
- what arrives in one read is decrypted and handed over in one
  C{dataReceived};
- what the inner protocol writes during a read is encrypted and written to
  the socket when that read has been handled, what it writes at other
  times at the end of the reactor turn (one delayed call per turn for every
  connection of the factory): everything a connection wrote in one turn
  goes out in one C{SSL_write} (records of up to 16 KB) and one socket
  write; what is written before the handshake is complete waits for it;
- a handshake failure or garbage closes that connection only (with
  OpenSSL's alert when there is one); on the server the first failure and
  every thousandth after it are logged, with a count, so that a flood of
  garbage does not flood crs.log;
- C{loseConnection} sends what is pending, then C{close_notify}, and
  closes the TCP connection when the peer's C{close_notify} comes (as
  Twisted's TLS does); a connection the layer closes (so, or for a TLS
  failure) that is not gone L{CLOSE_GRACE} later is aborted: a peer that
  never answers, or never reads what is before our close, cannot hold it;
- flow control: when the TCP transport's send buffer is full (a peer that
  does not read), the connection stops reading until it has drained, so
  a peer that sends requests and never reads their answers cannot make
  the buffer grow without bound; the inner protocol's streaming producer
  is paused and resumed with it.

The TLS itself is done by an engine (L{cryptify.protocols.tls_engines}):
the standard library's or pyOpenSSL's, with the same policy. A client
connection uses the client creator it is given (C{tls.client_context_factory}):
the same context, server name and certificate verification as with
Twisted's TLS, including Twisted's host name check, which reports a
mismatch through L{TLSProtocol.failVerification}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cryptify.protocols.tls_engines import (
    HYBRID_GROUP_OPENSSL,
    Engine,
    OpenSSLEngine,
    StdlibEngine,
    TLSFailure,
    server_engines,
    stdlib_can_mirror,
    stdlib_groups_suffice,
    stdlib_server_context,
)

log = Logger(namespace="cryptify.tls")

__all__ = [
    "HYBRID_GROUP_OPENSSL",
    "Engine",
    "OpenSSLEngine",
    "StdlibEngine",
    "TLSClientFactory",
    "TLSFailure",
    "TLSProtocol",
    "TLSServerFactory",
    "server_engines",
    "stdlib_can_mirror",
    "stdlib_groups_suffice",
    "stdlib_server_context",
]

#: Failures logged: the first, then one in this many.
LOG_EVERY = 1000
#: Seconds a closing connection has to be gone before it is aborted.
CLOSE_GRACE = 10.0


@implementer(ITCPTransport, IPushProducer)
class TLSProtocol(Protocol):
    """One TLS connection: the inner protocol's transport."""

    transport: ITCPTransport
    #: The TLS state: made at the first octet received (server) or when
    #: connected (client).
    engine: Engine | None = None
    #: Why the connection failed (TLS or certificate verification), for the
    #: inner protocol's connectionLost.
    _reason: Failure | None = None
    handshake_done = False
    #: Plaintext written and not yet encrypted.
    _pending: list[bytes]
    #: The inner protocol may write (not closing, not lost).
    _open = True
    #: In dataReceived: writes wait for its end.
    _reading = False
    _lost = False
    _aborted = False
    #: close_notify sent, the peer's awaited.
    _closing = False
    disconnecting = False
    #: Registered with the TCP transport until it is closed (L{_close_tcp}).
    _tcp_producer: _SendBuffer | None = None
    #: The TCP transport's send buffer is full (it paused L{_tcp_producer}).
    _full = False
    #: The inner protocol paused reading (C{pauseProducing}).
    _paused = False
    #: Reading from the TCP transport is paused (for either reason).
    _stopped = False
    #: The inner protocol's streaming producer.
    _producer: IPushProducer | None = None
    #: Aborts the connection if it is not gone in time (once closing).
    _grace: IDelayedCall | None = None

    def __init__(self, factory: _TLSFactory, wrapped: IProtocol) -> None:
        self.factory = factory
        self.wrapped = wrapped
        self._pending = []

    # from the TCP transport

    def connectionMade(self) -> None:
        self._tcp_producer = _SendBuffer(self)
        cast(IConsumer, self.transport).registerProducer(self._tcp_producer, True)
        self.wrapped.makeConnection(self)
        if self.factory.client and self._open:
            engine = self.engine = self.factory.engine_for(self)
            try:
                engine.handshake()
            except TLSFailure as exc:
                self._failed(exc)
                return
            self._send(engine.outgoing())

    def dataReceived(self, data: bytes) -> None:
        if not data:
            return
        if not self._open:
            if self._closing:
                self._drain(data)
            return
        engine = self.engine
        if engine is None:
            engine = self.engine = self.factory.engine_for(self)
        engine.feed(data)
        self._reading = True
        try:
            if not self.handshake_done:
                if not engine.handshake():
                    self._send(engine.outgoing())
                    return
                self.handshake_done = True
            plain: list[bytes] = []
            closed = engine.read(plain)
            if plain and self._open:
                self.wrapped.dataReceived(plain[0] if len(plain) == 1 else b"".join(plain))
            if closed:
                # The peer's close_notify: answer it (unless the inner
                # protocol, handed its last data, already did) and close.
                self.loseConnection()
                if self._closing:
                    self._closing = False
                    self._close_tcp()
        except TLSFailure as exc:
            if self._closing:
                self._closing = False
                self._close_tcp()
            else:
                self._failed(exc)
        finally:
            self._reading = False
        if not self._lost:
            self._flush()

    def _drain(self, data: bytes) -> None:
        """Closing: discard what comes until the peer's C{close_notify}."""
        engine = self.engine
        assert engine is not None
        engine.feed(data)
        try:
            closed = engine.read([])
        except TLSFailure:
            closed = True
        self._send(engine.outgoing())
        if closed:
            self._closing = False
            self._close_tcp()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._open = self._closing = False
        self._pending = []
        self.factory.forget(self)
        grace, self._grace = self._grace, None
        if grace is not None and grace.active():
            grace.cancel()
        # A client's pyOpenSSL connection refers back to this protocol (its
        # app data, for failVerification): break the cycle, as Twisted's TLS does.
        self.engine = None
        producer, self._producer = self._producer, None
        if producer is not None:
            # As the TCP transport tells its own producer.
            producer.stopProducing()
        wrapped, self.wrapped = self.wrapped, Protocol()
        wrapped.connectionLost(self._reason or reason)

    # errors

    def _failed(self, exc: TLSFailure) -> None:
        """The peer broke TLS: send OpenSSL's alert and close."""
        self._open = False
        self._pending = []
        if self._reason is None:
            self._reason = Failure(exc)
        self.factory.failed(self, exc)
        if self._aborted:
            return
        if self.engine is not None:
            self._send(self.engine.outgoing())
        self.disconnecting = True
        self._abort_later()
        self._close_tcp()

    def failVerification(self, reason: Failure) -> None:
        """The server's certificate is not for the name asked for (called by
        Twisted's verification callback, as on C{TLSMemoryBIOProtocol})."""
        self._reason = reason
        self.abortConnection()

    # writing

    def _send(self, ciphertext: bytes) -> None:
        if ciphertext and not (self._lost or self._aborted):
            self.transport.write(ciphertext)

    def _flush(self) -> None:
        """Encrypt what is pending in one write (after the handshake)."""
        engine = self.engine
        if engine is None or not self.handshake_done:
            return
        pending = self._pending
        if pending:
            self._pending = []
            engine.write(pending[0] if len(pending) == 1 else b"".join(pending))
        self._send(engine.outgoing())

    def write(self, data: bytes) -> None:
        if not self._open:
            return
        if not isinstance(data, bytes):
            raise TypeError("Must write bytes")
        if not data:
            return
        self._pending.append(data)
        if not self._reading:
            self.factory.later(self)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def flushed(self) -> None:
        """The factory's end-of-turn flush."""
        if not self._lost:
            self._flush()

    # closing

    def loseConnection(self) -> None:
        """Send what is pending and C{close_notify}; the TCP connection is
        closed when the peer answers with its own (as Twisted's TLS does:
        closing at once with the peer's octets unread would make the
        kernel send a reset, which can destroy what was just sent, such
        as the WebSocket close frame).  A connection not gone
        L{CLOSE_GRACE} later is aborted (the UMSG adapter's own, shorter,
        grace comes first on the server)."""
        if not self._open:
            return
        self._open = False
        self.disconnecting = True
        self.factory.forget(self)
        self._abort_later()
        engine = self.engine
        if self.handshake_done and engine is not None:
            self._flush()
            self._pending = []
            engine.close()
            self._send(engine.outgoing())
            self._closing = True
        else:
            self._pending = []
            self._close_tcp()

    def _abort_later(self) -> None:
        """Abort the connection if it is not gone L{CLOSE_GRACE} from now."""
        if self._grace is None and not self._lost:
            self._grace = self.factory.clock.callLater(CLOSE_GRACE, self._grace_over)

    def _grace_over(self) -> None:
        self._grace = None
        self.abortConnection()

    def _close_tcp(self) -> None:
        """Close the TCP connection once what is written is sent.  Our
        producer goes first: Twisted's transport does not close while a
        producer is registered (it resumes it instead when it drains)."""
        producer, self._tcp_producer = self._tcp_producer, None
        if producer is not None:
            cast(IConsumer, self.transport).unregisterProducer()
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        self._open = False
        self._closing = False
        self._aborted = True
        self.disconnecting = True
        self._pending = []
        self.factory.forget(self)
        self.transport.abortConnection()

    def loseWriteConnection(self) -> None:
        raise NotImplementedError("TLS connections cannot half-close")

    # the TCP transport's own

    def getPeer(self) -> IPv4Address | IPv6Address:
        return self.transport.getPeer()

    def getHost(self) -> IPv4Address | IPv6Address:
        return self.transport.getHost()

    def getTcpNoDelay(self) -> bool:
        return self.transport.getTcpNoDelay()

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.transport.setTcpNoDelay(enabled)

    def getTcpKeepAlive(self) -> bool:
        return self.transport.getTcpKeepAlive()

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.transport.setTcpKeepAlive(enabled)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """The inner protocol's producer: paused while the TCP send buffer is
        full, resumed when it has drained.

        @raise NotImplementedError: a pull producer (nothing uses one here).
        @raise RuntimeError: one is registered already.
        """
        if not streaming:
            raise NotImplementedError("the TLS layer takes streaming producers only")
        if self._producer is not None:
            raise RuntimeError("a producer is registered already")
        self._producer = cast(IPushProducer, producer)
        if self._full:
            self._producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._producer = None

    def pauseProducing(self) -> None:
        """The inner protocol stops reading."""
        self._paused = True
        self._read_or_not()

    def resumeProducing(self) -> None:
        self._paused = False
        self._read_or_not()

    def _read_or_not(self) -> None:
        """Read from the TCP transport unless the inner protocol paused or the
        send buffer is full."""
        stop = self._paused or self._full
        if stop != self._stopped and not self._lost:
            self._stopped = stop
            tcp = cast(IPushProducer, self.transport)
            if stop:
                tcp.pauseProducing()
            else:
                tcp.resumeProducing()

    def send_buffer_full(self, full: bool) -> None:
        """The TCP transport's send buffer is full (True) or has drained."""
        self._full = full
        self._read_or_not()
        producer = self._producer
        if producer is not None:
            if full:
                producer.pauseProducing()
            else:
                producer.resumeProducing()

    def stopProducing(self) -> None:
        self.abortConnection()

    def logPrefix(self) -> str:
        return "TLS"


@implementer(IPushProducer)
class _SendBuffer:
    """What a connection registers with its TCP transport: told when the
    send buffer is full and when it has drained."""

    __slots__ = ("proto",)

    def __init__(self, proto: TLSProtocol) -> None:
        self.proto = proto

    def pauseProducing(self) -> None:
        self.proto.send_buffer_full(True)

    def resumeProducing(self) -> None:
        self.proto.send_buffer_full(False)

    def stopProducing(self) -> None:
        """The connection is lost: its C{connectionLost} follows."""


class _TLSFactory(Factory[TLSProtocol]):
    """Wraps C{wrapped}'s protocols in TLS; flushes their writes per turn."""

    noisy = False
    client = False

    def __init__(self, wrapped: IProtocolFactory, clock: IReactorTime) -> None:
        self.wrapped = wrapped
        self.clock = clock
        #: Connections written to outside their reads, flushed at the end of the turn.
        self._due: dict[TLSProtocol, None] = {}
        self._flush_call: IDelayedCall | None = None

    @property
    def wrappedFactory(self) -> IProtocolFactory:
        """The inner factory under Twisted's name (its client creators look
        there for ALPN protocols)."""
        return self.wrapped

    def engine_for(self, proto: TLSProtocol) -> Engine:
        """A new connection's TLS state."""
        raise NotImplementedError

    def failed(self, proto: TLSProtocol, exc: TLSFailure) -> None:
        """A connection failed for a TLS reason."""

    def buildProtocol(self, addr: IAddress) -> TLSProtocol | None:  # type: ignore[override]
        inner = self.wrapped.buildProtocol(addr)
        if inner is None:
            return None
        return TLSProtocol(self, inner)

    def startFactory(self) -> None:
        self.wrapped.doStart()

    def stopFactory(self) -> None:
        # The port stopped listening: its connections live on (the CRS then
        # tells its clients it is shutting down), so what they wrote goes
        # out now rather than being dropped with the delayed call.
        self.wrapped.doStop()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_all()

    def later(self, proto: TLSProtocol) -> None:
        """Flush C{proto} at the end of this reactor turn."""
        self._due[proto] = None
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush_all)

    def forget(self, proto: TLSProtocol) -> None:
        self._due.pop(proto, None)

    def _flush_all(self) -> None:
        self._flush_call = None
        due, self._due = self._due, {}
        for proto in due:
            proto.flushed()


class TLSServerFactory(_TLSFactory):
    """Serves C{wrapped}'s protocols over TLS (see the module's docstring)."""

    def __init__(
        self, engines: Callable[[], Engine], wrapped: IProtocolFactory, clock: IReactorTime
    ) -> None:
        super().__init__(wrapped, clock)
        self.engines = engines
        #: Connections closed for a TLS failure.
        self.failures = 0

    def engine_for(self, proto: TLSProtocol) -> Engine:
        return self.engines()

    def failed(self, proto: TLSProtocol, exc: TLSFailure) -> None:
        """Count (and now and then log) a connection closed for a TLS failure."""
        self.failures += 1
        if self.failures % LOG_EVERY == 1:
            peer = proto.transport.getPeer()
            log.info(
                "client TLS: closed a connection from {host}: {reason}"
                " ({count} closed for TLS failures so far, one in {every} logged)",
                host=getattr(peer, "host", "?"),
                reason=str(exc),
                count=self.failures,
                every=LOG_EVERY,
            )


class TLSClientFactory(_TLSFactory):
    """Connects C{wrapped}'s protocols over TLS, with a client creator
    (C{tls.client_context_factory}: its context, server name and
    certificate verification)."""

    client = True

    def __init__(
        self,
        creator: IOpenSSLClientConnectionCreator,
        wrapped: IProtocolFactory,
        clock: IReactorTime,
    ) -> None:
        super().__init__(wrapped, clock)
        self.creator = creator

    def engine_for(self, proto: TLSProtocol) -> Engine:
        # Twisted's creators take the TLS protocol for its failVerification.
        connection = self.creator.clientConnectionForTLS(cast(Any, proto))
        connection.set_connect_state()
        return OpenSSLEngine(connection)
