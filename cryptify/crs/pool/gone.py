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
#: Acknowledged ``msg-gone`` removed from the store in one command at most.
MAX_REMOVE = 1000
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
        #: Acknowledged (or expired), not yet removed from the store.
        self._stale: set[Gone] = set()
        self._removing = False

    def __len__(self) -> int:
        return len(self._entries)

    def pending(self, message_id: str) -> bool:
        """Whether a ``msg-gone`` for ``message_id`` waits for its answer."""
        return any(key[1] == message_id for key in self._entries)

    def add(
        self,
        peers: list[str],
        message_id: str,
        recipient: str,
        now: float,
        origin: bool = False,
        follow: bool = False,
    ) -> Deferred[list[Gone]]:
        """Keep a ``msg-gone`` for each of ``peers`` and, in the same step
        in the store, forget ``message_id``'s origin (``origin``) and
        follow entry (``follow``); fires with them once stored (a store out
        of reach is logged: they are kept in memory only)."""
        gones = [Gone(peer, message_id, recipient, now + self.expire_after) for peer in peers]
        for gone in gones:
            self._keep(gone, now + RESEND_FIRST)
        if self.durable is None or not (gones or origin or follow):
            return defer.succeed(gones)

        def not_kept(failure: Failure) -> list[Gone]:
            log.warn(
                "msg-gone of message {id} for {peers} not kept durably: {why}",
                id=message_id,
                peers=",".join(peers) or "-",
                why=failure.getErrorMessage(),
            )
            return gones

        work = self.durable.add_gones(gones, message_id, origin, follow)
        return defer.ensureDeferred(work).addCallbacks(lambda _: gones, not_kept)

    def acknowledged(self, peer: str, message_id: str) -> None:
        """``peer`` did what the ``msg-gone`` asked: forget it (in the
        store with the others acknowledged meanwhile, at the next
        :meth:`due`: one that is read back after a restart meanwhile is
        sent again and answered again)."""
        entry = self._entries.pop((peer, message_id), None)
        if entry is not None and self.durable is not None:
            self._stale.add(entry.gone)

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
        found = []
        for key, entry in list(self._entries.items()):
            if entry.gone.until < now:
                del self._entries[key]
                if self.durable is not None:
                    self._stale.add(entry.gone)
            elif entry.due <= now:
                entry.wait = min(entry.wait * 2, RESEND_MOST)
                entry.due = now + entry.wait
                found.append(entry.gone)
        self._forget()
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

    def _forget(self) -> None:
        """Remove what was acknowledged from the store, in one step (again
        at the next :meth:`due` while the store is out of reach)."""
        if not self._stale or self.durable is None or self._removing:
            return
        batch = list(self._stale)[:MAX_REMOVE]
        self._removing = True

        def removed(_: object) -> None:
            self._stale.difference_update(batch)

        def not_removed(failure: Failure) -> None:
            log.debug(
                "{count} acknowledged msg-gone still stored: {why}",
                count=len(batch),
                why=failure.getErrorMessage(),
            )

        def done(_: object) -> None:
            self._removing = False

        defer.ensureDeferred(self.durable.remove_gones(batch)).addCallbacks(
            removed, not_removed
        ).addBoth(done)

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
