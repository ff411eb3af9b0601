"""
Replay protection for I_MESSAGEs (RFC 3830 5.4): a message whose T lies
outside the window around now is refused, and so is a RAND seen before
within the window.
"""

from __future__ import annotations

from collections import OrderedDict

from cryptify.crypto.errors import ReplayError

DEFAULT_WINDOW = 5 * 60.0  # seconds either side of now


class ReplayGuard:
    """Remembers the RANDs of accepted messages for twice the window."""

    def __init__(self, window: float = DEFAULT_WINDOW, max_entries: int = 100_000) -> None:
        if window <= 0:
            raise ValueError("replay window must be positive")
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def _prune(self, now: float) -> None:
        horizon = now - 2 * self.window
        while self._seen:
            rand, seen_at = next(iter(self._seen.items()))
            if seen_at >= horizon and len(self._seen) <= self.max_entries:
                break
            del self._seen[rand]

    def check(self, timestamp: float, rand: bytes, now: float) -> None:
        """
        Accept a message once: record its RAND.

        @raise ReplayError: if T is outside the window or RAND was seen.
        """
        if abs(now - timestamp) > self.window:
            raise ReplayError("I_MESSAGE timestamp is outside the replay window")
        self._prune(now)
        if rand in self._seen:
            raise ReplayError("I_MESSAGE RAND was already seen: replayed message")
        self._seen[rand] = now
