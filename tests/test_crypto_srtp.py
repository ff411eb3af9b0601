"""Tests for L{cryptify.crypto.prf}: MIKEY PRF, SRTP keying, pylibsrtp wiring."""

from __future__ import annotations

import calendar

from hypothesis import given, settings
from hypothesis import strategies as st
from pylibsrtp import Error as SrtpError
from pylibsrtp import Policy, Session
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crypto import mikey_payloads as mp
from cryptify.crypto import prf
from cryptify.crypto.errors import MikeyError
from tests.fixtures.crypto import DOMAIN, fixture, h, n

K = fixture("mikey_prf.json")
S = fixture("srtp.json")
NOW = calendar.timegm((2025, 10, 15, 12, 0, 0))


def _session(key: bytes, outbound: bool) -> Session:
    kind = Policy.SSRC_ANY_OUTBOUND if outbound else Policy.SSRC_ANY_INBOUND
    return Session(
        Policy(key=key, ssrc_type=kind, srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
    )


class PrfVectorTests(SynchronousTestCase):
    """The published PRF-HMAC-SHA-256 known answers reproduce."""

    def test_known_answers(self) -> None:
        """Key and salt for each published (cs_id, csb_id, constant) case."""
        tgk, rand = h(K["tgk"]), h(K["rand"])
        for case in K["cases"]:
            csb = n(case["csb_id"])
            key = prf.derive_from_tgk(tgk, n(case["key_constant"]), case["cs_id"], csb, rand, 16)
            salt = prf.derive_from_tgk(tgk, prf.CONST_SALT, case["cs_id"], csb, rand, 12)
            self.assertEqual(key, h(case["key"]))
            self.assertEqual(salt, h(case["salt"]))

    def test_tek_is_srtp_master_key(self) -> None:
        """srtp_keying uses the TEK and salt constants of RFC 3830."""
        case = K["cases"][2]
        keying = prf.srtp_keying(h(K["tgk"]), n(case["csb_id"]), h(K["rand"]), 4, salt_length=12)
        self.assertEqual(keying.master_key, h(case["key"]))
        self.assertEqual(keying.master_salt, h(case["salt"]))

    def test_sha1_regression(self) -> None:
        """PRF func 0 (HMAC-SHA-1) keeps giving the recorded TEK."""
        case = K["sha1_regression"]
        tek = prf.derive_from_tgk(
            h(K["tgk"]), prf.CONST_TEK, case["cs_id"], n(case["csb_id"]), h(K["rand"]), 16, 0
        )
        self.assertEqual(tek, h(case["tek"]))

    def test_long_output_and_key(self) -> None:
        """Outputs longer than a hash and keys longer than 256 bits follow RFC 3830 4.1.2."""
        out = prf.mikey_prf(b"k" * 40, b"label", 70, mp.PRF_HMAC_SHA1)
        self.assertEqual(len(out), 70)
        first = prf.mikey_prf(b"k" * 32, b"label", 70, mp.PRF_HMAC_SHA1)
        second = prf.mikey_prf(b"k" * 8, b"label", 70, mp.PRF_HMAC_SHA1)
        self.assertEqual(out, bytes(a ^ b for a, b in zip(first, second)))

    def test_unknown_prf(self) -> None:
        """An unknown PRF func is a MikeyError."""
        self.assertRaises(MikeyError, prf.mikey_prf, b"k", b"l", 16, 5)


class LibsrtpTests(SynchronousTestCase):
    """Keys reach libsrtp as master key || master salt."""

    def test_rfc3711_vector(self) -> None:
        """The RFC 3711 B.3 master key and salt give libsrtp's reference packets."""
        key = h(S["key"])
        self.assertEqual(_session(key, True).protect(h(S["rtp"])), h(S["srtp"]))
        self.assertEqual(_session(key, True).protect_rtcp(h(S["rtcp"])), h(S["srtcp"]))
        self.assertEqual(_session(key, False).unprotect(h(S["srtp"])), h(S["rtp"]))

    def test_i_message_round_trip(self) -> None:
        """Initiator and responder key SRTP from one I_MESSAGE and talk."""
        built = DOMAIN.build(prf_func=mp.PRF_HMAC_SHA1)
        got = DOMAIN.receive(built.data)
        self.assertEqual(got.srtp(), built.srtp())
        sender = _session(built.srtp().policy_key, True)
        receiver = _session(got.srtp().policy_key, False)
        rtp = bytes.fromhex("800f1234decafbadcafebabe") + b"voice" * 32
        self.assertEqual(receiver.unprotect(sender.protect(rtp)), rtp)
        rtp2 = bytes.fromhex("800f1235decafbadcafebabe") + b"voice" * 32
        protected = sender.protect(rtp2)
        self.assertRaises(SrtpError, receiver.unprotect, protected[:-1] + b"\x00")
        other = _session(DOMAIN.receive(DOMAIN.build().data).srtp().policy_key, False)
        self.assertRaises(SrtpError, other.unprotect, protected)

    def test_prf_chosen_by_header(self) -> None:
        """The HDR's PRF func selects the PRF: SHA-1 and SHA-256 keys differ."""
        rand, csb = b"r" * 16, 7
        one = DOMAIN.build(prf_func=mp.PRF_HMAC_SHA1, rand=rand, csb_id=csb, ssv=b"s" * 16)
        two = DOMAIN.build(prf_func=mp.PRF_HMAC_SHA256, rand=rand, csb_id=csb, ssv=b"s" * 16)
        self.assertNotEqual(DOMAIN.receive(one.data).srtp(), DOMAIN.receive(two.data).srtp())
        self.assertEqual(
            DOMAIN.receive(two.data).srtp(),
            prf.srtp_keying(b"s" * 16, csb, rand, 1, mp.PRF_HMAC_SHA256),
        )

    @settings(max_examples=50, deadline=None)
    @given(st.binary(min_size=16, max_size=16), st.integers(0, 2**32 - 1), st.binary(max_size=64))
    def test_keying_lengths(self, tgk: bytes, csb: int, rand: bytes) -> None:
        """Master key is 16 octets, salt 14 (or 12), for any RAND and CSB ID."""
        keying = prf.srtp_keying(tgk, csb, rand)
        self.assertEqual((len(keying.master_key), len(keying.master_salt)), (16, 14))
        self.assertEqual(len(prf.srtp_keying(tgk, csb, rand, salt_length=12).master_salt), 12)
