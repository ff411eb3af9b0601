"""Pool-wide operator changes, sans-IO: the change encoding and its
refusals, the log records, causal application, last-writer-wins, and a
state machine of instances making changes over links that drop, with
restarts and crashes, that converge once healed."""

from __future__ import annotations

import functools
import zlib

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.pool.changes_core import (
    ACCOUNT_KINDS,
    Change,
    Kind,
    Report,
    Verdict,
    decode_records,
    encode_record,
    outcome,
)
from cryptify.crs.pool.changes_frames import (
    CHUNK,
    MAX_PARTS,
    SNAPSHOT_FRAME,
    Assembly,
    change_frames,
    check_marks_frame,
    check_part,
    check_purge,
    check_purged,
    check_wakeup,
    check_woken,
)
from cryptify.crs.pool.changes_replica import Peers, Replica
from cryptify.crs.pool.changes_snapshot import Snapshot, covered
from cryptify.crs.pool.wire import WireError
from cryptify.protocols import cbor_subset

SECRET = "c2VjcmV0"


def create(replica: Replica, account: str, secret: str = SECRET, at: int = 1000) -> Change:
    change = replica.make(Kind.ACCOUNT_CREATE, {"account": account, "secret": secret}, at)
    replica.commit(change)
    return change


class ChangeEncodingTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """A change decodes to itself, binary arguments included."""
        r = Replica("crs1", 7)
        create(r, "acme")
        change = r.make(Kind.APPLY, {"data": b"\x00update"}, 5)
        self.assertEqual(Change.decode(change.encode()), change)
        self.assertEqual(change.origin, "crs1:7")
        self.assertEqual(change.seq, 2)
        self.assertEqual(dict(change.deps), {"crs1:7": 1})

    def test_describe_hides_secrets(self) -> None:
        """crs.log sees the kind and names, never a secret, key or file."""
        r = Replica("crs1", 7)
        text = create(r, "acme", "dG9wc2VjcmV0").describe()
        self.assertIn("account=acme", text)
        self.assertNotIn("dG9wc2VjcmV0", text)
        text = r.make(Kind.ADMIN_CREATE, {"name": "al", "key": b"k" * 32}, 1).describe()
        self.assertNotIn("kkkk", text)

    def test_refusals(self) -> None:
        """Each malformed change is refused with its reason."""
        good = {
            "o": "crs1:7",
            "s": 1,
            "at": 5,
            "d": {},
            "k": "account-delete",
            "a": {"account": "acme"},
        }
        cases = [
            ({"o": "crs1"}, "NAME:LOGID"),
            ({"o": "crs 1:7"}, "printable"),
            ({"o": "crs1:x"}, "decimal"),
            ({"s": 0}, "seq"),
            ({"at": -1}, "at"),
            ({"k": "format-disk"}, "unknown change kind"),
            ({"a": {"account": "acme", "more": "x"}}, "needs the arguments"),
            ({"a": {"account": b"acme"}}, "is not str"),
            ({"a": {"account": "a" * 5000}}, "longer than"),
            ({"d": {"crs2:1": 0}}, "seq"),
            ({"s": 3}, "previous change"),
            ({"d": {f"c{i}:1": 1 for i in range(300)}}, "at most"),
        ]
        for override, why in cases:
            with self.subTest(override=override):
                with self.assertRaises(WireError) as caught:
                    Change.decode(cbor_subset.encode({**good, **override}))
                self.assertIn(why, str(caught.exception))
        with self.assertRaises(WireError):
            Change.decode(b"\xff")
        with self.assertRaises(WireError):
            Change.decode(cbor_subset.encode([1, 2]))

    def test_make_checks_arguments(self) -> None:
        """A change this instance could not send is refused when made."""
        with self.assertRaises(WireError):
            Replica("crs1", 1).make(Kind.ACCOUNT_CREATE, {"account": "acme"}, 1)

    @given(st.binary(max_size=300))
    def test_hostile_octets(self, data: bytes) -> None:
        """Any octets: a change that re-encodes to them, or WireError."""
        try:
            change = Change.decode(data)
        except WireError:
            return
        self.assertEqual(change.encode(), data)

    @given(st.data())
    def test_mutated_changes(self, data: st.DataObject) -> None:
        """A valid change with octets flipped, cut or added: WireError or a change."""
        r = Replica("crs1", 3)
        create(r, "acme")
        raw = bytearray(
            r.make(Kind.BLACKLIST_ADD, {"account": "acme", "uri": "tel:+1"}, 9).encode()
        )
        for _ in range(data.draw(st.integers(1, 4))):
            where = data.draw(st.integers(0, len(raw) - 1))
            raw[where] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(raw)))
        try:
            Change.decode(bytes(raw[:cut]))
        except WireError:
            pass

    @given(
        st.dictionaries(
            st.sampled_from(
                ["o", "s", "part", "parts", "data", "hw", "again", "id", "account", "uri", "result"]
            ),
            st.one_of(
                st.integers(-5, 2**64),
                st.text(max_size=10),
                st.binary(max_size=10),
                st.none(),
                st.booleans(),
                st.dictionaries(st.text(max_size=5), st.integers(-2, 5), max_size=3),
            ),
        )
    )
    def test_hostile_frames(self, fields: dict[str, object]) -> None:
        """The frames' checkers answer any fields with a value or WireError."""
        checks = (check_part, check_marks_frame, check_purge, check_purged)
        snapshot_part = functools.partial(check_part, frame_type=SNAPSHOT_FRAME)
        for check in (*checks, check_wakeup, check_woken, snapshot_part):
            try:
                check(fields)
            except WireError:
                pass


class FrameTests(SynchronousTestCase):
    def test_big_change_in_parts(self) -> None:
        """A change larger than a frame goes in parts and is joined again."""
        data = bytes(range(256)) * 1000
        frames = change_frames(("crs1:1", 4), data)
        self.assertEqual(len(frames), -(-len(data) // CHUNK))
        assembly = Assembly()
        got = [assembly.feed(check_part(f)) for f in frames]
        self.assertEqual(got[:-1], [None] * (len(frames) - 1))
        self.assertEqual(got[-1], data)

    def test_parts_out_of_order_dropped(self) -> None:
        """A part that does not follow drops what was held (no error)."""
        frames = change_frames(("crs1:1", 4), b"x" * (CHUNK * 2 + 1))
        assembly = Assembly()
        self.assertIsNone(assembly.feed(check_part(frames[0])))
        self.assertIsNone(assembly.feed(check_part(frames[2])))
        self.assertIsNone(assembly.feed(check_part(frames[1])))
        got = [assembly.feed(check_part(f)) for f in frames]
        self.assertEqual(got[-1], b"x" * (CHUNK * 2 + 1))

    def test_part_limits(self) -> None:
        base = {"o": "crs1:1", "s": 1, "part": 0, "parts": 1, "data": b""}
        for override in (
            {"parts": MAX_PARTS + 1},
            {"part": 1},
            {"data": b"x" * (CHUNK + 1)},
            {"data": "text"},
            {"extra": 1},
        ):
            with self.subTest(override=override), self.assertRaises(WireError):
                check_part({**base, **override})

    def test_report_text(self) -> None:
        report = Report(("crs1", "crs2"), (("crs3", "down"),))
        self.assertEqual(report.text(), "applied on crs1 crs2; pending on crs3 (down)")
        self.assertEqual(Report(("crs1",)).text("purged on"), "purged on crs1")


class RecordTests(SynchronousTestCase):
    def test_torn_tail_left_out(self) -> None:
        """A record cut by a crash, or garbage after the last record, is left out."""
        one, two = encode_record(b"first"), encode_record(b"second")
        self.assertEqual(decode_records(one + two), ([b"first", b"second"], len(one + two)))
        for cut in range(1, len(two)):
            self.assertEqual(decode_records(one + two[:cut]), ([b"first"], len(one)))
        bad = two[:8] + b"X" + two[9:]
        self.assertEqual(decode_records(one + bad), ([b"first"], len(one)))
        self.assertEqual(zlib.crc32(b"first"), int.from_bytes(one[4:8], "big"))


class ReplicaTests(SynchronousTestCase):
    def test_order_per_origin_and_dependencies(self) -> None:
        """A change waits for its origin's earlier ones and its deps; twice is a duplicate."""
        a, b, c = Replica("crs1", 1), Replica("crs2", 1), Replica("crs3", 1)
        first = create(a, "acme")
        second = a.make(Kind.BLACKLIST_ADD, {"account": "acme", "uri": "tel:+1"}, 2000)
        a.commit(second)
        self.assertIs(b.verdict(second), Verdict.WAIT)
        self.assertIs(b.verdict(first), Verdict.APPLY)
        b.commit(first)
        # crs2 acts after seeing crs1's change: crs3 must see crs1's first
        third = b.make(Kind.BLACKLIST_REMOVE, {"account": "acme", "uri": "tel:+1"}, 3000)
        b.commit(third)
        self.assertIs(c.verdict(third), Verdict.WAIT)
        c.commit(first)
        self.assertIs(c.verdict(third), Verdict.APPLY)
        self.assertIs(c.verdict(first), Verdict.DUPLICATE)
        with self.assertRaises(ValueError):
            c.commit(first)

    def test_hybrid_clock(self) -> None:
        """A change made after seeing another has a higher stamp, whatever the clock says."""
        a, b = Replica("crs1", 1), Replica("crs2", 1)
        made = create(a, "acme", at=10_000)
        b.commit(made)
        later = b.make(Kind.ACCOUNT_DELETE, {"account": "acme"}, 5)
        self.assertGreater(later.stamp, made.stamp)

    def test_last_writer_wins_either_order(self) -> None:
        """Concurrent create and delete: the higher stamp wins on every instance."""
        a, b = Replica("crs1", 1), Replica("crs2", 1)
        base = create(a, "acme", at=100)
        b.commit(base)
        gone = a.make(Kind.ACCOUNT_DELETE, {"account": "acme"}, 500)
        again = b.make(Kind.ACCOUNT_CREATE, {"account": "acme", "secret": "bmV3"}, 400)
        a.commit(gone)
        b.commit(again)
        a.commit(again)
        b.commit(gone)
        for r in (a, b):
            self.assertIs(r.account_plan("acme").present, False)

    def test_blacklist_of_an_earlier_account_does_not_count(self) -> None:
        a = Replica("crs1", 1)
        create(a, "acme", at=100)
        a.commit(a.make(Kind.BLACKLIST_ADD, {"account": "acme", "uri": "tel:+1"}, 200))
        a.commit(a.make(Kind.ACCOUNT_DELETE, {"account": "acme"}, 300))
        create(a, "acme", at=400)
        plan = a.account_plan("acme")
        self.assertEqual(plan.listed, frozenset())
        self.assertEqual(outcome(plan, None), (SECRET, frozenset()))

    def test_outcome_of_an_account_the_pool_never_named(self) -> None:
        """A pre-existing account is kept; named blacklist entries change it."""
        a = Replica("crs1", 1)
        a.commit(a.make(Kind.BLACKLIST_ADD, {"account": "old", "uri": "tel:+1"}, 1))
        plan = a.account_plan("old")
        self.assertIsNone(plan.present)
        self.assertEqual(
            outcome(plan, ("c2Vj", frozenset({"tel:+2"}))),
            ("c2Vj", frozenset({"tel:+1", "tel:+2"})),
        )
        self.assertIsNone(outcome(plan, None))

    def test_peers_send_what_is_missing(self) -> None:
        """A peer's marks say what to send it; resync sends again what it never confirmed."""
        a = Replica("crs1", 1)
        peers = Peers(a)
        peers.up("crs2")
        one = create(a, "acme")
        self.assertEqual(peers.new(), {"crs2": [one]})
        self.assertEqual(peers.new(), {})
        self.assertEqual(peers.marks("crs2", {}), [])
        self.assertEqual(peers.resync(), {"crs2": [one]})
        self.assertEqual(peers.marks("crs2", {}, again=True), [one])
        self.assertEqual(peers.marks("crs2", {"crs1:1": 1}), [])
        self.assertTrue(peers.has("crs2", one.id))
        self.assertEqual(peers.resync(), {})
        peers.down("crs2")
        two = create(a, "other")
        self.assertEqual(peers.new(), {})
        peers.up("crs2")
        self.assertEqual(peers.new(), {"crs2": [two]})


class SnapshotTests(SynchronousTestCase):
    def pool(self) -> tuple[Replica, Replica]:
        """Two replicas with the same five changes (two of them losers)."""
        a, b = Replica("crs1", 1), Replica("crs2", 1)
        made = [
            create(a, "acme", at=100),
            a.make(Kind.BLACKLIST_ADD, {"account": "acme", "uri": "tel:+1"}, 200),
        ]
        a.commit(made[1])
        steps: list[tuple[Kind, dict[str, str | bytes], int]] = [
            (Kind.BLACKLIST_REMOVE, {"account": "acme", "uri": "tel:+1"}, 300),
            (Kind.ADMIN_CREATE, {"name": "alice", "key": b"k" * 32}, 400),
            (Kind.IW_ADD, {"ip": "192.0.2.7", "secret": "c2Vj", "comment": ""}, 500),
        ]
        for kind, args, at in steps:
            change = a.make(kind, args, at)
            a.commit(change)
            made.append(change)
        for change in made:
            b.commit(change)
        return a, b

    def test_compact_keeps_the_winners(self) -> None:
        """What every member applied folds into one winner per key; the
        registers and marks stay; a replica read back is the same."""
        a, _ = self.pool()
        plan = a.account_plan("acme")
        snapshot = a.compact({"crs1:1": 4})
        assert snapshot is not None
        self.assertEqual(snapshot.base, {"crs1:1": 4})
        self.assertEqual(
            [c.kind for c in snapshot.winners],
            [Kind.ACCOUNT_CREATE, Kind.BLACKLIST_REMOVE, Kind.ADMIN_CREATE],
        )
        self.assertEqual(a.after(snapshot), a.log[4:])
        a.fold(snapshot)
        self.assertEqual(len(a.log), 1)
        self.assertEqual(a.account_plan("acme"), plan)
        self.assertEqual(Snapshot.decode(snapshot.encode()), snapshot)
        again = Replica("crs1", 1, a.log, snapshot)
        self.assertEqual((again.hw, again.account_plan("acme")), (a.hw, plan))
        self.assertIsNone(a.compact({"crs1:1": 4}))
        # a second compaction folds into the first
        second = a.compact({"crs1:1": 5})
        assert second is not None
        self.assertEqual(len(second.winners), 4)

    def test_install_in_a_replica_that_lost_its_log(self) -> None:
        """A new log gets the snapshot: the winners it lacked are due, by
        stamp; the marks cover what was folded; a duplicate changes nothing."""
        a, _ = self.pool()
        snapshot = a.compact({"crs1:1": 5})
        assert snapshot is not None
        a.fold(snapshot)
        fresh = Replica("crs2", 2)
        own = fresh.make(Kind.ACCOUNT_CREATE, {"account": "new", "secret": SECRET}, 50)
        fresh.commit(own)
        self.assertTrue(fresh.lacks(snapshot))
        merged = fresh.merged(snapshot)
        due = fresh.install(snapshot)
        self.assertEqual(due, list(snapshot.winners))
        self.assertEqual(fresh.hw, {"crs1:1": 5, "crs2:2": 1})
        self.assertEqual(fresh.snapshot, merged)
        self.assertEqual(fresh.log, [own])
        self.assertEqual(fresh.account_plan("acme"), a.account_plan("acme"))
        self.assertFalse(fresh.lacks(snapshot))
        # the peer hands its own change on as before; the snapshot first to a third
        peers = Peers(fresh)
        peers.up("crs3")
        self.assertEqual(peers.marks("crs3", {}), [merged, own])
        self.assertEqual(peers.marks("crs3", {"crs1:1": 5, "crs2:2": 1}), [])

    def test_install_keeps_the_later_writer(self) -> None:
        """A key written here after the snapshot's winner keeps its value."""
        a, _ = self.pool()
        snapshot = a.compact({"crs1:1": 5})
        assert snapshot is not None
        other = Replica("crs3", 1)
        later = other.make(Kind.ACCOUNT_DELETE, {"account": "acme"}, 10_000)
        other.commit(later)
        due = other.install(snapshot)
        self.assertNotIn(Kind.ACCOUNT_CREATE, [c.kind for c in due])
        self.assertIs(other.account_plan("acme").present, False)

    def test_a_snapshot_of_this_log_never_made_is_refused(self) -> None:
        a, _ = self.pool()
        snapshot = a.compact({"crs1:1": 5})
        assert snapshot is not None
        with self.assertRaises(WireError):
            Replica("crs1", 1).install(snapshot)

    def test_floor_needs_every_member(self) -> None:
        a, _ = self.pool()
        peers = Peers(a)
        peers.marks("crs2", {"crs1:1": 5})
        self.assertIsNone(peers.floor(["crs2", "crs3"]))
        peers.marks("crs3", {"crs1:1": 3})
        self.assertEqual(peers.floor(["crs2", "crs3"]), {"crs1:1": 3})
        self.assertEqual(peers.foldable({"crs1:1": 3}), 3)

    def test_refusals(self) -> None:
        a, _ = self.pool()
        snapshot = a.compact({"crs1:1": 5})
        assert snapshot is not None
        data = snapshot.encode()
        records, _ = decode_records(data)
        header = cbor_subset.decode(records[0])
        for bad, why in (
            (data + b"x", "whole records"),
            (b"", "whole records"),
            (encode_record(b"\xff") + b"".join(encode_record(r) for r in records[1:]), "CBOR"),
            (
                encode_record(cbor_subset.encode({**header, "n": 1}))
                + b"".join(encode_record(r) for r in records[1:]),
                "number of its winners",
            ),
            (
                encode_record(cbor_subset.encode({**header, "hw": {"crs1:1": 1}}))
                + b"".join(encode_record(r) for r in records[1:]),
                "beyond its hw",
            ),
            (
                encode_record(cbor_subset.encode({**header, "n": len(records)}))
                + b"".join(encode_record(r) for r in [*records[1:], records[1]]),
                "two winners",
            ),
        ):
            with self.subTest(why=why):
                with self.assertRaises(WireError) as caught:
                    Snapshot.decode(bad)
                self.assertIn(why, str(caught.exception))

    @given(st.data())
    def test_hostile_snapshots(self, data: st.DataObject) -> None:
        """A snapshot with octets flipped, cut or added: WireError or a snapshot."""
        a, _ = self.pool()
        snapshot = a.compact({"crs1:1": 5})
        assert snapshot is not None
        raw = bytearray(snapshot.encode())
        for _ in range(data.draw(st.integers(1, 4))):
            where = data.draw(st.integers(0, len(raw) - 1))
            raw[where] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(raw)))
        try:
            Snapshot.decode(bytes(raw[:cut]) + data.draw(st.binary(max_size=8)))
        except WireError:
            pass


# -- the state machine -------------------------------------------------------

NAMES = ("crs1", "crs2", "crs3")
ACCOUNTS = ("a", "b")
URIS = ("tel:+1", "tel:+2")
SECRETS = ("c2Ex", "c2Iy")

Store = dict[str, tuple[str, frozenset[str]]]


class Instance:
    """One instance: a durable log (its snapshot and the changes after it,
    kept across restarts), its accounts (kept), and what is lost at a
    crash (the replica and peer state)."""

    def __init__(self, name: str, log_id: int) -> None:
        self.name = name
        self.log_id = log_id
        self.snapshot: bytes | None = None
        self.fresh = False
        self.durable: list[bytes] = []
        self.store: Store = {}
        self.clock = 0
        self.start()

    def start(self) -> None:
        snapshot = None if self.snapshot is None else Snapshot.decode(self.snapshot)
        changes = [Change.decode(d) for d in self.durable]
        self.replica = Replica(self.name, self.log_id, changes, snapshot)
        self.peers = Peers(self.replica)
        if self.replica.log:
            self.effect(self.replica.log[-1])
        elif snapshot is not None and self.fresh:
            for change in snapshot.winners:
                self.effect(change)

    def effect(self, change: Change) -> None:
        if change.kind in ACCOUNT_KINDS:
            account = change.text("account")
            want = outcome(self.replica.account_plan(account), self.store.get(account))
            if want is None:
                self.store.pop(account, None)
            else:
                self.store[account] = want

    def take(self, change: Change) -> None:
        """Log, commit, apply (the order of the wiring)."""
        self.durable.append(change.encode())
        self.fresh = False
        self.replica.commit(change)
        self.effect(change)

    def rewrite(self, snapshot: Snapshot, fresh: bool) -> None:
        """The atomic replace of the log by ``snapshot`` and what follows it."""
        self.snapshot = snapshot.encode()
        self.durable = [self.replica.encoded[c.id] for c in self.replica.after(snapshot)]
        self.fresh = fresh

    def compact(self, crash: bool) -> None:
        """Fold what every member reported; a crash before the rename
        leaves the old log."""
        floor = self.peers.floor(p for p in NAMES if p != self.name)
        if floor is None:
            return
        snapshot = self.replica.compact(floor)
        if snapshot is None:
            return
        if crash:
            self.start()
            return
        self.rewrite(snapshot, fresh=False)
        self.replica.fold(snapshot)

    def install(self, snapshot: Snapshot, crash: bool) -> None:
        """A peer's snapshot: durable first, then taken, then its effects
        (a crash between: the next start carries them out)."""
        self.rewrite(self.replica.merged(snapshot), fresh=True)
        if crash:
            self.start()
            return
        for change in self.replica.install(snapshot):
            self.effect(change)


class Convergence(RuleBasedStateMachine):
    """Random changes on random instances, links that drop (both ways),
    messages delayed or lost with their connection, restarts with the log
    kept, crashes between logging and applying, compactions (also cut by
    a crash) and instances that lose their log and accounts and catch up
    from a snapshot; once every link is up and the messages flow, every
    instance holds the same accounts and blacklists, those every change
    not lost with a wiped log says (last writer wins), and nothing
    committed is missing from a durable log."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes = {n: Instance(n, i + 1) for i, n in enumerate(NAMES)}
        self.next_log = 10
        self.up: set[frozenset[str]] = set()
        self.queues: dict[tuple[str, str], list[tuple[str, object, bool]]] = {
            (a, b): [] for a in NAMES for b in NAMES if a != b
        }
        #: Every change made and not lost with a wiped log.
        self.made: dict[tuple[str, int], Change] = {}
        self.compactions = 0
        for a in NAMES:
            for b in NAMES:
                if a < b:
                    self.connect(a, b)

    # plumbing
    def send(self, src: str, dst: str, what: str, payload: object, again: bool = False) -> None:
        if frozenset((src, dst)) in self.up:
            self.queues[(src, dst)].append((what, payload, again))

    def send_due(self, src: str, due: dict[str, list[Change | Snapshot]]) -> None:
        for peer, items in due.items():
            for item in items:
                if isinstance(item, Snapshot):
                    self.send(src, peer, "snapshot", item.encode())
                else:
                    self.send(src, peer, "change", item.encode())

    def send_marks(self, src: str, dst: str | None = None, again: bool = False) -> None:
        node = self.nodes[src]
        for peer in [dst] if dst else sorted(node.peers.live):
            self.send(src, peer, "marks", dict(node.replica.hw), again)

    def connect(self, a: str, b: str) -> None:
        self.up.add(frozenset((a, b)))
        for x, y in ((a, b), (b, a)):
            self.nodes[x].peers.up(y)
            self.send_marks(x, y)

    def disconnect(self, a: str, b: str) -> None:
        self.up.discard(frozenset((a, b)))
        for x, y in ((a, b), (b, a)):
            self.queues[(x, y)].clear()
            self.nodes[x].peers.down(y)

    def receive(
        self, src: str, dst: str, what: str, payload: object, again: bool, crash: bool = False
    ) -> None:
        node = self.nodes[dst]
        if what == "marks":
            assert isinstance(payload, dict)
            self.send_due(dst, {src: node.peers.marks(src, payload, again)})
            return
        assert isinstance(payload, bytes)
        if what == "snapshot":
            snapshot = Snapshot.decode(payload)
            if node.replica.lacks(snapshot):
                node.install(snapshot, crash)
                if crash:
                    self.reconnect(dst)
                    return
            self.send_marks(dst)
            return
        change = Change.decode(payload)
        verdict = node.replica.verdict(change)
        if verdict is Verdict.APPLY:
            node.take(change)
            self.send_marks(dst)
        else:
            self.send_marks(dst, src, again=verdict is Verdict.WAIT)

    def reconnect(self, name: str) -> None:
        """``name`` restarted: its links go down and come back."""
        peers = [p for p in NAMES if p != name and frozenset((name, p)) in self.up]
        for peer in peers:
            self.disconnect(name, peer)
        self.nodes[name].start()
        for peer in peers:
            self.connect(name, peer)

    # rules
    @rule(
        name=st.sampled_from(NAMES),
        kind=st.sampled_from(
            [Kind.ACCOUNT_CREATE, Kind.ACCOUNT_DELETE, Kind.BLACKLIST_ADD, Kind.BLACKLIST_REMOVE]
        ),
        account=st.sampled_from(ACCOUNTS),
        uri=st.sampled_from(URIS),
        secret=st.sampled_from(SECRETS),
        tick=st.integers(0, 50),
    )
    def command(
        self, name: str, kind: Kind, account: str, uri: str, secret: str, tick: int
    ) -> None:
        """An operator command, checked against this instance's accounts as
        crs-cli is (one it would refuse becomes one it takes)."""
        node = self.nodes[name]
        node.clock += tick
        have = node.store.get(account)
        if have is None:
            kind = Kind.ACCOUNT_CREATE
        elif kind is Kind.ACCOUNT_CREATE:
            kind = Kind.ACCOUNT_DELETE
        elif kind is Kind.BLACKLIST_REMOVE and uri not in have[1]:
            kind = Kind.BLACKLIST_ADD
        args: dict[str, str | bytes] = {"account": account}
        if kind is Kind.ACCOUNT_CREATE:
            args["secret"] = secret
        elif kind is not Kind.ACCOUNT_DELETE:
            args["uri"] = uri
        change = node.replica.make(kind, args, node.clock)
        node.take(change)
        self.made[change.id] = change
        # what crs-cli is told was done is now done here and durable
        assert change.encode() in node.durable
        self.send_due(name, node.peers.new())
        self.send_marks(name)

    @rule(
        src=st.sampled_from(NAMES),
        dst=st.sampled_from(NAMES),
        count=st.integers(1, 5),
        crash=st.booleans(),
    )
    def deliver(self, src: str, dst: str, count: int, crash: bool) -> None:
        """Messages arrive; a snapshot may be cut by a crash after it was logged."""
        assume(src != dst)
        queue = self.queues[(src, dst)]
        for _ in range(min(count, len(queue))):
            if not queue:
                break
            self.receive(src, dst, *queue.pop(0), crash=crash)

    @rule(compact=st.booleans())
    def settle(self, compact: bool) -> None:
        """A quiet moment: every message in flight arrives (and the
        answers); then, maybe, every instance compacts its log."""
        for _ in range(20):
            if not any(self.queues.values()):
                break
            for (src, dst), queue in self.queues.items():
                while queue:
                    self.receive(src, dst, *queue.pop(0))
        if compact:
            for name in NAMES:
                self.compact(name, False)

    @rule(a=st.sampled_from(NAMES), b=st.sampled_from(NAMES))
    def cut(self, a: str, b: str) -> None:
        assume(a != b and frozenset((a, b)) in self.up)
        self.disconnect(a, b)

    @rule(a=st.sampled_from(NAMES), b=st.sampled_from(NAMES))
    def heal(self, a: str, b: str) -> None:
        assume(a != b and frozenset((a, b)) not in self.up)
        self.connect(a, b)

    @rule(name=st.sampled_from(NAMES))
    def resync(self, name: str) -> None:
        self.send_marks(name)
        self.send_due(name, self.nodes[name].peers.resync())

    @rule(name=st.sampled_from(NAMES), crash=st.sampled_from([False, False, True]))
    def compact(self, name: str, crash: bool) -> None:
        """Fold what every member reported applied (a crash may cut it)."""
        before = self.nodes[name].replica.snapshot
        self.nodes[name].compact(crash)
        if crash:
            self.reconnect(name)
        elif self.nodes[name].replica.snapshot is not before:
            self.compactions += 1

    @rule(name=st.sampled_from(NAMES), crash_mid=st.booleans(), account=st.sampled_from(ACCOUNTS))
    def restart(self, name: str, crash_mid: bool, account: str) -> None:
        """A restart with the log kept; optionally a crash after a change was
        logged but before it was applied (the restart applies it)."""
        node = self.nodes[name]
        if crash_mid and account not in node.store:
            change = node.replica.make(
                Kind.ACCOUNT_CREATE, {"account": account, "secret": SECRETS[0]}, node.clock
            )
            node.durable.append(change.encode())
            node.fresh = False
            self.made[change.id] = change
        self.reconnect(name)

    @rule(name=st.sampled_from(NAMES))
    def wipe(self, name: str) -> None:
        """``name`` loses its data (log and accounts) and starts a new log:
        what only it had is lost; the rest comes back, from a snapshot
        where the others folded it."""
        peers = [p for p in NAMES if p != name and frozenset((name, p)) in self.up]
        for peer in peers:
            self.disconnect(name, peer)
        others = [self.nodes[p].replica.hw for p in NAMES if p != name]
        self.made = {i: c for i, c in self.made.items() if any(covered(hw, i) for hw in others)}
        self.next_log += 1
        self.nodes[name] = Instance(name, self.next_log)
        for peer in peers:
            self.connect(name, peer)

    @invariant()
    def durable_is_committed(self) -> None:
        for node in self.nodes.values():
            assert [c.encode() for c in node.replica.log] == node.durable
            snapshot = None if node.snapshot is None else Snapshot.decode(node.snapshot)
            # what a restart would read is what the instance holds: no change lost
            again = Replica(
                node.name, node.log_id, [Change.decode(d) for d in node.durable], snapshot
            )
            assert again.hw == node.replica.hw
            assert again.base == node.replica.base
            assert {k: c.id for k, c in again.winners.items()} == {
                k: c.id for k, c in node.replica.winners.items()
            }

    def teardown(self) -> None:
        for a in NAMES:
            for b in NAMES:
                if a < b and frozenset((a, b)) not in self.up:
                    self.connect(a, b)
        for _ in range(200):
            moved = False
            for (src, dst), queue in self.queues.items():
                while queue:
                    moved = True
                    self.receive(src, dst, *queue.pop(0))
            if not moved:
                for name in NAMES:
                    self.resync(name)
                if not any(self.queues.values()):
                    break
        stores = [self.nodes[n].store for n in NAMES]
        marks = [self.nodes[n].replica.hw for n in NAMES]
        assert all(m == marks[0] for m in marks), marks
        assert all(s == stores[0] for s in stores), stores
        # the last writers of every change not lost
        truth = Replica("truth", 0)
        pending = sorted(self.made.values(), key=lambda c: c.stamp)
        while pending:
            ready = [c for c in pending if truth.verdict(c) is Verdict.APPLY]
            assert ready, pending
            for change in ready:
                if truth.verdict(change) is Verdict.APPLY:
                    truth.commit(change)
            pending = [c for c in pending if not covered(truth.hw, c.id)]
        expected: Store = {}
        for account in ACCOUNTS:
            want = outcome(truth.account_plan(account), None)
            if want is not None:
                expected[account] = want
        assert stores[0] == expected, (stores[0], expected)


class ConvergenceTests(SynchronousTestCase):
    def test_machine(self) -> None:
        """Changes on every side of cuts, restarts and crashes converge once healed."""
        run_state_machine_as_test(
            Convergence,
            settings=settings(
                max_examples=150,
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
            ),
        )
