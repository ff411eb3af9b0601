"""Tests for the bridge's adapters and control: BridgeService, BridgeControl over AMP."""

from __future__ import annotations

import select
import socket
from typing import Any

import attrs
from pylibsrtp import Policy, Session
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from cryptify.cig.relay import g711
from cryptify.cig.relay.bridge_core import TICK_SECONDS, PbxSide, SecureSide
from cryptify.cig.relay.bridge_wiring import (
    MAX_CATCH_UP,
    BridgeRefused,
    BridgeService,
    MediaPoller,
    SocketPort,
)
from cryptify.cig.relay.control import control_factory
from cryptify.config.cig_model import AddressOverride, PortRange, SipInterface, TelInterface
from cryptify.protocols.bridge_control import (
    BridgeAdd,
    BridgeError,
    BridgeRemove,
    BridgeStats,
    BridgeUpdate,
)
from cryptify.protocols.relay_control import Poll, RelayStats
from cryptify.protocols.rtp import RtpPacket, TelephoneEvent, encode_rtp, parse_rtp

TAG = b"tagtag01"
KEY_OUT = bytes(range(30))
KEY_IN = bytes(range(30, 60))


@attrs.define(eq=False)
class FakePort:
    """A listening UDP port that records what is written to it."""

    reactor: FakeReactor
    port: int
    protocol: DatagramProtocol
    interface: str
    sent: list[tuple[bytes, tuple[str, int]]] = attrs.field(factory=list)
    open: bool = True

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.reactor.refuse_writes:
            raise OSError("refused")
        self.sent.append((data, addr))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)

    def stopListening(self) -> None:
        self.open = False


class FakeReactor(Clock):
    """A Clock whose listenUDP hands out FakePorts (refusing the ``busy`` ones)."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: dict[int, FakePort] = {}
        self.busy: set[int] = set()
        self.next_ephemeral = 40000
        self.refuse_writes = False

    def listenUDP(self, port: int, protocol: DatagramProtocol, interface: str = "") -> FakePort:
        if port in self.busy or (port and port in self.ports and self.ports[port].open):
            raise CannotListenError(interface, port, OSError("in use"))
        if port == 0:
            self.next_ephemeral += 1
            port = self.next_ephemeral
        fake = FakePort(self, port, protocol, interface)
        self.ports[port] = fake
        return fake


def client_sessions() -> tuple[Session, Session]:
    tx = Session(Policy(key=KEY_IN, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    rx = Session(Policy(key=KEY_OUT, ssrc_type=Policy.SSRC_ANY_INBOUND))
    return tx, rx


def secure(host: str = "192.0.2.1") -> SecureSide:
    return SecureSide(host, 146, TAG, KEY_OUT, KEY_IN)


class BridgeServiceTests(SynchronousTestCase):
    """The service's ports, clock, overrides and counters, with a fake reactor."""

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        tel = TelInterface(
            rtp_port_range=PortRange(20000, 20003),
            rtp_remote_addr_overrides=(AddressOverride("192.0.2.1", "10.0.0.15"),),
        )
        sip = SipInterface(
            bind="127.0.0.1",
            rtp_port_range=PortRange(30000, 30005),
            rtp_remote_addr_overrides=(AddressOverride("198.51.100.9", "10.1.1.9"),),
        )
        self.service = BridgeService(self.reactor, tel, sip)
        self.service.startService()
        self.addCleanup(self.check_clean)
        self.client_tx, self.client_rx = client_sessions()

    def check_clean(self) -> None:
        self.service.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertFalse(any(p.open for p in self.reactor.ports.values()))

    def test_add_listens_and_overrides(self) -> None:
        """Ports come from the ranges; the tel and sip overrides rewrite the addresses."""
        ports = self.service.add("c1", secure(), PbxSide("198.51.100.9", 4000), 0)
        self.assertEqual(ports, (20000, 30000))
        bridged = self.service.calls["c1"]
        self.assertEqual(bridged.relay_address, ("10.0.0.15", 146))
        self.assertEqual(bridged.pbx_address, ("10.1.1.9", 4000))
        self.assertEqual(self.reactor.ports[30000].interface, "127.0.0.1")

    def test_named_port_and_busy_ports(self) -> None:
        """A named PBX port is used as is; busy range ports are skipped; busy named ones refused."""
        self.reactor.busy.add(20000)
        ports = self.service.add("c1", secure(), PbxSide(None, None), 30004)
        self.assertEqual(ports, (20001, 30004))
        self.reactor.busy.add(30002)
        self.assertRaises(
            BridgeRefused, self.service.add, "c2", secure(), PbxSide(None, None), 30002
        )
        self.assertNotIn("c2", self.service.calls)
        self.assertFalse(self.reactor.ports[20002].open)

    def test_range_exhausted(self) -> None:
        """With every port of the range taken the bridge is refused."""
        for call in ("a", "b", "c"):
            self.service.add(call, secure(), PbxSide(None, None))
        self.assertRaises(BridgeRefused, self.service.add, "d", secure(), PbxSide(None, None))

    def test_refusals(self) -> None:
        """A duplicate call, a host name and a bad key are refused with a reason."""
        self.service.add("c1", secure(), PbxSide(None, None))
        self.assertRaises(BridgeRefused, self.service.add, "c1", secure(), PbxSide(None, None))
        self.assertRaises(
            BridgeRefused, self.service.add, "c2", secure("relay.example"), PbxSide(None, None)
        )
        bad = attrs.evolve(secure(), tx_key=b"short")
        self.assertRaises(BridgeRefused, self.service.add, "c3", bad, PbxSide(None, None))

    def test_clock_sends_constant_rate(self) -> None:
        """Every 20 ms each call sends one datagram to the relay, catching up when late."""
        self.service.add("c1", secure(), PbxSide(None, None))
        self.reactor.advance(TICK_SECONDS)
        self.reactor.advance(TICK_SECONDS)
        self.reactor.advance(3 * TICK_SECONDS)
        sent = self.reactor.ports[20000].sent
        self.assertEqual(len(sent), 5)
        self.assertEqual({addr for _, addr in sent}, {("10.0.0.15", 146)})
        self.assertTrue(all(d.startswith(TAG) for d, _ in sent))
        self.reactor.advance(10.0)
        self.assertEqual(len(sent), 5 + MAX_CATCH_UP)

    def test_late_clock_catches_up_to_the_bound(self) -> None:
        """A late wakeup makes up every missed tick up to 500 ms; beyond that ticks drop."""
        self.assertEqual(MAX_CATCH_UP * TICK_SECONDS, 0.5)
        self.service.add("c1", secure(), PbxSide(None, None))
        self.service.add("c2", secure(), PbxSide(None, None))
        self.reactor.advance(MAX_CATCH_UP * TICK_SECONDS)
        sent = self.reactor.ports[20000].sent
        self.assertEqual(len(sent), MAX_CATCH_UP)
        self.assertEqual(len(self.reactor.ports[20001].sent), MAX_CATCH_UP)
        totals = self.service.stats()
        assert totals is not None
        self.assertEqual((totals["ticks_caught_up"], totals["ticks_skipped"]), (48, 0))
        self.reactor.advance((MAX_CATCH_UP + 3) * TICK_SECONDS)
        self.assertEqual(len(sent), 2 * MAX_CATCH_UP)
        totals = self.service.stats()
        assert totals is not None
        self.assertEqual((totals["ticks_caught_up"], totals["ticks_skipped"]), (96, 6))
        self.assertEqual(totals["secure_tx"], 4 * MAX_CATCH_UP)
        # The caught-up datagrams are consecutive packets of one stream.
        seqs = [self.rtp_to_relay(d).sequence for d, _ in sent]
        self.assertEqual([(s - seqs[0]) & 0xFFFF for s in seqs], list(range(len(seqs))))

    def rtp_to_relay(self, datagram: bytes) -> RtpPacket:
        packet = parse_rtp(self.client_rx.unprotect(datagram[len(TAG) :]))
        assert isinstance(packet, RtpPacket)
        return packet

    def stalled_pbx(self, read_pending: bool) -> tuple[list[bytes], list[int], dict[str, int]]:
        """Frames 0-4 on time, then a 200 ms stall with frames 5-14 queued on the PBX leg.

        Answers the payloads the relay got, the rounds read_pending was asked
        for, and the call's counters.
        """
        self.service.add("c1", secure(), PbxSide("198.51.100.9", 4000))
        pbx = self.reactor.ports[30000].protocol
        frames = [bytes([0x10 + i]) * 160 for i in range(15)]
        rtp = [encode_rtp(0, i, i * 160, 9, f, False) for i, f in enumerate(frames)]
        queued = rtp[5:]
        rounds: list[int] = []

        def pending(n: int) -> None:
            rounds.append(n)
            for _ in range(min(n, len(queued))):
                pbx.datagramReceived(queued.pop(0), ("10.1.1.9", 4000))

        self.service.read_pending = pending if read_pending else None
        for packet in rtp[:5]:
            pbx.datagramReceived(packet, ("10.1.1.9", 4000))
            self.reactor.advance(TICK_SECONDS)
        self.reactor.advance(10 * TICK_SECONDS)
        for packet in queued:  # what the reactor reads after the late timer
            pbx.datagramReceived(packet, ("10.1.1.9", 4000))
        heard = [self.rtp_to_relay(d).payload for d, _ in self.reactor.ports[20000].sent]
        stats = self.service.stats("c1")
        assert stats is not None
        return heard, rounds, stats

    def test_catch_up_plays_the_queued_audio(self) -> None:
        """Each late tick reads the legs first: the queued PBX frames play in order."""
        heard, rounds, stats = self.stalled_pbx(read_pending=True)
        silence = bytes([g711.SILENCE[g711.PCMU]]) * 160
        # Two ticks of playout delay, then every frame once and in order.
        self.assertEqual(heard, [silence] * 2 + [bytes([0x10 + i]) * 160 for i in range(13)])
        self.assertEqual(rounds, [1] * 10)
        self.assertEqual((stats["underruns"], stats["late"], stats["concealed"]), (0, 0, 0))

    def test_catch_up_without_reading_first(self) -> None:
        """Without read_pending the missed ticks underrun: silence, and the playout waits."""
        heard, _, stats = self.stalled_pbx(read_pending=False)
        self.assertEqual(len(heard), 15)
        # Frames 3 and 4 were buffered; the other 8 caught-up ticks had nothing.
        self.assertEqual(heard[5:7], [bytes([0x13]) * 160, bytes([0x14]) * 160])
        self.assertEqual(stats["underruns"], 8)
        self.assertEqual(stats["late"], 0)

    def test_media_both_ways(self) -> None:
        """SRTP in on the secure port goes out as RTP to the PBX; PBX RTP comes back as SRTP."""
        self.service.add("c1", secure(), PbxSide("198.51.100.9", 4000, g711.PCMA))
        frame = g711.encode(g711.PCMU, [1000] * 160)
        srtp = self.client_tx.protect(encode_rtp(0, 1, 160, 5, frame, False))
        self.reactor.ports[20000].protocol.datagramReceived(srtp, ("10.0.0.15", 146))
        ((rtp, addr),) = self.reactor.ports[30000].sent
        self.assertEqual(addr, ("10.1.1.9", 4000))
        packet = parse_rtp(rtp)
        assert isinstance(packet, RtpPacket)
        self.assertEqual(packet.payload, frame.translate(g711.ULAW_TO_ALAW))
        alaw = g711.encode(g711.PCMA, [-2000] * 160)
        for i in range(3):
            self.reactor.ports[30000].protocol.datagramReceived(
                encode_rtp(8, i, i * 160, 9, alaw, False), ("10.1.1.9", 4000)
            )
        self.reactor.pump([TICK_SECONDS] * 3)
        last = self.reactor.ports[20000].sent[-1][0]
        heard = parse_rtp(self.client_rx.unprotect(last[8:]))
        assert isinstance(heard, RtpPacket)
        self.assertEqual(heard.payload, alaw.translate(g711.ALAW_TO_ULAW))

    def test_send_errors_counted(self) -> None:
        """A send the kernel refuses is counted, not raised."""
        self.service.add("c1", secure(), PbxSide(None, None))
        self.reactor.refuse_writes = True
        self.reactor.advance(TICK_SECONDS)
        stats = self.service.stats("c1")
        assert stats is not None
        self.assertEqual(stats["tx_errors"], 1)

    def test_update_and_remove(self) -> None:
        """The PBX leg can be named later; removal closes the ports and keeps the totals."""
        self.service.add("c1", secure(), PbxSide(None, None))
        self.assertTrue(self.service.update("c1", PbxSide("198.51.100.9", 5000, g711.PCMA)))
        self.assertEqual(self.service.calls["c1"].pbx_address, ("10.1.1.9", 5000))
        self.assertFalse(self.service.update("nope", PbxSide(None, None)))
        self.reactor.advance(TICK_SECONDS)
        stats = self.service.remove("c1")
        assert stats is not None
        self.assertEqual(stats["secure_tx"], 1)
        self.assertIsNone(self.service.remove("c1"))
        self.assertFalse(self.reactor.ports[20000].open)
        totals = self.service.stats()
        assert totals is not None
        self.assertEqual((totals["secure_tx"], totals["calls"]), (1, 0))


class ControlTests(SynchronousTestCase):
    """The AMP commands, pumped over iosim to the real locator."""

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.service = BridgeService(self.reactor, sip=SipInterface(bind="127.0.0.1"))
        self.service.startService()
        self.addCleanup(self.service.stopService)
        client, _server, self.pump = connectedServerAndClient(
            lambda: control_factory(self.service).buildProtocol(None),
            amp.AMP,
        )
        self.client = client

    def call(self, command: type[amp.Command], **kwargs: Any) -> Any:
        results: list[Any] = []
        self.client.callRemote(command, **kwargs).addBoth(results.append)
        self.pump.flush()
        return results[0]  # the answer, or the Failure

    def add(self, **extra: Any) -> Any:
        args: dict[str, Any] = dict(
            call="c1",
            relay_host="192.0.2.1",
            relay_port=146,
            tag=TAG,
            srtp_tx_key=KEY_OUT,
            srtp_rx_key=KEY_IN,
        )
        args.update(extra)
        return self.call(BridgeAdd, **args)

    def test_add_defaults(self) -> None:
        """BridgeAdd with only the secure side: PCMU both sides, DTMF 101, ports answered."""
        answer = self.add()
        self.assertEqual(answer, {"secure_port": 40001, "pbx_port": 40002})
        core = self.service.calls["c1"].core
        self.assertEqual((core.secure.codec, core.pbx.codec), ("PCMU", "PCMU"))
        self.assertEqual((core.secure.dtmf_pt, core.pbx.dtmf_pt), (101, 101))
        self.assertEqual(self.call(Poll, server="cig"), {"sessions": 1, "version": _version()})

    def test_add_full_and_update(self) -> None:
        """Every BridgeAdd argument lands in the core; BridgeUpdate changes the PBX leg."""
        self.add(
            secure_codec="PCMA",
            secure_dtmf_pt=-1,
            srtp_profile="AES_CM_128_HMAC_SHA1_32",
            pbx_port=31000,
            pbx_host="198.51.100.9",
            pbx_remote_port=4000,
            pbx_codec="PCMU",
            pbx_dtmf_pt=96,
        )
        core = self.service.calls["c1"].core
        self.assertEqual((core.secure.codec, core.secure.dtmf_pt), ("PCMA", None))
        self.assertEqual(core.pbx, PbxSide("198.51.100.9", 4000, "PCMU", 96))
        self.assertEqual(self.call(BridgeUpdate, call="c1", pbx_codec="PCMA"), {"updated": True})
        self.assertEqual(core.pbx, PbxSide("198.51.100.9", 4000, "PCMA", 96))
        self.assertEqual(self.call(BridgeUpdate, call="zz"), {"updated": False})

    def test_add_opus(self) -> None:
        """``secure_codec opus`` over AMP: an Opus secure leg; an unknown codec is refused."""
        self.add(secure_codec="opus", pbx_codec="PCMA")
        core = self.service.calls["c1"].core
        self.assertEqual((core.secure.codec, core.secure.payload_type), ("opus", 111))
        failure = self.add(call="c2", secure_codec="G729")
        failure.trap(BridgeError)
        self.assertIn("PCMU, PCMA or opus", failure.getErrorMessage())

    def test_refused_add_is_an_error(self) -> None:
        """A refused BridgeAdd fails with BridgeError and its reason."""
        self.add()
        failure = self.add()
        failure.trap(BridgeError)
        self.assertIn("already bridged", failure.getErrorMessage())
        self.add(call="c2", tag=b"x").trap(BridgeError)

    def test_stats_and_remove(self) -> None:
        """BridgeStats per call and summed; BridgeRemove answers the final counters."""
        self.add()
        self.reactor.advance(TICK_SECONDS)
        self.assertEqual(self.call(BridgeStats, call="c1")["stats"]["secure_tx"], 1)
        self.call(BridgeStats, call="zz").trap(BridgeError)
        self.assertEqual(self.call(BridgeStats)["stats"]["calls"], 1)
        self.assertEqual(self.call(RelayStats)["stats"]["sessions"], 1)
        answer = self.call(BridgeRemove, call="c1")
        self.assertEqual((answer["removed"], answer["stats"]["secure_tx"]), (True, 1))
        self.assertEqual(self.call(BridgeRemove, call="c1"), {"removed": False, "stats": {}})

    def test_dtmf_event_over_control_added_call(self) -> None:
        """A call added over AMP carries a client telephone-event to the PBX."""
        self.add(pbx_host="198.51.100.9", pbx_remote_port=4000, pbx_dtmf_pt=96)
        tx, _ = client_sessions()
        event = TelephoneEvent(11, True, 10, 800).encode()
        port = self.reactor.ports[40001]
        port.protocol.datagramReceived(tx.protect(encode_rtp(101, 1, 0, 3, event, True)), None)
        ((rtp, _),) = self.reactor.ports[40002].sent
        packet = parse_rtp(rtp)
        assert isinstance(packet, RtpPacket)
        self.assertEqual((packet.payload_type, packet.payload), (96, event))


@implementer(IReactorFDSet)
class FdReactor(Clock):
    """A Clock with the reader registration of a real reactor (readers recorded)."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: list[Any] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.remove(reader)


class MediaPollerTests(SynchronousTestCase):
    """The fast path: leg sockets in one epoll set, real UDP on loopback."""

    def setUp(self) -> None:
        self.reactor = FdReactor()
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.1", 0))
        self.peer.settimeout(2)
        self.addCleanup(self.peer.close)

    def poll_until(self, poller: MediaPoller, done: Any) -> None:
        for _ in range(200):
            poller.doRead()
            if done():
                return
            self.peer.settimeout(0.005)
            try:
                self.peer.recv(1)
            except OSError:
                pass
            self.peer.settimeout(2)
        self.fail("nothing arrived")

    def test_poller_reads_every_leg_and_unregisters(self) -> None:
        """One reader for all legs; each datagram reaches its leg; the last close unregisters."""
        poller = MediaPoller(self.reactor)
        got: list[tuple[int, bytes]] = []
        ports = []
        for i in range(3):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind(("127.0.0.1", 0))
            ports.append(SocketPort(poller, sock, lambda d, i=i: got.append((i, d))))
        self.assertEqual(self.reactor.readers, [poller])
        for i, port in enumerate(ports):
            self.peer.sendto(b"to %d" % i, ("127.0.0.1", port.getHost().port))
        self.poll_until(poller, lambda: len(got) == 3)
        self.assertEqual(sorted(got), [(0, b"to 0"), (1, b"to 1"), (2, b"to 2")])
        ports[1].write(b"back", self.peer.getsockname())
        self.assertEqual(self.peer.recvfrom(100), (b"back", ("127.0.0.1", ports[1].getHost().port)))
        for port in ports:
            port.stopListening()
            port.stopListening()  # twice is harmless
        self.assertEqual(self.reactor.readers, [])

    def test_drain_reads_a_bounded_number_of_rounds(self) -> None:
        """drain(n) reads at most n datagrams per leg; more rounds read the rest."""
        poller = MediaPoller(self.reactor)
        got: list[bytes] = []
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        port = SocketPort(poller, sock, got.append)
        self.addCleanup(port.stopListening)
        for i in range(3):
            self.peer.sendto(b"d%d" % i, ("127.0.0.1", port.getHost().port))
        select.select([sock], [], [], 2)
        poller.drain(1)
        self.assertEqual(got, [b"d0"])
        self.poll_until(poller, lambda: len(got) == 3)
        self.assertEqual(got, [b"d0", b"d1", b"d2"])

    def test_handler_error_logged_not_raised(self) -> None:
        """A leg whose handler raises is logged; the poller keeps serving."""
        poller = MediaPoller(self.reactor)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        seen: list[bytes] = []

        def handler(data: bytes) -> None:
            seen.append(data)
            raise ValueError("boom")

        port = SocketPort(poller, sock, handler)
        self.addCleanup(port.stopListening)
        self.peer.sendto(b"x", ("127.0.0.1", port.getHost().port))
        self.poll_until(poller, lambda: seen)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_service_bridges_real_sockets(self) -> None:
        """On a reactor with file descriptors the service's legs are real sockets."""
        service = BridgeService(self.reactor, sip=SipInterface(bind="127.0.0.1"))
        service.startService()
        self.addCleanup(service.stopService)
        relay = SecureSide("127.0.0.1", self.peer.getsockname()[1], TAG, KEY_OUT, KEY_IN)
        pbx = PbxSide("127.0.0.1", self.peer.getsockname()[1])
        secure_port, pbx_port = service.add("c1", relay, pbx)
        (poller,) = self.reactor.readers
        tx, rx = client_sessions()
        frame = bytes(range(160))
        self.peer.sendto(
            tx.protect(encode_rtp(0, 7, 1120, 5, frame, False)), ("127.0.0.1", secure_port)
        )
        self.poll_until(poller, lambda: service.stats("c1")["pbx_tx"])  # type: ignore[index]
        rtp, source = self.peer.recvfrom(2048)
        self.assertEqual(source, ("127.0.0.1", pbx_port))
        packet = parse_rtp(rtp)
        assert isinstance(packet, RtpPacket)
        self.assertEqual(packet.payload, frame)
        self.peer.sendto(encode_rtp(0, 1, 160, 9, frame, False), ("127.0.0.1", pbx_port))
        self.poll_until(poller, lambda: service.stats("c1")["pbx_rx"])  # type: ignore[index]
        self.reactor.advance(TICK_SECONDS)
        datagram, source = self.peer.recvfrom(2048)
        self.assertEqual(source, ("127.0.0.1", secure_port))
        self.assertTrue(datagram.startswith(TAG))
        self.assertIsInstance(parse_rtp(rx.unprotect(datagram[8:])), RtpPacket)
        service.remove("c1")
        self.assertEqual(self.reactor.readers, [])


def _version() -> str:
    from cryptify import __version__

    return __version__
