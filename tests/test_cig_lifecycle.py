"""
The CIG's call legs and media bridges on explicit machines
(L{cryptify.lifecycle}): every move is checked against its table,
events a state does not take are ignored, and the bridge handle sends
each command once.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.calls import Call
from cryptify.cig.sif.legs import IN_MOVES, OUT_MOVES, SHOWN_IN, SHOWN_OUT, InState, OutState
from cryptify.cig.tel.bridge import BRIDGE_MOVES, Bridge, BridgeState
from cryptify.cig.tel.legs import (
    OUT_LEG_MOVES,
    SHOWN_OUT_LEG,
    SHOWN_TEL,
    TEL_MOVES,
    OutLegState,
    TelState,
)
from cryptify.lifecycle import IllegalTransition, Lifecycle, check_table
from cryptify.protocols.bridge_control import BridgeAdd, BridgeError, BridgeRemove, BridgeUpdate
from cryptify.protocols.sip.sdp import SrtpKeys
from cryptify.protocols.sip.transaction import T1
from cryptify.protocols.umsg import Message, message
from tests.cig_support import ANSWER, CALLER, TelCase
from tests.fakes import RecordingLeg
from tests.sip_support import OutgoingCase, SifCase, invite

#: Every machine: its table, where it starts, and how its states are shown.
MACHINES: list[tuple[Mapping[Any, frozenset[Any]], enum.Enum, Mapping[Any, object] | None]] = [
    (IN_MOVES, InState.PLACED, SHOWN_IN),
    (OUT_MOVES, OutState.CALLING, SHOWN_OUT),
    (TEL_MOVES, TelState.PLACED, SHOWN_TEL),
    (OUT_LEG_MOVES, OutLegState.CREATED, SHOWN_OUT_LEG),
    (BRIDGE_MOVES, BridgeState.NONE, None),
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


class FakeLink:
    """cig-relay's control link: each command's answer fired by the test."""

    def __init__(self) -> None:
        self.sent: list[tuple[type[amp.Command], dict[str, Any]]] = []
        self.answers: list[Deferred[dict[str, Any]]] = []

    def call(self, command: type[amp.Command], **kwargs: Any) -> Deferred[dict[str, Any]]:
        self.sent.append((command, kwargs))
        self.answers.append(Deferred())
        return self.answers[-1]

    def commands(self) -> list[type[amp.Command]]:
        return [command for command, _ in self.sent]


class FakeMedia:
    def media_of(self, call: Call) -> tuple[int | None, bytes] | None:
        return 1024, ANSWER

    def srtp_of(self, call: Call) -> SrtpKeys | None:
        return None

    def direction_of(self, call: Call) -> str:
        return "sendrecv"


class FakeLeg:
    """A secure leg as the bridge reads it."""

    call = Call(CALLER, "tel:+8888;101")
    session: str | None = "s1"
    relay_host = "192.0.2.99"
    relay_port = 146
    relay_tag = b"T" * 8
    policy_key = b"K" * 30
    secure_codec = "PCMU"


class BridgeHandleTests(SynchronousTestCase):
    """One bridge handle per call: each command once, removal after a pending add."""

    def setUp(self) -> None:
        self.link = FakeLink()
        self.bridge = Bridge(self.link, FakeMedia(), FakeLeg())

    def results(self, d: Deferred[bool]) -> list[bool]:
        got: list[bool] = []
        d.addCallback(got.append)
        return got

    def test_add_once(self) -> None:
        """A second add while the first is on its way sends nothing and fires False."""
        first = self.results(self.bridge.add())
        second = self.results(self.bridge.add())
        self.assertEqual((self.link.commands(), second), ([BridgeAdd], [False]))
        self.link.answers[0].callback({})
        self.assertEqual(first, [True])
        self.assertTrue(self.bridge.up)
        self.assertEqual(self.results(self.bridge.add()), [False])
        self.assertEqual(self.link.commands(), [BridgeAdd])

    def test_removed_while_adding(self) -> None:
        """A removal while BridgeAdd is on its way waits for its answer, then
        sends BridgeRemove once; the add fires False."""
        added = self.results(self.bridge.add())
        self.bridge.remove()
        self.bridge.remove()
        self.assertIs(self.bridge.lifecycle.state, BridgeState.UNWANTED)
        self.assertEqual(self.link.commands(), [BridgeAdd])
        self.link.answers[0].callback({})
        self.assertEqual(added, [False])
        self.assertEqual(self.link.commands(), [BridgeAdd, BridgeRemove])
        self.bridge.remove()
        self.assertEqual(self.link.commands(), [BridgeAdd, BridgeRemove])
        self.assertIs(self.bridge.lifecycle.state, BridgeState.GONE)

    def test_update_only_while_up(self) -> None:
        """BridgeUpdate goes out only for a bridge that is up."""
        self.bridge.update()
        self.bridge.add()
        self.bridge.update()
        self.assertEqual(self.link.commands(), [BridgeAdd])
        self.link.answers[0].callback({})
        self.bridge.update()
        self.assertEqual(self.link.commands(), [BridgeAdd, BridgeUpdate])
        self.bridge.remove()
        self.bridge.update()
        self.assertEqual(self.link.commands(), [BridgeAdd, BridgeUpdate, BridgeRemove])

    def test_refused(self) -> None:
        """A refused BridgeAdd fails the add and leaves nothing to remove."""
        failures: list[Failure] = []
        self.bridge.add().addErrback(failures.append)
        self.link.answers[0].errback(BridgeError("port busy"))
        self.assertEqual(len(failures), 1)
        self.bridge.remove()
        self.assertEqual(self.link.commands(), [BridgeAdd])
        self.assertIs(self.bridge.lifecycle.state, BridgeState.GONE)

    def test_never_added(self) -> None:
        """Removing a bridge never asked for sends nothing, and it cannot be added after."""
        self.bridge.remove()
        self.assertEqual(self.results(self.bridge.add()), [False])
        self.assertEqual(self.link.commands(), [])


class TelCallMachineTests(TelCase):
    """A secure user's call to the PBX (TelCall) on its machine."""

    def test_states(self) -> None:
        """PLACED -> RINGING -> TALKING (bridge up) -> ENDED; a late ringing
        is ignored and forcing a move out of ENDED is refused."""
        from cryptify.client.session import Incoming

        self.tel.handle(Incoming(self.invite()))
        tel_call = self.tel.active["s1"]
        [(_, leg)] = self.sif.legs
        self.assertIs(tel_call.lifecycle.state, TelState.PLACED)
        leg.ringing()
        self.assertIs(tel_call.lifecycle.state, TelState.RINGING)
        leg.answered()
        self.assertIs(tel_call.lifecycle.state, TelState.TALKING)
        leg.answered()  # a second answer does not add a second bridge
        self.assertEqual([c for c, _ in self.bridge.sent], [BridgeAdd])
        leg.hung_up()
        self.assertIs(tel_call.lifecycle.state, TelState.ENDED)
        leg.ringing()
        self.assertEqual(self.types(), ["ringing", "talk", "hangup"])
        self.assertRaises(IllegalTransition, tel_call.lifecycle.move, TelState.RINGING)


class OutLegMachineTests(TelCase):
    """The UMSG side of a call from the PBX (OutLeg) on its machine."""

    def place(self) -> tuple[Call, RecordingLeg, Message]:
        call = Call("sip:101@pbx.com", "sip:9461111@secure.com", "tel:+101", CALLER)
        leg = RecordingLeg()
        self.tel.place_call(call, leg)
        return call, leg, self.out[-1]

    def answer(self, sent: Message, type_: str = "session") -> None:
        from cryptify.client.session import Answered

        relay = {"relay-host": "192.0.2.99", "relay-port": 146, "relay-tag": b"C" * 8}
        fields = relay if type_ == "session" else {"code": "busy"}
        self.tel.handle(Answered(sent["id"], message(type_, id=sent["id"], session="s9", **fields)))

    def test_states(self) -> None:
        """INVITING -> TRYING -> RINGING -> TALKING -> ENDED, keyed by the call."""
        from cryptify.client.session import Incoming

        call, leg, sent = self.place()
        out = self.tel.outgoing[call]
        self.assertIs(out.lifecycle.state, OutLegState.INVITING)
        self.answer(sent)
        self.assertIs(out.lifecycle.state, OutLegState.TRYING)
        self.tel.handle(Incoming(message("ringing", session="s9")))
        self.assertIs(out.lifecycle.state, OutLegState.RINGING)
        self.tel.handle(Incoming(message("talk", session="s9")))
        self.tel.handle(Incoming(message("talk", session="s9")))
        self.assertIs(out.lifecycle.state, OutLegState.TALKING)
        self.assertEqual([c for c, _ in self.bridge.sent], [BridgeAdd])
        self.tel.hang_up(call)
        self.assertIs(out.lifecycle.state, OutLegState.ENDED)
        self.assertEqual(leg.events, ["trying", "ringing", "answered"])
        self.assertRaises(IllegalTransition, out.lifecycle.move, OutLegState.TALKING)

    def test_error_after_hangup_ignored(self) -> None:
        """An error answer for an invite the PBX already hung up moves
        nothing and lists the call once in show umsg."""
        call, leg, sent = self.place()
        self.tel.hang_up(call)
        self.answer(sent, "error")
        self.assertEqual(leg.events, [])
        self.assertEqual([r[2] for r in self.tel.umsg_rows()], ["HANGUP"])
