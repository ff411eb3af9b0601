"""Pieces every program's service tree uses."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from cryptify.config._base import evolve_at
from cryptify.events import Notifier
from cryptify.reactor import IReactor
from cryptify.service import CallbackService

log = Logger(namespace="cryptify.service")


#: Exit status of ``twistd PLUGIN`` when a configuration file is not valid.
EXIT_CONFIG = 1

T = TypeVar("T", bound=attrs.AttrsInstance)

#: A command-line option that names a path, and where in the configuration
#: object that path goes (attribute names, outermost first).
Override = tuple[str, tuple[str, ...]]


class ConfigUsageError(usage.UsageError):
    """A configuration file (not the command line) is not valid."""


def load_or_usage(loader: Callable[[str], T], path: str) -> T:
    """Parse a config file; any problem becomes a ConfigUsageError naming the place."""
    from cryptify.config import ConfigError

    try:
        return loader(path)
    except ConfigError as exc:
        raise ConfigUsageError(str(exc)) from exc
    except OSError as exc:
        raise ConfigUsageError(f"cannot read {path}: {exc.strerror}") from exc


def config_option(filename: str) -> list[str | None]:
    """The ``--config`` option of a program that reads C{filename}."""
    return ["config", "c", None, f"{filename} (default: built-in development settings)"]


def log_dir_option(filename: str) -> list[str | None]:
    """The ``--log-dir`` option."""
    return ["log-dir", None, None, f"log directory (overrides {filename})"]


def notify_option(filename: str) -> list[str | None]:
    """The ``--notify`` option."""
    return ["notify", None, None, f"notify script (overrides {filename}; empty: none)"]


class ConfigOptions(usage.Options):
    """Options of a twistd plugin that reads configuration files.

    twistd answers a UsageError with its whole usage text; a broken
    configuration file is not a misuse of the command line, so under twistd
    (when these options have a parent) it is one line on stderr,
    ``FILE:LINE:COLUMN: problem``, and exit status 1.  Used on their own
    (tests, other programs) the options still raise the UsageError.

    Every program reads its file the same way (L{load_config}) and lets the
    command line replace the paths in it the same way (L{with_overrides}).
    """

    parent: usage.Options | None = None

    def load_config(self, loader: Callable[[str], T], development: Callable[[], T]) -> T:
        """The file ``--config`` names, parsed (any problem is a
        L{ConfigUsageError} naming the place), or the development settings."""
        if self["config"]:
            loaded: T = load_or_usage(loader, self["config"])
            return loaded
        return development()

    def with_overrides(self, cfg: T, overrides: Sequence[Override]) -> T:
        """
        C{cfg} with the path of every override option given on the command
        line, made absolute; an empty value stays empty (none).  Options
        this program does not have are skipped.
        """
        for option, where in overrides:
            value = self.get(option)
            if value is not None:
                cfg = evolve_at(cfg, where, os.path.abspath(value) if value else "")
        return cfg

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        try:
            usage.Options.parseOptions(self, options)
        except ConfigUsageError as exc:
            if self.parent is None:
                raise
            print(exc, file=sys.stderr, flush=True)
            raise SystemExit(EXIT_CONFIG) from None


def lifecycle(
    unit: str, notifier: Notifier, describe: list[str], warnings: Sequence[str] = ()
) -> CallbackService:
    """Log the start (INIT lines, then the configuration's warnings) and
    stop of a program and tell notify.sh."""

    def started() -> None:
        log.info("Start {unit} (pid {pid})", unit=unit, pid=os.getpid(), log_type="INIT")
        for line in describe:
            log.info("{line}", line=line, log_type="INIT")
        for warning in warnings:
            log.warn("{config_warning}", config_warning=warning, log_type="INIT")
        notifier.notify(unit, "start")

    def stopped() -> defer.Deferred[None]:
        log.info("Stop {unit}", unit=unit)
        notifier.notify(unit, "stop")
        return drain(notifier)

    return CallbackService(started, stopped)


def drain(notifier: Notifier, limit: float | None = None) -> defer.Deferred[None]:
    """Fire when the notifier has delivered everything (or after its time limit)."""
    from twisted.internet import task

    clock = notifier.reactor
    deadline = clock.seconds() + (notifier.timeout + 1 if limit is None else limit)
    done: defer.Deferred[None] = defer.Deferred()

    def check() -> None:
        if notifier.idle or clock.seconds() >= deadline:
            loop.stop()

    loop = task.LoopingCall(check)
    loop.clock = clock
    loop.start(0.1, now=True).addCallback(lambda _: done.callback(None))
    return done


def fatal(program: str, reactor: IReactor) -> Callable[[Failure], None]:
    """An errback for start-up work that finishes after the reactor runs.

    It logs why, prints one line to stderr, stops the reactor and makes the
    process exit non-zero, so systemd and the operator both see the failure.
    """

    def errback(failure: Failure) -> None:
        why = failure.getErrorMessage()
        log.critical("{program}: cannot start: {why}", program=program, why=why)
        print(f"{program}: cannot start: {why}", file=sys.__stderr__ or sys.stderr, flush=True)
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        if reactor.running:
            reactor.stop()

    return errback
