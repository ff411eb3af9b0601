"""
Tests for L{cryptify.protocols.stdtls}: the client port's TLS layer, with
each engine (the standard library's and pyOpenSSL's), in memory.

The server side runs on a L{StringTransport} (or an C{iosim} pump) with a
L{Clock}; its peer is a client written by others: the standard library's
C{SSLObject} driven by hand, or Twisted's C{TLSMemoryBIOProtocol} over
pyOpenSSL.  No sockets, no global reactor.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from cryptify.protocols import stdtls
from cryptify.protocols.tls import TLSConfigError, client_context_factory, server_context_factory
from cryptify.tools.certs import generate_self_signed

PEER = IPv4Address("TCP", "192.0.2.7", 40000)
#: The property tests run once per engine (two test classes share them); each
#: example builds its own connection, so nothing carries over between runs.
_BOTH_ENGINES = [HealthCheck.differing_executors]


class _Inner(Protocol):
    """The inner protocol: records what it gets; may echo, refuse, or close
    when data comes (C{close})."""

    def __init__(self, echo: bool = False, refuse: bool = False, close: bool = False) -> None:
        self.echo = echo
        self.refuse = refuse
        self.close = close
        self.received = b""
        self.lost: list[Failure] = []

    def connectionMade(self) -> None:
        if self.refuse:
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            assert self.transport is not None
            self.transport.write(b"echo:" + data)
        if self.close:
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.append(reason)


class _Counting(StringTransport):
    """A transport that counts its writes."""

    def __init__(self) -> None:
        super().__init__(peerAddress=PEER)
        self.writes = 0
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def abortConnection(self) -> None:
        self.aborted = True
        super().loseConnection()


def _pair(case: SynchronousTestCase) -> tuple[str, str]:
    directory = case.mktemp()
    os.makedirs(directory)
    cert, key = os.path.join(directory, "crs.crt"), os.path.join(directory, "crs.key")
    generate_self_signed(cert, key, hostnames=("localhost",))
    return cert, key


class _StdClient:
    """A client by the standard library's C{SSLObject}, driven by hand."""

    def __init__(self, cert: str, context: ssl.SSLContext | None = None) -> None:
        if context is None:
            context = ssl.create_default_context(cafile=cert)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.done = False
        self.received = b""
        self.closed = False

    def step(self, data: bytes) -> bytes:
        """Feed what the server sent; return what to send it."""
        if data:
            self.incoming.write(data)
        if not self.done:
            try:
                self.tls.do_handshake()
                self.done = True
            except ssl.SSLWantReadError:
                pass
        if self.done:
            try:
                while True:
                    chunk = self.tls.read(65536)
                    if not chunk:
                        self.closed = True
                        break
                    self.received += chunk
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                self.closed = True
        return self.outgoing.read()


class _Tcp(_Counting):
    """A TCP transport's producer handling, as Twisted's: its streaming
    producer is paused when more than C{LIMIT} octets wait to be sent, and
    resumed when they are (L{drain})."""

    LIMIT = 4096
    full = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and self.streaming and not self.full:
            if len(self.value()) > self.LIMIT:
                self.full = True
                self.producer.pauseProducing()

    def drain(self) -> bytes:
        """The peer reads what was sent."""
        sent = self.value()
        self.clear()
        if self.producer is not None and self.full:
            self.full = False
            self.producer.resumeProducing()
        return sent


@implementer(IPushProducer)
class _Producer:
    """An inner protocol's streaming producer: records its state."""

    state = "producing"

    def pauseProducing(self) -> None:
        self.state = "paused"

    def resumeProducing(self) -> None:
        self.state = "producing"

    def stopProducing(self) -> None:
        self.state = "stopped"


class _Harness:
    """One server connection on a counting transport and its stdlib client."""

    def __init__(self, case: _EngineTests, **inner: bool) -> None:
        self.clock = Clock()
        self.inner = _Inner(**inner)
        self.factory = stdtls.TLSServerFactory(
            case.engines(), Factory.forProtocol(lambda: self.inner), self.clock
        )
        self.factory.doStart()
        proto = self.factory.buildProtocol(PEER)
        assert proto is not None
        self.proto = proto
        self.transport = _Tcp()
        self.proto.makeConnection(self.transport)
        self.client = _StdClient(case.cert)

    def pump(self) -> None:
        """Exchange octets until neither side has anything to say."""
        to_server = self.client.step(b"")
        while True:
            if to_server and not self.transport.disconnecting:
                self.proto.dataReceived(to_server)
            to_client = self.transport.value()
            self.transport.clear()
            to_server = self.client.step(to_client)
            if not to_server and not to_client:
                return

    def client_closes(self) -> None:
        """The client sends its close_notify, and the server reads it."""
        try:
            self.client.tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # the server's close_notify has not come yet
        self.proto.dataReceived(self.client.outgoing.read())


def _bad_record_closes(case: Any, record: bytes) -> None:
    """``record`` after the handshake closes the connection as a failure;
    the inner protocol is told once."""
    h = _Harness(case)
    h.pump()
    h.proto.dataReceived(record)
    case.assertTrue(h.transport.disconnecting)
    case.assertEqual(h.factory.failures, 1)
    h.proto.connectionLost(Failure(Exception("gone")))
    case.assertEqual(len(h.inner.lost), 1)


def _handshake(proto: Any, transport: _Counting, client: _StdClient) -> None:
    """Pass octets between ``client`` and the server ``proto`` (on
    ``transport``) until neither has anything to say."""
    to_server = client.step(b"")
    while to_server or transport.value():
        if to_server:
            proto.dataReceived(to_server)
        to_server = client.step(transport.value())
        transport.clear()


class _EngineTests:
    """Behaviour of the layer, run with each engine (C{stdlib})."""

    stdlib: bool

    def setUp(self) -> None:
        self.cert, self.key = _pair(self)  # type: ignore[arg-type]

    def engines(self) -> Any:
        return stdtls.server_engines(self.cert, self.key, stdlib=self.stdlib)

    def test_handshake_and_data(self: Any) -> None:
        """A client by the standard library completes the handshake (TLS 1.3)
        and data flows both ways."""
        h = _Harness(self, echo=True)
        h.pump()
        self.assertTrue(h.client.done)
        self.assertEqual(h.client.tls.version(), "TLSv1.3")
        assert h.proto.engine is not None
        self.assertEqual(h.proto.engine.version(), "TLSv1.3")
        h.client.tls.write(b"hello")
        h.pump()
        self.assertEqual(h.inner.received, b"hello")
        self.assertEqual(h.client.received, b"echo:hello")
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_inner_connected_before_tls(self: Any) -> None:
        """The inner protocol is connected at once; no TLS state exists until
        the first octet, so a connection refused then costs no TLS."""
        h = _Harness(self, refuse=True)
        self.assertTrue(h.transport.aborted)
        self.assertIsNone(h.proto.engine)
        h.proto.dataReceived(b"\x16\x03\x01")
        self.assertIsNone(h.proto.engine)

    def test_writes_of_a_turn_batched(self: Any) -> None:
        """Writes made outside a read go out at the end of the reactor turn,
        encrypted together in one socket write."""
        h = _Harness(self)
        h.pump()
        h.transport.writes = 0
        for part in (b"one ", b"two ", b"three"):
            h.proto.write(part)
        h.proto.writeSequence([b" four", b" five"])
        self.assertEqual(h.transport.writes, 0)
        h.clock.advance(0)
        self.assertEqual(h.transport.writes, 1)
        h.pump()
        self.assertEqual(h.client.received, b"one two three four five")

    def test_writes_during_read_flushed_after_it(self: Any) -> None:
        """What the inner protocol writes while handling a read goes out when
        the read is handled, in one write, without a delayed call."""
        h = _Harness(self, echo=True)
        h.pump()
        h.transport.writes = 0
        h.client.tls.write(b"a")
        h.client.tls.write(b"b")
        h.proto.dataReceived(h.client.step(b""))
        self.assertEqual(h.transport.writes, 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        h.pump()
        self.assertEqual(h.client.received, b"echo:ab")

    def test_write_before_handshake_waits(self: Any) -> None:
        """Data written before the handshake is complete is sent after it."""
        h = _Harness(self)
        h.proto.write(b"early")
        h.clock.advance(0)
        h.pump()
        h.clock.advance(0)
        h.pump()
        self.assertEqual(h.client.received, b"early")

    def test_lose_connection_sends_close_notify(self: Any) -> None:
        """loseConnection sends what is pending, then close_notify; later
        writes are dropped, what the peer still sends is discarded, and the
        TCP connection closes when the peer's close_notify comes."""
        h = _Harness(self)
        h.pump()
        h.proto.write(b"last words")
        h.proto.loseConnection()
        h.proto.write(b"dropped")
        h.clock.advance(0)
        self.assertFalse(h.transport.disconnecting)
        h.client.tls.write(b"late")
        late = h.client.step(h.transport.value())
        h.transport.clear()
        self.assertEqual(h.client.received, b"last words")
        self.assertTrue(h.client.closed)
        h.proto.dataReceived(late)
        self.assertFalse(h.transport.disconnecting)
        h.client_closes()
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.inner.received, b"")
        h.proto.connectionLost(Failure(Exception("closed")))
        self.assertEqual(len(h.inner.lost), 1)

    def test_lose_connection_before_handshake(self: Any) -> None:
        """Before the handshake is complete, loseConnection closes at once."""
        h = _Harness(self)
        h.proto.dataReceived(h.client.step(b""))
        h.proto.loseConnection()
        self.assertTrue(h.transport.disconnecting)

    def test_peer_close_notify(self: Any) -> None:
        """The client's close_notify is answered with ours and closes the
        connection."""
        h = _Harness(self)
        h.pump()
        h.client_closes()
        self.assertTrue(h.transport.disconnecting)
        h.client.step(h.transport.value())
        self.assertTrue(h.client.closed)

    def _close_notify(self: Any, h: _Harness) -> bytes:
        """The client's close_notify (after what it wrote before)."""
        try:
            h.client.tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        return h.client.outgoing.read()

    def test_close_notify_with_last_data(self: Any) -> None:
        """The peer's last data and its close_notify in one read, the inner
        protocol closing on that data: the close_notify it already sent is
        the answer awaited, so the TCP connection closes then (it did not
        wait for a second one that never comes)."""
        h = _Harness(self, close=True)
        h.pump()
        h.client.tls.write(b"bye")
        h.proto.dataReceived(self._close_notify(h))
        self.assertEqual(h.inner.received, b"bye")
        self.assertTrue(h.transport.disconnecting)
        h.client.step(h.transport.value())
        self.assertTrue(h.client.closed)
        h.proto.connectionLost(Failure(Exception("closed")))
        self.assertEqual(len(h.inner.lost), 1)
        self.assertEqual(h.factory.failures, 0)

    def test_answer_to_last_data_before_close_notify(self: Any) -> None:
        """The peer's last data and its close_notify in one read, the inner
        protocol answering that data: the answer goes out, then our
        close_notify, and the TCP connection closes."""
        h = _Harness(self, echo=True)
        h.pump()
        h.client.tls.write(b"last")
        h.proto.dataReceived(self._close_notify(h))
        self.assertTrue(h.transport.disconnecting)
        h.client.step(h.transport.value())
        self.assertEqual(h.client.received, b"echo:last")
        self.assertTrue(h.client.closed)
        self.assertEqual(h.factory.failures, 0)

    def test_close_notify_split(self: Any) -> None:
        """A close_notify cut between two reads (mid-record) is awaited, then
        answered; nothing counts as a failure."""
        h = _Harness(self)
        h.pump()
        alert = self._close_notify(h)
        h.proto.dataReceived(alert[:3])
        self.assertFalse(h.transport.disconnecting)
        h.proto.dataReceived(alert[3:])
        self.assertTrue(h.transport.disconnecting)
        h.client.step(h.transport.value())
        self.assertTrue(h.client.closed)
        self.assertEqual(h.factory.failures, 0)

    def test_peer_gone_mid_record(self: Any) -> None:
        """The TCP connection lost in the middle of a record: the inner
        protocol is told once, given none of that record."""
        h = _Harness(self)
        h.pump()
        h.client.tls.write(b"x" * 1000)
        record = h.client.step(b"")
        h.proto.dataReceived(record[:500])
        h.proto.connectionLost(Failure(Exception("gone")))
        self.assertEqual(h.inner.received, b"")
        self.assertEqual(len(h.inner.lost), 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_oversized_record(self: Any) -> None:
        """A record longer than TLS allows (2^14 + 2048 octets) closes that
        connection as a failure, without waiting for its 64 KB."""
        _bad_record_closes(self, b"\x17\x03\x03\xff\xff" + b"\x00" * 100)

    def test_renegotiation_refused(self: Any) -> None:
        """A TLS 1.2 client asking to renegotiate is refused (no_renegotiation
        alert); the server neither fails nor renegotiates."""
        h = _Harness(self)
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        client = SSL.Connection(context, None)
        client.set_connect_state()

        def exchange() -> None:
            for _ in range(6):
                try:
                    client.do_handshake()
                except SSL.WantReadError:
                    pass
                try:
                    h.proto.dataReceived(client.bio_read(65536))
                except SSL.WantReadError:
                    pass
                if h.transport.value():
                    client.bio_write(h.transport.value())
                    h.transport.clear()

        exchange()
        self.assertEqual(client.get_protocol_version_name(), "TLSv1.2")
        self.assertTrue(h.proto.handshake_done)
        client.renegotiate()
        with self.assertRaises(SSL.Error) as caught:
            exchange()
        self.assertIn("no renegotiation", str(caught.exception))
        self.assertEqual(h.factory.failures, 0)
        self.assertFalse(h.transport.disconnecting)
        h.proto.connectionLost(Failure(Exception("gone")))
        self.assertEqual(len(h.inner.lost), 1)

    def test_reading_stops_while_send_buffer_full(self: Any) -> None:
        """A peer that sends requests and does not read the answers: once the
        TCP send buffer is full the connection stops reading (and pauses the
        inner protocol's producer) until the buffer has drained, so the
        buffer does not grow without bound."""
        h = _Harness(self, echo=True)
        h.pump()
        producer = _Producer()
        h.proto.registerProducer(producer, True)
        for _ in range(8):
            h.client.tls.write(b"q" * 1000)
        h.proto.dataReceived(h.client.step(b""))
        self.assertGreater(len(h.transport.value()), _Tcp.LIMIT)
        self.assertEqual(h.transport.producerState, "paused")
        self.assertEqual(producer.state, "paused")
        h.client.step(h.transport.drain())
        self.assertEqual(h.client.received, b"echo:" + b"q" * 8000)
        self.assertEqual(h.transport.producerState, "producing")
        self.assertEqual(producer.state, "producing")

    def test_inner_pause_outlasts_drain(self: Any) -> None:
        """Reading paused by the inner protocol stays paused when the send
        buffer drains, until the inner protocol resumes it."""
        h = _Harness(self)
        h.pump()
        h.proto.pauseProducing()
        self.assertEqual(h.transport.producerState, "paused")
        h.proto.write(b"x" * (2 * _Tcp.LIMIT))
        h.clock.advance(0)
        h.transport.drain()
        self.assertEqual(h.transport.producerState, "paused")
        h.proto.resumeProducing()
        self.assertEqual(h.transport.producerState, "producing")

    def test_closes_with_send_buffer_full(self: Any) -> None:
        """Closing while the send buffer is full unregisters the connection's
        producer first: Twisted's TCP transport does not close while one is
        registered."""
        h = _Harness(self)
        h.pump()
        h.proto.write(b"x" * (2 * _Tcp.LIMIT))
        h.clock.advance(0)
        self.assertTrue(h.transport.full)
        h.proto.loseConnection()
        h.client.step(h.transport.drain())
        h.proto.dataReceived(self._close_notify(h))
        self.assertTrue(h.transport.disconnecting)
        self.assertIsNone(h.transport.producer)

    def test_producer_stopped_when_lost(self: Any) -> None:
        """The inner protocol's producer is stopped when the connection is
        lost, as a TCP transport stops its own."""
        h = _Harness(self)
        producer = _Producer()
        h.proto.registerProducer(producer, True)
        h.proto.connectionLost(Failure(Exception("gone")))
        self.assertEqual(producer.state, "stopped")

    def test_pull_producer_refused(self: Any) -> None:
        """Only streaming producers are taken (nothing here uses pull ones)."""
        h = _Harness(self)
        with self.assertRaises(NotImplementedError):
            h.proto.registerProducer(_Producer(), False)
        h.proto.registerProducer(_Producer(), True)
        with self.assertRaises(RuntimeError):
            h.proto.registerProducer(_Producer(), True)
        h.proto.unregisterProducer()
        h.proto.registerProducer(_Producer(), True)

    def test_engine_released_when_lost(self: Any) -> None:
        """The TLS state is dropped when the connection is lost (as Twisted's
        TLS does: a client's pyOpenSSL connection refers back to its
        protocol), and nothing the inner protocol does then raises."""
        h = _Harness(self)
        h.pump()
        h.proto.connectionLost(Failure(Exception("gone")))
        self.assertIsNone(h.proto.engine)
        h.proto.write(b"late")
        h.proto.loseConnection()
        h.clock.advance(0)
        self.assertEqual(h.transport.value(), b"")

    def test_unanswered_close_aborted(self: Any) -> None:
        """A peer that never answers our close_notify (a stuck or hostile
        one, with its TCP connection open) is aborted CLOSE_GRACE later."""
        h = _Harness(self)
        h.pump()
        h.proto.loseConnection()
        h.clock.advance(stdtls.CLOSE_GRACE - 0.5)
        self.assertFalse(h.transport.aborted)
        h.clock.advance(0.5)
        self.assertTrue(h.transport.aborted)
        h.proto.connectionLost(Failure(Exception("aborted")))
        self.assertEqual(len(h.inner.lost), 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_stuck_failure_close_aborted(self: Any) -> None:
        """A connection closed for a TLS failure whose TCP close does not
        complete (a peer that does not read) is aborted CLOSE_GRACE later."""
        h = _Harness(self)
        h.pump()
        h.proto.dataReceived(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
        self.assertTrue(h.transport.disconnecting)
        self.assertFalse(h.transport.aborted)
        h.clock.advance(stdtls.CLOSE_GRACE)
        self.assertTrue(h.transport.aborted)

    def test_grace_cancelled_when_gone(self: Any) -> None:
        """A close completed in time leaves no delayed call behind."""
        h = _Harness(self)
        h.pump()
        h.proto.loseConnection()
        h.client.step(h.transport.value())
        h.proto.dataReceived(self._close_notify(h))
        self.assertTrue(h.transport.disconnecting)
        h.proto.connectionLost(Failure(Exception("closed")))
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertFalse(h.transport.aborted)

    def test_abort(self: Any) -> None:
        """abortConnection drops the connection and what is pending."""
        h = _Harness(self)
        h.pump()
        h.proto.write(b"x")
        h.proto.abortConnection()
        h.clock.advance(0)
        self.assertTrue(h.transport.aborted)
        self.assertEqual(h.transport.value(), b"")

    def test_transport_calls(self: Any) -> None:
        """The TCP calls the inner protocols use reach the TCP transport."""
        h = _Harness(self)
        self.assertEqual(h.proto.getPeer(), PEER)
        self.assertEqual(h.proto.getHost(), h.transport.getHost())
        self.assertIs(h.proto.transport, h.transport)

    def _failures(self: Any) -> list[LogEvent]:
        events: list[LogEvent] = []

        def observe(event: LogEvent) -> None:
            if event.get("log_namespace") == "cryptify.tls":
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return events

    def test_garbage_closes_that_connection_once_logged(self: Any) -> None:
        """Garbage instead of a ClientHello closes that connection (with an
        alert at most), is logged once for the first failure, and the next
        failure is counted without a log line."""
        events = self._failures()
        factory = stdtls.TLSServerFactory(self.engines(), Factory.forProtocol(_Inner), Clock())
        for _ in range(2):
            proto = factory.buildProtocol(PEER)
            assert proto is not None
            transport = _Counting()
            proto.makeConnection(transport)
            proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertTrue(transport.disconnecting)
            proto.dataReceived(b"more garbage")
            proto.connectionLost(Failure(Exception("gone")))
        self.assertEqual(factory.failures, 2)
        self.assertEqual(len(events), 1)
        self.assertIn("192.0.2.7", str(events[0]["host"]))
        # OpenSSL's reason, in either library's spelling.
        self.assertEqual(events[0]["reason"].lower().replace("_", " "), "http request")

    def test_bad_record_after_handshake(self: Any) -> None:
        """A bad record after the handshake closes the connection; the inner
        protocol is told once."""
        _bad_record_closes(self, b"\x17\x03\x03\x00\x20" + b"\x00" * 32)

    def test_truncated_client_hello_then_close(self: Any) -> None:
        """Each prefix of a real ClientHello leaves the connection waiting;
        closing it then tells the inner protocol once, nothing crashes."""
        hello = _StdClient(self.cert).step(b"")
        for cut in (1, 5, len(hello) // 2, len(hello) - 1):
            h = _Harness(self)
            h.proto.dataReceived(hello[:cut])
            self.assertFalse(h.transport.disconnecting)
            h.proto.connectionLost(Failure(Exception("gone")))
            self.assertEqual(len(h.inner.lost), 1)
            self.assertEqual(h.factory.failures, 0)

    def test_close_mid_handshake(self: Any) -> None:
        """A client that goes away after the ServerHello: the inner protocol
        is told once and the factory keeps nothing of it."""
        h = _Harness(self)
        h.proto.dataReceived(h.client.step(b""))
        self.assertNotEqual(h.transport.value(), b"")
        h.proto.write(b"never sent")
        h.proto.connectionLost(Failure(Exception("gone")))
        h.clock.advance(0)
        self.assertEqual(len(h.inner.lost), 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    @settings(max_examples=150, deadline=None, suppress_health_check=_BOTH_ENGINES)
    @given(chunks=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=6))
    def test_random_bytes(self: Any, chunks: list[bytes]) -> None:
        """Random octets, in any cuts, never raise out of the layer: the
        connection either waits for more or is closed."""
        factory = stdtls.TLSServerFactory(self.engines(), Factory.forProtocol(_Inner), Clock())
        proto = factory.buildProtocol(PEER)
        assert proto is not None
        transport = _Counting()
        proto.makeConnection(transport)
        for chunk in chunks:
            proto.dataReceived(chunk)
        proto.connectionLost(Failure(Exception("gone")))
        self.assertEqual(proto.handshake_done, False)

    @settings(max_examples=60, deadline=None, suppress_health_check=_BOTH_ENGINES)
    @given(cut=st.integers(min_value=0, max_value=400), flip=st.integers(0, 255))
    def test_client_hello_damaged(self: Any, cut: int, flip: int) -> None:
        """A real ClientHello with one octet changed never raises out of the
        layer."""
        hello = bytearray(_StdClient(self.cert).step(b""))
        hello[cut % len(hello)] ^= flip or 1
        factory = stdtls.TLSServerFactory(self.engines(), Factory.forProtocol(_Inner), Clock())
        proto = factory.buildProtocol(PEER)
        assert proto is not None
        proto.makeConnection(_Counting())
        proto.dataReceived(bytes(hello))
        proto.connectionLost(Failure(Exception("gone")))

    def test_stop_flushes_connections(self: Any) -> None:
        """Connections outlive the listening port: what they wrote before it
        stopped is sent when it stops, and what they write after is sent
        at the end of that turn."""
        h = _Harness(self)
        h.pump()
        h.proto.write(b"before ")
        h.factory.doStop()
        self.assertEqual(h.clock.getDelayedCalls(), [])
        h.proto.write(b"after")
        h.clock.advance(0)
        h.pump()
        self.assertEqual(h.client.received, b"before after")


class StdlibEngineTests(_EngineTests, SynchronousTestCase):
    """The layer with the standard library's engine."""

    stdlib = True


class OpenSSLEngineTests(_EngineTests, SynchronousTestCase):
    """The layer with pyOpenSSL's engine."""

    stdlib = False


# -- policy, against Twisted's own TLS client over pyOpenSSL ---------------------


@implementer(IOpenSSLClientConnectionCreator)
class _Creator:
    """A client that offers what its context is set to (no verification)."""

    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def clientConnectionForTLS(self, tls: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_connect_state()
        return connection


def _client_context(
    low: int = SSL.TLS1_2_VERSION, high: int = 0, ciphers: bytes | None = None
) -> SSL.Context:
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(low)
    if high:
        context.set_max_proto_version(high)
    if ciphers is not None:
        context.set_cipher_list(ciphers)
    return context


class _PolicyTests:
    """The same policy as C{tls.server_context_factory}, with each engine."""

    stdlib: bool

    def setUp(self) -> None:
        self.cert, self.key = _pair(self)  # type: ignore[arg-type]

    def connect(self, creator: Any) -> tuple[_Inner, _Inner, TLSMemoryBIOProtocol]:
        clock = Clock()
        server_inner, client_inner = _Inner(echo=True), _Inner()
        engines = stdtls.server_engines(self.cert, self.key, stdlib=self.stdlib)
        server = stdtls.TLSServerFactory(engines, Factory.forProtocol(lambda: server_inner), clock)
        client = TLSMemoryBIOFactory(
            creator, True, Factory.forProtocol(lambda: client_inner), clock=clock
        )
        client_tls, _, pump = connectedServerAndClient(
            lambda: server.buildProtocol(PEER), lambda: client.buildProtocol(None), clock=clock
        )
        client_inner.transport.write(b"ping")  # type: ignore[union-attr]
        for _ in range(4):
            pump.flush()
            clock.advance(0)
        return server_inner, client_inner, client_tls

    def test_verified_client(self: Any) -> None:
        """The reference client's verifying context connects with TLS 1.3."""
        server, client, tls = self.connect(client_context_factory("localhost", ca_path=self.cert))
        self.assertEqual(server.received, b"ping")
        self.assertEqual(client.received, b"echo:ping")
        self.assertEqual(tls.getHandle().get_protocol_version_name(), "TLSv1.3")

    def test_tls12_aead(self: Any) -> None:
        """A TLS 1.2 client gets an ECDHE suite with an AEAD cipher."""
        _, client, tls = self.connect(_Creator(_client_context(high=SSL.TLS1_2_VERSION)))
        self.assertEqual(client.received, b"echo:ping")
        handle = tls.getHandle()
        self.assertEqual(handle.get_protocol_version_name(), "TLSv1.2")
        cipher = handle.get_cipher_name()
        self.assertTrue(cipher.startswith("ECDHE-"), cipher)
        self.assertTrue("GCM" in cipher or "CHACHA20" in cipher, cipher)

    def test_tls12_cbc_refused(self: Any) -> None:
        """A TLS 1.2 client offering only CBC suites is refused."""
        creator = _Creator(
            _client_context(
                high=SSL.TLS1_2_VERSION, ciphers=b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA"
            )
        )
        server, client, _ = self.connect(creator)
        self.assertEqual(server.received, b"")
        self.assertEqual(client.received, b"")

    def test_tls11_refused(self: Any) -> None:
        """A client capped at TLS 1.1 is refused."""
        context = _client_context(low=SSL.TLS1_VERSION, high=SSL.TLS1_1_VERSION)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        server, _, _ = self.connect(_Creator(context))
        self.assertEqual(server.received, b"")

    def test_group_as_before(self: Any) -> None:
        """The key-exchange group a pyOpenSSL client gets is the one the former
        pyOpenSSL listener gave it, when the engine is chosen by groups."""
        if self.stdlib != stdtls.stdlib_groups_suffice():
            self.skipTest("this engine is not the one chosen here")
        _, _, tls = self.connect(_Creator(_client_context()))
        group = tls.getHandle().get_group_name()
        expected = "X25519MLKEM768" if SSL.OPENSSL_VERSION_NUMBER >= 0x30500000 else "x25519"
        self.assertEqual(group.lower(), expected.lower())


class StdlibPolicyTests(_PolicyTests, SynchronousTestCase):
    stdlib = True

    def test_weaker_group_not_chosen(self) -> None:
        """Why the engine is chosen by groups: with an OpenSSL older than 3.5
        the standard library's engine gives a pyOpenSSL client (which offers
        X25519MLKEM768) classical X25519, so it is not the port's engine."""
        if ssl.OPENSSL_VERSION_NUMBER >= stdtls.HYBRID_GROUP_OPENSSL:
            self.skipTest("the standard library's OpenSSL has the hybrid group")
        if SSL.OPENSSL_VERSION_NUMBER < stdtls.HYBRID_GROUP_OPENSSL:
            self.skipTest("pyOpenSSL's OpenSSL has no hybrid group either")
        _, _, tls = self.connect(_Creator(_client_context()))
        self.assertEqual(tls.getHandle().get_group_name().lower(), "x25519")
        self.assertFalse(stdtls.stdlib_groups_suffice())


class OpenSSLPolicyTests(_PolicyTests, SynchronousTestCase):
    stdlib = False


class ChoiceTests(SynchronousTestCase):
    """Which engine the client port uses, and its configuration errors."""

    def test_groups(self) -> None:
        """The standard library's engine only when its OpenSSL offers the
        hybrid group too, or neither does."""
        suffice = stdtls.stdlib_groups_suffice
        self.assertFalse(suffice(0x30000130, 0x40000030))
        self.assertFalse(suffice(0x30400000, 0x30500000))
        self.assertTrue(suffice(0x30500010, 0x40000030))
        self.assertTrue(suffice(0x30000130, 0x30000130))

    def test_default_choice(self) -> None:
        """Without a choice, the engine follows L{stdtls.stdlib_groups_suffice}
        and L{stdtls.stdlib_can_mirror}."""
        cert, key = _pair(self)
        engine = stdtls.server_engines(cert, key)()
        context = server_context_factory(cert, key).getContext()
        mirror = stdtls.stdlib_can_mirror(context)
        suffice = stdtls.stdlib_groups_suffice() and mirror
        self.assertIsInstance(engine, stdtls.StdlibEngine if suffice else stdtls.OpenSSLEngine)

    def test_session_cache_off_not_mirrored(self) -> None:
        """A pyOpenSSL context without a session cache cannot be copied by the
        standard library's (which always has one); with one it can."""
        cert, key = _pair(self)
        context = server_context_factory(cert, key).getContext()
        context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        self.assertTrue(stdtls.stdlib_can_mirror(context))
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        self.assertFalse(stdtls.stdlib_can_mirror(context))

    def _tickets(self, tickets: bool) -> bool:
        """Whether a TLS 1.3 client gets a session ticket from the standard
        library's context made with ``tickets``."""
        cert, key = _pair(self)
        context = stdtls.stdlib_server_context(cert, key, tickets)
        server = stdtls.TLSServerFactory(
            lambda: stdtls.StdlibEngine(context), Factory.forProtocol(_Inner), Clock()
        )
        proto = server.buildProtocol(PEER)
        assert proto is not None
        transport = _Counting()
        proto.makeConnection(transport)
        client = _StdClient(cert)
        _handshake(proto, transport, client)
        client.tls.write(b"x")
        proto.dataReceived(client.step(b""))
        client.step(transport.value())
        session = client.tls.session
        return session is not None and session.has_ticket

    def test_tickets_copied(self) -> None:
        """The standard library's context issues session tickets or none, as
        told (from pyOpenSSL's context's C{OP_NO_TICKET})."""
        self.assertTrue(self._tickets(True))
        self.assertFalse(self._tickets(False))

    def _resumed(self, stdlib: bool | None, version: ssl.TLSVersion) -> bool:
        """Whether a standard library client offering the session of its
        last connection resumes it on the second."""
        cert, key = _pair(self)
        engines = stdtls.server_engines(cert, key, stdlib=stdlib)
        context = ssl.create_default_context(cafile=cert)
        context.maximum_version = version
        session = None
        for _ in range(2):
            server = stdtls.TLSServerFactory(engines, Factory.forProtocol(_Inner), Clock())
            proto = server.buildProtocol(PEER)
            assert proto is not None
            transport = _Counting()
            proto.makeConnection(transport)
            client = _StdClient(cert, context)
            if session is not None:
                client.tls = context.wrap_bio(
                    client.incoming, client.outgoing, server_hostname="localhost", session=session
                )
            _handshake(proto, transport, client)
            self.assertEqual(client.tls.version(), version.name.replace("v1_", "v1."))
            # a record both ways, so that TLS 1.3 tickets are in
            client.tls.write(b"x")
            proto.dataReceived(client.step(b""))
            proto.write(b"y")
            proto.flushed()
            client.step(transport.value())
            session = client.tls.session
        return bool(client.tls.session_reused)

    def test_port_engine_never_resumes(self) -> None:
        """The client port's engine (the default choice) never resumes a
        session: each connection is a full handshake, TLS 1.3 or 1.2 (the
        pyOpenSSL engine's TLS 1.3 tickets are stateful ones, for a cache
        that is off)."""
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            self.assertFalse(self._resumed(None, version), version)
        self.assertFalse(self._resumed(False, ssl.TLSVersion.TLSv1_3))

    def test_stdlib_engine_resumes_by_session_id(self) -> None:
        """Why the standard library's engine is not the port's while the
        pyOpenSSL context has no session cache: its cache (which Python's
        C{ssl} cannot turn off) resumes a TLS 1.2 client by session ID;
        TLS 1.3 gets no ticket from it."""
        self.assertTrue(self._resumed(True, ssl.TLSVersion.TLSv1_2))
        self.assertFalse(self._resumed(True, ssl.TLSVersion.TLSv1_3))

    def test_mismatched_key(self) -> None:
        """A key of another certificate is refused, naming both files."""
        cert, _ = _pair(self)
        _, other = _pair(self)
        for stdlib in (True, False):
            with self.assertRaises(TLSConfigError) as caught:
                stdtls.server_engines(cert, other, stdlib=stdlib)
            self.assertIn(other, str(caught.exception))

    def test_missing_file(self) -> None:
        """A missing certificate is refused, naming it."""
        with self.assertRaises(TLSConfigError) as caught:
            stdtls.server_engines("/nonexistent/crs.crt", "/nonexistent/crs.key", stdlib=True)
        self.assertIn("/nonexistent/crs.crt", str(caught.exception))

    def test_factory_starts_and_stops_inner(self) -> None:
        """Starting and stopping the TLS factory starts and stops the inner one
        (its sweeps), and a pending end-of-turn flush is cancelled."""
        inner = Factory.forProtocol(_Inner)
        clock = Clock()
        cert, key = _pair(self)
        factory = stdtls.TLSServerFactory(stdtls.server_engines(cert, key), inner, clock)
        factory.doStart()
        self.assertEqual(inner.numPorts, 1)
        proto = factory.buildProtocol(PEER)
        assert proto is not None
        proto.makeConnection(_Counting())
        proto.write(b"x")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        factory.doStop()
        self.assertEqual(inner.numPorts, 0)
        self.assertEqual(clock.getDelayedCalls(), [])


class ClientTests(SynchronousTestCase):
    """L{stdtls.TLSClientFactory} with the reference client's creators: the
    same verification as Twisted's TLS, against the layer's server."""

    def setUp(self) -> None:
        self.cert, self.key = _pair(self)

    def connect(self, creator: Any) -> tuple[_Inner, _Inner, Callable[[], None]]:
        clock = Clock()
        server_inner, client_inner = _Inner(echo=True), _Inner()
        server = stdtls.TLSServerFactory(
            stdtls.server_engines(self.cert, self.key),
            Factory.forProtocol(lambda: server_inner),
            clock,
        )
        client = stdtls.TLSClientFactory(creator, Factory.forProtocol(lambda: client_inner), clock)
        _, _, pump = connectedServerAndClient(
            lambda: server.buildProtocol(PEER), lambda: client.buildProtocol(PEER), clock=clock
        )

        def turn() -> None:
            clock.advance(0)
            pump.flush()

        return server_inner, client_inner, turn

    def test_verified(self) -> None:
        """A client trusting the server's certificate for its name connects;
        what it wrote before the handshake is sent after it."""
        server, client, turn = self.connect(client_context_factory("localhost", self.cert))
        self.assertEqual(client.lost, [])
        assert client.transport is not None
        client.transport.write(b"ping")
        turn()
        self.assertEqual(server.received, b"ping")

    def test_written_before_handshake(self) -> None:
        """What the inner protocol writes as it connects goes out after the
        handshake."""
        clock = Clock()
        server_inner = _Inner()

        class Eager(_Inner):
            def connectionMade(self) -> None:
                assert self.transport is not None
                self.transport.write(b"GET / HTTP/1.1\r\n\r\n")

        server = stdtls.TLSServerFactory(
            stdtls.server_engines(self.cert, self.key),
            Factory.forProtocol(lambda: server_inner),
            clock,
        )
        client = stdtls.TLSClientFactory(
            client_context_factory("localhost", self.cert), Factory.forProtocol(Eager), clock
        )
        _, _, pump = connectedServerAndClient(
            lambda: server.buildProtocol(PEER), lambda: client.buildProtocol(PEER), clock=clock
        )
        clock.advance(0)
        pump.flush()
        self.assertEqual(server_inner.received, b"GET / HTTP/1.1\r\n\r\n")

    def test_wrong_name(self) -> None:
        """A certificate for another name is refused (Twisted's host name
        check, reported through failVerification); nothing is sent."""
        server, client, _ = self.connect(client_context_factory("crs.example", self.cert))
        self.assertEqual(len(client.lost), 1)
        self.assertIn("crs.example", str(client.lost[0].value))
        self.assertEqual(server.received, b"")

    def test_untrusted(self) -> None:
        """A certificate not signed by the CA given is refused."""
        other, _ = _pair(self)
        server, client, _ = self.connect(client_context_factory("localhost", other))
        self.assertEqual(len(client.lost), 1)
        self.assertIn("certificate verify failed", str(client.lost[0].value))
        self.assertEqual(server.received, b"")

    def test_insecure(self) -> None:
        """Without verification (development only) any certificate is taken."""
        server, client, turn = self.connect(client_context_factory("crs.example", verify=False))
        self.assertEqual(client.lost, [])
        assert client.transport is not None
        client.transport.write(b"ping")
        turn()
        self.assertEqual(server.received, b"ping")

    @settings(max_examples=100, deadline=None)
    @given(chunks=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=4))
    def test_server_sends_garbage(self, chunks: list[bytes]) -> None:
        """Random octets from the server never raise out of the client's
        layer: the client is closed or waits, and nothing it wrote is sent
        in the clear."""
        clock = Clock()
        inner = _Inner()
        factory = stdtls.TLSClientFactory(
            client_context_factory("localhost", self.cert),
            Factory.forProtocol(lambda: inner),
            clock,
        )
        proto = factory.buildProtocol(PEER)
        assert proto is not None
        transport = _Counting()
        proto.makeConnection(transport)
        proto.write(b"secret")
        for chunk in chunks:
            proto.dataReceived(chunk)
        clock.advance(0)
        self.assertNotIn(b"secret", transport.value())
        proto.connectionLost(Failure(Exception("gone")))
        self.assertEqual(len(inner.lost), 1)
