"""The synchronization tunnel's two ends and the replica monitor, in memory."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config import CrsLocalConfig
from cryptify.config.crs_model import AddressMap, CrsConfig, CrsGlobal, Pool, PoolHost
from cryptify.crs.pool.backup import REPLICA_POLL, ReplicaMonitor, build_sync
from cryptify.crs.pool.sync import (
    HANDSHAKE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_PENDING,
    SyncServerFactory,
    SyncTunnel,
    psk_lookup,
)
from cryptify.crs.pool.sync_core import sync_psk
from cryptify.crs.redis.instance import ReplicaOf
from cryptify.crs.redis.services import redis_instances
from tests.pool_support import INFO_DOWN, INFO_UP, resp

PING = resp(b"PING")
PASSWORD = "redis-low-password"


class _Transport(StringTransport):
    """A StringTransport that tells its protocol when it is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: Protocol | None = None

    def loseConnection(self) -> None:
        if not self.disconnecting:
            super().loseConnection()
            if self.protocol is not None:
                self.protocol.connectionLost(Failure(ConnectionError("closed")))


def connect(protocol: Protocol) -> _Transport:
    transport = _Transport()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return transport


class ServerEndTests(SynchronousTestCase):
    """The end on sync-port: handshake, login to redis_low, filter, splice."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.connects: list[tuple[Factory, Deferred[Any]]] = []

        def connect_low(factory: Factory) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.connects.append((factory, d))
            return d

        self.factory = SyncServerFactory(self.clock, connect_low, lambda: PASSWORD)
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def peer(self) -> tuple[Any, _Transport]:
        protocol = self.factory.buildProtocol(None)
        assert protocol is not None
        return protocol, connect(protocol)

    def redis(self) -> tuple[Any, _Transport]:
        factory, d = self.connects[-1]
        protocol = factory.buildProtocol(None)
        transport = connect(protocol)
        d.callback(protocol)
        return protocol, transport

    def test_handshake_timeout(self) -> None:
        """A peer that does not finish the TLS-PSK handshake in time is dropped,
        and nothing is connected to Redis."""
        _, transport = self.peer()
        self.clock.advance(HANDSHAKE_TIMEOUT)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.connects, [])
        self.assertEqual(self.factory.active, set())

    def test_splice_after_login(self) -> None:
        """After the handshake the tunnel logs in to redis_low itself; what the
        peer sent meanwhile is held and passed on after +OK; Redis's answers
        go to the peer; each side is the other's producer."""
        peer, peer_transport = self.peer()
        peer.handshakeCompleted()
        peer.dataReceived(PING)
        redis, redis_transport = self.redis()
        self.assertEqual(redis_transport.value(), resp(b"AUTH", PASSWORD.encode()))
        redis_transport.clear()
        redis.dataReceived(b"+OK\r\n")
        self.assertEqual(redis_transport.value(), PING)
        redis.dataReceived(b"+PONG\r\n")
        self.assertEqual(peer_transport.value(), b"+PONG\r\n")
        self.assertNotIn(PASSWORD.encode(), peer_transport.value())
        self.assertIs(peer_transport.producer, redis_transport)
        self.assertIs(redis_transport.producer, peer_transport)
        self.assertTrue(peer_transport.streaming and redis_transport.streaming)

    def test_close_both_ways(self) -> None:
        """When Redis closes, the peer's connection closes, and the other way."""
        peer, peer_transport = self.peer()
        peer.handshakeCompleted()
        redis, redis_transport = self.redis()
        redis.dataReceived(b"+OK\r\n")
        redis_transport.loseConnection()
        self.assertTrue(peer_transport.disconnecting)

        peer, peer_transport = self.peer()
        peer.handshakeCompleted()
        redis, redis_transport = self.redis()
        redis.dataReceived(b"+OK\r\n")
        peer_transport.loseConnection()
        self.assertTrue(redis_transport.disconnecting)
        self.assertEqual(self.factory.active, set())

    def test_login_refused(self) -> None:
        """A refused login closes both sides, and the peer never sees the answer."""
        peer, peer_transport = self.peer()
        peer.handshakeCompleted()
        redis, redis_transport = self.redis()
        redis.dataReceived(b"-WRONGPASS invalid username-password pair\r\n")
        self.assertTrue(peer_transport.disconnecting and redis_transport.disconnecting)
        self.assertEqual(peer_transport.value(), b"")

    def test_not_replication(self) -> None:
        """A command other than replication closes both sides; it never reaches Redis."""
        peer, peer_transport = self.peer()
        peer.handshakeCompleted()
        redis, redis_transport = self.redis()
        redis.dataReceived(b"+OK\r\n")
        redis_transport.clear()
        peer.dataReceived(PING + resp(b"FLUSHALL"))
        self.assertTrue(peer_transport.disconnecting and redis_transport.disconnecting)
        self.assertNotIn(b"FLUSHALL", redis_transport.value())

    def test_pending_bounded(self) -> None:
        """While Redis is not connected, at most MAX_PENDING octets are held."""
        peer, peer_transport = self.peer()
        peer.handshakeCompleted()
        for _ in range(MAX_PENDING // len(PING) + 1):
            peer.dataReceived(PING)
        self.assertTrue(peer_transport.disconnecting)

    def test_redis_unreachable(self) -> None:
        """redis_low not answering closes the peer's connection."""
        peer, peer_transport = self.peer()
        peer.handshakeCompleted()
        self.connects[-1][1].errback(ConnectionRefusedError())
        self.assertTrue(peer_transport.disconnecting)

    def test_connection_limit(self) -> None:
        """At most MAX_CONNECTIONS at once; a closed one frees its place."""
        opened = [self.peer() for _ in range(MAX_CONNECTIONS)]
        self.assertIsNone(self.factory.buildProtocol(None))
        opened[0][1].loseConnection()
        self.assertIsNotNone(self.factory.buildProtocol(None))
        for _, transport in opened:
            transport.loseConnection()

    def test_psk_lookup(self) -> None:
        """Only a peer's name gets the sync key."""
        lookup = psk_lookup(frozenset({"crs2"}), sync_psk("k" * 20))
        self.assertEqual(lookup(b"crs2", None), sync_psk("k" * 20))
        self.assertIsNone(lookup(b"crs1", None))
        self.assertIsNone(lookup(b"\xff", None))


class _Port:
    def __init__(self) -> None:
        self.stopped = False

    def getHost(self) -> Any:
        class Host:
            port = 40123

        return Host()

    def stopListening(self) -> None:
        self.stopped = True


class ClientEndTests(SynchronousTestCase):
    """The loopback end: each connection goes to the peer."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.connects: list[tuple[Factory, Deferred[Any]]] = []
        self.port = _Port()
        self.factory: Factory | None = None

        def connect_peer(factory: Factory) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.connects.append((factory, d))
            return d

        def listen(factory: Factory) -> Any:
            self.factory = factory
            return self.port

        self.tunnel = SyncTunnel(self.clock, "crs1", connect_peer, listen)
        self.tunnel.startService()
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def local(self) -> tuple[Any, _Transport]:
        assert self.factory is not None
        protocol = self.factory.buildProtocol(None)
        assert protocol is not None
        return protocol, connect(protocol)

    def remote(self) -> tuple[Any, _Transport]:
        factory, d = self.connects[-1]
        protocol = factory.buildProtocol(None)
        transport = connect(protocol)
        d.callback(protocol)
        return protocol, transport

    def test_port(self) -> None:
        """The port for replicaof is the one bound."""
        self.assertEqual(self.tunnel.port, 40123)

    def test_splice(self) -> None:
        """What redis_backup sends before the peer is reached is held, then
        sent; the peer's answers come back; each side is the other's producer."""
        local, local_transport = self.local()
        local.dataReceived(PING)
        remote, remote_transport = self.remote()
        self.assertEqual(remote_transport.value(), PING)
        remote.handshakeCompleted()
        self.assertTrue(self.tunnel.reached)
        remote.dataReceived(b"+PONG\r\n")
        self.assertEqual(local_transport.value(), b"+PONG\r\n")
        self.assertIs(local_transport.producer, remote_transport)
        self.assertIs(remote_transport.producer, local_transport)
        remote_transport.loseConnection()
        self.assertTrue(local_transport.disconnecting)

    def test_peer_unreachable(self) -> None:
        """A peer that cannot be reached closes redis_backup's connection
        (Redis tries again by itself) and is reported once."""
        _, local_transport = self.local()
        self.connects[-1][1].errback(ConnectionRefusedError())
        self.assertTrue(local_transport.disconnecting)
        self.assertIs(self.tunnel.reached, False)

    def test_handshake_fails(self) -> None:
        """A peer that refuses our key (the TLS connection ends before the
        handshake) closes the local side; a handshake that never ends is cut."""
        _, local_transport = self.local()
        _, remote_transport = self.remote()
        remote_transport.loseConnection()
        self.assertTrue(local_transport.disconnecting)
        self.assertIs(self.tunnel.reached, False)

        _, local_transport = self.local()
        _, remote_transport = self.remote()
        self.clock.advance(HANDSHAKE_TIMEOUT)
        self.assertTrue(local_transport.disconnecting and remote_transport.disconnecting)

    def test_stop(self) -> None:
        """Stopping the tunnel closes its connections and its port."""
        _, local_transport = self.local()
        _, remote_transport = self.remote()
        self.successResultOf(self.tunnel.stopService())
        self.assertTrue(local_transport.disconnecting and remote_transport.disconnecting)
        self.assertTrue(self.port.stopped)

    def test_connection_limit(self) -> None:
        """At most MAX_CONNECTIONS local connections at once."""
        assert self.factory is not None
        opened = [self.local() for _ in range(MAX_CONNECTIONS)]
        self.assertIsNone(self.factory.buildProtocol(None))
        for _, transport in opened:
            transport.loseConnection()


class _Client:
    def __init__(self) -> None:
        self.answer: Any = INFO_UP

    def execute_command(self, *args: str) -> Deferred[Any]:
        if isinstance(self.answer, Exception):
            return defer.fail(self.answer)
        return defer.succeed(self.answer)


class ReplicaMonitorTests(SynchronousTestCase):
    def test_follows_link(self) -> None:
        """show services follows INFO replication: up, down, Redis gone, up
        again; each change of up/down is notified once."""
        clock, client, events = Clock(), _Client(), []
        monitor = ReplicaMonitor("crs1", lambda: client, clock, lambda u, e: events.append(e))
        self.assertEqual(monitor.describe(), "inactive (replica of crs1: not read yet)")
        monitor.startService()
        self.assertEqual(
            monitor.describe(), "active (replica of crs1: link up, lag 2s, offset 4470)"
        )
        client.answer = INFO_DOWN
        clock.advance(REPLICA_POLL)
        self.assertEqual(monitor.describe(), "inactive (replica of crs1: link down, for 17s)")
        client.answer = ConnectionRefusedError()
        clock.advance(REPLICA_POLL)
        self.assertEqual(
            monitor.describe(),
            "inactive (replica of crs1: redis_backup unreachable (ConnectionRefusedError))",
        )
        client.answer = "# Replication\r\nrole:master\r\n"
        clock.advance(REPLICA_POLL)
        self.assertIn("not a replica", monitor.describe())
        client.answer = INFO_UP
        clock.advance(REPLICA_POLL)
        self.assertTrue(monitor.describe().startswith("active"))
        self.assertEqual(events, ["up", "down", "up"])
        monitor.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])


def pool_config(key: str | None = "k" * 20) -> Any:
    g = CrsGlobal(
        key=key,
        addr_map=(AddressMap("192.0.2.1", "127.0.0.2"),),
        sync_port=18091,
        data_dir="/nonexistent",
    )
    pool = Pool((PoolHost("crs1", "192.0.2.1"), PoolHost("crs2", "192.0.2.2")))
    return CrsConfig(global_=g, pool=pool)


class BuildSyncTests(SynchronousTestCase):
    """What each db-backup mode runs (nothing is opened while building)."""

    def build(self, mode: str, cfg: Any = None, me: str = "crs2") -> Any:
        local = CrsLocalConfig(me, mode)
        return build_sync(
            cfg or pool_config(), local, me, Clock(), lambda n: None, lambda u, e: None
        )

    def test_replicate(self) -> None:
        """replicate-from-peer: a tunnel before Redis, the server and the
        monitor after it, both shown in show services; redis_backup's master
        is the tunnel's loopback port."""
        sync = self.build("replicate-from-peer")
        self.assertEqual(sync.before_redis, [sync.tunnel])
        self.assertIn(sync.monitor, sync.after_redis)
        self.assertEqual(list(sync.probes), ["db-backup", "sync"])
        assert sync.tunnel is not None
        self.assertEqual(sync.tunnel.peer, "crs1")
        sync.tunnel.listening = _Port()
        master = sync.backup_master()
        self.assertEqual((master.host, master.port, master.password), ("127.0.0.1", 40123, None))

    def test_none_and_read_from(self) -> None:
        """none: only the server end; read-from: the server end and the import."""
        none = self.build("none")
        self.assertEqual((none.before_redis, none.tunnel, none.importer), ([], None, None))
        self.assertIsNone(none.backup_master())
        self.assertEqual(list(none.probes), ["sync"])
        read = self.build("read-from")
        self.assertIsNotNone(read.importer)
        self.assertIn(read.importer, read.after_redis)
        self.assertIsNone(read.backup_master())

    def test_alone_or_keyless(self) -> None:
        """Outside a pool, or without a key, nothing runs."""
        for sync in (
            self.build("replicate-from-peer", CrsConfig(), "crs1"),
            self.build("replicate-from-peer", pool_config(key=None)),
        ):
            self.assertEqual((sync.before_redis, sync.after_redis, sync.probes), ([], [], {}))


class RedisInstancesTests(SynchronousTestCase):
    def test_backup_modes(self) -> None:
        """redis_backup runs with replicate-from-peer (replicating the given
        master) and with read-from (replicating nobody), not with none."""
        cfg = pool_config()
        cfg = attrs.evolve(cfg, global_=attrs.evolve(cfg.global_, data_dir=self.mktemp()))
        master = ReplicaOf("127.0.0.1", 40123)
        by_mode = {
            mode: {i.name: i for i in redis_instances(cfg, CrsLocalConfig("crs2", mode), master)}
            for mode in ("none", "replicate-from-peer", "read-from")
        }
        self.assertNotIn("redis_backup", by_mode["none"])
        self.assertEqual(by_mode["replicate-from-peer"]["redis_backup"].replica_of, master)
        self.assertIsNone(by_mode["read-from"]["redis_backup"].replica_of)
        self.assertIsNone(by_mode["replicate-from-peer"]["redis_low"].replica_of)


class BackupImportRetryTests(SynchronousTestCase):
    """``db-backup read-from``: an import run that fails is tried again,
    after 1 s doubling to 30 s, until one completes or the service stops."""

    def service(self, failures: int) -> tuple[Any, list[float]]:
        from cryptify.crs.pool.backup import BackupImport

        clock = Clock()
        runs: list[float] = []

        class Flaky(BackupImport):
            async def run(self) -> dict[str, int]:
                runs.append(clock.seconds())
                if len(runs) <= failures:
                    raise ConnectionError("redis_backup went away")
                return {"imported": 3}

        return Flaky("crs1", lambda: None, lambda: None, lambda: defer.succeed(None), clock), runs

    def test_failed_runs_are_tried_again(self) -> None:
        imp, runs = self.service(failures=7)
        imp.startService()
        clock = imp.clock
        for _ in range(200):
            clock.advance(1)
        self.assertEqual(runs, [0, 1, 3, 7, 15, 31, 61, 91])
        self.assertEqual(self.successResultOf(imp.done), {"imported": 3})
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 7)

    def test_stop_ends_the_wait(self) -> None:
        imp, runs = self.service(failures=100)
        imp.startService()
        imp.clock.advance(1)
        imp.stopService()
        self.assertEqual(self.successResultOf(imp.done), {})
        self.assertEqual(imp.clock.getDelayedCalls(), [])
        self.assertEqual(runs, [0, 1])
        self.flushLoggedErrors(ConnectionError)
