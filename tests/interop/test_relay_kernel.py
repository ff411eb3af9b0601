"""The relay's rules on both media paths, on real sockets in a private network.

Each scenario (latching, rebinding, credit, counters, hostile traffic, a
seeded mix of everything compared with a pure core) runs twice: through the
userspace relay alone, and with the eBPF kernel path attached to the
namespace's loopback (and, in one test, across a veth pair to a second
namespace, where the program routes and rewrites MAC addresses).  The
namespaces are made and removed by the tests; without root, or where BPF
cannot load, the kernel half says why as a skip.

The relay's core runs on a :class:`Clock` while the kernel stamps packets
with its own clock, so a test that lets time pass first pulls the kernel's
view (``core.sync``), as the relay's sweep does.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
from typing import TYPE_CHECKING

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from cryptify.crs.relay import mmsg as relay_mmsg
from cryptify.crs.relay.core import CREDIT_CAP, RelayCore
from cryptify.crs.relay.kernel import KernelPath, KernelPathUnavailable
from cryptify.crs.relay.mmsg import raw_address
from cryptify.crs.relay.wiring import RelayReader, media_socket
from cryptify.protocols.relay_packet import MAX_PACKET, TAG_SIZE
from tests.interop._amp import AmpClient
from tests.interop._netns import NetNamespace
from tests.interop._procs import Twistd, short_tempdir, unix_answers, wait_for

RTP = b"\x80\x00" + bytes(170)
SMALL = b"\x80\x00" + bytes(10)  # the shortest relayed SRTP packet (12 bytes)

if TYPE_CHECKING:
    _Case = SynchronousTestCase
else:
    _Case = object


def receive_all(s: socket.socket) -> list[bytes]:
    got = []
    while select.select([s], [], [], 0.02)[0]:
        got.append(s.recv(2048))
    return got


class PathContract(_Case):
    """The scenarios; ``kernel`` says which path the subclass runs them on."""

    kernel = False
    attach = "auto"
    host = "127.0.0.1"

    def setUp(self) -> None:
        if not relay_mmsg.available():
            raise SkipTest("recvmmsg/sendmmsg not available")
        self.ns = NetNamespace(self, short_tempdir(self))
        self.clock = Clock()
        self.mapped: dict[str, str] = {}
        self.core = RelayCore(map_address=lambda ip: self.mapped.get(ip, ip))
        with self.ns.entered():
            self.sock = media_socket(self.host, 0)
            self.addCleanup(self.sock.close)
            self.relay_addr = self.sock.getsockname()
            self.path: KernelPath | None = None
            if self.kernel:
                try:
                    self.path = KernelPath.load(self.host, self.relay_addr[1], attach=self.attach)
                except KernelPathUnavailable as e:
                    raise SkipTest(f"kernel path: {e}") from None
                self.addCleanup(self.path.close)
                self.core.offload = self.path
        self.reader = self.make_reader()
        link = self.core.open_link("crs1", 0.0)
        self.session = self.core.add(link, 0.0)
        self.alice, self.bob, self.stranger = (self.client() for _ in range(3))
        self.expected_rx = 0

    def make_reader(self) -> relay_mmsg.BatchReader | RelayReader:
        return relay_mmsg.BatchReader(self.core, self.clock, self.sock, self.core.map_address)

    def address(self, s: socket.socket) -> object:
        """A client's address as the reader gives it to the core."""
        return raw_address(*s.getsockname())

    def client(self, host: str = "127.0.0.1") -> socket.socket:
        s = self.ns.socket()
        self.addCleanup(s.close)
        s.bind((host, 0))
        return s

    def send(self, s: socket.socket, data: bytes) -> None:
        """Send one datagram and wait until one of the paths has counted it."""
        self.sendto(s, data)
        self.settle()

    def sendto(self, s: socket.socket, data: bytes) -> None:
        self.expected_rx += 1
        s.sendto(data, self.relay_addr)

    def settle(self) -> None:
        """Read until every datagram sent is counted (by the relay or the kernel)."""
        for _ in range(2000):
            if select.select([self.sock], [], [], 0.001)[0]:
                self.reader.doRead()
            if self.core.stats()["RX"] >= self.expected_rx:
                return
        self.fail(f"sent {self.expected_rx} datagrams, relay counted {self.core.stats()['RX']}")

    def advance(self, seconds: float) -> None:
        self.core.sync(self.clock.seconds())
        self.clock.advance(seconds)

    def kernel_forwarded(self) -> int:
        return self.path.counters()["TXB"] if self.path is not None else 0

    def assert_path(self, forwarded_in_kernel: int) -> None:
        """The kernel half forwarded exactly this many; the userspace half none."""
        self.assertEqual(self.kernel_forwarded(), forwarded_in_kernel if self.kernel else 0)

    def latch(self) -> None:
        self.send(self.alice, self.session.a.tag + RTP)
        self.send(self.bob, self.session.b.tag + RTP)
        self.assertEqual(receive_all(self.alice), [RTP])

    def test_latch_then_exchange(self) -> None:
        """Nothing is forwarded until both legs latched; then both ways, tag stripped, from
        the relay's address; show relay counts it all once."""
        a, b = self.session.a.tag, self.session.b.tag
        self.send(self.alice, a + RTP + b"0")
        self.assertEqual(receive_all(self.bob), [])
        self.send(self.bob, b + RTP + b"1")
        self.assertEqual(receive_all(self.alice), [RTP + b"1"])
        for i in range(10):
            self.send(self.alice, a + RTP + b"a%d" % i)
            self.send(self.bob, b + RTP + b"b%d" % i)
        self.send(self.alice, a + RTP)
        self.assertEqual(receive_all(self.bob), [RTP + b"a%d" % i for i in range(10)] + [RTP])
        self.assertEqual(receive_all(self.alice), [RTP + b"b%d" % i for i in range(10)])
        self.send(self.bob, b + RTP)
        data, source = self.alice.recvfrom(2048)
        self.assertEqual((data, source), (RTP, self.relay_addr))
        stats = self.core.stats()
        self.assertEqual((stats["RX"], stats["TXB"], stats["ERRNODEST"]), (24, 23, 1))
        self.assert_path(22)
        self.core.sync(self.clock.seconds())
        self.assertEqual(
            self.session.describe()["a"],
            {"latched": True, "packets": 12, "bytes": 181 + 10 * 182 + 180, "rebinds": 0},
        )

    def test_hostile_traffic_is_counted_and_sent_nowhere(self) -> None:
        """Unknown tags, runts, oversized datagrams and a stranger using a live leg's tag are
        counted and dropped (by the userspace relay: the kernel passes them up)."""
        a, b = self.session.a.tag, self.session.b.tag
        self.latch()
        self.send(self.stranger, b"\x00" * 8 + RTP)
        self.send(self.stranger, b"tiny")
        self.send(self.stranger, a + bytes(MAX_PACKET))
        self.send(self.stranger, a + RTP)  # Alice's tag, wrong address, Alice live
        self.send(self.bob, b + RTP + b"for alice")
        self.assertEqual(receive_all(self.stranger), [])
        self.assertEqual(receive_all(self.alice), [RTP + b"for alice"])
        stats = self.core.stats()
        self.assertEqual(
            (stats["RX"], stats["ERRNODEST"], stats["ERRTOSHORT"], stats["ERRTOLONG"]),
            (7, 3, 1, 1),
        )
        self.assertEqual(self.session.a.source, self.address(self.alice))
        self.assert_path(1)

    def test_rebinding_only_after_silence(self) -> None:
        """Another address with Alice's tag is refused while Alice talks (through the kernel);
        once she has been silent a second it takes the leg with no credit, and the old
        address is the stranger."""
        a, b = self.session.a.tag, self.session.b.tag
        self.latch()
        self.advance(0.5)
        self.send(self.alice, a + RTP)
        self.send(self.stranger, a + RTP + b"theft")
        self.assertEqual(receive_all(self.bob), [RTP])
        self.advance(1.5)
        self.send(self.stranger, a + SMALL)  # the NAT moved Alice: 40 bytes of credit
        self.assertEqual(receive_all(self.bob), [SMALL])
        self.send(self.bob, b + SMALL)
        self.send(self.bob, b + SMALL)
        self.send(self.bob, b + SMALL)
        self.send(self.bob, b + SMALL)
        self.assertEqual(receive_all(self.stranger), [SMALL] * 3)
        self.send(self.alice, a + RTP + b"old address")
        self.assertEqual(receive_all(self.bob), [])
        self.assertEqual(receive_all(self.alice), [])
        self.core.sync(self.clock.seconds())
        self.assertEqual(self.session.a.rebinds, 1)
        self.assertEqual(self.session.a.source, self.address(self.stranger))
        stats = self.core.stats()
        self.assertEqual((stats["RX"], stats["TXB"], stats["ERRNODEST"]), (10, 6, 4))
        self.assert_path(4)  # Alice's packet at 0.5, and Bob's three to the new address

    def test_credit_bounds_what_a_leg_receives(self) -> None:
        """A leg that sent one short packet is owed twice its bytes: a flood from its peer
        reaches it only that far (ERRNODEST for the rest), and the peer's own credit caps."""
        a, b = self.session.a.tag, self.session.b.tag
        self.send(self.bob, b + RTP)
        self.send(self.alice, a + SMALL)  # Alice (or a forged victim) is owed 40 bytes
        self.assertEqual(receive_all(self.bob), [SMALL])
        for _ in range(20):
            self.send(self.bob, b + SMALL)
        self.assertEqual(receive_all(self.alice), [SMALL] * 3)
        stats = self.core.stats()
        self.assertEqual((stats["RX"], stats["TXB"], stats["ERRNODEST"]), (22, 4, 18))
        self.assert_path(3)
        # Alice floods Bob: he is owed at most the cap, whatever she sends.
        for _ in range(CREDIT_CAP // len(RTP) + 20):
            self.sendto(self.alice, a + RTP)
        self.settle()
        self.assertLessEqual(len(receive_all(self.bob)) * len(RTP), CREDIT_CAP)

    def test_a_seeded_mix_matches_a_pure_core(self) -> None:
        """Three hundred datagrams of every kind from three addresses, with time passing:
        each client receives what a core with no kernel path would have sent it, and the
        counters and legs end the same."""
        ref = RelayCore()
        ref_link = ref.open_link("crs1", 0.0)
        ref_session = ref.add(ref_link, 0.0)
        clients = {"alice": self.alice, "bob": self.bob, "stranger": self.stranger}
        names = {s.getsockname(): n for n, s in clients.items()}
        tags = {"a": self.session.a.tag, "b": self.session.b.tag, "x": b"\xee" * TAG_SIZE}
        ref_tags = {"a": ref_session.a.tag, "b": ref_session.b.tag, "x": b"\xee" * TAG_SIZE}
        rng = random.Random(21)
        expected: dict[str, list[bytes]] = {n: [] for n in clients}
        for i in range(300):
            step = rng.choice([0.0] * 8 + [0.3, 1.5])
            if step:
                self.advance(step)
            leg = rng.choice("aabbx")
            sender = rng.choice(["alice"] * 4 + ["bob"] * 4 + ["stranger"])
            size = rng.choice([172] * 6 + [0, 4, 12, 40, MAX_PACKET - 8, MAX_PACKET - 7])
            payload = b"\x80" + (i % 256).to_bytes(1, "big") + bytes(max(0, size - 2))
            payload = payload[:size]
            now = self.clock.seconds()
            result = ref.packet(ref_tags[leg] + payload, clients[sender].getsockname(), now)
            if isinstance(result, tuple):
                ref.counters.txb += 1
                expected[names[result[0]]].append(result[1])
            self.send(clients[sender], tags[leg] + payload)
        for name, s in clients.items():
            self.assertEqual(receive_all(s), expected[name], name)
        self.core.sync(self.clock.seconds())
        self.assertEqual(self.core.stats(), ref.stats())
        for mine, theirs in ((self.session.a, ref_session.a), (self.session.b, ref_session.b)):
            self.assertEqual(
                (mine.packets, mine.bytes, mine.rebinds, mine.credit),
                (theirs.packets, theirs.bytes, theirs.rebinds, theirs.credit),
            )
        if self.kernel:
            self.assertGreater(self.kernel_forwarded(), 50)

    def test_addr_map(self) -> None:
        """A leg latched at an address in addr-map is sent to the mapped address."""
        self.mapped["127.0.0.1"] = "127.0.0.2"
        target = self.ns.socket()
        self.addCleanup(target.close)
        target.bind(("127.0.0.2", self.bob.getsockname()[1]))
        self.send(self.bob, self.session.b.tag + RTP)
        self.send(self.alice, self.session.a.tag + RTP + b"latch")
        self.send(self.alice, self.session.a.tag + RTP + b"mapped")
        self.assertEqual(receive_all(target), [RTP + b"latch", RTP + b"mapped"])
        self.assertEqual(receive_all(self.bob), [])
        self.assert_path(1)

    def test_removed_session_forwards_nothing(self) -> None:
        """Once the CRS removes a session (or it expires), its tags are unknown everywhere."""
        a = self.session.a.tag
        self.latch()
        self.core.remove(self.session.ident)
        self.send(self.alice, a + RTP)
        self.assertEqual(receive_all(self.bob), [])
        self.assertEqual(self.core.stats()["ERRNODEST"], 2)
        self.assert_path(0)


class UserspacePathTests(PathContract, SynchronousTestCase):
    kernel = False


class KernelPathTests(PathContract, SynchronousTestCase):
    kernel = True


class ClsBpfKernelPathTests(PathContract, SynchronousTestCase):
    """The same program attached as a cls_bpf filter (the fallback before tcx)."""

    kernel = True
    attach = "tc"

    def test_attached_as_a_filter(self) -> None:
        assert self.path is not None
        self.assertEqual(self.path.describe(), "cls_bpf on lo")


class PlainReaderKernelPathTests(PathContract, SynchronousTestCase):
    """The kernel path in front of the plain reader, whose addresses are tuples."""

    kernel = True

    def make_reader(self) -> relay_mmsg.BatchReader | RelayReader:
        return RelayReader(self.core, self.clock, self.sock)

    def address(self, s: socket.socket) -> object:
        return s.getsockname()


class VethKernelPathTests(SynchronousTestCase):
    """Clients in another namespace, across a veth pair: the program routes (FIB lookup),
    sets the MAC addresses and sends the packet back out of the veth."""

    def test_two_clients_across_a_veth(self) -> None:
        if not relay_mmsg.available():
            raise SkipTest("recvmmsg/sendmmsg not available")
        relay_ns = NetNamespace(self, short_tempdir(self))
        client_ns = NetNamespace(self, short_tempdir(self))
        relay_ns.run("ip", "link", "add", "rv0", "type", "veth", "peer", "name", "cv0")
        relay_ns.run("ip", "link", "set", "cv0", "netns", str(client_ns.holder.pid))
        relay_ns.run("ip", "addr", "add", "10.21.0.1/24", "dev", "rv0")
        relay_ns.run("ip", "link", "set", "rv0", "up")
        client_ns.run("ip", "addr", "add", "10.21.0.2/24", "dev", "cv0")
        client_ns.run("ip", "link", "set", "cv0", "up")
        clock = Clock()
        core = RelayCore()
        with relay_ns.entered():
            sock = media_socket("10.21.0.1", 0)
            self.addCleanup(sock.close)
            relay_addr = sock.getsockname()
            try:
                path = KernelPath.load("10.21.0.1", relay_addr[1])
            except KernelPathUnavailable as e:
                raise SkipTest(f"kernel path: {e}") from None
            self.addCleanup(path.close)
        self.assertEqual(path.interfaces, ["lo", "rv0"])
        core.offload = path
        reader = relay_mmsg.BatchReader(core, clock, sock, lambda h: h)
        session = core.add(core.open_link("crs1", 0.0), 0.0)
        alice, bob = client_ns.socket(), client_ns.socket()
        for s in (alice, bob):
            self.addCleanup(s.close)
            s.bind(("10.21.0.2", 0))

        def send(s: socket.socket, data: bytes) -> None:
            s.sendto(data, relay_addr)
            while select.select([sock], [], [], 0.05)[0]:
                reader.doRead()

        send(alice, session.a.tag + RTP)
        send(bob, session.b.tag + RTP)
        for i in range(20):
            send(alice, session.a.tag + RTP + b"a%d" % i)
            send(bob, session.b.tag + RTP + b"b%d" % i)
        self.assertEqual(receive_all(alice), [RTP] + [RTP + b"b%d" % i for i in range(20)])
        self.assertEqual(receive_all(bob), [RTP + b"a%d" % i for i in range(20)])
        self.assertEqual(path.counters()["TXB"], 40)
        self.assertEqual(core.stats()["TXB"], 41)


class RelayProcessKernelTests(SynchronousTestCase):
    def test_twistd_crs_relay_loads_the_kernel_path(self) -> None:
        """``twistd crs-relay`` in a namespace attaches the program (one log line says where),
        the calls' media goes through it, and show relay counts what the kernel forwarded."""
        d = short_tempdir(self)
        ns = NetNamespace(self, d)
        port = 40146
        with open(os.path.join(d, "crs.conf"), "w") as f:
            f.write(
                f"[GLOBAL]\nkey k\nrelay 127.0.0.1 {port}\nrelay-control {d}/relay.sock\n"
                f"log-dir {d}/log\n[POOL]\nhost crs1\nip crs1 127.0.0.1\n"
            )
        proc = Twistd(
            d, "crs-relay", "--config", f"{d}/crs.conf", "--notify", "", prefix=tuple(ns.prefix(d))
        )
        self.addCleanup(proc.stop)
        wait_for(lambda: unix_answers(f"{d}/relay.sock"), "relay control socket")
        with open(os.path.join(d, "log", "crs_relay.log")) as f:
            for line in f:
                if "kernel path unavailable" in line:
                    raise SkipTest(line.split("] ", 1)[1].strip())
        control = AmpClient(f"{d}/relay.sock")
        self.addCleanup(control.close)
        added = control.call("Add", server=b"crs1", label=b"call 1")
        alice, bob = ns.socket(), ns.socket()
        for s in (alice, bob):
            self.addCleanup(s.close)
            s.bind(("127.0.0.1", 0))
        relay = ("127.0.0.1", port)

        def stats() -> dict[str, int]:
            answer: dict[str, int] = json.loads(control.call("RelayStats")["stats.1"])
            return answer

        alice.sendto(added["tag_a"] + RTP, relay)
        wait_for(lambda: stats()["RX"] == 1, "Alice latched")
        bob.sendto(added["tag_b"] + RTP, relay)
        wait_for(lambda: stats()["RX"] == 2, "Bob latched")
        for _ in range(50):
            alice.sendto(added["tag_a"] + RTP, relay)
            bob.sendto(added["tag_b"] + RTP, relay)
        self.assertEqual(len(receive_all(alice)), 51)
        self.assertEqual(len(receive_all(bob)), 50)
        self.assertEqual(
            stats(),
            {
                "RX": 102,
                "TXB": 101,
                "TXERROR": 0,
                "ERRNODEST": 1,
                "ERRTOSHORT": 0,
                "ERRTOLONG": 0,
                "ENTRIES": 1,
            },
        )
        listed = json.loads(control.call("List", server=b"crs1")["sessions.1"])
        self.assertEqual(listed[0]["a"]["packets"], 51)
        control.close()
        proc.stop()
        with open(os.path.join(d, "log", "crs_relay.log")) as f:
            log = f.read()
        self.assertIn("kernel path: tcx on lo", log)
