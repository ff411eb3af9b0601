"""Management commands of the CRS (one per ``crs-cli`` action).

Shared by the server (``cryptify.crs.admin``) and ``crs-cli``.
"""

from __future__ import annotations

from cryptify.protocols.mgmt import Echo, JsonValue, MgmtCommand, ServerVersion

__all__ = ["Echo", "ServerVersion", "ShowServices"]


class ShowServices(MgmtCommand):
    """``show services``: Server, Service, Status of every CRS service."""

    arguments = []
    response = [(b"table", JsonValue())]
