"""The pool's membership and slot-ownership core, in memory."""

from __future__ import annotations

from collections import deque
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config.crs_model import CrsConfig, Pool, PoolHost
from cryptify.crs import slots
from cryptify.crs.pool.core import (
    BEATLESS_AT_MOST,
    CUT_DOWN_AFTER,
    DOWN_AFTER,
    HEARTBEAT_INTERVAL,
    JOIN_WAIT,
    LATE_AFTER,
    TRICKLE_SLOTS,
    Heartbeat,
    MapKey,
    Member,
    PoolConfig,
    PoolError,
    PoolMember,
    Reason,
    SlotMap,
)
from cryptify.crs.slots import SLOTS, slot_ranges


def pool_of(count: int) -> PoolConfig:
    return PoolConfig(tuple(Member(f"crs{i}", f"192.0.2.{i}") for i in range(1, count + 1)))


class Net:
    """A pool whose members hear each other directly (no losses)."""

    def __init__(self, count: int) -> None:
        self.config = pool_of(count)
        self.now = 0.0
        self.incarnations = 0
        self.members: dict[str, PoolMember | None] = {}
        self.silent: set[str] = set()
        self.maps: list[SlotMap] = []
        for name in self.config.names:
            self.start(name)

    def start(self, name: str) -> None:
        self.incarnations += 1
        self.members[name] = PoolMember(self.config, name, self.incarnations, self.now)

    def up(self) -> list[PoolMember]:
        return [m for m in self.members.values() if m is not None and m.me not in self.silent]

    def round(self) -> None:
        """Everyone up sends to everyone up, then a heartbeat interval
        passes and everyone ticks."""
        for sender in self.up():
            beat = sender.heartbeat(self.now)
            for receiver in self.up():
                if receiver is not sender:
                    receiver.receive(beat, self.now)
        self.now += HEARTBEAT_INTERVAL
        for member in self.up():
            member.tick(self.now)
        coordinator = self.up()[0].map
        if coordinator is not None and (not self.maps or self.maps[-1].key != coordinator.key):
            self.maps.append(coordinator)

    def settle(self, rounds: int = 200) -> SlotMap:
        for _ in range(rounds):
            self.round()
            keys = {m.map.key if m.map else None for m in self.up()}
            first = self.up()[0].map
            live = [m.me for m in self.up()]
            if len(keys) == 1 and first is not None and first.owners == self.config.target(live):
                return first
        raise AssertionError("the pool did not settle")


def settled(count: int) -> tuple[Net, PoolMember, float]:
    """A settled pool of ``count`` members, its crs1, and when crs1 last
    heard from crs2."""
    net = Net(count)
    net.settle()
    crs1 = net.members["crs1"]
    assert crs1 is not None
    heard = crs1.heard("crs2")
    assert heard is not None
    return net, crs1, heard


class SlotRangesTests(SynchronousTestCase):
    @given(st.sets(st.integers(0, SLOTS - 1), max_size=200))
    def test_runs_cover_the_slots(self, chosen: set[int]) -> None:
        """The runs of a map's owner (and of a worker's view) hold exactly
        the slots given, each run consecutive, a gap between two runs."""
        ranges = slot_ranges(sorted(chosen))
        self.assertEqual({s for a, b in ranges for s in range(a, b + 1)}, chosen)
        self.assertTrue(all(a <= b for a, b in ranges))
        self.assertTrue(all(b + 1 < c for (_, b), (c, _) in pairwise(ranges)))
        owners = tuple("crs1" if s in chosen else "crs2" for s in range(SLOTS))
        self.assertEqual(SlotMap(MapKey(1, "crs1", 1), owners).slots_of("crs1"), ranges)


class ConfigTests(SynchronousTestCase):
    def test_from_crs(self) -> None:
        """The members, in order, with their addresses, come from [POOL]."""
        crs = CrsConfig(
            pool=Pool((PoolHost("crs1", "203.0.113.101"), PoolHost("crs2", "203.0.113.102")))
        )
        config = PoolConfig.from_crs(crs)
        self.assertEqual(config.names, ("crs1", "crs2"))
        self.assertEqual(config.member("crs2").address, "203.0.113.102")

    def test_size_limits(self) -> None:
        """A pool needs at least two distinct members."""
        self.assertRaises(PoolError, PoolConfig, (Member("crs1", "a"),))
        self.assertRaises(PoolError, PoolConfig, (Member("crs1", "a"), Member("crs1", "b")))

    def test_home_split_matches_slotmap(self) -> None:
        """With everyone up, the split is today's SlotMap's, for 2 and 3."""
        for count in (2, 3):
            config = pool_of(count)
            old = slots.SlotMap(config.names, "crs1")
            target = config.target(config.names)
            for name, first, last in old.ranges():
                self.assertEqual(config.home_range(name), (first, last))
                self.assertEqual(set(target[first : last + 1]), {name})

    def test_dead_member_range_split_over_live(self) -> None:
        """A down member's home slots are cut evenly over the live ones;
        the live keep their own."""
        config = pool_of(3)
        target = config.target(["crs1", "crs3"])
        first, last = config.home_range("crs2")
        part = target[first : last + 1]
        self.assertLessEqual(abs(part.count("crs1") - part.count("crs3")), 1)
        self.assertEqual(set(target[: config.home_range("crs1")[1] + 1]), {"crs1"})


class FormationTests(SynchronousTestCase):
    def test_split_two_and_three(self) -> None:
        """A pool that starts together agrees on the home split, written by
        the first member, and the same twice over (deterministic)."""
        for count in (2, 3):
            first = Net(count).settle()
            second = Net(count).settle()
            self.assertEqual(first.owners, second.owners)
            self.assertEqual(first.key.author, "crs1")
            self.assertEqual(first.owners, pool_of(count).target(pool_of(count).names))

    def test_claims_nothing_before_join_wait(self) -> None:
        """A member alone claims nothing until JOIN_WAIT has passed."""
        member = PoolMember(pool_of(2), "crs2", 1, 0.0)
        member.tick(JOIN_WAIT / 2)
        self.assertIsNone(member.map)
        self.assertIsNone(member.owner_of("tel:+4670000001"))
        change = member.tick(JOIN_WAIT)
        assert change is not None
        self.assertEqual(change.reason, Reason.FORMED)
        self.assertTrue(all(member.claims(s) for s in range(0, SLOTS, 97)))

    def test_owner_and_moved(self) -> None:
        """owner_of uses today's slot_of; moved_to is the owner's address,
        None for one's own slots."""
        net = Net(2)
        net.settle()
        crs1 = net.members["crs1"]
        assert crs1 is not None
        for uri in ("tel:+4670000001", "tel:+4670000002", "tel:+4670000003", "tel:+4670000004"):
            owner = "crs1" if slots.slot_of(uri) < SLOTS // 2 else "crs2"
            self.assertEqual(crs1.owner_of(uri), owner)
            self.assertEqual(crs1.moved_to(uri), None if owner == "crs1" else "192.0.2.2")


class EpochTests(SynchronousTestCase):
    def make_map(self, epoch: int, author: str, owner: str) -> SlotMap:
        return SlotMap(MapKey(epoch, author, 1), (owner,) * SLOTS)

    def test_adopts_only_higher(self) -> None:
        """A higher epoch is adopted; a lower one is ignored; a tie goes to
        the greater author name."""
        member = PoolMember(pool_of(3), "crs3", 1, 0.0)
        member.receive(Heartbeat("crs1", self.make_map(5, "crs1", "crs1")), 0.0)
        member.receive(Heartbeat("crs2", self.make_map(4, "crs2", "crs2")), 0.0)
        self.assertEqual(member.owner_of("tel:+1"), "crs1")
        member.receive(Heartbeat("crs2", self.make_map(5, "crs2", "crs2")), 0.0)
        self.assertEqual(member.owner_of("tel:+1"), "crs2")

    def test_hostile_heartbeats(self) -> None:
        """A heartbeat from a stranger or from one's own name, or a map with
        strangers or the wrong size, is refused and changes nothing."""
        member = PoolMember(pool_of(2), "crs2", 1, 0.0)
        good = self.make_map(1, "crs1", "crs1")
        member.receive(Heartbeat("crs1", good), 0.0)
        bad = [
            Heartbeat("crs9", self.make_map(9, "crs1", "crs1")),
            Heartbeat("crs2", self.make_map(9, "crs1", "crs1")),
            Heartbeat("crs1", self.make_map(9, "crs1", "crs9")),
            Heartbeat("crs1", self.make_map(9, "crs9", "crs1")),
        ]
        for beat in bad:
            self.assertRaises(PoolError, member.receive, beat, 1.0)
        self.assertIs(member.map, good)
        self.assertRaises(PoolError, SlotMap, MapKey(1, "crs1", 1), ("crs1",) * (SLOTS - 1))


class FailoverTests(SynchronousTestCase):
    def test_takeover_when_silent(self) -> None:
        """When crs2 goes silent, crs1 (the coordinator) gives its slots to
        crs1 and crs3 once DOWN_AFTER has passed and crs3's next heartbeat
        has reported crs2 down too, in one map with a higher epoch; no other
        slot moves, crs3 adopts the map, and no slot is left to crs2."""
        net = Net(3)
        before = net.settle()
        heard_at = net.now - HEARTBEAT_INTERVAL
        net.silent = {"crs2"}
        while net.maps[-1] == before:
            net.round()
        self.assertGreaterEqual(net.now - heard_at, DOWN_AFTER)
        self.assertLessEqual(net.now - heard_at, DOWN_AFTER + HEARTBEAT_INTERVAL)
        after = net.settle(rounds=3)
        self.assertGreater(after.key.epoch, before.key.epoch)
        self.assertNotIn("crs2", set(after.owners))
        for slot, owner in enumerate(before.owners):
            if owner == "crs2":
                self.assertIn(after.owners[slot], ("crs1", "crs3"))
            else:
                self.assertEqual(after.owners[slot], owner)
        self.assertEqual(after.key.author, "crs1")
        crs3 = net.members["crs3"]
        assert crs3 is not None
        self.assertEqual(crs3.map, after)

    def test_heir_is_the_takeover_owner(self) -> None:
        """Each member's heir of a slot it owns (the standby it names to its
        clients) is the member the takeover gives the slot to when it dies,
        for every member of a 3-member pool; alone, a member has no heir."""
        for dying in ("crs1", "crs2", "crs3"):
            net = Net(3)
            before = net.settle()
            member = net.members[dying]
            assert member is not None
            heirs = {
                slot: member.heir(slot, net.now)
                for slot, owner in enumerate(before.owners)
                if owner == dying
            }
            net.silent = {dying}
            after = net.settle(rounds=8)
            for slot, heir in heirs.items():
                self.assertEqual(after.owners[slot], heir, (dying, slot))
        alone = Net(2)
        alone.settle()
        alone.silent = {"crs2"}
        alone.settle(rounds=8)
        crs1 = alone.members["crs1"]
        assert crs1 is not None
        self.assertIsNone(crs1.heir(0, alone.now))

    def test_first_member_dies(self) -> None:
        """When the coordinator dies, the next in order takes its slots."""
        net = Net(2)
        net.settle()
        net.silent = {"crs1"}
        after = net.settle(rounds=5)
        self.assertEqual(set(after.owners), {"crs2"})
        self.assertEqual(after.key.author, "crs2")

    def test_hand_back_trickles(self) -> None:
        """A returning member gets its slots back in steps of at most
        TRICKLE_SLOTS, each slot released (no owner) before it is given,
        so no slot passes straight from one owner to another."""
        for returning in ("crs1", "crs2"):
            net = Net(2)
            net.settle()
            net.silent = {returning}
            net.settle(rounds=5)
            net.silent = set()
            net.start(returning)
            net.maps = []
            final = net.settle()
            self.assertEqual(final.owners, net.config.target(net.config.names))
            steps = 0
            for old, new in zip(net.maps, net.maps[1:]):
                given = [s for s in range(SLOTS) if new.owners[s] == returning != old.owners[s]]
                self.assertLessEqual(len(given), TRICKLE_SLOTS)
                direct = [
                    s
                    for s in range(SLOTS)
                    if None not in (old.owners[s], new.owners[s]) and old.owners[s] != new.owners[s]
                ]
                self.assertEqual(direct, [])
                steps += bool(given)
            self.assertGreaterEqual(steps, (SLOTS // 2) // TRICKLE_SLOTS)

    def test_hand_back_waits_for_giver(self) -> None:
        """The coordinator gives released slots only after the giver has
        reported holding the map that released them."""
        net = Net(2)
        net.settle()
        net.silent = {"crs1"}
        net.settle(rounds=5)
        net.silent = set()
        net.start("crs1")
        crs1, crs2 = net.members["crs1"], net.members["crs2"]
        assert crs1 is not None and crs2 is not None
        crs1.receive(crs2.heartbeat(), net.now)
        crs2.receive(crs1.heartbeat(), net.now)
        net.now += HEARTBEAT_INTERVAL
        release = crs1.tick(net.now)
        assert release is not None and crs1.map is not None
        self.assertEqual(release.reason, Reason.HAND_BACK)
        released = crs1.map.owners.count(None)
        self.assertEqual(released, TRICKLE_SLOTS)
        self.assertEqual(crs1.map.owners.count("crs1"), 0)
        crs1.receive(crs2.heartbeat(), net.now)
        net.now += HEARTBEAT_INTERVAL
        self.assertIsNone(crs1.tick(net.now))
        self.assertEqual(crs1.map.owners.count("crs1"), 0)
        crs2.receive(crs1.heartbeat(), net.now)
        crs1.receive(crs2.heartbeat(), net.now)
        net.now += HEARTBEAT_INTERVAL
        self.assertIsNotNone(crs1.tick(net.now))
        self.assertEqual(crs1.map.owners.count("crs1"), TRICKLE_SLOTS)


class ConfirmationTests(SynchronousTestCase):
    """A takeover needs more than this member's own silence: a second
    member's report, or every connection to the owner closed."""

    def test_one_sided_silence_takes_nothing(self) -> None:
        """crs1 stops hearing crs2, whose connection stays open, while crs3
        still hears it: crs2 is late at crs1 but keeps its slots, and no
        hand-back step is written meanwhile; once crs3 misses it too, the
        takeover follows."""
        net = Net(3)
        before = net.settle()
        crs1, crs3 = net.members["crs1"], net.members["crs3"]
        assert crs1 is not None and crs3 is not None
        for _ in range(2 * int(DOWN_AFTER)):
            for sender in ("crs2", "crs3"):
                for receiver in ("crs1", "crs2", "crs3"):
                    if receiver != sender and (sender, receiver) != ("crs2", "crs1"):
                        member = net.members[receiver]
                        beater = net.members[sender]
                        assert member is not None and beater is not None
                        member.receive(beater.heartbeat(net.now), net.now)
            crs3.receive(crs1.heartbeat(net.now), net.now)
            net.now += HEARTBEAT_INTERVAL
            self.assertIsNone(crs1.tick(net.now))
        self.assertNotIn("crs2", crs1.live(net.now))
        self.assertTrue(crs1.late("crs2", net.now))
        self.assertEqual(crs1.map, before)
        net.silent = {"crs2"}
        after = net.settle(rounds=5)
        self.assertNotIn("crs2", set(after.owners))

    def test_closed_connections_confirm(self) -> None:
        """A peer whose connections all closed (a killed process) is taken
        over at DOWN_AFTER even though crs3 has not reported it yet."""
        _, crs1, heard = settled(3)
        crs1.disconnected("crs2", True)
        crs1.receive(Heartbeat("crs3", crs1.map), heard + DOWN_AFTER)  # crs3 sees crs2 live
        change = crs1.tick(heard + DOWN_AFTER)
        assert change is not None
        self.assertEqual((change.reason, change.down), (Reason.TAKEOVER, ("crs2",)))

    def test_closed_connections_take_over_sooner(self) -> None:
        """A peer whose connections all closed and stayed closed for
        CUT_DOWN_AFTER is down then, long before DOWN_AFTER of silence; a
        connection made again within it (a live peer dialling back) or a
        heartbeat keeps it live."""
        _, crs1, heard = settled(2)
        crs1.disconnected("crs2", True, heard + 0.1)
        self.assertIn("crs2", crs1.live(heard + 0.1 + CUT_DOWN_AFTER - 0.01))
        self.assertEqual(crs1.cut_since("crs2"), heard + 0.1)
        change = crs1.tick(heard + 0.11 + CUT_DOWN_AFTER)
        assert change is not None
        self.assertEqual((change.reason, change.down), (Reason.TAKEOVER, ("crs2",)))
        self.assertLess(CUT_DOWN_AFTER + 0.1, DOWN_AFTER)
        _, crs1, heard = settled(2)
        crs1.disconnected("crs2", True, heard)
        crs1.disconnected("crs2", False, heard + 0.5)
        self.assertIn("crs2", crs1.live(heard + 2.0))
        self.assertIsNone(crs1.cut_since("crs2"))

    def test_report_in_heartbeat(self) -> None:
        """A heartbeat names the members its sender sees down; a report of a
        stranger is refused."""
        net, crs1, heard = settled(3)
        self.assertEqual(crs1.heartbeat(net.now).down, frozenset())
        self.assertEqual(crs1.heartbeat(heard + DOWN_AFTER).down, {"crs2", "crs3"})
        stranger = Heartbeat("crs2", crs1.map, frozenset({"crs9"}))
        self.assertRaises(PoolError, crs1.receive, stranger, net.now)

    def test_late(self) -> None:
        """A peer is late LATE_AFTER after its last frame (plus this
        member's lag since), while it is down, and at once when its
        connections are closed; never oneself."""
        member = PoolMember(pool_of(2), "crs1", 1, 0.0)
        self.assertTrue(member.late("crs2", 0.0))
        member.receive(Heartbeat("crs2", None), 10.0)
        self.assertFalse(member.late("crs2", 10.0 + LATE_AFTER))
        self.assertTrue(member.late("crs2", 10.0 + LATE_AFTER + 0.01))
        member.lagged(1.0, 11.0)
        self.assertFalse(member.late("crs2", 10.0 + LATE_AFTER + 0.5))
        self.assertTrue(member.late("crs2", 10.0 + DOWN_AFTER + 1.0))
        self.assertFalse(member.late("crs1", 100.0))
        member.receive(Heartbeat("crs2", None), 20.0)
        member.disconnected("crs2", True)
        self.assertTrue(member.late("crs2", 20.0))
        member.receive(Heartbeat("crs2", None), 20.5)
        self.assertFalse(member.late("crs2", 20.5))


class LivenessTests(SynchronousTestCase):
    """A peer is judged on the frames that reached this member, not on
    frames that waited unread while this member's loop lagged."""

    def member(self) -> PoolMember:
        member = PoolMember(pool_of(2), "crs1", 1, 0.0)
        member.receive(Heartbeat("crs2", None), 10.0)
        return member

    def test_dead_peer_down_after_down_after(self) -> None:
        """Without lag, a silent peer is live until DOWN_AFTER after its last
        frame, and down from then on."""
        member = self.member()
        self.assertIn("crs2", member.live(10.0 + DOWN_AFTER - 0.01))
        self.assertNotIn("crs2", member.live(10.0 + DOWN_AFTER))

    def test_own_lag_extends_the_deadline(self) -> None:
        """A stall of this member's loop after the peer was heard extends the
        peer's deadline by the stall; a dead peer is down that much later."""
        member = self.member()
        member.lagged(5.0, 16.0)  # the loop could not read from 11 to 16
        self.assertEqual(member.grace("crs2"), 5.0)
        self.assertIn("crs2", member.live(16.0))
        self.assertIn("crs2", member.live(10.0 + DOWN_AFTER + 5.0 - 0.01))
        self.assertNotIn("crs2", member.live(10.0 + DOWN_AFTER + 5.0))

    def test_lag_before_the_last_frame_does_not_count(self) -> None:
        """Only the part of a stall after the peer's last frame counts, and a
        frame clears the allowance."""
        member = self.member()
        member.lagged(30.0, 11.0)  # a stall from -19 to 11: 1 s of it after the frame
        self.assertEqual(member.grace("crs2"), 1.0)
        member.lagged(0.5, 11.5)
        self.assertEqual(member.grace("crs2"), 1.0)
        member.receive(Heartbeat("crs2", None), 12.0)
        self.assertEqual(member.grace("crs2"), 0.0)
        self.assertNotIn("crs2", member.live(12.0 + DOWN_AFTER))

    def test_any_frame_counts(self) -> None:
        """A frame other than a heartbeat keeps the peer live (its map report
        is not touched), but without heartbeats only for BEATLESS_AT_MOST."""
        member = self.member()
        member.heard_from("crs2", 12.5)
        self.assertIn("crs2", member.live(12.5 + DOWN_AFTER - 0.01))
        self.assertEqual(member.heard("crs2"), 12.5)
        member.heard_from("crs2", 10.0 + BEATLESS_AT_MOST - 0.5)
        self.assertIn("crs2", member.live(10.0 + BEATLESS_AT_MOST - 0.01))
        self.assertNotIn("crs2", member.live(10.0 + BEATLESS_AT_MOST))

    def test_takeover_waits_for_own_lag_only(self) -> None:
        """The coordinator takes a dead peer's slots DOWN_AFTER plus its own
        stall after the last heartbeat, not before."""
        net, crs1, heard = settled(2)
        net.silent = {"crs2"}
        crs1.lagged(2.0, heard + 2.0)
        self.assertIsNone(crs1.tick(heard + DOWN_AFTER + 1.9))
        change = crs1.tick(heard + DOWN_AFTER + 2.0)
        assert change is not None
        self.assertEqual((change.reason, change.down), (Reason.TAKEOVER, ("crs2",)))


class PoolMachine(RuleBasedStateMachine):
    """2 or 3 members over a network that delays, drops, cuts and heals,
    with crashes and restarts."""

    def __init__(self) -> None:
        super().__init__()
        self.config: PoolConfig | None = None

    @precondition(lambda self: self.config is None)
    @rule(count=st.sampled_from([2, 3]))
    def setup(self, count: int) -> None:
        self.config = pool_of(count)
        self.now = 0.0
        self.incarnations = 0
        self.members: dict[str, PoolMember | None] = {}
        self.queues = {
            (a, b): deque[Heartbeat]()
            for a in self.config.names
            for b in self.config.names
            if a != b
        }
        self.cut: set[tuple[str, str]] = set()
        self.seen: dict[tuple[str, str], MapKey | None] = {}
        self.issued: dict[MapKey, tuple[str | None, ...]] = {}
        for name in self.config.names:
            self.start(name)

    def start(self, name: str) -> None:
        assert self.config is not None
        self.incarnations += 1
        self.members[name] = PoolMember(self.config, name, self.incarnations, self.now)
        for pair in list(self.seen):
            if name in pair:
                del self.seen[pair]

    def alive(self) -> list[PoolMember]:
        return [m for m in self.members.values() if m is not None]

    def names(self) -> st.SearchStrategy[str]:
        return st.sampled_from(["crs1", "crs2", "crs3"])

    def _send(self, member: PoolMember) -> None:
        beat = member.heartbeat(self.now)
        for (a, b), queue in self.queues.items():
            if a == member.me and (a, b) not in self.cut:
                queue.append(beat)

    @precondition(lambda self: self.config is not None)
    @rule(name=st.sampled_from(["crs1", "crs2", "crs3"]))
    def send(self, name: str) -> None:
        member = self.members.get(name)
        if member is not None:
            self._send(member)

    def _deliver(self, a: str, b: str) -> None:
        queue = self.queues.get((a, b))
        receiver = self.members.get(b)
        if not queue:
            return
        beat = queue.popleft()
        if receiver is not None:
            receiver.receive(beat, self.now)
            self.seen[(a, b)] = None if beat.map is None else beat.map.key

    @precondition(lambda self: self.config is not None)
    @rule(
        a=st.sampled_from(["crs1", "crs2", "crs3"]),
        b=st.sampled_from(["crs1", "crs2", "crs3"]),
        drop=st.booleans(),
    )
    def deliver(self, a: str, b: str, drop: bool) -> None:
        if drop:
            queue = self.queues.get((a, b))
            if queue:
                queue.popleft()
        else:
            self._deliver(a, b)

    @precondition(lambda self: self.config is not None)
    @rule(seconds=st.sampled_from([0.5, HEARTBEAT_INTERVAL, DOWN_AFTER]))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        for member in self.alive():
            member.tick(self.now)

    @precondition(lambda self: self.config is not None)
    @rule(
        name=st.sampled_from(["crs1", "crs2", "crs3"]),
        late=st.sampled_from([0.5, DOWN_AFTER, 2 * DOWN_AFTER]),
    )
    def lag(self, name: str, late: float) -> None:
        """A member's own loop ran late: it extends its peers' deadlines."""
        member = self.members.get(name)
        if member is not None:
            member.lagged(late, self.now)
            member.tick(self.now)

    @precondition(lambda self: self.config is not None)
    @rule(a=st.sampled_from(["crs1", "crs2", "crs3"]), b=st.sampled_from(["crs1", "crs2", "crs3"]))
    def partition(self, a: str, b: str) -> None:
        self.cut |= {(a, b), (b, a)}

    @precondition(lambda self: self.config is not None)
    @rule(a=st.sampled_from(["crs1", "crs2", "crs3"]), b=st.sampled_from(["crs1", "crs2", "crs3"]))
    def cut_one_way(self, a: str, b: str) -> None:
        self.cut.add((a, b))

    @precondition(lambda self: self.config is not None and len(self.alive()) > 1)
    @rule(name=st.sampled_from(["crs1", "crs2", "crs3"]), reset=st.booleans())
    def crash(self, name: str, reset: bool) -> None:
        if name in self.members and len(self.alive()) > 1:
            self.members[name] = None
            if reset:  # a killed process: its peers see their connections close
                for member in self.alive():
                    member.disconnected(name, True)
            for (a, b), queue in self.queues.items():
                if a == name:
                    queue.clear()

    @precondition(lambda self: self.config is not None)
    @rule(name=st.sampled_from(["crs1", "crs2", "crs3"]))
    def restart(self, name: str) -> None:
        if name in self.members and self.members[name] is None:
            self.start(name)

    @precondition(lambda self: self.config is not None)
    @rule()
    def heal_and_settle(self) -> None:
        """With every link healed, the live members end on one map that
        gives every slot to exactly one live member, the target split."""
        assert self.config is not None
        self.cut = set()
        live = [m.me for m in self.alive()]
        for _ in range(300):
            for member in self.alive():
                self._send(member)
            for a, b in list(self.queues):
                while self.queues[(a, b)]:
                    self._deliver(a, b)
            self.check_no_slot_claimed_twice()
            self.now += HEARTBEAT_INTERVAL
            for member in self.alive():
                member.tick(self.now)
            maps = {m.map.key if m.map else None for m in self.alive()}
            first = self.alive()[0].map
            if len(maps) == 1 and first is not None and first.owners == self.config.target(live):
                return
        raise AssertionError(f"no agreement after healing: {maps}")

    @invariant()
    def keys_are_unique(self) -> None:
        """No two different maps ever carry one key."""
        if self.config is None:
            return
        for member in self.alive():
            if member.map is not None:
                owners = self.issued.setdefault(member.map.key, member.map.owners)
                assert owners == member.map.owners, member.map.key

    @invariant()
    def check_no_slot_claimed_twice(self) -> None:
        """Two live members that have each received the other's current
        map never both claim a slot."""
        if self.config is None:
            return
        alive = self.alive()
        for x in alive:
            for y in alive:
                if x.me >= y.me or x.map is None or y.map is None:
                    continue
                if (
                    self.seen.get((x.me, y.me)) == x.map.key
                    and self.seen.get((y.me, x.me)) == y.map.key
                ):
                    both = [
                        s
                        for s in range(SLOTS)
                        if x.map.owners[s] == x.me and y.map.owners[s] == y.me
                    ]
                    assert not both, (x.me, y.me, both[:5])


class PoolMachineTests(SynchronousTestCase):
    def test_machine(self) -> None:
        """Random sends, losses, cuts, crashes and restarts never let two
        members that talk claim one slot, and healing always converges."""
        run_state_machine_as_test(
            PoolMachine, settings=settings(max_examples=40, stateful_step_count=30)
        )
