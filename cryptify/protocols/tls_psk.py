"""
TLS-PSK for the pool, synchronization and inter-working CRS links.

Both ends hold the same secret key per link and authenticate each other by
it; there are no certificates.  The server looks the key up by the identity
the client sends (and may take the peer's address into account); the client
has one identity and key.

pyOpenSSL has no PSK API, so the callbacks are registered on the
C{SSL_CTX} underneath a pyOpenSSL L{SSL.Context} through the C{cffi}
bindings of C{cryptography} (the same OpenSSL library pyOpenSSL uses):
C{SSL_CTX_set_psk_server_callback} and C{SSL_CTX_set_psk_client_callback}.
OpenSSL uses those callbacks for TLS 1.2 (here only
C{ECDHE-PSK-CHACHA20-POLY1305}) and, with an external PSK whose hash is
SHA-256, for TLS 1.3 (C{psk_dhe_ke}: still an ephemeral ECDHE exchange).

A handshake that does not authenticate by the PSK fails: the server has no
certificate to fall back on, and the client refuses any certificate.

Keys never appear in log lines or in C{repr}.  OpenSSL checks the key by the
handshake itself (Finished / binder MACs); this module compares no keys.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLClientConnectionCreator,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from zope.interface import implementer

from cryptify.protocols.tls import TLSConfigError

if TYPE_CHECKING:
    from cffi import FFI
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    #: A C value handed over by cffi (``SSL *``, ``char *``, ...).
    CData = FFI.CData

log = Logger()

__all__ = [
    "MAX_IDENTITY_BYTES",
    "MIN_KEY_BYTES",
    "TLS12_PSK_CIPHERS",
    "TLS13_PSK_CIPHERSUITES",
    "PskClientContextFactory",
    "PskLookup",
    "PskServerContextFactory",
    "psk_supported",
]

#: The server's key lookup: C{(identity, peer address or None) -> key or None}.
#: It runs inside the handshake, so it must be quick and must not block.
PskLookup = Callable[[bytes, IAddress | None], bytes | None]

#: TLS 1.2: PSK authentication with an ephemeral ECDH exchange, AEAD.
TLS12_PSK_CIPHERS = "ECDHE-PSK-CHACHA20-POLY1305"

#: TLS 1.3: OpenSSL binds a callback-supplied PSK to SHA-256, so only
#: SHA-256 suites can carry it.
TLS13_PSK_CIPHERSUITES = "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"

#: Keys shorter than this (128 bits) are refused.
MIN_KEY_BYTES = 16

#: OpenSSL's limit (PSK_MAX_PSK_LEN) for keys passed through the callbacks.
MAX_KEY_BYTES = 512

#: Identities: printable ASCII, at most this long (OpenSSL's buffer is 256
#: bytes with the terminating NUL; RFC 4279 recommends at most 128).
MAX_IDENTITY_BYTES = 128

_binding = Binding()
_ffi: FFI = _binding.ffi
#: OpenSSL's functions as cffi compiled them: the library gives them no types.
_lib: Any = _binding.lib
#: OpenSSL holds only a raw pointer to a context's PSK callback: each
#: context keeps its cffi callback alive here for as long as it lives.
_CALLBACKS: weakref.WeakKeyDictionary[SSL.Context, object] = weakref.WeakKeyDictionary()

_SERVER_CALLBACK = "unsigned int(*)(SSL *, char *, unsigned char *, unsigned int)"
_CLIENT_CALLBACK = (
    "unsigned int(*)(SSL *, char *, char *, unsigned int, unsigned char *, unsigned int)"
)

_OPTIONS = (
    SSL.OP_NO_COMPRESSION
    | SSL.OP_NO_RENEGOTIATION
    | SSL.OP_CIPHER_SERVER_PREFERENCE
    | SSL.OP_NO_TICKET  # no resumption: every connection proves the PSK
)


def psk_supported() -> tuple[bool, bool]:
    """
    Whether the loaded OpenSSL offers PSK callbacks: C{(TLS 1.2, TLS 1.3)}.
    """
    tls12 = bool(getattr(_lib, "Cryptography_HAS_PSK", 0)) and hasattr(
        _lib, "SSL_CTX_set_psk_server_callback"
    )
    tls13 = tls12 and bool(getattr(_lib, "Cryptography_HAS_PSK_TLSv1_3", 0))
    return tls12, tls13


def _check_identity(identity: bytes) -> None:
    if not 0 < len(identity) <= MAX_IDENTITY_BYTES:
        raise ValueError(f"PSK identity must be 1 to {MAX_IDENTITY_BYTES} bytes")
    if not all(0x21 <= b <= 0x7E for b in identity):
        raise ValueError("PSK identity must be printable ASCII without spaces")


def _check_key_length(length: int) -> bool:
    return MIN_KEY_BYTES <= length <= MAX_KEY_BYTES


def _base_context(tls13: bool) -> SSL.Context:
    tls12_ok, tls13_ok = psk_supported()
    if not tls12_ok:
        raise TLSConfigError("the loaded OpenSSL library has no TLS-PSK support")
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    if tls13 and tls13_ok:
        context.set_max_proto_version(SSL.TLS1_3_VERSION)
    else:
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(_OPTIONS)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_cipher_list(TLS12_PSK_CIPHERS.encode("ascii"))
    context.set_tls13_ciphersuites(TLS13_PSK_CIPHERSUITES.encode("ascii"))
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    return context


def _peer_of(ssl: CData) -> IAddress | None:
    """
    The peer address of the Twisted connection that owns C{ssl}, if any.

    pyOpenSSL maps C{SSL *} back to its L{SSL.Connection} (its own callbacks
    do the same); Twisted stores the L{TLSMemoryBIOProtocol} as app data.
    """
    connection = SSL.Connection._reverse_mapping.get(ssl)
    if connection is None:
        return None
    protocol = connection.get_app_data()
    transport = getattr(protocol, "transport", None)
    if transport is None:
        return None
    peer: IAddress = transport.getPeer()
    return peer


# -- server -------------------------------------------------------------------


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class PskServerContextFactory:
    """
    TLS-PSK server side, for C{SSL4ServerEndpoint}, C{listenSSL} or
    C{TLSMemoryBIOFactory(factory, False, ...)}.

    @param lookup: called during each handshake with the client's identity
        and the peer's address; returns the key (16 to 512 bytes) or L{None}
        to refuse the identity.
    @param tls13: also offer TLS 1.3 (when the library supports TLS 1.3 PSK).
    @param identity_hint: optional hint sent to TLS 1.2 clients.
    """

    def __init__(
        self,
        lookup: PskLookup,
        *,
        tls13: bool = True,
        identity_hint: bytes | None = None,
    ) -> None:
        self._lookup = lookup
        context = _base_context(tls13)
        # OpenSSL holds only a raw pointer to this callback: keep it alive for
        # as long as the context, on the factory and in _CALLBACKS.
        self._callback = _ffi.callback(_SERVER_CALLBACK, self._server_callback)
        _CALLBACKS[context] = self._callback
        _lib.SSL_CTX_set_psk_server_callback(context._context, self._callback)
        if identity_hint is not None:
            _check_identity(identity_hint)
            if _lib.SSL_CTX_use_psk_identity_hint(context._context, identity_hint) != 1:
                raise TLSConfigError("OpenSSL refused the PSK identity hint")
        self._context = context

    def __repr__(self) -> str:
        return f"<{type(self).__name__} lookup={self._lookup!r}>"

    def _server_callback(self, ssl: CData, identity: CData, psk: CData, max_psk_len: int) -> int:
        # An exception must not escape into OpenSSL: log it and refuse.
        try:
            name = _ffi.string(identity) if identity != _ffi.NULL else b""
            assert isinstance(name, bytes)  # a char * reads as bytes
            peer = _peer_of(ssl)
            key = self._lookup(name, peer)
            if key is None:
                log.warn(
                    "TLS-PSK: unknown identity {identity!r} from {peer}",
                    identity=name,
                    peer=peer,
                )
                return 0
            if not _check_key_length(len(key)) or len(key) > max_psk_len:
                log.error(
                    "TLS-PSK: key for identity {identity!r} has an unusable length "
                    "({length} bytes; {low} to {high} allowed)",
                    identity=name,
                    length=len(key),
                    low=MIN_KEY_BYTES,
                    high=min(MAX_KEY_BYTES, max_psk_len),
                )
                return 0
            _ffi.memmove(psk, key, len(key))
            return len(key)
        except Exception:
            log.failure("TLS-PSK: server key lookup failed")
            return 0

    def getContext(self) -> SSL.Context:
        """
        Return the shared context (L{IOpenSSLContextFactory}).
        """
        return self._context

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """
        Create one server connection (L{IOpenSSLServerConnectionCreator}).
        """
        return SSL.Connection(self._context, None)


# -- client -------------------------------------------------------------------


@implementer(IOpenSSLClientConnectionCreator, IOpenSSLContextFactory)
class PskClientContextFactory:
    """
    TLS-PSK client side, for C{wrapClientTLS}, C{SSL4ClientEndpoint} or
    C{TLSMemoryBIOFactory(factory, True, ...)}.

    @param identity: this end's identity, printable ASCII, 1 to 128 bytes.
    @param key: the shared key, 16 to 512 bytes.
    @param tls13: also offer TLS 1.3 (when the library supports TLS 1.3 PSK).
    """

    def __init__(self, identity: bytes, key: bytes, *, tls13: bool = True) -> None:
        _check_identity(identity)
        if not _check_key_length(len(key)):
            raise ValueError(f"PSK key must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes")
        self._identity = bytes(identity)
        self._key = bytes(key)
        context = _base_context(tls13)
        # A certificate means the server did not take our PSK: refuse it.
        # The store is empty, so verification of any certificate fails.
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
        self._callback = _ffi.callback(_CLIENT_CALLBACK, self._client_callback)
        _CALLBACKS[context] = self._callback
        _lib.SSL_CTX_set_psk_client_callback(context._context, self._callback)
        self._context = context

    def __repr__(self) -> str:
        return f"<{type(self).__name__} identity={self._identity!r}>"

    @property
    def identity(self) -> bytes:
        """
        The identity this client presents.
        """
        return self._identity

    def _client_callback(
        self,
        ssl: CData,
        hint: CData,
        identity: CData,
        max_identity_len: int,
        psk: CData,
        max_psk_len: int,
    ) -> int:
        try:
            if len(self._identity) + 1 > max_identity_len or len(self._key) > max_psk_len:
                log.error(
                    "TLS-PSK: identity {identity!r} or its key too long for OpenSSL",
                    identity=self._identity,
                )
                return 0
            _ffi.memmove(identity, self._identity + b"\0", len(self._identity) + 1)
            _ffi.memmove(psk, self._key, len(self._key))
            return len(self._key)
        except Exception:
            log.failure("TLS-PSK: client callback failed")
            return 0

    def getContext(self) -> SSL.Context:
        """
        Return the shared context (L{IOpenSSLContextFactory}).
        """
        return self._context

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """
        Create one client connection (L{IOpenSSLClientConnectionCreator}).
        """
        return SSL.Connection(self._context, None)
