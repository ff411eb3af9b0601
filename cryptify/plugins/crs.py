"""The ``crs`` twistd plugin: the rendezvous server's service tree.

Start order (stop order is the reverse, one service at a time):

1. crs.log
2. lifecycle (INIT lines, ``notify.sh crs start|stop``)
3. supervised Redis (redis_high, redis_low, [redis_backup]) — or nothing
   when ``redis external``
4. the Redis stores
5. the control link to ``crs_relay``
6. the client listener (TLS, 5223)
7. the management socket

so on shutdown the management socket and the client listener close first,
then the relay link and the stores, and the Redis children stop last,
before the log closes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.logger import Logger, globalLogPublisher

from cryptify.addresses import is_wildcard
from cryptify.config import (
    CrsConfig,
    CrsLocalConfig,
    load_crs_config,
    load_crs_local_config,
)
from cryptify.config.crs import Endpoint
from cryptify.crs.accounts import AccountStore
from cryptify.crs.attach.core import AttachCore
from cryptify.crs.attach.registry import AttachRegistry
from cryptify.crs.attach.tickets import TicketKey
from cryptify.crs.attach.wiring import BACKLOG, Limits, UmsgListenService, UmsgServerFactory
from cryptify.crs.calls.core import SessionTable
from cryptify.crs.calls.wiring import LinkRelayAllocator, RegistryParties
from cryptify.crs.calls.wiring import install as install_calls
from cryptify.crs.messages.store import MessageExpiry, MessageStore
from cryptify.crs.messages.wiring import Messaging
from cryptify.crs.messages.wiring import install as install_messaging
from cryptify.crs.objects.store import ClientObjects
from cryptify.crs.objects.wiring import install as install_objects
from cryptify.crs.objects.wiring import observe_attaches
from cryptify.crs.operator.admin import CrsAdmin
from cryptify.crs.operator.state import CrsState
from cryptify.crs.operator.stats import Statistics
from cryptify.crs.push.wiring import CpsLink, DirectApns, Pusher
from cryptify.crs.redis.services import ExternalRedis, ManagedRedis, Redis, stores_ready
from cryptify.crs.slots import SlotMap
from cryptify.crs.trace import EventTraceObserver, TraceHub
from cryptify.events import Notifier
from cryptify.links.relay_link import RelayLink
from cryptify.logs import LogFileService
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
from cryptify.protocols.mgmt import ManagementFactory
from cryptify.protocols.tls import TLSConfigError, server_context_factory
from cryptify.service import (
    CallbackService,
    ListenService,
    ProgramService,
    StartupError,
    attach,
    prepare_socket_path,
    restrict_socket,
    unix_endpoint,
)
from cryptify.tools.certs import ensure_self_signed

log = Logger(namespace="cryptify.crs")

#: Where the development defaults keep their files (relative to the cwd).
DEV_DIR = "crs-dev"


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
    ]

    def postOptions(self) -> None:
        cfg = self.load_config(load_crs_config, lambda: dev_crs_config(DEV_DIR))
        self["crs"] = self.with_overrides(cfg, CRS_OVERRIDES)
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
        self["local"] = local


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
    reactor: Any
    notifier: Notifier
    trace: TraceHub
    accounts: AccountStore
    slots: SlotMap
    registry: AttachRegistry
    #: ``show services`` probes, in the order it prints them.
    probes: dict[str, Callable[[], bool | str]]


def build_basics(cfg: CrsConfig, local: CrsLocalConfig, reactor: Any) -> Basics:
    """The instance's name, notifier, traces, accounts, slot map and registry."""
    g = cfg.global_
    name = instance_name(cfg, local)
    trace = TraceHub(reactor.seconds)
    hosts = tuple(h.name for h in cfg.pool.hosts) or (name,)
    return Basics(
        name=name,
        reactor=reactor,
        notifier=Notifier(reactor, g.notify or None, g.notify_timeout),
        trace=trace,
        accounts=AccountStore(g.accounts_dir, clock=reactor.seconds),
        slots=SlotMap(hosts, name, {h.name: h.ip for h in cfg.pool.hosts}),
        registry=AttachRegistry(name, reactor.seconds, trace),
        probes={"crs": lambda: True},
    )


def build_relay_link(cfg: CrsConfig, basics: Basics) -> RelayLink:
    """The control link to ``crs_relay`` (connects when started)."""
    reactor = basics.reactor
    relay = RelayLink(reactor, unix_endpoint(reactor, cfg.global_.relay_control, 5), basics.name)
    basics.probes["crs_relay"] = lambda: relay.active
    return relay


def build_redis(cfg: CrsConfig, local: CrsLocalConfig, basics: Basics) -> Redis:
    """Supervised Redis children or external servers, with their stores."""
    redis: Redis
    if cfg.global_.redis.mode == "managed":
        reactor = basics.reactor
        redis = ManagedRedis(cfg, local, reactor, basics.notifier.notify, fatal("crs", reactor))
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
        slots=basics.slots,
        move_port=cfg.global_.listen.port,
        tickets=TicketKey.derive(cfg.global_.key),
        ready=lambda: stores_ready(redis),
    )
    install_objects(core, objects)
    return core


def build_calls(
    cfg: CrsConfig, basics: Basics, core: AttachCore, relay: RelayLink, stats: Statistics
) -> SessionTable:
    """Calls between attached clients, with relay sessions from ``crs_relay``."""
    sessions = SessionTable(
        RegistryParties(basics.registry),
        LinkRelayAllocator(relay, media_host(cfg, basics.name)),
        basics.reactor,
        basics.trace,
        on_invite=stats.on_invite,
    )
    install_calls(core, sessions)
    return sessions


@attrs.frozen
class Messages:
    """Store-and-forward messaging: the store, its rules and its expiry sweep."""

    store: MessageStore
    messaging: Messaging
    expiry: MessageExpiry


def build_messages(basics: Basics, core: AttachCore, redis: Redis, stats: Statistics) -> Messages:
    """Post, fetch and delivered for attached clients, kept in ``redis_low``."""
    reactor = basics.reactor
    store = MessageStore(lambda: redis.store("redis_low"), reactor.seconds)
    messaging = Messaging(store, basics.registry, basics.trace, stats=stats, scheduler=reactor)
    install_messaging(core, messaging)
    return Messages(store, messaging, MessageExpiry(store, reactor))


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


def client_listener(cfg: CrsConfig, reactor: Any, core: AttachCore) -> UmsgListenService:
    """The TLS client port (5223); a self-signed certificate without tls-certificate."""
    g = cfg.global_
    clients = UmsgServerFactory(core, reactor, Limits.from_config(g), g.keep_alive_for)

    def listen_clients() -> Any:
        if g.tls_certificate:
            cert, key = g.tls_paths()
        else:
            cert = os.path.join(g.data_dir, "tls", "crs.crt")
            key = os.path.join(g.data_dir, "tls", "crs.key")
        try:
            if not g.tls_certificate:
                log.warn(
                    "no tls-certificate configured: serving a self-signed development "
                    "certificate from {cert}; clients must be told to trust it",
                    cert=cert,
                )
                os.makedirs(os.path.dirname(cert), mode=0o700, exist_ok=True)
                ensure_self_signed(cert, key)
            context = server_context_factory(cert, key)
        except TLSConfigError as exc:
            raise StartupError(f"client TLS: {exc}") from exc
        return reactor.listenSSL(
            g.listen.port, clients, context, backlog=BACKLOG, interface=g.listen.host
        )

    where = f"{g.listen.host}:{g.listen.port}"
    return UmsgListenService(where, listen_clients, clients, reactor)


def management_listener(cfg: CrsConfig, reactor: Any, state: CrsState) -> ListenService:
    """The management socket ``crs-cli`` talks to (mode 0660)."""
    g = cfg.global_

    def listen_management() -> Any:
        prepare_socket_path(g.management)
        factory = ManagementFactory(lambda proto: CrsAdmin(state, proto))
        port = reactor.listenUNIX(g.management, factory, mode=0o660)
        restrict_socket(g.management, g.management_group)
        return port

    return ListenService("management", g.management, listen_management)


def trace_events(trace: TraceHub) -> CallbackService:
    """Feeds this process's log events to ``trace event`` while it runs."""
    events = EventTraceObserver(trace)
    return CallbackService(
        lambda: globalLogPublisher.addObserver(events),
        lambda: globalLogPublisher.removeObserver(events),
    )


def make_crs_service(cfg: CrsConfig, local: CrsLocalConfig, reactor: Any) -> ProgramService:
    """Build the CRS's service tree; nothing is opened until it starts."""
    g = cfg.global_
    basics = build_basics(cfg, local, reactor)
    root = ProgramService("crs")
    attach(root, LogFileService(g.log_dir, "crs.log", "crs"))
    describe = [
        f"instance {basics.name}, data {g.data_dir}, accounts {g.accounts_dir}, logs {g.log_dir}",
        f"client listener {g.listen.host}:{g.listen.port}, management {g.management}",
        f"relay control {g.relay_control}, redis {g.redis.mode}, db-backup {local.db_backup}",
    ]
    attach(root, lifecycle("crs", basics.notifier, describe, cfg.warnings))
    relay = build_relay_link(cfg, basics)
    redis = build_redis(cfg, local, basics)
    objects = build_objects(basics, redis)
    core = build_attach(cfg, basics, redis, objects)
    stats = Statistics(lambda: redis.store("redis_low"), reactor.seconds)
    basics.registry.on_attach.append(stats.on_attach)
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
        relay=relay,
        sessions=sessions,
        messages=messages.store,
        objects=objects,
        stats=stats,
        notify=basics.notifier.notify,
        push=push[1] if push is not None else None,
    )
    attach(root, redis)
    attach(root, CallbackService(on_start=basics.accounts.reload))
    attach(root, trace_events(basics.trace))
    attach(root, relay)
    attach(root, messages.expiry)
    if push is not None:
        link, pusher = push
        attach(root, link)
        attach(root, CallbackService(on_stop=pusher.stop))
    attach(root, client_listener(cfg, reactor, core))
    attach(root, management_listener(cfg, reactor, state))
    return root


def makeService(options: Options) -> ProgramService:
    """IServiceMaker entry point."""
    from twisted.internet import reactor

    return make_crs_service(options["crs"], options["local"], reactor)
