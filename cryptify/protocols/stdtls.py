"""
A lean server-side TLS layer over memory BIOs for the client port (5223),
in place of Twisted's C{TLSMemoryBIOProtocol}.

L{TLSServerFactory} wraps the inner factory (WebSocket + UMSG) as
C{TLSMemoryBIOFactory} does, and each connection's L{TLSServerProtocol} is
the inner protocol's transport:

- the inner protocol is connected at once, before any TLS octet (its
  admission control may close a connection before the handshake costs
  anything); the TLS state is made when the first octet arrives;
- what arrives in one read is decrypted and handed over in one
  C{dataReceived};
- what the inner protocol writes during a read is encrypted and written to
  the socket when that read has been handled, what it writes at other
  times at the end of the reactor turn (one delayed call per turn for every
  connection of the factory): everything written in one turn goes out in
  one C{SSL_write} (records of up to 16 KB) and one socket write;
- a handshake failure or garbage closes that connection only (with
  OpenSSL's alert when there is one); the first failure and every
  thousandth after it are logged, with a count, so that a flood of garbage
  does not flood crs.log;
- C{loseConnection} sends what is pending, then C{close_notify}.

Two engines do the TLS itself, with the same policy (L{server_engines}
picks one):

- L{StdlibEngine}: the standard library's C{ssl.SSLObject}, the cheapest
  per record and per handshake;
- L{OpenSSLEngine}: a pyOpenSSL C{SSL.Connection} on the very context
  L{cryptify.protocols.tls.server_context_factory} makes, used when the
  standard library's OpenSSL lacks a key-exchange group the pyOpenSSL one
  offers (OpenSSL before 3.5 has no hybrid post-quantum X25519MLKEM768):
  the client port never offers weaker groups than it did.

Policy of both (as C{tls.server_context_factory}): TLS 1.2 or 1.3 (1.3
preferred), the TLS 1.2 suites of L{MODERN_TLS12_CIPHERS} (ECDHE with an
AEAD cipher) with the server's order, no compression, no renegotiation,
OpenSSL's default TLS 1.3 suites and groups, and its default session
tickets (as before; the reference client does not resume).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterable
from typing import Any, cast
from typing import Protocol as Interface

from OpenSSL import SSL
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IProducer,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cryptify.protocols.tls import MODERN_TLS12_CIPHERS, load_pair, server_context_factory

log = Logger(namespace="cryptify.tls")

__all__ = [
    "HYBRID_GROUP_OPENSSL",
    "OpenSSLEngine",
    "StdlibEngine",
    "TLSFailure",
    "TLSServerFactory",
    "TLSServerProtocol",
    "server_engines",
    "stdlib_server_context",
]

#: Plaintext octets asked for per read: one TLS record holds at most 16 KB.
RECORD = 16384
#: Ciphertext octets asked for per read of pyOpenSSL's outgoing BIO.
_OUT_CHUNK = 65536
#: The first OpenSSL (3.5) whose default groups include X25519MLKEM768.
HYBRID_GROUP_OPENSSL = 0x30500000
#: Failures logged: the first, then one in this many.
LOG_EVERY = 1000

_STDLIB_OPTIONS = ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION


class TLSFailure(Exception):
    """The peer broke TLS (handshake failure, a bad record): the reason."""


class Engine(Interface):
    """One server connection's TLS state over memory BIOs."""

    def feed(self, data: bytes) -> None:
        """Ciphertext from the peer."""

    def handshake(self) -> bool:
        """Advance the handshake: True once it is complete.

        @raise TLSFailure: the peer broke the handshake.
        """

    def read(self, into: list[bytes]) -> bool:
        """Append the plaintext there is to C{into}; True when the peer sent
        C{close_notify}.

        @raise TLSFailure: a bad record.
        """

    def write(self, data: bytes) -> None:
        """Encrypt plaintext (after the handshake)."""

    def outgoing(self) -> bytes:
        """Ciphertext to send (empty when there is none)."""

    def close(self) -> None:
        """Queue C{close_notify}."""

    def version(self) -> str | None:
        """The protocol version negotiated (C{"TLSv1.3"}), or None before."""

    def cipher(self) -> str | None:
        """The cipher suite negotiated, or None before."""


class StdlibEngine:
    """TLS by the standard library's C{ssl.SSLObject}."""

    __slots__ = ("_in", "_out", "_tls")

    def __init__(self, context: ssl.SSLContext) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=True)

    def feed(self, data: bytes) -> None:
        self._in.write(data)

    def handshake(self) -> bool:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as exc:
            raise TLSFailure(exc.reason or str(exc)) from exc
        return True

    def read(self, into: list[bytes]) -> bool:
        read = self._tls.read
        try:
            while True:
                data = read(RECORD)
                if not data:
                    # SSL_ERROR_ZERO_RETURN after close_notify
                    return True
                into.append(data)
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as exc:
            raise TLSFailure(exc.reason or str(exc)) from exc

    def write(self, data: bytes) -> None:
        self._tls.write(data)

    def outgoing(self) -> bytes:
        return self._out.read()

    def close(self) -> None:
        try:
            self._tls.unwrap()
        except ssl.SSLError:
            # SSLWantReadError: close_notify is queued, the peer's is not in
            pass

    def version(self) -> str | None:
        return self._tls.version()

    def cipher(self) -> str | None:
        suite = self._tls.cipher()
        return None if suite is None else suite[0]


class OpenSSLEngine:
    """TLS by a pyOpenSSL C{SSL.Connection} (the OpenSSL in C{cryptography})."""

    __slots__ = ("_tls",)

    def __init__(self, context: SSL.Context) -> None:
        self._tls = SSL.Connection(context, None)
        self._tls.set_accept_state()

    def feed(self, data: bytes) -> None:
        self._tls.bio_write(data)

    def handshake(self) -> bool:
        try:
            self._tls.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            raise TLSFailure(_openssl_reason(exc)) from exc
        return True

    def read(self, into: list[bytes]) -> bool:
        recv = self._tls.recv
        try:
            while True:
                into.append(recv(RECORD))
        except SSL.WantReadError:
            return False
        except SSL.ZeroReturnError:
            return True
        except SSL.Error as exc:
            raise TLSFailure(_openssl_reason(exc)) from exc

    def write(self, data: bytes) -> None:
        # A memory BIO takes it all at once (sendall would check twice).
        sent = self._tls.send(data)
        while sent < len(data):
            sent += self._tls.send(data[sent:])

    def outgoing(self) -> bytes:
        chunks = []
        read = self._tls.bio_read
        while True:
            try:
                chunk = read(_OUT_CHUNK)
            except SSL.WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < _OUT_CHUNK:
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close(self) -> None:
        try:
            self._tls.shutdown()
        except SSL.Error:
            pass

    def version(self) -> str | None:
        name = self._tls.get_protocol_version_name()
        return None if name == "Unknown" else name

    def cipher(self) -> str | None:
        return self._tls.get_cipher_name()


def _openssl_reason(exc: SSL.Error) -> str:
    """The reason of pyOpenSSL's error (its argument is a list of tuples)."""
    errors = exc.args[0] if exc.args else None
    if isinstance(errors, list) and errors and isinstance(errors[-1], tuple):
        return str(errors[-1][-1])
    return str(exc) or type(exc).__name__


# -- policy -------------------------------------------------------------------


def stdlib_server_context(
    cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]
) -> ssl.SSLContext:
    """The standard library's context with C{tls.server_context_factory}'s policy.

    @raise TLSConfigError: as C{server_context_factory} (files checked the
        same way, by L{load_pair}).
    """
    load_pair(cert_path, key_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= _STDLIB_OPTIONS
    context.set_ciphers(MODERN_TLS12_CIPHERS)
    context.load_cert_chain(cert_path, key_path)
    return context


def stdlib_groups_suffice(
    stdlib: int = ssl.OPENSSL_VERSION_NUMBER, pyopenssl: int = SSL.OPENSSL_VERSION_NUMBER
) -> bool:
    """Whether the standard library's OpenSSL offers every default group the
    pyOpenSSL one does (both have the hybrid X25519MLKEM768, or neither)."""
    return stdlib >= HYBRID_GROUP_OPENSSL or pyopenssl < HYBRID_GROUP_OPENSSL


def server_engines(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    stdlib: bool | None = None,
) -> Callable[[], Engine]:
    """What makes each connection's engine for this certificate and key.

    @param stdlib: the standard library's engine (True) or pyOpenSSL's
        (False); None: the standard library's when its groups suffice
        (L{stdlib_groups_suffice}).
    @raise TLSConfigError: a file is missing, unreadable or not PEM, or the
        key does not match the certificate.
    """
    if stdlib is None:
        stdlib = stdlib_groups_suffice()
    if stdlib:
        std_context = stdlib_server_context(cert_path, key_path)
        return lambda: StdlibEngine(std_context)
    openssl_context = server_context_factory(cert_path, key_path).getContext()
    return lambda: OpenSSLEngine(openssl_context)


# -- the Twisted layer --------------------------------------------------------


@implementer(ITCPTransport, IPushProducer)
class TLSServerProtocol(Protocol):
    """One TLS connection: the inner protocol's transport."""

    transport: ITCPTransport
    #: The TLS state: made at the first octet received.
    engine: Engine | None = None
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

    def __init__(self, factory: TLSServerFactory, wrapped: Protocol) -> None:
        self.factory = factory
        self.wrapped = wrapped
        self._pending = []

    # from the TCP transport

    def connectionMade(self) -> None:
        self.wrapped.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        if not data:
            return
        if not self._open:
            if self._closing:
                self._drain(data)
            return
        engine = self.engine
        if engine is None:
            engine = self.engine = self.factory.engines()
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
            if closed and self._open:
                self.loseConnection()
                if self._closing:
                    self._closing = False
                    self.transport.loseConnection()
        except TLSFailure as exc:
            if self._closing:
                self._closing = False
                self.transport.loseConnection()
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
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._open = self._closing = False
        self._pending = []
        self.factory.forget(self)
        wrapped, self.wrapped = self.wrapped, Protocol()
        wrapped.connectionLost(reason)

    # errors

    def _failed(self, exc: TLSFailure) -> None:
        """The peer broke TLS: send OpenSSL's alert and close."""
        self._open = False
        self._pending = []
        self.factory.failed(self, exc)
        if self.engine is not None:
            self._send(self.engine.outgoing())
        self.disconnecting = True
        self.transport.loseConnection()

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
        as the WebSocket close frame).  A peer that never answers is the
        inner protocol's to abort (the UMSG adapter gives it
        C{CLOSE_GRACE})."""
        if not self._open:
            return
        self._open = False
        self.disconnecting = True
        self.factory.forget(self)
        engine = self.engine
        if self.handshake_done and engine is not None:
            self._flush()
            self._pending = []
            engine.close()
            self._send(engine.outgoing())
            self._closing = True
        else:
            self._pending = []
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
        cast(IConsumer, self.transport).registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        cast(IConsumer, self.transport).unregisterProducer()

    def pauseProducing(self) -> None:
        cast(IPushProducer, self.transport).pauseProducing()

    def resumeProducing(self) -> None:
        cast(IPushProducer, self.transport).resumeProducing()

    def stopProducing(self) -> None:
        self.abortConnection()

    def logPrefix(self) -> str:
        return "TLS"


class TLSServerFactory(ServerFactory[TLSServerProtocol]):
    """Serves C{wrapped}'s protocols over TLS (see the module's docstring)."""

    noisy = False

    def __init__(
        self, engines: Callable[[], Engine], wrapped: Factory[Any], clock: IReactorTime
    ) -> None:
        self.engines = engines
        self.wrapped = wrapped
        self.clock = clock
        #: Connections written to outside their reads, flushed at the end of the turn.
        self._due: dict[TLSServerProtocol, None] = {}
        self._flush_call: IDelayedCall | None = None
        #: Connections closed for a TLS failure.
        self.failures = 0

    def buildProtocol(self, addr: IAddress) -> TLSServerProtocol | None:  # type: ignore[override]
        inner = self.wrapped.buildProtocol(addr)
        if inner is None:
            return None
        return TLSServerProtocol(self, inner)

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

    def later(self, proto: TLSServerProtocol) -> None:
        """Flush C{proto} at the end of this reactor turn."""
        self._due[proto] = None
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush_all)

    def forget(self, proto: TLSServerProtocol) -> None:
        self._due.pop(proto, None)

    def _flush_all(self) -> None:
        self._flush_call = None
        due, self._due = self._due, {}
        for proto in due:
            proto.flushed()

    def failed(self, proto: TLSServerProtocol, exc: TLSFailure) -> None:
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
