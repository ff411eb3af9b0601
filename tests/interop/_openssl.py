"""
What the TLS-PSK interop tests share: waiting on the running reactor for a
condition, and an ``openssl s_client -psk`` process fed on stdin (its exit
code and output kept), killed at the test's cleanup.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

OPENSSL = shutil.which("openssl")
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


def s_client(case: TestCase, port: int, key: bytes, identity: str, stdin: bytes) -> OpensslProcess:
    """``openssl s_client`` to 127.0.0.1:``port`` with TLS-PSK ``key`` and
    ``identity``, given ``stdin``; killed at ``case``'s cleanup if still
    running.  Skips the test when there is no openssl binary."""
    if OPENSSL is None:
        raise SkipTest("the openssl command line tool is not installed")
    process = OpensslProcess(stdin)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    args = [
        OPENSSL,
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-psk",
        key.hex(),
        "-psk_identity",
        identity,
        "-quiet",
        "-no_ticket",
    ]
    transport = reactor.spawnProcess(process, OPENSSL, args, env=env)  # type: ignore[attr-defined]

    async def cleanup() -> None:
        if process.running:
            transport.signalProcess("KILL")
            await process.ended

    case.addCleanup(lambda: defer.Deferred.fromCoroutine(cleanup()))
    return process
