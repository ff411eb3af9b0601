"""Slots: which pool instance owns a URI.

Every URI maps to one of :data:`SLOTS` slots by CRC16 (the XMODEM variant
Redis Cluster uses) of its UTF-8 bytes.  The slots are split into equal
consecutive ranges over the pool's hosts in ``crs.conf`` order; with one
instance it owns them all.  A client attaching to an instance that does not
own its slot is told to move to the owner.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

#: Number of slots, as in Redis Cluster.
SLOTS = 16384


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _table()


def crc16(data: bytes) -> int:
    """CRC16/XMODEM (polynomial 0x1021, initial 0), as Redis Cluster."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def slot_of(uri: str) -> int:
    """The slot of a URI (its base number: extensions route with it)."""
    return crc16(uri.encode("utf-8")) % SLOTS


def slot_ranges(slots: Iterable[int]) -> list[tuple[int, int]]:
    """The (first, last) runs of consecutive slots in ``slots`` (ascending)."""
    ranges: list[tuple[int, int]] = []
    for slot in slots:
        if ranges and ranges[-1][1] == slot - 1:
            ranges[-1] = (ranges[-1][0], slot)
        else:
            ranges.append((slot, slot))
    return ranges


@attrs.frozen
class SlotMap:
    """Slot ownership over the pool's hosts, split in configuration order.

    ``addresses`` maps a host name to the address clients should move to.
    """

    hosts: tuple[str, ...]
    me: str
    addresses: dict[str, str] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if not self.hosts:
            raise ValueError("a slot map needs at least one host")
        if self.me not in self.hosts:
            raise ValueError(f"{self.me} is not one of the hosts {', '.join(self.hosts)}")

    def ranges(self) -> list[tuple[str, int, int]]:
        """(host, first slot, last slot) for every host, in order."""
        count = len(self.hosts)
        result = []
        for index, host in enumerate(self.hosts):
            first = index * SLOTS // count
            last = (index + 1) * SLOTS // count - 1
            result.append((host, first, last))
        return result

    def owner(self, slot: int) -> str:
        """The host that owns ``slot``."""
        if not 0 <= slot < SLOTS:
            raise ValueError(f"slot {slot} out of range")
        return self.hosts[slot * len(self.hosts) // SLOTS]

    def mine(self, slot: int) -> bool:
        """Whether this instance owns ``slot``."""
        return self.owner(slot) == self.me

    def standby(self, slot: int) -> str | None:
        """Who would take ``slot`` if this instance died: no one (a fixed
        split has no failover)."""
        return None

    def address(self, host: str) -> str:
        """Where clients reach ``host`` (its configured IP)."""
        return self.addresses.get(host, host)

    def describe(self, host: str) -> str:
        """A host's slots as ``first-last``."""
        for name, first, last in self.ranges():
            if name == host:
                return f"{first}-{last}"
        raise KeyError(host)
