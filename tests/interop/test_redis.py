"""
The Redis supervisor and store against a real redis-server, on loopback
ephemeral ports in a temporary directory.  Uses the global reactor.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from cryptify.crs.redis.instance import HIGH, LOW, RedisInstance, load_password
from cryptify.crs.redis.store import RedisAuthError, RedisStore
from cryptify.crs.redis.supervisor import RedisStartError, RedisSupervisor

TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def redis_servers_under(path: Path) -> list[int]:
    """Pids of redis-server processes started with a config below path."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(path).encode() in arg for arg in cmdline) and alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


async def until(predicate, timeout=TIMEOUT, step=0.05):
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"timed out waiting for {predicate}")
        await task.deferLater(reactor, step, lambda: None)
        waited += step


class SupervisedRedisTests(TestCase):
    timeout = 60

    def setUp(self):
        if shutil.which("redis-server") is None:
            raise self.skipTest("redis-server is not installed")
        self.base = Path(self.mktemp()).absolute()
        self.data = self.base / "data"
        self.logs = self.base / "log"
        self.events = []
        self.addCleanup(self.assertNoRedisLeft)

    def assertNoRedisLeft(self):
        self.assertEqual(redis_servers_under(self.base), [])

    def instance(self, name, port=None):
        return RedisInstance(
            name=name,
            password=load_password(self.data, name),
            data_dir=self.data,
            log_dir=self.logs,
            port=port or free_port(),
        )

    async def start(self, *instances):
        supervisor = RedisSupervisor.with_reactor(
            reactor, instances, lambda unit, event: self.events.append((unit, event))
        )
        d = supervisor.startService()
        d.addTimeout(TIMEOUT, reactor)
        await d
        self.addCleanup(self.stop, supervisor)
        return supervisor

    async def stop(self, supervisor):
        if supervisor.running:
            d = supervisor.stopService()
            d.addTimeout(TIMEOUT, reactor)
            await d

    async def store(self, instance, password):
        store = RedisStore.tcp(reactor, instance.host, instance.port, password, name=instance.name)
        store.startService()
        self.addCleanup(store.stopService)
        d = store.when_connected()
        d.addTimeout(TIMEOUT, reactor)
        await d
        return store

    async def test_supervised(self):
        """
        Both instances start and need the password; redis_low killed with -9 is
        restarted (notify down, up) with its data; stop leaves no process.
        """
        high, low = self.instance(HIGH), self.instance(LOW)
        supervisor = await self.start(high, low)
        self.assertEqual(supervisor.status(), {HIGH: "active", LOW: "active"})
        pid = supervisor.pid(LOW)
        self.assertEqual(Path(f"/proc/{pid}/comm").read_text().strip(), "redis-server")
        for path in (low.conf_path, low.dir / "password"):
            self.assertEqual(path.stat().st_mode & 0o777, 0o600)

        store = await self.store(low, low.password)
        self.assertEqual(await store.ping(), "PONG")
        await store.client.set("msg:1", "stored before the crash")
        self.assertEqual(await store.client.get("msg:1"), "stored before the crash")
        await until(lambda: any((low.dir / "appendonlydir").glob("*.incr.aof")))

        with self.assertRaises(RedisAuthError):
            await self.store(low, None)
        with self.assertRaises(RedisAuthError):
            await self.store(high, "wrong")

        os.kill(pid, signal.SIGKILL)
        await until(lambda: (LOW, "up") in self.events)
        self.assertEqual(self.events, [(LOW, "down"), (LOW, "up")])
        self.assertEqual(supervisor.status()[LOW], "active")
        new_pid = supervisor.pid(LOW)
        self.assertNotEqual(new_pid, pid)
        self.assertFalse(alive(pid))

        await until(lambda: store.connected)
        self.assertEqual(await store.client.get("msg:1"), "stored before the crash")

        high_pid = supervisor.pid(HIGH)
        d = supervisor.stopService()
        d.addTimeout(TIMEOUT, reactor)
        await d
        self.assertFalse(alive(new_pid))
        self.assertFalse(alive(high_pid))
        self.assertEqual(supervisor.status(), {HIGH: "inactive", LOW: "inactive"})

    async def test_port_in_use(self):
        """A port already taken fails startService with an error naming it."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with self.assertRaises(RedisStartError) as caught:
            await self.start(self.instance(HIGH), self.instance(LOW, port))
        self.assertIn(f"127.0.0.1:{port} is already in use", str(caught.exception))

    async def test_unix_socket(self):
        """An instance on a UNIX socket answers there and nowhere else."""
        sock = Path("/tmp") / f"crs-test-{os.getpid()}-{id(self)}.sock"
        self.addCleanup(lambda: sock.unlink(missing_ok=True))
        instance = RedisInstance(
            name=HIGH,
            password=load_password(self.data, HIGH),
            data_dir=self.data,
            log_dir=self.logs,
            unix_socket=sock,
        )
        await self.start(instance)
        self.assertEqual(sock.stat().st_mode & 0o777, 0o700)
        store = RedisStore.for_instance(reactor, instance)
        store.startService()
        self.addCleanup(store.stopService)
        await defer.Deferred.fromCoroutine(until(lambda: store.connected))
        self.assertEqual(await store.ping(), "PONG")
