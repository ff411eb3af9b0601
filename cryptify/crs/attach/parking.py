"""Attaches that wait for their slot to get an owner (sans-IO).

In a pool, the clients of an instance that died come to a survivor
before the survivors have declared it dead (about 3 s of missed
heartbeats; its slots have no live owner meanwhile).  Refusing each of
them ``unavailable`` costs the client a second TLS handshake, and the
survivor one more for each refusal, at the moment a storm of them
arrives.  So the survivor *parks* such an attach: the connection stays
open, its TLS and WebSocket done, and the attach goes on at the next
change of the slot map (or at the next heartbeat's review): attached
here once the slot is this instance's, ``moved`` once another live
instance owns it, ``unavailable`` after :data:`PARK_SECONDS` without an
owner.  The same holds for a slot being handed back (no owner for about
a second).

A parked connection still counts as unattached (the per-address and
total quotas bound how many can wait), but no longer as *in progress*
for admission control (:mod:`cryptify.crs.attach.admission`): it costs
nothing while it waits, and counting it would shut the listener while
the storm it belongs to still needs handshakes.  At most
:data:`MAX_PARKED` wait at once; beyond that an attach is refused as
before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

#: Longest an attach waits for its slot to get an owner, s: past the
#: takeover of a dead instance (``DOWN_AFTER`` plus a loaded survivor's
#: lag) and a hand-back step.
PARK_SECONDS = 6.0
#: Most attaches parked at once.
MAX_PARKED = 20_000


class Parkable(Protocol):
    """What the lot needs of a parked attach (:class:`AttachSession`)."""

    @property
    def parked(self) -> bool:
        """Whether it still waits (False once its connection ended)."""

    def resume(self, expired: bool) -> bool:
        """Go on with the attach now (``expired``: waited too long, refuse
        it); True if its slot still has no owner and it waits on."""


@attrs.define(eq=False)
class ParkingLot:
    """The attaches waiting for an owner of their slot, oldest first."""

    clock: Callable[[], float]
    seconds: float = PARK_SECONDS
    limit: int = MAX_PARKED
    #: Called after the number parked changed (admission control).
    on_change: list[Callable[[], None]] = attrs.field(factory=list)
    #: Called when the first attach parks in an empty lot: have
    #: :meth:`review` called at the next heartbeat.
    on_first: Callable[[], None] = lambda: None
    _waiting: dict[Parkable, float] = attrs.field(factory=dict)
    #: Attaches parked, and those of them that waited in vain, since start.
    parked_total: int = 0
    expired_total: int = 0

    @property
    def count(self) -> int:
        return len(self._waiting)

    def __contains__(self, session: object) -> bool:
        return session in self._waiting

    def park(self, session: Parkable) -> bool:
        """Let ``session`` wait; False when the lot is full (refuse it)."""
        if len(self._waiting) >= self.limit:
            return False
        first = not self._waiting
        self._waiting[session] = self.clock()
        self.parked_total += 1
        if first:
            self.on_first()
        self._changed()
        return True

    def drop(self, session: Parkable) -> None:
        """``session`` no longer waits (its connection ended)."""
        if self._waiting.pop(session, None) is not None:
            self._changed()

    def review(self) -> bool:
        """The slot map changed, or time passed: every parked attach goes on,
        or waits on if its slot still has no owner and it has time left.
        True while some still wait afterwards."""
        if not self._waiting:
            return False
        now = self.clock()
        waiting, self._waiting = self._waiting, {}
        for session, since in waiting.items():
            if not session.parked:
                continue
            expired = now - since >= self.seconds
            if expired:
                self.expired_total += 1
            if session.resume(expired):
                self._waiting[session] = since
        self._changed()
        return bool(self._waiting)

    def _changed(self) -> None:
        for hook in self.on_change:
            hook()


def reviewed_every(lot: ParkingLot, clock: IReactorTime, interval: float = 1.0) -> None:
    """Review ``lot`` every ``interval`` seconds while attaches wait in it
    (a worker process, which has no heartbeat of its own to do it at);
    the caller also reviews it after every change of the slot map."""
    ticker = LoopingCall(lambda: None)
    ticker.clock = clock

    def tick() -> None:
        if not lot.review() and ticker.running:
            ticker.stop()

    ticker.f = tick

    def first() -> None:
        if not ticker.running:
            ticker.start(interval, now=False)

    lot.on_first = first
