"""Tests for L{cryptify.crypto.sakke}: RFC 6508 / 6509 vectors and properties."""

from __future__ import annotations

import hashlib
import itertools

from gmpy2 import mpz
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crypto import sakke, sakke_pairing
from cryptify.crypto import sakke_curve as curve
from cryptify.crypto.errors import (
    CryptoError,
    DecapsulationFailed,
    InvalidPoint,
    KeyValidationError,
    MalformedInput,
)
from tests.fixtures.crypto import fixture, h, n

V = fixture("rfc6508.json")
KMS = sakke.SakkeKms(n(V["z"]))
Z = KMS.public_key()
B = h(V["b"])
SSV = h(V["ssv"])
RSK = h(V["rsk"])
RECEIVER = sakke.SakkeReceiver(Z, B, RSK)
ENCAPSULATED = h(V["encapsulated"])


class ParameterSetTests(SynchronousTestCase):
    """Parameter set 1 (RFC 6509 Appendix A) is what the module uses."""

    def test_constants(self) -> None:
        """p, q, P and g are the RFC's; q = (p + 1) / 4; p = 3 mod 4."""
        self.assertEqual(curve.P, n(V["p"]))
        self.assertEqual(curve.Q, n(V["q"]))
        self.assertEqual((curve.PX, curve.PY), (n(V["px"]), n(V["py"])))
        self.assertEqual(curve.G, n(V["g"]))
        self.assertEqual(curve.P % 4, 3)
        self.assertEqual(4 * curve.Q, curve.P + 1)

    def test_generator(self) -> None:
        """P is on E and has order q."""
        self.assertTrue(curve.is_on_curve(curve.PX, curve.PY))
        self.assertTrue(curve.in_subgroup(curve.BASE))

    def test_g_is_pairing_of_p(self) -> None:
        """g = <P, P> with the RFC 6508 3.2 pairing, literal and precomputed."""
        self.assertEqual(sakke.pairing(curve.BASE, curve.BASE), curve.G)
        self.assertEqual(sakke.PairingPrecomputation(curve.BASE).evaluate(curve.BASE), curve.G)

    def test_lengths(self) -> None:
        """Encapsulated Data is 2L + n/8 + 1 = 273 octets; the SSV 16."""
        self.assertEqual(sakke.ENCAPSULATED_LENGTH, 273)
        self.assertEqual(sakke.SSV_LENGTH, 16)


class RFC6508VectorTests(SynchronousTestCase):
    """Every value of RFC 6508 Appendix A is reproduced."""

    def test_z(self) -> None:
        """Z = [z]P is the RFC's Z, and its encoding the transmitted one."""
        self.assertEqual(Z.point, (n(V["zx"]), n(V["zy"])))
        self.assertEqual(Z.to_bytes(), h(V["z_point"]))
        self.assertEqual(sakke.SakkePublicKey.from_bytes(h(V["z_point"])).point, Z.point)

    def test_hash_to_integer_range_example(self) -> None:
        """The HashToIntegerRange worked example: A, h1-h4, v1-v4, v mod q."""
        ex = V["hash_to_integer_range"]
        m = h(ex["m"])
        a = hashlib.sha256(m).digest()
        self.assertEqual(a, h(ex["a"]))
        state = bytes(32)
        for hi, vi in zip(ex["h"], ex["v"]):
            state = hashlib.sha256(state).digest()
            self.assertEqual(state, h(hi))
            self.assertEqual(hashlib.sha256(state + a).digest(), h(vi))
        self.assertEqual(sakke.hash_to_integer_range(m, int(curve.Q)), n(ex["v_mod_q"]))

    def test_r(self) -> None:
        """r = HashToIntegerRange(SSV || b, q)."""
        self.assertEqual(sakke.hash_to_integer_range(SSV + B, int(curve.Q)), n(V["r"]))

    def test_r_point(self) -> None:
        """R_(b,S) = [r]([b]P + Z) is the RFC's Rb, both ways of computing it."""
        r = n(V["r"])
        expected = (n(V["rbx"]), n(V["rby"]))
        self.assertEqual(Z.r_point(r, B), expected)
        self.assertEqual(curve.multiply(r, Z.identity_point(B)), expected)

    def test_g_r(self) -> None:
        """g^r in PF_p is the RFC's value, by square-and-multiply and by table."""
        r = n(V["r"])
        self.assertEqual(curve.pfp_power(curve.G, r), n(V["g_r"]))
        self.assertEqual(sakke._g_powers().power(r), n(V["g_r"]))

    def test_g_r_is_not_fp_power(self) -> None:
        """Plain F_p exponentiation of g gives a different (wrong) value."""
        self.assertNotEqual(pow(int(curve.G), n(V["r"]), int(curve.P)), n(V["g_r"]))

    def test_mask_and_hint(self) -> None:
        """mask = HashToIntegerRange(g^r, 2^128) and H = SSV XOR mask."""
        g_r = int(V["g_r"], 16).to_bytes(128, "big")
        mask = sakke.hash_to_integer_range(g_r, 1 << 128)
        self.assertEqual(mask, n(V["mask"]))
        self.assertEqual(n(V["ssv"]) ^ mask, n(V["h"]))

    def test_encapsulate(self) -> None:
        """Encapsulating the RFC's SSV for b gives the RFC's 273 octets."""
        data, ssv = sakke.encapsulate(Z, B, SSV)
        self.assertEqual(ssv, SSV)
        self.assertEqual(data, ENCAPSULATED)

    def test_rsk(self) -> None:
        """K_b = [(b + z)^-1]P is the RFC's RSK."""
        self.assertEqual(KMS.issue_rsk(B), RSK)

    def test_rsk_validation(self) -> None:
        """<[b]P + Z, K_b> = g, with the literal pairing too."""
        k = curve.point_from_bytes(RSK)
        self.assertEqual(sakke.pairing(Z.identity_point(B), k), curve.G)
        sakke.validate_rsk(Z, B, RSK)

    def test_w(self) -> None:
        """w = <R, K_b> = g^r: literal pairing and the precomputed <K_b, R> agree."""
        r_point, _ = sakke.split_encapsulated(ENCAPSULATED)
        k = curve.point_from_bytes(RSK)
        self.assertEqual(sakke.pairing(r_point, k), n(V["g_r"]))
        self.assertEqual(sakke.PairingPrecomputation(k).evaluate(r_point), n(V["g_r"]))

    def test_decapsulate(self) -> None:
        """The receiver recovers the RFC's SSV."""
        self.assertEqual(RECEIVER.decapsulate(ENCAPSULATED), SSV)


class TamperTests(SynchronousTestCase):
    """Altered data, identities and keys are refused with typed errors."""

    @settings(max_examples=40, deadline=None)
    @given(st.integers(0, 272), st.integers(1, 255))
    def test_any_byte(self, index: int, delta: int) -> None:
        """Changing any octet of the Encapsulated Data is refused."""
        bad = bytearray(ENCAPSULATED)
        bad[index] = (bad[index] + delta) % 256
        self.assertRaises(CryptoError, RECEIVER.decapsulate, bytes(bad))

    def test_hint_bit(self) -> None:
        """Flipping a Hint bit fails the integrity check specifically."""
        bad = ENCAPSULATED[:-1] + bytes([ENCAPSULATED[-1] ^ 1])
        self.assertRaises(DecapsulationFailed, RECEIVER.decapsulate, bad)

    def test_other_identity(self) -> None:
        """Data encapsulated for another identity (or month) is refused."""
        data, _ = sakke.encapsulate(Z, b"2011-03\0tel:+447700900123\0", SSV)
        self.assertRaises(DecapsulationFailed, RECEIVER.decapsulate, data)

    def test_rsk_for_other_identity(self) -> None:
        """An RSK does not validate for another identifier."""
        self.assertRaises(KeyValidationError, sakke.SakkeReceiver, Z, B + b"x", RSK)

    def test_rsk_for_other_kms(self) -> None:
        """An RSK does not validate against another KMS's Z."""
        other = sakke.SakkeKms(12345).public_key()
        self.assertRaises(KeyValidationError, sakke.SakkeReceiver, other, B, RSK)


class HostileInputTests(SynchronousTestCase):
    """Malformed input raises only CryptoError subclasses."""

    @settings(max_examples=100, deadline=None)
    @given(st.binary(max_size=300))
    def test_random_data(self, data: bytes) -> None:
        """Random octets are refused by decapsulation."""
        self.assertRaises(CryptoError, RECEIVER.decapsulate, data)

    @settings(max_examples=100, deadline=None)
    @given(st.binary(min_size=257, max_size=257))
    def test_random_point(self, data: bytes) -> None:
        """A random 257-octet string is not accepted as a point."""
        self.assertRaises(InvalidPoint, curve.point_from_bytes, data)

    def test_point_off_subgroup(self) -> None:
        """A curve point outside the order-q subgroup is refused as Z."""
        # (0, 0) is on y^2 = x^3 - 3x and has order 2.
        self.assertFalse(curve.in_subgroup((mpz(0), mpz(0))))
        data = curve.point_to_bytes((mpz(0), mpz(0)))
        self.assertRaises(InvalidPoint, sakke.SakkePublicKey.from_bytes, data)

    def test_bad_ssv_length(self) -> None:
        """An SSV of the wrong length is malformed input."""
        self.assertRaises(MalformedInput, sakke.encapsulate, Z, B, b"short")


class RoundTripTests(SynchronousTestCase):
    """Fresh SSVs and identities round trip; the fast path matches the RFC's."""

    @settings(max_examples=6, deadline=None)
    @given(st.binary(min_size=16, max_size=16), st.binary(min_size=1, max_size=40))
    def test_encapsulate_decapsulate(self, ssv: bytes, identity: bytes) -> None:
        """What is encapsulated for an identity decapsulates with its RSK."""
        receiver = sakke.SakkeReceiver(Z, identity, KMS.issue_rsk(identity))
        data, _ = sakke.encapsulate(Z, identity, ssv)
        self.assertEqual(receiver.decapsulate(data), ssv)

    @settings(max_examples=3, deadline=None)
    @given(st.integers(1, int(curve.Q) - 1), st.integers(1, int(curve.Q) - 1))
    def test_fast_pairing_matches_literal(self, a: int, b: int) -> None:
        """<[a]P, [b]P> by the literal algorithm equals the precomputed one."""
        pa, pb = sakke.multiply_base(a), sakke.multiply_base(b)
        assert pa is not None and pb is not None
        self.assertEqual(sakke.PairingPrecomputation(pb).evaluate(pa), sakke.pairing(pa, pb))

    @settings(max_examples=10, deadline=None)
    @given(st.integers(0, 2**1024 - 1))
    def test_fixed_base_matches_generic(self, k: int) -> None:
        """The fixed-base table gives the same [k]P as the generic ladder."""
        self.assertEqual(sakke.multiply_base(k), curve.multiply(k % int(curve.Q), curve.BASE))


class FastDecapsulationTests(SynchronousTestCase):
    """
    The fast decapsulation (NAF Miller loop with precomputed lines, a
    fixed-base table for [b]P + Z, Jacobian comparison) gives the same
    answer as the RFC's literal algorithm, for good and altered data.
    """

    def test_rfc_vector_reference(self) -> None:
        """The literal reference recovers the RFC's SSV too."""
        self.assertEqual(RECEIVER.decapsulate_reference(ENCAPSULATED), SSV)

    @settings(max_examples=5, deadline=None)
    @given(
        st.binary(min_size=16, max_size=16),
        st.integers(0, sakke.ENCAPSULATED_LENGTH - 1),
        st.integers(0, 255),
    )
    def test_fast_equals_reference(self, ssv: bytes, index: int, delta: int) -> None:
        """With one octet perhaps changed, both paths give the same SSV or error."""
        data = bytearray(sakke.encapsulate(Z, B, ssv)[0])
        data[index] ^= delta
        outcomes: list[object] = []
        for decapsulate in (RECEIVER.decapsulate, RECEIVER.decapsulate_reference):
            try:
                outcomes.append(decapsulate(bytes(data)))
            except CryptoError as e:
                outcomes.append(type(e))
        self.assertEqual(outcomes[0], outcomes[1])
        if delta == 0:
            self.assertEqual(outcomes[0], ssv)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(1, 2**1100))
    def test_naf(self, k: int) -> None:
        """The NAF adds up to k, uses digits -1, 0, 1, never two non-zero in a row."""
        digits = sakke.naf(k)
        self.assertEqual(sum(d << i for i, d in enumerate(reversed(digits))), k)
        self.assertEqual(digits[0], 1)
        self.assertTrue(set(digits) <= {-1, 0, 1})
        self.assertFalse(any(a and b for a, b in itertools.pairwise(digits)))

    def test_fewer_addition_lines(self) -> None:
        """The NAF loop has about a third fewer addition lines than binary."""
        lines = sakke.PairingPrecomputation(curve.point_from_bytes(RSK))
        self.assertEqual(lines.doublings, int(curve.Q - 1).bit_length() - 1)
        self.assertLess(lines.additions, bin(int(curve.Q - 1)).count("1") - 1 - 150)

    @settings(max_examples=20, deadline=None)
    @given(st.integers(0, int(curve.Q) - 1), st.integers(1, int(curve.Q) - 1))
    def test_jacobian_equals(self, a: int, b: int) -> None:
        """A Jacobian [a]P equals affine [b]P exactly when a = b; [0]P equals nothing."""
        table = sakke._base_table()
        point = sakke.multiply_base(b)
        assert point is not None
        self.assertEqual(curve.jacobian_equals(table.multiply_jacobian(a), point), a == b)
        self.assertTrue(curve.jacobian_equals(table.multiply_jacobian(b), point))
        self.assertFalse(curve.jacobian_equals(table.multiply_jacobian(0), point))

    def test_identity_table(self) -> None:
        """The receiver's table multiplies [b]P + Z: [1] of it is that point."""
        table = RECEIVER.identity_table()
        self.assertIs(table, RECEIVER.identity_table())
        self.assertEqual(table.multiply(1), Z.identity_point(B))


class NativeLoopTests(SynchronousTestCase):
    """The C Miller loop (sakke_miller.c) against the gmpy2 one."""

    def setUp(self) -> None:
        self.receiver = RECEIVER

    def test_built(self) -> None:
        """The package build compiled the C loop, and the receiver uses it."""
        self.assertIsNotNone(sakke_pairing._native, "cryptify.crypto._pairing was not built")
        self.assertIsNotNone(self.receiver._lines._native)

    def test_adx_detected(self) -> None:
        """The mulx/adcx/adox code runs exactly where the processor says it
        has BMI2 and ADX (Linux's view of the flags)."""
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            flags = next((line.split() for line in cpuinfo if line.startswith("flags")), [])
        expected = int("bmi2" in flags and "adx" in flags)
        self.assertEqual(sakke_pairing._native_field().adx, expected)

    @given(st.integers(min_value=1, max_value=int(curve.Q) - 1))
    @settings(max_examples=25, deadline=None)
    def test_same_pairing(self, r: int) -> None:
        """At any point of the group the C loop's value is the gmpy2 loop's
        (up to the common factor R, which the final ratio removes)."""
        lines = self.receiver._lines
        assert lines._native is not None
        point = sakke.multiply_base(r)
        self.assertEqual(
            sakke_pairing._final(*lines._native.accumulate(point)),
            sakke_pairing._final(*lines.accumulate(point)),
        )
        # GMP's multiplication and the mulx/adcx/adox code (where this
        # processor has it) give the same limbs.
        self.assertEqual(
            lines._native.accumulate(point), lines._native.accumulate(point, adx=False)
        )


class NativeCheckTests(SynchronousTestCase):
    """The C integrity check (sakke_check) against generic point arithmetic."""

    def setUp(self) -> None:
        self.receiver = RECEIVER
        self.base = Z.identity_point(B)

    def test_built(self) -> None:
        """The receiver checks in C, with one table kept for its key."""
        table = self.receiver.check_table()
        self.assertIsNotNone(table)
        self.assertIs(table, self.receiver.check_table())

    @given(st.integers(min_value=1, max_value=int(curve.Q) - 1))
    @settings(max_examples=40, deadline=None)
    def test_same_as_generic(self, r: int) -> None:
        """[r]B passes for that r only: not for r + 1, nor for -[r]B or
        [r]B plus the point of order 2 (odd and even r take different
        recodings)."""
        point = curve.multiply(r, self.base)
        assert point is not None
        table = self.receiver.check_table()
        assert table is not None
        self.assertTrue(table.check(r, point))
        self.assertTrue(table.check(r, point, adx=False))
        self.assertFalse(table.check((r + 1) % int(curve.Q), point))
        self.assertFalse(table.check((r + 1) % int(curve.Q), point, adx=False))
        negated = curve.negate(point)
        assert negated is not None
        self.assertFalse(table.check(r, negated))
        shifted = curve.add(point, (mpz(0), mpz(0)))
        assert shifted is not None
        self.assertFalse(table.check(r, shifted))

    def test_edges(self) -> None:
        """The smallest and largest r, and r = 0 (whose [r]B is infinity, so
        no affine R matches it)."""
        table = self.receiver.check_table()
        assert table is not None
        q = int(curve.Q)
        for r in (1, 2, 3, q - 2, q - 1):
            point = curve.multiply(r, self.base)
            assert point is not None
            self.assertTrue(table.check(r, point), r)
        self.assertFalse(table.check(0, self.base))
        self.assertFalse(table.check(q - 1, self.base))


class FallbackTests(SynchronousTestCase):
    """Without the C extension, decapsulation runs on gmpy2 and gives the
    same answers."""

    def test_rfc_vector_without_native(self) -> None:
        """The RFC vector decapsulates and a tampered one fails."""
        self.patch(sakke_pairing, "_native", None)
        receiver = sakke.SakkeReceiver(Z, B, RSK)
        self.assertIsNone(receiver._lines._native)
        self.assertIsNone(receiver.check_table())
        self.assertEqual(receiver.decapsulate(ENCAPSULATED), SSV)
        bad = bytearray(ENCAPSULATED)
        bad[-1] ^= 1
        self.assertRaises(DecapsulationFailed, receiver.decapsulate, bytes(bad))
