"""The ``crs-relay`` twistd plugin: the CRS media relay process.

Reads the same crs.conf as the CRS for its UDP port, its control socket
and its log directory (``addr-map`` applies to forwarded media).  Service
tree: crs_relay.log, lifecycle (Start/Stop lines and ``notify.sh crs_relay
start|stop``), the relay state (sessions and their expiry sweep), the media
port, the control socket.  Session expiry is set on the command line
(``--idle-timeout``, ``--grace``, ``--rebind-after``).
"""

from __future__ import annotations

import gc
from typing import cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.python import usage

from cryptify.config import CrsConfig, load_crs_config
from cryptify.crs.relay.core import IDLE_TIMEOUT, OWNER_GRACE, REBIND_AFTER, RelayCore
from cryptify.crs.relay.wiring import RelayService, control_factory, relay_lines
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
from cryptify.plugins.crs import CRS_OVERRIDES, DEV_DIR, dev_crs_config
from cryptify.reactor import IReactor, global_reactor
from cryptify.service import (
    CallbackService,
    ListenService,
    ProgramService,
    attach,
    prepare_socket_path,
    restrict_socket,
)


class Options(ConfigOptions):
    """Command-line options of ``twistd crs-relay``."""

    synopsis = "[options]"
    longdesc = "Cryptify CRS media relay (crs_relay)."
    optParameters = [
        config_option("crs.conf"),
        log_dir_option("crs.conf"),
        ["control", None, None, "control socket (overrides crs.conf relay-control)"],
        notify_option("crs.conf"),
        [
            "idle-timeout",
            None,
            IDLE_TIMEOUT,
            "seconds without media before a session expires",
            float,
        ],
        ["grace", None, OWNER_GRACE, "seconds sessions outlive a silent or gone CRS", float],
        ["rebind-after", None, REBIND_AFTER, "seconds of silence before a leg may move", float],
        [
            "media-io",
            None,
            "mmsg",
            "media socket adapter: mmsg (batched, Linux), reader or twisted",
            str,
        ],
        [
            "kernel-path",
            None,
            "auto",
            "eBPF fast path: auto (tcx, else cls_bpf), tcx, tc (cls_bpf) or off",
            str,
        ],
    ]

    def postOptions(self) -> None:
        cfg = self.load_config(load_crs_config, lambda: dev_crs_config(DEV_DIR))
        self["crs"] = self.with_overrides(cfg, CRS_OVERRIDES)
        if self["media-io"] not in ("mmsg", "reader", "twisted"):
            raise usage.UsageError("--media-io is mmsg, reader or twisted")
        if self["kernel-path"] not in ("auto", "tcx", "tc", "off"):
            raise usage.UsageError("--kernel-path is auto, tcx, tc or off")
        for option in ("idle-timeout", "grace", "rebind-after"):
            if self[option] <= 0:
                raise usage.UsageError(f"--{option} must be a positive number of seconds")


def make_relay_service(
    cfg: CrsConfig,
    reactor: IReactor,
    idle_timeout: float = IDLE_TIMEOUT,
    grace: float = OWNER_GRACE,
    rebind_after: float = REBIND_AFTER,
    media_io: str = "mmsg",
    kernel_path: str = "auto",
) -> ProgramService:
    """Build the relay's service tree."""
    g = cfg.global_
    root = ProgramService("crs_relay")
    notifier = Notifier(reactor, g.notify or None, g.notify_timeout)
    log_file = LogFileService(g.log_dir, "crs_relay.log", "crs", lines=relay_lines, clock=reactor)
    attach(root, log_file)
    core = RelayCore(
        idle_timeout=idle_timeout,
        owner_grace=grace,
        rebind_after=rebind_after,
        map_address=g.map_address,
    )
    relay = RelayService(core, reactor, g.relay.host, g.relay.port)
    describe = [
        f"media {g.relay.host}:{g.relay.port}/udp, control {g.relay_control}",
        f"idle timeout {idle_timeout:g} s, CRS grace {grace:g} s, rebind after {rebind_after:g} s",
    ]
    attach(root, lifecycle("crs_relay", notifier, describe), relay)
    if media_io == "twisted":

        def listen_media() -> IListeningPort:
            port = reactor.listenUDP(
                g.relay.port,
                relay.datagram_protocol(),
                interface=g.relay.host,
                maxPacketSize=8192,  # the reactor's default, which the interface omits
            )
            if kernel_path != "off":
                bound = port.getHost()
                assert isinstance(bound, (IPv4Address, IPv6Address))
                relay.load_kernel_path(bound.port, kernel_path)
            return port
    else:

        def listen_media() -> IListeningPort:
            port: IListeningPort = relay.listen(reactor, media_io, kernel_path)
            return port

    media = ListenService("media relay", f"{g.relay.host}:{g.relay.port}/udp", listen_media)
    attach(root, media)

    def listen_control() -> IListeningPort:
        prepare_socket_path(g.relay_control)
        # Factory is invariant in its protocol type: a Factory[RelayControlProtocol]
        # is what listenUNIX takes, but mypy sees it as a different type.
        factory = cast(Factory, control_factory(relay))
        port = reactor.listenUNIX(g.relay_control, factory, mode=0o660)
        restrict_socket(g.relay_control, g.management_group)
        return port

    attach(root, ListenService("relay control", g.relay_control, listen_control))
    # Everything built so far lives as long as the process: keep it out of
    # the collector's full passes (tens of milliseconds each otherwise,
    # every one of them a hole in the media).
    attach(root, CallbackService(gc.freeze))
    attach(root, no_reload("crs_relay", reactor))
    return root


def makeService(options: Options) -> ProgramService:
    """IServiceMaker entry point."""
    reactor = global_reactor()

    return make_relay_service(
        options["crs"],
        reactor,
        idle_timeout=options["idle-timeout"],
        grace=options["grace"],
        rebind_after=options["rebind-after"],
        media_io=options["media-io"],
        kernel_path=options["kernel-path"],
    )
