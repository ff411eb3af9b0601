"""
Interop: the inter-working link over real loopback TLS-PSK.

Two L{IwLink}s in this process (two operators' CRS instances, each with
the other in its ``iw-crs.conf`` under one shared secret) connect both
ways and show each other up with their versions.  C{openssl s_client
-psk} plays the peer: with the secret's key from the configured address it
gets in and its hello shows as the incoming link; with a wrong key the
handshake fails.  A connection from an address that is no peer is closed
at once, and a peer that opens many connections gets only a few; the
real peer still gets in afterwards.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, ServerFactory
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from cryptify.config.crs_model import CrsConfig, CrsGlobal, Endpoint
from cryptify.config.iw_crs import IwCrs, IwCrsConfig
from cryptify.crs.interwork.link import INBOUND_PER_PEER, IwLink, iw_psk
from cryptify.crs.pool.wire import encode_frame
from tests.interop._openssl import OpensslProcess, s_client, until

SECRET = "OperatorsAgreedThis42"


@implementer(IStreamClientEndpoint)
class _ToPort:
    """Connects to 127.0.0.1 at the port the named link listens on, looked
    up at connect time."""

    def __init__(self, ports: dict[str, int], name: str) -> None:
        self.ports = ports
        self.name = name

    def connect(self, factory: Factory) -> defer.Deferred[Any]:
        if self.name not in self.ports:
            return defer.fail(ConnectionRefusedError(f"{self.name} not listening"))
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports[self.name], timeout=5).connect(
            factory
        )


class IwLinkTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.ports: dict[str, int] = {}
        self.links: dict[str, IwLink] = {}

    def start(self, name: str, peer: str, secret: str = SECRET) -> IwLink:
        def listen(factory: ServerFactory) -> Any:
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
            self.ports[name] = port.getHost().port
            return port

        # Both "operators" are on 127.0.0.1: each trusts that address.
        link = IwLink(
            CrsConfig(global_=CrsGlobal(listen=Endpoint("127.0.0.1", 1))),
            IwCrsConfig((IwCrs("127.0.0.1", secret),)),
            reactor,  # type: ignore[arg-type]
            f"{name}-version",
            endpoint=lambda address, port: _ToPort(self.ports, peer),
            listen=listen,
        )
        link.startService()
        self.links[name] = link
        self.addCleanup(self.stop, name)
        return link

    async def stop(self, name: str) -> None:
        link = self.links.get(name)
        if link is not None and link.running:
            await link.stopService()
            self.ports.pop(name, None)

    async def s_client(self, key: bytes, stdin: bytes) -> OpensslProcess:
        return s_client(self, self.ports["a"], key, "whoever", stdin)

    async def test_two_operators_link_both_ways(self) -> None:
        """Each side's outgoing and incoming connections come up, with the
        other's version; when one stops the other shows it down."""
        a = self.start("a", "b")
        b = self.start("b", "a")
        await until(lambda: a.state("127.0.0.1") == ("up", "up", "up"), "a's links up")
        await until(lambda: b.state("127.0.0.1") == ("up", "up", "up"), "b's links up")
        self.assertEqual(a.rows()[0][7], "b-version")
        await self.stop("b")
        await until(lambda: a.state("127.0.0.1")[0] == "down", "a to see b go")

    async def test_openssl_with_the_key_gets_in(self) -> None:
        """s_client with the shared secret's key from the peer's address
        gets in; its hello makes the incoming link up."""
        a = self.start("a", "nobody")
        hello = encode_frame("iw-hello", {"version": "openssl-peer"})
        await self.s_client(iw_psk(SECRET), hello)
        await until(lambda: a.state("127.0.0.1")[2] == "up", "openssl's hello")
        self.assertEqual(a.rows()[0][7], "openssl-peer")

    async def test_wrong_key_and_floods(self) -> None:
        """A wrong key fails the handshake; more connections than allowed
        from the peer's address are closed on accept; the real peer still
        links up afterwards."""
        a = self.start("a", "b")
        hello = encode_frame("iw-hello", {"version": "mallory"})
        wrong = await self.s_client(iw_psk(SECRET + "x"), hello)
        self.assertNotEqual(await wrong.ended, 0)
        self.assertNotEqual(a.rows()[0][7], "mallory")
        flood = []
        for _ in range(INBOUND_PER_PEER * 5):
            s = socket.create_connection(("127.0.0.1", self.ports["a"]), timeout=5)
            flood.append(s)
        self.addCleanup(lambda: [s.close() for s in flood])
        await _sleep(2.0)
        closed = 0
        for s in flood:
            s.setblocking(False)
            try:
                closed += s.recv(1) == b""
            except BlockingIOError:
                pass  # held open, waiting for a TLS handshake
            except OSError:
                closed += 1
        for s in flood:
            s.close()
        self.start("b", "a")
        await until(lambda: a.state("127.0.0.1")[0] == "up", "the real peer")

    async def test_stranger_closed_at_once(self) -> None:
        """A connection from an address that is not in iw-crs.conf is closed
        on accept, before any TLS."""
        self.start("a", "b")
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", self.ports["a"]))
        self.addCleanup(s.close)
        got = await defer.Deferred.fromCoroutine(_recv(s))
        self.assertEqual(got, b"")


async def _sleep(seconds: float) -> None:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)  # type: ignore[attr-defined]
    await d


async def _recv(s: socket.socket) -> bytes:
    d: defer.Deferred[bytes] = defer.Deferred()
    reactor.callInThread(lambda: reactor.callFromThread(d.callback, s.recv(1)))  # type: ignore[attr-defined]
    return await d
