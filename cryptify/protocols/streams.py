"""Stream-connection helpers shared by the servers' protocols."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport, ITransport


def abort(transport: ITransport | None) -> None:
    """
    Drop a stream connection at once, discarding what is not yet sent (a
    hostile or stuck peer is not waited for); nothing without a transport.

    Every stream transport the servers run on (TCP, TLS over TCP, and
    iosim's in tests) has C{abortConnection}, which C{ITransport} does not
    declare.
    """
    if transport is not None:
        cast(ITCPTransport, transport).abortConnection()


class IdleTimer:
    """Calls ``expired()`` once a connection has been silent for ``seconds``:
    :meth:`reset` at connect and on every frame, :meth:`stop` when it ends
    (or before it is dropped)."""

    def __init__(self, clock: IReactorTime, seconds: float, expired: Callable[[], None]) -> None:
        self.clock = clock
        self.seconds = seconds
        self.expired = expired
        self._call: IDelayedCall | None = None

    def reset(self) -> None:
        self.stop()
        self._call = self.clock.callLater(self.seconds, self._fire)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fire(self) -> None:
        self._call = None
        self.expired()
