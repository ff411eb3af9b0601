"""
SAKKE (RFC 6508) with parameter set 1 of RFC 6509.

The KMS holds the master secret z and publishes C{Z = [z]P}; a user with
identifier b gets the Receiver Secret Key C{K_b = [(b + z)^-1]P}.  A sender
encapsulates a 128-bit SSV for b with b and Z alone; the receiver recovers it
with the pairing C{<R, K_b>} and checks the result by recomputing R.

Where the time goes, and what this module does about it:

 - The pairing.  The RFC's Miller loop walks the multiples of its first
   argument.  The reduced pairing with the distortion map is symmetric on
   E(F_p)[q], so the receiver computes C{<K_b, R>} instead, whose loop walks
   the multiples of its own fixed K_b: L{PairingPrecomputation} records each
   line once (slope and intercept, affine), and an evaluation is then only
   F_p^2 squarings and sparse multiplications.  Line values are only defined
   up to a factor in F_p, which the b/a representation ignores, and the
   final exponentiation is C{(p+1)/q = 4}: two squarings.
 - Scalar multiplication.  C{[r]([b]P + Z) = [r*b]P + [r]Z}, so fixed-base
   tables for P (one per process) and for Z (one per KMS) serve every
   identity when encapsulating.  The receiver's integrity check uses one
   table of its own C{[b]P + Z} (L{NativeCheckTable}).
 - C{g^r} in PF_p: a fixed-base table of powers of g.
 - C: the Miller loop and the integrity check run in C (``mont.c``,
   ``sakke_miller.c``; GMP's mpn functions, Montgomery form) when the
   package was built with it, gmpy2 otherwise.  Neither C function branches
   on or indexes memory by the secret key's lines or by r; the final
   inversion is blinded.

The pairing and the C paths are in L{cryptify.crypto.sakke_pairing};
L{pairing} is the RFC's algorithm done literally; the tests check the fast
path against it.
"""

from __future__ import annotations

import hashlib
import secrets
import threading

import attrs
import gmpy2
from gmpy2 import mpz

from cryptify.crypto import sakke_curve as curve
from cryptify.crypto._util import os2ip
from cryptify.crypto.errors import (
    DecapsulationFailed,
    InvalidPoint,
    KeyValidationError,
    MalformedInput,
)
from cryptify.crypto.sakke_curve import Q
from cryptify.crypto.sakke_pairing import NativeCheckTable as NativeCheckTable
from cryptify.crypto.sakke_pairing import PairingPrecomputation as PairingPrecomputation
from cryptify.crypto.sakke_pairing import naf as naf
from cryptify.crypto.sakke_pairing import native_built
from cryptify.crypto.sakke_pairing import pairing as pairing

#: Octets of SSV and Hint (n = 128 bits), and of the Encapsulated Data.
SSV_LENGTH = 16
ENCAPSULATED_LENGTH = 2 * curve.L + 1 + SSV_LENGTH
#: The SAKKE params value of parameter set 1 (RFC 6509 Table 4).
PARAMETER_SET_1 = 1

_TWO_128 = 1 << 128


def hash_to_integer_range(data: bytes, n: int) -> int:
    """HashToIntegerRange(data, n, SHA-256) (RFC 6508 section 5.1)."""
    a = hashlib.sha256(data).digest()
    h = bytes(32)
    count = -(-n.bit_length() // 256)
    v = b""
    for _ in range(count):
        h = hashlib.sha256(h).digest()
        v += hashlib.sha256(h + a).digest()
    return os2ip(v) % n


def identifier_integer(identity: bytes) -> int:
    """The identifier's octets as a big-endian integer (RFC 6508 6.2)."""
    return os2ip(identity)


_tables_lock = threading.Lock()
_p_table: curve.FixedBase | None = None
_g_table: curve.PfpFixedBase | None = None


def _base_table() -> curve.FixedBase:
    global _p_table
    with _tables_lock:
        if _p_table is None:
            _p_table = curve.FixedBase(curve.BASE)
        return _p_table


def _g_powers() -> curve.PfpFixedBase:
    global _g_table
    with _tables_lock:
        if _g_table is None:
            _g_table = curve.PfpFixedBase(curve.G)
        return _g_table


def multiply_base(k: int) -> curve.Affine:
    """C{[k]P} for the parameter set's generator P."""
    return _base_table().multiply(k % Q)


@attrs.define(eq=False)
class SakkePublicKey:
    """
    A KMS Public Key Z.  Decoding validates it (on the curve, order q); a
    fixed-base table for Z is built on first use and kept with the object.
    """

    point: tuple[mpz, mpz]
    _table: curve.FixedBase | None = attrs.field(default=None, init=False, repr=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, repr=False)

    @classmethod
    def from_bytes(cls, data: bytes) -> SakkePublicKey:
        """Decode and validate C{04 || Zx || Zy}."""
        point = curve.point_from_bytes(data, "KMS public key Z")
        if not curve.in_subgroup(point):
            raise InvalidPoint("KMS public key Z is not in the order-q subgroup")
        return cls(point)

    def to_bytes(self) -> bytes:
        """Encode as C{04 || Zx || Zy}."""
        return curve.point_to_bytes(self.point)

    def multiply(self, k: int) -> curve.Affine:
        """C{[k]Z}."""
        with self._lock:
            if self._table is None:
                self._table = curve.FixedBase(self.point)
        return self._table.multiply(k % Q)

    def identity_point(self, identity: bytes) -> tuple[mpz, mpz]:
        """C{[b]P + Z} for identifier b."""
        point = curve.add(multiply_base(identifier_integer(identity)), self.point)
        if point is None:
            raise KeyValidationError("identifier gives [b]P + Z = O")
        return point

    def r_point(self, r: int, identity: bytes) -> curve.Affine:
        """C{R = [r]([b]P + Z) = [r*b]P + [r]Z}."""
        b = identifier_integer(identity)
        return curve.add(multiply_base(r * b), self.multiply(r))


@attrs.frozen
class SakkeKms:
    """A KMS's SAKKE master secret z."""

    z: int = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        if not 0 < self.z < Q:
            raise KeyValidationError("SAKKE master secret must be in [1, q)")

    @classmethod
    def generate(cls) -> SakkeKms:
        """A new random master secret."""
        while True:
            z = secrets.randbelow(int(Q))
            if z:
                return cls(z)

    @property
    def public_point(self) -> tuple[mpz, mpz]:
        """Z = [z]P."""
        point = multiply_base(self.z)
        assert point is not None
        return point

    def public_key(self) -> SakkePublicKey:
        """The KMS Public Key Z."""
        return SakkePublicKey(self.public_point)

    def issue_rsk(self, identity: bytes) -> bytes:
        """The RSK of C{identity}, C{[(b + z)^-1]P}, encoded C{04 || x || y}."""
        t = (identifier_integer(identity) + self.z) % Q
        if t == 0:
            raise KeyValidationError("identifier gives b + z = 0 mod q")
        return curve.point_to_bytes(multiply_base(int(gmpy2.invert(t, Q))))


def encapsulate(
    z: SakkePublicKey, identity: bytes, ssv: bytes | None = None
) -> tuple[bytes, bytes]:
    """
    Form Encapsulated Data for C{identity} (RFC 6508 section 6.2.1).

    @param ssv: the 16-octet SSV; random unless given.
    @return: (Encapsulated Data, SSV).
    """
    if ssv is None:
        ssv = secrets.token_bytes(SSV_LENGTH)
    if len(ssv) != SSV_LENGTH:
        raise MalformedInput(f"SSV must be {SSV_LENGTH} octets")
    r = hash_to_integer_range(ssv + identity, int(Q))
    r_point = z.r_point(r, identity)
    if r_point is None:
        raise KeyValidationError("SSV and identifier give R = O")
    g_r = _g_powers().power(r)
    mask = hash_to_integer_range(int(g_r).to_bytes(curve.L, "big"), _TWO_128)
    hint = (os2ip(ssv) ^ mask).to_bytes(SSV_LENGTH, "big")
    return curve.point_to_bytes(r_point) + hint, ssv


def split_encapsulated(data: bytes) -> tuple[tuple[mpz, mpz], bytes]:
    """Parse Encapsulated Data into (R, H), checking R is on the curve."""
    if not isinstance(data, bytes | bytearray) or len(data) != ENCAPSULATED_LENGTH:
        raise MalformedInput(f"SAKKE Encapsulated Data must be {ENCAPSULATED_LENGTH} octets")
    data = bytes(data)
    point = curve.point_from_bytes(data[: 2 * curve.L + 1], "SAKKE R")
    return point, data[2 * curve.L + 1 :]


class SakkeReceiver:
    """
    A user's Receiver Secret Key for one identifier, validated on load
    (RFC 6508 section 6.1.2) and precomputed for decapsulation.
    """

    def __init__(self, z: SakkePublicKey, identity: bytes, rsk: bytes) -> None:
        self.z = z
        self.identity = bytes(identity)
        self._k_point = curve.point_from_bytes(rsk, "RSK")
        self._lines = PairingPrecomputation(self._k_point)
        self._identity_point = z.identity_point(self.identity)
        check = self._lines.evaluate(self._identity_point)
        if check != curve.G:
            raise KeyValidationError("RSK does not validate for this identifier and KMS key")
        self._table: curve.FixedBase | None = None
        self._check_table: NativeCheckTable | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<SakkeReceiver identity={self.identity!r}>"

    def identity_table(self) -> curve.FixedBase:
        """
        The gmpy2 fixed-base table of C{[b]P + Z} (used when the C code was
        not built), built on first use (a few hundred milliseconds and about
        3.5 MB, once per key period), so that the integrity check is one
        fixed-base multiplication, not two.
        """
        with self._lock:
            if self._table is None:
                self._table = curve.FixedBase(self._identity_point)
            return self._table

    def check_table(self) -> NativeCheckTable | None:
        """
        The C integrity check's table of C{[b]P + Z} (L{NativeCheckTable}),
        built on first use (about 0.2 s and 1.4 MB, once per key period);
        None when the C code was not built.
        """
        if not native_built():
            return None
        with self._lock:
            if self._check_table is None:
                self._check_table = NativeCheckTable(self._identity_point)
            return self._check_table

    def integrity_check(self, r: int, r_point: tuple[mpz, mpz]) -> bool:
        """Whether C{R == [r]([b]P + Z)} (RFC 6508 6.2.2 step 5)."""
        native = self.check_table()
        if native is not None:
            return native.check(r, r_point)
        # Compared in Jacobian coordinates: no inversion.
        return curve.jacobian_equals(self.identity_table().multiply_jacobian(r), r_point)

    def decapsulate(self, data: bytes) -> bytes:
        """
        Recover the SSV (RFC 6508 section 6.2.2).

        @raise DecapsulationFailed: if the integrity check fails.
        @raise MalformedInput: if the data is malformed.
        """
        r_point, hint = split_encapsulated(data)
        w = self._lines.evaluate(r_point)
        mask = hash_to_integer_range(int(w).to_bytes(curve.L, "big"), _TWO_128)
        ssv = (os2ip(hint) ^ mask).to_bytes(SSV_LENGTH, "big")
        r = hash_to_integer_range(ssv + self.identity, int(Q))
        if not self.integrity_check(r, r_point):
            raise DecapsulationFailed("SAKKE Encapsulated Data failed the integrity check")
        return ssv

    def decapsulate_reference(self, data: bytes) -> bytes:
        """
        L{decapsulate} as the RFC writes it: the literal pairing C{<R, K_b>}
        and C{[r]([b]P + Z)} by a generic multiplication.  For the tests.
        """
        r_point, hint = split_encapsulated(data)
        w = pairing(r_point, self._k_point)
        mask = hash_to_integer_range(int(w).to_bytes(curve.L, "big"), _TWO_128)
        ssv = (os2ip(hint) ^ mask).to_bytes(SSV_LENGTH, "big")
        r = hash_to_integer_range(ssv + self.identity, int(Q))
        if curve.multiply(r, self._identity_point) != r_point:
            raise DecapsulationFailed("SAKKE Encapsulated Data failed the integrity check")
        return ssv


def validate_rsk(z: SakkePublicKey, identity: bytes, rsk: bytes) -> None:
    """Check C{<[b]P + Z, K_b> == g} (RFC 6508 section 6.1.2)."""
    SakkeReceiver(z, identity, rsk)
