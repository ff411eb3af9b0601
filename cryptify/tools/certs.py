"""
The self-signed certificate for development: L{generate_self_signed} writes
a new pair, L{ensure_self_signed} keeps a usable one or writes a new one.
The key file is 0600 from its creation on; both files are replaced
atomically.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.logger import Logger

from cryptify.files import write_atomically
from cryptify.protocols.tls import TLSConfigError, load_pair

log = Logger()

DAY = datetime.timedelta(days=1)

#: Validity of a generated development certificate.
SELF_SIGNED_VALIDITY = 825 * DAY

#: L{ensure_self_signed} replaces a pair that expires sooner than this.
RENEW_BEFORE = 30 * DAY


def generate_self_signed(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    hostnames: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1",),
    *,
    now: datetime.datetime | None = None,
    validity: datetime.timedelta = SELF_SIGNED_VALIDITY,
) -> None:
    """
    Write a new self-signed certificate (EC P-256, ECDSA-SHA256) for
    C{hostnames} and C{ips} as subject alternative names.

    The key file is written first, mode 0600, then the certificate (0644),
    each by atomic rename.
    """
    if not hostnames and not ips:
        raise ValueError("a certificate needs at least one host name or IP address")
    when = now if now is not None else datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = hostnames[0] if hostnames else ips[0]
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cryptify development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    san: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    san += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(when - datetime.timedelta(minutes=5))
        .not_valid_after(when + validity)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomically(key_path, key_pem, 0o600)
    write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info(
        "TLS: wrote self-signed certificate {cert_path} for {names}",
        cert_path=os.fspath(cert_path),
        names=", ".join([*hostnames, *ips]),
    )


def _covers(cert: x509.Certificate, hostnames: Iterable[str], ips: Iterable[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    dns = set(san.get_values_for_type(x509.DNSName))
    addresses = set(san.get_values_for_type(x509.IPAddress))
    return set(hostnames) <= dns and {ipaddress.ip_address(a) for a in ips} <= addresses


def ensure_self_signed(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    hostnames: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1",),
    *,
    now: datetime.datetime | None = None,
) -> bool:
    """
    Keep an existing usable pair, otherwise generate one.

    A pair is kept when both files load, belong together, the certificate
    names every host and address asked for, and it is valid now and for at
    least L{RENEW_BEFORE} more.

    @return: L{True} if a new pair was written.
    """
    when = now if now is not None else datetime.datetime.now(datetime.UTC)
    try:
        chain, _ = load_pair(cert_path, key_path)
    except TLSConfigError as e:
        log.info("TLS: generating a development certificate: {reason}", reason=str(e))
    else:
        leaf = chain[0]
        if (
            leaf.not_valid_before_utc <= when
            and when + RENEW_BEFORE < leaf.not_valid_after_utc
            and _covers(leaf, hostnames, ips)
        ):
            return False
        log.info(
            "TLS: replacing development certificate {cert_path}: expiring or names changed",
            cert_path=os.fspath(cert_path),
        )
    generate_self_signed(cert_path, key_path, hostnames, ips, now=when)
    return True
