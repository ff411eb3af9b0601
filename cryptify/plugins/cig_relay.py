"""The ``cig-relay`` twistd plugin: the CIG media bridge process.

Reads the same cig.conf as the CIG for its control socket and log
directory, interfaces (``rtp_port_range``, ``rtp_remote_addr_override``).
Service tree: relay.log, lifecycle (INIT lines with the configuration,
``notify.sh cig-relay start|stop``), the media bridge (its calls and 20 ms
clock) and the control socket.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory

from cryptify.cig.relay.bridge_wiring import BridgeService
from cryptify.cig.relay.control import control_factory
from cryptify.config import CigConfig, load_cig_config
from cryptify.events import Notifier
from cryptify.logs import LogFileService
from cryptify.ops.reload import no_reload
from cryptify.plugins._common import (
    ConfigOptions,
    config_option,
    lifecycle,
    log_dir_option,
    notify_option,
)
from cryptify.plugins.cig import CIG_OVERRIDES, DEV_DIR, MANAGEMENT_GROUP, dev_cig_config
from cryptify.reactor import IReactor, global_reactor
from cryptify.service import (
    ListenService,
    ProgramService,
    attach,
    prepare_socket_path,
    restrict_socket,
)


class Options(ConfigOptions):
    """Command-line options of ``twistd cig-relay``."""

    synopsis = "[options]"
    longdesc = "Cryptify CIG media relay (cig-relay)."
    optParameters = [
        config_option("cig.conf"),
        log_dir_option("cig.conf"),
        ["relay-control", None, None, "control socket (overrides cig.conf)"],
        notify_option("cig.conf"),
    ]

    def postOptions(self) -> None:
        cfg = self.load_config(load_cig_config, lambda: dev_cig_config(DEV_DIR))
        self["cig"] = self.with_overrides(cfg, CIG_OVERRIDES)


def describe(cfg: CigConfig) -> list[str]:
    """The configuration lines relay.log starts with."""
    lines = [f"control {cfg.relay.control}", f"fast_path {cfg.relay.fast_path}"]
    for name, iface in (("tel", cfg.tel), ("sip", cfg.sip)):
        ports = iface.rtp_port_range
        span = f"{ports.low}-{ports.high}" if ports else "any"
        overrides = ", ".join(
            f"{o.original} -> {o.replacement}" for o in iface.rtp_remote_addr_overrides
        )
        lines.append(f"{name} rtp_port_range {span}; rtp_remote_addr_override {overrides or '-'}")
    lines.append(f"sip media bind {cfg.sip.bind}")
    return lines


def make_cig_relay_service(cfg: CigConfig, reactor: IReactor) -> ProgramService:
    """Build the CIG relay's service tree."""
    root = ProgramService("cig-relay")
    notifier = Notifier(reactor, cfg.notify or None)
    attach(root, LogFileService(cfg.logging.dir, "relay.log", "cig"))
    attach(root, lifecycle("cig-relay", notifier, describe(cfg)))
    bridges = BridgeService(reactor, cfg.tel, cfg.sip, fast_path=cfg.relay.fast_path)
    attach(root, bridges)

    def listen_control() -> IListeningPort:
        prepare_socket_path(cfg.relay.control)
        # Factory is invariant in its protocol type (see crs_relay).
        factory = cast(Factory, control_factory(bridges))
        port = reactor.listenUNIX(cfg.relay.control, factory, mode=0o660)
        restrict_socket(cfg.relay.control, MANAGEMENT_GROUP)
        return port

    attach(root, ListenService("relay control", cfg.relay.control, listen_control))
    attach(root, no_reload("cig-relay", reactor))
    return root


def makeService(options: Options) -> ProgramService:
    """IServiceMaker entry point."""
    reactor = global_reactor()

    return make_cig_relay_service(options["cig"], reactor)
