"""Management responders for the remote admins (``create|delete admin``,
``add|delete admin-account[-authorization]``, ``show admin...``) and the
inter-working CRS instances (``add|delete|list|show iw-crs``); in a pool
each change is a pool change (docs/pool.md)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from twisted.logger import Logger

from cryptify.crs.interwork.peers import IwPeerError, IwPeers, check_peer
from cryptify.crs.operator.base import CommandsBase, deferred, failing
from cryptify.crs.pool.changes_core import Kind
from cryptify.crs.remote_admin.store import (
    KEY_BYTES,
    Admin,
    AdminError,
    AdminStore,
    fingerprint,
)
from cryptify.protocols import crs_admin
from cryptify.protocols.mgmt import CommandFailed, table

log = Logger(namespace="cryptify.crs.admin")

ADMINS_COLUMNS = ["Admin", "Accounts"]
ADMIN_COLUMNS = ["Name", "Secret"]
ADMIN_ACCOUNTS_COLUMNS = ["Account", "Authorizations"]
IW_COLUMNS = [
    "IW-CRS",
    "SIGNAL-LINK",
    "SIGNAL-OUTGOING",
    "SIGNAL-INCOMING",
    "DATA-LINK",
    "DATA-OUTGOING",
    "DATA-INCOMING",
    "VERSION",
]


class PeerCommands(CommandsBase):
    """The remote-admin and inter-working responders."""

    # -- inter-working CRS instances -------------------------------------------

    def _iw(self) -> IwPeers:
        if self.state.iw is None:
            raise CommandFailed("inter-working is not available on this CRS")
        return self.state.iw

    @crs_admin.AddIwCrs.responder
    @deferred
    async def add_iw_crs(
        self, ip: str, secret: str, comment: str | None = None
    ) -> dict[str, object]:
        peers = self._iw()
        try:
            # Checked here first, so that a bad address or secret is refused
            # before it becomes a pool change.
            check_peer(ip, secret, comment)
        except IwPeerError as exc:
            raise CommandFailed(str(exc)) from exc
        if self.state.changes is not None:
            report = await self._pool(
                Kind.IW_ADD, {"ip": ip, "secret": secret, "comment": comment or ""}
            )
            if report.problems:
                raise CommandFailed(f"{ip}: {report.text()}")
            return {"pool": report.text()}
        try:
            peers.add(ip, secret, comment)
        except (IwPeerError, OSError) as exc:
            raise failing(exc) from exc
        log.info("inter-working CRS {ip} added", ip=ip)
        return {}

    @crs_admin.DeleteIwCrs.responder
    @deferred
    async def delete_iw_crs(self, ip: str) -> dict[str, object]:
        peers = self._iw()
        if peers.config.get(ip) is None:
            raise CommandFailed(f"no inter-working CRS {ip}")
        if self.state.changes is not None:
            report = await self._pool(Kind.IW_DELETE, {"ip": ip})
            if report.problems:
                raise CommandFailed(f"{ip}: {report.text()}")
            return {"pool": report.text()}
        try:
            peers.delete(ip)
        except OSError as exc:
            raise failing(exc) from exc
        log.info("inter-working CRS {ip} deleted", ip=ip)
        return {}

    @crs_admin.ListIwCrs.responder
    def list_iw_crs(self) -> dict[str, object]:
        rows = [[p.ip, p.secret, p.comment or ""] for p in self._iw().config.instances]
        return {"table": table(["IP", "shared secret", "comment"], rows)}

    @crs_admin.ShowIwCrs.responder
    def show_iw_crs(self) -> dict[str, object]:
        self._iw()
        rows = [list(r) for r in self.state.iw_link.rows()] if self.state.iw_link else []
        return {"table": table(IW_COLUMNS, rows)}

    # -- remote admins -----------------------------------------------------------

    def _admins(self) -> AdminStore:
        if self.state.admins is None:
            raise CommandFailed("remote admins are not available")
        return self.state.admins

    async def _admin_change(
        self, change: Callable[[], object], kind: Kind, args: dict[str, str | bytes]
    ) -> dict[str, object]:
        """Change the admins here (the store checks it); in a pool, then
        on every peer too."""
        try:
            change()
        except AdminError as exc:
            raise failing(exc) from exc
        if self.state.changes is None:
            return {}
        report = await self._pool(kind, args, done_here=True)
        return {"pool": report.text()}

    @crs_admin.CreateAdmin.responder
    @deferred
    async def create_admin(self, name: str, key: str) -> dict[str, object]:
        try:
            raw = base64.b64decode(key.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            raise CommandFailed("the admin's public key did not arrive intact") from exc
        if len(raw) != KEY_BYTES:
            raise CommandFailed("the admin's public key did not arrive intact")
        return await self._admin_change(
            lambda: self._admins().create(name, raw), Kind.ADMIN_CREATE, {"name": name, "key": raw}
        )

    @crs_admin.DeleteAdmin.responder
    @deferred
    async def delete_admin(self, name: str) -> dict[str, object]:
        return await self._admin_change(
            lambda: self._admins().delete(name), Kind.ADMIN_DELETE, {"name": name}
        )

    @crs_admin.AddAdminAccount.responder
    @deferred
    async def add_admin_account(self, name: str, account: str) -> dict[str, object]:
        self._account(account)
        return await self._admin_change(
            lambda: self._admins().add_account(name, account),
            Kind.ADMIN_ACCOUNT_ADD,
            {"name": name, "account": account},
        )

    @crs_admin.DeleteAdminAccount.responder
    @deferred
    async def delete_admin_account(self, name: str, account: str) -> dict[str, object]:
        return await self._admin_change(
            lambda: self._admins().delete_account(name, account),
            Kind.ADMIN_ACCOUNT_DELETE,
            {"name": name, "account": account},
        )

    @crs_admin.AddAdminAuthorization.responder
    @deferred
    async def add_admin_authorization(
        self, name: str, account: str, authorization: str
    ) -> dict[str, object]:
        admins = self._admins()
        return await self._admin_change(
            lambda: admins.add_authorization(name, account, authorization),
            Kind.ADMIN_AUTH_ADD,
            {"name": name, "account": account, "authorization": authorization},
        )

    @crs_admin.DeleteAdminAuthorization.responder
    @deferred
    async def delete_admin_authorization(
        self, name: str, account: str, authorization: str
    ) -> dict[str, object]:
        admins = self._admins()
        return await self._admin_change(
            lambda: admins.delete_authorization(name, account, authorization),
            Kind.ADMIN_AUTH_DELETE,
            {"name": name, "account": account, "authorization": authorization},
        )

    def _one_admin(self, name: str) -> Admin:
        admins = self._admins()
        try:
            return admins.admin(name)
        except AdminError as exc:
            raise failing(exc) from exc

    @crs_admin.ShowAdmins.responder
    def show_admins(self) -> dict[str, object]:
        rows = [[a.name, ",".join(sorted(a.accounts)) or "-"] for a in self._admins()]
        return {"table": table(ADMINS_COLUMNS, rows)}

    @crs_admin.ShowAdmin.responder
    def show_admin(self, name: str) -> dict[str, object]:
        found = self._one_admin(name)
        return {"table": table(ADMIN_COLUMNS, [[found.name, fingerprint(found.key)]])}

    @crs_admin.ShowAdminAccounts.responder
    def show_admin_accounts(self, name: str) -> dict[str, object]:
        found = self._one_admin(name)
        rows = [
            [account, ",".join(sorted(found.accounts[account])) or "-"]
            for account in sorted(found.accounts)
        ]
        return {"table": table(ADMIN_ACCOUNTS_COLUMNS, rows)}
