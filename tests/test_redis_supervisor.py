"""
Unit tests for cryptify.crs.redis.instance and .supervisor (config, backoff, supervision) and
cryptify.crs.redis.store (reconnect, auth), in memory: a Clock, a fake process
reactor, a fake PING probe and fake endpoints.  Only config files touch disk.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError, ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.redis import supervisor
from cryptify.crs.redis.instance import (
    BACKUP,
    HIGH,
    LOW,
    RedisInstance,
    ReplicaOf,
    Role,
    load_password,
    render_conf,
    write_conf,
)
from cryptify.crs.redis.store import RedisAuthError, RedisNotConnected, RedisStore
from cryptify.crs.redis.supervisor import RedisStartError, RedisSupervisor, restart_delay


class FakeProcess:
    def __init__(self, protocol, pid, args):
        self.protocol = protocol
        self.pid = pid
        self.args = args
        self.signals = []

    def signalProcess(self, signal):
        self.signals.append(signal)

    def exit(self, code=0, signal=None):
        self.pid = None
        if code == 0 and signal is None:
            reason = ProcessDone(0)
        else:
            reason = ProcessTerminated(code, signal)
        self.protocol.processEnded(Failure(reason))


class FakeProcessReactor:
    """Records spawnProcess calls; each returns a FakeProcess."""

    def __init__(self):
        self.processes = []
        self.next_pid = 1000
        self.fail_with = None

    def spawnProcess(
        self,
        protocol,
        executable,
        args,
        env=None,
        path=None,
        uid=None,
        gid=None,
        usePTY=False,
        childFDs=None,
    ):
        if self.fail_with is not None:
            raise self.fail_with
        self.next_pid += 1
        process = FakeProcess(protocol, self.next_pid, list(args))
        protocol.makeConnection(process)
        self.processes.append(process)
        return process

    def by_name(self, name):
        return [p for p in self.processes if p.args[-1].endswith(f"/{name}/redis.conf")]


class FakeProbe:
    """Answers PING for the instance names in C{answering}."""

    def __init__(self):
        self.answering = set()

    def __call__(self, instance):
        if instance.name in self.answering:
            return defer.succeed(None)
        return defer.fail(ConnectionRefusedError())


class InstanceMixin:
    def instance(self, name=LOW, **kw):
        base = Path(self.mktemp())
        kw.setdefault("port", 6390)
        kw.setdefault("password", "s3cret")
        return RedisInstance(name=name, data_dir=base / "data", log_dir=base / "log", **kw)


class ConfTests(InstanceMixin, SynchronousTestCase):
    def lines(self, instance):
        return render_conf(instance).splitlines()

    def test_volatile_high(self):
        """redis_high binds loopback, needs a password and persists nothing."""
        i = self.instance(HIGH, port=6391)
        lines = self.lines(i)
        self.assertIs(i.role, Role.VOLATILE)
        for expected in [
            "bind 127.0.0.1",
            "port 6391",
            "protected-mode yes",
            'requirepass "s3cret"',
            "daemonize no",
            "appendonly no",
            'save ""',
            f'dir "{i.data_dir}/redis_high"',
            f'logfile "{i.log_dir}/redis_high.log"',
        ]:
            self.assertIn(expected, lines)
        self.assertFalse([line for line in lines if line.startswith("save ") and line != 'save ""'])

    def test_durable_low(self):
        """redis_low keeps an append-only file fsynced every second."""
        lines = self.lines(self.instance(LOW))
        self.assertIn("appendonly yes", lines)
        self.assertIn("appendfsync always", lines)
        self.assertNotIn("appendonly no", lines)

    def test_unix_socket(self):
        """On a UNIX socket there is no TCP listener and the socket is owner-only."""
        lines = self.lines(self.instance(port=None, unix_socket="/run/crs/low.sock"))
        self.assertIn("port 0", lines)
        self.assertIn('unixsocket "/run/crs/low.sock"', lines)
        self.assertIn("unixsocketperm 700", lines)
        self.assertFalse([line for line in lines if line.startswith("bind")])

    def test_backup_replicates(self):
        """redis_backup replicates the peer with the peer's password and is durable."""
        i = self.instance(BACKUP, replica_of=ReplicaOf("127.0.0.1", 8091, "peerpw"))
        lines = self.lines(i)
        self.assertIn("replicaof 127.0.0.1 8091", lines)
        self.assertIn('masterauth "peerpw"', lines)
        self.assertIn("appendonly yes", lines)

    def test_backup_through_tunnel(self):
        """Without a master password (the sync tunnel logs in at the far end)
        redis_backup gets no masterauth."""
        i = self.instance(BACKUP, replica_of=ReplicaOf("127.0.0.1", 40123))
        lines = self.lines(i)
        self.assertIn("replicaof 127.0.0.1 40123", lines)
        self.assertFalse([line for line in lines if line.startswith("masterauth")])

    def test_quoting(self):
        """Quotes and backslashes in values cannot break out of the directive."""
        i = self.instance(password='a"b\\c')
        self.assertIn('requirepass "a\\"b\\\\c"', self.lines(i))

    def test_invalid(self):
        """Non-loopback hosts, unknown names, both or neither address are refused."""
        self.assertRaises(ValueError, self.instance, host="10.0.0.1")
        self.assertRaises(ValueError, self.instance, name="redis_mid")
        self.assertRaises(ValueError, self.instance, port=None)
        self.assertRaises(ValueError, self.instance, unix_socket="/tmp/x.sock")
        self.assertRaises(ValueError, self.instance, port=70000)
        self.assertRaises(ValueError, self.instance, port=None, unix_socket="/" + "x" * 200)

    def test_password_file(self):
        """The password is generated once, kept 0600 and reused."""
        data = Path(self.mktemp())
        first = load_password(data, LOW)
        self.assertGreaterEqual(len(first), 40)
        path = data / LOW / "password"
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(load_password(data, LOW), first)
        self.assertNotEqual(load_password(data, HIGH), first)

    def test_write_conf(self):
        """The config file is written 0600 into a 0700 directory."""
        i = self.instance()
        path = write_conf(i)
        self.assertEqual(path.read_text(), render_conf(i))
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(i.dir.stat().st_mode), 0o700)


class BackoffTests(SynchronousTestCase):
    def test_schedule(self):
        """Restart delays double from 1s and stop at 30s."""
        self.assertEqual([restart_delay(n) for n in range(8)], [1, 2, 4, 8, 16, 30, 30, 30])
        self.assertEqual(restart_delay(10_000), 30)


class SupervisorTests(InstanceMixin, SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.reactor = FakeProcessReactor()
        self.probe = FakeProbe()
        self.events = []
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def supervisor(self, names=(HIGH, LOW), **kw):
        base = Path(self.mktemp())
        instances = [
            RedisInstance(
                name=n, password="pw", data_dir=base / "data", log_dir=base / "log", port=7000 + k
            )
            for k, n in enumerate(names)
        ]
        kw.setdefault("executable", sys.executable)
        return RedisSupervisor(
            instances,
            self.reactor,
            self.clock,
            self.probe,
            lambda unit, event: self.events.append((unit, event)),
            **kw,
        )

    def started(self, names=(HIGH, LOW)):
        s = self.supervisor(names)
        d = s.startService()
        self.probe.answering.update(names)
        self.clock.advance(supervisor.PROBE_INTERVAL)
        self.successResultOf(d)
        return s

    def stop(self, s):
        d = s.stopService()
        for p in self.reactor.processes:
            if p.pid is not None:
                p.exit(0)
        self.successResultOf(d)

    def test_start_waits_for_ping(self):
        """startService fires only once every child answers PING."""
        s = self.supervisor()
        d = s.startService()
        self.assertNoResult(d)
        self.assertEqual(len(self.reactor.processes), 2)
        self.assertEqual(s.status(), {HIGH: "inactive", LOW: "inactive"})
        self.probe.answering.add(HIGH)
        self.clock.advance(supervisor.PROBE_INTERVAL)
        self.assertNoResult(d)
        self.probe.answering.add(LOW)
        self.clock.advance(supervisor.PROBE_INTERVAL)
        self.successResultOf(d)
        self.assertEqual(s.status(), {HIGH: "active", LOW: "active"})
        low = self.reactor.by_name(LOW)[0]
        self.assertEqual(s.pid(LOW), low.pid)
        self.assertEqual(low.args[-2], sys.executable)
        self.assertTrue(Path(low.args[-1]).exists())
        self.assertEqual(self.events, [])
        self.stop(s)

    def test_bind_failure(self):
        """A child that dies at start fails startService naming the address; the rest stop."""
        s = self.supervisor()
        d = s.startService()
        low = self.reactor.by_name(LOW)[0]
        high = self.reactor.by_name(HIGH)[0]
        log_path = s.instance(LOW).log_path
        log_path.write_text(
            f"{low.pid}:C 01 Jan 2026 00:00:00.000 * oO0OoO0OoO0Oo Redis is starting\n"
            f"{low.pid}:M 01 Jan 2026 00:00:00.001 # Warning: Could not create server TCP "
            "listening socket 127.0.0.1:7001: bind: Address already in use\n"
            f"{low.pid}:M 01 Jan 2026 00:00:00.001 # Failed listening on port 7001 (TCP), "
            "aborting.\n"
        )
        low.exit(1)
        self.assertNoResult(d)  # still stopping redis_high
        self.assertEqual(high.signals, ["TERM"])
        high.exit(0)
        err = self.failureResultOf(d, RedisStartError)
        self.assertIn("127.0.0.1:7001 is already in use", err.getErrorMessage())
        self.assertIn("Failed listening on port 7001", err.getErrorMessage())
        self.assertFalse(s.running)
        self.assertEqual(self.events, [])

    def test_binary_missing(self):
        """A missing redis-server binary fails startService with a clear error."""
        s = self.supervisor(executable="/nonexistent/redis-server")
        err = self.failureResultOf(s.startService(), RedisStartError)
        self.assertIn("redis-server not found", err.getErrorMessage())
        self.assertEqual(self.reactor.processes, [])

    def test_spawn_error(self):
        """An OSError from spawnProcess fails startService."""
        self.reactor.fail_with = OSError("no fork")
        s = self.supervisor(names=(LOW,))
        err = self.failureResultOf(s.startService(), RedisStartError)
        self.assertIn("no fork", err.getErrorMessage())

    def test_start_timeout(self):
        """A child that never answers is killed and the start fails after the timeout."""
        s = self.supervisor(names=(LOW,))
        d = s.startService()
        self.clock.pump(
            [supervisor.PROBE_INTERVAL]
            * int(supervisor.START_TIMEOUT / supervisor.PROBE_INTERVAL + 1)
        )
        low = self.reactor.processes[0]
        self.assertEqual(low.signals, ["KILL"])
        self.assertNoResult(d)
        low.exit(None, 9)
        err = self.failureResultOf(d, RedisStartError)
        self.assertIn("did not answer within 10s", err.getErrorMessage())

    def test_restart_with_backoff(self):
        """A dying child is reported down, restarted after 1s, 2s, 4s..., reported up."""
        s = self.started()
        for n, delay in enumerate([1, 2, 4, 8]):
            current = self.reactor.by_name(LOW)[-1]
            current.exit(None, 9)
            self.assertEqual(self.events[-1], (LOW, "down"))
            self.assertEqual(s.status()[LOW], "inactive")
            self.assertEqual(s.status()[HIGH], "active")
            self.assertIsNone(s.pid(LOW))
            self.clock.advance(delay - 0.25)
            self.assertEqual(len(self.reactor.by_name(LOW)), n + 1)
            self.clock.advance(0.5)
            self.assertEqual(len(self.reactor.by_name(LOW)), n + 2)
            self.assertEqual(self.events[-1], (LOW, "up"))
            self.assertEqual(s.status()[LOW], "active")
            self.assertEqual(s.pid(LOW), self.reactor.by_name(LOW)[-1].pid)
        self.assertEqual(len(self.events), 8)
        # up for a while: the backoff starts over at 1s
        self.clock.advance(supervisor.STABLE_AFTER)
        self.reactor.by_name(LOW)[-1].exit(1)
        self.clock.advance(1.25)
        self.assertEqual(s.status()[LOW], "active")
        self.stop(s)

    def test_failed_restart(self):
        """A restart that dies before answering backs off further without a second 'down'."""
        s = self.started()
        self.reactor.by_name(LOW)[-1].exit(1)
        self.probe.answering.discard(LOW)
        self.clock.advance(1)
        self.reactor.by_name(LOW)[-1].exit(1)
        self.assertEqual(self.events, [(LOW, "down")])
        self.clock.advance(1.75)
        self.assertEqual(len(self.reactor.by_name(LOW)), 2)
        self.probe.answering.add(LOW)
        self.clock.advance(0.5)
        self.assertEqual(len(self.reactor.by_name(LOW)), 3)
        self.assertEqual(self.events, [(LOW, "down"), (LOW, "up")])
        self.stop(s)

    def test_notify_failure_is_contained(self):
        """A notify callable that raises is logged; the child is still restarted."""

        def broken(unit, event):
            raise RuntimeError("notify.sh missing")

        s = self.started(names=(LOW,))
        s.children[LOW].notify = broken
        self.reactor.processes[0].exit(1)
        self.clock.advance(1)
        self.assertEqual(s.status(), {LOW: "active"})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.stop(s)

    def test_stop_sequence(self):
        """stopService sends SIGTERM, SIGKILL after the timeout, fires when all exited."""
        s = self.started()
        d = s.stopService()
        high, low = self.reactor.by_name(HIGH)[0], self.reactor.by_name(LOW)[0]
        self.assertEqual((high.signals, low.signals), (["TERM"], ["TERM"]))
        high.exit(0)
        self.assertNoResult(d)
        self.clock.advance(supervisor.STOP_TIMEOUT)
        self.assertEqual(low.signals, ["TERM", "KILL"])
        self.assertNoResult(d)
        low.exit(None, 9)
        self.successResultOf(d)
        self.assertEqual(s.status(), {HIGH: "inactive", LOW: "inactive"})
        self.assertEqual(self.events, [])
        self.assertFalse(s.running)

    def test_stop_during_backoff(self):
        """Stopping while a restart is pending cancels it and fires at once."""
        s = self.started(names=(LOW,))
        self.reactor.processes[0].exit(1)
        self.successResultOf(s.stopService())
        self.clock.advance(60)
        self.assertEqual(len(self.reactor.processes), 1)

    def test_stop_while_starting(self):
        """Stopping during start fails the start and stops the child."""
        s = self.supervisor(names=(LOW,))
        d = s.startService()
        stopped = s.stopService()
        self.reactor.processes[0].exit(0)
        self.successResultOf(stopped)
        self.failureResultOf(d, RedisStartError)


class FakeEndpoint:
    """Connects protocols to StringTransports, or refuses."""

    def __init__(self):
        self.refuse = True
        self.attempts = 0
        self.protocols = []

    def connect(self, factory):
        self.attempts += 1
        if self.refuse:
            return defer.fail(ConnectionRefusedError())
        p = factory.buildProtocol(None)
        p.makeConnection(StringTransport())
        self.protocols.append(p)
        return defer.succeed(p)


class RedisStoreTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        self.store = RedisStore(self.endpoint, self.clock, "pw", name=LOW)
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def test_reconnect_backoff(self):
        """Refused connections are retried after 0.5s, 1s, 2s... on the given clock."""
        self.store.startService()
        waiting = self.store.when_connected()
        self.assertEqual(self.endpoint.attempts, 1)
        for expected, delay in [(2, 0.5), (3, 1.0), (4, 2.0), (5, 4.0)]:
            self.clock.advance(delay)
            self.assertEqual(self.endpoint.attempts, expected)
        self.assertRaises(RedisNotConnected, lambda: self.store.client)
        self.failureResultOf(self.store.ping(), RedisNotConnected)
        self.successResultOf(self.store.stopService())
        self.failureResultOf(waiting, RedisNotConnected)

    def test_auth_and_select(self):
        """A connection authenticates, selects db 0 and then serves requests."""
        self.endpoint.refuse = False
        self.store.startService()
        waiting = self.store.when_connected()
        p = self.endpoint.protocols[0]._protocol
        self.assertIn(b"AUTH\r\n$2\r\npw\r\n", p.transport.value())
        p.dataReceived(b"+OK\r\n")
        self.assertIn(b"SELECT\r\n$1\r\n0\r\n", p.transport.value())
        p.dataReceived(b"+OK\r\n")
        self.assertIs(self.successResultOf(waiting), p)
        self.assertIs(self.store.client, p)
        pong = self.store.ping()
        p.dataReceived(b"+PONG\r\n")
        self.assertEqual(self.successResultOf(pong), "PONG")
        # lost connection: reconnect after the backoff
        self.endpoint.protocols[0].connectionLost(Failure(ConnectionRefusedError()))
        self.assertFalse(self.store.connected)
        self.clock.advance(0.5)
        self.assertEqual(self.endpoint.attempts, 2)
        stopping = self.store.stopService()
        self.endpoint.protocols[1].connectionLost(Failure(ConnectionRefusedError()))
        self.successResultOf(stopping)

    def test_closed_before_ready(self):
        """Connections closed before AUTH completes still back off: 0.5s, 1s, 2s."""
        self.endpoint.refuse = False
        self.store.startService()
        for n, delay in enumerate([0.5, 1.0, 2.0]):
            self.endpoint.protocols[n].connectionLost(Failure(ConnectionRefusedError()))
            self.clock.advance(delay - 0.25)
            self.assertEqual(self.endpoint.attempts, n + 1)
            self.clock.advance(0.25)
            self.assertEqual(self.endpoint.attempts, n + 2)
        stopping = self.store.stopService()
        self.endpoint.protocols[-1].connectionLost(Failure(ConnectionRefusedError()))
        self.successResultOf(stopping)

    def test_wrong_password(self):
        """A refused password fails when_connected and stops reconnecting."""
        self.endpoint.refuse = False
        self.store.startService()
        waiting = self.store.when_connected()
        p = self.endpoint.protocols[0]._protocol
        p.dataReceived(b"-WRONGPASS invalid username-password pair\r\n")
        err = self.failureResultOf(waiting, RedisAuthError)
        self.assertIn("could not auth", err.getErrorMessage())
        self.endpoint.protocols[0].connectionLost(Failure(ConnectionRefusedError()))
        self.clock.advance(60)
        self.assertEqual(self.endpoint.attempts, 1)
        self.failureResultOf(self.store.when_connected(), RedisAuthError)
        self.successResultOf(self.store.stopService())
