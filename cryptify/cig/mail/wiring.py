"""The CIG's mailboxes on Twisted: Maildir files to and from secure users.

:class:`MailDesk` is handed the UIF session's events before the calls
(:class:`~cryptify.cig.tel.switch.UifCalls`); it takes the ``message``
events addressed to the CIG and the answers to its own posts.

Write mailboxes (secure user -> Maildir): a message is opened with the
CIG's keys (:class:`~cryptify.client.messages.MessageCrypto`), written
(:func:`write_maildir`: ``tmp/``, fsync, rename into ``new/``, group
``cigmail``, mode 0660) to every write mailbox whose ``map_from`` and
``map_to`` both translate its sender and recipient, and confirmed
``delivered`` only when every one of them has it on disk.  A message no
mailbox takes, or that fails to verify, is refused: the CIG posts a
sealed reply ``Not delivered: ...`` to the sender from the address it
wrote to, and confirms the message once that reply is stored.  A write
that fails (disk full, permissions) is not confirmed and is tried again
with backoff.

Read mailboxes (Maildir -> secure user): each read mailbox's ``new/`` is
watched with inotify (a file renamed or linked in, or closed after
writing) and scanned at start, after each attach and every
:data:`SCAN_INTERVAL`.  A file is parsed (:func:`~cryptify.cig.mail.core.parse`),
routed (:func:`~cryptify.cig.mail.core.read_route`), sealed and posted,
and deleted only after ``posted``.  Its post's key is derived from the
mailbox, the file name and the file's octets, so a post repeated after a
CIG restart falls in the same retry scope: the CRS answers ``key-reused``
(the sealed octets differ) and stores nothing, which means an earlier
attempt was stored, and the file is deleted then.  A CRS that is away or
refusing ``unavailable`` leaves the file where it is, tried again with
backoff.  A file that can never be delivered is moved to the quarantine
folder beside the mailbox (``PATH.quarantine``) with a log line saying why.

The file work is small (at most :data:`~cryptify.cig.mail.core.MAX_FILE`
octets a file) and done in the reactor thread.
"""

from __future__ import annotations

import secrets

from twisted.application import service
from twisted.logger import Logger

from cryptify.client.connection import ConnectionEnded, Event
from cryptify.client.messages import new_message_key
from cryptify.client.session import Answered, Attached, Incoming
from cryptify.protocols.message_payload import MessageBody, OpenedMessage, PayloadError
from cryptify.protocols.umsg import Message

from .core import MailError, MailMessage, build, write_targets
from .desk import MAX_DONE, MAX_REFUSALS, REFUSAL_PREFIX, RETRY_FIRST, RETRY_MAX, Refusal
from .maildir import file_name, write_maildir
from .readside import ReadSide
from .sipside import SipSide

log = Logger(namespace="cryptify.cig.mail")


class MailDesk(ReadSide, SipSide):
    """The CIG's mailboxes: messages to the CIG written out, files read in and posted."""

    name = "mail"

    # ------------------------------------------------------------ lifecycle

    def startService(self) -> None:
        service.Service.startService(self)
        for box in self.mailboxes.read:
            log.info("watching read mailbox {path}", path=box.path)
        for box in self.mailboxes.write:
            log.info("write mailbox {path}", path=box.path)
        if self.mailboxes.read:
            self._watch()
            self._scan_later(0)

    def stopService(self) -> None:
        service.Service.stopService(self)
        for call in [self._scan_call, self._soon, *self.retrying.values()]:
            if call is not None and call.active():
                call.cancel()
        self._scan_call = self._soon = None
        self.retrying.clear()
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None

    def handle(self, event: Event) -> bool:
        """One event of the UIF session; True when it was the mailboxes' own."""
        if isinstance(event, Answered) and event.id in self.pending:
            self.pending.pop(event.id)(event.message)
            return True
        if isinstance(event, ConnectionEnded):
            for answer in list(self.pending.values()):
                answer(None)
            self.pending.clear()
            return False
        if isinstance(event, Attached):
            if self.mailboxes.read and self.running:
                self._scan_soon()
            return False
        if not isinstance(event, Incoming):
            return False
        msg = event.message
        if msg.type == "message":
            self._message(msg)
            return True
        return False

    # ------------------------------------------------------------ write side

    def _message(self, msg: Message) -> None:
        message_id = msg["message"]
        self._cancel_retry(message_id)
        content = msg.get("content")
        if content is None:
            log.info("message {message} to the CIG is an ack; confirmed", message=message_id)
            self._notify("delivered", message=message_id)
            return
        crypto = self.crypto()
        if crypto is None:
            return  # no keys: not attached either
        try:
            opened = crypto.open(content, msg["from"])
        except PayloadError as exc:
            log.warn(
                "message {message} from {sender} failed to verify: {why}",
                message=message_id,
                sender=msg["from"],
                why=str(exc),
            )
            self._refuse(msg, f"the message failed to verify ({exc.reason})")
            return
        if opened.recipient != msg["to"]:
            log.warn(
                "message {message} from {sender}: sealed for {sealed}, posted to {to}",
                message=message_id,
                sender=msg["from"],
                sealed=opened.recipient,
                to=msg["to"],
            )
            self._refuse(msg, "the message was sealed for another address")
            return
        self._write(msg, opened, crypto.material.account)

    def _write(self, msg: Message, opened: OpenedMessage, domain: str) -> None:
        message_id = msg["message"]
        if opened.fingerprint in self.done:
            # sent again because our confirmation was lost: the mailboxes have it
            log.info("message {message} was written before; confirmed", message=message_id)
            self._notify("delivered", message=message_id)
            return
        targets = write_targets(
            self.mailboxes.write, self.translate_maps, opened.sender, opened.recipient
        )
        if not targets and self.messaging() and self.sip is not None:
            routed = self._sip_route(opened)
            if routed is not None:
                self._to_sip(msg, opened, routed)
                return
        if not targets:
            log.info(
                "message {message} from {sender} to {to}: no write mailbox takes it; refused",
                message=message_id,
                sender=opened.sender,
                to=opened.recipient,
            )
            self._refuse(
                msg, f"no mailbox takes messages from {opened.sender} to {opened.recipient}"
            )
            return
        name = file_name(opened)
        gid = self.gid()
        written = []
        for target in targets:
            mail = MailMessage(
                target.to,
                target.sender,
                opened.time,
                opened.body,
                sender_uri=opened.sender,
                sender_domain=domain,
            )
            try:
                data = build(mail, secrets.token_hex(16))
            except MailError as exc:
                log.warn(
                    "message {message} cannot be written to {path}: {why}",
                    message=message_id,
                    path=target.mailbox.path,
                    why=str(exc),
                )
                continue
            try:
                write_maildir(target.mailbox.path, name, data, gid)
            except OSError as exc:
                log.error(
                    "message {message} not written to {path}: {why}; not confirmed, tried again",
                    message=message_id,
                    path=target.mailbox.path,
                    why=str(exc),
                )
                self._retry_write(msg)
                return
            written.append(target.mailbox.path)
        if not written:
            self._refuse(msg, "no mailbox could take the message")
            return
        self.written += 1
        self.done[opened.fingerprint] = None
        while len(self.done) > MAX_DONE:
            self.done.popitem(last=False)
        log.info(
            "message {message} from {sender} to {to} written to {paths}",
            message=message_id,
            sender=opened.sender,
            to=opened.recipient,
            paths=", ".join(written),
        )
        self._notify("delivered", message=message_id)

    def _cancel_retry(self, message_id: str) -> None:
        call = self.retrying.pop(message_id, None)
        if call is not None and call.active():
            call.cancel()

    def _retry_write(self, msg: Message, delay: float = RETRY_FIRST) -> None:
        message_id = msg["message"]

        def again() -> None:
            self.retrying.pop(message_id, None)
            self._message(msg)
            if message_id in self.retrying:  # failed again: wait longer
                self._cancel_retry(message_id)
                self._retry_write(msg, min(delay * 2, RETRY_MAX))

        self._cancel_retry(message_id)
        self.retrying[message_id] = self.clock.callLater(delay, again)

    def _refuse(self, msg: Message, why: str) -> None:
        """Tell the sender, from the address it wrote to, and confirm once that is stored."""
        message_id = msg["message"]
        refusal = self.refusals.get(message_id)
        if refusal is None:
            crypto = self.crypto()
            if crypto is None:
                return
            text = f"{REFUSAL_PREFIX}{why}. (An automatic reply of the gateway {msg['to']}.)"
            try:
                content = crypto.seal(
                    msg["from"], MessageBody(text), self.clock.seconds(), sender=msg["to"]
                )
            except PayloadError as exc:
                log.error(
                    "cannot refuse message {message}: {why}", message=message_id, why=str(exc)
                )
                return
            refusal = Refusal(msg["from"], content, new_message_key())
            self.refusals[message_id] = refusal
            while len(self.refusals) > MAX_REFUSALS:
                self.refusals.pop(next(iter(self.refusals)))

        def answered(answer: Message | None) -> None:
            if answer is None:
                return  # the connection ended; the CRS sends the message again
            if answer.type == "posted" or answer.get("code") in ("not-found", "key-reused"):
                self.refused += 1
                self.refusals.pop(message_id, None)
                log.info(
                    "message {message} refused to {sender}: {why}",
                    message=message_id,
                    sender=msg["from"],
                    why=why,
                )
                self._notify("delivered", message=message_id)
            else:
                self._retry_write(msg)

        self._post(refusal.to, refusal.content, refusal.key, answered)
