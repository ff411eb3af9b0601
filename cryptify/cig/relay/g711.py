"""G.711 u-law and a-law (ITU-T G.711), as tables.

The bridge never handles linear PCM on its hot path: converting a frame
between u-law and a-law is one ``bytes.translate`` through a 256-byte
table built here once, from the segment encoders below (the classic
Sun/CCITT reference algorithms).  ``decode``/``encode`` exist for tests
and tools.
"""

from __future__ import annotations

#: Codec names as SDP spells them, and their static payload types (RFC 3551).
PCMU = "PCMU"
PCMA = "PCMA"
STATIC_PAYLOAD_TYPES = {PCMU: 0, PCMA: 8}
#: The code of silence (linear 0) in each law.
SILENCE = {PCMU: 0xFF, PCMA: 0xD5}

_BIAS = 0x84
_U_SEG_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_A_SEG_END = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _segment(value: int, ends: tuple[int, ...]) -> int:
    for seg, end in enumerate(ends):
        if value <= end:
            return seg
    return len(ends)


def ulaw_to_linear(code: int) -> int:
    """One u-law code to a 16-bit linear sample."""
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + _BIAS) << ((u & 0x70) >> 4)
    return _BIAS - t if u & 0x80 else t - _BIAS


def linear_to_ulaw(sample: int) -> int:
    """A 16-bit linear sample to its u-law code."""
    pcm = sample >> 2
    if pcm < 0:
        pcm, mask = -pcm, 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, 8159) + (_BIAS >> 2)
    seg = _segment(pcm, _U_SEG_END)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm >> (seg + 1)) & 0x0F)) ^ mask


def alaw_to_linear(code: int) -> int:
    """One a-law code to a 16-bit linear sample."""
    a = code ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


def linear_to_alaw(sample: int) -> int:
    """A 16-bit linear sample to its a-law code."""
    pcm = sample >> 3
    if pcm >= 0:
        mask = 0xD5
    else:
        mask, pcm = 0x55, -pcm - 1
    seg = _segment(pcm, _A_SEG_END)
    if seg >= 8:
        return 0x7F ^ mask
    shift = 1 if seg < 2 else seg
    return ((seg << 4) | ((pcm >> shift) & 0x0F)) ^ mask


_DECODERS = {PCMU: ulaw_to_linear, PCMA: alaw_to_linear}
_ENCODERS = {PCMU: linear_to_ulaw, PCMA: linear_to_alaw}

#: u-law code -> a-law code, and back: ``frame.translate(ULAW_TO_ALAW)``.
ULAW_TO_ALAW = bytes(linear_to_alaw(ulaw_to_linear(c)) for c in range(256))
ALAW_TO_ULAW = bytes(linear_to_ulaw(alaw_to_linear(c)) for c in range(256))


def translation(source: str, target: str) -> bytes | None:
    """The table converting ``source`` frames to ``target``; None if the same."""
    if source == target:
        return None
    return ULAW_TO_ALAW if source == PCMU else ALAW_TO_ULAW


def decode(codec: str, frame: bytes) -> list[int]:
    """A frame of codes to linear samples."""
    to_linear = _DECODERS[codec]
    return [to_linear(c) for c in frame]


def encode(codec: str, samples: list[int]) -> bytes:
    """Linear samples (clipped to 16 bits) to a frame of codes."""
    to_code = _ENCODERS[codec]
    return bytes(to_code(max(-32768, min(32767, s))) for s in samples)
