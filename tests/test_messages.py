"""Tests for the batched message store and its use by messaging, in memory (Clock, fake eval).

The Lua itself runs against a real redis-server in ``tests.interop.test_messages``.
"""

from __future__ import annotations

import itertools
from collections.abc import Coroutine
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from txredisapi import ResponseError

from cryptify.crs.attach.registry import AttachRegistry
from cryptify.crs.messages.store import (
    MessageRefused,
    MessageStore,
    Posted,
    Stored,
    post_digest,
    retry_scope,
)
from cryptify.crs.messages.wiring import DELIVERY_RETRY, DELIVERY_WINDOW, Messaging
from cryptify.crs.redis.store import RedisNotConnected
from cryptify.crs.trace import TraceHub
from cryptify.protocols.umsg import encode_from_server, message
from tests.contracts import CONTRACT_INBOX, MessageStoreContract
from tests.fakes import FakeScripts, FakeSession, FakeStore, MemoryMessageStore
from tests.messages_support import NOW, Conn, DeliveryCase


class _Store(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.redis = FakeStore(FakeScripts(), self.clock)
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
        self.assertEqual(len(args), 4)
        self.assertEqual(
            args[2].split("\x00"),
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
            args[3].split("\x00"),
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
        stored = Stored(
            "id1", "tel:+1", "tel:+2", "acme", "content", int(NOW * 1000), b"\x00a", "key:ab"
        )
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
        self.assertEqual(args, ["tel:+2\x00id1\x00msgstat:", "tel:+2\x00nope\x00"])
        self.answer("tel:+1 content\n")
        self.assertEqual(self.successResultOf(known), ("tel:+1", "content"))
        self.assertIsNone(self.successResultOf(unknown))


class MessagingTests(_Store):
    """Messaging over the batched store: acknowledgements follow storage."""

    def setUp(self) -> None:
        super().setUp()
        trace = TraceHub(self.clock.seconds)
        registry = AttachRegistry("crs1", self.clock.seconds, trace)
        self.messaging = Messaging(self.store, registry, trace)

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


class DeliveryTests(DeliveryCase):
    """Every waiting message is sent, at the pace the client confirms them."""

    def test_every_waiting_message_arrives(self) -> None:
        """199 messages waiting all arrive in one attach, once each and in order,
        to a client that confirms each."""
        ids = self.store.add("tel:+2", 199)
        conn = self.attach("tel:+2")
        self.assertEqual(self.confirm(conn), 199)
        self.assertEqual([m["message"] for m in conn.of("message")], ids)
        self.assertEqual(self.store.messages, {})

    def test_slow_client_not_flooded(self) -> None:
        """A client that does not confirm gets one window of messages, then one more
        per confirmation."""
        self.store.add("tel:+2", 199)
        conn = self.attach("tel:+2")
        self.assertEqual(len(conn.of("message")), DELIVERY_WINDOW)
        self.confirm(conn, upto=3)
        self.assertEqual(len(conn.of("message")), DELIVERY_WINDOW + 3)

    def test_fetch_ok_once_everything_was_sent(self) -> None:
        """``fetch`` is answered ``ok`` only once every waiting message has been sent."""
        conn = self.attach("tel:+2")
        self.store.add("tel:+2", 100)
        self.messaging.fetch(conn, message("fetch", id=7))  # type: ignore[arg-type]
        self.assertEqual((len(conn.of("message")), conn.of("ok")), (DELIVERY_WINDOW, []))
        self.confirm(conn)
        self.assertEqual([m.id for m in conn.of("ok")], [7])
        self.assertEqual(len(conn.of("message")), 100)

    def test_live_post_takes_its_turn(self) -> None:
        """A message posted while older ones wait is sent after them, not before."""
        older = self.store.add("tel:+2", DELIVERY_WINDOW + 1)
        conn = self.attach("tel:+2")
        sender = self.attach("tel:+1")
        self.post(sender, 1, "tel:+2", b"new")
        [posted] = sender.of("posted")
        self.assertEqual(len(conn.of("message")), DELIVERY_WINDOW)
        self.confirm(conn)
        self.assertEqual([m["message"] for m in conn.of("message")], [*older, posted["message"]])

    def test_live_post_sent_at_once(self) -> None:
        """With nothing waiting, a post reaches the attached recipient at once."""
        conn = self.attach("tel:+2")
        sender = self.attach("tel:+1")
        self.post(sender, 1, "tel:+2", b"hi")
        [got] = conn.of("message")
        self.assertEqual((got["content"], got["from"]), (b"hi", "tel:+1"))

    def test_extension_kept(self) -> None:
        """A post to ``tel:+8888;101`` reaches the CIG attached as ``tel:+8888`` with
        ``to: tel:+8888;101``, as invites do."""
        cig = self.attach("tel:+8888")
        sender = self.attach("tel:+1")
        self.post(sender, 1, "tel:+8888;101", b"for 101")
        [got] = cig.of("message")
        self.assertEqual((got["to"], got["content"]), ("tel:+8888;101", b"for 101"))
        encode_from_server(got)

    def test_unsent_messages_go_again_after_reattach(self) -> None:
        """Messages sent and not confirmed are sent again on the next connection."""
        self.store.add("tel:+2", 3)
        first = self.attach("tel:+2")
        self.assertEqual(len(first.of("message")), 3)
        second = self.attach("tel:+2", "c2")
        self.assertEqual(len(second.of("message")), 3)
        self.confirm(second)
        self.assertEqual(self.store.messages, {})


class RetryScopeTests(DeliveryCase):
    """Posts through Messaging: which repeats are the same message."""

    def test_ids_restart_on_each_connection(self) -> None:
        """Request id 1 on a new connection is a new message (the lost-message bug)."""
        self.attach("tel:+2")
        for n in range(20):
            sender = Conn("tel:+1", f"conn{n}")
            self.post(sender, 1, "tel:+2", b"message %d" % n)
            self.assertEqual([m.type for m in sender.sent], ["posted"])
        self.assertEqual(len(self.store.scopes), 20)

    def test_key_retry_from_another_connection(self) -> None:
        """The same key from another connection answers the first ID; the same key
        with other content is refused ``key-reused`` and nothing is stored."""
        key = bytes(range(16))
        a, b, c = Conn("tel:+1", "a"), Conn("tel:+1", "b"), Conn("tel:+1", "c")
        self.post(a, 1, "tel:+2", b"hello", key=key)
        self.post(b, 9, "tel:+2", b"hello", key=key)
        self.assertEqual(a.of("posted")[0]["message"], b.of("posted")[0]["message"])
        self.post(c, 1, "tel:+2", b"other", key=key)
        [error] = c.of("error")
        self.assertEqual((error.id, error["code"]), (1, "key-reused"))
        self.assertEqual(len(self.store.messages), 1)

    def test_same_connection_id_reused_for_other_message(self) -> None:
        """Without a key, one connection reusing an id for another message is refused."""
        a = Conn("tel:+1", "a")
        self.post(a, 1, "tel:+2", b"one")
        self.post(a, 1, "tel:+2", b"one")
        self.post(a, 1, "tel:+2", b"two")
        self.assertEqual([m.type for m in a.sent], ["posted", "posted", "error"])
        self.assertEqual(a.sent[2]["code"], "key-reused")
        self.assertEqual(len(self.store.messages), 1)


class UnavailableTests(DeliveryCase):
    """A store out of reach is answered with a retryable code, without a traceback."""

    def test_post_and_fetch_unavailable(self) -> None:
        """Post and fetch while redis_low is down: ``error unavailable`` with a
        ``retry-after`` hint, no traceback logged; delivery resumes by itself."""
        conn = self.attach("tel:+2")
        self.store.down = True
        self.store.add("tel:+2", 2)
        self.post(conn, 1, "tel:+3", b"x")
        self.messaging.fetch(conn, message("fetch", id=2))  # type: ignore[arg-type]
        errors = conn.of("error")
        self.assertEqual(
            [(e.id, e["code"]) for e in errors], [(1, "unavailable"), (2, "unavailable")]
        )
        for error in errors:
            self.assertGreater(error["retry-after"], 0)
            encode_from_server(error)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.store.down = False
        self.clock.advance(DELIVERY_RETRY)
        self.assertEqual(len(conn.of("message")), 2)

    def test_known_recorded_once_redis_is_back(self) -> None:
        """An attach while redis_low is out of reach records the URI as known
        once it is back (posts to it are then taken), without waiting for the
        client's next attach."""
        self.store.down = True
        self.attach("tel:+5")
        self.assertNotIn("tel:+5", self.store.known)
        self.store.down = False
        self.clock.advance(DELIVERY_RETRY)
        self.assertIn("tel:+5", self.store.known)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_unreachable_redis_object(self) -> None:
        """When the store cannot even record the read time (not connected), the answer
        is the same."""
        conn = self.attach("tel:+2")
        self.store.down = True
        self.messaging.fetch(conn, message("fetch", id=3))  # type: ignore[arg-type]
        self.assertEqual([e["code"] for e in conn.of("error")], ["unavailable"])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.store.down = False
        self.clock.advance(DELIVERY_RETRY)


class MemoryMessageStoreContractTests(MessageStoreContract, SynchronousTestCase):
    """The fake message store keeps the contract the Lua scripts keep (the same
    suite runs against redis-server in ``tests.interop.test_messages``)."""

    def setUp(self) -> None:
        self.now = NOW
        self.store = MemoryMessageStore(lambda: self.now, max_inbox=CONTRACT_INBOX)

    def drive(self, work: Coroutine[Any, Any, None]) -> None:
        self.successResultOf(defer.ensureDeferred(work))
