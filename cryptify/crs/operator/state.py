"""What the running CRS knows about itself: the context of its operator views."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import attrs
from twisted.protocols import amp

from cryptify.config.crs_model import CrsGlobal
from cryptify.crs.accounts import AccountStore
from cryptify.crs.attach.registry import AttachRegistry
from cryptify.crs.calls.core import SessionTable
from cryptify.crs.interwork.peers import IwPeers
from cryptify.crs.messages.store import MessageStore
from cryptify.crs.objects.store import ClientObjects
from cryptify.crs.operator.stats import Statistics
from cryptify.crs.pool.changes_core import Kind, Report
from cryptify.crs.remote_admin.store import AdminStore
from cryptify.crs.slots import SlotMap
from cryptify.crs.trace import TraceHub

ACTIVE = "active"
INACTIVE = "inactive"
#: The module that handles client connections (``show system``, ``show account``).
ATTACH_MODULE = "app:attach"
#: With ``workers N``: the parent process (management, Redis, the workers).
PARENT_MODULE = "app:crs"


def probe_up(answer: bool | str) -> bool:
    """Whether a service probe's answer means the service is up: C{True},
    or a description that starts C{active} (e.g. the db-backup replica)."""
    if isinstance(answer, str):
        return answer.split(" ", 1)[0] == ACTIVE
    return answer


class RelayControl(Protocol):
    """What ``show relay`` needs of the control link to ``crs_relay``."""

    def call(
        self, command: type[amp.Command], **kwargs: object
    ) -> Awaitable[Mapping[str, object]]: ...


class PoolView(Protocol):
    """What ``show system`` and ``check slot`` need of a pool member
    (:class:`cryptify.crs.pool.wiring.PoolLink`)."""

    def rows(self) -> list[tuple[str, str, str]]:
        """(instance, pid or ``-``, slots) for every instance of the pool."""

    def owner(self, slot: int) -> str | None:
        """The instance owning ``slot`` now, or None while it has none."""


class PoolOps(Protocol):
    """What the pool-wide operator commands need of
    :class:`cryptify.crs.pool.changes.PoolChanges`."""

    async def submit(
        self, kind: Kind, args: Mapping[str, str | bytes], *, done_here: bool = False
    ) -> Report:
        """Apply a change here and on every peer; who has applied it."""

    async def purge(self, account: str, uri: str | None, here: int) -> tuple[int, Report]:
        """Purge on every live peer too; the total and who did it."""

    async def wake(self, account: str, uri: str) -> list[tuple[str, str]]:
        """Ask every live peer to wake ``uri``; (peer, what happened) for each."""


class Waker(Protocol):
    """What ``wakeup client`` needs of the push wake path
    (:class:`cryptify.crs.push.wiring.Pusher`)."""

    async def wake(self, account: str, uri: str) -> str:
        """Wake ``uri`` through the push token it left; what happened."""


class WorkerFanout(Protocol):
    """What the commands about clients need, with ``workers N``, of the
    workers that serve them (:class:`cryptify.crs.workers.fanout.WorkerViews`):
    each answer comes with which workers did not answer (None: all did)."""

    async def attach_rows(self) -> tuple[list[list[str]], str | None]:
        """Every worker's ``show attach`` rows, by URI."""

    async def session_rows(self) -> tuple[list[list[str]], str | None]:
        """Every worker's ``show session`` rows, in one process's order."""

    async def account_rows(self) -> tuple[list[list[str]], str | None]:
        """Every worker's ``show account`` row (MODULE ``app:attach/K``), by K."""

    async def purge(self, account: str, uri: str | None) -> tuple[int, str | None]:
        """Disconnect the matching clients of every worker; how many."""

    async def disconnect(
        self, account: str, uri: str | None, reason: str
    ) -> tuple[int, str | None]:
        """The same, telling the clients ``reason``."""

    async def clients(self) -> list[tuple[str, str]]:
        """(URI, account) of every client attached to a worker."""

    async def trace(
        self, element: str, push: Callable[[str], None]
    ) -> tuple[Callable[[], None], str | None]:
        """Send every worker's ``element`` lines to ``push``; the stop."""


class IwView(Protocol):
    """What ``show iw-crs`` needs of :class:`cryptify.crs.interwork.link.IwLink`."""

    def rows(self) -> list[tuple[str, str, str, str, str, str, str, str]]:
        """One row per peer with the manual's eight columns."""


def _registry(state: CrsState) -> AttachRegistry:
    return AttachRegistry(state.name, state.clock, state.trace)


def _slots(state: CrsState) -> SlotMap:
    return SlotMap((state.name,), state.name)


def _clock(state: CrsState) -> Callable[[], float]:
    return state.trace.clock


@attrs.define
class CrsState:
    """The instance, its accounts, attachments and traces, and service probes.

    Built once, with every part it shows; a part that is None is not
    running in this process (``show`` then answers that it is not
    available).  ``probes`` maps a service name (crs, crs_relay,
    redis_high, ...) to a function answering whether it is active right
    now, or a status line of its own (``active (...)``); the order is the
    order ``show services`` prints.
    """

    name: str
    probes: dict[str, Callable[[], bool | str]] = attrs.field(factory=dict)
    accounts: AccountStore = attrs.field(factory=lambda: AccountStore(os.devnull))
    trace: TraceHub = attrs.field(factory=TraceHub)
    #: The one clock of the operator views (the reactor's, as the traces').
    clock: Callable[[], float] = attrs.field(default=attrs.Factory(_clock, takes_self=True))
    registry: AttachRegistry = attrs.field(default=attrs.Factory(_registry, takes_self=True))
    slots: SlotMap = attrs.field(default=attrs.Factory(_slots, takes_self=True))
    #: The pool member, when this instance is in a pool of 2+ with a
    #: ``crsname``: then its map, not ``slots``, says who owns what.
    pool: PoolView | None = None
    #: The pool-wide operator changes, with :attr:`pool` (docs/pool.md).
    changes: PoolOps | None = None
    objects: ClientObjects | None = None
    relay: RelayControl | None = None
    #: The live calls (``show session``).
    sessions: SessionTable | None = None
    #: The message store (``show message``).
    messages: MessageStore | None = None
    #: Per-account statistics (``stats``).
    stats: Statistics | None = None
    #: The remote admins (``create admin`` ..., the admin interface).
    admins: AdminStore | None = None
    pid: int = attrs.field(factory=os.getpid)
    #: Push wake-ups (``wakeup client``; docs/push.md), when ``features push``.
    push: Waker | None = None
    #: The inter-working peers (``iw-crs.conf``) and their link (``show iw-crs``).
    iw: IwPeers | None = None
    iw_link: IwView | None = None
    #: ``notify(unit, event)``: tells notify.sh about system events.
    notify: Callable[[str, str], None] = lambda unit, event: None
    #: With ``workers N``: (index, PID or None) of each worker process,
    #: which serve the clients (this process only manages them).
    workers: Callable[[], list[tuple[int, int | None]]] | None = None
    #: With ``workers N``: the workers asked for ``show attach``, ``show
    #: session``, ``purge client(s)`` and ``trace``, and told to close the
    #: connections of clients deleted or blacklisted (docs/workers.md).
    fanout: WorkerFanout | None = None
    #: With ``workers N``: gives the workers what a reload changed in the
    #: client rules (``client-max-*``, ``keep-alive``; crs.conf's GLOBAL).
    worker_rules: Callable[[CrsGlobal], object] | None = None

    def services(self) -> list[tuple[str, str]]:
        """(service, active|inactive) for every service, in order."""
        result = []
        for service_name, probe in self.probes.items():
            try:
                up = probe()
            except Exception:
                up = False
            if isinstance(up, str):
                result.append((service_name, up))
                continue
            result.append((service_name, ACTIVE if up else INACTIVE))
        return result
