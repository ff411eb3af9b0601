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

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure

from cryptify.addresses import is_wildcard
from cryptify.config import (
    CrsConfig,
    CrsLocalConfig,
    load_crs_config,
    load_crs_local_config,
)
from cryptify.config.crs import Endpoint
from cryptify.crs.accounts import AccountStore
from cryptify.crs.admin import CrsAdmin
from cryptify.crs.attach import AttachCore, TicketKey
from cryptify.crs.calls import LinkRelayAllocator, RegistryParties
from cryptify.crs.calls import install as install_calls
from cryptify.crs.messages import MessageExpiry, MessageStore
from cryptify.crs.messaging import Messaging
from cryptify.crs.messaging import install as install_messaging
from cryptify.crs.objects import ClientObjects
from cryptify.crs.redis import RedisInstance, RedisSupervisor, ReplicaOf, load_password
from cryptify.crs.redis_batch import transient
from cryptify.crs.sessions import SessionTable
from cryptify.crs.slots import SlotMap
from cryptify.crs.state import CrsState
from cryptify.crs.stats import Statistics
from cryptify.crs.store import RedisStore
from cryptify.crs.trace import EventTraceObserver, TraceHub
from cryptify.crs.umsg_server import BACKLOG, Limits, UmsgListenService, UmsgServerFactory
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


def wanted_redis(local: CrsLocalConfig) -> list[tuple[str, str]]:
    """(name, config field) of the Redis servers this instance uses."""
    wanted = [("redis_high", "high"), ("redis_low", "low")]
    if local.db_backup == "replicate-from-peer":
        wanted.append(("redis_backup", "backup"))
    return wanted


def redis_instances(cfg: CrsConfig, local: CrsLocalConfig) -> list[RedisInstance]:
    """The Redis children this instance supervises (reads or makes passwords)."""
    g = cfg.global_
    data, logs = Path(g.data_dir) / "redis", Path(g.log_dir)
    instances = []
    for name, field in wanted_redis(local):
        where: Endpoint = getattr(g.redis, field)
        # redis_backup replicates the pool peer's redis_low once the pool
        # synchronization link exists; until then it runs as an empty store.
        replica: ReplicaOf | None = None
        instances.append(
            RedisInstance(
                name=name,
                password=load_password(data, name),
                data_dir=data,
                log_dir=logs,
                host=where.host,
                port=where.port,
                replica_of=replica,
            )
        )
    return instances


def external_password(cfg: CrsConfig) -> str | None:
    """The password of external Redis servers, from redis-password-file."""
    path = cfg.global_.redis.password_file
    if not path:
        return None
    try:
        with open(path) as f:
            text: str = f.read().strip()
    except OSError as exc:
        raise StartupError(f"cannot read redis-password-file {path}: {exc.strerror}") from exc
    return text or None


class ExternalRedis(service.MultiService):
    """Stores connected to Redis servers someone else runs."""

    def __init__(self, cfg: CrsConfig, reactor: Any, probes: dict[str, Any]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.cfg = cfg
        self.reactor = reactor
        for name in ("redis_high", "redis_low"):
            probes[name] = lambda n=name: any(s.connected for s in self if s.name == n)

    def store(self, name: str) -> RedisStore:
        """The store connected to Redis ``name`` (after start)."""
        for store in self:
            if isinstance(store, RedisStore) and store.name == name:
                return store
        raise KeyError(name)

    def startService(self) -> None:
        g = self.cfg.global_
        password = external_password(self.cfg)
        for name, where in (("redis_high", g.redis.high), ("redis_low", g.redis.low)):
            attach(self, RedisStore.tcp(self.reactor, where.host, where.port, password, name))
        super().startService()  # type: ignore[no-untyped-call]


class ManagedRedis(service.MultiService):
    """The supervised Redis children and the stores connected to them.

    The instances (and their password files) are made when the service
    starts, not when the tree is built.  The supervisor starts first; a
    failure to start stops the CRS with its reason.  On stop the stores
    close before the children are stopped.
    """

    def __init__(
        self,
        cfg: CrsConfig,
        local: CrsLocalConfig,
        reactor: Any,
        notify: Callable[[str, str], None],
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.cfg = cfg
        self.local = local
        self.reactor = reactor
        self.notify = notify
        self.supervisor: RedisSupervisor | None = None
        self.stores: list[RedisStore] = []
        self.names = [name for name, _ in wanted_redis(local)]

    def store(self, name: str) -> RedisStore:
        """The store connected to Redis ``name`` (after start)."""
        for store in self.stores:
            if store.name == name:
                return store
        raise KeyError(name)

    def status(self, name: str) -> bool:
        return self.supervisor is not None and self.supervisor.status().get(name) == "active"

    def startService(self) -> None:
        g = self.cfg.global_
        try:
            instances = redis_instances(self.cfg, self.local)
        except (OSError, ValueError) as exc:
            raise StartupError(f"redis: {exc}") from exc
        self.supervisor = RedisSupervisor.with_reactor(
            self.reactor, instances, self.notify, executable=g.redis.binary
        )
        self.stores = [RedisStore.for_instance(self.reactor, i) for i in instances]
        attach(self, *self.stores)
        service.Service.startService(self)
        self.supervisor.startService().addErrback(fatal("crs", self.reactor))
        for store in self.stores:
            store.startService()

    def stopService(self) -> Any:
        service.Service.stopService(self)

        async def stop() -> None:
            for store in self.stores:
                await defer.maybeDeferred(store.stopService)
            if self.supervisor is not None:
                await self.supervisor.stopService()

        return defer.ensureDeferred(stop())


def stores_ready(redis: ManagedRedis | ExternalRedis) -> bool:
    """Whether both Redis stores are connected (clients may attach)."""
    try:
        return all(redis.store(name).connected for name in ("redis_high", "redis_low"))
    except KeyError:
        return False


def make_crs_service(cfg: CrsConfig, local: CrsLocalConfig, reactor: Any) -> ProgramService:
    """Build the CRS's service tree; nothing is opened until it starts."""
    g = cfg.global_
    name = instance_name(cfg, local)
    root = ProgramService("crs")
    notifier = Notifier(reactor, g.notify or None, g.notify_timeout)
    attach(root, LogFileService(g.log_dir, "crs.log", "crs"))
    describe = [
        f"instance {name}, data {g.data_dir}, accounts {g.accounts_dir}, logs {g.log_dir}",
        f"client listener {g.listen.host}:{g.listen.port}, management {g.management}",
        f"relay control {g.relay_control}, redis {g.redis.mode}, db-backup {local.db_backup}",
    ]
    attach(root, lifecycle("crs", notifier, describe, cfg.warnings))

    probes: dict[str, Any] = {"crs": lambda: True}
    relay = RelayLink(reactor, unix_endpoint(reactor, g.relay_control, 5), name)
    probes["crs_relay"] = lambda: relay.active
    trace = TraceHub(reactor.seconds)
    accounts = AccountStore(g.accounts_dir)
    hosts = tuple(h.name for h in cfg.pool.hosts) or (name,)
    slots = SlotMap(hosts, name, {h.name: h.ip for h in cfg.pool.hosts})
    state = CrsState(
        name, probes, accounts, trace, slots=slots, relay=relay, notify=notifier.notify
    )

    redis: ManagedRedis | ExternalRedis
    if g.redis.mode == "managed":
        redis = managed = ManagedRedis(cfg, local, reactor, notifier.notify)
        for redis_name in managed.names:
            probes[redis_name] = lambda n=redis_name: managed.status(n)
    else:
        redis = ExternalRedis(cfg, reactor, probes)
    attach(root, redis)
    objects = ClientObjects(lambda: redis.store("redis_low"), trace, reactor.seconds)
    state.objects = objects

    def observe(attachment: Any) -> None:
        d = defer.ensureDeferred(objects.observe(attachment.account, attachment.uri))
        d.addErrback(not_observed)

    def not_observed(failure: Failure) -> None:
        if transient(failure):
            log.warn("observed client not recorded: {why}", why=failure.getErrorMessage())
        else:
            log.failure("cannot record observed client", failure)

    assert state.registry is not None
    state.registry.on_attach.append(observe)
    attach(root, CallbackService(on_start=accounts.reload))
    events = EventTraceObserver(trace)
    attach(
        root,
        CallbackService(
            lambda: globalLogPublisher.addObserver(events),
            lambda: globalLogPublisher.removeObserver(events),
        ),
    )
    attach(root, relay)

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

    core = AttachCore(
        name,
        accounts,
        state.registry,
        reactor.seconds,
        slots=slots,
        objects=objects,
        move_port=g.listen.port,
        tickets=TicketKey.derive(g.key),
        ready=lambda: stores_ready(redis),
    )
    stats = Statistics(lambda: redis.store("redis_low"), reactor.seconds)
    state.stats = stats
    state.registry.on_attach.append(stats.on_attach)
    sessions = SessionTable(
        RegistryParties(state.registry),
        LinkRelayAllocator(relay, media_host(cfg, name)),
        reactor,
        trace,
        on_invite=stats.on_invite,
    )
    install_calls(core, sessions)
    state.sessions = sessions
    store = MessageStore(lambda: redis.store("redis_low"), reactor.seconds)
    messaging = Messaging(
        store,
        state.registry,
        trace,
        lambda: redis.store("redis_low"),
        reactor.seconds,
        stats=stats,
        scheduler=reactor,
    )
    install_messaging(core, messaging)
    state.messaging = messaging
    attach(root, MessageExpiry(store, reactor))
    clients = UmsgServerFactory(core, reactor, Limits.from_config(g), g.keep_alive_for)
    where = f"{g.listen.host}:{g.listen.port}"
    attach(root, UmsgListenService(where, listen_clients, clients, reactor))

    def listen_management() -> Any:
        prepare_socket_path(g.management)
        factory = ManagementFactory(lambda proto: CrsAdmin(state, proto))
        port = reactor.listenUNIX(g.management, factory, mode=0o660)
        restrict_socket(g.management, g.management_group)
        return port

    attach(root, ListenService("management", g.management, listen_management))
    return root


def makeService(options: Options) -> ProgramService:
    """IServiceMaker entry point."""
    from twisted.internet import reactor

    return make_crs_service(options["crs"], options["local"], reactor)
