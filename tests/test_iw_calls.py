"""Calls between two operators' clients in memory.

Operator A (192.0.2.1) hosts account ``alpha`` with ``tel:+1`` attached;
operator B (198.51.100.7) hosts ``beta`` with ``tel:+2`` attached.  Each
has its own session table, relay and :class:`IwCalls`, joined by a fake
inter-working link carrying the real frames in order, which can be cut.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.calls.core import SessionTable
from cryptify.crs.calls.session import RelayLegs
from cryptify.crs.interwork.calls import IwCalls
from cryptify.crs.pool.calls_core import INVITE_FRAME, PoolCalls
from cryptify.crs.trace import TraceHub
from tests.calls_support import CallNode, CountingRelay, FakeCallLink, kinds
from tests.fakes import Att, FakeParties

A, B = "192.0.2.1", "198.51.100.7"
HOSTED = {A: "alpha", B: "beta"}


class Accounts:
    """What the forwarder knows of accounts, fixed."""

    def __init__(self, me: str) -> None:
        self.me = me

    def remote(self, account: str) -> bool:
        return account in HOSTED.values() and account != HOSTED[self.me]

    def peer_for(self, account: str) -> str | None:
        return next((ip for ip, acc in HOSTED.items() if acc == account), None)

    def hosts(self, account: str) -> bool:
        return account == HOSTED[self.me]


class Operator(CallNode):
    def __init__(self, me: str, clock: Clock, link: FakeCallLink, ids: Iterator[str]) -> None:
        super().__init__(f"relay.{HOSTED[me]}.example", clock, ids)
        self.calls = IwCalls(self.table, self.parties, link.end(me), Accounts(me), clock)
        link.ends[me] = self.calls


def operators() -> tuple[Clock, FakeCallLink, Operator, Operator]:
    """A and B on one clock, joined by a fake link, session ids shared."""
    clock = Clock()
    link = FakeCallLink(A, B)
    ids = (f"s{i}" for i in itertools.count(1))
    return clock, link, Operator(A, clock, link, ids), Operator(B, clock, link, ids)


ALICE = Att("tel:+1", "alpha")


class IwCallTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock, self.link, self.a, self.b = operators()
        self.a.parties.online["tel:+1"] = ALICE
        self.b.parties.online["tel:+2"] = Att("tel:+2", "beta")
        self.b.parties.known_uris.add("tel:+2")

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def place(self) -> str:
        self.a.table.invite(ALICE, 7, "tel:+2", b"mikey", None, to_account="beta")
        self.assertEqual(self.a.parties.take(), [], "no session before B offered it")
        self.link.flush()
        [(uri, kind, _)] = self.b.parties.take()
        self.assertEqual((uri, kind), ("tel:+2", "invite"))
        [(uri, kind, session)] = self.a.parties.take()
        self.assertEqual((uri, kind, session["id"]), ("tel:+1", "session", 7))
        return str(session["session"])

    def test_full_call(self) -> None:
        """invite with to-account beta goes to B with the callee's account;
        ringing, talk and the caller's hangup cross; A's relay carries the
        media and is freed at the end."""
        sid = self.place()
        sender, kind, invite = self.link.sent[0]
        self.assertEqual((sender, kind, invite["account"]), (A, INVITE_FRAME, "beta"))
        self.assertEqual(invite["relay-host"], "relay.alpha.example")
        self.b.ringing("tel:+2", sid)
        self.b.talk("tel:+2", sid)
        self.link.flush()
        self.assertEqual(kinds(self.a.parties.take()), [("tel:+1", "ringing"), ("tel:+1", "talk")])
        self.a.hangup("tel:+1", sid)
        self.link.flush()
        [(_, kind, hangup)] = self.b.parties.take()
        self.assertEqual((kind, hangup["who"]), ("hangup", "caller"))
        self.assertEqual((self.a.table.sessions, self.b.calls.forwarded), ({}, {}))
        self.assertEqual(self.a.relay.live, set())
        self.assertEqual(
            [line.split(", ")[4:6] for line in self.b.traced][:3],
            [["invite", "beta"], ["ringing", "beta"], ["talk", "beta"]],
        )

    def test_callee_hangs_up(self) -> None:
        sid = self.place()
        self.b.talk("tel:+2", sid)
        self.b.hangup("tel:+2", sid, "bye")
        self.link.flush()
        sent = self.a.parties.take()
        self.assertEqual(kinds(sent), [("tel:+1", "talk"), ("tel:+1", "hangup")])
        self.assertEqual((sent[1][2]["code"], sent[1][2]["who"]), ("bye", "callee"))
        self.assertEqual(self.a.relay.live, set())

    def test_without_to_account_stays_local(self) -> None:
        """An invite without to-account is the old one: nobody here, not-found."""
        self.a.table.invite(ALICE, 3, "tel:+2", b"m")
        self.assertEqual(self.link.sent, [])
        [(_, kind, error)] = self.a.parties.take()
        self.assertEqual((kind, error["code"]), ("error", "not-found"))

    def test_same_number_here_under_another_account(self) -> None:
        """The number attached here too (in alpha): to-account beta still
        reaches B's client, not the local one."""
        self.a.parties.online["tel:+2"] = Att("tel:+2", "alpha")
        sid = self.place()
        self.a.hangup("tel:+1", sid)
        self.link.flush()

    def test_account_not_hosted_by_the_peer_refused(self) -> None:
        """B refuses an invite for an account it does not host: not-found."""
        self.b.calls.accounts = Accounts(A)  # B believes it hosts alpha only
        self.a.table.invite(ALICE, 4, "tel:+2", b"m", None, to_account="beta")
        self.link.flush()
        [(_, kind, error)] = self.a.parties.take()
        self.assertEqual((kind, error["code"]), ("error", "not-found"))
        self.assertEqual(self.b.parties.take(), [])
        self.assertEqual(self.a.relay.live, set())

    def test_callee_of_another_account_refused(self) -> None:
        """The callee's number is attached at B under another account: not-found."""
        self.b.parties.online["tel:+2"] = Att("tel:+2", "gamma")
        self.a.table.invite(ALICE, 4, "tel:+2", b"m", None, to_account="beta")
        self.link.flush()
        [(_, kind, error)] = self.a.parties.take()
        self.assertEqual((kind, error["code"]), ("error", "not-found"))

    def test_callee_not_attached(self) -> None:
        del self.b.parties.online["tel:+2"]
        self.a.table.invite(ALICE, 5, "tel:+2", b"m", None, to_account="beta")
        self.link.flush()
        [(_, kind, error)] = self.a.parties.take()
        self.assertEqual((kind, error["code"]), ("error", "not-connected"))

    def test_link_down_at_invite(self) -> None:
        self.link.up = False
        self.a.table.invite(ALICE, 6, "tel:+2", b"m", None, to_account="beta")
        [(_, kind, error)] = self.a.parties.take()
        self.assertEqual((kind, error["code"]), ("error", "not-connected"))
        self.assertEqual(self.a.relay.live, set())

    def test_link_cut_ends_calls_on_both_sides(self) -> None:
        sid = self.place()
        self.b.talk("tel:+2", sid)
        self.link.flush()
        self.a.parties.take()
        self.link.cut()
        [(_, kind, hangup)] = self.a.parties.take()
        self.assertEqual((kind, hangup["code"], hangup["who"]), ("hangup", "not-connected", "crs"))
        [(_, kind, hangup)] = self.b.parties.take()
        self.assertEqual((kind, hangup["code"]), ("hangup", "not-connected"))
        self.assertEqual(self.a.relay.live, set())

    def test_pool_calls_kept_beside(self) -> None:
        """In a pool the pool's calls stay the table's remote; the
        inter-working calls are its external."""
        clock = Clock()
        parties = FakeParties()
        table = SessionTable(parties, CountingRelay("r"), clock, TraceHub(clock.seconds))
        pool = PoolCalls("crs1", table, parties, self.link.end(A), lambda uri: None, clock)
        iw = IwCalls(table, parties, self.link.end(A), Accounts(A), clock)
        self.assertIs(table.remote, pool)
        self.assertIs(table.external, iw)


class BridgingRelay(CountingRelay):
    """A relay that can bridge legs; allocations at once, or held (``hold``)."""

    def __init__(self, host: str, name: bytes) -> None:
        super().__init__(host)
        self.name = name
        self.bridges: list[tuple[str, str, str, int, bytes]] = []
        self.hold = False
        self.pending: list[tuple[str, defer.Deferred[RelayLegs]]] = []

    def allocate(self, session: str) -> defer.Deferred[RelayLegs]:
        self.live.add(session)
        legs = RelayLegs(self.host, 5146, self.name + b"-tag-a", self.name + b"-tag-b")
        if not self.hold:
            return defer.succeed(legs)
        d: defer.Deferred[RelayLegs] = defer.Deferred()
        self.pending.append((session, d))
        return d

    def bridge(
        self, session: str, leg: str, host: str, port: int, tag: bytes
    ) -> defer.Deferred[bool]:
        self.bridges.append((session, leg, host, port, tag))
        return defer.succeed(session in self.live)


RELAY_A, RELAY_B = "192.0.2.10", "198.51.100.10"


class RelayToRelayTests(SynchronousTestCase):
    """Each operator relays its own client's leg; the relays are bridged."""

    def setUp(self) -> None:
        self.clock, self.link, self.a, self.b = operators()
        for op, name, host in ((self.a, b"AA", RELAY_A), (self.b, b"BB", RELAY_B)):
            op.relay = BridgingRelay(host, name)
            op.table.relay = op.relay
        self.a.parties.online["tel:+1"] = ALICE
        self.b.parties.online["tel:+2"] = Att("tel:+2", "beta")

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_each_relays_its_own_leg(self) -> None:
        """B allocates its own relay session and bridges its leg a to A's
        relay; Bob is given B's relay; the offer names B's leg a, which A
        bridges its leg b to; the caller is given A's relay; B's relay
        session is released when the call ends."""
        self.a.table.invite(ALICE, 7, "tel:+2", b"mikey", None, to_account="beta")
        self.link.flush()
        [(_, _, invite)] = self.b.parties.take()
        sid = invite["session"]
        self.assertEqual((invite["relay-host"], invite["relay-tag"]), (RELAY_B, b"BB-tag-b"))
        self.assertEqual(self.b.relay.bridges, [(sid, "a", RELAY_A, 5146, b"AA-tag-b")])
        offered = [f for _, kind, f in self.link.sent if kind == "call-offered"]
        self.assertEqual(offered[0]["relay-tag"], b"BB-tag-a")
        self.assertEqual(self.a.relay.bridges, [(sid, "b", RELAY_B, 5146, b"BB-tag-a")])
        [(_, kind, session)] = self.a.parties.take()
        self.assertEqual((kind, session["relay-host"]), ("session", RELAY_A))
        self.b.talk("tel:+2", sid)
        self.a.hangup("tel:+1", sid)
        self.link.flush()
        self.assertEqual((self.a.relay.live, self.b.relay.live), (set(), set()))

    def test_data_link_states_follow_bridged_calls(self) -> None:
        """show iw-crs's data columns: up in the call's direction on each
        side while its legs are bridged, down once it ended."""
        self.assertEqual(self.a.calls.data_state(B), ("down", "down", "down"))
        self.a.table.invite(ALICE, 7, "tel:+2", b"m", None, to_account="beta")
        self.link.flush()
        self.assertEqual(self.a.calls.data_state(B), ("up", "up", "down"))
        self.assertEqual(self.b.calls.data_state(A), ("up", "down", "up"))
        [(_, _, invite)] = self.b.parties.take()
        self.b.hangup("tel:+2", invite["session"])
        self.link.flush()
        self.assertEqual(self.a.calls.data_state(B), ("down", "down", "down"))
        self.assertEqual(self.b.calls.data_state(A), ("down", "down", "down"))

    def test_caller_hangs_up_while_the_callee_relay_allocates(self) -> None:
        """The caller gives up before B's relay answered: B releases its
        relay session and never rings Bob."""
        self.b.relay.hold = True
        self.a.table.invite(ALICE, 8, "tel:+2", b"m", None, to_account="beta")
        self.link.flush()
        [(sid, pending)] = self.b.relay.pending
        self.a.table.hangup("tel:+1", sid, "normal")
        self.link.flush()
        pending.callback(RelayLegs(RELAY_B, 5146, b"BB-tag-a", b"BB-tag-b"))
        self.assertEqual(self.b.parties.take(), [])
        self.assertEqual(self.b.relay.live, set())
        self.assertEqual(self.b.calls.forwarded, {})

    def test_callee_refused_releases_the_relay(self) -> None:
        """B refuses the offer (busy): its relay session is released."""
        self.b.calls.max_forwarded = 0  # B takes no call from A: busy
        self.a.table.invite(ALICE, 9, "tel:+2", b"m", None, to_account="beta")
        self.link.flush()
        [(_, kind, error)] = self.a.parties.take()
        self.assertEqual((kind, error["code"]), ("error", "busy"))
        self.assertEqual(self.b.relay.live, set())

    def test_ended_calls_do_not_pile_up(self) -> None:
        """The record of bridged calls stays bounded without show iw-crs."""
        for n in range(200):
            self.a.table.invite(ALICE, n, "tel:+2", b"m", None, to_account="beta")
            self.link.flush()
            [(_, _, invite)] = self.b.parties.take()
            self.a.parties.take()
            self.b.hangup("tel:+2", invite["session"])
            self.link.flush()
            self.a.parties.take()
        self.assertLessEqual(len(self.a.calls.bridged), 65)
        self.assertLessEqual(len(self.b.calls.bridged), 65)
