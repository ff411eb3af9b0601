"""Pool-wide operator commands in memory: real pool links over memory
transports, real account stores and change logs in temporary
directories, the crs-cli responders; peers down, back, restarted."""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import stat
import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config.crs_model import CrsConfig, CrsGlobal, Pool, PoolHost
from cryptify.crs.accounts import AccountStore
from cryptify.crs.attach.registry import Attachment, AttachRegistry
from cryptify.crs.operator import cli
from cryptify.crs.operator.admin import CrsAdmin
from cryptify.crs.operator.state import CrsState
from cryptify.crs.pool import changes_log
from cryptify.crs.pool.changes import (
    COMPACT_AFTER,
    CONFIRM_WAIT,
    LOG_FILE,
    RESYNC_INTERVAL,
    PoolChanges,
)
from cryptify.crs.pool.changes_apply import StateApplier
from cryptify.crs.pool.changes_core import Kind
from cryptify.crs.pool.changes_frames import CHANGE_FRAME
from cryptify.crs.pool.core import DOWN_AFTER, HEARTBEAT_INTERVAL, JOIN_WAIT, Heartbeat
from cryptify.crs.pool.wire import (
    Frame,
    FrameReader,
    decode_frame,
    encode_frame,
    encode_heartbeat,
)
from cryptify.crs.pool.wiring import PoolLink, _InboundFactory, _LinkProtocol
from cryptify.crs.remote_admin.store import AdminStore, new_secret
from cryptify.protocols.mgmt import CommandFailed
from tests.fakes import SECRET, update_bytes

KEY = "the-pool-shared-secret"
OTHER = "b3RoZXItc2VjcmV0"


def config(count: int) -> CrsConfig:
    hosts = tuple(PoolHost(f"crs{i}", f"192.0.2.{i}") for i in range(1, count + 1))
    return CrsConfig(global_=CrsGlobal(key=KEY), pool=Pool(hosts))


class _Conn:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def disconnect(self, reason: str) -> None:
        self.reasons.append(reason)

    def send(self, msg: object) -> None:
        pass


class Node:
    """One instance: its pool link, change log, accounts, admins and responders."""

    def __init__(
        self,
        name: str,
        reactor: MemoryReactorClock,
        count: int,
        root: str,
        compact_after: int = COMPACT_AFTER,
    ) -> None:
        self.name = name
        self.reactor = reactor
        self.root = os.path.join(root, name)
        #: What notify.sh was told.
        self.events: list[tuple[str, str]] = []
        self.link = PoolLink(
            config(count),
            name,
            reactor,
            lambda unit, event: self.events.append((unit, event)),
            incarnation=lambda: 100,
            pid=1000 + int(name[-1]),
        )
        self.accounts = AccountStore(os.path.join(self.root, "accounts"), clock=reactor.seconds)
        self.accounts.reload()
        self.admins = AdminStore(os.path.join(self.root, "data", "admins.json"))
        self.admins.load()
        self.registry = AttachRegistry(name, reactor.seconds)
        self.state = CrsState(
            name,
            accounts=self.accounts,
            registry=self.registry,
            admins=self.admins,
            clock=lambda: 1_793_000_000.0,  # 2026-10
        )
        self.changes = PoolChanges(
            self.link,
            os.path.join(self.root, "data"),
            reactor,
            StateApplier(self.state),
            wall=reactor.seconds,
            compact_after=compact_after,
        )
        self.state.changes = self.changes
        self.admin = CrsAdmin(self.state)
        self.protos: list[_LinkProtocol] = []
        self.changes.startService()
        self.link.startService()
        self.running = True

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        for proto in self.protos:
            drop(proto)
        self.link.stopService()
        self.changes.stopService()

    def outgoing(self, peer: str) -> tuple[_LinkProtocol, StringTransport]:
        proto = _LinkProtocol(self.link, peer)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.protos.append(proto)
        return proto, transport

    def inbound(self) -> tuple[_LinkProtocol, StringTransport]:
        proto = _InboundFactory(self.link).buildProtocol(IPv4Address("TCP", "192.0.2.9", 4000))
        assert isinstance(proto, _LinkProtocol)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 4000))
        proto.makeConnection(transport)
        self.protos.append(proto)
        return proto, transport

    def log_path(self) -> str:
        return os.path.join(self.root, "data", LOG_FILE)


def drop(proto: _LinkProtocol) -> None:
    if not getattr(proto, "_lost", False):
        proto._lost = True  # type: ignore[attr-defined]
        proto.connectionLost(None)


class Wire:
    """A's outgoing connection to B carried into B's inbound connection."""

    def __init__(self, a: Node, b: Node) -> None:
        self.ends = {a.name, b.name}
        self.out, self.out_t = a.outgoing(b.name)
        self.into, self.into_t = b.inbound()
        self.cut = False
        #: Carry only heartbeats (the other frames are lost).
        self.only_beats = False
        self.readers = (FrameReader(), FrameReader())

    def carry(self, data: bytes, reader: FrameReader) -> bytes:
        if not self.only_beats:
            return data
        kept = b""
        for payload in reader.feed(data):
            if isinstance(decode_frame(payload), Frame):
                kept += struct.pack(">I", len(payload)) + payload
        return kept

    def pump(self) -> None:
        if self.cut:
            return
        for _ in range(50):
            data = self.carry(self.out_t.value(), self.readers[0])
            self.out_t.clear()
            if data:
                self.into.dataReceived(data)
            back = self.carry(self.into_t.value(), self.readers[1])
            self.into_t.clear()
            if back:
                self.out.dataReceived(back)
            if not data and not back:
                break
        assert not self.out_t.disconnecting and not self.into_t.disconnecting

    def close(self) -> None:
        """The connection is gone (both ends know)."""
        self.cut = True
        drop(self.out)
        drop(self.into)


class _PoolBase(SynchronousTestCase):
    """Instances over memory links, cleaned up after each test."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.root = self.mktemp()
        self.nodes: dict[str, Node] = {}
        self.wires: list[Wire] = []
        self.addCleanup(self.stop_all)

    def stop_all(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def pool(self, count: int, compact_after: int = COMPACT_AFTER) -> list[Node]:
        names = [f"crs{i}" for i in range(1, count + 1)]
        for name in names:
            self.nodes[name] = Node(name, self.reactor, count, self.root, compact_after)
        for a in names:
            for b in names:
                if a < b:
                    self.join(a, b)
        self.flow(JOIN_WAIT + 3 * HEARTBEAT_INTERVAL)
        return [self.nodes[n] for n in names]

    def join(self, a: str, b: str) -> None:
        self.wires.append(Wire(self.nodes[a], self.nodes[b]))

    def cut(self, name: str) -> None:
        """Every connection of ``name`` is cut; the others see it go down."""
        for wire in self.wires:
            if name in wire.ends and not wire.cut:
                wire.close()
        self.flow(DOWN_AFTER + 2 * HEARTBEAT_INTERVAL)

    def flow(self, seconds: float) -> None:
        for _ in range(int(seconds / (HEARTBEAT_INTERVAL / 2))):
            self.reactor.advance(HEARTBEAT_INTERVAL / 2)
            for wire in self.wires:
                wire.pump()

    def done(self, d: Any) -> Any:
        """The answer of a command, once the pool had a moment to confirm."""
        self.flow(HEARTBEAT_INTERVAL)
        return self.successResultOf(d)

    def done_failing(self, d: Any) -> Any:
        """A command expected to fail, once the pool had a moment to answer."""
        self.flow(HEARTBEAT_INTERVAL)
        return d


class PoolChangesTests(_PoolBase):
    def test_create_account_reaches_every_instance(self) -> None:
        """create account on crs1: crs2 and crs3 have it, with the secret
        in a 0600 file, and crs-cli is told all three applied it; every
        change log (it holds the secret) is 0600."""
        one, two, three = self.pool(3)
        d = one.admin.create_account("acme", SECRET)
        self.flow(HEARTBEAT_INTERVAL)
        answer = self.successResultOf(d)
        self.assertEqual(answer["pool"], "applied on crs1 crs2 crs3")
        for node in (two, three):
            found = node.accounts.get("acme")
            assert found is not None
            self.assertEqual(found.secret, SECRET)
            mode = os.stat(os.path.join(found.path, "secret")).st_mode
            self.assertEqual(stat.S_IMODE(mode), 0o600)
            self.assertEqual(stat.S_IMODE(os.stat(node.log_path()).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(one.log_path()).st_mode), 0o600)

    def test_refused_locally_changes_nothing(self) -> None:
        """A command this instance refuses (exists, bad ID, unknown account)
        is not sent to the pool."""
        one, _ = self.pool(2)
        self.done(one.admin.create_account("acme", SECRET))
        self.flow(HEARTBEAT_INTERVAL)
        for d in (
            one.admin.create_account("acme", SECRET),
            one.admin.create_account("bad id", SECRET),
            one.admin.add_blacklist("nobody", "tel:+1"),
            one.admin.remove_blacklist("acme", "tel:+1"),
            one.admin.add_blacklist("acme", "not-a-uri"),
            one.admin.create_account("big", "QUFB" * 1200),  # over a change's limit
        ):
            self.failureResultOf(d, CommandFailed)
        assert one.changes.replica is not None
        self.assertEqual(len(one.changes.replica.log), 1)

    def test_pending_while_down_then_converges(self) -> None:
        """crs3 is down: blacklist add on crs1 says pending on crs3; when crs3
        is back it gets the change (and crs2's, made meanwhile)."""
        one, two, three = self.pool(3)
        self.done(one.admin.create_account("acme", SECRET))
        self.flow(HEARTBEAT_INTERVAL)
        self.cut("crs3")
        d = one.admin.add_blacklist("acme", "tel:+491")
        self.flow(HEARTBEAT_INTERVAL)
        answer = self.successResultOf(d)
        self.assertEqual(answer["pool"], "applied on crs1 crs2; pending on crs3 (down)")
        self.assertEqual(
            one.changes.status(), "active (2 changes; crs2 has all; crs3 lacks 1 (down))"
        )
        self.done(two.admin.create_account("other", OTHER))
        self.flow(HEARTBEAT_INTERVAL)
        found = three.accounts.get("acme")
        assert found is not None
        self.assertEqual(found.blacklist, frozenset())
        # crs3 comes back, but only crs2 can reach it: crs2 hands on crs1's change
        self.cut("crs1")
        self.join("crs2", "crs3")
        self.flow(JOIN_WAIT + RESYNC_INTERVAL)
        found = three.accounts.get("acme")
        assert found is not None
        self.assertEqual(found.blacklist, frozenset({"tel:+491"}))
        self.assertIsNotNone(three.accounts.get("other"))
        with open(os.path.join(found.path, "blacklist")) as f:
            self.assertEqual(f.read(), "tel:+491\n")

    def test_not_confirmed_in_time(self) -> None:
        """A peer whose link is up but does not confirm within CONFIRM_WAIT is
        reported as not confirmed yet; the command does not wait longer."""
        one, two = self.pool(2)
        for wire in self.wires:
            wire.only_beats = True  # the link is up, changes are lost
        d = one.admin.create_account("acme", SECRET)
        self.assertNoResult(d)
        self.flow(CONFIRM_WAIT)
        answer = self.successResultOf(d)
        self.assertEqual(answer["pool"], "applied on crs1; pending on crs2 (not confirmed yet)")
        self.assertIsNone(two.accounts.get("acme"))
        for wire in self.wires:
            wire.only_beats = False
        self.flow(RESYNC_INTERVAL)
        self.assertIsNotNone(two.accounts.get("acme"))

    def test_partition_last_writer_wins(self) -> None:
        """The same account created on both sides of a partition with
        different secrets: after healing both hold the later one's."""
        one, two = self.pool(2)
        self.cut("crs2")
        self.done(one.admin.create_account("acme", SECRET))
        self.reactor.advance(1)
        self.done(two.admin.create_account("acme", OTHER))
        self.join("crs1", "crs2")
        self.flow(JOIN_WAIT + RESYNC_INTERVAL)
        for node in (one, two):
            found = node.accounts.get("acme")
            assert found is not None
            self.assertEqual(found.secret, OTHER)

    def test_delete_and_purge_act_everywhere(self) -> None:
        """delete account removes it on every instance and disconnects its
        clients there; purge clients disconnects on every live instance."""
        one, two = self.pool(2)
        self.done(one.admin.create_account("acme", SECRET))
        self.flow(HEARTBEAT_INTERVAL)
        conns = [_Conn(), _Conn(), _Conn()]
        one.registry.attach(Attachment("tel:+1", "acme", 0.0, "1", "192.0.2.9", 1, conns[0]))
        two.registry.attach(Attachment("tel:+2", "acme", 0.0, "1", "192.0.2.9", 1, conns[1]))
        two.registry.attach(Attachment("tel:+3", "acme", 0.0, "1", "192.0.2.9", 1, conns[2]))
        d = one.admin.purge_clients("acme")
        self.flow(HEARTBEAT_INTERVAL)
        answer = self.successResultOf(d)
        self.assertEqual((answer["purged"], answer["pool"]), (3, "purged on crs1 crs2"))
        two.registry.attach(Attachment("tel:+2", "acme", 0.0, "1", "192.0.2.9", 1, conns[1]))
        d = one.admin.delete_account("acme")
        self.flow(HEARTBEAT_INTERVAL)
        self.assertEqual(self.successResultOf(d)["pool"], "applied on crs1 crs2")
        self.assertIsNone(two.accounts.get("acme"))
        self.assertEqual(conns[1].reasons, ["purged", "account deleted"])

    def test_reload_everywhere(self) -> None:
        """reload account re-reads each instance's own directory; problems
        found here are returned as before."""
        one, two = self.pool(2)
        os.makedirs(os.path.join(two.root, "accounts", "byhand"))
        with open(os.path.join(two.root, "accounts", "byhand", "secret"), "w") as f:
            f.write(SECRET)
        os.chmod(os.path.join(two.root, "accounts", "byhand", "secret"), 0o600)
        answer = self.done(one.admin.reload_accounts())
        self.assertEqual((answer["problems"], answer["pool"]), ([], "reloaded on crs1 crs2"))
        self.assertIsNotNone(two.accounts.get("byhand"))
        self.assertIsNone(one.accounts.get("byhand"))

    def test_apply_update_file_everywhere(self) -> None:
        """apply: the update file's months are stored on every instance."""
        one, two = self.pool(2)
        self.done(one.admin.create_account("acme", SECRET))
        self.flow(HEARTBEAT_INTERVAL)
        data = base64.b64encode(update_bytes("acme", blacklist=("tel:+499",))).decode()
        d = one.admin.apply(data)
        self.flow(HEARTBEAT_INTERVAL)
        answer = self.successResultOf(d)
        self.assertEqual(answer["result"]["revision"], 1)
        self.assertEqual(answer["pool"], "applied on crs1 crs2")
        found = two.accounts.get("acme")
        assert found is not None
        self.assertIn("2026-11", found.months)
        self.failureResultOf(one.admin.apply(base64.b64encode(b"junk").decode()), CommandFailed)

    def test_admins_everywhere(self) -> None:
        """create admin, add admin-account and authorization, delete admin:
        the same on every instance."""
        one, two = self.pool(2)
        self.done(one.admin.create_account("acme", SECRET))
        self.flow(HEARTBEAT_INTERVAL)
        _, key = new_secret()
        steps: list[Any] = [
            lambda: one.admin.create_admin("alice", base64.b64encode(key).decode()),
            lambda: one.admin.add_admin_account("alice", "acme"),
            lambda: two.admin.add_admin_authorization("alice", "acme", "statistics"),
        ]
        for step in steps:
            d = step()
            self.flow(HEARTBEAT_INTERVAL)
            self.assertIn("applied on", self.successResultOf(d)["pool"])
        for node in (one, two):
            alice = node.admins.get("alice")
            assert alice is not None
            self.assertEqual(alice.key, key)
            self.assertEqual(alice.accounts, {"acme": frozenset({"statistics"})})
        d = two.admin.delete_admin("alice")
        self.flow(HEARTBEAT_INTERVAL)
        self.successResultOf(d)
        self.assertIsNone(one.admins.get("alice"))

    def test_restart_keeps_the_log(self) -> None:
        """A restarted instance reads its log (a record cut by a crash is cut
        off), applies nothing twice, and catches up on what it missed."""
        one, two = self.pool(2)
        self.done(one.admin.create_account("acme", SECRET))
        self.flow(HEARTBEAT_INTERVAL)
        self.cut("crs2")
        two.stop()
        with open(two.log_path(), "ab") as f:
            f.write(b"\x00\x00\x01\x00torn")
        d = one.admin.add_blacklist("acme", "tel:+1")
        self.successResultOf(d)
        again = Node("crs2", self.reactor, 2, self.root)
        self.nodes["crs2"] = again
        assert again.changes.replica is not None and one.changes.replica is not None
        self.assertEqual(len(again.changes.replica.log), 1)
        self.join("crs1", "crs2")
        self.flow(JOIN_WAIT + RESYNC_INTERVAL)
        self.assertEqual(again.changes.replica.hw, one.changes.replica.hw)
        found = again.accounts.get("acme")
        assert found is not None
        self.assertEqual(found.blacklist, frozenset({"tel:+1"}))

    def test_crash_between_log_and_store(self) -> None:
        """A change logged but not applied when the instance died is applied
        at the next start."""
        one, _ = self.pool(2)
        assert one.changes.replica is not None
        change = one.changes.replica.make(
            Kind.ACCOUNT_CREATE, {"account": "acme", "secret": SECRET}, 5
        )
        one.changes.file.append(change.encode())
        self.cut("crs1")
        one.stop()
        again = Node("crs1", self.reactor, 2, self.root)
        self.nodes["crs1"] = again
        self.assertIsNotNone(again.accounts.get("acme"))

    def test_hostile_change_frames_drop_the_connection(self) -> None:
        """A pool-change frame that does not check is refused: the
        connection is dropped and nothing is applied."""
        one, _ = self.pool(2)
        proto, transport = one.inbound()
        proto.dataReceived(
            encode_heartbeat(Heartbeat("crs2", None))
            + encode_frame(
                CHANGE_FRAME, {"o": "crs2:1", "s": 1, "part": 0, "parts": 1, "data": b"\xff"}
            )
        )
        self.assertTrue(transport.disconnecting)
        proto, transport = one.inbound()
        proto.dataReceived(
            encode_heartbeat(Heartbeat("crs2", None))
            + encode_frame(CHANGE_FRAME, {"o": "crs2:1", "s": 1})
        )
        self.assertTrue(transport.disconnecting)
        assert one.changes.replica is not None
        self.assertEqual(one.changes.replica.log, [])

    def test_unreadable_log_stops_start(self) -> None:
        """A change log that is not one (a whole record that does not decode)
        stops the start instead of being overwritten."""
        from cryptify.crs.pool.changes_core import encode_record
        from cryptify.service import StartupError

        path = os.path.join(self.root, "crs9", "data", LOG_FILE)
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(encode_record(b"\xa1\x63log\x01") + encode_record(b"\x01"))
        link = PoolLink(config(2), "crs1", self.reactor, lambda u, e: None, incarnation=lambda: 1)
        applier = StateApplier(CrsState("crs1"))
        changes = PoolChanges(link, os.path.dirname(path), self.reactor, applier)
        self.assertRaises(StartupError, changes.startService)


class CompactionTests(_PoolBase):
    def test_compacted_then_a_wiped_member_catches_up(self) -> None:
        """Once every member applied them, the changes fold into a snapshot
        (the log file reads back the same); a member that lost
        its data gets the snapshot and its accounts back; if its effects
        were cut by a crash, the next start carries them out."""
        one, two, three = self.pool(3, compact_after=2)
        self.done(one.admin.create_account("acme", SECRET))
        self.done(two.admin.add_blacklist("acme", "tel:+1"))
        self.done(one.admin.create_account("other", OTHER))
        self.done(one.admin.delete_account("other"))
        self.flow(2 * RESYNC_INTERVAL)
        for node in (one, two, three):
            assert node.changes.replica is not None
            self.assertEqual(node.changes.replica.log, [], node.name)
        self.assertEqual(stat.S_IMODE(os.stat(one.log_path()).st_mode), 0o600)
        self.assertEqual(
            one.changes.status(),
            "active (0 changes after a snapshot of 3; crs2 has all; crs3 has all)",
        )
        # a restart reads the snapshot back
        self.cut("crs1")
        one.stop()
        one = self.nodes["crs1"] = Node("crs1", self.reactor, 3, self.root, 2)
        assert one.changes.replica is not None and two.changes.replica is not None
        self.assertEqual(one.changes.replica.hw, two.changes.replica.hw)
        self.join("crs1", "crs2")
        # crs3 loses its data: its new log catches up from a snapshot
        self.cut("crs3")
        three.stop()
        shutil.rmtree(three.root)
        three = self.nodes["crs3"] = Node("crs3", self.reactor, 3, self.root, 2)
        self.join("crs1", "crs3")
        self.join("crs2", "crs3")
        self.flow(JOIN_WAIT + RESYNC_INTERVAL)
        found = three.accounts.get("acme")
        assert found is not None and three.changes.replica is not None
        self.assertEqual((found.secret, found.blacklist), (SECRET, frozenset({"tel:+1"})))
        self.assertIsNone(three.accounts.get("other"))
        self.assertEqual(
            set(three.changes.replica.hw) - {three.changes.replica.origin},
            set(two.changes.replica.hw),
        )
        # a crash cut the snapshot's effects: the next start does them
        self.cut("crs3")
        three.stop()
        shutil.rmtree(os.path.join(three.root, "accounts"))
        three = self.nodes["crs3"] = Node("crs3", self.reactor, 3, self.root, 2)
        self.assertIsNotNone(three.accounts.get("acme"))

    def test_compaction_that_cannot_be_written_changes_nothing(self) -> None:
        """A rewrite that fails (disk full, say) leaves the log as it was:
        nothing folded, changes still appended, a restart reads them all."""
        one, _ = self.pool(2, compact_after=1)

        def full(*args: object, **kwargs: object) -> None:
            raise OSError(28, "No space left on device")

        self.patch(changes_log, "write_atomically", full)
        self.done(one.admin.create_account("acme", SECRET))
        self.flow(2 * RESYNC_INTERVAL)
        assert one.changes.replica is not None
        self.assertIsNone(one.changes.replica.snapshot)
        self.done(one.admin.add_blacklist("acme", "tel:+1"))
        self.assertEqual(len(one.changes.replica.log), 2)
        self.cut("crs1")
        one.stop()
        again = self.nodes["crs1"] = Node("crs1", self.reactor, 2, self.root, 1)
        assert again.changes.replica is not None
        self.assertEqual(len(again.changes.replica.log), 2)
        self.assertEqual(again.changes.replica.snapshot, None)


class NotifyTests(_PoolBase):
    def test_applied_everywhere_or_pending(self) -> None:
        """notify.sh pool_changes: applied KIND when every member applied a
        change made here, pending KIND NAMES when one is down, and applied
        once the pending change reached it."""
        one, _, _ = self.pool(3)

        def told() -> list[str]:
            events = [e for u, e in one.events if u == "pool_changes"]
            one.events.clear()
            return events

        self.done(one.admin.create_account("acme", SECRET))
        self.assertEqual(told(), ["applied account-create"])
        self.cut("crs3")
        self.done(one.admin.add_blacklist("acme", "tel:+1"))
        self.done(one.admin.add_blacklist("acme", "tel:+2"))
        self.assertEqual(told(), ["pending blacklist-add crs3"] * 2)
        self.join("crs1", "crs3")
        self.join("crs2", "crs3")
        self.flow(JOIN_WAIT + RESYNC_INTERVAL)
        self.assertEqual(told(), ["applied blacklist-add"] * 2)
        self.done(one.admin.remove_blacklist("acme", "tel:+2"))
        self.assertEqual(told(), ["applied blacklist-remove"])


class CliTests(SynchronousTestCase):
    """crs-cli prints where a pool-wide command is done, after its usual line."""

    def run_action(self, argv: list[str], answer: dict[str, Any]) -> str:
        out, err = io.StringIO(), io.StringIO()
        args: argparse.Namespace = cli.build_parser(err).parse_args(argv)

        class Client:
            async def call(self, command: Any, **kwargs: Any) -> dict[str, Any]:
                return answer

        status = self.successResultOf(ensureDeferred(cli.remote_action(args, out, err)(Client())))
        self.assertEqual(status, 0)
        return out.getvalue()

    def test_pool_line(self) -> None:
        where = "applied on crs1 crs2; pending on crs3 (down)"
        for argv, answer, first in (
            (["blacklist", "add", "acme", "tel:+1"], {"disconnected": 0}, "tel:+1 blacklisted"),
            (["blacklist", "remove", "acme", "tel:+1"], {}, "tel:+1 removed"),
            (["create", "account", "acme", "-s", SECRET], {"path": "/a/acme"}, "account acme"),
            (["delete", "account", "acme"], {"disconnected": 1}, "account acme deleted"),
            (["purge", "clients", "acme"], {"purged": 2}, "2 purged"),
            (["delete", "admin", "alice"], {}, "admin alice deleted"),
        ):
            with self.subTest(argv=argv):
                text = self.run_action(argv, {**answer, "pool": where})
                self.assertTrue(text.startswith(first), text)
                self.assertTrue(text.endswith(where + "\n"), text)
                # a single instance says nothing more
                self.assertNotIn("applied on", self.run_action(argv, answer))


class _Push:
    """A member's push wake-ups: the answer it gives, and what it was asked."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str]] = []

    async def wake(self, account: str, uri: str) -> str:
        self.asked.append((account, uri))
        return self.answer


class WakeupTests(_PoolBase):
    def test_wakeup_by_the_member_with_the_token(self) -> None:
        """wakeup client on a member without the client's token asks the
        others; the answer names the one that sent it."""
        one, two, three = self.pool(3)
        self.done(one.admin.create_account("acme", SECRET))
        pushes = [_Push("no push token"), _Push("no push token"), _Push("sent")]
        for node, push in zip((one, two, three), pushes, strict=True):
            node.state.push = push
        answer = self.done(one.admin.wakeup_client("acme", "tel:+1"))
        self.assertEqual(answer, {"result": "sent", "pool": "sent by crs3"})
        self.assertEqual([p.asked for p in pushes], [[("acme", "tel:+1")]] * 3)
        pushes[2].answer = "limited: this client was woken a moment ago"
        failure = self.failureResultOf(
            self.done_failing(one.admin.wakeup_client("acme", "tel:+1")), CommandFailed
        )
        self.assertEqual(
            str(failure.value),
            "not sent: no push token here; crs2: no push token;"
            " crs3: limited: this client was woken a moment ago",
        )
