"""Attach: the sans-IO core (cryptify.crs.attach.core) through the server adapter
(cryptify.crs.attach.wiring) and the client protocol, in memory, on a Clock."""

from __future__ import annotations

import ipaddress
from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.client.connection import ConnectionEnded
from cryptify.client.session import Attached, Disconnected, Moved, Refused
from cryptify.config.crs import KeepAlive
from cryptify.crs.attach.admission import STALE_SILENT
from cryptify.crs.attach.wiring import CLOSE_GRACE, PING_AFTER, Limits
from cryptify.crs.redis.store import RedisNotConnected
from cryptify.crs.slots import SlotMap, slot_of
from cryptify.protocols.umsg import ERROR_CODES, Message
from cryptify.protocols.umsg_ws import UmsgWebSocket, mask
from tests.fakes import FakeAccount, kms
from tests.umsg_support import World


class _Base(SynchronousTestCase):
    limits: Limits | None = None

    def setUp(self) -> None:
        self.world = World.make(self.limits)
        self.trace: list[tuple[Any, ...]] = []
        self.world.registry.trace.subscribe("attach", self._traced)
        self.pumps: list[Any] = []
        self.addCleanup(self._no_timers_left)

    def _traced(self, *fields: Any) -> None:
        self.trace.append(fields)

    def _no_timers_left(self) -> None:
        for client, _, pump, _ in self.pumps:
            if client.transport is not None and not client.transport.disconnecting:
                client.close("test over")
            pump.flush()
        self.assertEqual(self.world.clock.getDelayedCalls(), [])

    def pair(self, **kw: Any) -> Any:
        got = self.world.pair(**kw)
        self.pumps.append(got)
        return got

    def states(self) -> list[str]:
        """The State column of the attach trace lines so far."""
        text = [" ".join(str(f) for f in fields) for fields in self.trace]
        return text

    def half_open(self, host: str) -> Any:
        """A connection from ``host`` that says nothing."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.protocol import Protocol
        from twisted.test import iosim

        silent = Protocol()
        server = self.world.factory.buildProtocol(None)
        iosim.connect(
            server,
            iosim.FakeTransport(server, isServer=True, peerAddress=IPv4Address("TCP", host, 9)),
            silent,
            iosim.FakeTransport(silent, isServer=False),
            clock=self.world.clock,
        )
        return server

    def talk(self, server: Any) -> None:
        """The connection starts its WebSocket handshake (no longer silent)."""
        server.dataReceived(UmsgWebSocket.connect("crs.test").outgoing()[:20])


class AttachTests(_Base):
    """The attach flow and every refusal."""

    def test_attached(self) -> None:
        """A client with the month's key attaches; show attach lists it; the trace says so."""
        _client, server, _, events = self.pair()
        self.assertIsInstance(events[0], Attached)
        event = events[0]
        self.assertEqual(
            (event.uri, event.crs, event.slot, event.keepalive, event.interval_ms),
            ("tel:+4612345", "crs1", slot_of("tel:+4612345"), "ws", int(PING_AFTER * 1000)),
        )
        self.assertEqual(
            self.world.registry.rows(),
            [["tel:+4612345", "acme", "0", "cryptify-client", "192.0.2.1:40000", "crs1"]],
        )
        self.assertTrue(any("attached" in line for line in self.states()))
        self.assertEqual(self.world.factory.pending, set())
        self.assertEqual(self.world.factory.live, {server})

    def assertRefused(self, code: str, events: list[Any], pump: Any) -> None:
        pump.flush()
        refusals = [e for e in events if isinstance(e, Refused)]
        self.assertEqual([r.code for r in refusals], [code], events)
        self.assertIn(code, ERROR_CODES)
        self.assertIsInstance(events[-1], ConnectionEnded)
        self.assertEqual(self.world.registry.rows(), [])
        self.assertTrue(any(f"refused: {code}" in line for line in self.states()), self.trace)

    def test_unknown_account(self) -> None:
        """An account the CRS does not serve is refused."""
        _, _, pump, events = self.pair(account="nobody")
        self.assertRefused("unknown-account", events, pump)

    def test_stores_not_ready(self) -> None:
        """While the stores are out of reach (just after a restart) an attach is refused
        ``unavailable`` with a retry hint; once they are back the same client attaches."""
        ready = [False]
        self.world.core.ready = lambda: ready[0]
        sent: list[Any] = []
        self.world.core.registry.on_attach.append(sent.append)
        _, _, pump, events = self.pair()
        self.assertRefused("unavailable", events, pump)
        [refused] = [e for e in events if isinstance(e, Refused)]
        self.assertGreater(refused.retry_after, 0)
        self.assertEqual(sent, [])
        ready[0] = True
        _, _, _, events = self.pair()
        self.assertIsInstance(events[0], Attached)

    def test_no_key_period(self) -> None:
        """An account without keys for the current month is refused."""
        self.world.accounts.add(FakeAccount("old", periods=("2026-10",)))
        _, _, pump, events = self.pair(account="old")
        self.assertRefused("no-key-period", events, pump)

    def test_blacklisted(self) -> None:
        """A blacklisted URI is refused, after it proved who it is."""
        self.world.accounts.get("acme").black.add("tel:+4612345")  # type: ignore[union-attr]
        _, _, pump, events = self.pair()
        self.assertRefused("blacklisted", events, pump)

    def test_bad_signature(self) -> None:
        """A signature by another KMS's key does not verify."""
        self.world.accounts.add(FakeAccount("beta"))
        kms("beta")
        self.world.accounts.by_id["beta"] = FakeAccount("beta")
        # The client signs with acme's key but claims account beta.
        world = self.world
        events: list[Any] = []
        from cryptify.client.connection import UmsgClientProtocol
        from cryptify.client.session import ClientSession
        from tests.fakes import signer

        def make(send: Any) -> ClientSession:
            return ClientSession(
                "beta", "tel:+4612345", lambda p: signer("acme", "tel:+4612345", p), send
            )

        client = UmsgClientProtocol(make, world.clock, events.append, "crs.test")
        got = self._connect(client, events)
        self.assertRefused("bad-signature", events, got)

    def _connect(self, client: Any, events: list[Any]) -> Any:
        from twisted.internet.address import IPv4Address
        from twisted.test import iosim

        server = self.world.factory.buildProtocol(None)
        pump = iosim.connect(
            server,
            iosim.FakeTransport(
                server, isServer=True, peerAddress=IPv4Address("TCP", "192.0.2.2", 1)
            ),
            client,
            iosim.FakeTransport(client, isServer=False),
            clock=self.world.clock,
        )
        pump.flush()
        self.pumps.append((client, server, pump, events))
        return pump

    def test_version(self) -> None:
        """No UMSG revision in common is refused with 'version'."""
        _, _, pump, _events = self._raw_attach({"versions": [7, 8]})
        self.assertEqual(self._refusal(pump), "version")

    def _raw_attach(self, changes: dict[str, Any]) -> Any:
        """A hand-driven WebSocket client sending one attach with ``changes``."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.protocol import Protocol
        from twisted.test import iosim

        self.raw_ws = UmsgWebSocket.connect("crs.test")
        self.received: list[Any] = []
        test = self

        class Raw(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(test.raw_ws.outgoing())  # type: ignore[union-attr]

            def dataReceived(self, data: bytes) -> None:
                test.received.extend(test.raw_ws.receive(data))

        raw = Raw()
        server = self.world.factory.buildProtocol(None)
        pump = iosim.connect(
            server,
            iosim.FakeTransport(
                server, isServer=True, peerAddress=IPv4Address("TCP", "192.0.2.3", 2)
            ),
            raw,
            iosim.FakeTransport(raw, isServer=False),
            clock=self.world.clock,
        )
        pump.flush()
        body = {
            "type": "attach",
            "id": 1,
            "account": "acme",
            "uri": "tel:+4612345",
            "versions": [1],
            "app": "raw",
        }
        body.update(changes)
        if changes.get("_raw") is not None:
            self.raw_ws.send(changes["_raw"])
        else:
            self.raw_ws.send(cbor2.dumps(body))
        raw.transport.write(self.raw_ws.outgoing())  # type: ignore[union-attr]
        pump.flush()
        return raw, server, pump, []

    def _refused(self, pump: Any) -> Message:
        pump.flush()
        from cryptify.protocols.umsg import decode_from_server
        from cryptify.protocols.umsg_ws import Received

        messages = [decode_from_server(e.data) for e in self.received if isinstance(e, Received)]
        self.assertEqual(messages[-1].type, "refused", messages)
        return messages[-1]

    def _refusal(self, pump: Any) -> str:
        return str(self._refused(pump)["code"])

    def test_refused_names_the_request(self) -> None:
        """A refusal caused by a request carries that request's id, even when the
        request was malformed but its id readable; one with no readable id, none."""
        _, _, pump, _ = self._raw_attach({"id": 41, "uri": 5})
        refused = self._refused(pump)
        self.assertEqual((refused.id, refused["code"]), (41, "malformed"))
        _, _, pump, _ = self._raw_attach({"id": 42, "versions": [9]})
        refused = self._refused(pump)
        self.assertEqual((refused.id, refused["code"]), (42, "version"))
        _, _, pump, _ = self._raw_attach({"id": "x"})
        self.assertIsNone(self._refused(pump).id)

    def test_malformed(self) -> None:
        """A message that is not valid UMSG is refused with 'malformed' and closed."""
        _, server, pump, _ = self._raw_attach({"_raw": b"\xff\x00garbage"})
        self.assertEqual(self._refusal(pump), "malformed")
        self.assertTrue(server.ending)
        self.assertTrue(any("refused: malformed" in line for line in self.states()))

    def test_oversized(self) -> None:
        """A message larger than the limit is refused with 'too-large'."""
        _, _, pump, _ = self._raw_attach({"_raw": b"\x00" * 70000})
        self.assertEqual(self._refusal(pump), "too-large")

    def test_unexpected(self) -> None:
        """A prove before any attach is refused with 'unexpected'."""
        _, _, pump, _ = self._raw_attach({"_raw": cbor2.dumps({"type": "fetch", "id": 3})})
        self.assertEqual(self._refusal(pump), "unexpected")

    def test_attach_timeout(self) -> None:
        """A connection that does not attach in time is refused and closed."""
        self.world.factory.doStart()
        self.addCleanup(self.world.factory.doStop)
        from twisted.internet.address import IPv4Address
        from twisted.internet.protocol import Protocol
        from twisted.test import iosim

        silent = Protocol()
        server = self.world.factory.buildProtocol(None)
        pump = iosim.connect(
            server,
            iosim.FakeTransport(
                server, isServer=True, peerAddress=IPv4Address("TCP", "192.0.2.4", 3)
            ),
            silent,
            iosim.FakeTransport(silent, isServer=False),
            clock=self.world.clock,
        )
        self.world.clock.advance(9)
        pump.flush()
        self.assertFalse(server.ending)
        self.world.clock.advance(2)
        pump.flush()
        self.assertTrue(server.ending)
        self.assertTrue(any("refused: attach-timeout" in line for line in self.states()))
        self.assertEqual(self.world.factory.pending, set())

    def test_replaced(self) -> None:
        """A second attach of the same URI replaces the first, which is told why and closed."""
        _first, _, pump1, events1 = self.pair(port=1)
        _second, _, _pump2, events2 = self.pair(port=2)
        pump1.flush()
        self.assertIsInstance(events2[0], Attached)
        self.assertIn(Disconnected("replaced", "replaced"), events1)
        self.assertIsInstance(events1[-1], ConnectionEnded)
        rows = self.world.registry.rows()
        self.assertEqual([r[4] for r in rows], ["192.0.2.1:2"])
        self.assertTrue(any("replaced" in line for line in self.states()))

    def test_moved(self) -> None:
        """A URI whose slot another instance owns is told to move there."""
        uri = "tel:+4612345"
        mine_first = slot_of(uri) < 8192
        hosts = ("crs2", "crs1") if mine_first else ("crs1", "crs2")
        self.world.core.slots = SlotMap(hosts, "crs1", {"crs2": "192.0.2.7"})
        _, _, pump, events = self.pair(uri=uri)
        pump.flush()
        self.assertEqual(events[0], Moved("crs2", "192.0.2.7", 5223))
        self.assertTrue(any("moved" in line for line in self.states()))
        self.assertEqual(self.world.registry.rows(), [])

    def test_slot_being_handed_over(self) -> None:
        """While a pool hands the URI's slot over (no owner) the attach is
        refused ``unavailable`` with a retry hint, not moved."""
        from cryptify.crs.attach.core import HANDOVER_RETRY_MS

        class Released:
            def owner(self, slot: int) -> str | None:
                return None

            def mine(self, slot: int) -> bool:
                return False

            def address(self, host: str) -> str:
                raise AssertionError("no owner to move to")

        self.world.core.slots = Released()
        _, _, pump, events = self.pair()
        self.assertRefused("unavailable", events, pump)
        [refused] = [e for e in events if isinstance(e, Refused)]
        self.assertEqual(refused.retry_after, HANDOVER_RETRY_MS)

    def test_detach(self) -> None:
        """A client that detaches is removed at once and the trace says detached."""
        client, _, pump, _events = self.pair()
        client.close("bye")
        pump.flush()
        self.assertEqual(self.world.registry.rows(), [])
        self.assertTrue(any("client detached" in line for line in self.states()))

    def test_operator_disconnect(self) -> None:
        """The registry disconnecting a client (purge) tells it the reason."""
        _, _, pump, events = self.pair()
        self.world.registry.disconnect(self.world.registry.matching(), "purged")
        pump.flush()
        self.assertIn(Disconnected("purged", "purged"), events)

    def test_shutdown(self) -> None:
        """disconnect_all tells every attached client the CRS is shutting down."""
        _, _, pump, events = self.pair()
        self.assertEqual(self.world.factory.disconnect_all(), 1)
        pump.flush()
        self.assertIn(Disconnected("shutdown", "shutdown"), events)


class ObjectTests(_Base):
    """Client objects sent once attached."""

    def test_push_token_and_info(self) -> None:
        """push-token and client-info are stored and answered ok."""
        client, _, pump, events = self.pair()
        client.session.request("push-token", kind="apns", token="t0k")
        client.session.request("client-info", os="linux", os_version="6", client_time=-20)
        pump.flush()
        self.assertEqual([e.message.type for e in events[1:]], ["ok", "ok"])
        self.assertEqual(
            self.world.objects.stored,
            [
                ("push", "acme", "tel:+4612345", "t0k", "apns"),
                (
                    "info",
                    "acme",
                    "tel:+4612345",
                    {"os": "linux", "os-version": "6", "client-time": "-20"},
                ),
            ],
        )

    def test_store_failure(self) -> None:
        """A store failure is answered with error 'internal'; the client stays attached."""
        self.world.objects.fail = True
        client, _, pump, events = self.pair()
        client.session.request("push-token", kind="apns", token="t0k")
        pump.flush()
        self.assertEqual(events[-1].message["code"], "internal")
        self.assertEqual(len(self.world.registry.rows()), 1)
        self.flushLoggedErrors(RuntimeError)

    def test_store_out_of_reach(self) -> None:
        """Redis out of reach is answered ``unavailable`` with a retry hint, and logged
        without a traceback."""
        self.world.objects.fail = True
        self.world.objects.error = lambda: RedisNotConnected("redis_low: not connected")
        client, _, pump, events = self.pair()
        client.session.request("push-token", kind="apns", token="t0k")
        pump.flush()
        answer = events[-1].message
        self.assertEqual((answer["code"], answer["retry-after"]), ("unavailable", 2000))
        self.assertEqual(self.flushLoggedErrors(), [])


class KeepAliveTests(_Base):
    """Pings after silence, drops without pong, keep-alive rules."""

    def setUp(self) -> None:
        super().setUp()
        self.world.factory.doStart()
        self.addCleanup(self.world.factory.doStop)

    def test_ping_and_drop(self) -> None:
        """A silent client is pinged after ~20 minutes and dropped if it does not answer."""
        client, server, pump, events = self.pair()
        client._cancel()  # this client never pings on its own
        clock = self.world.clock
        clock.advance(PING_AFTER - 10)
        self.assertIsNone(server.ping_at)
        for _ in range(3):
            clock.advance(5)
        self.assertIsNotNone(server.ping_at)
        pump.flush()  # the client answers the ping
        self.assertIsNone(server.ping_at)
        self.assertEqual(len(self.world.registry.rows()), 1)
        clock.advance(PING_AFTER + 5)
        self.assertIsNotNone(server.ping_at)
        clock.advance(65)  # no pump: the pong never comes
        self.assertEqual(self.world.registry.rows(), [])
        self.assertTrue(any("keepalive" in line for line in self.states()))
        pump.flush()
        self.assertIn(Disconnected("keepalive", "keepalive"), events)

    def test_client_pings_first(self) -> None:
        """A client that pings on its own (3/4 of the interval) is never pinged by the CRS."""
        _client, server, pump, _events = self.pair()
        clock = self.world.clock
        for _ in range(int(3 * PING_AFTER / 5)):
            clock.advance(5)
            pump.flush()
            self.assertIsNone(server.ping_at)
        self.assertEqual(len(self.world.registry.rows()), 1)

    def test_rules(self) -> None:
        """keep-alive rules: first match wins; ws with its interval, tcp without pings."""
        rules = (
            KeepAlive(ipaddress.ip_network("192.0.2.0/28"), "ws", 5000),
            KeepAlive(ipaddress.ip_network("192.0.2.0/24"), "tcp", 60000),
        )

        def rule(host: str) -> KeepAlive | None:
            for r in rules:
                if ipaddress.ip_address(host) in r.network:
                    return r
            return None

        self.world.factory.keepalive_rule = rule
        _, fast, _pump, events = self.pair(host="192.0.2.1")
        self.assertEqual((events[0].keepalive, events[0].interval_ms), ("ws", 5000))
        _, tcp, _, events2 = self.pair(host="192.0.2.100", uri="tel:+4699")
        self.assertEqual((events2[0].keepalive, events2[0].interval_ms), ("tcp", 60000))
        self.assertIn(fast, self.world.factory.live)
        self.assertNotIn(tcp, self.world.factory.live)
        self.assertEqual(self.world.factory.keepalive("198.51.100.1")[0], "ws")


class LimitTests(_Base):
    """Unattached connections per source address and in all."""

    limits = Limits(max_unattached_per_address=2, max_unattached=3)

    def test_per_address(self) -> None:
        """Over the per-address quota the oldest silent connection of that address
        makes room; when all of them talk, the new one is closed instead."""
        a1 = self.half_open("198.51.100.1")
        a2 = self.half_open("198.51.100.1")
        a3 = self.half_open("198.51.100.1")
        self.assertEqual((a1.ending, a2.ending, a3.ending), (True, False, False))
        self.assertEqual(self.world.factory.evicted, 1)
        self.talk(a2)
        self.talk(a3)
        a4 = self.half_open("198.51.100.1")
        self.assertTrue(a4.ending)
        self.assertEqual(self.world.factory.refused_early, 1)
        b1 = self.half_open("198.51.100.2")
        self.assertFalse(b1.ending)
        # The global quota (3): the oldest silent connection of any address goes.
        c1 = self.half_open("198.51.100.3")
        self.assertEqual((b1.ending, c1.ending), (True, False))
        self.assertEqual(self.world.factory.evicted, 2)
        # Attached clients are not counted: another address still attaches.
        for proto in (a2, a3, c1):
            proto.transport.loseConnection()
            proto.connectionLost()
        _, _, _, events = self.pair(host="198.51.100.1")
        self.assertIsInstance(events[0], Attached)
        self.assertEqual(self.world.factory.unattached, {})
        self.assertEqual(self.world.factory.pending, set())


class _Port:
    """A listening port that records being paused and resumed."""

    def __init__(self) -> None:
        self.reading = True
        self.calls: list[str] = []
        self.numberAccepts = 100

    def stopReading(self) -> None:
        self.reading = False
        self.calls.append("stop")

    def startReading(self) -> None:
        self.reading = True
        self.calls.append("start")

    def stopListening(self) -> None:
        self.calls.append("closed")


class AdmissionTests(_Base):
    """The listener stops accepting while max_handshakes connections are in
    progress, and starts again at three quarters of it."""

    limits = Limits(max_handshakes=8)

    def close(self, proto: Any) -> None:
        proto.transport.loseConnection()
        proto.connectionLost()

    def test_pause_and_resume(self) -> None:
        """At 8 connections in progress the port stops reading (a storm waits
        in the kernel's queue); one attaching or ending lowers the count,
        and at 6 it reads again; an accept turn never takes more than there
        is room for."""
        factory = self.world.factory
        port = _Port()
        factory.listening(port)
        conns = [self.half_open(f"198.51.100.{i}") for i in range(7)]
        self.assertTrue(port.reading)
        self.assertEqual(port.numberAccepts, 1)
        conns.append(self.half_open("198.51.100.7"))
        self.assertEqual((port.reading, port.calls), (False, ["stop"]))
        self.assertEqual(factory.admission.pauses, 1)
        _client, _server, _pump, events = self.pair(host="198.51.100.9")  # in progress, attaches
        self.assertIsInstance(events[0], Attached)
        self.assertFalse(port.reading)
        self.close(conns[0])
        self.assertFalse(port.reading)
        self.close(conns[1])
        self.assertEqual((port.reading, port.calls), (True, ["stop", "start"]))
        self.assertEqual(port.numberAccepts, 2)
        for proto in conns[2:]:
            self.close(proto)
        self.assertEqual(port.numberAccepts, 8)
        self.assertEqual(port.calls, ["stop", "start"])

    def test_attach_timeout_frees_room(self) -> None:
        """Connections that never attach leave at the attach timeout, and the
        listener accepts again."""
        factory = self.world.factory
        port = _Port()
        factory.listening(port)
        factory.doStart()
        self.addCleanup(factory.doStop)
        for i in range(8):
            self.talk(self.half_open(f"198.51.100.{i}"))
        self.assertFalse(port.reading)
        self.world.clock.advance(STALE_SILENT + 2 * factory.limits.attach_sweep)
        self.assertFalse(port.reading)  # they talk: not closed as silent
        self.world.clock.advance(factory.limits.attach_timeout)
        self.assertTrue(port.reading)
        self.world.clock.advance(5)

    def test_silent_connections_do_not_hold_the_listener(self) -> None:
        """While accepting is paused, connections that have sent nothing for
        STALE_SILENT are closed to make room (oldest first), so a flood of
        silent connections cannot keep the listener shut until the attach
        timeout; those that talk stay."""
        factory = self.world.factory
        port = _Port()
        factory.listening(port)
        factory.doStart()
        self.addCleanup(factory.doStop)
        silent = [self.half_open(f"198.51.100.{i}") for i in range(6)]
        self.world.clock.advance(1)
        talking = [self.half_open(f"198.51.100.{i}") for i in range(6, 8)]
        for proto in talking:
            self.talk(proto)
        self.assertFalse(port.reading)
        self.world.clock.advance(STALE_SILENT - 2)  # 4 s silent
        self.assertFalse(port.reading)
        self.world.clock.advance(factory.limits.attach_sweep)
        self.assertTrue(all(p.ending for p in silent))
        self.assertFalse(any(p.ending for p in talking))
        self.assertTrue(port.reading)
        self.assertEqual(factory.evicted, 6)
        self.world.clock.advance(factory.limits.attach_timeout)
        self.world.clock.advance(CLOSE_GRACE)

    def test_listen_service_hands_the_port(self) -> None:
        """The client listener service gives the factory its port while it
        listens, and takes it back when it stops."""
        from cryptify.crs.attach.wiring import UmsgListenService

        port = _Port()
        factory = self.world.factory
        listener = UmsgListenService("test:5223", lambda: port, factory, self.world.clock, 0)
        listener.startService()
        self.assertIs(factory.port, port)
        listener.stopService()
        self.assertIsNone(factory.port)
        self.world.clock.advance(1)

    @settings(max_examples=200, deadline=None)
    @given(
        limit=st.integers(1, 50),
        counts=st.lists(st.integers(0, 60), max_size=40),
    )
    def test_admission_rule(self, limit: int, counts: list[int]) -> None:
        """Whatever the counts: never paused at or below the low-water mark
        once told the count, never accepting at or above the limit, and a
        pause or resume only when the state changes."""
        from cryptify.crs.attach.admission import Admission

        gate = Admission()
        for count in counts:
            before = gate.paused
            what = gate.update(count, limit)
            if count >= limit:
                self.assertTrue(gate.paused)
            if count <= Admission.low_water(limit):
                self.assertFalse(gate.paused)
            self.assertEqual(what is not None, gate.paused != before)
            self.assertGreaterEqual(Admission.room(count, limit), 1)


class BusyAddressTests(_Base):
    """A real client behind an address full of idle sockets (a carrier NAT)."""

    def _attach_beside_idle(self, idle: int) -> tuple[list[Any], int]:
        """``idle`` silent connections from one address fill its quota; a client
        from the same address attaches.  Return its events and how many times
        the idle connections were touched (attribute reads) meanwhile."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from cryptify.crs.attach.wiring import UmsgServerProtocol

        touched = [0]
        watching = [False]

        class Idle(UmsgServerProtocol):
            def __getattribute__(self, name: str) -> Any:
                if watching[0]:
                    touched[0] += 1
                return object.__getattribute__(self, name)

        self.world = World.make(Limits(max_unattached_per_address=idle))
        factory = self.world.factory
        factory.doStart()
        self.addCleanup(factory.doStop)
        factory.protocol = Idle  # type: ignore[assignment]
        for port in range(idle):
            proto = factory.buildProtocol(None)
            proto.makeConnection(
                StringTransport(peerAddress=IPv4Address("TCP", "203.0.113.7", 1024 + port))
            )
        factory.protocol = UmsgServerProtocol  # type: ignore[assignment]
        self.world.clock.advance(1)
        watching[0] = True
        _client, _server, pump, events = self.pair(host="203.0.113.7")
        self.world.clock.advance(1)  # an attach-timeout sweep runs meanwhile
        pump.flush()
        watching[0] = False
        return events, touched[0]

    def test_attach_beside_idle_sockets(self) -> None:
        """The client is admitted at once (the oldest idle socket makes room), and the
        work of its attach does not grow with the idle connections of its address."""
        events_small, work_small = self._attach_beside_idle(50)
        self.assertIsInstance(events_small[0], Attached)
        self.assertEqual(self.world.factory.evicted, 1)
        events_big, work_big = self._attach_beside_idle(2000)
        self.assertIsInstance(events_big[0], Attached)
        self.assertEqual(self.world.factory.evicted, 1)
        self.assertEqual(work_big, work_small)
        self.assertLess(work_big, 30)
        self.assertEqual(len(self.world.factory.pending), 1999)

    def test_idle_closed_after_attach_timeout(self) -> None:
        """Idle unauthenticated connections are closed once the attach timeout passes."""
        self.world = World.make(Limits(attach_timeout=10))
        factory = self.world.factory
        factory.doStart()
        self.addCleanup(factory.doStop)
        old = [self.half_open("203.0.113.8") for _ in range(5)]
        self.world.clock.advance(5)
        young = [self.half_open("203.0.113.8") for _ in range(5)]
        self.world.clock.advance(5)
        self.assertTrue(all(p.ending for p in old))
        self.assertFalse(any(p.ending for p in young))
        self.world.clock.advance(5)
        self.assertTrue(all(p.ending for p in young))
        self.assertEqual(factory.pending, set())
        self.world.clock.advance(CLOSE_GRACE)  # the closing connections are aborted


class CloseCodeTests(SynchronousTestCase):
    """The close frame after a broken frame carries RFC 6455 section 7.4.1's code."""

    KEY = b"\x01\x02\x03\x04"

    def _close_after(self, raw: bytes, attached: bool = False) -> tuple[int, list[str]]:
        """Feed ``raw`` after the handshake (and an attach); return the close code
        and the UMSG messages the CRS sent before it."""
        from cryptify.protocols.umsg import decode_from_server
        from cryptify.protocols.umsg_ws import Closed, Received

        world = World.make(Limits(max_message=1000))
        if attached:
            _client, server, pump, events = world.pair()
            self.assertIsInstance(events[0], Attached)
            pump.flush()
            transport = server.transport
            client_ws = UmsgWebSocket.connect("crs.test")
            client_ws._opened = True  # read the server's frames from here on
            transport.stream = []
            server.dataReceived(raw)
            out = b"".join(transport.stream)
        else:
            from twisted.internet.address import IPv4Address
            from twisted.internet.testing import StringTransport

            server = world.factory.buildProtocol(None)
            transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 9))
            server.makeConnection(transport)
            client_ws = UmsgWebSocket.connect("crs.test")
            server.dataReceived(client_ws.outgoing())
            server.dataReceived(raw)
            out = transport.value()
        events = client_ws.receive(out)
        closes = [e for e in events if isinstance(e, Closed)]
        self.assertEqual(len(closes), 1, events)
        self.assertTrue(server.ending)
        for call in world.clock.getDelayedCalls():
            call.cancel()
        sent = [decode_from_server(e.data).type for e in events if isinstance(e, Received)]
        return closes[0].code, sent

    def test_framing_errors_1002(self) -> None:
        """An unmasked client frame, a reserved opcode and a fragmented control
        frame close with 1002 (protocol error), not 1008."""
        for raw in (b"\x82\x02hi", b"\x83\x80" + self.KEY, b"\x09\x80" + self.KEY):
            with self.subTest(raw=raw):
                self.assertEqual(self._close_after(raw), (1002, ["refused"]))
                self.assertEqual(self._close_after(raw, attached=True)[0], 1002)

    def test_text_1003(self) -> None:
        """A text frame on this binary-only protocol closes with 1003."""
        raw = b"\x81\x82" + self.KEY + mask(b"hi", self.KEY)
        self.assertEqual(self._close_after(raw), (1003, ["refused"]))

    def test_bad_utf8_1007(self) -> None:
        """A text frame that is not even UTF-8 closes with 1007."""
        raw = b"\x81\x81" + self.KEY + mask(b"\xff", self.KEY)
        self.assertEqual(self._close_after(raw)[0], 1007)

    def test_header_too_big_1009(self) -> None:
        """A frame header announcing more than the limit gets refused too-large and
        a close frame 1009 at once, with no payload octet sent."""
        raw = b"\x82\xff" + (1 << 40).to_bytes(8, "big") + self.KEY
        self.assertEqual(self._close_after(raw), (1009, ["refused"]))
        raw = b"\x82\xfe" + (1001).to_bytes(2, "big") + self.KEY
        self.assertEqual(self._close_after(raw, attached=True)[0], 1009)

    def test_client_closes_with_the_code(self) -> None:
        """The reference client, too, closes a broken server stream with its code:
        1002 for a masked server frame, 1003 for text, 1009 for a header over the limit."""
        from cryptify.protocols.umsg_ws import Closed

        for raw, code in (
            (b"\x82\x82" + self.KEY + b"hi", 1002),
            (b"\x81\x02hi", 1003),
            (b"\x82\x7f" + (1 << 40).to_bytes(8, "big"), 1009),
        ):
            with self.subTest(code=code):
                world = World.make()
                client, _server, pump, events = world.pair()
                self.assertIsInstance(events[0], Attached)
                pump.flush()
                client.transport.stream = []
                client.dataReceived(raw)
                reader = UmsgWebSocket.server()
                reader._opened = True  # read the client's frames from here on
                seen = reader.receive(b"".join(client.transport.stream))
                closes = [e for e in seen if isinstance(e, Closed)]
                self.assertEqual([c.code for c in closes], [code])
                pump.flush()
                self.assertIsInstance(events[-1], ConnectionEnded)
                for call in world.clock.getDelayedCalls():
                    call.cancel()

    def test_bad_umsg_1008(self) -> None:
        """A well-framed binary message that is not UMSG is a policy matter: 1008."""
        raw = b"\x82\x83" + self.KEY + mask(b"\xff\x00x", self.KEY)
        self.assertEqual(self._close_after(raw), (1008, ["refused"]))


class ConfigTests(SynchronousTestCase):
    """The client listener's limits come from crs.conf."""

    def test_directives(self) -> None:
        """client-* directives set the limits, render back, and are range-checked."""
        from cryptify.config.crs import parse_crs_config, render_crs_config

        cfg = parse_crs_config(
            "[GLOBAL]\nclient-max-message 4096\nclient-attach-timeout 3\n"
            "client-max-unattached-per-address 5\nclient-max-unattached 100\n"
            "client-max-handshakes 32\n"
        )
        limits = Limits.from_config(cfg.global_)
        self.assertEqual(
            (
                limits.max_message,
                limits.attach_timeout,
                limits.max_unattached_per_address,
                limits.max_unattached,
                limits.max_handshakes,
            ),
            (4096, 3.0, 5, 100, 32),
        )
        self.assertEqual(parse_crs_config(render_crs_config(cfg)), cfg)
        self.assertEqual(Limits.from_config(parse_crs_config("").global_), Limits())
        from cryptify.config._base import ConfigError

        with self.assertRaises(ConfigError):
            parse_crs_config("[GLOBAL]\nclient-max-message 10\n")


class TicketTests(_Base):
    """Attach tickets: a re-attach with a valid ticket skips the ECCSI proof."""

    def setUp(self) -> None:
        super().setUp()
        from cryptify.crs.attach.tickets import TicketKey

        self.world.core.tickets = TicketKey.derive("pool-key")
        self.verified: list[bytes] = []
        real = self.world.core.verify

        def counting(kpak: bytes, identity: bytes, message: bytes, signature: bytes) -> None:
            self.verified.append(identity)
            real(kpak, identity, message, signature)

        self.world.core.verify = counting

    def first_attach(self, uri: str = "tel:+4612345") -> Any:
        client, server, pump, events = self.pair(uri=uri)
        del client, server
        return pump, events

    def reattach(self, ticket: bytes | None, uri: str = "tel:+4612345") -> list[Any]:
        from cryptify.client.connection import UmsgClientProtocol

        events: list[Any] = []
        client = UmsgClientProtocol(
            self.world.client_session(uri), self.world.clock, events.append, "crs.test"
        )
        client.session.ticket = ticket
        self._connect(client, events)
        return events

    _connect = AttachTests._connect

    def test_resume(self) -> None:
        """The ticket from attached lets the next attach skip the signature; a
        restarted CRS with the same pool key accepts it too."""
        _, events = self.first_attach()
        first = events[0]
        self.assertIsNotNone(first.ticket)
        self.assertFalse(first.resumed)
        self.assertEqual(len(self.verified), 1)
        from cryptify.crs.attach.tickets import TicketKey

        self.world.core.tickets = TicketKey.derive("pool-key")  # a restart
        events = self.reattach(first.ticket)
        self.assertTrue(events[0].resumed)
        self.assertEqual(len(self.verified), 1)
        self.assertNotEqual(events[0].ticket, None)

    def test_invalid_tickets_fall_back(self) -> None:
        """An expired ticket, another URI's, or another pool's: the usual challenge."""
        from cryptify.crs.attach.tickets import TicketKey

        _, events = self.first_attach()
        ticket = events[0].ticket
        other = TicketKey.derive("other-pool").issue("acme", "tel:+4612345", "2026-11", 0)
        for bad, uri in ((ticket, "tel:+4699"), (other, "tel:+4612345"), (b"\x01" * 21, None)):
            got = self.reattach(bad, uri or "tel:+4612345")
            self.assertFalse(got[0].resumed)
        self.world.clock.advance(24 * 3600 + 1)
        self.assertFalse(
            self.world.core.tickets.valid(
                ticket, "acme", "tel:+4612345", "2026-11", self.world.clock.seconds()
            )
        )

    def test_blacklist_still_applies(self) -> None:
        """A ticket does not get a blacklisted URI in."""
        _, events = self.first_attach()
        self.world.accounts.get("acme").black.add("tel:+4612345")  # type: ignore[union-attr]
        got = self.reattach(events[0].ticket)
        self.assertEqual([e.code for e in got if isinstance(e, Refused)], ["blacklisted"])


class AdapterFuzzTests(SynchronousTestCase):
    """The server adapter fed arbitrary octets, before and after the handshake."""

    @settings(max_examples=150, deadline=None)
    @given(st.binary(max_size=300), st.booleans())
    def test_fuzz(self, data: bytes, handshake: bool) -> None:
        """Any octets: the connection answers or closes; nothing raises, nothing leaks."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        world = World.make()
        server = world.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 9))
        server.makeConnection(transport)
        if handshake:
            ws = UmsgWebSocket.connect("crs.test")
            server.dataReceived(ws.outgoing())
        for piece in (data[:11], data[11:]):
            server.dataReceived(piece)
        server.connectionLost()
        self.assertEqual(world.factory.pending, set())
        self.assertEqual(world.registry.rows(), [])
        for call in world.clock.getDelayedCalls():
            call.cancel()


class ListenServiceTests(SynchronousTestCase):
    """UmsgListenService: stop listening, then tell attached clients 'shutdown'."""

    def test_stop(self) -> None:
        """Stopping the service closes the port and disconnects attached clients."""
        from cryptify.crs.attach.wiring import UmsgListenService

        world = World.make()
        stopped: list[bool] = []

        class Port:
            def stopListening(self) -> None:
                stopped.append(True)

        _, _, pump, events = world.pair()
        service = UmsgListenService("127.0.0.1:1", Port, world.factory, world.clock, grace=0.5)
        service.startService()
        done = service.stopService()
        pump.flush()
        self.assertEqual(stopped, [True])
        self.assertIn(Disconnected("shutdown", "shutdown"), events)
        self.assertNoResult(done)
        world.clock.advance(0.5)
        self.successResultOf(done)
        self.assertEqual(world.registry.rows(), [])


class FeatureHookTests(_Base):
    """Features (sessions, messages) plug into attached connections."""

    def test_handlers_and_detach(self) -> None:
        """A registered handler gets its type; every way an
        attached connection ends is reported to on_detach exactly once."""
        seen: list[Any] = []
        detached: list[str] = []

        def on_invite(session: Any, msg: Any) -> None:
            seen.append(msg.type)
            session.send(Message("error", {"id": msg.id, "code": "not-found"}))

        self.world.core.handlers["invite"] = on_invite
        self.world.core.on_detach.append(lambda s, reason: detached.append(reason))
        client, _, pump, events = self.pair()
        client.session.request("invite", to="tel:+4699", mikey=b"m")
        pump.flush()
        self.assertEqual(seen, ["invite"])
        self.assertEqual(events[-1].message["code"], "not-found")
        client.close("bye")
        pump.flush()
        _, _, pump2, _ = self.pair(uri="tel:+4698")
        self.world.registry.disconnect(self.world.registry.matching(), "purged")
        pump2.flush()
        _, _, pump3, _ = self.pair(uri="tel:+4697")
        self.pair(uri="tel:+4697", port=2)
        pump3.flush()
        self.assertEqual(detached, ["client detached", "purged", "replaced"])


class NoDelayTests(SynchronousTestCase):
    """Both ends of a UMSG connection turn Nagle off: a message written
    while the previous one is unacknowledged would otherwise wait for the
    other side's delayed ACK (about 40 ms per call step)."""

    def transport(self) -> Any:
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        class Tcp(StringTransport):
            no_delay: bool | None = None

            def setTcpNoDelay(self, enabled: bool) -> None:
                self.no_delay = enabled

        return Tcp(peerAddress=IPv4Address("TCP", "192.0.2.9", 9))

    def test_server_side(self) -> None:
        world = World.make()
        server = world.factory.buildProtocol(None)
        transport = self.transport()
        server.makeConnection(transport)
        self.assertIs(transport.no_delay, True)

    def test_client_side(self) -> None:
        from cryptify.client.connection import UmsgClientProtocol

        world = World.make()
        events: list[Any] = []
        client = UmsgClientProtocol(
            world.client_session("tel:+15550001", "acme"), world.clock, events.append, "crs.test"
        )
        transport = self.transport()
        client.makeConnection(transport)
        self.assertIs(transport.no_delay, True)


class TicketTagTests(SynchronousTestCase):
    @settings(max_examples=100, deadline=None)
    @given(
        st.binary(max_size=100), st.text(max_size=20), st.text(max_size=20), st.integers(0, 2**32)
    )
    def test_tag_is_hmac_sha256(self, key: bytes, account: str, uri: str, expiry: int) -> None:
        """The tag from the precomputed pads is HMAC-SHA-256's, for any key length."""
        import hmac

        from cryptify.crs.attach.tickets import TicketKey

        data = b"\0".join(
            (b"umsg.1 ticket", account.encode(), uri.encode(), b"2026-12", b"%d" % expiry)
        )
        expected = hmac.new(key, data, "sha256").digest()[:16]
        self.assertEqual(TicketKey(key)._tag(account, uri, "2026-12", expiry), expected)
