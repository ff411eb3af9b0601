"""The management channel: AMP between a running server and its CLI.

One :class:`MgmtCommand` subclass per CLI action, defined once in
``crs_admin``/``cig_admin`` and used by both ends.  The server's responders
live on a locator object that holds the service (``cryptify.crs.operator.admin``,
``cryptify.cig.operator.admin``); :class:`ManagementProtocol` only adds the gate.

Who may connect:

- On the UNIX socket (mode 0660, the service's owner and group) the file
  permissions are the gate: the kernel refuses anyone else.
- On a TCP port (the CIG's 127.0.0.1:8083) any local user could connect, so
  the connection must first send :class:`Authenticate` with the cookie
  read from a file that only root and the service group can read.  Every
  other command is refused until then, and a wrong cookie closes the
  connection.  A connection that has not authenticated within
  :data:`AUTH_TIMEOUT` seconds is closed, and one address may hold at most
  :data:`MAX_PER_SOURCE` connections (more are closed as they are
  accepted); both are logged at most once a minute, with a count.

Tables travel as JSON in a :class:`~twisted.protocols.amp.BigUnicode`
argument, so a long ``show attach`` is not bound by AMP's 64 KiB value
limit.  Streaming actions (``trace``) push :class:`TraceEvent` boxes over the
same connection until the CLI goes away.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from cryptify.protocols.amp_calls import call_remote
from cryptify.protocols.source_limit import SourceCounts
from cryptify.protocols.streams import abort

log = Logger(namespace="cryptify.mgmt")

#: Size of a generated management cookie, in bytes of randomness.
COOKIE_BYTES = 32
#: Longest cookie accepted on the wire.
MAX_COOKIE_CHARS = 256
#: Seconds a TCP management connection has to present the cookie.
AUTH_TIMEOUT = 5.0
#: Open TCP management connections one source address may hold.
MAX_PER_SOURCE = 16
#: At most one log line per kind of refusal this often, in seconds.
LOG_EVERY = 60.0


class CommandFailed(Exception):
    """The server refused or could not do an action; the text says why."""


class NotAuthenticated(Exception):
    """A command arrived before a valid :class:`Authenticate`."""


class BadCookie(Exception):
    """The cookie presented does not match."""


_ERRORS: dict[type[Exception], bytes] = {
    CommandFailed: b"COMMAND_FAILED",
    NotAuthenticated: b"NOT_AUTHENTICATED",
    BadCookie: b"BAD_COOKIE",
}


class MgmtCommand(amp.Command):
    """Base of every management command: shared error mapping."""

    errors = _ERRORS


#: Bytes of a table's JSON carried per AMP value (AMP's limit is 65535).
TABLE_CHUNK = 60000
#: Largest table accepted, in chunks (about 60 MB).
MAX_TABLE_CHUNKS = 1000


class JsonValue(amp.Argument):
    """A JSON value of any kind (a table, a status report) as chunked JSON text.

    A table is ``{"columns": [...], "rows": [[...], ...]}``.  The JSON
    text is split over the keys ``NAME`` (the chunk count) and ``NAME.1``
    ... ``NAME.N``, so a table is not bound by the 64 KiB limit of one AMP
    value.
    """

    def __init__(self) -> None:
        amp.Argument.__init__(self)

    def toBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, object], proto: object
    ) -> None:
        data = json.dumps(objects[name.decode("ascii")], separators=(",", ":")).encode("utf-8")
        chunks = [data[i : i + TABLE_CHUNK] for i in range(0, len(data), TABLE_CHUNK)] or [b""]
        strings[name] = str(len(chunks)).encode("ascii")
        for index, chunk in enumerate(chunks, 1):
            strings[name + b"." + str(index).encode("ascii")] = chunk

    def fromBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, object], proto: object
    ) -> None:
        try:
            count = int(strings[name])
        except (KeyError, ValueError) as exc:
            raise amp.MalformedAmpBox(f"table {name!r} has no chunk count") from exc
        if not 1 <= count <= MAX_TABLE_CHUNKS:
            raise amp.MalformedAmpBox(f"table {name!r} has {count} chunks")
        parts = []
        for index in range(1, count + 1):
            key = name + b"." + str(index).encode("ascii")
            if key not in strings:
                raise amp.MalformedAmpBox(f"table {name!r} misses chunk {index}")
            parts.append(strings[key])
        objects[name.decode("ascii")] = json.loads(b"".join(parts))


Table = JsonValue


def table(columns: list[str], rows: list[list[str]]) -> dict[str, object]:
    """The value of a :class:`Table` argument."""
    return {"columns": columns, "rows": rows}


class Authenticate(MgmtCommand):
    """Present the management cookie (TCP listeners only)."""

    arguments = [(b"cookie", amp.Unicode())]
    response = []


class Echo(MgmtCommand):
    """Answer with the same text: checks that the server is alive."""

    arguments = [(b"text", amp.Unicode())]
    response = [(b"text", amp.Unicode())]


class ServerVersion(MgmtCommand):
    """The program name and version of the running server."""

    arguments = []
    response = [(b"program", amp.Unicode()), (b"version", amp.Unicode())]


class TraceEvent(MgmtCommand):
    """Server -> CLI: one line of a running trace."""

    arguments = [(b"line", amp.Unicode())]
    requiresAnswer = False


#: What a locator answers for a command name: a callable taking the box.
Responder = Callable[[amp.AmpBox], defer.Deferred[amp.AmpBox]]


def _refuse(box: amp.AmpBox) -> defer.Deferred[amp.AmpBox]:
    return defer.fail(
        amp.RemoteAmpError(b"NOT_AUTHENTICATED", "authenticate with the cookie first")
    )


class ManagementProtocol(amp.AMP):
    """Server side of one management connection.

    ``cookie`` is None on UNIX sockets (the kernel checked the caller) and
    the expected cookie on TCP listeners.
    """

    def __init__(
        self,
        make_locator: Callable[[ManagementProtocol], amp.CommandLocator],
        cookie: str | None = None,
    ) -> None:
        amp.AMP.__init__(self)
        self.on_lost: list[Callable[[], None]] = []
        self.inner = make_locator(self)
        self.cookie = cookie
        self.authenticated = cookie is None
        self.close_after_reply = False
        self._auth = _AuthLocator(self)
        self.auth_timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        amp.AMP.connectionMade(self)
        factory = getattr(self, "factory", None)
        if not self.authenticated and isinstance(factory, ManagementFactory):
            clock = factory.clock
            if clock is not None:
                self.auth_timer = clock.callLater(factory.auth_timeout, self._auth_timeout)

    def _auth_timeout(self) -> None:
        self.auth_timer = None
        factory = getattr(self, "factory", None)
        if isinstance(factory, ManagementFactory):
            factory.note("did not authenticate in time")
        abort(self.transport)

    def authenticated_now(self) -> None:
        """The cookie matched: stop the clock."""
        self.authenticated = True
        if self.auth_timer is not None and self.auth_timer.active():
            self.auth_timer.cancel()
        self.auth_timer = None

    def push_trace(self, line: str) -> None:
        """Send one trace line to the CLI (no answer expected)."""
        if self.transport is not None and not getattr(self.transport, "disconnecting", False):
            # TraceEvent asks for no answer: callRemote returns None, not a Deferred.
            amp.BoxDispatcher.callRemote(self, TraceEvent, line=line)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.auth_timer is not None and self.auth_timer.active():
            self.auth_timer.cancel()
        self.auth_timer = None
        amp.AMP.connectionLost(self, reason)
        callbacks, self.on_lost = self.on_lost, []
        for callback in callbacks:
            callback()

    def sendBox(self, box: amp.AmpBox) -> None:
        amp.AMP.sendBox(self, box)
        if self.close_after_reply and self.transport is not None:
            self.transport.loseConnection()

    def locateResponder(self, name: bytes) -> Responder | None:
        responder: Responder | None
        if name == Authenticate.commandName:
            responder = amp.CommandLocator.locateResponder(self._auth, name)
        elif not self.authenticated:
            responder = _refuse
        else:
            responder = self.inner.locateResponder(name)
        return responder


class _AuthLocator(amp.CommandLocator):
    def __init__(self, proto: ManagementProtocol) -> None:
        self.proto = proto

    @Authenticate.responder
    def authenticate(self, cookie: str) -> dict[str, object]:
        expected = self.proto.cookie
        if expected is None:
            return {}
        if len(cookie) > MAX_COOKIE_CHARS or not hmac.compare_digest(
            cookie.encode("utf-8"), expected.encode("utf-8")
        ):
            log.warn("management connection presented a wrong cookie; closing it")
            self.proto.close_after_reply = True
            raise BadCookie("wrong management cookie")
        self.proto.authenticated_now()
        return {}


class ManagementFactory(ServerFactory):
    """Builds a :class:`ManagementProtocol` per connection around one locator.

    With a ``cookie`` and a ``clock`` (TCP listeners), connections that do
    not authenticate within ``auth_timeout`` seconds are closed; addresses
    with ``max_per_source`` open connections get no more.
    """

    noisy = False

    def __init__(
        self,
        make_locator: Callable[[ManagementProtocol], amp.CommandLocator],
        cookie: str | None = None,
        clock: IReactorTime | None = None,
        auth_timeout: float = AUTH_TIMEOUT,
        max_per_source: int = MAX_PER_SOURCE,
    ) -> None:
        self.make_locator = make_locator
        self.cookie = cookie
        self.clock = clock
        self.auth_timeout = auth_timeout
        self.max_per_source = max_per_source
        self.open = SourceCounts()
        #: Per kind of refusal: when it was last logged, and how many since.
        self._logged: dict[str, tuple[float, int]] = {}

    def buildProtocol(self, addr: IAddress | None) -> ManagementProtocol | None:
        host = getattr(addr, "host", None)
        if host is not None:
            if not self.open.admit(host, self.max_per_source):
                self.note(f"more than {self.max_per_source} connections from one address")
                return None
        proto = ManagementProtocol(self.make_locator, self.cookie)
        proto.factory = self
        if host is not None:
            proto.on_lost.append(lambda: self.open.release(host))
        return proto

    def note(self, why: str) -> None:
        """Log a refused or timed-out connection, at most once per LOG_EVERY."""
        now = self.clock.seconds() if self.clock is not None else 0.0
        last, since = self._logged.get(why, (None, 0))
        if last is not None and now - last < LOG_EVERY:
            self._logged[why] = (last, since + 1)
            return
        self._logged[why] = (now, 0)
        log.warn(
            "management connection closed: {why} ({since} more since the last such line)",
            why=why,
            since=since,
        )


class ManagementClient(amp.AMP):
    """CLI side: receives trace lines pushed by the server."""

    def __init__(self, on_trace: Callable[[str], None] | None = None) -> None:
        amp.AMP.__init__(self)
        self.on_trace = on_trace
        self.lost: defer.Deferred[None] = defer.Deferred()

    @TraceEvent.responder
    def trace_event(self, line: str) -> dict[str, object]:
        if self.on_trace is not None:
            self.on_trace(line)
        return {}

    async def call(self, command: type[amp.Command], **kwargs: object) -> dict[str, Any]:
        """Send a command and return its answer (typed ``callRemote``)."""
        return await call_remote(self, command, **kwargs)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        amp.AMP.connectionLost(self, reason)
        if not self.lost.called:
            self.lost.callback(None)


async def connect(
    endpoint: IStreamClientEndpoint,
    cookie: str | None = None,
    on_trace: Callable[[str], None] | None = None,
) -> ManagementClient:
    """Connect a management client and authenticate when a cookie is given."""
    factory = Factory.forProtocol(lambda: ManagementClient(on_trace))
    proto = await endpoint.connect(factory)
    assert isinstance(proto, ManagementClient)
    if cookie is not None:
        await proto.call(Authenticate, cookie=cookie)
    return proto
