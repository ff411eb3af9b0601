"""The client listener's protocol (TLS already done by the port).

The UMSG protocol (WebSocket, attach, sessions, messages) arrives with the
attach issue.  Until then a client connection is accepted, its TLS
handshake completes, and it is closed if it has not attached within
:data:`ATTACH_TIMEOUT` -- the same limit the attach flow will keep.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="cryptify.crs.listener")

#: Seconds a new connection has to attach before it is closed.
ATTACH_TIMEOUT = 10.0
#: Bytes a client may send before attaching.
MAX_PENDING_BYTES = 64 * 1024


class PendingClient(Protocol):
    """A connection that has not attached (yet)."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.received = 0
        self.timer: Any = None

    def connectionMade(self) -> None:
        self.timer = self.clock.callLater(ATTACH_TIMEOUT, self.expire)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > MAX_PENDING_BYTES and self.transport is not None:
            self.transport.loseConnection()

    def expire(self) -> None:
        self.timer = None
        if self.transport is not None:
            peer = self.transport.getPeer()
            log.info(
                "no attach from {peer} within {timeout}s; closing",
                peer=peer,
                timeout=ATTACH_TIMEOUT,
            )
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


def client_factory(clock: IReactorTime) -> Factory[PendingClient]:
    """The factory the client TLS port serves."""
    factory = Factory.forProtocol(lambda: PendingClient(clock))
    factory.noisy = False
    return factory
