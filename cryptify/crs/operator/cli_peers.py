"""crs-cli's remote-admin and iw-crs actions, and the line that says where
in a pool a change is done."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import IO

from cryptify.protocols import crs_admin
from cryptify.protocols.mgmt import ManagementClient
from cryptify.tools.mgmtcli import EXIT_OK


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


def pool_line(out: IO[str], answer: Mapping[str, object]) -> None:
    """In a pool, which instances have applied the command (docs/pool.md)."""
    where = answer.get("pool")
    if where:
        out.write(f"{where}\n")
