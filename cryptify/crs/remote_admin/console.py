"""The web console of the admin interface: server-rendered HTML forms, no script.

Pages (the API's actions, for a browser)::

    GET  /                          login form, or the admin's accounts
    POST /login                     admin + secret (+ the login form's token)
    POST /logout
    GET  /accounts/ID/stats         statistics: the table and enable/disable/clear
    POST /accounts/ID/stats/OP      statistics
    GET  /accounts/ID/blacklist     update
    GET  /accounts/ID/update        update: the upload form
    POST /accounts/ID/update        update: multipart/form-data with the file
    GET  /style.css

Defences (docs/admin.md): the session token lives in a ``__Host-`` cookie
(Secure, HttpOnly, SameSite=Strict, Path=/); every POST carries a CSRF
token bound to its session (the login form: to a pre-login cookie,
double-submit) compared in constant time, and a POST whose ``Origin`` is
another site's is refused.  The pages load nothing but ``/style.css``;
the CSP forbids scripts, frames and foreign form targets.
"""

from __future__ import annotations

import base64
import hmac
import html
import os
import re
from collections.abc import Callable, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import server

from cryptify.crs.accounts import ACCOUNT_ID
from cryptify.crs.operator.admin import BLACKLIST_COLUMNS
from cryptify.crs.operator.stats import COLUMNS as STATS_COLUMNS
from cryptify.crs.remote_admin.auth import Denied, Refused, Session
from cryptify.crs.remote_admin.server import AdminService, peer_of, request_line
from cryptify.crs.remote_admin.store import Admin
from cryptify.protocols.mgmt import CommandFailed

log = Logger(namespace="cryptify.crs.remote_admin")

SESSION_COOKIE = b"__Host-cra-session"
LOGIN_COOKIE = b"__Host-cra-login"
STATS_OPS = ("enable", "disable", "clear")
#: What a login form token looks like (24 random octets, base64url).
LOGIN_TOKEN = re.compile(rb"[A-Za-z0-9_-]{32}\Z")

STYLE = b"""body{font-family:sans-serif;margin:2em;max-width:60em}
table{border-collapse:collapse}td,th{border:1px solid #999;padding:.2em .6em;text-align:left}
form.inline{display:inline}nav{margin-bottom:1em}.error{color:#a00}
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str, csrf: str | None = None) -> bytes:
    logout = ""
    if csrf is not None:
        logout = (
            '<nav><a href="/">Accounts</a> '
            '<form class="inline" method="post" action="/logout">'
            f'<input type="hidden" name="csrf" value="{_esc(csrf)}">'
            '<button type="submit" id="logout">Log out</button></form></nav>'
        )
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{_esc(title)} - CRS admin</title>"
        '<link rel="stylesheet" href="/style.css"></head>'
        f"<body>{logout}<h1>{_esc(title)}</h1>{body}</body></html>\n"
    ).encode()


def table_html(columns: list[str], rows: Sequence[Sequence[object]], ident: str) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table id="{ident}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def hidden(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{_esc(csrf)}">'


def _arg(request: server.Request, name: bytes) -> bytes:
    values = (request.args or {}).get(name) or [b""]
    value: bytes = values[0]
    return value


class Console:
    """Renders the console's pages for :class:`~cryptify.crs.remote_admin.server.AdminRoot`."""

    def __init__(self, service: AdminService, random: Callable[[int], bytes] = os.urandom) -> None:
        self.service = service
        self.random = random

    # -- plumbing ------------------------------------------------------------------

    def render(self, request: server.Request) -> bytes | int:
        segments = [s.decode("utf-8", "replace") for s in (request.postpath or [])]
        method = request.method
        if method == b"GET" and segments == ["style.css"]:
            request.setHeader(b"Content-Type", b"text/css; charset=utf-8")
            return STYLE
        if method == b"GET" and segments == ["favicon.ico"]:
            # asked for by every browser on its own: not a refusal worth a log line
            request.setResponseCode(404)
            return b""
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        async def answer() -> None:
            status, body = await self._answer(request, method, segments)
            if finished[0]:
                return
            request.setResponseCode(status)
            if status in (302, 303):
                request.setHeader(b"Location", body)
                body = b""
            else:
                request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            request.write(body)
            request.finish()

        defer.ensureDeferred(answer()).addErrback(
            lambda f: log.failure("admin console: {request}", f, request=request_line(request))
        )
        return server.NOT_DONE_YET

    def _token(self, request: server.Request) -> str | None:
        value = request.getCookie(SESSION_COOKIE)
        return value.decode("ascii", "replace") if value else None

    def _same_origin(self, request: server.Request) -> bool:
        """A POST from a page of another site is refused (SameSite is the first wall)."""
        origin = request.getHeader(b"origin")
        if origin is None:
            # not sent by every client; the CSRF token still applies
            return True
        host = request.getHeader(b"host") or b""
        return hmac.compare_digest(origin, b"https://" + host)

    def _refuse(self, request: server.Request, denied: Denied) -> tuple[int, bytes]:
        self.service.refused(request, denied)
        if denied.reason.status == 401:
            return 303, b"/"
        text = f'<p class="error" id="refused">Refused: {_esc(denied.reason.word)}</p>'
        return denied.reason.status, page("Refused", text + '<p><a href="/">Back</a></p>')

    async def _answer(
        self, request: server.Request, method: bytes, segments: list[str]
    ) -> tuple[int, bytes]:
        now = self.service.clock()
        gate = self.service.gate
        try:
            if method == b"POST" and not self._same_origin(request):
                raise Denied(Refused.BAD_CSRF)
            if segments in ([], [""]) and method == b"GET":
                try:
                    session, admin = gate.session(self._token(request), now)
                except Denied:
                    return 200, self._login_page(request)
                return 200, self._home(admin, session)
            if segments == ["login"] and method == b"POST":
                return self._login(request, now)
            token = self._token(request)
            session, admin = gate.session(token, now)
            if segments == ["logout"] and method == b"POST":
                gate.check_csrf(session, _arg(request, b"csrf").decode("utf-8", "replace"))
                gate.logout(token or "")
                request.addCookie(
                    SESSION_COOKIE,
                    b"",
                    max_age=b"0",
                    path=b"/",
                    secure=True,
                    httpOnly=True,
                    sameSite="strict",
                )
                return 303, b"/"
            if len(segments) >= 3 and segments[0] == "accounts" and ACCOUNT_ID.match(segments[1]):
                return await self._account_page(request, method, segments[1], segments[2:], now)
            log.warn(
                "admin interface refused {request} from {peer}: no such page",
                request=request_line(request),
                peer=peer_of(request),
            )
            return 404, page("Not found", '<p class="error">No such page.</p>', session.csrf)
        except Denied as denied:
            return self._refuse(request, denied)

    # -- pages ---------------------------------------------------------------------

    def _login_page(self, request: server.Request, error: str = "") -> bytes:
        # One login token per browser: a second tab (or the redirect of a
        # favicon request) keeps the first form valid.
        kept = request.getCookie(LOGIN_COOKIE) or b""
        if LOGIN_TOKEN.match(kept):
            nonce = kept.decode("ascii")
        else:
            nonce = base64.urlsafe_b64encode(self.random(24)).decode("ascii")
            request.addCookie(
                LOGIN_COOKIE,
                nonce.encode(),
                path=b"/",
                secure=True,
                httpOnly=True,
                sameSite="strict",
            )
        message = f'<p class="error" id="error">{_esc(error)}</p>' if error else ""
        form = (
            f'{message}<form method="post" action="/login" id="login">'
            f'<input type="hidden" name="csrf" value="{_esc(nonce)}">'
            '<p><label>Admin <input name="admin" id="admin" autocomplete="username" '
            "required></label></p>"
            '<p><label>Secret <input name="secret" id="secret" type="password" '
            'autocomplete="current-password" required></label></p>'
            '<p><button type="submit" id="submit">Log in</button></p></form>'
        )
        return page("Log in", form)

    def _login(self, request: server.Request, now: float) -> tuple[int, bytes]:
        expected = request.getCookie(LOGIN_COOKIE) or b""
        offered = _arg(request, b"csrf")
        if not expected or not hmac.compare_digest(expected, offered):
            raise Denied(Refused.BAD_CSRF)
        admin = _arg(request, b"admin").decode("utf-8", "replace")[:64]
        secret = _arg(request, b"secret").decode("ascii", "replace")[:128]
        try:
            token, session = self.service.gate.login_secret(admin, secret, now)
        except Denied as denied:
            self.service.refused(request, denied)
            return 401, self._login_page(request, "Wrong admin name or secret.")
        log.info(
            "remote admin {admin} logged in to the console from {peer}",
            admin=session.admin,
            peer=peer_of(request),
        )
        request.addCookie(
            SESSION_COOKIE, token.encode(), path=b"/", secure=True, httpOnly=True, sameSite="strict"
        )
        return 303, b"/"

    def _home(self, admin: Admin, session: Session) -> bytes:
        rows = []
        for account in sorted(admin.accounts):
            granted = admin.accounts[account]
            links = []
            if "statistics" in granted:
                links.append(f'<a href="/accounts/{account}/stats">statistics</a>')
            if "update" in granted:
                links.append(f'<a href="/accounts/{account}/update">apply update</a>')
                links.append(f'<a href="/accounts/{account}/blacklist">blacklist</a>')
            rows.append(
                f"<tr><td>{_esc(account)}</td><td>{_esc(','.join(sorted(granted)) or '-')}</td>"
                f"<td>{' '.join(links)}</td></tr>"
            )
        body = (
            f"<p>Logged in as <b id=admin-name>{_esc(admin.name)}</b>.</p>"
            '<table id="accounts"><thead><tr><th>Account</th><th>Authorizations</th>'
            f"<th></th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
        return page("Accounts", body, session.csrf)

    async def _account_page(
        self, request: server.Request, method: bytes, account: str, rest: list[str], now: float
    ) -> tuple[int, bytes]:
        gate, service = self.service.gate, self.service
        token = self._token(request)
        where = f"/accounts/{account}"
        if rest == ["stats"] and method == b"GET":
            admin = gate.authorize(token, account, "statistics", now)
            session, _ = gate.session(token, now)
            return 200, await self._stats_page(admin, session, account)
        if len(rest) == 2 and rest[0] == "stats" and rest[1] in STATS_OPS and method == b"POST":
            admin = gate.authorize(token, account, "statistics", now)
            session, _ = gate.session(token, now)
            gate.check_csrf(session, _arg(request, b"csrf").decode("utf-8", "replace"))
            await service.perform(admin.name, f"stats-{rest[1]}", account, b"")
            return 303, f"{where}/stats".encode()
        if rest == ["blacklist"] and method == b"GET":
            admin = gate.authorize(token, account, "update", now)
            session, _ = gate.session(token, now)
            rows = service.ops.blacklist_rows(account)
            body = table_html(BLACKLIST_COLUMNS, rows, "blacklist")
            return 200, page(f"Blacklist of {account}", body, session.csrf)
        if rest == ["update"]:
            admin = gate.authorize(token, account, "update", now)
            session, _ = gate.session(token, now)
            if method == b"GET":
                return 200, self._update_page(account, session)
            if method == b"POST":
                gate.check_csrf(session, _arg(request, b"csrf").decode("utf-8", "replace"))
                data = _arg(request, b"file")
                try:
                    service.check_update_account(admin.name, account, data)
                    answer = await service.perform(admin.name, "update", account, data)
                except Exception as exc:
                    if isinstance(exc, Denied):
                        raise
                    why = f'<p class="error" id="error">Not applied: {_esc(exc)}</p>'
                    return 400, self._update_page(account, session, why)
                result = answer["result"]
                assert isinstance(result, dict)  # CrsAdmin.apply's answer
                done = (
                    f'<p id="applied">Applied: revision {_esc(result["revision"])}, '
                    f"months {_esc(', '.join(result['periods']))}.</p>"
                )
                return 200, self._update_page(account, session, done)
        log.warn(
            "admin interface refused {request} from {peer}: no such page",
            request=request_line(request),
            peer=peer_of(request),
        )
        return 404, page("Not found", '<p class="error">No such page.</p>')

    async def _stats_page(self, admin: Admin, session: Session, account: str) -> bytes:
        try:
            rows = await self.service.ops.stats_rows(account)
            body = table_html(list(STATS_COLUMNS), rows, "stats")
        except CommandFailed as exc:
            body = f'<p class="error">{_esc(exc)}</p>'
        forms = "".join(
            f'<form class="inline" method="post" action="/accounts/{account}/stats/{op}">'
            f'{hidden(session.csrf)}<button type="submit" id="stats-{op}">{op}</button></form> '
            for op in STATS_OPS
        )
        return page(f"Statistics of {account}", f"<p>{forms}</p>{body}", session.csrf)

    def _update_page(self, account: str, session: Session, message: str = "") -> bytes:
        form = (
            f'{message}<form method="post" action="/accounts/{account}/update" '
            'enctype="multipart/form-data" id="update">'
            f"{hidden(session.csrf)}"
            '<p><input type="file" name="file" id="file" required></p>'
            '<p><button type="submit" id="apply">Apply</button></p></form>'
        )
        return page(f"Apply a monthly update to {account}", form, session.csrf)
