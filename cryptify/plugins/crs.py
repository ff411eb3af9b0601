"""The ``crs`` twistd plugin: the rendezvous server's service tree.

Start order (stop order is the reverse, one service at a time):

1. crs.log
2. lifecycle (INIT lines, ``notify.sh crs start|stop``)
3. the sync tunnel (``db-backup replicate-from-peer``: its port goes into
   redis_backup's ``replicaof``)
4. supervised Redis (redis_high, redis_low, [redis_backup]) — or nothing
   when ``redis external``, with the Redis stores
5. the sync link's server (8091), the replica monitor or the
   ``read-from`` import
6. the control link to ``crs_relay``
7. the pool link (TLS-PSK, 8090), in a pool of 2+ with a ``crsname``
8. the client listener (TLS, 5223); with ``workers N`` (N > 1) instead
   the held port and the worker processes that serve it
   (:mod:`cryptify.plugins._crs_workers`, docs/workers.md)
9. the management socket
10. the metrics endpoint (``metrics`` in crs.conf) and the SIGHUP reload
    (:mod:`cryptify.ops`)
11. the remote admin interface (HTTPS), when ``admin-listen`` is set

so on shutdown the admin interface, reload and metrics stop, the
management socket and the client listener close first,
then the relay link and the stores, and the Redis children stop last,
before the log closes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import attrs
from twisted.logger import Logger, globalLogPublisher

from cryptify import __version__
from cryptify.addresses import is_wildcard
from cryptify.config import (
    ConfigError,
    CrsConfig,
    CrsLocalConfig,
    load_crs_config,
    load_crs_local_config,
)
from cryptify.config.crs import Endpoint
from cryptify.config.crs_local import worker_count
from cryptify.crs.accounts import AccountStore
from cryptify.crs.attach.core import AttachCore
from cryptify.crs.attach.registry import AttachRegistry
from cryptify.crs.attach.tickets import TicketKey
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
from cryptify.crs.pool.backup import build_sync
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
from cryptify.crs.workers.notices import channel
from cryptify.crs.workers.wake import Siblings
from cryptify.events import Notifier
from cryptify.links.relay_link import RelayLink
from cryptify.logs import LogFileService
from cryptify.ops.crs import DIRECTIVES, CrsFiles, CrsLive, CrsMetrics
from cryptify.ops.metrics import Queries, metrics_listener, registry_for
from cryptify.ops.reload import Reloader, ReloadError, SighupService
from cryptify.plugins._common import (
    ConfigOptions,
    ConfigUsageError,
    Override,
    config_option,
    fatal,
    lifecycle,
    load_or_usage,
    log_dir_option,
    notify_option,
)
from cryptify.plugins._crs_listeners import (
    admin_listener,
    client_listener,
    client_workers,
    management_listener,
)
from cryptify.reactor import IReactor, global_reactor
from cryptify.service import (
    CallbackService,
    ProgramService,
    attach,
    unix_endpoint,
)

log = Logger(namespace="cryptify.crs")

#: Where the development defaults keep their files (relative to the cwd).
DEV_DIR = "crs-dev"
#: The inter-working peers file, beside crs.conf unless --iw-config says.
IW_FILE = "iw-crs.conf"


def dev_crs_config(base: str) -> CrsConfig:
    """Built-in development settings: everything on loopback, under ``base``."""
    base = os.path.abspath(base)
    g = CrsConfig().global_
    g = attrs.evolve(
        g,
        key="development-pool-key",
        listen=Endpoint("127.0.0.1", 15223),
        relay=Endpoint("127.0.0.1", 15146),
        relay_control=os.path.join(base, "relay.sock"),
        management=os.path.join(base, "crs.sock"),
        data_dir=os.path.join(base, "data"),
        accounts_dir=os.path.join(base, "accounts"),
        log_dir=os.path.join(base, "log"),
        notify="",
        redis=attrs.evolve(
            g.redis,
            high=Endpoint("127.0.0.1", 16390),
            low=Endpoint("127.0.0.1", 16391),
            backup=Endpoint("127.0.0.1", 16392),
        ),
    )
    return attrs.evolve(CrsConfig(), global_=g)


#: The paths the command line of ``twistd crs`` and ``twistd crs-relay``
#: may replace in crs.conf.
CRS_OVERRIDES: tuple[Override, ...] = (
    ("data-dir", ("global_", "data_dir")),
    ("log-dir", ("global_", "log_dir")),
    ("accounts-dir", ("global_", "accounts_dir")),
    ("socket", ("global_", "management")),
    ("relay-control", ("global_", "relay_control")),
    ("control", ("global_", "relay_control")),
    ("notify", ("global_", "notify")),
)


class Options(ConfigOptions):
    """Command-line options of ``twistd crs``."""

    synopsis = "[options]"
    longdesc = (
        "Cryptify rendezvous server.  Without --config it starts on loopback "
        f"with built-in development settings, keeping its files under ./{DEV_DIR}."
    )
    optParameters = [
        config_option("crs.conf"),
        ["local-config", "l", None, "crs-local.conf: instance name and db-backup"],
        ["data-dir", "d", None, "data directory (overrides crs.conf)"],
        log_dir_option("crs.conf"),
        ["accounts-dir", None, None, "accounts directory (overrides crs.conf)"],
        ["socket", "s", None, "management socket (overrides crs.conf)"],
        ["relay-control", None, None, "relay control socket (overrides crs.conf)"],
        notify_option("crs.conf"),
        ["iw-config", None, None, "iw-crs.conf (default: iw-crs.conf beside crs.conf)"],
    ]

    def postOptions(self) -> None:
        files = self.read_files()
        self["crs"], self["local"] = files.crs, files.local
        self["iw"] = self.read_iw()
        peers = self["iw"].config.instances if self["iw"] is not None else ()
        if worker_count(files.local) > 1 and (len(files.crs.pool.hosts) >= 2 or peers):
            raise ConfigUsageError(
                f"{self['local-config']}: workers: not yet with a pool or inter-working peers "
                "(docs/workers.md)"
            )

    def read_iw(self) -> IwPeers | None:
        """The inter-working peers of ``iw-crs.conf`` (absent file: none);
        with no crs.conf (development settings) there is no inter-working.

        @raise ConfigUsageError: naming the file, line and problem.
        """
        path = self["iw-config"]
        if path is None and self["config"]:
            path = os.path.join(os.path.dirname(os.path.abspath(self["config"])), IW_FILE)
        if path is None:
            return None
        try:
            return IwPeers.load(path)
        except (ConfigError, OSError) as exc:
            raise ConfigUsageError(str(exc)) from None

    def read_files(self) -> CrsFiles:
        """crs.conf (with the command line's overrides) and crs-local.conf.

        @raise ConfigUsageError: naming the file, line and problem.
        """
        cfg = self.load_config(load_crs_config, lambda: dev_crs_config(DEV_DIR))
        cfg = self.with_overrides(cfg, CRS_OVERRIDES)
        if self["local-config"]:
            local: CrsLocalConfig = load_or_usage(load_crs_local_config, self["local-config"])
        else:
            local = CrsLocalConfig()
        if local.crsname is not None and cfg.pool.hosts:
            names = [h.name for h in cfg.pool.hosts]
            if local.crsname not in names:
                raise ConfigUsageError(
                    f"{self['local-config']}: crsname {local.crsname} is not a host of the "
                    f"POOL section ({', '.join(names)})"
                )
            if len(names) >= 2 and not cfg.global_.key:
                raise ConfigUsageError(
                    f"{self['config']}: a pool of {len(names)} instances needs the GLOBAL key "
                    "(the pool link's shared secret)"
                )
        return CrsFiles(cfg, local)

    def reread(self) -> CrsFiles:
        """What L{read_files} reads, for a reload (SIGHUP).

        @raise ReloadError: naming the file, line and problem.
        """
        try:
            files = self.read_files()
        except ConfigUsageError as exc:
            raise ReloadError(str(exc)) from None
        for warning in files.crs.warnings:
            log.warn("{config_warning}", config_warning=warning)
        return files


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


def build_basics(cfg: CrsConfig, local: CrsLocalConfig, reactor: IReactor) -> Basics:
    """The instance's name, notifier, traces, accounts, slot map and registry."""
    g = cfg.global_
    name = instance_name(cfg, local)
    trace = TraceHub(reactor.seconds)
    hosts = tuple(h.name for h in cfg.pool.hosts) or (name,)
    notifier = Notifier(reactor, g.notify or None, g.notify_timeout)
    probes: dict[str, Callable[[], bool | str]] = {"crs": lambda: True}
    pool = None
    if local.crsname is not None and len(hosts) >= 2:
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
    install_objects(core, objects)
    return core


def build_calls(
    cfg: CrsConfig, basics: Basics, core: AttachCore, relay: RelayLink, stats: Statistics
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
    if basics.pool is not None:
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


def make_crs_service(
    cfg: CrsConfig,
    local: CrsLocalConfig,
    reactor: IReactor,
    reread: Callable[[], CrsFiles] | None = None,
    iw: IwPeers | None = None,
) -> ProgramService:
    """Build the CRS's service tree; nothing is opened until it starts.

    C{reread} reads the configuration again for a reload (SIGHUP); without
    it a reload re-reads the accounts only.  C{iw}: the inter-working peers
    (``iw-crs.conf``); without it there is no inter-working link.
    """
    g = cfg.global_
    basics = build_basics(cfg, local, reactor)
    root = ProgramService("crs")
    logs = LogFileService(g.log_dir, "crs.log", "crs")
    attach(root, logs)
    describe = [
        f"instance {basics.name}, data {g.data_dir}, accounts {g.accounts_dir}, logs {g.log_dir}",
        f"client listener {g.listen.host}:{g.listen.port}, management {g.management}",
        f"relay control {g.relay_control}, redis {g.redis.mode}, db-backup {local.db_backup}, "
        f"workers {worker_count(local)}",
        "admin interface "
        + (f"{g.admin_listen.host}:{g.admin_listen.port}" if g.admin_listen else "off"),
    ]
    attach(root, lifecycle("crs", basics.notifier, describe, cfg.warnings))
    relay = build_relay_link(cfg, basics)
    sync = build_sync(
        cfg, local, basics.name, reactor, lambda name: redis.store(name), basics.notifier.notify
    )
    redis = build_redis(cfg, local, basics, sync.backup_master)
    basics.probes.update(sync.probes)
    objects = build_objects(basics, redis)
    core = build_attach(cfg, basics, redis, objects)
    stats = Statistics(lambda: redis.store("redis_low"), reactor.seconds)
    basics.registry.on_attach.append(stats.on_attach)
    admins = AdminStore(os.path.join(g.data_dir, ADMINS_FILE), clock=reactor.seconds)
    sessions = build_calls(cfg, basics, core, relay, stats)
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
    attach(root, *sync.before_redis)
    attach(root, redis)
    attach(root, *sync.after_redis)
    attach(root, CallbackService(on_start=basics.accounts.reload))
    attach(root, CallbackService(on_start=admins.load))
    attach(root, trace_events(basics.trace))
    attach(root, relay)
    attach(root, messages.expiry)
    if basics.pool is not None:
        remote = sessions.remote
        busy = remote.busy if isinstance(remote, PoolCalls) else sessions.sessions_of
        basics.pool.watch(client_mover(basics.registry, basics.pool, lambda uri: bool(busy(uri))))
        changes = PoolChanges(basics.pool, g.data_dir, reactor, StateApplier(state))
        state.changes = changes
        basics.probes["pool_changes"] = changes.status
        # the change log is open before the link hears of any peer
        attach(root, changes)
        attach(root, basics.pool)
    if messages.forwarder is not None:
        attach(root, messages.forwarder)
    if push is not None:
        link, pusher = push
        attach(root, link)
        attach(root, CallbackService(on_stop=pusher.stop))
    if iw is not None:
        iw_link = IwLink(cfg, iw.config, reactor, __version__)
        iw.listeners.append(iw_link.update)
        state.iw_link = iw_link
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
        iw_calls = IwCalls(
            sessions, RegistryParties(basics.registry), iw_link, iw_forwarder, reactor
        )
        install_pool_calls(core, iw_link, iw_calls)
        iw_link.data_state = iw_calls.data_state
    clients = client_listener(cfg, reactor, core)
    if worker_count(local) > 1:
        siblings = Siblings(lambda: redis.store(HIGH), channel(basics.name))
        messages.messaging.siblings = siblings
        attach(root, *client_workers(cfg, local, reactor, logs, state, siblings))
    else:
        attach(root, clients)
    attach(root, management_listener(cfg, reactor, state))
    queries = Queries(reactor, {"waiting": messages.store.stored, "relay": relay.stats})
    ops_services(
        root,
        CrsFiles(cfg, local),
        reread,
        CrsLive(clients.factory, basics.notifier, CrsAdmin(state).reload_here),
        CrsMetrics(
            basics.registry,
            clients.factory,
            sessions,
            messages.messaging,
            messages.store,
            basics.probes,
            queries,
            pool_messages=messages.forwarder.counters if messages.forwarder is not None else None,
        ),
    )
    admin = admin_listener(cfg, reactor, state)
    if admin is not None:
        attach(root, admin)
    return root


def makeService(options: Options) -> ProgramService:
    """IServiceMaker entry point."""
    reactor = global_reactor()

    reread = options.reread if options["config"] else None
    return make_crs_service(options["crs"], options["local"], reactor, reread, options["iw"])
