"""The CRS's management responders (the server side of ``crs-cli``)."""

from __future__ import annotations

from typing import Any

from twisted.protocols import amp

from cryptify import __version__
from cryptify.crs.state import CrsState
from cryptify.protocols import crs_admin
from cryptify.protocols.mgmt import table

SERVICES_COLUMNS = ["Server", "Service", "Status"]


class CrsAdmin(amp.CommandLocator):
    """Answers management commands from the running CRS's state."""

    def __init__(self, state: CrsState) -> None:
        self.state = state

    @crs_admin.ServerVersion.responder
    def server_version(self) -> dict[str, Any]:
        return {"program": "crs", "version": __version__}

    @crs_admin.Echo.responder
    def echo(self, text: str) -> dict[str, Any]:
        return {"text": text}

    @crs_admin.ShowServices.responder
    def show_services(self) -> dict[str, Any]:
        rows = [[self.state.name, name, status] for name, status in self.state.services()]
        return {"table": table(SERVICES_COLUMNS, rows)}
