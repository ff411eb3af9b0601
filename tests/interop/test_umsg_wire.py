"""UMSG over real loopback TLS: an independent WebSocket client (PyPI
``websockets``) against our CRS listener, and a flood of half-open and
garbage connections beside attached clients."""

from __future__ import annotations

import os
import ssl
import time
from typing import Any

import cbor2
from twisted.internet import defer, reactor, task, threads
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.trial.unittest import TestCase

from cryptify.client.connection import AttachingClient
from cryptify.client.servers import tls_connector
from cryptify.client.session import Answered, Attached, ClientSession
from cryptify.crs.attach.core import AttachCore
from cryptify.crs.attach.registry import AttachRegistry
from cryptify.crs.attach.wiring import BACKLOG, Limits, UmsgServerFactory
from cryptify.crs.objects.wiring import install as install_objects
from cryptify.crypto.identity import period_of
from cryptify.protocols.stdtls import TLSServerFactory, server_engines, stdlib_groups_suffice
from cryptify.protocols.umsg import attach_signed_octets
from cryptify.tools.certs import generate_self_signed
from tests.fakes import FakeAccount, FakeAccounts, FakeObjects, signer
from tests.interop._ws import available as websockets_available
from tests.interop._ws import ws_connect

try:
    from websockets.exceptions import InvalidStatus
except ImportError:  # pragma: no cover
    InvalidStatus = None


class _Server:
    """The client listener as the CRS runs it: the UMSG factory behind the
    client port's TLS layer (:mod:`cryptify.protocols.stdtls`), with the
    engine ``stdlib`` chooses (None: as the CRS would)."""

    def __init__(
        self, case: TestCase, limits: Limits | None = None, stdlib: bool | None = None
    ) -> None:
        directory = case.mktemp()
        os.makedirs(directory)
        self.cert = os.path.join(directory, "crs.crt")
        key = os.path.join(directory, "crs.key")
        generate_self_signed(self.cert, key)
        self.period = period_of(time.time())
        accounts = FakeAccounts()
        accounts.add(FakeAccount("acme", periods=(self.period,)))
        self.registry = AttachRegistry("crs1", reactor.seconds)
        self.objects = FakeObjects()
        core = AttachCore("crs1", accounts, self.registry, reactor.seconds)
        install_objects(core, self.objects)
        self.factory = UmsgServerFactory(core, reactor, limits)
        tls = TLSServerFactory(server_engines(self.cert, key, stdlib), self.factory, reactor)
        self.port = reactor.listenTCP(0, tls, backlog=BACKLOG, interface="127.0.0.1")
        case.addCleanup(self.port.stopListening)
        self.number = self.port.getHost().port


class WebsocketsClientTests(TestCase):
    """The `websockets` library, written by others from RFC 6455, speaks to our CRS."""

    #: The TLS engine (None: the one the CRS chooses).
    stdlib: bool | None = None

    def setUp(self) -> None:
        if not websockets_available():
            self.skipTest("websockets is not installed")
        self.server = _Server(self, stdlib=self.stdlib)

    def _tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.server.cert)

    def _attach(self) -> dict[str, Any]:
        uri = "tel:+4677777"
        url = f"wss://127.0.0.1:{self.server.number}/"
        with ws_connect(url, ssl=self._tls(), subprotocols=["umsg.1"]) as ws:
            assert ws.subprotocol == "umsg.1"
            attach = {
                "type": "attach",
                "id": 1,
                "account": "acme",
                "uri": uri,
                "versions": [1],
                "app": "websockets-test",
            }
            ws.send(cbor2.dumps(attach))
            challenge = cbor2.loads(ws.recv(timeout=10))
            signed = attach_signed_octets(challenge["nonce"], "acme", uri, challenge["period"])
            proof = signer("acme", uri, challenge["period"]).sign(signed)
            ws.send(cbor2.dumps({"type": "prove", "id": 2, "signature": proof}))
            attached = cbor2.loads(ws.recv(timeout=10))
            ws.send(cbor2.dumps({"type": "push-token", "id": 3, "kind": "fcm", "token": "tok"}))
            ok = cbor2.loads(ws.recv(timeout=10))
            ws.ping(b"hello").wait(timeout=10)
            ws.send(cbor2.dumps({"type": "detach", "id": 4}))
            detached = cbor2.loads(ws.recv(timeout=10))
        return {"challenge": challenge, "attached": attached, "ok": ok, "detached": detached}

    @defer.inlineCallbacks
    def test_attach(self) -> Any:
        """attach, challenge, prove, attached, push-token, ping and detach all work."""
        got = yield threads.deferToThread(self._attach)
        self.assertEqual(got["challenge"]["type"], "challenge")
        self.assertEqual(got["challenge"]["period"], self.server.period)
        self.assertEqual(got["attached"]["type"], "attached")
        self.assertEqual(got["attached"]["crs"], "crs1")
        self.assertEqual(got["ok"], {"type": "ok", "id": 3})
        self.assertEqual(got["detached"], {"type": "ok", "id": 4})
        self.assertEqual(self.server.objects.stored[0][3:], ("tok", "fcm"))
        self.assertEqual(self.server.registry.rows(), [])

    def _no_subprotocol(self) -> int:
        url = f"wss://127.0.0.1:{self.server.number}/"
        try:
            with ws_connect(url, ssl=self._tls()):
                return 101
        except InvalidStatus as exc:
            return int(exc.response.status_code)

    @defer.inlineCallbacks
    def test_no_subprotocol(self) -> Any:
        """Without umsg.1 the upgrade is refused with 400."""
        status = yield threads.deferToThread(self._no_subprotocol)
        self.assertEqual(status, 400)


class _Flood(Protocol):
    """A flood connection: silent (half-open) or writing garbage now and then."""

    def __init__(self, garbage: bool, closed: list[int]) -> None:
        self.garbage = garbage
        self.closed = closed
        self.loop: task.LoopingCall | None = None

    def connectionMade(self) -> None:
        if self.garbage:
            self.loop = task.LoopingCall(self._spray)
            self.loop.start(0.2)

    def _spray(self) -> None:
        assert self.transport is not None
        self.transport.write(os.urandom(64))

    def connectionLost(self, reason: Any = None) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.closed.append(1)


class FloodTests(TestCase):
    """Half-open, slow and garbage connections cannot starve attached clients."""

    #: The TLS engine (None: the one the CRS chooses).
    stdlib: bool | None = None

    timeout = 60

    @defer.inlineCallbacks
    def test_flood_beside_attached_clients(self) -> Any:
        """Attached clients keep answering while 300 flood connections come and go;
        the flood is capped per address and closed after the attach timeout."""
        server = _Server(
            self, Limits(attach_timeout=2.0, max_unattached_per_address=50), self.stdlib
        )
        events: list[Any] = []
        clients = []
        for index in range(5):
            uri = f"tel:+46100{index}"

            def make(send: Any, uri: str = uri) -> ClientSession:
                return ClientSession("acme", uri, lambda p: signer("acme", uri, p), send)

            client = AttachingClient(
                reactor,
                tls_connector(reactor, server.cert, False, bind="127.0.0.2"),
                make,
                "127.0.0.1",
                server.number,
                events.append,
            )
            client.start()
            clients.append(client)
            self.addCleanup(client.stop)

        def attached() -> int:
            return sum(isinstance(e, Attached) for e in events)

        while attached() < 5:
            yield task.deferLater(reactor, 0.05, lambda: None)

        closed: list[int] = []
        flood = []
        for index in range(300):
            factory = ClientFactory.forProtocol(lambda i=index: _Flood(i % 3 == 0, closed))
            flood.append(
                reactor.connectTCP(
                    "127.0.0.1", server.number, factory, bindAddress=("127.0.0.1", 0)
                )
            )
        self.addCleanup(lambda: [c.disconnect() for c in flood])
        # 200 silent flood connections, 50 fit: over the quota the oldest
        # silent one made room for each newer one (or the newer was closed).
        # Wait for the accepts (a loaded machine takes its time), not a fixed time.
        deadline = time.monotonic() + 30.0
        while server.factory.refused_early + server.factory.evicted < 150:
            self.assertLessEqual(len(server.factory.pending), 50)
            self.assertLess(time.monotonic(), deadline, "the flood was not handled")
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertLessEqual(len(server.factory.pending), 50)

        # Attached clients still get answers, promptly, during the flood.
        started = time.monotonic()
        for client in clients:
            assert client.proto is not None
            client.proto.session.request("push-token", kind="apns", token="t")
        while sum(isinstance(e, Answered) for e in events) < 5:
            yield task.deferLater(reactor, 0.02, lambda: None)
            self.assertLess(time.monotonic() - started, 30.0, "no answers during the flood")
        self.assertTrue(all(e.ok for e in events if isinstance(e, Answered)))

        # A new client from another address attaches during the flood.
        fresh: list[Any] = []

        def make_fresh(send: Any) -> ClientSession:
            return ClientSession(
                "acme", "tel:+4619", lambda p: signer("acme", "tel:+4619", p), send
            )

        newcomer = AttachingClient(
            reactor,
            tls_connector(reactor, server.cert, False, bind="127.0.0.3"),
            make_fresh,
            "127.0.0.1",
            server.number,
            fresh.append,
        )
        newcomer.start()
        self.addCleanup(newcomer.stop)
        while not any(isinstance(e, Attached) for e in fresh):
            yield task.deferLater(reactor, 0.05, lambda: None)

        # The flood's survivors are closed once the attach timeout passes.
        yield task.deferLater(reactor, 3.5, lambda: None)
        self.assertEqual(len(closed), 300)
        self.assertEqual(server.factory.pending, set())
        self.assertEqual(len(server.registry.rows()), 6)


class BusyAddressTests(TestCase):
    """A real client sharing its address with many idle sockets (a carrier NAT)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_attach_from_busy_address(self) -> Any:
        """With 200 idle TCP connections from its address (quota 50), a client from
        the same address attaches on its first connection, over real TLS."""
        server = _Server(self, Limits(max_unattached_per_address=50))
        closed: list[int] = []
        idle = []
        for _ in range(200):
            factory = ClientFactory.forProtocol(lambda: _Flood(False, closed))
            idle.append(
                reactor.connectTCP(
                    "127.0.0.1", server.number, factory, bindAddress=("127.0.0.4", 0)
                )
            )
        self.addCleanup(lambda: [c.disconnect() for c in idle])
        deadline = time.monotonic() + 30.0
        while len(closed) < 150:  # those over the quota were closed for newer ones
            self.assertLess(
                time.monotonic(),
                deadline,
                f"closed={len(closed)} pending={len(server.factory.pending)}",
            )
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(server.factory.pending), 50)
        events: list[Any] = []

        def make(send: Any) -> ClientSession:
            return ClientSession(
                "acme", "tel:+4620", lambda p: signer("acme", "tel:+4620", p), send
            )

        client = AttachingClient(
            reactor,
            tls_connector(reactor, server.cert, False, bind="127.0.0.4"),
            make,
            "127.0.0.1",
            server.number,
            events.append,
        )
        client.start()
        self.addCleanup(client.stop)
        while not events:
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertIsInstance(events[0], Attached)
        self.assertEqual(server.factory.refused_early, 0)
        self.assertGreaterEqual(server.factory.evicted, 151)


class WebsocketsCloseCodeTests(TestCase):
    """Broken frames from an independent client (`websockets`) get the close code
    RFC 6455 section 7.4.1 gives them, from the real listener over TLS."""

    #: The TLS engine (None: the one the CRS chooses).
    stdlib: bool | None = None
    KEY = b"\x01\x02\x03\x04"

    def setUp(self) -> None:
        if not websockets_available():
            self.skipTest("websockets is not installed")
        # The client runs in a thread of this process: on a loaded machine its
        # handshake may take longer than the usual attach timeout, and the
        # CRS would then close for that reason instead of the frame's.
        self.server = _Server(self, Limits(attach_timeout=120), self.stdlib)
        self.closed_early: list[str] = []

    def _close_code(self, send: Any) -> tuple[list[str], int | None]:
        """Open a WebSocket, call ``send(ws)``, and read until the CRS closes:
        (the UMSG types received, the close code received)."""
        from websockets.exceptions import ConnectionClosed

        url = f"wss://127.0.0.1:{self.server.number}/"
        tls = ssl.create_default_context(cafile=self.server.cert)
        for attempt in range(3):
            received: list[str] = []
            with ws_connect(url, ssl=tls, subprotocols=["umsg.1"], max_size=None) as ws:
                try:
                    send(ws)
                except (ssl.SSLError, OSError, ConnectionClosed) as exc:
                    # closed before our frame went out (seen once on a
                    # machine at load 8): no answer to the frame to judge;
                    # try again on a new connection, at most twice
                    self.closed_early.append(f"attempt {attempt}: {exc!r}")
                    continue
                try:
                    while True:
                        received.append(cbor2.loads(ws.recv(timeout=10))["type"])
                except ConnectionClosed as exc:
                    return received, exc.rcvd.code if exc.rcvd is not None else None
        raise AssertionError(f"the CRS closed before each frame: {self.closed_early}")

    def _raw(self, data: bytes) -> Any:
        return lambda ws: ws.socket.sendall(data)

    @defer.inlineCallbacks
    def test_framing_errors(self) -> Any:
        """An unmasked frame, a reserved opcode and a fragmented control frame: 1002."""
        for raw in (b"\x82\x02hi", b"\x83\x80" + self.KEY, b"\x09\x80" + self.KEY):
            got = yield threads.deferToThread(self._close_code, self._raw(raw))
            self.assertEqual(got, (["refused"], 1002), raw)

    @defer.inlineCallbacks
    def test_text(self) -> Any:
        """A text message on the binary-only umsg.1: 1003."""
        got = yield threads.deferToThread(self._close_code, lambda ws: ws.send("hello"))
        self.assertEqual(got, (["refused"], 1003))

    @defer.inlineCallbacks
    def test_too_big(self) -> Any:
        """A message over the limit, and a bare frame header announcing one: 1009,
        with a close frame the client reads (not a dropped connection)."""
        got = yield threads.deferToThread(self._close_code, lambda ws: ws.send(b"x" * 70000))
        self.assertEqual(got, (["refused"], 1009))
        header = b"\x82\xff" + (1 << 30).to_bytes(8, "big") + self.KEY
        got = yield threads.deferToThread(self._close_code, self._raw(header))
        self.assertEqual(got, (["refused"], 1009))


#: The engine the CRS does not choose on this machine, run too.
_OTHER = not stdlib_groups_suffice()


class WebsocketsClientOtherEngineTests(WebsocketsClientTests):
    """As L{WebsocketsClientTests}, with the other TLS engine."""

    stdlib = _OTHER


class FloodOtherEngineTests(FloodTests):
    """As L{FloodTests}, with the other TLS engine."""

    stdlib = _OTHER


class WebsocketsCloseCodeOtherEngineTests(WebsocketsCloseCodeTests):
    """As L{WebsocketsCloseCodeTests}, with the other TLS engine."""

    stdlib = _OTHER
