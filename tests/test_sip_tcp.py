"""
Tests for L{cryptify.protocols.sip.transport.TcpConnector}: outbound SIP
over TCP on a memory reactor.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cryptify.protocols.sip.errors import SipParseError
from cryptify.protocols.sip.message import Request, Response
from cryptify.protocols.sip.transaction import Channel
from cryptify.protocols.sip.transport import TcpConnector

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
