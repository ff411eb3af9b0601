"""
SIF: the CIG's SIP interface, a trunk towards the PBX.

L{Sif} is the user agent core on top of the transaction layer (its call
legs are in L{cryptify.cig.sif.legs}). It answers OPTIONS; takes INVITEs
from the PBX, routes them with L{Router} from the sip interface and hands
the outgoing leg to the tel side (L{TelSide}), reporting the leg's
progress back to the PBX as 180 and 200 (with an SDP answer for
PCMU/PCMA/telephone-event on a port of C{rtp_port_range});
handles ACK, CANCEL and BYE, and BYE from the tel side; takes MESSAGE
when C{messaging true}. Other methods get 405 (known to SIP, not ours) or
501 (unknown); any request but CANCEL with C{Require} gets 420 (no option
is supported). Malformed requests get the 4xx the parser chose when they
can be answered, otherwise nothing. Where answers go (RFC 3261 18.2.2,
RFC 3581) is the transport's business (L{cryptify.protocols.sip.transport}).

Each call is listed in the L{CallTable} (C{show call}) and logged to
C{session.log} with where it came from; see L{cryptify.cig.calls}.

With L{SipPeers} set, requests from addresses that are not trusted peers
get 403 or nothing (C{untrusted_answer}) before anything else looks at
them, and are only counted (L{Refusals}); see L{cryptify.cig.sif.peers}.
"""

from __future__ import annotations

import attrs
from twisted.logger import Logger

from cryptify.protocols.sip.address import shared_name_addr
from cryptify.protocols.sip.dialog import dialog_id_of, new_tag
from cryptify.protocols.sip.errors import SipParseError
from cryptify.protocols.sip.message import (
    Request,
    Response,
    response_to,
)
from cryptify.protocols.sip.refer import ReferError, parse_refer_to
from cryptify.protocols.sip.sdp import (
    SdpError,
    make_answer,
    make_offer,
    our_line,
    parse_sdp,
    render_sdp,
)
from cryptify.protocols.sip.transaction import (
    Channel,
    ServerTransaction,
    TransactionLayer,
    TxState,
)

from ..calls import Call, CallState, source_of
from ..route import SIP, RouteRefused
from .base import KNOWN_METHODS, SDP, transport_of
from .challenge import Verdict
from .legs import OutCall, SipCall
from .messaging import SifMessaging
from .outcalls import SifOutCalls
from .peers import Refusals
from .ports import DEFAULT_RTP_PORTS, PortPool
from .transfer import Transfer

log = Logger(namespace="cryptify.cig.sif")


@attrs.define(eq=False)
class Sif(SifMessaging, SifOutCalls):
    """
    The SIP interface's user agent core (a L{TransactionUser} and the
    adapters' L{MessageSink}).
    """

    def __attrs_post_init__(self) -> None:
        self.layer = TransactionLayer(self.clock, self)
        ports = self.config.sip.rtp_port_range
        low, high = (ports.low, ports.high) if ports else DEFAULT_RTP_PORTS
        self.rtp_ports = PortPool(low, high)
        self.refusals = Refusals(self.clock)

    # --- MessageSink -------------------------------------------------------
    def message_received(self, message: Request | Response, channel: Channel) -> None:
        # Responses pass: the transaction layer takes only those matching
        # a branch we sent.
        if isinstance(message, Request) and not self.trusted(channel):
            self._refuse(message, channel)
            return
        self.layer.receive(message, channel)

    def parse_failed(self, error: SipParseError, channel: Channel) -> None:
        if not self.trusted(channel):
            self.refusals.refused(
                channel.address[0], f"not a SIP peer ({transport_of(channel)} malformed)"
            )
            return
        self.bad_message(error, channel)

    # --- who may send ------------------------------------------------------
    def trusted(self, channel: Channel) -> bool:
        """Whether requests on C{channel} come from a trusted peer."""
        return self.peers is None or self.peers.trusted(channel.address[0])

    def _refuse(self, request: Request, channel: Channel) -> None:
        """A request from a stranger: 403 (stateless) or nothing, counted."""
        self.refusals.refused(
            channel.address[0], f"not a SIP peer ({transport_of(channel)} {request.method})"
        )
        if self.config.sip.untrusted_answer != "403" or request.method == "ACK":
            return
        try:
            response = response_to(request.headers, 403, to_tag=new_tag())
        except SipParseError:
            return
        channel.send(response.to_bytes())

    # --- TransactionUser ---------------------------------------------------
    def bad_message(self, error: SipParseError, channel: Channel) -> None:
        log.debug("bad SIP message from {peer}: {why}", peer=channel.address, why=error.reason)
        headers = error.headers
        if not error.is_request or headers is None or not headers.get("Via"):
            return
        if (headers.get("CSeq") or "").strip().upper().endswith("ACK"):
            return
        response = response_to(headers, error.status, extra=(("Warning", _warning(error)),))
        channel.send(response.to_bytes())

    def request_received(self, tx: ServerTransaction) -> None:
        # A header that only fails when read (a list header whose quotes do
        # not balance, say) ends in 400 for the request, never an exception.
        try:
            self._dispatch(tx)
        except SipParseError as error:
            if tx.state in (TxState.TRYING, TxState.PROCEEDING):
                extra = (("Warning", _warning(error)),)
                tx.respond(response_to(tx.request.headers, 400, to_tag=new_tag(), extra=extra))

    def _dispatch(self, tx: ServerTransaction) -> None:
        request = tx.request
        method = request.method
        if self._challenged(tx):
            return
        required = request.headers.values("Require")
        if required and method != "CANCEL":
            # No option tag is supported (RFC 3261 8.2.2.3); CANCEL is never refused for it.
            unsupported = (("Unsupported", ", ".join(required)),)
            tx.respond(response_to(request.headers, 420, to_tag=new_tag(), extra=unsupported))
            return
        if method == "INVITE":
            self._invite(tx)
        elif method == "OPTIONS":
            extra = (("Allow", self.allow()), ("Accept", SDP))
            tx.respond(response_to(request.headers, 200, to_tag=new_tag(), extra=extra))
        elif method == "BYE":
            self._bye(tx)
        elif method == "REFER":
            self._refer(tx)
        elif method == "CANCEL":
            self._cancel(tx)
        elif method == "MESSAGE" and self.config.sip.messaging:
            self._message(tx)
        elif method in KNOWN_METHODS:
            tx.respond(response_to(request.headers, 405, extra=(("Allow", self.allow()),)))
        else:
            tx.respond(response_to(request.headers, 501))

    def _challenged(self, tx: ServerTransaction) -> bool:
        """
        Whether C{tx}'s request was answered 401/400 for want of valid
        credentials (C{pbx_challenge}); requests in a dialog we know pass.
        """
        if self.challenger is None:
            return False
        request = tx.request
        if request.to.tag is not None and dialog_id_of(request) in self.dialogs:
            return False
        decision = self.challenger.check(request, tx.channel.address[0])
        if decision.verdict is Verdict.PASS:
            return False
        log.debug(
            "{method} from {peer} answered {status}: {why}",
            method=request.method,
            peer=tx.channel.address[0],
            status=decision.status,
            why=decision.why,
        )
        tx.respond(
            response_to(request.headers, decision.status, to_tag=new_tag(), extra=decision.headers)
        )
        return True

    def ack_received(self, request: Request, channel: Channel) -> None:
        pass  # the 2xx's retransmissions stop in the transaction layer

    def no_ack(self, tx: ServerTransaction) -> None:
        call = self.invites.get(tx.key)
        if call is not None and not call.ended:
            log.info("no ACK for call {call_id}; hanging up", call_id=tx.request.call_id)
            call.end_from_sip("cig", "no ACK")
            if call.dialog is not None:
                self.send_bye(call.dialog, tx.channel, self.local_host(tx.request))

    def _invite(self, tx: ServerTransaction) -> None:
        request = tx.request
        if request.to.tag is not None:
            self._reinvite(tx)
            return
        refusal = self._check_invite(request)
        if refusal is not None:
            tx.respond(response_to(request.headers, refusal[0], to_tag=new_tag(), extra=refusal[1]))
            return
        tx.respond(self.reply(request, 100))
        answer = self._answer(request)
        if answer is None:
            tx.respond(response_to(request.headers, 488, to_tag=new_tag()))
            return
        body, port = answer
        call = Call(in_from=request.from_.uri, in_to=request.to.uri)
        call.caller_if_id = request.call_id
        call.source = source_of(transport_of(tx.channel), tx.channel.address)
        self.calls.event(call, "routing")
        try:
            routed = self.router.route(SIP, call.in_from, call.in_to)
        except RouteRefused as exc:
            log.info("call {call_id} not routed: {why}", call_id=request.call_id, why=exc.reason)
            self.rtp_ports.give_back(port)
            call.note_end("cig", "not routed")
            self.calls.add(call)
            self.calls.set_state(call, CallState.REJECT)
            self.calls.event(call, "failed")
            tx.respond(self.reply(request, 404, new_tag()))
            return
        call.out_from, call.out_to = routed.out_from, routed.out_to
        self.calls.add(call)
        self.calls.set_state(call, CallState.ROUTED)
        self.calls.event(call, "routed")
        sip_call = SipCall(self, call, tx, new_tag(), body, port)
        self.invites[tx.key] = sip_call
        sip_call.start()

    def _check_invite(self, request: Request) -> tuple[int, tuple[tuple[str, str], ...]] | None:
        if (request.headers.get("Max-Forwards") or "70").strip() in ("0", "00", "000"):
            return 483, ()
        content_type = (request.headers.get("Content-Type") or SDP).split(";")[0].strip()
        if request.body and content_type.lower() != SDP:
            return 415, (("Accept", SDP),)
        if not _accepts_sdp(request.headers.values("Accept")):
            return 406, (("Warning", '399 cig "answers carry application/sdp only"'),)
        # An RFC 2543 caller may leave out Contact (RFC 4475 3.4.1); one
        # that is there must be readable.
        try:
            contacts = request.headers.values("Contact")
            if contacts:
                shared_name_addr(contacts[0])
        except SipParseError:
            return 400, (("Warning", '399 cig "INVITE without a usable Contact"'),)
        return None

    def _answer(self, request: Request) -> tuple[bytes, int | None] | None:
        """Our SDP for the INVITE (an answer, or an offer if it had none)."""
        port = self.rtp_ports.take()
        if port is None:
            return None
        host = self.local_host(request)
        session_id = str(int(self.clock.seconds()))
        srtp = self.config.sip.srtp
        if not request.body:
            return render_sdp(make_offer(host, port, session_id, crypto=self._crypto())), port
        try:
            answer = make_answer(parse_sdp(request.body), host, port, session_id, srtp=srtp)
        except SdpError:
            answer = None
        if answer is None:
            self.rtp_ports.give_back(port)
            return None
        return render_sdp(answer), port

    def _reinvite(self, tx: ServerTransaction) -> None:
        """A re-INVITE: answer from our same RTP port; a new offer (the PBX's
        media moved, or changed codec) goes to the tel side's bridge."""
        request = tx.request
        found = self._in_dialog(tx)
        if found is None:
            return
        if found.dialog is not None and not found.dialog.accept_remote_cseq(request):
            tx.respond(response_to(request.headers, 500))
            return
        if found.reinviting:  # ours is under way (RFC 3261 14.2)
            tx.respond(response_to(request.headers, 491))
            return
        if not request.body or found.rtp_port is None:
            tx.respond(self.reply(request, 200, body=found.answer))
            return
        try:
            offer = parse_sdp(request.body)
            previous = parse_sdp(found.answer)
            answer = make_answer(
                offer,
                self.local_host(request),
                found.rtp_port,
                previous.session_id,
                int(previous.version) + 1
                if previous.version.isascii() and previous.version.isdigit()
                else 2,
                srtp=self.config.sip.srtp,
                keep=our_line(previous),
            )
        except SdpError:
            answer = None
        if answer is None:
            tx.respond(response_to(request.headers, 488))
            return
        found.answer = render_sdp(answer)
        found.remote_sdp = request.body
        log.info("re-INVITE: new PBX media for {call}", call=found.call.in_from)
        tx.respond(self.reply(request, 200, body=found.answer))
        self.tel.media_changed(found.call)

    def _in_dialog(self, tx: ServerTransaction) -> SipCall | OutCall | None:
        dialog_id = dialog_id_of(tx.request)
        found = self.dialogs.get(dialog_id) if dialog_id is not None else None
        if found is None:
            tx.respond(response_to(tx.request.headers, 481))
        return found

    def _bye(self, tx: ServerTransaction) -> None:
        found = self._in_dialog(tx)
        if found is None:
            return
        tx.respond(response_to(tx.request.headers, 200))
        if found.transfer is not None:  # a transferor leaving: the call goes on
            found.transfer.old_hung_up()
            return
        found.end_from_sip()

    def _refer(self, tx: ServerTransaction) -> None:
        """
        REFER in an answered call's dialog (RFC 3515): 202, then a
        L{Transfer} to the Refer-To target (400 for a missing or unusable
        one, 491 while a transfer or re-INVITE is under way).
        """
        request = tx.request
        found = self._in_dialog(tx)
        if found is None:
            return
        if found.dialog is not None and not found.dialog.accept_remote_cseq(request):
            tx.respond(response_to(request.headers, 500))
            return
        values = request.headers.values("Refer-To")
        try:
            if len(values) != 1:
                raise ReferError("one Refer-To is needed")
            target = parse_refer_to(values[0])
        except SipParseError as exc:
            extra = (("Warning", _warning(exc)),)
            tx.respond(response_to(request.headers, 400, extra=extra))
            return
        if found.ended or found.dialog is None:
            tx.respond(response_to(request.headers, 481))
            return
        if found.transfer is not None or found.reinviting:
            tx.respond(response_to(request.headers, 491))
            return
        tx.respond(response_to(request.headers, 202))
        found.transfer = Transfer(self, found.call, found, target)
        found.transfer.start()

    def _cancel(self, tx: ServerTransaction) -> None:
        invite = self.layer.invite_for(tx.request)
        if invite is None:
            tx.respond(response_to(tx.request.headers, 481))
            return
        tx.respond(response_to(tx.request.headers, 200))
        call = self.invites.get(invite.key)
        if call is not None and call.unanswered:  # a final response ends the CANCEL's use
            invite.respond(self.reply(invite.request, 487, call.local_tag))
            call.end_from_sip("pbx", "CANCEL")

    def stop(self) -> None:
        """Cancel every timer (at shutdown)."""
        for call in list(self.invites.values()):
            call._stop_timer()
        self.layer.stop()
        self.calls.stop()
        self.refusals.stop()
        if self.challenger is not None:
            self.challenger.stop()
        if self.peers is not None:
            self.peers.stop()


def _accepts_sdp(accept: list[str]) -> bool:
    """Whether an Accept header's values (none: no Accept header) allow SDP."""
    if not accept:
        return True
    for value in accept:
        media = value.split(";")[0].strip().lower()
        if media in (SDP, "application/*", "*/*"):
            return True
    return False


def _warning(error: SipParseError) -> str:
    text = error.reason.replace('"', "'")[:100]
    return f'399 cig "{text}"'
