"""
The CIG's call legs and media bridges on explicit machines
(L{cryptify.cig.lifecycle}): every move is checked against its table,
events a state does not take are ignored, and the bridge handle sends
each command once.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.lifecycle import IllegalTransition, Lifecycle, check_table
from cryptify.cig.sif.legs import IN_MOVES, OUT_MOVES, SHOWN_IN, SHOWN_OUT, InState, OutState
from cryptify.protocols.sip.transaction import T1
from tests.test_sip_sif import OutgoingCase, SifCase, invite

#: Every machine: its table, where it starts, and how its states are shown.
MACHINES: list[tuple[Mapping[Any, frozenset[Any]], enum.Enum, Mapping[Any, object] | None]] = [
    (IN_MOVES, InState.PLACED, SHOWN_IN),
    (OUT_MOVES, OutState.CALLING, SHOWN_OUT),
]


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"
    GONE = "gone"


COLOUR_MOVES = {
    Colour.RED: frozenset({Colour.GREEN}),
    Colour.GREEN: frozenset({Colour.RED, Colour.GONE}),
    Colour.GONE: frozenset[Colour](),
}


class LifecycleTests(SynchronousTestCase):
    """The machine itself: moves along the table, refusals, final states."""

    def test_moves_along_table(self) -> None:
        """Listed moves change the state; a state without moves is final."""
        machine = Lifecycle("light", COLOUR_MOVES, Colour.RED)
        machine.move(Colour.GREEN)
        machine.move(Colour.GONE)
        self.assertEqual(machine.state, Colour.GONE)
        self.assertTrue(machine.final)

    def test_illegal_move_refused(self) -> None:
        """A move the table does not list raises and leaves the state as it was."""
        machine = Lifecycle("light", COLOUR_MOVES, Colour.RED)
        with self.assertRaises(IllegalTransition) as caught:
            machine.move(Colour.GONE)
        self.assertEqual(str(caught.exception), "light: RED -> GONE is not allowed")
        self.assertEqual(machine.state, Colour.RED)
        self.assertFalse(machine.can(Colour.GONE))

    def test_table_names_every_state(self) -> None:
        """A table that leaves a state out is refused when it is defined."""
        with self.assertRaises(ValueError):
            check_table(Colour, {Colour.RED: frozenset({Colour.GREEN})})

    @given(st.data())
    def test_every_machine_checks_every_move(self, data: st.DataObject) -> None:
        """For each leg and bridge machine, a move from any state succeeds
        exactly when the table lists it."""
        moves, _, _ = data.draw(st.sampled_from(MACHINES))
        states = list(type(next(iter(moves))))
        old = data.draw(st.sampled_from(states))
        new = data.draw(st.sampled_from(states))
        machine = Lifecycle("m", moves, old)
        if new in moves[old]:
            machine.move(new)
            self.assertEqual(machine.state, new)
        else:
            self.assertRaises(IllegalTransition, machine.move, new)
            self.assertEqual(machine.state, old)

    def test_tables_reachable_and_shown(self) -> None:
        """Every state of every machine is reachable from its start, a final
        state is reachable from every state, and each state has a shown value."""
        for moves, start, shown in MACHINES:
            seen, todo = {start}, [start]
            while todo:
                for new in moves[todo.pop()]:
                    if new not in seen:
                        seen.add(new)
                        todo.append(new)
            self.assertEqual(seen, set(type(start)), type(start).__name__)
            if shown is not None:
                self.assertEqual(set(shown), set(type(start)))
            for state in moves:
                self.assertTrue(self._ends(moves, state), f"{state} never ends")

    def _ends(self, moves: Mapping[Any, frozenset[Any]], state: Any) -> bool:
        seen, todo = {state}, [state]
        while todo:
            here = todo.pop()
            if not moves[here]:
                return True
            todo.extend(s for s in moves[here] if s not in seen)
            seen.update(moves[here])
        return False


class SipCallMachineTests(SifCase):
    """A call from the PBX (SipCall) on its machine."""

    def setUp(self) -> None:
        super().setUp()
        self.tel.mode = "ring"

    def test_states_follow_the_call(self) -> None:
        """PLACED -> RINGING (180 sent) -> ANSWERED (200) -> HUNG_UP (BYE
        from the tel side); show call reads the machine."""
        self.send(invite())
        [sip_call] = self.sif.invites.values()
        self.assertIs(sip_call.lifecycle.state, InState.RINGING)
        _, leg = self.tel.legs[0]
        leg.answered()
        self.assertIs(sip_call.lifecycle.state, InState.ANSWERED)
        self.assertEqual(self.calls.rows()[0][4], "ANSWER")
        leg.hung_up()
        self.assertIs(sip_call.lifecycle.state, InState.HUNG_UP)
        self.assertEqual(self.calls.rows()[0][4], "HANGUP")
        self.clock.advance(64 * T1)

    def test_events_after_the_end_ignored(self) -> None:
        """Once rejected, a late answer or ringing sends nothing and moves
        nothing; forcing the move is refused."""
        self.send(invite())
        [sip_call] = self.sif.invites.values()
        _, leg = self.tel.legs[0]
        leg.rejected(486)
        self.assertIs(sip_call.lifecycle.state, InState.REJECTED)
        sent = len(self.channel.sent)
        leg.answered()
        leg.ringing()
        self.assertEqual(len(self.channel.sent), sent)
        self.assertIs(sip_call.lifecycle.state, InState.REJECTED)
        self.assertRaises(IllegalTransition, sip_call.lifecycle.move, InState.ANSWERED)

    def test_cancel_only_before_the_answer(self) -> None:
        """A CANCEL after the 200 leaves the answered call alone."""
        self.tel.mode = "answer"
        out = self.send(invite())
        [sip_call] = self.sif.invites.values()
        self.assertIs(sip_call.lifecycle.state, InState.ANSWERED)
        cancel = invite().replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL")
        self.assertEqual(self.statuses(self.send(cancel)), [200])
        self.assertIs(sip_call.lifecycle.state, InState.ANSWERED)
        self.assertEqual(self.statuses(out)[-1], 200)
        sip_call.end_from_sip()


class OutCallMachineTests(OutgoingCase):
    """A call to the PBX (OutCall) on its machine."""

    def test_cancel_pending_then_sent(self) -> None:
        """Hung up before any provisional: CANCEL_PENDING; the 100 moves it
        to CANCELLED as the CANCEL goes out; a late 180 moves nothing."""
        sent = self.place()
        out = self.sif.outgoing[self.call]
        self.sif.hang_up(self.call)
        self.assertIs(out.lifecycle.state, OutState.CANCEL_PENDING)
        self.assertEqual(self.calls.rows()[0][4], "HANGUP")
        self.answer(sent, 100)
        self.assertIs(out.lifecycle.state, OutState.CANCELLED)
        self.answer(sent, 180)
        self.assertIs(out.lifecycle.state, OutState.CANCELLED)
        self.assertEqual(self.leg.events, [])
        self.assertRaises(IllegalTransition, out.lifecycle.move, OutState.RINGING)
        self.clock.advance(64 * T1)
        self.clock.advance(60)

    def test_answered_then_hung_up(self) -> None:
        """CALLING -> TRYING -> RINGING -> ANSWERED -> HUNG_UP; the table is keyed by the call."""
        sent = self.place()
        out = self.sif.outgoing[self.call]
        self.assertIs(out.lifecycle.state, OutState.CALLING)
        for status, state in ((100, OutState.TRYING), (180, OutState.RINGING)):
            self.answer(sent, status)
            self.assertIs(out.lifecycle.state, state)
        self.answer(sent, 200)
        self.assertIs(out.lifecycle.state, OutState.ANSWERED)
        self.sif.hang_up(self.call)
        self.assertIs(out.lifecycle.state, OutState.HUNG_UP)
        self.assertNotIn(self.call, self.sif.outgoing)
        self.clock.advance(64 * T1)
        self.clock.advance(60)
