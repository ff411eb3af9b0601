"""
Tests for L{cryptify.protocols.sip.sdp}: SDP and offer/answer.
"""

from __future__ import annotations

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.protocols.sip.sdp import (
    Media,
    SdpError,
    _changed,
    chosen_codec,
    make_answer,
    make_offer,
    parse_sdp,
    render_sdp,
)

SIPP_OFFER = (
    b"v=0\r\n"
    b"o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)
RICH_OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.4\r\ns=-\r\nc=IN IP4 192.0.2.4\r\nt=0 0\r\n"
    b"m=video 3227 RTP/AVP 31\r\n"
    b"m=audio 49217 RTP/AVP 9 8 0 96\r\n"
    b"c=IN IP4 192.0.2.5\r\n"
    b"a=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15\r\na=sendonly\r\n"
)


class OfferAnswerTests(SynchronousTestCase):
    """
    RFC 3264 offer/answer with PCMU, PCMA and telephone-event.
    """

    def test_sipp_offer(self) -> None:
        """
        sipp's default PCMU offer is answered with PCMU on our port.
        """
        answer = make_answer(parse_sdp(SIPP_OFFER), "127.0.0.1", 20000, "42")
        assert answer is not None
        audio = answer.audio()
        assert audio is not None
        self.assertEqual((audio.port, audio.formats), (20000, ("0",)))
        self.assertEqual(chosen_codec(parse_sdp(render_sdp(answer))), "PCMU")

    def test_order_events_other_streams(self) -> None:
        """
        The answer keeps the offerer's codec order (G.722 dropped), keeps
        telephone-event with its payload type, refuses the video stream
        with port 0 and mirrors sendonly to recvonly.
        """
        offer = parse_sdp(RICH_OFFER)
        self.assertEqual(offer.media_address(offer.media[1]), "192.0.2.5")
        answer = make_answer(offer, "198.51.100.1", 30000, "7")
        assert answer is not None
        self.assertEqual(len(answer.media), 2)
        self.assertEqual(answer.media[0].port, 0)
        audio = answer.media[1]
        self.assertEqual(audio.formats, ("8", "0", "96"))
        self.assertEqual(audio.direction, "recvonly")
        self.assertIn(("96", "0-15"), audio.fmtp)
        text = render_sdp(answer).decode()
        self.assertIn("a=rtpmap:96 telephone-event/8000", text)
        self.assertIn("c=IN IP4 198.51.100.1", text)

    def test_no_common_codec(self) -> None:
        """
        An offer with only G.729 gets no answer (488 for the caller).
        """
        offer = parse_sdp(
            SIPP_OFFER.replace(b"RTP/AVP 0", b"RTP/AVP 18").replace(b"0 PCMU", b"18 G729")
        )
        self.assertIsNone(make_answer(offer, "127.0.0.1", 20000, "1"))

    def test_offer_round_trip(self) -> None:
        """
        Our offer parses back with PCMU, PCMA and telephone-event, and
        answering it chooses PCMU.
        """
        offer = parse_sdp(render_sdp(make_offer("127.0.0.1", 40000, "9")))
        audio = offer.audio()
        assert audio is not None
        self.assertEqual(
            [audio.encoding(pt) for pt in audio.formats], ["PCMU", "PCMA", "TELEPHONE-EVENT"]
        )
        answer = make_answer(offer, "127.0.0.2", 40002, "10")
        assert answer is not None
        self.assertEqual(chosen_codec(answer), "PCMU")

    def test_invalid(self) -> None:
        """
        Bodies that are not SDP raise L{SdpError}.
        """
        for body in (b"", b"hello", b"v=0\r\nm=audio x RTP/AVP 0\r\n", b"v=0\r\ns=-\r\n", b"\xff"):
            self.assertRaises(SdpError, parse_sdp, body)

    @settings(max_examples=300, deadline=None)
    @given(
        cut=st.integers(0, len(RICH_OFFER)),
        insert=st.binary(max_size=10),
        drop=st.integers(0, 10),
    )
    def test_fuzz(self, cut: int, insert: bytes, drop: int) -> None:
        """
        Mangled offers give a description (which can be answered) or an
        L{SdpError}, nothing else.
        """
        body = RICH_OFFER[:cut] + insert + RICH_OFFER[cut + drop :]
        try:
            offer = parse_sdp(body)
        except SdpError:
            return
        answer = make_answer(offer, "127.0.0.1", 1024, "1")
        if answer is not None:
            render_sdp(answer)

    @settings(max_examples=100, deadline=None)
    @given(
        field=st.sampled_from(["rtpmap", "fmtp", "direction", "address", "ptime", "crypto"]),
        text=st.text(max_size=5),
    )
    def test_changed_as_evolve(self, field: str, text: str) -> None:
        """A media section with one field changed is what C{attrs.evolve} makes."""
        media = Media("audio", 4000, "RTP/AVP", ("0", "8"), rtpmap=(("0", "PCMU/8000"),))
        value: object = {
            "rtpmap": (("8", text),),
            "fmtp": (("8", text),),
            "direction": text or "inactive",
            "address": text or "192.0.2.1",
            "ptime": len(text) + 1,
            "crypto": (text,),
        }[field]
        self.assertEqual(_changed(media, **{field: value}), attrs.evolve(media, **{field: value}))
