"""The reference client: session, reconnecting loop, command line."""

from __future__ import annotations

import io
import os
import random
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from cryptify.client import cli
from cryptify.client import servers as servers_mod
from cryptify.client.connection import (
    MAX_MOVES,
    MAX_STAYS,
    REPLACED,
    AttachingClient,
    ConnectionEnded,
    GaveUp,
)
from cryptify.client.session import Attached, ClientSession, Disconnected, Moved, Refused
from cryptify.crs.slots import SlotMap, slot_of
from cryptify.protocols.umsg import Message
from tests.fakes import signer
from tests.umsg_support import World, WorldConnector


class SessionTests(SynchronousTestCase):
    """ClientSession on its own."""

    def setUp(self) -> None:
        self.sent: list[Message] = []
        self.session = ClientSession(
            "acme", "tel:+4612345", lambda p: signer("acme", "tel:+4612345", p), self.sent.append
        )

    def test_attach_and_prove(self) -> None:
        """start sends attach; a challenge is answered with a prove signed for its period."""
        self.session.start()
        self.assertEqual(self.sent[0].type, "attach")
        self.assertEqual(self.sent[0]["versions"], [1])
        events = self.session.received(
            Message("challenge", {"id": 1, "nonce": bytes(32), "period": "2026-11", "version": 1})
        )
        self.assertEqual(events, [])
        self.assertEqual(self.sent[1].type, "prove")
        self.assertEqual(len(self.sent[1]["signature"]), 129)

    def test_no_key_for_period(self) -> None:
        """A challenge for a period without keys: the client gives up (a local refusal)."""

        def no_keys(period: str) -> Any:
            raise KeyError(period)

        self.session.signer_for = no_keys
        self.session.start()
        events = self.session.received(
            Message("challenge", {"id": 1, "nonce": bytes(32), "period": "2030-01", "version": 1})
        )
        self.assertEqual(len(events), 1)
        self.assertIsInstance(events[0], Refused)
        self.assertTrue(events[0].local)
        self.assertEqual(events[0].code, "no-key-period")

    def test_out_of_order(self) -> None:
        """attached without a prove, or a challenge outside an attach, is a local refusal."""
        events = self.session.received(Message("challenge", {"id": 1}))
        self.assertEqual(events[0].code, "unexpected")
        events = self.session.received(Message("attached", {}))
        self.assertEqual(events[0].code, "unexpected")

    def test_ids_wrap(self) -> None:
        """Request ids count up and wrap before 2**32."""
        self.session.next_id = 2**32 - 1
        self.assertEqual(self.session.request("fetch"), 2**32 - 1)
        self.assertEqual(self.session.request("fetch"), 1)


class AttachingClientTests(SynchronousTestCase):
    """AttachingClient: stays attached, backs off with jitter, follows moves."""

    def setUp(self) -> None:
        self.world = World.make()
        self.events: list[Any] = []

    def client(self, connector: WorldConnector, uri: str = "tel:+4612345") -> AttachingClient:
        client = AttachingClient(
            self.world.clock,
            connector,
            self.world.client_session(uri),
            "crs.test",
            5223,
            self.events.append,
            rng=random.Random(7),
        )
        self.addCleanup(self._stop, client, connector)
        return client

    def _stop(self, client: AttachingClient, connector: WorldConnector) -> None:
        done = client.stop()
        connector.flush()
        self.successResultOf(done)
        self.assertEqual(self.world.clock.getDelayedCalls(), [])

    def test_backoff_then_attach(self) -> None:
        """Failed connects are retried after growing, jittered delays; success resets."""
        connector = WorldConnector(self.world, fail=3)
        client = self.client(connector)
        client.start()
        delays = []
        while len(connector.calls) < 4:
            (call,) = self.world.clock.getDelayedCalls()
            delays.append(call.getTime() - self.world.clock.seconds())
            self.world.clock.advance(delays[-1])
        for attempt, delay in enumerate(delays):
            self.assertTrue(0 <= delay <= 2**attempt, (attempt, delay))
        self.assertIsInstance(self.events[-1], Attached)
        self.assertEqual(client.attempt, 0)

    def test_unavailable_waits_the_hint(self) -> None:
        """Refused ``unavailable`` (stores not ready), the client comes back no sooner
        than the CRS's ``retry-after``, then attaches."""
        ready = [False]
        self.world.core.ready = lambda: ready[0]
        connector = WorldConnector(self.world)
        client = self.client(connector)
        client.start()
        connector.flush()
        [refused] = [e for e in self.events if isinstance(e, Refused)]
        self.assertEqual(refused.code, "unavailable")
        (call,) = self.world.clock.getDelayedCalls()
        self.assertGreaterEqual(
            call.getTime() - self.world.clock.seconds(), refused.retry_after / 1000
        )
        ready[0] = True
        self.world.clock.advance(call.getTime() - self.world.clock.seconds())
        connector.flush()
        self.assertIsInstance(self.events[-1], Attached)

    def test_busy_refusal_keeps_the_ticket(self) -> None:
        """``refused unavailable`` (the CRS is busy) keeps the client's ticket,
        so the next try needs no signature; another refusal drops it."""
        self.world.core.ready = lambda: False
        connector = WorldConnector(self.world)
        client = self.client(connector)
        client.ticket = b"\x01" + bytes(20)
        client.start()
        connector.flush()
        self.assertEqual([e.code for e in self.events if isinstance(e, Refused)], ["unavailable"])
        self.assertEqual(client.ticket, b"\x01" + bytes(20))
        client._event(Refused("blacklisted", "x"))
        self.assertIsNone(client.ticket)

    def test_reconnects_after_loss(self) -> None:
        """When the CRS drops the connection, the client attaches again."""
        connector = WorldConnector(self.world)
        client = self.client(connector)
        client.start()
        self.world.factory.disconnect_all("shutdown")
        connector.flush()
        self.assertIsInstance(self.events[-1], ConnectionEnded)
        self.world.clock.advance(2)
        self.assertIsInstance(self.events[-1], Attached)
        self.assertEqual(len(connector.calls), 2)

    def test_replaced_stops(self) -> None:
        """Replaced by another client of the same URI, the client stops and says why:
        the two do not take the URI from each other in turn."""
        connector = WorldConnector(self.world)
        first = self.client(connector)
        first.start()
        other_events: list[Any] = []
        other = AttachingClient(
            self.world.clock,
            connector,
            self.world.client_session("tel:+4612345"),
            "crs.test",
            5223,
            other_events.append,
        )
        self.addCleanup(self._stop, other, connector)
        other.start()
        connector.flush()
        self.assertIsInstance(other_events[-1], Attached)
        self.assertIn(Disconnected("replaced", "replaced"), self.events)
        self.assertEqual(self.events[-1], GaveUp(REPLACED))
        self.assertFalse(first.running)
        self.world.clock.advance(600)
        connector.flush()
        self.assertEqual(len(connector.calls), 2)
        self.assertEqual(len(self.world.registry.rows()), 1)
        self.assertIsInstance(other_events[-1], Attached)

    def test_replaced_holds_off(self) -> None:
        """An unattended client (stop_on_replaced=False) waits the whole max_delay."""
        connector = WorldConnector(self.world)
        first = self.client(connector)
        first.stop_on_replaced = False
        first.start()
        replacing = AttachingClient(
            self.world.clock,
            connector,
            self.world.client_session("tel:+4612345"),
            "crs.test",
            5223,
            lambda event: None,
        )
        replacing.start()
        connector.flush()
        self.assertIsInstance(self.events[-1], ConnectionEnded)
        assert first.timer is not None
        self.assertEqual(first.timer.getTime() - self.world.clock.seconds(), first.max_delay)
        stopped = replacing.stop()
        connector.flush()
        self.successResultOf(stopped)
        self.world.clock.advance(first.max_delay)
        connector.flush()
        self.assertIsInstance(self.events[-1], Attached)

    def test_delay_window(self) -> None:
        """The delay window doubles per attempt up to the cap; draws spread over it."""
        client = self.client(WorldConnector(self.world))
        client.attempt = 20
        draws = [client.delay() for _ in range(200)]
        self.assertTrue(all(0 <= d <= client.max_delay for d in draws))
        self.assertGreater(max(draws) - min(draws), client.max_delay / 2)

    def test_moved(self) -> None:
        """moved: reconnect at once to the named host, at most MAX_MOVES times in a row."""
        uri = "tel:+4612345"
        hosts = ("crs2", "crs1") if slot_of(uri) < 8192 else ("crs1", "crs2")
        self.world.core.slots = SlotMap(hosts, "crs1", {"crs2": "192.0.2.7"})
        connector = WorldConnector(self.world)
        client = self.client(connector)
        client.start()
        self.world.clock.advance(0)
        self.assertEqual(connector.calls[:2], [("crs.test", 5223), ("192.0.2.7", 5223)])
        self.assertIsInstance(self.events[0], Moved)
        for _ in range(MAX_MOVES + 2):
            self.world.clock.advance(0)
        self.assertEqual(len(connector.calls), MAX_MOVES + 1)


class _Unreachable(WorldConnector):
    """A WorldConnector whose ``dead`` hosts refuse every connection (an
    instance that died), the others reaching the World's server."""

    def __init__(self, world: World, dead: set[str]) -> None:
        super().__init__(world)
        self.dead = dead

    def __call__(self, host: str, port: int, factory: Any) -> Any:
        if host in self.dead:
            self.calls.append((host, port))
            return defer.fail(ConnectionRefusedError("refused"))
        return super().__call__(host, port, factory)


class SeveralServersTests(SynchronousTestCase):
    """AttachingClient with every address of a pool: reconnects go to the
    next one in turn, with the usual backoff, following ``moved``."""

    SERVERS = (("crs1.test", 5223), ("crs2.test", 5223), ("crs3.test", 5223))

    def setUp(self) -> None:
        self.world = World.make()
        self.events: list[Any] = []

    def client(self, connector: WorldConnector, **kw: Any) -> AttachingClient:
        client = AttachingClient(
            self.world.clock,
            connector,
            self.world.client_session("tel:+4612345"),
            *self.SERVERS[0],
            self.events.append,
            servers=self.SERVERS,
            rng=random.Random(3),
            **kw,
        )
        self.addCleanup(self._stop, client, connector)
        return client

    def _stop(self, client: AttachingClient, connector: WorldConnector) -> None:
        done = client.stop()
        connector.flush()
        self.successResultOf(done)

    def run_until(self, connector: WorldConnector, calls: int) -> list[float]:
        """Advance the clock call by call until ``calls`` connects were
        made; the delays waited before each retry."""
        delays = []
        while len(connector.calls) < calls:
            (call,) = self.world.clock.getDelayedCalls()
            delays.append(call.getTime() - self.world.clock.seconds())
            self.world.clock.advance(delays[-1])
        return delays

    def test_in_turn_with_backoff(self) -> None:
        """Failed connects go to the next address in turn, wrapping round,
        each after a jittered delay whose window doubles per failure."""
        connector = WorldConnector(self.world, fail=4)
        client = self.client(connector)
        client.start()
        delays = self.run_until(connector, 5)
        self.assertEqual(connector.calls, [*self.SERVERS, self.SERVERS[0], self.SERVERS[1]])
        for attempt, delay in enumerate(delays):
            self.assertTrue(0 <= delay <= 2**attempt, (attempt, delay))
        self.assertIsInstance(self.events[-1], Attached)
        self.assertEqual(client.attempt, 0)

    def test_unavailable_tries_the_same_instance(self) -> None:
        """``refused unavailable`` comes from an instance that is up (its
        slot's owner is late): the client tries it again after the hint,
        up to MAX_STAYS times in a row, then the next address; once the
        instance serves the slot, the client attaches there."""
        ready = [False]
        self.world.core.ready = lambda: ready[0]
        connector = WorldConnector(self.world)
        client = self.client(connector)
        client.start()
        delays = self.run_until(connector, MAX_STAYS + 2)
        self.assertEqual(connector.calls, [self.SERVERS[0]] * (MAX_STAYS + 1) + [self.SERVERS[1]])
        self.assertTrue(all(delay >= 1.0 for delay in delays), delays)
        ready[0] = True
        self.run_until(connector, MAX_STAYS + 3)
        self.assertIsInstance(self.events[-1], Attached)
        self.assertEqual(connector.calls[-1], self.SERVERS[1])
        self.assertEqual(client.stays, 0)

    def test_lost_connection_goes_to_the_next(self) -> None:
        """Attached at one instance, the connection lost: the client comes
        back through the next address, not the one that dropped it."""
        connector = WorldConnector(self.world)
        client = self.client(connector)
        client.start()
        self.assertIsInstance(self.events[-1], Attached)
        self.world.factory.disconnect_all("shutdown")
        connector.flush()
        self.run_until(connector, 2)
        self.assertEqual(connector.calls, [self.SERVERS[0], self.SERVERS[1]])
        self.assertIsInstance(self.events[-1], Attached)

    def test_lost_connection_goes_to_the_standby(self) -> None:
        """Attached with a standby (the instance that takes the URI's slot
        if this one dies): the lost connection comes back there first, not
        to the next address in turn; a failure there goes on in turn."""

        class WithStandby:
            def owner(self, slot: int) -> str:
                return "crs1"

            def mine(self, slot: int) -> bool:
                return True

            def standby(self, slot: int) -> str:
                return "crs3"

            def address(self, host: str) -> str:
                return f"{host}.test"

        self.world.core.slots = WithStandby()
        connector = WorldConnector(self.world)
        client = self.client(connector)
        client.start()
        self.assertIsInstance(self.events[-1], Attached)
        self.assertEqual(self.events[-1].standby, self.SERVERS[2])
        self.world.factory.disconnect_all("shutdown")
        connector.flush()
        self.run_until(connector, 2)
        self.assertEqual(connector.calls, [self.SERVERS[0], self.SERVERS[2]])
        self.assertIsInstance(self.events[-1], Attached)
        # Lost again, and the standby does not answer: then the one after it.
        self.world.factory.disconnect_all("shutdown")
        connector.fail = 1
        connector.flush()
        self.run_until(connector, 4)
        self.assertEqual(connector.calls[2:], [self.SERVERS[2], self.SERVERS[0]])

    def test_moved_to_a_dead_instance(self) -> None:
        """``moved`` to an instance that cannot be reached (it died, the
        pool has not taken its slots over yet): the client goes on with
        the next address after the one that moved it, with backoff; once
        the slot is served where it asks, it attaches there."""
        uri = "tel:+4612345"
        hosts = ("crs2", "crs1") if slot_of(uri) < 8192 else ("crs1", "crs2")
        self.world.core.slots = SlotMap(hosts, "crs1", {"crs2": "192.0.2.7"})
        connector = _Unreachable(self.world, {"192.0.2.7"})
        client = self.client(connector)
        client.start()
        self.run_until(connector, 5)
        dead = ("192.0.2.7", 5223)
        self.assertEqual(
            connector.calls[:5], [self.SERVERS[0], dead, self.SERVERS[1], dead, self.SERVERS[2]]
        )
        self.assertFalse(any(isinstance(e, Attached) for e in self.events))
        self.world.core.slots = SlotMap(("crs1",), "crs1")  # the takeover
        self.run_until(connector, 7)
        self.assertIsInstance(self.events[-1], Attached)
        self.assertEqual(connector.calls[-1], self.SERVERS[0])

    def test_ticket_survives_moved(self) -> None:
        """A ``moved`` keeps the client's ticket: every instance of the pool
        accepts it, so following the move costs no new signature."""
        uri = "tel:+4612345"
        hosts = ("crs2", "crs1") if slot_of(uri) < 8192 else ("crs1", "crs2")
        self.world.core.slots = SlotMap(hosts, "crs1", {"crs2": "192.0.2.7"})
        connector = _Unreachable(self.world, {"192.0.2.7"})
        client = self.client(connector)
        client.ticket = b"\x01" + bytes(20)
        client.start()
        self.assertIsInstance(self.events[0], Moved)
        self.assertEqual(client.ticket, b"\x01" + bytes(20))

    def test_one_server_comes_back_to_it(self) -> None:
        """With one address, a chain of moves that led nowhere starts again
        at that address (not at the unreachable one) and follows moves anew."""
        uri = "tel:+4612345"
        hosts = ("crs2", "crs1") if slot_of(uri) < 8192 else ("crs1", "crs2")
        self.world.core.slots = SlotMap(hosts, "crs1", {"crs2": "192.0.2.7"})
        connector = _Unreachable(self.world, {"192.0.2.7"})
        client = AttachingClient(
            self.world.clock,
            connector,
            self.world.client_session(uri),
            "crs.test",
            5223,
            self.events.append,
            rng=random.Random(3),
        )
        self.addCleanup(self._stop, client, connector)
        client.start()
        self.run_until(connector, 2 * (MAX_MOVES + 2))
        dead = ("192.0.2.7", 5223)
        self.assertEqual(connector.calls[:4], [("crs.test", 5223), dead, ("crs.test", 5223), dead])


class ExpandServersTests(SynchronousTestCase):
    """``--server`` options to the addresses the client tries in turn."""

    def test_names_to_addresses(self) -> None:
        """A name with several addresses gives each, in order, remembering
        the name for TLS; duplicates are tried once; a name that does not
        resolve now is kept as it is."""
        table = {"pool.test": ["192.0.2.1", "192.0.2.2"], "crs1.test": ["192.0.2.1"]}
        servers, names = servers_mod.expand_servers(
            [("pool.test", 5223), ("crs1.test", 5223), ("gone.test", 5223), ("pool.test", 443)],
            lambda host, port: table.get(host, []),
        )
        self.assertEqual(
            servers,
            [
                ("192.0.2.1", 5223),
                ("192.0.2.2", 5223),
                ("gone.test", 5223),
                ("192.0.2.1", 443),
                ("192.0.2.2", 443),
            ],
        )
        self.assertEqual(names, {"192.0.2.1": "pool.test", "192.0.2.2": "pool.test"})

    def test_bounded(self) -> None:
        """A name with very many addresses gives at most MAX_SERVERS."""
        servers, _ = servers_mod.expand_servers(
            [("big.test", 1)], lambda host, port: [f"10.0.{i // 256}.{i % 256}" for i in range(999)]
        )
        self.assertEqual(len(servers), servers_mod.MAX_SERVERS)

    def test_real_resolver(self) -> None:
        """An address resolves to itself; a name that cannot resolve to nothing."""
        self.assertEqual(servers_mod.resolve_ipv4("127.0.0.1", 5223), ["127.0.0.1"])
        self.assertEqual(servers_mod.resolve_ipv4("no such host.invalid", 5223), [])


class CliTests(SynchronousTestCase):
    """cryptify-client's command line (without running a reactor)."""

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = cli.run(list(argv), out, err)
        return status, out.getvalue(), err.getvalue()

    def test_help(self) -> None:
        """help lists the attach action."""
        status, out, _ = self.run_cli("help")
        self.assertEqual(status, 0)
        self.assertIn("attach --keys FILE --server HOST:PORT", out)

    def test_unknown_action(self) -> None:
        """An unknown action is a usage error (2)."""
        status, _, err = self.run_cli("dance")
        self.assertEqual(status, 2)
        self.assertIn("unknown action", err)

    def test_bad_server(self) -> None:
        """--server must be HOST:PORT."""
        status, _, _ = self.run_cli("attach", "--keys", "k", "--server", "nohost")
        self.assertEqual(status, 2)

    def test_several_servers(self) -> None:
        """--server may be given several times (the key file is what fails here)."""
        path = os.path.join(self.mktemp(), "nope.json")
        status, _, err = self.run_cli(
            "attach", "--keys", path, "--server", "a:1", "--server", "b:2", "--insecure"
        )
        self.assertEqual(status, 1)
        self.assertIn(path, err)
        status, _, _ = self.run_cli("attach", "--keys", path, "--server", "a:1", "--server", "b")
        self.assertEqual(status, 2)

    def test_missing_keys(self) -> None:
        """A key file that cannot be read is refused with exit 1 and its name."""
        path = os.path.join(self.mktemp(), "nope.json")
        status, _, err = self.run_cli("attach", "--keys", path, "--server", "h:1", "--insecure")
        self.assertEqual(status, 1)
        self.assertIn(path, err)

    def test_describe(self) -> None:
        """Events print as one readable line each."""
        line = cli.describe(Attached("tel:+1", "crs1", 5, "ws", 1000, 0))
        self.assertEqual(line, "attached tel:+1 to crs1 (slot 5, keep-alive ws 1000 ms)")
        self.assertEqual(cli.describe(Refused("blacklisted", "x")), "refused: blacklisted (x)")
        self.assertEqual(cli.describe(ConnectionEnded("bye")), "connection ended: bye")


class TicketReuseTests(SynchronousTestCase):
    """AttachingClient presents the last ticket when it reconnects."""

    def test_reconnect_resumes(self) -> None:
        """After the CRS drops it, the client re-attaches with its ticket (no signature)."""
        from cryptify.crs.attach.core import TicketKey

        world = World.make()
        world.core.tickets = TicketKey.derive("k")
        events: list[Any] = []
        connector = WorldConnector(world)
        client = AttachingClient(
            world.clock,
            connector,
            world.client_session(),
            "crs.test",
            5223,
            events.append,
            rng=random.Random(1),
        )
        client.start()
        world.factory.disconnect_all("shutdown")
        connector.flush()
        world.clock.advance(2)
        attached = [e for e in events if isinstance(e, Attached)]
        self.assertEqual([a.resumed for a in attached], [False, True])
        done = client.stop()
        connector.flush()
        self.successResultOf(done)
