"""The ``cig`` twistd plugin: the interconnect gateway's service tree.

Start order (stop order is the reverse): cig.log and session.log, the
lifecycle (INIT lines with the loaded configuration, ``notify.sh cig-server
start|stop``), the control link to ``cig-relay``, the SIP interface (UDP
and TCP on ``sip { bind }``, taking requests only from its peers: the PBX
hosts of the maps, looked up at start and every 5 minutes, and
``trusted_peer`` networks), the management listeners (127.0.0.1:8083
with the cookie, and the UNIX socket).  The UIF (``cryptify.cig.tel.uif``)
keeps the CIG's number attached to the CRS once it has a keystore, and
hands its events to :class:`~cryptify.cig.tel.switch.UifCalls`: calls between
secure users and the PBX, bridged by cig-relay.  Until the UIF has key
material (and has heard from the CRS), calls from the PBX go to a stub
tel side (``--tel-stub``) that refuses them, or answers them for tests.
The mailboxes (:class:`~cryptify.cig.mail.wiring.MailDesk`) take the
UIF's message events first: messages to the CIG are written to the write
mailboxes (or, with ``sip { messaging true; }``, sent to the PBX as SIP
MESSAGEs), files in the read mailboxes are posted to secure users, and
the PBX's SIP MESSAGEs are posted to secure users too.

:func:`make_cig_service` builds the tree in steps, each a typed function:
:func:`build_sip` (the SIF, its peers, keep-alive and listeners),
:func:`build_uif` (the UIF and the secure calls), :func:`cig_state` (what
``status`` and ``show`` read) and :func:`build_management`; last come
the metrics endpoint (``metrics { bind ... }``) and the SIGHUP reload
(:func:`build_ops`, :mod:`cryptify.ops`).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHostResolution,
    IListeningPort,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from twisted.python import usage
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet.inotify import INotify

from cryptify.cig.calls import CallTable, SessionLogService, StubTelSide
from cryptify.cig.mail.wiring import MailDesk
from cryptify.cig.operator.admin import CigAdmin
from cryptify.cig.operator.state import CigState
from cryptify.cig.records import CallRecords, CallRecordsService
from cryptify.cig.sif.core import Sif
from cryptify.cig.sif.keepalive import DEFAULT_INTERVAL, KeepAlive, keepalive_targets
from cryptify.cig.sif.peers import SipPeers, pbx_hosts
from cryptify.cig.sif.register import Registrations, TrunkService
from cryptify.cig.tel.switch import TelSwitch, UifCalls
from cryptify.cig.tel.uif import Uif, app_name
from cryptify.client.servers import session_maker, tls_connector
from cryptify.config import CigConfig, load_cig_config
from cryptify.config.cig_model import map_lines
from cryptify.config.crs import Endpoint
from cryptify.cookie import CookieError, ensure_cookie
from cryptify.events import Notifier
from cryptify.links.relay_link import RelayLink
from cryptify.logs import LogFileService
from cryptify.ops.cig import DIRECTIVES, CigLive, CigMetrics
from cryptify.ops.metrics import Queries, metrics_listener, registry_for
from cryptify.ops.reload import Reloader, ReloadError, SighupService
from cryptify.plugins._common import (
    ConfigOptions,
    ConfigUsageError,
    Override,
    config_option,
    lifecycle,
    log_dir_option,
    notify_option,
)
from cryptify.protocols.bridge_control import BridgeStats
from cryptify.protocols.mgmt import ManagementFactory
from cryptify.protocols.sip.transport import (
    SipDatagramProtocol,
    SipStreamFactory,
    TcpConnector,
    UdpChannel,
)
from cryptify.reactor import IReactor, global_reactor
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

#: Where the development defaults keep their files (relative to the cwd).
DEV_DIR = "cig-dev"
#: What the stand-in tel side may do with routed calls (``--tel-stub``).
TEL_STUB_MODES = ("unavailable", "answer", "ring", "reject")
#: Group that may use the management channel.
MANAGEMENT_GROUP = "ciguser"


def dev_cig_config(base: str) -> CigConfig:
    """Built-in development settings: everything on loopback, under ``base``."""
    base = os.path.abspath(base)
    cfg = CigConfig()
    return attrs.evolve(
        cfg,
        interfaces=attrs.evolve(
            cfg.interfaces,
            sip=attrs.evolve(
                cfg.interfaces.sip,
                bind="127.0.0.1",
                port=15060,
                trusted_peers=("127.0.0.0/8", "::1/128"),
            ),
        ),
        crs=attrs.evolve(
            cfg.crs, address=Endpoint("127.0.0.1", 15223), keystore=os.path.join(base, "userdata")
        ),
        relay=attrs.evolve(cfg.relay, control=os.path.join(base, "relay.sock")),
        management=attrs.evolve(
            cfg.management,
            bind=Endpoint("127.0.0.1", 18083),
            cookie=os.path.join(base, "mgmt.cookie"),
            socket=os.path.join(base, "cig.sock"),
        ),
        logging=attrs.evolve(cfg.logging, dir=os.path.join(base, "log")),
        notify="",
    )


#: The paths the command line of ``twistd cig`` and ``twistd cig-relay``
#: may replace in cig.conf.
CIG_OVERRIDES: tuple[Override, ...] = (
    ("data-dir", ("crs", "keystore")),
    ("log-dir", ("logging", "dir")),
    ("socket", ("management", "socket")),
    ("cookie", ("management", "cookie")),
    ("relay-control", ("relay", "control")),
    ("notify", ("notify",)),
    ("crs-ca", ("crs", "ca")),
)


class Options(ConfigOptions):
    """Command-line options of ``twistd cig``."""

    synopsis = "[options]"
    longdesc = (
        "Cryptify interconnect gateway.  Without --config it starts on loopback "
        f"with built-in development settings, keeping its files under ./{DEV_DIR}."
    )
    optParameters = [
        config_option("cig.conf"),
        ["data-dir", "d", None, "keystore directory (overrides cig.conf crs { keystore })"],
        log_dir_option("cig.conf"),
        ["socket", "s", None, "management UNIX socket (overrides cig.conf)"],
        ["cookie", None, None, "management cookie file (overrides cig.conf)"],
        ["relay-control", None, None, "relay control socket (overrides cig.conf)"],
        notify_option("cig.conf"),
        ["crs-ca", None, None, "PEM file trusted for the CRS (overrides cig.conf crs { ca })"],
        [
            "sip-keepalive",
            None,
            DEFAULT_INTERVAL,
            "seconds between OPTIONS to each PBX server (0: none)",
            float,
        ],
        [
            "tel-stub",
            None,
            "unavailable",
            "until the UIF has key material, the stand-in tel side refuses every "
            "routed call (unavailable), or answers, rings or rejects it (for tests)",
        ],
    ]

    def postOptions(self) -> None:
        self["cig"] = self.read_config()
        if self["tel-stub"] not in TEL_STUB_MODES:
            raise usage.UsageError(f"--tel-stub: one of {', '.join(TEL_STUB_MODES)}")

    def read_config(self) -> CigConfig:
        """cig.conf with the command line's overrides (ConfigUsageError if not valid)."""
        cfg = self.load_config(load_cig_config, lambda: dev_cig_config(DEV_DIR))
        return self.with_overrides(cfg, CIG_OVERRIDES)

    def reread(self) -> CigConfig:
        """What L{read_config} reads, for a reload (SIGHUP); ReloadError if not valid."""
        try:
            return self.read_config()
        except ConfigUsageError as exc:
            raise ReloadError(str(exc)) from None


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects every address a host name resolves to."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.done: Deferred[Sequence[str]] = Deferred()

    def resolutionBegan(self, resolution: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        # Only IPv4 and IPv6 addresses are asked for.
        if isinstance(address, (IPv4Address, IPv6Address)):
            self.found.append(str(address.host))

    def resolutionComplete(self) -> None:
        self.done.callback(self.found)


def resolve_all(reactor: IReactorPluggableNameResolver) -> Callable[[str], Deferred[Sequence[str]]]:
    """Every IPv4 and IPv6 address of a name, with the reactor's resolver."""

    def lookup(name: str) -> Deferred[Sequence[str]]:
        receiver = _Addresses()
        reactor.nameResolver.resolveHostName(receiver, name, 0, [IPv4Address, IPv6Address], "TCP")
        return receiver.done

    return lookup


def describe(cfg: CigConfig) -> list[str]:
    """The INIT lines: what this CIG was configured with."""
    sip = cfg.interfaces.sip
    mgmt = cfg.management
    return [
        f"CRS {cfg.crs.address.host}:{cfg.crs.address.port}, keystore {cfg.crs.keystore}",
        f"SIP {sip.bind}:{sip.port}, messaging {'true' if sip.messaging else 'false'}, TLS "
        + (f"{sip.bind}:{sip.tls_port}" if sip.tls_certificate else "outbound only")
        + f" (PBX certificates checked against {sip.tls_ca or 'the system CAs'})"
        + f", SRTP towards the PBX {sip.srtp}",
        f"SIP peers: PBX {', '.join(pbx_hosts(cfg)) or '-'}; "
        f"trusted_peer {', '.join(sip.trusted_peers) or '-'}; "
        f"others get {sip.untrusted_answer}; TCP idle timeout {sip.tcp_idle_timeout} s",
        f"maps {', '.join(m.name for m in cfg.maps) or '-'}; "
        f"translate maps {', '.join(m.name for m in cfg.translate_maps) or '-'}",
        "PBX accounts: "
        + (
            ", ".join(
                f"{a.username} at {a.server}"
                + (f" (register {a.register} s)" if a.register is not None else "")
                for a in sip.pbx_accounts
            )
            or "-"
        ),
        "PBX requests challenged (digest): "
        + (
            ", ".join(
                f"from {g.peer} (realm {g.realm}, user {g.username}, {' '.join(g.algorithms)})"
                for g in sip.pbx_challenges
            )
            or "-"
        ),
        "call records: "
        + (cfg.logging.call_records or "-")
        + (" and syslog" if cfg.logging.call_records_syslog else ""),
        f"mailboxes: {len(cfg.mailboxes.read)} read, {len(cfg.mailboxes.write)} write",
        *map_lines(cfg),
        f"management {mgmt.bind.host}:{mgmt.bind.port} and {mgmt.socket}",
        f"relay control {cfg.relay.control}",
    ]


@attrs.frozen
class SipParts:
    """The SIP interface's parts that the rest of the tree uses."""

    sif: Sif
    calls: CallTable
    tel_side: TelSwitch
    keepalive: KeepAlive
    registrations: Registrations
    peers: SipPeers
    records: CallRecords


def build_sip(
    root: ProgramService,
    cfg: CigConfig,
    reactor: IReactor,
    notifier: Notifier,
    tel_stub: str,
    keepalive: float,
) -> SipParts:
    """The SIF with its peers and keep-alive; UDP and TCP listeners on ``sip { bind }``."""
    sip = cfg.interfaces.sip
    calls = CallTable(reactor)
    records = CallRecords(reactor, cfg.logging.call_records, cfg.logging.call_records_syslog)
    calls.records = records
    attach(root, CallRecordsService(records))
    tel_side = TelSwitch(StubTelSide(tel_stub))
    peers = SipPeers.from_config(cfg, reactor, resolve_all(reactor))
    sif = Sif(cfg, reactor, tel_side, calls, peers=peers)
    tcp = TcpConnector(reactor, sif)
    sif.resolve = reactor.resolve
    sif.tcp_channel = tcp.channel
    pbx = KeepAlive(sif, keepalive_targets(sif.router), keepalive, notifier.notify)
    registrations = Registrations(sif, notifier.notify)
    trunk = TrunkService(sif, registrations)
    tls = TcpConnector(reactor, sif, tls=lambda name: trunk.tls.client(name))
    sif.tls_channel = tls.channel

    def stop_sip() -> None:
        pbx.stop()
        sif.stop()
        tcp.close()
        tls.close()

    attach(root, CallbackService(on_start=peers.start, on_stop=stop_sip))
    where = f"{sip.bind}:{sip.port}"

    def listen_udp() -> IListeningPort:
        port = reactor.listenUDP(
            sip.port, SipDatagramProtocol(sif), interface=sip.bind, maxPacketSize=65535
        )
        sif.channel_to = lambda address: UdpChannel(port, address)
        return port

    def listen_tcp() -> IListeningPort:
        factory = SipStreamFactory(
            sif,
            reactor,
            idle_timeout=sip.tcp_idle_timeout,
            allowed=peers.trusted,
            refused=sif.refusals.refused,
        )
        return reactor.listenTCP(sip.port, factory, interface=sip.bind)

    def listen_tls() -> IListeningPort:
        trunk.load()  # the certificate and key, read while privileged
        factory = SipStreamFactory(
            sif,
            reactor,
            idle_timeout=sip.tcp_idle_timeout,
            allowed=peers.trusted,
            refused=sif.refusals.refused,
            secure=True,
        )
        return reactor.listenSSL(sip.tls_port, factory, trunk.tls.server(), interface=sip.bind)

    attach(
        root,
        ListenService("SIP", f"udp {where}", listen_udp),
        ListenService("SIP", f"tcp {where}", listen_tcp),
    )
    if sip.tls_certificate is not None:
        attach(root, ListenService("SIP", f"tls {sip.bind}:{sip.tls_port}", listen_tls))
    attach(root, CallbackService(on_start=pbx.start), trunk)
    return SipParts(sif, calls, tel_side, pbx, registrations, peers, records)


def build_uif(
    root: ProgramService, cfg: CigConfig, reactor: IReactor, sip: SipParts, relay: RelayLink
) -> tuple[Uif, MailDesk]:
    """The UIF attached to the CRS and the mailboxes; the UIF's events drive the
    secure calls (the SIF's tel side) and the messages."""
    uif = Uif(
        reactor,
        cfg.crs.keystore,
        cfg.crs.address.host,
        cfg.crs.address.port,
        tls_connector(reactor, cfg.crs.ca, insecure=False),
        lambda material: session_maker(material, app_name()),
    )
    uif_calls = UifCalls(reactor, uif, sip.sif, sip.calls, sip.sif.router, relay)
    sip.tel_side.uif_calls = uif_calls
    uif.on_call_event = uif_calls.handle
    desk = MailDesk(
        reactor,
        cfg.mailboxes,
        cfg.translate_maps,
        lambda: uif.material,
        uif.session,
        inotify=make_inotify,
        router=lambda: sip.sif.router,
        sip=sip.sif,
        messaging=lambda: sip.sif.config.sip.messaging,
    )
    uif_calls.mail = desk.handle
    sip.sif.messages = desk
    attach(root, desk, uif)
    return uif, desk


def make_inotify() -> INotify:
    """An INotify reader (Linux); the mailboxes are scanned only without it."""
    from twisted.internet import inotify

    return inotify.INotify()


def cig_state(cfg: CigConfig, relay: RelayLink, uif: Uif, sip: SipParts) -> CigState:
    """What ``status`` and ``show`` read."""
    uif_calls = sip.tel_side.uif_calls
    assert uif_calls is not None
    return CigState(
        crs_address=cfg.crs.address.host,
        sip_bind=cfg.interfaces.sip.bind,
        relay_connected=lambda: relay.active,
        crypto_engines=lambda: (1 if relay.active else 0, 1),
        crs_connected=lambda: uif.connected,
        umsg_info=lambda: uif.info().as_tuple(),
        call_rows=sip.calls.rows,
        umsg_rows=uif_calls.umsg_rows,
        sip_peers=sip.keepalive.rows,
        sip_registrations=sip.registrations.rows,
    )


def build_management(
    root: ProgramService, cfg: CigConfig, reactor: IReactor, state: CigState, uif: Uif
) -> None:
    """The management listeners: TCP with the cookie, and the UNIX socket."""
    mgmt = cfg.management

    def listen_tcp() -> IListeningPort:
        try:
            cookie = ensure_cookie(mgmt.cookie, MANAGEMENT_GROUP)
        except (CookieError, OSError) as exc:
            raise StartupError(f"management cookie: {exc}") from exc
        factory = ManagementFactory(
            lambda proto: CigAdmin(state, uif.set_key), cookie=cookie, clock=reactor
        )
        return reactor.listenTCP(mgmt.bind.port, factory, interface=mgmt.bind.host)

    def listen_unix() -> IListeningPort:
        prepare_socket_path(mgmt.socket)
        port = reactor.listenUNIX(
            mgmt.socket, ManagementFactory(lambda proto: CigAdmin(state, uif.set_key)), mode=0o660
        )
        restrict_socket(mgmt.socket, MANAGEMENT_GROUP)
        return port

    attach(
        root,
        ListenService("management", f"{mgmt.bind.host}:{mgmt.bind.port}", listen_tcp),
        ListenService("management", mgmt.socket, listen_unix),
    )


def build_ops(
    root: ProgramService,
    cfg: CigConfig,
    reread: Callable[[], CigConfig] | None,
    live: CigLive,
    metrics: CigMetrics,
) -> Reloader[CigConfig]:
    """SIGHUP reload (re-reads cig.conf when there is one) and the metrics endpoint."""
    reactor = live.notifier.reactor
    reloader = Reloader("cig", cfg, DIRECTIVES, reread or (lambda: cfg), live.apply)
    if live.records is not None:
        reloader.reopen.append(live.records.reopen)
    metrics.reloader = reloader
    if cfg.metrics is not None:
        registry = registry_for(metrics.families)
        attach(root, metrics_listener(reactor, cfg.metrics, registry, metrics.queries))
    attach(root, SighupService(reactor, reloader.reload))
    return reloader


def make_cig_service(
    cfg: CigConfig,
    reactor: IReactor,
    tel_stub: str = "unavailable",
    keepalive: float = DEFAULT_INTERVAL,
    reread: Callable[[], CigConfig] | None = None,
) -> ProgramService:
    """Build the CIG's service tree; nothing is opened until it starts.

    C{reread} reads cig.conf again for a reload (SIGHUP); without it a
    reload changes nothing.
    """
    root = ProgramService("cig")
    notifier = Notifier(reactor, cfg.notify or None)
    attach(
        root,
        LogFileService(cfg.logging.dir, "cig.log", "cig"),
        SessionLogService(cfg.logging.dir, reactor),
        lifecycle("cig-server", notifier, describe(cfg)),
    )
    relay = RelayLink(reactor, unix_endpoint(reactor, cfg.relay.control, 5), "cig")
    attach(root, relay)
    sip = build_sip(root, cfg, reactor, notifier, tel_stub, keepalive)
    uif, desk = build_uif(root, cfg, reactor, sip, relay)
    build_management(root, cfg, reactor, cig_state(cfg, relay, uif, sip), uif)
    uif_calls = sip.tel_side.uif_calls
    assert uif_calls is not None

    async def bridge_stats() -> object:
        stats: object = (await relay.call(BridgeStats))["stats"]
        return stats

    build_ops(
        root,
        cfg,
        reread,
        CigLive(sip.sif, sip.peers, sip.keepalive, uif_calls, notifier, desk, sip.records),
        CigMetrics(
            sip.calls,
            {"crs": lambda: uif.connected, "cig_relay": lambda: relay.active},
            sip.keepalive,
            Queries(reactor, {"bridge": bridge_stats}),
        ),
    )
    return root


#: Allocations between the collector's young passes (Python's default: 700).
#: A SIP call set-up allocates a few thousand objects, most of them freed by
#: their reference counts; passes every few calls instead of several per
#: call cut the CIG's CPU per call set-up by about a tenth (docs/performance.md).
GC_YOUNG_THRESHOLD = 10_000


def tune_collector() -> None:
    """
    Once started: what start-up built lives as long as the process, so it
    is kept out of the collector's passes (C{gc.freeze}), and young passes
    come every L{GC_YOUNG_THRESHOLD} allocations.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def makeService(options: Options) -> ProgramService:
    """IServiceMaker entry point."""
    reactor = global_reactor()

    root = make_cig_service(
        options["cig"],
        reactor,
        options["tel-stub"],
        options["sip-keepalive"],
        options.reread if options["config"] else None,
    )
    # The process's own collector settings: for twistd, not for a test
    # that builds the tree.
    attach(root, CallbackService(tune_collector))
    return root
