"""The pool link service in memory: heartbeats on a clock, link events,
hostile peers dropped, the incarnation file."""

from __future__ import annotations

import os
import stat
import struct

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config.crs_model import CrsConfig, CrsGlobal, Pool, PoolHost
from cryptify.crs.pool.core import (
    DOWN_AFTER,
    HEARTBEAT_INTERVAL,
    JOIN_WAIT,
    LATE_AFTER,
    Heartbeat,
    Reason,
)
from cryptify.crs.pool.wire import (
    MAX_FRAME,
    Frame,
    WireError,
    decode_down,
    decode_frame,
    encode_frame,
    encode_heartbeat,
)
from cryptify.crs.pool.wiring import (
    IDLE_TIMEOUT,
    INCARNATION_FILE,
    LAG_PROBE_INTERVAL,
    ClientSlots,
    PoolLink,
    _InboundFactory,
    _LinkProtocol,
    next_incarnation,
    pool_psk,
)
from cryptify.crs.slots import SLOTS

KEY = "the-pool-shared-secret"


def config(count: int = 2, key: str | None = KEY) -> CrsConfig:
    hosts = tuple(PoolHost(f"crs{i}", f"192.0.2.{i}") for i in range(1, count + 1))
    return CrsConfig(global_=CrsGlobal(key=key), pool=Pool(hosts))


class Member:
    """One PoolLink on a memory reactor, with what it told notify.sh."""

    def __init__(self, name: str, reactor: MemoryReactorClock, count: int = 2) -> None:
        self.events: list[tuple[str, str]] = []
        self.link = PoolLink(
            config(count),
            name,
            reactor,
            lambda unit, event: self.events.append((unit, event)),
            incarnation=lambda: 100,
            pid=1000 + int(name[-1]),
        )
        self.link.startService()
        self.protos: list[_LinkProtocol] = []

    def stop(self) -> None:
        """Close every connection made, then stop the service."""
        for proto in self.protos:
            if proto.transport is not None and not getattr(proto, "_lost", False):
                proto._lost = True  # type: ignore[attr-defined]
                proto.connectionLost(None)
        self.link.stopService()

    def outgoing(self, peer: str) -> tuple[_LinkProtocol, StringTransport]:
        """An outgoing connection to ``peer``, made now."""
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


class Wire:
    """A's outgoing connection to B carried into B's inbound connection."""

    def __init__(self, a: Member, b: Member) -> None:
        self.out, self.out_t = a.outgoing(b.link.me)
        self.into, self.into_t = b.inbound()

    def pump(self) -> None:
        """Carry what each end wrote to the other (heartbeats go both ways)."""
        data = self.out_t.value()
        self.out_t.clear()
        if data:
            self.into.dataReceived(data)
        back = self.into_t.value()
        self.into_t.clear()
        if back:
            self.out.dataReceived(back)
        assert not self.out_t.disconnecting and not self.into_t.disconnecting


class LinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.addCleanup(self.stop_all)
        self.members: list[Member] = []

    def stop_all(self) -> None:
        """Stop everything; no timer may be left behind."""
        for m in self.members:
            m.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def member(self, name: str, count: int = 2) -> Member:
        m = Member(name, self.reactor, count)
        self.members.append(m)
        return m

    def flow(self, seconds: float, wires: list[Wire]) -> None:
        steps = int(seconds / (HEARTBEAT_INTERVAL / 2))
        for _ in range(steps):
            self.reactor.advance(HEARTBEAT_INTERVAL / 2)
            for w in wires:
                w.pump()

    def test_listens_and_connects_out(self) -> None:
        """On start the link listens on pool-port with TLS and connects to
        every peer at its [POOL] address."""
        self.member("crs1", 3)
        self.assertEqual([p[0] for p in self.reactor.sslServers], [8090])
        targets = sorted((host, port) for host, port, *_ in self.reactor.tcpClients)
        self.assertEqual(targets, [("192.0.2.2", 8090), ("192.0.2.3", 8090)])

    def test_addr_map_applies_to_outgoing(self) -> None:
        """addr-map rewrites a peer's address for the outgoing connection."""
        from cryptify.config.crs_model import AddressMap

        cfg = config()
        cfg = CrsConfig(
            global_=CrsGlobal(key=KEY, addr_map=(AddressMap("192.0.2.2", "10.0.0.2"),)),
            pool=cfg.pool,
        )
        link = PoolLink(cfg, "crs1", self.reactor, lambda u, e: None, incarnation=lambda: 1)
        link.startService()
        self.addCleanup(link.stopService)
        self.assertEqual([c[0] for c in self.reactor.tcpClients], ["10.0.0.2"])

    def test_heartbeat_every_interval(self) -> None:
        """A heartbeat goes out on connect and then every HEARTBEAT_INTERVAL,
        each followed by the report of the members this one sees down."""
        a = self.member("crs1")
        _, transport = a.outgoing("crs2")
        self.reactor.advance(HEARTBEAT_INTERVAL)
        self.reactor.advance(HEARTBEAT_INTERVAL)
        data = transport.value()
        frames = []
        reports = []
        while data:
            (length,) = struct.unpack(">I", data[:4])
            frame = decode_frame(data[4 : 4 + length])
            if isinstance(frame, Frame):
                frames.append(frame)
            else:
                self.assertEqual(len(reports), len(frames) - 1)  # after its beat
                reports.append(decode_down(frame.fields))
            data = data[4 + length :]
        self.assertEqual(len(frames), 3)
        self.assertEqual(reports, [frozenset({"crs2"})] * 3)  # never heard: down
        self.assertEqual({f.beat.sender for f in frames}, {"crs1"})
        self.assertEqual({f.pid for f in frames}, {1001})

    def test_heartbeats_both_ways_keep_connections(self) -> None:
        """An incoming connection gets heartbeats once its first frame named
        the peer; connections that hear every second stay past
        IDLE_TIMEOUT, and one whose peer went silent is dropped."""
        a = self.member("crs1")
        inbound, in_t = a.inbound()
        self.assertEqual(in_t.value(), b"")
        inbound.dataReceived(encode_heartbeat(Heartbeat("crs2", None)))
        (length,) = struct.unpack(">I", in_t.value()[:4])
        first = decode_frame(in_t.value()[4 : 4 + length])
        assert isinstance(first, Frame)
        self.assertEqual(first.beat.sender, "crs1")
        _outgoing, out_t = a.outgoing("crs2")
        for _ in range(int(IDLE_TIMEOUT * 2)):
            self.reactor.advance(HEARTBEAT_INTERVAL)
            inbound.dataReceived(encode_heartbeat(Heartbeat("crs2", None)))
        self.assertFalse(in_t.disconnecting)
        self.assertTrue(out_t.disconnecting)  # crs2 sent nothing on it

    def test_two_members_form_and_report(self) -> None:
        """Two members over the link agree on the home split; each says
        link up to notify.sh; show system rows name both pids and ranges."""
        a, b = self.member("crs1"), self.member("crs2")
        wires = [Wire(a, b), Wire(b, a)]
        self.flow(JOIN_WAIT + 3 * HEARTBEAT_INTERVAL, wires)
        assert a.link.member is not None and b.link.member is not None
        self.assertEqual(a.link.member.map, b.link.member.map)
        half = SLOTS // 2
        self.assertEqual(
            a.link.rows(),
            [("crs1", "1001", f"0-{half - 1}"), ("crs2", "1002", f"{half}-{SLOTS - 1}")],
        )
        self.assertIn(("pool_link_crs2", "up"), a.events)
        self.assertIn(("pool_link_crs1", "up"), b.events)
        self.assertIn(("pool", "formed"), a.events)
        self.assertTrue(a.link.mine(0))
        self.assertFalse(a.link.mine(SLOTS - 1))
        self.assertEqual(a.link.owner(SLOTS - 1), "crs2")
        self.assertEqual(a.link.address("crs2"), "192.0.2.2")

    def test_takeover_and_hand_back(self) -> None:
        """When crs2 goes silent crs1 says link down and takeover, owns every
        slot; when crs2 comes back the slots trickle back and crs1 says so."""
        a, b = self.member("crs1"), self.member("crs2")
        wires = [Wire(a, b), Wire(b, a)]
        self.flow(JOIN_WAIT + 3 * HEARTBEAT_INTERVAL, wires)
        self.flow(DOWN_AFTER + 2 * HEARTBEAT_INTERVAL, [])
        self.assertIn(("pool_link_crs2", "down"), a.events)
        self.assertIn(("pool", "takeover crs2"), a.events)
        self.assertTrue(all(a.link.mine(s) for s in range(SLOTS)))
        self.assertFalse(a.link.link_up("crs2"))
        a.events.clear()
        wires = [Wire(a, b), Wire(b, a)]
        self.flow(150 * HEARTBEAT_INTERVAL, wires)
        self.assertEqual(a.events[0], ("pool_link_crs2", "up"))
        self.assertIn(("pool", "hand-back start"), a.events)
        self.assertEqual(a.events[-1], ("pool", "hand-back done"))
        self.assertEqual(b.link.rows()[1][2], f"{SLOTS // 2}-{SLOTS - 1}")

    def test_late_owner_is_no_move_target(self) -> None:
        """While crs2's frames are late, a client of its slot at crs1 is told
        to try again (no owner for the attach) rather than moved to an
        address that may be dead; the map itself is unchanged, and once
        crs2 is heard again the attach is moved there as before."""
        a, b = self.member("crs1"), self.member("crs2")
        wires = [Wire(a, b), Wire(b, a)]
        self.flow(JOIN_WAIT + 3 * HEARTBEAT_INTERVAL, wires)
        slots = ClientSlots(a.link)
        self.assertEqual(slots.owner(SLOTS - 1), "crs2")
        self.flow(LATE_AFTER + HEARTBEAT_INTERVAL, [])
        self.assertTrue(a.link.link_up("crs2"))
        self.assertEqual(a.link.owner(SLOTS - 1), "crs2")
        self.assertIsNone(slots.owner(SLOTS - 1))
        self.assertEqual(slots.owner(0), "crs1")
        self.assertTrue(slots.mine(0))
        self.assertEqual(slots.address("crs2"), "192.0.2.2")
        self.flow(HEARTBEAT_INTERVAL, wires)
        self.assertEqual(slots.owner(SLOTS - 1), "crs2")

    def test_closed_connections_confirm_a_death(self) -> None:
        """In a pool of three, crs3 falls silent to crs1 only (crs2 still
        hears it): crs1 takes nothing while its connections to crs3 stay
        open, and takes over once they are all closed (a killed process)."""
        a, b, c = (self.member(f"crs{i}", 3) for i in (1, 2, 3))
        to_c = [Wire(a, c), Wire(c, a)]
        others = [Wire(a, b), Wire(b, a), Wire(b, c), Wire(c, b)]
        self.flow(JOIN_WAIT + 3 * HEARTBEAT_INTERVAL, to_c + others)
        self.flow(2 * DOWN_AFTER, others)
        self.assertFalse(a.link.link_up("crs3"))
        self.assertNotIn(("pool", "takeover crs3"), a.events)
        for proto in (to_c[0].out, to_c[1].into):
            proto._lost = True  # type: ignore[attr-defined]
            proto.connectionLost(None)
        self.flow(HEARTBEAT_INTERVAL, others)
        self.assertIn(("pool", "takeover crs3"), a.events)

    def test_hostile_down_report_drops_the_connection(self) -> None:
        """A down report naming a stranger drops the connection it came on,
        and is not recorded."""
        a = self.member("crs1")
        inbound, in_t = a.inbound()
        inbound.dataReceived(encode_heartbeat(Heartbeat("crs2", None)))
        inbound.dataReceived(encode_frame("pool-down", {"down": ["crs9"]}))
        self.assertTrue(in_t.disconnecting)

    def test_frames_of_other_types(self) -> None:
        """A module's frames go to the peer's handler for their type, with
        the sender's name; link up and down reach on_link listeners; a
        frame nobody handles is ignored, and one before the first
        heartbeat, or one its handler refuses, drops the connection."""
        a, b = self.member("crs1"), self.member("crs2")
        got: list[tuple[str, dict[str, object]]] = []
        links: list[tuple[str, bool]] = []

        def handler(peer: str, fields: dict[str, object]) -> None:
            if "bad" in fields:
                raise WireError("bad field")
            got.append((peer, fields))

        b.link.handle("echo", handler)
        with self.assertRaises(ValueError):
            b.link.handle("echo", handler)
        a.link.on_link(lambda peer, up: links.append((peer, up)))
        self.assertFalse(a.link.send("crs2", "echo", {"n": 0}))
        wires = [Wire(a, b), Wire(b, a)]
        self.flow(JOIN_WAIT + 3 * HEARTBEAT_INTERVAL, wires)
        self.assertEqual(links, [("crs2", True)])
        self.assertTrue(a.link.send("crs2", "echo", {"n": 1}))
        self.assertTrue(a.link.send("crs2", "other", {"n": 2}))
        self.flow(HEARTBEAT_INTERVAL, wires)
        self.assertEqual(got, [("crs1", {"n": 1})])
        self.flow(DOWN_AFTER + 2 * HEARTBEAT_INTERVAL, [])
        self.assertEqual(links, [("crs2", True), ("crs2", False)])
        proto, transport = b.inbound()
        proto.dataReceived(encode_frame("echo", {"n": 3}))
        self.assertTrue(transport.disconnecting)
        proto, transport = b.inbound()
        proto.dataReceived(
            encode_heartbeat(Heartbeat("crs1", None)) + encode_frame("echo", {"bad": 1})
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual(got, [("crs1", {"n": 1})])

    def test_hostile_octets_drop_the_connection(self) -> None:
        """A frame that does not decode drops the connection; the member
        learns nothing from it."""
        a = self.member("crs1")
        proto, transport = a.inbound()
        proto.dataReceived(struct.pack(">I", 3) + b"\xff\xff\xff")
        self.assertTrue(transport.disconnecting)
        assert a.link.member is not None
        self.assertEqual(a.link.member.live(self.reactor.seconds()), frozenset({"crs1"}))

    def test_oversized_frame_dropped(self) -> None:
        """A length prefix above MAX_FRAME drops the connection at once."""
        a = self.member("crs1")
        proto, transport = a.inbound()
        proto.dataReceived(struct.pack(">I", MAX_FRAME + 1))
        self.assertTrue(transport.disconnecting)

    def test_stranger_and_impostor_dropped(self) -> None:
        """A heartbeat from a name outside the pool, or claiming to be this
        member, or a second sender on one connection, drops the connection."""
        a = self.member("crs1", 3)
        for frames in (
            [Heartbeat("crs9", None)],
            [Heartbeat("crs1", None)],
            [Heartbeat("crs2", None), Heartbeat("crs3", None)],
        ):
            proto, transport = a.inbound()
            proto.dataReceived(b"".join(encode_heartbeat(f) for f in frames))
            self.assertTrue(transport.disconnecting, frames)
        assert a.link.member is not None
        self.assertNotIn("crs3", a.link.member.live(self.reactor.seconds()))

    def test_silent_connection_dropped(self) -> None:
        """A connection that sends nothing is dropped after IDLE_TIMEOUT."""
        a = self.member("crs1")
        _, transport = a.inbound()
        self.reactor.advance(IDLE_TIMEOUT - 0.5)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_stop_closes_connections(self) -> None:
        """Stopping the link closes every pool connection it holds."""
        a = self.member("crs1")
        _, in_t = a.inbound()
        _, out_t = a.outgoing("crs2")
        a.link.stopService()
        self.assertTrue(in_t.disconnecting and out_t.disconnecting)

    def test_inbound_limit(self) -> None:
        """At most INBOUND_PER_PEER connections per peer are held; closing
        one makes room."""
        a = self.member("crs1")
        held = [a.inbound() for _ in range(a.link.max_inbound)]
        factory = _InboundFactory(a.link)
        refused = factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 1))
        self.assertNotIsInstance(refused, _LinkProtocol)
        transport = StringTransport()
        refused.makeConnection(transport)
        self.assertTrue(transport.disconnecting)
        held[0][0].connectionLost(None)
        self.assertIsInstance(
            factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 1)), _LinkProtocol
        )

    def test_psk_lookup(self) -> None:
        """Only a peer's name as PSK identity gets the key (not this member's
        own name, not a stranger's)."""
        a = self.member("crs1", 3)
        self.assertEqual(a.link._lookup(b"crs2", None), pool_psk(KEY))
        self.assertEqual(a.link._lookup(b"crs3", None), pool_psk(KEY))
        self.assertIsNone(a.link._lookup(b"crs1", None))
        self.assertIsNone(a.link._lookup(b"mallory", None))
        self.assertIsNone(a.link._lookup(b"\xff", None))
        self.assertNotEqual(pool_psk(KEY), pool_psk(KEY + "x"))

    def test_needs_key(self) -> None:
        """A pool without the [GLOBAL] key is refused when built."""
        from cryptify.crs.pool.core import PoolError

        self.assertRaises(PoolError, PoolLink, config(key=None), "crs1", self.reactor, print)

    def test_changes_logged_with_reason(self) -> None:
        """Each map change is logged with its reason."""
        from twisted.logger import LogEvent, globalLogPublisher

        seen: list[LogEvent] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        self.member("crs1")
        self.flow(JOIN_WAIT + HEARTBEAT_INTERVAL, [])
        reasons = [e["reason"] for e in seen if "reason" in e and "epoch" in e]
        self.assertEqual(reasons, [Reason.FORMED.value])


class LagTests(SynchronousTestCase):
    """Each member on a clock of its own: one member's reactor stalls (its
    timers and reads wait) while time passes and its peer keeps sending."""

    STEP = LAG_PROBE_INTERVAL

    def setUp(self) -> None:
        self.clocks = {name: MemoryReactorClock() for name in ("crs1", "crs2")}
        self.a = Member("crs1", self.clocks["crs1"])
        self.b = Member("crs2", self.clocks["crs2"])
        self.wires = [Wire(self.a, self.b), Wire(self.b, self.a)]
        self.addCleanup(self.stop)
        self.elapse(JOIN_WAIT + 3 * HEARTBEAT_INTERVAL)
        self.assertTrue(self.a.link.link_up("crs2"))
        self.assertTrue(self.b.link.link_up("crs1"))

    def stop(self) -> None:
        """Stop both; no timer may be left behind."""
        self.a.stop()
        self.b.stop()
        for clock in self.clocks.values():
            self.assertEqual(clock.getDelayedCalls(), [])

    def elapse(self, seconds: float, *, stalled: tuple[str, ...] = (), dead: str = "") -> None:
        """Let ``seconds`` pass in small steps on every clock but those of
        ``stalled`` (their reactors are busy: no timer fires, nothing is
        read; they catch up at the end) and carry the frames between members
        unless one is stalled or ``dead``."""
        for _ in range(round(seconds / self.STEP)):
            for name, clock in self.clocks.items():
                if name not in stalled:
                    clock.advance(self.STEP)
            if not stalled and not dead:
                for w in self.wires:
                    w.pump()
        for name in stalled:
            self.clocks[name].advance(seconds)

    def test_stalled_reactors_do_not_declare_live_peers_down(self) -> None:
        """Both reactors stall for the idle timeout (a storm of handshakes on
        each): when their timers fire again, before they read, neither
        declares the other down nor drops a connection for silence; once
        they read, all is as before; no takeover."""
        map_before = self.a.link.member.map if self.a.link.member else None
        self.elapse(IDLE_TIMEOUT, stalled=("crs1", "crs2"))
        for m, peer in ((self.a, "crs2"), (self.b, "crs1")):
            self.assertTrue(m.link.link_up(peer))
            self.assertGreaterEqual(m.link.lag_max, IDLE_TIMEOUT - 2 * self.STEP)
        self.elapse(2 * DOWN_AFTER)
        for m, peer in ((self.a, "crs2"), (self.b, "crs1")):
            self.assertTrue(m.link.link_up(peer))
            self.assertNotIn((f"pool_link_{peer}", "down"), m.events)
            assert m.link.member is not None
            self.assertEqual(m.link.member.map, map_before)

    def test_dead_peer_down_in_time(self) -> None:
        """With crs1's loop on time, a crs2 that goes silent is declared down
        DOWN_AFTER after its last heartbeat (within one heartbeat interval,
        the judging tick's period), and its slots taken over."""
        assert self.a.link.member is not None
        last = self.a.link.member.heard("crs2")
        assert last is not None
        start = self.clocks["crs1"].seconds()
        while self.a.link.link_up("crs2"):
            self.elapse(self.STEP, dead="crs2")
            self.assertLess(self.clocks["crs1"].seconds() - start, 10 * DOWN_AFTER)
        age = self.clocks["crs1"].seconds() - last
        self.assertGreaterEqual(age, DOWN_AFTER)
        self.assertLessEqual(age, DOWN_AFTER + HEARTBEAT_INTERVAL + self.STEP)
        self.assertIn(("pool", "takeover crs2"), self.a.events)

    def test_dead_peer_down_after_own_stall(self) -> None:
        """crs2 dies and crs1's reactor stalls: crs1 does not declare it down
        the moment its timers run again, but DOWN_AFTER (plus a tick) after
        its loop caught up."""
        self.elapse(2 * DOWN_AFTER, stalled=("crs1",), dead="crs2")
        self.assertTrue(self.a.link.link_up("crs2"))
        resumed = self.clocks["crs1"].seconds()
        while self.a.link.link_up("crs2"):
            self.elapse(self.STEP, dead="crs2")
            self.assertLess(self.clocks["crs1"].seconds() - resumed, 10 * DOWN_AFTER)
        self.assertLessEqual(
            self.clocks["crs1"].seconds() - resumed, DOWN_AFTER + HEARTBEAT_INTERVAL
        )

    def test_other_frames_keep_a_peer_live(self) -> None:
        """Frames other than heartbeats count as signs of life: a peer whose
        heartbeats are stuck behind other frames is not declared down (for
        BEATLESS_AT_MOST at most)."""
        frame = encode_frame("x-bulk", {"n": 1})
        into_a = self.wires[0].out  # crs1's connection to crs2: crs2's frames arrive here
        for _ in range(round(2 * DOWN_AFTER / self.STEP)):
            self.clocks["crs1"].advance(self.STEP)
            self.clocks["crs2"].advance(self.STEP)
            into_a.dataReceived(frame)
        self.assertTrue(self.a.link.link_up("crs2"))
        self.elapse(DOWN_AFTER + HEARTBEAT_INTERVAL, dead="crs2")
        self.assertFalse(self.a.link.link_up("crs2"))


class IncarnationTests(SynchronousTestCase):
    def test_unwritable_data_dir_stops_startup(self) -> None:
        """An incarnation that cannot be stored stops start-up with one clear line."""
        from cryptify.service import StartupError

        def fail() -> int:
            raise PermissionError(13, "Permission denied")

        link = PoolLink(config(), "crs1", MemoryReactorClock(), print, incarnation=fail)
        exc = self.assertRaises(StartupError, link.startService)
        self.assertIn("cannot store the incarnation", str(exc))

    def test_grows_and_is_private(self) -> None:
        """Each start's incarnation is above the last, stored 0600."""
        data = self.mktemp()
        first = next_incarnation(data, now=1000)
        second = next_incarnation(data, now=1000)
        third = next_incarnation(data, now=500)
        self.assertEqual((first, second, third), (1000, 1001, 1002))
        mode = stat.S_IMODE(os.stat(os.path.join(data, INCARNATION_FILE)).st_mode)
        self.assertEqual(mode, 0o600)

    def test_lost_or_garbled_file_uses_clock(self) -> None:
        """Without a readable file the clock gives the incarnation."""
        data = self.mktemp()
        os.makedirs(data)
        with open(os.path.join(data, INCARNATION_FILE), "wb") as f:
            f.write(b"garbage" * 100)
        self.assertEqual(next_incarnation(data, now=2000), 2000)
        self.assertEqual(next_incarnation(data, now=10), 2001)


class _Conn:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def disconnect(self, reason: str) -> None:
        self.reasons.append(reason)

    def send(self, msg: object) -> None:
        pass


class ClientMoverTests(SynchronousTestCase):
    def test_clients_of_slots_moved_away_told_to_move(self) -> None:
        """After a map change, attached clients of slots this member no
        longer claims are disconnected, except one in a call, who goes at
        the first heartbeat after the call ends."""
        from cryptify.crs.attach.registry import Attachment, AttachRegistry
        from cryptify.crs.pool.wiring import MOVED_AWAY, client_mover
        from cryptify.crs.slots import slot_of

        reactor = MemoryReactorClock()
        a = Member("crs1", reactor)
        self.addCleanup(a.link.stopService)
        registry = AttachRegistry("crs1", reactor.seconds)
        uris = [f"tel:+46{n}" for n in range(40)]
        conns = {uri: _Conn() for uri in uris}
        for uri in uris:
            registry.attach(Attachment(uri, "acme", 0.0, "1", "192.0.2.9", 1, conns[uri]))
        busy = set([u for u in uris if slot_of(u) >= SLOTS // 2][:2])
        a.link.watch(client_mover(registry, a.link, lambda uri: uri in busy))
        reactor.advance(JOIN_WAIT + HEARTBEAT_INTERVAL)  # alone: owns every slot
        self.assertEqual([u for u in uris if conns[u].reasons], [])
        b = Member("crs2", reactor)
        self.addCleanup(b.link.stopService)
        wires = [Wire(a, b), Wire(b, a)]
        for _ in range(300):
            reactor.advance(HEARTBEAT_INTERVAL / 2)
            for w in wires:
                w.pump()
        away = {u for u in uris if not a.link.mine(slot_of(u))}
        self.assertTrue(away and away != set(uris))
        self.assertEqual(len(busy & away), 2)
        moved = {u for u in uris if conns[u].reasons == [MOVED_AWAY]}
        self.assertEqual(moved, away - busy)
        busy.clear()
        reactor.advance(HEARTBEAT_INTERVAL)
        moved = {u for u in uris if conns[u].reasons == [MOVED_AWAY]}
        self.assertEqual(moved, away)
        self.assertEqual({a.uri for a in registry.matching()}, set(uris) - away)
