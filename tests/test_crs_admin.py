"""Tests for the CRS's operator actions, over AMP in memory."""

from __future__ import annotations

import base64
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.accounts import AccountStore
from cryptify.crs.attach.registry import Attachment
from cryptify.crs.objects.store import ClientObjects
from cryptify.crs.operator.admin import CrsAdmin
from cryptify.crs.operator.state import CrsState
from cryptify.crs.trace import TraceHub
from cryptify.crypto.identity import period_of
from cryptify.protocols import crs_admin
from cryptify.protocols.mgmt import CommandFailed, ManagementClient, ManagementProtocol
from tests.fakes import SECRET, FakeConnection, FakeStore, update_bytes


class AdminTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        trace = TraceHub(self.clock.seconds)
        store = FakeStore()
        self.redis = store.client
        self.state = CrsState(
            "crs1",
            {"crs": lambda: True},
            AccountStore(self.mktemp()),
            trace,
            objects=ClientObjects(lambda: store, trace, self.clock.seconds),
        )
        self.traced: list[str] = []
        server = ManagementProtocol(lambda proto: CrsAdmin(self.state, proto))
        self.client = ManagementClient(self.traced.append)
        self.pump = iosim.connect(
            server, iosim.makeFakeServer(server), self.client, iosim.makeFakeClient(self.client)
        )

    def call(self, command: type[amp.Command], **kwargs: Any) -> Any:
        results: list[Any] = []
        self.client.callRemote(command, **kwargs).addBoth(results.append)
        self.pump.flush()
        self.assertEqual(len(results), 1)
        return results[0]

    def rows(self, command: type[amp.Command], **kwargs: Any) -> list[list[str]]:
        answer = self.call(command, **kwargs)
        self.assertIsInstance(answer, dict, answer)
        rows: list[list[str]] = answer["table"]["rows"]
        return rows

    def attach(self, uri: str, account: str = "acme") -> FakeConnection:
        conn = FakeConnection()
        registry = self.state.registry
        assert registry is not None
        registry.attach(
            Attachment(uri, account, self.clock.seconds(), "3.4.0", "192.0.2.7", 40000, conn)
        )
        return conn

    def create_and_apply(self, blacklist: tuple[str, ...] = ()) -> None:
        self.call(crs_admin.CreateAccount, account="acme", secret=SECRET)
        period = period_of(self.clock.seconds())
        data = update_bytes(revision=1, blacklist=blacklist, period=period, with_next=True)
        self.call(crs_admin.Apply, data=base64.b64encode(data).decode("ascii"))

    def test_accounts_lifecycle(self) -> None:
        """create, list, show updates, delete: each does what the manual says."""
        self.create_and_apply()
        self.assertEqual(self.rows(crs_admin.ListAccounts)[0][0], "acme")
        self.assertEqual(self.rows(crs_admin.ListAccounts)[0][2], SECRET)
        [row] = self.rows(crs_admin.ShowUpdates)
        self.assertEqual(row[0], "acme")
        self.assertRegex(row[1], r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")
        self.assertRegex(row[2], r"UTC")
        conn = self.attach("tel:+4670")
        answer = self.call(crs_admin.DeleteAccount, account="acme")
        self.assertEqual(answer["disconnected"], 1)
        self.assertEqual(conn.reasons, ["account deleted"])
        self.assertEqual(self.rows(crs_admin.ListAccounts), [])

    def test_show_updates_not_available(self) -> None:
        """An account without updates shows Not Available for both months."""
        self.call(crs_admin.CreateAccount, account="acme", secret=SECRET)
        self.assertEqual(
            self.rows(crs_admin.ShowUpdates), [["acme", "Not Available", "Not Available"]]
        )

    def test_bad_apply_is_clear(self) -> None:
        """A bad update file gets a clear refusal over the channel."""
        self.call(crs_admin.CreateAccount, account="acme", secret=SECRET)
        result = self.call(crs_admin.Apply, data=base64.b64encode(b"junk").decode())
        self.assertTrue(result.check(CommandFailed))
        self.assertIn("not an update file", result.getErrorMessage())
        result = self.call(crs_admin.Apply, data="***")
        self.assertTrue(result.check(CommandFailed))

    def test_reload_names_broken_file(self) -> None:
        """reload account with a corrupt secret: the answer names the file; others reload."""
        self.create_and_apply()
        self.call(crs_admin.CreateAccount, account="other", secret=SECRET)
        before = self.state.accounts.get("acme")
        path = os.path.join(self.state.accounts.directory, "acme", "secret")
        with open(path, "wb") as f:
            f.write(b"\x8f\x00\xff random")
        answer = self.call(crs_admin.ReloadAccounts)
        self.assertIsInstance(answer, dict, answer)
        self.assertEqual(answer["problems"], [f"{path}: the shared secret is not base64 text"])
        self.assertEqual(self.state.accounts.get("acme"), before)
        self.assertEqual(self.rows(crs_admin.ShowAccount)[0][3], "acme,other")

    def test_blacklist_disconnects(self) -> None:
        """blacklist add disconnects the attached client at once; show blacklist lists it."""
        self.create_and_apply(blacklist=("tel:+1",))
        conn = self.attach("tel:+4670")
        other = self.attach("tel:+4671")
        answer = self.call(crs_admin.AddBlacklist, account="acme", uri="tel:+4670")
        self.assertEqual(answer["disconnected"], 1)
        self.assertEqual(conn.reasons, ["blacklisted"])
        self.assertEqual(other.reasons, [])
        self.assertEqual(
            self.rows(crs_admin.ShowBlacklist, account="acme"), [["tel:+1"], ["tel:+4670"]]
        )
        self.call(crs_admin.RemoveBlacklist, account="acme", uri="tel:+4670")
        self.assertEqual(self.rows(crs_admin.ShowBlacklist, account="acme"), [["tel:+1"]])

    def test_unknown_account_refused(self) -> None:
        """Actions on an unknown or invalid account are refused by name."""
        for command, kwargs in (
            (crs_admin.AddBlacklist, {"account": "nope", "uri": "tel:+1"}),
            (crs_admin.PurgeClients, {"account": "nope"}),
            (crs_admin.ShowBlacklist, {"account": "bad id"}),
        ):
            result = self.call(command, **kwargs)
            self.assertTrue(result.check(CommandFailed), command)

    def test_purge(self) -> None:
        """purge client and purge clients disconnect exactly who they name."""
        self.create_and_apply()
        a, b = self.attach("tel:+1"), self.attach("tel:+2")
        self.assertEqual(
            self.call(crs_admin.PurgeClient, account="acme", uri="tel:+1")["purged"], 1
        )
        self.assertEqual((a.reasons, b.reasons), (["purged"], []))
        self.assertEqual(self.call(crs_admin.PurgeClients, account="acme")["purged"], 1)
        self.assertEqual(b.reasons, ["purged"])

    def test_show_attach_and_replace(self) -> None:
        """show attach lists URI ACCOUNT TIME VERSION IP:PORT CRS; a second attach replaces."""
        self.create_and_apply()
        first = self.attach("tel:+4670")
        self.clock.advance(42)
        self.assertEqual(
            self.rows(crs_admin.ShowAttach),
            [["tel:+4670", "acme", "42", "3.4.0", "192.0.2.7:40000", "crs1"]],
        )
        self.attach("tel:+4670")
        self.assertEqual(first.reasons, ["replaced"])
        self.assertEqual(len(self.rows(crs_admin.ShowAttach)), 1)

    def test_trace_attach_streams(self) -> None:
        """trace attach pushes one line per event until the CLI goes away."""
        self.create_and_apply()
        self.call(crs_admin.Trace, element="attach")
        conn = self.attach("tel:+4670")
        registry = self.state.registry
        assert registry is not None
        registry.detach("tel:+4670", conn, "closed by client")
        self.pump.flush()
        self.assertEqual(len(self.traced), 2)
        self.assertRegex(
            self.traced[0],
            r"^attach, \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}, tel:\+4670, attached, acme, "
            r"192\.0\.2\.7, 40000, -$",
        )
        self.assertIn(", detached, acme, 192.0.2.7, 40000, closed by client", self.traced[1])
        self.client.transport.loseConnection()
        self.pump.flush()
        self.assertFalse(self.state.trace.active("attach"))

    def test_trace_unknown_element(self) -> None:
        """An unknown trace element is refused."""
        self.assertTrue(self.call(crs_admin.Trace, element="nonsense").check(CommandFailed))

    def test_slot_system_account(self) -> None:
        """check slot, show system and show account describe this single instance."""
        answer = self.call(crs_admin.CheckSlot, uri="tel:+4670123456")
        self.assertEqual(answer["owner"], "crs1")
        self.assertTrue(0 <= answer["slot"] < 16384)
        ext = self.call(crs_admin.CheckSlot, uri="tel:+4670123456;101")
        self.assertEqual(ext["slot"], answer["slot"])
        [system] = self.rows(crs_admin.ShowSystem)
        self.assertEqual((system[0], system[1], system[3]), ("crs1", "app:attach", "0-16383"))
        self.call(crs_admin.CreateAccount, account="acme", secret=SECRET)
        [account] = self.rows(crs_admin.ShowAccount)
        self.assertEqual(account[3], "acme")

    def test_pool_slot_and_system(self) -> None:
        """In a pool, check slot names the pool map's owner (``-`` while the
        slot is handed over) and show system has a row per instance."""

        class Pool:
            owners: dict[int, str | None] = {}

            def rows(self) -> list[tuple[str, str, str]]:
                return [("crs1", "11", "0-8191"), ("crs2", "-", "8192-16383")]

            def owner(self, slot: int) -> str | None:
                return self.owners.get(slot, "crs2")

        pool = Pool()
        self.state.pool = pool
        answer = self.call(crs_admin.CheckSlot, uri="tel:+4670123456")
        self.assertEqual(answer["owner"], "crs2")
        pool.owners[answer["slot"]] = None
        self.assertEqual(self.call(crs_admin.CheckSlot, uri="tel:+4670123456")["owner"], "-")
        self.assertEqual(
            self.rows(crs_admin.ShowSystem),
            [["crs1", "app:attach", "11", "0-8191"], ["crs2", "app:attach", "-", "8192-16383"]],
        )

    def test_system_with_workers(self) -> None:
        """With ``workers N`` show system has the parent (app:crs, no slots)
        and a row per worker with its PID (``-`` while it is started again)
        and its cut of the instance's slots (it is their home worker)."""
        self.state.workers = lambda: [(0, 4242), (1, None)]
        self.assertEqual(
            self.rows(crs_admin.ShowSystem),
            [
                ["crs1", "app:crs", str(self.state.pid), "-"],
                ["crs1", "app:attach/1", "4242", "0-8191"],
                ["crs1", "app:attach/2", "-", "8192-16383"],
            ],
        )

    def test_system_in_a_pool_with_workers(self) -> None:
        """In a pool with ``workers N``: the other members as before; this
        instance's parent with the slots it owns, and each worker with its
        equal cut of them."""

        class Pool:
            def rows(self) -> list[tuple[str, str, str]]:
                return [("crs1", "11", "0-99,200-299"), ("crs2", "-", "100-199")]

            def owner(self, slot: int) -> str | None:
                return None

        self.state.pool = Pool()
        self.state.workers = lambda: [(0, 4242), (1, 4243)]
        self.assertEqual(
            self.rows(crs_admin.ShowSystem),
            [
                ["crs1", "app:crs", "11", "0-99,200-299"],
                ["crs1", "app:attach/1", "4242", "0-99"],
                ["crs1", "app:attach/2", "4243", "200-299"],
                ["crs2", "app:attach", "-", "100-199"],
            ],
        )

    def test_client_objects(self) -> None:
        """Push tokens and client info are stored and shown; trace object sees updates."""
        self.call(crs_admin.CreateAccount, account="acme", secret=SECRET)
        self.call(crs_admin.Trace, element="object")
        objects = self.state.objects
        self.successResultOf_coro(objects.set_push_token("acme", "tel:+1", "abc", "apns"))
        self.successResultOf_coro(
            objects.set_client_info("acme", "tel:+1", {"os": "iOS", "os-version": "17.1", "x": "y"})
        )
        self.assertEqual(
            self.rows(crs_admin.ShowPushToken, account="acme", uri="tel:+1"),
            [["tel:+1", "abc", "apns"]],
        )
        [info] = self.rows(crs_admin.ShowClientInfo, account="acme")
        self.assertEqual(info[0], "tel:+1")
        self.assertEqual(info[4:6], ["iOS", "17.1"])
        self.pump.flush()
        self.assertIn("update client_token", self.traced[0])
        self.attach("tel:+1")
        self.assertEqual(self.call(crs_admin.PurgeObserved, account="acme")["purged"], 0)

    def successResultOf_coro(self, coro: Any) -> Any:
        from twisted.internet.defer import ensureDeferred

        return self.successResultOf(ensureDeferred(coro))


class ShowRelayTests(SynchronousTestCase):
    """``show relay`` reads the relay's counters from its answer."""

    def admin(self, answer: dict[str, object]) -> CrsAdmin:
        class Relay:
            async def call(self, command: type[amp.Command], **kwargs: object) -> dict[str, object]:
                return answer

        clock = Clock()
        state = CrsState(
            "crs1",
            {},
            AccountStore(self.mktemp()),
            TraceHub(clock.seconds),
            relay=Relay(),
        )
        return CrsAdmin(state)

    def test_counters_shown(self) -> None:
        """The manual's columns, each counter the relay gave, 0 for one it did not."""
        answer = self.successResultOf(self.admin({"stats": {"RX": 5}}).show_relay())
        table: Any = answer["table"]
        rows = table["rows"]
        self.assertEqual(rows[0][0], "5")
        self.assertEqual(set(rows[0][1:]), {"0"})

    def test_answer_without_statistics_fails_clearly(self) -> None:
        """An answer without its statistics is a CommandFailed saying so, not a crash."""
        failure = self.failureResultOf(self.admin({"other": 1}).show_relay(), CommandFailed)
        self.assertIn("without its statistics", str(failure.value))
