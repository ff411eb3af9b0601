"""The synchronization link's sans-IO parts: key, backup peer, command filter,
INFO parsing and the checks of backed-up messages."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.pool.sync_core import (
    MAX_ARG_BYTES,
    MAX_ARGS,
    BadBackupMessage,
    FilterError,
    InfoError,
    ReplicationFilter,
    backup_peer,
    check_backup_message,
    parse_replication_info,
    sync_psk,
)
from tests.pool_support import INFO_DOWN, INFO_UP, resp

#: What redis-server 7 sends its master when it starts replicating.
REPLICA_HELLO = (
    resp(b"PING")
    + resp(b"REPLCONF", b"listening-port", b"6392")
    + resp(b"REPLCONF", b"capa", b"eof", b"capa", b"psync2")
    + resp(b"PSYNC", b"8de1d6c2a0f4c2e3b1f5a3c6d7e8f9a0b1c2d3e4", b"1")
    + resp(b"REPLCONF", b"ACK", b"1234")
)


class SyncKeyTests(SynchronousTestCase):
    def test_derived_per_link(self) -> None:
        """The sync key is 32 octets from any pool key, differs with the key,
        and differs from the key itself."""
        self.assertEqual(len(sync_psk("short")), 32)
        self.assertNotEqual(sync_psk("a" * 20), sync_psk("b" * 20))
        self.assertEqual(sync_psk("same"), sync_psk("same"))
        self.assertNotIn(b"same", sync_psk("same"))


class BackupPeerTests(SynchronousTestCase):
    def test_two(self) -> None:
        """In a pool of two each replicates the other."""
        self.assertEqual(backup_peer(("crs1", "crs2"), "crs1"), "crs2")
        self.assertEqual(backup_peer(("crs1", "crs2"), "crs2"), "crs1")

    def test_three_next_in_order(self) -> None:
        """With three, each replicates the next in configuration order, wrapping."""
        names = ("a", "b", "c")
        self.assertEqual([backup_peer(names, n) for n in names], ["b", "c", "a"])

    def test_no_pool(self) -> None:
        """Alone, or not a member: nobody."""
        self.assertIsNone(backup_peer(("crs1",), "crs1"))
        self.assertIsNone(backup_peer(("crs1", "crs2"), "crs9"))


class ReplicationFilterTests(SynchronousTestCase):
    def test_replica_stream_passes(self) -> None:
        """What a Redis replica sends passes unchanged, whatever the pieces."""
        f = ReplicationFilter()
        out = b"".join(f.feed(REPLICA_HELLO[i : i + 7]) for i in range(0, len(REPLICA_HELLO), 7))
        self.assertEqual(out, REPLICA_HELLO)

    def test_incomplete_held(self) -> None:
        """A command is let through only once it is complete."""
        f = ReplicationFilter()
        whole = resp(b"REPLCONF", b"ACK", b"1")
        self.assertEqual(f.feed(whole[:-1]), b"")
        self.assertEqual(f.feed(whole[-1:]), whole)

    def test_other_commands_refused(self) -> None:
        """A peer with the key may replicate, not write: FLUSHALL, SET, AUTH,
        CONFIG and inline commands are refused."""
        for data in (
            resp(b"FLUSHALL"),
            resp(b"set", b"k", b"v"),
            resp(b"AUTH", b"pw"),
            resp(b"CONFIG", b"SET", b"dir", b"/tmp"),
            b"PING\r\n",
        ):
            with self.assertRaises(FilterError, msg=data):
                ReplicationFilter().feed(data)

    def test_refused_after_good(self) -> None:
        """A bad command after good ones is refused before anything after it passes."""
        with self.assertRaises(FilterError):
            ReplicationFilter().feed(resp(b"PING") + resp(b"DEL", b"inbox:x"))

    def test_limits(self) -> None:
        """Too many arguments, an over-long argument or header line, and a
        missing CRLF are refused, and an endless line is not buffered."""
        for data in (
            resp(*[b"REPLCONF"] * (MAX_ARGS + 1)),
            resp(b"REPLCONF", b"x" * (MAX_ARG_BYTES + 1)),
            b"*1\r\n$4\r\nPINGxx",
            b"*" + b"1" * 100,
            b"*0\r\n",
        ):
            with self.assertRaises(FilterError, msg=data):
                ReplicationFilter().feed(data)

    @given(st.binary(max_size=2000), st.integers(min_value=1, max_value=64))
    def test_hostile(self, data: bytes, piece: int) -> None:
        """Any octets: FilterError or a prefix of the input made of whole
        replication commands, never another exception, never unbounded."""
        f = ReplicationFilter()
        out = b""
        try:
            for i in range(0, len(data), piece):
                out += f.feed(data[i : i + piece])
                self.assertLess(len(f._buffer), MAX_ARGS * (MAX_ARG_BYTES + 40) + 64)
        except FilterError:
            pass
        self.assertTrue(data.startswith(out))
        if out:
            self.assertEqual(ReplicationFilter().feed(out), out)

    @given(
        st.lists(
            st.tuples(
                st.sampled_from([b"PING", b"REPLCONF", b"psync", b"SYNC"]),
                st.lists(st.binary(max_size=MAX_ARG_BYTES), max_size=MAX_ARGS - 1),
            ),
            max_size=10,
        )
    )
    def test_allowed_always_pass(self, commands: list[tuple[bytes, list[bytes]]]) -> None:
        """Any sequence of allowed commands within the limits passes whole."""
        data = b"".join(resp(name, *args) for name, args in commands)
        self.assertEqual(ReplicationFilter().feed(data), data)


class ReplicationInfoTests(SynchronousTestCase):
    def test_up(self) -> None:
        """A replica in sync: link up, its lag and offset."""
        status = parse_replication_info(INFO_UP)
        self.assertTrue(status.up)
        self.assertEqual((status.last_io, status.offset), (2, 4470))
        self.assertEqual(status.describe(), "link up, lag 2s, offset 4470")

    def test_down(self) -> None:
        """A replica whose master is gone: down, and for how long."""
        status = parse_replication_info(INFO_DOWN)
        self.assertFalse(status.up)
        self.assertEqual(status.describe(), "link down, for 17s")

    def test_not_a_replica(self) -> None:
        """A master's answer (redis_backup not replicating) is an error."""
        with self.assertRaises(InfoError):
            parse_replication_info("# Replication\r\nrole:master\r\n")

    @given(st.text(max_size=3000))
    def test_hostile(self, text: str) -> None:
        """Any text: a status or InfoError."""
        try:
            status = parse_replication_info(text)
        except InfoError:
            return
        self.assertIn(status.link, ("up", "down"))
        status.describe()


def fields(**changes: str) -> dict[str, str]:
    good = {
        "from": "tel:+1",
        "to": "tel:+2;7",
        "inbox": "tel:+2",
        "account": "acme",
        "kind": "content",
        "time": "1800000000000",
        "data": base64.b64encode(b"\x00hello").decode(),
        "dedup": "dedup:tel:+1:key:00",
    }
    good.update(changes)
    return good


MID = "1a2b3c4d5e6-0123456789abcdef"


class BackupMessageTests(SynchronousTestCase):
    def test_good(self) -> None:
        """A message as the store writes it is read back whole."""
        m = check_backup_message(MID, fields())
        self.assertEqual(
            (m.id, m.sender, m.recipient, m.inbox, m.kind, m.time_ms, m.data),
            (MID, "tel:+1", "tel:+2;7", "tel:+2", "content", 1800000000000, b"\x00hello"),
        )

    def test_bad(self) -> None:
        """Each unusable field is refused by name."""
        for message_id, changes in (
            ("../x", {}),
            (MID, {"kind": "evil"}),
            (MID, {"time": "12a"}),
            (MID, {"data": "not base64!"}),
            (MID, {"data": base64.b64encode(b"x" * 50000).decode()}),
            (MID, {"from": ""}),
            (MID, {"to": "a b"}),
        ):
            with self.assertRaises(BadBackupMessage):
                check_backup_message(message_id, fields(**changes))

    @given(st.text(max_size=40), st.dictionaries(st.text(max_size=12), st.text(max_size=80)))
    def test_hostile(self, message_id: str, hostile: dict[str, str]) -> None:
        """Any hash: a checked message or BadBackupMessage."""
        try:
            check_backup_message(message_id, hostile)
        except BadBackupMessage:
            pass
