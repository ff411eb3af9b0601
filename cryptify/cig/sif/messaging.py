"""The SIF's SIP MESSAGE, both ways: the PBX's text messages to secure users, and theirs out.

A MESSAGE from a trusted PBX (C{messaging true}) is routed and handed to
the mailboxes' L{MessageDesk}, which answers 202 only once the CRS has
stored it; C{send_message} sends a secure user's text to the PBX.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import DNSLookupError
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.addresses import is_wildcard
from cryptify.protocols.sip.dialog import new_tag
from cryptify.protocols.sip.locate import LocateError, locate
from cryptify.protocols.sip.message import (
    MAX_MESSAGE_BYTES,
    Headers,
    Request,
    Response,
    response_to,
)
from cryptify.protocols.sip.transaction import (
    Channel,
    ServerTransaction,
    TxState,
)

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
from ..route import SIP, RouteRefused
from .base import SifBase, transport_of

log = Logger(namespace="cryptify.cig.sif")


@attrs.define(eq=False)
class SifMessaging(SifBase):
    """SIP MESSAGE to and from the PBX."""

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
                    transport=transport_of(channel).upper(),
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
