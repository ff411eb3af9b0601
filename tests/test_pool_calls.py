"""Calls between clients of two pool instances, in memory.

Two instances (crs1, crs2), each with its own session table, relay and
attached clients, joined by a fake pool link that carries the real
frames (``wire.encode_frame`` / ``decode_frame``) in order, and can be
cut.  ``tel:+1`` and ``tel:+3`` are attached at crs1, ``tel:+2`` and
``tel:+4`` at crs2; a URI's owner is the instance it is attached at.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.calls.session import ANSWER_TIMEOUT, MAX_SESSIONS_PER_URI
from cryptify.crs.pool.calls_core import (
    FRAME_TYPES,
    HANGUP_FRAME,
    HOLD_FRAME,
    INVITE_FRAME,
    OFFER_TIMEOUT,
    OFFERED_FRAME,
    REFUSED_FRAME,
    RESEND_INTERVAL,
    CallInvite,
    PoolCalls,
    decode_call,
)
from cryptify.crs.pool.wire import WireError
from tests.calls_support import CallNode, FakeCallLink, kinds
from tests.fakes import Att

HOME = {"tel:+1": "crs1", "tel:+3": "crs1", "tel:+2": "crs2", "tel:+4": "crs2", "tel:+5": "crs2"}


class Instance(CallNode):
    def __init__(self, name: str, clock: Clock, link: FakeCallLink, ids: Iterator[str]) -> None:
        super().__init__(f"{name}.example", clock, ids)
        self.name = name
        self.calls = PoolCalls(name, self.table, self.parties, link.end(name), HOME.get, clock)
        link.ends[name] = self.calls
        for uri, home in HOME.items():
            if home == name:
                self.parties.online[uri] = Att(uri)
                self.parties.known_uris.add(uri)


class Pair:
    """crs1 and crs2 joined by a fake link, on one clock."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.link = FakeCallLink("crs1", "crs2")
        ids = (f"s{i}" for i in itertools.count(1))
        self.a = Instance("crs1", self.clock, self.link, ids)
        self.b = Instance("crs2", self.clock, self.link, ids)

    def at(self, uri: str) -> Instance:
        return self.a if HOME[uri] == "crs1" else self.b


class CrossCallTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pair = Pair()
        self.a, self.b, self.link = self.pair.a, self.pair.b, self.pair.link

    def tearDown(self) -> None:
        self.assertEqual(self.pair.clock.getDelayedCalls(), [])

    def place(self) -> str:
        """tel:+1 (crs1) calls tel:+2 (crs2) up to the callee's invite."""
        self.a.table.invite(Att("tel:+1"), 7, "tel:+2", b"mikey")
        self.assertEqual(self.a.parties.take(), [], "no session before crs2 offered it")
        self.link.flush()
        [(uri, kind, invite)] = self.b.parties.take()
        self.assertEqual((uri, kind), ("tel:+2", "invite"))
        [(uri, kind, session)] = self.a.parties.take()
        self.assertEqual((uri, kind, session["id"]), ("tel:+1", "session", 7))
        self.assertEqual(invite["session"], session["session"])
        return str(session["session"])

    def test_full_call(self) -> None:
        """invite, ringing, talk, hangup by the caller: each side is told,
        media through crs1's relay for both legs, the relay freed at the end."""
        sid = self.place()
        invite = self.link.sent[0][2]
        self.assertEqual(self.link.sent[0][:2], ("crs1", INVITE_FRAME))
        self.assertEqual(
            (invite["relay-host"], invite["relay-port"], invite["relay-tag"]),
            ("crs1.example", 5146, b"B" * 8),
        )
        self.assertEqual((invite["from"], invite["mikey"]), ("tel:+1", b"mikey"))
        self.b.ringing("tel:+2", sid)
        self.b.talk("tel:+2", sid)
        self.link.flush()
        self.assertEqual(kinds(self.a.parties.take()), [("tel:+1", "ringing"), ("tel:+1", "talk")])
        self.assertEqual(self.a.table.rows()[0][3], "talk")
        self.assertEqual(self.b.table.rows(), [["tel:+1", "tel:+2", "0", "talk"]])
        self.a.hangup("tel:+1", sid)
        self.link.flush()
        [(uri, kind, hangup)] = self.b.parties.take()
        self.assertEqual(
            (uri, kind, hangup["who"], hangup["code"]), ("tel:+2", "hangup", "caller", "normal")
        )
        self.assertEqual(self.a.relay.released, [sid])
        self.assertEqual((self.a.table.sessions, self.b.calls.forwarded), ({}, {}))
        self.assertEqual(self.b.relay.released, [])
        self.assertEqual(
            [line.split(", ")[4] for line in self.b.traced],
            ["invite", "ringing", "talk", "hangup(normal; caller)"],
        )

    def test_callee_hangs_up(self) -> None:
        """The callee's hangup reaches the caller with who = callee."""
        sid = self.place()
        self.b.talk("tel:+2", sid)
        self.b.hangup("tel:+2", sid, "bye")
        self.link.flush()
        sent = self.a.parties.take()
        self.assertEqual(kinds(sent), [("tel:+1", "talk"), ("tel:+1", "hangup")])
        self.assertEqual((sent[1][2]["code"], sent[1][2]["who"]), ("bye", "callee"))
        self.assertEqual(self.b.parties.take(), [])
        self.assertEqual(self.a.relay.live, set())
        self.assertEqual(self.a.table.rows()[0][3], "hangup(bye, callee)")

    def test_hold_and_resume_both_ways(self) -> None:
        """While talking, each party's hold and resume reach the other;
        before the answer they are refused as on one instance."""
        sid = self.place()
        self.a.hold("tel:+1", sid)
        self.b.hold("tel:+2", sid)
        self.assertEqual(kinds(self.a.parties.take()), [("tel:+1", "error")])
        self.assertEqual(kinds(self.b.parties.take()), [("tel:+2", "error")])
        self.b.talk("tel:+2", sid)
        self.link.flush()
        self.a.parties.take()
        self.a.hold("tel:+1", sid)
        self.b.hold("tel:+2", sid)
        self.b.resume("tel:+2", sid)
        self.a.resume("tel:+1", sid)
        self.link.flush()
        self.assertEqual(
            [(u, k, m["session"]) for u, k, m in self.b.parties.take()],
            [("tel:+2", "hold", sid), ("tel:+2", "resume", sid)],
        )
        self.assertEqual(
            [(u, k, m["session"]) for u, k, m in self.a.parties.take()],
            [("tel:+1", "hold", sid), ("tel:+1", "resume", sid)],
        )
        # a client not in the call: not-found
        self.a.hold("tel:+3", sid)
        self.assertEqual(kinds(self.a.parties.take()), [("tel:+3", "error")])
        self.a.hangup("tel:+1", sid)
        self.link.flush()

    def test_hangup_kept_until_a_connection_takes_it(self) -> None:
        """A hangup sent while no connection is open (one being replaced,
        the link not seen down) goes as soon as one is: the other party's
        call ends then, not when the link is seen down."""
        sid = self.place()
        self.b.talk("tel:+2", sid)
        self.link.flush()
        self.a.parties.take()
        self.link.up = False
        self.b.hangup("tel:+2", sid, "bye")
        self.pair.clock.advance(RESEND_INTERVAL)
        self.assertIn(sid, self.a.table.sessions)
        self.link.up = True
        self.pair.clock.advance(RESEND_INTERVAL)
        self.link.flush()
        [(uri, kind, hangup)] = self.a.parties.take()
        self.assertEqual(
            (uri, kind, hangup["code"], hangup["who"]), ("tel:+1", "hangup", "bye", "callee")
        )
        self.assertEqual(self.a.table.sessions, {})
        # the other way, sent when the link is seen up again
        sid = self.place()
        self.link.up = False
        self.a.hangup("tel:+1", sid)
        self.assertIn(sid, self.b.calls.forwarded)
        self.link.up = True
        self.b.calls.link_changed("crs1", True)
        self.a.calls.link_changed("crs2", True)
        self.link.flush()
        self.assertEqual(self.b.calls.forwarded, {})
        self.assertEqual(kinds(self.b.parties.take()), [("tel:+2", "hangup")])
        self.pair.clock.advance(RESEND_INTERVAL)
        # kept ones are dropped when the link is seen down
        sid = self.place()
        self.link.up = False
        self.a.hangup("tel:+1", sid)
        self.link.cut()
        self.assertEqual(self.a.calls.unsent, {})
        self.pair.clock.advance(RESEND_INTERVAL)

    def test_callee_detaches(self) -> None:
        """The callee going away ends the call: the caller hears detached."""
        sid = self.place()
        self.b.detach("tel:+2")
        self.link.flush()
        [(_, kind, hangup)] = self.a.parties.take()
        self.assertEqual((kind, hangup["code"], hangup["who"]), ("hangup", "detached", "callee"))
        self.assertNotIn(sid, self.a.table.sessions)
        self.assertEqual(self.a.relay.live, set())

    def test_caller_detaches(self) -> None:
        sid = self.place()
        self.a.detach("tel:+1")
        self.link.flush()
        [(_, kind, hangup)] = self.b.parties.take()
        self.assertEqual((kind, hangup["code"], hangup["who"]), ("hangup", "detached", "caller"))
        self.assertEqual(self.b.calls.forwarded, {})
        self.assertNotIn(sid, self.a.table.sessions)

    def test_callee_not_attached(self) -> None:
        """A callee of crs2 that is not attached there: not-connected, as at home."""
        self.b.detach("tel:+2")
        self.a.table.invite(Att("tel:+1"), 3, "tel:+2", b"m")
        self.link.flush()
        [(uri, kind, error)] = self.a.parties.take()
        self.assertEqual(
            (uri, kind, error["id"], error["code"]), ("tel:+1", "error", 3, "not-connected")
        )
        self.assertEqual(self.a.table.rows()[0][3], "responder not connected")
        self.assertEqual(self.a.relay.live, set())
        self.assertEqual(self.link.sent[-1][1], REFUSED_FRAME)

    def test_callee_unknown(self) -> None:
        self.b.detach("tel:+5")
        self.b.parties.known_uris.discard("tel:+5")
        self.a.table.invite(Att("tel:+1"), 3, "tel:+5", b"m")
        self.link.flush()
        [(_, _, error)] = self.a.parties.take()
        self.assertEqual(error["code"], "not-found")

    def test_push_wakes_absent_callee(self) -> None:
        """An absent callee is woken at its own instance (push tokens live there)."""
        woken: list[tuple[str, str]] = []
        self.b.table.on_absent = lambda account, uri: woken.append((account, uri))
        self.b.detach("tel:+2")
        self.a.table.invite(Att("tel:+1"), 3, "tel:+2", b"m")
        self.link.flush()
        self.assertEqual(woken, [("acme", "tel:+2")])
        self.a.parties.take()

    def test_link_not_open(self) -> None:
        """No connection to the callee's instance: not-connected at once."""
        self.link.up = False
        self.a.table.invite(Att("tel:+1"), 3, "tel:+2", b"m")
        [(_, kind, error)] = self.a.parties.take()
        self.assertEqual((kind, error["code"]), ("error", "not-connected"))
        self.assertEqual(self.a.relay.live, set())
        self.assertEqual(self.a.table.sessions, {})

    def test_offer_not_confirmed(self) -> None:
        """crs2 silent: after OFFER_TIMEOUT the caller gets not-connected and
        crs2 is told to drop the call if the invite ever reaches it."""
        self.a.table.invite(Att("tel:+1"), 3, "tel:+2", b"m")
        frames = list(self.link.queue)
        self.link.queue.clear()
        self.pair.clock.advance(OFFER_TIMEOUT)
        [(_, kind, error)] = self.a.parties.take()
        self.assertEqual((kind, error["code"]), ("error", "not-connected"))
        self.assertEqual(self.a.relay.live, set())
        hangup = list(self.link.queue)
        self.link.queue.clear()
        self.link.queue.extend(frames + hangup)  # the invite arrives late, then the hangup
        self.link.flush()
        self.assertEqual(self.b.calls.forwarded, {})
        self.assertEqual(kinds(self.b.parties.take()), [("tel:+2", "invite"), ("tel:+2", "hangup")])
        self.assertEqual(self.a.parties.take(), [])

    def test_no_answer(self) -> None:
        """The answer timeout runs at the caller's instance and ends both sides."""
        self.place()
        self.pair.clock.advance(ANSWER_TIMEOUT)
        self.link.flush()
        [(_, _, a)] = self.a.parties.take()
        [(_, _, b)] = self.b.parties.take()
        self.assertEqual((a["code"], a["who"], b["code"], b["who"]), ("no-answer", "crs") * 2)
        self.assertEqual(self.b.calls.forwarded, {})

    def test_caller_instance_forgets(self) -> None:
        """crs1 neither ends nor sees answered a call it forwarded (it
        restarted, say): crs2 ends it after crs1's answer timeout and some."""
        sid = self.place()
        del self.a.table.sessions[sid]  # crs1 lost it without a trace
        self.a.table.by_uri.clear()
        self.pair.clock.advance(ANSWER_TIMEOUT + OFFER_TIMEOUT)
        [(_, kind, hangup)] = self.b.parties.take()
        self.assertEqual((kind, hangup["code"], hangup["who"]), ("hangup", "no-answer", "crs"))
        self.assertEqual(self.b.calls.forwarded, {})
        self.link.flush()  # crs1 ignores the hangup of a session it does not know
        self.assertEqual(self.a.parties.take(), [])
        for call in self.pair.clock.getDelayedCalls():
            call.cancel()  # crs1's own timer of the forgotten session

    def test_answered_call_not_timed_out(self) -> None:
        sid = self.place()
        self.b.talk("tel:+2", sid)
        self.link.flush()
        self.pair.clock.advance(ANSWER_TIMEOUT * 3)
        self.assertEqual(self.b.table.rows()[0][3], "talk")
        self.a.hangup("tel:+1", sid)
        self.link.flush()

    def test_link_lost_mid_call(self) -> None:
        """The link to the other instance goes down during a call: both
        clients are hung up, the relay session is removed, nothing is left."""
        sid = self.place()
        self.b.talk("tel:+2", sid)
        self.link.flush()
        self.a.parties.take()
        self.link.cut()
        [(_, _, a)] = self.a.parties.take()
        [(_, _, b)] = self.b.parties.take()
        self.assertEqual((a["code"], a["who"]), ("not-connected", "crs"))
        self.assertEqual((b["code"], b["who"]), ("not-connected", "crs"))
        self.assertEqual(self.a.relay.live, set())
        self.assertEqual((self.a.table.sessions, self.b.calls.forwarded), ({}, {}))
        # the callee's late hangup after the cut is an unknown session at crs2
        self.b.hangup("tel:+2", sid)
        [(_, kind, error)] = self.b.parties.take()
        self.assertEqual((kind, error["code"]), ("error", "not-found"))

    def test_link_lost_before_offer(self) -> None:
        self.a.table.invite(Att("tel:+1"), 3, "tel:+2", b"m")
        self.link.cut()
        [(_, kind, error)] = self.a.parties.take()
        self.assertEqual((kind, error["code"]), ("error", "not-connected"))
        self.assertEqual(self.a.table.sessions, {})

    def test_caller_limit(self) -> None:
        """The caller's limit of calls at once holds for callees elsewhere."""
        for n in range(MAX_SESSIONS_PER_URI):
            self.a.table.invite(Att("tel:+1"), n, "tel:+2" if n % 2 else "tel:+4", b"m")
            self.link.flush()
        self.assertEqual(len(self.a.parties.take()), MAX_SESSIONS_PER_URI)
        self.a.table.invite(Att("tel:+1"), 99, "tel:+2", b"m")
        [(_, _, error)] = self.a.parties.take()
        self.assertEqual(error["code"], "busy")
        self.a.detach("tel:+1")
        self.link.flush()
        self.assertEqual(self.b.calls.forwarded, {})

    def test_peer_share_limited(self) -> None:
        """One peer has at most max_forwarded calls offered here at once."""
        self.b.calls.max_forwarded = 2
        for n in range(3):
            self.a.table.invite(Att("tel:+1"), n, "tel:+2", b"m")
            self.link.flush()
        sent = self.a.parties.take()
        self.assertEqual([kind for _, kind, _ in sent], ["session", "session", "error"])
        self.assertEqual(sent[2][2]["code"], "busy")
        self.assertEqual(len(self.b.calls.forwarded), 2)
        self.a.detach("tel:+1")
        self.link.flush()

    def test_glare_at_once(self) -> None:
        """tel:+1 (crs1) and tel:+2 (crs2) invite each other at the same
        time: on both instances the smaller URI's invite wins."""
        self.a.table.invite(Att("tel:+1"), 1, "tel:+2", b"m")
        self.b.table.invite(Att("tel:+2"), 2, "tel:+1", b"m")
        self.link.flush()
        a, b = self.a.parties.take(), self.b.parties.take()
        self.assertEqual(kinds(a), [("tel:+1", "session")])
        self.assertEqual(kinds(b), [("tel:+2", "error"), ("tel:+2", "invite")])
        self.assertEqual((b[0][2]["id"], b[0][2]["code"]), (2, "glare"))
        self.assertEqual(b[1][2]["from"], "tel:+1")
        self.assertEqual(len(self.a.table.sessions), 1)
        self.assertEqual((self.b.table.sessions, len(self.b.calls.forwarded)), ({}, 1))
        self.assertEqual(self.b.relay.live, set())
        self.a.hangup("tel:+1", a[0][2]["session"])
        self.link.flush()

    def test_glare_after_offer(self) -> None:
        """tel:+2's invite already rings at tel:+1 when tel:+1 calls tel:+2:
        the smaller URI (tel:+1) wins, tel:+2's call ends with glare."""
        self.b.table.invite(Att("tel:+2"), 2, "tel:+1", b"m")
        self.link.flush()
        self.assertEqual(kinds(self.a.parties.take()), [("tel:+1", "invite")])
        self.b.parties.take()
        self.a.table.invite(Att("tel:+1"), 1, "tel:+2", b"m")
        self.link.flush()
        a, b = self.a.parties.take(), self.b.parties.take()
        self.assertEqual(kinds(b), [("tel:+2", "hangup"), ("tel:+2", "invite")])
        self.assertEqual((b[0][2]["code"], b[0][2]["who"]), ("glare", "crs"))
        self.assertEqual(kinds(a), [("tel:+1", "hangup"), ("tel:+1", "session")])
        self.assertEqual(a[0][2]["code"], "glare")
        self.assertEqual((self.a.calls.forwarded, self.b.table.sessions), ({}, {}))
        self.a.detach("tel:+1")
        self.link.flush()

    def test_glare_bigger_uri_loses(self) -> None:
        """tel:+3 (crs1) calls tel:+2 (crs2) while tel:+2's invite rings at
        tel:+3: tel:+2 is the smaller URI, so tel:+3's invite fails with glare."""
        self.b.table.invite(Att("tel:+2"), 2, "tel:+3", b"m")
        self.link.flush()
        self.a.parties.take()
        self.b.parties.take()
        self.a.table.invite(Att("tel:+3"), 3, "tel:+2", b"m")
        self.link.flush()
        [(uri, kind, error)] = self.a.parties.take()
        self.assertEqual((uri, kind, error["code"], error["id"]), ("tel:+3", "error", "glare", 3))
        self.assertEqual(self.b.parties.take(), [])
        self.assertEqual(self.a.table.rows()[1][3], "hangup(glare, crs)")
        self.b.detach("tel:+2")
        self.link.flush()

    def test_step_before_offered(self) -> None:
        """A ringing that overtakes the offer still gives the caller its
        session first, then ringing."""
        self.a.table.invite(Att("tel:+1"), 3, "tel:+2", b"m")
        self.link.flush()
        self.a.parties.take()
        session = next(iter(self.a.table.sessions.values()))
        session.offered = False  # as if call-offered were still on its way
        self.a.table.remote_ringing("crs2", session.id)
        self.assertEqual(
            kinds(self.a.parties.take()), [("tel:+1", "session"), ("tel:+1", "ringing")]
        )
        self.a.hangup("tel:+1", session.id)
        self.link.flush()

    def test_frames_only_from_the_callees_instance(self) -> None:
        """A step for a session from another peer than its callee's is ignored."""
        sid = self.place()
        self.a.calls.receive("crs3", "call-talk", {"session": sid})
        self.a.calls.receive("crs3", HANGUP_FRAME, {"session": sid, "code": "x", "who": "callee"})
        self.assertEqual(self.a.parties.take(), [])
        self.assertEqual(self.a.table.rows()[0][3], "invite")
        self.a.hangup("tel:+1", sid)
        self.link.flush()

    def test_callee_cannot_act_as_caller_side(self) -> None:
        """The callee's client at crs2 cannot reach the caller's side's
        state by naming the session at crs1's table; another client of
        crs2 cannot act on a call that is not its own."""
        sid = self.place()
        self.b.talk("tel:+4", sid)
        [(_, kind, error)] = self.b.parties.take()
        self.assertEqual((kind, error["code"]), ("error", "not-found"))
        self.a.hangup("tel:+1", sid)
        self.link.flush()

    def test_reused_session_id_refused(self) -> None:
        sid = self.place()
        fields = dict(self.link.sent[0][2])
        self.b.calls.receive("crs1", INVITE_FRAME, fields)
        self.assertEqual(self.link.sent[-1][1:], (REFUSED_FRAME, {"session": sid, "code": "busy"}))
        self.link.queue.clear()
        self.a.hangup("tel:+1", sid)
        self.link.flush()

    def test_busy_keeps_callee_from_moving(self) -> None:
        sid = self.place()
        self.assertTrue(self.b.calls.busy("tel:+2"))
        self.assertTrue(self.a.calls.busy("tel:+1"))
        self.assertFalse(self.b.calls.busy("tel:+4"))
        self.a.hangup("tel:+1", sid)
        self.link.flush()
        self.assertFalse(self.b.calls.busy("tel:+2"))

    def test_stop_ends_forwarded(self) -> None:
        sid = self.place()
        self.b.calls.stop()
        self.link.flush()
        [(_, _, a)] = self.a.parties.take()
        [(_, _, b)] = self.b.parties.take()
        self.assertEqual((a["code"], b["code"]), ("shutdown", "shutdown"))
        self.assertNotIn(sid, self.a.table.sessions)


# -- hostile frames -------------------------------------------------------------------

GOOD_INVITE: dict[str, object] = {
    "session": "abc123",
    "from": "tel:+1",
    "to": "tel:+2;101",
    "account": "acme",
    "mikey": b"m",
    "relay-host": "10.0.0.1",
    "relay-port": 5146,
    "relay-tag": b"B" * 8,
}

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.text(max_size=300),
    st.binary(max_size=5000),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


class HostileFrameTests(SynchronousTestCase):
    def test_good_invite(self) -> None:
        invite = decode_call(INVITE_FRAME, dict(GOOD_INVITE))
        assert isinstance(invite, CallInvite)
        self.assertEqual((invite.callee, invite.to), ("tel:+2", "tel:+2;101"))

    def test_refused(self) -> None:
        """Each field's type and limits are checked; nothing else than WireError escapes."""
        bad: list[tuple[str, dict[str, object]]] = [
            (INVITE_FRAME, {**GOOD_INVITE, "mikey": b"x" * 4097}),
            (INVITE_FRAME, {**GOOD_INVITE, "mikey": "text"}),
            (INVITE_FRAME, {**GOOD_INVITE, "relay-port": True}),
            (INVITE_FRAME, {**GOOD_INVITE, "relay-port": 70000}),
            (INVITE_FRAME, {**GOOD_INVITE, "relay-tag": b"x" * 17}),
            (INVITE_FRAME, {**GOOD_INVITE, "to": "sip:bob"}),
            (INVITE_FRAME, {**GOOD_INVITE, "account": "a b"}),
            (INVITE_FRAME, {**GOOD_INVITE, "session": "a" * 65}),
            (INVITE_FRAME, {**GOOD_INVITE, "extra": 1}),
            (INVITE_FRAME, {k: v for k, v in GOOD_INVITE.items() if k != "mikey"}),
            (OFFERED_FRAME, {"session": "s 1"}),
            (OFFERED_FRAME, {}),
            (REFUSED_FRAME, {"session": "s1", "code": "glare-ish"}),
            (HANGUP_FRAME, {"session": "s1", "code": "Normal", "who": "caller"}),
            (HANGUP_FRAME, {"session": "s1", "code": "normal", "who": "admin"}),
            (HANGUP_FRAME, {"session": "s1", "code": "normal", "who": "crs", "reason": "x" * 201}),
            (HOLD_FRAME, {"session": "s1", "held": 1}),
            (HOLD_FRAME, {"session": "s1"}),
            (HOLD_FRAME, {"session": "s1", "held": True, "who": "caller"}),
            ("call-unknown", {"session": "s1"}),
        ]
        hold = decode_call(HOLD_FRAME, {"session": "s1", "held": False})
        self.assertEqual(hold.fields(), {"session": "s1", "held": False})
        for frame_type, fields in bad:
            self.assertRaises(WireError, decode_call, frame_type, fields)

    @given(
        st.sampled_from(FRAME_TYPES),
        st.dictionaries(
            st.sampled_from([*GOOD_INVITE, "code", "who", "reason", "held", "x"]),
            values,
            max_size=10,
        ),
    )
    @settings(max_examples=400)
    def test_random_fields(self, frame_type: str, fields: dict[str, object]) -> None:
        try:
            decode_call(frame_type, fields)
        except WireError:
            pass

    @given(st.sampled_from(sorted(GOOD_INVITE)), values)
    @settings(max_examples=300)
    def test_one_field_spoiled(self, name: str, value: object) -> None:
        """A good invite with one field replaced: decoded only if still valid."""
        fields = {**GOOD_INVITE, name: value}
        try:
            invite = decode_call(INVITE_FRAME, fields)
        except WireError:
            return
        assert isinstance(invite, CallInvite)
        self.assertEqual(invite.fields(), fields)

    def test_hostile_frame_changes_nothing(self) -> None:
        """A peer's bad frame raises WireError (the link drops the
        connection) before anything is done."""
        pair = Pair()
        with self.assertRaises(WireError):
            pair.b.calls.receive("crs1", INVITE_FRAME, {**GOOD_INVITE, "mikey": b""})
        self.assertEqual(
            (pair.b.calls.forwarded, pair.b.parties.sent, pair.link.sent), ({}, [], [])
        )


# -- the state machine ------------------------------------------------------------------

URIS = sorted(HOME)


class CrossCallMachine(RuleBasedStateMachine):
    """Random calls between the two instances, with steps, hangups,
    detaches, timeouts, frames in flight and link cuts: no relay session
    outlives its call, and once the frames are delivered the two sides
    agree on which calls exist; at the end nothing is left."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = Pair()
        self.request = 0
        self.blipped = False

    def ids(self) -> list[str]:
        known = set(self.pair.a.table.sessions) | set(self.pair.b.table.sessions)
        known |= set(self.pair.a.calls.forwarded) | set(self.pair.b.calls.forwarded)
        return sorted(known) or ["s0"]

    @rule(caller=st.sampled_from(URIS), callee=st.sampled_from(URIS))
    def invite(self, caller: str, callee: str) -> None:
        here = self.pair.at(caller)
        if caller not in here.parties.online:
            return
        self.request += 1
        here.table.invite(Att(caller), self.request, callee, b"m")

    @rule(
        uri=st.sampled_from(URIS),
        pick=st.integers(0, 50),
        step=st.sampled_from(["ringing", "talk", "hangup", "hold", "resume"]),
    )
    def client_step(self, uri: str, pick: int, step: str) -> None:
        here = self.pair.at(uri)
        if uri not in here.parties.online:
            return
        ids = self.ids()
        getattr(here, step)(uri, ids[pick % len(ids)])

    @rule(uri=st.sampled_from(URIS))
    def detach(self, uri: str) -> None:
        self.pair.at(uri).detach(uri)

    @rule(uri=st.sampled_from(URIS))
    def attach(self, uri: str) -> None:
        self.pair.at(uri).attach(uri)

    @rule(count=st.integers(1, 5))
    def deliver(self, count: int) -> None:
        self.pair.link.flush(count)

    @rule(seconds=st.sampled_from([1.0, OFFER_TIMEOUT, ANSWER_TIMEOUT]))
    def time_passes(self, seconds: float) -> None:
        self.pair.clock.advance(seconds)

    @precondition(lambda self: self.pair.link.up)
    @rule()
    def cut(self) -> None:
        self.pair.link.cut()
        self.blipped = False

    @precondition(lambda self: self.pair.link.up)
    @rule()
    def connection_lost(self) -> None:
        """The connection goes with the frames in flight, but the link is
        not seen down: heal brings it back.  Lost steps leave the sides
        apart until a timeout or a hangup ends the call."""
        self.pair.link.up = False
        self.pair.link.queue.clear()
        self.blipped = True

    @precondition(lambda self: not self.pair.link.up)
    @rule()
    def heal(self) -> None:
        self.pair.link.heal()

    @invariant()
    def relay_sessions_only_for_live_calls(self) -> None:
        for side in (self.pair.a, self.pair.b):
            assert side.relay.live <= set(side.table.sessions), (
                side.relay.live,
                side.table.sessions,
            )
            assert len(side.relay.released) == len(set(side.relay.released)), "released twice"

    @invariant()
    def sides_agree_when_quiet(self) -> None:
        if self.pair.link.queue or not self.pair.link.up:
            return
        sides = (self.pair.a, self.pair.b)
        if self.blipped and not any(x.table.sessions or x.calls.forwarded for x in sides):
            self.blipped = False  # the calls a lost connection upset are over
        if self.pair.a.calls.unsent or self.pair.b.calls.unsent or self.blipped:
            return
        for here, there in ((self.pair.a, self.pair.b), (self.pair.b, self.pair.a)):
            remote = {s.id for s in here.table.sessions.values() if s.remote == there.name}
            forwarded = {sid for sid, f in there.calls.forwarded.items() if f.peer == here.name}
            assert remote == forwarded, (here.name, remote, forwarded)
            assert all(s.offered for s in here.table.sessions.values() if s.remote), "stuck offer"

    def teardown(self) -> None:
        pair = self.pair
        if not pair.link.up:
            pair.link.heal()
        for uri in URIS:
            pair.at(uri).detach(uri)
        pair.link.flush()
        pair.clock.advance(ANSWER_TIMEOUT)
        pair.link.flush()
        for side in (pair.a, pair.b):
            assert side.table.sessions == {}, side.table.sessions
            assert side.calls.forwarded == {}, side.calls.forwarded
            assert side.relay.live == set()
        assert pair.clock.getDelayedCalls() == []


class CrossCallMachineTests(SynchronousTestCase):
    def test_machine(self) -> None:
        """Random calls, steps, detaches, timeouts, frames in flight and link
        cuts leave no relay session or session-table entry behind."""
        run_state_machine_as_test(
            CrossCallMachine,
            settings=settings(max_examples=150, stateful_step_count=40, deadline=None),
        )
