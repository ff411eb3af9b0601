"""Tests for L{cryptify.crypto.eccsi}: RFC 6507 vectors and properties."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crypto import eccsi
from cryptify.crypto.errors import (
    CryptoError,
    InvalidPoint,
    KeyValidationError,
    MalformedInput,
    SignatureInvalid,
)
from tests.fixtures.crypto import fixture, h, n

V = fixture("rfc6507.json")
KMS = eccsi.EccsiKms(n(V["ksak"]))
ID = h(V["id"])
SSK, PVT = KMS.issue(ID, v=n(V["v"]))
SIGNER = eccsi.EccsiSigner(KMS.kpak, ID, SSK, PVT)
MESSAGE = h(V["message"])
SIGNATURE = h(V["signature"])


class RFC6507VectorTests(SynchronousTestCase):
    """Every value of RFC 6507 Appendix A is reproduced."""

    def test_kpak(self) -> None:
        """KPAK = [KSAK]G is the RFC's KPAK."""
        self.assertEqual(KMS.kpak, h(V["kpak"]))

    def test_identifier(self) -> None:
        """The RFC's ID is the 26-octet string 2011-02\\0tel:+447700900123\\0."""
        self.assertEqual(ID, b"2011-02\0tel:+447700900123\0")

    def test_pvt_hs_ssk(self) -> None:
        """With v = 0x23456, PVT, HS and SSK are the RFC's values."""
        self.assertEqual(PVT, h(V["pvt"]))
        self.assertEqual(eccsi.hash_hs(KMS.kpak, ID, PVT), n(V["hs"]))
        self.assertEqual(SSK, n(V["ssk"]))

    def test_ssk_validation(self) -> None:
        """The user's validation of (SSK, PVT) succeeds and returns HS."""
        self.assertEqual(eccsi.validate_signing_key(KMS.kpak, ID, SSK, PVT), n(V["hs"]))

    def test_signature(self) -> None:
        """With j = 0x34567 the signature r||s||PVT is the RFC's 129 octets."""
        signature = SIGNER.sign(MESSAGE, j=n(V["j"]))
        self.assertEqual(len(signature), 129)
        self.assertEqual(signature, SIGNATURE)
        self.assertEqual(eccsi.hash_he(n(V["hs"]), n(V["r"]), MESSAGE), n(V["he"]))

    def test_verify(self) -> None:
        """The RFC signature verifies."""
        eccsi.verify(KMS.kpak, ID, MESSAGE, SIGNATURE)

    def test_y_point(self) -> None:
        """The verifier's Y = [HS]PVT + KPAK is the RFC's Y."""
        x, y = eccsi._y_point(KMS.kpak, ID, PVT)
        self.assertEqual(eccsi.encode_point(eccsi.Point(x, y, curve=eccsi._CURVE)), h(V["y"]))

    def test_both_final_checks_agree(self) -> None:
        """The ECDSA-based final check and the explicit one agree, good and bad."""
        r, s, pvt = eccsi.split_signature(SIGNATURE)
        yx, yy = eccsi._y_point(KMS.kpak, ID, pvt)
        he = eccsi.hash_he(eccsi.hash_hs(KMS.kpak, ID, pvt), r, MESSAGE)
        self.assertTrue(eccsi._j_matches_ecdsa(yx, yy, r, s, he))
        self.assertTrue(eccsi._j_matches_exact(yx, yy, r, s, he))
        self.assertFalse(eccsi._j_matches_ecdsa(yx, yy, r, s, he + 1))
        self.assertFalse(eccsi._j_matches_exact(yx, yy, r, s, he + 1))

    def test_r_is_not_reduced_mod_q(self) -> None:
        """An r congruent to Jx only modulo q is refused: the check is Jx = r mod p.

        ECDSA alone would accept r + q (it reduces modulo q), which is why
        verify() leaves values of r outside [p - q, q) to the exact check.
        """
        r, s, pvt = eccsi.split_signature(SIGNATURE)
        yx, yy = eccsi._y_point(KMS.kpak, ID, pvt)
        he = eccsi.hash_he(eccsi.hash_hs(KMS.kpak, ID, pvt), r, MESSAGE)
        self.assertTrue(eccsi._j_matches_ecdsa(yx, yy, r + eccsi.Q, s, he))
        self.assertFalse(eccsi._j_matches_exact(yx, yy, r + eccsi.Q, s, he))
        self.assertFalse(eccsi.P - eccsi.Q <= r + eccsi.Q < eccsi.Q)
        self.assertTrue(eccsi._j_matches_native(yx, yy, r, s, he))
        self.assertFalse(eccsi._j_matches_native(yx, yy, r + eccsi.Q, s, he))
        self.assertFalse(eccsi._j_matches_native(yx, yy, r, s, he + 1))


class TamperTests(SynchronousTestCase):
    """Changing any input makes verification fail with a typed error."""

    def test_tampered_message(self) -> None:
        """A different message does not verify."""
        self.assertRaises(SignatureInvalid, eccsi.verify, KMS.kpak, ID, b"messagf\0", SIGNATURE)

    def test_other_identity(self) -> None:
        """The signature does not verify for another identity or month."""
        other = b"2011-03\0tel:+447700900123\0"
        self.assertRaises(SignatureInvalid, eccsi.verify, KMS.kpak, other, MESSAGE, SIGNATURE)

    def test_other_kpak(self) -> None:
        """The signature does not verify under another KMS's KPAK."""
        other = eccsi.EccsiKms(0x54321).kpak
        self.assertRaises(SignatureInvalid, eccsi.verify, other, ID, MESSAGE, SIGNATURE)

    @settings(max_examples=150, deadline=None)
    @given(st.integers(0, 128), st.integers(1, 255))
    def test_any_signature_byte(self, index: int, delta: int) -> None:
        """Altering any octet of the signature is refused with a CryptoError."""
        bad = bytearray(SIGNATURE)
        bad[index] = (bad[index] + delta) % 256
        self.assertRaises(CryptoError, eccsi.verify, KMS.kpak, ID, MESSAGE, bytes(bad))

    def test_wrong_ssk_refused(self) -> None:
        """A signing key whose SSK does not match the PVT fails validation."""
        self.assertRaises(KeyValidationError, eccsi.EccsiSigner, KMS.kpak, ID, SSK + 1, PVT)

    def test_ssk_for_other_identity_refused(self) -> None:
        """A signing key issued for another identity fails validation."""
        self.assertRaises(
            KeyValidationError, eccsi.EccsiSigner, KMS.kpak, b"2011-03\0x\0", SSK, PVT
        )


class HostileInputTests(SynchronousTestCase):
    """Malformed signatures and points raise only CryptoError subclasses."""

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=200))
    def test_random_signature(self, data: bytes) -> None:
        """Random octets as a signature give SignatureInvalid or MalformedInput."""
        with self.assertRaises(CryptoError):
            eccsi.verify(KMS.kpak, ID, MESSAGE, data)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(min_size=65, max_size=65))
    def test_random_point(self, data: bytes) -> None:
        """Random 65 octets decode only if on the curve; otherwise InvalidPoint."""
        try:
            point = eccsi.decode_point(data)
        except InvalidPoint:
            return
        self.assertEqual(eccsi.encode_point(point), data)

    def test_short_kpak(self) -> None:
        """A truncated KPAK is malformed input."""
        self.assertRaises(MalformedInput, eccsi.verify, KMS.kpak[:-1], ID, MESSAGE, SIGNATURE)


class RoundTripTests(SynchronousTestCase):
    """Fresh keys sign and verify; signatures are bound to their inputs."""

    @settings(max_examples=25, deadline=None)
    @given(st.binary(max_size=64), st.binary(min_size=1, max_size=40))
    def test_sign_verify(self, message: bytes, identity: bytes) -> None:
        """A signature by a freshly issued key verifies, and not for another message."""
        kms = eccsi.EccsiKms.generate()
        ssk, pvt = kms.issue(identity)
        signer = eccsi.EccsiSigner(kms.kpak, identity, ssk, pvt)
        signature = signer.sign(message)
        eccsi.verify(kms.kpak, identity, message, signature)
        self.assertRaises(
            SignatureInvalid, eccsi.verify, kms.kpak, identity, message + b"x", signature
        )


class YPointTests(SynchronousTestCase):
    """The OpenSSL route to [HS]PVT agrees with explicit point arithmetic."""

    @settings(max_examples=40, deadline=None)
    @given(st.integers(1, eccsi.Q - 1), st.integers(0, eccsi.Q - 1))
    def test_ecdh_multiple(self, v: int, hs: int) -> None:
        """[HS]PVT from ECDH x, square root and sign check equals fastecdsa's, or defers."""
        pvt = eccsi._G * v
        got = eccsi._y_by_ecdh(pvt, hs)
        if got is None:
            self.assertTrue(hs in (0, eccsi.Q - 1) or (pvt * hs).x == pvt.x)
        else:
            self.assertEqual(got, pvt * hs)

    def test_boundary_hs(self) -> None:
        """HS values the ECDH route leaves to explicit arithmetic are deferred."""
        self.assertIsNone(eccsi._y_by_ecdh(eccsi._G, 0))
        self.assertIsNone(eccsi._y_by_ecdh(eccsi._G, eccsi.Q - 1))
        self.assertIsNone(eccsi._y_by_ecdh(eccsi._G, 1))


def _reference(terms: list[tuple[int, tuple[int, int]]]) -> tuple[int, int] | None:
    total = eccsi._INFINITY
    for k, (x, y) in terms:
        total = total + eccsi.Point(x, y, curve=eccsi._CURVE) * k
    return None if eccsi._is_infinity(total) else (total.x, total.y)


_SCALARS = st.one_of(
    st.integers(0, 2**256 - 1),
    st.integers(0, 20),
    st.sampled_from([eccsi.Q - 1, eccsi.Q, eccsi.Q + 1, 2**256 - 1]),
)


class NativeLincombTests(SynchronousTestCase):
    """The C multi-scalar multiplication (p256.c) against fastecdsa."""

    def test_built(self) -> None:
        """The package build compiled the C code, and verify() uses it."""
        self.assertIsNotNone(eccsi._native, "cryptify.crypto._p256 was not built")

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(_SCALARS, st.integers(1, eccsi.Q - 1)), min_size=1, max_size=4))
    def test_same_as_fastecdsa(self, terms: list[tuple[int, int]]) -> None:
        """Any 1 to 4 terms, scalars anywhere below 2^256."""
        points = [(k, ((eccsi._G * v).x, (eccsi._G * v).y)) for k, v in terms]
        self.assertEqual(eccsi._affine(eccsi.lincomb(points)), _reference(points))

    @settings(max_examples=20, deadline=None)
    @given(_SCALARS, st.integers(1, eccsi.Q - 1))
    def test_special_cases(self, k: int, v: int) -> None:
        """Terms that meet: P + P (the addition doubles), P - P (infinity)."""
        point = eccsi._G * v
        xy = (point.x, point.y)
        minus = (point.x, eccsi.P - point.y)
        for terms in (
            [(k, xy), (k, xy)],
            [(k, xy), (k, minus)],
            [(k, xy), (eccsi.Q - k % eccsi.Q, xy)],
        ):
            self.assertEqual(eccsi._affine(eccsi.lincomb(terms)), _reference(terms))

    def test_too_many_terms(self) -> None:
        """The C code takes at most four terms."""
        g = (eccsi._G.x, eccsi._G.y)
        self.assertRaises(ValueError, eccsi.lincomb, [(1, g)] * 5)


class FallbackTests(SynchronousTestCase):
    """Without the C extension, verification runs on OpenSSL and fastecdsa
    and gives the same answers."""

    def test_rfc_vector_without_native(self) -> None:
        """The RFC signature verifies, and not for another message; Y is
        the C code's Y."""
        native_y = eccsi._y_point.__wrapped__(KMS.kpak, ID, PVT)
        self.patch(eccsi, "_native", None)
        eccsi._y_point.cache_clear()
        self.addCleanup(eccsi._y_point.cache_clear)
        self.assertEqual(eccsi._y_point(KMS.kpak, ID, PVT), native_y)
        eccsi.verify(KMS.kpak, ID, MESSAGE, SIGNATURE)
        self.assertRaises(SignatureInvalid, eccsi.verify, KMS.kpak, ID, b"messagf\0", SIGNATURE)


def _point(v: int) -> tuple[int, int]:
    point = eccsi._G * v
    return point.x, point.y


class FixedBaseTests(SynchronousTestCase):
    """The C fixed-base tables (G, a KPAK) and the verify built on them."""

    @settings(max_examples=40, deadline=None)
    @given(
        _SCALARS,
        st.integers(1, eccsi.Q - 1),
        _SCALARS,
        st.integers(1, eccsi.Q - 1),
        st.lists(st.tuples(_SCALARS, st.integers(1, eccsi.Q - 1)), max_size=2),
        st.booleans(),
    )
    def test_same_as_fastecdsa(
        self,
        a: int,
        va: int,
        b: int,
        vb: int,
        terms: list[tuple[int, int]],
        with_b: bool,
    ) -> None:
        """[a]A + [b]B + up to two variable terms, any scalars below 2^256."""
        point_a, point_b = _point(va), _point(vb)
        points = [(k, _point(v)) for k, v in terms]
        table_a = eccsi._fixed_table(point_a)
        table_b = eccsi._fixed_table(point_b) if with_b else None
        got = eccsi._affine(eccsi.lincomb_fixed(a, table_a, b, table_b, points))
        expected = [(a, point_a), *([(b, point_b)] if with_b else []), *points]
        self.assertEqual(got, _reference(expected))

    @settings(max_examples=20, deadline=None)
    @given(_SCALARS, st.integers(1, eccsi.Q - 1))
    def test_terms_that_meet(self, k: int, v: int) -> None:
        """The fixed part meets the variable part: doubling and infinity."""
        xy = _point(v)
        table = eccsi._fixed_table(xy)
        minus = (xy[0], eccsi.P - xy[1])
        for b, terms in ((k, [(k, xy)]), (0, [(k, minus)]), (k, [(eccsi.Q - k % eccsi.Q, xy)])):
            got = eccsi._affine(eccsi.lincomb_fixed(k, table, b, table, terms))
            self.assertEqual(got, _reference([(k, xy), (b, xy), *terms]))

    def test_too_many_terms(self) -> None:
        """At most two variable terms."""
        g = eccsi._G_XY
        self.assertRaises(
            ValueError, eccsi.lincomb_fixed, 1, eccsi._g_table(), 0, None, [(1, g)] * 3
        )

    def test_rfc_vector_reference(self) -> None:
        """The reference verifier accepts the RFC signature, not a changed message."""
        eccsi.verify_reference(KMS.kpak, ID, MESSAGE, SIGNATURE)
        self.assertRaises(
            SignatureInvalid, eccsi.verify_reference, KMS.kpak, ID, b"messagf\0", SIGNATURE
        )

    @settings(max_examples=30, deadline=None)
    @given(
        st.integers(1, eccsi.Q - 1),
        st.binary(min_size=1, max_size=40),
        st.binary(max_size=40),
        st.sampled_from(["good", "message", "identity", "r", "s", "pvt", "kpak", "r+q"]),
    )
    def test_agrees_with_reference(
        self, ksak: int, identity: bytes, message: bytes, change: str
    ) -> None:
        """verify() and verify_reference() accept and refuse the same
        signatures: good ones, and ones with one input changed."""
        kms = eccsi.EccsiKms(ksak)
        kpak = kms.kpak
        ssk, pvt = kms.issue(identity)
        signature = eccsi.EccsiSigner(kpak, identity, ssk, pvt).sign(message)
        r, s, _ = eccsi.split_signature(signature)
        if change == "message":
            message += b"!"
        elif change == "identity":
            identity += b"!"
        elif change in ("r", "s", "r+q"):
            if change == "r":
                r = (r + 1) % 2**256
            elif change == "r+q":
                r = (r + eccsi.Q) % 2**256
            else:
                s = s % (eccsi.Q - 1) + 1
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big") + pvt
        elif change == "pvt":
            signature = signature[:64] + kms.issue(identity + b"?")[1]
        elif change == "kpak":
            kpak = eccsi.EccsiKms(ksak % (eccsi.Q - 1) + 1).kpak

        def outcome(check: object) -> str:
            try:
                check(kpak, identity, message, signature)  # type: ignore[operator]
            except CryptoError as exc:
                return type(exc).__name__
            return "valid"

        self.assertEqual(outcome(eccsi.verify), outcome(eccsi.verify_reference))
        self.assertEqual(outcome(eccsi.verify) == "valid", change == "good")

    @settings(max_examples=60, deadline=None)
    @given(st.integers(0, 2**256 - 1), st.integers(0, 2**256 - 1), st.integers(1, eccsi.Q - 1))
    def test_random_r_s_agree(self, r: int, s: int, v: int) -> None:
        """Random (r, s) with a valid PVT: the same answer from both (a
        refusal, all but surely)."""
        pvt = eccsi.encode_point(eccsi._G * v)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big") + pvt
        fast = ref = "valid"
        try:
            eccsi.verify(KMS.kpak, ID, MESSAGE, signature)
        except SignatureInvalid:
            fast = "invalid"
        try:
            eccsi.verify_reference(KMS.kpak, ID, MESSAGE, signature)
        except SignatureInvalid:
            ref = "invalid"
        self.assertEqual(fast, ref)
