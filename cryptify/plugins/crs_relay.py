"""The ``crs-relay`` twistd plugin: the CRS media relay process.

Reads the same crs.conf as the CRS for its UDP port, its control socket
and its log directory.  Service tree: crs_relay.log, lifecycle
(Start/Stop lines and ``notify.sh crs_relay start|stop``), the media port,
the control socket.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.python import usage

from cryptify.config import CrsConfig, load_crs_config
from cryptify.crs.relay import RelayCounters, RelayDatagram, control_factory
from cryptify.events import Notifier
from cryptify.logs import LogFileService
from cryptify.plugins._common import lifecycle, load_or_usage
from cryptify.plugins.crs import DEV_DIR, dev_crs_config
from cryptify.service import (
    ListenService,
    ProgramService,
    attach,
    prepare_socket_path,
    restrict_socket,
)


class Options(usage.Options):
    """Command-line options of ``twistd crs-relay``."""

    synopsis = "[options]"
    longdesc = "Cryptify CRS media relay (crs_relay)."
    optParameters = [
        ["config", "c", None, "crs.conf (default: built-in development settings)"],
        ["log-dir", None, None, "log directory (overrides crs.conf)"],
        ["control", None, None, "control socket (overrides crs.conf relay-control)"],
        ["notify", None, None, "notify script (overrides crs.conf; empty: none)"],
    ]

    def postOptions(self) -> None:
        if self["config"]:
            cfg: CrsConfig = load_or_usage(load_crs_config, self["config"])
        else:
            cfg = dev_crs_config(DEV_DIR)
        overrides: dict[str, Any] = {}
        for option, field in (
            ("log-dir", "log_dir"),
            ("control", "relay_control"),
            ("notify", "notify"),
        ):
            if self[option] is not None:
                overrides[field] = os.path.abspath(self[option]) if self[option] else ""
        self["crs"] = attrs.evolve(cfg, global_=attrs.evolve(cfg.global_, **overrides))


def make_relay_service(cfg: CrsConfig, reactor: Any) -> ProgramService:
    """Build the relay's service tree."""
    g = cfg.global_
    root = ProgramService("crs_relay")
    notifier = Notifier(reactor, g.notify or None, g.notify_timeout)
    attach(root, LogFileService(g.log_dir, "crs_relay.log", "crs"))
    counters = RelayCounters()
    describe = [f"media {g.relay.host}:{g.relay.port}/udp, control {g.relay_control}"]
    attach(root, lifecycle("crs_relay", notifier, describe))
    media = ListenService(
        "media relay",
        f"{g.relay.host}:{g.relay.port}/udp",
        lambda: reactor.listenUDP(g.relay.port, RelayDatagram(counters), interface=g.relay.host),
    )
    attach(root, media)

    def listen_control() -> Any:
        prepare_socket_path(g.relay_control)
        port = reactor.listenUNIX(g.relay_control, control_factory(counters), mode=0o660)
        restrict_socket(g.relay_control, g.management_group)
        return port

    attach(root, ListenService("relay control", g.relay_control, listen_control))
    return root


def makeService(options: Options) -> ProgramService:
    """IServiceMaker entry point."""
    from twisted.internet import reactor

    return make_relay_service(options["crs"], reactor)
