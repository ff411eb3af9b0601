"""
Arithmetic for SAKKE parameter set 1 (RFC 6509 Appendix A): the
supersingular curve C{E: y^2 = x^3 - 3x} over the 1024-bit prime field F_p,
its order-q subgroup, and the group PF_p[q] that the pairing lands in.

Everything is C{gmpy2.mpz}.  Points are affine C{(x, y)} tuples, or C{None}
for the point at infinity; internal loops use Jacobian coordinates because
a 1024-bit inversion costs about as much as fifteen multiplications.

Speed comes from precomputation for the fixed bases: L{FixedBase} keeps, for
every window position, all the multiples of the base (affine, so each step
is one mixed addition), and L{PfpFixedBase} does the same for powers of g in
PF_p, normalised to C{1 + i*t} so that each step costs two multiplications.
"""

from __future__ import annotations

from collections.abc import Sequence

import gmpy2
from gmpy2 import mpz

from cryptify.crypto.errors import InvalidPoint

Affine = tuple[mpz, mpz] | None

# RFC 6509 Appendix A, parameter set 1.
P = mpz(
    int(
        "997ABB1F0A563FDA65C61198DAD0657A416C0CE19CB48261BE9AE358B3E01A2E"
        "F40AAB27E2FC0F1B228730D531A59CB0E791B39FF7C88A19356D27F4A666A6D0"
        "E26C6487326B4CD4512AC5CD65681CE1B6AFF4A831852A82A7CF3C521C3C09AA"
        "9F94D6AF56971F1FFCE3E82389857DB080C5DF10AC7ACE87666D807AFEA85FEB",
        16,
    )
)
Q = (P + 1) // 4
PX = mpz(
    int(
        "53FC09EE332C29AD0A7990053ED9B52A2B1A2FD60AEC69C698B2F204B6FF7CBF"
        "B5EDB6C0F6CE2308AB10DB9030B09E1043D5F22CDB9DFA55718BD9E7406CE890"
        "9760AF765DD5BCCB337C86548B72F2E1A702C3397A60DE74A7C1514DBA66910D"
        "D5CFB4CC80728D87EE9163A5B63F73EC80EC46C4967E0979880DC8ABEAE63895",
        16,
    )
)
PY = mpz(
    int(
        "0A8249063F6009F1F9F1F0533634A135D3E82016029906963D778D821E141178"
        "F5EA69F4654EC2B9E7F7F5E5F0DE55F66B598CCF9A140B2E416CFF0CA9E032B9"
        "70DAE117AD547C6CCAD696B5B7652FE0AC6F1E80164AA989492D979FC5A4D5F2"
        "13515AD7E9CB99A980BDAD5AD5BB4636ADB9B5706A67DCDE75573FD71BEF16D7",
        16,
    )
)
G = mpz(
    int(
        "66FC2A432B6EA392148F15867D623068C6A87BD1FB94C41E27FABE658E015A87"
        "371E94744C96FEDA449AE9563F8BC446CBFDA85D5D00EF577072DA8F541721BE"
        "EE0FAED1828EAB90B99DFB0138C7843355DF0460B4A9FD74B4F1A32BCAFA1FFA"
        "D682C033A7942BCCE3720F20B9B7B0403C8CAE87B7A0042ACDE0FAB36461EA46",
        16,
    )
)
L = 128  # octets in an F_p element
BASE: tuple[mpz, mpz] = (PX, PY)

_P = P
_ZERO = mpz(0)
_ONE = mpz(1)


def is_on_curve(x: mpz, y: mpz) -> bool:
    """Whether (x, y) is on E (coordinates already reduced)."""
    return bool((y * y - x * (x * x - 3)) % _P == 0)


def point_from_bytes(data: bytes, what: str = "point") -> tuple[mpz, mpz]:
    """Decode C{04 || x || y} (257 octets) and check that it is on E."""
    if not isinstance(data, bytes | bytearray) or len(data) != 2 * L + 1:
        raise InvalidPoint(f"{what} must be {2 * L + 1} octets (04 || x || y)")
    if data[0] != 4:
        raise InvalidPoint(f"{what} must be an uncompressed point (first octet 04)")
    x = mpz(int.from_bytes(data[1 : 1 + L], "big"))
    y = mpz(int.from_bytes(data[1 + L :], "big"))
    if x >= _P or y >= _P or not is_on_curve(x, y):
        raise InvalidPoint(f"{what} is not on the SAKKE curve")
    return x, y


def point_to_bytes(point: Affine) -> bytes:
    """Encode an affine point as C{04 || x || y}."""
    if point is None:
        raise InvalidPoint("the point at infinity has no encoding")
    return b"\x04" + int(point[0]).to_bytes(L, "big") + int(point[1]).to_bytes(L, "big")


def batch_invert(values: Sequence[mpz]) -> list[mpz]:
    """Invert many non-zero field elements with one inversion."""
    prefix = []
    acc = _ONE
    for v in values:
        prefix.append(acc)
        acc = acc * v % _P
    inv = gmpy2.invert(acc, _P)
    out = [_ZERO] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = prefix[i] * inv % _P
        inv = inv * values[i] % _P
    return out


# Jacobian coordinates (X, Y, Z) stand for (X/Z^2, Y/Z^3); Z == 0 is infinity.
Jacobian = tuple[mpz, mpz, mpz]


def jdouble(x1: mpz, y1: mpz, z1: mpz) -> Jacobian:
    """Double a Jacobian point (a = -3, dbl-2001-b)."""
    p = _P
    if not z1 or not y1:
        return _ONE, _ONE, _ZERO
    delta = z1 * z1 % p
    gamma = y1 * y1 % p
    beta = x1 * gamma % p
    alpha = 3 * (x1 - delta) * (x1 + delta) % p
    x3 = (alpha * alpha - 8 * beta) % p
    z3 = ((y1 + z1) ** 2 - gamma - delta) % p
    y3 = (alpha * (4 * beta - x3) - 8 * gamma * gamma) % p
    return x3, y3, z3


def jadd_affine(x1: mpz, y1: mpz, z1: mpz, x2: mpz, y2: mpz) -> Jacobian:
    """Add an affine point to a Jacobian one (madd-2007-bl)."""
    p = _P
    if not z1:
        return x2, y2, _ONE
    z1z1 = z1 * z1 % p
    u2 = x2 * z1z1 % p
    s2 = y2 * z1 * z1z1 % p
    h = (u2 - x1) % p
    rr = 2 * (s2 - y1) % p
    if not h:
        if not rr:
            return jdouble(x1, y1, z1)
        return _ONE, _ONE, _ZERO
    hh = h * h % p
    i = 4 * hh
    j = h * i % p
    v = x1 * i % p
    x3 = (rr * rr - j - 2 * v) % p
    y3 = (rr * (v - x3) - 2 * y1 * j) % p
    z3 = ((z1 + h) ** 2 - z1z1 - hh) % p
    return x3, y3, z3


def to_affine(point: Jacobian) -> Affine:
    """Convert a Jacobian point to affine coordinates."""
    x, y, z = point
    if not z:
        return None
    zi = gmpy2.invert(z, _P)
    zi2 = zi * zi % _P
    return x * zi2 % _P, y * zi2 * zi % _P


def add(a: Affine, b: Affine) -> Affine:
    """Add two affine points."""
    if a is None:
        return b
    if b is None:
        return a
    return to_affine(jadd_affine(a[0], a[1], _ONE, b[0], b[1]))


def negate(a: Affine) -> Affine:
    """The inverse of an affine point."""
    return None if a is None else (a[0], (-a[1]) % _P)


def multiply(k: int, point: Affine) -> Affine:
    """C{[k]point} for a variable base (4-bit fixed window)."""
    if point is None or k == 0:
        return None
    if k < 0:
        return multiply(-k, negate(point))
    # Table of 1..15 multiples, affine.
    table_j: list[Jacobian] = [(point[0], point[1], _ONE)]
    for _ in range(14):
        table_j.append(jadd_affine(*table_j[-1], point[0], point[1]))
    table: list[Affine] = [to_affine(t) for t in table_j]
    acc: Jacobian = (_ONE, _ONE, _ZERO)
    nibbles = []
    while k:
        nibbles.append(k & 15)
        k >>= 4
    for nibble in reversed(nibbles):
        for _ in range(4):
            acc = jdouble(*acc)
        if nibble:
            entry = table[nibble - 1]
            if entry is None:
                continue
            acc = jadd_affine(*acc, entry[0], entry[1])
    return to_affine(acc)


def in_subgroup(point: Affine) -> bool:
    """Whether C{point} has order q (or is infinity)."""
    return multiply(int(Q), point) is None


class FixedBase:
    """
    Precomputed multiples of a fixed point: C{[d * 2^(w*j)]B} for every
    window j and digit d, so that C{[k]B} is one mixed addition per window.
    """

    def __init__(self, base: tuple[mpz, mpz], window: int = 6, bits: int = 1024) -> None:
        self.window = window
        self.mask = (1 << window) - 1
        windows = -(-bits // window)
        xs: list[mpz] = []
        ys: list[mpz] = []
        zs: list[mpz] = []
        current: tuple[mpz, mpz] | None = base
        for _ in range(windows):
            assert current is not None
            bx, by = current
            acc: Jacobian = (bx, by, _ONE)
            for _d in range(self.mask):
                xs.append(acc[0])
                ys.append(acc[1])
                zs.append(acc[2])
                acc = jadd_affine(*acc, bx, by)
            current = to_affine(acc)
        inverses = batch_invert(zs)
        self.table: list[tuple[mpz, mpz]] = []
        for x, y, zi in zip(xs, ys, inverses):
            zi2 = zi * zi % _P
            self.table.append((x * zi2 % _P, y * zi2 * zi % _P))

    def multiply(self, k: int) -> Affine:
        """C{[k]B} for 0 <= k < 2^bits."""
        return to_affine(self.multiply_jacobian(k))

    def multiply_jacobian(self, k: int) -> Jacobian:
        """C{[k]B} in Jacobian coordinates (no inversion), 0 <= k < 2^bits."""
        mask = self.mask
        step = mask
        window = self.window
        table = self.table
        acc: Jacobian = (_ONE, _ONE, _ZERO)
        offset = -1
        while k:
            digit = k & mask
            if digit:
                x, y = table[offset + digit]
                acc = jadd_affine(*acc, x, y)
            k >>= window
            offset += step
        return acc


def jacobian_equals(point: Jacobian, affine: tuple[mpz, mpz]) -> bool:
    """Whether a Jacobian point equals an affine one, without an inversion."""
    x, y, z = point
    if not z:
        return False
    z2 = z * z % _P
    return bool((affine[0] * z2 - x) % _P == 0 and (affine[1] * z2 * z - y) % _P == 0)


# PF_p arithmetic.  F_p^2 = F_p[i], i^2 = -1; an element a + i*b of F_p^2
# represents the element b/a of PF_p.  Fixed-base tables keep the
# normalised form 1 + i*t, stored as t.


class PfpFixedBase:
    """Precomputed powers of a fixed PF_p element (given as b/a = t)."""

    def __init__(self, t: mpz, window: int = 5, bits: int = 1024) -> None:
        self.window = window
        self.mask = (1 << window) - 1
        windows = -(-bits // window)
        numerators: list[mpz] = []
        denominators: list[mpz] = []
        current = t
        p = _P
        for _ in range(windows):
            a, b = _ONE, current
            for _d in range(self.mask):
                numerators.append(b)
                denominators.append(a)
                a, b = (a - b * current) % p, (b + a * current) % p
            current = b * gmpy2.invert(a, p) % p
        inverses = batch_invert(denominators)
        self.table = [n * d % p for n, d in zip(numerators, inverses)]

    def power(self, k: int) -> mpz:
        """C{t^k} in PF_p, as its representative in F_p."""
        p = _P
        mask = self.mask
        window = self.window
        table = self.table
        a, b = _ONE, _ZERO
        offset = -1
        while k:
            digit = k & mask
            if digit:
                t = table[offset + digit]
                a, b = (a - b * t) % p, (b + a * t) % p
            k >>= window
            offset += mask
        return b * gmpy2.invert(a, p) % p


def pfp_power(t: mpz, k: int) -> mpz:
    """C{t^k} in PF_p by square and multiply (RFC 6508 section 2.1)."""
    p = _P
    a, b = _ONE, _ZERO
    for bit in bin(k)[2:]:
        a, b = (a + b) * (a - b) % p, 2 * a * b % p
        if bit == "1":
            a, b = (a - b * t) % p, (b + a * t) % p
    return b * gmpy2.invert(a, p) % p
