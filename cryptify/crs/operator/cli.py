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
import os
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from cryptify import __version__
from cryptify.crs.remote_admin.store import AUTHORIZATIONS, new_secret
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
    CliParser,
    check_config_file,
    run_remote,
    write_table,
)

PROG = "crs-cli"
DEFAULT_SOCKET = "/run/crs/crs.sock"
DEFAULT_CONFIG = "/opt/crs/crs.conf"
#: Default size of a generated shared secret.
DEFAULT_SECRET_BITS = 128
#: Largest shared secret we generate, in bytes.
MAX_SECRET_BYTES = 1024
#: Largest update file sent to the CRS.
MAX_UPDATE_FILE = 16 * 1024 * 1024

HELP = """\
Cryptify Rendezvous Server command line: crs-cli ACTION [options]

  help [ACTION]                         this help, or the help of ACTION
                                        (also: crs-cli ACTION --help)
  version                               version of crs-cli
  check-config [FILE]                   validate crs.conf (default /opt/crs/crs.conf)
  apply FILE                            apply a protected monthly update file
  show version|services|attach|session|message|updates|system|account|relay|iw-crs
  show blacklist ACCOUNT
  show client-info ACCOUNT
  show push-token ACCOUNT URI
  show admins
  show admin NAME
  show admin-accounts NAME
  create sharedSecret [-b BITS | -B BYTES]
  create account ID [-s SECRET | -b BITS | -B BYTES]
  create admin NAME                     a remote admin; its secret is printed once
  list account
  list iw-crs                           the inter-working CRS instances and secrets
  delete account ID
  delete iw-crs IP
  delete admin NAME
  delete admin-account NAME ACCOUNT
  delete admin-account-authorization NAME ACCOUNT statistics|update
  add iw-crs IP SECRET [-c COMMENT]     trust the inter-working CRS at IP
  add admin-account NAME ACCOUNT        let admin NAME manage ACCOUNT
  add admin-account-authorization NAME ACCOUNT statistics|update
  reload account
  blacklist add|remove ACCOUNT URI
  purge client ACCOUNT URI
  purge clients ACCOUNT
  purge observed ACCOUNT
  check slot URI
  stats enable|disable|clear ACCOUNT
  stats export ACCOUNT                  tab-separated statistics, header first
  trace attach|session|message|object|event   (Ctrl-C stops)
  wakeup client account ACCOUNT URI     push a wake-up to a client now

options:
  --socket PATH     management socket of the CRS (default $CRS_CLI_SOCKET
                    or /run/crs/crs.sock)
"""

SHOW_SIMPLE = (
    "version",
    "services",
    "attach",
    "session",
    "message",
    "updates",
    "system",
    "account",
    "relay",
    "iw-crs",
)
STATS_OPS = ("enable", "disable", "clear", "export")
TRACE_ELEMENTS = ("attach", "session", "message", "object", "event")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


ACCOUNT_HELP = "the account ID (the name of its file in accounts-dir)"
URI_HELP = "a client URI, tel:+NUMBER"
SHOW_HELP = {
    "version": "the version of the running CRS",
    "services": "the services and their state",
    "attach": "the attached clients",
    "session": "the calls in progress",
    "message": "the stored messages waiting for delivery",
    "updates": "the monthly update files applied, per account",
    "system": "the CRS hosts of the system and their links",
    "account": "the accounts and their counters",
    "relay": "the media relay and its sessions",
    "iw-crs": "the links to the inter-working CRS instances",
}
TRACE_HELP = {
    "attach": "attaches and detaches",
    "session": "call signalling",
    "message": "messages posted and delivered",
    "object": "every protocol object received and sent",
    "event": "server events",
}
ADMIN_HELP = "a remote admin's name (letters, digits, '-' and '_', at most 20)"
AUTHORIZATION_HELP = (
    "statistics (read and manage the account's statistics) or update (apply its monthly updates)"
)
SIZE_HELP = {
    "bits": "size in bits, rounded up to whole bytes (default 128)",
    "bytes": f"size in bytes (at most {MAX_SECRET_BYTES})",
}


def build_parser(err: IO[str]) -> CliParser:
    """The grammar of crs-cli, and the one description of its actions."""
    parser = CliParser(prog=PROG, add_help=False, err=err, usage=f"{PROG} ACTION [options]")
    parser.add_argument(
        "--socket",
        default=os.environ.get("CRS_CLI_SOCKET", DEFAULT_SOCKET),
        metavar="PATH",
        help=f"management socket of the CRS (default $CRS_CLI_SOCKET, else {DEFAULT_SOCKET})",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=CliParser)

    def sub(parent: Any, name: str, usage: str, text: str = "") -> CliParser:
        made: CliParser = parent.add_parser(
            name, add_help=False, err=err, usage=f"{PROG} {usage}", help=text
        )
        return made

    def elements(parser: CliParser, dest: str = "element") -> Any:
        group = parser.add_subparsers(dest=dest, metavar="ELEMENT", parser_class=CliParser)
        group.required = True
        return group

    def account_arg(parser: CliParser) -> None:
        parser.add_argument("account", metavar="ACCOUNT", help=ACCOUNT_HELP)

    def uri_arg(parser: CliParser) -> None:
        parser.add_argument("uri", metavar="URI", help=URI_HELP)

    def admin_name_arg(parser: CliParser) -> None:
        parser.add_argument("name", metavar="NAME", help=ADMIN_HELP)

    def admin_rights(parent: Any, verb: str, texts: tuple[str, str]) -> None:
        account_arg(
            admin_name_arg_of(
                sub(parent, "admin-account", f"{verb} admin-account NAME ACCOUNT", texts[0])
            )
        )
        entry = admin_name_arg_of(
            sub(
                parent,
                "admin-account-authorization",
                f"{verb} admin-account-authorization NAME ACCOUNT AUTHORIZATION",
                texts[1],
            )
        )
        account_arg(entry)
        entry.add_argument(
            "authorization",
            metavar="AUTHORIZATION",
            choices=AUTHORIZATIONS,
            help=AUTHORIZATION_HELP,
        )

    def admin_name_arg_of(parser: CliParser) -> CliParser:
        admin_name_arg(parser)
        return parser

    helper = sub(actions, "help", "help [ACTION]", "this overview, or the help of ACTION")
    helper.add_argument("words", nargs="*", metavar="ACTION", help="an action, e.g. show blacklist")
    sub(actions, "version", "version", "the version of crs-cli")
    check = sub(
        actions,
        "check-config",
        "check-config [FILE]",
        "validate a crs.conf without applying it: OK, or the problem as FILE:LINE:COLUMN",
    )
    check.add_argument(
        "file", nargs="?", default=DEFAULT_CONFIG, metavar="FILE", help=f"default {DEFAULT_CONFIG}"
    )
    sub(
        actions,
        "apply",
        "apply FILE",
        "apply a protected monthly update file (cryptify-kms update)",
    ).add_argument("file", metavar="FILE", help="the update file")

    show = elements(sub(actions, "show", "show ELEMENT"))
    for name in SHOW_SIMPLE:
        sub(show, name, f"show {name}", f"show {SHOW_HELP[name]}")
    account_arg(sub(show, "blacklist", "show blacklist ACCOUNT", "show the blacklist of ACCOUNT"))
    account_arg(
        sub(show, "client-info", "show client-info ACCOUNT", "show the clients seen of ACCOUNT")
    )
    sub(show, "admins", "show admins", "show the remote admins and their accounts")
    admin_name_arg(sub(show, "admin", "show admin NAME", "show a remote admin"))
    admin_name_arg(
        sub(
            show,
            "admin-accounts",
            "show admin-accounts NAME",
            "show the accounts a remote admin manages, with its authorizations on each",
        )
    )
    token = sub(
        show, "push-token", "show push-token ACCOUNT URI", "show the push token a client left"
    )
    account_arg(token)
    uri_arg(token)

    create = elements(sub(actions, "create", "create ELEMENT"))
    secret = sub(
        create,
        "sharedSecret",
        "create sharedSecret [-b BITS | -B BYTES]",
        "print a new random shared secret, base64 (no server needed)",
    )
    size = secret.add_mutually_exclusive_group()
    size.add_argument("-b", dest="bits", type=_positive, metavar="BITS", help=SIZE_HELP["bits"])
    size.add_argument("-B", dest="bytes", type=_positive, metavar="BYTES", help=SIZE_HELP["bytes"])
    account = sub(
        create,
        "account",
        "create account ID [-s SECRET | -b BITS | -B BYTES]",
        "create an account with the given or a new random shared secret (printed)",
    )
    account.add_argument("id", metavar="ID", help="the new account ID")
    given = account.add_mutually_exclusive_group()
    given.add_argument("-s", dest="secret", metavar="SECRET", help="the shared secret to use")
    given.add_argument("-b", dest="bits", type=_positive, metavar="BITS", help=SIZE_HELP["bits"])
    given.add_argument("-B", dest="bytes", type=_positive, metavar="BYTES", help=SIZE_HELP["bytes"])

    admin_name_arg(
        sub(
            create,
            "admin",
            "create admin NAME",
            "create a remote admin; its secret is printed once, the CRS keeps only a verifier",
        )
    )

    listing = elements(sub(actions, "list", "list account|iw-crs"))
    sub(listing, "account", "list account", "list the accounts with their files and secrets")
    sub(listing, "iw-crs", "list iw-crs", "list the inter-working CRS instances and secrets")
    delete = elements(sub(actions, "delete", "delete ELEMENT"))
    sub(
        delete, "account", "delete account ID", "delete an account and disconnect its clients"
    ).add_argument("id", metavar="ID", help="the account ID")
    admin_name_arg(sub(delete, "admin", "delete admin NAME", "delete a remote admin"))
    sub(
        delete, "iw-crs", "delete iw-crs IP", "stop trusting an inter-working CRS instance"
    ).add_argument("ip", metavar="IP", help="its address, as added")
    admin_rights(
        delete,
        "delete",
        (
            "take ACCOUNT from the accounts a remote admin manages",
            "take an authorization on ACCOUNT from a remote admin",
        ),
    )
    add = elements(sub(actions, "add", "add ELEMENT"))
    peer = sub(
        add,
        "iw-crs",
        "add iw-crs IP SECRET [-c COMMENT]",
        "trust the inter-working CRS instance at IP (TLS-PSK with SECRET, on every instance)",
    )
    peer.add_argument("ip", metavar="IP", help="its address; its connections must come from it")
    peer.add_argument("secret", metavar="SECRET", help="the shared secret, letters and digits")
    peer.add_argument("-c", dest="comment", metavar="COMMENT", help="a comment")
    admin_rights(
        add,
        "add",
        (
            "let a remote admin manage ACCOUNT (with no authorization yet)",
            "give a remote admin an authorization on one of its accounts",
        ),
    )
    reload = elements(sub(actions, "reload", "reload account"))
    sub(reload, "account", "reload account", "re-read the account files in accounts-dir")

    blacklist = elements(sub(actions, "blacklist", "blacklist add|remove ACCOUNT URI"), "op")
    for op, text in (
        ("add", "blacklist URI in ACCOUNT and disconnect it"),
        ("remove", "take URI off the blacklist of ACCOUNT"),
    ):
        entry = sub(blacklist, op, f"blacklist {op} ACCOUNT URI", text)
        account_arg(entry)
        uri_arg(entry)

    purge = elements(sub(actions, "purge", "purge client|clients|observed ACCOUNT [URI]"))
    one = sub(purge, "client", "purge client ACCOUNT URI", "forget one client of ACCOUNT")
    account_arg(one)
    uri_arg(one)
    account_arg(sub(purge, "clients", "purge clients ACCOUNT", "forget every client of ACCOUNT"))
    account_arg(
        sub(purge, "observed", "purge observed ACCOUNT", "forget the clients observed in ACCOUNT")
    )

    checks = elements(sub(actions, "check", "check slot URI"))
    uri_arg(sub(checks, "slot", "check slot URI", "which CRS of the system serves URI"))

    stats = elements(sub(actions, "stats", "stats enable|disable|clear|export ACCOUNT"), "op")
    stats_help = {
        "enable": "start keeping per-URI statistics for ACCOUNT",
        "disable": "stop keeping statistics for ACCOUNT",
        "clear": "clear the statistics of ACCOUNT",
        "export": "print the statistics of ACCOUNT, tab-separated, header first",
    }
    for op in STATS_OPS:
        account_arg(sub(stats, op, f"stats {op} ACCOUNT", stats_help[op]))

    wakeup = elements(sub(actions, "wakeup", "wakeup client account ACCOUNT URI"))
    woken = sub(
        wakeup,
        "client",
        "wakeup client account ACCOUNT URI",
        "push a wake-up to a client that left a push token (features push)",
    )
    woken.add_argument("keyword", choices=["account"], metavar="account", help="the word account")
    account_arg(woken)
    uri_arg(woken)

    trace = elements(sub(actions, "trace", "trace ELEMENT"))
    for name in TRACE_ELEMENTS:
        sub(trace, name, f"trace {name}", f"print {TRACE_HELP[name]} as they happen (Ctrl-C stops)")
    return parser


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
            ("1", "the CRS answered with an error, cannot be reached, or a file cannot be read"),
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
) -> Any:
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
            commands: dict[str, tuple[type[Any], dict[str, str]]] = {
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
            return write_table(out, await client.call(command, **kwargs))
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
            return EXIT_OK
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
            await client.call(crs_admin.Trace, element=element)
            await client.lost
            if interrupted():
                return EXIT_OK
            err.write(f"{PROG}: the CRS closed the trace\n")
            return EXIT_FAILED
        raise AssertionError(action)

    return run


async def iw_crs(client: ManagementClient, args: argparse.Namespace, out: IO[str]) -> int:
    """``add|delete|list iw-crs ...`` (``show iw-crs`` is a table)."""
    if args.action == "add":
        kwargs = {"ip": args.ip, "secret": args.secret}
        if args.comment:
            kwargs["comment"] = args.comment
        answer = await client.call(crs_admin.AddIwCrs, **kwargs)
        out.write(f"inter-working CRS {args.ip} added\n")
    elif args.action == "delete":
        answer = await client.call(crs_admin.DeleteIwCrs, ip=args.ip)
        out.write(f"inter-working CRS {args.ip} deleted\n")
    else:
        answer = await client.call(crs_admin.ListIwCrs)
        for ip, secret, comment in answer["table"]["rows"]:
            out.write(f"IP             {ip}\nshared secret  {secret}\n")
            out.write(f"comment        {comment}\n\n" if comment else "\n")
        return EXIT_OK
    pool_line(out, answer)
    return EXIT_OK


async def admin_change(client: ManagementClient, args: argparse.Namespace, out: IO[str]) -> int:
    """``add|delete admin-account[-authorization] ...`` and ``delete admin NAME``."""
    adding = args.action == "add"
    if args.element == "admin":
        answer = await client.call(crs_admin.DeleteAdmin, name=args.name)
        out.write(f"admin {args.name} deleted\n")
    elif args.element == "admin-account":
        command = crs_admin.AddAdminAccount if adding else crs_admin.DeleteAdminAccount
        answer = await client.call(command, name=args.name, account=args.account)
        change = "may now manage" if adding else "no longer manages"
        out.write(f"admin {args.name} {change} account {args.account}\n")
    else:
        rights = crs_admin.AddAdminAuthorization if adding else crs_admin.DeleteAdminAuthorization
        answer = await client.call(
            rights, name=args.name, account=args.account, authorization=args.authorization
        )
        change = "now has" if adding else "no longer has"
        out.write(f"admin {args.name} {change} {args.authorization} on {args.account}\n")
    pool_line(out, answer)
    return EXIT_OK


def pool_line(out: IO[str], answer: Mapping[str, Any]) -> None:
    """In a pool, which instances have applied the command (docs/pool.md)."""
    where = answer.get("pool")
    if where:
        out.write(f"{where}\n")


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
