"""An instance with ``workers N`` in a pool of 2+, or with inter-working
peers (docs/workers.md, Pools and Inter-working).

The parent keeps everything of the pool: the pool link (8090) and its
membership, the slot map, the sync link (8091) and db-backup, the message
forwarder with its hinted hand-off and sweep, the pool-wide changes.  The
workers, which hold the clients, need two things of it, over one UNIX
socket of the parent beside the management socket (``crs.sock.w0``, mode
0600; :class:`~cryptify.crs.workers.parent.ParentPool` there,
:class:`WorkerPool` in each worker):

- **the slot view** (:func:`slot_view`): who owns each slot, which
  members are late, their addresses.  A worker asks for it when it
  connects and the parent sends it again whenever it changes (a map
  change at once, a member late or on time again within
  :data:`~cryptify.crs.workers.parent.VIEW_CHECK`).  With it a worker answers an attach ``moved`` or
  ``unavailable`` as one process does (:class:`WorkerPool` is its
  :class:`~cryptify.crs.attach.core.SlotOwners`; before the first view it
  owns nothing and every attach is ``unavailable``, as a member that has
  not heard the pool's map), and disconnects its clients of slots that
  moved away (not those in a call, until it ends), as the pool's client
  mover does.
- **the forwarder** (:class:`WorkerPool` is a worker's
  :class:`~cryptify.crs.messages.wiring.Router`): a post for a URI another
  member owns goes to the parent (:class:`~cryptify.protocols.crs_workers.PoolPost`),
  whose forwarder stores it at the owner or keeps it here, durably, before
  the worker answers ``posted``; ``delivered`` for a sender of another
  member, the confirmation that may drop a twin (``msg-gone``) and the
  URIs seen for the first time (``msg-known``) go the same way.  Messages
  from the other members are stored by the parent's forwarder and reach
  the worker where the recipient is attached by a notice, as a message
  posted on another worker does.

Calls across members go through the parent too: it passes their frames
between the pool link and the worker of the call's party
(:mod:`cryptify.crs.workers.pool_calls`).  The inter-working peers' routes,
posts and calls go over the same socket (:mod:`cryptify.crs.workers.iw`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from cryptify.crs.attach.registry import AttachRegistry
from cryptify.crs.messages.store import MessageRefused, Posted, Stored, too_large
from cryptify.crs.messages.wiring import Relayed
from cryptify.crs.pool.calls_frames import INVITE_FRAME, CallInvite, decode_call
from cryptify.crs.pool.wire import WireError
from cryptify.crs.pool.wiring import MOVED_AWAY
from cryptify.crs.slots import slot_of
from cryptify.crs.workers.iw import WorkerIw
from cryptify.crs.workers.pool_calls import pack, unpack
from cryptify.crs.workers.slot_view import (
    NO_VIEW,
    SlotView,
    ViewError,
    decode_view,
)
from cryptify.protocols.amp_calls import AmpAnswer, call_remote, one_way
from cryptify.protocols.crs_workers import (
    IwView,
    IwViewChanged,
    PoolDelivered,
    PoolFrame,
    PoolFrameIn,
    PoolInvite,
    PoolLearned,
    PoolPeer,
    PoolPost,
    PoolSettled,
    PoolView,
    PoolViewChanged,
)
from cryptify.protocols.umsg import base_uri
from cryptify.reactor import IReactor
from cryptify.service import attach

# (the parent's side is :mod:`cryptify.crs.workers.parent`)

log = Logger(namespace="cryptify.crs.workers")

#: Seconds between a worker's moves of the clients of slots gone elsewhere
#: while some are kept by a call.
MOVE_AGAIN = 1.0


class CallSink(Protocol):
    """Where a worker's call frames from other members go
    (:class:`cryptify.crs.workers.calls.WorkerLink`)."""

    def deliver(self, peer: str, frame_type: str, fields: dict[str, object]) -> None: ...

    def peer_changed(self, peer: str, up: bool) -> None: ...


# -- a worker ----------------------------------------------------------------------


class _WorkerLocator(amp.CommandLocator):
    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    @PoolFrameIn.responder
    @one_way("a call frame from the parent not handled")
    def frame(
        self, peer: str, frame_type: str, data: bytes, via: str | None = None
    ) -> dict[str, object]:
        sink = self.pool.sink(via)
        if sink is not None:
            try:
                sink.deliver(peer, frame_type, unpack(data))
            except WireError as exc:
                log.warn("a call frame from {peer} refused: {why}", peer=peer, why=str(exc))
        return {}

    @PoolInvite.responder
    def invite(self, peer: str, data: bytes, via: str | None = None) -> dict[str, object]:
        sink = self.pool.sink(via)
        try:
            fields = unpack(data)
            invite = decode_call(INVITE_FRAME, fields)
        except WireError as exc:
            log.warn("a call invite from {peer} refused: {why}", peer=peer, why=str(exc))
            return {"here": False}
        if not isinstance(invite, CallInvite) or sink is None:
            return {"here": False}
        if self.pool.registry.get(invite.callee) is None:
            return {"here": False}
        try:
            sink.deliver(peer, INVITE_FRAME, fields)
        except Exception:
            # (an error left to AMP closes the connection to the parent)
            log.failure("a call invite from {peer} not offered", peer=peer)
            return {"here": False}
        return {"here": True}

    @PoolPeer.responder
    @one_way("a link change from the parent not followed")
    def peer(self, peer: str, up: bool, via: str | None = None) -> dict[str, object]:
        sink = self.pool.sink(via)
        if sink is not None:
            sink.peer_changed(peer, up)
        return {}

    @IwViewChanged.responder
    @one_way("the parent's inter-working routes not followed")
    def iw_changed(self, view: object) -> dict[str, object]:
        if self.pool.iw is not None:
            self.pool.iw.adopt(view)
        return {}

    @PoolViewChanged.responder
    @one_way("the parent's slot view not followed")
    def changed(self, view: object) -> dict[str, object]:
        self.pool.adopt(view)
        return {}


class _WorkerProtocol(amp.AMP):
    def __init__(self, pool: WorkerPool) -> None:
        amp.AMP.__init__(self, locator=_WorkerLocator(pool))
        self.pool = pool

    def connectionMade(self) -> None:
        amp.AMP.connectionMade(self)
        self.pool.connected(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.pool.proto is self:
            self.pool.proto = None
        amp.AMP.connectionLost(self, reason)


class WorkerPool(service.MultiService):
    """A worker's side: the slot owners of its attaches, the router of its
    posts, the mover of its clients (module docstring).

    ``tell_worker(sender, message_id)``: the ``delivered`` notice for a
    sender this instance serves (another worker's client);
    :attr:`busy` says whether a client is in a call (it is moved after).
    """

    trace_account = "internal"

    def __init__(
        self,
        reactor: IReactor,
        path: str,
        registry: AttachRegistry,
        tell_worker: Callable[[str, str], None],
    ) -> None:
        service.MultiService.__init__(self)
        self.reactor = reactor
        self.registry = registry
        self.tell_worker = tell_worker
        self.busy: Callable[[str], bool] = lambda uri: False
        #: Where the call frames from other members go (the worker's link).
        self.calls: CallSink | None = None
        #: With inter-working peers: the routes followed, and where the
        #: call frames from the peers go.
        self.iw: WorkerIw | None = None
        self.iw_calls: CallSink | None = None
        #: In a pool (else no slot view is asked for).
        self.pooled = True
        self.view = NO_VIEW
        #: Called with every view whose map differs from the one before.
        self.on_view: list[Callable[[SlotView], object]] = []
        self.proto: _WorkerProtocol | None = None
        self.refused = 0
        self._mover = LoopingCall(self.move)
        self._mover.clock = reactor
        client = ClientService(
            UNIXClientEndpoint(reactor, path, timeout=5),
            Factory.forProtocol(lambda: _WorkerProtocol(self)),
            retryPolicy=backoffPolicy(initialDelay=0.1, maxDelay=2.0),
            clock=reactor,
        )
        attach(self, client)

    def stopService(self) -> defer.Deferred[None]:
        if self._mover.running:
            self._mover.stop()
        d: defer.Deferred[None] = defer.maybeDeferred(service.MultiService.stopService, self)
        return d

    # -- the parent ------------------------------------------------------------------

    def sink(self, via: str | None) -> CallSink | None:
        return self.iw_calls if via == "iw" else self.calls

    def connected(self, proto: _WorkerProtocol) -> None:
        self.proto = proto
        if self.iw is not None:
            iw = self.iw
            asked = call_remote(proto, IwView)
            asked.addCallbacks(
                lambda answer: iw.adopt(answer.get("view")),
                lambda f: log.warn("no routes from the parent: {why}", why=f.getErrorMessage()),
            )
        if not self.pooled:
            return
        d = call_remote(proto, PoolView)

        def got(answer: AmpAnswer) -> None:
            try:
                self.adopt(answer.get("view"))
            except Exception:
                log.failure("the parent's slot view not followed")

        d.addCallbacks(
            got, lambda f: log.warn("no slot view from the parent: {why}", why=f.getErrorMessage())
        )

    def adopt(self, value: object) -> None:
        """A slot view from the parent (a bad one is counted and ignored)."""
        try:
            view = decode_view(value)
        except ViewError as exc:
            self.refused += 1
            log.warn("not a slot view from the parent: {why}", why=str(exc))
            return
        changed = view.key != self.view.key or view.owners != self.view.owners
        self.view = view
        if changed:
            for listener in self.on_view:
                listener(view)
            self.move()

    # -- SlotOwners (attach) -------------------------------------------------------------

    def owner(self, slot: int) -> str | None:
        owner = self.view.owners[slot]
        if owner is not None and owner != self.view.me and owner in self.view.late:
            return None  # as the pool's ClientSlots: not moved to a member maybe dead
        return owner

    def mine(self, slot: int) -> bool:
        return self.view.owners[slot] is not None and self.view.owners[slot] == self.view.me

    def standby(self, slot: int) -> str | None:
        """Who would take ``slot`` if this instance died (as the parent's
        pool link says; None when it does not)."""
        standby = self.view.standby
        return None if standby is None else standby[slot]

    def address(self, host: str) -> str:
        return self.view.addresses.get(host, host)

    # -- the mover ------------------------------------------------------------------------

    def move(self) -> None:
        """Disconnect the clients of slots this instance no longer serves
        (not those in a call: again every :data:`MOVE_AGAIN` until they
        are gone)."""
        away = [a for a in self.registry.matching() if not self.mine(slot_of(a.uri))]
        idle = [a for a in away if not self.busy(a.uri)]
        if idle:
            count = self.registry.disconnect(idle, MOVED_AWAY)
            log.info(
                "pool: {count} clients of slots now served elsewhere told to move", count=count
            )
        if len(idle) < len(away):
            if not self._mover.running and self.running:
                self._mover.start(MOVE_AGAIN, now=False)
        elif self._mover.running:
            self._mover.stop()

    # -- Router (messages) ----------------------------------------------------------------

    def elsewhere(self, uri: str) -> bool:
        return not self.mine(slot_of(base_uri(uri)))

    def post(
        self,
        sender: str,
        scope: str,
        to: str,
        account: str,
        kind: str,
        data: bytes,
        via: str = "pool",
    ) -> defer.Deferred[Relayed]:
        refused = too_large(data)  # (AMP carries at most 64 KiB a value)
        if refused is not None:
            return refused
        proto = self.proto
        if proto is None:
            return defer.fail(
                MessageRefused("unavailable", "the pool's forwarder is not reachable")
            )

        def answered(answer: AmpAnswer) -> Relayed:
            code = answer.get("code")
            if code is not None:
                raise MessageRefused(str(code), str(answer.get("reason") or code))
            message_id = str(answer["id"])
            peer = answer.get("peer")
            stored = None
            time_ms = answer.get("time_ms")
            if peer is None and isinstance(time_ms, int) and not answer.get("duplicate"):
                stored = Stored(message_id, sender, to, account, kind, time_ms, data, scope)
            posted = Posted(message_id, bool(answer.get("duplicate")), stored)
            return Relayed(posted, None if peer is None else str(peer))

        # (a failure left on the call's own Deferred makes AMP drop the
        # connection: the answer goes on in a Deferred of its own)
        result: defer.Deferred[Relayed] = defer.Deferred()

        def done(answer: AmpAnswer) -> None:
            try:
                relayed = answered(answer)
            except Exception:
                result.errback()
            else:
                result.callback(relayed)

        def lost(failure: Failure) -> None:
            why = failure.getErrorMessage()
            result.errback(MessageRefused("unavailable", f"the pool's forwarder: {why}"))

        d = call_remote(
            proto,
            PoolPost,
            sender=sender,
            scope=scope,
            to=to,
            account=account,
            kind=kind,
            data=data,
            via=via,
        )
        d.addCallbacks(done, lost)
        return result

    def tell_delivered(self, sender: str, message_id: str) -> None:
        if self.mine(slot_of(base_uri(sender))):
            self.tell_worker(sender, message_id)
        else:
            self._note(PoolDelivered, sender=sender, message=message_id)

    def settled(self, recipient: str, message_id: str) -> None:
        self._note(PoolSettled, recipient=recipient, message=message_id)

    def learned(self, uri: str) -> None:
        self._note(PoolLearned, uri=uri)

    def send_frame(
        self, peer: str, frame_type: str, fields: dict[str, object], via: str = "pool"
    ) -> bool:
        """A call frame for member ``peer`` (``via`` ``iw``: for an
        inter-working peer), through the parent; False when the parent is
        not reachable."""
        if self.proto is None:
            return False
        data = pack(fields)
        call_remote(self.proto, PoolFrame, peer=peer, frame_type=frame_type, data=data, via=via)
        return True

    def send_iw_frame(self, peer: str, frame_type: str, fields: dict[str, object]) -> bool:
        return self.send_frame(peer, frame_type, fields, "iw")

    def tell_parent_delivered(self, sender: str, message_id: str) -> None:
        """A ``delivered`` for a sender the parent may know (behind a peer)."""
        self._note(PoolDelivered, sender=sender, message=message_id)

    def member_of(self, uri: str) -> str | None:
        """The other member owning ``uri``'s slot (None: this one, or none)."""
        owner = self.view.owners[slot_of(base_uri(uri))]
        return None if owner == self.view.me else owner

    def _note(self, command: type[amp.Command], **fields: object) -> None:
        """Tell the parent (best effort, as over the pool link)."""
        if self.proto is not None:
            call_remote(self.proto, command, **fields)  # (no answer: None)
