"""Tests for cryptify.service: ordered stop, clear bind failures."""

from __future__ import annotations

import errno

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.trial.unittest import SynchronousTestCase

from cryptify.service import (
    ListenService,
    ProgramService,
    SequentialMultiService,
    StartupError,
)


class Recorder(service.Service):
    def __init__(self, name: str, log: list[str]) -> None:
        self.setName(name)
        self.log = log
        self.pending: defer.Deferred[None] | None = None

    def startService(self) -> None:
        service.Service.startService(self)
        self.log.append(f"start {self.name}")

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        self.log.append(f"stop {self.name}")
        self.pending = defer.Deferred()
        return self.pending


class SequentialTests(SynchronousTestCase):
    def test_stops_in_reverse_one_at_a_time(self) -> None:
        """Each child stops only after the one started after it has drained."""
        log: list[str] = []
        parent = SequentialMultiService()
        children = [Recorder(n, log) for n in ("redis", "store", "listener")]
        for child in children:
            child.setServiceParent(parent)
        parent.startService()
        done = parent.stopService()
        self.assertEqual(log[-1], "stop listener")
        assert children[2].pending is not None
        children[2].pending.callback(None)
        self.assertEqual(log[-1], "stop store")
        assert children[1].pending is not None
        children[1].pending.callback(None)
        self.assertEqual(log[-1], "stop redis")
        self.assertNoResult(done)
        assert children[0].pending is not None
        children[0].pending.callback(None)
        self.successResultOf(done)


def busy(what: str) -> CannotListenError:
    return CannotListenError("127.0.0.1", 5223, OSError(errno.EADDRINUSE, "Address in use"))


class ListenTests(SynchronousTestCase):
    def test_bind_failure_is_clear(self) -> None:
        """A taken port stops start-up with a StartupError naming what and where."""

        def listen() -> object:
            raise busy("x")

        svc = ListenService("client TLS", "127.0.0.1:5223", listen)  # type: ignore[arg-type]
        exc = self.assertRaises(StartupError, svc.startService)
        self.assertEqual(str(exc), "cannot listen on 127.0.0.1:5223 (client TLS): Address in use")

    def test_program_exits_with_one_line(self) -> None:
        """The program root turns a StartupError into SystemExit(1)."""

        def listen() -> object:
            raise busy("x")

        root = ProgramService("crs")
        ListenService("client TLS", "127.0.0.1:5223", listen).setServiceParent(root)  # type: ignore[arg-type]
        exc = self.assertRaises(SystemExit, root.privilegedStartService)
        self.assertEqual(exc.code, 1)
        self.flushLoggedErrors()

    def test_binds_once(self) -> None:
        """Binding in privilegedStartService is not repeated by startService."""
        calls: list[int] = []

        class Port:
            def stopListening(self) -> None:
                calls.append(-1)

        def listen() -> Port:
            calls.append(1)
            return Port()

        svc = ListenService("x", "y", listen)  # type: ignore[arg-type]
        svc.privilegedStartService()
        svc.startService()
        self.assertEqual(calls, [1])
        svc.stopService()
        self.assertEqual(calls, [1, -1])
