"""
Reload and metrics of the CIG.

What a reload (SIGHUP) changes in the running CIG (:data:`DIRECTIVES`):

- live: the maps and translate maps, the interfaces' ``extension map``
  and ``source map`` lines (calls routed from then on; a call in
  progress keeps its route), the SIP peers (``trusted_peer`` and the PBX
  hosts the maps name, with the PBX keep-alive targets),
  ``untrusted_answer``, ``messaging``, ``srtp`` (calls offered or
  answered from then on), ``notify``, and ``logging { call_records;
  call_records_syslog; }`` (records of calls ending from then on; the
  records file is reopened at every SIGHUP, for logrotate);
- after a restart only: what opens a socket or a file or is read once
  at start (``sip { bind }``, ``rtp_port_range``,
  ``tcp_idle_timeout``, ``pbx_account`` blocks (registrations and
  credentials), the ``tls_*`` settings, the ``crs``, ``relay``, ``management``,
  ``logging``, ``mailboxes`` and ``metrics`` blocks).
  ``rtp_remote_addr_override`` is used by ``cig-relay``, which reads it
  when it starts.

The metrics (:class:`CigMetrics`) are read from the running objects at
each scrape; see ``docs/operations.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from twisted.logger import Logger

from cryptify.cig.calls import ENDED, CallTable
from cryptify.cig.mail.wiring import MailDesk
from cryptify.cig.records import CallRecords
from cryptify.cig.route import Router
from cryptify.cig.sif.core import Sif
from cryptify.cig.sif.keepalive import UP, KeepAlive, keepalive_targets
from cryptify.cig.sif.peers import SipPeers
from cryptify.cig.tel.switch import UifCalls
from cryptify.config import CigConfig
from cryptify.config.cig_model import map_lines
from cryptify.events import Notifier
from cryptify.ops.metrics import Queries, counter_families
from cryptify.ops.reload import Directive, Plan, Reloader


def _iface(name: str, path: tuple[str, ...], live: bool = False) -> Directive:
    return Directive(f"interfaces {name}", ("interfaces", *path), live)


#: Each directive of cig.conf, in the manual's order.
DIRECTIVES: tuple[Directive, ...] = (
    Directive("map", ("maps",), True),
    Directive("translate_map", ("translate_maps",), True),
    _iface("tel extension map", ("tel", "extension_maps"), live=True),
    _iface("tel source map", ("tel", "source_maps"), live=True),
    _iface("tel rtp_port_range", ("tel", "rtp_port_range")),
    _iface("tel rtp_remote_addr_override", ("tel", "rtp_remote_addr_overrides")),
    _iface("sip extension map", ("sip", "extension_maps"), live=True),
    _iface("sip source map", ("sip", "source_maps"), live=True),
    _iface("sip bind (address)", ("sip", "bind")),
    _iface("sip bind (port)", ("sip", "port")),
    _iface("sip messaging", ("sip", "messaging"), live=True),
    _iface("sip rtp_port_range", ("sip", "rtp_port_range")),
    _iface("sip rtp_remote_addr_override", ("sip", "rtp_remote_addr_overrides")),
    _iface("sip trusted_peer", ("sip", "trusted_peers"), live=True),
    _iface("sip untrusted_answer", ("sip", "untrusted_answer"), live=True),
    _iface("sip tcp_idle_timeout", ("sip", "tcp_idle_timeout")),
    _iface("sip pbx_account", ("sip", "pbx_accounts")),
    _iface("sip pbx_challenge", ("sip", "pbx_challenges")),
    _iface("sip tls_certificate", ("sip", "tls_certificate")),
    _iface("sip tls_key", ("sip", "tls_key")),
    _iface("sip tls_ca", ("sip", "tls_ca")),
    _iface("sip tls_port", ("sip", "tls_port")),
    _iface("sip srtp", ("sip", "srtp"), live=True),
    Directive("mailboxes", ("mailboxes",), False),
    Directive("crs address", ("crs", "address"), False),
    Directive("crs keystore", ("crs", "keystore"), False),
    Directive("crs ca", ("crs", "ca"), False),
    Directive("relay control", ("relay", "control"), False),
    Directive("relay fast_path", ("relay", "fast_path"), False),
    Directive("management bind", ("management", "bind"), False),
    Directive("management cookie", ("management", "cookie"), False),
    Directive("management socket", ("management", "socket"), False),
    Directive("logging dir", ("logging", "dir"), False),
    Directive("logging call_records", ("logging", "call_records"), True),
    Directive("logging call_records_syslog", ("logging", "call_records_syslog"), True),
    Directive("metrics", ("metrics",), False),
    Directive("notify", ("notify",), True),
)
log = Logger(namespace="cryptify.reload")

#: Directives whose change re-makes the router.
ROUTING = frozenset(
    {
        "map",
        "interfaces tel extension map",
        "interfaces tel source map",
        "interfaces sip extension map",
        "interfaces sip source map",
    }
)
#: Directives whose change re-makes the SIP peers.
PEERS = frozenset({"map", "interfaces tel extension map", "interfaces tel source map"}) | {
    "interfaces sip trusted_peer"
}


@attrs.define
class CigLive:
    """The running objects a reload changes."""

    sif: Sif
    peers: SipPeers
    keepalive: KeepAlive
    uif_calls: UifCalls
    notifier: Notifier
    #: The mailboxes (their translate maps are live).
    mail: MailDesk | None = None
    records: CallRecords | None = None

    def apply(self, plan: Plan[CigConfig]) -> None:
        """Put the live directives' new values in place."""
        cfg = plan.config
        self.sif.config = cfg
        if any(plan.changed(name) for name in ROUTING):
            router = Router(cfg)
            self.sif.router = router
            self.uif_calls.router = router
            if self.uif_calls.tel is not None:
                self.uif_calls.tel.router = router
            self.keepalive.targets = keepalive_targets(router)
            self.keepalive.start()
        if any(plan.changed(name) for name in PEERS):
            self.peers.reconfigure(cfg)
        if plan.changed("notify"):
            self.notifier.script = cfg.notify or None
        if self.mail is not None and plan.changed("translate_map"):
            self.mail.translate_maps = tuple(cfg.translate_maps)
        if self.records is not None and (
            plan.changed("logging call_records") or plan.changed("logging call_records_syslog")
        ):
            self.records.configure(cfg.logging.call_records, cfg.logging.call_records_syslog)
        for line in map_lines(cfg):  # what routes from now on, as at start
            log.info("cig: reloaded {line}", line=line)


@attrs.define
class CigMetrics:
    """The CIG's metric families, read from the running objects."""

    calls: CallTable
    #: Link name (``crs``, ``cig_relay``) to whether it is up.
    links: dict[str, Callable[[], bool]]
    keepalive: KeepAlive
    queries: Queries
    reloader: Reloader[CigConfig] | None = None

    def families(self) -> Iterator[Metric]:
        p = "cryptify_cig_"
        live = [c for c in self.calls.calls if c.state not in ENDED]
        yield GaugeMetricFamily(p + "calls", "Calls in progress", value=len(live))
        up = GaugeMetricFamily(
            p + "link_up", "Whether each link is up: 1 up, 0 down", labels=["link"]
        )
        for name, probe in self.links.items():
            up.add_metric([name], 1 if probe() else 0)
        yield up
        pbx = GaugeMetricFamily(
            p + "sip_peer_up",
            "Whether each PBX server answers OPTIONS: 1 up, 0 down or not known yet",
            labels=["peer"],
        )
        for target, state in self.keepalive.rows():
            pbx.add_metric([target], 1 if state == UP else 0)
        yield pbx
        yield CounterMetricFamily(
            p + "sip_keepalive_probes", "OPTIONS sent to PBX servers", value=self.keepalive.probes
        )
        ok = GaugeMetricFamily(
            p + "query_ok", "Whether the scrape's query answered: 1 yes, 0 no", labels=["query"]
        )
        for name, answered in sorted(self.queries.ok.items()):
            ok.add_metric([name], 1 if answered else 0)
        yield ok
        bridge = self.queries.values.get("bridge")
        if isinstance(bridge, Mapping):
            yield from counter_families(p + "bridge_", bridge, gauges={"calls": "calls"})
        if self.reloader is not None:
            yield CounterMetricFamily(
                p + "reloads", "Configuration reloads done", value=self.reloader.reloads
            )
            yield CounterMetricFamily(
                p + "reload_failures",
                "Configuration reloads refused (file not valid) or not applied",
                value=self.reloader.failures,
            )
