"""
The SIF's two kinds of call leg: L{SipCall}, a call from the PBX (the SIF
answers it as the UAS and reports the tel side's progress as 180 and 200),
and L{OutCall}, a call to the PBX that the tel side placed (the SIF is its
UAC and reports the PBX's answers on the tel side's L{TelLeg}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from cryptify.protocols.sip.dialog import Dialog
from cryptify.protocols.sip.errors import SipParseError
from cryptify.protocols.sip.message import Headers, Request, Response
from cryptify.protocols.sip.transaction import Channel, ServerTransaction

from ..calls import Call, CallState, TelLeg

if TYPE_CHECKING:
    from .core import Sif

log = Logger(namespace="cryptify.cig.sif")
#: A call from the PBX the tel side has not answered by then gets 480.
NO_ANSWER_AFTER = 180.0


@attrs.define(eq=False)
class SipCall:
    """A call from the PBX: its SIP side, and the tel leg's reports."""

    sif: Sif
    call: Call
    invite: ServerTransaction
    local_tag: str
    answer: bytes
    rtp_port: int | None
    dialog: Dialog | None = None
    ended: bool = False
    no_answer: IDelayedCall | None = None
    #: The PBX's latest SDP offer (a re-INVITE's), if it sent one after the INVITE.
    remote_sdp: bytes | None = None

    def start(self) -> None:
        """Hand the leg to the tel side; give up if it is not answered in time."""
        self.no_answer = self.sif.clock.callLater(NO_ANSWER_AFTER, self.rejected, 480)
        self.sif.tel.place_call(self.call, self)

    def _stop_timer(self) -> None:
        if self.no_answer is not None and self.no_answer.active():
            self.no_answer.cancel()
        self.no_answer = None

    # TelLeg
    def trying(self) -> None:
        if not self.ended and self.call.state == CallState.ROUTED:
            self.sif.calls.set_state(self.call, CallState.TRY)
            self.sif.calls.event(self.call, "trying")

    def ringing(self) -> None:
        if self.ended or self.invite.state != "proceeding":
            return
        self.sif.calls.set_state(self.call, CallState.RING)
        self.sif.calls.event(self.call, "ringing")
        self.invite.respond(self.sif.reply(self.invite.request, 180, self.local_tag))

    def answered(self) -> None:
        if self.ended or self.invite.state != "proceeding":
            return
        request = self.invite.request
        self._stop_timer()
        try:
            self.dialog = Dialog.as_uas(request, self.local_tag)
        except SipParseError:
            self.rejected(500)
            self.sif.tel.hang_up(self.call)
            return
        self.sif.dialogs[self.dialog.id] = self
        self.sif.calls.set_state(self.call, CallState.ANSWER)
        self.sif.calls.event(self.call, "talk")
        self.invite.respond(self.sif.reply(request, 200, self.local_tag, body=self.answer))

    def rejected(self, status: int = 480) -> None:
        if self.ended or self.invite.state != "proceeding":
            return
        self._end(CallState.REJECT)
        status = status if 300 <= status <= 699 else 480
        self.invite.respond(self.sif.reply(self.invite.request, status, self.local_tag))

    def hung_up(self) -> None:
        if self.ended:
            return
        if self.dialog is None:
            self.rejected(480)
            return
        self._end(CallState.HANGUP)
        self.sif.send_bye(
            self.dialog, self.invite.channel, self.sif.local_host(self.invite.request)
        )

    def _end(self, state: CallState) -> None:
        self.ended = True
        self._stop_timer()
        self.sif.calls.set_state(self.call, state)
        self.sif.calls.event(self.call, "hangup")
        self.sif.rtp_ports.give_back(self.rtp_port)
        self.sif.invites.pop(self.invite.key, None)
        if self.dialog is not None:
            self.sif.dialogs.pop(self.dialog.id, None)

    def end_from_sip(self, state: CallState) -> None:
        """The PBX ended the call (BYE or CANCEL): tell the tel side."""
        if self.ended:
            return
        self._end(state)
        self.sif.tel.hang_up(self.call)


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
    answer: bytes
    rtp_port: int | None
    dialog: Dialog | None = None
    provisional: bool = False
    cancel_pending: bool = False
    ended: bool = False
    #: The SDP answer of the PBX's first 2xx (the PBX leg's media).
    remote_sdp: bytes = b""

    def response(self, response: Response) -> None:
        """A response to our INVITE (including repeated 2xx)."""
        status = response.status
        if status < 200:
            self.provisional = True
            if self.cancel_pending:
                self.cancel_pending = False
                self._send_cancel()
            if self.ended:
                return
            if status == 100 and self.call.state == CallState.ROUTED:
                self._state(CallState.TRY, "trying")
                self.leg.trying()
            elif status > 100 and self.call.state != CallState.RING:
                self._state(CallState.RING, "ringing")
                self.leg.ringing()
            return
        if status >= 300:
            if not self.ended:
                self._end(CallState.REJECT)
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
        self.remote_sdp = response.body
        if self.ended:
            self.sif.send_bye(self.dialog, self.channel, self.host)
            return
        self.sif.dialogs[self.dialog.id] = self
        self._state(CallState.ANSWER, "talk")
        self.leg.answered()

    def timeout(self) -> None:
        """No final response in time (timer B)."""
        if not self.ended:
            self._end(CallState.REJECT)
            self.leg.rejected(408)

    def hang_up(self) -> None:
        """The tel side hung up."""
        if self.ended:
            return
        self._end(CallState.HANGUP)
        if self.dialog is not None:
            self.sif.send_bye(self.dialog, self.channel, self.host)
        elif self.provisional:
            self._send_cancel()
        else:
            self.cancel_pending = True

    def end_from_sip(self, state: CallState) -> None:
        """The PBX sent BYE: tell the tel side."""
        if not self.ended:
            self._end(state)
            self.leg.hung_up()

    def _state(self, state: CallState, event: str) -> None:
        self.sif.calls.set_state(self.call, state)
        self.sif.calls.event(self.call, event)

    def _end(self, state: CallState) -> None:
        self.ended = True
        self._state(state, "hangup")
        self.sif.rtp_ports.give_back(self.rtp_port)
        self.sif.outgoing.pop(id(self.call), None)
        if self.dialog is not None:
            self.sif.dialogs.pop(self.dialog.id, None)

    def _ack(self, dialog: Dialog) -> None:
        ack = dialog.request("ACK", self.sif.via(self.channel, self.host), cseq=1)
        self.channel.send(ack.to_bytes())

    def _send_cancel(self) -> None:
        headers = Headers()
        for name in ("Via", "Max-Forwards", "From", "To", "Call-ID"):
            headers = headers.add(name, self.invite.headers.get(name) or "")
        headers = headers.add("CSeq", f"{self.invite.cseq.number} CANCEL")
        cancel = Request("CANCEL", self.invite.uri, headers)
        self.sif.layer.request(cancel, self.channel, lambda response: None, lambda: None)
