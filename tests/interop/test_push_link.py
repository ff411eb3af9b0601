"""The CRS's push link against the real push server side, over real TLS on loopback.

The CRS end (:class:`CpsLink`) logs in with its id and secret, verifies
the server's certificate, comes back by itself after the server went
away, and does not stay on a server that refuses its secret.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from cryptify.crs.push.wiring import CpsLink, LinkDown
from cryptify.protocols import push_link
from cryptify.protocols.tls import server_context_factory
from cryptify.push.answers import Answer, Outcome
from cryptify.push.server import PushServerFactory
from tests.interop._procs import short_tempdir
from tests.push_fakes import tls_pair

SECRET = "link-secret-42"


class Providers:
    async def wake(self, kind: str, token: str) -> Answer:
        return Answer(Outcome.SENT)

    signed = None
    apns = None

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)


class LinkTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        d = short_tempdir(self)
        self.cert, key = tls_pair(d, "cps")
        self.context = server_context_factory(self.cert, key)
        self.factory = PushServerFactory(
            reactor, "cps-test", {"crs1": SECRET.encode()}, Providers()
        )  # type: ignore[arg-type]
        self.port: Any = reactor.listenSSL(0, self.factory, self.context, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.port_number = self.port.getHost().port
        self.addCleanup(self.stop_server)

    def stop_server(self) -> defer.Deferred[None]:
        for proto in list(self.factory.connections):
            if proto.transport is not None:
                proto.transport.abortConnection()
        return defer.maybeDeferred(self.port.stopListening)

    def link(self, secret: str = SECRET, trust: str | None = None) -> CpsLink:
        link = CpsLink(reactor, "localhost", self.port_number, "crs1", secret, trust or self.cert)
        link.startService()
        self.addCleanup(link.stopService)
        return link

    def logged_in(self, link: CpsLink) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()

        def once() -> None:
            link.on_login.remove(once)
            d.callback(None)

        link.on_login.append(once)
        return d

    @defer.inlineCallbacks
    def test_logs_in_and_wakes(self) -> Any:
        """The link logs in over TLS and a wake is answered sent."""
        link = self.link()
        yield self.logged_in(link)
        self.assertTrue(link.active)
        self.assertEqual(link.server, "cps-test")
        answer = yield link.call(push_link.Wake, kind="apns", token="ab" * 32)
        self.assertEqual(answer["outcome"], push_link.SENT)

    @defer.inlineCallbacks
    def test_comes_back_after_the_server_went_away(self) -> Any:
        """When the push server goes away and comes back the link logs in again
        by itself; meanwhile calls fail LinkDown instead of waiting."""
        link = self.link()
        yield self.logged_in(link)
        lost: defer.Deferred[None] = defer.Deferred()

        def once() -> None:
            link.on_lost.remove(once)
            lost.callback(None)

        link.on_lost.append(once)
        yield self.stop_server()
        yield lost
        self.assertFalse(link.active)
        with self.assertRaises(LinkDown):
            yield link.call(push_link.Ping)
        again = self.logged_in(link)
        self.port = reactor.listenSSL(  # type: ignore[attr-defined]
            self.port_number, self.factory, self.context, interface="127.0.0.1"
        )
        yield again
        self.assertTrue(link.active)

    @defer.inlineCallbacks
    def test_wrong_secret_never_logs_in(self) -> Any:
        """A link with the wrong secret is refused and does not count as up."""
        refused: defer.Deferred[None] = defer.Deferred()
        original = self.factory.buildProtocol

        def watch(addr: Any) -> Any:
            proto = original(addr)
            lost = proto.connectionLost

            def on_lost(reason: Any) -> None:
                lost(reason)
                if not refused.called:
                    refused.callback(None)

            proto.connectionLost = on_lost  # type: ignore[method-assign]
            return proto

        self.factory.buildProtocol = watch  # type: ignore[method-assign]
        link = self.link(secret="not-the-secret")
        yield refused
        self.assertFalse(link.active)

    @defer.inlineCallbacks
    def test_untrusted_server_is_not_used(self) -> Any:
        """A push server whose certificate is not trusted is never logged in to."""
        other, _ = tls_pair(short_tempdir(self), "other")
        link = self.link(trust=other)
        seen: defer.Deferred[None] = defer.Deferred()
        original = self.factory.buildProtocol

        def watch(addr: Any) -> Any:
            proto = original(addr)
            lost = proto.connectionLost

            def on_lost(reason: Any) -> None:
                lost(reason)
                if not seen.called:
                    seen.callback(None)

            proto.connectionLost = on_lost  # type: ignore[method-assign]
            return proto

        self.factory.buildProtocol = watch  # type: ignore[method-assign]
        yield seen
        self.assertFalse(link.active)
        self.assertEqual([p for p in self.factory.connections if p.commands.client], [])
