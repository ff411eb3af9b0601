"""``msg-gone`` made reliable (cryptify/crs/pool/forward_gone.py, gone.py):
a lost ``msg-gone`` is sent again until ``msg-gone-ok``, across restarts
of either member; receipt is idempotent; the follow map of a copy handed to
a third member is durable; pending ``msg-gone`` expire with the message."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.messages.store import EXPIRE_AFTER, Stored
from cryptify.crs.pool.forward import FORWARD_TIMEOUT, SWEEP_INTERVAL
from cryptify.crs.pool.forward_core import (
    GONE,
    GONE_OK,
    MAX_GONE_OK_BATCH,
    decode_gone_ok,
    encode_gone_ok,
)
from cryptify.crs.pool.forward_gone import ACK_DELAY
from cryptify.crs.pool.gone import RESEND_FIRST, RESEND_MOST, GoneOutbox
from cryptify.crs.pool.origins import Gone, MemoryOrigins
from cryptify.crs.pool.wire import WireError
from tests.forward_support import Net, Node

NOW = 1_800_000_000.0
SENDER = "tel:+100"
U = "tel:+200"


class GoneTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.net = Net()
        self.confirmed: list[Stored] = []
        self.a = self.node("crs1")
        self.b = self.node("crs2")
        self.sender = self.a.attach(SENDER)

    def node(self, name: str) -> Node:
        node = Node(self.net, name, self.clock, self.confirmed)
        node.link.default = "crs1"
        node.link.set_owner(U, "crs2")
        node.store.known.update({SENDER, U})
        return node

    def twin(self) -> None:
        """crs1 forwards a post to crs2, which stores it and offers it to U;
        the answer is lost, so crs1 keeps a copy under the same ID."""
        self.u = self.b.attach(U)
        self.a.post(self.sender, 1, U, b"hello", b"k" * 16)
        self.net.deliver(1)
        self.net.lose()
        self.clock.advance(FORWARD_TIMEOUT)
        self.assertIn("crs1-1", self.a.store.messages)
        self.assertIn("crs1-1", self.b.store.messages)

    def flow(self) -> None:
        """Deliver every frame, the answers gathered for ACK_DELAY too."""
        self.net.deliver()
        self.clock.advance(ACK_DELAY)
        self.net.deliver()

    def sent(self, frame_type: str) -> list[tuple[str, str]]:
        return [(s, d) for s, d, f in self.net.queue if f.type == frame_type]

    def test_lost_gone_sent_again_until_acknowledged(self) -> None:
        """The msg-gone is lost: crs2 keeps it pending (durably) and sends
        it again after RESEND_FIRST; crs1 drops its twin and answers
        msg-gone-ok, and crs2 forgets it.  (crs1 has no owner for the slot
        meanwhile, so its sweep does not hand the twin over.)"""
        self.twin()
        self.a.link.set_owner(U, None)
        self.net.lose_next.add(GONE)
        self.b.confirm_all()
        self.flow()
        self.assertIn("crs1-1", self.a.store.messages)
        self.assertEqual(len(self.b.forwarder._gones), 1)
        self.assertEqual(len(self.b.origins.gones), 1)
        self.assertIn("; msg-gone pending 1)", self.b.forwarder.status())
        self.clock.advance(RESEND_FIRST)
        self.assertEqual(self.sent(GONE), [("crs2", "crs1")])
        self.flow()
        self.assertEqual(self.a.store.messages, {})
        self.assertEqual(self.a.forwarder.counters["gone"], 1)
        self.assertEqual(len(self.b.forwarder._gones), 0)
        self.assertEqual(len(self.b.origins.gones), 1)  # removed at the next tick
        self.clock.advance(SWEEP_INTERVAL)
        self.assertEqual(self.b.origins.gones, {})
        self.assertEqual((self.a.origins.entries, self.b.origins.entries), ({}, {}))

    def test_acknowledgement_lost_told_again_idempotent(self) -> None:
        """The msg-gone-ok is lost: crs2 sends the msg-gone again; crs1,
        with nothing left to drop, answers again; nothing counted twice."""
        self.twin()
        self.net.lose_next.add(GONE_OK)
        self.b.confirm_all()
        self.flow()
        self.assertEqual(self.a.store.messages, {})
        self.assertEqual(len(self.b.forwarder._gones), 1)
        self.clock.advance(RESEND_FIRST)
        self.flow()
        self.assertEqual(len(self.b.forwarder._gones), 0)
        self.assertEqual(self.a.forwarder.counters["gone"], 1)

    def test_teller_restarts_with_gone_pending(self) -> None:
        """crs2 restarts before crs1 answered: the pending msg-gone is read
        back from its store and sent when the link comes up."""
        self.twin()
        self.net.lose_next.add(GONE)
        self.b.confirm_all()
        self.b.restart()
        self.assertEqual(len(self.b.forwarder._gones), 1)
        for listener in self.b.link.listeners:
            listener("crs1", True)
        self.flow()
        self.assertEqual(self.a.store.messages, {})
        self.assertEqual(self.a.forwarder.counters["gone"], 1)
        self.assertEqual(len(self.b.origins.gones), 1)  # removed at the next tick
        self.clock.advance(SWEEP_INTERVAL)
        self.assertEqual(self.b.origins.gones, {})

    def test_told_while_its_store_is_out_of_reach(self) -> None:
        """crs1 cannot drop its twin now (its Redis out of reach): it does
        not answer; it restarts with its store back, and the msg-gone sent
        again drops the twin."""
        self.twin()
        self.a.link.set_owner(U, None)  # its sweep leaves the twin alone
        self.a.store.down = True
        self.b.confirm_all()
        self.flow()
        self.assertEqual(self.sent(GONE_OK), [])
        self.assertEqual(len(self.b.forwarder._gones), 1)
        self.a.store.down = False
        self.a.restart()
        self.clock.advance(RESEND_FIRST)
        self.flow()
        self.assertEqual(self.a.store.messages, {})
        self.assertEqual(self.a.forwarder.counters["gone"], 1)
        self.assertEqual(len(self.b.forwarder._gones), 0)

    def test_resent_less_and_less_often_and_expires(self) -> None:
        """A peer that never answers (an older member) is sent the msg-gone
        after 4, 8, 16 ... s, at most every RESEND_MOST, and at once when
        its link comes up; the entry expires with the message."""
        self.twin()
        self.net.lose_next.add(GONE)
        self.b.confirm_all()
        self.flow()
        self.a.link.handlers.pop(GONE_OK)  # crs2's answers are ignored
        self.b.link.handlers[GONE_OK] = lambda peer, fields: None
        times = []
        start = self.clock.seconds()
        for _ in range(int(600 / SWEEP_INTERVAL)):
            self.clock.advance(SWEEP_INTERVAL)
            if self.sent(GONE):
                times.append(self.clock.seconds() - start)
            self.net.deliver()
        gaps = [b - a for a, b in itertools.pairwise(times)]
        self.assertEqual(times[0], RESEND_FIRST)
        self.assertEqual(gaps[:3], [8.0, 16.0, 32.0])
        self.assertTrue(all(g <= RESEND_MOST + SWEEP_INTERVAL for g in gaps))
        self.assertEqual(max(gaps), RESEND_MOST)
        for listener in self.b.link.listeners:
            listener("crs1", True)
        self.assertEqual(self.sent(GONE), [("crs2", "crs1")])
        self.flow()
        self.clock.advance(EXPIRE_AFTER)
        self.assertEqual(len(self.b.forwarder._gones), 0)
        self.assertEqual(self.b.origins.gones, {})

    def test_copy_followed_to_a_third_member_across_a_restart(self) -> None:
        """crs1's twin is handed to crs3 (the slot moved); crs1 restarts
        (its memory gone, its store kept): crs2's msg-gone still reaches
        crs3 through crs1's durable follow entry, and that msg-gone too is
        sent again when lost."""
        c = self.node("crs3")
        self.twin()
        for node in (self.a, c):
            node.link.set_owner(U, "crs3")
        self.flow()
        self.assertIn("crs1-1", c.store.messages)
        self.assertEqual(list(self.a.origins.follows), ["crs1-1"])
        self.a.restart()
        self.net.lose_next.add(GONE)  # crs2's
        self.b.confirm_all()
        self.flow()
        self.clock.advance(RESEND_FIRST)
        self.net.lose_next.add(GONE)  # crs1's, passed on to crs3
        self.flow()
        self.assertIn("crs1-1", c.store.messages)
        self.assertEqual(len(self.a.forwarder._gones), 1)
        self.assertEqual(self.a.origins.follows, {})
        self.a.restart()  # with the pass-on pending
        for listener in self.a.link.listeners:
            listener("crs3", True)
        self.flow()
        self.assertEqual(c.store.messages, {})
        self.assertEqual(c.forwarder.counters["gone"], 1)
        self.assertEqual(len(self.a.forwarder._gones), 0)
        self.assertEqual(len(self.b.forwarder._gones), 0)
        later = c.attach(U)
        self.assertEqual(later.of("message"), [])
        self.assertEqual([m.id for m in self.confirmed], ["crs1-1"])

    def test_hand_off_without_answer_is_a_twin(self) -> None:
        """A hand-off whose answer is lost leaves a twin at crs1 too (crs2
        stored it): crs1 remembers crs2 as its origin, so crs2's
        confirmation drops it."""
        self.net.set_link("crs1", "crs2", False)
        self.a.post(self.sender, 1, U, b"kept", b"k" * 16)
        self.net.set_link("crs1", "crs2", True)
        self.net.deliver(1)  # the hand-off, stored at crs2
        self.net.lose()
        self.clock.advance(FORWARD_TIMEOUT)
        self.assertIn("crs1-1", self.a.store.messages)
        self.assertEqual(self.a.origins.entries, {"crs1-1": "crs2"})
        self.b.attach(U)
        self.b.confirm_all()
        self.flow()
        self.assertEqual(self.a.store.messages, {})


class OutboxTests(SynchronousTestCase):
    def test_store_out_of_reach_kept_in_memory(self) -> None:
        """A msg-gone the store refuses is still pending in memory; an
        outbox whose store could not be read reads it at the next due()."""

        class Down(MemoryOrigins):
            down = True

            async def add_gones(
                self, gones: list[Gone], message_id: str, origin: bool, follow: bool
            ) -> None:
                if self.down:
                    raise ConnectionError("redis_low: not connected")
                await super().add_gones(gones, message_id, origin, follow)

            async def pending_gones(self, now: float) -> list[Gone]:
                if self.down:
                    raise ConnectionError("redis_low: not connected")
                return await super().pending_gones(now)

        store = Down()
        outbox = GoneOutbox(store)
        [gone] = self.successResultOf(outbox.add(["crs2"], "m1", U, NOW))
        self.assertEqual(len(outbox), 1)
        self.assertEqual(store.gones, {})
        self.assertFalse(outbox.loaded)
        store.gones[gone.member()] = Gone("crs3", "m2", U, NOW + 10)
        store.down = False
        outbox.due(NOW)
        self.assertTrue(outbox.loaded)
        self.assertTrue(outbox.pending("m2"))
        self.assertEqual(outbox.due(NOW + 11), [gone])  # m2 expired


class GoneOkFrameTests(SynchronousTestCase):
    def test_round_trip_and_refusals(self) -> None:
        ids = [f"crs1-{n}" for n in range(MAX_GONE_OK_BATCH)]
        self.assertEqual(decode_gone_ok(encode_gone_ok(ids)), ids)
        with self.assertRaises(ValueError):
            encode_gone_ok([])
        for fields in (
            {"ids": [""]},
            {"ids": ["a b"]},
            {"ids": ["m"], "x": 1},
            {},
            {"ids": [3]},
            {"ids": "m1"},
            {"ids": []},
            {"ids": ["m"] * (MAX_GONE_OK_BATCH + 1)},
            {"id": "m1"},
        ):
            with self.assertRaises(WireError):
                decode_gone_ok(fields)  # type: ignore[arg-type]

    @given(
        st.dictionaries(
            st.sampled_from(["ids", "id", "x"]),
            st.none()
            | st.integers()
            | st.text(max_size=70)
            | st.lists(st.none() | st.text(max_size=70) | st.integers(), max_size=300),
        )
    )
    @settings(max_examples=200)
    def test_hostile_fields(self, fields: dict[str, object]) -> None:
        try:
            decode_gone_ok(fields)
        except WireError:
            pass

    def test_member_parse(self) -> None:
        gone = Gone("crs2", "m1", U, NOW)
        self.assertEqual(Gone.parse(gone.member(), NOW), gone)
        for member in ("", "a b", "a  b", "a b c d"):
            self.assertIsNone(Gone.parse(member, NOW))
