"""Attaches that wait (parked) for their slot to get an owner in a pool."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.client.connection import ConnectionEnded
from cryptify.client.session import Attached, Moved, Refused
from cryptify.crs.attach.core import HANDOVER_RETRY_MS
from cryptify.crs.attach.parking import PARK_SECONDS, ParkingLot
from cryptify.crs.attach.wiring import Limits, UmsgServerFactory
from tests.umsg_support import World


class Owners:
    """A pool's slot owners as the attach sees them, changed by the test."""

    def __init__(self) -> None:
        self.owner_now: str | None = None
        self.heir: str | None = "crs3"

    def owner(self, slot: int) -> str | None:
        return self.owner_now

    def mine(self, slot: int) -> bool:
        return self.owner_now == "crs1"

    def standby(self, slot: int) -> str | None:
        return self.heir

    def address(self, host: str) -> str:
        return {"crs2": "192.0.2.7", "crs3": "192.0.2.8"}[host]


class ParkingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World.make()
        self.owners = Owners()
        self.world.core.slots = self.owners
        self.lot = ParkingLot(self.world.clock.seconds)
        self.world.core.parking = self.lot
        # A listener made after the lot, as the CRS makes them.
        self.world.factory = UmsgServerFactory(
            self.world.core, self.world.clock, Limits(max_handshakes=4)
        )
        self.firsts = 0

        def first() -> None:
            self.firsts += 1

        self.lot.on_first = first

    def pair(self, **kw: Any) -> Any:
        client, server, pump, events = self.world.pair(**kw)
        self.addCleanup(self._close, client, pump)
        return client, server, pump, events

    def _close(self, client: Any, pump: Any) -> None:
        if client.transport is not None and not client.transport.disconnecting:
            client.close("test over")
        pump.flush()

    def test_parked_then_attached_here(self) -> None:
        """No owner: the attach waits, answered nothing; once the slot is
        this instance's, the review attaches it (with the standby named)."""
        _, server, pump, events = self.pair()
        self.assertEqual(events, [])
        self.assertEqual((self.lot.count, self.firsts), (1, 1))
        self.owners.owner_now = "crs1"
        self.world.clock.advance(1)
        self.assertFalse(self.lot.review())
        pump.flush()
        self.assertIsInstance(events[0], Attached)
        self.assertEqual(events[0].standby, ("192.0.2.8", 5223))
        self.assertEqual(self.lot.count, 0)
        # Attached from the review, not from a message it sent: no longer
        # unattached, kept alive, and the attach-timeout sweep leaves it.
        factory = self.world.factory
        self.assertEqual(factory.pending, set())
        self.assertEqual(factory.live, {server})
        factory.sweep_attach()
        self.world.clock.advance(factory.limits.attach_timeout + 1)
        factory.sweep_attach()
        pump.flush()
        self.assertEqual(len(events), 1, events)

    def test_parked_then_moved(self) -> None:
        """The slot goes to another live instance: the parked attach is moved there."""
        _, _, pump, events = self.pair()
        self.owners.owner_now = "crs2"
        self.lot.review()
        pump.flush()
        self.assertEqual(events[0], Moved("crs2", "192.0.2.7", 5223))

    def test_waits_on_then_expires(self) -> None:
        """Still no owner at a review: it waits on, keeping its start; past
        PARK_SECONDS it is refused unavailable with the hand-over hint."""
        _, _, pump, events = self.pair()
        self.world.clock.advance(PARK_SECONDS - 1)
        self.assertTrue(self.lot.review())
        pump.flush()
        self.assertEqual(events, [])
        self.world.clock.advance(1)
        self.assertFalse(self.lot.review())
        pump.flush()
        [refused] = [e for e in events if isinstance(e, Refused)]
        self.assertEqual((refused.code, refused.retry_after), ("unavailable", HANDOVER_RETRY_MS))
        self.assertIsInstance(events[-1], ConnectionEnded)
        self.assertEqual(self.lot.expired_total, 1)

    def test_lost_while_parked(self) -> None:
        """A parked connection that ends leaves the lot at once."""
        client, _, pump, _ = self.pair()
        client.transport.loseConnection()
        pump.flush()
        self.assertEqual(self.lot.count, 0)
        self.assertFalse(self.lot.review())

    def test_full_lot_refuses(self) -> None:
        """With the lot full the attach is refused unavailable at once."""
        self.lot.limit = 1
        _, _, _, first = self.pair(port=1)
        _, _, pump, events = self.pair(uri="tel:+4612346", port=2)
        pump.flush()
        self.assertEqual(first, [])
        self.assertEqual([e.code for e in events if isinstance(e, Refused)], ["unavailable"])

    def test_parked_do_not_hold_the_listener(self) -> None:
        """Parked attaches are not in progress for admission control: more
        of them than max_handshakes leave the listener accepting."""

        class Port:
            numberAccepts = 100
            reading = True

            def stopReading(self) -> None:
                self.reading = False

            def startReading(self) -> None:
                self.reading = True

        port = Port()
        self.world.factory.listening(port)
        for i in range(6):
            self.pair(uri=f"tel:+46123{i:03d}", host=f"198.51.100.{i}")
        self.assertEqual(self.lot.count, 6)
        self.assertEqual(len(self.world.factory.pending), 6)
        self.assertTrue(port.reading)

    def test_message_while_parked(self) -> None:
        """A client that sends anything while its attach waits is refused."""
        from cryptify.protocols.umsg import message

        client, _, pump, events = self.pair()
        client.send(message("fetch", id=9))
        pump.flush()
        self.assertEqual([e.code for e in events if isinstance(e, Refused)], ["unexpected"])
        self.assertEqual(self.lot.count, 0)


class LotTests(SynchronousTestCase):
    """The lot alone, on any sequence of parks, drops and reviews."""

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from("pdrwo"), st.integers(0, 7)), max_size=60))
    def test_bookkeeping(self, steps: list[tuple[str, int]]) -> None:
        """Every session is in the lot exactly while it waits; none waits
        past PARK_SECONDS at a review; the count the admission sees is the
        lot's size."""
        from twisted.internet.task import Clock

        clock = Clock()
        lot = ParkingLot(clock.seconds, limit=5)

        class Session:
            def __init__(self) -> None:
                self.waiting = False
                self.since = 0.0
                self.owner = False

            @property
            def parked(self) -> bool:
                return self.waiting

            def resume(self, expired: bool) -> bool:
                assert self.waiting
                if self.owner or expired:
                    assert self.owner or clock.seconds() - self.since >= PARK_SECONDS
                    self.waiting = False
                    return False
                return True

        sessions = [Session() for _ in range(8)]
        for op, n in steps:
            s = sessions[n]
            if op == "p" and not s.waiting:
                s.owner = False
                if lot.park(s):
                    s.waiting, s.since = True, clock.seconds()
            elif op == "d" and s.waiting:
                s.waiting = False
                lot.drop(s)
            elif op == "r":
                lot.review()
            elif op == "w":
                clock.advance(n)
            elif op == "o":
                s.owner = True
            self.assertEqual({x for x in sessions if x.waiting}, {x for x in sessions if x in lot})
            self.assertLessEqual(lot.count, 5)


class ReviewedEveryTests(SynchronousTestCase):
    def test_ticks_while_some_wait(self) -> None:
        """A worker's lot is reviewed every second while attaches wait, and
        the ticking stops once none does."""
        from twisted.internet.task import Clock

        from cryptify.crs.attach.parking import reviewed_every

        clock = Clock()
        lot = ParkingLot(clock.seconds)
        reviewed_every(lot, clock)
        resumed: list[bool] = []

        class Waiting:
            parked = True

            def resume(self, expired: bool) -> bool:
                resumed.append(expired)
                return not expired

        self.assertEqual(clock.getDelayedCalls(), [])
        lot.park(Waiting())
        clock.advance(1)
        self.assertEqual(resumed, [False])
        clock.advance(PARK_SECONDS)
        self.assertEqual(resumed[-1], True)
        self.assertEqual(lot.count, 0)
        clock.advance(1)
        self.assertEqual(clock.getDelayedCalls(), [])
