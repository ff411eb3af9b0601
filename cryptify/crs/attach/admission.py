"""Admission control on the client listener: a bound on connections in progress.

A connection is *in progress* from its accept until it attaches or ends:
its TLS handshake, WebSocket upgrade and attach all cost the reactor CPU.
When a reconnect storm (the clients of a dead pool instance, a restart)
brings thousands at once, a reactor that accepts them all does all their
handshakes in one turn, and its timers (the pool heartbeats, attach
timeouts) run seconds late.  So the listener stops accepting while
``limit`` connections are in progress and starts again once they are down
to the low-water mark (three quarters of it): the rest of the storm waits
in the kernel's accept queue (``BACKLOG``) and in the clients' SYN retries,
a queue rather than a reactor that no longer keeps time.  While paused,
connections that have said nothing for :data:`STALE_SILENT` are closed to
make room, so silent connections (a flood from several addresses, or
clients that stopped answering) cannot keep the listener shut.

:class:`Admission` is the sans-IO rule; the listener's factory
(:mod:`cryptify.crs.attach.wiring`) feeds it the count and pauses or
resumes the listening port.
"""

from __future__ import annotations

from typing import Literal

import attrs

#: Connections in progress (accepted, not attached) before accepting pauses.
MAX_HANDSHAKES = 128
#: While accepting is paused, a connection in progress that has not sent a
#: single octet above TLS for this long is closed to make room: it waits on
#: its client (or is a flood's), not on this server, and would otherwise hold
#: the listener shut until the attach timeout.
STALE_SILENT = 5.0


@attrs.define
class Admission:
    """Whether the listener accepts, from the connections in progress."""

    #: Whether accepting is paused now.
    paused: bool = False
    #: How many times accepting was paused.
    pauses: int = 0

    @staticmethod
    def low_water(limit: int) -> int:
        """Accepting resumes at or below this many in progress."""
        return limit * 3 // 4

    def update(self, in_progress: int, limit: int) -> Literal["pause", "resume"] | None:
        """The count changed: whether to pause or resume accepting now."""
        if not self.paused and in_progress >= limit:
            self.paused = True
            self.pauses += 1
            return "pause"
        if self.paused and in_progress <= self.low_water(limit):
            self.paused = False
            return "resume"
        return None

    @staticmethod
    def room(in_progress: int, limit: int) -> int:
        """How many connections one accept turn may take now (at least 1:
        the port reads only while not paused)."""
        return max(1, limit - in_progress)
