"""
Transfer from the PBX side (RFC 3515 REFER, RFC 5589's transferee).

The PBX sends REFER in the dialog of an answered call, naming a target
in Refer-To. The SIF answers 202 and a L{Transfer} takes over: it tells
the PBX how the transfer goes with NOTIFYs in that dialog (message/sipfrag
bodies: 100 Trying at once, then 180, then the final status) and places
a new call to the target (with C{Replaces} when the Refer-To carried one:
an attended transfer, RFC 3891), offering our same RTP port, so the
bridge keeps its socket. The secure party's call is kept throughout:

- the target answers: the new leg becomes the call's SIP leg (its ids,
  its media: the bridge is updated), the old dialog is ended with BYE,
  and the final NOTIFY says 200;
- the target refuses (or does not answer): the final NOTIFY carries its
  status and the call stays with the old leg, unless the PBX has already
  hung the old leg up (as a blind transferor may), in which case the
  secure party is hung up.

While a transfer is under way, the old leg's BYE only detaches it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from twisted.logger import Logger

from cryptify.protocols.sip.dialog import Dialog
from cryptify.protocols.sip.message import Request
from cryptify.protocols.sip.refer import SIPFRAG, ReferTarget, sipfrag
from cryptify.protocols.sip.transaction import Channel

from ..calls import Call, CallState
from .legs import OutCall, SipCall

if TYPE_CHECKING:
    from .core import Sif

log = Logger(namespace="cryptify.cig.sif")

#: Reason phrases for the sipfrag of common final statuses.
REASONS = {
    200: "OK",
    404: "Not Found",
    408: "Request Timeout",
    480: "Temporarily Unavailable",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    502: "Bad Gateway",
    503: "Service Unavailable",
    603: "Decline",
}


@attrs.define(eq=False)
class Transfer:
    """One REFER being carried out for C{old}, the call's SIP leg."""

    sif: Sif
    call: Call
    old: SipCall | OutCall
    target: ReferTarget
    #: The attempt's own call (its rows and session.log lines are its own).
    attempt: Call = attrs.field(init=False)
    new: OutCall | None = None
    done: bool = False
    #: The PBX hung the old leg up while the transfer was under way.
    old_gone: bool = False

    def __attrs_post_init__(self) -> None:
        dialog = self.old.dialog
        assert dialog is not None
        self.attempt = Call(
            in_from=self.call.in_from,
            in_to=self.call.in_to,
            out_from=dialog.local.uri,
            out_to=self.target.uri,
            source=self.call.source,
        )
        self.attempt.recorded = True  # the call's own record covers it

    # --- the old leg's side --------------------------------------------------
    def _old_route(self) -> tuple[Dialog, Channel, str]:
        old = self.old
        assert old.dialog is not None
        if isinstance(old, OutCall):
            return old.dialog, old.channel, old.host
        return old.dialog, old.invite.channel, self.sif.local_host(old.invite.request)

    def notify(self, status: int, reason: str, final: bool) -> None:
        """A NOTIFY in the old dialog with the sipfrag of C{status}."""
        if self.old_gone:
            return
        dialog, channel, host = self._old_route()
        state = "terminated;reason=noresource" if final else "active;expires=60"
        request = dialog.request(
            "NOTIFY",
            self.sif.via(channel, host),
            contact=f"<sip:{host}:{self.sif.contact_port(channel)}>",
            body=sipfrag(status, reason),
            content_type=SIPFRAG,
        )
        headers = request.headers.add("Event", "refer").add("Subscription-State", state)
        request = attrs.evolve(request, headers=headers)
        credentials = self.sif.keyring.for_address(channel.address[0])

        def resent(again: Request) -> None:
            dialog.local_cseq = again.cseq.number

        self.sif.send_request(
            request, channel, credentials, lambda response: None, lambda: None, resent
        )

    def _detach_old(self) -> None:
        """The old leg is no longer the call's (no session.log line, no hangup)."""
        old = self.old
        if isinstance(old, SipCall):
            self.sif.invites.pop(old.invite.key, None)
        elif self.sif.outgoing.get(self.call) is old:
            self.sif.outgoing.pop(self.call, None)
        if old.dialog is not None:
            self.sif.dialogs.pop(old.dialog.id, None)

    def old_hung_up(self) -> None:
        """The PBX sent BYE on the old leg while we transfer: it only goes away."""
        self.old_gone = True
        self._detach_old()

    # --- the new call (a TelLeg for the SIF's OutCall) -------------------------
    def start(self) -> None:
        self.notify(100, "Trying", final=False)
        log.info(
            "transfer of {call} to {target} ({kind})",
            call=self.call.in_from,
            target=self.target.uri,
            kind="attended" if self.target.replaces is not None else "blind",
        )
        extra: tuple[tuple[str, str], ...] = ()
        if self.target.replaces is not None:
            extra = (("Replaces", self.target.replaces.render()),)
        self.new = self.sif.place_call(
            self.attempt, self, port=self.old.rtp_port, extra=extra
        ) or self.sif.outgoing.get(self.attempt)

    def trying(self) -> None:
        pass

    def ringing(self) -> None:
        if not self.done:
            self.notify(180, "Ringing", final=False)

    def answered(self) -> None:
        if self.done:
            return
        self.done = True
        new = self.sif.outgoing.pop(self.attempt, None)
        if new is None:
            return
        call, old = self.call, self.old
        old.transfer = None
        if call.ended_at is not None:  # the secure party hung up meanwhile
            self.sif.outgoing[self.attempt] = new
            new.hang_up()
            return
        if not self.old_gone:
            self.notify(200, "OK", final=True)
            self._detach_old()
            dialog, channel, host = self._old_route()
            credentials = old.credentials if isinstance(old, OutCall) else None
            self.sif.send_bye(dialog, channel, host, credentials)
        # The new leg is the call's SIP leg from now on, with the old one's port.
        secure = old.leg if isinstance(old, OutCall) else _PbxSideEnds(self.sif, call)
        new.rtp_port, old.rtp_port = old.rtp_port, None
        new.call, new.leg = call, secure
        self.sif.outgoing[call] = new
        old_id = old.invite.call_id if isinstance(old, OutCall) else old.invite.request.call_id
        if call.caller_if_id == old_id:
            call.caller_if_id = new.invite.call_id
        else:
            call.callee_if_id = new.invite.call_id
        if isinstance(old, OutCall):  # the PBX party as routed is now the target
            call.out_to = self.target.uri
        if self.attempt in self.sif.calls.calls:
            self.sif.calls.calls.remove(self.attempt)
        if isinstance(old, SipCall):
            old.replaced_by = new
        log.info("transfer of {call} to {target} done", call=call.in_from, target=self.target.uri)
        self.sif.calls.event(call, "talk")
        self.sif.tel.media_changed(call)

    def rejected(self, status: int = 480) -> None:
        if self.done:
            return
        self.done = True
        self.old.transfer = None
        log.info(
            "transfer of {call} to {target} failed: {status}",
            call=self.call.in_from,
            target=self.target.uri,
            status=status,
        )
        self.notify(status, REASONS.get(status, "Failed"), final=True)
        if self.old_gone:  # nothing left on the SIP side: the call ends
            self.call.note_end("pbx", f"transfer failed: SIP {status}")
            self.sif.calls.close(self.call, CallState.HANGUP, "hangup")
            if isinstance(self.old, OutCall):
                self.old.leg.hung_up()
            else:
                self.sif.tel.hang_up(self.call)

    def hung_up(self) -> None:
        pass  # the new leg reports to the secure side once it has taken over


@attrs.define(eq=False)
class _PbxSideEnds:
    """
    The secure side of a call the PBX placed, once its SIP leg is the
    transfer's new call: the target's BYE hangs the secure party up.
    """

    sif: Sif
    call: Call

    def trying(self) -> None:
        pass

    def ringing(self) -> None:
        pass

    def answered(self) -> None:
        pass

    def rejected(self, status: int = 480) -> None:
        self.sif.tel.hang_up(self.call)

    def hung_up(self) -> None:
        self.sif.tel.hang_up(self.call)
