"""The ``cryptify-push`` twistd plugin: our push server (``docs/push.md``).

Service tree: [cryptify-push.log], the TLS listener of the push link, the
provider connections (closed on stop).  Configuration problems stop it
before anything opens, as one ``FILE:LINE: problem`` line.
"""

from __future__ import annotations

from twisted.internet.interfaces import IListeningPort
from twisted.python import usage

from cryptify.logs import LogFileService
from cryptify.plugins._common import ConfigUsageError
from cryptify.protocols.tls import TLSConfigError, server_context_factory
from cryptify.push.config import PushConfig, PushConfigError, load
from cryptify.push.server import Providers, PushServerFactory, load_secrets
from cryptify.reactor import IReactor, global_reactor
from cryptify.service import CallbackService, ListenService, ProgramService, StartupError, attach


class Options(usage.Options):
    """Command-line options of ``twistd cryptify-push``."""

    synopsis = "--config FILE [--log-dir DIR] [--name NAME]"
    longdesc = "Cryptify push server: wakes CRS clients through APNs and FCM."
    optParameters = [
        ["config", "c", None, "the push server's configuration file (required)"],
        ["log-dir", None, None, "write cryptify-push.log there (default: twistd's log)"],
        ["name", None, "cryptify-push", "this server's name, told to CRSes at login"],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        try:
            self["push"] = load(self["config"])
        except PushConfigError as exc:
            raise ConfigUsageError(str(exc)) from exc


def make_push_service(
    cfg: PushConfig, reactor: IReactor, name: str, log_dir: str | None
) -> ProgramService:
    """Build the push server's tree: keys and secrets are read here, sockets open at start."""
    root = ProgramService("cryptify-push")
    if log_dir:
        attach(root, LogFileService(log_dir, "cryptify-push.log", "crs"))
    try:
        secrets = load_secrets(cfg)
        providers = Providers.from_config(cfg, reactor)
    except PushConfigError as exc:
        raise ConfigUsageError(str(exc)) from exc
    factory = PushServerFactory(reactor, name, secrets, providers)

    def listen() -> IListeningPort:
        if not cfg.certificate or not cfg.key:
            raise StartupError("push link: a tls-certificate line is required")
        try:
            context = server_context_factory(cfg.certificate, cfg.key)
        except TLSConfigError as exc:
            raise StartupError(f"push link TLS: {exc}") from exc
        return reactor.listenSSL(cfg.port, factory, context, interface=cfg.host)

    attach(root, CallbackService(on_stop=providers.close))
    attach(root, ListenService("push link", f"{cfg.host}:{cfg.port}", listen))
    return root


def makeService(options: Options) -> ProgramService:
    """IServiceMaker entry point."""
    reactor = global_reactor()

    return make_push_service(options["push"], reactor, options["name"], options["log-dir"])
