"""RTP (RFC 3550) packets and RFC 4733 telephone-events, parse and encode.

Only what a media bridge needs: the fixed header (CSRCs, a header
extension and padding are skipped on parsing and never written), and the
four-byte telephone-event payload.  Parsers take hostile bytes and return
a :class:`RtpError` rather than raising.
"""

from __future__ import annotations

import enum
import struct

import attrs

#: Bytes of the RTP fixed header.
HEADER_SIZE = 12
#: Bytes of an RFC 4733 named-event payload.
EVENT_SIZE = 4
#: RTP samples per second of G.711 and telephone-event here.
CLOCK_RATE = 8000
#: Events 0-15: the DTMF digits in RFC 4733 3.2 order.
DTMF_DIGITS = "0123456789*#ABCD"

_HEADER = struct.Struct("!BBHII")
_EVENT = struct.Struct("!BBH")


class RtpError(enum.Enum):
    """Why bytes are not an RTP packet (or not a telephone-event)."""

    TOO_SHORT = "too short"
    VERSION = "not RTP version 2"
    BAD_PADDING = "bad padding"
    RTCP = "RTCP, not RTP"


@attrs.frozen
class RtpPacket:
    """An RTP packet's fields that a bridge uses, and its payload."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False

    def encode(self) -> bytes:
        """The packet on the wire (fixed header, no CSRCs or extension)."""
        return encode_rtp(
            self.payload_type, self.sequence, self.timestamp, self.ssrc, self.payload, self.marker
        )


def encode_rtp(
    payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes, marker: bool
) -> bytes:
    """One RTP packet from its fields (the hot path: no object built)."""
    second = (payload_type & 0x7F) | (0x80 if marker else 0)
    return (
        _HEADER.pack(0x80, second, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc & 0xFFFFFFFF)
        + payload
    )


def parse_rtp(data: bytes) -> RtpPacket | RtpError:
    """Parse one RTP packet; RTCP multiplexed on the port (RFC 5761) is refused."""
    size = len(data)
    if size < HEADER_SIZE:
        return RtpError.TOO_SHORT
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        return RtpError.VERSION
    if 192 <= second <= 223:
        return RtpError.RTCP
    start = HEADER_SIZE + 4 * (first & 0x0F)
    if first & 0x10:
        if size < start + 4:
            return RtpError.TOO_SHORT
        start += 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big")
    end = size
    if first & 0x20:
        if size == 0 or data[-1] == 0:
            return RtpError.BAD_PADDING
        end -= data[-1]
    if start > end:
        return RtpError.TOO_SHORT if not first & 0x20 else RtpError.BAD_PADDING
    return RtpPacket(second & 0x7F, sequence, timestamp, ssrc, data[start:end], bool(second & 0x80))


@attrs.frozen
class TelephoneEvent:
    """An RFC 4733 named event: which, end bit, volume (dBm0, negated), duration."""

    event: int
    end: bool
    volume: int
    duration: int

    def encode(self) -> bytes:
        """The four-byte payload."""
        return _EVENT.pack(
            self.event & 0xFF,
            (0x80 if self.end else 0) | (self.volume & 0x3F),
            self.duration & 0xFFFF,
        )

    @property
    def digit(self) -> str | None:
        """The DTMF digit for events 0-15, else None."""
        return DTMF_DIGITS[self.event] if self.event < len(DTMF_DIGITS) else None


def parse_event(payload: bytes) -> TelephoneEvent | RtpError:
    """Parse a telephone-event payload (the first event of a packet)."""
    if len(payload) < EVENT_SIZE:
        return RtpError.TOO_SHORT
    event, flags, duration = _EVENT.unpack_from(payload)
    return TelephoneEvent(event, bool(flags & 0x80), flags & 0x3F, duration)
