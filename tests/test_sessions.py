"""Tests for cryptify.crs.calls.core: the call state machine, in memory."""

from __future__ import annotations

import itertools

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.calls.core import SessionTable
from cryptify.crs.calls.session import ANSWER_TIMEOUT, ENDED_SHOWN_FOR, MAX_ENDED_SHOWN, RelayLegs
from cryptify.crs.trace import TraceHub
from tests.fakes import Att, FakeParties, FakeRelay


class SessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.parties = FakeParties()
        self.relay = FakeRelay()
        self.traced: list[str] = []
        hub = TraceHub(self.clock.seconds)
        hub.subscribe("session", self.traced.append)
        ids = (f"s{i}" for i in itertools.count(1))
        self.table = SessionTable(self.parties, self.relay, self.clock, hub, lambda: next(ids))
        for uri in ("tel:+1", "tel:+2", "tel:+8888"):
            self.parties.online[uri] = Att(uri)
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def states(self) -> list[str]:
        return [line.split(", ")[4] for line in self.traced]

    def test_full_call(self) -> None:
        """invite -> ringing -> talk -> hangup, each side told, relay freed at the end."""
        self.table.invite(Att("tel:+1"), 7, "tel:+2", b"mikey")
        sent = self.parties.take()
        self.assertEqual(sent[0][:2], ("tel:+1", "session"))
        self.assertEqual(sent[0][2]["id"], 7)
        self.assertEqual(sent[0][2]["relay-tag"], b"A" * 8)
        self.assertEqual(sent[1][:2], ("tel:+2", "invite"))
        self.assertEqual(sent[1][2]["mikey"], b"mikey")
        self.assertEqual(sent[1][2]["relay-tag"], b"B" * 8)
        self.assertEqual(sent[1][2]["from"], "tel:+1")
        self.table.ringing("tel:+2", "s1")
        self.table.talk("tel:+2", "s1")
        self.assertEqual(self.table.rows(), [["tel:+1", "tel:+2", "0", "talk"]])
        self.table.hangup("tel:+1", "s1", "normal")
        sent = self.parties.take()
        self.assertEqual(
            [(u, t) for u, t, _ in sent],
            [("tel:+1", "ringing"), ("tel:+1", "talk"), ("tel:+2", "hangup")],
        )
        self.assertEqual(sent[2][2]["who"], "caller")
        self.assertEqual(self.relay.released, ["s1"])
        self.assertEqual(self.states(), ["invite", "ringing", "talk", "hangup(normal; caller)"])
        self.assertEqual(self.table.sessions, {})

    def test_trace_line_layout(self) -> None:
        """trace session lines are Header, Time, Caller, Callee, State, Account, Session-ID."""
        self.table.invite(Att("tel:+1"), 1, "tel:+2", b"m")
        self.table.hangup("tel:+2", "s1", "rejected")
        fields = self.traced[0].split(", ")
        self.assertEqual(fields[0], "session")
        self.assertEqual(fields[2:], ["tel:+1", "tel:+2", "invite", "acme", "s1"])

    def test_not_found_and_not_connected(self) -> None:
        """Unknown responders get not-found, known but offline ones not-connected."""
        self.parties.known_uris.add("tel:+3")
        self.table.invite(Att("tel:+1"), 1, "tel:+3", b"m")
        self.table.invite(Att("tel:+1"), 2, "tel:+4", b"m")
        sent = self.parties.take()
        self.assertEqual([m[2]["code"] for m in sent], ["not-connected", "not-found"])
        self.assertEqual(self.states(), ["responder not connected", "responder not found"])
        self.assertEqual(self.relay.released, [])

    def test_extension_reaches_base(self) -> None:
        """tel:+8888;101 reaches the client attached as tel:+8888, with the full URI."""
        self.table.invite(Att("tel:+1"), 1, "tel:+8888;101", b"m")
        sent = self.parties.take()
        self.assertEqual(sent[1][0], "tel:+8888")
        self.assertEqual(sent[1][2]["to"], "tel:+8888;101")
        self.assertEqual(self.table.rows()[0][1], "tel:+8888;101")
        self.table.hangup("tel:+1", "s1", "normal")

    def test_caller_extension_shown(self) -> None:
        """A CIG may name its PBX user as ``from`` (its own URI with an
        extension): the callee is shown it; any other base is refused."""
        self.table.invite(Att("tel:+8888"), 1, "tel:+1", b"m", "tel:+8888;101")
        sent = self.parties.take()
        self.assertEqual((sent[1][0], sent[1][2]["from"]), ("tel:+1", "tel:+8888;101"))
        self.table.hangup("tel:+1", "s1", "normal")
        self.parties.take()
        self.table.invite(Att("tel:+8888"), 2, "tel:+1", b"m", "tel:+2;101")
        [(uri, kind, fields)] = self.parties.take()
        self.assertEqual((uri, kind, fields["code"]), ("tel:+8888", "error", "rejected"))
        self.assertEqual(self.table.sessions, {})

    def test_unanswered_times_out(self) -> None:
        """An invite nobody answers ends with no-answer from the CRS to both sides."""
        self.table.invite(Att("tel:+1"), 1, "tel:+2", b"m")
        self.table.ringing("tel:+2", "s1")
        self.parties.take()
        self.clock.advance(ANSWER_TIMEOUT)
        sent = self.parties.take()
        self.assertEqual(sorted(u for u, t, _ in sent if t == "hangup"), ["tel:+1", "tel:+2"])
        self.assertTrue(all(f["who"] == "crs" and f["code"] == "no-answer" for _, _, f in sent))
        self.assertEqual(self.relay.released, ["s1"])

    def test_answer_stops_timer(self) -> None:
        """An answered call is not timed out."""
        self.table.invite(Att("tel:+1"), 1, "tel:+2", b"m")
        self.table.talk("tel:+2", "s1")
        self.clock.advance(ANSWER_TIMEOUT * 2)
        self.assertEqual(self.table.rows()[0][3], "talk")
        self.table.hangup("tel:+2", "s1", "normal")

    def test_glare_is_deterministic(self) -> None:
        """When two clients invite each other, the smaller URI's call survives either way."""
        for first, second in (("tel:+1", "tel:+2"), ("tel:+2", "tel:+1")):
            self.setUp()
            self.table.invite(Att(first), 1, second, b"m")
            self.table.invite(Att(second), 2, first, b"m")
            [session] = self.table.sessions.values()
            self.assertEqual((session.caller, session.callee), ("tel:+1", "tel:+2"))
            self.table.hangup("tel:+1", session.id, "normal")

    def test_detach_ends_calls(self) -> None:
        """A party that detaches mid-call ends it; the other side learns who and why."""
        self.table.invite(Att("tel:+1"), 1, "tel:+2", b"m")
        self.table.talk("tel:+2", "s1")
        self.parties.take()
        self.table.detached("tel:+2")
        [(uri, kind, fields)] = self.parties.take()
        self.assertEqual(
            (uri, kind, fields["code"], fields["who"]), ("tel:+1", "hangup", "detached", "callee")
        )
        self.assertEqual(self.relay.released, ["s1"])

    def test_only_parties_act(self) -> None:
        """A stranger cannot ring, answer or end someone else's call; the caller cannot answer."""
        self.table.invite(Att("tel:+1"), 1, "tel:+2", b"m")
        self.parties.take()
        self.table.hangup("tel:+8888", "s1", "normal")
        self.table.talk("tel:+1", "s1")
        self.table.ringing("tel:+2", "nope")
        sent = self.parties.take()
        self.assertEqual([f["code"] for _, _, f in sent], ["not-found", "unexpected", "not-found"])
        self.assertIn("s1", self.table.sessions)
        self.table.hangup("tel:+1", "s1", "normal")

    def test_relay_failure(self) -> None:
        """No relay session: the caller gets an internal error and nothing is left behind."""
        self.relay.auto = False
        self.table.invite(Att("tel:+1"), 3, "tel:+2", b"m")
        self.relay.pending["s1"].errback(RuntimeError("relay down"))
        [(uri, kind, fields)] = self.parties.take()
        self.assertEqual(
            (uri, kind, fields["code"], fields["id"]), ("tel:+1", "error", "internal", 3)
        )
        self.assertEqual(self.table.sessions, {})

    def test_hangup_during_allocation(self) -> None:
        """A call ended while its relay session is being made releases that session."""
        self.relay.auto = False
        self.table.invite(Att("tel:+1"), 3, "tel:+2", b"m")
        self.table.detached("tel:+2")
        self.relay.pending["s1"].callback(RelayLegs("h", 1, b"a", b"b"))
        self.assertEqual(self.relay.released, ["s1"])
        [(uri, kind, fields)] = self.parties.take()
        self.assertEqual(
            (uri, kind, fields["id"], fields["code"]), ("tel:+1", "error", 3, "not-connected")
        )

    def test_self_call_and_limits(self) -> None:
        """Calling yourself is rejected."""
        self.table.invite(Att("tel:+1"), 1, "tel:+1", b"m")
        self.assertEqual(self.parties.take()[0][2]["code"], "rejected")

    # -- show session keeps ended sessions for a while, with the manual's final states

    def test_final_states_listed_then_forgotten(self) -> None:
        """hangup(reason, who), responder not found / not connected; gone after the retention."""
        self.parties.known_uris.add("tel:+3")
        self.table.invite(Att("tel:+1"), 1, "tel:+2", b"m")
        self.table.talk("tel:+2", "s1")
        self.clock.advance(42)
        self.table.hangup("tel:+2", "s1", "normal")
        self.table.invite(Att("tel:+1"), 2, "tel:+3", b"m")
        self.table.invite(Att("tel:+1"), 3, "tel:+4", b"m")
        self.clock.advance(5)
        self.table.invite(Att("tel:+2"), 4, "tel:+8888;101", b"m")
        self.clock.advance(3)
        self.assertEqual(
            self.table.rows(),
            [
                ["tel:+2", "tel:+8888;101", "3", "invite"],
                ["tel:+1", "tel:+2", "42", "hangup(normal, callee)"],
                ["tel:+1", "tel:+3", "0", "responder not connected"],
                ["tel:+1", "tel:+4", "0", "responder not found"],
            ],
        )
        self.clock.advance(ENDED_SHOWN_FOR - 8 - 0.5)
        self.assertEqual(len(self.table.rows()), 4)
        self.clock.advance(0.5)
        self.assertEqual(self.table.rows(), [["tel:+2", "tel:+8888;101", "55", "invite"]])
        self.clock.advance(ANSWER_TIMEOUT - 55)
        self.assertEqual(
            self.table.rows(), [["tel:+2", "tel:+8888;101", "60", "hangup(no-answer, crs)"]]
        )
        self.clock.advance(ENDED_SHOWN_FOR)
        self.assertEqual(self.table.rows(), [])

    def test_detach_and_shutdown_states(self) -> None:
        """A party going away and the CRS stopping end with who = the party, then crs."""
        self.table.invite(Att("tel:+1"), 1, "tel:+2", b"m")
        self.table.detached("tel:+2")
        self.table.invite(Att("tel:+1"), 2, "tel:+2", b"m")
        self.table.stop()
        self.assertEqual(
            [row[3] for row in self.table.rows()],
            ["hangup(detached, callee)", "hangup(shutdown, crs)"],
        )

    def test_ended_sessions_bounded(self) -> None:
        """Failed invites cannot grow the list past its bound."""
        for i in range(MAX_ENDED_SHOWN + 10):
            self.table.invite(Att("tel:+1"), i, f"tel:+9{i}", b"m")
        rows = self.table.rows()
        self.assertEqual(len(rows), MAX_ENDED_SHOWN)
        self.assertEqual(rows[-1][1], f"tel:+9{MAX_ENDED_SHOWN + 9}")
