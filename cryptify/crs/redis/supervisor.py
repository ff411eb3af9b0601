"""
The Redis supervisor: runs the CRS's Redis servers as its children.

L{RedisSupervisor} writes each instance's redis.conf
(:mod:`cryptify.crs.redis.instance`), starts the children, waits until
each answers PING, restarts one that dies (with backoff, reporting
``down``/``up`` through the injected C{notify}) and stops them all on
C{stopService}.
"""

from __future__ import annotations

import enum
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IProtocol,
    IReactorProcess,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.crs.redis.instance import RedisInstance, write_conf
from cryptify.reactor import IReactor

SECOND = 1.0
MINUTE = 60 * SECOND

#: first restart delay; doubles with each failed restart
RESTART_FIRST_DELAY = 1 * SECOND
#: restart delays never exceed this
RESTART_MAX_DELAY = 30 * SECOND
#: a child that stays up this long gets its backoff reset
STABLE_AFTER = 1 * MINUTE
#: how long a (re)started child has to answer PING
START_TIMEOUT = 10 * SECOND
#: how often PING is retried while a child starts
PROBE_INTERVAL = 0.1 * SECOND
#: how long one PING may take
PROBE_TIMEOUT = 1 * SECOND
#: how long a child has to exit after SIGTERM before it gets SIGKILL
STOP_TIMEOUT = 10 * SECOND
log = Logger(namespace="cryptify.crs.redis")


Notify = Callable[[str, str], None]


class RedisStartError(Exception):
    """A supervised Redis server could not be started."""


def restart_delay(failures: int) -> float:
    """Seconds to wait before restarting a child that has failed C{failures} times in a row."""
    return min(RESTART_FIRST_DELAY * (1 << min(failures, 16)), RESTART_MAX_DELAY)


#: answers when the instance answers PING (with its password), fails otherwise
Probe = Callable[[RedisInstance], "Deferred[None]"]


def _resp(*words: bytes) -> bytes:
    out = [b"*%d\r\n" % len(words)]
    for word in words:
        out.append(b"$%d\r\n%s\r\n" % (len(word), word))
    return b"".join(out)


class _PingProtocol(Protocol):
    def __init__(self, password: str, done: Deferred[None]) -> None:
        self._password = password
        self._done = done
        self._buffer = b""

    @property
    def _transport(self) -> ITransport:
        assert self.transport is not None  # connected: called from connectionMade on
        return self.transport

    def connectionMade(self) -> None:
        if self._done.called:
            self._transport.loseConnection()
            return
        self._transport.write(_resp(b"AUTH", self._password.encode()) + _resp(b"PING"))

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        lines = self._buffer.split(b"\r\n")
        if len(lines) < 3 and not lines[0].startswith(b"-"):
            return
        self._transport.loseConnection()
        if self._done.called:
            return
        if lines[0] == b"+OK" and lines[1] == b"+PONG":
            self._done.callback(None)
        else:
            answer = lines[1] if lines[0] == b"+OK" else lines[0]
            self._done.errback(ConnectionError(answer.decode(errors="replace")))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._done.called:
            self._done.errback(reason)


def ping_probe(reactor: IReactor) -> Probe:
    """A L{Probe} connecting with C{reactor}, which must also do TCP and UNIX."""

    def probe(instance: RedisInstance) -> Deferred[None]:
        protocols: list[_PingProtocol] = []

        def cancel(_: Deferred[None]) -> None:
            connecting.cancel()
            for p in protocols:
                transport = p.transport
                if transport is not None:
                    transport.loseConnection()

        done: Deferred[None] = Deferred(cancel)

        def build() -> _PingProtocol:
            protocols.append(_PingProtocol(instance.password, done))
            return protocols[-1]

        endpoint: IStreamClientEndpoint
        if instance.unix_socket is not None:
            endpoint = UNIXClientEndpoint(reactor, str(instance.unix_socket), timeout=1)
        else:
            assert instance.port is not None
            endpoint = TCP4ClientEndpoint(reactor, instance.host, instance.port, timeout=1)
        connecting: Deferred[IProtocol] = endpoint.connect(Factory.forProtocol(build))
        connecting.addErrback(lambda f: None if done.called else done.errback(f))
        done.addTimeout(PROBE_TIMEOUT, reactor)
        return done

    return probe


class ChildState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"


class _ChildProtocol(ProcessProtocol):
    """Keeps the tail of the child's output and reports its exit."""

    TAIL = 4096

    def __init__(self, child: RedisChild) -> None:
        self._child = child
        self.output = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output = (self.output + data)[-self.TAIL :]

    def processEnded(self, reason: Failure) -> None:
        self._child._exited(self, reason)


@attrs.define(eq=False)
class RedisChild:
    """
    The lifecycle of one supervised redis-server process.

    stopped -start-> starting -PONG-> running -exit-> backoff -timer-> starting;
    starting -exit/timeout-> backoff (or start failure the first time);
    any -stop-> stopping (SIGTERM, SIGKILL after STOP_TIMEOUT) -exit-> stopped.
    """

    instance: RedisInstance
    argv: list[str]
    process_reactor: IReactorProcess
    clock: IReactorTime
    probe: Probe
    notify: Notify
    start_timeout: float = START_TIMEOUT
    stop_timeout: float = STOP_TIMEOUT

    state: ChildState = ChildState.STOPPED
    failures: int = 0
    _transport: IProcessTransport | None = None
    _protocol: _ChildProtocol | None = None
    _started: Deferred[None] | None = None
    _stopped: list[Deferred[None]] = attrs.Factory(list)
    _timer: IDelayedCall | None = None
    _stable: IDelayedCall | None = None
    _kill: IDelayedCall | None = None
    _probing: Deferred[None] | None = None
    _deadline: float = 0.0
    _spawned_pid: int | None = None
    _timed_out: bool = False

    @property
    def name(self) -> str:
        return self.instance.name

    @property
    def pid(self) -> int | None:
        if self._transport is None:
            return None
        pid: int | None = self._transport.pid
        return pid

    def start(self) -> Deferred[None]:
        """Spawn the child; fires once it answers PING, fails with L{RedisStartError}."""
        assert self.state is ChildState.STOPPED
        self._started = Deferred()
        started = self._started
        self._spawn()
        return started

    def stop(self) -> Deferred[None]:
        """SIGTERM the child (SIGKILL later); fires once no process is left."""
        self._cancel_timers()
        self._fail_start(RedisStartError(f"{self.name}: stopped while starting"))
        if self._transport is None:
            self.state = ChildState.STOPPED
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._stopped.append(d)
        if self.state is not ChildState.STOPPING:
            self.state = ChildState.STOPPING
            self._signal("TERM")
            self._kill = self.clock.callLater(self.stop_timeout, self._force_kill)
        return d

    def _spawn(self) -> None:
        self.state = ChildState.STARTING
        self._timed_out = False
        protocol = _ChildProtocol(self)
        try:
            write_conf(self.instance)
            self._transport = self.process_reactor.spawnProcess(
                protocol, self.argv[0], self.argv, env={}, childFDs={0: "w", 1: "r", 2: "r"}
            )
        except OSError as e:
            self._transport = None
            self._protocol = None
            self._start_failed(RedisStartError(f"{self.name}: cannot start {self.argv[0]}: {e}"))
            return
        self._protocol = protocol
        self._spawned_pid = self.pid
        log.info("{name} started, pid {pid}", name=self.name, pid=self.pid)
        self._deadline = self.clock.seconds() + self.start_timeout
        self._ping()

    def _ping(self) -> None:
        self._timer = None
        self._probing = self.probe(self.instance)
        self._probing.addCallbacks(self._answered, self._not_yet)

    def _answered(self, _: None) -> None:
        self._probing = None
        if self.state is not ChildState.STARTING:
            return
        self.state = ChildState.RUNNING
        log.info("{name} ready on {address}", name=self.name, address=self.instance.address)
        self._stable = self.clock.callLater(STABLE_AFTER, self._stayed_up)
        if self._started is not None:
            started, self._started = self._started, None
            started.callback(None)
        else:
            self._notify("up")

    def _not_yet(self, failure: Failure) -> None:
        self._probing = None
        if isinstance(failure.value, defer.CancelledError) or self.state is not ChildState.STARTING:
            return
        if self.clock.seconds() >= self._deadline:
            log.error(
                "{name} did not answer within {timeout}s, killing it",
                name=self.name,
                timeout=self.start_timeout,
            )
            self._timed_out = True
            self._signal("KILL")
            return
        self._timer = self.clock.callLater(PROBE_INTERVAL, self._ping)

    def _notify(self, event: str) -> None:
        try:
            self.notify(self.name, event)
        except Exception:
            log.failure("notify {name} {event} failed", name=self.name, event=event)

    def _stayed_up(self) -> None:
        self._stable = None
        self.failures = 0

    def _exited(self, protocol: _ChildProtocol, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        pid = self._spawned_pid
        self._transport = None
        self._protocol = None
        self._cancel_timers()
        code = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        if self.state is ChildState.STOPPING:
            self.state = ChildState.STOPPED
            log.info("{name} stopped", name=self.name)
            stopped, self._stopped = self._stopped, []
            for d in stopped:
                d.callback(None)
            return
        if self.state is ChildState.RUNNING:
            log.error(
                "{name} (pid {pid}) exited unexpectedly: code {code}, signal {signal}",
                name=self.name,
                pid=pid,
                code=code,
                signal=signal,
            )
            self._notify("down")
            self._schedule_restart()
            return
        # STARTING: it died (or was killed) before answering
        if self._timed_out:
            detail = f"did not answer within {self.start_timeout:g}s"
        else:
            detail = f"exited (code {code}, signal {signal}) before it answered"
        self._start_failed(self._start_error(pid, detail, protocol.output))

    def _start_error(self, pid: int | None, detail: str, output: bytes) -> RedisStartError:
        why = _log_tail(self.instance.log_path, pid) or output.decode(errors="replace").strip()
        where = self.instance.address
        if "already in use" in why:
            return RedisStartError(f"{self.name}: {where} is already in use ({why})")
        message = f"{self.name}: redis-server on {where} {detail}"
        return RedisStartError(f"{message}: {why}" if why else message)

    def _start_failed(self, err: RedisStartError) -> None:
        if self._started is not None:
            self.state = ChildState.STOPPED
            self._fail_start(err)
            return
        log.error("{name} restart failed: {why}", name=self.name, why=str(err))
        self._schedule_restart()

    def _fail_start(self, err: Exception) -> None:
        if self._started is not None:
            started, self._started = self._started, None
            started.errback(err)

    def _schedule_restart(self) -> None:
        delay = restart_delay(self.failures)
        self.failures += 1
        self.state = ChildState.BACKOFF
        log.info("{name} restarts in {delay}s", name=self.name, delay=delay)
        self._timer = self.clock.callLater(delay, self._spawn)

    def _signal(self, name: str) -> None:
        if self._transport is not None:
            try:
                self._transport.signalProcess(name)
            except error.ProcessExitedAlready:
                pass

    def _force_kill(self) -> None:
        self._kill = None
        log.warn("{name} ignored SIGTERM, sending SIGKILL", name=self.name)
        self._signal("KILL")

    def _cancel_timers(self) -> None:
        for call in (self._timer, self._stable, self._kill):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._stable = self._kill = None
        if self._probing is not None:
            probing, self._probing = self._probing, None
            probing.cancel()


def _log_tail(path: Path, pid: int | None, size: int = 8192) -> str:
    """The warnings C{pid} wrote last into the Redis log at C{path}."""
    if pid is None:
        return ""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    mine = [line for line in text.splitlines() if line.startswith(f"{pid}:") and " # " in line]
    return "; ".join(line.split(" # ", 1)[1].strip() for line in mine[-2:])


class RedisSupervisor(service.Service):
    """
    Runs the configured Redis instances as children of this process.

    C{startService} returns a Deferred that fires once every child answers
    PING, or fails with L{RedisStartError} (children already started are
    stopped again).  C{stopService} returns a Deferred that fires once every
    child has exited.
    """

    name = "redis"

    def __init__(
        self,
        instances: Sequence[RedisInstance],
        process_reactor: IReactorProcess,
        clock: IReactorTime,
        probe: Probe,
        notify: Notify,
        executable: str = "redis-server",
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
        reap_stale: bool = False,
    ) -> None:
        self._reap_stale = reap_stale
        self._instances = list(instances)
        self._process_reactor = process_reactor
        self._clock = clock
        self._probe = probe
        self._notify = notify
        self._executable = executable
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self.children: dict[str, RedisChild] = {}

    @classmethod
    def with_reactor(
        cls,
        reactor: IReactor,
        instances: Sequence[RedisInstance],
        notify: Notify,
        executable: str = "redis-server",
    ) -> RedisSupervisor:
        """A supervisor that spawns, times and probes with one real reactor.

        It also stops leftover children of an earlier CRS that was killed
        (see ``cryptify.crs.redis.stale``).
        """
        return cls(
            instances, reactor, reactor, ping_probe(reactor), notify, executable, reap_stale=True
        )

    def _argv(self) -> list[str]:
        found = shutil.which(self._executable)
        if found is None:
            raise RedisStartError(f"redis-server not found: {self._executable}")
        # its own session, so a Ctrl-C meant for the CRS does not reach it
        # before the CRS stops it in order
        setsid = shutil.which("setsid")
        return [setsid, found] if setsid else [found]

    def startService(self) -> Deferred[None]:
        self.running = 1
        try:
            argv = self._argv()
        except RedisStartError as e:
            self.running = 0
            return defer.fail(e)
        if not self._reap_stale:
            return self._start_children(argv)
        from cryptify.crs.redis.stale import reap_stale

        reaped = defer.ensureDeferred(reap_stale(self._instances, self._clock))
        return reaped.addCallback(lambda _: self._start_children(argv))

    def _start_children(self, argv: list[str]) -> Deferred[None]:
        self.children = {
            i.name: RedisChild(
                i,
                [*argv, str(i.conf_path)],
                self._process_reactor,
                self._clock,
                self._probe,
                self._notify,
                self._start_timeout,
                self._stop_timeout,
            )
            for i in self._instances
        }
        starts = [child.start() for child in self.children.values()]
        d = defer.gatherResults(starts, consumeErrors=True)
        return d.addCallbacks(lambda _: None, self._start_failed)

    def _start_failed(self, failure: Failure) -> Deferred[None]:
        # gatherResults wraps the first failure in a FirstError
        first = getattr(failure.value, "subFailure", failure)
        log.error("Redis start failed: {why}", why=first.getErrorMessage())

        def failed(_: object) -> Failure:
            self.running = 0
            return first

        return self._stop_children().addBoth(failed)

    def _stop_children(self) -> Deferred[None]:
        stops = [child.stop() for child in self.children.values()]
        return defer.gatherResults(stops).addCallback(lambda _: None)

    def stopService(self) -> Deferred[None]:
        self.running = 0
        return self._stop_children()

    def status(self) -> dict[str, str]:
        """C{{name: "active" | "inactive"}} for every configured instance."""
        return {
            i.name: "active"
            if i.name in self.children and self.children[i.name].state is ChildState.RUNNING
            else "inactive"
            for i in self._instances
        }

    def pid(self, name: str) -> int | None:
        """The process id of child C{name}, if it has one."""
        child = self.children.get(name)
        return None if child is None else child.pid

    def instance(self, name: str) -> RedisInstance:
        for i in self._instances:
            if i.name == name:
                return i
        raise KeyError(name)
