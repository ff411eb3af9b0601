"""Wiring store-and-forward messages into the CRS (UMSG ``post``/``fetch``/``delivered``).

- ``post {id, to, content | ack, system?, key?}``: the recipient must be
  known to this CRS (it has attached at some time, under any account),
  else ``error not-found``.  The message is stored durably
  (:mod:`cryptify.crs.messages.store`) and only then answered ``posted {id,
  message}``; an attached recipient gets it at once as ``message``.  A
  repeat of a post -- same message ``key``, or, without a key, the same
  request id on the same connection -- answers the first ID; the same key
  with another recipient or content is refused ``key-reused``.  ``system:
  true`` with ``content`` marks a system message (group invites and
  updates): stored with kind ``system``, delivered with ``system: true``,
  traced as ``posted system`` and counted apart from content.  ``to``
  keeps its extension (``tel:+8888;101``) in the delivered ``message``.
- ``delivered {message}`` from the recipient removes it; the sender of a
  content message is told ``delivered {message}`` when attached.
- Delivery to one connection is flow controlled (:class:`Outbox`): at
  most :data:`DELIVERY_WINDOW` messages are out and unconfirmed; the next
  ones go as ``delivered`` confirmations come back, until every waiting
  message has been sent.  Waiting messages start to go right after each
  attach; ``fetch {id}`` starts them again and is answered ``ok {id}``
  once every message waiting has been sent.
- A store out of reach is answered ``error unavailable`` with a
  ``retry-after`` hint, logged as one warning line without a traceback.

- In a pool, a post for a recipient whose slot another member serves
  goes to the :class:`Router` (:class:`cryptify.crs.pool.forward.Forwarder`),
  which stores it at that member (or keeps it here for it) before the
  ``posted``; a ``delivered`` for a sender attached elsewhere goes to it
  there, and messages the pool brings here arrive through
  :meth:`Messaging.arrived`.
- A post with ``to-account`` naming an account that an inter-working
  peer hosts (and this CRS does not) goes to :class:`External`
  (:class:`cryptify.crs.interwork.forward.IwForwarder`) the same way:
  stored at the peer, or kept here for it, before the ``posted``.

``trace message`` lines (Header, Time, From, To, State, Account,
Message-ID) use the manual's states: not-found, posted content, posted
ack, delivered, and forward content / forward ack (Account ``internal``)
for a post stored at another pool member, ``external`` at another
operator.  Which URIs are known and the per-user counters of
``show message`` are kept by the message store, next to the messages;
this module holds the rules only.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.crs.attach.core import AttachCore, AttachSession
from cryptify.crs.attach.registry import Attachment, AttachRegistry
from cryptify.crs.messages.store import MessageRefused, MessageStore, Posted, Stored, retry_scope
from cryptify.crs.operator.stats import Statistics
from cryptify.crs.redis.batch import transient
from cryptify.crs.trace import TraceHub
from cryptify.protocols import umsg_replies as replies
from cryptify.protocols.umsg import base_uri, message

log = Logger(namespace="cryptify.crs.message")

#: Messages sent to one connection and not yet confirmed, at most.
DELIVERY_WINDOW = 64
#: Seconds before delivery that failed for want of Redis is tried again.
DELIVERY_RETRY = 2.0
#: With ``workers N``: a message that comes in a notice is sent from it
#: only when it was stored this long after its recipient attached (else a
#: read of the inbox at the attach, or on an earlier connection, may have
#: sent it already), in ms.
NOTICE_MARGIN_MS = 1000
#: ``retry-after`` of ``error unavailable``, ms.
UNAVAILABLE_RETRY_MS = 2000
#: Longest ``reason`` in an answer (the codec's limit).
MAX_REASON = 200


@attrs.frozen
class Relayed:
    """A post handled by the pool (:class:`Router`): the answer, and the
    member that stored it (None: kept here until its owner takes it)."""

    posted: Posted
    peer: str | None


class Router(Protocol):
    """Where a pool sends posts for recipients served by another member
    (:class:`cryptify.crs.pool.forward.Forwarder`)."""

    #: The Account column of a forwarded post's trace line.
    trace_account: str

    def elsewhere(self, uri: str) -> bool:
        """Whether ``uri``'s slot is not served here (another member owns
        it, or no member does at this moment)."""
        ...

    def post(
        self, sender: str, scope: str, to: str, account: str, kind: str, data: bytes
    ) -> Deferred[Relayed]:
        """Store a post where it will be delivered from (or keep it here
        for the owner), durably, before the Deferred fires."""
        ...

    def tell_delivered(self, sender: str, message_id: str) -> None:
        """Tell the member serving ``sender`` that its message was delivered."""
        ...

    def settled(self, recipient: str, message_id: str) -> None:
        """The recipient confirmed ``message_id`` here (a copy kept
        elsewhere is dropped there)."""
        ...

    def learned(self, uri: str) -> None:
        """``uri`` attached here for the first time: the pool takes posts for it."""
        ...


class External(Protocol):
    """Where posts for accounts hosted by another operator go
    (:class:`cryptify.crs.interwork.forward.IwForwarder`)."""

    trace_account: str

    def remote(self, account: str) -> bool:
        """Whether an inter-working peer hosts ``account`` (and this CRS does not)."""
        ...

    def post(
        self, sender: str, scope: str, to: str, account: str, kind: str, data: bytes
    ) -> Deferred[Relayed]:
        """Store a post for ``to`` in ``account`` at the peer (or keep it
        here for it), durably, before the Deferred fires."""
        ...

    def unknown(self, account: str) -> bool:
        """Whether ``account`` may be hosted by a peer that has not said
        which accounts it hosts yet (a post for it waits: ``unavailable``)."""
        ...

    def knows(self, sender: str) -> bool:
        """Whether ``sender``'s messages came over the inter-working link."""
        ...

    def tell_delivered(self, sender: str, message_id: str) -> None:
        """Tell the peer serving ``sender`` that its message was delivered."""
        ...


class Siblings(Protocol):
    """The instance's other worker processes (``workers N``,
    :class:`cryptify.crs.workers.wake.Siblings`)."""

    def wake(self, uri: str, stored: Stored) -> bool:
        """``stored`` was stored for ``uri``, not attached in this process;
        whether ``uri`` is known to be attached to another worker."""
        ...

    def tell_delivered(self, sender: str, message_id: str) -> None:
        """``sender`` (not attached in this process) had ``message_id`` delivered."""
        ...


@attrs.define(eq=False)
class Outbox:
    """Delivery to one attached connection.

    ``inflight``: messages sent and not yet confirmed (oldest first);
    ``backlog``: messages may be waiting that were not sent yet (true from
    the attach until a pass over the inbox found nothing more to send);
    ``fetches``: request ids of ``fetch`` to answer ``ok`` once the backlog
    is sent; ``drained_ms``: with ``workers N``, the store time of the
    newest message a pass over the inbox sent (a notice for a message no
    newer may come late, after it was sent and confirmed).
    """

    inflight: dict[str, None] = attrs.field(factory=dict)
    backlog: bool = True
    pumping: bool = False
    again: bool = False
    fetches: list[int | None] = attrs.field(factory=list)
    retry: IDelayedCall | None = None
    drained_ms: int = -1


class Messaging:
    """Post, fetch and delivered for attached clients."""

    def __init__(
        self,
        store: MessageStore,
        registry: AttachRegistry,
        trace: TraceHub,
        stats: Statistics | None = None,
        window: int = DELIVERY_WINDOW,
        scheduler: IReactorTime | None = None,
    ) -> None:
        self.store = store
        self.stats = stats
        self.registry = registry
        self.trace = trace
        self.window = window
        self.scheduler = scheduler
        self.counters = {"posted": 0, "delivered": 0, "refused": 0}
        self.outboxes: weakref.WeakKeyDictionary[Attachment, Outbox] = weakref.WeakKeyDictionary()
        #: ``on_absent(account, uri)``: a content or system message was stored
        #: for a recipient that is not attached (push wake-ups, docs/push.md)
        self.on_absent: Callable[[str, str], None] | None = None
        #: In a pool: where posts for recipients served elsewhere go.
        self.pool: Router | None = None
        #: With inter-working peers: where posts for their accounts go.
        self.iw: External | None = None
        #: With ``workers N``: the instance's other processes, told of
        #: messages for clients not attached here.
        self.siblings: Siblings | None = None
        #: With ``workers N``, in the parent: its workers serve the clients
        #: (a ``delivered`` from another pool member is passed to them).
        self.workers_serve = False

    def _refuse(self, failure: Failure, session: AttachSession, msg_id: int | None) -> None:
        retry_after = None
        if failure.check(MessageRefused):
            refused: Any = failure.value
            code, reason = refused.code, str(refused)
            self.counters["refused"] += 1
        elif transient(failure):
            code, reason = "unavailable", f"message store out of reach: {failure.getErrorMessage()}"
            log.warn("message request not done: {why}", why=failure.getErrorMessage())
        else:
            log.failure("message handling failed", failure)
            code, reason = "internal", "message not stored"
        if code == "unavailable":
            retry_after = UNAVAILABLE_RETRY_MS
        session.send(
            message(
                "error", id=msg_id, code=code, reason=reason[:MAX_REASON], retry_after=retry_after
            )
        )

    def _not_counted(self, failure: Failure, what: str) -> None:
        """Statistics are best effort: a failed count is logged, never answered."""
        log.warn(
            "statistics: a {what} was not counted: {why}", what=what, why=failure.getErrorMessage()
        )

    def _current(self, session: Any) -> Attachment | None:
        """The attachment whose connection is ``session``, while it is attached."""
        attachment = self.registry.get(session.uri or "")
        if attachment is None or attachment.conn is not session:
            return None
        return attachment

    def _outbox(self, attachment: Attachment) -> Outbox:
        box = self.outboxes.get(attachment)
        if box is None:
            box = self.outboxes[attachment] = Outbox()
        return box

    # -- requests ----------------------------------------------------------------
    # post and delivered run once per message: plain callbacks, no coroutine.

    def post(self, session: AttachSession, msg: Any) -> None:
        sender, account = session.uri or "", session.account or ""
        to = msg["to"]
        recipient = base_uri(to)
        content, ack = msg.get("content"), msg.get("ack")
        try:
            if (content is None) == (ack is None):
                raise MessageRefused("malformed", "a post carries content or ack, not both")
            system = bool(msg.get("system"))
            if system and content is None:
                raise MessageRefused("malformed", "a system message carries content")
            kind = ("system" if system else "content") if content is not None else "ack"
            data = content if content is not None else ack.encode("ascii")
            scope = retry_scope(msg.get("key"), session.conn_id, msg.id)
            stored: Deferred[Any]
            to_account = msg.get("to-account")
            router: Router | External | None = None
            if to_account is not None and self.iw is not None and self.iw.remote(to_account):
                router = self.iw
                stored = self.iw.post(sender, scope, to, to_account, kind, data)
            elif to_account is not None and self.iw is not None and self.iw.unknown(to_account):
                raise MessageRefused(
                    "unavailable", f"the operator hosting {to_account} is not known yet"
                )
            elif self.pool is not None and self.pool.elsewhere(recipient):
                router = self.pool
                stored = self.pool.post(sender, scope, to, account, kind, data)
            else:
                stored = defer.maybeDeferred(
                    self.store.submit, sender, scope, to, account, kind, data
                )
        except Exception:
            self._refuse(Failure(), session, msg.id)
            return

        def posted(result: Posted | Relayed) -> Any:
            relayed = result if isinstance(result, Relayed) else Relayed(result, None)
            done = relayed.posted
            session.send(replies.posted(msg.id, done.id))
            if done.duplicate:
                return None
            self.counters["posted"] += 1
            if relayed.peer is not None and router is not None:
                self.trace.emit(
                    "message", sender, to, forward_state(kind), router.trace_account, done.id
                )
            elif done.stored is not None:
                self.arrived(done.stored)
            if self.stats is not None and self.stats.may_count(account):
                counted = defer.ensureDeferred(self.stats.message_posted(account, sender, kind))
                counted.addErrback(self._not_counted, "post")
            return None

        def refused(failure: Failure) -> None:
            if (
                failure.check(MessageRefused)
                and failure.value.code == "not-found"  # type: ignore[union-attr]
                and self.trace.active("message")
            ):
                self.trace.emit("message", sender, to, "not-found", account, "-")
            self._refuse(failure, session, msg.id)

        # Only the store's own failure is a refusal: once `posted` went out,
        # nothing after it may answer the same request again.
        stored.addCallbacks(posted, refused)

    def arrived(self, stored: Stored) -> None:
        """A new message is stored here (posted here, or taken from another
        pool member): offer it to its recipient when attached, else ask
        for a push wake-up; trace it."""
        recipient = base_uri(stored.recipient)
        target = self.registry.get(recipient)
        if target is not None:
            self._offer(target, stored)
        else:
            elsewhere = self.siblings is not None and self.siblings.wake(recipient, stored)
            if stored.kind != "ack" and self.on_absent is not None and not elsewhere:
                self.on_absent(stored.account, recipient)
        if self.trace.active("message"):
            self.trace.emit(
                "message",
                stored.sender,
                stored.recipient,
                f"posted {stored.kind}",
                target.account if target else stored.account,
                stored.id,
            )

    def tell_sender(self, sender: str, message_id: str) -> None:
        """``message_id`` from ``sender`` was delivered (here or on another
        pool member): tell the sender when it is attached here."""
        origin = self.registry.get(sender)
        if origin is not None:
            origin.conn.send(replies.delivered(message_id))
        elif self.workers_serve and self.siblings is not None:
            # a parent's clients are its workers'
            self.siblings.tell_delivered(sender, message_id)

    def wake(self, uri: str, stored: Stored | None = None) -> None:
        """Messages were stored for ``uri`` by another process of this
        instance (``stored``, when it came along): send them when ``uri``
        is attached here."""
        attachment = self.registry.get(uri)
        if attachment is None:
            return
        box = self._outbox(attachment)
        if (
            stored is not None
            and stored.time_ms > box.drained_ms
            and attachment.since * 1000 < stored.time_ms - NOTICE_MARGIN_MS
        ):
            self._offer(attachment, stored)
            return
        # A notice late for a pass over the inbox (this connection's, or an
        # earlier one's): the message may have gone and been confirmed
        # since; the store knows.
        box.backlog = True
        self._pump(attachment)

    def fetch(self, session: AttachSession, msg: Any) -> None:
        uri = session.uri or ""
        attachment = self._current(session)
        if attachment is None:
            session.send(message("ok", id=msg.id))
            return
        read = defer.ensureDeferred(self.store.mark_read(uri))
        read.addErrback(
            lambda f: log.debug("read time not recorded: {why}", why=f.getErrorMessage())
        )
        box = self._outbox(attachment)
        box.fetches.append(msg.id)
        box.backlog = True
        self._pump(attachment)

    def delivered(self, session: AttachSession, msg: Any) -> None:
        uri, account, message_id = session.uri or "", session.account or "", msg["message"]

        def settled(result: Any) -> Any:
            # the next message may go now (also when this one was not removed:
            # it is then sent again and confirmed again)
            attachment = self._current(session)
            box = self.outboxes.get(attachment) if attachment is not None else None
            if attachment is not None and box is not None:
                box.inflight.pop(message_id, None)
                if box.backlog:
                    self._pump(attachment)
            return result

        def found(found: tuple[str, str] | None) -> Any:
            if found is None:
                return None
            sender, kind = found
            self.counters["delivered"] += 1
            self.trace.emit("message", sender, uri, "delivered", account, message_id)
            if self.pool is not None:
                self.pool.settled(uri, message_id)
            if kind != "ack":
                if self.registry.get(sender) is not None:
                    self.tell_sender(sender, message_id)
                elif self.iw is not None and self.iw.knows(sender):
                    self.iw.tell_delivered(sender, message_id)
                elif self.pool is not None:
                    self.pool.tell_delivered(sender, message_id)
                elif self.siblings is not None:
                    self.siblings.tell_delivered(sender, message_id)
                else:
                    self.tell_sender(sender, message_id)
            if self.stats is not None and self.stats.may_count(account):
                counted = defer.ensureDeferred(self.stats.message_delivered(account, uri, kind))
                counted.addErrback(self._not_counted, "delivery")
            return None

        defer.maybeDeferred(self.store.confirm, uri, message_id).addBoth(settled).addCallback(
            found
        ).addErrback(self._refuse, session, None)

    # -- delivery ----------------------------------------------------------------

    def _send(self, attachment: Attachment, box: Outbox, stored: Stored) -> None:
        if stored.kind == "ack":
            reply = replies.message(
                stored.id,
                stored.sender,
                stored.recipient,
                stored.time_ms,
                ack=stored.data.decode("ascii", "replace"),
            )
        else:
            reply = replies.message(
                stored.id,
                stored.sender,
                stored.recipient,
                stored.time_ms,
                content=stored.data,
                system=stored.kind == "system",
            )
        box.inflight[stored.id] = None
        attachment.conn.send(reply)

    def _offer(self, attachment: Attachment, stored: Stored) -> None:
        """A new message for an attached recipient: send it now if nothing older
        waits and the window has room, else let the outbox take it in turn."""
        box = self._outbox(attachment)
        if not box.backlog and not box.pumping and len(box.inflight) < self.window:
            self._send(attachment, box, stored)
            return
        box.backlog = True
        self._pump(attachment)

    def _pump(self, attachment: Attachment) -> None:
        """Send waiting messages while the window has room (one pass at a time)."""
        box = self._outbox(attachment)
        if box.pumping:
            box.again = True
            return
        box.pumping = True
        defer.ensureDeferred(self._drain(attachment, box)).addErrback(
            self._drain_failed, attachment, box
        )

    async def _drain(self, attachment: Attachment, box: Outbox) -> None:
        try:
            while self.registry.get(attachment.uri) is attachment:
                box.again = False
                room = self.window - len(box.inflight)
                if room <= 0:
                    return
                want = len(box.inflight) + room
                ids = await self.store.waiting_ids(attachment.uri, want)
                fresh = [i for i in ids if i not in box.inflight][:room]
                gets = [defer.ensureDeferred(self.store.get(i)) for i in fresh]
                got: list[tuple[bool, Any]] = await defer.DeferredList(gets, consumeErrors=True)
                for ok, result in got:
                    if not ok:
                        result.raiseException()
                    if self.registry.get(attachment.uri) is not attachment:
                        return
                    if result is not None and result.id not in box.inflight:
                        self._send(attachment, box, result)
                        if self.siblings is not None:
                            box.drained_ms = max(box.drained_ms, result.time_ms)
                if len(ids) < want:
                    # the whole inbox was read: what is out and no longer
                    # waiting was confirmed (or expired)
                    present = set(ids)
                    for gone in [i for i in box.inflight if i not in present]:
                        del box.inflight[gone]
                    if not box.again:
                        box.backlog = False
                        fetches, box.fetches = box.fetches, []
                        for fetch_id in fetches:
                            attachment.conn.send(message("ok", id=fetch_id))
                        return
        finally:
            box.pumping = False

    def _drain_failed(self, failure: Failure, attachment: Attachment, box: Outbox) -> None:
        passing = transient(failure)
        if passing:
            log.warn(
                "waiting messages for {uri} not sent now: {why}",
                uri=attachment.uri,
                why=failure.getErrorMessage(),
            )
        else:
            log.failure("cannot deliver waiting messages", failure)
        code = "unavailable" if passing else "internal"
        fetches, box.fetches = box.fetches, []
        for fetch_id in fetches:
            attachment.conn.send(
                message(
                    "error",
                    id=fetch_id,
                    code=code,
                    reason="waiting messages not read",
                    retry_after=UNAVAILABLE_RETRY_MS if passing else None,
                )
            )
        if self.scheduler is not None and box.retry is None:

            def again() -> None:
                box.retry = None
                if self.registry.get(attachment.uri) is attachment and box.backlog:
                    self._pump(attachment)

            box.retry = self.scheduler.callLater(DELIVERY_RETRY, again)

    def attached(self, attachment: Attachment) -> None:
        """A client attached: remember its URI, send what waits for it."""
        self._remember(attachment)
        self._pump(attachment)

    def _remember(self, attachment: Attachment) -> None:
        """Record the URI as known (posts to it are taken); while Redis is
        briefly out of reach, try again as long as the client stays attached,
        so posts to it are not refused ``not-found`` until its next attach."""

        def not_remembered(failure: Failure) -> None:
            if not transient(failure):
                log.failure("cannot record {uri} as known", failure, uri=attachment.uri)
                return
            log.warn(
                "{uri} not recorded as known: {why}",
                uri=attachment.uri,
                why=failure.getErrorMessage(),
            )
            if self.scheduler is not None:

                def again() -> None:
                    if self.registry.get(attachment.uri) is attachment:
                        self._remember(attachment)

                self.scheduler.callLater(DELIVERY_RETRY, again)

        def remembered(new: bool) -> None:
            if new and self.pool is not None:
                self.pool.learned(attachment.uri)

        defer.ensureDeferred(self.store.remember(attachment.uri)).addCallbacks(
            remembered, not_remembered
        )


def forward_state(kind: str) -> str:
    """The trace state of a message forwarded to another pool member."""
    return "forward ack" if kind == "ack" else "forward content"


def install(core: AttachCore, messaging: Messaging) -> None:
    """Let attached clients post, fetch and confirm messages."""
    core.handlers.update(post=messaging.post, fetch=messaging.fetch, delivered=messaging.delivered)
    core.registry.on_attach.append(messaging.attached)
