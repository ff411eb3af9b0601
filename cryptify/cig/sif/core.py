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

from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.addresses import is_wildcard
from cryptify.config.cig_model import CigConfig
from cryptify.protocols.sip.address import parse_name_addr, parse_uri
from cryptify.protocols.sip.dialog import Dialog, DialogId, dialog_id_of, new_branch, new_tag
from cryptify.protocols.sip.digest import Credentials
from cryptify.protocols.sip.errors import SipParseError
from cryptify.protocols.sip.locate import LocateError, Target, locate
from cryptify.protocols.sip.message import (
    MAX_MESSAGE_BYTES,
    Headers,
    Request,
    Response,
    response_to,
)
from cryptify.protocols.sip.refer import ReferError, parse_refer_to
from cryptify.protocols.sip.sdes import CryptoAttribute
from cryptify.protocols.sip.sdp import (
    SdpError,
    SrtpKeys,
    make_answer,
    make_offer,
    mirror,
    offer_crypto,
    our_line,
    parse_sdp,
    render_sdp,
    srtp_keys,
    stream_direction,
    with_direction,
)
from cryptify.protocols.sip.transaction import (
    Address,
    Channel,
    ServerTransaction,
    TransactionLayer,
    TxState,
)

from ..calls import Call, CallState, CallTable, TelLeg, TelSide, source_of
from ..mail.sip import (
    MAX_UDP_MESSAGE,
    OUR_CONTENT_TYPE,
    RETRY_AFTER,
    TEXT_PLAIN,
    SipAnswer,
    SipTextError,
    post_key,
    text_of,
)
from ..route import SIP, Router, RouteRefused
from .auth import ChallengedRequest, Keyring
from .legs import OutCall, SipCall
from .peers import Refusals, SipPeers
from .ports import DEFAULT_RTP_PORTS, PortPool
from .transfer import Transfer

log = Logger(namespace="cryptify.cig.sif")

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, REFER"
#: Methods SIP defines that the CIG does not take (405, not 501).
KNOWN_METHODS = frozenset(
    {"REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO", "REFER", "UPDATE", "MESSAGE"}
)
SDP = "application/sdp"


class MessageDesk(Protocol):
    """Where MESSAGEs from the PBX go (the mailboxes' L{MailDesk.from_sip})."""

    def from_sip(self, sender: str, recipient: str, text: str, key: bytes) -> Deferred[SipAnswer]:
        """Post C{text} to C{recipient}; fires with the answer for the PBX."""


class NoTransport(Exception):
    """No channel to the target: no transport of that kind, or no connection."""


@attrs.define(eq=False)
class Sif:
    """
    The SIP interface's user agent core (a L{TransactionUser} and the
    adapters' L{MessageSink}).
    """

    config: CigConfig
    clock: IReactorTime
    tel: TelSide
    calls: CallTable
    router: Router = attrs.field()
    layer: TransactionLayer = attrs.field(init=False)
    rtp_ports: PortPool = attrs.field(init=False)
    channel_to: Callable[[Address], Channel | None] | None = None
    #: A host name's IPv4 address (C{reactor.resolve}); None: names fail.
    resolve: Callable[[str], Deferred[str]] | None = None
    #: A TCP channel to an address (L{TcpConnector.channel}); None: no TCP.
    tcp_channel: Callable[[Address], Deferred[Channel]] | None = None
    #: A TLS channel to an address whose certificate must name the given
    #: host (a L{TcpConnector} with C{tls}); None: no TLS.
    tls_channel: Callable[[Address, str], Deferred[Channel]] | None = None
    #: Who may send requests; None: anyone (tests, in-process tools).
    peers: SipPeers | None = None
    #: Credentials for the PBXs' 401/407 challenges (C{pbx_account}).
    keyring: Keyring = attrs.field(factory=Keyring)
    #: Where MESSAGEs from the PBX go (C{messaging true}); None: answered 480.
    messages: MessageDesk | None = None
    refusals: Refusals = attrs.field(init=False)
    placing: set[Call] = attrs.field(factory=set, init=False)
    dialogs: dict[DialogId, SipCall | OutCall] = attrs.field(factory=dict, init=False)
    outgoing: dict[Call, OutCall] = attrs.field(factory=dict, init=False)
    invites: dict[tuple[str, ...], SipCall] = attrs.field(factory=dict, init=False)

    @router.default
    def _router(self) -> Router:
        return Router(self.config)

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
                channel.address[0], f"not a SIP peer ({_transport(channel)} malformed)"
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
            channel.address[0], f"not a SIP peer ({_transport(channel)} {request.method})"
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

    def ack_received(self, request: Request, channel: Channel) -> None:
        pass  # the 2xx's retransmissions stop in the transaction layer

    def no_ack(self, tx: ServerTransaction) -> None:
        call = self.invites.get(tx.key)
        if call is not None and not call.ended:
            log.info("no ACK for call {call_id}; hanging up", call_id=tx.request.call_id)
            call.end_from_sip("cig", "no ACK")
            if call.dialog is not None:
                self.send_bye(call.dialog, tx.channel, self.local_host(tx.request))

    # --- requests ----------------------------------------------------------
    def allow(self) -> str:
        return ALLOW + (", MESSAGE" if self.config.sip.messaging else "")

    def reply(
        self, request: Request, status: int, to_tag: str | None = None, body: bytes = b""
    ) -> Response:
        extra: list[tuple[str, str]] = []
        if request.method == "INVITE" and 100 < status < 300:
            extra.append(("Contact", f"<{self.contact_uri(request)}>"))
            extra.append(("Allow", self.allow()))
        if body:
            extra.append(("Content-Type", SDP))
        if status in (405,):
            extra.append(("Allow", self.allow()))
        return response_to(
            request.headers,
            status,
            to_tag=to_tag if status > 100 else None,
            extra=tuple(extra),
            body=body,
        )

    def local_host(self, request: Request) -> str:
        """The address we advertise: C{bind}, or the one the PBX used."""
        bind = self.config.sip.bind
        if not is_wildcard(bind):
            return bind
        try:
            return parse_uri(request.uri).host or "127.0.0.1"
        except SipParseError:
            return "127.0.0.1"

    def contact_uri(self, request: Request) -> str:
        """Our Contact in answers to C{request}: over TLS, the TLS port and C{;transport=tls}."""
        try:
            tls = request.vias[0].transport == "TLS"
        except (SipParseError, IndexError):
            tls = False
        if tls:
            return f"sip:{self.local_host(request)}:{self.config.sip.tls_port};transport=tls"
        return f"sip:{self.local_host(request)}:{self.config.sip.port}"

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
        call.source = source_of(_transport(tx.channel), tx.channel.address)
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
                parse_name_addr(contacts[0])
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
                int(previous.version) + 1 if previous.version.isdigit() else 2,
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

    def _message(self, tx: ServerTransaction) -> None:
        """A MESSAGE from the PBX (RFC 3428): checked, routed, and posted to
        the secure user by the mailboxes; answered once the CRS has it."""
        request = tx.request
        try:
            routed = self.router.route(SIP, request.from_.uri, request.to.uri)
        except RouteRefused as exc:
            log.info("MESSAGE {call_id} not routed: {why}", call_id=request.call_id, why=exc.reason)
            tx.respond(response_to(request.headers, 404, to_tag=new_tag()))
            return
        try:
            text = text_of(request.headers.get("Content-Type"), request.body)
        except SipTextError as exc:
            shown = "".join(c if " " <= c <= "~" and c != '"' else "?" for c in exc.reason)
            extra = [("Warning", f'399 cig "{shown[:100]}"')]
            if exc.status == 415:
                extra.append(("Accept", TEXT_PLAIN))
            log.info(
                "MESSAGE {call_id} refused ({status}): {why}",
                call_id=request.call_id,
                status=exc.status,
                why=exc.reason,
            )
            tx.respond(
                response_to(request.headers, exc.status, to_tag=new_tag(), extra=tuple(extra))
            )
            return
        to_tag = new_tag()

        def answered(answer: SipAnswer) -> None:
            log.info(
                "MESSAGE {call_id} from {sender} to {to}: {status}{why}",
                call_id=request.call_id,
                sender=routed.out_from,
                to=routed.out_to,
                status=answer.status,
                why=f" ({answer.why})" if answer.why else "",
            )
            if tx.state not in (TxState.TRYING, TxState.PROCEEDING):
                return  # the transaction ended meanwhile
            extra: tuple[tuple[str, str], ...] = ()
            if answer.retry_after is not None:
                extra = (("Retry-After", str(answer.retry_after)),)
            tx.respond(response_to(request.headers, answer.status, to_tag=to_tag, extra=extra))

        if self.messages is None:
            answered(SipAnswer(480, RETRY_AFTER, "no secure side yet"))
            return
        key = post_key(
            request.call_id,
            request.from_.tag or "",
            request.headers.get("CSeq") or "",
            request.body,
        )
        self.messages.from_sip(routed.out_from, routed.out_to, text, key).addCallback(answered)

    def send_message(self, sender: str, to: str, text: str) -> Deferred[int]:
        """
        Send C{text} to C{to} (a SIP URI) from C{sender} as a MESSAGE
        (RFC 3428), answering 401/407 challenges with the PBX's
        credentials. Fires with the final status: the PBX's, 408 when it
        did not answer, 484 for a URI that is not SIP, 502 for a name that
        does not resolve, 503 without a transport or connection, 513 for a
        MESSAGE over 1300 octets over UDP (RFC 3428) or over the largest SIP
        message the CIG itself reads (16 KiB) over TCP or TLS.
        """
        try:
            target = locate(to)
        except LocateError:
            return succeed(484)
        done: Deferred[int] = Deferred()

        def finish(status: int) -> None:
            if not done.called:
                done.callback(status)

        def send(channel: Channel) -> None:
            local = "127.0.0.1" if is_wildcard(self.config.sip.bind) else self.config.sip.bind
            headers = Headers(
                (
                    ("Via", self.via(channel, local)),
                    ("Max-Forwards", "70"),
                    ("From", f"<{sender}>;tag={new_tag()}"),
                    ("To", f"<{to}>"),
                    ("Call-ID", f"{new_tag()}{new_tag()}@{local}"),
                    ("CSeq", "1 MESSAGE"),
                    ("Content-Type", OUR_CONTENT_TYPE),
                )
            )
            request = Request("MESSAGE", to, headers, text.encode("utf-8"))
            limit = MAX_MESSAGE_BYTES if channel.reliable else MAX_UDP_MESSAGE
            if len(request.to_bytes()) > limit:
                log.info(
                    "MESSAGE to {to}: over {limit} octets over {transport}, not sent",
                    to=to,
                    limit=limit,
                    transport=_transport(channel).upper(),
                )
                finish(513)
                return

            def response(answer: Response) -> None:
                if answer.status >= 200:
                    finish(answer.status)

            credentials = self.keyring.for_target(target)
            self.send_request(request, channel, credentials, response, lambda: finish(408))

        def failed(failure: Failure) -> None:
            log.info(
                "cannot reach {target} for a MESSAGE to {to}: {why}",
                target=str(target),
                to=to,
                why=failure.getErrorMessage(),
            )
            finish(502 if failure.check(DNSLookupError) else 503)

        self.channel_for(target).addCallbacks(send, failed)
        return done

    def send_bye(
        self, dialog: Dialog, channel: Channel, host: str, credentials: Credentials | None = None
    ) -> None:
        """
        Hang up towards the PBX: BYE in C{dialog}, sent again with
        C{credentials} (by default those of the PBX at the channel's
        address) if challenged.
        """
        self.dialogs.pop(dialog.id, None)
        bye = dialog.request("BYE", self.via(channel, host))
        if credentials is None:
            credentials = self.keyring.for_address(channel.address[0])

        def resent(request: Request) -> None:
            dialog.local_cseq = request.cseq.number

        self.send_request(bye, channel, credentials, lambda response: None, lambda: None, resent)

    def send_request(
        self,
        request: Request,
        channel: Channel,
        credentials: Credentials | None,
        on_response: Callable[[Response], None],
        on_timeout: Callable[[], None],
        on_resend: Callable[[Request], None] = lambda request: None,
    ) -> None:
        """
        Send C{request} in a client transaction; a 401/407 is answered
        once with C{credentials} (L{ChallengedRequest}).
        """
        ChallengedRequest(
            self.layer, channel, request, credentials, on_response, on_timeout, on_resend
        ).send()

    def contact_port(self, channel: Channel) -> int:
        """Where we listen for what comes over C{channel}'s transport."""
        return self.config.sip.tls_port if _transport(channel) == "tls" else self.config.sip.port

    def via(self, channel: Channel, host: str) -> str:
        """A Via value for a request we send on C{channel}, fresh branch."""
        transport = _transport(channel).upper()
        return (
            f"SIP/2.0/{transport} {host}:{self.contact_port(channel)};branch={new_branch()};rport"
        )

    # --- where requests to the PBX go ---------------------------------------
    def channel_for(self, target: Target) -> Deferred[Channel]:
        """
        A channel to C{target}: its host looked up (A record) unless it is
        an address, over UDP or a (reused) TCP connection. Fails with
        L{DNSLookupError} or L{NoTransport}.
        """
        if target.numeric:
            found: Deferred[str] = succeed(target.host)
        elif self.resolve is not None:
            found = self.resolve(target.host)
        else:
            found = fail(DNSLookupError(target.host))

        def connect(address: str) -> Channel | Deferred[Channel]:
            where = (address, target.port)
            if not target.numeric:
                credentials = self.keyring.for_target(target)
                if credentials is not None:
                    self.keyring.learn(address, credentials)
            if target.transport == "tls":
                if self.tls_channel is None:
                    raise NoTransport("no TLS transport")
                return self.tls_channel(where, target.host)
            if target.transport == "tcp":
                if self.tcp_channel is None:
                    raise NoTransport("no TCP transport")
                return self.tcp_channel(where)
            channel = self.channel_to(where) if self.channel_to is not None else None
            if channel is None:
                raise NoTransport("no UDP transport")
            return channel

        return found.addCallback(connect)

    # --- calls to the PBX (the SIF as the tel side's outgoing leg) ----------
    def place_call(
        self,
        call: Call,
        leg: TelLeg,
        port: int | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> OutCall | None:
        """
        Call C{call.out_to} (a SIP URI) from C{call.out_from}, offering
        PCMU, PCMA and telephone-event; report on C{leg}. The host is
        looked up when it is a name; C{;transport=tcp} sends over TCP.
        Refusals: 484 for a URI that is not SIP, 502 for a name that does
        not resolve, 503 when no RTP port, transport or connection is
        available. Returns the call once the INVITE is sent (at once when
        no lookup or connection is needed). A transfer gives C{port}, the
        RTP port its call already has (borrowed: never given back here),
        and C{extra} headers (C{Replaces}).
        """
        try:
            target = locate(call.out_to)
        except LocateError:
            call.note_end("cig", "SIP 484: not a SIP URI")
            leg.rejected(484)
            return None
        borrowed = port is not None
        if port is None:
            port = self.rtp_ports.take()
        if port is None:
            call.note_end("cig", "SIP 503: no RTP port")
            leg.rejected(503)
            return None
        rtp_port = port
        self.placing.add(call)

        def give_back() -> None:
            if not borrowed:
                self.rtp_ports.give_back(rtp_port)

        def send(channel: Channel) -> None:
            if call not in self.placing:
                give_back()  # hung up meanwhile
                return
            self.placing.discard(call)
            out = self._send_invite(call, leg, rtp_port, channel, extra)
            if borrowed:
                out.rtp_port = None

        def failed(failure: Failure) -> None:
            give_back()
            if call not in self.placing:
                return
            self.placing.discard(call)
            status = 502 if failure.check(DNSLookupError) else 503
            call.note_end("cig", f"SIP {status}: cannot reach {target}")
            log.info(
                "cannot reach {target} for call to {to}: {why}",
                target=str(target),
                to=call.out_to,
                why=failure.getErrorMessage(),
            )
            leg.rejected(status)

        self.channel_for(target).addCallbacks(send, failed)
        return self.outgoing.get(call)

    def _send_invite(
        self,
        call: Call,
        leg: TelLeg,
        port: int,
        channel: Channel,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> OutCall:
        local = "127.0.0.1" if is_wildcard(self.config.sip.bind) else self.config.sip.bind
        offer = render_sdp(
            make_offer(local, port, str(int(self.clock.seconds())), crypto=self._crypto())
        )
        call_id = f"{new_tag()}{new_tag()}@{local}"
        contact = f"sip:{local}:{self.contact_port(channel)}" + contact_transport(channel)
        headers = Headers(
            (
                ("Via", self.via(channel, local)),
                ("Max-Forwards", "70"),
                ("From", f"<{call.out_from}>;tag={new_tag()}"),
                ("To", f"<{call.out_to}>"),
                ("Call-ID", call_id),
                ("CSeq", "1 INVITE"),
                ("Contact", f"<{contact}>"),
                ("Allow", self.allow()),
                *extra,
                ("Content-Type", SDP),
            )
        )
        invite = Request("INVITE", call.out_to, headers, offer)
        call.callee_if_id = call_id
        if call not in self.calls.calls:
            self.calls.add(call)
        if call.state is None:
            self.calls.set_state(call, CallState.ROUTED)
        credentials = self.keyring.for_target(locate(call.out_to))
        out = OutCall(self, call, leg, invite, channel, local, offer, port, credentials)
        self.outgoing[call] = out
        self.send_request(invite, channel, credentials, out.response, out.timeout, out.resent)
        return out

    def media_of(self, call: Call) -> tuple[int | None, bytes] | None:
        """A call's local RTP port and the PBX's SDP (answer, or offer for calls from the PBX)."""
        out = self.outgoing.get(call)
        if out is not None:
            return out.rtp_port, out.remote_sdp or out.early_sdp
        for incoming in self.invites.values():
            if incoming.call is call:
                return incoming.rtp_port, incoming.remote_sdp or incoming.invite.request.body
        return None

    def _leg_of(self, call: Call) -> SipCall | OutCall | None:
        out = self.outgoing.get(call)
        if out is not None:
            return out
        return next((c for c in self.invites.values() if c.call is call), None)

    def early_media(self, call: Call) -> bool:
        """Whether the PBX sent SDP in an 18x of a call to it, before any answer."""
        out = self.outgoing.get(call)
        return out is not None and bool(out.early_sdp) and not out.ended

    def direction_of(self, call: Call) -> str:
        """
        Our side's direction on a call's PBX leg (RFC 3264): the PBX's
        latest SDP mirrored; C{sendrecv} when unknown or unreadable.
        """
        media = self.media_of(call)
        if media is None or not media[1]:
            return "sendrecv"
        try:
            return mirror(stream_direction(parse_sdp(media[1])))
        except SdpError:
            return "sendrecv"

    def hold(self, call: Call, held: bool) -> bool:
        """
        The secure side holds (C{held}) or resumes a call: a re-INVITE in
        its dialog with our SDP, C{sendonly} or C{sendrecv}; the PBX's 2xx
        is ACKed and its answer goes to the bridge (L{TelSide.media_changed}).
        A refusal (491 when both sides re-INVITE at once, 488, ...) leaves
        the media as it was (RFC 3261 14.1), and a later hold asks again.
        Nothing is sent when our SDP already says so. False: no answered
        SIP leg, or a re-INVITE of ours is still under way.
        """
        leg = self._leg_of(call)
        if leg is None or leg.dialog is None or leg.ended or leg.reinviting:
            return False
        wanted = "sendonly" if held else "sendrecv"
        try:
            ours = parse_sdp(leg.answer)
            if stream_direction(ours) == wanted:
                return True  # already so: nothing to ask
            offer = render_sdp(with_direction(ours, wanted))
        except SdpError:
            return False
        dialog = leg.dialog
        if isinstance(leg, OutCall):
            channel, host, credentials = leg.channel, leg.host, leg.credentials
        else:
            channel, host = leg.invite.channel, self.local_host(leg.invite.request)
            credentials = self.keyring.for_address(channel.address[0])
        contact = f"<sip:{host}:{self.contact_port(channel)}{contact_transport(channel)}>"
        request = dialog.request(
            "INVITE",
            self.via(channel, host),
            contact=contact,
            body=offer,
            content_type=SDP,
        )
        sent = [request]
        done = [False]
        leg.reinviting = True
        what = "hold" if held else "resume"

        def resent(again: Request) -> None:
            sent[0] = again
            dialog.local_cseq = again.cseq.number

        def answered(response: Response) -> None:
            if response.status < 200:
                return
            if response.status >= 300:
                done[0] = True
                leg.reinviting = False
                log.info(
                    "{what} of {call} refused by the PBX: {status}",
                    what=what,
                    call=call.in_from,
                    status=response.status,
                )
                return
            ack = dialog.request("ACK", self.via(channel, host), cseq=sent[0].cseq.number)
            for name in ("Authorization", "Proxy-Authorization"):
                for value in sent[0].headers.get_all(name):
                    ack = attrs.evolve(ack, headers=ack.headers.add(name, value))
            channel.send(ack.to_bytes())
            if done[0]:
                return  # a retransmitted 2xx: ACKed again, nothing more
            done[0] = True
            leg.reinviting = False
            if leg.ended:
                return
            leg.answer = offer
            if response.body:
                leg.remote_sdp = response.body
            log.info("{what}: re-INVITE for {call} answered", what=what, call=call.in_from)
            self.tel.media_changed(call)

        def timeout() -> None:
            if not done[0]:
                done[0] = True
                leg.reinviting = False

        self.send_request(request, channel, credentials, answered, timeout, resent)
        return True

    def _crypto(self) -> tuple[CryptoAttribute, ...]:
        """Our C{a=crypto} lines for an offer (none: C{srtp off}), fresh keys each time."""
        return offer_crypto() if self.config.sip.srtp != "off" else ()

    def srtp_of(self, call: Call) -> SrtpKeys | None:
        """
        The SRTP keys of a call's PBX leg (ours and the PBX's), None for
        plain RTP or an unknown call.

        @raise SdpError: our SDP and the PBX's do not agree (the bridge
            cannot be made).
        """
        out = self.outgoing.get(call)
        if out is not None:
            local, remote = out.answer, out.remote_sdp or out.early_sdp
        else:
            for incoming in self.invites.values():
                if incoming.call is call:
                    local = incoming.answer
                    remote = incoming.remote_sdp or incoming.invite.request.body
                    break
            else:
                return None
        return srtp_keys(parse_sdp(local), parse_sdp(remote))

    def hang_up(self, call: Call) -> None:
        """The tel side ends an outgoing call: BYE, or CANCEL if not answered."""
        if call in self.placing:
            self.placing.discard(call)
            return  # still looking up or connecting: nothing sent yet
        out = self.outgoing.get(call)
        if out is not None:
            out.hang_up()

    def stop(self) -> None:
        """Cancel every timer (at shutdown)."""
        for call in list(self.invites.values()):
            call._stop_timer()
        self.layer.stop()
        self.calls.stop()
        self.refusals.stop()
        if self.peers is not None:
            self.peers.stop()


def _transport(channel: Channel) -> str:
    """C{udp}, C{tcp} or C{tls}: what C{channel} runs over."""
    if getattr(channel, "secure", False):
        return "tls"
    return "tcp" if channel.reliable else "udp"


def contact_transport(channel: Channel) -> str:
    """The Contact URI parameter for requests sent on C{channel}."""
    transport = _transport(channel)
    return "" if transport == "udp" else f";transport={transport}"


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
