"""Calls between clients attached to different workers of one instance.

The pool's calls (:class:`cryptify.crs.pool.calls_core.PoolCalls`) do the
work, as between two instances of a pool: the caller's worker keeps the
session and its relay session, the callee's worker passes the call to
and from its client.  Here they run over a local link made of the
instance's notices on ``redis_high`` (:mod:`cryptify.crs.workers.notices`):

- :class:`AttachDirectory` (sans-IO) says which worker a URI is attached
  to; every worker keeps one from the ``at``/``dt`` notices, fills it
  from the others' answers to its ``hi`` (or, after a reconnection to
  ``redis_high``, its ``ask``), and forgets a worker's entries when the
  worker says ``hi`` again (it restarted) or the parent says it is ``gone``.
- :class:`WorkerLink` is the pool link as the calls see it: ``send`` a
  frame to a worker (its own channel), handlers for the frames that
  arrive, and link listeners told ``down`` when a worker is gone (its
  calls end on both sides, as when a pool member is lost).

A callee not in the directory is handled by the caller's worker as a
client not attached there (``not-connected``, or ``not-found``).

The directory also addresses the notices about messages (``m``, ``n``,
``d``) to one worker (:meth:`WorkerLink.route`): the one the client is
attached to, else the *home worker* of the client's slot (the instance's
slots cut in equal ranges, :func:`home_table`).  A worker that gets a
notice on its own channel for a client its directory does not place
here (:meth:`WorkerLink.mine`) passes it on to every worker when the
directory places the client on another worker or is still filling
(:data:`SETTLE` seconds after a subscription), and drops it otherwise:
Redis sends one subscriber its channels' messages in the order they
were published, so the ``at`` of an attach published before the notice
has reached the directory first, and the client is attached nowhere.
(The ``at`` and the notice come from two workers' connections, which
Redis may read out of order when both are waiting: the worker looks
again :data:`LOOK_AGAIN` seconds later and wakes a client that has
become known meanwhile.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from cryptify.crs.attach.registry import AttachRegistry
from cryptify.crs.pool.wire import WireError
from cryptify.crs.slots import SLOTS, slot_of, slot_ranges
from cryptify.crs.workers.notices import (
    Ask,
    Attached,
    Delivered,
    Detached,
    Frame,
    Gone,
    Hello,
    Notice,
    Wake,
    worker_channel,
    worker_name,
)
from cryptify.crs.workers.wake import Siblings
from cryptify.protocols.umsg import base_uri

log = Logger(namespace="cryptify.crs.workers")

#: Seconds after which a worker looks again for the clients of the wake-ups
#: it dropped (attached nowhere, as far as it knew then).
LOOK_AGAIN = 0.5
#: Most URIs kept to look again for at once.
MAX_LOOK_AGAIN = 100_000
#: Seconds after a subscription during which this worker's directory may
#: still be filling (the others' answers to its ``hi`` or ``ask``): a
#: notice for a client it does not know goes to every worker meanwhile.
SETTLE = 2.0


def home_table(count: int, owned: Sequence[tuple[int, int]]) -> list[int]:
    """The home worker (0-based) of every slot: the instance's ``owned``
    slots (first, last ranges) cut in ``count`` equal consecutive parts,
    in slot order; a slot the instance does not own by the cut of all the
    slots (a notice about another member's client goes to any worker:
    each drops it, or passes it on, alike)."""
    table = [slot * count // SLOTS for slot in range(SLOTS)]
    slots = [slot for first, last in owned for slot in range(first, last + 1)]
    for position, slot in enumerate(slots):
        table[slot] = position * count // len(slots)
    return table


def describe_worker(count: int, index: int, owned: Sequence[tuple[int, int]]) -> str:
    """``show system`` SLOTS of worker ``index`` (0-based) of ``count``: the
    slots of the instance's ``owned`` ranges it is the home of,
    ``first-last`` joined by commas, or ``-``."""
    table = home_table(count, owned)
    homes = (s for first, last in owned for s in range(first, last + 1) if table[s] == index)
    return ",".join(f"{a}-{b}" for a, b in slot_ranges(homes)) or "-"


class AttachDirectory:
    """Which worker each URI is attached to (as the notices said)."""

    def __init__(self) -> None:
        self.where: dict[str, str] = {}

    def attached(self, uri: str, worker: str) -> None:
        self.where[uri] = worker

    def detached(self, uri: str, worker: str) -> None:
        """``uri`` left ``worker`` (an entry already moved elsewhere stays)."""
        if self.where.get(uri) == worker:
            del self.where[uri]

    def forget(self, worker: str) -> None:
        """``worker`` restarted or exited: none of its clients remain."""
        for uri in [u for u, w in self.where.items() if w == worker]:
            del self.where[uri]

    def owner(self, uri: str) -> str | None:
        return self.where.get(uri)


class WorkerLink:
    """One worker's side of the calls between workers.

    ``siblings`` publishes its notices and frames.
    """

    def __init__(
        self,
        me: str,
        instance: str,
        registry: AttachRegistry,
        siblings: Siblings,
        count: int = 1,
        clock: IReactorTime | None = None,
    ) -> None:
        self.me = me
        self.instance = instance
        self.registry = registry
        self.siblings = siblings
        self.channel = worker_channel(instance, me)
        self.directory = AttachDirectory()
        self.count = count
        #: The home worker of each slot (:func:`home_table`).
        self.homes = home_table(count, [(0, SLOTS - 1)])
        self.handlers: dict[str, Callable[[str, dict[str, object]], None]] = {}
        self.listeners: list[Callable[[str, bool], None]] = []
        self.refused = 0
        self.greeted = False
        #: Until when (clock seconds) the directory may still be filling.
        self.settling = float("inf")
        #: Notices addressed here for a client elsewhere, passed on to all.
        self.passed = 0
        #: Notices addressed here for a client attached nowhere, dropped.
        self.dropped = 0
        self.clock = clock
        #: The URIs of the wake-ups dropped since the last look again.
        self.dropped_uris: set[str] = set()
        self._again: IDelayedCall | None = None
        #: Wake-ups sent again because the URI's attach became known late.
        self.woken_late = 0
        #: In a pool: the other members, how a call frame goes to one (the
        #: parent's pool link), and which member owns a URI's slot.
        self.members: frozenset[str] = frozenset()
        self.to_member: Callable[[str, str, dict[str, object]], bool] | None = None
        self.member_of: Callable[[str], str | None] | None = None
        #: Asks for a push wake-up of (account, URI) (with ``features push``).
        self.on_absent: Callable[[str, str], object] | None = None

    # -- the pool link's interface, for PoolCalls and its install() ---------------

    def send(self, peer: str, frame_type: str, fields: dict[str, object]) -> bool:
        if self.to_member is not None and peer in self.members:
            return self.to_member(peer, frame_type, fields)
        frame = Frame(self.me, frame_type, fields)
        return self.siblings.publish(frame, worker_channel(self.instance, peer))

    def handle(self, frame_type: str, handler: Callable[[str, dict[str, object]], None]) -> None:
        self.handlers[frame_type] = handler

    def on_link(self, listener: Callable[[str, bool], None]) -> None:
        self.listeners.append(listener)

    def owner(self, uri: str) -> str | None:
        """The worker ``uri`` is attached to, else (in a pool) the other
        member owning its slot (None: not attached, or here)."""
        found = self.directory.owner(uri)
        if found is None and self.member_of is not None:
            return self.member_of(uri)
        return found

    # -- calls across pool members, through the parent ---------------------------------

    def deliver(self, peer: str, frame_type: str, fields: dict[str, object]) -> None:
        """A call frame from pool member ``peer`` (through the parent)."""
        self._frame(Frame(peer, frame_type, fields))

    def peer_changed(self, peer: str, up: bool) -> None:
        """Pool member ``peer``'s link went up or down."""
        for listener in self.listeners:
            listener(peer, up)

    # -- where the notices about a client go ------------------------------------------

    def home(self, uri: str) -> str:
        """The home worker of ``uri``'s slot."""
        return worker_name(self.homes[slot_of(base_uri(uri))])

    def own(self, owned: Sequence[tuple[int, int]]) -> None:
        """The instance owns ``owned`` now (in a pool): its workers' homes."""
        self.homes = home_table(self.count, owned)

    def where(self, uri: str) -> str | None:
        """The other worker ``uri`` is attached to, as far as this one knows."""
        owner = self.directory.owner(uri)
        return owner if owner != self.me else None

    def route(self, uri: str) -> str:
        """The channel of the worker to tell about ``uri``."""
        return worker_channel(self.instance, self.where(uri) or self.home(uri))

    def mine(self, notice: Wake | Delivered) -> bool:
        """A notice on this worker's own channel: True when it is for a
        client attached here (or that was, a moment ago); else passed on
        to every worker, or dropped (module docstring)."""
        uri = notice.uri if isinstance(notice, Wake) else notice.sender
        owner = self.directory.owner(uri)
        if owner == self.me:
            return True
        absent = notice.absent if isinstance(notice, Wake) else None
        if owner is None and absent is not None and self.on_absent is not None:
            # (the parent's: attached nowhere, as far as this worker knows)
            self.on_absent(absent, uri)
        if owner is None and self.registry.clock() >= self.settling:
            self.dropped += 1
            if isinstance(notice, Wake):
                self._look_again(uri)
            return False
        self.passed += 1
        if isinstance(notice, Wake):
            notice = Wake(notice.uri, notice.stored)  # (the push is done here)
        self.siblings.publish(notice)
        return False

    def _look_again(self, uri: str) -> None:
        """``uri``'s wake-up was dropped (attached nowhere): should an attach
        announced before it reach the directory only now (Redis read the two
        connections' commands out of order), it is woken then, within
        :data:`LOOK_AGAIN` seconds."""
        if self.clock is None or len(self.dropped_uris) >= MAX_LOOK_AGAIN:
            return
        self.dropped_uris.add(uri)
        if self._again is None or not self._again.active():
            self._again = self.clock.callLater(LOOK_AGAIN, self._looked_again)

    def _looked_again(self) -> None:
        self._again = None
        uris, self.dropped_uris = self.dropped_uris, set()
        for uri in sorted(uris):
            if self.directory.owner(uri) is not None:
                self.woken_late += 1
                self.siblings.publish(Wake(uri))

    def stop(self) -> None:
        """No look again once the worker stops."""
        if self._again is not None and self._again.active():
            self._again.cancel()
        self._again = None

    # -- this worker's clients ----------------------------------------------------

    def client_attached(self, uri: str, since: float) -> None:
        self.directory.attached(uri, self.me)
        self.siblings.publish(Attached(uri, self.me, int(since * 1000)))

    def client_detached(self, uri: str) -> None:
        if self.registry.get(uri) is None:
            self.directory.detached(uri, self.me)
            self.siblings.publish(Detached(uri, self.me))

    def subscribed(self) -> None:
        """This worker's subscription is in place: say hello the first time;
        after a reconnection ask for the others' attachments and tell
        them its own (notices went by while it was away)."""
        self.settling = self.registry.clock() + SETTLE
        if not self.greeted:
            self.greeted = True
            self.siblings.publish(Hello(self.me))
            return
        self.siblings.publish(Ask(self.me))
        self.announce()

    def announce(self) -> None:
        """Tell the other workers whom this one has attached."""
        for uri, attachment in list(self.registry.by_uri.items()):
            self.siblings.publish(Attached(uri, self.me, int(attachment.since * 1000)))

    # -- notices from the other workers ---------------------------------------------

    def received(self, notice: Notice) -> None:
        if isinstance(notice, Attached):
            if notice.worker != self.me:
                self.directory.attached(notice.uri, notice.worker)
                self._replaced(notice)
        elif isinstance(notice, Detached):
            if notice.worker != self.me:
                self.directory.detached(notice.uri, notice.worker)
        elif isinstance(notice, Hello):
            if notice.worker != self.me:
                self._lost(notice.worker)
                self.announce()
        elif isinstance(notice, Ask):
            if notice.worker != self.me:
                self.announce()
        elif isinstance(notice, Gone):
            self._lost(notice.worker)
        elif isinstance(notice, Frame):
            self._frame(notice)

    def _replaced(self, notice: Attached) -> None:
        """``notice.uri`` attached to another worker: an older attachment
        of it here is closed (``replaced``), as on one process."""
        local = self.registry.get(notice.uri)
        if local is not None and int(local.since * 1000) < notice.since_ms:
            log.info(
                "{uri} attached again on {worker}; closing the earlier connection",
                uri=notice.uri,
                worker=notice.worker,
            )
            local.conn.disconnect("replaced")

    def _lost(self, worker: str) -> None:
        self.directory.forget(worker)
        for listener in self.listeners:
            listener(worker, False)

    def _frame(self, frame: Frame) -> None:
        handler = self.handlers.get(frame.frame_type)
        if handler is None:
            self.refused += 1
            log.warn(
                "unknown call frame {kind} from {worker}",
                kind=frame.frame_type,
                worker=frame.worker,
            )
            return
        try:
            handler(frame.worker, frame.fields)
        except WireError as exc:
            self.refused += 1
            log.warn("call frame from {worker} refused: {why}", worker=frame.worker, why=str(exc))
