"""The CRS media relay's packet format.

A client sends every media packet to the relay's one UDP port as::

    +----------------+------------------------------+
    | tag (8 bytes)  | SRTP packet (12 bytes or more) |
    +----------------+------------------------------+

The tag is the random 64-bit identifier of the sending leg of a relay
session, handed to the client by the CRS in the call signaling.  The relay
strips the tag and forwards the bare SRTP packet to the other leg, so a
party never learns its peer's tag.  See ``docs/relay.md``.
"""

from __future__ import annotations

import enum

#: Bytes of the leg tag ahead of the SRTP packet (64 random bits).
TAG_SIZE = 8
#: Shortest SRTP packet relayed: an RTP fixed header.
RTP_HEADER_SIZE = 12
#: Shortest datagram that can be a relayed packet.
MIN_PACKET = TAG_SIZE + RTP_HEADER_SIZE
#: Longest datagram relayed (an Ethernet MTU's worth of IPv4 UDP payload).
MAX_PACKET = 1472


class PacketError(enum.Enum):
    """Why a datagram is not a relay packet."""

    TOO_SHORT = "too short"
    TOO_LONG = "too long"


def encode(tag: bytes, srtp: bytes) -> bytes:
    """The datagram a client sends: ``tag`` then the SRTP packet."""
    if len(tag) != TAG_SIZE:
        raise ValueError(f"a leg tag is {TAG_SIZE} bytes, not {len(tag)}")
    return tag + srtp


def parse(datagram: bytes) -> tuple[bytes, bytes] | PacketError:
    """Split a datagram into (tag, SRTP packet), or say why it is not one."""
    size = len(datagram)
    if size < MIN_PACKET:
        return PacketError.TOO_SHORT
    if size > MAX_PACKET:
        return PacketError.TOO_LONG
    return datagram[:TAG_SIZE], datagram[TAG_SIZE:]
