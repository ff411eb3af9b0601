"""Tests for cryptify.logs: the manuals' log line formats and routing."""

from __future__ import annotations

import os
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel, LogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cryptify import logs

WHEN = 1795462801.25  # 2026-11-23 19:40:01.250 UTC


def event(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "log_time": WHEN,
        "log_level": LogLevel.info,
        "log_namespace": "cryptify.crs.attach",
        "log_format": "client {uri} attached",
        "uri": "tel:+4670",
    }
    base.update(fields)
    return base


class FormatTests(SynchronousTestCase):
    def test_crs_format(self) -> None:
        """A crs.log line is [Time | Type | Module(PID) ] Information, in UTC."""
        line = logs.format_crs(event(), pid=4242)
        self.assertEqual(
            line, "[2026-11-23 19:40:01.250 | INFO | attach(4242) ] client tel:+4670 attached\n"
        )

    def test_cig_format(self) -> None:
        """A cig.log line is [Time] Module[Type]: Information."""
        line = logs.format_cig(event(log_namespace="cryptify.cig.route"))
        self.assertEqual(line, "[2026-11-23 19:40:01.250] route[INFO]: client tel:+4670 attached\n")

    def test_types(self) -> None:
        """Levels map onto the manuals' DEBUG/INFO/WARN; INIT is explicit."""
        self.assertEqual(logs.event_type(event(log_level=LogLevel.debug)), "DEBUG")
        self.assertEqual(logs.event_type(event(log_level=LogLevel.warn)), "WARN")
        self.assertEqual(logs.event_type(event(log_level=LogLevel.error)), "WARN")
        self.assertEqual(logs.event_type(event(log_level=LogLevel.critical)), "WARN")
        self.assertEqual(logs.event_type(event(log_type="INIT")), "INIT")

    def test_explicit_module(self) -> None:
        """log_module overrides the namespace's last component."""
        self.assertIn("| relay(1) ]", logs.format_crs(event(log_module="relay"), pid=1))

    def test_failure_indented(self) -> None:
        """A failure's traceback follows its line, indented, never breaking the format."""
        try:
            raise ValueError("boom")
        except ValueError:
            failure = Failure()
        line = logs.format_crs(event(log_failure=failure, log_level=LogLevel.error), pid=1)
        first, *rest = line.splitlines()
        self.assertIn("| WARN |", first)
        self.assertTrue(rest and all(r.startswith("    ") for r in rest))
        self.assertIn("ValueError: boom", line)

    @settings(max_examples=200)
    @given(value=st.text(max_size=40))
    def test_peer_values_stay_on_one_line(self, value: str) -> None:
        """
        A value a peer sent (here the URI) cannot split or forge a line in
        any format: its control characters are shown as escapes, printable
        text as it is.
        """
        rendered = [
            logs.format_crs(event(uri=value), pid=1),
            logs.format_cig(event(uri=value)),
            logs.format_plain(event(uri=value)),
            logs.crs_line("INFO", "attach", f"client {value} attached") + "\n",
        ]
        for line in rendered:
            self.assertEqual(line.count("\n"), 1, line)
            self.assertTrue(line.endswith("\n"))
            self.assertTrue(line[:-1].isprintable(), line)
            if value.isprintable():
                self.assertIn(f"client {value} attached", line)

    def test_forged_line_escaped(self) -> None:
        """A URI carrying a line break and a fake crs.log line shows as escapes."""
        line = logs.format_crs(event(uri="x\n[2026-11-23 | WARN | admin(1) ] root"), pid=7)
        self.assertEqual(
            line,
            "[2026-11-23 19:40:01.250 | INFO | attach(7) ] "
            "client x\\n[2026-11-23 | WARN | admin(1) ] root attached\n",
        )


class RoutingTests(SynchronousTestCase):
    def test_main_log_takes_ours_and_warnings(self) -> None:
        """The main log writes cryptify events and anyone's warnings, not others' chatter."""
        self.assertTrue(logs.wants_event(event(), "crs.log", main=True))
        other = event(log_namespace="twisted.web")
        self.assertFalse(logs.wants_event(other, "crs.log", main=True))
        self.assertTrue(
            logs.wants_event(dict(other, log_level=LogLevel.error), "crs.log", main=True)
        )

    def test_addressed_events(self) -> None:
        """An event with log_file goes only to that file."""
        record = event(log_file="session.log")
        self.assertTrue(logs.wants_event(record, "session.log", main=False))
        self.assertFalse(logs.wants_event(record, "cig.log", main=True))
        self.assertFalse(logs.wants_event(event(), "session.log", main=False))


class ServiceTests(SynchronousTestCase):
    def test_writes_file_while_running(self) -> None:
        """The service writes formatted lines into DIR/NAME and stops observing on stop."""
        directory = self.mktemp()
        publisher = LogPublisher()
        service = logs.LogFileService(directory, "crs.log", "crs", publisher=publisher)
        service.startService()
        publisher(event())
        service.stopService()
        publisher(event(uri="tel:+1"))
        with open(os.path.join(directory, "crs.log")) as f:
            text = f.read()
        self.assertEqual(len(text.splitlines()), 1)
        self.assertTrue(re.match(r"\[2026-11-23 19:40:01\.250 \| INFO \| attach\(\d+\) \]", text))
        self.assertEqual(os.stat(directory).st_mode & 0o777, 0o750)

    def test_busy_lines_once_per_turn_in_order(self) -> None:
        """Lines of a LineSink reach the file at the end of the reactor turn,
        in one write; an event logged meanwhile comes after the lines made
        before it; stopping writes what is pending and stops observing."""
        from twisted.internet.task import Clock

        directory = self.mktemp()
        publisher = LogPublisher()
        clock = Clock()
        sink = logs.LineSink()
        service = logs.LogFileService(
            directory, "crs_relay.log", "crs", publisher=publisher, lines=sink, clock=clock
        )
        service.startService()
        path = os.path.join(directory, "crs_relay.log")

        def text() -> str:
            with open(path) as f:
                return f.read()

        sink.write(logs.crs_line("INFO", "relay", "Command add: session 1 () for crs1", WHEN))
        self.assertEqual(text(), "")
        clock.advance(0)
        self.assertEqual(
            text(),
            f"[2026-11-23 19:40:01.250 | INFO | relay({os.getpid()}) ] "
            "Command add: session 1 () for crs1\n",
        )
        sink.write("second")
        publisher(event())
        self.assertEqual(text().splitlines()[1], "second")
        self.assertIn("client tel:+4670 attached", text().splitlines()[2])
        sink.write("last")
        service.stopService()
        self.assertEqual(text().splitlines()[-1], "last")
        self.assertEqual(sink.observers, [])
        self.assertEqual(clock.getDelayedCalls(), [])
