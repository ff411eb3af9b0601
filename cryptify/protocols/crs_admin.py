"""Management commands of the CRS (one per ``crs-cli`` action).

Shared by the server (``cryptify.crs.operator.admin``) and ``crs-cli``.  Tables and
other variable-size answers travel as :class:`JsonValue`.
"""

from __future__ import annotations

from twisted.protocols import amp

from cryptify.protocols.mgmt import Echo, JsonValue, MgmtCommand, ServerVersion

__all__ = [
    "AddAdminAccount",
    "AddAdminAuthorization",
    "AddBlacklist",
    "AddIwCrs",
    "Apply",
    "CheckSlot",
    "CreateAccount",
    "CreateAdmin",
    "DeleteAccount",
    "DeleteAdmin",
    "DeleteAdminAccount",
    "DeleteAdminAuthorization",
    "DeleteIwCrs",
    "Echo",
    "ListAccounts",
    "ListIwCrs",
    "PurgeClient",
    "PurgeClients",
    "PurgeObserved",
    "ReloadAccounts",
    "RemoveBlacklist",
    "ServerVersion",
    "ShowAccount",
    "ShowAdmin",
    "ShowAdminAccounts",
    "ShowAdmins",
    "ShowAttach",
    "ShowBlacklist",
    "ShowClientInfo",
    "ShowIwCrs",
    "ShowMessage",
    "ShowPushToken",
    "ShowRelay",
    "ShowServices",
    "ShowSession",
    "ShowSystem",
    "ShowUpdates",
    "StatsClear",
    "StatsDisable",
    "StatsEnable",
    "StatsExport",
    "Trace",
    "WakeupClient",
]


class _Table(MgmtCommand):
    arguments = []
    response = [(b"table", JsonValue())]


class _WholeTable(MgmtCommand):
    """A table that, with ``workers N``, the workers' answers make up;
    ``missing`` says which did not answer (their rows are not in it)."""

    arguments = []
    response = [(b"table", JsonValue()), (b"missing", amp.Unicode(optional=True))]


class ShowServices(_Table):
    """``show services``: Server, Service, Status of every CRS service."""


class ShowAttach(_WholeTable):
    """``show attach``: URI ACCOUNT TIME VERSION IP:PORT CRS."""


class ShowSession(_WholeTable):
    """``show session``: CALLER CALLEE TIME STATE."""


class ShowMessage(_Table):
    """``show message``: URI POST DELIV READ ACCOUNT."""


class ShowUpdates(_Table):
    """``show updates``: Account, Current Month, Next Month."""


class ShowSystem(_Table):
    """``show system``: SERVER PROCESS PID SLOTS."""


class ShowAccount(_WholeTable):
    """``show account``: SERVER MODULE PID LOADED ACCOUNTS (with ``workers
    N``, the parent's row and one per worker that answered)."""


class ShowRelay(_Table):
    """``show relay``: RX TXB TXERROR ERRNODEST ERRTOSHORT ERRTOLONG ENTRIES."""


class ListAccounts(_Table):
    """``list account``: ID, path, shared secret per account."""


class _AccountTable(MgmtCommand):
    arguments = [(b"account", amp.Unicode())]
    response = [(b"table", JsonValue())]


class ShowBlacklist(_AccountTable):
    """``show blacklist ACCOUNT``: URI per line."""


class ShowClientInfo(_AccountTable):
    """``show client-info ACCOUNT``: Uri, Timestamp, client info fields."""


class ShowPushToken(MgmtCommand):
    """``show push-token ACCOUNT URI``: Uri, Token, Type."""

    arguments = [(b"account", amp.Unicode()), (b"uri", amp.Unicode())]
    response = [(b"table", JsonValue())]


class CreateAccount(MgmtCommand):
    """``create account ID``: with the given base64 shared secret."""

    arguments = [(b"account", amp.Unicode()), (b"secret", amp.Unicode())]
    response = [(b"path", amp.Unicode()), (b"pool", amp.Unicode(optional=True))]


class DeleteAccount(MgmtCommand):
    """``delete account ID``: the account, its files and its users' state."""

    arguments = [(b"account", amp.Unicode())]
    response = [(b"disconnected", amp.Integer()), (b"pool", amp.Unicode(optional=True))]


class ReloadAccounts(MgmtCommand):
    """``reload account``: re-read every account; answers the problems found."""

    arguments = []
    response = [(b"problems", JsonValue()), (b"pool", amp.Unicode(optional=True))]


class Apply(MgmtCommand):
    """``apply FILE``: the protected update file's bytes (base64 in JSON)."""

    arguments = [(b"data", JsonValue())]
    response = [(b"result", JsonValue()), (b"pool", amp.Unicode(optional=True))]


class AddBlacklist(MgmtCommand):
    """``blacklist add ACCOUNT URI``."""

    arguments = [(b"account", amp.Unicode()), (b"uri", amp.Unicode())]
    response = [(b"disconnected", amp.Integer()), (b"pool", amp.Unicode(optional=True))]


class RemoveBlacklist(MgmtCommand):
    """``blacklist remove ACCOUNT URI``."""

    arguments = [(b"account", amp.Unicode()), (b"uri", amp.Unicode())]
    response = [(b"pool", amp.Unicode(optional=True))]


class WakeupClient(MgmtCommand):
    """``wakeup client account ACCOUNT URI``: push a wake-up to the client now."""

    arguments = [(b"account", amp.Unicode()), (b"uri", amp.Unicode())]
    response = [(b"result", amp.Unicode()), (b"pool", amp.Unicode(optional=True))]


class PurgeClient(MgmtCommand):
    """``purge client ACCOUNT URI``: disconnect it; it will reconnect."""

    arguments = [(b"account", amp.Unicode()), (b"uri", amp.Unicode())]
    response = [
        (b"purged", amp.Integer()),
        (b"pool", amp.Unicode(optional=True)),
        (b"missing", amp.Unicode(optional=True)),
    ]


class PurgeClients(MgmtCommand):
    """``purge clients ACCOUNT``: disconnect every client of the account."""

    arguments = [(b"account", amp.Unicode())]
    response = [
        (b"purged", amp.Integer()),
        (b"pool", amp.Unicode(optional=True)),
        (b"missing", amp.Unicode(optional=True)),
    ]


class PurgeObserved(MgmtCommand):
    """``purge observed ACCOUNT``: forget the account's observed clients."""

    arguments = [(b"account", amp.Unicode())]
    response = [(b"purged", amp.Integer())]


class CheckSlot(MgmtCommand):
    """``check slot URI``: the URI's slot and the instance that owns it."""

    arguments = [(b"uri", amp.Unicode())]
    response = [(b"slot", amp.Integer()), (b"owner", amp.Unicode())]


class Trace(MgmtCommand):
    """``trace ELEMENT``: stream :class:`~cryptify.protocols.mgmt.TraceEvent` lines;
    ``missing``: the workers not traced yet (``workers N``)."""

    arguments = [(b"element", amp.Unicode())]
    response = [(b"missing", amp.Unicode(optional=True))]


class StatsEnable(MgmtCommand):
    """``stats enable ACCOUNT``: start counting the account's clients."""

    arguments = [(b"account", amp.Unicode())]
    response = []


class StatsDisable(MgmtCommand):
    """``stats disable ACCOUNT``: stop counting (what was counted stays)."""

    arguments = [(b"account", amp.Unicode())]
    response = []


class StatsClear(MgmtCommand):
    """``stats clear ACCOUNT``: forget the account's statistics."""

    arguments = [(b"account", amp.Unicode())]
    response = [(b"cleared", amp.Integer())]


class StatsExport(_AccountTable):
    """``stats export ACCOUNT``: tel-uri, session-/message-/system-outgoing/incoming, updated."""


# -- remote admins ----------------------------------------------------------------


class CreateAdmin(MgmtCommand):
    """``create admin NAME``: the CLI made the secret; only its public key travels."""

    arguments = [(b"name", amp.Unicode()), (b"key", amp.Unicode())]
    response = [(b"pool", amp.Unicode(optional=True))]


class DeleteAdmin(MgmtCommand):
    """``delete admin NAME``."""

    arguments = [(b"name", amp.Unicode())]
    response = [(b"pool", amp.Unicode(optional=True))]


class AddAdminAccount(MgmtCommand):
    """``add admin-account NAME ACCOUNT``."""

    arguments = [(b"name", amp.Unicode()), (b"account", amp.Unicode())]
    response = [(b"pool", amp.Unicode(optional=True))]


class DeleteAdminAccount(AddAdminAccount):
    """``delete admin-account NAME ACCOUNT``."""


class AddAdminAuthorization(MgmtCommand):
    """``add admin-account-authorization NAME ACCOUNT AUTHORIZATION``."""

    arguments = [
        (b"name", amp.Unicode()),
        (b"account", amp.Unicode()),
        (b"authorization", amp.Unicode()),
    ]
    response = [(b"pool", amp.Unicode(optional=True))]


class DeleteAdminAuthorization(AddAdminAuthorization):
    """``delete admin-account-authorization NAME ACCOUNT AUTHORIZATION``."""


class ShowAdmins(_Table):
    """``show admins``: Admin, Accounts."""


class ShowAdmin(MgmtCommand):
    """``show admin NAME``: Name, Secret (the fingerprint of its verifier)."""

    arguments = [(b"name", amp.Unicode())]
    response = [(b"table", JsonValue())]


class ShowAdminAccounts(ShowAdmin):
    """``show admin-accounts NAME``: Account, Authorizations."""


class AddIwCrs(MgmtCommand):
    """``add iw-crs IP SECRET [-c COMMENT]``: trust an inter-working CRS instance."""

    arguments = [
        (b"ip", amp.Unicode()),
        (b"secret", amp.Unicode()),
        (b"comment", amp.Unicode(optional=True)),
    ]
    response = [(b"pool", amp.Unicode(optional=True))]


class DeleteIwCrs(MgmtCommand):
    """``delete iw-crs IP``."""

    arguments = [(b"ip", amp.Unicode())]
    response = [(b"pool", amp.Unicode(optional=True))]


class ListIwCrs(_Table):
    """``list iw-crs``: IP, shared secret, comment per instance."""


class ShowIwCrs(_Table):
    """``show iw-crs``: IW-CRS SIGNAL-LINK SIGNAL-OUTGOING SIGNAL-INCOMING
    DATA-LINK DATA-OUTGOING DATA-INCOMING VERSION."""
