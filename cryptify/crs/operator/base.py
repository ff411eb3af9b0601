"""What every group of the CRS's management responders shares: the state
and connection they answer from, account lookups, pool-wide changes, and
turning errors into ``CommandFailed`` answers."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import ParamSpec, TypeVar

from twisted.internet import defer
from twisted.protocols import amp

from cryptify.crs.accounts import Account, AccountError, check_account_id
from cryptify.crs.attach.registry import AttachRegistry
from cryptify.crs.objects.store import ClientObjects
from cryptify.crs.operator.state import CrsState
from cryptify.crs.pool.changes_core import Kind, Report
from cryptify.crs.pool.wire import WireError
from cryptify.protocols.mgmt import CommandFailed, ManagementProtocol

T = TypeVar("T")
P = ParamSpec("P")


def failing(error: Exception) -> CommandFailed:
    return CommandFailed(str(error))


def deferred(
    fn: Callable[P, Coroutine[defer.Deferred[object], object, T]],
) -> Callable[P, defer.Deferred[T]]:
    """Let an ``async`` method serve as an AMP responder."""

    def wrapper(*args: P.args, **kwargs: P.kwargs) -> defer.Deferred[T]:
        return defer.ensureDeferred(fn(*args, **kwargs))

    wrapper.__name__ = fn.__name__
    return wrapper


def utc(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def read_time(seconds: int | None) -> str:
    """When a URI last fetched, for ``show message``."""
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def next_period(period: str) -> str:
    year, month = (int(x) for x in period.split("-"))
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


class CommandsBase(amp.CommandLocator):
    """One locator per management connection: the running CRS's state and
    the connection (a ``trace`` streams to it)."""

    def __init__(self, state: CrsState, proto: ManagementProtocol | None = None) -> None:
        self.state = state
        self.proto = proto

    @property
    def registry(self) -> AttachRegistry:
        return self.state.registry

    def _account(self, account: str) -> Account:
        try:
            check_account_id(account)
        except AccountError as exc:
            raise failing(exc) from exc
        found = self.state.accounts.get(account)
        if found is None:
            raise CommandFailed(f"no account {account}")
        return found

    def _objects(self) -> ClientObjects:
        if self.state.objects is None:
            raise CommandFailed("the client object store is not available")
        return self.state.objects

    async def _pool(
        self, kind: Kind, args: dict[str, str | bytes], *, done_here: bool = False
    ) -> Report:
        """Make a pool-wide change (docs/pool.md): applied here, logged,
        sent to every peer; who has applied it."""
        changes = self.state.changes
        assert changes is not None
        try:
            return await changes.submit(kind, args, done_here=done_here)
        except OSError as exc:
            raise CommandFailed(f"not done: the pool change log cannot be written: {exc}") from exc
        except WireError as exc:
            raise CommandFailed(f"not done: {exc}") from exc
