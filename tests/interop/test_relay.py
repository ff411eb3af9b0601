"""The CRS relay on real sockets: the batched reader on loopback, and ``twistd crs-relay``."""

from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from cryptify.crs.relay import mmsg as relay_mmsg
from cryptify.crs.relay.core import RelayCore
from cryptify.crs.relay.wiring import RelayReader, media_socket
from cryptify.protocols.relay_packet import MAX_PACKET
from tests.interop._amp import AmpClient
from tests.interop._procs import Twistd, free_port, short_tempdir, unix_answers, wait_for

RTP = b"\x80\x00" + bytes(170)


def udp_client(case: SynchronousTestCase) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    case.addCleanup(s.close)
    return s


def receive_all(s: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(s.recv(2048))
        except (TimeoutError, BlockingIOError):
            return got


if TYPE_CHECKING:
    _Case = SynchronousTestCase
else:
    _Case = object


class ReaderContract(_Case):
    """Hostile and normal traffic through a media reader on real loopback sockets.

    The reader is driven by calling ``doRead`` by hand (no reactor): each
    test sends, then lets the relay read.
    """

    def make_reader(self, core: RelayCore, clock: Clock, sock: socket.socket) -> object:
        raise NotImplementedError

    def setUp(self) -> None:
        self.clock = Clock()
        self.mapped: dict[str, str] = {}
        self.core = RelayCore(map_address=lambda ip: self.mapped.get(ip, ip))
        self.sock = media_socket("127.0.0.1", 0)
        self.addCleanup(self.sock.close)
        self.relay_addr = self.sock.getsockname()
        self.reader: object = self.make_reader(self.core, self.clock, self.sock)
        link = self.core.open_link("crs1", 0.0)
        self.session = self.core.add(link, 0.0)
        self.alice = udp_client(self)
        self.bob = udp_client(self)

    def pump(self) -> None:
        import select

        while select.select([self.sock], [], [], 0.05)[0]:
            self.reader.doRead()

    def send(self, s: socket.socket, data: bytes) -> None:
        s.sendto(data, self.relay_addr)

    def test_two_legs_exchange_packets(self) -> None:
        """Packets flow both ways once both legs latched; the tag is stripped."""
        a, b = self.session.a.tag, self.session.b.tag
        self.send(self.alice, a + RTP)
        self.send(self.bob, b + RTP + b"bob")
        self.pump()
        self.send(self.alice, a + RTP + b"alice")
        self.pump()
        self.assertEqual(receive_all(self.alice), [RTP + b"bob"])
        self.assertEqual(receive_all(self.bob), [RTP + b"alice"])
        stats = self.core.stats()
        self.assertEqual((stats["RX"], stats["TXB"], stats["ERRNODEST"]), (3, 2, 1))

    def test_hostile_traffic_is_counted_and_sent_nowhere(self) -> None:
        """Unknown tags, runts, oversized datagrams and a stranger using a leg's tag are counted
        and dropped; the stranger receives nothing and the call goes on."""
        a, b = self.session.a.tag, self.session.b.tag
        stranger = udp_client(self)
        self.send(self.alice, a + RTP)
        self.send(self.bob, b + RTP)
        self.pump()
        receive_all(self.alice)
        self.send(stranger, b"\x00" * 8 + RTP)
        self.send(stranger, b"tiny")
        self.send(stranger, a + bytes(MAX_PACKET))
        self.send(stranger, a + RTP)  # Alice's tag, wrong address, Alice live
        self.pump()
        self.send(self.bob, b + RTP + b"for alice")
        self.pump()
        self.assertEqual(receive_all(stranger), [])
        self.assertEqual(receive_all(self.alice), [RTP + b"for alice"])
        stats = self.core.stats()
        self.assertEqual((stats["ERRNODEST"], stats["ERRTOSHORT"], stats["ERRTOLONG"]), (3, 1, 1))

    def test_addr_map_on_real_socket(self) -> None:
        """A leg latched at an address in addr-map is sent to the mapped address."""
        self.mapped["127.0.0.1"] = "127.0.0.2"
        target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(target.close)
        target.bind(("127.0.0.2", self.bob.getsockname()[1]))
        target.settimeout(0.2)
        self.send(self.bob, self.session.b.tag + RTP)
        self.send(self.alice, self.session.a.tag + RTP + b"mapped")
        self.pump()
        self.assertEqual(receive_all(target), [RTP + b"mapped"])

    def test_bridged_leg_on_real_socket(self) -> None:
        """A leg bridged to another relay (here a plain socket standing in
        for it) gets Alice's packets with that relay's tag in front, before
        it sent anything; what it sends with our tag reaches Alice bare."""
        peer = udp_client(self)
        host, port = peer.getsockname()
        self.assertTrue(self.core.bridge(self.session.ident, "b", host, port, b"PEERTAG!"))
        self.send(self.alice, self.session.a.tag + RTP + b"one")
        self.pump()
        self.assertEqual(receive_all(peer), [b"PEERTAG!" + RTP + b"one"])
        self.send(peer, self.session.b.tag + RTP + b"back")
        self.pump()
        self.assertEqual(receive_all(self.alice), [RTP + b"back"])


class BatchReaderTests(ReaderContract, SynchronousTestCase):
    def make_reader(self, core: RelayCore, clock: Clock, sock: socket.socket) -> object:
        if not relay_mmsg.available():
            raise SkipTest("recvmmsg/sendmmsg not available")
        return relay_mmsg.BatchReader(core, clock, sock, core.map_address)


class PlainReaderTests(ReaderContract, SynchronousTestCase):
    def make_reader(self, core: RelayCore, clock: Clock, sock: socket.socket) -> object:
        return RelayReader(core, clock, sock)


class RelayProcessTests(SynchronousTestCase):
    def test_two_udp_clients_through_twistd_crs_relay(self) -> None:
        """A real crs-relay: the CRS adds a session over the control socket, two UDP clients
        talk through the media port, show relay's counters add up, crs_relay.log has the events."""
        d = short_tempdir(self)
        port = free_port(socket.SOCK_DGRAM)
        conf = os.path.join(d, "crs.conf")
        with open(conf, "w") as f:
            f.write(
                f"[GLOBAL]\nkey k\nrelay 127.0.0.1 {port}\nrelay-control {d}/relay.sock\n"
                f"log-dir {d}/log\n[POOL]\nhost crs1\nip crs1 127.0.0.1\n"
            )
        proc = Twistd(d, "crs-relay", "--config", conf, "--notify", "")
        self.addCleanup(proc.stop)
        wait_for(lambda: unix_answers(f"{d}/relay.sock"), "relay control socket")
        control = AmpClient(f"{d}/relay.sock")
        self.addCleanup(control.close)
        control.call("Poll", server=b"crs1")
        added = control.call("Add", server=b"crs1", label=b"call 1")
        self.assertEqual(int(added["port"]), port)
        alice, bob = udp_client(self), udp_client(self)
        relay = ("127.0.0.1", port)
        alice.sendto(added["tag_a"] + RTP, relay)
        wait_for(lambda: b'"RX":1' in control.call("RelayStats")["stats.1"], "first packet")
        for i in range(20):
            bob.sendto(added["tag_b"] + RTP + b"b%d" % i, relay)
            alice.sendto(added["tag_a"] + RTP + b"a%d" % i, relay)
        self.assertEqual(len(receive_all(alice)), 20)
        self.assertEqual(len(receive_all(bob)), 20)
        bob.sendto(b"short", relay)
        stats = json.loads(control.call("RelayStats")["stats.1"])
        wait_for(lambda: json.loads(control.call("RelayStats")["stats.1"])["RX"] == 42, "runt")
        stats = json.loads(control.call("RelayStats")["stats.1"])
        self.assertEqual(
            stats,
            {
                "RX": 42,
                "TXB": 40,
                "TXERROR": 0,
                "ERRNODEST": 1,
                "ERRTOSHORT": 1,
                "ERRTOLONG": 0,
                "ENTRIES": 1,
            },
        )
        listed = json.loads(control.call("List", server=b"crs1")["sessions.1"])
        self.assertEqual([s["label"] for s in listed], ["call 1"])
        control.close()
        proc.stop()
        with open(os.path.join(d, "log", "crs_relay.log")) as f:
            log = f.read()
        for event in ("Start crs_relay", "CONNECTION", "Command poll", "Command add", "CLOSE"):
            self.assertIn(event, log)
        self.assertNotIn(added["tag_a"].hex(), log)
