"""
MIKEY key derivation (RFC 3830 4.1, RFC 6043 6.1) and SRTP keying.

RFC 6509 3.1: the SSV is the TGK, and traffic keys come from it as RFC 3830
derives them.  The SRTP master key is the TEK (constant 0x2AD01C64) and the
master salt the salting key (0x39A2C14B), each with the label
C{constant || cs_id || csb_id || RAND}, under the PRF the HDR names:
PRF func 0 is MIKEY-1 (HMAC-SHA-1, 160-bit output blocks), PRF func 1 is
PRF-HMAC-SHA-256 (256-bit output blocks).  In both, the input key is split
into 256-bit blocks.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import attrs

from cryptify.crypto.errors import MikeyError
from cryptify.crypto.mikey_payloads import PRF_HMAC_SHA1, PRF_HMAC_SHA256

CONST_TEK = 0x2AD01C64
CONST_AUTH = 0x1B5C7973
CONST_ENCR = 0x15798CEF
CONST_SALT = 0x39A2C14B

_HASHES = {PRF_HMAC_SHA1: hashlib.sha1, PRF_HMAC_SHA256: hashlib.sha256}


def _p_function(s: bytes, label: bytes, m: int, digest: str) -> bytes:
    out = b""
    a = label
    for _ in range(m):
        a = hmac.new(s, a, digest).digest()
        out += hmac.new(s, a + label, digest).digest()
    return out


def mikey_prf(inkey: bytes, label: bytes, length: int, prf_func: int = PRF_HMAC_SHA256) -> bytes:
    """PRF(inkey, label) truncated to C{length} octets."""
    factory = _HASHES.get(prf_func)
    if factory is None:
        raise MikeyError(f"unknown MIKEY PRF func {prf_func}")
    if not inkey:
        raise MikeyError("MIKEY PRF needs a non-empty key")
    name = factory().name
    size = factory().digest_size
    m = -(-length // size)
    acc = bytes(m * size)
    for i in range(0, len(inkey), 32):
        block = _p_function(inkey[i : i + 32], label, m, name)
        acc = bytes(x ^ y for x, y in zip(acc, block))
    return acc[:length]


def tgk_label(constant: int, cs_id: int, csb_id: int, rand: bytes) -> bytes:
    """C{constant || cs_id || csb_id || RAND} (RFC 3830 4.1.3)."""
    return struct.pack(">IBI", constant, cs_id, csb_id) + rand


def derive_from_tgk(
    tgk: bytes,
    constant: int,
    cs_id: int,
    csb_id: int,
    rand: bytes,
    length: int,
    prf_func: int = PRF_HMAC_SHA256,
) -> bytes:
    """A key derived from the TGK for one crypto session."""
    return mikey_prf(tgk, tgk_label(constant, cs_id, csb_id, rand), length, prf_func)


@attrs.frozen
class SrtpKeying:
    """SRTP master key and salt for one crypto session."""

    master_key: bytes = attrs.field(repr=False)
    master_salt: bytes = attrs.field(repr=False)

    @property
    def policy_key(self) -> bytes:
        """C{master_key || master_salt}, as C{pylibsrtp.Policy(key=...)} takes it."""
        return self.master_key + self.master_salt


def srtp_keying(
    tgk: bytes,
    csb_id: int,
    rand: bytes,
    cs_id: int = 1,
    prf_func: int = PRF_HMAC_SHA256,
    key_length: int = 16,
    salt_length: int = 14,
) -> SrtpKeying:
    """
    SRTP master key (TEK) and master salt for crypto session C{cs_id}.

    Salt length is 14 octets for AES_CM_128_HMAC_SHA1_80/32, 12 for AES-GCM.
    """
    return SrtpKeying(
        derive_from_tgk(tgk, CONST_TEK, cs_id, csb_id, rand, key_length, prf_func),
        derive_from_tgk(tgk, CONST_SALT, cs_id, csb_id, rand, salt_length, prf_func),
    )
