"""
The SIF's two kinds of call leg: L{SipCall}, a call from the PBX (the SIF
answers it as the UAS and reports the tel side's progress as 180 and 200),
and L{OutCall}, a call to the PBX that the tel side placed (the SIF is its
UAC and reports the PBX's answers on the tel side's L{TelLeg}).

Each leg's lifecycle is one L{Lifecycle} over its state enum (L{InState},
L{OutState}); the call's C{show call} state and C{session.log} events
follow from it (L{SHOWN_IN}, L{SHOWN_OUT}). C{docs/cig-calls.md} draws
both machines.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import attrs
from twisted.logger import Logger

from cryptify.lifecycle import Lifecycle, check_table
from cryptify.protocols.sip.dialog import Dialog
from cryptify.protocols.sip.digest import Credentials
from cryptify.protocols.sip.errors import SipParseError
from cryptify.protocols.sip.message import Headers, Request, Response
from cryptify.protocols.sip.timers import Timer
from cryptify.protocols.sip.transaction import Channel, ServerTransaction

from ..calls import Call, CallState, TelLeg

if TYPE_CHECKING:
    from .core import Sif
    from .transfer import Transfer

log = Logger(namespace="cryptify.cig.sif")
#: A call from the PBX the tel side has not answered by then gets 480.
NO_ANSWER_AFTER = 180.0


class InState(enum.Enum):
    """A call from the PBX (L{SipCall})."""

    #: Routed and handed to the tel side; 100 sent.
    PLACED = "placed"
    #: The tel side is trying.
    TRYING = "trying"
    #: 180 sent (again for each ringing report).
    RINGING = "ringing"
    #: 200 sent: a dialog.
    ANSWERED = "answered"
    #: A final 3xx-6xx sent (the tel side refused, or no answer in time).
    REJECTED = "rejected"
    #: Ended by BYE or CANCEL (either side), or for a missing ACK.
    HUNG_UP = "hung up"


_UNANSWERED_IN = frozenset({InState.PLACED, InState.TRYING, InState.RINGING})
IN_MOVES = check_table(
    InState,
    {
        InState.PLACED: frozenset(
            {InState.TRYING, InState.RINGING, InState.ANSWERED, InState.REJECTED, InState.HUNG_UP}
        ),
        InState.TRYING: frozenset(
            {InState.RINGING, InState.ANSWERED, InState.REJECTED, InState.HUNG_UP}
        ),
        InState.RINGING: frozenset(
            {InState.RINGING, InState.ANSWERED, InState.REJECTED, InState.HUNG_UP}
        ),
        InState.ANSWERED: frozenset({InState.HUNG_UP}),
        InState.REJECTED: frozenset(),
        InState.HUNG_UP: frozenset(),
    },
)
#: The C{show call} state of a call from the PBX.
SHOWN_IN = {
    InState.PLACED: CallState.ROUTED,
    InState.TRYING: CallState.TRY,
    InState.RINGING: CallState.RING,
    InState.ANSWERED: CallState.ANSWER,
    InState.REJECTED: CallState.REJECT,
    InState.HUNG_UP: CallState.HANGUP,
}


@attrs.define(eq=False)
class SipCall:
    """A call from the PBX: its SIP side, and the tel leg's reports."""

    sif: Sif
    call: Call
    invite: ServerTransaction
    local_tag: str
    #: Our SDP (its C{a=crypto} holds our key: not in the repr).
    answer: bytes = attrs.field(repr=False)
    rtp_port: int | None
    dialog: Dialog | None = None
    no_answer: Timer | None = None
    #: The PBX's latest SDP (a re-INVITE's offer, or its answer to ours),
    #: if it sent one after the INVITE.
    remote_sdp: bytes | None = attrs.field(default=None, repr=False)
    #: Our re-INVITE (hold or resume) waits for its final response.
    reinviting: bool = False
    #: A REFER from the PBX being carried out (RFC 3515).
    transfer: Transfer | None = None
    #: The call's SIP leg after a transfer (the secure side still reports here).
    replaced_by: OutCall | None = None
    lifecycle: Lifecycle[InState] = attrs.field(
        factory=lambda: Lifecycle("SipCall", IN_MOVES, InState.PLACED)
    )

    @property
    def ended(self) -> bool:
        """Whether the call is over (rejected or hung up)."""
        return self.lifecycle.final

    @property
    def unanswered(self) -> bool:
        """Whether the INVITE still waits for its final response."""
        return self.lifecycle.state in _UNANSWERED_IN

    def start(self) -> None:
        """Hand the leg to the tel side; give up if it is not answered in time."""
        self.no_answer = self.sif.layer.timers.call_later(
            NO_ANSWER_AFTER, SipCall._unanswered_too_long, self
        )
        self.sif.tel.place_call(self.call, self)

    def _unanswered_too_long(self) -> None:
        """The PBX gets 480 and the tel side stops ringing the secure user."""
        self.no_answer = None
        if self.unanswered:
            self.call.note_end("cig", f"not answered in {NO_ANSWER_AFTER:g} s")
            self.rejected(480)
            self.sif.tel.hang_up(self.call)

    def _stop_timer(self) -> None:
        if self.no_answer is not None and self.no_answer.active():
            self.no_answer.cancel()
        self.no_answer = None

    def _move(self, state: InState, event: str) -> None:
        """Change state; the call's row and session.log follow."""
        self.lifecycle.move(state)
        self.sif.calls.set_state(self.call, SHOWN_IN[state])
        self.sif.calls.event(self.call, event)

    # TelLeg
    def trying(self) -> None:
        if self.lifecycle.state is InState.PLACED:
            self._move(InState.TRYING, "trying")

    def ringing(self) -> None:
        if not self.lifecycle.can(InState.RINGING):
            return
        self._move(InState.RINGING, "ringing")
        self.invite.respond(self.sif.reply(self.invite.request, 180, self.local_tag))

    def answered(self) -> None:
        if not self.lifecycle.can(InState.ANSWERED):
            return
        request = self.invite.request
        self._stop_timer()
        try:
            self.dialog = Dialog.as_uas(request, self.local_tag)
        except SipParseError:
            self.call.note_end("cig", "INVITE unusable for a dialog")
            self.rejected(500)
            self.sif.tel.hang_up(self.call)
            return
        self.sif.dialogs[self.dialog.id] = self
        self._move(InState.ANSWERED, "talk")
        self.invite.respond(self.sif.reply(request, 200, self.local_tag, body=self.answer))

    def rejected(self, status: int = 480) -> None:
        if not self.unanswered:
            return
        status = status if 300 <= status <= 699 else 480
        self.call.note_end("secure", f"SIP {status}")
        self._end(InState.REJECTED)
        self.invite.respond(self.sif.reply(self.invite.request, status, self.local_tag))

    def hung_up(self) -> None:
        if self.replaced_by is not None:
            self.replaced_by.hang_up()
            return
        if self.ended:
            return
        if self.dialog is None:
            self.rejected(480)
            return
        self.call.note_end("secure", "hangup")
        self._end(InState.HUNG_UP)
        self.sif.send_bye(
            self.dialog, self.invite.channel, self.sif.local_host(self.invite.request)
        )

    def _end(self, state: InState) -> None:
        self._move(state, "hangup")
        self._stop_timer()
        self.sif.rtp_ports.give_back(self.rtp_port)
        self.sif.invites.pop(self.invite.key, None)
        if self.dialog is not None:
            self.sif.dialogs.pop(self.dialog.id, None)

    def end_from_sip(self, by: str = "pbx", reason: str = "BYE") -> None:
        """The PBX ended the call (BYE, CANCEL, or no ACK): tell the tel side."""
        if self.ended:
            return
        self.call.note_end(by, reason)
        self._end(InState.HUNG_UP)
        self.sif.tel.hang_up(self.call)


class OutState(enum.Enum):
    """A call to the PBX (L{OutCall})."""

    #: INVITE sent, nothing heard yet.
    CALLING = "calling"
    #: 100 Trying heard.
    TRYING = "trying"
    #: 18x heard.
    RINGING = "ringing"
    #: 2xx heard and ACKed: a dialog.
    ANSWERED = "answered"
    #: A final 3xx-6xx, or no final response in time (timer B).
    REJECTED = "rejected"
    #: The tel side hung up before any provisional: the CANCEL waits for
    #: one (RFC 3261 9.1).
    CANCEL_PENDING = "cancel pending"
    #: The tel side hung up before the answer: CANCEL sent.
    CANCELLED = "cancelled"
    #: BYE sent or received.
    HUNG_UP = "hung up"


_HEARD = frozenset({OutState.TRYING, OutState.RINGING})
OUT_MOVES = check_table(
    OutState,
    {
        OutState.CALLING: frozenset(
            {
                OutState.TRYING,
                OutState.RINGING,
                OutState.ANSWERED,
                OutState.REJECTED,
                OutState.CANCEL_PENDING,
            }
        ),
        OutState.TRYING: frozenset(
            {OutState.RINGING, OutState.ANSWERED, OutState.REJECTED, OutState.CANCELLED}
        ),
        OutState.RINGING: frozenset({OutState.ANSWERED, OutState.REJECTED, OutState.CANCELLED}),
        OutState.ANSWERED: frozenset({OutState.HUNG_UP}),
        OutState.CANCEL_PENDING: frozenset({OutState.CANCELLED}),
        OutState.REJECTED: frozenset(),
        OutState.CANCELLED: frozenset(),
        OutState.HUNG_UP: frozenset(),
    },
)
#: The C{show call} state of a call to the PBX.
SHOWN_OUT = {
    OutState.CALLING: CallState.ROUTED,
    OutState.TRYING: CallState.TRY,
    OutState.RINGING: CallState.RING,
    OutState.ANSWERED: CallState.ANSWER,
    OutState.REJECTED: CallState.REJECT,
    OutState.CANCEL_PENDING: CallState.HANGUP,
    OutState.CANCELLED: CallState.HANGUP,
    OutState.HUNG_UP: CallState.HANGUP,
}
#: The states in which the call is over for the tel side (a CANCEL may still wait).
_OVER = frozenset(
    {OutState.REJECTED, OutState.CANCEL_PENDING, OutState.CANCELLED, OutState.HUNG_UP}
)


@attrs.define(eq=False)
class OutCall:
    """
    A call to the PBX that the tel side placed: the SIF is its leg, and
    reports the PBX's answers to the tel side's L{TelLeg}.
    """

    sif: Sif
    call: Call
    leg: TelLeg
    invite: Request
    channel: Channel
    host: str
    #: Our SDP offer (its C{a=crypto} lines hold our keys: not in the repr).
    answer: bytes = attrs.field(repr=False)
    rtp_port: int | None
    #: Our credentials at the PBX, for its 401/407 challenges.
    credentials: Credentials | None = attrs.field(default=None, repr=False)
    dialog: Dialog | None = None
    #: The SDP answer of the PBX's first 2xx (the PBX leg's media), then
    #: of the latest re-INVITE either side made.
    remote_sdp: bytes = attrs.field(default=b"", repr=False)
    #: Our re-INVITE (hold or resume) waits for its final response.
    reinviting: bool = False
    #: A REFER from the PBX being carried out (RFC 3515).
    transfer: Transfer | None = None
    #: The SDP of the PBX's first 18x that had one (early media, RFC 3960).
    early_sdp: bytes = attrs.field(default=b"", repr=False)
    lifecycle: Lifecycle[OutState] = attrs.field(
        factory=lambda: Lifecycle("OutCall", OUT_MOVES, OutState.CALLING)
    )

    @property
    def ended(self) -> bool:
        """Whether the call is over for the tel side (a CANCEL may still wait)."""
        return self.lifecycle.state in _OVER

    def response(self, response: Response) -> None:
        """A response to our INVITE (including repeated 2xx)."""
        status = response.status
        state = self.lifecycle.state
        if status < 200:
            if state is OutState.CANCEL_PENDING:
                self.lifecycle.move(OutState.CANCELLED)
                self._send_cancel()
            elif status == 100 and state is OutState.CALLING:
                self._move(OutState.TRYING, "trying")
                self.leg.trying()
            elif status > 100:
                early = self._early(response)
                if self.lifecycle.can(OutState.RINGING):
                    self._move(OutState.RINGING, "ringing")
                    self.leg.ringing()
                elif early:  # a 183 with SDP after a 180: the tel side bridges now
                    self.leg.ringing()
            return
        if status >= 300:
            if not self.ended:
                self.call.note_end("pbx", f"SIP {status}")
                self._end(OutState.REJECTED)
                self.leg.rejected(status)
            return
        first = self.dialog is None
        if self.dialog is None:
            try:
                self.dialog = Dialog.as_uac(self.invite, response)
            except SipParseError:
                log.warn("unusable 2xx for call {call_id}", call_id=self.invite.call_id)
                return
        self._ack(self.dialog)
        if not first:
            return
        # Without SDP in the 2xx, the answer is the early one (RFC 3261 13.2.1).
        self.remote_sdp = response.body or self.early_sdp
        if self.ended:  # answered after we hung up: end it at once
            self.sif.send_bye(self.dialog, self.channel, self.host, self.credentials)
            return
        self.sif.dialogs[self.dialog.id] = self
        self._move(OutState.ANSWERED, "talk")
        self.leg.answered()

    def _early(self, response: Response) -> bool:
        """
        Keep the first SDP answer of an 18x (early media: the PBX's
        ringback or announcements); True when this response brought it.
        """
        if self.early_sdp or not response.body or self.ended:
            return False
        content_type = (response.headers.get("Content-Type") or "").split(";")[0]
        if content_type.strip().lower() != "application/sdp":
            return False
        self.early_sdp = response.body
        log.info(
            "early media from the PBX for call {call_id} ({status})",
            call_id=self.invite.call_id,
            status=response.status,
        )
        return True

    def resent(self, invite: Request) -> None:
        """
        The INVITE went again with credentials (next CSeq, same Call-ID):
        CANCEL, ACK and the dialog follow the new one.
        """
        self.invite = invite

    def timeout(self) -> None:
        """No final response in time (timer B)."""
        if not self.ended:
            self.call.note_end("cig", "no final response from the PBX (SIP 408)")
            self._end(OutState.REJECTED)
            self.leg.rejected(408)

    def hang_up(self) -> None:
        """The tel side hung up: BYE, CANCEL, or CANCEL once a provisional comes."""
        state = self.lifecycle.state
        if self.ended:
            return
        self.call.note_end("secure", "hangup" if state is OutState.ANSWERED else "cancel")
        if state is OutState.ANSWERED:
            self._end(OutState.HUNG_UP)
            assert self.dialog is not None
            self.sif.send_bye(self.dialog, self.channel, self.host, self.credentials)
        elif state in _HEARD:
            self._end(OutState.CANCELLED)
            self._send_cancel()
        else:
            self._end(OutState.CANCEL_PENDING)

    def end_from_sip(self, by: str = "pbx", reason: str = "BYE") -> None:
        """The PBX sent BYE: tell the tel side."""
        if not self.ended:
            self.call.note_end(by, reason)
            self._end(OutState.HUNG_UP)
            self.leg.hung_up()

    def _move(self, state: OutState, event: str) -> None:
        """Change state; the call's row and session.log follow."""
        self.lifecycle.move(state)
        self.sif.calls.set_state(self.call, SHOWN_OUT[state])
        self.sif.calls.event(self.call, event)

    def _end(self, state: OutState) -> None:
        self._move(state, "hangup")
        self.sif.rtp_ports.give_back(self.rtp_port)
        self.sif.outgoing.pop(self.call, None)
        if self.dialog is not None:
            self.sif.dialogs.pop(self.dialog.id, None)

    def _ack(self, dialog: Dialog) -> None:
        """The 2xx's ACK: the INVITE's CSeq number and credentials (RFC 3261 13.2.2.4)."""
        via = self.sif.via(self.channel, self.host)
        ack = dialog.request("ACK", via, cseq=self.invite.cseq.number)
        for name in ("Authorization", "Proxy-Authorization"):
            for value in self.invite.headers.get_all(name):
                ack = attrs.evolve(ack, headers=ack.headers.add(name, value))
        self.channel.send(ack.to_bytes())

    def _send_cancel(self) -> None:
        headers = Headers()
        for name in ("Via", "Max-Forwards", "From", "To", "Call-ID"):
            headers = headers.add(name, self.invite.headers.get(name) or "")
        headers = headers.add("CSeq", f"{self.invite.cseq.number} CANCEL")
        cancel = Request("CANCEL", self.invite.uri, headers)
        self.sif.layer.request(cancel, self.channel, lambda response: None, lambda: None)
