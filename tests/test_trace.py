"""Tests for cryptify.crs.trace: trace lines and the trace event feed."""

from __future__ import annotations

import io
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger, LogPublisher
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.operator import cli
from cryptify.crs.trace import EventTraceObserver, TraceHub


class TraceHubTests(SynchronousTestCase):
    def test_line_layout_and_sanitising(self) -> None:
        """Fields are comma-separated; client commas and control characters cannot split a line."""
        clock = Clock()
        hub = TraceHub(clock.seconds)
        lines: list[str] = []
        hub.subscribe("message", lines.append)
        hub.emit("message", "tel:+1", "tel:+2,x", "posted content", "acme", "id\n1")
        self.assertEqual(
            lines,
            ["message, 1970-01-01 00:00:00.000, tel:+1, tel:+2;x, posted content, acme, id?1"],
        )

    def test_unsubscribe(self) -> None:
        """After unsubscribing nothing more arrives, and emitting costs nothing."""
        hub = TraceHub(Clock().seconds)
        lines: list[str] = []
        stop = hub.subscribe("attach", lines.append)
        stop()
        hub.emit("attach", "x")
        self.assertEqual(lines, [])
        self.assertFalse(hub.active("attach"))

    def test_unknown_element(self) -> None:
        """Only the manual's elements can be traced."""
        self.assertRaises(ValueError, TraceHub().subscribe, "bogus", print)


class EventTraceTests(SynchronousTestCase):
    def test_our_log_events_feed_trace_event(self) -> None:
        """trace event shows our modules' log lines as Module, dbg, Time, Information."""
        clock = Clock()
        hub = TraceHub(clock.seconds)
        publisher = LogPublisher()
        publisher.addObserver(EventTraceObserver(hub))
        lines: list[str] = []
        Logger(namespace="cryptify.crs.attach", observer=publisher).info("first {n}", n=1)
        hub.subscribe("event", lines.append)
        Logger(namespace="cryptify.crs.attach", observer=publisher).info("hello {n}", n=2)
        Logger(namespace="twisted.web", observer=publisher).info("not ours")
        Logger(namespace="cryptify.cig.calls", observer=publisher).info(
            "record", log_file="session.log"
        )
        self.assertEqual(lines, ["attach, dbg, 1970-01-01 00:00:00.000, hello 2"])


class TraceCliTests(SynchronousTestCase):
    """``crs-cli trace``: how the trace action ends."""

    def run_trace(self, interrupted: bool) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        args = cli.build_parser(err).parse_args(["trace", "session"])

        class Client:
            lost: defer.Deferred[None] = defer.succeed(None)

            async def call(self, command: Any, **kwargs: Any) -> dict[str, Any]:
                return {}

        action = cli.remote_action(args, out, err, lambda: interrupted)
        status = self.successResultOf(defer.ensureDeferred(action(Client())))
        return status, err.getvalue()

    def test_ctrl_c_ends_quietly(self) -> None:
        """Stopped by the operator, the trace exits 0 without blaming the CRS."""
        self.assertEqual(self.run_trace(True), (0, ""))

    def test_server_closing_is_reported(self) -> None:
        """Closed by the CRS, the trace says so and exits 1."""
        self.assertEqual(self.run_trace(False), (1, "crs-cli: the CRS closed the trace\n"))
