"""Shared fixtures for the UMSG, attach and client tests: a server factory on
a Clock, in-memory client/server pairs, a sample of every message type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.test import iosim

from cryptify.client.connection import Event, UmsgClientProtocol
from cryptify.client.session import ClientSession
from cryptify.crs.attach.core import AttachCore
from cryptify.crs.attach.registry import AttachRegistry
from cryptify.crs.attach.wiring import Limits, UmsgServerFactory, UmsgServerProtocol
from cryptify.crs.objects.wiring import install as install_objects
from cryptify.crs.slots import SlotMap
from cryptify.protocols.umsg import Message
from tests.fakes import START, FakeAccount, FakeAccounts, FakeObjects, signer


@attrs.define
class World:
    """A CRS core and factory on a Clock, with one account ``acme``."""

    clock: Clock
    accounts: FakeAccounts
    registry: AttachRegistry
    core: AttachCore
    factory: UmsgServerFactory
    objects: FakeObjects

    @classmethod
    def make(
        cls,
        limits: Limits | None = None,
        slots: SlotMap | None = None,
        keepalive_rule: Callable[[str], Any] = lambda host: None,
    ) -> World:
        clock = Clock()
        clock.advance(START)
        accounts = FakeAccounts()
        accounts.add(FakeAccount("acme"))
        registry = AttachRegistry("crs1", clock.seconds)
        objects = FakeObjects()
        core = AttachCore("crs1", accounts, registry, clock.seconds, slots=slots)
        install_objects(core, objects)
        factory = UmsgServerFactory(core, clock, limits, keepalive_rule)
        return cls(clock, accounts, registry, core, factory, objects)

    def client_session(
        self, uri: str = "tel:+4612345", account: str = "acme", events: list[Any] | None = None
    ) -> Callable[[Callable[[Message], None]], ClientSession]:
        def make(send: Callable[[Message], None]) -> ClientSession:
            return ClientSession(account, uri, lambda p: signer(account, uri, p), send)

        return make

    def pair(
        self,
        uri: str = "tel:+4612345",
        account: str = "acme",
        host: str = "192.0.2.1",
        port: int = 40000,
    ) -> tuple[UmsgClientProtocol, UmsgServerProtocol, iosim.IOPump, list[Event]]:
        """A connected client/server pair in memory (no TLS), pumped."""
        events: list[Event] = []
        client = UmsgClientProtocol(
            self.client_session(uri, account), self.clock, events.append, "crs.test"
        )
        server = self.factory.buildProtocol(None)
        assert isinstance(server, UmsgServerProtocol)
        server_t = iosim.FakeTransport(server, isServer=True, peerAddress=_addr(host, port))
        client_t = iosim.FakeTransport(client, isServer=False)
        pump = iosim.connect(server, server_t, client, client_t, greet=True, clock=self.clock)
        pump.flush()
        return client, server, pump, events


def _addr(host: str, port: int) -> Any:
    from twisted.internet.address import IPv4Address

    return IPv4Address("TCP", host, port)


#: A valid example of every client -> CRS message type.
FROM_CLIENT_SAMPLES: dict[str, dict[str, Any]] = {
    "attach": {
        "id": 1,
        "account": "acme",
        "uri": "tel:+4612345",
        "versions": [1],
        "app": "test/1",
        "device": {"os": "linux"},
    },
    "prove": {"id": 2, "signature": bytes(129)},
    "detach": {"id": 3},
    "push-token": {"id": 4, "kind": "apns", "token": "abc123"},
    "client-info": {
        "id": 5,
        "os": "android",
        "os-version": "14",
        "cca-version": "3.1",
        "client-time": -1500,
        "scan-time": 1794744000,
    },
    "invite": {"id": 6, "to": "tel:+8888;101", "mikey": b"\x01" * 300},
    "ringing": {"session": "s-1"},
    "talk": {"session": "s-1"},
    "hold": {"session": "s-1"},
    "resume": {"session": "s-1"},
    "hangup": {"session": "s-1", "code": "normal", "reason": "bye"},
    "post": {"id": 7, "to": "tel:+4654321", "content": b"sealed"},
    "fetch": {"id": 8},
    "delivered": {"message": "m-1"},
}

#: A valid example of every CRS -> client message type.
FROM_SERVER_SAMPLES: dict[str, dict[str, Any]] = {
    "challenge": {"id": 1, "nonce": bytes(32), "period": "2026-11", "version": 1},
    "attached": {
        "id": 2,
        "uri": "tel:+4612345",
        "crs": "crs1",
        "slot": 6843,
        "time": 1794744000000,
        "keepalive": "ws",
        "interval": 1230000,
    },
    "moved": {"id": 1, "crs": "crs2", "host": "192.0.2.7", "port": 5223},
    "refused": {"id": 1, "code": "unknown-account", "reason": "no such account"},
    "disconnect": {"code": "replaced", "reason": "replaced"},
    "ok": {"id": 4},
    "error": {"id": 6, "code": "not-implemented", "reason": "later"},
    "invite": {
        "session": "s-1",
        "from": "tel:+4612345",
        "to": "tel:+8888;101",
        "mikey": b"\x01" * 300,
        "relay-host": "192.0.2.9",
        "relay-port": 146,
        "relay-tag": b"\x00" * 8,
    },
    "session": {
        "id": 6,
        "session": "s-1",
        "relay-host": "192.0.2.9",
        "relay-port": 146,
        "relay-tag": b"\x00" * 8,
    },
    "ringing": {"session": "s-1"},
    "talk": {"session": "s-1"},
    "hold": {"session": "s-1"},
    "resume": {"session": "s-1"},
    "hangup": {"session": "s-1", "code": "normal", "reason": "bye", "who": "callee"},
    "posted": {"id": 7, "message": "m-1"},
    "message": {
        "message": "m-1",
        "from": "tel:+4654321",
        "to": "tel:+4612345",
        "time": 1794744000000,
        "content": b"sealed",
    },
    "delivered": {"message": "m-1"},
}


class WorldConnector:
    """A connector that links each connection to a World's server in memory."""

    def __init__(self, world: World, fail: int = 0) -> None:
        self.world = world
        self.fail = fail
        self.calls: list[tuple[str, int]] = []
        self.pumps: list[iosim.IOPump] = []

    def __call__(self, host: str, port: int, factory: Factory[Any]) -> defer.Deferred[Any]:
        self.calls.append((host, port))
        if self.fail:
            self.fail -= 1
            return defer.fail(ConnectionRefusedError("refused"))
        client = factory.buildProtocol(IPv4Address("TCP", host, port))
        server = self.world.factory.buildProtocol(None)
        pump = iosim.connect(
            server,
            iosim.FakeTransport(
                server, isServer=True, peerAddress=IPv4Address("TCP", "192.0.2.5", 7)
            ),
            client,
            iosim.FakeTransport(client, isServer=False),
            clock=self.world.clock,
        )
        pump.flush()
        self.pumps.append(pump)
        return defer.succeed(client)

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()
