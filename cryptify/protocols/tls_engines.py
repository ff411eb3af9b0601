"""
The TLS engines of the client port's layer (L{cryptify.protocols.stdtls}):
one connection's TLS state over memory BIOs, and the policy they are made
with.

- L{StdlibEngine}: the standard library's C{ssl.SSLObject}, the cheapest
  per record and per handshake;
- L{OpenSSLEngine}: a pyOpenSSL C{SSL.Connection} (the OpenSSL in
  C{cryptography}); on the server, on the very context
  L{cryptify.protocols.tls.server_context_factory} makes; on the client,
  the connection a client creator (C{tls.client_context_factory}) makes,
  with its certificate verification.

L{server_engines} picks the standard library's engine only when its
OpenSSL offers every key-exchange group the pyOpenSSL one does (OpenSSL
before 3.5 has no hybrid post-quantum X25519MLKEM768), so the client port
never offers weaker groups than it did with pyOpenSSL.

Policy of both server engines (as C{tls.server_context_factory}): TLS 1.2
or 1.3 (1.3 preferred), the TLS 1.2 suites of L{MODERN_TLS12_CIPHERS}
(ECDHE with an AEAD cipher) in the server's order, no compression, no
renegotiation, OpenSSL's default TLS 1.3 suites and groups, and the
session tickets setting of that context (copied). Python's C{ssl} always
keeps a server session cache: when that context has none, the standard
library's engine is not chosen (L{stdlib_can_mirror}).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from typing import Protocol as Interface

from OpenSSL import SSL

from cryptify.protocols.tls import MODERN_TLS12_CIPHERS, load_pair, server_context_factory

__all__ = [
    "HYBRID_GROUP_OPENSSL",
    "Engine",
    "OpenSSLEngine",
    "StdlibEngine",
    "TLSFailure",
    "server_engines",
    "stdlib_can_mirror",
    "stdlib_groups_suffice",
    "stdlib_server_context",
]

#: Plaintext octets asked for per read: one TLS record holds at most 16 KB.
RECORD = 16384
#: Ciphertext octets asked for per read of pyOpenSSL's outgoing BIO.
_OUT_CHUNK = 65536
#: The first OpenSSL (3.5) whose default groups include X25519MLKEM768.
HYBRID_GROUP_OPENSSL = 0x30500000
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
        return _handshake(self._tls)

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
            raise _failure(exc) from exc

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

    def __init__(self, connection: SSL.Connection) -> None:
        self._tls = connection

    @classmethod
    def server(cls, context: SSL.Context) -> OpenSSLEngine:
        """A server connection on C{context}."""
        connection = SSL.Connection(context, None)
        connection.set_accept_state()
        return cls(connection)

    def feed(self, data: bytes) -> None:
        self._tls.bio_write(data)

    def handshake(self) -> bool:
        return _handshake(self._tls)

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
            raise _failure(exc) from exc

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


def _handshake(tls: ssl.SSLObject | SSL.Connection) -> bool:
    """Advance either library's handshake: True once it is complete.

    @raise TLSFailure: the peer broke the handshake.
    """
    try:
        tls.do_handshake()
    except (ssl.SSLWantReadError, SSL.WantReadError):
        return False
    except (ssl.SSLError, SSL.Error) as exc:
        raise _failure(exc) from exc
    return True


def _failure(exc: ssl.SSLError | SSL.Error) -> TLSFailure:
    """Either library's error as a L{TLSFailure} with OpenSSL's reason (the
    standard library's C{reason}; pyOpenSSL's argument is a list of tuples)."""
    if isinstance(exc, ssl.SSLError):
        return TLSFailure(exc.reason or str(exc))
    errors = exc.args[0] if exc.args else None
    if isinstance(errors, list) and errors and isinstance(errors[-1], tuple):
        return TLSFailure(str(errors[-1][-1]))
    return TLSFailure(str(exc) or type(exc).__name__)


# -- policy -------------------------------------------------------------------


def stdlib_server_context(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    tickets: bool = True,
) -> ssl.SSLContext:
    """The standard library's context with C{tls.server_context_factory}'s policy.

    @param tickets: TLS session tickets as OpenSSL issues them by default;
        False: none (C{OP_NO_TICKET} and no TLS 1.3 tickets either).
    @raise TLSConfigError: as C{server_context_factory} (files checked the
        same way, by L{load_pair}).
    """
    load_pair(cert_path, key_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= _STDLIB_OPTIONS
    if not tickets:
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
    context.set_ciphers(MODERN_TLS12_CIPHERS)
    context.load_cert_chain(cert_path, key_path)
    return context


def stdlib_groups_suffice(
    stdlib: int = ssl.OPENSSL_VERSION_NUMBER, pyopenssl: int = SSL.OPENSSL_VERSION_NUMBER
) -> bool:
    """Whether the standard library's OpenSSL offers every default group the
    pyOpenSSL one does (both have the hybrid X25519MLKEM768, or neither)."""
    return stdlib >= HYBRID_GROUP_OPENSSL or pyopenssl < HYBRID_GROUP_OPENSSL


def stdlib_can_mirror(context: SSL.Context) -> bool:
    """Whether the standard library's context can have the session policy of
    pyOpenSSL's C{context}: Python's C{ssl} always keeps OpenSSL's server
    session cache (it cannot turn it off), so a context without one cannot
    be mirrored (TLS 1.2 clients could resume by session ID)."""
    return bool(context.get_session_cache_mode() != SSL.SESS_CACHE_OFF)


def server_engines(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    stdlib: bool | None = None,
) -> Callable[[], Engine]:
    """What makes each connection's engine for this certificate and key.

    The policy is C{tls.server_context_factory}'s; the standard library's
    context copies its session tickets setting.

    @param stdlib: the standard library's engine (True) or pyOpenSSL's
        (False); None: the standard library's when its groups suffice
        (L{stdlib_groups_suffice}) and it can have the same session policy
        (L{stdlib_can_mirror}).
    @raise TLSConfigError: a file is missing, unreadable or not PEM, or the
        key does not match the certificate.
    """
    openssl_context = server_context_factory(cert_path, key_path).getContext()
    if stdlib is None:
        stdlib = stdlib_groups_suffice() and stdlib_can_mirror(openssl_context)
    if stdlib:
        # SSL_CTX_set_options(ctx, 0) answers the options set, changing none.
        tickets = not openssl_context.set_options(0) & SSL.OP_NO_TICKET
        std_context = stdlib_server_context(cert_path, key_path, tickets)
        return lambda: StdlibEngine(std_context)
    return lambda: OpenSSLEngine.server(openssl_context)
