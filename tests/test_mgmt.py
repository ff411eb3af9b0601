"""Tests for the management channel: gating, cookies, tables, CLI output."""

from __future__ import annotations

import io
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.operator.admin import CigAdmin
from cryptify.cig.operator.state import CigState
from cryptify.cookie import CookieError, ensure_cookie, read_cookie
from cryptify.crs.operator.admin import CrsAdmin
from cryptify.crs.operator.state import CrsState
from cryptify.protocols import cig_admin, crs_admin
from cryptify.protocols.amp_calls import AnswerError
from cryptify.protocols.mgmt import (
    AUTH_TIMEOUT,
    LOG_EVERY,
    MAX_PER_SOURCE,
    Authenticate,
    BadCookie,
    JsonValue,
    ManagementClient,
    ManagementFactory,
    NotAuthenticated,
)
from cryptify.tools.mgmtcli import printable, render_table, write_table
from tests.fakes import call, pair


class GateTests(SynchronousTestCase):
    def locator(self) -> CrsAdmin:
        return CrsAdmin(CrsState("crs1", {"crs": lambda: True, "crs_relay": lambda: False}))

    def test_unix_socket_needs_no_cookie(self) -> None:
        """On the UNIX socket (no cookie configured) commands are answered at once."""
        _, client, pump = pair(self.locator())
        d = client.callRemote(crs_admin.ShowServices)
        pump.flush()
        table = self.successResultOf(d)["table"]
        self.assertEqual(table["columns"], ["Server", "Service", "Status"])
        self.assertEqual(
            table["rows"], [["crs1", "crs", "active"], ["crs1", "crs_relay", "inactive"]]
        )

    def test_tcp_refuses_before_cookie(self) -> None:
        """With a cookie configured, commands before Authenticate are refused."""
        _, client, pump = pair(self.locator(), cookie="s3cret")
        result = call(client, pump, crs_admin.ServerVersion)
        self.assertTrue(result.check(NotAuthenticated))

    def test_right_cookie_opens(self) -> None:
        """The right cookie opens the connection for every command."""
        from cryptify.protocols.mgmt import Authenticate

        _, client, pump = pair(self.locator(), cookie="s3cret")
        self.assertEqual(call(client, pump, Authenticate, cookie="s3cret"), {})
        self.assertEqual(call(client, pump, crs_admin.Echo, text="hi")["text"], "hi")

    def test_wrong_cookie_closes(self) -> None:
        """A wrong cookie is refused and the connection closed."""
        from cryptify.protocols.mgmt import Authenticate

        _, client, pump = pair(self.locator(), cookie="s3cret")
        result = call(client, pump, Authenticate, cookie="guess")
        self.assertTrue(result.check(BadCookie))
        self.assertTrue(client.lost.called)


class LimitTests(SynchronousTestCase):
    """
    TCP management connections: a deadline to authenticate, a cap per
    source address.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = ManagementFactory(
            lambda proto: CigAdmin(CigState("127.0.0.1", "0.0.0.0")), "s3cret", self.clock
        )

    def connect(self, host: str = "127.0.0.1") -> tuple[Any, StringTransport]:
        address = IPv4Address("TCP", host, 40000)
        proto = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        if proto is not None:
            proto.makeConnection(transport)
        return proto, transport

    def test_unauthenticated_closed(self) -> None:
        """
        A TCP connection that has not presented the cookie within
        AUTH_TIMEOUT seconds is closed; one that has is kept however long
        it stays quiet (a running trace).
        """
        idle, idle_transport = self.connect()
        _, client, pump = pair_with(self.factory)
        self.assertEqual(call(client, pump, Authenticate, cookie="s3cret"), {})
        self.clock.advance(AUTH_TIMEOUT - 0.1)
        self.assertFalse(idle_transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(idle_transport.disconnecting)
        self.clock.advance(3600)
        pump.flush()
        self.assertFalse(client.lost.called)
        self.assertEqual(call(client, pump, cig_admin.Echo, text="hi")["text"], "hi")
        idle.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cap_per_source(self) -> None:
        """
        MAX_PER_SOURCE connections from one address are taken, the next is
        refused as it is accepted; another address is not affected; a
        closed connection makes room.
        """
        protos = [self.connect()[0] for _ in range(MAX_PER_SOURCE)]
        self.assertNotIn(None, protos)
        self.assertIsNone(self.connect()[0])
        self.assertIsNotNone(self.connect("127.0.0.2")[0])
        protos[0].connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(self.connect()[0])
        self.assertIsNone(self.connect()[0])
        self.clock.advance(AUTH_TIMEOUT)

    def test_refusals_logged_once_a_minute(self) -> None:
        """Refusals are logged once per kind per minute, with a count."""
        lines: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(lines.append)
        self.addCleanup(globalLogPublisher.removeObserver, lines.append)
        for _ in range(MAX_PER_SOURCE + 50):
            self.connect()
        self.clock.advance(LOG_EVERY)
        self.connect()
        mine = [e for e in lines if str(e.get("why", "")).startswith("more than")]
        self.assertEqual([e["since"] for e in mine], [0, 49])
        self.clock.advance(AUTH_TIMEOUT)


def pair_with(factory: ManagementFactory) -> tuple[Any, Any, Any]:
    server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
    client = ManagementClient()
    pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client))
    return server, client, pump


class TableTests(SynchronousTestCase):
    def test_large_table_round_trips(self) -> None:
        """A table far over AMP's 64 KiB value limit travels intact."""
        rows = [[f"tel:+46{i:09d}", "acct", str(i)] for i in range(20000)]
        value = {"columns": ["URI", "ACCOUNT", "TIME"], "rows": rows}
        arg = JsonValue()
        strings: dict[bytes, Any] = {}
        arg.toBox(b"table", strings, {"table": value}, None)
        self.assertTrue(all(len(v) <= 0xFFFF for v in strings.values()))
        self.assertGreater(len(strings), 2)
        objects: dict[str, Any] = {}
        arg.fromBox(b"table", strings, objects, None)
        self.assertEqual(objects["table"], value)

    def test_malformed_chunks_refused(self) -> None:
        """Missing or absurd chunk counts are a MalformedAmpBox, not a crash."""
        arg = JsonValue()
        for strings in ({}, {b"t": b"x"}, {b"t": b"0"}, {b"t": b"2", b"t.1": b"[]"}):
            self.assertRaises(amp.MalformedAmpBox, arg.fromBox, b"t", strings, {}, None)

    @settings(max_examples=100)
    @given(st.lists(st.lists(st.text(max_size=20), min_size=3, max_size=3), max_size=30))
    def test_render_aligns(self, rows: list[list[str]]) -> None:
        """Every printed row starts each column at the same offset as the header."""
        text = render_table(["A", "B", "C"], rows)
        lines = text.split("\n")[:-1]
        self.assertEqual(len(lines), len(rows) + 1)
        self.assertTrue(all(line.isprintable() for line in lines))
        offset = lines[0].index("B")
        for line, row in zip(lines[1:], rows, strict=True):
            # the first cell, padded, then two spaces: B starts where the header's does
            expected = printable(row[0]).ljust(offset - 2) + "  "
            self.assertEqual(line.ljust(offset)[:offset], expected)

    def test_answer_without_a_table_is_refused(self) -> None:
        """An answer whose table is not columns and rows of lists is an
        AnswerError naming it, not a crash while printing."""
        for answer in (
            {},
            {"table": "x"},
            {"table": {"columns": ["A"]}},
            {"table": {"columns": ["A"], "rows": ["not a row"]}},
        ):
            out = io.StringIO()
            self.assertRaises(AnswerError, write_table, out, answer)
            self.assertEqual(out.getvalue(), "")
        out = io.StringIO()
        write_table(out, {"table": {"columns": ["A"], "rows": [["1"]]}})
        self.assertEqual(out.getvalue(), "A\n1\n")


class CigAdminTests(SynchronousTestCase):
    def test_status_sections(self) -> None:
        """status reports relay, UMSG and SIP sections as the manual lays them out."""
        state = CigState(crs_address="192.0.2.1:5223", sip_bind="192.0.2.2")
        state.relay_connected = lambda: True
        _, client, pump = pair(CigAdmin(state))
        d = client.callRemote(cig_admin.Status)
        pump.flush()
        status = self.successResultOf(d)["status"]
        from cryptify.cig.operator.cli import render_status

        text = render_status(status)
        self.assertIn("Relay connection state    CONNECTED", text)
        self.assertIn("Crypto engines available  0/1", text)
        self.assertIn("CRS Address               192.0.2.1:5223", text)
        self.assertIn("Connection state          DISCONNECTED", text)
        self.assertIn("SIP Bind address          192.0.2.2", text)

    def test_status_answer_of_another_shape_is_refused(self) -> None:
        """A status answer that is not a title and sections of labelled lines
        is an AnswerError, not a crash while printing."""
        from cryptify.cig.operator.cli import render_status

        for status in (
            "x",
            {"title": "t"},
            {"sections": [["only a heading"]]},
            {"sections": [["", "not lines"]]},
            {"sections": [["", [["label"]]]]},
        ):
            self.assertRaises(AnswerError, render_status, status)
        self.assertEqual(render_status({"title": "t", "sections": []}), "t\n")

    def test_show_call_header(self) -> None:
        """show call has the manual's columns, then SOURCE (where each call came from)."""
        _, client, pump = pair(CigAdmin(CigState("a", "b")))
        d = client.callRemote(cig_admin.ShowCall)
        pump.flush()
        self.assertEqual(
            self.successResultOf(d)["table"]["columns"],
            ["IN-FROM", "IN-TO", "OUT-FROM", "OUT-TO", "STATE", "SOURCE"],
        )


class CookieTests(SynchronousTestCase):
    def test_created_private(self) -> None:
        """A new cookie file is 0640 and read back the same."""
        path = os.path.join(self.mktemp(), "mgmt.cookie")
        cookie = ensure_cookie(path)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o640)
        self.assertEqual(read_cookie(path), cookie)
        self.assertEqual(ensure_cookie(path), cookie)

    def test_world_readable_refused(self) -> None:
        """A cookie file others can read is refused, not used."""
        path = os.path.join(self.mktemp(), "mgmt.cookie")
        ensure_cookie(path)
        os.chmod(path, 0o644)
        self.assertRaises(CookieError, read_cookie, path)

    def test_missing(self) -> None:
        """A missing cookie file names the path."""
        exc = self.assertRaises(CookieError, read_cookie, "/nonexistent/cookie")
        self.assertIn("/nonexistent/cookie", str(exc))


class CliTests(SynchronousTestCase):
    def run_crs(self, *argv: str) -> tuple[int, str, str]:
        from cryptify.crs.operator.cli import run

        out, err = io.StringIO(), io.StringIO()
        return run(list(argv), out, err), out.getvalue(), err.getvalue()

    def run_cig(self, *argv: str) -> tuple[int, str, str]:
        from cryptify.cig.operator.cli import run

        out, err = io.StringIO(), io.StringIO()
        return run(list(argv), out, err), out.getvalue(), err.getvalue()

    def test_crs_bad_arguments(self) -> None:
        """Unknown actions and bad options print usage and exit 2."""
        for argv in (
            ["bogus"],
            ["show"],
            ["show", "nothing"],
            ["create", "sharedSecret", "-B", "x"],
            ["create", "sharedSecret", "-b", "8", "-B", "1"],
        ):
            status, _, err = self.run_crs(*argv)
            self.assertEqual(status, 2, argv)
            self.assertIn("usage:", err)

    def test_shared_secret_sizes(self) -> None:
        """create sharedSecret gives 128 bits by default, -B n bytes, -b n bits rounded up."""
        import base64

        for argv, size in (
            (["create", "sharedSecret"], 16),
            (["create", "sharedSecret", "-B32"], 32),
            (["create", "sharedSecret", "-b", "9"], 2),
        ):
            status, out, _ = self.run_crs(*argv)
            self.assertEqual(status, 0)
            self.assertEqual(len(base64.b64decode(out.strip())), size)

    def test_help_and_version(self) -> None:
        """help lists the actions; version prints the CLI's version."""
        status, out, _ = self.run_crs("help")
        self.assertEqual(status, 0)
        self.assertIn("show version|services|attach", out)
        status, out, _ = self.run_crs("version")
        self.assertTrue(out.startswith("crs-cli "))

    def test_cig_help_and_usage(self) -> None:
        """cig-cli help prints the manual's list; unknown actions exit 2."""
        status, out, _ = self.run_cig("help")
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith("Cryptify Interconnect Gateway\n"))
        self.assertEqual(self.run_cig("frobnicate")[0], 2)
        self.assertEqual(self.run_cig("show", "calls")[0], 2)
        self.assertEqual(self.run_cig("read")[0], 2)

    def test_both_clis_check_config_alike(self) -> None:
        """
        crs-cli check-config and cig-cli read check a file the same way: OK
        and status 0 for a good one; for a broken one the FILE:LINE place on
        stderr and status 1; a missing one is named, with status 1.
        """
        directory = self.mktemp()
        os.mkdir(directory)

        def write(name: str, text: str) -> str:
            path = os.path.join(directory, name)
            with open(path, "w") as f:
                f.write(text)
            return path

        cases = (
            (self.run_crs, "crs-cli", "check-config", "[GLOBAL]\nkey k\n", "[GLOBAL]\nlisten x\n"),
            (self.run_cig, "cig-cli", "read", 'notify "/x";\n', "interfaces {\n  bogus;\n}\n"),
        )
        for run, prog, action, good, bad in cases:
            self.assertEqual(run(action, write(f"{prog}-good", good)), (0, "OK\n", ""))
            bad_path = write(f"{prog}-bad", bad)
            status, out, err = run(action, bad_path)
            self.assertEqual((status, out), (1, ""), prog)
            self.assertTrue(err.startswith(f"{bad_path}:2:"), err)
            missing = os.path.join(directory, "missing.conf")
            status, out, err = run(action, missing)
            self.assertEqual((status, out), (1, ""), prog)
            self.assertIn(f"{missing}", err)
            self.assertIn("No such file or directory", err)

    def test_write_table(self) -> None:
        """
        Both CLIs print a management answer's table through write_table: the
        rendered columns and rows, status 0.
        """
        out = io.StringIO()
        answer = {"table": {"columns": ["A", "B"], "rows": [["1", "two"]]}}
        self.assertEqual(write_table(out, answer), 0)
        self.assertEqual(out.getvalue(), render_table(["A", "B"], [["1", "two"]]))
