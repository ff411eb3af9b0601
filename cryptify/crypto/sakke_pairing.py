"""
The SAKKE pairing (RFC 6508 section 3.2) for parameter set 1, and the C
paths of decapsulation.

L{pairing} is the RFC's algorithm done literally.  The receiver's fast path
is L{PairingPrecomputation}: the Miller loop's lines of its fixed secret key
recorded once, then only the accumulation for each new point, in C
(``sakke_miller.c``, through L{_NativeLoop}) when the package was built with
it.  L{NativeCheckTable} is the integrity check C{R == [r]B} in C.  Neither
C function branches on or indexes memory by the secret key's lines or by r;
the final inversion is blinded.  L{cryptify.crypto.sakke} builds keys,
encapsulation and decapsulation on these.
"""

from __future__ import annotations

import secrets
import threading
from types import ModuleType
from typing import TYPE_CHECKING

import gmpy2
from gmpy2 import mpz

from cryptify.crypto import sakke_curve as curve
from cryptify.crypto.errors import DecapsulationFailed
from cryptify.crypto.sakke_curve import P, Q

if TYPE_CHECKING:
    from cffi import FFI

    #: A C array handed over by cffi (``uint64_t[]``).
    CData = FFI.CData

#: The C Miller loop (``sakke_miller.c``), compiled when the package is
#: built (setup.py); None in a tree where it was not.
_native: ModuleType | None = None
try:
    from cryptify.crypto import _pairing

    if _pairing.lib.sakke_native_ok():
        _native = _pairing
except ImportError:  # pragma: no cover - a build without a C compiler
    pass


def native_built() -> bool:
    """Whether the C Miller loop and integrity check were built."""
    return _native is not None


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
        ffi: FFI = _native.ffi
        lib = _native.lib
        self.ffi, self.lib = ffi, lib
        self.p = self.array([P], montgomery=False)
        self.pinv = (-pow(int(P), -1, 1 << 64)) % (1 << 64)
        self.one = self.array([mpz(1)])
        self.r2 = self.array([mpz(1 << 1024)])
        self.q = self.array([Q], montgomery=False)
        #: 1 when the C code multiplies with mulx/adcx/adox (this processor
        #: has them), else 0 (GMP's code).
        self.adx = int(lib.sakke_cpu_adx())

    def array(self, values: list[mpz], montgomery: bool = True) -> CData:
        """A C array of the values, one after the other."""
        size = 8 * self.LIMBS
        octets = b"".join(
            int((v << 1024) % P if montgomery else v).to_bytes(size, "little") for v in values
        )
        array = self.ffi.new("uint64_t[]", self.LIMBS * len(values))
        self.ffi.memmove(array, octets, len(octets))
        return array

    def number(self, array: CData) -> mpz:
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
