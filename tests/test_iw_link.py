"""The inter-working link in memory: who gets in, hello and beats, the
``show iw-crs`` states, frames for other modules, live peer changes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config.crs_model import AddressMap, CrsConfig, CrsGlobal
from cryptify.config.iw_crs import IwCrs, IwCrsConfig
from cryptify.crs.interwork.link import (
    BEAT_INTERVAL,
    IDLE_TIMEOUT,
    INBOUND_PER_PEER,
    IwLink,
    _InboundFactory,
    _IwProtocol,
    iw_psk,
)
from cryptify.crs.pool.core import Heartbeat
from cryptify.crs.pool.wire import FrameReader, decode_frame, encode_frame, encode_heartbeat

PEER = IwCrs("198.51.100.7", "SharedSecret42")
OTHER = IwCrs("198.51.100.8", "AnotherSecret")


def config(addr_map: tuple[AddressMap, ...] = ()) -> CrsConfig:
    return CrsConfig(global_=CrsGlobal(addr_map=addr_map))


def frames(transport: StringTransport) -> list[tuple[str, dict[str, object]]]:
    out = []
    for payload in FrameReader().feed(transport.value()):
        frame = decode_frame(payload)
        assert not hasattr(frame, "beat")
        out.append((frame.type, frame.fields))  # type: ignore[union-attr]
    transport.clear()
    return out


class IwLinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.link = IwLink(config(), IwCrsConfig((PEER,)), self.reactor, "1.2.3")
        self.link.startService()
        self.addCleanup(self.link.stopService)

    def inbound(self, host: str) -> tuple[_IwProtocol | None, StringTransport]:
        address = IPv4Address("TCP", host, 40000)
        proto = _InboundFactory(self.link).buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        if proto is not None:
            assert isinstance(proto, _IwProtocol)
            proto.makeConnection(transport)
        return proto, transport

    def test_listens_and_connects_out(self) -> None:
        """The link listens on iw-port with TLS and connects out to each peer."""
        self.assertEqual([p[0] for p in self.reactor.tcpServers], [8080])
        self.assertEqual([(c[0], c[1]) for c in self.reactor.tcpClients], [(PEER.ip, 8080)])

    def test_addr_map_applies(self) -> None:
        """Outgoing connections use the mapped address, and the mapped
        address is accepted as the peer's source."""
        link = IwLink(
            config((AddressMap(PEER.ip, "10.0.0.7"),)),
            IwCrsConfig((PEER,)),
            self.reactor,
            "1",
        )
        link.startService()
        self.addCleanup(link.stopService)
        self.assertEqual(self.reactor.tcpClients[-1][0], "10.0.0.7")
        self.assertIsNotNone(link._accept("10.0.0.7"))

    def test_strangers_refused_and_logged_once(self) -> None:
        """A source that is no peer is closed on accept, logged once."""
        logged: list[str] = []
        from twisted.logger import globalLogPublisher

        def observe(event: dict[str, object]) -> None:
            if "not an iw-crs peer" in str(event.get("log_format", "")):
                logged.append(str(event.get("source")))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        for _ in range(3):
            proto, _ = self.inbound("203.0.113.9")
            self.assertIsNone(proto)
        self.assertEqual(logged, ["203.0.113.9"])

    def test_psk_by_source_address(self) -> None:
        """The key is the peer's, chosen by source address, whatever the identity."""
        address = IPv4Address("TCP", PEER.ip, 1)
        self.assertEqual(self.link._lookup(b"anything", address), iw_psk(PEER.secret))
        self.assertIsNone(self.link._lookup(b"crs-iw", IPv4Address("TCP", OTHER.ip, 1)))
        self.assertEqual(len(iw_psk("a")), 32)

    def test_inbound_limit(self) -> None:
        """At most INBOUND_PER_PEER incoming connections from one peer."""
        held = [self.inbound(PEER.ip)[0] for _ in range(INBOUND_PER_PEER + 2)]
        self.assertEqual(sum(p is not None for p in held), INBOUND_PER_PEER)

    def test_hello_beats_and_states(self) -> None:
        """Each side says hello first; with the peer's hello the incoming
        connection is up and its version shown; beats every interval keep
        it; silence drops it and the link is down."""
        proto, transport = self.inbound(PEER.ip)
        assert proto is not None
        self.assertEqual(frames(transport), [("iw-hello", {"version": "1.2.3"})])
        self.assertEqual(self.link.rows()[0][1:4], ("down", "down", "down"))
        proto.dataReceived(encode_frame("iw-hello", {"version": "9.9"}))
        self.assertEqual(self.link.rows(), [(PEER.ip, "up", "down", "up", "-", "-", "-", "9.9")])
        for _ in range(int(IDLE_TIMEOUT * 2)):
            self.reactor.advance(BEAT_INTERVAL)
            proto.dataReceived(encode_frame("iw-beat", {}))
        self.assertFalse(transport.disconnecting)
        self.assertIn(("iw-beat", {}), frames(transport))
        self.reactor.advance(IDLE_TIMEOUT + 1)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(self.link.rows()[0][1], "down")

    def test_bad_frames_drop_the_connection(self) -> None:
        """A frame before the hello, a bad or second hello, or a pool
        heartbeat drops the connection; an unknown type is ignored."""
        cases = [
            encode_frame("iw-beat", {}),
            encode_frame("iw-hello", {"version": 3}),
            encode_frame("iw-hello", {"version": "1", "x": 1}),
            encode_frame("iw-hello", {"version": "x" * 65}),
            encode_frame("iw-hello", {"version": "1"}) + encode_frame("iw-hello", {"version": "1"}),
            encode_heartbeat(Heartbeat("crs2", None)),
            b"\x00\x00\x00\x02\xff\xff",
        ]
        for data in cases:
            proto, transport = self.inbound(PEER.ip)
            assert proto is not None
            proto.dataReceived(data)
            self.assertTrue(transport.disconnecting, data)
            proto.connectionLost(None)
        proto, transport = self.inbound(PEER.ip)
        assert proto is not None
        proto.dataReceived(
            encode_frame("iw-hello", {"version": "1"}) + encode_frame("iw-future", {"a": 1})
        )
        self.assertFalse(transport.disconnecting)

    def test_frames_for_modules(self) -> None:
        """Frames of a registered type reach its handler with the peer's
        address; send() needs a ready connection."""
        got: list[tuple[str, dict[str, object]]] = []
        self.link.handle("iw-post", lambda peer, fields: got.append((peer, fields)))
        with self.assertRaises(ValueError):
            self.link.handle("iw-hello", lambda peer, fields: None)
        self.assertFalse(self.link.send(PEER.ip, "iw-post", {"n": 1}))
        proto, transport = self.inbound(PEER.ip)
        assert proto is not None
        proto.dataReceived(encode_frame("iw-hello", {"version": "1"}))
        proto.dataReceived(encode_frame("iw-post", {"n": 2}))
        self.assertEqual(got, [(PEER.ip, {"n": 2})])
        frames(transport)
        self.assertTrue(self.link.send(PEER.ip, "iw-post", {"n": 3}))
        self.assertEqual(frames(transport), [("iw-post", {"n": 3})])

    def test_link_listeners_hear_up_and_down(self) -> None:
        """on_link hears a peer's link come up once (the first connection
        with hellos, not the second) and go down when the last connection
        closes or the peer is removed; link_up follows."""
        heard: list[tuple[str, bool]] = []
        self.link.on_link(lambda peer, up: heard.append((peer, up)))
        first, _ = self.inbound(PEER.ip)
        second, _ = self.inbound(PEER.ip)
        assert first is not None and second is not None
        first.dataReceived(encode_frame("iw-hello", {"version": "1"}))
        second.dataReceived(encode_frame("iw-hello", {"version": "1"}))
        self.assertEqual(heard, [(PEER.ip, True)])
        self.assertTrue(self.link.link_up(PEER.ip))
        first.connectionLost(None)
        self.assertEqual(heard, [(PEER.ip, True)])
        second.connectionLost(None)
        self.assertEqual(heard, [(PEER.ip, True), (PEER.ip, False)])
        self.assertFalse(self.link.link_up(PEER.ip))
        self.link.update(IwCrsConfig())
        self.assertEqual(heard[-1], (PEER.ip, False))

    def test_operator_names_peers_by_secret(self) -> None:
        """Peers with one secret are one operator; the name is not the secret."""
        self.link.update(IwCrsConfig((PEER, IwCrs("198.51.100.9", PEER.secret), OTHER)))
        same = self.link.operator(PEER.ip)
        assert same is not None
        self.assertEqual(self.link.operator("198.51.100.9"), same)
        self.assertNotEqual(self.link.operator(OTHER.ip), same)
        self.assertNotIn(PEER.secret, same)
        self.assertIsNone(self.link.operator("203.0.113.1"))

    def test_data_columns_from_the_calls(self) -> None:
        """The data columns come from data_state when the calls set it."""
        self.assertEqual(self.link.rows()[0][4:7], ("-", "-", "-"))
        self.link.data_state = lambda peer: ("up", "up", "down")
        self.assertEqual(self.link.rows()[0][4:7], ("up", "up", "down"))

    def test_update_adds_and_removes_peers(self) -> None:
        """A changed iw-crs.conf applies at once: a new peer is connected,
        a removed one's connections closed, a changed secret reconnects."""
        proto, transport = self.inbound(PEER.ip)
        assert proto is not None
        self.link.update(IwCrsConfig((OTHER,)))
        self.assertTrue(transport.disconnecting)
        self.assertEqual([r[0] for r in self.link.rows()], [OTHER.ip])
        self.assertEqual(self.reactor.tcpClients[-1][0], OTHER.ip)
        self.assertIsNone(self.link._accept(PEER.ip))
        self.link.update(IwCrsConfig((IwCrs(OTHER.ip, "Changed"),)))
        self.assertEqual(self.link.peers[OTHER.ip].secret, "Changed")


class HostileTests(SynchronousTestCase):
    @given(st.binary(max_size=200))
    @settings(max_examples=200)
    def test_any_octets(self, data: bytes) -> None:
        """Whatever a peer sends after its hello, the connection survives
        or is dropped; nothing escapes."""
        reactor = MemoryReactorClock()
        link = IwLink(config(), IwCrsConfig((PEER,)), reactor, "1")
        proto = link._accept(PEER.ip)
        assert isinstance(proto, _IwProtocol)
        proto.makeConnection(StringTransport())
        proto.dataReceived(encode_frame("iw-hello", {"version": "1"}) + data)


class ListenerTests(SynchronousTestCase):
    def test_port_open_only_with_peers(self) -> None:
        """With no peer nothing listens; the first peer added opens the
        port, removing the last closes it."""
        reactor = MemoryReactorClock()
        link = IwLink(config(), IwCrsConfig(), reactor, "1")
        link.startService()
        self.addCleanup(link.stopService)
        self.assertEqual(reactor.tcpServers, [])
        link.update(IwCrsConfig((PEER,)))
        self.assertEqual([p[0] for p in reactor.tcpServers], [8080])
        self.assertTrue(link.listener.running)
        link.update(IwCrsConfig())
        self.assertFalse(link.listener.running)
        self.assertIsNone(link.listener.port)
