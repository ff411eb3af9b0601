"""One worker process of a CRS instance with ``workers N`` (docs/workers.md).

Run by the parent (:class:`cryptify.crs.workers.supervisor.WorkerSupervisor`)
as ``python -m cryptify.plugins._crs_workers INDEX PARENT-PID``; it reads
the parsed configuration (pickled by the parent) from standard input and
writes its crs.log lines to standard output for the parent to keep.

A worker serves clients: its own ``SO_REUSEPORT`` socket on the client
port, attach, calls between clients attached to it, and messages (the
durable store in ``redis_low`` shared by all workers; notices on
``redis_high`` wake the worker where a recipient is attached).  The
parent keeps the rest: the Redis children, the management socket, the
message expiry sweep, metrics, reload and the admin interface; in a pool,
everything of the pool: the worker follows the parent's slot view, and
posts and calls across members through it (:mod:`cryptify.crs.workers.pool`).

Service tree (stopped in reverse): the Redis stores, the accounts, live
traces, the link to ``crs_relay``, the notice subscription, the push
link (with ``features push``), in a pool the connection to the parent's
socket, the socket the parent asks (:mod:`cryptify.crs.workers.admin`),
the client listener.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
from typing import IO, Any, cast

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, globalLogBeginner
from zope.interface import implementer

from cryptify.config import CrsConfig, CrsLocalConfig
from cryptify.config.crs_local import worker_count
from cryptify.crs.attach.core import AttachCore, AttachSession
from cryptify.crs.attach.parking import ParkingLot, reviewed_every
from cryptify.crs.calls.core import SessionTable
from cryptify.crs.calls.wiring import RegistryParties
from cryptify.crs.interwork.calls import IwCalls
from cryptify.crs.operator.stats import Statistics
from cryptify.crs.pool.calls import install as install_pool_calls
from cryptify.crs.pool.calls_core import PoolCalls
from cryptify.crs.redis.instance import HIGH
from cryptify.crs.workers.admin import WorkerView, worker_listener, worker_socket
from cryptify.crs.workers.calls import WorkerLink
from cryptify.crs.workers.iw import WorkerIw, WorkerIwLink
from cryptify.crs.workers.notices import channel, worker_name
from cryptify.crs.workers.pool import WorkerPool
from cryptify.crs.workers.slot_view import owned_by
from cryptify.crs.workers.stores import WorkerRedis
from cryptify.crs.workers.wake import Siblings, WakeListener
from cryptify.logs import format_crs, wants_event
from cryptify.plugins._crs_build import (
    Basics,
    Messages,
    build_attach,
    build_basics,
    build_calls,
    build_messages,
    build_objects,
    build_push,
    build_relay_link,
    trace_events,
)
from cryptify.plugins._crs_listeners import client_listener
from cryptify.reactor import IReactor, global_reactor
from cryptify.service import CallbackService, ProgramService, attach

#: prctl(2) option: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def make_worker_service(
    cfg: CrsConfig, local: CrsLocalConfig, reactor: IReactor, index: int, iw: bool = False
) -> ProgramService:
    """Worker ``index``'s service tree; nothing opens until it starts
    (``iw``: the instance has inter-working peers)."""
    basics = build_basics(cfg, local, reactor, link=False)
    root = ProgramService(f"crs worker {index + 1}")
    relay = build_relay_link(cfg, basics)
    redis = WorkerRedis(cfg, local, reactor)
    objects = build_objects(basics, redis)
    core = build_attach(cfg, basics, redis, objects)
    stats = Statistics(lambda: redis.store("redis_low"), reactor.seconds)
    basics.registry.on_attach.append(stats.on_attach)
    sessions = build_calls(cfg, basics, core, relay, stats)
    messages = build_messages(basics, core, redis, stats)
    push = build_push(cfg, basics, objects, sessions, messages)
    notices = channel(basics.name)
    siblings = Siblings(lambda: redis.store(HIGH), notices)
    messages.messaging.siblings = siblings
    link, calls = worker_calls(
        basics, core, sessions, siblings, worker_name(index), worker_count(local)
    )
    siblings.router = link
    link.on_absent = messages.messaging.on_absent
    subscribed = redis.connect(HIGH, f"{HIGH} (notices)")
    attach(root, redis)
    # the notices go on redis_high's other connection: when it connects
    # again, the attaches it could not announce meanwhile are told again
    attach(root, CallbackService(on_start=lambda: announce_on_connect(redis, link)))
    attach(root, CallbackService(on_start=basics.accounts.reload))
    attach(root, trace_events(basics.trace))
    attach(root, relay)
    attach(root, CallbackService(on_stop=calls.stop))
    attach(root, CallbackService(on_stop=link.stop))
    listener = WakeListener(
        subscribed, notices, messages.messaging, basics.accounts.reload, peers=link
    )
    attach(root, listener)
    if push is not None:
        cps, pusher = push
        attach(root, cps)
        attach(root, CallbackService(on_stop=pusher.stop))
    pool = None
    pooled = local.crsname is not None and len(cfg.pool.hosts) >= 2
    if pooled or iw:
        pool = WorkerPool(
            reactor,
            worker_socket(cfg.global_.management, -1),
            basics.registry,
            siblings.tell_delivered,
        )
        pool.pooled = pooled
        attach(root, pool)
    if iw and pool is not None:
        # the parent keeps the inter-working link: this worker follows its
        # routes, posts through it and calls over it (docs/workers.md)
        worker_iw(basics, core, sessions, messages, pool, link)
    if pooled and pool is not None:
        # the parent keeps the pool link: this worker follows its slot view
        # and posts through its forwarder (docs/workers.md, Pools)
        pool.busy = lambda uri: bool(calls.busy(uri))
        # the workers' homes are cuts of the slots the instance owns now
        pool.on_view.append(lambda view: link.own(owned_by(view, view.me)))
        # calls with clients of other members go through the parent
        pool.calls = link
        link.members = frozenset(h.name for h in cfg.pool.hosts) - {basics.name}
        link.to_member = pool.send_frame
        link.member_of = pool.member_of
        core.slots = pool
        # an attach whose slot has no owner waits for the parent's next view
        # (a takeover, a hand-back step), as in one process (docs/pool.md)
        parking = core.parking = ParkingLot(reactor.seconds)
        reviewed_every(parking, reactor)
        pool.on_view.append(lambda view: parking.review())
        messages.messaging.pool = pool
    clients = client_listener(cfg, reactor, core, shared=True)
    view = WorkerView(
        basics.registry,
        basics.trace,
        sessions,
        messages.messaging,
        clients.factory,
        cfg.global_,
        accounts=basics.accounts,
        pool_key=None if pool is None or not pooled else lambda: pool.view.key,
    )
    path = worker_socket(cfg.global_.management, index)
    attach(root, worker_listener(reactor, path, view))
    attach(root, clients)
    return root


def worker_iw(
    basics: Basics,
    core: AttachCore,
    sessions: SessionTable,
    messages: Messages,
    pool: WorkerPool,
    link: WorkerLink,
) -> None:
    """Messages and calls with other operators' clients, through the parent."""
    iw = pool.iw = WorkerIw(pool, link.where)
    messages.messaging.iw = iw
    iw_link = WorkerIwLink(pool.send_iw_frame)
    pool.iw_calls = iw_link
    calls = IwCalls(sessions, RegistryParties(basics.registry), iw_link, iw, basics.reactor)
    install_pool_calls(core, iw_link, calls)


def worker_calls(
    basics: Basics,
    core: AttachCore,
    sessions: SessionTable,
    siblings: Siblings,
    me: str,
    count: int,
) -> tuple[WorkerLink, PoolCalls]:
    """Calls with clients attached to the other workers (the pool's calls
    over the local link, :mod:`cryptify.crs.workers.calls`)."""
    registry = basics.registry
    link = WorkerLink(me, basics.name, registry, siblings, count, basics.reactor)
    parties = RegistryParties(registry)
    calls = PoolCalls(me, sessions, parties, link, link.owner, basics.reactor)
    install_pool_calls(core, link, calls)
    registry.on_attach.append(lambda a: link.client_attached(a.uri, a.since))

    def detached(session: AttachSession, reason: str) -> None:
        if session.uri is not None:
            link.client_detached(session.uri)

    core.on_detach.append(detached)
    return link, calls


def announce_on_connect(redis: WorkerRedis, link: WorkerLink) -> None:
    """Every (re)connection of the publishing ``redis_high`` store tells
    the other workers this worker's attachments."""
    redis.store(HIGH).on_connect.append(lambda _protocol: link.announce())


@implementer(ILogObserver)
class _WorkerLog:
    """crs.log lines (this process's PID in them) on standard output."""

    def __init__(self, out: IO[str]) -> None:
        self.inner = FileLogObserver(out, format_crs)

    def __call__(self, event: LogEvent) -> None:
        if wants_event(event, "crs.log", True):
            self.inner(event)


def die_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM when the parent goes (even killed -9)."""
    try:
        libc: Any = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        # the parent went before the request took effect
        raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    index, parent = int(args[0]), int(args[1])
    die_with_parent(parent)
    # from the parent that started this process, over a pipe only it holds
    cfg, local, *more = pickle.loads(sys.stdin.buffer.read())  # noqa: S301
    globalLogBeginner.beginLoggingTo(
        [cast(ILogObserver, _WorkerLog(sys.stdout))], redirectStandardIO=False
    )
    reactor = global_reactor()
    root = make_worker_service(cfg, local, reactor, index, bool(more and more[0]))
    root.privilegedStartService()
    reactor.addSystemEventTrigger("before", "startup", root.startService)
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    reactor.callWhenRunning(stop_once_on_sigterm, reactor)
    reactor.run()


def stop_once_on_sigterm(reactor: IReactor) -> None:
    """SIGTERM stops the worker; another one while it stops (the parent's
    and systemd's, say) changes nothing."""
    stopping: list[bool] = []

    def stop() -> None:
        if not stopping:
            stopping.append(True)
            reactor.stop()

    signal.signal(signal.SIGTERM, lambda _signum, _frame: reactor.callFromThread(stop))


if __name__ == "__main__":
    main()
