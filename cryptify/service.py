"""Service-tree building blocks shared by the four programs.

- :class:`SequentialMultiService` starts its children in order and stops
  them one after another in reverse order, each waiting for the previous
  one to drain: client listeners close before the store they write to, and
  the logs close last.
- :class:`ListenService` binds a port (TCP, TLS, UNIX or UDP) when it
  starts, so a bind failure stops start-up with a :class:`StartupError`
  that names what could not listen where, instead of being logged and
  forgotten.
- :class:`ProgramService` is the root of each program: it turns a
  :class:`StartupError` into a one-line exit, the way an operator wants to
  read it from ``systemctl status`` or a terminal.
"""

from __future__ import annotations

import grp
import os
import sys
from collections.abc import Callable
from typing import cast

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.reactor import IReactor

log = Logger(namespace="cryptify.service")


class StartupError(Exception):
    """The program cannot start; the message says why, for the operator."""


class SequentialMultiService(service.MultiService):
    """A MultiService that stops its children one by one, last started first."""

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        children = list(self)
        children.reverse()
        return defer.ensureDeferred(self._stop_in_order(children))

    async def _stop_in_order(self, children: list[service.IService]) -> None:
        for child in children:
            if not child.running:
                continue
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception:
                log.failure("error stopping {name}", name=child.name)


class ProgramService(SequentialMultiService):
    """Root service of a program: start-up failures end the process clearly."""

    def __init__(self, program: str, exit_on_error: bool = True) -> None:
        service.MultiService.__init__(self)
        self.program = program
        self.exit_on_error = exit_on_error

    def _fail(self, exc: StartupError) -> None:
        log.critical("{program}: cannot start: {why}", program=self.program, why=str(exc))
        if not self.exit_on_error:
            raise exc
        # Close whatever already started, then leave with one clear line.
        self.stopService()
        # twistd sends sys.stderr to its log; the operator's terminal (or
        # the journal) is the original standard error.
        print(f"{self.program}: cannot start: {exc}", file=sys.__stderr__ or sys.stderr, flush=True)
        raise SystemExit(1)

    def privilegedStartService(self) -> None:
        try:
            service.MultiService.privilegedStartService(self)
        except StartupError as exc:
            self._fail(exc)

    def startService(self) -> None:
        try:
            service.MultiService.startService(self)
        except StartupError as exc:
            self._fail(exc)


class ListenService(service.Service):
    """Listen on a port while running; a bind failure is a StartupError.

    ``listen`` is a zero-argument callable that binds and returns the
    listening port (for example ``lambda: reactor.listenTCP(...)``).
    ``what`` and ``where`` describe the port in error messages and logs.
    """

    def __init__(self, what: str, where: str, listen: Callable[[], object]) -> None:
        self.what = what
        self.where = where
        self.listen = listen
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        # Bind before twistd sheds root, so that privileged ports work.
        self._bind()
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        self._bind()
        service.Service.startService(self)

    def _bind(self) -> None:
        if self.port is None:
            try:
                self.port = cast(IListeningPort, self.listen())
            except CannotListenError as exc:
                reason = exc.socketError
                detail = getattr(reason, "strerror", None) or str(reason)
                raise StartupError(
                    f"cannot listen on {self.where} ({self.what}): {detail}"
                ) from exc
            except OSError as exc:
                raise StartupError(
                    f"cannot listen on {self.where} ({self.what}): {exc.strerror or exc}"
                ) from exc
            log.info("{what} listening on {where}", what=self.what, where=self.where)

    def stopService(self) -> defer.Deferred[object] | None:
        service.Service.stopService(self)
        port, self.port = self.port, None
        if port is None:
            return None
        stopped: defer.Deferred[object] = defer.maybeDeferred(port.stopListening)
        return stopped


class CallbackService(service.Service):
    """Run a callable on start and another on stop (lifecycle events)."""

    def __init__(
        self,
        on_start: Callable[[], object] | None = None,
        on_stop: Callable[[], object] | None = None,
    ) -> None:
        self.on_start = on_start
        self.on_stop = on_stop

    def startService(self) -> None:
        service.Service.startService(self)
        if self.on_start is not None:
            self.on_start()

    def stopService(self) -> defer.Deferred[object]:
        service.Service.stopService(self)
        if self.on_stop is None:
            return defer.succeed(None)
        return defer.maybeDeferred(self.on_stop)


def prepare_socket_path(path: str) -> None:
    """Make a UNIX socket's directory and remove a stale socket file.

    The directory is created 0750 if missing.  A leftover socket from a
    process that died is removed; any other kind of file in its place is an
    error, never silently deleted.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o750, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    import stat

    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{path} exists and is not a socket; refusing to replace it")
    os.unlink(path)


def restrict_socket(path: str, group: str | None, mode: int = 0o660) -> None:
    """Give a management socket its mode and (when it exists) its group."""
    os.chmod(path, mode)
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            log.info(
                "group {group} does not exist; {path} keeps the service's own group",
                group=group,
                path=path,
            )
            return
        try:
            os.chown(path, -1, gid)
        except PermissionError:
            log.warn("cannot give {path} to group {group}", path=path, group=group)


def log_failure(message: str) -> Callable[[Failure], None]:
    """An errback that logs a failure with ``message``."""

    def errback(failure: Failure) -> None:
        log.failure(message, failure)

    return errback


def attach(parent: service.MultiService, *children: service.Service) -> None:
    """Add children to a service parent, in start order."""
    for child in children:
        parent.addService(child)


def unix_endpoint(reactor: IReactor, path: str, timeout: float = 5) -> IStreamClientEndpoint:
    """A typed UNIX client endpoint."""
    endpoint: IStreamClientEndpoint = UNIXClientEndpoint(reactor, path, timeout)
    return endpoint
