"""
MIKEY-SAKKE identifiers: the two schemes that stacks use.

 - ID scheme 1 (RFC 6509 3.2): C{"YYYY-MM" 0x00 "tel:+<digits>" 0x00}, the
   month of the key period and a constrained tel URI (global notation, no
   visual separators, no parameters).  The IDRi/IDRr payloads carry the URI
   (role 1 and 2) and the month is the month of the T payload.
 - ID scheme 2 (3GPP TS 33.180 F.2.1): the MIKEY-SAKKE UID, SHA-256 over
   C{0x00 || P0 || L0 || ... || P5 || L5} with P0 = "MIKEY-SAKKE-UID", P1 the
   user's URI, P2 the KMS URI, P3 the key period length in seconds, P4 its
   offset, P5 the key period number (each Ln a two-octet length, integers in
   their shortest big-endian form).  The IDR payloads carry the UIDs with the
   UID roles 8 (initiator) and 9 (responder).
"""

from __future__ import annotations

import hashlib
import re
import struct
import time

import attrs

from cryptify.crypto._util import check_period
from cryptify.crypto.errors import IdentityError, MalformedInput

ID_SCHEME_TEL_URI = 1
ID_SCHEME_UID = 2

_TEL = re.compile(r"\Atel:\+[0-9]{1,15}\Z")
NTP_UNIX_OFFSET = 2208988800


def check_tel_uri(uri: str) -> str:
    """Check the RFC 6509 constraints on a tel URI and return it."""
    if not isinstance(uri, str) or not _TEL.match(uri):
        raise IdentityError(
            "identity must be a global tel URI without separators or parameters (tel:+DIGITS)"
        )
    return uri


def period_of(unix_seconds: float) -> str:
    """The UTC month (YYYY-MM) of a Unix time."""
    return time.strftime("%Y-%m", time.gmtime(unix_seconds))


def tel_identifier(uri: str, period: str) -> bytes:
    """The RFC 6509 identifier C{YYYY-MM\\0tel:+...\\0}."""
    check_tel_uri(uri)
    try:
        check_period(period)
    except MalformedInput as e:
        raise IdentityError(str(e)) from None
    return period.encode("ascii") + b"\0" + uri.encode("ascii") + b"\0"


def split_tel_identifier(identifier: bytes) -> tuple[str, str]:
    """Split an RFC 6509 identifier into (period, URI)."""
    parts = identifier.split(b"\0")
    if len(parts) != 3 or parts[2] != b"":
        raise IdentityError("not an RFC 6509 identifier (YYYY-MM\\0URI\\0)")
    try:
        period = check_period(parts[0].decode("ascii"))
        uri = check_tel_uri(parts[1].decode("ascii"))
    except (UnicodeDecodeError, MalformedInput) as e:
        raise IdentityError("not an RFC 6509 identifier (YYYY-MM\\0URI\\0)") from e
    return period, uri


def _integer(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


@attrs.frozen
class KeyPeriods:
    """TS 33.180 key periods: length and offset in seconds (NTP epoch)."""

    length: int = 2592000
    offset: int = 0

    def __attrs_post_init__(self) -> None:
        if self.length <= 0 or not 0 <= self.offset < self.length:
            raise IdentityError("key period length must be positive and offset below it")

    def number(self, unix_seconds: float) -> int:
        """P5: the key period number containing a Unix time."""
        return (int(unix_seconds) + NTP_UNIX_OFFSET - self.offset) // self.length


def mikey_sakke_uid(uri: str, kms_uri: str, periods: KeyPeriods, number: int) -> bytes:
    """The TS 33.180 MIKEY-SAKKE UID (32 octets)."""
    if not uri or not kms_uri:
        raise IdentityError("UID needs a user URI and a KMS URI")
    fields = [
        b"MIKEY-SAKKE-UID",
        uri.encode("utf-8"),
        kms_uri.encode("utf-8"),
        _integer(periods.length),
        _integer(periods.offset),
        _integer(number),
    ]
    data = b"\x00" + b"".join(f + struct.pack(">H", len(f)) for f in fields)
    return hashlib.sha256(data).digest()
