"""The build steps of the ``crs`` service tree (:mod:`cryptify.plugins.crs`).

Each step builds one part and opens nothing; the parts a worker process
shares with the parent (:mod:`cryptify.plugins._crs_workers`) are built
by the same steps.  ``make_crs_service`` calls them in this order:
L{build_basics}, L{build_relay_link}, L{build_parts} (sync, Redis, client
objects, attach, calls, messages, push, the operator's state), then the
``attach_*`` steps that add services to the tree in start order.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.logger import globalLogPublisher

from cryptify import __version__
from cryptify.addresses import is_wildcard
from cryptify.config import (
    CrsConfig,
    CrsLocalConfig,
)
from cryptify.config.crs_local import worker_count
from cryptify.crs.accounts import AccountStore
from cryptify.crs.attach.core import AttachCore
from cryptify.crs.attach.parking import ParkingLot
from cryptify.crs.attach.registry import AttachRegistry
from cryptify.crs.attach.tickets import TicketKey
from cryptify.crs.attach.wiring import UmsgListenService
from cryptify.crs.calls.core import SessionTable
from cryptify.crs.calls.wiring import LinkRelayAllocator, RegistryParties
from cryptify.crs.calls.wiring import install as install_calls
from cryptify.crs.interwork.calls import IwCalls
from cryptify.crs.interwork.forward import IwForwarder
from cryptify.crs.interwork.link import IwLink
from cryptify.crs.interwork.peers import IwPeers
from cryptify.crs.messages.store import MessageExpiry, MessageStore
from cryptify.crs.messages.wiring import Messaging
from cryptify.crs.messages.wiring import install as install_messaging
from cryptify.crs.objects.store import ClientObjects
from cryptify.crs.objects.wiring import install as install_objects
from cryptify.crs.objects.wiring import observe_attaches
from cryptify.crs.operator.admin import CrsAdmin
from cryptify.crs.operator.state import CrsState
from cryptify.crs.operator.stats import Statistics
from cryptify.crs.pool.backup import Sync, build_sync
from cryptify.crs.pool.calls import install as install_pool_calls
from cryptify.crs.pool.calls import pool_calls
from cryptify.crs.pool.calls_core import PoolCalls
from cryptify.crs.pool.changes import PoolChanges
from cryptify.crs.pool.changes_apply import StateApplier
from cryptify.crs.pool.forward import Forwarder
from cryptify.crs.pool.origins import RedisOrigins
from cryptify.crs.pool.wiring import ClientSlots, PoolLink, client_mover
from cryptify.crs.push.wiring import CpsLink, DirectApns, Pusher
from cryptify.crs.redis.instance import HIGH, ReplicaOf
from cryptify.crs.redis.services import ExternalRedis, ManagedRedis, Redis, stores_ready
from cryptify.crs.remote_admin.store import ADMINS_FILE, AdminStore
from cryptify.crs.slots import SlotMap
from cryptify.crs.trace import EventTraceObserver, TraceHub
from cryptify.crs.workers.admin import worker_socket
from cryptify.crs.workers.fanout import WorkerViews
from cryptify.crs.workers.notices import channel, worker_name
from cryptify.crs.workers.parent import ParentPool
from cryptify.crs.workers.slot_view import map_key
from cryptify.crs.workers.wake import HomeRouter, Siblings
from cryptify.events import Notifier
from cryptify.links.relay_link import RelayLink
from cryptify.logs import LogFileService
from cryptify.ops.crs import DIRECTIVES, CrsFiles, CrsLive, CrsMetrics
from cryptify.ops.metrics import Queries, metrics_listener, registry_for
from cryptify.ops.reload import Reloader, SighupService
from cryptify.plugins._common import (
    fatal,
)
from cryptify.plugins._crs_listeners import (
    client_listener,
    client_workers,
)
from cryptify.reactor import IReactor
from cryptify.service import (
    CallbackService,
    ProgramService,
    attach,
    unix_endpoint,
)


def media_host(cfg: CrsConfig, name: str) -> str:
    """The address clients send relayed media to."""
    relay_host = cfg.global_.relay.host
    if not is_wildcard(relay_host):
        return relay_host
    for host in cfg.pool.hosts:
        if host.name == name:
            return host.ip
    return cfg.global_.listen.host


def instance_name(cfg: CrsConfig, local: CrsLocalConfig) -> str:
    """This instance's name: crsname, else the first pool host, else crs1."""
    if local.crsname:
        return local.crsname
    if cfg.pool.hosts:
        return cfg.pool.hosts[0].name
    return "crs1"


@attrs.frozen
class Basics:
    """What every part of the CRS shares; built first, opens nothing."""

    name: str
    reactor: IReactor
    notifier: Notifier
    trace: TraceHub
    accounts: AccountStore
    slots: SlotMap
    registry: AttachRegistry
    #: ``show services`` probes, in the order it prints them (a string is
    #: printed as the status).
    probes: dict[str, Callable[[], bool | str]]
    #: The pool link, when ``crsname`` names this instance in a pool of 2+;
    #: then its map, not ``slots``, says who serves which slot.
    pool: PoolLink | None = None


def build_basics(
    cfg: CrsConfig, local: CrsLocalConfig, reactor: IReactor, link: bool = True
) -> Basics:
    """The instance's name, notifier, traces, accounts, slot map and registry;
    in a pool, the pool link (not in a worker: ``link`` False, its parent
    keeps it)."""
    g = cfg.global_
    name = instance_name(cfg, local)
    trace = TraceHub(reactor.seconds)
    hosts = tuple(h.name for h in cfg.pool.hosts) or (name,)
    notifier = Notifier(reactor, g.notify or None, g.notify_timeout)
    probes: dict[str, Callable[[], bool | str]] = {"crs": lambda: True}
    pool = None
    if link and local.crsname is not None and len(hosts) >= 2:
        pool = PoolLink(cfg, name, reactor, notifier.notify)
        for peer in pool.peers:
            probes[f"pool_link_{peer}"] = functools.partial(pool.link_up, peer)
    return Basics(
        name=name,
        reactor=reactor,
        notifier=notifier,
        trace=trace,
        accounts=AccountStore(g.accounts_dir, clock=reactor.seconds),
        slots=SlotMap(hosts, name, {h.name: h.ip for h in cfg.pool.hosts}),
        registry=AttachRegistry(name, reactor.seconds, trace),
        probes=probes,
        pool=pool,
    )


def build_relay_link(cfg: CrsConfig, basics: Basics) -> RelayLink:
    """The control link to ``crs_relay`` (connects when started)."""
    reactor = basics.reactor
    relay = RelayLink(reactor, unix_endpoint(reactor, cfg.global_.relay_control, 5), basics.name)
    basics.probes["crs_relay"] = lambda: relay.active
    return relay


def build_redis(
    cfg: CrsConfig,
    local: CrsLocalConfig,
    basics: Basics,
    backup_master: Callable[[], ReplicaOf | None] = lambda: None,
) -> Redis:
    """Supervised Redis children or external servers, with their stores."""
    redis: Redis
    if cfg.global_.redis.mode == "managed":
        reactor = basics.reactor
        redis = ManagedRedis(
            cfg, local, reactor, basics.notifier.notify, fatal("crs", reactor), backup_master
        )
    else:
        redis = ExternalRedis(cfg, basics.reactor)
    for redis_name in redis.names:
        basics.probes[redis_name] = functools.partial(redis.status, redis_name)
    return redis


def build_objects(basics: Basics, redis: Redis) -> ClientObjects:
    """Push tokens, client info and observed clients in ``redis_low``."""
    objects = ClientObjects(lambda: redis.store("redis_low"), basics.trace, basics.reactor.seconds)
    observe_attaches(basics.registry, objects)
    return objects


def build_attach(
    cfg: CrsConfig, basics: Basics, redis: Redis, objects: ClientObjects
) -> AttachCore:
    """What every client connection shares: the attach checks, and client objects."""
    core = AttachCore(
        basics.name,
        basics.accounts,
        basics.registry,
        basics.reactor.seconds,
        slots=basics.slots if basics.pool is None else ClientSlots(basics.pool),
        move_port=cfg.global_.listen.port,
        tickets=TicketKey.derive(cfg.global_.key),
        ready=lambda: stores_ready(redis),
    )
    if basics.pool is not None:
        core.parking = parked_attaches(basics.pool, basics.reactor.seconds)
    install_objects(core, objects)
    return core


def parked_attaches(link: PoolLink, clock: Callable[[], float]) -> ParkingLot:
    """Attaches that wait for their slot to get an owner, reviewed after
    every change of ``link``'s map and at each heartbeat while some wait."""
    parking = ParkingLot(clock)

    def first() -> None:
        link.recheck(parking.review)

    parking.on_first = first
    link.watch(parking.review)
    return parking


def build_calls(
    cfg: CrsConfig,
    basics: Basics,
    core: AttachCore,
    relay: RelayLink,
    stats: Statistics,
    pool_calls_here: bool = True,
) -> SessionTable:
    """Calls between attached clients, with relay sessions from ``crs_relay``;
    in a pool, also with clients attached at the other instances (the
    caller's instance keeps the session and its relay)."""
    parties = RegistryParties(basics.registry)
    sessions = SessionTable(
        parties,
        LinkRelayAllocator(relay, media_host(cfg, basics.name)),
        basics.reactor,
        basics.trace,
        on_invite=stats.on_invite,
    )
    install_calls(core, sessions)
    if basics.pool is not None and pool_calls_here:
        # (with workers the parent passes the calls' frames to them instead)
        calls = pool_calls(basics.pool, sessions, parties, basics.reactor)
        install_pool_calls(core, basics.pool, calls)
    return sessions


@attrs.frozen
class Messages:
    """Store-and-forward messaging: the store, its rules and its expiry sweep."""

    store: MessageStore
    messaging: Messaging
    expiry: MessageExpiry
    #: In a pool: forwarding to the owner of a recipient's slot, hinted
    #: hand-off and the sweep (docs/pool.md).
    forwarder: Forwarder | None = None


def build_messages(basics: Basics, core: AttachCore, redis: Redis, stats: Statistics) -> Messages:
    """Post, fetch and delivered for attached clients, kept in ``redis_low``."""
    reactor = basics.reactor
    store = MessageStore(lambda: redis.store("redis_low"), reactor.seconds)
    messaging = Messaging(store, basics.registry, basics.trace, stats=stats, scheduler=reactor)
    install_messaging(core, messaging)
    forwarder = None
    if basics.pool is not None:
        origins = RedisOrigins(lambda: redis.store("redis_low"))
        forwarder = Forwarder(basics.pool, store, messaging, reactor, origins=origins)
        basics.probes["pool_messages"] = forwarder.status
    return Messages(store, messaging, MessageExpiry(store, reactor), forwarder)


def build_push(
    cfg: CrsConfig,
    basics: Basics,
    objects: ClientObjects,
    sessions: SessionTable,
    messages: Messages,
) -> tuple[CpsLink, Pusher] | None:
    """With ``features push``: the push server link and the wake path (docs/push.md)."""
    g = cfg.global_
    if not g.push or g.cps is None:
        return None
    reactor = basics.reactor
    link = CpsLink(reactor, g.cps.host, g.cps.port, g.cps.id, g.cps.secret, g.cps_trust)
    direct = DirectApns(reactor, link, g.apns_trust) if g.apns_type == "direct" else None
    pusher = Pusher(reactor, objects, link, direct)
    sessions.on_absent = pusher.absent
    messages.messaging.on_absent = pusher.absent
    basics.probes["push"] = pusher.status
    return link, pusher


def trace_events(trace: TraceHub) -> CallbackService:
    """Feeds this process's log events to ``trace event`` while it runs."""
    events = EventTraceObserver(trace)
    return CallbackService(
        lambda: globalLogPublisher.addObserver(events),
        lambda: globalLogPublisher.removeObserver(events),
    )


def ops_services(
    root: ProgramService,
    files: CrsFiles,
    reread: Callable[[], CrsFiles] | None,
    live: CrsLive,
    metrics: CrsMetrics,
) -> Reloader[CrsFiles]:
    """SIGHUP reload (re-reads the files when there are files) and the metrics endpoint."""

    def read() -> CrsFiles:
        return files if reread is None else reread()

    reactor = live.notifier.reactor
    reloader = Reloader("crs", files, DIRECTIVES, read, live.apply)
    metrics.reloader = reloader
    where = files.local.metrics or files.crs.global_.metrics
    if where is not None:
        registry = registry_for(metrics.families)
        attach(root, metrics_listener(reactor, where, registry, metrics.queries))
    attach(root, SighupService(reactor, reloader.reload))
    return reloader


@attrs.frozen
class Parts:
    """The CRS's parts built by L{build_parts}; services not yet in a tree."""

    sync: Sync
    redis: Redis
    core: AttachCore
    admins: AdminStore
    sessions: SessionTable
    messages: Messages
    push: tuple[CpsLink, Pusher] | None
    state: CrsState


def describe(cfg: CrsConfig, local: CrsLocalConfig, name: str) -> list[str]:
    """The INIT lines that say what this instance serves."""
    g = cfg.global_
    return [
        f"instance {name}, data {g.data_dir}, accounts {g.accounts_dir}, logs {g.log_dir}",
        f"client listener {g.listen.host}:{g.listen.port}, management {g.management}",
        f"relay control {g.relay_control}, redis {g.redis.mode}, db-backup {local.db_backup}, "
        f"workers {worker_count(local)}",
        "admin interface "
        + (f"{g.admin_listen.host}:{g.admin_listen.port}" if g.admin_listen else "off"),
    ]


def build_parts(
    cfg: CrsConfig,
    local: CrsLocalConfig,
    basics: Basics,
    relay: RelayLink,
    iw: IwPeers | None,
) -> Parts:
    """Sync, Redis, client objects, attach, calls, messages, push and the
    operator's state, wired to each other; nothing opened."""
    reactor = basics.reactor

    def store(name: str) -> Any:
        return redis.store(name)

    sync = build_sync(cfg, local, basics.name, reactor, store, basics.notifier.notify)
    redis = build_redis(cfg, local, basics, sync.backup_master)
    basics.probes.update(sync.probes)
    objects = build_objects(basics, redis)
    core = build_attach(cfg, basics, redis, objects)
    stats = Statistics(lambda: redis.store("redis_low"), reactor.seconds)
    basics.registry.on_attach.append(stats.on_attach)
    admins = AdminStore(os.path.join(cfg.global_.data_dir, ADMINS_FILE), clock=reactor.seconds)
    sessions = build_calls(cfg, basics, core, relay, stats, worker_count(local) <= 1)
    messages = build_messages(basics, core, redis, stats)
    push = build_push(cfg, basics, objects, sessions, messages)
    state = CrsState(
        basics.name,
        basics.probes,
        basics.accounts,
        basics.trace,
        registry=basics.registry,
        slots=basics.slots,
        pool=basics.pool,
        relay=relay,
        sessions=sessions,
        messages=messages.store,
        objects=objects,
        stats=stats,
        admins=admins,
        notify=basics.notifier.notify,
        push=push[1] if push is not None else None,
        iw=iw,
    )
    return Parts(sync, redis, core, admins, sessions, messages, push, state)


def attach_stores(root: ProgramService, basics: Basics, relay: RelayLink, parts: Parts) -> None:
    """The sync link around Redis, the accounts and admins loaded, the
    trace of log events, the relay link and the message expiry sweep."""
    attach(root, *parts.sync.before_redis)
    attach(root, parts.redis)
    attach(root, *parts.sync.after_redis)
    attach(root, CallbackService(on_start=basics.accounts.reload))
    attach(root, CallbackService(on_start=parts.admins.load))
    attach(root, trace_events(basics.trace))
    attach(root, relay)
    attach(root, parts.messages.expiry)


def attach_pool(root: ProgramService, cfg: CrsConfig, basics: Basics, parts: Parts) -> None:
    """In a pool: clients moved after a map change, the pool-wide change
    log (open before the link hears of any peer), the pool link; then the
    message forwarder."""
    pool = basics.pool
    if pool is not None:
        sessions = parts.sessions
        remote = sessions.remote
        busy = remote.busy if isinstance(remote, PoolCalls) else sessions.sessions_of
        pool.watch(client_mover(basics.registry, pool, lambda uri: bool(busy(uri))))
        changes = PoolChanges(pool, cfg.global_.data_dir, basics.reactor, StateApplier(parts.state))
        parts.state.changes = changes
        basics.probes["pool_changes"] = changes.status
        attach(root, changes)
        attach(root, pool)
    if parts.messages.forwarder is not None:
        attach(root, parts.messages.forwarder)


def attach_push(root: ProgramService, parts: Parts) -> None:
    """With ``features push``: the push server link; the wake path stops
    with the tree."""
    if parts.push is not None:
        link, pusher = parts.push
        attach(root, link)
        attach(root, CallbackService(on_stop=pusher.stop))


def attach_interwork(
    root: ProgramService,
    cfg: CrsConfig,
    basics: Basics,
    parts: Parts,
    iw: IwPeers,
    workers: bool = False,
) -> tuple[IwLink, IwForwarder]:
    """The inter-working link to the peers of ``iw-crs.conf``, messages
    forwarded over it and calls across it (docs/interworking.md); with
    ``workers`` the calls are the workers' (the parent passes their frames)."""
    reactor = basics.reactor
    messages = parts.messages
    iw_link = IwLink(cfg, iw.config, reactor, __version__)
    iw.listeners.append(iw_link.update)
    parts.state.iw_link = iw_link
    attach(root, iw_link)
    accounts = basics.accounts
    iw_forwarder = IwForwarder(
        iw_link,
        messages.store,
        messages.messaging,
        reactor,
        lambda: frozenset(a.id for a in accounts),
        pool=messages.forwarder,
    )
    attach(root, iw_forwarder)
    if workers:
        return iw_link, iw_forwarder
    iw_calls = IwCalls(
        parts.sessions, RegistryParties(basics.registry), iw_link, iw_forwarder, reactor
    )
    install_pool_calls(parts.core, iw_link, iw_calls)
    iw_link.data_state = iw_calls.data_state
    return iw_link, iw_forwarder


def attach_clients(
    root: ProgramService,
    cfg: CrsConfig,
    local: CrsLocalConfig,
    logs: LogFileService,
    basics: Basics,
    parts: Parts,
    iw: tuple[IwLink, IwForwarder] | None = None,
) -> UmsgListenService:
    """The client listener, or with ``workers N`` (N > 1) the held port and
    the worker processes that serve it; the listener is returned either way
    (its factory's counters feed reload and metrics).  ``iw``: the
    inter-working link and forwarder, which the workers post and call
    through."""
    reactor = basics.reactor
    clients = client_listener(cfg, reactor, parts.core)
    if worker_count(local) > 1:
        siblings = Siblings(lambda: parts.redis.store(HIGH), channel(basics.name))
        messaging = parts.messages.messaging
        messaging.siblings = siblings
        messaging.workers_serve = True
        # a message from a pool member or a peer: the worker it is sent to
        # asks for the push wake-up of a recipient attached nowhere
        siblings.router = HomeRouter(basics.name, worker_count(local))
        siblings.marks_absent = True
        held, workers = client_workers(
            cfg, local, reactor, logs, parts.state, siblings, iw is not None
        )
        pool, forwarder = basics.pool, parts.messages.forwarder
        if pool is not None and forwarder is not None:
            # the workers follow this process's slot view and post through
            # its forwarder (docs/workers.md, Pools)
            views = parts.state.fanout
            assert isinstance(views, WorkerViews)
            link: PoolLink = pool
            forwarder.held_by_workers = lambda: views.holds(map_key(link))
        else:
            pool = forwarder = None
        if pool is not None or iw is not None:
            path = worker_socket(cfg.global_.management, -1)
            iw_link, iw_forwarder = iw if iw is not None else (None, None)
            parent = ParentPool(reactor, path, pool, forwarder, iw=iw_forwarder, iw_link=iw_link)
            if iw_link is not None and parent.iw_calls is not None:
                # show iw-crs: the calls through each peer (the workers')
                iw_link.data_state = parent.iw_calls.data_state
            attach(root, parent)
        attach(root, held, workers)
    else:
        attach(root, clients)
    return clients


def attach_ops(
    root: ProgramService,
    files: CrsFiles,
    reread: Callable[[], CrsFiles] | None,
    basics: Basics,
    relay: RelayLink,
    parts: Parts,
    clients: UmsgListenService,
) -> None:
    """The metrics endpoint and the SIGHUP reload (docs/operations.md)."""
    messages = parts.messages
    asked: dict[str, Callable[[], Any]] = {"waiting": messages.store.stored, "relay": relay.stats}
    fanout = parts.state.fanout
    workers: list[str] = []
    if isinstance(fanout, WorkerViews):
        # the clients' counters are the workers' (docs/workers.md)
        for index in range(fanout.count):
            workers.append(f"worker_{worker_name(index)}")
            asked[workers[-1]] = fanout.counters_of(index)
    queries = Queries(basics.reactor, asked)
    forwarder = messages.forwarder
    ops_services(
        root,
        files,
        reread,
        CrsLive(
            clients.factory,
            basics.notifier,
            CrsAdmin(parts.state).reload_here,
            parts.state.worker_rules,
        ),
        CrsMetrics(
            basics.registry,
            clients.factory,
            parts.sessions,
            messages.messaging,
            messages.store,
            basics.probes,
            queries,
            pool_messages=forwarder.counters if forwarder is not None else None,
            workers=tuple(workers),
        ),
    )
