"""The parent's view of its workers: the operator's commands, traces and
metrics for the whole instance (docs/workers.md).

With ``workers N`` the clients, their calls and their messages live in
the workers; the parent answers ``show attach``, ``show session``,
``show account``, ``purge client(s)``, ``trace`` and the client-side
metrics, and closes
the connections of clients of an account deleted or blacklisted, by asking
every worker on its socket (:mod:`cryptify.crs.workers.admin`) and
merging the answers, so that each command prints what one process
would print for the same clients, in the same format.

A worker gets :data:`ANSWER_WAIT` seconds to answer (connection
included); one that is not running, cannot be reached or is late is left
out and named in the answer's ``missing`` text (``crs-cli`` prints it on
standard error and exits 1): never a hang, never a crash.  A trace goes
on without it and tries again every :data:`TRACE_RETRY` seconds (a worker
that restarts is traced again once it is back).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp

from cryptify.protocols import crs_admin
from cryptify.protocols.crs_workers import (
    COUNTERS,
    ClientRules,
    Disconnect,
    WorkerCounters,
    WorkerHolds,
    WorkerSessions,
)
from cryptify.protocols.mgmt import ManagementClient, connect
from cryptify.reactor import IReactor
from cryptify.service import unix_endpoint

log = Logger(namespace="cryptify.crs.workers")
T = TypeVar("T")

#: The columns of a worker's ``show account`` row.
ACCOUNT_ROW = ("SERVER", "MODULE", "PID", "LOADED ACCOUNTS")
#: Seconds a worker has to answer one question, connection included.
ANSWER_WAIT = 3.0
#: Seconds between attempts to trace a worker again while a trace runs.
TRACE_RETRY = 2.0


class Opener(Protocol):
    """Opens a connection to worker ``index`` (trace lines to ``on_trace``)."""

    def __call__(
        self, index: int, on_trace: Callable[[str], None] | None
    ) -> defer.Deferred[ManagementClient]: ...


def unix_opener(reactor: IReactor, paths: Sequence[str]) -> Opener:
    """Connections to the workers' sockets ``paths`` (by index)."""

    def open_worker(
        index: int, on_trace: Callable[[str], None] | None
    ) -> defer.Deferred[ManagementClient]:
        endpoint = unix_endpoint(reactor, paths[index], ANSWER_WAIT)
        return defer.ensureDeferred(connect(endpoint, on_trace=on_trace))

    return open_worker


def close(client: ManagementClient) -> None:
    if client.transport is not None:
        client.transport.loseConnection()


@attrs.frozen
class Answers:
    """What the workers answered (index, answer), and who did not."""

    got: list[tuple[int, dict[str, Any]]]
    missing: list[int]

    def note(self, what: str) -> str | None:
        """``worker 2 did not answer: its clients are not listed`` (``what``
        says it of one worker: ``its clients are not listed``), or None."""
        if not self.missing:
            return None
        names = ", ".join(str(i + 1) for i in self.missing)
        if len(self.missing) == 1:
            return f"worker {names} did not answer: {what}"
        many = what.replace("its ", "their ").replace(" it answers", " they answer")
        return f"workers {names} did not answer: {many}"


def _text_rows(value: object) -> list[list[str]]:
    """The rows of a table in an answer (anything else: none)."""
    rows = value.get("rows") if isinstance(value, dict) else None
    if not isinstance(rows, list):
        return []
    return [[str(c) for c in row] for row in rows if isinstance(row, list)]


def merge_attach(answers: Answers) -> list[list[str]]:
    """``show attach`` rows of every worker, by URI as one process sorts them."""
    rows = [row for _, answer in answers.got for row in _text_rows(answer.get("table"))]
    return sorted(rows, key=lambda row: row[0] if row else "")


def merge_accounts(answers: Answers) -> list[list[str]]:
    """``show account`` rows of every worker, by worker: each worker's own
    row (SERVER MODULE PID LOADED ACCOUNTS) with MODULE ``app:attach/K``."""
    rows = []
    for index, answer in sorted(answers.got, key=lambda got: got[0]):
        for row in _text_rows(answer.get("table"))[:1]:
            if len(row) == len(ACCOUNT_ROW):
                rows.append([row[0], f"{row[1]}/{index + 1}", row[2], row[3]])
    return rows


def _keyed(value: object) -> list[tuple[float, list[str]]]:
    if not isinstance(value, list):
        return []
    found = []
    for row in value:
        if isinstance(row, list) and len(row) == 5 and isinstance(row[0], int | float):
            found.append((float(row[0]), [str(c) for c in row[1:]]))
    return found


def merge_sessions(answers: Answers) -> list[list[str]]:
    """``show session`` rows of every worker: the live calls by their start,
    then those that ended, by their end (as one process lists them)."""
    live: list[tuple[float, list[str]]] = []
    ended: list[tuple[float, list[str]]] = []
    for _, answer in answers.got:
        sessions = answer.get("sessions")
        if isinstance(sessions, dict):
            live += _keyed(sessions.get("live"))
            ended += _keyed(sessions.get("ended"))
    return [row for _, row in sorted(live, key=lambda k: k[0])] + [
        row for _, row in sorted(ended, key=lambda k: k[0])
    ]


def sum_counters(answers: Sequence[object]) -> dict[str, int]:
    """The sum of the workers' :class:`WorkerCounters` answers."""
    total = dict.fromkeys(COUNTERS, 0)
    for answer in answers:
        counters = answer.get("counters") if isinstance(answer, dict) else None
        if not isinstance(counters, dict):
            continue
        for name in COUNTERS:
            value = counters.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                total[name] += value
    return total


class WorkerViews:
    """Asks the instance's workers (``count`` of them, by index).

    ``running()``: (index, PID or None) of each worker, as the supervisor
    says (a worker not running is not asked: it is missing at once).
    """

    def __init__(
        self,
        clock: IReactorTime,
        count: int,
        opener: Opener,
        running: Callable[[], list[tuple[int, int | None]]] | None = None,
        wait: float = ANSWER_WAIT,
    ) -> None:
        self.clock = clock
        self.count = count
        self.opener = opener
        self.running = running
        self.wait = wait
        #: Questions a worker did not answer in time or at all, since the start.
        self.unanswered = 0

    def _up(self) -> set[int]:
        if self.running is None:
            return set(range(self.count))
        return {index for index, pid in self.running() if pid is not None}

    async def ask(self, command: type[amp.Command], **kwargs: object) -> Answers:
        """Ask every running worker ``command``; who answered what, who did not."""
        up = self._up()
        asked = [i for i in range(self.count) if i in up]
        results = await defer.DeferredList(
            [self.ask_one(i, command, **kwargs) for i in asked], consumeErrors=True
        )
        got = []
        missing = [i for i in range(self.count) if i not in up]
        for index, (ok, result) in zip(asked, results, strict=True):
            if ok and isinstance(result, dict):
                got.append((index, result))
            else:
                missing.append(index)
        return Answers(got, sorted(missing))

    def ask_one(
        self, index: int, command: type[amp.Command], **kwargs: object
    ) -> defer.Deferred[dict[str, Any]]:
        """Worker ``index``'s answer to ``command``, within :attr:`wait` seconds."""
        opened: list[ManagementClient] = []

        async def go() -> dict[str, Any]:
            client = await self.opener(index, None)
            opened.append(client)
            return await client.call(command, **kwargs)

        def done(result: T) -> T:
            for client in opened:
                close(client)
            return result

        def failed(failure: Any) -> Any:
            self.unanswered += 1
            log.warn(
                "worker {index} did not answer {command}: {why}",
                index=index + 1,
                command=command.__name__,
                why=failure.getErrorMessage() or type(failure.value).__name__,
            )
            return failure

        d = defer.ensureDeferred(go()).addTimeout(self.wait, self.clock)
        d.addBoth(done).addErrback(failed)
        return d

    # -- the operator's commands ----------------------------------------------------

    async def attach_rows(self) -> tuple[list[list[str]], str | None]:
        answers = await self.ask(crs_admin.ShowAttach)
        return merge_attach(answers), answers.note("its clients are not listed")

    async def session_rows(self) -> tuple[list[list[str]], str | None]:
        answers = await self.ask(WorkerSessions)
        return merge_sessions(answers), answers.note("its calls are not listed")

    async def account_rows(self) -> tuple[list[list[str]], str | None]:
        answers = await self.ask(crs_admin.ShowAccount)
        return merge_accounts(answers), answers.note("its accounts are not listed")

    async def purge(self, account: str, uri: str | None) -> tuple[int, str | None]:
        return await self.disconnect(account, uri, "purged")

    async def disconnect(
        self, account: str, uri: str | None, reason: str
    ) -> tuple[int, str | None]:
        """Every worker closes the matching clients' connections (``reason``:
        one of :data:`~cryptify.protocols.crs_workers.DISCONNECT_REASONS`)."""
        asked: dict[str, object] = {"account": account, "reason": reason}
        if uri is not None:
            asked["uri"] = uri
        answers = await self.ask(Disconnect, **asked)
        closed = 0
        for _, answer in answers.got:
            count = answer.get("disconnected")
            if isinstance(count, int):
                closed += count
        return closed, answers.note("its clients were not disconnected")

    async def clients(self) -> list[tuple[str, str]]:
        """(URI, account) of every client attached to a worker that answers."""
        rows, _ = await self.attach_rows()
        return [(row[0], row[1]) for row in rows if len(row) >= 2]

    async def holds(self, key: str) -> frozenset[str] | None:
        """In a pool: the URIs attached to the workers, when every running
        worker answered and follows the slot view ``key`` (a worker that is
        not running holds no client, and starts with no slot of its own);
        else None (the parent's sweep waits)."""
        up = self._up()
        answers = await self.ask(WorkerHolds)
        if any(index in up for index in answers.missing):
            return None
        uris: set[str] = set()
        for _, answer in answers.got:
            holds = answer.get("holds")
            if not isinstance(holds, dict) or holds.get("view") != key:
                return None
            found = holds.get("uris")
            if not isinstance(found, list):
                return None
            uris.update(str(u) for u in found)
        return frozenset(uris)

    async def trace(
        self, element: str, push: Callable[[str], None]
    ) -> tuple[Callable[[], None], str | None]:
        """Trace ``element`` in every worker, lines to ``push``; the stop, and
        which workers are not traced yet (they are tried again)."""
        trace = WorkerTrace(self, element, push)
        missing = await trace.start()
        note = Answers([], missing).note("its events are not traced until it answers")
        return trace.stop, note

    def send_rules(self, rules: dict[str, object]) -> defer.Deferred[None]:
        """Give every running worker a reload's client rules (a worker that
        misses them is named in crs.log; it takes them when it restarts)."""

        def sent(answers: Answers) -> None:
            note = answers.note("it keeps its client rules until it restarts")
            if note is not None:
                log.warn("client rules after the reload: {note}", note=note)

        return defer.ensureDeferred(self.ask(ClientRules, rules=rules)).addCallback(sent)

    def counters_of(self, index: int) -> Callable[[], defer.Deferred[dict[str, Any]]]:
        """A metrics query: worker ``index``'s counters."""
        return lambda: self.ask_one(index, WorkerCounters)


class WorkerTrace:
    """One operator's trace across the workers: a connection to each that
    streams its lines, opened again while the trace lasts when a worker
    did not answer or went away."""

    def __init__(self, views: WorkerViews, element: str, push: Callable[[str], None]) -> None:
        self.views = views
        self.element = element
        self.push = push
        self.clients: dict[int, ManagementClient] = {}
        self.retries: dict[int, IDelayedCall] = {}
        self.stopped = False

    async def start(self) -> list[int]:
        """Open every worker's trace; the workers not traced (yet)."""
        results = await defer.DeferredList(
            [self._open(i) for i in range(self.views.count)], consumeErrors=True
        )
        return [i for i, (ok, _) in enumerate(results) if not ok]

    def _open(self, index: int) -> defer.Deferred[None]:
        opened: list[ManagementClient] = []

        async def go() -> None:
            client = await self.views.opener(index, self.push)
            opened.append(client)
            await client.call(crs_admin.Trace, element=self.element)

        def traced(_: object) -> None:
            [client] = opened
            if self.stopped:
                close(client)
                return
            self.clients[index] = client
            client.lost.addCallback(lambda _: self._lost(index, client))

        def failed(failure: Any) -> Any:
            for client in opened:
                close(client)
            self._again_later(index)
            return failure

        d = defer.ensureDeferred(go()).addTimeout(self.views.wait, self.views.clock)
        return d.addCallbacks(traced, failed)

    def _lost(self, index: int, client: ManagementClient) -> None:
        if self.clients.get(index) is client:
            del self.clients[index]
            if not self.stopped:
                log.info("worker {index} left the trace; tracing it again", index=index + 1)
                self._again_later(index)

    def _again_later(self, index: int) -> None:
        if self.stopped or index in self.retries:
            return
        self.retries[index] = self.views.clock.callLater(TRACE_RETRY, self._again, index)

    def _again(self, index: int) -> None:
        del self.retries[index]
        self._open(index).addErrback(lambda _: None)

    def stop(self) -> None:
        """The operator's trace ended: close every worker's."""
        self.stopped = True
        for call in self.retries.values():
            if call.active():
                call.cancel()
        self.retries.clear()
        clients, self.clients = self.clients, {}
        for client in clients.values():
            close(client)
