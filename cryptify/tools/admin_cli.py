"""``cryptify-admin``: a remote admin's command line for the CRS admin interface.

``cryptify-admin [--url URL] [--admin NAME] [--secret-file FILE] [--ca FILE] ACTION``

Each run logs in (a signed challenge: the secret never leaves this
process), does one action, and logs out.  The secret is read from a file
that only its owner may read (the one ``crs-cli create admin`` printed),
never from the command line, where other users could see it.
docs/admin.md describes the protocol.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import ssl
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cryptify import __version__
from cryptify.crs.remote_admin.auth import login_message
from cryptify.crs.remote_admin.store import (
    AdminError,
    decode_secret,
    fingerprint,
    public_key_of,
)
from cryptify.crypto.errors import CryptoError
from cryptify.crypto.securefile import read_secret_file
from cryptify.tools.manpage import Arg, Page, actions_from_parser, arguments
from cryptify.tools.mgmtcli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliParser, render_table

PROG = "cryptify-admin"
#: Seconds to wait for the CRS to connect and answer.
TIMEOUT = 30.0
#: Largest update file sent, in octets (the CRS refuses larger).
MAX_UPDATE_FILE = 16 * 1024 * 1024
#: Largest answer read, in octets.
MAX_ANSWER = 64 * 1024 * 1024
STATS_OPS = ("export", "enable", "disable", "clear")

#: (method, path, body, headers) -> (status, body)
Exchange = Callable[[str, str, bytes, dict[str, str]], tuple[int, bytes]]


class AdminCliError(Exception):
    """The action could not be done; the message says why."""


def build_parser(err: IO[str]) -> CliParser:
    env = os.environ
    parser = CliParser(prog=PROG, err=err, usage=f"{PROG} [options] ACTION")
    parser.add_argument(
        "--url",
        default=env.get("CRYPTIFY_ADMIN_URL", ""),
        help="the admin interface, https://HOST:PORT (default $CRYPTIFY_ADMIN_URL)",
    )
    parser.add_argument(
        "--admin",
        default=env.get("CRYPTIFY_ADMIN_NAME", ""),
        metavar="NAME",
        help="your admin name (default $CRYPTIFY_ADMIN_NAME)",
    )
    parser.add_argument(
        "--secret-file",
        default=env.get("CRYPTIFY_ADMIN_SECRET_FILE", ""),
        metavar="FILE",
        help="the file holding your secret, mode 0600 (default $CRYPTIFY_ADMIN_SECRET_FILE)",
    )
    parser.add_argument(
        "--ca",
        default=env.get("CRYPTIFY_ADMIN_CA", ""),
        metavar="FILE",
        help="PEM certificates to trust for the CRS (default: the system's)",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=CliParser)
    actions.required = True

    def action(name: str, usage: str, text: str) -> CliParser:
        made: CliParser = actions.add_parser(name, err=err, usage=f"{PROG} {usage}", help=text)
        return made

    def account_arg(parser: CliParser) -> None:
        parser.add_argument("account", metavar="ACCOUNT", help="one of your accounts (its ID)")

    action("version", "version", "the version of cryptify-admin")
    action("fingerprint", "fingerprint", "the fingerprint of your secret (as crs-cli show admin)")
    action("accounts", "accounts", "your accounts and authorizations")
    stats = action(
        "stats",
        "stats export|enable|disable|clear ACCOUNT",
        "an account's statistics (needs the statistics authorization)",
    )
    stats.add_argument(
        "op", choices=STATS_OPS, metavar="OP", help="export, enable, disable or clear"
    )
    account_arg(stats)
    apply = action("apply", "apply ACCOUNT FILE", "apply a monthly update file (needs update)")
    account_arg(apply)
    apply.add_argument("file", metavar="FILE", help="the update file (cryptify-kms update)")
    blacklist = action("blacklist", "blacklist ACCOUNT", "an account's blacklist (needs update)")
    account_arg(blacklist)
    return parser


def read_secret(path: str) -> bytes:
    """The secret from a file only its owner can read."""
    if not path:
        raise AdminCliError("no secret file: give --secret-file or $CRYPTIFY_ADMIN_SECRET_FILE")
    try:
        text = read_secret_file(path, 4096)
    except CryptoError as exc:
        raise AdminCliError(str(exc)) from None
    try:
        return decode_secret(text.decode("ascii", "replace"))
    except AdminError as exc:
        raise AdminCliError(f"{path}: {exc}") from None


def https_exchange(url: str, ca: str) -> Exchange:
    """Requests over one verified TLS connection to ``url``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise AdminCliError(f"the URL must be https://HOST:PORT, not {url!r}")
    try:
        context = ssl.create_default_context(cafile=ca or None)
    except (OSError, ssl.SSLError) as exc:
        raise AdminCliError(f"cannot read {ca}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    connection = http.client.HTTPSConnection(
        parts.hostname, parts.port or 443, timeout=TIMEOUT, context=context
    )

    def exchange(method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        try:
            connection.request(method, path, body=body, headers=headers)
            answer = connection.getresponse()
            return answer.status, answer.read(MAX_ANSWER)
        except ssl.SSLCertVerificationError as exc:
            raise AdminCliError(f"{url}: the CRS's certificate is not trusted: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise AdminCliError(f"{url}: {exc}") from None

    return exchange


class Session:
    """A logged-in admin: JSON requests with its token."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.token: str | None = None

    def call(self, method: str, path: str, body: bytes = b"", json_body: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        elif body:
            headers["Content-Type"] = "application/octet-stream"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        status, raw = self.exchange(method, path, body, headers)
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise AdminCliError(f"the CRS answered {status} without JSON") from None
        if status != 200:
            error = doc.get("error", "?") if isinstance(doc, dict) else "?"
            message = doc.get("message") if isinstance(doc, dict) else None
            raise AdminCliError(f"refused ({status} {error})" + (f": {message}" if message else ""))
        return doc

    def login(self, admin: str, secret: bytes) -> None:
        challenge = self.call("POST", "/api/challenge", json_body={"admin": admin})
        nonce = str(challenge["nonce"])
        key = Ed25519PrivateKey.from_private_bytes(secret)
        signature = base64.b64encode(key.sign(login_message(admin, nonce))).decode("ascii")
        answer = self.call(
            "POST",
            "/api/login",
            json_body={"admin": admin, "nonce": nonce, "signature": signature},
        )
        self.token = str(answer["token"])

    def logout(self) -> None:
        if self.token is not None:
            self.call("POST", "/api/logout")
            self.token = None


def act(session: Session, args: argparse.Namespace, out: IO[str]) -> None:
    """Do the one action of ``args`` and print its answer."""
    quoted = urllib.parse.quote(getattr(args, "account", ""), safe="")
    base = f"/api/accounts/{quoted}"
    if args.action == "accounts":
        doc = session.call("GET", "/api/accounts")
        rows = [[a, ",".join(auth) or "-"] for a, auth in doc["accounts"].items()]
        out.write(render_table(["Account", "Authorizations"], rows))
    elif args.action == "stats" and args.op == "export":
        table = session.call("GET", f"{base}/stats")["table"]
        for line in [table["columns"], *table["rows"]]:
            out.write("\t".join(str(cell) for cell in line) + "\n")
    elif args.action == "stats":
        doc = session.call("POST", f"{base}/stats/{args.op}")
        if args.op == "clear":
            out.write(f"statistics of {args.account} cleared ({doc['cleared']} URIs)\n")
        else:
            out.write(f"statistics {args.op}d for {args.account}\n")
    elif args.action == "blacklist":
        table = session.call("GET", f"{base}/blacklist")["table"]
        out.write(render_table(table["columns"], table["rows"]))
    elif args.action == "apply":
        result = session.call("POST", f"{base}/update", body=args.data)["result"]
        out.write(
            f"update applied: account {result['account']}, revision {result['revision']}, "
            f"months {', '.join(result['periods'])}\n"
        )
    else:  # pragma: no cover - the parser knows no other action
        raise AssertionError(args.action)


def run(
    argv: Sequence[str],
    out: IO[str] = sys.stdout,
    err: IO[str] = sys.stderr,
    connect: Callable[[str, str], Exchange] = https_exchange,
) -> int:
    """Run cryptify-admin with ``argv``; return the exit status."""
    try:
        args = build_parser(err).parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if args.action == "version":
        out.write(f"{PROG} {__version__}\n")
        return EXIT_OK
    try:
        secret = read_secret(args.secret_file)
        if args.action == "fingerprint":
            out.write(fingerprint(public_key_of(secret)) + "\n")
            return EXIT_OK
        if not args.admin or not args.url:
            err.write(f"{PROG}: give --admin and --url (or their variables)\n")
            return EXIT_USAGE
        if args.action == "apply":
            try:
                with open(args.file, "rb") as f:
                    args.data = f.read(MAX_UPDATE_FILE + 1)
            except OSError as exc:
                raise AdminCliError(f"cannot read {args.file}: {exc.strerror}") from None
            if len(args.data) > MAX_UPDATE_FILE:
                raise AdminCliError(f"{args.file} is too large to be an update file")
        session = Session(connect(args.url, args.ca))
        session.login(args.admin, secret)
        try:
            act(session, args, out)
        finally:
            session.logout()
    except AdminCliError as exc:
        err.write(f"{PROG}: {exc}\n")
        return EXIT_FAILED
    return EXIT_OK


def manual_page() -> Page:
    """cryptify-admin(1), from the parser."""
    parser = build_parser(sys.stderr)
    return Page(
        name=PROG,
        section=1,
        summary="a remote admin's command line for the CRS admin interface",
        synopsis=("[--url URL] [--admin NAME] [--secret-file FILE] [--ca FILE] ACTION",),
        description=(
            "cryptify-admin is for the administrator of a security domain (a CMS account) "
            "whom the CRS operator made a remote admin with crs-cli create admin. Each run "
            "logs in to the CRS's admin interface over TLS with a signed challenge (the "
            "secret never leaves this process), does one action on the admin's own "
            "accounts within its authorizations (statistics, update), and logs out.\n\n"
            "The secret is read from a file that only its owner may read, never from the "
            "command line. The same interface serves a web console (docs/admin.md)."
        ),
        actions=actions_from_parser(parser),
        options=arguments(parser),
        exit_status=(
            ("0", "done"),
            ("1", "refused by the CRS, the CRS cannot be reached, or a file cannot be read"),
            ("2", "bad arguments"),
        ),
        environment=(
            Arg("CRYPTIFY_ADMIN_URL", "the admin interface, when --url is not given"),
            Arg("CRYPTIFY_ADMIN_NAME", "the admin name, when --admin is not given"),
            Arg("CRYPTIFY_ADMIN_SECRET_FILE", "the secret file, when --secret-file is not given"),
            Arg("CRYPTIFY_ADMIN_CA", "certificates to trust, when --ca is not given"),
        ),
        files=(),
        see_also=("crs-cli(8)",),
    )


def main() -> None:
    """Console script entry point."""
    from cryptify.console import console_main

    console_main(lambda out: run(sys.argv[1:], out))
