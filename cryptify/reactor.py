"""The reactor as this project's services use it, as one type.

Twisted splits the reactor into interfaces (time, TCP, TLS, UNIX, UDP,
processes, threads); a service that needs several takes an
:class:`IReactor`, one that needs one takes that interface alone (a
clock is an ``IReactorTime``).  :func:`global_reactor` is the running
reactor as an :class:`IReactor`, for the programs' entry points; tests
pass Twisted's memory reactors, which provide what the code under test
uses.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFDSet,
    IReactorFromThreads,
    IReactorPluggableNameResolver,
    IReactorProcess,
    IReactorSSL,
    IReactorTCP,
    IReactorTime,
    IReactorUDP,
    IReactorUNIX,
)


class IReactor(
    IReactorCore,
    IReactorTime,
    IReactorTCP,
    IReactorSSL,
    IReactorUNIX,
    IReactorUDP,
    IReactorProcess,
    IReactorFromThreads,
    IReactorFDSet,
    IReactorPluggableNameResolver,
):
    """Every reactor interface the programs use."""


def global_reactor() -> IReactor:
    """The installed reactor (importing it installs the default one)."""
    from twisted.internet import reactor

    return cast(IReactor, reactor)


__all__ = ["IReactor", "global_reactor"]
