"""
ECCSI signatures (RFC 6507) on NIST P-256 with SHA-256, as MIKEY-SAKKE
(RFC 6509) requires.

Point arithmetic is done by C code.  Signing and key issue use OpenSSL
(through C{cryptography}) for fixed-base multiplication.  Verification
computes the RFC's C{J = [s]([HE]G + [r]Y)} with C{Y = [HS]PVT + KPAK}
expanded, as one sum in the package's own C code (``p256.c``, built into
:mod:`cryptify.crypto._p256` when the package is installed)::

    J = [s*HE]G + [s*r]KPAK + [s*r*HS]PVT

G and the KPAK are fixed for a month and an account, so each has a
precomputed table (52 windows of 16 multiples, 53 KB; G's made once, a
KPAK's the first time a signature under it is verified, the last
:data:`KPAK_TABLES` kept) and costs at most 52 point additions; only the
signer's PVT goes through a chain of 256 doublings.  Nothing is cached per
signature or per message: a verify does the whole check every time.  The
final check C{Jx = r (mod p)} is C{X = r*Z^2} on J's Jacobian coordinates
(J not the point at infinity).  :func:`verify_reference` is the RFC's
procedure step by step on fastecdsa's points, for the tests to compare.
Verification handles public values only, so the C code need not be
constant-time.

Without the extension, Y comes from OpenSSL's ECDH and fastecdsa (cached
per signer), and the last step is an OpenSSL ECDSA verification: with
C{u1 = HE*s} and C{u2 = r*s}, ECDSA's C{[u1]G + [u2]Y} is exactly ECCSI's
J; ECDSA compares C{Jx mod q} with C{r mod q}, which equals the RFC's
check C{Jx = r (mod p)} whenever C{p - q <= r < q}, and the few values of
C{r} outside that range are checked exactly with fastecdsa.

Encodings are fixed-length throughout (RFC 6507 section 3): points are
C{04 || x || y} with 32-octet coordinates, C{r} and C{s} are 32 octets, and a
signature is C{r || s || PVT}, 129 octets.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from types import ModuleType
from typing import Any

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from fastecdsa.curve import P256 as _CURVE
from fastecdsa.rust import Point

from cryptify.crypto._util import i2osp, os2ip, random_below
from cryptify.crypto.errors import (
    InvalidPoint,
    KeyValidationError,
    MalformedInput,
    SignatureInvalid,
)

#: The C multi-scalar multiplication (``p256.c``), compiled when the
#: package is built (setup.py); None in a tree where it was not.
_native: ModuleType | None = None
try:
    from cryptify.crypto import _p256

    _native = _p256
except ImportError:  # pragma: no cover - a build without a C compiler
    pass

#: Field prime, group order, curve coefficient and base point of P-256.
P = _CURVE.p
Q = _CURVE.q
B = _CURVE.b
N = 32
POINT_LENGTH = 2 * N + 1
SIGNATURE_LENGTH = 4 * N + 1

_G = _CURVE.G
_INFINITY = _G * 0
G_OCTETS = b"\x04" + i2osp(_G.x, N) + i2osp(_G.y, N)
_SECP256R1 = ec.SECP256R1()
_PREHASHED = ec.ECDSA(utils.Prehashed(hashes.SHA256()))


def _is_infinity(point: Point) -> bool:
    return bool(point == _INFINITY)


def decode_xy(data: bytes, what: str = "point") -> tuple[int, int]:
    """
    Decode an uncompressed P-256 point to (x, y), checking that it is on
    the curve.

    @raise InvalidPoint: for any other input.
    """
    if not isinstance(data, bytes | bytearray) or len(data) != POINT_LENGTH:
        raise InvalidPoint(f"{what} must be {POINT_LENGTH} octets (04 || x || y)")
    if data[0] != 4:
        raise InvalidPoint(f"{what} must be an uncompressed point (first octet 04)")
    x = os2ip(data[1 : 1 + N])
    y = os2ip(data[1 + N :])
    if x >= P or y >= P or (y * y - (x * x * x - 3 * x + B)) % P:
        raise InvalidPoint(f"{what} is not on the P-256 curve")
    return x, y


def decode_point(data: bytes, what: str = "point") -> Point:
    """
    Decode an uncompressed P-256 point, checking that it is on the curve.

    @raise InvalidPoint: for any other input.
    """
    x, y = decode_xy(data, what)
    return Point(x, y, curve=_CURVE)


_G_XY = (_G.x, _G.y)


def lincomb(terms: list[tuple[int, tuple[int, int]]]) -> tuple[int, int, int]:
    """
    C{[k1]P1 + ... + [kn]Pn} (1 <= n <= 4) in the C code, as Jacobian
    (X, Y, Z) with C{Z == 0} for the point at infinity.  Every k below
    2^256, every point affine and on the curve (the caller checks).  Public
    values only: the C code is not constant-time.
    """
    assert _native is not None
    ffi = _native.ffi
    count = len(terms)
    scalars = ffi.new("uint64_t[]", 4 * count)
    points = ffi.new("uint64_t[]", 8 * count)
    out = ffi.new("uint64_t[]", 12)
    ffi.memmove(scalars, b"".join(k.to_bytes(32, "little") for k, _ in terms), 32 * count)
    ffi.memmove(
        points,
        b"".join(x.to_bytes(32, "little") + y.to_bytes(32, "little") for _, (x, y) in terms),
        64 * count,
    )
    if _native.lib.p256_lincomb(count, scalars, points, out) != 0:
        raise ValueError("p256_lincomb takes 1 to 4 terms")
    octets = bytes(ffi.buffer(out))
    return (
        int.from_bytes(octets[:32], "little"),
        int.from_bytes(octets[32:64], "little"),
        int.from_bytes(octets[64:], "little"),
    )


#: KPAK tables kept (53 KB each): one per account and key month in use.
KPAK_TABLES = 256


def _fixed_table(xy: tuple[int, int]) -> Any:
    """The C code's fixed-base table of an affine point on the curve."""
    assert _native is not None
    ffi = _native.ffi
    point = ffi.new("uint64_t[8]")
    ffi.memmove(point, xy[0].to_bytes(32, "little") + xy[1].to_bytes(32, "little"), 64)
    table = ffi.new("uint64_t[]", _native.lib.p256_fixed_table_limbs())
    _native.lib.p256_fixed_table(point, table)
    return table


@lru_cache(maxsize=1)
def _g_table() -> Any:
    return _fixed_table(_G_XY)


@lru_cache(maxsize=KPAK_TABLES)
def _kpak_table(kpak: bytes) -> Any:
    """The table of one KPAK (checked to be on the curve first)."""
    return _fixed_table(decode_xy(kpak, "KPAK"))


def lincomb_fixed(
    a: int, table_a: Any, b: int, table_b: Any, terms: list[tuple[int, tuple[int, int]]]
) -> tuple[int, int, int]:
    """
    C{[a]A + [b]B + [k1]P1 + ...} (at most two terms) in the C code, A and
    B given by their tables (C{table_b} None: no B term), as Jacobian
    (X, Y, Z) like :func:`lincomb`.  Every scalar below 2^256.
    """
    assert _native is not None
    ffi = _native.ffi
    count = len(terms)
    room = max(count, 1)
    # one buffer: a, b, the terms' scalars, their points, then the result
    octets = b"".join(
        (
            a.to_bytes(32, "little"),
            b.to_bytes(32, "little"),
            *(k.to_bytes(32, "little") for k, _ in terms),
            b"\0" * 32 * (room - count),
            *(x.to_bytes(32, "little") + y.to_bytes(32, "little") for _, (x, y) in terms),
        )
    )
    limbs = ffi.new("uint64_t[]", 8 + 12 * room + 12)
    ffi.memmove(limbs, octets, len(octets))
    out = limbs + 8 + 12 * room
    status = _native.lib.p256_lincomb_fixed(
        limbs,
        table_a,
        limbs + 4,
        ffi.NULL if table_b is None else table_b,
        count,
        limbs + 8,
        limbs + 8 + 4 * room,
        out,
    )
    if status != 0:
        raise ValueError("p256_lincomb_fixed takes 0 to 2 terms")
    result = bytes(ffi.buffer(out, 96))
    return (
        int.from_bytes(result[:32], "little"),
        int.from_bytes(result[32:64], "little"),
        int.from_bytes(result[64:], "little"),
    )


def _affine(point: tuple[int, int, int]) -> tuple[int, int] | None:
    x, y, z = point
    if z == 0:
        return None
    zi = pow(z, -1, P)
    zi2 = zi * zi % P
    return x * zi2 % P, y * zi2 * zi % P


def encode_point(point: Point) -> bytes:
    """Encode a P-256 point as C{04 || x || y}."""
    if _is_infinity(point):
        raise InvalidPoint("the point at infinity has no encoding")
    return b"\x04" + i2osp(point.x, N) + i2osp(point.y, N)


def _base_mult(k: int) -> tuple[int, int]:
    numbers = ec.derive_private_key(k, _SECP256R1).public_key().public_numbers()
    return numbers.x, numbers.y


def hash_hs(kpak: bytes, identity: bytes, pvt: bytes) -> int:
    """C{HS = hash(G || KPAK || ID || PVT)} (RFC 6507 section 5.1.1)."""
    digest = hashlib.sha256(G_OCTETS + kpak + identity + pvt).digest()
    return os2ip(digest)


def hash_he(hs: int, r: int, message: bytes) -> int:
    """C{HE = hash(HS || r || M)} (RFC 6507 section 5.2.1)."""
    return os2ip(hashlib.sha256(i2osp(hs, N) + i2osp(r, N) + message).digest())


@attrs.frozen
class EccsiKms:
    """
    A KMS's ECCSI key pair: the KSAK (secret) and the KPAK (public).
    """

    ksak: int = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        if not 0 < self.ksak < Q:
            raise KeyValidationError("KSAK must be in [1, q)")

    @classmethod
    def generate(cls) -> EccsiKms:
        """A new random KMS key pair."""
        return cls(random_below(Q))

    @property
    def kpak(self) -> bytes:
        """The KMS Public Authentication Key, C{[KSAK]G}."""
        x, y = _base_mult(self.ksak)
        return b"\x04" + i2osp(x, N) + i2osp(y, N)

    def issue(self, identity: bytes, v: int | None = None) -> tuple[int, bytes]:
        """
        Issue the (SSK, PVT) pair of C{identity} (RFC 6507 section 5.1.1).

        @param v: the ephemeral value; random unless given (tests only).
        """
        kpak = self.kpak
        while True:
            ephemeral = random_below(Q) if v is None else v
            x, y = _base_mult(ephemeral)
            pvt = b"\x04" + i2osp(x, N) + i2osp(y, N)
            hs = hash_hs(kpak, identity, pvt)
            ssk = (self.ksak + hs * ephemeral) % Q
            if ssk:
                return ssk, pvt
            if v is not None:
                raise KeyValidationError("the given v gives SSK = 0")


def validate_signing_key(kpak: bytes, identity: bytes, ssk: int, pvt: bytes) -> int:
    """
    Validate a user's (SSK, PVT) against the KPAK (RFC 6507 section 5.1.2).

    @return: HS, for the signer to keep.
    @raise KeyValidationError: if the pair does not belong to C{identity}.
    """
    kpak_point = decode_point(kpak, "KPAK")
    pvt_point = decode_point(pvt, "PVT")
    if not 0 < ssk < Q:
        raise KeyValidationError("SSK must be in [1, q)")
    hs = hash_hs(kpak, identity, pvt)
    expected = _G * ssk - pvt_point * hs
    if _is_infinity(expected) or expected != kpak_point:
        raise KeyValidationError("SSK and PVT do not validate against the KPAK for this identity")
    return hs


@attrs.frozen
class EccsiSigner:
    """
    A user's signing key: identity, SSK and PVT, validated against the KPAK.
    """

    kpak: bytes
    identity: bytes
    ssk: int = attrs.field(repr=False)
    pvt: bytes
    hs: int = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(
            self, "hs", validate_signing_key(self.kpak, self.identity, self.ssk, self.pvt)
        )

    def sign(self, message: bytes, j: int | None = None) -> bytes:
        """
        Sign C{message} (RFC 6507 section 5.2.1), giving C{r || s || PVT}.

        @param j: the ephemeral value; random unless given (tests only).
        """
        while True:
            ephemeral = random_below(Q) if j is None else j
            r, _ = _base_mult(ephemeral)
            he = hash_he(self.hs, r, message)
            t = (he + r * self.ssk) % Q
            if t == 0:
                if j is not None:
                    raise KeyValidationError("the given j gives HE + r*SSK = 0")
                continue
            s = (pow(t, -1, Q) * ephemeral) % Q
            if s.bit_length() > 8 * N:
                s = Q - s
            return i2osp(r, N) + i2osp(s, N) + self.pvt


def split_signature(signature: bytes) -> tuple[int, int, bytes]:
    """Split an ECCSI signature into (r, s, PVT octets)."""
    if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_LENGTH:
        raise MalformedInput(f"an ECCSI signature is {SIGNATURE_LENGTH} octets")
    signature = bytes(signature)
    return os2ip(signature[:N]), os2ip(signature[N : 2 * N]), signature[2 * N :]


def _x_of_multiple(k: int, point: ec.EllipticCurvePublicKey) -> int:
    """x of C{[k]point} through OpenSSL's ECDH (1 <= k < q)."""
    shared = ec.derive_private_key(k, _SECP256R1).exchange(ec.ECDH(), point)
    return os2ip(shared)


def _y_by_ecdh(pvt_point: Point, hs: int) -> Point | None:
    """
    C{[HS]PVT} with OpenSSL: ECDH gives its x, the curve equation gives y up
    to sign, and x of C{[HS+1]PVT} picks the sign.  None for the rare cases
    (small or boundary HS, C = +-PVT) left to explicit arithmetic.
    """
    if not 1 <= hs < Q - 1:
        return None
    public = ec.EllipticCurvePublicNumbers(pvt_point.x, pvt_point.y, _SECP256R1).public_key()
    cx = _x_of_multiple(hs, public)
    if cx == pvt_point.x:
        return None
    cy = pow((cx * cx * cx - 3 * cx + B) % P, (P + 1) // 4, P)
    # x(C + PVT) for C = (cx, cy); the other root gives x(-C + PVT).
    slope = (cy - pvt_point.y) * pow(cx - pvt_point.x, -1, P) % P
    sum_x = (slope * slope - cx - pvt_point.x) % P
    if sum_x != _x_of_multiple(hs + 1, public):
        cy = P - cy
    return Point(cx, cy, curve=_CURVE)


@lru_cache(maxsize=1024)
def _y_point(kpak: bytes, identity: bytes, pvt: bytes) -> tuple[int, int]:
    """C{Y = [HS]PVT + KPAK} for one signer; signers reuse their PVT all month."""
    if _native is not None:
        kpak_xy = decode_xy(kpak, "KPAK")
        pvt_xy = decode_xy(pvt, "PVT in the signature")
        hs = hash_hs(kpak, identity, pvt)
        y_xy = _affine(lincomb([(hs, pvt_xy), (1, kpak_xy)]))
        if y_xy is None:
            raise SignatureInvalid("ECCSI signature does not verify (Y is the point at infinity)")
        return y_xy
    kpak_point = decode_point(kpak, "KPAK")
    pvt_point = decode_point(pvt, "PVT in the signature")
    hs = hash_hs(kpak, identity, pvt) % Q
    multiple = _y_by_ecdh(pvt_point, hs)
    if multiple is None:
        multiple = pvt_point * hs
    y = multiple + kpak_point
    if _is_infinity(y):
        raise SignatureInvalid("ECCSI signature does not verify (Y is the point at infinity)")
    return y.x, y.y


def _j_matches_native(yx: int, yy: int, r: int, s: int, he: int) -> bool:
    """The RFC's final check exactly, in the C code: C{J = [s*HE]G +
    [s*r]Y}, then C{Jx = r (mod p)} as C{X = r*Z^2} (J not infinity)."""
    x, _, z = lincomb([((s * he) % Q, _G_XY), ((s * r) % Q, (yx, yy))])
    return z != 0 and (x - (r % P) * z * z) % P == 0


def _j_matches_ecdsa(yx: int, yy: int, r: int, s: int, he: int) -> bool:
    """The final check through OpenSSL's ECDSA; exact for p - q <= r < q."""
    public = ec.EllipticCurvePublicNumbers(yx, yy, _SECP256R1).public_key()
    der = utils.encode_dss_signature(r % Q, pow(s, -1, Q))
    try:
        public.verify(der, i2osp(he, N), _PREHASHED)
    except InvalidSignature:
        return False
    return True


def _j_matches_exact(yx: int, yy: int, r: int, s: int, he: int) -> bool:
    """The final check with explicit points: C{J = [s*HE]G + [s*r]Y}, C{Jx = r mod p}."""
    j = _G * ((s * he) % Q) + Point(yx, yy, curve=_CURVE) * ((s * r) % Q)
    return not _is_infinity(j) and j.x % P != 0 and j.x == r % P


def _j_matches_fixed(
    kpak: bytes, identity: bytes, message: bytes, r: int, s: int, pvt: bytes
) -> bool:
    """RFC 6507 5.2.2 steps 1 to 6 with the tables: C{J = [s*HE]G +
    [s*r]KPAK + [s*r*HS]PVT}, then C{Jx = r (mod p)} as C{X = r*Z^2}."""
    pvt_xy = decode_xy(pvt, "PVT in the signature")
    kpak_table = _kpak_table(kpak)
    hs = hash_hs(kpak, identity, pvt)
    he = hash_he(hs, r, message)
    sr = s * r % Q
    x, _, z = lincomb_fixed(s * he % Q, _g_table(), sr, kpak_table, [(sr * (hs % Q) % Q, pvt_xy)])
    return z != 0 and (x - (r % P) * z * z) % P == 0


def verify(kpak: bytes, identity: bytes, message: bytes, signature: bytes) -> None:
    """
    Verify an ECCSI signature by C{identity} under C{kpak} (RFC 6507 5.2.2).

    @raise SignatureInvalid: if it does not verify.
    @raise MalformedInput: if the signature, KPAK or PVT are malformed.
    """
    r, s, pvt = split_signature(signature)
    if not 0 < s < Q or r % P == 0:
        raise SignatureInvalid("ECCSI signature does not verify (r or s out of range)")
    kpak, identity = bytes(kpak), bytes(identity)
    if _native is not None:
        ok = _j_matches_fixed(kpak, identity, message, r, s, pvt)
    else:
        yx, yy = _y_point(kpak, identity, pvt)
        he = hash_he(hash_hs(kpak, identity, pvt), r, message)
        if P - Q <= r < Q:
            ok = _j_matches_ecdsa(yx, yy, r, s, he)
        else:
            ok = _j_matches_exact(yx, yy, r, s, he)
    if not ok:
        raise SignatureInvalid("ECCSI signature does not verify")


def verify_reference(kpak: bytes, identity: bytes, message: bytes, signature: bytes) -> None:
    """
    RFC 6507 5.2.2 step by step, in affine coordinates on fastecdsa's
    points: the reference :func:`verify` is tested against (slow).
    """
    r, s, pvt = split_signature(signature)
    kpak_point = decode_point(kpak, "KPAK")
    pvt_point = decode_point(pvt, "PVT in the signature")  # 1) PVT on the curve
    hs = hash_hs(kpak, identity, pvt)  # 2)
    he = hash_he(hs, r, message)  # 3)
    y = pvt_point * hs + kpak_point  # 4)
    j = (_G * he + y * r) * s  # 5)
    if _is_infinity(j) or j.x != r % P or j.x % P == 0:  # 6)
        raise SignatureInvalid("ECCSI signature does not verify")
