"""Pool-wide operator changes over the pool link: the Twisted side of
:mod:`cryptify.crs.pool.changes_core`.

:class:`PoolChanges` keeps the durable change log in
``data-dir/pool-changes`` (mode 0600; each record is appended and
fsync'ed before the change is applied, confirmed or answered), and

- :meth:`PoolChanges.submit` (a ``crs-cli`` command on this instance):
  makes the change, logs it, applies it here, sends it to every peer whose
  link is up, and waits at most :data:`CONFIRM_WAIT` for their
  confirmations; the :class:`~cryptify.crs.pool.changes_core.Report` says
  which instances applied it and which have it pending (down, or not
  confirmed yet);
- a change from a peer (``pool-change`` frames) is applied once, in order
  per origin and after what it depends on, logged, then confirmed by
  sending this instance's high-water marks (``pool-marks``) to every live
  peer;
- when a peer's link comes up, and every :data:`RESYNC_INTERVAL`, the
  marks are exchanged and each side sends the other what it lacks, so a
  peer that was down or cut off converges;
- a peer that lacks changes this instance's log folded into its snapshot
  (its own log was lost, or it is new) is sent the snapshot
  (``pool-snapshot`` frames) and merges it;
- every :data:`RESYNC_INTERVAL`, once every member has reported that it
  applied at least :data:`COMPACT_AFTER` changes of the log, those are
  folded into the log's snapshot (:mod:`~cryptify.crs.pool.changes_snapshot`);
- ``notify.sh pool_changes`` hears where a change made here stands when
  the command is answered (``applied KIND`` or ``pending KIND NAME[,NAME]``)
  and, for one that was pending, when every member has applied it;
- ``purge client|clients`` is not logged (an instance that is down has no
  clients: they are attached elsewhere): :meth:`PoolChanges.purge` asks
  the live peers (``pool-purge``) and adds up their answers; likewise
  ``wakeup client`` for a client whose push token another member keeps
  (:meth:`PoolChanges.wake`, ``pool-wakeup``).

What a change does to this instance (its accounts, blacklists, admins) is
the :class:`Applier`'s job; :class:`~cryptify.crs.pool.changes_apply.StateApplier`
does it on the running CRS's state.  After a restart the last logged
change is applied again (a crash may have cut it between the log and the
store; applying is idempotent), or, when the log ends with a snapshot
taken from a peer, the snapshot's winners.  The file is
:class:`~cryptify.crs.pool.changes_log.ChangeLog`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cryptify.crs.pool.changes_core import ACCOUNT_KINDS, Change, Kind, Report, Verdict
from cryptify.crs.pool.changes_frames import (
    CHANGE_FRAME,
    MARKS_FRAME,
    MAX_RESULT,
    PURGE_FRAME,
    PURGED_FRAME,
    SNAPSHOT_FRAME,
    WAKEUP_FRAME,
    WOKEN_FRAME,
    Assembly,
    change_frames,
    check_marks_frame,
    check_part,
    check_purge,
    check_purged,
    check_wakeup,
    check_woken,
)
from cryptify.crs.pool.changes_log import ChangeLog
from cryptify.crs.pool.changes_ports import Applier as Applier
from cryptify.crs.pool.changes_ports import Link as Link
from cryptify.crs.pool.changes_replica import Peers, Replica
from cryptify.crs.pool.changes_snapshot import MAX_SNAPSHOT, Snapshot
from cryptify.crs.pool.wire import WireError
from cryptify.service import StartupError

log = Logger(namespace="cryptify.crs.pool.changes")

#: The change log, under ``data-dir``.
LOG_FILE = "pool-changes"
#: How long a command waits for the peers' confirmations, in seconds.
CONFIRM_WAIT = 3.0
#: How often marks are exchanged with every live peer (and what was sent
#: but not confirmed is sent again), in seconds.
RESYNC_INTERVAL = 5.0
#: How long ``wakeup client`` waits for the peers (a push goes to the provider).
WAKE_WAIT = 10.0
#: Changes every member has applied before they are folded into the snapshot.
COMPACT_AFTER = 1000
#: Changes made here, pending on a member, followed for ``notify.sh``.
MAX_FOLLOWED = 10_000
#: The ``notify.sh`` unit of pool changes.
NOTIFY_UNIT = "pool_changes"


class _Waiter:
    def __init__(self, change_id: tuple[str, int], timer: IDelayedCall) -> None:
        self.change_id = change_id
        self.timer = timer
        self.done: defer.Deferred[None] = defer.Deferred()


class PoolChanges(service.Service):
    """The change log of one pool member (see the module docstring)."""

    def __init__(
        self,
        link: Link,
        data_dir: str,
        reactor: Any,
        applier: Applier,
        *,
        wall: Callable[[], float] | None = None,
        compact_after: int = COMPACT_AFTER,
    ) -> None:
        self.link = link
        self.compact_after = compact_after
        self.log_id = 0
        #: Changes made here and pending on a member when answered: id -> kind.
        self._followed: dict[tuple[str, int], Kind] = {}
        self._snapshot_sent: tuple[Snapshot, bytes, int] | None = None
        self._snapshots = 0
        self.me = link.me
        self.reactor = reactor
        self.applier = applier
        #: The wall clock of change stamps: the reactor's unless given.
        self.wall: Callable[[], float] = reactor.seconds if wall is None else wall
        self.file = ChangeLog(os.path.join(data_dir, LOG_FILE))
        self.replica: Replica | None = None
        self.peers: Peers | None = None
        self._assembly: dict[str, Assembly] = {p: Assembly() for p in link.peers}
        self._snapshot_parts: dict[str, Assembly] = {}
        self._waiters: list[_Waiter] = []
        #: Requests to the live peers (purge, wakeup): id -> (answers, done, asked).
        self._requests: dict[int, tuple[dict[str, object], defer.Deferred[None], set[str]]] = {}
        self._next_request = 1
        self._loop = LoopingCall(self._resync)
        self._loop.clock = reactor
        link.handle(CHANGE_FRAME, self._on_change)
        link.handle(MARKS_FRAME, self._on_marks)
        link.handle(SNAPSHOT_FRAME, self._on_snapshot)
        link.handle(PURGE_FRAME, self._on_purge)
        link.handle(PURGED_FRAME, self._on_purged)
        link.handle(WAKEUP_FRAME, self._on_wakeup)
        link.handle(WOKEN_FRAME, self._on_woken)
        link.on_link(self._on_link)

    # -- lifecycle -------------------------------------------------------

    def startService(self) -> None:
        try:
            loaded = self.file.open(self.wall())
        except OSError as exc:
            raise StartupError(f"pool changes: cannot open {self.file.path}: {exc}") from exc
        self.log_id = loaded.log_id
        self.replica = Replica(self.me, loaded.log_id, loaded.changes, loaded.snapshot)
        self.peers = Peers(self.replica)
        log.info(
            "pool change log {origin}: {count} changes{after}",
            origin=self.replica.origin,
            count=len(loaded.changes),
            after=""
            if loaded.snapshot is None
            else f" after a snapshot of {len(loaded.snapshot.winners)}",
        )
        if loaded.changes:
            # a crash may have cut the last one between the log and the store
            self.applier.apply(loaded.changes[-1], self.replica)
        elif loaded.fresh and loaded.snapshot is not None:
            # ... or the effects of a snapshot taken from a peer
            self._catch_up(list(loaded.snapshot.winners))
        service.Service.startService(self)
        for peer in self.link.peers:
            if self.link.link_up(peer):
                self._on_link(peer, True)
        self._loop.start(RESYNC_INTERVAL, now=False).addErrback(
            lambda f: log.failure("pool change resync stopped", f)
        )

    def stopService(self) -> defer.Deferred[None] | None:
        if self._loop.running:
            self._loop.stop()
        for waiter in list(self._waiters):
            self._finish(waiter)
        for request in list(self._requests):
            self._end_request(request)
        self.file.close()
        service.Service.stopService(self)
        return None

    # -- this instance's commands ---------------------------------------

    async def submit(
        self, kind: Kind, args: Mapping[str, str | bytes], *, done_here: bool = False
    ) -> Report:
        """Make, log, apply and send a change; the report once every live
        peer confirmed it or :data:`CONFIRM_WAIT` passed.  OSError when it
        cannot be logged (then nothing was done).  ``done_here``: the
        command already did it on this instance (the admin store checks
        and applies in one step), so it is only logged and sent."""
        replica, peers = self._ready()
        change = replica.make(kind, args, int(self.wall() * 1000))
        self.file.append(change.encode())
        replica.commit(change)
        log.info("pool change made here: {change}", change=change.describe())
        problems = [] if done_here else self.applier.apply(change, replica)
        self._send_due(peers.new())
        self._send_marks()
        if any(self.link_up(p) and not peers.has(p, change.id) for p in self.link.peers):
            waiter = _Waiter(change.id, self.reactor.callLater(CONFIRM_WAIT, self._timeout))
            self._waiters.append(waiter)
            await waiter.done
        report = self._report(change.id, problems)
        self._tell(change, report)
        return report

    def _tell(self, change: Change, report: Report) -> None:
        """``notify.sh pool_changes``: where the change made here stands."""
        if not report.pending:
            self.link.notify(NOTIFY_UNIT, f"applied {change.kind.value}")
            return
        names = ",".join(name for name, _ in report.pending)
        self.link.notify(NOTIFY_UNIT, f"pending {change.kind.value} {names}")
        self._followed[change.id] = change.kind
        if len(self._followed) > MAX_FOLLOWED:
            oldest = next(iter(self._followed))
            del self._followed[oldest]
            log.warn(
                "pool change {id} no longer followed for notify.sh ({count} pending)",
                id=f"{oldest[0]} #{oldest[1]}",
                count=MAX_FOLLOWED,
            )

    def _arrived(self) -> None:
        """Changes made here that every member has now applied: one
        ``applied KIND`` (or ``applied N changes``) for those that were
        pending when answered."""
        _, peers = self._ready()
        done = [
            (i, k)
            for i, k in self._followed.items()
            if all(peers.has(p, i) for p in self.link.peers)
        ]
        for change_id, _ in done:
            del self._followed[change_id]
        if len(done) == 1:
            self.link.notify(NOTIFY_UNIT, f"applied {done[0][1].value}")
        elif done:
            self.link.notify(NOTIFY_UNIT, f"applied {len(done)} changes")

    async def _ask(
        self, frame_type: str, fields: dict[str, object], wait: float
    ) -> tuple[dict[str, object], set[str]]:
        """Send a request to every live peer; their answers (peer ->
        answer) once all answered or ``wait`` passed, and who was asked."""
        request = self._next_request
        self._next_request += 1
        answers: dict[str, object] = {}
        asked = set()
        for peer in self.link.peers:
            if self.link_up(peer) and self.link.send(peer, frame_type, {"id": request, **fields}):
                asked.add(peer)
        if asked:
            done: defer.Deferred[None] = defer.Deferred()
            self._requests[request] = (answers, done, asked)
            timer = self.reactor.callLater(wait, self._end_request, request)
            await done
            if timer.active():
                timer.cancel()
        return answers, asked

    def _answered(self, peer: str, request: int, answer: object) -> None:
        found = self._requests.get(request)
        if found is None or peer not in found[2] or peer in found[0]:
            return
        answers, _, asked = found
        answers[peer] = answer
        if set(answers) >= asked:
            self._end_request(request)

    def _end_request(self, request: int) -> None:
        found = self._requests.pop(request, None)
        if found is not None:
            found[1].callback(None)

    async def purge(self, account: str, uri: str | None, here: int) -> tuple[int, Report]:
        """Ask every live peer to purge too (``here`` were purged here);
        the total and who did it, waiting at most :data:`CONFIRM_WAIT`."""
        fields: dict[str, object] = {"account": account, "uri": uri}
        answers, asked = await self._ask(PURGE_FRAME, fields, CONFIRM_WAIT)
        applied = [self.me] + [p for p in self.link.peers if p in answers]
        pending = tuple(
            (p, "down" if p not in asked else "no answer")
            for p in self.link.peers
            if p not in answers
        )
        total = here + sum(n for n in answers.values() if isinstance(n, int))
        return total, Report(tuple(applied), pending)

    async def wake(self, account: str, uri: str) -> list[tuple[str, str]]:
        """Ask every live peer to wake ``uri`` (this instance has no push
        token for it: the member serving its slot keeps it); each peer's
        answer, waiting at most :data:`WAKE_WAIT`."""
        fields: dict[str, object] = {"account": account, "uri": uri}
        answers, asked = await self._ask(WAKEUP_FRAME, fields, WAKE_WAIT)
        result = []
        for peer in self.link.peers:
            if peer in answers:
                result.append((peer, str(answers[peer])))
            else:
                result.append((peer, "down" if peer not in asked else "no answer"))
        return result

    def status(self) -> str:
        """The ``show services`` row ``pool_changes``: how many changes the
        log holds and, per peer, whether it has them all (as it last said)."""
        if self.replica is None or self.peers is None:
            return "inactive"
        parts = [f"{len(self.replica.log)} changes"]
        if self.replica.snapshot is not None:
            parts[0] += f" after a snapshot of {len(self.replica.snapshot.winners)}"
        for peer in self.link.peers:
            state = "up" if self.link_up(peer) else "down"
            reported = self.peers.reported.get(peer)
            if reported is None:
                parts.append(f"{peer} not heard from ({state})")
                continue
            lacking = len(self.replica.missing(reported))
            if self.replica.snapshot is not None and any(
                reported.get(o, 0) < s for o, s in self.replica.base.items()
            ):
                lacking += 1  # the snapshot
            parts.append(f"{peer} has all" if not lacking else f"{peer} lacks {lacking} ({state})")
        return f"active ({'; '.join(parts)})"

    def link_up(self, peer: str) -> bool:
        """Whether ``peer`` is live as far as changes go."""
        return self.peers is not None and peer in self.peers.live

    # -- frames from peers -------------------------------------------------

    def _ready(self) -> tuple[Replica, Peers]:
        if self.replica is None or self.peers is None:
            raise OSError("the pool change log is not open yet")
        return self.replica, self.peers

    def _on_change(self, peer: str, fields: dict[str, object]) -> None:
        part = check_part(fields)
        data = self._assembly.setdefault(peer, Assembly()).feed(part)
        if data is None:
            return
        change = Change.decode(data)
        if change.id != (part.origin, part.seq):
            raise WireError("the change is not the one its frames named")
        replica, _ = self._ready()
        verdict = replica.verdict(change)
        if verdict is Verdict.DUPLICATE:
            self._send_marks(peer)
            return
        if verdict is Verdict.WAIT:
            self._send_marks(peer, again=True)
            return
        try:
            self.file.append(data)
        except OSError as exc:
            log.error(
                "pool change {change} from {peer} not applied: cannot log it: {why}",
                change=change.describe(),
                peer=peer,
                why=str(exc),
            )
            return
        replica.commit(change)
        log.info("pool change from {peer}: {change}", peer=peer, change=change.describe())
        self.applier.apply(change, replica)
        self._send_marks()

    def _on_snapshot(self, peer: str, fields: dict[str, object]) -> None:
        part = check_part(fields, SNAPSHOT_FRAME)
        parts = self._snapshot_parts.setdefault(peer, Assembly(MAX_SNAPSHOT))
        data = parts.feed(part)
        if data is None:
            return
        snapshot = Snapshot.decode(data)
        replica, _ = self._ready()
        if not replica.lacks(snapshot):
            self._send_marks(peer)
            return
        if snapshot.base.get(replica.origin, 0) > replica.hw.get(replica.origin, 0):
            log.error(
                "pool snapshot from {peer} ignored: it claims changes of {origin} never made here",
                peer=peer,
                origin=replica.origin,
            )
            return
        merged = replica.merged(snapshot)
        after = [replica.encoded[c.id] for c in replica.after(merged)]
        try:
            self.file.rewrite(self.log_id, merged, after, fresh=True)
        except OSError as exc:
            log.error(
                "pool snapshot from {peer} not taken: cannot log it: {why}",
                peer=peer,
                why=str(exc),
            )
            return
        due = replica.install(snapshot)
        log.info(
            "pool change log caught up from {peer}'s snapshot of {count}; {due} took effect here",
            peer=peer,
            count=len(snapshot.winners),
            due=len(due),
        )
        self._catch_up(due)
        self._send_marks()

    def _catch_up(self, changes: list[Change]) -> None:
        """Carry out the winners a snapshot brought (each account once)."""
        replica, _ = self._ready()
        synced: set[str] = set()
        for change in changes:
            if change.kind in ACCOUNT_KINDS:
                account = change.text("account")
                if account in synced:
                    continue
                synced.add(account)
            self.applier.apply(change, replica)

    def _on_marks(self, peer: str, fields: dict[str, object]) -> None:
        marks, again = check_marks_frame(fields)
        _, peers = self._ready()
        self._send_due({peer: peers.marks(peer, marks, again)})
        for waiter in list(self._waiters):
            if all(peers.has(p, waiter.change_id) for p in self.link.peers if self.link_up(p)):
                self._finish(waiter)
        if self._followed:
            self._arrived()

    def _on_purge(self, peer: str, fields: dict[str, object]) -> None:
        request = check_purge(fields)
        done = self.applier.purge(request.account, request.uri)
        purged = done if isinstance(done, defer.Deferred) else defer.succeed(done)
        purged.addCallback(
            lambda count: self.link.send(peer, PURGED_FRAME, {"id": request.id, "purged": count})
        ).addErrback(lambda f: log.failure("pool purge not done", f))

    def _on_purged(self, peer: str, fields: dict[str, object]) -> None:
        request, purged = check_purged(fields)
        self._answered(peer, request, purged)

    def _on_wakeup(self, peer: str, fields: dict[str, object]) -> None:
        request = check_wakeup(fields)

        def answer(result: str) -> None:
            self.link.send(peer, WOKEN_FRAME, {"id": request.id, "result": result[:MAX_RESULT]})

        d = defer.ensureDeferred(self.applier.wake(request.account, request.uri))
        d.addCallback(answer)
        d.addErrback(lambda f: log.failure("pool wakeup for {peer} failed", f, peer=peer))

    def _on_woken(self, peer: str, fields: dict[str, object]) -> None:
        request, result = check_woken(fields)
        self._answered(peer, request, result)

    def _on_link(self, peer: str, up: bool) -> None:
        if self.peers is None:
            return
        self._assembly[peer] = Assembly()
        self._snapshot_parts.pop(peer, None)
        if up:
            self.peers.up(peer)
            self._send_marks(peer)
        else:
            self.peers.down(peer)
            for waiter in list(self._waiters):
                if all(
                    self.peers.has(p, waiter.change_id) for p in self.link.peers if self.link_up(p)
                ):
                    self._finish(waiter)

    # -- sending -------------------------------------------------------------

    def _send_marks(self, peer: str | None = None, again: bool = False) -> None:
        replica, peers = self._ready()
        targets = [peer] if peer is not None else sorted(peers.live)
        for target in targets:
            self.link.send(target, MARKS_FRAME, {"hw": dict(replica.hw), "again": again})

    def _send_due(self, due: Mapping[str, list[Change | Snapshot]]) -> None:
        replica, _ = self._ready()
        for peer, items in due.items():
            for item in items:
                if isinstance(item, Snapshot):
                    number, data = self._encoded(item)
                    frames = change_frames((replica.origin, number), data)
                    frame_type = SNAPSHOT_FRAME
                else:
                    frames = change_frames(item.id, replica.encoded[item.id])
                    frame_type = CHANGE_FRAME
                for fields in frames:
                    if not self.link.send(peer, frame_type, fields):
                        return

    def _encoded(self, snapshot: Snapshot) -> tuple[int, bytes]:
        """The snapshot's number (for its frames) and octets, made once."""
        if self._snapshot_sent is None or self._snapshot_sent[0] is not snapshot:
            self._snapshots += 1
            self._snapshot_sent = (snapshot, snapshot.encode(), self._snapshots)
        return self._snapshot_sent[2], self._snapshot_sent[1]

    def _resync(self) -> None:
        _, peers = self._ready()
        self._compact()
        self._send_marks()
        self._send_due(peers.resync())

    def _compact(self) -> None:
        """Fold what every member has applied into the snapshot, once it
        is at least :attr:`compact_after` changes."""
        replica, peers = self._ready()
        floor = peers.floor(self.link.peers)
        if floor is None or peers.foldable(floor) < max(1, self.compact_after):
            return
        snapshot = replica.compact(floor)
        if snapshot is None:
            return
        after = [replica.encoded[c.id] for c in replica.after(snapshot)]
        try:
            self.file.rewrite(self.log_id, snapshot, after, fresh=False)
        except OSError as exc:
            log.error("pool change log not compacted: {why}", why=str(exc))
            return
        folded = len(replica.log) - len(after)
        replica.fold(snapshot)
        log.info(
            "pool change log compacted: {folded} changes folded into a snapshot of {count};"
            " {left} left",
            folded=folded,
            count=len(snapshot.winners),
            left=len(after),
        )

    # -- answers -------------------------------------------------------------

    def _report(self, change_id: tuple[str, int], problems: list[str]) -> Report:
        _, peers = self._ready()
        applied = [self.me]
        pending = []
        for peer in self.link.peers:
            if peers.has(peer, change_id):
                applied.append(peer)
            else:
                pending.append((peer, "not confirmed yet" if self.link_up(peer) else "down"))
        return Report(tuple(applied), tuple(pending), tuple(problems))

    def _timeout(self) -> None:
        for waiter in list(self._waiters):
            if not waiter.timer.active():
                self._finish(waiter)

    def _finish(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if waiter.timer.active():
            waiter.timer.cancel()
        waiter.done.callback(None)


__all__ = ["PoolChanges"]
