"""The sweep of :class:`~cryptify.crs.pool.forward.Forwarder`: whatever
sits in an inbox here whose slot another member owns is handed to that
owner (``msg-post`` with ``hand``) and deleted here once it answered that
it stored it (see the forward module's docstring and ``docs/pool.md``,
"The sweep").  A copy handed on whose other copy may sit at a third
member is *followed*: the ``msg-gone`` of that member is passed to the
member it was handed to (:meth:`SweepMixin._follow`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.crs.messages.store import MessageStore, Posted, Stored
from cryptify.crs.messages.wiring import Messaging, forward_state
from cryptify.crs.pool.forward_core import NoAnswer
from cryptify.crs.pool.origins import OriginMap

if TYPE_CHECKING:
    from cryptify.crs.pool.forward import PoolRoutes

log = Logger(namespace="cryptify.crs.pool")

#: Seconds between sending every live peer the whole set of known URIs
#: again (besides when its link comes up): a ``msg-known`` lost with its
#: connection is made good within this time.
KNOWN_RESYNC = 300.0
#: Messages of one inbox handed over at once.
SWEEP_WINDOW = 64


class SweepMixin:
    """The sweep's half of the forwarder (the state lives there)."""

    link: PoolRoutes
    store: MessageStore
    messaging: Messaging
    counters: dict[str, int]
    running: bool | int
    dirty: bool
    trace_account: str
    _sweeping: bool
    _again: bool
    _loop: LoopingCall
    _next_share: float
    _origins: OriginMap
    #: With ``workers N``: the URIs the workers hold (None: not known now).
    held_by_workers: Callable[[], Awaitable[frozenset[str] | None]] | None

    reactor: IReactorTime

    if TYPE_CHECKING:

        def owner(self, uri: str) -> str | None: ...

        def _ask(self, peer: str, message: Stored, hand: bool) -> defer.Deferred[Posted]: ...

        def _resend_gones(self, peer: str | None = None) -> None: ...

        def _remember_origin(self, message_id: str, peer: str) -> None: ...

        def _share(self, peer: str) -> None: ...

    # -- the sweep ---------------------------------------------------------

    def _map_changed(self) -> bool:
        self.dirty = True
        self.kick()
        return False

    def _tick(self) -> None:
        self._resend_gones()
        if self.dirty:
            self.kick()
        if self.reactor.seconds() >= self._next_share:
            self._next_share = self.reactor.seconds() + KNOWN_RESYNC
            for peer in self.link.peers:
                if self.link.link_up(peer):
                    self._share(peer)

    def kick(self) -> None:
        """Sweep now (or once more after the sweep under way)."""
        if not self.running:
            return
        if self._sweeping:
            self._again = True
            return
        self._sweeping = True
        defer.ensureDeferred(self._sweep()).addErrback(self._sweep_failed).addBoth(self._swept)

    def _swept(self, _: object) -> None:
        self._sweeping = False
        if self._again:
            self._again = False
            self.kick()

    def _sweep_failed(self, failure: Failure) -> None:
        self.dirty = True
        log.warn("message sweep stopped: {why}", why=failure.getErrorMessage())

    async def _sweep(self) -> None:
        """Hand every message stored here for another member's slot to it."""
        self.dirty = False
        left = False
        before = self.counters["handed"]
        held: frozenset[str] = frozenset()
        if self.held_by_workers is not None:
            # with workers, the clients are theirs (docs/workers.md, Pools)
            found = await self.held_by_workers()
            if found is None:
                self.dirty = True
                return
            held = found
        for uri in await self.store.inboxes():
            if not self._sweeps(uri):
                continue
            owner = self.owner(uri)
            if owner == self.link.me:
                continue
            if owner is None or self.messaging.registry.get(uri) is not None or uri in held:
                left = True  # no owner this moment, or its client still here
                continue
            if not self.link.link_up(owner):
                continue  # swept again when the link comes up
            if not await self._hand_inbox(uri, owner):
                left = True
        if left:
            self.dirty = True
        handed = self.counters["handed"] - before
        if handed:
            log.info(
                "{count} stored messages handed to the members owning their slots{left}",
                count=handed,
                left=" (some left for later)" if left else "",
            )

    def _sweeps(self, inbox: str) -> bool:
        """Whether the sweep hands ``inbox`` on: a client's (a tel URI),
        not one kept for another operator (the inter-working forwarder's)."""
        return inbox.startswith("tel:")

    def _outgoing(self, message: Stored) -> Stored:
        """A kept message as it is handed on."""
        return message

    async def _hand_inbox(self, uri: str, owner: str) -> bool:
        """Hand ``uri``'s messages to ``owner``; True when none is left."""
        while True:
            if self.owner(uri) != owner or self.messaging.registry.get(uri) is not None:
                return False
            ids = await self.store.waiting_ids(uri, SWEEP_WINDOW)
            if not ids:
                return True
            found = [await self.store.get(i) for i in ids]
            messages = [self._outgoing(m) for m in found if m is not None]
            asks = []
            for m in messages:
                if m.scope is None:
                    m = attrs.evolve(m, scope=f"id:{m.id}")
                asks.append(self._ask(owner, m, hand=True))
            results: list[tuple[bool, Any]] = await defer.DeferredList(asks, consumeErrors=True)
            done = 0
            for m, (ok, result) in zip(messages, results, strict=True):
                if not ok:
                    if result.check(NoAnswer):
                        # the owner may have stored it all the same (its
                        # answer lost): a twin, as for a forward (msg-gone)
                        self._remember_origin(m.id, owner)
                    log.debug(
                        "message {id} for {uri} still kept for {owner}: {why}",
                        id=m.id,
                        uri=uri,
                        owner=owner,
                        why=result.getErrorMessage(),
                    )
                    continue
                # followed before it leaves: a crash between the two
                # leaves a copy here that the follow entry names
                await self._origins.follow(m.id, owner)
                await self.store.handed(uri, m.id)
                done += 1
                self.counters["handed"] += 1
                self.messaging.trace.emit(
                    "message",
                    m.sender,
                    m.recipient,
                    forward_state(m.kind),
                    self.trace_account,
                    m.id,
                )
            if done == 0 or done < len(messages):
                return False  # the owner did not take them all: later
