"""What ``crs-cli`` and ``cig-cli`` share: reaching the server, printing tables.

A CLI action that needs the running server is an ``async`` function of a
connected :class:`~cryptify.protocols.mgmt.ManagementClient`.  :func:`run_remote`
connects, runs it on the reactor and turns every way of failing into one
clear line and an exit status:

- 0: done;
- 1: the server answered with an error, or it cannot be reached;
- 2: bad arguments (argparse's own convention, kept).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import IO, Any, NoReturn

from twisted.internet import defer, error
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.protocols import amp
from twisted.python.failure import Failure

from cryptify.cookie import CookieError
from cryptify.protocols.amp_calls import AnswerError
from cryptify.protocols.mgmt import (
    BadCookie,
    CommandFailed,
    ManagementClient,
    NotAuthenticated,
    connect,
)
from cryptify.reactor import IReactor, global_reactor

#: Seconds to wait for the management socket to accept.
CONNECT_TIMEOUT = 5
#: Narrowest column in a printed table.
MIN_COLUMN = 8

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CliParser(argparse.ArgumentParser):
    """argparse that prints usage and exits 2 on bad arguments, to ``err``."""

    def __init__(self, *args: Any, err: IO[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.err = err

    def error(self, message: str) -> NoReturn:
        stream = self.err or sys.stderr
        self.print_usage(stream)
        stream.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def printable(value: object) -> str:
    """A cell as text with control characters shown as ``?``.

    Values in tables can come from clients (URIs, versions); a terminal
    must never receive their escape sequences or line breaks.
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def render_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to the widest cell, two spaces apart, one row per line."""
    cells = [[printable(c) for c in columns]] + [[printable(c) for c in row] for row in rows]
    widths = [
        max(MIN_COLUMN, *(len(row[i]) for row in cells if i < len(row)))
        for i in range(len(columns))
    ]
    lines = []
    for row in cells:
        padded = [cell.ljust(widths[i]) if i < len(widths) else cell for i, cell in enumerate(row)]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines) + "\n"


def write_table(out: IO[str], answer: Mapping[str, object]) -> int:
    """Print the table of a management answer (``{"table": {columns, rows}}``);
    L{AnswerError} when it holds no such table."""
    table = answer.get("table")
    columns = table.get("columns") if isinstance(table, dict) else None
    rows = table.get("rows") if isinstance(table, dict) else None
    if not isinstance(columns, list) or not isinstance(rows, list):
        raise AnswerError("the answer holds no table of columns and rows")
    if not all(isinstance(row, list) for row in rows):
        raise AnswerError("a row of the table is not a list")
    out.write(render_table([str(c) for c in columns], rows))
    return EXIT_OK


def check_config_file(
    load: Callable[[str], object], path: str, out: IO[str], err: IO[str], prog: str
) -> int:
    """
    The ``check-config`` action of both CLIs: validate a configuration file
    without applying it.  The problem (``FILE:LINE:COLUMN: ...``) goes to
    C{err} with status 1; otherwise its warnings, if the kind of file has
    any, go to C{err} and ``OK`` to C{out}.
    """
    from cryptify.config import ConfigError

    try:
        cfg = load(path)
    except ConfigError as exc:
        err.write(f"{exc}\n")
        return EXIT_FAILED
    except OSError as exc:
        err.write(f"{prog}: cannot read {path}: {exc.strerror}\n")
        return EXIT_FAILED
    warnings: Sequence[str] = getattr(cfg, "warnings", ())
    err.writelines(f"{warning}\n" for warning in warnings)
    out.write("OK\n")
    return EXIT_OK


def describe_connect_error(exc: BaseException) -> str:
    """A short reason for a failed management connection."""
    if isinstance(exc, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, error.TimeoutError):
        return "timed out"
    if isinstance(exc, error.ConnectError):
        code = getattr(exc, "osError", None)
        if isinstance(code, int):
            return os.strerror(code)
        return exc.args[-1] if exc.args and isinstance(exc.args[-1], str) else str(exc)
    return str(exc) or exc.__class__.__name__


Action = Callable[[ManagementClient], Awaitable[int]]


async def execute(
    endpoint: IStreamClientEndpoint,
    where: str,
    server: str,
    action: Action,
    err: IO[str],
    prog: str,
    cookie: Callable[[], str | None],
    on_trace: Callable[[str], None] | None,
) -> int:
    try:
        secret = cookie()
    except CookieError as exc:
        err.write(f"{prog}: {exc}\n")
        return EXIT_FAILED
    try:
        client = await connect(endpoint, secret, on_trace)
    except (error.ConnectError, error.TimeoutError, OSError) as exc:
        err.write(
            f"{prog}: cannot reach the {server} at {where}: {describe_connect_error(exc)}"
            f" (is the {server} service running?)\n"
        )
        return EXIT_FAILED
    except BadCookie:
        err.write(f"{prog}: the {server} refused the management cookie\n")
        return EXIT_FAILED
    try:
        return await action(client)
    except (CommandFailed, NotAuthenticated, BadCookie) as exc:
        err.write(f"{prog}: {exc}\n")
        return EXIT_FAILED
    except (error.ConnectionDone, error.ConnectionLost, amp.UnknownRemoteError) as exc:
        err.write(f"{prog}: the {server} closed the connection: {exc}\n")
        return EXIT_FAILED
    except AnswerError as exc:
        err.write(f"{prog}: the {server} answered what this {prog} cannot read: {exc}\n")
        return EXIT_FAILED
    finally:
        if client.transport is not None:
            client.transport.loseConnection()


def run_on_reactor(
    main: Callable[[IReactor], Coroutine[defer.Deferred[object], object, int]],
    err: IO[str],
    prog: str,
    interrupted: int = EXIT_FAILED,
    on_interrupt: Callable[[], None] | None = None,
) -> int:
    """Run ``main(reactor)`` on the global reactor; return its exit status.

    ``interrupted`` is the status when Ctrl-C stops the reactor first (a
    trace ends that way on purpose); ``on_interrupt`` is called then,
    before the reactor closes the connections, so that the action can
    tell its connection ending from the server closing it.
    """
    reactor = global_reactor()
    status: list[int] = []

    def go() -> None:
        d: defer.Deferred[int] = defer.ensureDeferred(main(reactor))

        def done(result: int | Failure) -> None:
            if isinstance(result, int):
                status.append(result)
            else:
                err.write(f"{prog}: internal error: {result.getErrorMessage()}\n")
                status.append(EXIT_FAILED)
            if reactor.running:
                reactor.stop()

        d.addBoth(done)

    stopped_early: list[bool] = []

    def before_shutdown() -> None:
        # Ctrl-C (or SIGTERM) before the action finished
        if not status:
            stopped_early.append(True)
            if on_interrupt is not None:
                on_interrupt()

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    reactor.callWhenRunning(go)
    reactor.run()
    if stopped_early or not status:
        return interrupted
    return status[0]


def run_remote(
    make_endpoint: Callable[[IReactor], IStreamClientEndpoint],
    where: str,
    server: str,
    action: Action,
    err: IO[str],
    prog: str,
    cookie: Callable[[], str | None] = lambda: None,
    on_trace: Callable[[str], None] | None = None,
    interrupted: int = EXIT_FAILED,
    on_interrupt: Callable[[], None] | None = None,
) -> int:
    """Connect, run one remote action on the global reactor; return the exit status."""

    async def main(reactor: IReactor) -> int:
        return await execute(
            make_endpoint(reactor), where, server, action, err, prog, cookie, on_trace
        )

    return run_on_reactor(main, err, prog, interrupted, on_interrupt)
