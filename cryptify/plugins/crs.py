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
   (:mod:`cryptify.plugins._crs_workers`, docs/workers.md), after, in a
   pool, the socket the workers follow the pool through
   (:mod:`cryptify.crs.workers.pool`)
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

import os
from collections.abc import Callable

import attrs
from twisted.logger import Logger

from cryptify.config import (
    ConfigError,
    CrsConfig,
    CrsLocalConfig,
    load_crs_config,
    load_crs_local_config,
)
from cryptify.config.crs import Endpoint
from cryptify.config.crs_local import worker_count
from cryptify.crs.interwork.peers import IwPeers
from cryptify.logs import LineSink, LogFileService
from cryptify.ops.crs import CrsFiles
from cryptify.ops.reload import ReloadError
from cryptify.plugins._common import (
    ConfigOptions,
    ConfigUsageError,
    Override,
    config_option,
    lifecycle,
    load_or_usage,
    log_dir_option,
    notify_option,
)
from cryptify.plugins._crs_build import (
    attach_clients,
    attach_interwork,
    attach_ops,
    attach_pool,
    attach_push,
    attach_stores,
    build_basics,
    build_parts,
    build_relay_link,
    describe,
)
from cryptify.plugins._crs_listeners import (
    admin_listener,
    management_listener,
)
from cryptify.reactor import IReactor, global_reactor
from cryptify.service import (
    ProgramService,
    attach,
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
            # Without crs-local.conf (development settings): one process.
            local = CrsLocalConfig(workers=1)
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
    (``iw-crs.conf``); without it there is no inter-working link.  The
    steps are in :mod:`cryptify.plugins._crs_build`; the order of the
    ``attach`` calls is the start order of the module docstring.
    """
    g = cfg.global_
    basics = build_basics(cfg, local, reactor)
    root = ProgramService("crs")
    basics.registry.lines = LineSink()
    logs = LogFileService(g.log_dir, "crs.log", "crs", lines=basics.registry.lines, clock=reactor)
    attach(root, logs)
    attach(root, lifecycle("crs", basics.notifier, describe(cfg, local, basics.name), cfg.warnings))
    relay = build_relay_link(cfg, basics)
    parts = build_parts(cfg, local, basics, relay, iw)
    attach_stores(root, basics, relay, parts)
    attach_pool(root, cfg, basics, parts)
    attach_push(root, parts)
    iw_parts = None
    if iw is not None:
        iw_parts = attach_interwork(root, cfg, basics, parts, iw, worker_count(local) > 1)
    clients = attach_clients(root, cfg, local, logs, basics, parts, iw_parts)
    attach(root, management_listener(cfg, reactor, parts.state))
    attach_ops(root, CrsFiles(cfg, local), reread, basics, relay, parts, clients)
    admin = admin_listener(cfg, reactor, parts.state)
    if admin is not None:
        attach(root, admin)
    return root


def makeService(options: Options) -> ProgramService:
    """IServiceMaker entry point."""
    reactor = global_reactor()

    reread = options.reread if options["config"] else None
    return make_crs_service(options["crs"], options["local"], reactor, reread, options["iw"])
