"""
What the TLS-PSK interop tests share: waiting on the running reactor for a
condition, and an ``openssl s_client`` process fed on stdin (its exit code
and output kept).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

#: Ceiling on every wait for an event (the machine is shared and slow).
CEILING = 45.0


async def until(check: Callable[[], bool], what: str, ceiling: float = CEILING) -> None:
    """Wait until C{check()} holds (polled every 0.1 s); fail after C{ceiling}."""
    deadline = reactor.seconds() + ceiling  # type: ignore[attr-defined]
    while not check():
        if reactor.seconds() > deadline:  # type: ignore[attr-defined]
            raise AssertionError(f"timed out waiting for {what}")
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(0.1, d.callback, None)  # type: ignore[attr-defined]
        await d


class OpensslProcess(ProcessProtocol):
    """A process given ``stdin`` at start; ``ended`` fires with its exit code."""

    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.output = b""
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.running = True

    def connectionMade(self) -> None:
        self.transport.write(self.stdin)  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        value: Any = reason.value
        if reason.check(ProcessDone):
            self.ended.callback(0)
        elif reason.check(ProcessTerminated):
            self.ended.callback(value.exitCode if value.exitCode is not None else -1)
        else:
            self.ended.errback(reason)
