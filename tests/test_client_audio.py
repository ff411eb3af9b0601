"""cryptify.client.audio: G.711 u-law, WAV files, tone detection."""

from __future__ import annotations

import io
import math
import struct
import warnings
import wave
from array import array

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from cryptify.client import audio

samples16 = st.integers(min_value=-32768, max_value=32767)


def _wav(channels: int, width: int, rate: int, frames: bytes) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return out.getvalue()


class UlawTests(SynchronousTestCase):
    """The u-law codec against G.711's known values and its own inverse."""

    def test_known_values(self) -> None:
        """0 -> 0xFF, full scale -> 0x80 / 0x00, and the decode table's ends."""
        self.assertEqual(audio.ulaw_encode([0, 32767, -32768, -1]), bytes([0xFF, 0x80, 0x00, 0x7E]))
        self.assertEqual(list(audio.ulaw_decode(bytes([0xFF, 0x7F, 0x80, 0x00]))),
                         [0, 0, 32124, -32124])  # fmt: skip

    def test_segment_boundaries(self) -> None:
        """Each octet decodes to a value that encodes back to the same octet
        (except negative zero 0x7F, which is 0 and so 0xFF)."""
        for octet in range(256):
            value = audio.ulaw_decode(bytes([octet]))[0]
            expected = 0xFF if octet == 0x7F else octet
            self.assertEqual(audio.ulaw_encode([value]), bytes([expected]), octet)

    @given(st.lists(samples16, max_size=400))
    def test_quantisation_error(self, samples: list[int]) -> None:
        """Encoding then decoding is within half a segment step of the input
        (steps double per segment: at most 1/16 of the magnitude plus 132)."""
        back = audio.ulaw_decode(audio.ulaw_encode(samples))
        self.assertEqual(len(back), len(samples))
        for x, y in zip(samples, back, strict=True):
            bound = 132 + abs(x) / 16 if abs(x) < 32124 else 1100
            self.assertLessEqual(abs(x - y), bound, (x, y))

    @given(st.binary(max_size=400))
    def test_decode_encode_stable(self, octets: bytes) -> None:
        """decode(encode(decode(u))) == decode(u): the codec is idempotent."""
        once = audio.ulaw_decode(octets)
        self.assertEqual(audio.ulaw_decode(audio.ulaw_encode(once)), once)

    def test_same_as_audioop(self) -> None:
        """Every 16-bit value encodes, and every octet decodes, as the
        (deprecated) stdlib audioop does, where it still exists."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import audioop  # type: ignore[import-not-found,unused-ignore]
        except ImportError:  # pragma: no cover  (Python 3.13)
            raise SkipTest("no audioop") from None
        values = array("h", range(-32768, 32768))
        self.assertEqual(audio.ulaw_encode(values), audioop.lin2ulaw(values.tobytes(), 2))
        octets = bytes(range(256))
        self.assertEqual(audio.ulaw_decode(octets).tobytes(), audioop.ulaw2lin(octets, 2))

    def test_clips(self) -> None:
        """Values beyond 16 bits are clipped, not wrapped."""
        self.assertEqual(audio.ulaw_encode([10**6, -(10**6)]), bytes([0x80, 0x00]))


class WavTests(SynchronousTestCase):
    """Reading and writing WAV files."""

    def test_round_trip(self) -> None:
        """write_wav then read_wav gives the samples back (8 kHz mono 16-bit)."""
        samples = array("h", [0, 1, -1, 32767, -32768, 1234])
        path = self.mktemp()
        audio.write_wav(path, samples)
        self.assertEqual(audio.read_wav(path), samples)
        with wave.open(path) as w:
            self.assertEqual((w.getnchannels(), w.getsampwidth(), w.getframerate()), (1, 2, 8000))

    def test_stereo_8bit_and_resampling(self) -> None:
        """Stereo keeps the first channel; 8-bit is unsigned; 16 kHz halves."""
        stereo = _wav(2, 2, 8000, struct.pack("<4h", 100, -5, 200, -6))
        self.assertEqual(list(audio.read_wav_bytes(stereo)), [100, 200])
        eight = _wav(1, 1, 8000, bytes([128, 255, 0]))
        self.assertEqual(list(audio.read_wav_bytes(eight)), [0, 127 << 8, -128 << 8])
        fast = _wav(1, 2, 16000, struct.pack("<4h", 0, 10, 20, 30))
        self.assertEqual(list(audio.read_wav_bytes(fast)), [0, 20])

    def test_refusals(self) -> None:
        """Not a WAV, 24-bit samples, or an absurd rate: AudioError saying so."""
        for data, text in (
            (b"not a wav", "not a PCM WAV"),
            (_wav(1, 3, 8000, bytes(6)), "24-bit"),
            (_wav(1, 2, 500, bytes(4)), "sample rate"),
        ):
            with self.assertRaises(audio.AudioError) as caught:
                audio.read_wav_bytes(data)
            self.assertIn(text, str(caught.exception))

    def test_max_seconds(self) -> None:
        """read_wav_bytes stops at max_seconds."""
        data = _wav(1, 2, 8000, bytes(2 * 8000))
        self.assertEqual(len(audio.read_wav_bytes(data, max_seconds=0.5)), 4000)

    @settings(max_examples=300)
    @given(
        st.integers(1, 2),
        st.integers(1, 2),
        st.sampled_from([8000, 11025, 16000, 44100]),
        st.binary(max_size=200),
        st.integers(0, 80),
        st.binary(max_size=8),
    )
    def test_damaged_files(
        self, channels: int, width: int, rate: int, frames: bytes, cut: int, junk: bytes
    ) -> None:
        """A valid file cut short or with junk spliced in gives samples or
        AudioError, never another exception."""
        data = _wav(channels, width, rate, frames[: len(frames) - len(frames) % (channels * width)])
        damaged = data[: len(data) - cut] if cut else data[:20] + junk + data[20 + len(junk) :]
        try:
            result = audio.read_wav_bytes(damaged)
        except audio.AudioError:
            return
        self.assertIsInstance(result, array)

    @given(st.binary(max_size=300))
    def test_garbage(self, data: bytes) -> None:
        """Arbitrary octets: AudioError or samples, nothing else."""
        try:
            audio.read_wav_bytes(b"RIFF" + data)
        except audio.AudioError:
            pass


class ToneTests(SynchronousTestCase):
    """Tone generation and detection."""

    def test_goertzel_of_a_tone(self) -> None:
        """A 1 kHz tone has its power at 1 kHz, next to nothing at 1.5 kHz."""
        samples = audio.tone(1000, 0.5)
        on = audio.goertzel_power(samples, 1000)
        off = audio.goertzel_power(samples, 1500)
        self.assertLess(abs(on - (8000 / 2) ** 2), on * 0.01)
        self.assertLess(off, on / 1e4)
        self.assertEqual(audio.goertzel_power([], 1000), 0.0)

    def test_peak_through_ulaw(self) -> None:
        """After a u-law round trip, the peak is still at the tone."""
        for freq in (440, 1000, 1500, 3000):
            samples = audio.ulaw_decode(audio.ulaw_encode(audio.tone(freq, 0.25)))
            peak, share = audio.peak_frequency(samples, low=100, high=3900, step=20)
            self.assertEqual(peak, freq)
            self.assertGreater(share, 0.9)

    def test_silence(self) -> None:
        """Silence has no peak share."""
        self.assertEqual(audio.peak_frequency([0] * 800)[1], 0.0)

    def test_tone_shape(self) -> None:
        """tone() gives seconds * rate samples of the given amplitude."""
        samples = audio.tone(250, 0.1, amplitude=1000)
        self.assertEqual(len(samples), 800)
        self.assertEqual(max(samples), 1000)
        self.assertEqual(samples[8], int(1000 * math.sin(2 * math.pi * 250 * 8 / 8000)))
