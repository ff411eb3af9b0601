"""
Reload and metrics of the CRS.

What a reload (SIGHUP) changes in the running CRS (:data:`DIRECTIVES`):

- live (with ``workers N`` in every worker too): the client listener's
  limits (``client-max-message``, ``client-attach-timeout``,
  ``client-max-unattached-per-address``,
  ``client-max-unattached``) for connections that arrive from then on,
  and ``client-max-handshakes`` from the next connection accepted or done;
  ``keep-alive`` rules for clients that connect from then on;
  ``notify`` and ``notify-timeout``; and every reload re-reads the
  accounts directory as ``crs-cli reload account`` does (new accounts,
  secrets, key periods, blacklists: a client now blacklisted is
  disconnected);
- after a restart only: everything that opens a socket or a file, names
  this instance or its pool, or is read once at start (listen and relay
  addresses, certificates, paths, ``key``, push settings, Redis,
  ``[POOL]``, ``crsname``, ``db-backup``, ``metrics``, ``workers``).  ``addr-map`` is
  used by ``crs_relay``, which reads it when it starts.

The metrics (:class:`CrsMetrics`) are read from the running objects at
each scrape; see ``docs/operations.md`` for the list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from twisted.logger import Logger

from cryptify.config import CrsConfig, CrsLocalConfig
from cryptify.config.crs_model import CrsGlobal
from cryptify.crs.attach.registry import AttachRegistry
from cryptify.crs.attach.wiring import UmsgServerFactory
from cryptify.crs.calls.core import SessionTable
from cryptify.crs.messages.store import MessageStore
from cryptify.crs.messages.wiring import Messaging
from cryptify.crs.operator.state import probe_up
from cryptify.crs.pool.forward import COUNTERS as POOL_MESSAGE_COUNTERS
from cryptify.crs.workers.fanout import sum_counters
from cryptify.events import Notifier
from cryptify.ops.metrics import Queries, counter_families
from cryptify.ops.reload import Directive, Plan, Reloader

log = Logger(namespace="cryptify.reload")


@attrs.frozen
class CrsFiles:
    """What the CRS reads at start and on reload: crs.conf and crs-local.conf."""

    crs: CrsConfig
    local: CrsLocalConfig


def _global(name: str, field: str, live: bool = False) -> Directive:
    return Directive(name, ("crs", "global_", field), live)


#: Each directive of crs.conf and crs-local.conf, in file order.
DIRECTIVES: tuple[Directive, ...] = (
    _global("key", "key"),
    _global("features", "features"),
    _global("cps", "cps"),
    _global("push-config", "apns_type"),
    _global("push-config cps trust", "cps_trust"),
    _global("push-config apns trust", "apns_trust"),
    _global("keep-alive", "keep_alive", live=True),
    _global("client-max-message", "client_max_message", live=True),
    _global("client-attach-timeout", "client_attach_timeout", live=True),
    _global("client-max-unattached-per-address", "client_max_unattached_per_address", live=True),
    _global("client-max-unattached", "client_max_unattached", live=True),
    _global("client-max-handshakes", "client_max_handshakes", live=True),
    _global("addr-map", "addr_map"),
    _global("listen", "listen"),
    _global("tls-certificate", "tls_certificate"),
    _global("tls-key", "tls_key"),
    _global("relay", "relay"),
    _global("relay-control", "relay_control"),
    _global("pool-port", "pool_port"),
    _global("sync-port", "sync_port"),
    _global("iw-port", "iw_port"),
    _global("management", "management"),
    _global("management-group", "management_group"),
    _global("data-dir", "data_dir"),
    _global("accounts-dir", "accounts_dir"),
    _global("log-dir", "log_dir"),
    _global("notify", "notify", live=True),
    _global("notify-timeout", "notify_timeout", live=True),
    Directive("redis", ("crs", "global_", "redis", "mode"), False),
    Directive("redis-binary", ("crs", "global_", "redis", "binary"), False),
    Directive("redis-high", ("crs", "global_", "redis", "high"), False),
    Directive("redis-low", ("crs", "global_", "redis", "low"), False),
    Directive("redis-backup", ("crs", "global_", "redis", "backup"), False),
    Directive("redis-password-file", ("crs", "global_", "redis", "password_file"), False),
    _global("metrics", "metrics"),
    _global("admin-listen", "admin_listen"),
    Directive("[POOL] host and ip", ("crs", "pool"), False),
    Directive("crsname (crs-local.conf)", ("local", "crsname"), False),
    Directive("db-backup (crs-local.conf)", ("local", "db_backup"), False),
    Directive("metrics (crs-local.conf)", ("local", "metrics"), False),
    Directive("workers (crs-local.conf)", ("local", "workers"), False),
)
#: Not directives: what the file holds besides settings.
NOT_DIRECTIVES = (("crs", "warnings"),)
LIMITS = (
    "client-max-message",
    "client-attach-timeout",
    "client-max-unattached-per-address",
    "client-max-unattached",
    "client-max-handshakes",
)


@attrs.define
class CrsLive:
    """The running objects a reload changes."""

    clients: UmsgServerFactory
    notifier: Notifier
    #: ``crs-cli reload account``: re-read the accounts, tell notify.sh,
    #: disconnect clients now blacklisted; answers ``{"problems": [...]}``.
    reload_accounts: Callable[[], dict[str, object]]
    #: With ``workers N``: told the GLOBAL section when the client limits
    #: or keep-alive rules changed (the workers take them too).
    clients_changed: Callable[[CrsGlobal], object] | None = None

    def apply(self, plan: Plan[CrsFiles]) -> None:
        """Put the live directives' new values in place; re-read the accounts."""
        g = plan.config.crs.global_
        if any(plan.changed(name) for name in LIMITS):
            self.clients.limits = attrs.evolve(
                self.clients.limits,
                max_message=g.client_max_message,
                attach_timeout=g.client_attach_timeout,
                max_unattached_per_address=g.client_max_unattached_per_address,
                max_unattached=g.client_max_unattached,
                max_handshakes=g.client_max_handshakes,
            )
        if plan.changed("keep-alive"):
            self.clients.keepalive_rule = g.keep_alive_for
        if self.clients_changed is not None and (
            plan.changed("keep-alive") or any(plan.changed(name) for name in LIMITS)
        ):
            self.clients_changed(g)
        if plan.changed("notify"):
            self.notifier.script = g.notify or None
        if plan.changed("notify-timeout"):
            self.notifier.timeout = g.notify_timeout
        problems = self.reload_accounts()["problems"]
        if isinstance(problems, list) and problems:
            log.warn(
                "accounts reloaded with {count} problems (see the lines above)",
                count=len(problems),
            )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


@attrs.define
class CrsMetrics:
    """The CRS's metric families, read from the running objects."""

    registry: AttachRegistry
    clients: UmsgServerFactory
    sessions: SessionTable
    messaging: Messaging
    store: MessageStore
    #: ``show services``: crs, crs_relay, redis_high, redis_low[, redis_backup].
    probes: dict[str, Callable[[], bool | str]]
    queries: Queries
    reloader: Reloader[CrsFiles] | None = None
    #: In a pool: the forwarder's counters (``Forwarder.counters``).
    pool_messages: dict[str, int] | None = None
    #: With ``workers N``: the queries whose answers are the workers'
    #: counters (``WorkerCounters``), added to this process's own.
    workers: tuple[str, ...] = ()

    def _workers(self) -> dict[str, int]:
        """The sum of the workers' counters that answered this scrape."""
        return sum_counters([self.queries.values.get(name) for name in self.workers])

    def families(self) -> Iterator[Metric]:
        p = "cryptify_crs_"
        theirs = self._workers() if self.workers else {}
        yield _gauge(
            p + "attached_clients",
            "Clients attached now",
            len(self.registry) + theirs.get("attached", 0),
        )
        yield _gauge(
            p + "unattached_connections",
            "Client connections that have not attached yet",
            len(self.clients.pending) + theirs.get("unattached", 0),
        )
        yield _counter(
            p + "evicted_connections",
            "Silent unattached connections closed to make room",
            self.clients.evicted + theirs.get("evicted", 0),
        )
        yield _gauge(
            p + "calls",
            "Calls (sessions) in progress",
            len(self.sessions.sessions) + theirs.get("calls", 0),
        )
        for key, doc in (
            ("invites", "Calls placed"),
            ("talks", "Calls answered"),
            ("hangups", "Calls hung up"),
        ):
            value = self.sessions.counters.get(key, 0) + theirs.get(key, 0)
            yield _counter(p + "call_" + key, doc, value)
        for key, doc in (
            ("posted", "Messages posted and stored"),
            ("delivered", "Messages confirmed delivered"),
            ("refused", "Message requests refused by a rule (unknown recipient, full inbox, ...)"),
        ):
            value = self.messaging.counters.get(key, 0) + theirs.get(key, 0)
            yield _counter(p + "messages_" + key, doc, value)
        yield _counter(p + "messages_expired", "Messages dropped undelivered", self.store.expired)
        if self.pool_messages is not None:
            for key, doc in POOL_MESSAGE_COUNTERS:
                yield _counter(p + "pool_messages_" + key, doc, self.pool_messages.get(key, 0))
        waiting = self.queries.values.get("waiting")
        if isinstance(waiting, int):
            yield _gauge(p + "messages_waiting", "Messages stored and not yet delivered", waiting)
        up = GaugeMetricFamily(
            p + "service_up",
            "Whether each part answers (show services): 1 up, 0 down",
            labels=["service"],
        )
        for name, probe in self.probes.items():
            up.add_metric([name], 1 if probe_up(probe()) else 0)
        yield up
        ok = GaugeMetricFamily(
            p + "query_ok", "Whether the scrape's query answered: 1 yes, 0 no", labels=["query"]
        )
        for name, answered in sorted(self.queries.ok.items()):
            ok.add_metric([name], 1 if answered else 0)
        yield ok
        relay = self.queries.values.get("relay")
        if isinstance(relay, Mapping):
            yield from counter_families(p + "relay_", relay, gauges={"entries": "sessions"})
        if self.reloader is not None:
            yield _counter(p + "reloads", "Configuration reloads done", self.reloader.reloads)
            yield _counter(
                p + "reload_failures",
                "Configuration reloads refused (file not valid) or not applied",
                self.reloader.failures,
            )
