"""
TLS with certificates: context factories for the client listener and the
reference client.  The development certificate is made by
L{cryptify.tools.certs}.

The client listener (5223 by default) serves TLS 1.2 and 1.3 only, with
forward-secret AEAD cipher suites.  Everything here reads files at
construction time and raises L{TLSConfigError}, naming the file, when a
file is missing, unreadable, not PEM, or when key and certificate do not
belong together; nothing is deferred to the first handshake.

TLS-PSK for the pool and inter-working links lives in
L{cryptify.protocols.tls_psk}.
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

log = Logger()

__all__ = [
    "MODERN_TLS12_CIPHERS",
    "CertificateServerContextFactory",
    "TLSConfigError",
    "client_context_factory",
    "server_context_factory",
]

SigningKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

#: TLS 1.2 suites we accept: ECDHE key exchange with an AEAD cipher only (no
#: CBC, no static RSA, no SHA-1 MACs).  TLS 1.3 suites are all AEAD and keep
#: OpenSSL's defaults.
MODERN_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!PSK:!SRP:!DSS"

_SERVER_OPTIONS = SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION


class TLSConfigError(Exception):
    """
    A certificate, key or CA file cannot be used; the message names the file.
    """


# -- reading files ------------------------------------------------------------


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"{os.fspath(path)}: cannot read {what}: {e.strerror}") from e


def _load_certificates(path: str | os.PathLike[str], what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSConfigError(f"{os.fspath(path)}: not a PEM {what}") from e
    return certs


def _load_private_key(path: str | os.PathLike[str]) -> SigningKey:
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as e:
        raise TLSConfigError(
            f"{os.fspath(path)}: private key is encrypted; an unencrypted PEM key is needed"
        ) from e
    except ValueError as e:
        raise TLSConfigError(f"{os.fspath(path)}: not a PEM private key") from e
    except Exception as e:  # unsupported key algorithm and the like
        raise TLSConfigError(f"{os.fspath(path)}: unusable private key: {e}") from e
    if not isinstance(key, SigningKey):
        raise TLSConfigError(f"{os.fspath(path)}: not a signing key (EC, RSA or Ed25519)")
    return key


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_pair(
    cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]
) -> tuple[list[x509.Certificate], SigningKey]:
    """
    Load a certificate chain (leaf first) and its private key, checking that
    they belong together.
    """
    chain = _load_certificates(cert_path, "certificate")
    key = _load_private_key(key_path)
    if _spki(key.public_key()) != _spki(chain[0].public_key()):
        raise TLSConfigError(
            f"{os.fspath(key_path)}: private key does not match the certificate in "
            f"{os.fspath(cert_path)}"
        )
    return chain, key


# -- server -------------------------------------------------------------------


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class CertificateServerContextFactory:
    """
    Server side of certificate TLS: one configured L{SSL.Context} shared by
    every connection.  Usable with C{SSL4ServerEndpoint}, C{listenSSL} and
    C{TLSMemoryBIOFactory}.
    """

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

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


def server_context_factory(
    cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]
) -> CertificateServerContextFactory:
    """
    Build the client listener's TLS server side from PEM files.

    @param cert_path: the certificate, followed by any intermediate
        certificates.
    @param key_path: the unencrypted private key of the first certificate.
    @raise TLSConfigError: a file is missing, unreadable or not PEM, or the
        key does not match the certificate.
    """
    chain, key = load_pair(cert_path, key_path)
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    # No session resumption: no session cache and no stateless tickets.
    # Clients do not resume (each connection is a full handshake with a
    # fresh key exchange), so a cache only held up to 20,480 sessions in
    # memory and the two TLS 1.3 tickets per handshake were encrypted for
    # nothing (docs/tls.md).
    context.set_options(_SERVER_OPTIONS | SSL.OP_NO_TICKET)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_cipher_list(MODERN_TLS12_CIPHERS.encode("ascii"))
    context.set_session_id(b"cryptify-tls")
    try:
        context.use_certificate(chain[0])
        for extra in chain[1:]:
            context.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
        context.use_privatekey(key)
        context.check_privatekey()
    except (SSL.Error, TypeError) as e:
        raise TLSConfigError(
            f"{os.fspath(cert_path)}: OpenSSL refused the certificate or key "
            f"{os.fspath(key_path)}: {e}"
        ) from e
    return CertificateServerContextFactory(context)


# -- client -------------------------------------------------------------------


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientCreator:
    """
    Client side that does not verify the server at all: for development
    against a self-signed server only.
    """

    def __init__(self, hostname: str) -> None:
        self._server_name = None if _is_ip(hostname) else hostname.encode("idna")
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
        context.set_cipher_list(MODERN_TLS12_CIPHERS.encode("ascii"))
        context.set_verify(SSL.VERIFY_NONE)
        self._context = context

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection


def _is_ip(hostname: str) -> bool:
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


def client_context_factory(
    hostname: str,
    ca_path: str | os.PathLike[str] | None = None,
    verify: bool = True,
) -> IOpenSSLClientConnectionCreator:
    """
    Build the reference client's TLS side (for C{wrapClientTLS},
    C{SSL4ClientEndpoint} or C{TLSMemoryBIOFactory}): TLS 1.2 or later.

    @param hostname: the server's name or IP address; the certificate must
        carry it, and a DNS name is sent as SNI.
    @param ca_path: PEM file of the certificates to trust (a self-signed
        server certificate works here); L{None} trusts the platform's store.
    @param verify: L{False} accepts any server certificate: insecure, for
        development only, and logged as such.
    @raise TLSConfigError: the CA file is missing, unreadable or not PEM, or
        a CA file was given together with C{verify=False}.
    """
    if not verify:
        if ca_path is not None:
            raise TLSConfigError(
                f"{os.fspath(ca_path)}: a CA file makes no sense with verification off"
            )
        log.warn(
            "TLS: server certificate verification is OFF for {hostname} (insecure, dev only)",
            hostname=hostname,
        )
        return cast(IOpenSSLClientConnectionCreator, _UnverifiedClientCreator(hostname))
    if ca_path is None:
        trust_root = platformTrust()
    else:
        certs = _load_certificates(ca_path, "CA certificate")
        trust_root = trustRootFromCertificates(
            [Certificate(crypto.X509.from_cryptography(c)) for c in certs]
        )
    return optionsForClientTLS(
        hostname,
        trustRoot=trust_root,
        extraCertificateOptions={
            "raiseMinimumTo": TLSVersion.TLSv1_2,
            "acceptableCiphers": AcceptableCiphers.fromOpenSSLCipherString(MODERN_TLS12_CIPHERS),
        },
    )
