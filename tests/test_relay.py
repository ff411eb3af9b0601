"""The relay's adapters, control channel and service, in memory (Clock, fakes, iosim)."""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.protocols import amp
from twisted.python import usage
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from cryptify.crs.calls.wiring import SPARE_AGE, LinkRelayAllocator
from cryptify.crs.relay.core import RelayCore
from cryptify.crs.relay.wiring import (
    RelayDatagram,
    RelayReader,
    RelayService,
    control_factory,
    relay_lines,
)
from cryptify.links.relay_link import RelayLink
from cryptify.plugins.crs_relay import Options
from cryptify.protocols.relay_control import (
    MAX_BATCH,
    BatchTooLarge,
    RelayAllocation,
)

ALICE = ("198.51.100.10", 40000)
BOB = ("203.0.113.20", 50000)
RTP = b"\x80\x00" + bytes(170)


def counting_random() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


class FakeDatagramTransport:
    """Records writes; raises ``error`` instead when it is set."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any]] = []
        self.error: OSError | None = None

    def write(self, data: bytes, addr: Any) -> None:
        if self.error is not None:
            raise self.error
        self.written.append((data, addr))


class FakeSocket:
    """A non-blocking UDP socket stand-in: queued datagrams in, sends recorded."""

    def __init__(self, incoming: list[tuple[bytes, Any]]) -> None:
        self.incoming = list(incoming)
        self.sent: list[tuple[bytes, Any]] = []
        self.error: OSError | None = None
        self.closed = False

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        if not self.incoming:
            raise BlockingIOError(errno.EAGAIN, "would block")
        return self.incoming.pop(0)

    def sendto(self, data: bytes, addr: Any) -> int:
        if self.error is not None:
            raise self.error
        self.sent.append((data, addr))
        return len(data)

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        self.closed = True


def relay_with_session() -> tuple[RelayService, Clock, Any]:
    clock = Clock()
    core = RelayCore(random=counting_random())
    relay = RelayService(core, clock, "0.0.0.0", 146)
    link = core.open_link("crs1", 0.0)
    session = core.add(link, 0.0)
    return relay, clock, session


class DatagramAdapterTests(SynchronousTestCase):
    def test_forwards_and_counts_txb(self) -> None:
        """The Twisted adapter writes what the core answers and counts TXB."""
        relay, _clock, session = relay_with_session()
        proto = relay.datagram_protocol()
        transport = FakeDatagramTransport()
        proto.transport = transport  # type: ignore[assignment]
        proto.datagramReceived(session.a.tag + RTP, ALICE)
        proto.datagramReceived(session.b.tag + RTP, BOB)
        proto.datagramReceived(session.a.tag + RTP, ALICE)
        self.assertEqual(transport.written, [(RTP, ALICE), (RTP, BOB)])
        stats = relay.core.stats()
        self.assertEqual((stats["RX"], stats["TXB"], stats["ERRNODEST"]), (3, 2, 1))

    def test_send_failure_is_txerror(self) -> None:
        """A packet the kernel refuses is counted in TXERROR, not TXB."""
        relay, clock, session = relay_with_session()
        proto = RelayDatagram(relay.core, clock)
        transport = FakeDatagramTransport()
        proto.transport = transport  # type: ignore[assignment]
        proto.datagramReceived(session.a.tag + RTP, ALICE)
        transport.error = OSError(errno.ENOBUFS, "no buffer space")
        proto.datagramReceived(session.b.tag + RTP, BOB)
        stats = relay.core.stats()
        self.assertEqual((stats["TXB"], stats["TXERROR"]), (0, 1))

    def test_time_comes_from_the_clock(self) -> None:
        """Latching and rebinding use the injected clock's time."""
        relay, clock, session = relay_with_session()
        proto = relay.datagram_protocol()
        proto.transport = FakeDatagramTransport()  # type: ignore[assignment]
        clock.advance(100)
        proto.datagramReceived(session.a.tag + RTP, ALICE)
        self.assertEqual(session.a.seen, 100.0)


class ReaderTests(SynchronousTestCase):
    def test_reads_until_the_socket_is_empty(self) -> None:
        """One wakeup drains the socket: every datagram is routed, forwards are sent."""
        relay, clock, session = relay_with_session()
        sock = FakeSocket(
            [
                (session.a.tag + RTP, ALICE),
                (b"runt", ALICE),
                (session.b.tag + RTP, BOB),
                (session.a.tag + RTP, ALICE),
            ]
        )
        reader = RelayReader(relay.core, clock, sock)  # type: ignore[arg-type]
        reader.doRead()
        self.assertEqual(sock.sent, [(RTP, ALICE), (RTP, BOB)])
        self.assertEqual(relay.core.stats()["ERRTOSHORT"], 1)
        self.assertEqual(relay.core.stats()["TXB"], 2)

    def test_budget_bounds_one_wakeup(self) -> None:
        """A flood is read at most ``budget`` datagrams per wakeup, so timers still run."""
        relay, clock, _session = relay_with_session()
        sock = FakeSocket([(b"x" * 30, ALICE)] * 10)
        reader = RelayReader(relay.core, clock, sock, budget=4)  # type: ignore[arg-type]
        reader.doRead()
        self.assertEqual(len(sock.incoming), 6)
        self.assertEqual(relay.core.stats()["ERRNODEST"], 4)

    def test_send_failure_is_txerror(self) -> None:
        """sendto errors are TXERROR and do not stop the reader."""
        relay, clock, session = relay_with_session()
        sock = FakeSocket([(session.a.tag + RTP, ALICE), (session.b.tag + RTP, BOB)] * 2)
        sock.error = OSError(errno.EAGAIN, "full")
        reader = RelayReader(relay.core, clock, sock)  # type: ignore[arg-type]
        reader.doRead()
        self.assertEqual(relay.core.stats()["TXERROR"], 3)
        self.assertEqual(sock.incoming, [])


class ServiceTests(SynchronousTestCase):
    def test_sweep_expires_and_logs(self) -> None:
        """The running service sweeps on the clock, logs each expiry, and leaves no timer behind."""
        clock = Clock()
        core = RelayCore(idle_timeout=10.0, owner_grace=1000.0)
        relay = RelayService(core, clock, "0.0.0.0", 146)
        relay.startService()
        link = core.open_link("crs1", 0.0)
        core.add(link, 0.0, "call 7")
        with capturedLogs() as events:
            clock.pump([1.0] * 16)
        self.assertEqual(core.entries, 0)
        self.assertIn("inactivity", " ".join(e["reason"] for e in events if "reason" in e))
        relay.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])


@implementer(IStreamClientEndpoint)
class PumpedEndpoint:
    """Connects each client to a new server protocol through an iosim pump."""

    def __init__(self, server_factory: Factory[Any], clock: Clock) -> None:
        self.server_factory = server_factory
        self.clock = clock
        self.pumps: list[iosim.IOPump] = []

    def connect(self, factory: Factory[Any]) -> defer.Deferred[Protocol]:
        client = factory.buildProtocol(None)
        server = self.server_factory.buildProtocol(None)
        assert client is not None and server is not None
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, isServer=True),
            client,
            iosim.FakeTransport(client, isServer=False),
            clock=self.clock,
        )
        self.pumps.append(pump)
        return defer.succeed(client)

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()


class ControlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.core = RelayCore(owner_grace=60.0, idle_timeout=1000.0)
        self.relay = RelayService(self.core, self.clock, "0.0.0.0", 15146)
        self.endpoint = PumpedEndpoint(control_factory(self.relay), self.clock)
        self.links: list[RelayLink] = []

    def tearDown(self) -> None:
        for link in self.links:
            if link.running:
                link.stopService()
        self.endpoint.flush()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def link(self, name: str = "crs1") -> RelayLink:
        link = RelayLink(self.clock, self.endpoint, name)
        link.startService()
        self.links.append(link)
        self.endpoint.flush()
        return link

    def drive(self, coroutine: Any) -> Any:
        d = defer.ensureDeferred(coroutine)
        self.endpoint.flush()
        return self.successResultOf(d)

    def test_add_gives_tags_and_relay_address_and_logs(self) -> None:
        """add_session answers two distinct 8-byte tags and the media address; the relay logs
        CONNECTION, Command poll and Command add (without the tags)."""
        lines: list[str] = []
        relay_lines.add(lines.append)
        self.addCleanup(relay_lines.remove, lines.append)
        with capturedLogs() as events:
            link = self.link()
            got = self.drive(link.add_session("call 1"))
        self.assertIsInstance(got, RelayAllocation)
        self.assertEqual((got.host, got.port), ("0.0.0.0", 15146))
        self.assertEqual({len(got.tag_a), len(got.tag_b)}, {8})
        self.assertNotEqual(got.tag_a, got.tag_b)
        self.assertEqual(self.core.sessions[got.session].a.tag, got.tag_a)
        text = [e.get("log_format", "") for e in events]
        for expected in ("CONNECTION from the CRS", "Command poll from {server}"):
            self.assertTrue(any(t.startswith(expected) for t in text), expected)
        self.assertEqual(len(lines), 1)
        self.assertRegex(
            lines[0], r"^\[.* \| INFO \| relay\(\d+\) \] Command add: session \d+ \(call 1\)"
        )
        for e in [*events, *lines]:
            self.assertNotIn(got.tag_a, repr(e).encode())
            self.assertNotIn(got.tag_a.hex(), repr(e))

    def test_stats_has_exactly_the_show_relay_counters(self) -> None:
        """stats() answers RX, TXB, TXERROR, ERRNODEST, ERRTOSHORT, ERRTOLONG, ENTRIES."""
        link = self.link()
        self.drive(link.add_session())
        self.core.packet(b"x", ALICE, 0.0)
        stats = self.drive(link.stats())
        self.assertEqual(
            stats,
            {
                "RX": 1,
                "TXB": 0,
                "TXERROR": 0,
                "ERRNODEST": 0,
                "ERRTOSHORT": 1,
                "ERRTOLONG": 0,
                "ENTRIES": 1,
            },
        )

    def test_remove(self) -> None:
        """remove_session deletes a session and says False for an unknown one."""
        link = self.link()
        got = self.drive(link.add_session())
        self.assertTrue(self.drive(link.remove_session(got.session)))
        self.assertFalse(self.drive(link.remove_session(got.session)))
        self.assertEqual(self.core.entries, 0)

    def test_restart_lists_and_reclaims(self) -> None:
        """A CRS that reconnects lists its live sessions and reclaims them; unreclaimed ones
        expire after the grace period, reclaimed ones stay."""
        first = self.link()
        keep = self.drive(first.add_session("a")).session
        lose = self.drive(first.add_session("b")).session
        with capturedLogs() as events:
            first.stopService()
            self.endpoint.flush()
        self.assertTrue(any("CLOSE" in e.get("log_format", "") for e in events))
        self.clock.advance(30)
        second = self.link()
        listed = self.drive(second.list_sessions())
        self.assertEqual({s["session"] for s in listed}, {keep, lose})
        self.assertEqual(self.drive(second.reclaim([keep, 12345])), [keep])
        self.clock.advance(31)
        self.drive(second.poll())
        self.relay.sweep()
        self.assertEqual(list(self.core.sessions), [keep])

    def test_silent_crs_sessions_expire(self) -> None:
        """A connected CRS that stops polling loses its sessions after the grace period."""
        link = self.link()
        self.drive(link.add_session())
        link._loop.stop()  # the CRS hangs: no more polls
        self.clock.advance(61)
        self.relay.sweep()
        self.assertEqual(self.core.entries, 0)

    def test_polls_keep_sessions(self) -> None:
        """A polling CRS keeps its sessions past the grace period."""
        link = self.link()
        self.drive(link.add_session())
        for _ in range(10):
            self.clock.advance(10)
            self.endpoint.flush()
        self.relay.sweep()
        self.assertEqual(self.core.entries, 1)

    def test_batched_add_and_remove(self) -> None:
        """AddMany creates one session per label, in order, with distinct tags;
        RemoveMany answers the sessions that existed."""
        link = self.link()
        lines: list[str] = []
        relay_lines.add(lines.append)
        self.addCleanup(relay_lines.remove, lines.append)
        got = self.drive(link.add_sessions(["a", "b", "c"]))
        self.assertEqual([self.core.sessions[g.session].label for g in got], ["a", "b", "c"])
        self.assertEqual({(g.host, g.port) for g in got}, {("0.0.0.0", 15146)})
        self.assertEqual(len({g.tag_a for g in got} | {g.tag_b for g in got}), 6)
        adds = [line for line in lines if "] Command add: " in line]
        self.assertEqual(len(adds), 3)
        first = got[0].session
        self.assertEqual(self.drive(link.remove_sessions([first, 999999])), [first])
        self.assertEqual(self.core.entries, 2)
        # more than MAX_BATCH at once: a clear refusal, nothing created or removed
        for call in (
            lambda: link.add_sessions(["x"] * (MAX_BATCH + 1)),
            lambda: link.remove_sessions([got[1].session] * (MAX_BATCH + 1)),
        ):
            d = call()
            self.endpoint.flush()
            self.failureResultOf(d).trap(BatchTooLarge)
        self.assertEqual(self.core.entries, 2)

    def counted(self, unknown: str | None = None) -> tuple[LinkRelayAllocator, list[str]]:
        """An allocator on a new link, and the names of the commands the
        link sends, in order; the relay answers ``unknown`` as a command it
        does not know (an older relay)."""
        link = self.link()
        sent: list[str] = []
        original = link.call

        def counting(command: Any, **kwargs: Any) -> Any:
            sent.append(command.__name__)
            if command.__name__ == unknown:
                return defer.fail(amp.UnhandledCommand(command.__name__))
            return original(command, **kwargs)

        link.call = counting  # type: ignore[method-assign]
        return LinkRelayAllocator(link, "192.0.2.5"), sent

    def test_allocator_batches_one_turn(self) -> None:
        """The calls of one reactor turn get their relay sessions with one AddMany and
        give them back with one RemoveMany."""
        allocator, sent = self.counted()
        pending = [allocator.allocate(f"s{n}") for n in range(3)]
        self.clock.advance(0)
        self.endpoint.flush()
        legs = [self.successResultOf(d) for d in pending]
        self.assertEqual(sent, ["AddSessions"])
        self.assertEqual({leg.host for leg in legs}, {"192.0.2.5"})
        self.assertEqual(self.core.entries, 3)
        for n in range(3):
            allocator.release(f"s{n}")
        allocator.release("unknown")
        self.clock.advance(0)
        self.endpoint.flush()
        self.assertEqual(sent, ["AddSessions", "RemoveSessions"])
        self.assertEqual(self.core.entries, 0)

    def test_allocator_bridges_one_turn_in_one_command(self) -> None:
        """The legs bridged in one reactor turn go to the relay as one
        BridgeMany; each caller learns whether its leg was bridged (a
        session the allocator does not hold: False without asking); the
        relay bridges them and writes a Command bridge line for each."""
        allocator, sent = self.counted()
        pending = [allocator.allocate(f"s{n}") for n in range(2)]
        self.clock.advance(0)
        self.endpoint.flush()
        self.assertEqual(len([self.successResultOf(d) for d in pending]), 2)
        numbers = [allocator.numbers[f"s{n}"] for n in range(2)]
        lines: list[str] = []
        relay_lines.add(lines.append)
        self.addCleanup(relay_lines.remove, lines.append)
        tag = b"T" * 8
        done = [
            allocator.bridge("s0", "a", "198.51.100.7", 5000, tag),
            allocator.bridge("s1", "b", "198.51.100.8", 5002, tag),
        ]
        self.assertFalse(self.successResultOf(allocator.bridge("nope", "a", "h", 1, tag)))
        self.clock.advance(0)
        self.endpoint.flush()
        self.assertEqual([self.successResultOf(d) for d in done], [True, True])
        self.assertEqual(sent, ["AddSessions", "BridgeSessions"])
        self.assertEqual(self.core.sessions[numbers[0]].a.bridge, tag)
        self.assertEqual(self.core.sessions[numbers[1]].b.bridge, tag)
        self.assertEqual(len([line for line in lines if "] Command bridge: " in line]), 2)

    def test_bridge_many_refuses_too_many(self) -> None:
        """More than MAX_BATCH legs in one BridgeMany: a clear refusal,
        nothing bridged."""
        link = self.link()
        got = self.drive(link.add_sessions(["a"]))
        leg = (got[0].session, "a", "198.51.100.7", 5000, b"T" * 8)
        d = link.bridge_sessions([leg] * (MAX_BATCH + 1))
        self.endpoint.flush()
        self.failureResultOf(d).trap(BatchTooLarge)
        self.assertIsNone(self.core.sessions[got[0].session].a.bridge)
        self.assertEqual(self.drive(link.bridge_sessions([leg])), [True])
        self.assertEqual(
            self.drive(link.bridge_sessions([(999999, "a", "h", 1, b"T" * 8)])), [False]
        )

    def test_allocator_bridges_one_by_one_with_an_older_relay(self) -> None:
        """A relay that does not know BridgeMany gets one Bridge per leg,
        from then on."""
        allocator, sent = self.counted(unknown="BridgeSessions")
        allocator.allocate("s0")
        allocator.allocate("s1")
        self.clock.advance(0)
        self.endpoint.flush()
        first = allocator.bridge("s0", "a", "198.51.100.7", 5000, b"T" * 8)
        self.clock.advance(0)
        self.endpoint.flush()
        self.assertTrue(self.successResultOf(first))
        second = allocator.bridge("s1", "a", "198.51.100.7", 5000, b"T" * 8)
        self.clock.advance(0)
        self.endpoint.flush()
        self.assertTrue(self.successResultOf(second))
        self.assertEqual(sent, ["AddSessions", "BridgeSessions", "Bridge", "Bridge"])


class FakeLink:
    """A RelayLink whose answers the test gives; ``batched`` False: an older relay."""

    def __init__(self, clock: Clock, batched: bool = True) -> None:
        self.reactor = clock
        self.batched = batched
        self.numbers = itertools.count(1)
        self.adds: list[Any] = []
        self.removes: list[Any] = []

    def _allocation(self, label: str) -> RelayAllocation:
        n = next(self.numbers)
        return RelayAllocation(n, bytes([n]) * 8, bytes([n + 100]) * 8, "198.51.100.1", 146)

    async def add_sessions(self, labels: list[str]) -> list[RelayAllocation]:
        if not self.batched:
            raise amp.UnhandledCommand("AddMany")
        d: defer.Deferred[list[RelayAllocation]] = defer.Deferred()
        self.adds.append((labels, d))
        return await d

    async def add_session(self, label: str = "") -> RelayAllocation:
        self.adds.append(label)
        return self._allocation(label)

    async def remove_sessions(self, sessions: list[int]) -> list[int]:
        self.removes.append(sessions)
        return sessions

    async def remove_session(self, session: int) -> bool:
        self.removes.append(session)
        return True


class AllocatorTests(SynchronousTestCase):
    """LinkRelayAllocator's batching and its failures, on a Clock with a fake link."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def test_failed_batch_fails_its_calls_only(self) -> None:
        """When AddMany fails, each allocation of that batch fails; the next batch is served."""
        link = FakeLink(self.clock)
        allocator = LinkRelayAllocator(link, "192.0.2.5")
        first = [allocator.allocate("a"), allocator.allocate("b")]
        self.assertEqual(link.adds, [])  # not before the turn ends
        self.clock.advance(0)
        second = allocator.allocate("c")
        self.clock.advance(0)
        (labels1, d1), (labels2, d2) = link.adds
        self.assertEqual((labels1, labels2), (["a", "b"], ["c"]))
        d1.errback(ConnectionDone("relay went away"))
        d2.callback([link._allocation("c")])
        for d in first:
            self.failureResultOf(d, ConnectionDone)
        self.assertEqual(self.successResultOf(second).port, 146)
        self.assertEqual(list(allocator.numbers), ["c"])

    def test_full_batch_goes_at_once(self) -> None:
        """``max_batch`` allocations are sent without waiting for the turn to end."""
        link = FakeLink(self.clock)
        allocator = LinkRelayAllocator(link, "192.0.2.5", max_batch=2)
        allocator.allocate("a")
        allocator.allocate("b")
        self.assertEqual([labels for labels, _ in link.adds], [["a", "b"]])
        allocator.allocate("c")
        self.clock.advance(0)
        self.assertEqual([labels for labels, _ in link.adds], [["a", "b"], ["c"]])

    def test_older_relay_gets_one_command_per_session(self) -> None:
        """A relay without AddMany gets Add per session, and Remove per session after."""
        link = FakeLink(self.clock, batched=False)
        allocator = LinkRelayAllocator(link, "192.0.2.5")
        pending = [allocator.allocate("a"), allocator.allocate("b")]
        self.clock.advance(0)
        legs = [self.successResultOf(d) for d in pending]
        self.assertFalse(allocator.batched)
        self.assertEqual(link.adds, ["a", "b"])
        self.assertNotEqual(legs[0].caller_tag, legs[1].caller_tag)
        allocator.release("a")
        allocator.release("b")
        self.clock.advance(0)
        self.assertEqual(link.removes, [1, 2])

    def test_spares(self) -> None:
        """allocate_spare: the first asks the relay and orders spares in the
        same batch; later ones are answered at once from a spare (topped up),
        and a spare too old to trust is removed, not used."""
        link = FakeLink(self.clock)
        allocator = LinkRelayAllocator(link, "192.0.2.5", spares=2)
        first = allocator.allocate_spare("a")
        self.clock.advance(0)
        [(labels, d)] = link.adds
        self.assertEqual(labels, ["spare", "spare", "a"])
        d.callback([link._allocation(label) for label in labels])
        self.assertEqual(self.successResultOf(first).caller_tag, bytes([3]) * 8)
        second = allocator.allocate_spare("b")
        legs = self.successResultOf(second)  # no round trip
        self.assertEqual((legs.caller_tag, allocator.numbers["b"]), (bytes([1]) * 8, 1))
        self.clock.advance(0)
        self.assertEqual(link.adds[1][0], ["spare"])  # topped up
        link.adds[1][1].callback([link._allocation("spare")])
        self.clock.advance(SPARE_AGE + 1)
        third = allocator.allocate_spare("c")
        self.assertNoResult(third)  # both spares too old: removed, an ordinary add
        self.clock.advance(0)
        self.assertEqual(link.removes, [[2, 4]])
        self.assertEqual(link.adds[2][0], ["spare", "spare", "c"])

    def test_spares_dropped_when_the_relay_fails(self) -> None:
        """A failed top-up drops the ready spares (a relay that restarted has
        lost them): removed, and the next call asks the relay."""
        link = FakeLink(self.clock)
        allocator = LinkRelayAllocator(link, "192.0.2.5", spares=2)
        allocator.allocate_spare("a")
        self.clock.advance(0)
        link.adds[0][1].callback([link._allocation(x) for x in link.adds[0][0]])
        self.successResultOf(allocator.allocate_spare("b"))  # spare 1; spare 2 ready
        self.clock.advance(0)
        link.adds[1][1].errback(ConnectionDone("relay went away"))  # the top-up
        self.clock.advance(0)
        self.assertEqual(link.removes, [[2]])
        self.assertNoResult(allocator.allocate_spare("c"))
        self.clock.advance(0)
        self.assertEqual(link.adds[2][0], ["spare", "spare", "c"])


class OptionsTests(SynchronousTestCase):
    def test_expiry_options(self) -> None:
        """--idle-timeout, --grace and --rebind-after are seconds, positive."""
        options = Options()
        options.parseOptions(["--idle-timeout", "30", "--grace", "90"])
        self.assertEqual((options["idle-timeout"], options["grace"]), (30.0, 90.0))
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--grace", "0"])
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--media-io", "magic"])

    def test_kernel_path_option(self) -> None:
        """--kernel-path is auto (the default), tcx, tc or off."""
        default, off = Options(), Options()
        default.parseOptions([])
        off.parseOptions(["--kernel-path", "off"])
        self.assertEqual((default["kernel-path"], off["kernel-path"]), ("auto", "off"))
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--kernel-path", "xdp"])
