"""The CIG relay process (``cig-relay``): media bridge and its control.

The bridge itself (SRTP <-> RTP with G.711) arrives with the CIG media
issue; this module holds the control responders the CIG server polls.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from cryptify import __version__
from cryptify.protocols.relay_control import Poll, RelayStats

log = Logger(namespace="cryptify.cig.relay")


class BridgeControl(amp.CommandLocator):
    """Responders for the CIG server's control connection."""

    @Poll.responder
    def poll(self, server: str) -> dict[str, Any]:
        log.debug("poll from {server}", server=server)
        return {"sessions": 0, "version": __version__}

    @RelayStats.responder
    def stats(self) -> dict[str, Any]:
        return {"stats": {"sessions": 0}}


class BridgeControlProtocol(amp.AMP):
    """One control connection from the CIG server."""

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        log.info("CIG server connected")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        log.info("CIG server disconnected")


def control_factory() -> Factory[BridgeControlProtocol]:
    """Factory of control connections."""
    factory = Factory.forProtocol(lambda: BridgeControlProtocol(locator=BridgeControl()))  # type: ignore[no-untyped-call]
    factory.noisy = False
    return factory
