"""Stream-connection helpers shared by the servers' protocols."""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import ITCPTransport, ITransport


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
