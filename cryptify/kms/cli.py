"""
C{cryptify-kms}: the stand-in for the management server.

    cryptify-kms [--store DIR] init ACCOUNT
    cryptify-kms [--store DIR] issue ACCOUNT URI --period YYYY-MM [--next] [-o FILE]
    cryptify-kms [--store DIR] update ACCOUNT --secret SECRET --period YYYY-MM
                 [--next] [--blacklist URI ...] [-o FILE]
    cryptify-kms [--store DIR] cig-keys ACCOUNT tel:+NUMBER [--period YYYY-MM]
                 [--next] (--reveal | -o FILE)
    cryptify-kms [--store DIR] export ACCOUNT [--period YYYY-MM] [--next] [-o FILE]
    cryptify-kms inspect --kpak HEX --z HEX --rsk HEX --id HEX
                 [--initiator-id HEX] [--sign-compat] FILE|-

Bad arguments print the usage and exit 2; a refused operation prints one
line on stderr and exits 1.  Secret key material is written to 0600 files and
printed only with C{--reveal}.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cryptify.crypto import mikey
from cryptify.crypto import mikey_payloads as mp
from cryptify.crypto._util import check_period, next_period
from cryptify.crypto.domains import DomainPeriod, PeerDomain
from cryptify.crypto.errors import CryptoError, MalformedInput
from cryptify.crypto.identity import check_tel_uri, period_of
from cryptify.crypto.keymaterial import KIND_CIG, write_key_material
from cryptify.crypto.sakke import SakkePublicKey, SakkeReceiver
from cryptify.crypto.securefile import write_secret_file
from cryptify.crypto.updatefile import seal_update_file
from cryptify.jsontypes import JsonObject
from cryptify.kms.store import KmsAccount, KmsStore, check_account
from cryptify.tools.manpage import Arg, Page, actions_from_parser, arguments

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

DEFAULT_STORE = "~/.cryptify-kms"


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors on the given stderr."""

    def __init__(self, *args: Any, err: IO[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._err = err

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if message:
            (self._err if file is sys.stderr or file is None else file).write(message)


def _hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hex: {text[:20]!r}") from None


def _period(text: str) -> str:
    try:
        return check_period(text)
    except MalformedInput:
        raise argparse.ArgumentTypeError("period must be YYYY-MM") from None


def _account(text: str) -> str:
    try:
        return check_account(text)
    except CryptoError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _tel(text: str) -> str:
    try:
        return check_tel_uri(text)
    except CryptoError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


ACCOUNT_HELP = "the account name"
URI_HELP = "the user's URI, tel:+NUMBER"
PERIOD_HELP = "the month the keys are for"


def build_parser(err: IO[str]) -> argparse.ArgumentParser:
    """The command line grammar."""
    parser = _Parser(prog="cryptify-kms", description="Cryptify key management stand-in", err=err)
    parser.add_argument(
        "--store",
        default=os.environ.get("CRYPTIFY_KMS_STORE", DEFAULT_STORE),
        help="directory of account master secrets (default %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    kw: dict[str, Any] = {"err": err}

    p = sub.add_parser("init", help="create an account's master secrets", **kw)
    p.add_argument("account", type=_account, metavar="ACCOUNT", help=ACCOUNT_HELP)
    p.add_argument("--force", action="store_true", help="replace existing secrets")

    p = sub.add_parser("issue", help="write a user key material file", **kw)
    p.add_argument("account", type=_account, metavar="ACCOUNT", help=ACCOUNT_HELP)
    p.add_argument("uri", type=_tel, metavar="URI", help=URI_HELP)
    p.add_argument("--period", type=_period, required=True, metavar="YYYY-MM", help=PERIOD_HELP)
    p.add_argument("--next", action="store_true", help="also issue the next month")
    p.add_argument("-o", "--output", metavar="FILE", help="file to write (default URI.keys)")

    p = sub.add_parser("update", help="write the monthly update file", **kw)
    p.add_argument("account", type=_account, metavar="ACCOUNT", help=ACCOUNT_HELP)
    p.add_argument(
        "--secret", required=True, metavar="SECRET", help="the account's CRS shared secret"
    )
    p.add_argument("--period", type=_period, required=True, metavar="YYYY-MM", help=PERIOD_HELP)
    p.add_argument("--next", action="store_true", help="also carry the next month")
    p.add_argument(
        "--blacklist", nargs="*", default=[], type=_tel, metavar="URI", help="URIs to blacklist"
    )
    p.add_argument("-o", "--output", metavar="FILE", help="file to write (default YYYY-MM.upd)")

    p = sub.add_parser(
        "export", help="write the account's public KMS parameters for other domains", **kw
    )
    p.add_argument("account", type=_account, metavar="ACCOUNT", help=ACCOUNT_HELP)
    p.add_argument(
        "--period",
        type=_period,
        default=None,
        metavar="YYYY-MM",
        help="the month (default: this month)",
    )
    p.add_argument("--next", action="store_true", help="also the next month")
    p.add_argument("-o", "--output", metavar="FILE", help="file to write (default ACCOUNT.domain)")

    p = sub.add_parser("cig-keys", help="key material for cig-cli set-key", **kw)
    p.add_argument("account", type=_account, metavar="ACCOUNT", help=ACCOUNT_HELP)
    p.add_argument("uri", type=_tel, metavar="URI", help=URI_HELP)
    p.add_argument(
        "--period",
        type=_period,
        default=None,
        metavar="YYYY-MM",
        help="the month (default: this month)",
    )
    p.add_argument("--next", action="store_true", help="also issue the next month")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--reveal", action="store_true", help="print the secret blob")
    out.add_argument("-o", "--output", metavar="FILE", help="write the blob to this 0600 file")

    p = sub.add_parser("inspect", help="decode, verify and decapsulate an I_MESSAGE", **kw)
    p.add_argument("--kpak", type=_hex, required=True, metavar="HEX", help="the KMS public key")
    p.add_argument("--z", type=_hex, required=True, metavar="HEX", help="the SAKKE public key")
    p.add_argument("--rsk", type=_hex, required=True, metavar="HEX", help="the receiver secret key")
    p.add_argument(
        "--id", type=_hex, required=True, metavar="HEX", help="responder identifier octets"
    )
    p.add_argument(
        "--initiator-id", type=_hex, default=None, metavar="HEX", help="initiator identifier octets"
    )
    p.add_argument("--sign-compat", action="store_true", help="accept the older signature layout")
    p.add_argument(
        "file", metavar="FILE", help="I_MESSAGE file (binary, hex or base64), or - for stdin"
    )
    return parser


def _cmd_init(args: argparse.Namespace, out: IO[str]) -> int:
    store = KmsStore(Path(args.store).expanduser())
    if store.exists(args.account) and not args.force:
        raise CryptoError(f"account {args.account!r} already exists (use --force to replace it)")
    account = KmsAccount.generate(args.account)
    store.save(account)
    out.write(f"created account {args.account} in {store.path(args.account)}\n")
    out.write(f"KPAK {account.kpak.hex()}\n")
    return 0


def _cmd_issue(args: argparse.Namespace, out: IO[str]) -> int:
    account = KmsStore(Path(args.store).expanduser()).load(args.account)
    material = account.issue(args.uri, args.period, args.next)
    path = args.output or f"{args.uri}.keys"
    write_key_material(path, material)
    periods = ", ".join(k.period for k in material.periods)
    out.write(f"wrote key material for {args.uri} ({periods}) to {path}\n")
    return 0


def _cmd_update(args: argparse.Namespace, out: IO[str]) -> int:
    store = KmsStore(Path(args.store).expanduser())
    account = store.load(args.account)
    account = KmsAccount(account.account, account.eccsi, account.sakke, account.revision + 1)
    update = account.update(args.period, args.next, tuple(args.blacklist))
    data = seal_update_file(update, args.secret)
    path = args.output or f"{args.period}.upd"
    write_secret_file(path, data)
    store.save(account)
    out.write(f"wrote update file for {args.account} {args.period} revision {update.revision}")
    out.write(f" to {path}\n")
    return 0


def _cmd_export(args: argparse.Namespace, out: IO[str]) -> int:
    account = KmsStore(Path(args.store).expanduser()).load(args.account)
    period = args.period or period_of(time.time())
    periods = [period, next_period(period)] if args.next else [period]
    domain = PeerDomain(
        account.account, tuple(DomainPeriod(p, account.kpak, account.z) for p in periods)
    )
    path = args.output or f"{args.account}.domain"
    with open(path, "wb") as f:  # public parameters: no secret
        f.write(domain.to_bytes())
    out.write(f"wrote the public KMS parameters of {args.account} ({', '.join(periods)})")
    out.write(f" to {path}\n")
    return 0


def _cmd_cig_keys(args: argparse.Namespace, out: IO[str]) -> int:
    account = KmsStore(Path(args.store).expanduser()).load(args.account)
    period = args.period or period_of(time.time())
    material = account.issue(args.uri, period, args.next, kind=KIND_CIG)
    blob = material.to_blob()
    if args.reveal:
        out.write(blob + "\n")
    else:
        write_secret_file(args.output, blob.encode("ascii") + b"\n")
        out.write(f"wrote CIG key material for {args.uri} to {args.output}\n")
    return 0


def _read_message(name: str) -> bytes:
    if name == "-":
        data = sys.stdin.buffer.read(1 << 20)
    else:
        try:
            with open(name, "rb") as f:
                data = f.read(1 << 20)
        except OSError as e:
            raise CryptoError(f"cannot read {name}: {e.strerror}") from None
    if data[:2] == bytes([1, mp.DATA_TYPE_SAKKE]):
        return data
    text = b"".join(data.split())
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        pass
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    return data


def _describe(payload: mp.Payload) -> JsonObject:
    name = type(payload).__name__
    out: JsonObject = {"type": mp.payload_type(payload), "name": name}
    if isinstance(payload, mp.Timestamp):
        out.update(ts_type=payload.ts_type, value=payload.value.hex())
        if payload.ts_type != mp.TS_COUNTER:
            out["utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(payload.unix_seconds()))
    elif isinstance(payload, mp.Rand):
        out["rand"] = payload.data.hex()
    elif isinstance(payload, mp.IdR):
        out.update(role=payload.role, id_type=payload.id_type, data=payload.data.hex())
        if payload.data.isascii() and payload.data.decode("ascii").isprintable():
            out["text"] = payload.data.decode("ascii")
    elif isinstance(payload, mp.SecurityPolicy):
        out.update(policy_no=payload.policy_no, prot_type=payload.prot_type)
        out["params"] = [[t, v.hex()] for t, v in payload.params]
    elif isinstance(payload, mp.SakkePayload):
        out.update(params=payload.params, id_scheme=payload.id_scheme, length=len(payload.data))
    elif isinstance(payload, mp.GeneralExtension):
        out.update(ext_type=payload.ext_type, data=payload.data.hex())
    else:
        out["body"] = payload.body.hex()
    return out


def _cmd_inspect(args: argparse.Namespace, out: IO[str]) -> int:
    report: JsonObject = {"signature": {"valid": False}, "decapsulation": {"ok": False}}
    report["ssv"] = None
    try:
        message = mp.parse_message(_read_message(args.file))
    except CryptoError as e:
        report["error"] = str(e)
        out.write(json.dumps(report) + "\n")
        return 1
    h = message.header
    report["header"] = {
        "data_type": h.data_type,
        "prf_func": h.prf_func,
        "csb_id": f"{h.csb_id:08x}",
        "map_type": h.map_type,
        "cs_ids": [*h.cs_ids()],
    }
    report["payloads"] = [_describe(p) for p in message.payloads]
    ok = True
    try:
        ts, sakke = mikey.check_i_message(message)
        when = ts.unix_seconds()
        initiator = args.initiator_id or mikey.initiator_identifier(message, sakke, when)
        report["initiator_id"] = initiator.hex()
        report["responder_id"] = args.id.hex()
        named = mikey.responder_identifier(message, sakke, when)
        report["responder_id_in_message"] = None if named is None else named.hex()
        try:
            with_header = mikey.verify_i_message(message, args.kpak, initiator, args.sign_compat)
            form = "whole message" if with_header else "without SIGN header (compat)"
            report["signature"] = {"valid": True, "covers": form}
        except CryptoError as e:
            ok = False
            report["signature"] = {"valid": False, "error": str(e)}
        try:
            receiver = SakkeReceiver(SakkePublicKey.from_bytes(args.z), args.id, args.rsk)
            ssv = receiver.decapsulate(sakke.data)
            report["decapsulation"] = {"ok": True}
            report["ssv"] = ssv.hex()
        except CryptoError as e:
            ok = False
            report["decapsulation"] = {"ok": False, "error": str(e)}
    except CryptoError as e:
        ok = False
        report["error"] = str(e)
    out.write(json.dumps(report) + "\n")
    return 0 if ok else 1


_COMMANDS = {
    "init": _cmd_init,
    "issue": _cmd_issue,
    "update": _cmd_update,
    "cig-keys": _cmd_cig_keys,
    "export": _cmd_export,
    "inspect": _cmd_inspect,
}


def main() -> None:
    """Console script entry point."""
    from cryptify.console import console_main

    console_main(lambda out: run(sys.argv[1:], out))


def manual_page() -> Page:
    """cryptify-kms(1), from the parser."""
    parser = build_parser(sys.stderr)
    return Page(
        name="cryptify-kms",
        section=1,
        summary="stand-in key management: account secrets, key material, update files",
        synopsis=("[--store DIR] ACTION [ARGUMENTS]", "ACTION --help"),
        description=(
            "cryptify-kms stands in for the management server of the Cryptify system: it "
            "keeps each account's master secrets in a directory, issues the key material "
            "files of users and of a CIG, writes the protected monthly update files that "
            "crs-cli apply loads, and decodes I_MESSAGEs for diagnosis.\n\n"
            "Secret key material is written to 0600 files and printed only with --reveal."
        ),
        actions=actions_from_parser(parser),
        options=tuple(a for a in arguments(parser)),
        exit_status=(
            ("0", "done"),
            ("1", "the operation was refused (one line on standard error says why)"),
            ("2", "bad arguments"),
        ),
        environment=(Arg("CRYPTIFY_KMS_STORE", "the store directory, when --store is not given"),),
        files=(Arg(DEFAULT_STORE, "the default store of account master secrets"),),
        see_also=("crs-cli(8)", "cig-cli(8)", "cryptify-client(1)"),
    )


def run(
    argv: list[str] | None = None, stdout: IO[str] | None = None, stderr: IO[str] | None = None
) -> int:
    """Run the tool; returns the exit status."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser(err)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    try:
        return _COMMANDS[args.command](args, out)
    except CryptoError as e:
        err.write(f"cryptify-kms {args.command}: {e}\n")
        return 1


if __name__ == "__main__":
    main()
