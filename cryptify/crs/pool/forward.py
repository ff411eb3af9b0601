"""Messages across the pool: forwarding, hinted hand-off and the sweep.

:class:`Forwarder` is the :class:`~cryptify.crs.messages.wiring.Router` of
a pool member's :class:`~cryptify.crs.messages.wiring.Messaging`:

- **Forwarding.** A post for a URI whose slot another member (the
  *owner*) serves is given its pool-unique message ID and time here and
  sent to the owner (``msg-post``, :mod:`cryptify.crs.pool.forward_core`).
  The owner stores it durably in its own ``redis_low`` with the same rules
  as a post made there (the recipient must be known there, the inbox
  limit, the sender's retry scope) and answers ``msg-stored`` (or
  ``msg-refused`` with a UMSG code, passed on to the sender).  A member
  stores a forwarded message only for a slot it owns in its own map (else
  ``unavailable``: the maps differ for a moment), so two members never
  each take the other's copy of one message as a repeat and drop both.  Only then
  is the sender answered ``posted``; this member traces ``forward
  content`` (or ``forward ack``) with Account ``internal``, the owner
  ``posted ...`` as for a local post, and delivers it.
- **Hinted hand-off.** When the owner cannot be reached (no connection, no
  answer within :data:`FORWARD_TIMEOUT`, its store out of reach), or no
  member owns the slot at this moment (a hand-back step, a member that
  has not heard the pool's map yet), the message is stored here, in the
  recipient's inbox in this member's ``redis_low``, under the same ID and
  retry scope, and only then answered ``posted``.
- **The sweep.** Whatever sits in an inbox here whose slot another member
  owns -- held for an unreachable owner, or stored here while this member
  owned the slot before a hand-back or a partition's end -- is sent to the
  owner (``msg-post`` with ``hand``: stored whether or not the owner knows
  the recipient) and deleted here only once the owner has answered that
  it stored it.  The sweep runs when a peer's link comes up, after every
  map change, at start, and every :data:`SWEEP_INTERVAL` while something
  was left behind.  Inboxes of clients attached here are left alone until
  they move (the pool's client mover disconnects them), so a message out
  for delivery here is never handed over at the same time.

Exactly once: the owner stores a message in the sender's retry scope, and
the de-duplication key of that scope stays for the lifetime of a message
(:data:`~cryptify.crs.messages.store.EXPIRE_AFTER`) after it is
delivered.  So a copy sent again (an answer lost, this member killed
between the owner's answer and the delete here) or a sender's retry of
the post through another path is answered with the first ID and stored
nothing: that key is the tombstone of every forwarded or delivered
message.

Two copies of one ID (a forward that timed out although the owner had
stored it): each side remembers the other member that may hold a copy,
and the one whose recipient confirms it first tells the other
(``msg-gone``, sent again until acknowledged, :mod:`~cryptify.crs.pool.forward_gone`),
which drops its copy.  A copy handed on to a third member (the slot
moved) is followed (durably): the ``msg-gone`` for it is passed on to
the member that took it, which remembers where a handed copy came from
as it does for a forwarded one.  Known URIs are pool-wide: a URI
that attaches here first is sent to every live peer (``msg-known``), and
the whole set when a peer's link comes up and every :data:`KNOWN_RESYNC`,
so a member that takes over a dead member's slots takes posts for its
clients.  :attr:`Forwarder.counters` feed ``show services``
(``pool_messages``) and the metrics.

``delivered`` confirmations for a sender attached at another member are
sent to the member that owns the sender's slot (``msg-delivered``), which
tells the sender when attached, as a member does for its own clients (a
sender that is not attached is not told, here as on one instance).
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.crs.messages.store import (
    KNOWN_URIS,
    MessageRefused,
    MessageStore,
    Posted,
    Stored,
    new_message_id,
    stat_key,
    too_large,
)
from cryptify.crs.messages.wiring import Messaging, Relayed
from cryptify.crs.pool.forward_core import (
    DELIVERED,
    KNOWN,
    MAX_KNOWN_BATCH,
    PASSED_ON,
    POST,
    REFUSED,
    STORED,
    UNAVAILABLE,
    NoAnswer,
    Unreachable,
    decode_delivered,
    decode_known,
    decode_post,
    decode_refused,
    decode_stored,
    encode_delivered,
    encode_known,
    encode_post,
    encode_refused,
    encode_stored,
)
from cryptify.crs.pool.forward_gone import GoneMixin
from cryptify.crs.pool.forward_sweep import KNOWN_RESYNC, SweepMixin
from cryptify.crs.pool.gone import GoneOutbox
from cryptify.crs.pool.origins import OriginMap, OriginStore
from cryptify.crs.pool.wire import WireError
from cryptify.crs.slots import slot_of
from cryptify.protocols.umsg import base_uri

log = Logger(namespace="cryptify.crs.pool")

#: Seconds a forwarded post waits for the owner's answer before it is kept
#: here instead (hinted hand-off).
FORWARD_TIMEOUT = 3.0
#: Seconds between sweeps while messages are left for another member.
SWEEP_INTERVAL = 2.0
#: The counters of ``show services`` (row ``pool_messages``) and of the
#: metrics (``cryptify_crs_pool_messages_KEY``), with what each counts.
COUNTERS = (
    ("forwarded", "Posts stored at the member owning the recipient's slot"),
    ("held", "Posts kept here for another member (hinted hand-off)"),
    ("handed", "Kept messages handed to the member owning their slot"),
    ("taken", "Messages stored here for another member's post or hand-off"),
    ("duplicates", "Copies from another member dropped as already stored or delivered here"),
    ("gone", "Kept copies dropped because the owner's recipient confirmed the message"),
    ("timeouts", "Forwarded posts not answered in time (then kept here)"),
    ("learned", "Known URIs learned from other members"),
)


class PoolRoutes(Protocol):
    """What the forwarder needs of the pool link
    (:class:`~cryptify.crs.pool.wiring.PoolLink`)."""

    me: str

    @property
    def peers(self) -> Sequence[str]: ...

    def owner(self, slot: int) -> str | None: ...

    def link_up(self, peer: str) -> bool: ...

    def send(self, peer: str, frame_type: str, fields: dict[str, object]) -> bool: ...

    def handle(
        self, frame_type: str, handler: Callable[[str, dict[str, object]], None]
    ) -> None: ...

    def on_link(self, listener: Callable[[str, bool], None]) -> None: ...

    def watch(self, watcher: Callable[[], bool]) -> None: ...


@attrs.define
class _Pending:
    peer: str
    message_id: str
    answer: Deferred[Posted]
    timer: IDelayedCall


class Forwarder(GoneMixin, SweepMixin, service.Service):
    """Messages of recipients served by other pool members (module docstring).

    The inter-working link's forwarder
    (:class:`cryptify.crs.interwork.forward.IwForwarder`) is this one with
    other routes: it overrides the hooks ``_install``, ``_route``,
    ``_check_post``, ``_taken``, ``_sweeps`` and ``_outgoing``.
    """

    #: The Account column of the trace lines of forwarded messages.
    trace_account = "internal"

    #: Whether the URIs known here are shared with the peers (``msg-known``):
    #: between the members of one pool, not with another operator.
    shares_known = True

    def __init__(
        self,
        link: PoolRoutes,
        store: MessageStore,
        messaging: Messaging,
        reactor: IReactorTime,
        *,
        timeout: float = FORWARD_TIMEOUT,
        new_id: Callable[[], str] | None = None,
        origins: OriginStore | None = None,
    ) -> None:
        self.link = link
        self.store = store
        self.messaging = messaging
        self.reactor = reactor
        self.timeout = timeout
        self.new_id = new_id or (lambda: new_message_id(reactor.seconds()))
        self.counters = {key: 0 for key, _ in COUNTERS}
        #: Message ID -> the peer that may hold another copy of it (the
        #: peer that forwarded it here, or the peer a forward from here timed
        #: out at): told with ``msg-gone`` when its recipient confirms it here.
        self._origins = OriginMap(origins)
        #: The ``msg-gone`` sent and not acknowledged yet (forward_gone).
        self._gones = GoneOutbox(origins)
        self._numbers = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        #: Peers whose messages are being kept here (logged once each).
        self._keeping: set[str] = set()
        #: With ``workers N``: the URIs attached to the workers, whose inboxes
        #: the sweep leaves alone as it does its own clients' (None: not
        #: known now; the sweep waits).
        self.held_by_workers: Callable[[], Awaitable[frozenset[str] | None]] | None = None
        #: Something may sit here for another member: sweep at the next tick.
        self.dirty = True
        self._sweeping = False
        self._again = False
        self._loop = LoopingCall(self._tick)
        self._next_share = reactor.seconds() + KNOWN_RESYNC
        self._loop.clock = reactor
        link.handle(POST, self._on_post)
        link.handle(STORED, self._on_stored)
        link.handle(REFUSED, self._on_refused)
        link.handle(DELIVERED, self._on_delivered)
        self._install_gone()
        if self.shares_known:
            link.handle(KNOWN, self._on_known)
        link.on_link(self._on_link)
        link.watch(self._map_changed)
        self._install(messaging)

    def _install(self, messaging: Messaging) -> None:
        messaging.pool = self

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        service.Service.startService(self)
        self.dirty = True
        self._gones.load(self.reactor.seconds())
        self._loop.start(SWEEP_INTERVAL, now=False).addErrback(
            lambda f: log.failure("message sweep loop stopped", f)
        )

    def stopService(self) -> None:
        service.Service.stopService(self)
        if self._loop.running:
            self._loop.stop()
        for n in list(self._pending):
            self._fail(n, Unreachable("stopping"))
        self._stop_gone()

    def status(self) -> str:
        """The ``show services`` row ``pool_messages``: the counters, and
        the ``msg-gone`` waiting for their answer."""
        if not self.running:
            return "inactive"
        counters = ", ".join(f"{k} {v}" for k, v in self.counters.items())
        return f"active ({counters}; msg-gone pending {len(self._gones)})"

    # -- the Router of Messaging -------------------------------------------

    def owner(self, uri: str) -> str | None:
        return self.link.owner(slot_of(base_uri(uri)))

    def elsewhere(self, uri: str) -> bool:
        return self.owner(uri) != self.link.me

    def post(
        self, sender: str, scope: str, to: str, account: str, kind: str, data: bytes
    ) -> Deferred[Relayed]:
        """Store at the owner, or keep here; fires once one of them has it."""
        # (the owner would take a frame with more for a broken one)
        refused = too_large(data)
        if refused is not None:
            return refused
        now_ms = int(self.reactor.seconds() * 1000)
        message = Stored(self.new_id(), sender, to, account, kind, now_ms, data, scope)
        owner = self._route(to, account)
        if owner is None or owner == self.link.me or not self.link.link_up(owner):
            return self._hold(message)  # no owner now, or its heartbeats stopped
        peer: str = owner

        def stored(posted: Posted) -> Relayed:
            self.counters["forwarded"] += 1
            if peer in self._keeping:
                self._keeping.discard(peer)
                log.info("messages for {peer} are forwarded to it again", peer=peer)
            return Relayed(posted, peer)

        def not_taken(failure: Failure) -> Deferred[Relayed] | Failure:
            if failure.check(Unreachable):
                if peer not in self._keeping:  # once, not for every message
                    self._keeping.add(peer)
                    log.info(
                        "messages for {peer} are kept here until it takes them: {why}",
                        peer=peer,
                        why=failure.getErrorMessage(),
                    )
                if failure.check(NoAnswer):
                    # the peer may have stored it all the same (its answer
                    # lost or late): whichever copy is confirmed first, the
                    # other is dropped (msg-gone)
                    self._remember_origin(message.id, peer)
                return self._hold(message)
            return failure

        return self._ask(peer, message, hand=False).addCallbacks(stored, not_taken)

    def _route(self, to: str, account: str) -> str | None:
        """Where a post for ``to`` goes: the owner of its slot."""
        return self.owner(to)

    def tell_delivered(self, sender: str, message_id: str) -> None:
        owner = self.owner(sender)
        if owner is None or owner == self.link.me:
            return
        # best effort, as for a sender attached here: not attached, not told
        self.link.send(owner, DELIVERED, encode_delivered(sender, message_id))

    def _remember_origin(self, message_id: str, peer: str) -> None:
        self._origins.remember(message_id, peer)

    def learned(self, uri: str) -> None:
        """``uri`` attached here first: every live peer takes posts for it."""
        if not self.shares_known:
            return
        for peer in self.link.peers:
            if self.link.link_up(peer):
                self.link.send(peer, KNOWN, encode_known([uri]))

    def _share(self, peer: str) -> None:
        if not self.shares_known:
            return
        defer.ensureDeferred(self._share_known(peer)).addErrback(
            lambda f: log.warn(
                "known URIs not sent to {peer}: {why}", peer=peer, why=f.getErrorMessage()
            )
        )

    async def _share_known(self, peer: str) -> None:
        """Send ``peer`` every URI known here (its link just came up)."""
        uris = await self.store.known_uris()
        for i in range(0, len(uris), MAX_KNOWN_BATCH):
            if not self.link.send(peer, KNOWN, encode_known(uris[i : i + MAX_KNOWN_BATCH])):
                return  # sent again when the link comes up again

    def _hold(self, message: Stored) -> Deferred[Relayed]:
        """Keep ``message`` here for its owner, durably, in its ID and scope."""
        assert message.scope is not None
        held: Deferred[Posted] = defer.maybeDeferred(
            self.store.post,
            message.sender,
            message.scope,
            message.recipient,
            message.account,
            message.kind,
            message.data,
            message_id=message.id,
            time_ms=message.time_ms,
        )

        def kept(posted: Posted) -> Relayed:
            self.counters["held"] += 1
            self.dirty = True
            return Relayed(posted, None)

        return held.addCallback(kept)

    # -- requests to a peer ------------------------------------------------

    def _ask(self, peer: str, message: Stored, hand: bool) -> Deferred[Posted]:
        n = next(self._numbers)
        fields = encode_post(n, message, hand)
        try:
            # The owner's own check, here: a frame it refuses drops the link.
            decode_post(fields)
        except WireError as exc:
            return defer.fail(MessageRefused("malformed", f"not a message {peer} takes: {exc}"))
        if not self.link.send(peer, POST, fields):
            return defer.fail(Unreachable(f"no link to {peer}"))
        answer: Deferred[Posted] = Deferred()
        timer = self.reactor.callLater(self.timeout, self._timed_out, n, peer)
        self._pending[n] = _Pending(peer, message.id, answer, timer)
        return answer

    def _timed_out(self, n: int, peer: str) -> None:
        self.counters["timeouts"] += 1
        self._fail(n, NoAnswer(f"no answer from {peer} in {self.timeout}s"))

    def _take(self, n: int, peer: str) -> _Pending | None:
        pending = self._pending.get(n)
        if pending is None or pending.peer != peer:
            return None  # late (already kept here) or not ours
        del self._pending[n]
        if pending.timer.active():
            pending.timer.cancel()
        return pending

    def _fail(self, n: int, why: Exception) -> None:
        pending = self._pending.pop(n, None)
        if pending is None:
            return
        if pending.timer.active():
            pending.timer.cancel()
        pending.answer.errback(Failure(why))

    def _on_stored(self, peer: str, fields: dict[str, object]) -> None:
        reply = decode_stored(fields)
        pending = self._take(reply.n, peer)
        if pending is not None:
            pending.answer.callback(Posted(reply.id, duplicate=reply.dup))

    def _on_refused(self, peer: str, fields: dict[str, object]) -> None:
        reply = decode_refused(fields)
        pending = self._take(reply.n, peer)
        if pending is None:
            return
        if reply.code == UNAVAILABLE:
            pending.answer.errback(Failure(Unreachable(f"{peer}: {reply.reason}")))
        else:
            code = reply.code if reply.code in PASSED_ON else "internal"
            pending.answer.errback(Failure(MessageRefused(code, reply.reason)))

    def _on_link(self, peer: str, up: bool) -> None:
        if up:
            self.dirty = True
            self.kick()
            if self.running:
                self._share(peer)
                self._resend_gones(peer)
            return
        for n, pending in list(self._pending.items()):
            if pending.peer == peer:
                self._fail(n, NoAnswer(f"link to {peer} down"))

    # -- requests from a peer ----------------------------------------------

    def _on_post(self, peer: str, fields: dict[str, object]) -> None:
        request = decode_post(fields)
        message = request.message
        refusal = self._check_post(peer, message)
        if refusal is not None:
            self.link.send(peer, REFUSED, encode_refused(request.n, *refusal))
            return
        live = not request.hand
        stored: Deferred[Posted] = defer.maybeDeferred(
            self.store.post,
            message.sender,
            request.scope,
            message.recipient,
            message.account,
            message.kind,
            message.data,
            KNOWN_URIS if live else None,
            stat_key(message.sender) if live else None,
            message_id=message.id,
            time_ms=message.time_ms,
        )

        def answered(posted: Posted) -> None:
            self.link.send(peer, STORED, encode_stored(request.n, posted.id, posted.duplicate))
            if posted.duplicate or posted.stored is None:
                self.counters["duplicates"] += 1
                return
            self.counters["taken"] += 1
            if live or self.shares_known:
                # a copy forwarded here may have a twin at the peer (its
                # forward timed out); one handed here, a twin at a third
                # member that the peer follows (forward_sweep)
                self._remember_origin(message.id, peer)
            self._taken(posted.stored)

        def refused(failure: Failure) -> None:
            if failure.check(MessageRefused):
                refusal: Any = failure.value
                code, reason = refusal.code, str(refusal)
            else:
                log.warn(
                    "message {id} from {peer} not stored: {why}",
                    id=message.id,
                    peer=peer,
                    why=failure.getErrorMessage(),
                )
                code, reason = UNAVAILABLE, "message store out of reach"
            self.link.send(peer, REFUSED, encode_refused(request.n, code, reason))

        stored.addCallbacks(answered, refused).addErrback(
            lambda f: log.failure("forwarded message handling failed", f)
        )

    def _check_post(self, peer: str, message: Stored) -> tuple[str, str] | None:
        """Why a peer's ``msg-post`` is refused (code, reason), or None."""
        if self.elsewhere(message.recipient):
            # Not ours in this member's map (the maps differ for a moment,
            # or it is handing the same message the other way): the peer
            # keeps it and tries again once the maps agree.
            return UNAVAILABLE, "this member does not own the slot"
        return None

    def _taken(self, stored: Stored) -> None:
        """A peer's message is stored here now."""
        if self.elsewhere(stored.recipient):
            self.dirty = True  # the slot moved on meanwhile: hand it on
        self.messaging.arrived(stored)

    def _on_delivered(self, peer: str, fields: dict[str, object]) -> None:
        note = decode_delivered(fields)
        self.messaging.tell_sender(note.sender, note.message)

    def _on_known(self, peer: str, fields: dict[str, object]) -> None:
        uris = [base_uri(u) for u in decode_known(fields)]

        def learned(count: int) -> None:
            self.counters["learned"] += count

        defer.maybeDeferred(self.store.learn, uris).addCallbacks(
            learned,
            lambda f: log.warn(
                "known URIs from {peer} not recorded: {why}", peer=peer, why=f.getErrorMessage()
            ),
        )
