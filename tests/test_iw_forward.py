"""Messages between two operators in memory: which peer hosts which
account (``iw-accounts``, conflicts refused), posts with ``to-account``
stored at the peer before ``posted``, kept here while the peer is out of
reach and handed over once it is back, ``delivered`` back to the sender's
operator; and a state machine that posts both ways, cuts the link, loses
frames and restarts CRSs, and checks that ``posted`` is only said of a
message stored somewhere and that each is delivered exactly once."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.attach.registry import Attachment, AttachRegistry
from cryptify.crs.interwork.forward import HELD, IwForwarder, held_inbox, parse_held
from cryptify.crs.interwork.routes_core import (
    ACCOUNTS,
    MAX_ACCOUNTS,
    AccountRoutes,
    Conflict,
    decode_accounts,
    encode_accounts,
)
from cryptify.crs.messages.store import Stored
from cryptify.crs.messages.wiring import Messaging
from cryptify.crs.pool.forward import FORWARD_TIMEOUT, SWEEP_INTERVAL
from cryptify.crs.pool.wire import WireError
from cryptify.crs.trace import TraceHub
from cryptify.protocols.umsg import message
from tests.forward_support import Conn, FakeLink, Net, Node, RecordingStore

NOW = 1_800_000_000.0
A, B = "192.0.2.1", "198.51.100.7"
ALICE, BOB = "tel:+100", "tel:+200"


class IwFakeLink(FakeLink):
    """The inter-working link in memory: the pool's fake link, plus who
    runs each peer."""

    def __init__(self, net: Net, me: str, operators: dict[str, str]) -> None:
        super().__init__(net, me)
        self.operators = operators

    def operator(self, peer: str) -> str | None:
        return self.operators.get(peer)

    def configured(self) -> list[str]:
        return [p for p in self.operators if p != self.me]


class Operator:
    """One operator's CRS (a single instance): its store (kept across
    restarts, as Redis is), registry, Messaging and IwForwarder."""

    def __init__(
        self, net: Net, name: str, accounts: set[str], clock: Clock, confirmed: list[Stored]
    ) -> None:
        self.net, self.name, self.clock = net, name, clock
        self.accounts = accounts
        self.operators = {A: "op-a", B: "op-b"}
        self.store = RecordingStore(clock.seconds, confirmed, name)
        self.traces: list[str] = []
        self.ids = 0
        self.start()

    def start(self) -> None:
        link = IwFakeLink(self.net, self.name, self.operators)
        self.net.links[self.name] = link
        self.link = link
        trace = TraceHub(self.clock.seconds)
        trace.subscribe("message", self.traces.append)
        self.registry = AttachRegistry(self.name, self.clock.seconds, trace)
        self.messaging = Messaging(self.store, self.registry, trace, scheduler=self.clock)  # type: ignore[arg-type]
        self.registry.on_attach.append(self.messaging.attached)
        self.forwarder = IwForwarder(
            link,
            self.store,  # type: ignore[arg-type]
            self.messaging,
            self.clock,
            lambda: frozenset(self.accounts),
            new_id=self.new_id,
        )
        self.forwarder.startService()

    def new_id(self) -> str:
        self.ids += 1
        return f"{self.name}-{self.ids}"

    def crash(self) -> None:
        f = self.forwarder
        for pending in f._pending.values():
            if pending.timer.active():
                pending.timer.cancel()
        f._pending.clear()
        if f._loop.running:
            f._loop.stop()
        f.running = False
        for box in list(self.messaging.outboxes.values()):
            if box.retry is not None and box.retry.active():
                box.retry.cancel()
        for attachment in self.registry.matching():
            attachment.conn.disconnect("crash")
        del self.net.links[self.name]
        self.net.queue = [q for q in self.net.queue if self.name not in q[:2]]

    def restart(self) -> None:
        self.crash()
        self.start()

    def attach(self, uri: str) -> Conn:
        conn = Conn(uri, f"{self.name}:{uri}:{self.clock.seconds()}")
        self.registry.attach(
            Attachment(uri, "acme", self.clock.seconds(), "1", "192.0.2.1", 1, conn)
        )
        return conn

    def detach(self, uri: str) -> None:
        attachment = self.registry.get(uri)
        if attachment is not None:
            attachment.conn.disconnect("gone")
            self.registry.detach(uri, attachment.conn, "gone")

    def post(
        self,
        conn: Conn,
        request: int,
        to: str,
        content: bytes,
        key: bytes,
        to_account: str | None,
    ) -> None:
        fields: dict[str, Any] = {"to": to, "content": content, "key": key}
        if to_account is not None:
            fields["to-account"] = to_account
        self.messaging.post(conn, message("post", id=request, **fields))  # type: ignore[arg-type]

    def confirm_all(self) -> None:
        for attachment in self.registry.matching():
            conn = attachment.conn
            assert isinstance(conn, Conn)
            while conn.done < len(conn.of("message")):
                got = conn.of("message")[conn.done]
                conn.done += 1
                self.messaging.delivered(conn, message("delivered", message=got["message"]))  # type: ignore[arg-type]

    def held(self) -> list[Stored]:
        return [m for m in self.store.messages.values() if m.recipient.startswith(HELD)]


def states(op: Operator) -> list[tuple[str, str]]:
    """(state, account) of each trace line."""
    out = []
    for line in op.traces:
        parts = line.split(", ")
        out.append((parts[4], parts[5]))
    return out


class Two:
    """Operator A (account alpha, client ALICE) and operator B (account
    beta, client BOB), linked."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.net = Net()
        self.confirmed: list[Stored] = []
        self.a = Operator(self.net, A, {"alpha"}, self.clock, self.confirmed)
        self.b = Operator(self.net, B, {"beta"}, self.clock, self.confirmed)
        self.a.store.known.add(ALICE)
        self.b.store.known.add(BOB)
        self.net.cut.add(frozenset((A, B)))
        self.net.set_link(A, B, True)
        self.net.deliver()

    def stop(self) -> None:
        for op in (self.a, self.b):
            if op.forwarder.running:
                op.forwarder.stopService()


class RoutesTests(SynchronousTestCase):
    def test_one_operator_pool_routes(self) -> None:
        """Two instances of one operator (one secret) both hosting an
        account both take its messages."""
        routes = AccountRoutes(local=frozenset({"alpha"}))
        self.assertEqual(routes.claim("p1", "op", frozenset({"beta"})), [])
        self.assertEqual(routes.claim("p2", "op", frozenset({"beta"})), [])
        self.assertEqual(routes.peers_for("beta"), ["p1", "p2"])
        self.assertFalse(routes.remote("alpha"))
        self.assertFalse(routes.remote("gamma"))

    def test_claim_of_a_local_account_refused_and_reported_once(self) -> None:
        """A peer claiming an account hosted here is not routed to for it,
        and the conflict is reported once."""
        routes = AccountRoutes(local=frozenset({"alpha"}))
        self.assertEqual(
            routes.claim("p1", "op", frozenset({"alpha", "beta"})),
            [Conflict("p1", "alpha", "local")],
        )
        self.assertEqual(routes.claim("p1", "op", frozenset({"alpha", "beta"})), [])
        self.assertFalse(routes.remote("alpha"))
        self.assertTrue(routes.remote("beta"))

    def test_contested_account_refused_to_both(self) -> None:
        """Two operators claiming one account: routed to neither until one
        gives it up (or is removed)."""
        routes = AccountRoutes()
        routes.claim("p1", "op1", frozenset({"beta"}))
        new = routes.claim("p2", "op2", frozenset({"beta"}))
        self.assertEqual(sorted((c.peer, c.other) for c in new), [("p1", "p2"), ("p2", "p1")])
        self.assertEqual(routes.peers_for("beta"), [])
        routes.forget("p2")
        self.assertEqual(routes.peers_for("beta"), ["p1"])

    def test_frame_round_trip(self) -> None:
        accounts = frozenset({"alpha", "b-2_x"})
        self.assertEqual(decode_accounts(encode_accounts(accounts)), accounts)

    @given(
        st.one_of(
            st.dictionaries(st.text(max_size=8), st.integers(), max_size=2),
            st.builds(lambda v: {"accounts": v}, st.lists(st.text(max_size=25), max_size=4)),
            st.builds(lambda v: {"accounts": v}, st.integers() | st.binary() | st.none()),
        )
    )
    @settings(max_examples=200, deadline=None)
    def test_hostile_frames_refused_cleanly(self, fields: dict[str, Any]) -> None:
        """Any iw-accounts fields decode to valid accounts or raise WireError."""
        try:
            accounts = decode_accounts(fields)
        except WireError:
            return
        for account in accounts:
            self.assertRegex(account, r"\A[A-Za-z0-9_-]{1,20}\Z")

    def test_too_many_accounts_refused(self) -> None:
        with self.assertRaises(WireError):
            decode_accounts({"accounts": [f"a{n}" for n in range(MAX_ACCOUNTS + 1)]})

    def test_held_inbox_round_trip(self) -> None:
        self.assertEqual(parse_held(held_inbox("beta", "tel:+8;101")), ("beta", "tel:+8;101"))
        self.assertIsNone(parse_held("tel:+8"))


class ForwardTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.two = Two()
        self.addCleanup(self.two.stop)
        self.a, self.b, self.net = self.two.a, self.two.b, self.two.net
        self.alice = self.a.attach(ALICE)
        self.requests = 0

    def post(
        self, to_account: str | None = "beta", content: bytes = b"hi", key: bytes = b"k" * 16
    ) -> None:
        self.requests += 1
        self.a.post(self.alice, self.requests, BOB, content, key, to_account)

    def test_accounts_advertised_when_the_link_comes_up(self) -> None:
        """Each side learns the other's accounts from iw-accounts."""
        self.assertEqual(self.a.forwarder.routes.peers_for("beta"), [B])
        self.assertEqual(self.b.forwarder.routes.peers_for("alpha"), [A])
        self.assertFalse(self.a.forwarder.remote("alpha"))

    def test_known_uris_not_shared_with_another_operator(self) -> None:
        """The pool shares the URIs known at each member (msg-known); another
        operator gets none of them, on link-up or on attach, and a msg-known
        it sends is not handled."""
        self.net.set_link(A, B, False)
        self.net.set_link(A, B, True)
        self.a.attach("tel:+101")
        self.a.clock.advance(600)
        self.assertNotIn("msg-known", [frame.type for _, _, frame in self.net.queue])
        self.assertNotIn("msg-known", self.b.link.handlers)

    def test_stored_at_the_peer_before_posted(self) -> None:
        """The post goes to the peer hosting beta, which stores it; only its
        answer makes `posted`; A traces forward content, Account external;
        B delivers it, and its delivered reaches Alice at A."""
        bob = self.b.attach(BOB)
        self.post()
        self.assertEqual(self.alice.of("posted"), [])
        self.assertEqual(self.net.deliver(1), 1)
        self.assertEqual([m.account for m in self.b.store.messages.values()], ["beta"])
        self.assertEqual(self.alice.of("posted"), [])
        self.net.deliver()
        [posted] = self.alice.of("posted")
        self.assertEqual(posted["message"], f"{A}-1")
        self.assertEqual(states(self.a), [("forward content", "external")])
        self.assertEqual([m["content"] for m in bob.of("message")], [b"hi"])
        self.b.confirm_all()
        self.net.deliver()
        self.assertEqual([m["message"] for m in self.alice.of("delivered")], [f"{A}-1"])
        self.assertEqual(self.a.store.messages, {})
        self.assertEqual(self.b.store.messages, {})

    def test_without_to_account_stays_local(self) -> None:
        """A post without to-account is the old post: the recipient must be
        known here (old clients are unaffected)."""
        self.post(to_account=None)
        self.net.deliver()
        [error] = self.alice.of("error")
        self.assertEqual(error["code"], "not-found")
        self.assertEqual(self.net.queue, [])

    def test_local_account_stays_local(self) -> None:
        self.a.store.known.add(BOB)
        self.post(to_account="alpha")
        self.assertEqual(len(self.alice.of("posted")), 1)
        self.assertEqual(self.net.queue, [])

    def test_peer_refusal_passed_on(self) -> None:
        """B does not know the recipient: A's client gets not-found."""
        self.b.store.known.clear()
        self.post()
        self.net.deliver()
        [error] = self.alice.of("error")
        self.assertEqual(error["code"], "not-found")
        self.assertEqual(self.a.store.messages, {})

    def test_peer_refuses_an_account_it_does_not_host(self) -> None:
        """A post for an account the peer does not host is refused there
        (not-found), whatever A believed."""
        self.a.forwarder.routes.claim(B, "op-b", frozenset({"beta", "gamma"}))
        self.post(to_account="gamma")
        self.net.deliver()
        [error] = self.alice.of("error")
        self.assertEqual(error["code"], "not-found")

    def test_cut_kept_here_then_handed_over_once(self) -> None:
        """Link down: the post is stored here in an inbox of its own (no
        client's) before `posted`; when the link is back the sweep hands it
        to B, which delivers it once, and it is gone here."""
        bob = self.b.attach(BOB)
        self.net.set_link(A, B, False)
        self.post()
        [posted] = self.alice.of("posted")
        [held] = self.a.held()
        self.assertEqual(held.recipient, held_inbox("beta", BOB))
        self.assertEqual(held.id, posted["message"])
        self.net.set_link(A, B, True)
        for _ in range(4):
            self.net.deliver()
            self.two.clock.advance(SWEEP_INTERVAL)
        self.assertEqual(self.a.held(), [])
        self.assertEqual([m["message"] for m in bob.of("message")], [posted["message"]])
        self.assertEqual([m["to"] for m in bob.of("message")], [BOB])
        self.assertIn(("forward content", "external"), states(self.a))

    def test_answer_lost_kept_and_not_delivered_twice(self) -> None:
        """B stored it but its answer was lost: A keeps a copy after the
        timeout and answers posted; the hand-off later is a repeat at B
        (same retry scope), so Bob gets one message."""
        bob = self.b.attach(BOB)
        self.post()
        self.net.deliver(1)  # stored at B
        self.net.lose()  # its answer lost
        self.two.clock.advance(FORWARD_TIMEOUT)
        self.assertEqual(len(self.alice.of("posted")), 1)
        self.assertEqual(len(self.a.held()), 1)
        for _ in range(4):
            self.two.clock.advance(SWEEP_INTERVAL)
            self.net.deliver()
        self.assertEqual(self.a.held(), [])
        self.assertEqual(len(bob.of("message")), 1)

    def test_retry_is_one_message(self) -> None:
        """The client posts again with the same key: the first ID."""
        self.post()
        self.net.deliver()
        self.post()
        self.net.deliver()
        first, second = self.alice.of("posted")
        self.assertEqual(first["message"], second["message"])
        self.assertEqual(len(self.b.store.messages), 1)

    def test_conflicting_claim_not_routed(self) -> None:
        """B claiming alpha (hosted here) is refused for alpha."""
        link = self.b.link
        link.send(A, ACCOUNTS, encode_accounts(frozenset({"alpha", "beta"})))
        self.net.deliver()
        self.assertFalse(self.a.forwarder.remote("alpha"))
        self.assertTrue(self.a.forwarder.remote("beta"))

    def test_accounts_change_advertised(self) -> None:
        """A new account here is advertised at the next tick."""
        self.a.accounts.add("alpha2")
        self.two.clock.advance(SWEEP_INTERVAL)
        self.net.deliver()
        self.assertTrue(self.b.forwarder.remote("alpha2"))

    def test_removed_peer_forgotten(self) -> None:
        """A peer removed from iw-crs.conf no longer takes its accounts."""
        del self.a.operators[B]
        self.net.set_link(A, B, False)
        self.assertFalse(self.a.forwarder.remote("beta"))

    def test_unknown_account_waits_for_silent_peers(self) -> None:
        """After a restart, before the peer said which accounts it hosts, a
        post naming an account not hosted here is answered unavailable
        (retry later), not refused; once the peer told, it goes there; an
        account nobody hosts is then an ordinary local post (not-found)."""
        self.a.restart()
        self.alice = self.a.attach(ALICE)
        self.post()
        [error] = self.alice.of("error")
        self.assertEqual(error["code"], "unavailable")
        self.assertIsNotNone(error["retry-after"])
        for listener in self.a.link.listeners:
            listener(B, True)
        for listener in self.b.link.listeners:
            listener(A, False)
            listener(A, True)
        self.net.deliver()
        self.post(key=b"j" * 16)
        self.net.deliver()
        self.assertEqual(len(self.alice.of("posted")), 1)
        self.post(to_account="nobody", key=b"n" * 16)
        self.assertEqual([e["code"] for e in self.alice.of("error")], ["unavailable", "not-found"])

    def test_ack_traced_as_forward_ack(self) -> None:
        self.requests += 1
        self.a.messaging.post(
            self.alice,  # type: ignore[arg-type]
            message("post", id=self.requests, to=BOB, ack="m1", **{"to-account": "beta"}),
        )
        self.net.deliver()
        self.assertEqual(states(self.a), [("forward ack", "external")])


NAMES = (A, B)
#: The two clients: ALICE (account alpha at A), BOB (account beta at B).
HOME = {ALICE: (A, "alpha"), BOB: (B, "beta")}


class TwoOperators(RuleBasedStateMachine):
    """Alice at A and Bob at B post to each other; the link is cut and
    restored, frames are lost, CRSs restart (their stores kept), stores go
    out of reach, clients come and go.  Checked: a message answered
    ``posted`` is at every moment stored at one of the two CRSs or already
    delivered; no content reaches its recipient under two IDs; once all
    heals every acknowledged message is delivered and nothing is left."""

    @initialize()
    def setup(self) -> None:
        self.two = Two()
        self.ops = {A: self.two.a, B: self.two.b}
        self.senders = {ALICE: self.two.a.attach(ALICE), BOB: self.two.b.attach(BOB)}
        self.sent: dict[tuple[str, int], bytes] = {}
        self.posts: list[tuple[str, bytes, bytes]] = []
        self.requests = 0

    def send(self, sender: str, key: bytes, content: bytes) -> None:
        at, _ = HOME[sender]
        to = BOB if sender == ALICE else ALICE
        conn = self.ops[at].registry.get(sender)
        if conn is None:
            return
        self.requests += 1
        self.sent[(sender, self.requests)] = content
        self.ops[at].post(conn.conn, self.requests, to, content, key, HOME[to][1])  # type: ignore[arg-type]

    @rule(sender=st.sampled_from((ALICE, BOB)))
    def post(self, sender: str) -> None:
        n = len(self.posts)
        key, content = n.to_bytes(16, "big"), b"content %d" % n
        self.posts.append((sender, key, content))
        self.send(sender, key, content)

    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        if self.posts:
            sender, key, content = data.draw(st.sampled_from(self.posts))
            self.send(sender, key, content)

    @rule(limit=st.integers(min_value=1, max_value=6))
    def deliver(self, limit: int) -> None:
        self.two.net.deliver(limit)

    @rule()
    def lose_frames(self) -> None:
        """The connection breaks with frames under way (over TCP, frames are
        lost only with their connection): both sides hear the link go down,
        and up again with the next connection."""
        connected = self.two.net.connected(A, B)
        self.two.net.lose()
        if connected:
            self.two.net.set_link(A, B, False)
            self.two.net.set_link(A, B, True)

    @rule(up=st.booleans())
    def link(self, up: bool) -> None:
        self.two.net.set_link(A, B, up)

    @rule(seconds=st.sampled_from([0.5, FORWARD_TIMEOUT, SWEEP_INTERVAL]))
    def wait(self, seconds: float) -> None:
        self.two.clock.advance(seconds)

    @rule(name=st.sampled_from(NAMES))
    def restart(self, name: str) -> None:
        self.ops[name].restart()
        peer = B if name == A else A
        if self.two.net.connected(name, peer):
            for listener in self.ops[peer].link.listeners:
                listener(name, False)
                listener(name, True)
            for listener in self.ops[name].link.listeners:
                listener(peer, True)
        for uri, (at, _) in HOME.items():
            if at == name:
                self.senders[uri] = self.ops[name].attach(uri)

    @rule(uri=st.sampled_from((ALICE, BOB)))
    def reattach(self, uri: str) -> None:
        at, _ = HOME[uri]
        self.ops[at].detach(uri)
        self.senders[uri] = self.ops[at].attach(uri)

    @rule(at=st.sampled_from(NAMES))
    def confirm(self, at: str) -> None:
        self.ops[at].confirm_all()

    @rule(at=st.sampled_from(NAMES))
    def store_down(self, at: str) -> None:
        store = self.ops[at].store
        store.down = not store.down

    # -- checks

    def acked(self) -> dict[bytes, set[str]]:
        found: dict[bytes, set[str]] = {}
        for sender, conns in self.all_conns().items():
            for conn in conns:
                for posted in conn.of("posted"):
                    content = self.sent[(sender, posted.id)]
                    found.setdefault(content, set()).add(posted["message"])
        return found

    def all_conns(self) -> dict[str, list[Conn]]:
        if not hasattr(self, "_conns"):
            self._conns: dict[str, list[Conn]] = {ALICE: [], BOB: []}
        for uri, conn in self.senders.items():
            if conn not in self._conns[uri]:
                self._conns[uri].append(conn)
        return self._conns

    @invariant()
    def posted_only_when_durable(self) -> None:
        """Every content answered posted is stored at A or B, or delivered."""
        if not hasattr(self, "two"):
            return
        where = {m.data for m in self.two.confirmed}
        for op in self.ops.values():
            where.update(m.data for m in op.store.messages.values())
        for content in self.acked():
            assert content in where, content

    @invariant()
    def delivered_under_one_id(self) -> None:
        if not hasattr(self, "two"):
            return
        ids: dict[bytes, set[str]] = {}
        for m in self.two.confirmed:
            ids.setdefault(m.data, set()).add(m.id)
        for content, found in ids.items():
            assert len(found) == 1, (content, found)

    def teardown(self) -> None:
        if not hasattr(self, "two"):
            return
        for op in self.ops.values():
            op.store.down = False
        self.two.net.set_link(A, B, True)
        for uri, (at, _) in HOME.items():
            self.ops[at].detach(uri)
            self.senders[uri] = self.ops[at].attach(uri)
        for _ in range(20):
            self.two.net.deliver()
            for op in self.ops.values():
                op.confirm_all()
            self.two.clock.advance(SWEEP_INTERVAL)
        self.two.net.deliver()
        for op in self.ops.values():
            op.confirm_all()
        self.delivered_under_one_id()
        delivered = {m.data for m in self.two.confirmed}
        for content in self.acked():
            assert content in delivered, (content, self.two.confirmed)
        for op in self.ops.values():
            assert op.store.messages == {}, (op.name, op.store.messages)
        self.two.stop()


class TwoOperatorsTests(SynchronousTestCase):
    def test_machine(self) -> None:
        """Posts both ways under cuts, frame losses, restarts and stores out
        of reach: posted only when durable, delivered exactly once."""
        run_state_machine_as_test(
            TwoOperators,
            settings=settings(
                max_examples=150,
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )


class WithPoolTests(SynchronousTestCase):
    def test_pool_sweep_leaves_kept_messages_alone(self) -> None:
        """A pool member's sweep hands clients' inboxes to their slots'
        owners, never an inbox kept for another operator."""
        clock = Clock()
        clock.advance(NOW)
        net = Net()
        confirmed: list[Stored] = []
        a = Node(net, "crs1", clock, confirmed)
        Node(net, "crs2", clock, confirmed)
        a.link.default = "crs2"  # every slot is crs2's
        a.store.messages["x1"] = Stored(
            "x1", ALICE, held_inbox("beta", BOB), "beta", "content", 0, b"kept", "s"
        )
        a.forwarder.kick()
        net.deliver()
        clock.advance(SWEEP_INTERVAL)
        net.deliver()
        self.assertEqual(list(a.store.messages), ["x1"])
        a.forwarder.stopService()

    def test_message_for_another_members_slot_handed_on(self) -> None:
        """A message a peer brings to a pool member that does not own the
        recipient's slot is stored there and the pool's sweep is kicked."""
        two = Two()
        self.addCleanup(two.stop)
        kicked: list[str] = []

        class Pool:
            dirty = False

            def elsewhere(self, uri: str) -> bool:
                return True

            def kick(self) -> None:
                kicked.append("kick")

        two.b.forwarder.pool = Pool()  # type: ignore[assignment]
        alice = two.a.attach(ALICE)
        two.a.post(alice, 1, BOB, b"hi", b"k" * 16, "beta")
        two.net.deliver()
        self.assertEqual(kicked, ["kick"])
        self.assertEqual(len(two.b.store.messages), 1)
