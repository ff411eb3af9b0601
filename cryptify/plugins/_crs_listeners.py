"""The CRS's listeners: clients (TLS + WebSocket), the management socket,
the remote admin interface, and the TLS settings they share."""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Callable
from typing import cast

import attrs
from twisted.application import service
from twisted.internet.interfaces import IListeningPort, IReactorSocket
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from cryptify.config import CrsConfig, CrsLocalConfig
from cryptify.config.crs_local import worker_count
from cryptify.config.crs_model import CrsGlobal
from cryptify.crs.attach.core import AttachCore
from cryptify.crs.attach.wiring import BACKLOG, Limits, UmsgListenService, UmsgServerFactory
from cryptify.crs.operator.admin import CrsAdmin
from cryptify.crs.operator.state import CrsState
from cryptify.crs.remote_admin.auth import Gate
from cryptify.crs.remote_admin.console import Console
from cryptify.crs.remote_admin.server import AdminRoot, AdminService, AdminSite, SourceLimit
from cryptify.crs.workers.admin import MAX_SOCKET_PATH, client_rules, with_rules, worker_socket
from cryptify.crs.workers.fanout import WorkerViews, unix_opener
from cryptify.crs.workers.notices import Gone, worker_name
from cryptify.crs.workers.reuseport import listen_reuseport, reserve
from cryptify.crs.workers.supervisor import WorkerSupervisor
from cryptify.crs.workers.wake import Siblings
from cryptify.logs import LogFileService
from cryptify.protocols.mgmt import ManagementFactory
from cryptify.protocols.stdtls import Engine, TLSServerFactory, server_engines
from cryptify.protocols.tls import (
    CertificateServerContextFactory,
    TLSConfigError,
    server_context_factory,
)
from cryptify.reactor import IReactor
from cryptify.service import (
    ListenService,
    StartupError,
    prepare_socket_path,
    restrict_socket,
)
from cryptify.tools.certs import ensure_self_signed

log = Logger(namespace="cryptify.crs")


def _tls_files(cfg: CrsConfig) -> tuple[str, str]:
    """The certificate and key: tls-certificate's, or a self-signed development pair
    (made when missing).

    @raise TLSConfigError: the development pair cannot be written.
    """
    g = cfg.global_
    if g.tls_certificate:
        return g.tls_paths()
    cert = os.path.join(g.data_dir, "tls", "crs.crt")
    key = os.path.join(g.data_dir, "tls", "crs.key")
    log.warn(
        "no tls-certificate configured: serving a self-signed development "
        "certificate from {cert}; clients must be told to trust it",
        cert=cert,
    )
    os.makedirs(os.path.dirname(cert), mode=0o700, exist_ok=True)
    ensure_self_signed(cert, key)
    return cert, key


def server_tls(cfg: CrsConfig, what: str) -> CertificateServerContextFactory:
    """The CRS's TLS context: tls-certificate, or a self-signed development one."""
    try:
        return server_context_factory(*_tls_files(cfg))
    except TLSConfigError as exc:
        raise StartupError(f"{what} TLS: {exc}") from exc


def client_tls(cfg: CrsConfig) -> Callable[[], Engine]:
    """The client port's TLS engines (:mod:`cryptify.protocols.stdtls`), with the
    same certificate, key and policy as :func:`server_tls`."""
    try:
        return server_engines(*_tls_files(cfg))
    except TLSConfigError as exc:
        raise StartupError(f"client TLS: {exc}") from exc


def client_listener(
    cfg: CrsConfig, reactor: IReactor, core: AttachCore, shared: bool = False
) -> UmsgListenService:
    """The TLS client port (5223); a self-signed certificate without tls-certificate.

    ``shared``: a worker's listener, one of the instance's ``SO_REUSEPORT``
    sockets on the port (:mod:`cryptify.crs.workers.reuseport`).
    """
    g = cfg.global_
    clients = UmsgServerFactory(core, reactor, Limits.from_config(g), g.keep_alive_for)

    def listen_clients() -> IListeningPort:
        # Twisted's types want a ServerFactory of protocols with a factory; it serves here.
        tls = cast(ServerFactory, TLSServerFactory(client_tls(cfg), clients, reactor))
        if shared:
            sockets = cast(IReactorSocket, reactor)
            return listen_reuseport(sockets, g.listen.host, g.listen.port, tls, BACKLOG)
        return reactor.listenTCP(g.listen.port, tls, backlog=BACKLOG, interface=g.listen.host)

    where = f"{g.listen.host}:{g.listen.port}"
    return UmsgListenService(where, listen_clients, clients, reactor)


class HeldClientPort(service.Service):
    """The parent's hold on the client port while its workers serve it:
    checks the TLS certificate (making the development one) and binds a
    ``SO_REUSEPORT`` socket, so that a taken port or a bad certificate
    stops the start with one line before any worker runs (so does a
    management path too long for the ``count`` workers' sockets beside
    it, :func:`cryptify.crs.workers.admin.worker_socket`).  It binds when
    the service starts, not before privileges are shed: ``SO_REUSEPORT``
    shares a port between sockets of one user only, the workers'."""

    def __init__(self, cfg: CrsConfig, count: int = 0) -> None:
        self.cfg = cfg
        self.count = count
        self.sock: socket.socket | None = None

    def startService(self) -> None:
        self._hold()
        service.Service.startService(self)

    def _hold(self) -> None:
        if self.sock is None:
            last = worker_socket(self.cfg.global_.management, self.count - 1)
            if self.count and len(os.fsencode(last)) > MAX_SOCKET_PATH:
                raise StartupError(
                    f"workers: {last} (a worker's socket beside the management socket) is "
                    f"longer than {MAX_SOCKET_PATH} bytes; choose a shorter management path"
                )
            server_tls(self.cfg, "client")
            where = self.cfg.global_.listen
            self.sock = reserve(where.host, where.port)

    def stopService(self) -> None:
        service.Service.stopService(self)
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()


def log_writer(logs: LogFileService) -> Callable[[str], None]:
    """Writes a worker's crs.log lines into this process's crs.log."""

    def write(line: str) -> None:
        out = logs.file
        if out is not None:
            out.write(line)
            out.flush()

    return write


def client_workers(
    cfg: CrsConfig,
    local: CrsLocalConfig,
    reactor: IReactor,
    logs: LogFileService,
    state: CrsState,
    siblings: Siblings,
    iw: bool = False,
) -> tuple[HeldClientPort, WorkerSupervisor]:
    """With ``workers N``: the held client port and the worker processes
    that serve it (each is given the configuration read here), in ``show
    system`` and ``show services``; ``siblings`` tells them of account
    changes and of a worker gone."""
    served = [cfg]
    count = worker_count(local)
    workers = WorkerSupervisor(
        reactor, count, lambda: pickle.dumps((served[0], local, iw)), log_writer(logs)
    )
    state.workers = workers.rows
    paths = [worker_socket(cfg.global_.management, i) for i in range(count)]
    views = state.fanout = WorkerViews(reactor, count, unix_opener(reactor, paths), workers.rows)

    def rules_changed(g: CrsGlobal) -> None:
        # a reload's client rules, for the running workers and those that
        # start from now on (the rest of crs.conf stays as served)
        rules = client_rules(g)
        served[0] = attrs.evolve(served[0], global_=with_rules(served[0].global_, rules))
        views.send_rules(rules)

    state.worker_rules = rules_changed
    state.probes["workers"] = workers.status
    state.accounts.on_change.append(siblings.accounts_changed)
    workers.on_exit.append(lambda index: siblings.publish(Gone(worker_name(index))))
    return HeldClientPort(cfg, count), workers


def management_listener(cfg: CrsConfig, reactor: IReactor, state: CrsState) -> ListenService:
    """The management socket ``crs-cli`` talks to (mode 0660)."""
    g = cfg.global_

    def listen_management() -> IListeningPort:
        prepare_socket_path(g.management)
        factory = ManagementFactory(lambda proto: CrsAdmin(state, proto))
        port = reactor.listenUNIX(g.management, factory, mode=0o660)
        restrict_socket(g.management, g.management_group)
        return port

    return ListenService("management", g.management, listen_management)


def admin_listener(cfg: CrsConfig, reactor: IReactor, state: CrsState) -> ListenService | None:
    """The remote admin interface (HTTPS, docs/admin.md), or None when off."""
    where = cfg.global_.admin_listen
    if where is None or state.admins is None:
        return None
    service = AdminService(state, Gate(state.admins), reactor.seconds)
    site = SourceLimit(AdminSite(AdminRoot(service, console=Console(service)), reactor=reactor))

    def listen_admin() -> IListeningPort:
        context = server_tls(cfg, "admin interface")
        # A WrappingFactory is a ClientFactory to Twisted's types; it serves here.
        return reactor.listenSSL(
            where.port, cast(ServerFactory, site), context, interface=where.host
        )

    return ListenService("admin interface", f"{where.host}:{where.port}", listen_admin)
