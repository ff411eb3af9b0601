"""What the pool's change log (:class:`~cryptify.crs.pool.changes.PoolChanges`)
needs of the rest of the CRS: the link that carries its frames and the
applier that does what a change means here.  Typed ports only, so the
service and its tests agree on them without importing the pool link or
the operator state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred

from cryptify.crs.pool.changes_core import Change
from cryptify.crs.pool.changes_replica import Replica


class Link(Protocol):
    """What this module needs of :class:`~cryptify.crs.pool.wiring.PoolLink`."""

    me: str
    peers: tuple[str, ...]

    def handle(
        self, frame_type: str, handler: Callable[[str, dict[str, object]], None]
    ) -> None: ...

    def send(self, peer: str, frame_type: str, fields: dict[str, object]) -> bool: ...

    def on_link(self, listener: Callable[[str, bool], None]) -> None: ...

    def link_up(self, peer: str) -> bool: ...

    def notify(self, unit: str, event: str) -> None: ...


class Applier(Protocol):
    """Does what a change means on this instance."""

    def apply(self, change: Change, replica: Replica) -> list[str]:
        """Carry out ``change`` (already committed to ``replica``); return
        the problems met (also logged); never raises."""

    def purge(self, account: str, uri: str | None) -> int | Deferred[int]:
        """Disconnect the account's clients here (one URI's or all); how
        many (with workers, once they have answered)."""

    async def wake(self, account: str, uri: str) -> str:
        """Send a wake-up to ``uri`` from here; what happened."""
