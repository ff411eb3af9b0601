"""The parent's side of ``workers N``: it runs N worker processes and
restarts one that dies.

Each worker is ``python -m cryptify.plugins._crs_workers INDEX``; it reads
what to serve (the parsed configuration, pickled) from its standard input
until end of file, and writes its crs.log lines to its standard output,
which the parent copies into crs.log, so the file has one writer.  What a
worker writes on standard error is logged as a warning.

A worker that exits while the parent runs is started again after a delay
(:class:`Backoff`: 0.5 s, doubled per exit in a row up to 30 s; a worker
that ran a minute starts over at 0.5 s).  Its clients lose their
connection and attach again (to any worker); what they had posted and
was answered ``posted`` is in the durable store.  On stop every worker
is sent SIGTERM (it closes its client port and tells its clients the CRS
is shutting down) and SIGKILL if it has not exited after
:data:`STOP_GRACE` seconds.

Lifecycle of one worker (:class:`Worker`)::

    starting --spawned--> running --exited--> waiting --delay over--> starting
                          running --stop--> stopping --exited--> stopped
                          waiting --stop--> stopped
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Literal

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.reactor import IReactor

log = Logger(namespace="cryptify.crs.workers")

#: Seconds a stopping worker has before SIGKILL.
STOP_GRACE = 10.0
#: The module a worker runs.
WORKER_MODULE = "cryptify.plugins._crs_workers"
#: Longest line a worker may write before it is cut (a runaway log line).
MAX_LINE = 64 * 1024

State = Literal["starting", "running", "waiting", "stopping", "stopped"]


@attrs.frozen
class Backoff:
    """When to start a worker again after it exited (sans-IO)."""

    first: float = 0.5
    most: float = 30.0
    #: A worker that ran this long counts as healthy: the next delay is ``first``.
    steady: float = 60.0

    def delay(self, exits_in_a_row: int, ran_for: float) -> tuple[float, int]:
        """(seconds to wait, exits in a row counting this one)."""
        exits = 1 if ran_for >= self.steady else exits_in_a_row + 1
        return min(self.first * (2 ** min(exits - 1, 16)), self.most), exits


def worker_command(index: int) -> list[str]:
    """The command line of worker ``index``."""
    return [sys.executable, "-m", WORKER_MODULE, str(index), str(os.getpid())]


@attrs.define(eq=False)
class Worker:
    """One worker process: its state, PID and restart count."""

    index: int
    state: State = "starting"
    pid: int | None = None
    started: float = 0.0
    exits: int = 0
    transport: IProcessTransport | None = None
    restart: IDelayedCall | None = None
    kill: IDelayedCall | None = None
    ended: defer.Deferred[None] | None = None


class _WorkerProtocol(ProcessProtocol):
    """Feeds a worker its payload and copies its output."""

    def __init__(self, supervisor: WorkerSupervisor, worker: Worker) -> None:
        self.supervisor = supervisor
        self.worker = worker
        self.out = b""
        self.err = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.supervisor.payload())
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out = self._lines(self.out + data, self.supervisor.write_log)

    def errReceived(self, data: bytes) -> None:
        self.err = self._lines(self.err + data, self._warn)

    def _warn(self, line: str) -> None:
        log.warn("worker {index}: {line}", index=self.worker.index, line=line.rstrip("\n"))

    def _lines(self, buffered: bytes, write: Callable[[str], None]) -> bytes:
        *lines, rest = buffered.split(b"\n")
        for line in lines:
            write(line.decode("utf-8", "replace") + "\n")
        if len(rest) > MAX_LINE:
            write(rest.decode("utf-8", "replace") + "\n")
            return b""
        return rest

    def processEnded(self, reason: Failure) -> None:
        for rest, write in ((self.out, self.supervisor.write_log), (self.err, self._warn)):
            if rest:
                write(rest.decode("utf-8", "replace") + "\n")
        self.supervisor.exited(self.worker, reason)


class WorkerSupervisor(service.Service):
    """Runs ``count`` workers while running; see the module docstring.

    ``payload()``: the bytes each worker reads on its standard input;
    ``write_log(line)``: where a worker's crs.log lines go; ``command``:
    a worker's command line by index.
    """

    def __init__(
        self,
        reactor: IReactor,
        count: int,
        payload: Callable[[], bytes],
        write_log: Callable[[str], None],
        command: Callable[[int], Sequence[str]] = worker_command,
        backoff: Backoff = Backoff(),
    ) -> None:
        self.reactor = reactor
        self.payload = payload
        self.write_log = write_log
        self.command = command
        self.backoff = backoff
        self.workers = [Worker(i, state="stopped") for i in range(count)]
        #: Workers started again after an exit, since the start.
        self.restarts = 0
        #: Called with a worker's index when it exits while running.
        self.on_exit: list[Callable[[int], object]] = []

    def rows(self) -> list[tuple[int, int | None]]:
        """(index, PID or None while not running) of each worker."""
        return [(w.index, w.pid if w.state == "running" else None) for w in self.workers]

    def status(self) -> bool | str:
        """``show services``: active when every worker runs, else how many do."""
        running = sum(1 for w in self.workers if w.state == "running")
        if running == len(self.workers):
            return True
        return f"inactive ({running} of {len(self.workers)} running)"

    def startService(self) -> None:
        service.Service.startService(self)
        for worker in self.workers:
            worker.exits = 0
            self._spawn(worker)

    def _spawn(self, worker: Worker) -> None:
        worker.restart = None
        worker.state = "starting"
        args = list(self.command(worker.index))
        transport = self.reactor.spawnProcess(
            _WorkerProtocol(self, worker),
            args[0],
            args,
            env=dict(os.environ),
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        worker.transport = transport
        worker.pid = transport.pid
        worker.started = self.reactor.seconds()
        worker.state = "running"
        log.info("worker {index} started, PID {pid}", index=worker.index, pid=worker.pid)

    def exited(self, worker: Worker, reason: Failure) -> None:
        """Worker ``worker``'s process ended (``reason`` says how)."""
        pid, worker.pid, worker.transport = worker.pid, None, None
        if worker.kill is not None and worker.kill.active():
            worker.kill.cancel()
        worker.kill = None
        if worker.state == "stopping" or not self.running:
            worker.state = "stopped"
            ended, worker.ended = worker.ended, None
            if ended is not None:
                ended.callback(None)
            return
        for hook in self.on_exit:
            hook(worker.index)
        ran_for = self.reactor.seconds() - worker.started
        delay, worker.exits = self.backoff.delay(worker.exits, ran_for)
        log.warn(
            "worker {index} (PID {pid}) exited: {why}; starting it again in {delay} s",
            index=worker.index,
            pid=pid,
            why=reason.getErrorMessage(),
            delay=delay,
        )
        worker.state = "waiting"
        self.restarts += 1
        worker.restart = self.reactor.callLater(delay, self._spawn, worker)

    def stopService(self) -> defer.Deferred[object]:
        service.Service.stopService(self)
        waits: list[defer.Deferred[None]] = []
        for worker in self.workers:
            if worker.state == "waiting":
                if worker.restart is not None and worker.restart.active():
                    worker.restart.cancel()
                worker.restart = None
                worker.state = "stopped"
            elif worker.state == "running" and worker.transport is not None:
                worker.state = "stopping"
                worker.ended = defer.Deferred()
                waits.append(worker.ended)
                self._signal(worker, "TERM")
                worker.kill = self.reactor.callLater(STOP_GRACE, self._signal, worker, "KILL")
        done = defer.DeferredList(waits)
        return done.addCallback(lambda _: None)

    def _signal(self, worker: Worker, name: str) -> None:
        if worker.transport is None:
            return
        try:
            worker.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass
