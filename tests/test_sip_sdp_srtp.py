"""
Tests for SDES SRTP in L{cryptify.protocols.sip.sdp}: C{RTP/SAVP} offers
and answers with C{a=crypto}, the C{srtp} modes, and the keys both sides agreed.
"""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config import ConfigError, parse_cig_config
from cryptify.plugins.cig import describe
from cryptify.protocols.sip.message import Headers, Request, Response
from cryptify.protocols.sip.sdes import SUITES, parse_crypto
from cryptify.protocols.sip.sdp import (
    MAX_CRYPTO_LINES,
    SAVP,
    SdpError,
    SrtpKeys,
    make_answer,
    make_offer,
    offer_crypto,
    our_line,
    parse_sdp,
    render_sdp,
    srtp_keys,
)

KEY_80 = bytes(range(30))
KEY_32 = bytes(range(30, 60))


def inline(key: bytes) -> str:
    return "inline:" + base64.b64encode(key).decode()


def savp_offer(*crypto: str, proto: str = SAVP) -> bytes:
    """A baresip-like RTP/SAVP offer with the given a=crypto values."""
    lines = [
        "v=0",
        "o=- 7 7 IN IP4 192.0.2.4",
        "s=-",
        "c=IN IP4 192.0.2.4",
        "t=0 0",
        f"m=audio 49170 {proto} 0 8 101",
        "a=rtpmap:101 telephone-event/8000",
        *(f"a=crypto:{c}" for c in crypto),
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


BARESIP = savp_offer(
    f"1 AES_CM_128_HMAC_SHA1_32 {inline(KEY_32)}",
    f"2 AES_CM_128_HMAC_SHA1_80 {inline(KEY_80)}",
)
PLAIN = savp_offer(proto="RTP/AVP")


def fixed_key(n: int) -> bytes:
    return b"\x42" * n


def answer(offer: bytes, srtp: str, **kw: object) -> bytes | None:
    made = make_answer(parse_sdp(offer), "192.0.2.1", 20000, "9", srtp=srtp, **kw)  # type: ignore[arg-type]
    return None if made is None else render_sdp(made)


class AnswerTests(SynchronousTestCase):
    """How each C{srtp} mode answers plain and SRTP offers."""

    def test_savp_offer_answered_with_first_usable_line(self) -> None:
        """An RTP/SAVP offer is answered RTP/SAVP with the offerer's first line we
        can honour (its tag and suite) and a fresh key of our own."""
        body = answer(BARESIP, "offer", new_key=fixed_key)
        assert body is not None
        audio = parse_sdp(body).audio()
        assert audio is not None
        self.assertEqual(audio.proto, SAVP)
        (line,) = [parse_crypto(c) for c in audio.crypto]
        self.assertEqual(
            (line.tag, line.suite, line.key), (1, "AES_CM_128_HMAC_SHA1_32", fixed_key(30))
        )

    def test_fresh_key_each_answer(self) -> None:
        """Two answers never carry the same key (the default comes from the OS)."""
        keys = set()
        for _ in range(2):
            body = answer(BARESIP, "require")
            assert body is not None
            audio = parse_sdp(body).audio()
            assert audio is not None
            keys.add(parse_crypto(audio.crypto[0]).key)
        self.assertEqual(len(keys), 2)

    def test_unusable_lines_skipped(self) -> None:
        """Lines with an unknown suite, an MKI, a short key or garbage are passed over."""
        offer = savp_offer(
            f"1 F8_128_HMAC_SHA1_80 {inline(KEY_80)}",
            f"2 AES_CM_128_HMAC_SHA1_80 {inline(KEY_80)}|2^20|1:4",
            f"3 AES_CM_128_HMAC_SHA1_80 {inline(KEY_80[:20])}",
            "4 AES_CM_128_HMAC_SHA1_80 inline:!!!",
            f"5 AES_CM_128_HMAC_SHA1_80 {inline(KEY_80)}",
        )
        body = answer(offer, "offer")
        assert body is not None
        audio = parse_sdp(body).audio()
        assert audio is not None
        self.assertEqual(parse_crypto(audio.crypto[0]).tag, 5)

    def test_savp_without_usable_line_refused(self) -> None:
        """An RTP/SAVP offer with no line we can honour gets no answer (488)."""
        self.assertIsNone(answer(savp_offer(), "offer"))
        self.assertIsNone(answer(savp_offer(f"1 NULL {inline(KEY_80)}"), "require"))

    def test_modes(self) -> None:
        """off answers only RTP/AVP, require only RTP/SAVP, offer both."""
        self.assertIsNone(answer(BARESIP, "off"))
        self.assertIsNotNone(answer(PLAIN, "off"))
        self.assertIsNone(answer(PLAIN, "require"))
        self.assertIsNotNone(answer(BARESIP, "require"))
        plain = answer(PLAIN, "offer")
        assert plain is not None
        self.assertNotIn(b"a=crypto", plain)
        self.assertIn(b"RTP/AVP", plain)

    def test_keep_reuses_our_key(self) -> None:
        """A re-INVITE's answer keeps our key when the chosen suite is the same,
        under the new offer's tag; another suite gets a fresh key."""
        first = answer(BARESIP, "offer")
        assert first is not None
        ours = our_line(parse_sdp(first))
        assert ours is not None
        again = savp_offer(f"7 AES_CM_128_HMAC_SHA1_32 {inline(KEY_80)}")
        body = answer(again, "offer", keep=ours)
        assert body is not None
        kept = our_line(parse_sdp(body))
        assert kept is not None
        self.assertEqual((kept.tag, kept.key), (7, ours.key))
        other = answer(
            savp_offer(f"7 AES_CM_128_HMAC_SHA1_80 {inline(KEY_80)}"), "offer", keep=ours
        )
        assert other is not None
        fresh = our_line(parse_sdp(other))
        assert fresh is not None
        self.assertNotEqual(fresh.key, ours.key)

    def test_too_many_crypto_lines(self) -> None:
        """More than MAX_CRYPTO_LINES a=crypto lines in a stream is an SdpError."""
        lines = [
            f"{i} AES_CM_128_HMAC_SHA1_80 {inline(KEY_80)}" for i in range(MAX_CRYPTO_LINES + 1)
        ]
        self.assertRaises(SdpError, parse_sdp, savp_offer(*lines))

    def test_keys_not_in_repr(self) -> None:
        """A parsed description's repr shows no key."""
        text = repr(parse_sdp(BARESIP))
        self.assertNotIn(inline(KEY_80)[7:], text)
        self.assertNotIn(inline(KEY_32)[7:], text)


class OfferTests(SynchronousTestCase):
    """Our RTP/SAVP offers and the keys an answer to them agrees."""

    def test_offer_carries_each_suite(self) -> None:
        """Our offer is RTP/SAVP with one line per suite, tags 1.., each its own key."""
        offer = parse_sdp(render_sdp(make_offer("192.0.2.1", 20000, "1", crypto=offer_crypto())))
        audio = offer.audio()
        assert audio is not None
        self.assertEqual(audio.proto, SAVP)
        lines = [parse_crypto(c) for c in audio.crypto]
        self.assertEqual([(c.tag, c.suite) for c in lines], list(enumerate(SUITES, 1)))
        self.assertEqual(len({c.key for c in lines}), len(lines))
        self.assertTrue(all(c.usable for c in lines))

    def test_keys_paired_by_tag_both_ways(self) -> None:
        """Offerer and answerer each find their own key to send with and the
        other's to read with, from the tag the answer chose."""
        local = make_offer("192.0.2.1", 20000, "1", crypto=offer_crypto())
        remote = make_answer(parse_sdp(render_sdp(local)), "192.0.2.9", 30000, "2", srtp="require")
        assert remote is not None
        local, remote = parse_sdp(render_sdp(local)), parse_sdp(render_sdp(remote))
        ours = srtp_keys(local, remote)
        theirs = srtp_keys(remote, local)
        assert ours is not None and theirs is not None
        self.assertEqual(ours.suite, SUITES[0])
        self.assertEqual((ours.tx, ours.rx), (theirs.rx, theirs.tx))
        self.assertNotEqual(ours.tx, ours.rx)
        self.assertNotIn(repr(ours.tx), repr(ours))

    def test_plain_has_no_keys(self) -> None:
        """Two RTP/AVP descriptions agree no keys."""
        local = make_offer("192.0.2.1", 20000, "1")
        self.assertIsNone(srtp_keys(local, parse_sdp(PLAIN)))

    def test_mismatch_is_an_error(self) -> None:
        """An RTP/AVP answer to an RTP/SAVP offer, or an answer naming a tag we did
        not offer, is an SdpError (the call cannot be bridged)."""
        local = make_offer("192.0.2.1", 20000, "1", crypto=offer_crypto())
        self.assertRaises(SdpError, srtp_keys, local, parse_sdp(PLAIN))
        wrong = parse_sdp(savp_offer(f"9 AES_CM_128_HMAC_SHA1_80 {inline(KEY_80)}"))
        self.assertRaises(SdpError, srtp_keys, local, wrong)
        swapped = parse_sdp(savp_offer(f"1 AES_CM_128_HMAC_SHA1_32 {inline(KEY_80)}"))
        self.assertRaises(SdpError, srtp_keys, local, swapped)
        self.assertIsInstance(
            srtp_keys(local, parse_sdp(savp_offer(f"1 AES_CM_128_HMAC_SHA1_80 {inline(KEY_80)}"))),
            SrtpKeys,
        )


class HostileTests(SynchronousTestCase):
    """Hostile a=crypto lines end in an answer, a refusal or an SdpError, never a crash."""

    @given(st.lists(st.text(max_size=120), max_size=20))
    def test_any_crypto_values(self, values: list[str]) -> None:
        """Whatever the a=crypto values, parsing and answering raise only SdpError."""
        cleaned = [v.replace("\r", " ").replace("\n", " ") for v in values]
        try:
            offer = parse_sdp(savp_offer(*cleaned))
        except SdpError:
            return
        for mode in ("off", "offer", "require"):
            made = make_answer(offer, "192.0.2.1", 20000, "1", srtp=mode)
            if made is not None:
                try:
                    srtp_keys(made, offer)
                except SdpError:
                    pass


class ConfigTests(SynchronousTestCase):
    """The sip interface's C{srtp} directive."""

    def test_modes_and_default(self) -> None:
        """C{srtp off|offer|require;} in the sip interface; off by default."""
        self.assertEqual(parse_cig_config("").sip.srtp, "off")
        for mode in ("off", "offer", "require"):
            cfg = parse_cig_config("interfaces { sip { srtp " + mode + "; } }")
            self.assertEqual(cfg.sip.srtp, mode)

    def test_errors(self) -> None:
        """An unknown mode, a repeat, or srtp in the tel interface is refused with its place."""
        cases = {
            "interfaces { sip { srtp maybe; } }": "1:25: bad srtp mode: 'maybe' (expected off,"
            " offer or require)",
            "interfaces { sip { srtp offer; srtp off; } }": "duplicate 'srtp'",
            "interfaces { tel { srtp offer; } }": "'srtp' belongs in the sip interface",
        }
        for text, message in cases.items():
            with self.assertRaises(ConfigError) as raised:
                parse_cig_config(text)
            self.assertIn(message, str(raised.exception), text)

    def test_init_line(self) -> None:
        """The CIG's INIT lines say the mode (the SIP line), whatever it is."""
        for mode in ("off", "require"):
            cfg = parse_cig_config("interfaces { sip { srtp " + mode + "; } }")
            line = next(x for x in describe(cfg) if x.startswith("SIP "))
            self.assertTrue(line.endswith(f", SRTP towards the PBX {mode}"), line)


class MessageReprTests(SynchronousTestCase):
    """SIP messages leave their bodies (which may hold SDES keys) out of their repr."""

    def test_body_not_in_repr(self) -> None:
        """Neither a request's nor a response's repr shows the SDP body."""
        request = Request("INVITE", "sip:a@192.0.2.1", Headers(), BARESIP)
        response = Response(200, "OK", Headers(), BARESIP)
        for text in (repr(request), repr(response)):
            self.assertNotIn(inline(KEY_80)[7:], text)
            self.assertNotIn("crypto", text)
