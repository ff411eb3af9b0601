"""Codec negotiation (docs/umsg.md 8.2): the UMSG fields, the CRS passing them
on, the reference client's offer and choice, and its Opus media."""

from __future__ import annotations

import itertools
import time

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.client import audio, calls, media
from cryptify.client.calls import CallAgent
from cryptify.client.session import Answered, Incoming
from cryptify.crs.calls.core import SessionTable
from cryptify.crs.trace import TraceHub
from cryptify.protocols import opus, relay_packet
from cryptify.protocols.umsg import FROM_CLIENT, UmsgError, cbor_encode, decode, encode, message
from tests.fakes import Att, FakeParties, FakeRelay, attached, material

A, B = "tel:+461111", "tel:+462222"
KEY = bytes(range(30))


class UmsgFieldTests(SynchronousTestCase):
    """``codecs`` and ``codec`` in the codec's schema."""

    def test_round_trip(self) -> None:
        msg = message("invite", id=1, to=B, mikey=b"m", codecs=["opus", "PCMU"])
        self.assertEqual(decode(encode(msg, FROM_CLIENT), FROM_CLIENT)["codecs"], ["opus", "PCMU"])
        talk = message("talk", session="s1", codec="opus")
        self.assertEqual(decode(encode(talk, FROM_CLIENT), FROM_CLIENT)["codec"], "opus")

    def test_limits(self) -> None:
        """An empty list, more than 8, a non-text or a bad name are malformed."""
        for codecs in ([], ["x"] * 9, [1], ["op us"], ["a" * 17]):
            raw = cbor_encode({"type": "invite", "id": 1, "to": B, "mikey": b"m", "codecs": codecs})
            with self.assertRaises(UmsgError):
                decode(raw, FROM_CLIENT)


class CrsPassOnTests(SynchronousTestCase):
    """The CRS passes ``codecs`` to the callee and ``codec`` to the caller, unread."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.parties = FakeParties()
        ids = (f"s{i}" for i in itertools.count(1))
        self.table = SessionTable(
            self.parties, FakeRelay(), self.clock, TraceHub(self.clock.seconds), lambda: next(ids)
        )
        for uri in ("tel:+1", "tel:+2"):
            self.parties.online[uri] = Att(uri)

    def test_passed_on(self) -> None:
        self.table.invite(Att("tel:+1"), 7, "tel:+2", b"m", codecs=["opus", "PCMU"])
        sent = self.parties.take()
        self.assertEqual(sent[1][2]["codecs"], ["opus", "PCMU"])
        self.table.talk("tel:+2", "s1", "opus")
        self.assertEqual(self.parties.take()[0][2]["codec"], "opus")
        self.table.hangup("tel:+1", "s1", "normal")

    def test_absent_stays_absent(self) -> None:
        self.table.invite(Att("tel:+1"), 7, "tel:+2", b"m")
        self.assertNotIn("codecs", self.parties.take()[1][2])
        self.table.talk("tel:+2", "s1")
        self.assertNotIn("codec", self.parties.take()[0][2])
        self.table.hangup("tel:+1", "s1", "normal")


class AgentTests(SynchronousTestCase):
    """The reference client's offer and choice."""

    def setUp(self) -> None:
        self.sa, self.out_a = attached(A)
        self.sb, self.out_b = attached(B)

    def call(
        self, ours: tuple[str, ...], theirs: tuple[str, ...]
    ) -> tuple[calls.Call, calls.Call, dict[str, object]]:
        a = CallAgent(material(A), time.time, self.sa, codecs=ours)
        b = CallAgent(material(B), time.time, self.sb, codecs=theirs)
        call = a.place(B)
        sent = self.out_a[-1]
        a.handle(
            Answered(
                sent["id"],
                message(
                    "session", id=sent["id"], session="s1", relay_host="127.0.0.1",
                    relay_port=146, relay_tag=b"A" * 8,
                ),
            )
        )  # fmt: skip
        incoming = message(
            "invite", session="s1", to=B, mikey=sent["mikey"], relay_host="127.0.0.1",
            relay_port=146, relay_tag=b"B" * 8, codecs=sent.get("codecs"), **{"from": A},
        )  # fmt: skip
        (ringing,) = b.handle(Incoming(incoming))
        b.answer(ringing.call)
        talk = self.out_b[-1]
        a.handle(Incoming(talk))
        return call, ringing.call, dict(sent.fields)

    def test_opus_both(self) -> None:
        """Both want Opus: offered with PCMU as fallback, chosen, named in talk."""
        mine, theirs, invite = self.call(("opus",), ("opus", "PCMU"))
        self.assertEqual(invite["codecs"], ["opus", "PCMU"])
        self.assertEqual(self.out_b[-1]["codec"], "opus")
        self.assertEqual((mine.codec, theirs.codec), ("opus", "opus"))

    def test_callee_without_opus(self) -> None:
        """A callee with G.711 only answers PCMU to an Opus offer."""
        mine, theirs, _ = self.call(("opus", "PCMU"), ())
        self.assertEqual(self.out_b[-1]["codec"], "PCMU")
        self.assertEqual((mine.codec, theirs.codec), ("PCMU", "PCMU"))

    def test_no_offer_is_g711(self) -> None:
        """A caller that offers nothing (every older client) gets PCMU and a bare talk."""
        mine, theirs, invite = self.call((), ("opus",))
        self.assertNotIn("codecs", invite)
        self.assertNotIn("codec", self.out_b[-1].fields)
        self.assertEqual((mine.codec, theirs.codec), ("PCMU", "PCMU"))

    def test_codec_not_offered_is_pcmu(self) -> None:
        """A talk naming a codec we did not offer is taken as PCMU."""
        a = CallAgent(material(A), time.time, self.sa)
        call = a.place(B)
        sent = self.out_a[-1]
        a.handle(
            Answered(
                sent["id"],
                message(
                    "session", id=sent["id"], session="s1", relay_host="127.0.0.1",
                    relay_port=146, relay_tag=b"A" * 8,
                ),
            )
        )  # fmt: skip
        a.handle(Incoming(message("talk", session="s1", codec="opus")))
        self.assertEqual(call.codec, "PCMU")


def relayed(datagram: bytes) -> bytes:
    parsed = relay_packet.parse(datagram)
    assert isinstance(parsed, tuple)
    return parsed[1]


class OpusMediaTests(SynchronousTestCase):
    """Two reference clients' media with Opus: the caller switches at talk."""

    def test_switch_at_talk_both_ways(self) -> None:
        """PCMU until talk, then Opus from a new SSRC: the callee records one
        timeline (a 1 kHz tone), the caller hears the callee's Opus 600 Hz."""
        caller = media.MediaStream(KEY, b"A" * 8, media.pick_ssrc(True))
        callee = media.MediaStream(KEY, b"B" * 8, media.pick_ssrc(False), codec=media.OPUS)
        caller.source = media.FrameSource(audio.tone(1000, 1.0))
        callee.source = media.FrameSource(audio.tone(600, 1.0))
        first_ssrc = caller.ssrc
        sizes = []
        for i in range(50):
            if i == 10:
                caller.use_codec(media.OPUS)
            a = caller.next_datagram()
            sizes.append(len(a))
            self.assertTrue(callee.datagram_received(relayed(a)))
            self.assertTrue(caller.datagram_received(relayed(callee.next_datagram())))
        self.assertNotEqual(caller.ssrc, first_ssrc)
        self.assertEqual(caller.ssrc & 0x8000_0000, 0)  # still the caller's half
        self.assertLess(max(sizes[10:]), min(sizes[:10]))  # Opus frames are smaller
        heard = callee.recorder.samples()
        self.assertEqual(len(heard), 50 * 160)
        self.assertEqual(audio.peak_frequency(heard[2400:])[0], 1000)
        self.assertEqual(audio.peak_frequency(heard[:1600])[0], 1000)
        back = caller.recorder.samples()
        self.assertEqual(audio.peak_frequency(back[1600:])[0], 600)
        self.assertEqual(caller.rejected + callee.rejected, 0)

    def test_opus_dtmf_counts_48k(self) -> None:
        """Telephone-events of an Opus stream count the 48 kHz clock."""
        stream = media.MediaStream(KEY, b"A" * 8, media.pick_ssrc(True), codec=media.OPUS)
        stream.send_dtmf("5")
        rx = media.srtp_sessions(KEY)[1]
        packet = media.rtp_decode(rx.unprotect(relayed(stream.next_datagrams()[0])))
        assert packet is not None
        event = media.parse_event(packet.payload)
        assert isinstance(event, media.TelephoneEvent)
        self.assertEqual(event.duration, opus.RTP_FRAME_TICKS)

    def test_bad_codec_refused(self) -> None:
        stream = media.MediaStream(KEY, b"A" * 8, media.pick_ssrc(True))
        with self.assertRaises(ValueError):
            stream.use_codec("G729")
