"""
Open connections per source address, for listeners that cap them.

The management port and SIP over TCP both refuse a connection once its
source address holds ``limit`` open ones; this is the one count they keep.
"""

from __future__ import annotations


class SourceCounts(dict[str, int]):
    """Open connections by source address (only addresses with some)."""

    def admit(self, host: str, limit: int) -> bool:
        """Count one more connection from ``host``, unless it holds ``limit``."""
        if self.get(host, 0) >= limit:
            return False
        self[host] = self.get(host, 0) + 1
        return True

    def release(self, host: str) -> None:
        """One connection from ``host`` ended."""
        left = self.get(host, 0) - 1
        if left > 0:
            self[host] = left
        else:
            self.pop(host, None)
