"""
Tests for L{cryptify.protocols.sip.transport}: outbound SIP over TCP
(L{TcpConnector}) on a memory reactor, and the limits on inbound TCP
(L{SipStreamFactory}) on a L{Clock}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cryptify.protocols.sip.errors import SipParseError
from cryptify.protocols.sip.message import Request, Response
from cryptify.protocols.sip.transaction import Channel
from cryptify.protocols.sip.transport import (
    MAX_TCP_PER_SOURCE,
    SipStreamFactory,
    SipStreamProtocol,
    TcpConnector,
)

OPTIONS = (
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKa\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)


class Sink:
    """Records what the connection delivers."""

    def __init__(self) -> None:
        self.messages: list[tuple[Request | Response, Channel]] = []

    def message_received(self, message: Request | Response, channel: Channel) -> None:
        self.messages.append((message, channel))

    def parse_failed(self, error: SipParseError, channel: Channel) -> None:
        raise AssertionError(error)


class TcpConnectorTests(SynchronousTestCase):
    """Connections opened once, reused, forgotten when lost."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.sink = Sink()
        self.connector = TcpConnector(self.reactor, self.sink)

    def connect(self, index: int = -1) -> StringTransport:
        host, port, factory, _, _ = self.reactor.tcpClients[index]
        proto = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        proto.makeConnection(transport)
        return transport

    def test_connect_and_reuse(self) -> None:
        """
        Waiters for the same address share one connection attempt; once
        connected the channel is reused; what the peer sends reaches the
        sink with that channel; a lost connection is forgotten.
        """
        address = ("192.0.2.5", 5070)
        got: list[Channel] = []
        self.connector.channel(address).addCallback(got.append)
        self.connector.channel(address).addCallback(got.append)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.reactor.tcpClients[0][:2], address)
        transport = self.connect()
        self.assertEqual(len(got), 2)
        self.assertIs(got[0], got[1])
        channel = got[0]
        self.assertTrue(channel.reliable)
        self.assertEqual(channel.address, address)
        channel.send(b"OPTIONS")
        self.assertEqual(transport.value(), b"OPTIONS")
        self.connector.channel(address).addCallback(got.append)
        self.assertIs(got[2], channel)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        channel.dataReceived(OPTIONS)  # type: ignore[attr-defined]
        self.assertEqual(len(self.sink.messages), 1)
        self.assertIs(self.sink.messages[0][1], channel)
        channel.connectionLost(Failure(ConnectionRefusedError()))  # type: ignore[attr-defined]
        self.assertEqual(self.connector.connections, {})
        self.connector.channel(address)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_refused(self) -> None:
        """A failed connection fails every waiter."""
        errors: list[Failure] = []
        self.connector.channel(("192.0.2.5", 5070)).addErrback(errors.append)
        _, _, factory, _, _ = self.reactor.tcpClients[0]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].check(ConnectionRefusedError))
        self.assertEqual(self.connector.waiting, {})
        self.connector.close()


class InboundLimitTests(SynchronousTestCase):
    """
    Inbound SIP TCP: idle connections closed, a cap per source address,
    strangers closed at once.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.sink = Sink()
        self.refused: list[tuple[str, str]] = []
        self.factory = SipStreamFactory(
            self.sink,
            self.clock,
            idle_timeout=30,
            allowed=lambda host: host != "203.0.113.9",
            refused=lambda host, why: self.refused.append((host, why)),
        )

    def accept(self, host: str = "192.0.2.1") -> tuple[SipStreamProtocol | None, StringTransport]:
        address = IPv4Address("TCP", host, 40000)
        proto = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        if proto is not None:
            proto.makeConnection(transport)
        return proto, transport

    def close(self, proto: SipStreamProtocol | None) -> None:
        assert proto is not None
        proto.connectionLost(Failure(ConnectionRefusedError()))

    def test_idle_closed(self) -> None:
        """
        A connection that sends nothing for C{idle_timeout} seconds is
        closed; anything it sends restarts the count; a closed
        connection leaves no timer.
        """
        proto, transport = self.accept()
        self.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        assert proto is not None
        proto.dataReceived(OPTIONS)
        self.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.close(proto)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.factory.open, {})

    def test_cap_per_source(self) -> None:
        """
        C{MAX_TCP_PER_SOURCE} connections from one address are taken, the
        next is refused (closed as accepted, reported); another address is
        not affected; once one closes a new one is taken again.
        """
        protos = [self.accept()[0] for _ in range(MAX_TCP_PER_SOURCE)]
        self.assertNotIn(None, protos)
        self.assertIsNone(self.accept()[0])
        self.assertEqual(
            self.refused, [("192.0.2.1", f"more than {MAX_TCP_PER_SOURCE} tcp connections")]
        )
        self.assertIsNotNone(self.accept("192.0.2.2")[0])
        self.close(protos[0])
        self.assertIsNotNone(self.accept()[0])
        self.assertIsNone(self.accept()[0])
        for proto in protos[1:]:
            self.close(proto)
        self.clock.advance(30)

    def test_stranger_refused(self) -> None:
        """A connection from an address that is not a SIP peer is refused."""
        self.assertIsNone(self.accept("203.0.113.9")[0])
        self.assertEqual(self.refused, [("203.0.113.9", "tcp connection, not a SIP peer")])
        self.assertEqual(self.factory.open, {})
