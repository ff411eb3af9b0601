"""The secure side's two kinds of call leg.

:class:`TelCall` is a call from a secure user to the PBX (the SIF places
its SIP leg and reports on it); :class:`OutLeg` is the UMSG side of a call
from the PBX to a secure user (it reports on the SIF's leg).  Both bridge
their media on cig-relay once answered (:mod:`cryptify.cig.tel.bridge`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.protocols.bridge_control import BridgeRemove
from cryptify.protocols.umsg import Message

from ..calls import ENDED, Call, CallState, TelLeg
from .bridge import add_bridge

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


#: ``show umsg`` states: being created, invite sent, ringing, talking, ended.
CREATE, BANG, GROWL, TALK, HANGUP = "CREATE", "BANG", "GROWL", "TALK", "HANGUP"


def umsg_age(created: float, now: float) -> str:
    return str(max(0, int(now - created)))


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
    bridged: bool = False
    ended: bool = False
    rang: bool = False
    talking: bool = False
    created: float = 0.0

    def umsg_row(self, now: float) -> list[str]:
        """This call's ``show umsg`` row."""
        state = HANGUP if self.ended else TALK if self.talking else GROWL if self.rang else BANG
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
        if not self.ended:
            self.rang = True
            self.tel.notify("ringing", session=self.session)

    def answered(self) -> None:
        if self.ended:
            return
        defer.ensureDeferred(self._bridge()).addErrback(self._bridge_failed)

    def rejected(self, status: int = 480) -> None:
        if self.ended:
            return
        if self.call.state not in ENDED:  # refused before the SIF sent anything
            self.tel.calls.set_state(self.call, CallState.REJECT)
            self.tel.calls.event(self.call, "failed")
        self._end(SIP_CODES.get(status, "unavailable"), f"SIP {status}")

    def hung_up(self) -> None:
        if not self.ended:
            self._end("normal", None)

    # bridge
    async def _bridge(self) -> None:
        await add_bridge(self)
        self.bridged = True
        if self.ended:  # hung up while the bridge was being set up
            self._remove_bridge()
            return
        self.talking = True
        self.tel.notify("talk", session=self.session)

    def _bridge_failed(self, failure: Failure) -> None:
        log.warn(
            "no media bridge for session {session}: {why}",
            session=self.session,
            why=failure.getErrorMessage(),
        )
        if not self.ended:
            self.tel.sip.hang_up(self.call)
            self._end("bridge-failed", "no media bridge")

    def _remove_bridge(self) -> None:
        if not self.bridged:
            return
        self.bridged = False
        defer.ensureDeferred(self._remove()).addErrback(
            lambda f: log.warn(
                "cannot remove bridge {session}: {why}",
                session=self.session,
                why=f.getErrorMessage(),
            )
        )

    async def _remove(self) -> None:
        await self.tel.bridge.call(BridgeRemove, call=self.session)

    # ending
    def _finish(self) -> None:
        """Mark the call ended and let go of it."""
        self.ended = True
        self.tel.active.pop(self.session, None)
        self.tel.retire(self)
        self._remove_bridge()

    def _end(self, code: str, reason: str | None) -> None:
        """The SIP side ended: hang up the secure side."""
        self._finish()
        fields: dict[str, Any] = {"session": self.session, "code": code}
        if reason is not None:
            fields["reason"] = reason
        self.tel.notify("hangup", **fields)

    def end_from_tel(self) -> None:
        """The secure side hung up (or went away): end the SIP leg."""
        if self.ended:
            return
        self._finish()
        self.tel.sip.hang_up(self.call)
        if self.call.state not in ENDED:  # nothing sent to the PBX yet
            self.tel.calls.set_state(self.call, CallState.HANGUP)
            self.tel.calls.event(self.call, "hangup")


#: SIP statuses for UMSG error and hangup codes of calls to secure users.
UMSG_STATUS = {
    "not-found": 404,
    "not-connected": 480,
    "no-answer": 480,
    "busy": 486,
    "rejected": 603,
    "glare": 486,
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
    bridged: bool = False
    answered: bool = False
    ended: bool = False
    rang: bool = False
    created: float = 0.0

    def umsg_row(self, now: float) -> list[str]:
        """This call's ``show umsg`` row."""
        if self.ended:
            state = HANGUP
        elif self.answered:
            state = TALK
        elif self.rang:
            state = GROWL
        else:
            state = BANG if self.request_id is not None or self.session else CREATE
        shown = [self.call.out_from, self.call.out_to, state, umsg_age(self.created, now)]
        return [*shown, self.session or "-"]

    def session_answer(self, msg: Message) -> None:
        """The CRS answered our invite: ``session``, or an error."""
        self.request_id = None
        if msg.type != "session":
            self.ended = True
            self.tel.outgoing.pop(id(self.call), None)
            self.tel.retire(self)
            self.leg.rejected(UMSG_STATUS.get(msg.get("code", ""), 480))
            return
        self.session = msg["session"]
        self.call.callee_if_id = msg["session"]
        self.relay_host, self.relay_port = msg["relay-host"], msg["relay-port"]
        self.relay_tag = msg["relay-tag"]
        if self.ended:  # the PBX hung up meanwhile
            self.tel.notify("hangup", session=self.session, code="normal")
            return
        self.tel.active[msg["session"]] = self
        self.leg.trying()

    def incoming(self, msg: Message) -> None:
        """``ringing``, ``talk`` or ``hangup`` from the secure user."""
        if self.ended:
            return
        if msg.type == "ringing":
            self.rang = True
            self.leg.ringing()
        elif msg.type == "talk" and not self.answered:
            self.answered = True
            defer.ensureDeferred(self._bridge()).addErrback(self._bridge_failed)
        elif msg.type == "hangup":
            self.end_from_tel(msg.get("code", "normal"))

    async def _bridge(self) -> None:
        assert self.session is not None
        await add_bridge(self)
        self.bridged = True
        if self.ended:
            self._remove_bridge()
            return
        self.leg.answered()

    def _bridge_failed(self, failure: Failure) -> None:
        log.warn(
            "no media bridge for session {session}: {why}",
            session=self.session,
            why=failure.getErrorMessage(),
        )
        if not self.ended:
            self.hang_up("bridge-failed")
            self.leg.rejected(503)

    def _remove_bridge(self) -> None:
        if not self.bridged or self.session is None:
            return
        self.bridged = False
        session = self.session

        async def remove() -> None:
            await self.tel.bridge.call(BridgeRemove, call=session)

        defer.ensureDeferred(remove()).addErrback(
            lambda f: log.warn("cannot remove bridge {session}: {why}", session=session, why=f)
        )

    def _finish(self) -> bool:
        """Mark the call ended and let go of it (False: it already was)."""
        if self.ended:
            return False
        self.ended = True
        self.tel.outgoing.pop(id(self.call), None)
        self.tel.retire(self)
        self._remove_bridge()
        if self.session is not None:
            self.tel.active.pop(self.session, None)
        return True

    def end_from_tel(self, code: str = "normal") -> None:
        """The secure user hung up (or the UIF went away): end the SIP leg."""
        if not self._finish():
            return
        if self.answered:
            self.leg.hung_up()
        else:
            self.leg.rejected(UMSG_STATUS.get(code, 480))

    def hang_up(self, code: str = "normal") -> None:
        """The PBX ended the call: hang up the secure side."""
        if self._finish() and self.session is not None:
            self.tel.notify("hangup", session=self.session, code=code)
