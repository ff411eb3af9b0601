"""
SIP over TLS towards the PBX: the CIG's certificate and key, and the CAs
its PBXs' certificates are checked against (C{tls_certificate},
C{tls_key}, C{tls_ca} in cig.conf's sip interface).

L{load_tls} reads them once, at start while still privileged: the key
must be a 0600 file (L{read_private_file}); a file that cannot be read
or parsed stops start-up with one line naming it. L{TlsMaterial.client}
gives the options for a connection to a PBX: its certificate must chain
to C{tls_ca} (or, without it, the system's trust store) and be valid for
the name the CIG was configured with (service_identity: a DNS name or an
IP address in subjectAltName); the CIG presents its own certificate when
it has one. L{TlsMaterial.server} gives the listener's options.
"""

from __future__ import annotations

import attrs
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet._sslverify import VerifyError  # type: ignore[attr-defined]
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from cryptify.config.cig_model import SipInterface

from .auth import CredentialsError, read_private_file

#: Largest certificate, key or CA file read.
MAX_PEM_FILE = 256 * 1024


@attrs.frozen
class TlsMaterial:
    """What TLS connections to and from the PBXs use."""

    own: ssl.PrivateCertificate | None = None
    #: CA certificates pinned for the PBXs; empty: the platform's trust.
    cas: tuple[ssl.Certificate, ...] = ()
    #: Intermediate certificates sent after the CIG's own.
    chain: tuple[ssl.Certificate, ...] = ()

    def client(self, name: str) -> IOpenSSLClientConnectionCreator:
        """Client options for a PBX that must be C{name} (a host name or address)."""
        trust = ssl.trustRootFromCertificates(list(self.cas)) if self.cas else ssl.platformTrust()
        return ssl.optionsForClientTLS(
            name,
            trustRoot=trust,
            clientCertificate=self.own,
            extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
        )

    def server(self) -> ssl.CertificateOptions:
        """The listener's options (only with the CIG's own certificate)."""
        assert self.own is not None
        return ssl.CertificateOptions(
            privateKey=self.own.privateKey.original,
            certificate=self.own.original,
            extraCertChain=[c.original for c in self.chain],
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )


def _read_public(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM_FILE + 1)
    except OSError as exc:
        raise CredentialsError(f"{what} {path}: {exc.strerror}") from None
    if len(data) > MAX_PEM_FILE:
        raise CredentialsError(f"{what} {path}: longer than {MAX_PEM_FILE} bytes")
    return data


def _certificates(data: bytes, path: str, what: str) -> list[ssl.Certificate]:
    """Every PEM certificate in C{data}, in order."""
    marker = b"-----END CERTIFICATE-----"
    found: list[ssl.Certificate] = []
    for chunk in data.split(marker)[:-1]:
        try:
            found.append(ssl.Certificate.loadPEM(chunk + marker))
        except (SSL.Error, crypto.Error, ValueError):
            raise CredentialsError(f"{what} {path}: not a PEM certificate") from None
    if not found:
        raise CredentialsError(f"{what} {path}: no PEM certificate in it")
    return found


def load_tls(sip: SipInterface) -> TlsMaterial:
    """
    The sip interface's TLS files, read and checked.

    @raise CredentialsError: a file missing, unsafe (the key), unreadable,
        or a key that does not match its certificate.
    """
    own: ssl.PrivateCertificate | None = None
    chain: list[ssl.Certificate] = []
    if sip.tls_certificate is not None and sip.tls_key is not None:
        pem = _read_public(sip.tls_certificate, "tls_certificate")
        chain = _certificates(pem, sip.tls_certificate, "tls_certificate")
        key = read_private_file(sip.tls_key, "tls_key", MAX_PEM_FILE)
        try:
            # The first certificate with the key; loading checks they match.
            own = ssl.PrivateCertificate.loadPEM(pem + b"\n" + key)
        except (SSL.Error, crypto.Error, ValueError, VerifyError):
            raise CredentialsError(
                f"tls_key {sip.tls_key}: not a PEM private key for tls_certificate"
            ) from None
    cas: tuple[ssl.Certificate, ...] = ()
    if sip.tls_ca is not None:
        cas = tuple(_certificates(_read_public(sip.tls_ca, "tls_ca"), sip.tls_ca, "tls_ca"))
    return TlsMaterial(own, cas, tuple(chain[1:]))
