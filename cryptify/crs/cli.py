"""``crs-cli``: the operator's command line for a running CRS.

``crs-cli ACTION [options]``.  Actions that only read local files
(``check-config``, ``create sharedSecret``, ``version``, ``help``) work
without a running server; the others talk to the CRS over its management
socket (``--socket``, or ``$CRS_CLI_SOCKET``, default ``/run/crs/crs.sock``).
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from collections.abc import Sequence
from typing import IO, Any

from twisted.internet.endpoints import UNIXClientEndpoint

from cryptify import __version__
from cryptify.protocols import crs_admin
from cryptify.protocols.mgmt import ManagementClient
from cryptify.protocols.mgmtcli import (
    CONNECT_TIMEOUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliParser,
    render_table,
    run_remote,
)

PROG = "crs-cli"
DEFAULT_SOCKET = "/run/crs/crs.sock"
DEFAULT_CONFIG = "/opt/crs/crs.conf"
#: Default size of a generated shared secret.
DEFAULT_SECRET_BITS = 128
#: Largest shared secret we generate, in bytes.
MAX_SECRET_BYTES = 1024

HELP = """\
Cryptify Rendezvous Server command line

  help                              show this help
  version                           version of crs-cli
  show version                      version of the running CRS
  show services                     status of every CRS service
  check-config [FILE]               validate crs.conf (default /opt/crs/crs.conf)
                                    without applying it
  create sharedSecret [-b BITS | -B BYTES]
                                    print a random base64 shared secret
                                    (default 128 bits)

options:
  --socket PATH     management socket of the CRS (default $CRS_CLI_SOCKET
                    or /run/crs/crs.sock)
"""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def build_parser(err: IO[str]) -> CliParser:
    parser = CliParser(prog=PROG, add_help=False, err=err, usage=f"{PROG} ACTION [options]")
    parser.add_argument(
        "--socket", default=os.environ.get("CRS_CLI_SOCKET", DEFAULT_SOCKET), help="socket"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=CliParser)
    actions.add_parser("help", add_help=False, err=err)
    actions.add_parser("version", add_help=False, err=err)

    show = actions.add_parser("show", add_help=False, err=err, usage=f"{PROG} show ELEMENT")
    show_what = show.add_subparsers(dest="element", metavar="ELEMENT", parser_class=CliParser)
    show_what.required = True
    show_what.add_parser("version", add_help=False, err=err)
    show_what.add_parser("services", add_help=False, err=err)

    check = actions.add_parser(
        "check-config", add_help=False, err=err, usage=f"{PROG} check-config [FILE]"
    )
    check.add_argument("file", nargs="?", default=DEFAULT_CONFIG)

    create = actions.add_parser("create", add_help=False, err=err, usage=f"{PROG} create ELEMENT")
    create_what = create.add_subparsers(dest="element", metavar="ELEMENT", parser_class=CliParser)
    create_what.required = True
    secret = create_what.add_parser(
        "sharedSecret",
        add_help=False,
        err=err,
        usage=f"{PROG} create sharedSecret [-b BITS | -B BYTES]",
    )
    size = secret.add_mutually_exclusive_group()
    size.add_argument("-b", dest="bits", type=_positive)
    size.add_argument("-B", dest="bytes", type=_positive)
    return parser


def shared_secret(bits: int | None = None, nbytes: int | None = None) -> str:
    """A random shared secret, base64; bits are rounded up to whole bytes."""
    if nbytes is None:
        nbytes = ((bits or DEFAULT_SECRET_BITS) + 7) // 8
    if nbytes > MAX_SECRET_BYTES:
        raise ValueError(f"at most {MAX_SECRET_BYTES} bytes")
    return base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


def check_config(path: str, out: IO[str], err: IO[str]) -> int:
    """Validate a crs.conf without applying it: print OK or the error."""
    from cryptify.config import ConfigError, load_crs_config

    try:
        load_crs_config(path)
    except ConfigError as exc:
        err.write(f"{exc}\n")
        return EXIT_FAILED
    except OSError as exc:
        err.write(f"{PROG}: cannot read {path}: {exc.strerror}\n")
        return EXIT_FAILED
    out.write("OK\n")
    return EXIT_OK


def remote_action(args: argparse.Namespace, out: IO[str]) -> Any:
    """The coroutine function for an action that needs the server."""

    async def show_version(client: ManagementClient) -> int:
        answer = await client.call(crs_admin.ServerVersion)
        out.write(f"{answer['program']} {answer['version']}\n")
        return EXIT_OK

    async def show_services(client: ManagementClient) -> int:
        answer = await client.call(crs_admin.ShowServices)
        table = answer["table"]
        out.write(render_table(table["columns"], table["rows"]))
        return EXIT_OK

    if args.action == "show":
        return {"version": show_version, "services": show_services}[args.element]
    raise AssertionError(args.action)


def run(argv: Sequence[str], out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Run crs-cli with ``argv`` (without the program name); return the exit status."""
    parser = build_parser(err)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if args.action in (None, "help"):
        (out if args.action == "help" else err).write(HELP)
        return EXIT_OK if args.action == "help" else EXIT_USAGE
    if args.action == "version":
        out.write(f"{PROG} {__version__}\n")
        return EXIT_OK
    if args.action == "check-config":
        return check_config(args.file, out, err)
    if args.action == "create":
        try:
            out.write(shared_secret(args.bits, args.bytes) + "\n")
        except ValueError as exc:
            err.write(f"{PROG}: {exc}\n")
            return EXIT_USAGE
        return EXIT_OK
    action = remote_action(args, out)
    path = args.socket
    return run_remote(
        lambda reactor: UNIXClientEndpoint(reactor, path, timeout=CONNECT_TIMEOUT),
        path,
        "CRS",
        action,
        err,
        PROG,
    )


def main() -> None:
    """Console script entry point."""
    sys.exit(run(sys.argv[1:]))
