"""Tests for our libopus binding (cryptify.protocols.opus)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.relay import g711
from cryptify.client.audio import peak_frequency, tone
from cryptify.protocols import opus

ULAW = opus.LawTables.build(g711.PCMU, g711.ulaw_to_linear, g711.linear_to_ulaw)
ALAW = opus.LawTables.build(g711.PCMA, g711.alaw_to_linear, g711.linear_to_alaw)


def _round_trip(rate: int, freq: float, seconds: float = 0.6) -> list[int]:
    encoder, decoder = opus.Encoder(rate), opus.Decoder(rate)
    samples = tone(freq, seconds, rate=rate)
    n = encoder.frame_samples
    out: list[int] = []
    for i in range(len(samples) // n):
        packet = encoder.encode(samples[i * n : (i + 1) * n])
        out.extend(decoder.decode(packet))
    return out


class OpusTests(SynchronousTestCase):
    """Encoder and decoder: tones survive, limits hold, errors are clear."""

    def test_available(self) -> None:
        """The binding is built (libopus-dev is a build dependency) and names libopus."""
        self.assertTrue(opus.available())
        self.assertIn("libopus", opus.version())

    def test_tone_8k(self) -> None:
        """A 1 kHz tone through narrowband Opus comes back as 1 kHz."""
        out = _round_trip(8000, 1000)
        freq, share = peak_frequency(out[800:])
        self.assertEqual(freq, 1000)
        self.assertGreater(share, 0.9)

    def test_tone_48k(self) -> None:
        """At 48 kHz too (frames of 960 samples)."""
        encoder = opus.Encoder(48000)
        self.assertEqual(encoder.frame_samples, 960)
        out = _round_trip(48000, 700, 0.3)
        freq, share = peak_frequency(out[4800:], rate=48000, low=300, high=1500, step=100)
        self.assertEqual(freq, 700)
        self.assertGreater(share, 0.9)

    def test_law_paths(self) -> None:
        """G.711 codes in, Opus, G.711 codes of the other law out: the tone stays."""
        encoder, decoder = opus.Encoder(), opus.Decoder()
        codes = g711.encode(g711.PCMU, list(tone(600, 0.6)))
        out = b""
        sizes = set()
        for i in range(len(codes) // 160):
            packet = encoder.encode_law(codes[i * 160 : (i + 1) * 160], ULAW)
            sizes.add(len(packet))
            out += decoder.decode_law(packet, ALAW)
        self.assertEqual(len(out), len(codes))
        self.assertLess(max(sizes), 160)  # smaller than the G.711 frame it replaces
        freq, share = peak_frequency(g711.decode(g711.PCMA, out)[800:])
        self.assertEqual(freq, 600)
        self.assertGreater(share, 0.9)

    def test_quick_tables_agree(self) -> None:
        """Tables built asking one sample in 4 (u-law) or 8 (a-law) equal the full ones."""
        from cryptify.protocols.opus import _ffi

        for law, shift in ((ULAW, 2), (ALAW, 3)):
            funcs = (
                (g711.ulaw_to_linear, g711.linear_to_ulaw)
                if law.name == g711.PCMU
                else (g711.alaw_to_linear, g711.linear_to_alaw)
            )
            quick = opus.LawTables.build(law.name, *funcs, shift)
            self.assertEqual(
                bytes(_ffi.buffer(quick.to_code, 65536)), bytes(_ffi.buffer(law.to_code, 65536))
            )

    def test_concealment(self) -> None:
        """None conceals one lost 20 ms frame."""
        decoder = opus.Decoder()
        self.assertEqual(len(decoder.decode(None)), 160)
        self.assertEqual(len(decoder.decode_law(None, ULAW)), 160)

    def test_refusals(self) -> None:
        """Wrong rates, frame sizes, bit rates and packet sizes raise OpusError."""
        with self.assertRaisesRegex(opus.OpusError, "8000 or 48000"):
            opus.Encoder(16000)
        with self.assertRaisesRegex(opus.OpusError, "8000 or 48000"):
            opus.Decoder(44100)
        with self.assertRaisesRegex(opus.OpusError, "bit rate"):
            opus.Encoder(bitrate=1000)
        with self.assertRaisesRegex(opus.OpusError, "complexity"):
            opus.Encoder(complexity=11)
        encoder = opus.Encoder()
        with self.assertRaisesRegex(opus.OpusError, "160 samples, not 159"):
            encoder.encode([0] * 159)
        with self.assertRaisesRegex(opus.OpusError, "160 samples, not 161"):
            encoder.encode_law(b"\xff" * 161, ULAW)
        decoder = opus.Decoder()
        with self.assertRaisesRegex(opus.OpusError, "1..4000 octets, not 0"):
            decoder.decode(b"")
        with self.assertRaisesRegex(opus.OpusError, "not 4001"):
            decoder.decode_law(b"\x00" * 4001, ULAW)

    def test_corrupt_packet_is_opus_error(self) -> None:
        """A code 3 packet announcing no frames: libopus's words in the error."""
        with self.assertRaisesRegex(opus.OpusError, "corrupted stream|invalid packet"):
            opus.Decoder().decode(b"\x03\x00")

    @settings(max_examples=300)
    @given(st.binary(min_size=1, max_size=1500), st.sampled_from([8000, 48000]))
    def test_hostile_packets(self, packet: bytes, rate: int) -> None:
        """Any octets: samples within 120 ms, or OpusError; never a crash."""
        decoder = opus.Decoder(rate)
        try:
            out = decoder.decode(packet)
        except opus.OpusError:
            pass
        else:
            self.assertLessEqual(len(out), rate * 120 // 1000)
        try:
            codes = decoder.decode_law(packet, ULAW)
        except opus.OpusError:
            pass
        else:
            self.assertLessEqual(len(codes), rate * 120 // 1000)
        # the decoder is still usable afterwards
        self.assertEqual(len(decoder.decode(None)), decoder.frame_samples)

    @settings(max_examples=50)
    @given(st.lists(st.integers(-40000, 40000), min_size=160, max_size=160))
    def test_any_frame_encodes(self, samples: list[int]) -> None:
        """Any 160 samples (clipped to 16 bits) encode to a packet that decodes to 160."""
        packet = opus.Encoder().encode(samples)
        self.assertTrue(0 < len(packet) <= opus.MAX_PACKET)
        self.assertEqual(len(opus.Decoder().decode(packet)), 160)
