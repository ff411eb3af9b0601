"""The ``msg-gone`` not acknowledged yet: sent again until they are.

A ``msg-gone`` (``docs/pool.md``, "Two copies of one ID") tells a peer that
a message was confirmed here, so that the peer drops a twin copy it kept.
Lost with its connection, or with the peer restarting before it acted on
it, the twin could reach the recipient too.  So each one is *pending*
until the peer answers ``msg-gone-ok`` (sent only once what it asked is
done durably there), or until the message has expired everywhere: kept in
memory and in the :class:`~cryptify.crs.pool.origins.OriginStore`
(``pool-gone`` in ``redis_low``) before it is first sent, read back at
start, and sent again when the peer's link comes up and then after
:data:`RESEND_FIRST` seconds, twice as long each time up to
:data:`RESEND_MOST` (a peer that ignores the frame, being older, is asked
less and less often).

:class:`GoneOutbox` keeps them; it does no I/O besides the store's and
calls no peer: the forwarder (:mod:`cryptify.crs.pool.forward_gone`) asks
it what is due and sends.
"""

from __future__ import annotations

from collections import OrderedDict

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.crs.messages.store import EXPIRE_AFTER
from cryptify.crs.pool.origins import MAX_ORIGINS, Gone, OriginStore

log = Logger(namespace="cryptify.crs.pool")

#: Seconds before a ``msg-gone`` not acknowledged is sent again, first.
RESEND_FIRST = 4.0
#: The longest wait between two sends of one ``msg-gone``.
RESEND_MOST = 120.0
#: ``msg-gone`` pending in memory at most (the oldest are forgotten
#: first, with a log line; with a store they are read back at the next start).
MAX_PENDING = MAX_ORIGINS


@attrs.define
class _Entry:
    gone: Gone
    #: When it is sent again (Unix time), and the wait after that.
    due: float
    wait: float


class GoneOutbox:
    """The pending ``msg-gone`` of one forwarder (module docstring)."""

    def __init__(self, durable: OriginStore | None, expire_after: float = EXPIRE_AFTER) -> None:
        self.durable = durable
        self.expire_after = expire_after
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        #: Whether what the store kept was read back (at start; tried again
        #: at every :meth:`due` until it was).
        self.loaded = durable is None
        self._loading = False
        #: Acknowledged, but still in the store (it was out of reach).
        self._stale: set[Gone] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def pending(self, message_id: str) -> bool:
        """Whether a ``msg-gone`` for ``message_id`` waits for its answer."""
        return any(key[1] == message_id for key in self._entries)

    def add(self, peer: str, message_id: str, recipient: str, now: float) -> Deferred[Gone]:
        """Keep a ``msg-gone`` for ``peer``; fires with it once stored (a
        store out of reach is logged: kept in memory only)."""
        gone = Gone(peer, message_id, recipient, now + self.expire_after)
        self._keep(gone, now + RESEND_FIRST)
        if self.durable is None:
            return defer.succeed(gone)

        def not_kept(failure: Failure) -> Gone:
            log.warn(
                "msg-gone of message {id} for {peer} not kept durably: {why}",
                id=message_id,
                peer=peer,
                why=failure.getErrorMessage(),
            )
            return gone

        return defer.ensureDeferred(self.durable.add_gone(gone)).addCallbacks(
            lambda _: gone, not_kept
        )

    def acknowledged(self, peer: str, message_id: str) -> None:
        """``peer`` did what the ``msg-gone`` asked: forget it."""
        entry = self._entries.pop((peer, message_id), None)
        if entry is not None and self.durable is not None:
            self._forget(entry.gone)

    def for_peer(self, peer: str, now: float) -> list[Gone]:
        """Every pending ``msg-gone`` for ``peer`` (its link just came up),
        each due again :data:`RESEND_FIRST` later."""
        found = []
        for entry in self._entries.values():
            if entry.gone.peer == peer:
                entry.due, entry.wait = now + RESEND_FIRST, RESEND_FIRST
                found.append(entry.gone)
        return found

    def load(self, now: float) -> None:
        """Read back what the store kept (at start); tried again at every
        :meth:`due` until done."""
        if not self.loaded and not self._loading:
            self._load(now)

    def due(self, now: float) -> list[Gone]:
        """The pending ``msg-gone`` to send again now (each waits twice as
        long before the next time); those expired are forgotten."""
        self.load(now)
        for gone in list(self._stale):
            self._forget(gone)
        found = []
        for key, entry in list(self._entries.items()):
            if entry.gone.until < now:
                del self._entries[key]
                if self.durable is not None:
                    self._forget(entry.gone)
            elif entry.due <= now:
                entry.wait = min(entry.wait * 2, RESEND_MOST)
                entry.due = now + entry.wait
                found.append(entry.gone)
        return found

    def _keep(self, gone: Gone, due: float) -> None:
        key = (gone.peer, gone.id)
        self._entries[key] = _Entry(gone, due, RESEND_FIRST)
        self._entries.move_to_end(key)
        if len(self._entries) > MAX_PENDING:
            _, oldest = self._entries.popitem(last=False)
            log.warn(
                "over {most} msg-gone pending: the one of message {id} for {peer} is not sent"
                " again before the next start",
                most=MAX_PENDING,
                id=oldest.gone.id,
                peer=oldest.gone.peer,
            )

    def _forget(self, gone: Gone) -> None:
        """Remove ``gone`` from the store (again at every :meth:`due` while
        the store is out of reach)."""
        assert self.durable is not None

        def removed(_: object) -> None:
            self._stale.discard(gone)

        def not_removed(failure: Failure) -> None:
            if gone not in self._stale:
                log.debug(
                    "acknowledged msg-gone of {id} still stored: {why}",
                    id=gone.id,
                    why=failure.getErrorMessage(),
                )
            self._stale.add(gone)

        defer.ensureDeferred(self.durable.remove_gone(gone)).addCallbacks(removed, not_removed)

    def _load(self, now: float) -> None:
        assert self.durable is not None
        self._loading = True

        def loaded(gones: list[Gone]) -> None:
            self.loaded = True
            for gone in gones:
                if (gone.peer, gone.id) not in self._entries:
                    self._keep(gone, now)
            if gones:
                log.info("{count} msg-gone not acknowledged are sent again", count=len(gones))

        def failed(failure: Failure) -> None:
            log.debug("pending msg-gone not read yet: {why}", why=failure.getErrorMessage())

        def done(_: object) -> None:
            self._loading = False

        defer.ensureDeferred(self.durable.pending_gones(now)).addCallbacks(loaded, failed).addBoth(
            done
        )
