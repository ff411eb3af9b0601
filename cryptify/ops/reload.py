"""
Reload without restart (``systemctl reload``, SIGHUP).

A program's configuration is one frozen attrs object (the CRS's is
``crs.conf`` and ``crs-local.conf`` together, :class:`CrsFiles`).  Each
directive an operator writes is a :class:`Directive`: its name as the
file spells it, where its value lives in the object, and whether the
running program can take a new value (``live``) or only at its next
start.

Rules (:func:`plan`, pure):

- the configuration the program runs with after a reload is the running
  one with the *live* directives' new values; a directive that needs a
  restart keeps its running value, so what the program does always
  matches what it says it runs with, and it is named in the log;
- a directive that did not change is not mentioned;
- only names are logged, never values (``key`` and ``cps`` hold secrets).

:class:`Reloader` is one reload, without I/O of its own: it reads (a
callable that raises :class:`ReloadError` for a file that does not
parse, which leaves the running configuration as it was), plans,
applies (a callable), logs.  :class:`SighupService` calls it on SIGHUP,
from the reactor thread.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Generic, TypeVar

import attrs
from twisted.application import service
from twisted.logger import Logger

from cryptify.config._base import evolve_at
from cryptify.reactor import IReactor

log = Logger(namespace="cryptify.reload")

T = TypeVar("T", bound=attrs.AttrsInstance)


class ReloadError(Exception):
    """The configuration could not be read; the message names file, line and problem."""


@attrs.frozen
class Directive:
    """One directive: its name as written, where its value is, whether it changes live."""

    name: str
    path: tuple[str, ...]
    live: bool


def value_at(obj: object, path: Sequence[str]) -> object:
    """The value at attribute path C{path} of C{obj}."""
    for name in path:
        obj = getattr(obj, name)
    return obj


def leaves(obj: attrs.AttrsInstance, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The paths of every value of C{obj} that is not itself an attrs object."""
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        path = (*prefix, field.name)
        if attrs.has(type(value)):
            yield from leaves(value, path)
        else:
            yield path


def uncovered(
    obj: attrs.AttrsInstance,
    directives: Sequence[Directive],
    ignored: Sequence[tuple[str, ...]] = (),
) -> list[tuple[str, ...]]:
    """The leaves of C{obj} that no directive (nor C{ignored}) covers.

    A directive covers its path and everything under it.  Used by the
    tests so that a new setting cannot be left out of the reload table.
    """
    covers = [d.path for d in directives] + list(ignored)
    return [p for p in leaves(obj) if not any(p[: len(c)] == c for c in covers)]


@attrs.frozen
class Plan(Generic[T]):
    """What one reload does: the configuration to run with, and what changed."""

    config: T
    live: tuple[Directive, ...] = ()
    restart: tuple[Directive, ...] = ()

    def changed(self, name: str) -> bool:
        """Whether the live directive C{name} changed (and is applied)."""
        return any(d.name == name for d in self.live)


def plan(running: T, loaded: T, directives: Sequence[Directive]) -> Plan[T]:
    """Compare C{running} and C{loaded}: see the module's rules."""
    config = running
    live: list[Directive] = []
    restart: list[Directive] = []
    for d in directives:
        new = value_at(loaded, d.path)
        if value_at(running, d.path) == new:
            continue
        if d.live:
            config = evolve_at(config, d.path, new)
            live.append(d)
        else:
            restart.append(d)
    return Plan(config, tuple(live), tuple(restart))


@attrs.define
class Reloader(Generic[T]):
    """Reloads one program's configuration (see the module docstring)."""

    program: str
    running: T
    directives: tuple[Directive, ...]
    read: Callable[[], T]
    apply: Callable[[Plan[T]], object]
    #: Reloads done (the last one included), and reloads refused.
    reloads: int = 0
    failures: int = 0
    #: Called first at every reload, whether the file is taken or not:
    #: files reopened for logrotate (the CIG's call records).
    reopen: list[Callable[[], object]] = attrs.field(factory=list)

    def reload(self) -> Plan[T] | None:
        """Reopen, then read, compare, apply and log; None when the file was refused."""
        for reopen in self.reopen:
            reopen()
        log.info("{program}: reloading the configuration", program=self.program)
        try:
            loaded = self.read()
        except ReloadError as exc:
            self.failures += 1
            log.error(
                "{program}: configuration not reloaded, the running one is kept: {why}",
                program=self.program,
                why=str(exc),
            )
            return None
        result = plan(self.running, loaded, self.directives)
        for d in result.restart:
            log.warn(
                "{program}: {directive} changed: it takes effect only after a restart "
                "(the running value is kept)",
                program=self.program,
                directive=d.name,
            )
        try:
            self.apply(result)
        except Exception:
            self.failures += 1
            log.failure(
                "{program}: the reloaded configuration could not be applied", program=self.program
            )
            return None
        self.running = result.config
        self.reloads += 1
        for d in result.live:
            log.info(
                "{program}: {directive} changed: applied", program=self.program, directive=d.name
            )
        log.info(
            "{program}: configuration reloaded ({live} changed live, {restart} need a restart)",
            program=self.program,
            live=len(result.live),
            restart=len(result.restart),
        )
        return result


class SighupService(service.Service):
    """Calls C{on_hup} in the reactor thread for each SIGHUP while running.

    The signal handler only hands the work to the reactor
    (C{callFromThread} is the one reactor call that is safe there); the
    previous handler is put back when the service stops.
    """

    def __init__(
        self, reactor: IReactor, on_hup: Callable[[], object], signum: int = signal.SIGHUP
    ):
        self.reactor = reactor
        self.on_hup = on_hup
        self.signum = signum
        self.previous: Callable[[int, FrameType | None], object] | int | None = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self.on_hup)

    def startService(self) -> None:
        service.Service.startService(self)
        self.previous = signal.signal(self.signum, self._handler)

    def stopService(self) -> None:
        previous = signal.SIG_DFL if self.previous is None else self.previous
        signal.signal(self.signum, previous)
        self.previous = None
        service.Service.stopService(self)


def no_reload(program: str, reactor: IReactor) -> SighupService:
    """For a program that does not reload (the relays): SIGHUP is logged, not fatal."""

    def hup() -> None:
        log.warn(
            "{program}: SIGHUP ignored: this program does not reload its configuration; "
            "restart it to change the configuration",
            program=program,
        )

    return SighupService(reactor, hup)
