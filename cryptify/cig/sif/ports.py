"""The SIF's RTP ports: even ports from C{sip { rtp_port_range }}, one per call."""

from __future__ import annotations

import attrs

#: RTP ports used when the sip interface has no C{rtp_port_range}.
DEFAULT_RTP_PORTS = (16384, 32766)


@attrs.define
class PortPool:
    """Even RTP ports from a range, handed out and taken back."""

    low: int
    high: int
    used: set[int] = attrs.field(factory=set)
    _next: int = 0

    def take(self) -> int | None:
        first = self.low + (self.low % 2)
        count = max(0, (self.high - first) // 2 + 1)
        for i in range(count):
            port = first + 2 * ((self._next + i) % count)
            if port not in self.used:
                self.used.add(port)
                self._next = (self._next + i + 1) % count
                return port
        return None

    def give_back(self, port: int | None) -> None:
        self.used.discard(port or -1)
