"""Tests for one Lua script call per reactor turn (:mod:`cryptify.crs.redis.batch`), in memory."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.redis.batch import BatchFailed, ScriptBatch
from cryptify.crs.redis.store import RedisNotConnected
from tests.fakes import FakeScripts


class Results:
    """What the Deferreds of a batch fired with, in order."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def watch(self, d: Deferred[str]) -> Deferred[str]:
        d.addCallbacks(self.values.append, lambda f: self.values.append(f.value))
        return d


class ScriptBatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.redis = FakeScripts()
        self.connected = True
        self.batch = ScriptBatch(
            "things",
            "local HEADER, STRIDE = 1, 2\n",
            2,
            self.client,
            lambda: self.clock,
            header=lambda: ("H",),
            max_items=4,
        )
        self.results = Results()
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def client(self) -> FakeScripts:
        if not self.connected:
            raise RedisNotConnected("redis_low: not connected")
        return self.redis

    def add(self, *args: str) -> Deferred[str]:
        return self.results.watch(self.batch.add(args))

    def test_one_call_per_turn(self) -> None:
        """Requests of one turn go out as one script call, header first, at the turn's end."""
        self.add("a", "1")
        self.add("b", "2")
        self.assertEqual(self.redis.calls, [])
        self.clock.advance(0)
        [(script, keys, args, _)] = self.redis.calls
        self.assertIn("pcall(item, f)", script)
        self.assertEqual((keys, args), ([], ["H", "a\x001", "b\x002"]))
        self.assertEqual((self.batch.calls, self.batch.items, self.batch.pending), (1, 2, 0))

    def test_nul_in_a_field_fails_that_request(self) -> None:
        """An item's fields travel joined by NUL: a field holding one fails its
        request at once, and the others still go."""
        self.add("a", "1")
        self.add("b\x00", "2")
        self.clock.advance(0)
        [(_, _, args, answer)] = self.redis.calls
        self.assertEqual(args, ["H", "a\x001"])
        [failed] = self.results.values
        self.assertIsInstance(failed, BatchFailed)
        self.assertIn("NUL", str(failed))
        answer.callback("1")
        self.assertEqual(self.results.values[1:], ["1"])

    def test_nothing_fires_before_redis_answers(self) -> None:
        """Each request fires with its own line, in order, and only once Redis answered."""
        self.add("a", "1")
        self.add("b", "2")
        self.clock.advance(0)
        self.assertEqual(self.results.values, [])
        self.redis.calls[0][3].callback("one\ntwo")
        self.assertEqual(self.results.values, ["one", "two"])

    def test_item_error_fails_that_request_only(self) -> None:
        """A ``!`` line fails its request with Redis's reason; the others succeed."""
        self.add("a", "1")
        self.add("b", "2")
        self.add("c", "3")
        self.clock.advance(0)
        self.redis.calls[0][3].callback("1\n!WRONGTYPE Operation against a key\n")
        ok, failed, empty = self.results.values
        self.assertEqual((ok, empty), ("1", ""))
        self.assertIsInstance(failed, BatchFailed)
        self.assertEqual(str(failed), "things: WRONGTYPE Operation against a key")

    def test_call_failure_fails_its_batch_only(self) -> None:
        """A failed call fails every request of its batch, and not those of the next."""
        self.add("a", "1")
        self.add("b", "2")
        self.clock.advance(0)
        self.add("c", "3")
        self.clock.advance(0)
        first, second = self.redis.calls
        first[3].errback(ConnectionLost("gone"))
        second[3].callback("fine")
        a, b, c = self.results.values
        self.assertIsInstance(a, BatchFailed)
        self.assertIsInstance(b, BatchFailed)
        self.assertIn("gone", str(a))
        self.assertEqual(c, "fine")
        self.flushLoggedErrors()

    def test_not_connected(self) -> None:
        """Without a connection every queued request fails at flush, none is left waiting."""
        self.connected = False
        self.add("a", "1")
        self.add("b", "2")
        self.clock.advance(0)
        self.assertEqual(len(self.results.values), 2)
        for failure in self.results.values:
            self.assertIsInstance(failure, BatchFailed)
            self.assertIn("not connected", str(failure))
        self.assertEqual(self.redis.calls, [])

    def test_answer_count_mismatch(self) -> None:
        """A reply with the wrong number of lines fails the whole batch."""
        self.add("a", "1")
        self.add("b", "2")
        self.clock.advance(0)
        self.redis.calls[0][3].callback("only one")
        self.assertEqual([type(v) for v in self.results.values], [BatchFailed, BatchFailed])

    def test_full_batch_goes_at_once(self) -> None:
        """``max_items`` requests are sent without waiting for the turn to end."""
        for n in range(5):
            self.add("x", str(n))
        self.assertEqual(len(self.redis.calls), 1)
        self.assertEqual(len(self.redis.calls[0][2]), 1 + 4)
        self.assertEqual(self.batch.pending, 1)
        self.clock.advance(0)
        self.assertEqual(len(self.redis.calls), 2)
        self.assertEqual(self.redis.calls[1][2], ["H", "x\x004"])

    def test_octet_limit(self) -> None:
        """A batch of large arguments goes once ``max_octets`` is reached."""
        self.batch.max_octets = 10
        self.add("a" * 6, "1")
        self.assertEqual(self.redis.calls, [])
        self.add("b" * 6, "2")
        self.assertEqual(len(self.redis.calls), 1)

    def test_wrong_arity(self) -> None:
        """A request with the wrong number of arguments is a programming error."""
        self.assertRaises(ValueError, self.batch.add, ("a",))
        self.assertEqual(self.batch.pending, 0)
