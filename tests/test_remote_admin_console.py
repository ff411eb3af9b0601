"""The web console, in memory: cookies, CSRF, origins, rights and escaping."""

from __future__ import annotations

import re
import urllib.parse

from cryptify.crs.remote_admin.console import LOGIN_COOKIE, SESSION_COOKIE, Console
from cryptify.crs.remote_admin.server import SECURITY_HEADERS, AdminRoot, AdminService, AdminSite
from tests.fakes import update_bytes
from tests.remote_admin_support import Interface, http

HOST = "crs.example:8443"


class ConsoleTests(Interface):
    def setUp(self) -> None:
        super().setUp()
        service = AdminService(self.state, self.gate, self.clock.seconds)
        self.site = AdminSite(AdminRoot(service, Console(service)), reactor=self.clock)
        self.cookies: dict[str, str] = {}

    def request(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        origin: str | None = None,
        body: bytes | None = None,
        content_type: str = "application/x-www-form-urlencoded",
    ) -> tuple[int, dict[bytes, list[bytes]], str]:
        if body is None:
            body = urllib.parse.urlencode(form or {}).encode()
        lines = [f"{method} {path} HTTP/1.0", f"Host: {HOST}", f"Content-Length: {len(body)}"]
        if method == "POST":
            lines.append(f"Content-Type: {content_type}")
        if origin is not None:
            lines.append(f"Origin: {origin}")
        if self.cookies:
            lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        status, _, answer, transport = http(self.site, raw)
        head = transport.value().partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]
        headers: dict[bytes, list[bytes]] = {}
        for line in head:
            name, _, value = line.partition(b": ")
            headers.setdefault(name.lower(), []).append(value)
        for cookie in headers.get(b"set-cookie", []):
            name, _, rest = cookie.decode().partition("=")
            value = rest.split(";", 1)[0]
            if value:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return status, headers, answer.decode("utf-8")

    def csrf(self, text: str) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', text)
        assert found is not None, text
        return found.group(1)

    def login(self, name: str = "alice") -> str:
        _, _, text = self.request("GET", "/")
        status, headers, _ = self.request(
            "POST",
            "/login",
            {"csrf": self.csrf(text), "admin": name, "secret": self.secrets[name]},
            origin=f"https://{HOST}",
        )
        self.assertEqual(status, 303)
        self.assertEqual(headers[b"location"], [b"/"])
        status, _, text = self.request("GET", "/")
        self.assertEqual(status, 200)
        return self.csrf(text)

    def test_login_sets_strict_cookie_and_headers(self) -> None:
        """The session cookie is __Host-, Secure, HttpOnly, SameSite=Strict; headers are strict."""
        status, headers, text = self.request("GET", "/")
        self.assertEqual(status, 200)
        self.assertIn('id="login"', text)
        for name, value in SECURITY_HEADERS.items():
            self.assertEqual(headers[name.lower()], [value])
        self.assertNotIn("<script", text)
        self.assertIn(LOGIN_COOKIE.decode(), self.cookies)
        self.login()
        [session] = [c for c in self.request("GET", "/")[1].get(b"set-cookie", [])] or [None]
        self.assertIsNone(session)  # no new cookie once logged in
        self.assertIn(SESSION_COOKIE.decode(), self.cookies)

    def test_session_cookie_flags(self) -> None:
        """The Set-Cookie of a login carries every protective flag."""
        _, _, text = self.request("GET", "/")
        _, headers, _ = self.request(
            "POST",
            "/login",
            {"csrf": self.csrf(text), "admin": "alice", "secret": self.secrets["alice"]},
        )
        [cookie] = [c for c in headers[b"set-cookie"] if c.startswith(SESSION_COOKIE)]
        flags = {f.strip().lower() for f in cookie.split(b";")[1:]}
        self.assertEqual(flags, {b"secure", b"httponly", b"samesite=strict", b"path=/"})

    def test_home_lists_own_accounts(self) -> None:
        """The home page lists the admin's accounts with the links its rights allow."""
        self.login("bob")
        _, _, text = self.request("GET", "/")
        self.assertIn('href="/accounts/beta/stats"', text)
        self.assertNotIn("acme", text)
        self.assertNotIn("/accounts/beta/update", text)

    def test_login_needs_its_form_token(self) -> None:
        """A login posted without the login form's token (cross-site login) is refused."""
        self.request("GET", "/")
        status, _, _ = self.request(
            "POST", "/login", {"csrf": "forged", "admin": "alice", "secret": self.secrets["alice"]}
        )
        self.assertEqual(status, 403)
        self.assertNotIn(SESSION_COOKIE.decode(), self.cookies)
        self.assertEqual(self.refusals(), ["bad-csrf-token"])

    def test_login_token_kept_across_pages(self) -> None:
        """A second login page (another tab, a redirect) keeps the first form valid."""
        _, _, first = self.request("GET", "/")
        self.request("GET", "/accounts/acme/stats")  # redirected to the login form
        _, _, second = self.request("GET", "/")
        self.assertEqual(self.csrf(first), self.csrf(second))
        status, _, _ = self.request(
            "POST",
            "/login",
            {"csrf": self.csrf(first), "admin": "alice", "secret": self.secrets["alice"]},
        )
        self.assertEqual(status, 303)

    def test_null_origin_refused(self) -> None:
        """A form posted from an opaque origin (Origin: null, e.g. a sandboxed frame) is refused."""
        csrf = self.login()
        status, _, _ = self.request(
            "POST", "/accounts/acme/stats/enable", {"csrf": csrf}, origin="null"
        )
        self.assertEqual(status, 403)
        self.assertEqual(
            SECURITY_HEADERS[b"Referrer-Policy"],
            b"same-origin",
            "no-referrer makes browsers send Origin: null with the console's own forms",
        )

    def test_favicon_not_logged(self) -> None:
        """The favicon every browser asks for is a quiet 404, not a logged refusal."""
        status, _, _ = self.request("GET", "/favicon.ico")
        self.assertEqual(status, 404)
        self.assertEqual(self.refusals(), [])

    def test_wrong_secret(self) -> None:
        """A wrong secret shows the form again with a message, and is logged."""
        _, _, text = self.request("GET", "/")
        status, _, text = self.request(
            "POST", "/login", {"csrf": self.csrf(text), "admin": "alice", "secret": "AAAA"}
        )
        self.assertEqual(status, 401)
        self.assertIn("Wrong admin name or secret", text)
        self.assertEqual(self.refusals(), ["bad-credential"])

    def test_forms_need_csrf(self) -> None:
        """A form post without its session's CSRF token changes nothing."""
        csrf = self.login()
        status, _, _ = self.request("POST", "/accounts/acme/stats/enable", {})
        self.assertEqual(status, 403)
        self.assertNotIn("stats-enabled", self.redis.client.sets)
        status, headers, _ = self.request("POST", "/accounts/acme/stats/enable", {"csrf": csrf})
        self.assertEqual((status, headers[b"location"]), (303, [b"/accounts/acme/stats"]))
        self.assertIn("acme", self.redis.client.sets["stats-enabled"])

    def test_foreign_origin_refused(self) -> None:
        """A post from another site's page is refused even with a good token."""
        csrf = self.login()
        status, _, _ = self.request(
            "POST", "/accounts/acme/stats/enable", {"csrf": csrf}, origin="https://evil.example"
        )
        self.assertEqual(status, 403)
        self.assertNotIn("stats-enabled", self.redis.client.sets)

    def test_other_account_and_missing_authorization(self) -> None:
        """The console enforces the same rights as the API."""
        self.login("bob")
        self.assertEqual(self.request("GET", "/accounts/acme/stats")[0], 403)
        self.assertEqual(self.request("GET", "/accounts/beta/blacklist")[0], 403)
        self.assertEqual(self.request("GET", "/accounts/beta/stats")[0], 200)
        self.assertEqual(self.refusals(), ["not-your-account", "not-authorized"])

    def test_no_session_goes_to_login(self) -> None:
        """A page asked for without a session sends the browser to the login form."""
        status, headers, _ = self.request("GET", "/accounts/acme/stats")
        self.assertEqual((status, headers[b"location"]), (303, [b"/"]))

    def test_logout(self) -> None:
        """Log out ends the session: its cookie opens nothing afterwards."""
        csrf = self.login()
        cookie = self.cookies[SESSION_COOKIE.decode()]
        self.assertEqual(self.request("POST", "/logout", {"csrf": csrf})[0], 303)
        self.cookies[SESSION_COOKIE.decode()] = cookie
        self.assertEqual(self.request("GET", "/accounts/acme/stats")[0], 303)

    def test_blacklist_escaped(self) -> None:
        """Values are escaped: a URI holding markup is shown as text."""
        self.state.accounts.set_blacklisted("acme", "tel:+1<script>x</script>", True)
        self.login()
        status, _, text = self.request("GET", "/accounts/acme/blacklist")
        self.assertEqual(status, 200)
        self.assertIn("tel:+1&lt;script&gt;x&lt;/script&gt;", text)
        self.assertNotIn("<script>", text)

    def test_update_upload(self) -> None:
        """An update file uploaded with the form is applied; another account's is refused."""
        csrf = self.login()
        for account, expected in (("beta", 403), ("acme", 200)):
            boundary = "XyZ"
            data = update_bytes(account, period="2026-09")
            body = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n'
                    f'{csrf}\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                    'filename="u.upd"\r\nContent-Type: application/octet-stream\r\n\r\n'
                ).encode()
                + data
                + f"\r\n--{boundary}--\r\n".encode()
            )
            status, _, text = self.request(
                "POST",
                "/accounts/acme/update",
                body=body,
                content_type=f"multipart/form-data; boundary={boundary}",
            )
            self.assertEqual(status, expected, text)
        self.assertIn('id="applied"', text)
        acme = self.state.accounts.get("acme")
        assert acme is not None
        self.assertIn("2026-09", acme.months)
