"""The grammar of ``crs-cli``: every action, its arguments and its help,
in one argparse parser (the manual page and ``crs-cli help`` are made from
it; L{cryptify.crs.operator.cli} runs what it parses)."""

from __future__ import annotations

import argparse
import os
from typing import IO, TYPE_CHECKING

from cryptify.crs.operator.cli_text import (
    ACCOUNT_HELP,
    ADMIN_HELP,
    AUTHORIZATION_HELP,
    DEFAULT_CONFIG,
    DEFAULT_SOCKET,
    PROG,
    SHOW_HELP,
    SHOW_SIMPLE,
    SIZE_HELP,
    STATS_OPS,
    TRACE_ELEMENTS,
    TRACE_HELP,
    URI_HELP,
)
from cryptify.crs.remote_admin.store import AUTHORIZATIONS
from cryptify.tools.mgmtcli import CliParser

if TYPE_CHECKING:
    #: What ``add_subparsers`` returns: the words one level down.
    Subparsers = argparse._SubParsersAction[CliParser]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


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

    def sub(parent: Subparsers, name: str, usage: str, text: str = "") -> CliParser:
        made: CliParser = parent.add_parser(
            name, add_help=False, err=err, usage=f"{PROG} {usage}", help=text
        )
        return made

    def elements(parser: CliParser, dest: str = "element") -> Subparsers:
        group = parser.add_subparsers(dest=dest, metavar="ELEMENT", parser_class=CliParser)
        group.required = True
        return group

    def account_arg(parser: CliParser) -> None:
        parser.add_argument("account", metavar="ACCOUNT", help=ACCOUNT_HELP)

    def uri_arg(parser: CliParser) -> None:
        parser.add_argument("uri", metavar="URI", help=URI_HELP)

    def admin_name_arg(parser: CliParser) -> None:
        parser.add_argument("name", metavar="NAME", help=ADMIN_HELP)

    def admin_rights(parent: Subparsers, verb: str, texts: tuple[str, str]) -> None:
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
