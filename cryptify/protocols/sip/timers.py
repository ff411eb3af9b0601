"""
Many timers on one delayed call: L{TimerQueue}.

A SIP call set-up starts about five timers (the transactions' G, L and J,
the unanswered-call timer, the ended call's linger in C{show call}), most
of them half a minute long, so at a thousand calls a second the reactor
would hold a hundred thousand delayed calls. Each of Twisted's costs a
L{DelayedCall} with its bound methods, and a place in the reactor's heap
ordered by a Python C{__lt__}. A L{TimerQueue} keeps its timers in a heap
of plain lists (ordered in C by due time, then by start order) and asks
its clock for one delayed call at a time, for the earliest live timer.

The rules:
 - a timer fires at its due time as the clock computes it (C{now +
   delay}), never earlier and never later: a test's L{Clock} advanced to
   exactly that time fires it, as it would a C{callLater}, and one an ulp
   short of it does not;
 - timers due at the same time fire in the order they were started;
 - a cancelled timer is dropped lazily: it never fires, but the queue may
   wake once at its time for nothing (cheaper than re-arming at every
   cancel); when no live timer is left the queue holds no delayed call;
 - a timer whose callable raises is logged, and the others still fire.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger(namespace="cryptify.protocols.sip")

_Arg = TypeVar("_Arg")

#: Cancelled timers are swept out of the heap once they are more than
#: half of it and at least this many.
SWEEP_AT = 64


class Timer(list[Any]):
    """
    One timer of a L{TimerQueue}: C{[when, order, callable, argument]},
    the callable C{None} once it has fired or been cancelled. Lists compare
    in C, by due time and then by start order (never reaching the callable).
    """

    __slots__ = ("queue",)

    def __init__(
        self, queue: TimerQueue, when: float, order: int, fn: Callable[[Any], object], arg: Any
    ) -> None:
        super().__init__((when, order, fn, arg))
        self.queue = queue

    @property
    def when(self) -> float:
        """When it fires (clock seconds)."""
        return float(self[0])

    def active(self) -> bool:
        """Whether it has neither fired nor been cancelled."""
        return self[2] is not None

    def cancel(self) -> None:
        """Stop it from firing (nothing happens if it has fired or was cancelled)."""
        if self[2] is not None:
            self[2] = self[3] = None
            self.queue._cancelled()


class TimerQueue:
    """Timers on one C{IReactorTime} delayed call (see the module's rules)."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._heap: list[Timer] = []
        self._order = 0
        #: Timers neither fired nor cancelled.
        self.live = 0
        self._call: IDelayedCall | None = None
        #: The due time of the timer the delayed call is for.
        self._armed = math.inf

    def call_later(self, delay: float, fn: Callable[[_Arg], object], arg: _Arg) -> Timer:
        """
        Call C{fn(arg)} in C{delay} seconds; the L{Timer} cancels it. (An
        unbound method and its object, rather than a bound method: nothing
        is made per timer that the collector would follow while it waits.)
        """
        when = self.clock.seconds() + delay
        self._order += 1
        timer = Timer(self, when, self._order, fn, arg)
        heapq.heappush(self._heap, timer)
        self.live += 1
        if when < self._armed:
            self._arm(when, delay)
        return timer

    def _arm(self, when: float, delay: float) -> None:
        call = self._call
        if call is not None and call.active():
            call.cancel()
        self._armed = when
        self._call = self.clock.callLater(delay, self._fire)

    def _cancelled(self) -> None:
        self.live -= 1
        heap = self._heap
        if self.live == 0:
            heap.clear()
            call = self._call
            if call is not None and call.active():
                call.cancel()
            self._call = None
            self._armed = math.inf
        elif len(heap) > SWEEP_AT and self.live < len(heap) // 2:
            heap[:] = [timer for timer in heap if timer[2] is not None]
            heapq.heapify(heap)

    def _fire(self) -> None:
        self._call = None
        # Due: what the clock says now, as for a callLater. The call may be
        # an ulp short of the timer it was armed for (L{_rearm}); then none
        # is due yet and the queue re-arms for a later clock time.
        due = self.clock.seconds()
        self._armed = math.inf
        heap = self._heap
        while heap:
            timer = heap[0]
            fn = timer[2]
            if fn is None:
                heapq.heappop(heap)
                continue
            if timer[0] > due:
                break
            heapq.heappop(heap)
            arg = timer[3]
            timer[2] = timer[3] = None
            self.live -= 1
            try:
                fn(arg)
            except Exception:
                log.failure("timer {fn!r} failed", fn=fn)
        self._rearm()

    def _rearm(self) -> None:
        """Arm for the earliest live timer, if the call is not armed for it."""
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
        if not heap:
            return
        when = heap[0][0]
        if when >= self._armed:
            return
        now = self.clock.seconds()
        delay = max(0.0, when - now)
        # Never after the due time: where now + (when - now) rounds above
        # when, take the next smaller delay.
        while delay > 0.0 and now + delay > when:
            delay = math.nextafter(delay, 0.0)
        self._arm(when, delay)

    def stop(self) -> None:
        """Cancel every timer (at shutdown)."""
        for timer in list(self._heap):
            timer.cancel()
