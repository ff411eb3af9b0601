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

import hashlib
import os
import secrets
import stat
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python import filepath

from cryptify.client.connection import ConnectionEnded, Event
from cryptify.client.messages import MessageCrypto, new_message_key
from cryptify.client.session import Answered, Attached, ClientSession, Incoming
from cryptify.config.cig_model import Mailbox, Mailboxes, TranslateMap
from cryptify.crypto.keymaterial import KeyMaterial
from cryptify.protocols.message_payload import MessageBody, OpenedMessage, PayloadError
from cryptify.protocols.umsg import Message, base_uri

from ..route import TEL, Routed, Router, RouteRefused
from .core import MAX_FILE, MailError, MailMessage, build, parse, read_route, write_targets
from .maildir import file_name, fsync_dir, mail_group, shown, write_maildir
from .sip import RETRY_AFTER, SipAnswer, answer_for

log = Logger(namespace="cryptify.cig.mail")

#: Mode of a quarantine folder the CIG creates.
QUARANTINE_MODE = 0o2770
#: Suffix of the quarantine folder beside a mailbox.
QUARANTINE_SUFFIX = ".quarantine"
#: Seconds between two safety-net scans of the read mailboxes.
SCAN_INTERVAL = 60.0
#: First and longest wait before a failed attempt is repeated, seconds.
RETRY_FIRST = 2.0
RETRY_MAX = 300.0
#: Posts from read mailboxes waiting for their answer at once, at most.
MAX_IN_FLIGHT = 16
#: Messages written that are remembered, so that one sent again is not written twice.
MAX_DONE = 10_000
#: Refused messages whose sealed reply is kept to repeat it unchanged.
MAX_REFUSALS = 1000
#: The refusal's text starts with this.
REFUSAL_PREFIX = "Not delivered: "
#: Seconds a MESSAGE from the PBX waits for the CRS's answer before it is answered 503.
SIP_ANSWER_WITHIN = 8.0
#: Attempts at a MESSAGE to the PBX that failed for a passing reason, before it is refused.
SIP_ATTEMPTS = 5
#: PBX statuses (and ours: 408 no answer, 502/503 not reachable) worth trying again.
SIP_PASSING = frozenset({408, 480, 500, 502, 503, 504})


class SipMessenger(Protocol):
    """The SIF as the mailboxes use it: MESSAGEs to the PBX (``Sif.send_message``)."""

    def send_message(self, sender: str, to: str, text: str) -> Deferred[int]: ...


def _now(answer: SipAnswer) -> Deferred[SipAnswer]:
    done: Deferred[SipAnswer] = Deferred()
    done.callback(answer)
    return done


@attrs.define(eq=False)
class _Refusal:
    """A sealed reply that refuses a message, kept to post it again unchanged."""

    to: str
    content: bytes
    key: bytes


@attrs.define(eq=False)
class _ReadFile:
    """A read mailbox file on its way: its post, and when to try it again."""

    box: Mailbox
    name: str
    key: bytes
    content: bytes
    recipient: str
    attempts: int = 0
    not_before: float = 0.0
    in_flight: bool = False


class MailDesk(service.Service):
    """The CIG's mailboxes: messages to the CIG written out, files read in and posted."""

    name = "mail"

    def __init__(
        self,
        clock: IReactorTime,
        mailboxes: Mailboxes,
        translate_maps: Sequence[TranslateMap],
        material: Callable[[], KeyMaterial | None],
        session: Callable[[], ClientSession | None],
        inotify: Callable[[], Any] | None = None,
        gid: Callable[[], int | None] = mail_group,
        router: Callable[[], Router] | None = None,
        sip: SipMessenger | None = None,
        messaging: Callable[[], bool] = lambda: False,
    ) -> None:
        self.clock = clock
        self.mailboxes = mailboxes
        self.translate_maps = tuple(translate_maps)
        self.material = material
        self.session = session
        self.make_inotify = inotify
        self.gid = gid
        #: Messages to the CIG no write mailbox takes go out by SIP when ``messaging``
        #: (the current router: a reload replaces it).
        self.router = router
        self.sip = sip
        self.messaging = messaging
        #: Messages on their way to the PBX (fingerprints), and attempts made at each.
        self.sip_sending: set[bytes] = set()
        self.sip_attempts: dict[bytes, int] = {}
        self._crypto: MessageCrypto | None = None
        #: Posts of ours waiting for their answer: request id -> what to do with it.
        self.pending: dict[int, Callable[[Message | None], None]] = {}
        #: Messages whose write failed, waiting to be tried again: id -> timer.
        self.retrying: dict[str, IDelayedCall] = {}
        self.refusals: dict[str, _Refusal] = {}
        #: Fingerprints of the messages written lately (a repeat is confirmed, not rewritten).
        self.done: OrderedDict[bytes, None] = OrderedDict()
        self.files: dict[tuple[str, str], _ReadFile] = {}
        #: Read mailboxes whose new/ could not be listed at the last scan.
        self.unreadable: set[str] = set()
        self._scan_call: IDelayedCall | None = None
        self._soon: IDelayedCall | None = None
        self._notifier: Any = None
        #: What was done, for tests and ``status``.
        self.written = 0
        self.refused = 0
        self.posted = 0
        self.quarantined = 0
        self.sip_sent = 0
        self.sip_posted = 0

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

    def _watch(self) -> None:
        if self.make_inotify is None:
            return
        try:
            notifier = self.make_inotify()
            notifier.startReading()
        except Exception as exc:
            log.warn("no inotify ({why}): the read mailboxes are scanned only", why=str(exc))
            return
        self._notifier = notifier
        from twisted.internet import inotify

        for box in self.mailboxes.read:
            try:
                notifier.watch(
                    filepath.FilePath(os.path.join(box.path, "new")),
                    # IN_CREATE: a delivery agent that link()s the finished file from
                    # tmp/ into new/ (Postfix's virtual and local) makes no other event
                    mask=inotify.IN_MOVED_TO | inotify.IN_CLOSE_WRITE | inotify.IN_CREATE,
                    callbacks=[lambda *_: self._scan_soon()],
                )
            except Exception as exc:
                log.warn(
                    "cannot watch {path}: {why}; it is scanned every {interval:.0f} s",
                    path=box.path,
                    why=str(exc),
                    interval=SCAN_INTERVAL,
                )

    # ------------------------------------------------------------ events

    def crypto(self) -> MessageCrypto | None:
        material = self.material()
        if material is None:
            return None
        if self._crypto is None or self._crypto.material is not material:
            self._crypto = MessageCrypto(material)
        return self._crypto

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

    def _notify(self, type_: str, **fields: Any) -> bool:
        session = self.session()
        if session is None or session.state != "attached":
            return False
        session.notify(type_, **fields)
        return True

    def _post(
        self, to: str, content: bytes, key: bytes, answer: Callable[[Message | None], None]
    ) -> bool:
        session = self.session()
        if session is None or session.state != "attached":
            return False
        request = session.request("post", to=to, content=content, key=key)
        self.pending[request] = answer
        return True

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

    # ------------------------------------------------------------ SIP MESSAGE, both ways

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
            refusal = _Refusal(msg["from"], content, new_message_key())
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

    # ------------------------------------------------------------ read side

    def _scan_later(self, delay: float) -> None:
        if self._scan_call is not None and self._scan_call.active():
            self._scan_call.cancel()
        self._scan_call = self.clock.callLater(delay, self._periodic)

    def _periodic(self) -> None:
        self._scan_call = None
        self.scan()
        self._scan_later(SCAN_INTERVAL)

    def _scan_soon(self, delay: float = 0) -> None:
        if self._soon is None or not self._soon.active():
            self._soon = self.clock.callLater(delay, self._scan_now)

    def _scan_now(self) -> None:
        self._soon = None
        self.scan()

    def scan(self) -> None:
        """Take up every file waiting in the read mailboxes' ``new/``."""
        if not self.running:
            return
        now = self.clock.seconds()
        next_due: float | None = None
        in_flight = sum(f.in_flight for f in self.files.values())
        for box in self.mailboxes.read:
            new = os.path.join(box.path, "new")
            try:
                names = sorted(e.name for e in os.scandir(new))
            except OSError as exc:
                if box.path not in self.unreadable:  # once, not every scan
                    self.unreadable.add(box.path)
                    log.warn("cannot read {path}: {why}", path=new, why=str(exc))
                continue
            if box.path in self.unreadable:
                self.unreadable.discard(box.path)
                log.info("{path} can be read again", path=new)
            present = set(names)
            for key in [k for k in self.files if k[0] == box.path and k[1] not in present]:
                if not self.files[key].in_flight:
                    del self.files[key]
            for name in names:
                if in_flight >= MAX_IN_FLIGHT:
                    return  # the next answer scans again
                state = self.files.get((box.path, name))
                if state is not None and (state.in_flight or state.not_before > now):
                    if not state.in_flight:
                        due = state.not_before
                        next_due = due if next_due is None else min(next_due, due)
                    continue
                in_flight += self._take(box, name, state)
        if next_due is not None:
            self._scan_soon(max(next_due - now, 0))

    def _take(self, box: Mailbox, name: str, state: _ReadFile | None) -> bool:
        """Post one file (prepared first if new); whether a post went out."""
        if state is None:
            state = self._prepare(box, name)
            if state is None:
                return False
            self.files[box.path, name] = state
        if not self._post(
            state.recipient, state.content, state.key, lambda a: self._answered(state, a)
        ):
            return False  # not attached: the next attach scans again
        state.in_flight = True
        state.attempts += 1
        return True

    def _prepare(self, box: Mailbox, name: str) -> _ReadFile | None:
        path = os.path.join(box.path, "new", name)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warn("cannot look at {path}: {why}", path=shown(path), why=str(exc))
            return None
        if stat.S_ISLNK(info.st_mode):
            self._quarantine(box, name, "a symbolic link")
            return None
        if not stat.S_ISREG(info.st_mode):
            self._quarantine(box, name, "not a regular file")
            return None
        if info.st_size > MAX_FILE:
            self._quarantine(box, name, f"oversized: over {MAX_FILE} octets")
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    self._quarantine(box, name, "not a regular file")
                    return None
                data = os.read(fd, MAX_FILE + 1)
            finally:
                os.close(fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warn("cannot read {path}: {why}", path=shown(path), why=str(exc))
            return None
        crypto = self.crypto()
        if crypto is None:
            return None
        try:
            mail = parse(data)
            route = read_route(box, self.translate_maps, mail, base_uri(crypto.uri))
        except MailError as exc:
            self._quarantine(box, name, str(exc))
            return None
        try:
            content = crypto.seal(route.recipient, mail.body, self.clock.seconds(), route.sender)
        except PayloadError as exc:
            if exc.reason == "wrong-period":
                log.error("cannot seal {path}: {why}; kept", path=shown(path), why=str(exc))
                return None
            self._quarantine(box, name, f"cannot be sent: {exc}")
            return None
        digest = hashlib.sha256(
            b"cryptify cig mail v1\x00"
            + os.fsencode(box.path)
            + b"\x00"
            + os.fsencode(name)
            + b"\x00"
            + hashlib.sha256(data).digest()
        ).digest()
        return _ReadFile(box, name, digest[:16], content, route.recipient)

    def _answered(self, state: _ReadFile, answer: Message | None) -> None:
        state.in_flight = False
        code = None if answer is None else answer.get("code", answer.type)
        if answer is not None and (answer.type == "posted" or code == "key-reused"):
            stored = answer.get("message", "an earlier attempt")
            self._done(state, stored)
        elif code in ("not-found", "malformed", "too-large"):
            self._quarantine(state.box, state.name, f"refused by the CRS: {code}")
            self.files.pop((state.box.path, state.name), None)
        else:
            delay = min(RETRY_FIRST * 2 ** (state.attempts - 1), RETRY_MAX)
            state.not_before = self.clock.seconds() + delay
            log.warn(
                "{path}/new/{name} not posted ({why}); tried again in {delay:.0f} s",
                path=state.box.path,
                name=shown(state.name),
                why=code or "the connection ended",
                delay=delay,
            )
            self._scan_soon(delay)
            return
        self._scan_soon()

    def _done(self, state: _ReadFile, stored: str) -> None:
        path = os.path.join(state.box.path, "new", state.name)
        try:
            os.unlink(path)
            fsync_dir(os.path.join(state.box.path, "new"))
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("posted {path} but cannot delete it: {why}", path=shown(path), why=str(exc))
        self.files.pop((state.box.path, state.name), None)
        self.posted += 1
        log.info(
            "{path} posted to {to} as message {message}; deleted",
            path=shown(path),
            to=state.recipient,
            message=stored,
        )

    def _quarantine(self, box: Mailbox, name: str, why: str) -> None:
        folder = box.path.rstrip("/") + QUARANTINE_SUFFIX
        source = os.path.join(box.path, "new", name)
        try:
            os.makedirs(folder, exist_ok=True)
            os.chmod(folder, QUARANTINE_MODE)
            target = os.path.join(folder, name)
            n = 1
            while os.path.lexists(target):  # never replace an earlier one
                n += 1
                target = os.path.join(folder, f"{name}.{n}")
            os.rename(source, target)
        except OSError as exc:
            log.error(
                "cannot quarantine {path} ({why}): {error}",
                path=shown(source),
                why=why,
                error=str(exc),
            )
            return
        self.quarantined += 1
        log.warn("{path} moved to {folder}: {why}", path=shown(source), folder=folder, why=why)
