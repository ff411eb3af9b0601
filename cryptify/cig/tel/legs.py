"""The secure side's two kinds of call leg.

:class:`TelCall` is a call from a secure user to the PBX (the SIF places
its SIP leg and reports on it); :class:`OutLeg` is the UMSG side of a call
from the PBX to a secure user (it reports on the SIF's leg).  Both bridge
their media on cig-relay once answered, through one
:class:`~cryptify.cig.tel.bridge.Bridge` handle each.

Each leg's lifecycle is one :class:`~cryptify.lifecycle.Lifecycle`
(:class:`TelState`, :class:`OutLegState`); its ``show umsg`` state follows
from it (:data:`SHOWN_TEL`, :data:`SHOWN_OUT_LEG`).  ``docs/cig-calls.md``
draws both machines.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import attrs
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.lifecycle import Lifecycle, check_table
from cryptify.protocols.umsg import Message

from ..calls import Call, CallState, TelLeg
from .bridge import Bridge, BridgeState

if TYPE_CHECKING:
    from .core import UmsgTel

log = Logger(namespace="cryptify.cig.tel")


#: UMSG hangup codes for SIP final statuses (others: ``unavailable``).
SIP_CODES = {
    404: "not-found",
    484: "not-found",
    408: "no-answer",
    480: "no-answer",
    486: "busy",
    600: "busy",
    603: "rejected",
}

#: SIP statuses for UMSG error and hangup codes of calls to secure users.
UMSG_STATUS = {
    "not-found": 404,
    "not-connected": 480,
    "no-answer": 480,
    "busy": 486,
    "rejected": 603,
    "glare": 486,
}


#: ``show umsg`` states: being created, invite sent, ringing, talking, ended.
CREATE, BANG, GROWL, TALK, HANGUP = "CREATE", "BANG", "GROWL", "TALK", "HANGUP"


def umsg_age(created: float, now: float) -> str:
    return str(max(0, int(now - created)))


class TelState(enum.Enum):
    """A secure user's call to the PBX (:class:`TelCall`)."""

    #: Invite taken, the SIP leg placed (and, once the PBX answered, the bridge asked for).
    PLACED = "placed"
    #: ``ringing`` sent.
    RINGING = "ringing"
    #: The bridge is up, ``talk`` sent.
    TALKING = "talking"
    #: Hung up, either side.
    ENDED = "ended"


TEL_MOVES = check_table(
    TelState,
    {
        TelState.PLACED: frozenset({TelState.RINGING, TelState.TALKING, TelState.ENDED}),
        TelState.RINGING: frozenset({TelState.RINGING, TelState.TALKING, TelState.ENDED}),
        TelState.TALKING: frozenset({TelState.ENDED}),
        TelState.ENDED: frozenset(),
    },
)
SHOWN_TEL = {
    TelState.PLACED: BANG,
    TelState.RINGING: GROWL,
    TelState.TALKING: TALK,
    TelState.ENDED: HANGUP,
}


@attrs.define(eq=False)
class TelCall:
    """One secure call to the PBX: the UMSG session and the SIP leg's reports."""

    tel: UmsgTel
    call: Call
    session: str
    relay_host: str
    relay_port: int
    relay_tag: bytes = attrs.field(repr=False)
    policy_key: bytes = attrs.field(repr=False)
    created: float = 0.0
    lifecycle: Lifecycle[TelState] = attrs.field(
        factory=lambda: Lifecycle("TelCall", TEL_MOVES, TelState.PLACED)
    )
    bridge: Bridge = attrs.field(init=False)
    #: The secure party holds the call (its ``hold``), the PBX holds it (a re-INVITE).
    secure_holding: bool = False
    pbx_holding: bool = False
    #: Bridged at an 18x with SDP (early media); the answer came while that was under way.
    early: bool = False
    answer_waiting: bool = False
    #: The secure leg's codec (chosen from the invite's ``codecs``), and
    #: whether the caller offered any (then ``talk`` names it).
    secure_codec: str = "PCMU"
    offered: bool = False

    def __attrs_post_init__(self) -> None:
        self.bridge = Bridge(self.tel.bridge, self.tel.sip, self, self.tel.calls.media_stats)

    @property
    def ended(self) -> bool:
        return self.lifecycle.final

    @property
    def talking(self) -> bool:
        return self.lifecycle.state is TelState.TALKING

    def umsg_row(self, now: float) -> list[str]:
        """This call's ``show umsg`` row."""
        state = SHOWN_TEL[self.lifecycle.state]
        return [
            self.call.in_from,
            self.call.in_to,
            state,
            umsg_age(self.created, now),
            self.session,
        ]

    # TelLeg
    def trying(self) -> None:
        pass

    def ringing(self) -> None:
        if self.lifecycle.can(TelState.RINGING) and self.lifecycle.state is not TelState.RINGING:
            self.lifecycle.move(TelState.RINGING)
            self.tel.notify("ringing", session=self.session)
        if not self.early and not self.ended and self.tel.sip.early_media(self.call):
            # Early media: bridged now, so the caller hears the PBX's ringback.
            self.early = True
            self.bridge.add().addCallbacks(self._early_bridged, self._early_failed)

    def answered(self) -> None:
        if self.ended or self.lifecycle.state is TelState.TALKING:
            return
        state = self.bridge.lifecycle.state
        if state is BridgeState.UP:  # early media: the answer's SDP, then talk
            self.bridge.update()
            self._bridged(True)
        elif state is BridgeState.ADDING:
            self.answer_waiting = self.early  # else the first answer's add is on its way
        else:
            self.bridge.add().addCallbacks(self._bridged, self._bridge_failed)

    def _early_bridged(self, up: bool) -> None:
        if up and self.answer_waiting:
            self.answer_waiting = False
            self.bridge.update()
            self._bridged(True)

    def _early_failed(self, failure: Failure) -> None:
        """No early bridge (the 18x's SDP unusable, cig-relay refused): try at the answer."""
        log.warn(
            "no early media for session {session}: {why}",
            session=self.session,
            why=failure.getErrorMessage(),
        )
        self.bridge = Bridge(self.tel.bridge, self.tel.sip, self, self.tel.calls.media_stats)
        if self.answer_waiting and not self.ended:
            self.answer_waiting = False
            self.bridge.add().addCallbacks(self._bridged, self._bridge_failed)

    def rejected(self, status: int = 480) -> None:
        if self.ended:
            return
        self.tel.calls.close(self.call, CallState.REJECT, "failed")  # if the SIF sent nothing
        self._end(SIP_CODES.get(status, "unavailable"), f"SIP {status}")

    def hung_up(self) -> None:
        if not self.ended:
            self._end("normal", None)

    # bridge
    def _bridged(self, up: bool) -> None:
        if up:
            self.lifecycle.move(TelState.TALKING)
            codec = self.secure_codec if self.offered else None
            self.tel.notify("talk", session=self.session, codec=codec)

    def _bridge_failed(self, failure: Failure) -> None:
        log.warn(
            "no media bridge for session {session}: {why}",
            session=self.session,
            why=failure.getErrorMessage(),
        )
        if not self.ended:
            self.call.note_end("cig", "bridge-failed")
            self.tel.sip.hang_up(self.call)
            self._end("bridge-failed", "no media bridge")

    # ending
    def _finish(self) -> None:
        """Mark the call ended and let go of it."""
        self.lifecycle.move(TelState.ENDED)
        self.tel.active.pop(self.session, None)
        self.tel.retire(self)
        self.bridge.remove()

    def _end(self, code: str, reason: str | None) -> None:
        """The SIP side ended: hang up the secure side."""
        self._finish()
        fields: dict[str, object] = {"session": self.session, "code": code}
        if reason is not None:
            fields["reason"] = reason
        self.tel.notify("hangup", **fields)

    def end_from_tel(self, code: str = "normal") -> None:
        """The secure side hung up (or went away): end the SIP leg."""
        if self.ended:
            return
        self.call.note_end("secure", code)
        self._finish()
        self.tel.sip.hang_up(self.call)
        self.tel.calls.close(self.call, CallState.HANGUP, "hangup")  # if the SIF sent nothing


def hold_from_secure(leg: TelCall | OutLeg, held: bool) -> None:
    """The secure party's ``hold``/``resume``: a re-INVITE towards the PBX."""
    if leg.tel.sip.hold(leg.call, held):
        leg.secure_holding = held
    else:
        log.info(
            "session {session}: {what} not sent to the PBX now",
            session=leg.session,
            what="hold" if held else "resume",
        )


def pbx_hold_changed(leg: TelCall | OutLeg, direction: str) -> None:
    """
    The PBX leg's direction changed (our side's, RFC 3264): the PBX holds
    the call when we may no longer send to it (``recvonly`` or
    ``inactive``) without our having asked; the secure party hears of it
    as ``hold``, and ``resume`` once it is back.
    """
    if leg.secure_holding or leg.session is None or leg.ended:
        return
    held = direction in ("recvonly", "inactive")
    if held != leg.pbx_holding:
        leg.pbx_holding = held
        leg.tel.notify("hold" if held else "resume", session=leg.session)


class OutLegState(enum.Enum):
    """The UMSG side of a call from the PBX to a secure user (:class:`OutLeg`)."""

    #: Keyed, no invite sent yet.
    CREATED = "created"
    #: ``invite`` sent, the CRS has not answered it.
    INVITING = "inviting"
    #: The CRS answered ``session``: the callee's client is being alerted.
    TRYING = "trying"
    #: ``ringing`` from the callee.
    RINGING = "ringing"
    #: ``talk`` from the callee (the bridge is asked for, then the SIF answers).
    TALKING = "talking"
    #: Hung up, refused, or the CRS answered ``error``.
    ENDED = "ended"


OUT_LEG_MOVES = check_table(
    OutLegState,
    {
        OutLegState.CREATED: frozenset({OutLegState.INVITING, OutLegState.ENDED}),
        OutLegState.INVITING: frozenset({OutLegState.TRYING, OutLegState.ENDED}),
        OutLegState.TRYING: frozenset(
            {OutLegState.RINGING, OutLegState.TALKING, OutLegState.ENDED}
        ),
        OutLegState.RINGING: frozenset(
            {OutLegState.RINGING, OutLegState.TALKING, OutLegState.ENDED}
        ),
        OutLegState.TALKING: frozenset({OutLegState.ENDED}),
        OutLegState.ENDED: frozenset(),
    },
)
SHOWN_OUT_LEG = {
    OutLegState.CREATED: CREATE,
    OutLegState.INVITING: BANG,
    OutLegState.TRYING: BANG,
    OutLegState.RINGING: GROWL,
    OutLegState.TALKING: TALK,
    OutLegState.ENDED: HANGUP,
}


@attrs.define(eq=False)
class OutLeg:
    """A call from the PBX to a secure user: the UMSG side of the SIF's call."""

    tel: UmsgTel
    call: Call
    leg: TelLeg
    policy_key: bytes = attrs.field(repr=False)
    request_id: int | None = None
    session: str | None = None
    relay_host: str = ""
    relay_port: int = 0
    relay_tag: bytes = attrs.field(default=b"", repr=False)
    created: float = 0.0
    lifecycle: Lifecycle[OutLegState] = attrs.field(
        factory=lambda: Lifecycle("OutLeg", OUT_LEG_MOVES, OutLegState.CREATED)
    )
    bridge: Bridge = attrs.field(init=False)
    #: The secure party holds the call (its ``hold``), the PBX holds it (a re-INVITE).
    secure_holding: bool = False
    pbx_holding: bool = False
    #: The codecs our invite offered (None: none), and the one ``talk`` named.
    offered: list[str] | None = None
    secure_codec: str = "PCMU"

    def __attrs_post_init__(self) -> None:
        self.bridge = Bridge(self.tel.bridge, self.tel.sip, self, self.tel.calls.media_stats)

    @property
    def ended(self) -> bool:
        return self.lifecycle.final

    @property
    def talking(self) -> bool:
        return self.lifecycle.state is OutLegState.TALKING

    def umsg_row(self, now: float) -> list[str]:
        """This call's ``show umsg`` row."""
        state = SHOWN_OUT_LEG[self.lifecycle.state]
        shown = [self.call.out_from, self.call.out_to, state, umsg_age(self.created, now)]
        return [*shown, self.session or "-"]

    def invited(self, request_id: int) -> None:
        """The ``invite`` went out as request ``request_id``."""
        self.request_id = request_id
        self.lifecycle.move(OutLegState.INVITING)

    def session_answer(self, msg: Message) -> None:
        """The CRS answered our invite: ``session``, or an error."""
        self.request_id = None
        if msg.type != "session":
            code = msg.optional_text("code")
            self.call.note_end("secure", code or "error")
            if self._finish():
                self.leg.rejected(UMSG_STATUS.get(code or "", 480))
            return
        session = msg.text("session")
        self.session = session
        self.call.callee_if_id = session
        self.relay_host, self.relay_port = msg.text("relay-host"), msg.number("relay-port")
        self.relay_tag = msg.octets("relay-tag")
        if self.ended:  # the PBX hung up meanwhile
            self.tel.notify("hangup", session=self.session, code="normal")
            return
        self.lifecycle.move(OutLegState.TRYING)
        self.tel.active[session] = self
        self.leg.trying()

    def incoming(self, msg: Message) -> None:
        """``ringing``, ``talk`` or ``hangup`` from the secure user."""
        if self.ended:
            return
        if msg.type == "ringing" and self.lifecycle.can(OutLegState.RINGING):
            self.lifecycle.move(OutLegState.RINGING)
            self.leg.ringing()
        elif msg.type == "talk" and self.lifecycle.can(OutLegState.TALKING):
            self.lifecycle.move(OutLegState.TALKING)
            codec = msg.get("codec", "PCMU")
            self.secure_codec = codec if codec in (self.offered or ()) else "PCMU"
            self.bridge.add().addCallbacks(self._bridged, self._bridge_failed)
        elif msg.type in ("hold", "resume") and self.lifecycle.state is OutLegState.TALKING:
            hold_from_secure(self, msg.type == "hold")
        elif msg.type == "hangup":
            self.end_from_tel(msg.optional_text("code") or "normal")

    def _bridged(self, up: bool) -> None:
        if up:
            self.leg.answered()

    def _bridge_failed(self, failure: Failure) -> None:
        log.warn(
            "no media bridge for session {session}: {why}",
            session=self.session,
            why=failure.getErrorMessage(),
        )
        if not self.ended:
            self.call.note_end("cig", "bridge-failed")
            self.hang_up("bridge-failed")
            self.leg.rejected(503)

    def _finish(self) -> bool:
        """Mark the call ended and let go of it (False: it already was)."""
        if self.ended:
            return False
        self.lifecycle.move(OutLegState.ENDED)
        self.tel.outgoing.pop(self.call, None)
        self.tel.retire(self)
        self.bridge.remove()
        if self.session is not None:
            self.tel.active.pop(self.session, None)
        return True

    def end_from_tel(self, code: str = "normal") -> None:
        """The secure user hung up (or the UIF went away): end the SIP leg."""
        self.call.note_end("secure", code)
        talking = self.lifecycle.state is OutLegState.TALKING
        if not self._finish():
            return
        if talking:
            self.leg.hung_up()
        else:
            self.leg.rejected(UMSG_STATUS.get(code, 480))

    def hang_up(self, code: str = "normal") -> None:
        """The PBX ended the call: hang up the secure side."""
        if self._finish() and self.session is not None:
            self.tel.notify("hangup", session=self.session, code=code)
