"""The SIF as the tel side's outgoing leg: calls placed to the PBX, their media, hold and SRTP.

C{place_call} looks the PBX up, sends the INVITE (answering digest
challenges) and follows the call as an L{OutCall}; the tel side asks here
for a call's media address, SRTP keys and direction, puts it on hold and
hangs it up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import attrs
from twisted.internet.error import DNSLookupError
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.addresses import is_wildcard
from cryptify.protocols.sip.dialog import new_tag
from cryptify.protocols.sip.locate import LocateError, locate
from cryptify.protocols.sip.message import (
    Headers,
    Request,
    Response,
)
from cryptify.protocols.sip.sdes import CryptoAttribute
from cryptify.protocols.sip.sdp import (
    SdpError,
    SrtpKeys,
    make_offer,
    mirror,
    offer_crypto,
    parse_sdp,
    render_sdp,
    srtp_keys,
    stream_direction,
    with_direction,
)
from cryptify.protocols.sip.transaction import (
    Channel,
)

from ..calls import Call, CallState, TelLeg
from .base import SDP, SifBase, contact_transport
from .legs import OutCall, SipCall

if TYPE_CHECKING:
    from .core import Sif

log = Logger(namespace="cryptify.cig.sif")


@attrs.define(eq=False)
class SifOutCalls(SifBase):
    """Calls to the PBX and the media of every call."""

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
        # this side is only ever a part of a Sif, which its legs talk to
        sif = cast("Sif", self)
        out = OutCall(sif, call, leg, invite, channel, local, offer, port, credentials)
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
