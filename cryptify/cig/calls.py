"""
The CIG's calls as the operator sees them: the states of C{cig-cli show
call} and the lines of C{session.log}.

States (the last completed event of a call): ROUTED, TRY, RING, REJECT,
ANSWER, HANGUP. A call that has ended (REJECT, HANGUP) stays listed for
L{CALL_LINGER} seconds, so that the operator can see how it ended.

C{session.log} lines, one per session event, comma-separated:
C{Header, Time, Caller, Callee, Routed-Caller, Routed-Callee, State,
Caller-if-ID, Callee-if-ID, Source}, the header being C{event}, the time
UTC, and the state one of routing, routed, failed, trying, ringing, talk,
hangup. Caller-if-ID and Callee-if-ID identify the call on its two
interfaces (for SIP the Call-ID); C{-} where there is none yet. Source,
after the manual's nine fields (and the last column of C{show call}), is
where the call came from: C{udp:ADDR:PORT} or C{tcp:ADDR:PORT} for calls
from the PBX, C{umsg} for calls from the secure side.

The contract between the two interfaces is here too: a leg is placed with
L{TelSide.place_call} (the tel side, or the SIF for calls going to the
PBX) and reports back through L{TelLeg}. L{StubTelSide} stands in for the
UMSG interface until it exists, and is the tests' double.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

import attrs
from twisted.internet.interfaces import IReactorTime

from cryptify.logs import LineSink, LogFileService, one_line, utc_timestamp
from cryptify.protocols.sip.timers import Timer, TimerQueue

if TYPE_CHECKING:
    from .records import CallRecords

#: How long an ended call stays in C{show call}, in seconds.
CALL_LINGER = 30.0
SESSION_LOG = "session.log"
SESSION_HEADER = "event"


#: Where ``session.log`` lines go (:class:`SessionLogService` writes them
#: to the file; tests watch them): a call makes six records.
SessionRecords = LineSink


_Kept = TypeVar("_Kept")

#: The process's session.log records.
session_records = SessionRecords()


class CallState(enum.Enum):
    """The state column of C{show call}."""

    ROUTED = "ROUTED"
    TRY = "TRY"
    RING = "RING"
    REJECT = "REJECT"
    ANSWER = "ANSWER"
    HANGUP = "HANGUP"


ENDED = (CallState.REJECT, CallState.HANGUP)


@attrs.define(eq=False)
class Call:
    """
    One call through the CIG: URIs on the incoming side (C{in_*}) and on
    the outgoing side (C{out_*}), its state, and its ids on each interface.
    """

    in_from: str
    in_to: str
    out_from: str = "-"
    out_to: str = "-"
    state: CallState | None = None
    caller_if_id: str = "-"
    callee_if_id: str = "-"
    #: Where the call came from: C{udp:ADDR:PORT}, C{tcp:ADDR:PORT}, C{umsg}.
    source: str = "-"
    #: For its call record (L{cryptify.cig.records}): when it was first
    #: seen, answered and ended, who ended it (C{pbx}, C{secure}, C{cig})
    #: and why, the PBX leg's codec, and the octets of its PBX leg's media.
    started_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    ended_by: str | None = None
    end_reason: str | None = None
    codec: str | None = None
    octets_to_pbx: int | None = None
    octets_from_pbx: int | None = None
    #: A bridge removal whose counters have not come back yet.
    media_pending: bool = False
    recorded: bool = False

    def note_end(self, by: str, reason: str) -> None:
        """Who ended the call and why (the first report counts)."""
        if self.ended_by is None:
            self.ended_by, self.end_reason = by, reason

    def row(self) -> list[str]:
        """The C{show call} row."""
        state = self.state.value if self.state is not None else "-"
        return [self.in_from, self.in_to, self.out_from, self.out_to, state, self.source]


def source_of(transport: str, address: tuple[str, int]) -> str:
    """C{udp:192.0.2.1:5060}, C{tcp:[2001:db8::1]:5060}: a call's Source."""
    host, port = address
    host = f"[{host}]" if ":" in host else host
    return f"{transport}:{host}:{port}"


def session_line(call: Call, state: str, when: float) -> str:
    """One C{session.log} record for C{call} entering C{state}."""
    fields = [
        SESSION_HEADER,
        utc_timestamp(when),
        call.in_from,
        call.in_to,
        call.out_from,
        call.out_to,
        state,
        call.caller_if_id,
        call.callee_if_id,
        call.source,
    ]
    return one_line(", ".join([f.replace(",", "%2C") if "," in f else f for f in fields]))


class SessionLogService(LogFileService):
    """
    Writes C{session.log} in C{directory} (rotated like the other logs)
    while running. The lines of one reactor turn go out in one write, at
    the end of the turn.
    """

    def __init__(
        self, directory: str, clock: IReactorTime, records: LineSink = session_records
    ) -> None:
        super().__init__(directory, SESSION_LOG, "plain", main=False, lines=records, clock=clock)
        self.records = records


@attrs.define(eq=False)
class CallTable:
    """
    The live calls, in the order they arrived; writes session.log as their
    states change.
    """

    clock: IReactorTime
    calls: list[Call] = attrs.field(factory=list)
    _linger: dict[Call, Timer] = attrs.field(factory=dict)
    #: The lingering calls' timers, on one delayed call of C{clock}.
    _timers: TimerQueue = attrs.field(
        init=False, default=attrs.Factory(lambda self: TimerQueue(self.clock), takes_self=True)
    )
    #: C{_drop}, bound once (not once per lingering call).
    _dropper: Callable[[Call], None] = attrs.field(
        init=False, default=attrs.Factory(lambda self: self._drop, takes_self=True)
    )
    #: Where ended calls are recorded (None: no call records).
    records: CallRecords | None = None

    def add(self, call: Call) -> None:
        """Start listing C{call}."""
        self.calls.append(call)

    def event(self, call: Call, state: str) -> None:
        """Write a session.log line for C{call}; an ended call is recorded."""
        now = self.clock.seconds()
        session_records.write(session_line(call, state, now))
        if call.started_at is None:
            call.started_at = now
        if state == "talk" and call.answered_at is None:
            call.answered_at = now
        elif state in ("hangup", "failed") and call.ended_at is None:
            call.ended_at = now
            if self.records is not None:
                self.records.ended(call)

    def media_stats(self, call: Call, stats: dict[str, int] | None) -> None:
        """The counters of C{call}'s bridge came back (None: they will not)."""
        if stats is not None:
            call.octets_to_pbx = stats.get("pbx_tx_octets")
            call.octets_from_pbx = stats.get("pbx_rx_octets")
        call.media_pending = False
        if self.records is not None:
            self.records.media_done(call)

    def set_state(self, call: Call, state: CallState) -> None:
        """Record C{call}'s last completed event; ended calls linger."""
        call.state = state
        if state in ENDED and call not in self._linger:
            self._linger[call] = self._timers.call_later(CALL_LINGER, self._dropper, call)

    def close(self, call: Call, state: CallState, event: str) -> None:
        """End C{call}'s row with C{state} unless it has ended (a call no leg took)."""
        if call.state not in ENDED:
            self.set_state(call, state)
            self.event(call, event)

    def _drop(self, call: Call) -> None:
        self._linger.pop(call, None)
        if call in self.calls:
            self.calls.remove(call)

    def rows(self) -> list[list[str]]:
        """The C{show call} rows."""
        return [call.row() for call in self.calls]

    def stop(self) -> None:
        """Cancel the linger timers (at shutdown)."""
        for delayed in self._linger.values():
            delayed.cancel()
        self._linger.clear()


class TelLeg(Protocol):
    """What the tel side reports about a leg it is placing (the SIF's half)."""

    def trying(self) -> None: ...

    def ringing(self) -> None: ...

    def answered(self) -> None: ...

    def rejected(self, status: int = 480) -> None: ...

    def hung_up(self) -> None: ...


class TelSide(Protocol):
    """
    The tel (secure) interface as the SIF sees it. C{place_call} starts a
    leg to C{call.out_to} from C{call.out_from} and reports on C{leg};
    C{hang_up} ends it from the SIP side.
    """

    def place_call(self, call: Call, leg: TelLeg) -> None: ...

    def hang_up(self, call: Call) -> None: ...

    def media_changed(self, call: Call) -> None:
        """The PBX sent new media for a call (a re-INVITE's offer)."""


#: How many of its latest legs, hang-ups and media changes a L{StubTelSide}
#: keeps for inspection.
STUB_KEEPS = 1000


def _keep_latest(items: list[_Kept]) -> None:
    """Drop the oldest half of C{items} once it holds twice L{STUB_KEEPS}."""
    if len(items) >= 2 * STUB_KEEPS:
        del items[:STUB_KEEPS]


@attrs.define(eq=False)
class StubTelSide:
    """
    A stand-in for the tel side until the UMSG interface exists, and the
    tests' double: C{mode} C{answer} answers every leg at once (trying,
    ringing, answered), C{ring} leaves it ringing, C{reject} declines it
    (603), C{unavailable} refuses it (480). It keeps its latest legs,
    hang-ups and media changes (at least L{STUB_KEEPS} of each), so that
    a long run under C{twistd cig --tel-stub} does not hold every call
    it ever placed.
    """

    mode: str = "unavailable"
    legs: list[tuple[Call, TelLeg]] = attrs.field(factory=list)
    hung_up: list[Call] = attrs.field(factory=list)
    media_changes: list[Call] = attrs.field(factory=list)
    #: Legs placed so far.
    placed: int = 0

    def place_call(self, call: Call, leg: TelLeg) -> None:
        self.legs.append((call, leg))
        _keep_latest(self.legs)
        self.placed += 1
        call.callee_if_id = f"stub-{self.placed}"
        if self.mode == "unavailable":
            leg.rejected(480)
            return
        leg.trying()
        if self.mode == "reject":
            leg.rejected(603)
            return
        leg.ringing()
        if self.mode == "answer":
            leg.answered()

    def hang_up(self, call: Call) -> None:
        self.hung_up.append(call)
        _keep_latest(self.hung_up)

    def media_changed(self, call: Call) -> None:
        self.media_changes.append(call)
        _keep_latest(self.media_changes)
