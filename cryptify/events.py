"""System events and the operator's notification script.

On every system event (a service starts or stops, a Redis child goes down
or comes back, the configuration is reloaded, a peer link goes down or up)
the servers run ``notify.sh UNIT EVENT``.  The shipped script logs the event
to syslog; operators add their own integration (SNMP traps, ...).

The script runs as a child process, one at a time and in order, so a
``down`` is always delivered before the ``up`` that follows it.  It can
never block the service: a script that runs longer than its time limit is
killed, and a failing or hanging script is logged and forgotten.
"""

from __future__ import annotations

import os
from collections import deque

from twisted.internet import error, protocol
from twisted.internet.interfaces import IDelayedCall, IProcessTransport, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.reactor import IReactor

log = Logger(namespace="cryptify.notify")

#: Default time a notification may take before it is killed.
NOTIFY_TIMEOUT = 10.0
#: Events kept waiting while a slow script runs; older ones are dropped.
MAX_PENDING = 200


class _NotifyProcess(protocol.ProcessProtocol):
    def __init__(self, notifier: Notifier, unit: str, event: str) -> None:
        self.notifier = notifier
        self.unit = unit
        self.event = event
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-2048:]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.notifier._ended(self, reason)


class Notifier:
    """Run ``SCRIPT UNIT EVENT`` for each system event, serially, time-limited."""

    def __init__(
        self,
        reactor: IReactor,
        script: str | None,
        timeout: float = NOTIFY_TIMEOUT,
        env: dict[str, str] | None = None,
    ) -> None:
        self.reactor = reactor
        self.script = script
        self.timeout = timeout
        self.env = env
        self.pending: deque[tuple[str, str]] = deque()
        self.running: _NotifyProcess | None = None
        self.transport: IProcessTransport | None = None
        self.deadline: IDelayedCall | None = None
        self.delivered = 0
        self.failed = 0

    def notify(self, unit: str, event: str) -> None:
        """Queue one event for the script; never raises, never blocks."""
        log.info("system event: {unit} {event}", unit=unit, event=event)
        if not self.script:
            return
        if len(self.pending) >= MAX_PENDING:
            dropped = self.pending.popleft()
            log.warn(
                "notify.sh is behind; dropped event {unit} {event}",
                unit=dropped[0],
                event=dropped[1],
            )
        self.pending.append((unit, event))
        self._next()

    def _next(self) -> None:
        if self.running is not None or not self.pending or self.script is None:
            return
        unit, event = self.pending.popleft()
        proc = _NotifyProcess(self, unit, event)
        env = dict(os.environ) if self.env is None else dict(self.env)
        try:
            self.transport = self.reactor.spawnProcess(
                proc, self.script, [self.script, unit, event], env=env
            )
        except Exception as exc:  # a missing or unrunnable script
            self.failed += 1
            log.warn(
                "cannot run notify script {script}: {error}", script=self.script, error=str(exc)
            )
            self._next()
            return
        self.running = proc
        clock: IReactorTime = self.reactor
        self.deadline = clock.callLater(self.timeout, self._expire, proc)

    def _expire(self, proc: _NotifyProcess) -> None:
        self.deadline = None
        if self.running is not proc or self.transport is None:
            return
        log.warn(
            "notify script {script} {unit} {event} took longer than {timeout}s; killed",
            script=self.script,
            unit=proc.unit,
            event=proc.event,
            timeout=self.timeout,
        )
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    def _ended(self, proc: _NotifyProcess, reason: Failure) -> None:
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None
        if reason.check(error.ProcessDone):
            self.delivered += 1
        else:
            self.failed += 1
            log.warn(
                "notify script {script} {unit} {event} failed: {why}; output: {output}",
                script=self.script,
                unit=proc.unit,
                event=proc.event,
                why=reason.getErrorMessage(),
                output=proc.output.decode("utf-8", "replace").strip(),
            )
        self.running = None
        self.transport = None
        self._next()

    @property
    def idle(self) -> bool:
        """No script running and none waiting."""
        return self.running is None and not self.pending
