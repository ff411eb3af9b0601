# twisted.web's Request and Resource methods carry no annotations:
# mypy: disable-error-code="no-untyped-call"
"""The admin interface: HTTPS on its own port (``admin-listen``), twisted.web.

A thin adapter: each request is routed (:mod:`.api`), checked by the
:class:`~cryptify.crs.remote_admin.auth.Gate`, and the allowed action is
done by the same responders ``crs-cli`` uses
(:class:`~cryptify.crs.operator.admin.CrsAdmin`), so a remote admin's
``stats export`` or update file goes through exactly the operator's path.
Every refusal is answered with its reason and logged with the peer
address, the admin (when known) and the request line, never with a token
or a secret.  The web console (:mod:`.console`) shares the port.

Limits: a body larger than :data:`MAX_BODY` closes the connection before
it is read; an idle connection is closed after :data:`IDLE_TIMEOUT`; one
source address may hold :data:`MAX_CONNECTIONS_PER_SOURCE` connections
(:class:`SourceLimit`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.web import http, resource, server

from cryptify.crs.accounts import MAX_UPDATE_BYTES, excerpt
from cryptify.crs.operator.admin import CrsAdmin
from cryptify.crs.operator.state import CrsState
from cryptify.crs.remote_admin.api import NEEDS, BadRequest, Route, parse_fields, route
from cryptify.crs.remote_admin.auth import Denied, Gate, Refused
from cryptify.crypto.errors import CryptoError
from cryptify.crypto.updatefile import peek_account
from cryptify.protocols.mgmt import CommandFailed
from cryptify.protocols.source_limit import SourceCounts
from cryptify.reactor import IReactor

log = Logger(namespace="cryptify.crs.remote_admin")

#: Largest request body: an update file, and a little.
MAX_BODY = MAX_UPDATE_BYTES + 4096
#: Seconds a connection may stay idle.
IDLE_TIMEOUT = 60
#: Open connections one source address may hold.
MAX_CONNECTIONS_PER_SOURCE = 16
#: Sent with every answer (docs/admin.md says why each is there).
SECURITY_HEADERS = {
    b"Content-Security-Policy": (
        b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'"
    ),
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Strict-Transport-Security": b"max-age=31536000",
    # not no-referrer: browsers then send "Origin: null" with forms, which the console refuses
    b"Referrer-Policy": b"same-origin",
    b"Cache-Control": b"no-store",
    b"Cross-Origin-Opener-Policy": b"same-origin",
    b"Cross-Origin-Resource-Policy": b"same-origin",
}


class AdminRequest(server.Request):
    """A request whose body may not exceed :data:`MAX_BODY`: larger closes the connection."""

    _received = 0
    _too_large = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self._refuse_size()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._too_large:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self._refuse_size()
            return
        super().handleContentChunk(data)

    def _refuse_size(self) -> None:
        if self._too_large:
            return
        self._too_large = True
        peer = self.getClientAddress()
        log.warn(
            "admin interface: a request from {peer} larger than {limit} octets refused",
            peer=getattr(peer, "host", "?"),
            limit=MAX_BODY,
        )
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.write(
                b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            )
            transport.loseConnection()

    def process(self) -> None:
        if self._too_large:
            return
        super().process()


def secure(request: server.Request) -> None:
    """Set the security headers on an answer."""
    for name, value in SECURITY_HEADERS.items():
        request.setHeader(name, value)
    request.setHeader(b"Server", b"cryptify-crs")


def peer_of(request: server.Request) -> str:
    return str(getattr(request.getClientAddress(), "host", "?"))


def request_line(request: server.Request) -> str:
    method = request.method.decode("ascii", "replace")
    return f"{method} {excerpt(request.path.decode('ascii', 'replace'))}"


def bearer(request: server.Request) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header."""
    value = request.getHeader(b"authorization")
    if value is None or not value.startswith(b"Bearer "):
        return None
    return value[len(b"Bearer ") :].strip().decode("ascii", "replace")


class AdminService:
    """What the interface does, shared by the API and the console."""

    def __init__(self, state: CrsState, gate: Gate, clock: Callable[[], float]) -> None:
        self.state = state
        self.gate = gate
        self.clock = clock
        self.ops = CrsAdmin(state)

    def refused(self, request: server.Request, denied: Denied) -> None:
        log.warn(
            "admin interface refused {request} from {peer}: {reason} (admin {admin})",
            request=request_line(request),
            peer=peer_of(request),
            reason=denied.reason.word,
            admin=denied.admin or "-",
        )

    async def perform(
        self, admin: str, action: str, account: str, body: bytes
    ) -> dict[str, object]:
        """Do an authorized per-account action; CommandFailed or BadRequest says why not."""
        ops = self.ops
        if action == "stats-export":
            answer: dict[str, object] = await ops.stats_export(account)
        elif action == "stats-enable":
            answer = await ops.stats_enable(account)
        elif action == "stats-disable":
            answer = await ops.stats_disable(account)
        elif action == "stats-clear":
            answer = await ops.stats_clear(account)
        elif action == "blacklist":
            answer = ops.show_blacklist(account)
        elif action == "update":
            answer = await ops.apply(base64.b64encode(body).decode("ascii"))
        else:  # pragma: no cover - routes name only the actions above
            raise AssertionError(action)
        if action not in ("stats-export", "blacklist"):
            log.info(
                "remote admin {admin} did {action} on {account}",
                admin=admin,
                action=action,
                account=account,
            )
        return answer

    def check_update_account(self, admin: str, account: str, body: bytes) -> None:
        """An update file applied through ``account`` must be that account's."""
        try:
            owner = peek_account(body)
        except CryptoError as exc:
            raise BadRequest(f"not an update file: {exc}") from None
        if owner != account:
            raise Denied(Refused.NOT_YOUR_ACCOUNT, admin)


class Pages(Protocol):
    """What serves the paths outside ``/api`` (the console)."""

    def render(self, request: server.Request) -> bytes | int: ...


class AdminRoot(resource.Resource):
    """``/api/...`` (JSON, bearer token) and the console (``/``, cookie + CSRF)."""

    isLeaf = True

    def __init__(self, service: AdminService, console: Pages | None = None) -> None:
        super().__init__()
        self.service = service
        self.console = console

    def render(self, request: server.Request) -> bytes | int:
        secure(request)
        segments = list(request.postpath or [])
        if segments[:1] == [b"api"]:
            return self._api(request, segments[1:])
        if self.console is not None:
            return self.console.render(request)
        return self._json(request, 404, {"error": "not-found"})

    def _json(self, request: server.Request, status: int, doc: dict[str, object]) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(doc).encode("utf-8") + b"\n"

    def _api(self, request: server.Request, segments: list[bytes]) -> bytes | int:
        found = route(request.method, segments)
        if found is None:
            log.warn(
                "admin interface refused {request} from {peer}: no such action",
                request=request_line(request),
                peer=peer_of(request),
            )
            return self._json(request, 404, {"error": "not-found"})
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        async def answer() -> None:
            status, doc = await self._answer(request, found)
            if not finished[0]:
                request.write(self._json(request, status, doc))
                request.finish()

        defer.ensureDeferred(answer()).addErrback(
            lambda f: log.failure("admin interface: {request}", f, request=request_line(request))
        )
        return server.NOT_DONE_YET

    async def _answer(self, request: server.Request, found: Route) -> tuple[int, dict[str, object]]:
        service, gate = self.service, self.service.gate
        now = service.clock()
        body = request.content.read() if request.content is not None else b""
        try:
            if found.action == "challenge":
                fields = parse_fields(body, ("admin",))
                nonce, expires = gate.challenge(fields["admin"], now)
                return 200, {"nonce": nonce, "expires_in": round(expires - now)}
            if found.action == "login":
                fields = parse_fields(body, ("admin", "nonce", "signature"))
                _, session = token_session = gate.login_signed(
                    fields["admin"], fields["nonce"], fields["signature"], now
                )
                log.info(
                    "remote admin {admin} logged in from {peer}",
                    admin=session.admin,
                    peer=peer_of(request),
                )
                return 200, {
                    "token": token_session[0],
                    "expires_in": round(session.expires - now),
                }
            token = bearer(request)
            if found.action == "logout":
                gate.session(token, now)
                gate.logout(token or "")
                return 200, {}
            if found.action == "accounts":
                _, admin = gate.session(token, now)
                rights = {a: sorted(admin.accounts[a]) for a in sorted(admin.accounts)}
                return 200, {"admin": admin.name, "accounts": rights}
            account = found.account or ""
            admin = gate.authorize(token, account, NEEDS[found.action], now)
            if found.action == "update":
                service.check_update_account(admin.name, account, body)
            return 200, await service.perform(admin.name, found.action, account, body)
        except Denied as denied:
            service.refused(request, denied)
            return denied.reason.status, {"error": denied.reason.word}
        except BadRequest as exc:
            log.warn(
                "admin interface refused {request} from {peer}: {why}",
                request=request_line(request),
                peer=peer_of(request),
                why=str(exc),
            )
            return 400, {"error": "bad-request", "message": str(exc)}
        except CommandFailed as exc:
            return 409, {"error": "failed", "message": str(exc)}


class AdminSite(server.Site):
    """The admin interface's site: bounded bodies, idle connections closed, no tracebacks."""

    requestFactory = AdminRequest
    displayTracebacks = False

    def __init__(self, root: resource.Resource, reactor: IReactor | None = None) -> None:
        super().__init__(root, timeout=IDLE_TIMEOUT, reactor=reactor)

    def log(self, request: http.Request) -> None:
        """No access log of its own: the interface logs what matters (refusals, actions)."""


class SourceLimit(policies.WrappingFactory):
    """Refuse a connection from an address that already holds ``limit`` open ones.

    The first refusal of an address is logged; it is logged again only
    after one of its connections has ended.
    """

    def __init__(self, site: server.Site, limit: int = MAX_CONNECTIONS_PER_SOURCE) -> None:
        super().__init__(site)
        self.limit = limit
        self.open = SourceCounts()
        self.noted: set[str] = set()
        self.sources: dict[policies.ProtocolWrapper, str] = {}

    def buildProtocol(self, addr: IAddress | None) -> Any:
        host = str(getattr(addr, "host", "?"))
        if not self.open.admit(host, self.limit):
            if host not in self.noted:
                self.noted.add(host)
                log.warn(
                    "admin interface: {host} already holds {limit} connections; "
                    "further ones refused",
                    host=host,
                    limit=self.limit,
                )
            return None
        wrapper = super().buildProtocol(addr)
        self.sources[wrapper] = host
        return wrapper

    def unregisterProtocol(self, p: policies.ProtocolWrapper) -> None:
        super().unregisterProtocol(p)
        host = self.sources.pop(p, None)
        if host is not None:
            self.open.release(host)
            self.noted.discard(host)
