"""Management commands of the CIG (one per ``cig-cli`` action).

Shared by the server (``cryptify.cig.operator.admin``) and ``cig-cli``.
"""

from __future__ import annotations

from twisted.protocols import amp

from cryptify.protocols.mgmt import Echo, JsonValue, MgmtCommand, ServerVersion

__all__ = ["Echo", "ServerVersion", "SetKey", "ShowCall", "ShowUmsg", "Status"]


class Status(MgmtCommand):
    """``status``: an overview of the gateway, as a JSON object of sections."""

    arguments = []
    response = [(b"status", JsonValue())]


class ShowCall(MgmtCommand):
    """``show call``: IN-FROM IN-TO OUT-FROM OUT-TO STATE per call."""

    arguments = []
    response = [(b"table", JsonValue())]


class ShowUmsg(MgmtCommand):
    """``show umsg``: FROM TO STATE TIME ID per UMSG session."""

    arguments = []
    response = [(b"table", JsonValue())]


class SetKey(MgmtCommand):
    """``set-key``: new key material (the ``cryptify-kms cig-keys`` blob).

    The CIG validates it, writes its keystore and re-attaches; it answers
    with the public ID and security domain of the key material.
    """

    arguments = [(b"blob", amp.Unicode())]
    response = [(b"public_id", amp.Unicode()), (b"domain", amp.Unicode())]
