"""The CIG's management responders (the server side of ``cig-cli``)."""

from __future__ import annotations

from collections.abc import Callable

from twisted.protocols import amp

from cryptify import __version__
from cryptify.cig.operator.state import CigState
from cryptify.crypto.errors import CryptoError
from cryptify.crypto.keymaterial import KeyMaterial
from cryptify.protocols import cig_admin
from cryptify.protocols.mgmt import CommandFailed, table

#: The manual's five columns, then where the call came from (issue 13).
CALL_COLUMNS = ["IN-FROM", "IN-TO", "OUT-FROM", "OUT-TO", "STATE", "SOURCE"]
UMSG_COLUMNS = ["FROM", "TO", "STATE", "TIME", "ID"]


class CigAdmin(amp.CommandLocator):
    """Answers management commands from the running CIG's state."""

    def __init__(
        self, state: CigState, set_key: Callable[[str], KeyMaterial] | None = None
    ) -> None:
        self.state = state
        self.set_key_into = set_key

    @cig_admin.ServerVersion.responder
    def server_version(self) -> dict[str, object]:
        return {"program": "cig", "version": __version__}

    @cig_admin.Echo.responder
    def echo(self, text: str) -> dict[str, object]:
        return {"text": text}

    @cig_admin.Status.responder
    def status(self) -> dict[str, object]:
        return {"status": self.state.status(__version__)}

    @cig_admin.ShowCall.responder
    def show_call(self) -> dict[str, object]:
        return {"table": table(CALL_COLUMNS, self.state.call_rows())}

    @cig_admin.ShowUmsg.responder
    def show_umsg(self) -> dict[str, object]:
        return {"table": table(UMSG_COLUMNS, self.state.umsg_rows())}

    @cig_admin.SetKey.responder
    def set_key(self, blob: str) -> dict[str, object]:
        if self.set_key_into is None:
            raise CommandFailed("this CIG has no UMSG interface to take key material")
        try:
            material = self.set_key_into(blob)
        except CryptoError as exc:
            raise CommandFailed(f"key material refused: {exc}") from None
        except OSError as exc:
            raise CommandFailed(f"cannot store the key material: {exc.strerror}") from None
        return {"public_id": material.uri, "domain": material.account}
