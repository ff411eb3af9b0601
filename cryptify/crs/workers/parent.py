"""The parent's side of its workers' socket ``crs.sock.w0`` (docs/workers.md,
Pools and Inter-working): the slot view and the inter-working routes it
sends them, their posts and notes handed to its forwarders, and the call
frames it passes between its links and them.  The workers' side, and what
goes between the two, is :mod:`cryptify.crs.workers.pool`."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from cryptify.crs.interwork.forward import IwForwarder
from cryptify.crs.messages.store import MessageRefused
from cryptify.crs.messages.wiring import Relayed
from cryptify.crs.pool.forward import Forwarder
from cryptify.crs.pool.wire import WireError
from cryptify.crs.pool.wiring import PoolLink
from cryptify.crs.workers.iw import iw_sign, iw_view
from cryptify.crs.workers.pool_calls import CallRelay, Link, pack, unpack
from cryptify.crs.workers.slot_view import (
    map_key,
    slot_view,
)
from cryptify.protocols.amp_calls import call_remote, one_way
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
from cryptify.reactor import IReactor
from cryptify.service import ListenService, attach, prepare_socket_path

log = Logger(namespace="cryptify.crs.workers")

#: Seconds between the parent's checks of which members are late and of
#: the inter-working routes.
VIEW_CHECK = 0.25


class _ParentLocator(amp.CommandLocator):
    def __init__(self, parent: ParentPool, proto: _ParentProtocol) -> None:
        self.parent = parent
        self.proto = proto

    @PoolFrame.responder
    @one_way("a worker's call frame not sent")
    def frame(
        self, peer: str, frame_type: str, data: bytes, via: str | None = None
    ) -> dict[str, object]:
        relay = self.parent.relay(via)
        if relay is not None:
            try:
                relay.from_worker(self.proto, peer, frame_type, unpack(data))
            except WireError as exc:
                log.warn("a worker's call frame not sent: {why}", why=str(exc))
        return {}

    @PoolView.responder
    def view(self) -> dict[str, object]:
        return {"view": self.parent.view()}

    @IwView.responder
    def iw(self) -> dict[str, object]:
        return {"view": self.parent.iw_view()}

    @PoolPost.responder
    def post(self, **post: Any) -> defer.Deferred[dict[str, object]]:
        return self.parent.post(**post)  # (the arguments of PoolPost)

    @PoolDelivered.responder
    @one_way("a worker's delivered not passed on")
    def delivered(self, sender: str, message: str) -> dict[str, object]:
        self.parent.delivered(sender, message)
        return {}

    @PoolSettled.responder
    @one_way("a worker's confirmation not passed on")
    def settled(self, recipient: str, message: str) -> dict[str, object]:
        if self.parent.forwarder is not None:
            self.parent.forwarder.settled(recipient, message)
        return {}

    @PoolLearned.responder
    @one_way("a worker's new URI not passed on")
    def learned(self, uri: str) -> dict[str, object]:
        if self.parent.forwarder is not None:
            self.parent.forwarder.learned(uri)
        return {}


class _ParentProtocol(amp.AMP):
    """One worker's connection (a :class:`~cryptify.crs.workers.pool_calls.Worker`
    of the call relay)."""

    def __init__(self, parent: ParentPool) -> None:
        amp.AMP.__init__(self, locator=_ParentLocator(parent, self))
        self.parent = parent

    def connectionMade(self) -> None:
        amp.AMP.connectionMade(self)
        self.parent.workers.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.parent.workers.discard(self)
        for relay in (self.parent.calls, self.parent.iw_calls):
            if relay is not None:
                relay.worker_lost(self)
        amp.AMP.connectionLost(self, reason)

    def frame(self, peer: str, frame_type: str, fields: dict[str, object], via: str) -> None:
        data = pack(fields)
        call_remote(self, PoolFrameIn, peer=peer, frame_type=frame_type, data=data, via=via)

    def invite(self, peer: str, fields: dict[str, object], via: str) -> defer.Deferred[bool]:
        took: defer.Deferred[bool] = defer.Deferred()
        d = call_remote(self, PoolInvite, peer=peer, data=pack(fields), via=via)
        d.addCallbacks(
            lambda answer: took.callback(answer.get("here") is True),
            lambda _: took.callback(False),
        )
        return took

    def peer(self, peer: str, up: bool, via: str) -> None:
        call_remote(self, PoolPeer, peer=peer, up=up, via=via)


class ParentPool(service.MultiService):
    """The parent's side: its socket for the workers, the slot view it
    sends them, and their posts and notes handed to its forwarder."""

    def __init__(
        self,
        reactor: IReactor,
        path: str,
        link: PoolLink | None,
        forwarder: Forwarder | None,
        relay_calls: bool = True,
        iw: IwForwarder | None = None,
        iw_link: Link | None = None,
    ) -> None:
        service.MultiService.__init__(self)
        self.reactor = reactor
        self.path = path
        self.link = link
        self.forwarder = forwarder
        self.iw = iw
        self.workers: set[_ParentProtocol] = set()
        workers = lambda: list(self.workers)  # noqa: E731
        #: The calls across members of the workers' clients (None: not relayed).
        self.calls = CallRelay(link, workers) if link is not None and relay_calls else None
        #: The calls with other operators' clients (None: no inter-working).
        self.iw_calls = CallRelay(iw_link, workers, "iw") if iw_link is not None else None
        self._sent: tuple[str, tuple[str, ...]] | None = None
        self._iw_sent: object = None
        self._loop = LoopingCall(self.check)
        self._loop.clock = reactor
        if link is not None:
            link.watch(self._map_changed)

        def listen() -> IListeningPort:
            prepare_socket_path(path)
            factory: Factory[Any] = Factory.forProtocol(lambda: _ParentProtocol(self))
            return reactor.listenUNIX(path, factory, mode=0o600)

        attach(self, ListenService("workers' pool socket", path, listen))

    def startService(self) -> None:
        service.MultiService.startService(self)
        self._loop.start(VIEW_CHECK, now=False)

    def stopService(self) -> defer.Deferred[None]:
        if self._loop.running:
            self._loop.stop()
        d: defer.Deferred[None] = defer.maybeDeferred(service.MultiService.stopService, self)
        return d

    def relay(self, via: str | None) -> CallRelay | None:
        """The call relay of a worker's frame (``via`` ``iw``: the
        inter-working one)."""
        return self.iw_calls if via == "iw" else self.calls

    def view(self) -> dict[str, object]:
        return {} if self.link is None else slot_view(self.link)

    def iw_view(self) -> dict[str, object]:
        return {} if self.iw is None else iw_view(self.iw)

    def _map_changed(self) -> bool:
        self.check()
        return False

    def check(self) -> None:
        """Send the workers the view when the map or the late members
        changed, and the inter-working routes when they changed."""
        if self.iw is not None:
            sign = iw_sign(self.iw)  # (cheap: the routes are built on a change only)
            if sign != self._iw_sent:
                self._iw_sent = sign
                routes = iw_view(self.iw)
                for proto in list(self.workers):
                    call_remote(proto, IwViewChanged, view=routes)  # (no answer: None)
        link = self.link
        if link is None:
            return
        sign = (map_key(link), tuple(sorted(p for p in link.peers if link.late(p))))
        if sign == self._sent:
            return
        self._sent = sign
        view = self.view()
        for proto in list(self.workers):
            call_remote(proto, PoolViewChanged, view=view)  # (no answer: None)

    def delivered(self, sender: str, message_id: str) -> None:
        """A worker's ``delivered`` for a sender behind a peer or another member."""
        if self.iw is not None and self.iw.knows(sender):
            self.iw.tell_delivered(sender, message_id)
        elif self.forwarder is not None:
            self.forwarder.tell_delivered(sender, message_id)

    def post(
        self,
        sender: str,
        scope: str,
        to: str,
        account: str,
        kind: str,
        data: bytes,
        via: str | None = None,
    ) -> defer.Deferred[dict[str, object]]:
        """A worker's post, through the forwarder as one process's (``via``
        ``iw``: the inter-working one)."""

        def answered(relayed: Relayed) -> dict[str, object]:
            done = relayed.posted
            answer: dict[str, object] = {"id": done.id, "duplicate": done.duplicate}
            if relayed.peer is not None:
                answer["peer"] = relayed.peer
            elif done.stored is not None:
                answer["time_ms"] = done.stored.time_ms
            return answer

        def refused(failure: Failure) -> dict[str, object]:
            if failure.check(MessageRefused):
                value: Any = failure.value
                return {"code": value.code, "reason": str(value)}
            log.failure("a worker's post not forwarded", failure)
            return {"code": "unavailable", "reason": "the pool's forwarder did not take it"}

        forwarder = self.iw if via == "iw" else self.forwarder
        if forwarder is None:
            return defer.succeed({"code": "unavailable", "reason": "no forwarder for it here"})
        # (an error raised here, or left on the answer, would make AMP drop
        # the worker's connection and every call of the worker with it)
        d = defer.maybeDeferred(forwarder.post, sender, scope, to, account, kind, data)
        return d.addCallback(answered).addErrback(refused)
