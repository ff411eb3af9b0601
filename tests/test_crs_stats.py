"""Tests for per-account statistics and system messages, in memory (AMP and a fake Redis)."""

from __future__ import annotations

import argparse
import io
import itertools
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.accounts import AccountStore
from cryptify.crs.attach.registry import Attachment
from cryptify.crs.calls.core import SessionTable
from cryptify.crs.messages.wiring import Messaging
from cryptify.crs.operator import cli
from cryptify.crs.operator.admin import CrsAdmin
from cryptify.crs.operator.state import CrsState
from cryptify.crs.operator.stats import COLUMNS, Statistics, stats_key
from cryptify.crs.redis.store import RedisNotConnected
from cryptify.crs.trace import TraceHub
from cryptify.crypto.identity import period_of
from cryptify.protocols import crs_admin
from cryptify.protocols.mgmt import CommandFailed, ManagementClient, ManagementProtocol
from cryptify.protocols.umsg import message
from tests.fakes import (
    SECRET,
    Att,
    FakeConnection,
    FakeParties,
    FakeRelay,
    FakeSession,
    FakeStore,
    MemoryMessageStore,
)

#: 2027-01-15, so the current period is 2027-01.
NOW = 1_800_000_000.0


class _World(SynchronousTestCase):
    """A CRS state with statistics and messaging over fakes, and its AMP admin."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        trace = TraceHub(self.clock.seconds)
        store = FakeStore()
        self.redis = store.client
        self.stats = Statistics(lambda: store, self.clock.seconds)
        self.state = CrsState("crs1", {}, AccountStore(self.mktemp()), trace, stats=self.stats)
        registry = self.state.registry
        assert registry is not None
        self.registry = registry
        registry.on_attach.append(self.stats.on_attach)
        self.messages = MemoryMessageStore(lambda: NOW)
        self.messaging = Messaging(
            self.messages,  # type: ignore[arg-type]
            registry,
            trace,
            stats=self.stats,
        )
        self.messages.known = {"tel:+1", "tel:+2"}
        server = ManagementProtocol(lambda proto: CrsAdmin(self.state, proto))
        self.client = ManagementClient(lambda line: None)
        self.pump = iosim.connect(
            server, iosim.makeFakeServer(server), self.client, iosim.makeFakeClient(self.client)
        )
        self.call(crs_admin.CreateAccount, account="acme", secret=SECRET)

    def call(self, command: type[amp.Command], **kwargs: Any) -> Any:
        results: list[Any] = []
        self.client.callRemote(command, **kwargs).addBoth(results.append)
        self.pump.flush()
        self.assertEqual(len(results), 1)
        return results[0]

    def export(self, account: str = "acme") -> list[list[str]]:
        answer = self.call(crs_admin.StatsExport, account=account)
        self.assertEqual(answer["table"]["columns"], list(COLUMNS))
        rows: list[list[str]] = answer["table"]["rows"]
        return rows

    def attach(self, uri: str, period: str = "", account: str = "acme") -> FakeConnection:
        conn = FakeConnection()
        self.registry.attach(
            Attachment(uri, account, self.clock.seconds(), "1", "192.0.2.1", 1, conn, period)
        )
        return conn

    def post(self, sender: str, msg_id: int, to: str, **fields: Any) -> FakeSession:
        session = FakeSession(sender)
        self.messaging.post(session, message("post", id=msg_id, to=to, **fields))  # type: ignore[arg-type]
        return session

    def deliver(self, uri: str, conn: FakeConnection) -> None:
        session = FakeSession(uri)
        for sent in list(conn.sent):
            if sent.type == "message":
                self.messaging.delivered(session, message("delivered", message=sent["message"]))  # type: ignore[arg-type]

    def invite(self) -> SessionTable:
        parties = FakeParties()
        parties.online = {"tel:+1": Att("tel:+1"), "tel:+2": Att("tel:+2")}
        ids = (f"s{i}" for i in itertools.count(1))
        table = SessionTable(
            parties,
            FakeRelay(),
            self.clock,
            self.state.trace,
            lambda: next(ids),
            on_invite=self.stats.on_invite,
        )
        table.invite(Att("tel:+1"), 1, "tel:+2", b"m")
        table.invite(Att("tel:+1"), 2, "tel:+9", b"m")  # not placed: not counted
        table.stop()
        return table


class StatsTests(_World):
    """``stats`` over AMP in memory, fed by messaging, calls and attaches."""

    def test_disabled_by_default(self) -> None:
        """Nothing is counted for an account that was never enabled."""
        self.attach("tel:+1", period_of(NOW))
        self.post("tel:+1", 1, "tel:+2", content=b"hi")
        self.invite()
        self.assertEqual(self.export(), [])
        self.assertEqual([k for k in self.redis.hashes if k.startswith("stats:")], [])

    def test_failed_count_answers_nothing_more(self) -> None:
        """
        A count that fails after a post was stored (or a delivery settled)
        is logged; the sender gets its one ``posted`` and no error after it.
        """
        self.call(crs_admin.StatsEnable, account="acme")
        conn = self.attach("tel:+2", period_of(NOW))

        async def broken(*args: Any) -> None:
            raise RedisNotConnected("redis_low: not connected")

        self.patch(self.stats, "message_posted", broken)
        self.patch(self.stats, "message_delivered", broken)
        with capturedLogs() as events:
            session = self.post("tel:+1", 7, "tel:+2", content=b"hi")
            self.deliver("tel:+2", conn)
        self.assertEqual([m.type for m in session.sent], ["posted"])
        self.assertEqual(self.messages.messages, {})
        self.assertEqual(sum("was not counted" in (e.get("log_format") or "") for e in events), 2)

    def test_may_count_without_round_trip(self) -> None:
        """``may_count`` says no only while the cached enabled set is fresh and lacks
        the account; an enable, or the cache growing stale, makes it ask again."""
        self.assertTrue(self.stats.may_count("acme"))  # nothing cached yet
        self.assertFalse(self.successResultOf(ensureDeferred(self.stats.enabled("acme"))))
        self.assertFalse(self.stats.may_count("acme"))
        self.assertFalse(self.stats.may_count(""))
        self.clock.advance(5)
        self.assertTrue(self.stats.may_count("acme"))
        self.call(crs_admin.StatsEnable, account="acme")
        self.assertTrue(self.stats.may_count("acme"))

    def test_counts_and_export(self) -> None:
        """Calls, messages and system messages are counted per URI; acks are not."""
        self.assertEqual(self.call(crs_admin.StatsEnable, account="acme"), {})
        one = self.attach("tel:+1", period_of(NOW))
        two = self.attach("tel:+2", "2026-12")
        self.invite()
        self.post("tel:+1", 1, "tel:+2", content=b"hi")
        self.post("tel:+1", 2, "tel:+2", content=b"group", system=True)
        self.post("tel:+2", 3, "tel:+1", ack="m1")
        self.deliver("tel:+2", two)
        self.deliver("tel:+1", one)
        self.assertEqual(
            self.export(),
            [
                ["tel:+1", "1", "0", "1", "0", "1", "0", "yes"],
                ["tel:+2", "0", "1", "0", "1", "0", "1", "no"],
            ],
        )

    def test_disable_keeps_clear_forgets(self) -> None:
        """disable stops counting and keeps the figures; clear forgets them."""
        self.call(crs_admin.StatsEnable, account="acme")
        self.post("tel:+1", 1, "tel:+2", content=b"a")
        self.call(crs_admin.StatsDisable, account="acme")
        self.post("tel:+1", 2, "tel:+2", content=b"b")
        self.assertEqual(self.export(), [["tel:+1", "0", "0", "1", "0", "0", "0", "no"]])
        self.assertEqual(self.call(crs_admin.StatsClear, account="acme"), {"cleared": 1})
        self.assertEqual(self.export(), [])
        self.assertNotIn(stats_key("acme", "tel:+1"), self.redis.hashes)

    def test_unknown_account_refused(self) -> None:
        """stats on an unknown or invalid account is refused by name."""
        for command in (crs_admin.StatsEnable, crs_admin.StatsExport, crs_admin.StatsClear):
            result = self.call(command, account="nope")
            self.assertTrue(result.check(CommandFailed), command)
            self.assertIn("no account nope", result.getErrorMessage())
        self.assertTrue(self.call(crs_admin.StatsDisable, account="bad id").check(CommandFailed))

    def test_not_available(self) -> None:
        """A CRS without statistics refuses the stats commands clearly."""
        self.state.stats = None
        result = self.call(crs_admin.StatsEnable, account="acme")
        self.assertIn("not available", result.getErrorMessage())

    def test_other_accounts_not_counted(self) -> None:
        """Only the enabled account's clients are counted."""
        self.call(crs_admin.CreateAccount, account="other", secret=SECRET)
        self.call(crs_admin.StatsEnable, account="other")
        self.post("tel:+1", 1, "tel:+2", content=b"a")
        self.assertEqual(self.export("other"), [])

    def test_attach_period_updated(self) -> None:
        """updated is yes for a client that attached with this month's key, else no."""
        self.call(crs_admin.StatsEnable, account="acme")
        self.attach("tel:+1", period_of(NOW))
        self.assertEqual(self.export()[0][-1], "yes")
        self.clock.advance(40 * 24 * 3600)
        self.assertEqual(self.export()[0][-1], "no")

    def test_hook_failure_does_not_break_calls(self) -> None:
        """An on_invite hook that raises does not stop the call."""

        def broken(caller: Any, callee: Any) -> None:
            raise RuntimeError("boom")

        parties = FakeParties()
        parties.online = {"tel:+1": Att("tel:+1"), "tel:+2": Att("tel:+2")}
        table = SessionTable(parties, FakeRelay(), self.clock, self.state.trace, on_invite=broken)
        table.invite(Att("tel:+1"), 1, "tel:+2", b"m")
        self.assertEqual(len(table.sessions), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        table.stop()


class SystemMessageTests(_World):
    """System messages are their own kind, delivered marked as such."""

    def test_system_message_delivered_marked(self) -> None:
        """A system post is stored as kind system and delivered with system: true."""
        t = self
        conn = t.attach("tel:+2")
        sender = t.post("tel:+1", 1, "tel:+2", content=b"group", system=True)
        self.assertEqual(sender.sent[0].type, "posted")
        [stored] = t.messages.messages.values()
        self.assertEqual(stored.kind, "system")
        [delivered] = [m for m in conn.sent if m.type == "message"]
        self.assertIs(delivered["system"], True)
        self.assertEqual(delivered["content"], b"group")
        origin = t.attach("tel:+1")
        t.deliver("tel:+2", conn)
        self.assertEqual([m.type for m in origin.sent], ["delivered"])

    def test_content_not_marked(self) -> None:
        """An ordinary message carries no system field."""
        t = self
        conn = t.attach("tel:+2")
        t.post("tel:+1", 1, "tel:+2", content=b"hi")
        [delivered] = [m for m in conn.sent if m.type == "message"]
        self.assertIsNone(delivered.get("system"))

    def test_system_without_content_refused(self) -> None:
        """system: true on an ack is malformed."""
        t = self
        sender = t.post("tel:+1", 1, "tel:+2", ack="m1", system=True)
        [error] = sender.sent
        self.assertEqual((error.type, error["code"]), ("error", "malformed"))


class CliTests(SynchronousTestCase):
    """``crs-cli stats`` parses and prints as the manual says."""

    def run_action(self, argv: list[str], answer: dict[str, Any]) -> tuple[str, list[Any]]:
        out, err = io.StringIO(), io.StringIO()
        args: argparse.Namespace = cli.build_parser(err).parse_args(argv)
        calls: list[Any] = []

        class Client:
            async def call(self, command: Any, **kwargs: Any) -> dict[str, Any]:
                calls.append((command, kwargs))
                return answer

        status = self.successResultOf(ensureDeferred(cli.remote_action(args, out, err)(Client())))
        self.assertEqual(status, 0)
        return out.getvalue(), calls

    def test_export_tab_separated(self) -> None:
        """stats export prints a header line, then one tab-separated line per URI."""
        row = ["tel:+1", "1", "0", "2", "0", "0", "0", "yes"]
        text, calls = self.run_action(
            ["stats", "export", "acme"], {"table": {"columns": list(COLUMNS), "rows": [row]}}
        )
        self.assertEqual(calls, [(crs_admin.StatsExport, {"account": "acme"})])
        self.assertEqual(text, "\t".join(COLUMNS) + "\n" + "\t".join(row) + "\n")

    def test_enable_disable_clear(self) -> None:
        """enable, disable and clear each send their command for the account."""
        for op, command, answer in (
            ("enable", crs_admin.StatsEnable, {}),
            ("disable", crs_admin.StatsDisable, {}),
            ("clear", crs_admin.StatsClear, {"cleared": 2}),
        ):
            text, calls = self.run_action(["stats", op, "acme"], answer)
            self.assertEqual(calls, [(command, {"account": "acme"})])
            self.assertIn("acme", text)

    def test_usage(self) -> None:
        """stats without an account is a usage error."""
        self.assertNotEqual(cli.run(["stats", "export"], io.StringIO(), io.StringIO()), 0)
