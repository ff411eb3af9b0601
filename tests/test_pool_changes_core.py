"""Pool-wide operator changes, sans-IO: the change encoding and its
refusals, the log records, causal application, last-writer-wins, and a
state machine of instances making changes over links that drop, with
restarts and crashes, that converge once healed."""

from __future__ import annotations

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
    CHUNK,
    MAX_PARTS,
    Assembly,
    Change,
    Kind,
    Peers,
    Replica,
    Report,
    Verdict,
    change_frames,
    check_marks_frame,
    check_part,
    check_purge,
    check_purged,
    check_wakeup,
    check_woken,
    decode_records,
    encode_record,
    outcome,
)
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
        for check in (*checks, check_wakeup, check_woken):
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


# -- the state machine -------------------------------------------------------

NAMES = ("crs1", "crs2", "crs3")
ACCOUNTS = ("a", "b")
URIS = ("tel:+1", "tel:+2")
SECRETS = ("c2Ex", "c2Iy")

Store = dict[str, tuple[str, frozenset[str]]]


class Instance:
    """One instance: a durable log (kept across restarts), its accounts
    (kept), and what is lost at a crash (the replica and peer state)."""

    def __init__(self, name: str, log_id: int) -> None:
        self.name = name
        self.log_id = log_id
        self.durable: list[bytes] = []
        self.store: Store = {}
        self.clock = 0
        self.start()

    def start(self) -> None:
        self.replica = Replica(self.name, self.log_id, [Change.decode(d) for d in self.durable])
        self.peers = Peers(self.replica)
        if self.replica.log:
            self.effect(self.replica.log[-1])

    def effect(self, change: Change) -> None:
        if change.kind in (
            Kind.ACCOUNT_CREATE,
            Kind.ACCOUNT_DELETE,
            Kind.BLACKLIST_ADD,
            Kind.BLACKLIST_REMOVE,
        ):
            account = change.text("account")
            want = outcome(self.replica.account_plan(account), self.store.get(account))
            if want is None:
                self.store.pop(account, None)
            else:
                self.store[account] = want

    def take(self, change: Change) -> None:
        """Log, commit, apply (the order of the wiring)."""
        self.durable.append(change.encode())
        self.replica.commit(change)
        self.effect(change)


class Convergence(RuleBasedStateMachine):
    """Random changes on random instances, links that drop (both ways),
    messages delayed or lost with their connection, restarts with the log
    kept, and crashes between logging and applying; once every link is up
    and the messages flow, every instance holds the same accounts and
    blacklists, and nothing committed is missing from a durable log."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes = {n: Instance(n, i + 1) for i, n in enumerate(NAMES)}
        self.up: set[frozenset[str]] = set()
        self.queues: dict[tuple[str, str], list[tuple[str, object, bool]]] = {
            (a, b): [] for a in NAMES for b in NAMES if a != b
        }
        for a in NAMES:
            for b in NAMES:
                if a < b:
                    self.connect(a, b)

    # plumbing
    def send(self, src: str, dst: str, what: str, payload: object, again: bool = False) -> None:
        if frozenset((src, dst)) in self.up:
            self.queues[(src, dst)].append((what, payload, again))

    def send_due(self, src: str, due: dict[str, list[Change]]) -> None:
        for peer, changes in due.items():
            for change in changes:
                self.send(src, peer, "change", change.encode())

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

    def receive(self, src: str, dst: str, what: str, payload: object, again: bool) -> None:
        node = self.nodes[dst]
        if what == "marks":
            assert isinstance(payload, dict)
            self.send_due(dst, {src: node.peers.marks(src, payload, again)})
            return
        assert isinstance(payload, bytes)
        change = Change.decode(payload)
        verdict = node.replica.verdict(change)
        if verdict is Verdict.APPLY:
            node.take(change)
            self.send_marks(dst)
        else:
            self.send_marks(dst, src, again=verdict is Verdict.WAIT)

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
        """An operator command, checked against this instance's accounts as crs-cli is."""
        node = self.nodes[name]
        node.clock += tick
        have = node.store.get(account)
        args: dict[str, str | bytes]
        if kind is Kind.ACCOUNT_CREATE:
            assume(have is None)
            args = {"account": account, "secret": secret}
        elif kind is Kind.ACCOUNT_DELETE:
            assume(have is not None)
            args = {"account": account}
        elif kind is Kind.BLACKLIST_ADD:
            assume(have is not None)
            args = {"account": account, "uri": uri}
        else:
            assume(have is not None and uri in have[1])
            args = {"account": account, "uri": uri}
        change = node.replica.make(kind, args, node.clock)
        node.take(change)
        # what crs-cli is told was done is now done here and durable
        assert change.encode() in node.durable
        self.send_due(name, node.peers.new())
        self.send_marks(name)

    @rule(src=st.sampled_from(NAMES), dst=st.sampled_from(NAMES), count=st.integers(1, 5))
    def deliver(self, src: str, dst: str, count: int) -> None:
        assume(src != dst)
        queue = self.queues[(src, dst)]
        for _ in range(min(count, len(queue))):
            self.receive(src, dst, *queue.pop(0))

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
        peers = [p for p in NAMES if p != name and frozenset((name, p)) in self.up]
        for peer in peers:
            self.disconnect(name, peer)
        node.start()
        for peer in peers:
            self.connect(name, peer)

    @invariant()
    def durable_is_committed(self) -> None:
        for node in self.nodes.values():
            assert [c.encode() for c in node.replica.log] == node.durable

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
