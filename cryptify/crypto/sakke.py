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

L{pairing} is the RFC's algorithm done literally; the tests check the fast
path against it.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from types import ModuleType
from typing import Any

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
from cryptify.crypto.sakke_curve import P, Q

#: The C Miller loop (``sakke_miller.c``), compiled when the package is
#: built (setup.py); None in a tree where it was not.
_native: ModuleType | None = None
try:
    from cryptify.crypto import _pairing

    if _pairing.lib.sakke_native_ok():
        _native = _pairing
except ImportError:  # pragma: no cover - a build without a C compiler
    pass

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


def pairing(r_point: tuple[mpz, mpz], q_point: tuple[mpz, mpz]) -> mpz:
    """C{<R, Q>} as the RFC 6508 section 3.2 pseudocode computes it."""
    p = P
    rx, ry = r_point
    qx, qy = q_point
    v0, v1 = mpz(1), mpz(0)
    cx, cy = rx, ry
    for bit in bin(Q - 1)[3:]:
        slope = 3 * (cx * cx - 1) * gmpy2.invert(2 * cy, p) % p
        v0, v1 = (v0 + v1) * (v0 - v1) % p, 2 * v0 * v1 % p
        lr, li = (slope * (qx + cx) - cy) % p, qy
        v0, v1 = (v0 * lr - v1 * li) % p, (v0 * li + v1 * lr) % p
        nx = (slope * slope - 2 * cx) % p
        cx, cy = nx, (slope * (cx - nx) - cy) % p
        if bit == "1":
            slope = (cy - ry) * gmpy2.invert(cx - rx, p) % p
            lr = (slope * (qx + cx) - cy) % p
            v0, v1 = (v0 * lr - v1 * li) % p, (v0 * li + v1 * lr) % p
            nx = (slope * slope - cx - rx) % p
            cx, cy = nx, (slope * (cx - nx) - cy) % p
    for _ in range(2):  # t = v^c, c = (p+1)/q = 4
        v0, v1 = (v0 + v1) * (v0 - v1) % p, 2 * v0 * v1 % p
    return v1 * gmpy2.invert(v0, p) % p


def naf(k: int) -> list[int]:
    """The non-adjacent form of C{k > 0}, most significant digit first."""
    digits = []
    while k:
        if k & 1:
            digit = 2 - (k & 3)
            k -= digit
        else:
            digit = 0
        digits.append(digit)
        k >>= 1
    return digits[::-1]


class PairingPrecomputation:
    """
    The Miller loop lines of one fixed point K, so that C{<K, X>} (which
    equals C{<X, K>}) costs only the accumulation for each new X.

    The loop walks the non-adjacent form of C{q - 1} rather than its binary
    digits: a digit -1 adds C{-K}, and the vertical lines that this changes
    evaluate into F_p at the distorted point, where the b/a representation
    ignores them.  About a third of the digits are non-zero instead of half,
    which removes some 170 line multiplications per pairing.
    """

    def __init__(self, k_point: tuple[mpz, mpz]) -> None:
        p = P
        kx, ky = k_point
        cx, cy = kx, ky
        steps: list[tuple[mpz, mpz, mpz | None, mpz | None]] = []
        digits = naf(int(Q - 1))
        for digit in digits[1:]:
            slope = 3 * (cx * cx - 1) * gmpy2.invert(2 * cy, p) % p
            d_a, d_b = slope, (slope * cx - cy) % p
            nx = (slope * slope - 2 * cx) % p
            cx, cy = nx, (slope * (cx - nx) - cy) % p
            a_a: mpz | None = None
            a_b: mpz | None = None
            if digit:
                # The line through C and digit*K = (kx, digit*ky).
                addend_y = ky if digit == 1 else (-ky) % p
                slope = (cy - addend_y) * gmpy2.invert(cx - kx, p) % p
                a_a, a_b = slope, (slope * cx - cy) % p
                nx = (slope * slope - cx - kx) % p
                cx, cy = nx, (slope * (cx - nx) - cy) % p
            steps.append((d_a, d_b, a_a, a_b))
        self._steps = steps
        self._native = _NativeLoop(steps) if _native is not None else None

    @property
    def doublings(self) -> int:
        """Doubling lines (one squaring and one line multiplication each)."""
        return len(self._steps)

    @property
    def additions(self) -> int:
        """Addition lines (one line multiplication each)."""
        return sum(1 for step in self._steps if step[2] is not None)

    def evaluate(self, x_point: tuple[mpz, mpz]) -> mpz:
        """C{<K, X>} as its representative in F_p (the C loop when it was
        built, else the gmpy2 one)."""
        if self._native is not None:
            v0, v1 = self._native.accumulate(x_point)
        else:
            v0, v1 = self.accumulate(x_point)
        return _final(v0, v1)

    def accumulate(self, x_point: tuple[mpz, mpz]) -> tuple[mpz, mpz]:
        """The Miller loop's C{(v0, v1)} at X with gmpy2 (the reference the
        C loop is tested against)."""
        p = P
        qx, qy = x_point
        v0, v1 = mpz(1), mpz(0)
        for d_a, d_b, a_a, a_b in self._steps:
            t = v0 * v1
            v0 = (v0 + v1) * (v0 - v1) % p
            v1 = (t + t) % p
            # The line at [i]X is (A*x + B) + i*y.
            lr = (d_a * qx + d_b) % p
            t0 = v0 * lr
            t1 = v1 * qy
            v1 = ((v0 + v1) * (lr + qy) - t0 - t1) % p
            v0 = (t0 - t1) % p
            if a_a is not None:
                lr = (a_a * qx + a_b) % p
                t0 = v0 * lr
                t1 = v1 * qy
                v1 = ((v0 + v1) * (lr + qy) - t0 - t1) % p
                v0 = (t0 - t1) % p
        return v0, v1


def _final(v0: mpz, v1: mpz) -> mpz:
    """The pairing's value from the loop's C{(v0, v1)}: the final
    exponentiation (c = 4: two squarings) and the ratio v1/v0.  Any common
    F_p factor of v0 and v1 (the C loop's Montgomery R) cancels."""
    p = P
    for _ in range(2):
        v0, v1 = (v0 + v1) * (v0 - v1) % p, 2 * v0 * v1 % p
    if not v0:
        raise DecapsulationFailed("SAKKE pairing is degenerate")
    # v0 comes from the receiver's secret key: invert it blinded by a random
    # factor, so that the inversion's running time says nothing about it.
    blind = mpz(secrets.randbelow(int(p) - 1) + 1)
    return v1 * blind * gmpy2.invert(v0 * blind % p, p) % p


class _NativeField:
    """The constants of F_p as the C code (:mod:`cryptify.crypto._pairing`,
    built from ``mont.c`` and ``sakke_miller.c``) takes them: sixteen
    little-endian 64-bit limbs per number, most in Montgomery form (times
    R = 2^1024, mod p)."""

    LIMBS = 16

    def __init__(self) -> None:
        assert _native is not None
        ffi, lib = _native.ffi, _native.lib
        self.ffi, self.lib = ffi, lib
        self.p = self.array([P], montgomery=False)
        self.pinv = (-pow(int(P), -1, 1 << 64)) % (1 << 64)
        self.one = self.array([mpz(1)])
        self.r2 = self.array([mpz(1 << 1024)])
        self.q = self.array([Q], montgomery=False)
        #: 1 when the C code multiplies with mulx/adcx/adox (this processor
        #: has them), else 0 (GMP's code).
        self.adx = int(lib.sakke_cpu_adx())

    def array(self, values: list[mpz], montgomery: bool = True) -> Any:
        """A C array of the values, one after the other."""
        size = 8 * self.LIMBS
        octets = b"".join(
            int((v << 1024) % P if montgomery else v).to_bytes(size, "little") for v in values
        )
        array = self.ffi.new("uint64_t[]", self.LIMBS * len(values))
        self.ffi.memmove(array, octets, len(octets))
        return array

    def number(self, array: Any) -> mpz:
        """The number in a C array of sixteen limbs."""
        return mpz(int.from_bytes(bytes(self.ffi.buffer(array)), "little"))


_field_lock = threading.Lock()
_field: _NativeField | None = None


def _native_field() -> _NativeField:
    global _field
    with _field_lock:
        if _field is None:
            _field = _NativeField()
        return _field


class _NativeLoop:
    """The precomputed lines laid out for the C Miller loop, every number
    in Montgomery form: a step's doubling line, or, for a step with an
    addition, the coefficients of the product of its two lines."""

    def __init__(self, steps: list[tuple[mpz, mpz, mpz | None, mpz | None]]) -> None:
        self._field = field = _native_field()
        flat: list[mpz] = []
        for d_a, d_b, a_a, a_b in steps:
            if a_a is None or a_b is None:
                flat += [d_a, d_b]
            else:
                # The product of the two lines (see sakke_miller.c).
                flat += [
                    d_a * a_a % P,
                    (d_a * a_b + d_b * a_a) % P,
                    d_b * a_b % P,
                    (d_a + a_a) % P,
                    (d_b + a_b) % P,
                ]
        self._steps = field.array(flat)
        self._adds = field.ffi.new("uint8_t[]", [0 if step[2] is None else 1 for step in steps])
        self._count = len(steps)

    def accumulate(self, x_point: tuple[mpz, mpz], adx: bool = True) -> tuple[mpz, mpz]:
        """The loop's C{(v0, v1)} at X, both times R mod p (C{adx=False}:
        with GMP's multiplication even where mulx/adcx/adox would run)."""
        field = self._field
        qx, qy = field.array([x_point[0]]), field.array([x_point[1]])
        v0 = field.ffi.new("uint64_t[]", field.LIMBS)
        v1 = field.ffi.new("uint64_t[]", field.LIMBS)
        status = field.lib.sakke_miller(
            field.p,
            field.pinv,
            field.adx if adx else 0,
            field.one,
            self._steps,
            self._adds,
            self._count,
            qx,
            qy,
            v0,
            v1,
        )
        if status != 0:  # pragma: no cover - the precomputation always has steps
            raise DecapsulationFailed("the C Miller loop refused its arguments")
        return field.number(v0), field.number(v1)


class NativeCheckTable:
    """
    The integrity check C{R == [r]B} for one fixed point B (the receiver's
    C{[b]P + Z}) in C (``sakke_check`` in ``sakke_miller.c``): for every
    window j of C{w} bits, the odd multiples C{[d * 2^(w*j)]B},
    C{d = 1, 3, ..., 2^w - 1}, affine and in Montgomery form (171 windows of
    32 points for w = 6: 1.4 MB).  The C code recodes r into odd signed
    digits and reads every entry of a window, so that neither its branches
    nor its memory accesses depend on r.
    """

    WINDOW = 6
    BITS = 1023  # r + q < 2q < 2^1023

    def __init__(self, base: tuple[mpz, mpz]) -> None:
        self._field = field = _native_field()
        w = self.WINDOW
        self.windows = -(-self.BITS // w)
        xs: list[mpz] = []
        ys: list[mpz] = []
        zs: list[mpz] = []
        current = base
        for _ in range(self.windows):
            bx, by = current
            twice = curve.to_affine(curve.jdouble(bx, by, mpz(1)))
            assert twice is not None
            acc: curve.Jacobian = (bx, by, mpz(1))
            for _d in range(1 << (w - 1)):
                xs.append(acc[0])
                ys.append(acc[1])
                zs.append(acc[2])
                acc = curve.jadd_affine(*acc, *twice)
            # acc is now [2^w + 1] times the window's base; minus it once.
            following = curve.to_affine(curve.jadd_affine(*acc, bx, (-by) % P))
            assert following is not None
            current = following
        inverses = curve.batch_invert(zs)
        flat: list[mpz] = []
        for x, y, zi in zip(xs, ys, inverses):
            zi2 = zi * zi % P
            flat += [x * zi2 % P, y * zi2 * zi % P]
        self._table = field.array(flat)

    def check(self, r: int, point: tuple[mpz, mpz], adx: bool = True) -> bool:
        """Whether C{[r]B == point} for C{0 <= r < q} (C{adx=False}: with
        GMP's multiplication even where mulx/adcx/adox would run)."""
        field = self._field
        k = field.array([mpz(r)], montgomery=False)
        rx = field.array([point[0]], montgomery=False)
        ry = field.array([point[1]], montgomery=False)
        status = field.lib.sakke_check(
            field.p,
            field.pinv,
            field.adx if adx else 0,
            field.r2,
            field.one,
            field.q,
            self._table,
            self.windows,
            self.WINDOW,
            k,
            rx,
            ry,
        )
        if status < 0:  # pragma: no cover - the table's shape is fixed above
            raise DecapsulationFailed("the C integrity check refused its arguments")
        return bool(status)


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
        if _native is None:
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
