"""The mailboxes' SIP side: messages to the CIG sent on to the PBX, and the PBX's posted.

A message to ``tel:+CIG;EXT`` that no write mailbox takes goes out as a SIP
MESSAGE when messaging is on; a 2xx confirms it ``delivered``, a passing
failure (:data:`~cryptify.cig.mail.desk.SIP_PASSING`) is tried again with
backoff, anything else (or the last attempt) is refused to the sender.  A
MESSAGE from the PBX is sealed and posted; the PBX is answered 202 only
once the CRS has stored it.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cryptify.protocols.message_payload import MessageBody, OpenedMessage, PayloadError
from cryptify.protocols.umsg import Message, base_uri

from ..route import TEL, Routed, RouteRefused
from .desk import (
    MAX_DONE,
    RETRY_FIRST,
    RETRY_MAX,
    SIP_ANSWER_WITHIN,
    SIP_ATTEMPTS,
    SIP_PASSING,
    DeskBase,
)
from .sip import RETRY_AFTER, SipAnswer, answer_for

log = Logger(namespace="cryptify.cig.mail")


def _now(answer: SipAnswer) -> Deferred[SipAnswer]:
    done: Deferred[SipAnswer] = Deferred()
    done.callback(answer)
    return done


class SipSide(DeskBase):
    """SIP MESSAGE to and from the PBX."""

    def _sip_route(self, opened: OpenedMessage) -> Routed | None:
        if self.router is None:
            return None
        try:
            return self.router().route(TEL, opened.sender, opened.recipient)
        except RouteRefused:
            return None

    def _to_sip(self, msg: Message, opened: OpenedMessage, routed: Routed) -> None:
        """Send a message to the CIG on to the PBX as a SIP MESSAGE; confirm it on 2xx."""
        message_id = msg["message"]
        fingerprint = opened.fingerprint
        if fingerprint in self.sip_sending:
            return  # sent again by the CRS while on its way: its answer confirms it
        if opened.body.attachments:
            log.info(
                "message {message} from {sender} to {to} has attachments; refused",
                message=message_id,
                sender=opened.sender,
                to=routed.out_to,
            )
            self._refuse(
                msg,
                f"{routed.out_to} takes SIP text messages only, "
                f"not {len(opened.body.attachments)} attachment(s)",
            )
            return
        self.sip_sending.add(fingerprint)
        assert self.sip is not None
        sent = self.sip.send_message(routed.out_from, routed.out_to, opened.body.text)

        def answered(status: int) -> None:
            self.sip_sending.discard(fingerprint)
            if 200 <= status < 300:
                self.sip_attempts.pop(fingerprint, None)
                self.sip_sent += 1
                self.done[fingerprint] = None
                while len(self.done) > MAX_DONE:
                    self.done.popitem(last=False)
                log.info(
                    "message {message} from {sender} sent to {to} by SIP ({status})",
                    message=message_id,
                    sender=opened.sender,
                    to=routed.out_to,
                    status=status,
                )
                self._notify("delivered", message=message_id)
                return
            attempts = self.sip_attempts.get(fingerprint, 0) + 1
            if status in SIP_PASSING and attempts < SIP_ATTEMPTS and self.running:
                self.sip_attempts[fingerprint] = attempts
                while len(self.sip_attempts) > MAX_DONE:  # ones the CRS never sent again
                    self.sip_attempts.pop(next(iter(self.sip_attempts)))
                delay = min(RETRY_FIRST * 2 ** (attempts - 1), RETRY_MAX)
                log.warn(
                    "message {message} to {to} by SIP failed ({status}); "
                    "not confirmed, tried again in {delay:.0f} s",
                    message=message_id,
                    to=routed.out_to,
                    status=status,
                    delay=delay,
                )
                self._retry_write(msg, delay)
                return
            self.sip_attempts.pop(fingerprint, None)
            log.info(
                "message {message} to {to} by SIP refused ({status}); the sender is told",
                message=message_id,
                to=routed.out_to,
                status=status,
            )
            self._refuse(msg, f"{routed.out_to} did not take it (SIP {status})")

        sent.addCallback(answered)

    def from_sip(self, sender: str, recipient: str, text: str, key: bytes) -> Deferred[SipAnswer]:
        """A MESSAGE from the PBX, routed: sealed and posted to ``recipient``.

        ``sender`` is the routed from-URI; the CIG signs as it when it is
        one of its own (``tel:+CIGNUMBER;EXT``), else as itself.  Fires with
        the answer for the PBX: 202 once the CRS stored it, 404 for a
        recipient the CRS does not know, 413 for a text too large, 480
        (Retry-After) while the CIG is not attached, 503 (Retry-After)
        when the CRS refused for a while or did not answer within
        :data:`SIP_ANSWER_WITHIN` seconds (the PBX sending it again falls
        in the same retry scope: it is stored once).
        """
        crypto = self.crypto()
        session = self.session()
        if not self.messaging():
            return _now(SipAnswer(405, why="messaging is off"))
        if crypto is None or session is None or session.state != "attached":
            return _now(SipAnswer(480, RETRY_AFTER, "not attached to the CRS"))
        signer = sender if base_uri(sender) == base_uri(crypto.uri) else crypto.uri
        try:
            content = crypto.seal(recipient, MessageBody(text), self.clock.seconds(), signer)
        except PayloadError as exc:
            if exc.reason == "too-large":
                return _now(SipAnswer(413, why=str(exc)))
            if exc.reason == "wrong-period":
                return _now(SipAnswer(503, RETRY_AFTER, str(exc)))
            return _now(SipAnswer(404, why=f"cannot seal for {recipient}: {exc}"))
        done: Deferred[SipAnswer] = Deferred()

        def finish(answer: SipAnswer) -> None:
            if not done.called:
                done.callback(answer)

        def answered(answer: Message | None) -> None:
            if timer.active():
                timer.cancel()
            code = None if answer is None else answer.get("code", answer.type)
            result = answer_for(code)
            if result.status == 202:
                self.sip_posted += 1
            finish(result)

        timer = self.clock.callLater(SIP_ANSWER_WITHIN, lambda: finish(answer_for(None)))
        if not self._post(recipient, content, key, answered):
            timer.cancel()
            finish(SipAnswer(480, RETRY_AFTER, "not attached to the CRS"))
        return done
