"""``cig-cli``: the operator's command line for a running CIG.

Direct mode runs one action and exits (``cig-cli show call``); with no
action it is interactive, reading actions after a ``cig-cli$`` prompt until
``quit`` or end of input.

The CIG listens for management on 127.0.0.1:8083, where a connection must
first present the cookie kept in a file only root and the service group can
read (``--cookie``, default ``/opt/cig/mgmt.cookie``); or on its UNIX socket
(``--socket``), where the file permissions are the gate.  The environment
variables ``CIG_CLI_ADDRESS``, ``CIG_CLI_COOKIE`` and ``CIG_CLI_SOCKET``
give the same settings.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from typing import IO

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from cryptify.cookie import read_cookie
from cryptify.protocols import cig_admin
from cryptify.protocols.amp_calls import AnswerError
from cryptify.protocols.mgmt import ManagementClient
from cryptify.reactor import IReactor
from cryptify.tools.manpage import ActionDoc, Arg, Page, action_help, arguments, help_words, select
from cryptify.tools.mgmtcli import (
    CONNECT_TIMEOUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Action,
    CliParser,
    check_config_file,
    execute,
    run_on_reactor,
    write_table,
)

PROG = "cig-cli"
PROMPT = "cig-cli$ "
DEFAULT_ADDRESS = "127.0.0.1:8083"
DEFAULT_COOKIE = "/opt/cig/mgmt.cookie"
#: Longest interactive input line accepted (a key material blob fits).
MAX_LINE = 65536
#: Longest key material blob, in bytes: what one AMP value can carry.
MAX_BLOB = 65535
#: What set-key asks for.
SET_KEY_PROMPT = "Paste the CIG key material (the line cryptify-kms cig-keys printed): "

HELP = """\
Cryptify Interconnect Gateway
  echo <anything>      echo test functionality
  show call/umsg       show active calls or umsg sessions
  read <FILE>          test read a configuration file
  set-key              set the key material (paste what cryptify-kms cig-keys prints)
  status               show an overview of the gateway
  help                 shows this help
  help <ACTION>        shows the help of ACTION (also: ACTION --help)
"""

USAGE = f"{PROG} [--address HOST:PORT --cookie FILE | --socket PATH] [ACTION [ARGS]]"


class UsageError(Exception):
    """An action line that does not parse."""


class _TooLong:
    """An input line longer than L{MAX_LINE}."""


TOO_LONG = _TooLong()


def blob_problem(blob: str | _TooLong | None) -> str | None:
    """What makes ``blob`` unfit to send as key material, or None.

    The CIG checks the material itself; this catches what could not even
    reach it, so the operator reads why instead of a bare failure.
    """
    if isinstance(blob, _TooLong):
        return f"key material is too long (more than {MAX_LINE} characters on its line)"
    if blob is None or not blob.strip():
        return "no key material given"
    size = len(blob.encode("utf-8", "surrogatepass"))
    if size > MAX_BLOB:
        return f"key material is too long ({size} bytes, at most {MAX_BLOB})"
    if not blob.isascii():
        return "key material blob is not base64 (it holds non-ASCII characters)"
    return None


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    try:
        number = int(port)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from exc
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host, number


def build_parser(err: IO[str]) -> CliParser:
    parser = CliParser(prog=PROG, add_help=False, err=err, usage=USAGE)
    parser.add_argument(
        "--address",
        type=parse_address,
        default=parse_address(os.environ.get("CIG_CLI_ADDRESS", DEFAULT_ADDRESS)),
        metavar="HOST:PORT",
        help=f"management address of the CIG (default $CIG_CLI_ADDRESS, else {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--cookie",
        default=os.environ.get("CIG_CLI_COOKIE", DEFAULT_COOKIE),
        metavar="FILE",
        help=f"the management cookie (default $CIG_CLI_COOKIE, else {DEFAULT_COOKIE})",
    )
    parser.add_argument(
        "--socket",
        default=os.environ.get("CIG_CLI_SOCKET"),
        metavar="PATH",
        help="use the CIG's UNIX management socket instead (no cookie; default $CIG_CLI_SOCKET)",
    )
    parser.add_argument("words", nargs=argparse.REMAINDER)
    return parser


#: The one description of cig-cli's actions: help ACTION, ACTION --help,
#: the manual page.
ACTIONS = (
    ActionDoc(
        ("echo",),
        f"{PROG} echo TEXT...",
        "echo test functionality: the CIG answers with TEXT",
        (Arg("TEXT", "any words"),),
    ),
    ActionDoc(("show", "call"), f"{PROG} show call", "show the active calls"),
    ActionDoc(("show", "umsg"), f"{PROG} show umsg", "show the active umsg sessions"),
    ActionDoc(
        ("read",),
        f"{PROG} read FILE",
        "test read a configuration file: OK, or the problem as FILE:LINE:COLUMN",
        (Arg("FILE", "a cig.conf"),),
    ),
    ActionDoc(
        ("set-key",),
        f"{PROG} set-key",
        "set the key material: paste the line cryptify-kms cig-keys printed when asked"
        " (it is read from the terminal or standard input, never from the command line)",
    ),
    ActionDoc(("status",), f"{PROG} status", "show an overview of the gateway"),
    ActionDoc(
        ("help",),
        f"{PROG} help [ACTION]",
        "show the list of actions, or the help of ACTION",
        (Arg("ACTION", "an action, e.g. show call"),),
    ),
    ActionDoc(("quit",), "quit", "leave the interactive mode (also exit, or end of input)"),
)


def check_action(words: Sequence[str]) -> None:
    """Refuse an action line that cannot be run, with the reason."""
    if not words:
        raise UsageError("no action given")
    action, rest = words[0], list(words[1:])
    if action in ("status", "quit", "exit", "set-key"):
        if rest:
            raise UsageError(f"{action} takes no arguments")
    elif action == "help":
        if rest and not select(ACTIONS, rest):
            raise UsageError(f"no action {' '.join(rest)!r}; try help")
    elif action == "echo":
        pass
    elif action == "show":
        if rest not in (["call"], ["umsg"]):
            raise UsageError("usage: show call | show umsg")
    elif action == "read":
        if len(rest) != 1:
            raise UsageError("usage: read FILE")
    else:
        raise UsageError(f"unknown action {action!r}; try help")


def help_text(words: Sequence[str]) -> str:
    """``help [ACTION]`` and ``ACTION --help``: the list, or one action's help."""
    return action_help(ACTIONS, words) or HELP


def wants_help(words: Sequence[str]) -> list[str] | None:
    """The action words of ``ACTION --help`` (``[]``: no action), or None."""
    if "--help" in words or "-h" in words:
        return help_words(words, ACTIONS, ())
    return None


def manual_page() -> Page:
    """cig-cli(8), from the parser and ACTIONS."""
    options = tuple(a for a in arguments(build_parser(sys.stderr)) if a.term != "WORDS")
    return Page(
        name=PROG,
        section=8,
        summary="operate a running Cryptify Interconnect Gateway",
        synopsis=(
            "[--address HOST:PORT --cookie FILE | --socket PATH] [ACTION [ARGUMENTS]]",
            "help [ACTION]",
            "ACTION --help",
        ),
        description=(
            "cig-cli is the operator's command line for the CIG. Given an action it runs "
            "it and exits; without one it is interactive, reading actions after a cig-cli$ "
            "prompt until quit or the end of input.\n\n"
            "The CIG listens for management on 127.0.0.1:8083, where a connection first "
            "presents the cookie kept in a file only root and the service group can read; "
            "or on its UNIX socket, where the file permissions are the gate.\n\n"
            "cig-cli help ACTION and cig-cli ACTION --help print the help of one action."
        ),
        actions=ACTIONS,
        options=options,
        exit_status=(
            ("0", "done"),
            ("1", "the CIG answered with an error, cannot be reached, or a file cannot be read"),
            ("2", "bad arguments"),
        ),
        environment=(
            Arg("CIG_CLI_ADDRESS", "the management address, when --address is not given"),
            Arg("CIG_CLI_COOKIE", "the cookie file, when --cookie is not given"),
            Arg("CIG_CLI_SOCKET", "the management socket, when --socket is not given"),
        ),
        files=(
            Arg(DEFAULT_COOKIE, "the management cookie (root:ciguser 0640)"),
            Arg("/opt/cig/cig.conf", "the CIG configuration (read)"),
        ),
        see_also=("cryptify-kms(1)", "crs-cli(8)", "systemctl(1)"),
    )


def read_config(path: str, out: IO[str], err: IO[str]) -> int:
    """Validate a cig.conf without applying it: print OK or the error."""
    from cryptify.config import load_cig_config

    return check_config_file(load_cig_config, path, out, err, PROG)


def _pair(value: object, what: str) -> tuple[object, object]:
    """Two items of a status answer (a list in JSON); AnswerError if not."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise AnswerError(f"{what} is not a pair")
    return value[0], value[1]


def render_status(status: object) -> str:
    """The status report in the manual's layout (L{AnswerError} when the
    answer is not a title and sections of labelled lines)."""
    sections = status.get("sections") if isinstance(status, dict) else None
    if not isinstance(status, dict) or not isinstance(sections, (list, tuple)):
        raise AnswerError("the status holds no sections")
    lines = [str(status.get("title", ""))]
    for section in sections:
        heading, pairs = _pair(section, "a status section")
        if not isinstance(pairs, (list, tuple)):
            raise AnswerError("a status section holds no lines")
        lines.append("")
        if heading:
            lines.append(str(heading))
        lines.append("-" * 5)
        for line in pairs:
            label, value = _pair(line, "a status line")
            lines.append(f"{label!s:<26}{value}")
    return "\n".join(lines) + "\n"


def remote_action(words: Sequence[str], out: IO[str], blob: str | None = None) -> Action | None:
    """The coroutine function of a remote action (None if it is local).

    ``blob`` is the key material ``set-key`` sends.
    """
    action = words[0]

    async def set_key(client: ManagementClient) -> int:
        answer = await client.call(cig_admin.SetKey, blob=blob or "")
        out.write(f"key material set for {answer['public_id']} ({answer['domain']})\n")
        out.write(f"keystore .ks.{answer['public_id']} written; the CIG attaches with it\n")
        out.write("OK\n")
        return EXIT_OK

    async def echo(client: ManagementClient) -> int:
        answer = await client.call(cig_admin.Echo, text=" ".join(words[1:]))
        out.write(answer["text"] + "\n")
        return EXIT_OK

    async def status(client: ManagementClient) -> int:
        answer = await client.call(cig_admin.Status)
        out.write(render_status(answer["status"]))
        return EXIT_OK

    async def show(client: ManagementClient) -> int:
        command = cig_admin.ShowCall if words[1] == "call" else cig_admin.ShowUmsg
        write_table(out, await client.call(command))
        out.write("OK\n")
        return EXIT_OK

    return {"echo": echo, "status": status, "show": show, "set-key": set_key}.get(action)


class Session:
    """Runs action lines against one CIG (direct or interactive mode)."""

    def __init__(self, args: argparse.Namespace, out: IO[str], err: IO[str]) -> None:
        self.args = args
        self.out = out
        self.err = err

    def endpoint(self, reactor: IReactor) -> tuple[IStreamClientEndpoint, str]:
        if self.args.socket:
            return UNIXClientEndpoint(reactor, self.args.socket, CONNECT_TIMEOUT), self.args.socket
        host, port = self.args.address
        return TCP4ClientEndpoint(reactor, host, port, CONNECT_TIMEOUT), f"{host}:{port}"

    def cookie(self) -> str | None:
        if self.args.socket:
            return None
        return read_cookie(self.args.cookie)

    async def run_words(
        self, reactor: IReactor, words: Sequence[str], blob: str | None = None
    ) -> int:
        asked = wants_help(words)
        if asked is not None:
            self.out.write(help_text(asked))
            return EXIT_OK
        try:
            check_action(words)
        except UsageError as exc:
            self.err.write(f"{PROG}: {exc}\n")
            return EXIT_USAGE
        if words[0] == "help":
            self.out.write(help_text(words[1:]))
            return EXIT_OK
        if words[0] == "read":
            return read_config(words[1], self.out, self.err)
        if words[0] == "set-key":
            problem = blob_problem(blob)
            if problem is not None:
                self.err.write(f"{PROG}: set-key: {problem}\n")
                return EXIT_FAILED
        action = remote_action(words, self.out, blob)
        assert action is not None  # check_action accepted the words
        endpoint, where = self.endpoint(reactor)
        return await execute(endpoint, where, "CIG", action, self.err, PROG, self.cookie, None)


class _Lines(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self) -> None:
        self.queue: defer.DeferredQueue[str | _TooLong | None] = defer.DeferredQueue()
        #: An over-long line was reported and its rest is being thrown away.
        self.skipping = False

    def dataReceived(self, data: bytes) -> None:
        # LineOnlyReceiver stops at an over-long line (it would close the
        # connection); here it is reported once and the lines after it go on.
        lines = (self._buffer + data).split(self.delimiter)
        self._buffer = lines.pop()
        for line in lines:
            if self.skipping:
                self.skipping = False  # the end of the line already reported
            elif len(line) > self.MAX_LENGTH:
                self.queue.put(TOO_LONG)
            else:
                self.lineReceived(line)
        if len(self._buffer) > self.MAX_LENGTH:
            if not self.skipping:
                self.queue.put(TOO_LONG)
                self.skipping = True
            self._buffer = b""

    def lineReceived(self, line: bytes) -> None:
        self.queue.put(line.decode("utf-8", "replace"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.queue.put(None)


async def interactive(session: Session, reactor: IReactor, out: IO[str]) -> int:
    """Prompt, read a line, run it; until quit or end of input."""
    from twisted.internet.stdio import StandardIO

    lines = _Lines()
    StandardIO(lines, reactor=reactor)  # type: ignore[no-untyped-call]
    status = EXIT_OK
    while True:
        out.write(PROMPT)
        out.flush()
        line = await lines.queue.get()
        if line is None:
            out.write("\n")
            return status
        if isinstance(line, _TooLong):
            session.err.write(f"{PROG}: line longer than {MAX_LINE} characters, ignored\n")
            continue
        try:
            words = shlex.split(line)
        except ValueError as exc:
            session.err.write(f"{PROG}: {exc}\n")
            continue
        if not words:
            continue
        if words[0] in ("quit", "exit"):
            return status
        blob = None
        if words[0] == "set-key" and len(words) == 1:
            out.write(SET_KEY_PROMPT)
            out.flush()
            answer = await lines.queue.get()
            if answer is None:
                out.write("\n")
                return status
            if isinstance(answer, _TooLong):
                session.err.write(f"{PROG}: set-key: {blob_problem(answer)}\n")
                status = EXIT_FAILED
                continue
            blob = answer
        status = await session.run_words(reactor, words, blob)
        out.flush()


def read_blob(inp: IO[str], out: IO[str]) -> str | _TooLong:
    """Prompt for the key material and read it from ``inp`` (one line).

    @raise UnicodeDecodeError: if the input is not text.
    """
    out.write(SET_KEY_PROMPT)
    out.flush()
    line = inp.readline(MAX_LINE + 2)
    if not inp.isatty():
        out.write("\n")
    if len(line.rstrip("\r\n")) > MAX_LINE:
        return TOO_LONG
    return line.strip()


def run(
    argv: Sequence[str],
    out: IO[str] = sys.stdout,
    err: IO[str] = sys.stderr,
    inp: IO[str] | None = None,
) -> int:
    """Run cig-cli with ``argv`` (without the program name); return the exit status.

    ``set-key`` reads the key material from ``inp`` (default: stdin).
    """
    parser = build_parser(err)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    session = Session(args, out, err)
    words = list(args.words)
    if not words:
        return run_on_reactor(lambda reactor: interactive(session, reactor, out), err, PROG)
    asked = wants_help(words)
    if asked is not None:
        out.write(help_text(asked))
        return EXIT_OK
    try:
        check_action(words)
    except UsageError as exc:
        parser.print_usage(err)
        err.write(f"{PROG}: {exc}\n")
        return EXIT_USAGE
    if words[0] == "help":
        out.write(help_text(words[1:]))
        return EXIT_OK
    if words[0] == "read":
        return read_config(words[1], out, err)
    blob = None
    if words[0] == "set-key":
        try:
            answer = read_blob(inp or sys.stdin, out)
        except UnicodeDecodeError:
            err.write(f"{PROG}: set-key: key material blob is not base64 (the input is not text)\n")
            return EXIT_FAILED
        problem = blob_problem(answer)
        if problem is not None or isinstance(answer, _TooLong):
            err.write(f"{PROG}: set-key: {problem}\n")
            return EXIT_FAILED
        blob = answer
    return run_on_reactor(lambda reactor: session.run_words(reactor, words, blob), err, PROG)


def main() -> None:
    """Console script entry point."""
    from cryptify.console import console_main

    console_main(lambda out: run(sys.argv[1:], out))
