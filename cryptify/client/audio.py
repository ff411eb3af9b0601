"""Audio for the reference client: G.711 u-law, WAV files, tone detection.

Everything here is pure Python on :class:`array.array` of signed 16-bit
samples at :data:`RATE` (8 kHz mono), the format of a G.711 call.

- :func:`ulaw_encode` / :func:`ulaw_decode`: ITU-T G.711 u-law (the
  classic segment coder; 16-bit linear in, one octet per sample out),
  with lookup tables (``audioop`` is deprecated and gone in 3.13).
- :func:`read_wav` reads a PCM WAV file (8- or 16-bit, mono or stereo,
  any rate) as 8 kHz mono; :func:`write_wav` writes 8 kHz mono 16-bit.
- :func:`tone` makes a sine tone; :func:`goertzel_power` is the DFT power
  of one frequency, and :func:`peak_frequency` finds the strongest
  frequency on a grid (how the tests find a 1 kHz tone without numpy).
"""

from __future__ import annotations

import io
import math
import struct
import wave
from array import array
from collections.abc import Iterable, Sequence

#: Samples per second of a G.711 call.
RATE = 8000
_BIAS = 0x84
_CLIP = 8159
_SEG_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
#: The u-law octet of silence (linear 0).
ULAW_SILENCE = 0xFF


class AudioError(ValueError):
    """A WAV file this client cannot read."""


def _encode_14(value: int) -> int:
    """G.711 u-law of one 14-bit linear sample (Sun's g711.c ``linear2ulaw``)."""
    if value < 0:
        value, mask = -value, 0x7F
    else:
        mask = 0xFF
    value = min(value, _CLIP) + (_BIAS >> 2)
    for seg, end in enumerate(_SEG_END):
        if value <= end:
            return ((seg << 4) | ((value >> (seg + 1)) & 0xF)) ^ mask
    return 0x7F ^ mask  # pragma: no cover  (clipped above)


def _decode_one(octet: int) -> int:
    """Linear 16-bit value of one u-law octet (``ulaw2linear``)."""
    u = ~octet & 0xFF
    t = (((u & 0x0F) << 3) + _BIAS) << ((u & 0x70) >> 4)
    return _BIAS - t if u & 0x80 else t - _BIAS


#: u-law octet of each 14-bit sample, indexed by ``(sample >> 2) & 0x3FFF``.
_ENCODE = bytes(_encode_14(i - 0x4000 if i & 0x2000 else i) for i in range(0x4000))
#: Linear value of each u-law octet.
_DECODE = array("h", (_decode_one(i) for i in range(256)))


def ulaw_encode(samples: Iterable[int]) -> bytes:
    """u-law octets of signed 16-bit samples (values outside 16 bits are clipped)."""
    enc = _ENCODE
    return bytes(enc[(max(-32768, min(32767, s)) >> 2) & 0x3FFF] for s in samples)


def ulaw_decode(octets: bytes) -> array[int]:
    """Signed 16-bit samples of u-law octets."""
    dec = _DECODE
    return array("h", (dec[o] for o in octets))


def tone(freq: float, seconds: float, amplitude: int = 8000, rate: int = RATE) -> array[int]:
    """A sine tone of ``freq`` Hz, ``seconds`` long."""
    n = int(seconds * rate)
    step = 2 * math.pi * freq / rate
    return array("h", (int(amplitude * math.sin(step * i)) for i in range(n)))


def goertzel_power(samples: Sequence[int], freq: float, rate: int = RATE) -> float:
    """Power of ``freq`` in ``samples`` (one DFT bin, by the Goertzel recurrence),
    normalised by the number of samples squared."""
    n = len(samples)
    if n == 0:
        return 0.0
    coeff = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    return (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (n * n)


def peak_frequency(
    samples: Sequence[int], rate: int = RATE, low: int = 100, high: int = 3900, step: int = 50
) -> tuple[float, float]:
    """The strongest frequency on the grid ``low..high`` (by ``step``) and its
    share of the grid's total power (1.0: a pure tone on the grid)."""
    powers = {f: goertzel_power(samples, f, rate) for f in range(low, high + 1, step)}
    best = max(powers, key=lambda f: powers[f])
    total = sum(powers.values())
    return float(best), powers[best] / total if total else 0.0


def _resample(samples: array[int], rate: int) -> array[int]:
    """Linear interpolation from ``rate`` to :data:`RATE`."""
    if rate == RATE or not samples:
        return samples
    n = len(samples)
    count = n * RATE // rate
    ratio = rate / RATE
    out = array("h")
    for i in range(count):
        pos = i * ratio
        j = int(pos)
        frac = pos - j
        a = samples[j]
        b = samples[j + 1] if j + 1 < n else a
        out.append(int(a + (b - a) * frac))
    return out


def read_wav_bytes(data: bytes, max_seconds: float = 3600.0) -> array[int]:
    """8 kHz mono 16-bit samples of a PCM WAV file's octets."""
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            if width not in (1, 2):
                raise AudioError(f"{8 * width}-bit samples: only 8- and 16-bit PCM")
            if not 1 <= channels <= 8:
                raise AudioError(f"{channels} channels")
            if not 1000 <= rate <= 192000:
                raise AudioError(f"sample rate {rate} Hz")
            limit = int(max_seconds * rate)
            raw = w.readframes(min(w.getnframes(), limit))
    except (wave.Error, EOFError, struct.error) as exc:
        raise AudioError(f"not a PCM WAV file: {exc}") from exc
    frame = width * channels
    raw = raw[: len(raw) - len(raw) % frame]
    if width == 2:
        wide = array("h")
        wide.frombytes(raw)
        if struct.pack("=h", 1) != struct.pack("<h", 1):  # pragma: no cover  (big-endian hosts)
            wide.byteswap()
    else:
        wide = array("h", ((b - 128) << 8 for b in raw))
    mono = wide[::channels] if channels > 1 else wide
    return _resample(mono, rate)


def read_wav(path: str, max_seconds: float = 3600.0) -> array[int]:
    """8 kHz mono 16-bit samples of a PCM WAV file."""
    with open(path, "rb") as f:
        return read_wav_bytes(f.read(), max_seconds)


def wav_bytes(samples: Sequence[int]) -> bytes:
    """A WAV file (8 kHz, mono, 16-bit PCM) of ``samples``."""
    pcm = array("h", samples)
    if struct.pack("=h", 1) != struct.pack("<h", 1):  # pragma: no cover
        pcm.byteswap()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return out.getvalue()


def write_wav(path: str, samples: Sequence[int]) -> None:
    """Write ``samples`` as an 8 kHz mono 16-bit WAV file."""
    with open(path, "wb") as f:
        f.write(wav_bytes(samples))
