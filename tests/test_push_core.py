"""The push rules: per-client rate limits, route back-off, deferred wakes."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.push.core import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    HOUR,
    WAKE_INTERVAL,
    WAKES_PER_HOUR,
    Counter,
    Decision,
    PushRules,
)

ALICE = ("acme", "tel:+4611")
BOB = ("acme", "tel:+4622")
APNS = "cps:apns"
FCM = "cps:fcm"


class RateLimitTests(SynchronousTestCase):
    def test_first_wake_is_sent(self) -> None:
        """A client never woken is woken at once."""
        self.assertIs(PushRules().ask(ALICE, APNS, 0.0), Decision.SEND)

    def test_second_wake_within_interval_is_limited(self) -> None:
        """A second wake inside the interval is not sent: the first covers it."""
        rules = PushRules()
        rules.ask(ALICE, APNS, 0.0)
        self.assertIs(rules.ask(ALICE, APNS, WAKE_INTERVAL - 1), Decision.LIMITED)
        self.assertEqual(rules.counters[Counter.LIMITED], 1)

    def test_wake_after_interval_is_sent(self) -> None:
        """Once the interval is over the client may be woken again."""
        rules = PushRules()
        rules.ask(ALICE, APNS, 0.0)
        self.assertIs(rules.ask(ALICE, APNS, WAKE_INTERVAL), Decision.SEND)

    def test_limit_is_per_client(self) -> None:
        """Another client is not held back by the first one's wake."""
        rules = PushRules()
        rules.ask(ALICE, APNS, 0.0)
        self.assertIs(rules.ask(BOB, APNS, 1.0), Decision.SEND)

    def test_hourly_cap(self) -> None:
        """No more than WAKES_PER_HOUR wakes of one client in an hour,
        however far apart they are asked."""
        rules = PushRules()
        now = 0.0
        for _ in range(WAKES_PER_HOUR):
            self.assertIs(rules.ask(ALICE, APNS, now), Decision.SEND)
            now += WAKE_INTERVAL
        self.assertIs(rules.ask(ALICE, APNS, now), Decision.LIMITED)
        self.assertIs(rules.ask(ALICE, APNS, HOUR + 1), Decision.SEND)

    def test_history_is_bounded(self) -> None:
        """The oldest client's history is forgotten beyond max_clients."""
        rules = PushRules(max_clients=2)
        for i in range(5):
            rules.ask(("a", f"tel:{i}"), APNS, 0.0)
        self.assertEqual(len(rules.history), 2)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(st.sampled_from([ALICE, BOB]), st.floats(0, 2 * HOUR)),
            max_size=80,
        )
    )
    def test_never_more_than_the_limits(self, asks: list[tuple[tuple[str, str], float]]) -> None:
        """Whatever the order of asks, the wakes sent to one client keep the
        interval and the hourly cap."""
        rules = PushRules()
        sent: dict[tuple[str, str], list[float]] = {}
        for client, now in sorted(asks, key=lambda a: a[1]):
            if rules.ask(client, APNS, now) is Decision.SEND:
                sent.setdefault(client, []).append(now)
        for times in sent.values():
            for a, b in itertools.pairwise(times):
                self.assertGreaterEqual(b - a, WAKE_INTERVAL)
            for t in times:
                self.assertLessEqual(len([u for u in times if t <= u < t + HOUR]), WAKES_PER_HOUR)


class BackoffTests(SynchronousTestCase):
    def test_later_blocks_route_and_keeps_the_wake(self) -> None:
        """A "later" answer blocks the route; the failed wake is handed back
        by due() once the back-off is over, not before."""
        rules = PushRules()
        rules.ask(ALICE, APNS, 0.0)
        delay = rules.later(ALICE, APNS, 0.0)
        self.assertEqual(delay, BACKOFF_FIRST)
        self.assertEqual(rules.due(APNS, 0.5), [])
        self.assertEqual(rules.due(APNS, delay), [ALICE])
        self.assertEqual(rules.due(APNS, delay), [])

    def test_backoff_doubles_and_is_capped(self) -> None:
        """Failures in a row double the delay up to BACKOFF_MAX; a success resets it."""
        rules = PushRules()
        delays = []
        now = 0.0
        for _ in range(12):
            delay = rules.later(None, APNS, now)
            delays.append(delay)
            now += delay
        self.assertEqual(delays[:3], [BACKOFF_FIRST, 2 * BACKOFF_FIRST, 4 * BACKOFF_FIRST])
        self.assertEqual(delays[-1], BACKOFF_MAX)
        rules.sent(APNS)
        self.assertEqual(rules.later(None, APNS, now), BACKOFF_FIRST)

    def test_retry_after_is_honoured_and_capped(self) -> None:
        """The provider's Retry-After is the delay, up to BACKOFF_MAX."""
        rules = PushRules()
        self.assertEqual(rules.later(None, APNS, 0.0, retry_after=42), 42)
        self.assertEqual(rules.later(None, FCM, 0.0, retry_after=10**9), BACKOFF_MAX)

    def test_wakes_during_backoff_are_deferred_once(self) -> None:
        """During a back-off a wake is kept once per client; another route is
        not blocked."""
        rules = PushRules()
        rules.later(None, APNS, 0.0, retry_after=60)
        self.assertIs(rules.ask(ALICE, APNS, 1.0), Decision.DEFERRED)
        self.assertIs(rules.ask(ALICE, APNS, 50.0), Decision.LIMITED)
        self.assertIs(rules.ask(BOB, FCM, 1.0), Decision.SEND)
        self.assertEqual(rules.waiting(), 1)
        self.assertEqual(rules.due(APNS, 60.0), [ALICE])

    def test_closed_route_defers(self) -> None:
        """A route that is down (link not logged in) defers without a back-off."""
        rules = PushRules()
        self.assertIs(rules.ask(ALICE, APNS, 0.0, open_=False), Decision.DEFERRED)
        self.assertEqual(rules.due(APNS, 0.0), [ALICE])

    def test_pending_is_bounded(self) -> None:
        """No more than max_pending wakes are kept; the rest are dropped and counted."""
        rules = PushRules(max_pending=2)
        rules.later(None, APNS, 0.0, retry_after=60)
        decisions = [rules.ask(("a", f"tel:{i}"), APNS, 1.0) for i in range(4)]
        self.assertEqual(decisions.count(Decision.DEFERRED), 2)
        self.assertEqual(decisions.count(Decision.DROPPED), 2)
        self.assertEqual(rules.counters[Counter.DROPPED], 2)

    def test_counters(self) -> None:
        """Outcomes are counted by kind."""
        rules = PushRules()
        rules.sent(APNS)
        rules.unregistered(APNS)
        rules.refused()
        self.assertEqual(rules.counters[Counter.SENT], 1)
        self.assertEqual(rules.counters[Counter.UNREGISTERED], 1)
        self.assertEqual(rules.counters[Counter.FAILED], 1)
