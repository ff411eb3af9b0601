"""
Console-script entry points that behave like Unix tools.

Python ignores SIGPIPE, so a program whose reader has gone away
(``cryptify-kms ... | head -1``) gets C{BrokenPipeError} on its next write
and, left alone, ends with a traceback, or with "Exception ignored" when
the buffer is flushed at exit. A C program would be ended by SIGPIPE,
silently. L{console_main} gives every command of the project that
behaviour: when standard output's reader is gone, the program ends at
once, quietly, with status 141 (128 + SIGPIPE, what a shell reports for a
program SIGPIPE ended).

SIGPIPE itself is not restored to its default action: the network
programs write to sockets, where a peer that went away must stay an error
they report, not a silent death.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import IO, NoReturn, TextIO, cast

EXIT_SIGPIPE = 128 + signal.SIGPIPE
"""The exit status when standard output's reader has gone away."""

EXIT_SIGINT = 128 + signal.SIGINT
"""The exit status after Ctrl-C that the command did not handle itself."""


def reader_gone() -> NoReturn:
    """
    End the program now, quietly, as SIGPIPE would have.

    Standard output is pointed at C{/dev/null} first, so nothing buffered
    can fail again on the way out.
    """
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
    except OSError:
        pass
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(EXIT_SIGPIPE)


class QuietStdout:
    """
    Standard output, except that a reader gone away ends the program quietly
    (through L{reader_gone}) instead of raising C{BrokenPipeError}.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            reader_gone()

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            reader_gone()

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def console_main(run: Callable[[IO[str]], int]) -> NoReturn:
    """
    Run a command's C{run(stdout)} and exit with the status it returns.

    C{sys.stdout} and the stream handed to C{run} are both wrapped in
    L{QuietStdout}; what is still buffered is flushed before the exit, even
    when C{run} exits by itself (C{SystemExit}). Ctrl-C that the command
    does not handle itself (during start-up, say) ends it quietly with
    status 130, as the shell reports for a program SIGINT ended.
    """
    # a text stream to its users: it forwards what it does not define itself
    out = cast(TextIO, QuietStdout(sys.stdout))
    sys.stdout = out
    try:
        status = run(out)
    except KeyboardInterrupt:
        status = EXIT_SIGINT
    finally:
        out.flush()
    sys.exit(status)
