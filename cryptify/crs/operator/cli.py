"""``crs-cli``: the operator's command line for a running CRS.

``crs-cli ACTION [options]``.  Actions that only read local files
(``check-config``, ``create sharedSecret``, ``version``, ``help``) work
without a running server; the others talk to the CRS over its management
socket (``--socket``, or ``$CRS_CLI_SOCKET``, default ``/run/crs/crs.sock``).
"""

from __future__ import annotations

import argparse
import base64
import functools
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from twisted.protocols import amp

from cryptify import __version__
from cryptify.crs.operator.cli_grammar import build_parser as build_parser
from cryptify.crs.operator.cli_peers import admin_change, iw_crs, pool_line
from cryptify.crs.operator.cli_text import (
    DEFAULT_CONFIG,
    DEFAULT_SECRET_BITS,
    DEFAULT_SOCKET,
    HELP,
    MAX_SECRET_BYTES,
    MAX_UPDATE_FILE,
    PROG,
)
from cryptify.crs.remote_admin.store import new_secret
from cryptify.protocols import crs_admin
from cryptify.protocols.mgmt import ManagementClient
from cryptify.service import unix_endpoint
from cryptify.tools.manpage import (
    ActionDoc,
    Arg,
    Page,
    action_help,
    actions_from_parser,
    arguments,
    help_words,
)
from cryptify.tools.mgmtcli import (
    CONNECT_TIMEOUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Action,
    check_config_file,
    run_remote,
    write_table,
)


@functools.cache
def actions() -> tuple[ActionDoc, ...]:
    """Every action of crs-cli, from its parser (made once: argparse is slow)."""
    return actions_from_parser(build_parser(sys.stderr))


def manual_page() -> Page:
    """crs-cli(8), from the parser."""
    parser = build_parser(sys.stderr)
    return Page(
        name=PROG,
        section=8,
        summary="operate a running Cryptify Rendezvous Server",
        synopsis=("[--socket PATH] ACTION [ARGUMENTS]", "help [ACTION]", "ACTION --help"),
        description=(
            "crs-cli is the operator's command line for the CRS. Actions that only read "
            "local files (check-config, create sharedSecret, version, help) work without a "
            "running server; the others talk to the CRS over its management socket, which "
            "only root and the service user can open.\n\n"
            "crs-cli help ACTION and crs-cli ACTION --help print the help of one action "
            "(or of every action under a word, such as show)."
        ),
        actions=actions_from_parser(parser),
        options=arguments(parser),
        exit_status=(
            ("0", "done"),
            (
                "1",
                "the CRS answered with an error, cannot be reached, or a file cannot be read; "
                "or, with workers N, a worker did not answer (named on standard error: the "
                "answer printed lacks its part)",
            ),
            ("2", "bad arguments"),
        ),
        environment=(Arg("CRS_CLI_SOCKET", "the management socket, when --socket is not given"),),
        files=(
            Arg(DEFAULT_SOCKET, "the management socket of the CRS"),
            Arg(DEFAULT_CONFIG, "the CRS configuration (check-config)"),
            Arg("/opt/crs/accounts", "the account files (create, delete, reload account)"),
        ),
        see_also=("cryptify-kms(1)", "cryptify-client(1)", "cig-cli(8)", "systemctl(1)"),
    )


def shared_secret(bits: int | None = None, nbytes: int | None = None) -> str:
    """A random shared secret, base64; bits are rounded up to whole bytes."""
    if nbytes is None:
        nbytes = ((bits or DEFAULT_SECRET_BITS) + 7) // 8
    if nbytes > MAX_SECRET_BYTES:
        raise ValueError(f"at most {MAX_SECRET_BYTES} bytes")
    return base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


def check_config(path: str, out: IO[str], err: IO[str]) -> int:
    """Validate a crs.conf without applying it: print OK or the error."""
    from cryptify.config import load_crs_config

    return check_config_file(load_crs_config, path, out, err, PROG)


def remote_action(
    args: argparse.Namespace,
    out: IO[str],
    err: IO[str],
    interrupted: Callable[[], bool] = lambda: False,
) -> Action:
    """The coroutine function for an action that needs the server.

    ``interrupted()`` says whether the operator stopped the program
    (Ctrl-C): a trace then ends quietly instead of reporting that the CRS
    closed it.
    """
    action = args.action
    element = getattr(args, "element", None)

    async def run(client: ManagementClient) -> int:
        if action == "show":
            if element == "version":
                answer = await client.call(crs_admin.ServerVersion)
                out.write(f"{answer['program']} {answer['version']}\n")
                return EXIT_OK
            commands: dict[str, tuple[type[amp.Command], dict[str, str]]] = {
                "services": (crs_admin.ShowServices, {}),
                "attach": (crs_admin.ShowAttach, {}),
                "session": (crs_admin.ShowSession, {}),
                "message": (crs_admin.ShowMessage, {}),
                "updates": (crs_admin.ShowUpdates, {}),
                "system": (crs_admin.ShowSystem, {}),
                "account": (crs_admin.ShowAccount, {}),
                "relay": (crs_admin.ShowRelay, {}),
                "blacklist": (crs_admin.ShowBlacklist, {"account": getattr(args, "account", "")}),
                "client-info": (
                    crs_admin.ShowClientInfo,
                    {"account": getattr(args, "account", "")},
                ),
                "push-token": (
                    crs_admin.ShowPushToken,
                    {"account": getattr(args, "account", ""), "uri": getattr(args, "uri", "")},
                ),
                "admins": (crs_admin.ShowAdmins, {}),
                "admin": (crs_admin.ShowAdmin, {"name": getattr(args, "name", "")}),
                "admin-accounts": (
                    crs_admin.ShowAdminAccounts,
                    {"name": getattr(args, "name", "")},
                ),
                "iw-crs": (crs_admin.ShowIwCrs, {}),
            }
            command, kwargs = commands[str(element)]
            answer = await client.call(command, **kwargs)
            write_table(out, answer)
            return missing(answer, err)
        if element == "iw-crs":
            return await iw_crs(client, args, out)
        if action in ("add", "delete") and element and element.startswith("admin"):
            return await admin_change(client, args, out)
        if action == "create" and element == "admin":
            secret, key = new_secret()
            answer = await client.call(
                crs_admin.CreateAdmin,
                name=args.name,
                key=base64.b64encode(key).decode("ascii"),
            )
            out.write(f"admin {args.name} created\n")
            pool_line(out, answer)
            out.write(f"secret {secret}\n")
            out.write(
                "The secret is shown only now: hand it to the admin. "
                "The CRS keeps only its public key.\n"
            )
            return EXIT_OK
        if action == "create":
            secret = args.secret or shared_secret(args.bits, args.bytes)
            answer = await client.call(crs_admin.CreateAccount, account=args.id, secret=secret)
            out.write(f"account {args.id} created in {answer['path']}\n")
            pool_line(out, answer)
            if not args.secret:
                out.write(f"shared secret {secret}\n")
            return EXIT_OK
        if action == "list":
            answer = await client.call(crs_admin.ListAccounts)
            for row in answer["table"]["rows"]:
                out.write(f"ID             {row[0]}\npath           {row[1]}\n")
                out.write(f"shared secret  {row[2]}\n\n")
            return EXIT_OK
        if action == "delete":
            answer = await client.call(crs_admin.DeleteAccount, account=args.id)
            out.write(f"account {args.id} deleted; {answer['disconnected']} clients disconnected\n")
            pool_line(out, answer)
            return EXIT_OK
        if action == "reload":
            answer = await client.call(crs_admin.ReloadAccounts)
            problems = answer["problems"]
            for problem in problems:
                err.write(f"{PROG}: {problem}\n")
            pool_line(out, answer)
            if problems:
                # the others were reloaded; the broken ones keep what they had
                out.write(f"accounts reloaded, except for the {len(problems)} problem(s) above\n")
                return EXIT_FAILED
            out.write("accounts reloaded\n")
            return EXIT_OK
        if action == "apply":
            answer = await client.call(crs_admin.Apply, data=args.data)
            result = answer["result"]
            out.write(
                f"update applied: account {result['account']}, revision {result['revision']}, "
                f"months {', '.join(result['periods'])}\n"
            )
            pool_line(out, answer)
            return EXIT_OK
        if action == "blacklist":
            if args.op == "add":
                answer = await client.call(
                    crs_admin.AddBlacklist, account=args.account, uri=args.uri
                )
                out.write(f"{args.uri} blacklisted; {answer['disconnected']} disconnected\n")
            else:
                answer = await client.call(
                    crs_admin.RemoveBlacklist, account=args.account, uri=args.uri
                )
                out.write(f"{args.uri} removed from the blacklist\n")
            pool_line(out, answer)
            return EXIT_OK
        if action == "purge":
            if element == "client":
                answer = await client.call(
                    crs_admin.PurgeClient, account=args.account, uri=args.uri
                )
            elif element == "clients":
                answer = await client.call(crs_admin.PurgeClients, account=args.account)
            else:
                answer = await client.call(crs_admin.PurgeObserved, account=args.account)
            out.write(f"{answer['purged']} purged\n")
            pool_line(out, answer)
            return missing(answer, err)
        if action == "check":
            answer = await client.call(crs_admin.CheckSlot, uri=args.uri)
            out.write(f"{args.uri} slot {answer['slot']} ({answer['owner']})\n")
            return EXIT_OK
        if action == "stats":
            if args.op == "export":
                answer = await client.call(crs_admin.StatsExport, account=args.account)
                found = answer["table"]
                for line in [found["columns"], *found["rows"]]:
                    out.write("\t".join(str(cell) for cell in line) + "\n")
                return EXIT_OK
            if args.op == "clear":
                answer = await client.call(crs_admin.StatsClear, account=args.account)
                out.write(f"statistics of {args.account} cleared ({answer['cleared']} URIs)\n")
                return EXIT_OK
            command = crs_admin.StatsEnable if args.op == "enable" else crs_admin.StatsDisable
            await client.call(command, account=args.account)
            out.write(f"statistics {args.op}d for {args.account}\n")
            return EXIT_OK
        if action == "wakeup":
            answer = await client.call(crs_admin.WakeupClient, account=args.account, uri=args.uri)
            out.write(f"wake-up sent to {args.uri}\n")
            pool_line(out, answer)
            return EXIT_OK
        if action == "trace":
            # a worker not traced yet is said, and the trace goes on
            missing(await client.call(crs_admin.Trace, element=element), err)
            await client.lost
            if interrupted():
                return EXIT_OK
            err.write(f"{PROG}: the CRS closed the trace\n")
            return EXIT_FAILED
        raise AssertionError(action)

    return run


def missing(answer: Mapping[str, object], err: IO[str]) -> int:
    """With ``workers N``: say which workers did not answer (the answer
    is then not the whole instance's): 1, else 0."""
    text = answer.get("missing")
    if not text:
        return EXIT_OK
    err.write(f"{PROG}: {text}\n")
    return EXIT_FAILED


def print_help(words: Sequence[str], out: IO[str], err: IO[str]) -> int:
    """``help [ACTION]`` and ``[ACTION] --help``: the overview or one action's help."""
    if not words:
        out.write(HELP)
        return EXIT_OK
    text = action_help(actions(), words)
    if text is None:
        err.write(f"{PROG}: no action {' '.join(words)!r}; crs-cli help lists them\n")
        return EXIT_USAGE
    out.write(text)
    return EXIT_OK


def run(argv: Sequence[str], out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Run crs-cli with ``argv`` (without the program name); return the exit status."""
    if "--help" in argv or "-h" in argv:
        return print_help(help_words(argv, actions(), ("--socket",)), out, err)
    parser = build_parser(err)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if args.action == "help":
        return print_help(args.words, out, err)
    if args.action is None:
        err.write(HELP)
        return EXIT_USAGE
    if args.action == "version":
        out.write(f"{PROG} {__version__}\n")
        return EXIT_OK
    if args.action == "check-config":
        return check_config(args.file, out, err)
    if args.action == "create" and args.element == "sharedSecret":
        try:
            out.write(shared_secret(args.bits, args.bytes) + "\n")
        except ValueError as exc:
            err.write(f"{PROG}: {exc}\n")
            return EXIT_USAGE
        return EXIT_OK
    if args.action == "create" and args.element == "account":
        try:
            if args.secret is None:
                shared_secret(args.bits, args.bytes)
        except ValueError as exc:
            err.write(f"{PROG}: {exc}\n")
            return EXIT_USAGE
    if args.action == "apply":
        try:
            with open(args.file, "rb") as f:
                raw = f.read(MAX_UPDATE_FILE + 1)
        except OSError as exc:
            err.write(f"{PROG}: cannot read {args.file}: {exc.strerror}\n")
            return EXIT_FAILED
        if len(raw) > MAX_UPDATE_FILE:
            err.write(f"{PROG}: {args.file} is too large to be an update file\n")
            return EXIT_FAILED
        args.data = base64.b64encode(raw).decode("ascii")
    stopped: list[bool] = []
    action = remote_action(args, out, err, lambda: bool(stopped))
    path = args.socket

    def show(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    return run_remote(
        lambda reactor: unix_endpoint(reactor, path, CONNECT_TIMEOUT),
        path,
        "CRS",
        action,
        err,
        PROG,
        on_trace=show,
        interrupted=EXIT_OK if args.action == "trace" else EXIT_FAILED,
        on_interrupt=lambda: stopped.append(True),
    )


def main() -> None:
    """Console script entry point."""
    from cryptify.console import console_main

    console_main(lambda out: run(sys.argv[1:], out))
