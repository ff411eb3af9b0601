"""Tests for the batched message store and its use by messaging, in memory (Clock, fake eval).

The Lua itself runs against a real redis-server in ``tests.interop.test_messages``.
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from txredisapi import ResponseError

from cryptify.crs.attached import AttachRegistry
from cryptify.crs.messages import (
    MessageRefused,
    MessageStore,
    Posted,
    Stored,
    post_digest,
    retry_scope,
)
from cryptify.crs.messaging import Messaging
from cryptify.crs.store import RedisNotConnected
from cryptify.crs.trace import TraceHub
from cryptify.protocols.umsg import message
from tests.test_crs_stats import FakeSession
from tests.test_redis_batch import FakeScripts

NOW = 1_800_000_000.0


class FakeRedisStore:
    def __init__(self, clock: Clock) -> None:
        self.client = FakeScripts()
        self.clock = clock


class _Store(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.redis = FakeRedisStore(self.clock)
        ids = (f"id{n}" for n in itertools.count(1))
        self.store = MessageStore(lambda: self.redis, self.clock.seconds, new_id=lambda: next(ids))
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def answer(self, reply: str, call: int = 0) -> None:
        self.redis.client.calls[call][3].callback(reply)


class MessageStoreTests(_Store):
    def test_posts_of_one_turn_are_one_call(self) -> None:
        """Two posts in one turn are one script call carrying both, in order."""
        first = self.store.post(
            "tel:+1", "key:ab", "tel:+2", "acme", "content", b"\x00a", "known", "c:1"
        )
        second = self.store.post("tel:+3", "conn:c9:8", "tel:+2;101", "acme", "ack", b"id9")
        self.clock.advance(0)
        [(_, keys, args, _)] = self.redis.client.calls
        self.assertEqual(keys, [])
        self.assertEqual(args[:2], ["1000", str(7 * 24 * 3600 + 1)])
        now = str(int(NOW * 1000))
        self.assertEqual(
            args[2:14],
            [
                "id1",
                "tel:+1",
                "dedup:tel:+1:key:ab",
                "tel:+2",
                "tel:+2",
                "acme",
                "content",
                now,
                "AGE=",
                "known",
                "c:1",
                post_digest("tel:+2", "content", b"\x00a"),
            ],
        )
        self.assertEqual(
            args[14:],
            [
                "id2",
                "tel:+3",
                "dedup:tel:+3:conn:c9:8",
                "tel:+2;101",
                "tel:+2",
                "acme",
                "ack",
                now,
                "aWQ5",
                "",
                "",
                post_digest("tel:+2;101", "ack", b"id9"),
            ],
        )
        self.assertNoResult(first)
        self.answer("1\n0 id0")
        stored = Stored("id1", "tel:+1", "tel:+2", "acme", "content", int(NOW * 1000), b"\x00a")
        self.assertEqual(self.successResultOf(first), Posted("id1", False, stored))
        self.assertEqual(self.successResultOf(second), Posted("id0", duplicate=True))

    def test_refusals(self) -> None:
        """Full inbox, unknown recipient and a reused retry key are refused with their codes."""
        full = self.store.post("tel:+1", "k1", "tel:+2", "acme", "content", b"a")
        unknown = self.store.post("tel:+1", "k2", "tel:+9", "acme", "content", b"a")
        reused = self.store.post("tel:+1", "k1", "tel:+2", "acme", "content", b"b")
        self.clock.advance(0)
        self.answer("-1\n-2\n-3")
        self.assertEqual(self.failureResultOf(full, MessageRefused).value.code, "inbox-full")
        self.assertEqual(self.failureResultOf(unknown, MessageRefused).value.code, "not-found")
        self.assertEqual(self.failureResultOf(reused, MessageRefused).value.code, "key-reused")

    def test_digest_covers_recipient_kind_and_content(self) -> None:
        """The digest a repeat must match changes with each of recipient, kind and content."""
        base = post_digest("tel:+2", "content", b"a")
        self.assertEqual(base, post_digest("tel:+2", "content", b"a"))
        others = {
            post_digest("tel:+2;101", "content", b"a"),
            post_digest("tel:+2", "system", b"a"),
            post_digest("tel:+2", "content", b"b"),
            post_digest("tel:+2", "content", b""),
        }
        self.assertNotIn(base, others)
        self.assertEqual(len(others), 4)

    def test_retry_scopes(self) -> None:
        """A key is its own scope; without one the request id counts on its connection only."""
        self.assertEqual(retry_scope(bytes(range(16)), "c1", 1), "key:" + bytes(range(16)).hex())
        self.assertEqual(
            retry_scope(bytes(range(16)), "c2", 9), retry_scope(bytes(range(16)), "c1", 1)
        )
        self.assertNotEqual(retry_scope(None, "c1", 1), retry_scope(None, "c2", 1))
        self.assertEqual(retry_scope(None, "c1", 1), "conn:c1:1")

    def test_unreachable_redis_is_unavailable(self) -> None:
        """A batch Redis could not be reached for is refused ``unavailable`` (retryable),
        not ``internal``; so is a post made while the store has no connection."""
        lost = self.store.post("tel:+1", "k1", "tel:+2", "acme", "content", b"a")
        self.clock.advance(0)
        self.redis.client.calls[0][3].errback(ConnectionLost("redis_low went away"))
        self.assertEqual(self.failureResultOf(lost, MessageRefused).value.code, "unavailable")

        def down() -> Any:
            raise RedisNotConnected("redis_low: not connected")

        self.redis.client.eval = lambda *a: down()  # type: ignore[method-assign]
        refused = self.store.post("tel:+1", "k2", "tel:+2", "acme", "content", b"a")
        self.clock.advance(0)
        self.assertEqual(self.failureResultOf(refused, MessageRefused).value.code, "unavailable")

    def test_loading_redis_is_unavailable(self) -> None:
        """A restarted Redis still loading its data answers LOADING: ``unavailable``."""
        post = self.store.post("tel:+1", "k1", "tel:+2", "acme", "content", b"a")
        self.clock.advance(0)
        self.redis.client.calls[0][3].errback(
            ResponseError("LOADING Redis is loading the dataset in memory")
        )
        self.assertEqual(self.failureResultOf(post, MessageRefused).value.code, "unavailable")

    def test_redis_error_fails_that_post_only(self) -> None:
        """A post Redis failed is refused ``internal`` with the reason; the rest are stored."""
        ok = self.store.post("tel:+1", "k1", "tel:+2", "acme", "content", b"a")
        bad = self.store.post("tel:+1", "k2", "tel:+3", "acme", "content", b"b")
        self.clock.advance(0)
        self.answer("1\n!WRONGTYPE Operation against a key holding the wrong kind of value")
        self.assertEqual(self.successResultOf(ok).id, "id1")
        refused = self.failureResultOf(bad, MessageRefused).value
        self.assertEqual(refused.code, "internal")
        self.assertIn("WRONGTYPE", str(refused))

    def test_lost_connection_fails_the_batch(self) -> None:
        """A script call that fails refuses each of its posts, none is acknowledged."""
        posts = [
            self.store.post("tel:+1", f"k{n}", "tel:+2", "acme", "content", b"a") for n in range(3)
        ]
        self.clock.advance(0)
        self.redis.client.calls[0][3].errback(ConnectionLost("redis_low went away"))
        for post in posts:
            refused = self.failureResultOf(post, MessageRefused).value
            self.assertEqual(refused.code, "unavailable")
            self.assertIn("redis_low went away", str(refused))

    def test_bad_posts_never_reach_redis(self) -> None:
        """Unknown kinds and oversized content are refused at once, without a call."""
        weird = self.store.post("tel:+1", "k1", "tel:+2", "acme", "weird", b"a")
        big = self.store.post("tel:+1", "k1", "tel:+2", "acme", "content", b"x" * 50000)
        self.assertEqual(self.failureResultOf(weird, MessageRefused).value.code, "malformed")
        self.assertEqual(self.failureResultOf(big, MessageRefused).value.code, "too-large")
        self.clock.advance(0)
        self.assertEqual(self.redis.client.calls, [])

    def test_deliveries_batched(self) -> None:
        """Deliveries of one turn are one call; unknown ones answer None."""
        known = self.store.delivered("tel:+2", "id1", "msgstat:")
        unknown = self.store.delivered("tel:+2", "nope")
        self.clock.advance(0)
        [(_, _, args, _)] = self.redis.client.calls
        self.assertEqual(args, ["tel:+2", "id1", "msgstat:", "tel:+2", "nope", ""])
        self.answer("tel:+1 content\n")
        self.assertEqual(self.successResultOf(known), ("tel:+1", "content"))
        self.assertIsNone(self.successResultOf(unknown))


class MessagingTests(_Store):
    """Messaging over the batched store: acknowledgements follow storage."""

    def setUp(self) -> None:
        super().setUp()
        trace = TraceHub(self.clock.seconds)
        registry = AttachRegistry("crs1", self.clock.seconds, trace)
        self.messaging = Messaging(
            self.store, registry, trace, lambda: self.redis, self.clock.seconds
        )

    def post(self, session: FakeSession, msg_id: int) -> None:
        self.messaging.post(session, message("post", id=msg_id, to="tel:+2", content=b"x"))  # type: ignore[arg-type]

    def test_posted_only_once_stored(self) -> None:
        """``posted`` goes to each sender only after Redis stored its message."""
        a, b = FakeSession("tel:+1"), FakeSession("tel:+3")
        self.post(a, 1)
        self.post(b, 1)
        self.clock.advance(0)
        self.assertEqual((a.sent, b.sent), ([], []))
        self.answer("1\n1")
        self.assertEqual([m.type for m in a.sent + b.sent], ["posted", "posted"])
        self.assertEqual((a.sent[0]["message"], b.sent[0]["message"]), ("id1", "id2"))

    def test_failed_post_refused_clearly(self) -> None:
        """A post Redis failed gets ``error internal`` with the reason; the other is posted."""
        a, b = FakeSession("tel:+1"), FakeSession("tel:+3")
        self.post(a, 1)
        self.post(b, 5)
        self.clock.advance(0)
        self.answer("!OOM command not allowed\n1")
        [error] = a.sent
        self.assertEqual((error.type, error.id, error["code"]), ("error", 1, "internal"))
        self.assertIn("OOM command not allowed", error["reason"])
        self.assertEqual([m.type for m in b.sent], ["posted"])
        self.assertEqual(self.messaging.counters["posted"], 1)

    def test_whole_batch_lost(self) -> None:
        """When the script call fails, every post of the batch is refused, none posted."""
        sessions = [FakeSession(f"tel:+{n}") for n in range(10, 13)]
        for s in sessions:
            self.post(s, 1)
        self.clock.advance(0)
        self.redis.client.calls[0][3].errback(ConnectionLost("gone"))
        for s in sessions:
            self.assertEqual([(m.type, m["code"]) for m in s.sent], [("error", "unavailable")])
        self.assertEqual(self.messaging.counters["posted"], 0)

    def test_delivered_tells_sender(self) -> None:
        """A batched delivery answer tells the attached sender."""
        recipient = FakeSession("tel:+2")
        self.messaging.delivered(recipient, message("delivered", message="id1"))  # type: ignore[arg-type]
        self.clock.advance(0)
        self.answer("tel:+1 content")
        self.assertEqual(self.messaging.counters["delivered"], 1)
