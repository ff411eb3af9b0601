"""
Tests for L{cryptify.protocols.sip.sdes}: RFC 4568 C{a=crypto} lines.
"""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.protocols.sip.sdes import (
    KEY_BYTES,
    MAX_CRYPTO_LENGTH,
    CryptoAttribute,
    KeyParams,
    SdesError,
    choose_crypto,
    our_crypto,
    parse_crypto,
)

#: RFC 4568 section 4's example.
RFC4568 = "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32"


class ParseTests(SynchronousTestCase):
    """Reading a=crypto."""

    def test_rfc_example(self) -> None:
        """RFC 4568's example: tag 1, the 80-bit suite, a 30-byte key, lifetime and MKI."""
        found = parse_crypto(RFC4568)
        self.assertEqual((found.tag, found.suite), (1, "AES_CM_128_HMAC_SHA1_80"))
        self.assertEqual(len(found.key), KEY_BYTES)
        self.assertEqual((found.keys[0].lifetime, found.keys[0].mki), ("2^20", "1:32"))
        self.assertEqual(found.render(), RFC4568)
        self.assertFalse(found.usable)  # an MKI we would have to carry

    def test_key_not_in_repr(self) -> None:
        """Neither the key bytes nor their base64 show in a repr."""
        found = parse_crypto(RFC4568)
        self.assertNotIn("PS1uQCVee", repr(found))
        self.assertNotIn(repr(found.key)[2:12], repr(found))

    def test_refused(self) -> None:
        """Broken lines are refused with a reason that does not quote the key."""
        for value in (
            "",
            "1 AES_CM_128_HMAC_SHA1_80",
            "x AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
            "1 AES_CM_128_HMAC_SHA1_80 uri:http://x",
            "1 AES_CM_128_HMAC_SHA1_80 inline:not*base64",
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|x|y|z",
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|bad",
            "1 AES_CM_128_HMAC_SHA1_80 " + "x" * MAX_CRYPTO_LENGTH,
        ):
            with self.assertRaises(SdesError, msg=value) as caught:
                parse_crypto(value)
            self.assertNotIn("PS1uQCVee", caught.exception.reason)

    @given(st.text(max_size=200))
    def test_any_text(self, value: str) -> None:
        """Arbitrary text is a CryptoAttribute or an SdesError, never another exception."""
        try:
            parse_crypto(value)
        except SdesError as error:
            self.assertTrue(error.reason)

    @given(
        st.integers(0, 999_999_999),
        st.sampled_from(["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32", "F8_128_X"]),
        st.binary(min_size=1, max_size=46),
        st.none() | st.sampled_from(["2^31", "1048576"]),
    )
    def test_round_trip(self, tag: int, suite: str, key: bytes, lifetime: str | None) -> None:
        """What we render reads back equal."""
        line = CryptoAttribute(tag, suite, (KeyParams(key, lifetime),))
        self.assertEqual(parse_crypto(line.render()), line)


class ChooseTests(SynchronousTestCase):
    """Which offered line is taken, and ours."""

    def test_first_usable(self) -> None:
        """Unknown suites, MKIs and session parameters are skipped; the offerer's order counts."""
        key = base64.b64encode(bytes(range(KEY_BYTES))).decode()
        offered = [
            parse_crypto(f"1 AES_256_CM_HMAC_SHA1_80 inline:{key}"),
            parse_crypto(f"2 AES_CM_128_HMAC_SHA1_80 inline:{key}|1:4"),
            parse_crypto(f"3 AES_CM_128_HMAC_SHA1_80 inline:{key} UNENCRYPTED_SRTP"),
            parse_crypto(f"4 AES_CM_128_HMAC_SHA1_32 inline:{key}"),
            parse_crypto(f"5 AES_CM_128_HMAC_SHA1_80 inline:{key}"),
        ]
        chosen = choose_crypto(offered)
        assert chosen is not None
        self.assertEqual(chosen.tag, 4)
        self.assertIsNone(choose_crypto(offered[:3]))

    def test_ours(self) -> None:
        """Our answer line keeps the tag and suite, with a fresh 30-byte key each time."""
        one = our_crypto(4, "AES_CM_128_HMAC_SHA1_32")
        two = our_crypto(4, "AES_CM_128_HMAC_SHA1_32")
        self.assertEqual((one.tag, one.suite, len(one.key)), (4, "AES_CM_128_HMAC_SHA1_32", 30))
        self.assertNotEqual(one.key, two.key)
        self.assertTrue(one.usable)
        self.assertRaises(SdesError, our_crypto, 1, "F8_128_HMAC_SHA1_80")
