"""
P-256 point arithmetic in OpenSSL's C code, reached through cffi's ABI
mode (the system's C{libcrypto.so.3}; nothing is compiled at install time).

ECCSI verification (RFC 6507 section 5.2.2) needs two full points: C{Y =
[HS]PVT + KPAK} and C{J = [s*HE]G + [s*r]Y}.  The C{cryptography} package
only offers x-only ECDH and ECDSA's own check, so L{cryptify.crypto.eccsi}
used to rebuild each point from several of those calls.  C{EC_POINT_mul}
computes C{[n]G + [m]Q} in one call (OpenSSL's interleaved multi-scalar
multiplication, with its precomputed table for G), which is all a verifier
needs.

Only public values pass through here (verification has no secret), so the
variable-time C{EC_POINT_mul} path is acceptable.  If C{libcrypto} cannot be
loaded, L{load} returns None and the callers keep their pure C{cryptography}
path.
"""

from __future__ import annotations

from typing import Any

import cffi

_CDEF = """
typedef struct ec_group_st EC_GROUP;
typedef struct ec_point_st EC_POINT;
typedef struct bignum_st BIGNUM;
typedef struct bignum_ctx BN_CTX;
EC_GROUP *EC_GROUP_new_by_curve_name(int nid);
EC_POINT *EC_POINT_new(const EC_GROUP *group);
void EC_POINT_free(EC_POINT *point);
int EC_POINT_set_affine_coordinates(const EC_GROUP *group, EC_POINT *p,
    const BIGNUM *x, const BIGNUM *y, BN_CTX *ctx);
int EC_POINT_get_affine_coordinates(const EC_GROUP *group, const EC_POINT *p,
    BIGNUM *x, BIGNUM *y, BN_CTX *ctx);
int EC_POINT_mul(const EC_GROUP *group, EC_POINT *r, const BIGNUM *n,
    const EC_POINT *q, const BIGNUM *m, BN_CTX *ctx);
int EC_POINT_add(const EC_GROUP *group, EC_POINT *r, const EC_POINT *a,
    const EC_POINT *b, BN_CTX *ctx);
int EC_POINT_is_at_infinity(const EC_GROUP *group, const EC_POINT *p);
BIGNUM *BN_new(void);
void BN_free(BIGNUM *a);
BIGNUM *BN_bin2bn(const unsigned char *s, int len, BIGNUM *ret);
int BN_bn2binpad(const BIGNUM *a, unsigned char *to, int tolen);
"""

#: OpenSSL's NID for prime256v1 (secp256r1, NIST P-256).
_NID_P256 = 415
_N = 32

Affine = tuple[int, int] | None


class P256:
    """The few P-256 operations an ECCSI verifier needs, on affine tuples."""

    def __init__(self, ffi: cffi.FFI, lib: Any) -> None:
        self._ffi = ffi
        self._lib = lib
        group = lib.EC_GROUP_new_by_curve_name(_NID_P256)
        if group == ffi.NULL:
            raise OSError("libcrypto has no P-256 group")
        self._group = group  # lives as long as the process

    def _bn(self, value: int) -> Any:
        data = value.to_bytes(_N, "big")
        bn = self._lib.BN_bin2bn(data, _N, self._ffi.NULL)
        if bn == self._ffi.NULL:
            raise MemoryError("BN_bin2bn failed")
        return self._ffi.gc(bn, self._lib.BN_free)

    def _new_point(self) -> Any:
        point = self._lib.EC_POINT_new(self._group)
        if point == self._ffi.NULL:
            raise MemoryError("EC_POINT_new failed")
        return self._ffi.gc(point, self._lib.EC_POINT_free)

    def _point(self, xy: tuple[int, int]) -> Any:
        point = self._new_point()
        ok = self._lib.EC_POINT_set_affine_coordinates(
            self._group, point, self._bn(xy[0]), self._bn(xy[1]), self._ffi.NULL
        )
        if ok != 1:
            raise ValueError("point is not on P-256")
        return point

    def _affine(self, point: Any) -> Affine:
        lib = self._lib
        if lib.EC_POINT_is_at_infinity(self._group, point):
            return None
        x = self._ffi.gc(lib.BN_new(), lib.BN_free)
        y = self._ffi.gc(lib.BN_new(), lib.BN_free)
        if lib.EC_POINT_get_affine_coordinates(self._group, point, x, y, self._ffi.NULL) != 1:
            raise ValueError("EC_POINT_get_affine_coordinates failed")
        buf = self._ffi.new("unsigned char[]", 2 * _N)
        lib.BN_bn2binpad(x, buf, _N)
        lib.BN_bn2binpad(y, buf + _N, _N)
        raw = bytes(self._ffi.buffer(buf))
        return int.from_bytes(raw[:_N], "big"), int.from_bytes(raw[_N:], "big")

    def mul_add(self, k: int, point: tuple[int, int], addend: tuple[int, int]) -> Affine:
        """C{[k]point + addend} (0 <= k < 2^256; both points on the curve)."""
        lib = self._lib
        product = self._new_point()
        if (
            lib.EC_POINT_mul(
                self._group,
                product,
                self._ffi.NULL,
                self._point(point),
                self._bn(k),
                self._ffi.NULL,
            )
            != 1
        ):
            raise ValueError("EC_POINT_mul failed")
        total = self._new_point()
        if lib.EC_POINT_add(self._group, total, product, self._point(addend), self._ffi.NULL) != 1:
            raise ValueError("EC_POINT_add failed")
        return self._affine(total)

    def base_mul_add(self, n: int, k: int, point: tuple[int, int]) -> Affine:
        """C{[n]G + [k]point} in one multi-scalar multiplication (0 <= n, k < 2^256)."""
        result = self._new_point()
        ok = self._lib.EC_POINT_mul(
            self._group, result, self._bn(n), self._point(point), self._bn(k), self._ffi.NULL
        )
        if ok != 1:
            raise ValueError("EC_POINT_mul failed")
        return self._affine(result)


def load(name: str = "libcrypto.so.3") -> P256 | None:
    """The OpenSSL-backed P-256 arithmetic, or None if C{name} cannot be used."""
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    try:
        lib = ffi.dlopen(name)
        return P256(ffi, lib)
    except (OSError, AttributeError):
        return None
