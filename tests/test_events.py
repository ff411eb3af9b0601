"""Tests for cryptify.events: notify.sh is run serially, time-limited, never blocking."""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cryptify.events import MAX_PENDING, Notifier


class FakeTransport:
    def __init__(self, owner: FakeProcessReactor, proto: Any, args: list[str]) -> None:
        self.owner = owner
        self.proto = proto
        self.args = args
        self.signals: list[str] = []

    def signalProcess(self, sig: str) -> None:
        self.signals.append(sig)

    def end(self, code: int = 0) -> None:
        reason = error.ProcessDone(0) if code == 0 else error.ProcessTerminated(code)
        self.proto.processEnded(Failure(reason))


class FakeProcessReactor(Clock):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.spawned: list[FakeTransport] = []
        self.fail = fail

    def spawnProcess(self, proto: Any, executable: str, args: list[str], **kw: Any) -> Any:
        if self.fail:
            raise OSError(2, "No such file or directory")
        transport = FakeTransport(self, proto, args)
        self.spawned.append(transport)
        proto.makeConnection(transport)
        return transport


class NotifierTests(SynchronousTestCase):
    def test_runs_script_with_unit_and_event(self) -> None:
        """notify(UNIT, EVENT) runs SCRIPT UNIT EVENT."""
        reactor = FakeProcessReactor()
        notifier = Notifier(reactor, "/opt/crs/scripts/notify.sh")
        notifier.notify("redis_low", "down")
        self.assertEqual(
            reactor.spawned[0].args, ["/opt/crs/scripts/notify.sh", "redis_low", "down"]
        )
        reactor.spawned[0].end()
        self.assertTrue(notifier.idle)
        self.assertEqual(notifier.delivered, 1)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_serial_in_order(self) -> None:
        """Events are delivered one at a time, in the order they happened."""
        reactor = FakeProcessReactor()
        notifier = Notifier(reactor, "notify.sh")
        notifier.notify("redis_low", "down")
        notifier.notify("redis_low", "up")
        self.assertEqual(len(reactor.spawned), 1)
        reactor.spawned[0].end()
        self.assertEqual(reactor.spawned[1].args[1:], ["redis_low", "up"])
        reactor.spawned[1].end()
        self.assertTrue(notifier.idle)

    def test_hanging_script_is_killed(self) -> None:
        """A script over its time limit is killed and the next event still runs."""
        reactor = FakeProcessReactor()
        notifier = Notifier(reactor, "notify.sh", timeout=5)
        notifier.notify("crs", "start")
        notifier.notify("crs", "stop")
        reactor.advance(5)
        self.assertEqual(reactor.spawned[0].signals, ["KILL"])
        reactor.spawned[0].end(code=9)
        self.assertEqual(notifier.failed, 1)
        self.assertEqual(len(reactor.spawned), 2)
        reactor.spawned[1].end()
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_failing_script_logged_not_raised(self) -> None:
        """A script that exits non-zero is counted and logged; notify never raises."""
        reactor = FakeProcessReactor()
        notifier = Notifier(reactor, "notify.sh")
        notifier.notify("crs", "start")
        reactor.spawned[0].end(code=3)
        self.assertEqual(notifier.failed, 1)
        self.assertTrue(notifier.idle)

    def test_missing_script(self) -> None:
        """A script that cannot be started is logged and skipped."""
        reactor = FakeProcessReactor(fail=True)
        notifier = Notifier(reactor, "/nonexistent")
        notifier.notify("crs", "start")
        notifier.notify("crs", "stop")
        self.assertEqual(notifier.failed, 2)
        self.assertTrue(notifier.idle)

    def test_backlog_bounded(self) -> None:
        """Behind a hung script, at most MAX_PENDING events wait; the oldest are dropped."""
        reactor = FakeProcessReactor()
        notifier = Notifier(reactor, "notify.sh")
        for i in range(MAX_PENDING + 10):
            notifier.notify("crs", f"e{i}")
        self.assertEqual(len(notifier.pending), MAX_PENDING)
        self.assertEqual(notifier.pending[-1], ("crs", f"e{MAX_PENDING + 9}"))

    def test_no_script(self) -> None:
        """Without a script, events are only logged."""
        reactor = FakeProcessReactor()
        Notifier(reactor, None).notify("crs", "start")
        self.assertEqual(reactor.spawned, [])
