"""Opus (RFC 6716) through our own small libopus binding, for calls.

The secure side of a call may carry Opus instead of G.711 (``docs/umsg.md``
section 8, ``codecs``/``codec``): mono, 20 ms frames, encoded from and
decoded to 8 kHz samples (libopus works at 8 kHz itself: narrowband, no
resampler of ours), RTP payload type :data:`PAYLOAD_TYPE` with the 48 kHz
RTP clock of RFC 7587 (960 ticks a frame).

:class:`Encoder` and :class:`Decoder` wrap one libopus state each.  Besides
linear samples they go straight between G.711 codes and Opus
(:meth:`Encoder.encode_law`, :meth:`Decoder.decode_law`), the CIG bridge's
and the reference client's path.  Sizes are bounded: an Opus packet is at
most :data:`MAX_PACKET` octets and decodes to at most 120 ms; anything
libopus refuses raises :class:`OpusError` with libopus's own words.

The C part (``_opus_build.py``) is built when the package installs and
needs ``libopus-dev``; without it :func:`available` is False and the
callers offer and accept G.711 only.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from typing import Any

import attrs

try:
    from cryptify.protocols import _opus

    _ffi: Any = _opus.ffi
    _lib: Any = _opus.lib
except ImportError:  # pragma: no cover - built at install time
    _ffi = _lib = None

#: Codec names as the UMSG ``codecs``/``codec`` fields spell them.
OPUS = "opus"
#: RTP payload type of Opus on the secure leg (dynamic, RFC 7587).
PAYLOAD_TYPE = 111
#: RTP clock of Opus (RFC 7587 4.1) and its ticks per 20 ms frame.
RTP_CLOCK = 48000
RTP_FRAME_TICKS = 960
#: Sample rates an encoder or decoder may work at here.
RATES = (8000, 48000)
#: Frame length, ms.
FRAME_MS = 20
#: Most octets of one Opus packet (RFC 6716 3.4: 1275 per frame, up to 3 frames
#: coded as one "code 3" packet of 120 ms; more is no packet we take).
MAX_PACKET = 4000
#: Most duration one packet decodes to, ms (RFC 6716 3.2.5).
MAX_PACKET_MS = 120
#: Default bit rate, bit/s: good narrowband speech, still under G.711's 64 kbit/s.
DEFAULT_BITRATE = 24000
_APPLICATION_VOIP = 2048
_BANDWIDTH_NARROWBAND = 1101
_BANDWIDTH_FULLBAND = 1105


class OpusError(ValueError):
    """libopus refused something, or the argument is outside our limits."""


def available() -> bool:
    """Whether the libopus binding was built (the package needs ``libopus-dev`` to build)."""
    return _lib is not None


def version() -> str:
    """libopus's version string (``libopus 1.3.1``)."""
    _need()
    return str(_ffi.string(_lib.opus_get_version_string()).decode("ascii", "replace"))


def _need() -> None:
    if _lib is None:
        raise OpusError("Opus is not available: cryptify was built without libopus")


def _error(what: str, code: int) -> OpusError:
    text = _ffi.string(_lib.opus_strerror(code)).decode("ascii", "replace")
    return OpusError(f"{what}: {text} ({code})")


def _check_rate(rate: int) -> int:
    if rate not in RATES:
        raise OpusError(f"sample rate {rate} Hz: 8000 or 48000 only")
    return rate * FRAME_MS // 1000


@attrs.frozen
class LawTables:
    """A G.711 law as the C helpers take it: code -> linear (256 entries) and
    linear (as an unsigned 16-bit index) -> code (65536 entries)."""

    name: str
    to_linear: Any = attrs.field(repr=False)
    to_code: Any = attrs.field(repr=False)

    @classmethod
    def build(
        cls,
        name: str,
        to_linear: Callable[[int], int],
        to_code: Callable[[int], int],
        shift: int = 0,
    ) -> LawTables:
        """Tables of the law whose one-sample conversions are ``to_linear``/``to_code``.

        ``shift``: the low bits ``to_code`` ignores (2 for u-law, 3 for a-law),
        so only one sample in ``2**shift`` is asked (a quicker build).
        """
        _need()
        decode = _ffi.new("int16_t[256]", [to_linear(c) for c in range(256)])
        step = 1 << shift
        table = b"".join(
            bytes([to_code(i - 65536 if i & 0x8000 else i)]) * step for i in range(0, 65536, step)
        )
        return cls(name, decode, _ffi.new("unsigned char[65536]", table))


class Encoder:
    """One Opus encoder: 20 ms mono frames of ``rate`` Hz samples in, packets out."""

    def __init__(
        self, rate: int = 8000, bitrate: int = DEFAULT_BITRATE, complexity: int = 5
    ) -> None:
        _need()
        self.rate = rate
        self.frame_samples = _check_rate(rate)
        if not 6000 <= bitrate <= 510000:
            raise OpusError(f"bit rate {bitrate}: 6000..510000 bit/s")
        if not 0 <= complexity <= 10:
            raise OpusError(f"complexity {complexity}: 0..10")
        err = _ffi.new("int *")
        state = _lib.opus_encoder_create(rate, 1, _APPLICATION_VOIP, err)
        if err[0] != 0 or state == _ffi.NULL:
            raise _error("cannot create an Opus encoder", err[0])
        self._state = _ffi.gc(state, _lib.opus_encoder_destroy)
        band = _BANDWIDTH_NARROWBAND if rate == 8000 else _BANDWIDTH_FULLBAND
        rc = _lib.cryptify_opus_setup(self._state, bitrate, complexity, band)
        if rc != 0:
            raise _error("cannot set up the Opus encoder", rc)
        self._out = _ffi.new("unsigned char[]", MAX_PACKET)
        self._pcm = _ffi.new("int16_t[]", self.frame_samples)

    def encode(self, samples: Sequence[int]) -> bytes:
        """One frame (exactly :attr:`frame_samples` 16-bit samples) as an Opus packet."""
        if len(samples) != self.frame_samples:
            raise OpusError(f"a frame is {self.frame_samples} samples, not {len(samples)}")
        pcm = self._pcm
        for i, s in enumerate(samples):
            pcm[i] = max(-32768, min(32767, s))
        n = _lib.opus_encode(self._state, pcm, self.frame_samples, self._out, MAX_PACKET)
        if n < 0:
            raise _error("Opus encode failed", n)
        return bytes(_ffi.buffer(self._out, n))

    def encode_law(self, codes: bytes, law: LawTables) -> bytes:
        """One frame of G.711 codes of ``law`` as an Opus packet."""
        if len(codes) != self.frame_samples:
            raise OpusError(f"a frame is {self.frame_samples} samples, not {len(codes)}")
        n = _lib.cryptify_opus_encode_law(
            self._state, codes, len(codes), law.to_linear, self._out, MAX_PACKET
        )
        if n < 0:
            raise _error("Opus encode failed", n)
        return bytes(_ffi.buffer(self._out, n))


class Decoder:
    """One Opus decoder: packets in, ``rate`` Hz mono samples out.

    ``None`` for a packet asks libopus to conceal one lost frame.
    """

    def __init__(self, rate: int = 8000) -> None:
        _need()
        self.rate = rate
        self.frame_samples = _check_rate(rate)
        self.max_samples = rate * MAX_PACKET_MS // 1000
        err = _ffi.new("int *")
        state = _lib.opus_decoder_create(rate, 1, err)
        if err[0] != 0 or state == _ffi.NULL:
            raise _error("cannot create an Opus decoder", err[0])
        self._state = _ffi.gc(state, _lib.opus_decoder_destroy)
        self._pcm = _ffi.new("int16_t[]", self.max_samples)
        self._codes = _ffi.new("unsigned char[]", self.max_samples)

    def _packet(self, packet: bytes | None) -> tuple[Any, int, int]:
        if packet is None:
            return _ffi.NULL, 0, self.frame_samples
        if not 0 < len(packet) <= MAX_PACKET:
            raise OpusError(f"an Opus packet is 1..{MAX_PACKET} octets, not {len(packet)}")
        return packet, len(packet), self.max_samples

    def decode(self, packet: bytes | None) -> array[int]:
        """The samples of one packet (or of one concealed frame for None)."""
        data, size, room = self._packet(packet)
        n = _lib.opus_decode(self._state, data, size, self._pcm, room, 0)
        if n < 0:
            raise _error("Opus decode failed", n)
        out = array("h")
        out.frombytes(bytes(_ffi.buffer(self._pcm, 2 * n)))
        return out

    def decode_law(self, packet: bytes | None, law: LawTables) -> bytes:
        """The samples of one packet as G.711 codes of ``law``."""
        data, size, room = self._packet(packet)
        n = _lib.cryptify_opus_decode_law(self._state, data, size, self._codes, room, law.to_code)
        if n < 0:
            raise _error("Opus decode failed", n)
        return bytes(_ffi.buffer(self._codes, n))
