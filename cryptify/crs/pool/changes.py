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
- ``purge client|clients`` is not logged (an instance that is down has no
  clients: they are attached elsewhere): :meth:`PoolChanges.purge` asks
  the live peers (``pool-purge``) and adds up their answers; likewise
  ``wakeup client`` for a client whose push token another member keeps
  (:meth:`PoolChanges.wake`, ``pool-wakeup``).

What a change does to this instance (its accounts, blacklists, admins) is
the :class:`Applier`'s job; :class:`StateApplier` does it on the running
CRS's state.  After a restart the last logged change is applied again (a
crash may have cut it between the log and the store; applying is
idempotent).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cryptify.crs.accounts import AccountError
from cryptify.crs.interwork.peers import IwPeerError
from cryptify.crs.operator.state import CrsState
from cryptify.crs.pool.changes_core import (
    CHANGE_FRAME,
    MARKS_FRAME,
    MAX_RESULT,
    PURGE_FRAME,
    PURGED_FRAME,
    WAKEUP_FRAME,
    WOKEN_FRAME,
    Assembly,
    Change,
    Kind,
    Peers,
    Replica,
    Report,
    Verdict,
    change_frames,
    check_marks_frame,
    check_part,
    check_purge,
    check_purged,
    check_wakeup,
    check_woken,
    decode_records,
    encode_record,
    outcome,
)
from cryptify.crs.pool.wire import WireError
from cryptify.crs.remote_admin.store import AdminError
from cryptify.crypto.identity import period_of
from cryptify.protocols import cbor_subset
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
#: Largest change log read at start.
MAX_LOG_BYTES = 1024 * 1024 * 1024


class Link(Protocol):
    """What this module needs of :class:`~cryptify.crs.pool.wiring.PoolLink`."""

    me: str
    peers: tuple[str, ...]

    def handle(
        self, frame_type: str, handler: Callable[[str, dict[str, object]], None]
    ) -> None: ...

    def send(self, peer: str, frame_type: str, fields: dict[str, object]) -> bool: ...

    def on_link(self, listener: Callable[[str, bool], None]) -> None: ...

    def link_up(self, peer: str) -> bool: ...


class Applier(Protocol):
    """Does what a change means on this instance."""

    def apply(self, change: Change, replica: Replica) -> list[str]:
        """Carry out ``change`` (already committed to ``replica``); return
        the problems met (also logged); never raises."""

    def purge(self, account: str, uri: str | None) -> int:
        """Disconnect the account's clients here (one URI's or all); how many."""

    async def wake(self, account: str, uri: str) -> str:
        """Send a wake-up to ``uri`` from here; what happened."""


class ChangeLog:
    """The durable change log file: a header naming the log's identity,
    then one record per change (length, CRC-32, CBOR), each fsync'ed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def open(self, now: float) -> tuple[int, list[Change]]:
        """The log's identity and its changes; a new log if there is none.
        A record cut by a crash at the end is cut off; anything else
        unreadable stops the start."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_LOG_BYTES + 1)
        except FileNotFoundError:
            data = b""
        if len(data) > MAX_LOG_BYTES:
            raise StartupError(f"{self.path} is larger than {MAX_LOG_BYTES} octets")
        records, used = decode_records(data)
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        if not records:
            if data:
                log.warn(
                    "{path}: no whole record in its {size} octets (a crash while it was"
                    " made): starting a new change log",
                    path=self.path,
                    size=len(data),
                )
            log_id = int(now * 1_000_000)
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600
            )
            os.fchmod(self._fd, 0o600)
            self.append(cbor_subset.encode({"log": log_id}))
            dir_fd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            return log_id, []
        try:
            header = cbor_subset.decode(records[0])
            if not isinstance(header, dict) or set(header) != {"log"}:
                raise WireError("no log header")
            log_id = header["log"]
            if type(log_id) is not int or log_id < 0:
                raise WireError("bad log identity")
            changes = [Change.decode(r) for r in records[1:]]
        except (WireError, cbor_subset.CborError) as exc:
            raise StartupError(f"{self.path}: not a change log ({exc})") from None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        os.fchmod(self._fd, 0o600)
        if used < len(data):
            log.warn(
                "{path}: {cut} octets after the last whole record cut off (a crash mid-write)",
                path=self.path,
                cut=len(data) - used,
            )
            os.ftruncate(self._fd, used)
            os.fsync(self._fd)
        return log_id, changes

    def append(self, payload: bytes) -> None:
        """Write one record and fsync it; OSError when it could not be."""
        if self._fd is None:
            raise OSError("the change log is not open")
        record = encode_record(payload)
        written = 0
        while written < len(record):
            written += os.write(self._fd, record[written:])
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.link = link
        self.me = link.me
        self.reactor = reactor
        self.applier = applier
        self.wall = wall
        self.file = ChangeLog(os.path.join(data_dir, LOG_FILE))
        self.replica: Replica | None = None
        self.peers: Peers | None = None
        self._assembly: dict[str, Assembly] = {p: Assembly() for p in link.peers}
        self._waiters: list[_Waiter] = []
        #: Requests to the live peers (purge, wakeup): id -> (answers, done, asked).
        self._requests: dict[int, tuple[dict[str, object], defer.Deferred[None], set[str]]] = {}
        self._next_request = 1
        self._loop = LoopingCall(self._resync)
        self._loop.clock = reactor
        link.handle(CHANGE_FRAME, self._on_change)
        link.handle(MARKS_FRAME, self._on_marks)
        link.handle(PURGE_FRAME, self._on_purge)
        link.handle(PURGED_FRAME, self._on_purged)
        link.handle(WAKEUP_FRAME, self._on_wakeup)
        link.handle(WOKEN_FRAME, self._on_woken)
        link.on_link(self._on_link)

    # -- lifecycle -------------------------------------------------------

    def startService(self) -> None:
        try:
            log_id, changes = self.file.open(self.wall())
        except OSError as exc:
            raise StartupError(f"pool changes: cannot open {self.file.path}: {exc}") from exc
        self.replica = Replica(self.me, log_id, changes)
        self.peers = Peers(self.replica)
        log.info(
            "pool change log {origin}: {count} changes",
            origin=self.replica.origin,
            count=len(changes),
        )
        if changes:
            # a crash may have cut the last one between the log and the store
            self.applier.apply(changes[-1], self.replica)
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
        return self._report(change.id, problems)

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
        for peer in self.link.peers:
            state = "up" if self.link_up(peer) else "down"
            reported = self.peers.reported.get(peer)
            if reported is None:
                parts.append(f"{peer} not heard from ({state})")
                continue
            lacking = len(self.replica.missing(reported))
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

    def _on_marks(self, peer: str, fields: dict[str, object]) -> None:
        marks, again = check_marks_frame(fields)
        _, peers = self._ready()
        self._send_due({peer: peers.marks(peer, marks, again)})
        for waiter in list(self._waiters):
            if all(peers.has(p, waiter.change_id) for p in self.link.peers if self.link_up(p)):
                self._finish(waiter)

    def _on_purge(self, peer: str, fields: dict[str, object]) -> None:
        request = check_purge(fields)
        purged = self.applier.purge(request.account, request.uri)
        self.link.send(peer, PURGED_FRAME, {"id": request.id, "purged": purged})

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

    def _send_due(self, due: Mapping[str, list[Change]]) -> None:
        replica, _ = self._ready()
        for peer, changes in due.items():
            for change in changes:
                for fields in change_frames(change.id, replica.encoded[change.id]):
                    if not self.link.send(peer, CHANGE_FRAME, fields):
                        return

    def _resync(self) -> None:
        _, peers = self._ready()
        self._send_marks()
        self._send_due(peers.resync())

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


class StateApplier:
    """What changes do to the running CRS: its accounts, blacklists and
    remote admins (the same effects as the ``crs-cli`` commands have on
    one instance)."""

    def __init__(self, state: CrsState) -> None:
        self.state = state

    def apply(self, change: Change, replica: Replica) -> list[str]:
        try:
            problems = self._apply(change, replica)
        except Exception as exc:  # one change must never stop the link
            log.failure("pool change {change} failed", change=change.describe())
            problems = [f"unexpected {type(exc).__name__} (see the log)"]
        for problem in problems:
            log.warn("pool change {change}: {problem}", change=change.describe(), problem=problem)
        return problems

    def _apply(self, change: Change, replica: Replica) -> list[str]:
        kind = change.kind
        if kind in (
            Kind.ACCOUNT_CREATE,
            Kind.ACCOUNT_DELETE,
            Kind.BLACKLIST_ADD,
            Kind.BLACKLIST_REMOVE,
        ):
            return self.sync_account(change.text("account"), replica)
        if kind is Kind.APPLY:
            try:
                self.state.accounts.apply(change.octets("data"))
            except (AccountError, OSError) as exc:
                return [str(exc)]
            self.state.notify("crs", "reload")
            self.enforce_blacklists()
            return []
        if kind is Kind.RELOAD:
            problems = self.state.accounts.reload()
            if self.state.admins is not None:
                admins_problem = self.state.admins.load()
                if admins_problem is not None:
                    problems.append(admins_problem)
            self.state.notify("crs", "reload")
            self.enforce_blacklists()
            return problems
        if kind in (Kind.IW_ADD, Kind.IW_DELETE):
            return self._iw(change)
        return self._admin(change)

    def _iw(self, change: Change) -> list[str]:
        """``add|delete iw-crs``: this member's iw-crs.conf, and its link."""
        peers = self.state.iw
        if peers is None:
            return ["inter-working is not available here"]
        try:
            if change.kind is Kind.IW_ADD:
                peers.add(change.text("ip"), change.text("secret"), change.text("comment"))
            else:
                peers.delete(change.text("ip"))
        except (IwPeerError, OSError) as exc:
            return [str(exc)]
        return []

    def _admin(self, change: Change) -> list[str]:
        admins = self.state.admins
        if admins is None:
            return ["remote admins are not available here"]
        name = change.text("name")
        kind = change.kind
        existing = admins.get(name)
        # each is skipped when already so (the change applied again after a restart)
        try:
            if kind is Kind.ADMIN_CREATE:
                key = change.octets("key")
                if existing is not None and existing.key == key:
                    return []
                if existing is not None:
                    admins.delete(name)
                admins.create(name, key)
            elif kind is Kind.ADMIN_DELETE:
                if existing is not None:
                    admins.delete(name)
            elif kind in (Kind.ADMIN_ACCOUNT_ADD, Kind.ADMIN_ACCOUNT_DELETE):
                account = change.text("account")
                adding = kind is Kind.ADMIN_ACCOUNT_ADD
                if existing is not None and (account in existing.accounts) == adding:
                    return []
                if adding:
                    admins.add_account(name, account)
                else:
                    admins.delete_account(name, account)
            else:
                account, right = change.text("account"), change.text("authorization")
                adding = kind is Kind.ADMIN_AUTH_ADD
                granted = None if existing is None else existing.accounts.get(account)
                if granted is not None and (right in granted) == adding:
                    return []
                if adding:
                    admins.add_authorization(name, account, right)
                else:
                    admins.delete_authorization(name, account, right)
        except AdminError as exc:
            return [str(exc)]
        return []

    def sync_account(self, account: str, replica: Replica) -> list[str]:
        """Make this instance's account what the pool's changes say."""
        plan = replica.account_plan(account)
        store = self.state.accounts
        have = store.get(account)
        want = outcome(plan, None if have is None else (have.secret, have.blacklist))
        problems: list[str] = []
        try:
            if want is None:
                if have is not None:
                    self.delete_account(account)
                return []
            secret, blacklist = want
            if have is None:
                have = store.create(account, secret)
            elif have.secret != secret:
                have = store.set_secret(account, secret)
            for uri in sorted(blacklist - have.blacklist):
                store.set_blacklisted(account, uri, True)
            for uri in sorted(have.blacklist - blacklist):
                store.set_blacklisted(account, uri, False)
        except (AccountError, OSError) as exc:
            problems.append(str(exc))
        self.enforce_blacklists()
        return problems

    def delete_account(self, account: str) -> None:
        state = self.state
        registry = state.registry
        gone = registry.disconnect(registry.matching(account=account), "account deleted")
        if state.objects is not None:
            objects = state.objects

            async def purge() -> None:
                await objects.purge_account(account)
                await objects.purge_observed(account)

            defer.ensureDeferred(purge()).addErrback(
                lambda f: log.failure("objects of deleted account {a} not purged", f, a=account)
            )
        state.accounts.delete(account)
        if state.admins is not None:
            try:
                state.admins.forget_account(account)
            except AdminError as exc:
                log.warn("account {a} deleted, but: {why}", a=account, why=str(exc))
        log.info("account {a} deleted by the pool; {n} clients disconnected", a=account, n=gone)

    def enforce_blacklists(self) -> int:
        state = self.state
        period = period_of(state.clock())
        listed = []
        for attachment in state.registry.matching():
            found = state.accounts.get(attachment.account)
            if found is not None and found.blacklisted(attachment.uri, period):
                listed.append(attachment)
        return int(state.registry.disconnect(listed, "blacklisted")) if listed else 0

    async def wake(self, account: str, uri: str) -> str:
        push = self.state.push
        if push is None:
            return "push notifications are off"
        try:
            return str(await push.wake(account, uri))
        except Exception as exc:
            return f"the push token store does not answer: {type(exc).__name__}"

    def purge(self, account: str, uri: str | None) -> int:
        registry = self.state.registry
        if uri is None:
            matches = registry.matching(account=account)
        else:
            matches = registry.matching(account=account, uri=uri)
        return int(registry.disconnect(matches, "purged")) if matches else 0


__all__ = ["ChangeLog", "PoolChanges", "StateApplier"]
