"""
Tests for L{cryptify.protocols.sip.timers}: many timers on one delayed
call, firing exactly when C{callLater} would.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.protocols.sip.timers import SWEEP_AT, Timer, TimerQueue


class TimerQueueTests(SynchronousTestCase):
    """
    L{TimerQueue}: due times, order, cancellation, one delayed call.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.queue = TimerQueue(self.clock)
        self.fired: list[str] = []
        self.addCleanup(self.assert_no_delayed_call)

    def assert_no_delayed_call(self) -> None:
        self.queue.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def later(self, delay: float, name: str):  # type: ignore[no-untyped-def]
        return self.queue.call_later(delay, self.fired.append, name)

    def test_fires_at_its_time_in_order(self) -> None:
        """
        Each timer fires when the clock reaches its due time, not before;
        timers due together fire in the order they were started; only one
        delayed call is ever pending.
        """
        self.later(32, "L")
        self.later(0.5, "G")
        self.later(0.5, "G2")
        self.later(180, "no answer")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.49)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.01)
        self.assertEqual(self.fired, ["G", "G2"])
        self.clock.advance(31.5)
        self.assertEqual(self.fired, ["G", "G2", "L"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(148)
        self.assertEqual(self.fired[-1], "no answer")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled(self) -> None:
        """
        A cancelled timer never fires; once no live timer is left no
        delayed call is left either; cancelling twice, or after firing,
        does nothing.
        """
        g = self.later(0.5, "G")
        ell = self.later(32, "L")
        g.cancel()
        g.cancel()
        self.assertFalse(g.active())
        self.clock.advance(1)
        self.assertEqual(self.fired, [])
        ell.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        last = self.later(1, "x")
        self.clock.advance(1)
        last.cancel()
        self.assertEqual(self.fired, ["x"])

    def test_started_while_firing(self) -> None:
        """
        A timer started by a firing one (a retransmission doubling its
        interval) fires at its own time, and an earlier timer started
        later still comes first.
        """

        def resend(_: object) -> None:
            self.fired.append(f"G at {self.clock.seconds():g}")
            if self.clock.seconds() < 3:
                self.queue.call_later(2 * self.clock.seconds(), resend, None)

        self.queue.call_later(0.5, resend, None)
        self.later(32, "L")
        self.clock.advance(0.5)
        self.clock.advance(1.0)
        self.later(0.25, "soon")
        self.clock.advance(0.25)
        self.clock.advance(2.75)
        self.assertEqual(self.fired, ["G at 0.5", "G at 1.5", "soon", "G at 4.5"])

    def test_never_early(self) -> None:
        """
        A timer re-armed for from a later clock time, where no delay added
        to that time gives its due time exactly (63.796 from 19.749: the
        nearest sum is an ulp short), still fires when a C{callLater} would:
        not at the sum an ulp short, at the first clock time past it.
        """
        reference = Clock()
        wanted: list[float] = []
        reference.callLater(63.796, lambda: wanted.append(reference.seconds()))
        self.later(63.796, "L")
        self.later(19.749, "G")
        for clock in (self.clock, reference):
            clock.advance(19.749)
        self.assertEqual(self.fired, ["G"])
        short = self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds()
        for clock in (self.clock, reference):
            clock.advance(short)
        self.assertLess(self.clock.seconds(), 63.796)
        self.assertEqual((self.fired, wanted), (["G"], []))
        for clock in (self.clock, reference):
            clock.advance(1e-9)
        self.assertEqual((self.fired, wanted), (["G", "L"], [self.clock.seconds()]))

    def test_failing_timer_logged(self) -> None:
        """A timer that raises is logged; the others due with it still fire."""

        def boom(_: object) -> None:
            raise RuntimeError("boom")

        self.queue.call_later(1, boom, None)
        self.later(1, "after")
        self.later(2, "later")
        self.clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.fired, ["after"])
        self.clock.advance(1)
        self.assertEqual(self.fired, ["after", "later"])

    def test_cancelled_swept(self) -> None:
        """Cancelled timers do not pile up: the heap is swept once most are."""
        keep = self.later(100, "kept")
        for _ in range(10 * SWEEP_AT):
            self.later(50, "gone").cancel()
        self.assertLess(len(self.queue._heap), 2 * SWEEP_AT + 2)
        self.clock.advance(100)
        self.assertEqual(self.fired, ["kept"])
        self.assertFalse(keep.active())

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["start", "cancel", "advance"]),
                st.sampled_from([0, 0.1, 0.3, 0.5, 1, 2, 4, 31.9, 32, 64]),
            ),
            max_size=40,
        )
    )
    def test_same_as_call_later(self, steps: list[tuple[str, float]]) -> None:
        """
        Whatever timers are started, cancelled and however time moves, the
        queue fires the same timers at the same clock times as
        C{callLater} does.
        """
        clock = Clock()
        reference = Clock()
        queue = TimerQueue(clock)
        got: list[tuple[int, float]] = []
        want: list[tuple[int, float]] = []
        timers = []
        calls = []
        for i, (action, value) in enumerate(steps):
            if action == "start":
                timers.append(
                    queue.call_later(value, lambda i: got.append((i, clock.seconds())), i)
                )
                calls.append(
                    reference.callLater(value, lambda i=i: want.append((i, reference.seconds())))
                )
            elif action == "cancel" and timers:
                n = int(value * 7) % len(timers)
                timers[n].cancel()
                if calls[n].active():
                    calls[n].cancel()
            else:
                clock.advance(value)
                reference.advance(value)
                self.assertEqual(got, want)
        clock.advance(1000)
        reference.advance(1000)
        self.assertEqual(got, want)
        self.assertEqual(clock.getDelayedCalls(), [])

    @settings(max_examples=150, deadline=None)
    @given(
        start=st.sampled_from([0.0, 0.1, 1.7e9 + 0.123]),
        steps=st.lists(
            st.tuples(
                st.sampled_from(
                    ["start", "start then", "start cancelling", "cancel", "advance", "to next"]
                ),
                st.sampled_from([0, 0.1, 0.5, 32]) | st.floats(0, 70),
                st.integers(0, 100),
            ),
            max_size=40,
        ),
    )
    def test_same_as_call_later_in_callbacks(
        self, start: float, steps: list[tuple[str, float, int]]
    ) -> None:
        """
        Timers started and cancelled by firing timers, at any due times
        (any float, at a clock far from zero as a reactor's is), fire as
        C{callLater} calls would, at the same clock times; the queue holds
        one delayed call at most, cancelled timers are swept (the heap is
        at most twice the live timers, or small) and none is left. The
        clock moves by any amount or exactly to the queue's next wake.
        """
        clock = Clock()
        reference = Clock()
        clock.rightNow = reference.rightNow = start
        queue = TimerQueue(clock)
        got: list[tuple[int, float]] = []
        want: list[tuple[int, float]] = []
        timers: list[Timer] = []
        calls: list[IDelayedCall] = []

        def fired(order: int, then: float | None, cancel: int | None) -> None:
            got.append((order, clock.seconds()))
            if then is not None:
                timers.append(queue.call_later(then, fired_alone, len(timers)))
            if cancel is not None:
                timers[cancel % len(timers)].cancel()

        def fired_alone(order: int) -> None:
            fired(order, None, None)

        def called(order: int, then: float | None, cancel: int | None) -> None:
            want.append((order, reference.seconds()))
            if then is not None:
                calls.append(reference.callLater(then, called, len(calls), None, None))
            if cancel is not None and calls[cancel % len(calls)].active():
                calls[cancel % len(calls)].cancel()

        for action, value, which in steps:
            if action.startswith("start"):
                then = value / 3 if action == "start then" else None
                cancel = which if action == "start cancelling" else None
                order = len(timers)
                timers.append(
                    queue.call_later(value, lambda o, t=then, c=cancel: fired(o, t, c), order)
                )
                calls.append(reference.callLater(value, called, order, then, cancel))
            elif action == "cancel" and timers:
                timers[which % len(timers)].cancel()
                if calls[which % len(calls)].active():
                    calls[which % len(calls)].cancel()
                self.assertLessEqual(len(queue._heap), max(SWEEP_AT + 1, 2 * queue.live + 1))
            else:
                # "to next": exactly to the time the queue's delayed call is for
                pending = clock.getDelayedCalls()
                if action == "to next" and pending:
                    value = pending[0].getTime() - clock.seconds()
                clock.advance(value)
                reference.advance(value)
                self.assertEqual(got, want)
            self.assertLessEqual(len(clock.getDelayedCalls()), 1)
            self.assertEqual(queue.live, sum(1 for call in calls if call.active()))
        for _ in range(3):
            clock.advance(100)
            reference.advance(100)
        self.assertEqual(got, want)
        self.assertEqual((clock.getDelayedCalls(), queue.live, queue._heap), ([], 0, []))
