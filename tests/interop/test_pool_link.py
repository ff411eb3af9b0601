"""
Interop: the pool link over real loopback TLS-PSK.

Two L{PoolLink}s in this process, each listening on its own ephemeral
port of 127.0.0.1, find each other, agree on the slot map, and the survivor
takes over when the other stops.  C{openssl s_client -psk} plays a peer:
with the pool's key and a member's name it gets in and its heartbeat
counts; with a wrong key or a stranger's name the handshake fails, and
with the key but hostile octets it is dropped; none of it touches the map.
Skipped only when there is no C{openssl} binary (for the openssl tests).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from cryptify.config.crs_model import CrsConfig, CrsGlobal, Pool, PoolHost
from cryptify.crs.pool.core import Heartbeat
from cryptify.crs.pool.wire import encode_heartbeat
from cryptify.crs.pool.wiring import PoolLink, pool_psk
from cryptify.crs.slots import SLOTS
from cryptify.protocols.tls_psk import PskServerContextFactory
from tests.interop._openssl import OpensslProcess, s_client, until

KEY = "interop-pool-key-0123456789"


@implementer(IStreamClientEndpoint)
class _ToPort:
    """Connects to 127.0.0.1 at the port a member listens on, looked up at
    connect time (the members start one after the other)."""

    def __init__(self, ports: dict[str, int], address: str) -> None:
        self.ports = ports
        self.address = address

    def connect(self, factory: Factory) -> defer.Deferred[Any]:
        name = {v: k for k, v in ADDRESSES.items()}[self.address]
        if name not in self.ports:
            return defer.fail(ConnectionRefusedError(f"{name} not listening"))
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports[name], timeout=5).connect(
            factory
        )


ADDRESSES = {"crs1": "192.0.2.1", "crs2": "192.0.2.2", "crs3": "192.0.2.3"}


def pool_config(count: int) -> CrsConfig:
    hosts = tuple(PoolHost(f"crs{i}", ADDRESSES[f"crs{i}"]) for i in range(1, count + 1))
    return CrsConfig(global_=CrsGlobal(key=KEY), pool=Pool(hosts))


class PoolLinkTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.ports: dict[str, int] = {}
        self.events: dict[str, list[tuple[str, str]]] = {}
        self.links: dict[str, PoolLink] = {}

    def start(self, name: str, count: int = 2) -> PoolLink:
        events = self.events.setdefault(name, [])

        def listen(factory: Factory, tls: PskServerContextFactory) -> Any:
            port = reactor.listenSSL(0, factory, tls, interface="127.0.0.1")  # type: ignore[attr-defined]
            self.ports[name] = port.getHost().port
            return port

        link = PoolLink(
            pool_config(count),
            name,
            reactor,
            lambda unit, event: events.append((unit, event)),
            incarnation=lambda: int(reactor.seconds() * 1000),  # type: ignore[attr-defined]
            endpoint=lambda address, port: _ToPort(self.ports, address),
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

    def agreed(self, *names: str) -> bool:
        maps = [self.links[n].member.map for n in names]  # type: ignore[union-attr]
        if any(m is None for m in maps) or len({m.key for m in maps if m}) != 1:
            return False
        owners = maps[0].owners  # type: ignore[union-attr]
        return None not in owners and set(owners) == set(names)

    async def test_two_members_form_and_take_over(self) -> None:
        """Two members over real TLS-PSK agree on the home split, say link
        up; when one stops the other takes every slot and says so."""
        a, b = self.start("crs1"), self.start("crs2")
        await until(lambda: self.agreed("crs1", "crs2"), "the pool to form")
        self.assertEqual(a.rows()[0][2], f"0-{SLOTS // 2 - 1}")
        self.assertEqual(b.rows()[0], ("crs1", str(os.getpid()), f"0-{SLOTS // 2 - 1}"))
        self.assertIn(("pool_link_crs2", "up"), self.events["crs1"])
        await self.stop("crs2")
        await until(lambda: all(a.mine(s) for s in (0, SLOTS - 1)), "the takeover")
        self.assertIn(("pool_link_crs2", "down"), self.events["crs1"])
        self.assertIn(("pool", "takeover crs2"), self.events["crs1"])

    async def test_three_members(self) -> None:
        """Three members form one map with a third of the slots each."""
        for name in ("crs1", "crs2", "crs3"):
            self.start(name, 3)
        await until(lambda: self.agreed("crs1", "crs2", "crs3"), "the pool of three to form")

    # -- openssl as a peer ---------------------------------------------

    async def s_client(self, key: bytes, identity: str, stdin: bytes) -> OpensslProcess:
        return s_client(self, self.ports["crs1"], key, identity, stdin)

    async def test_openssl_with_the_key_is_a_peer(self) -> None:
        """s_client with the pool key and a member's name gets in: its
        heartbeat makes the link up, with the pid it sent."""
        link = self.start("crs1")
        beat = encode_heartbeat(Heartbeat("crs2", None), 4321)
        await self.s_client(pool_psk(KEY), "crs2", beat)
        await until(lambda: link.link_up("crs2"), "openssl's heartbeat")
        self.assertEqual(link.pids["crs2"], 4321)

    async def test_openssl_wrong_key_dropped(self) -> None:
        """A wrong key fails the handshake; a stranger's name is refused;
        the key with hostile octets is dropped.  None reaches the core, and
        the listener still serves the real peer afterwards."""
        link = self.start("crs1")
        beat = encode_heartbeat(Heartbeat("crs2", None), 1)
        wrong = await self.s_client(pool_psk(KEY + "x"), "crs2", beat)
        self.assertNotEqual(await wrong.ended, 0)
        stranger = await self.s_client(pool_psk(KEY), "mallory", beat)
        self.assertNotEqual(await stranger.ended, 0)
        self.assertIn(b"alert", stranger.output)
        hostile = await self.s_client(pool_psk(KEY), "crs2", b"\x00\x00\x00\x03\xff\xff\xff")
        await hostile.ended  # the CRS closed the connection
        assert link.member is not None
        self.assertFalse(link.link_up("crs2"))
        self.assertNotIn("crs2", link.pids)
        self.start("crs2")
        await until(lambda: self.agreed("crs1", "crs2"), "the real peer to join")
