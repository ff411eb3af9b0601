"""The admin interface: the gate's rules (sans-IO) and the HTTP API in memory.

Each authorization boundary has its test: another account, a missing
authorization, a deleted admin, a replayed or expired challenge, an
expired or logged-out session.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.operator.state import CrsState
from cryptify.crs.remote_admin.api import BadRequest, Route, parse_fields, route
from cryptify.crs.remote_admin.auth import (
    CHALLENGE_TTL,
    MAX_CHALLENGES,
    MAX_SESSIONS_PER_ADMIN,
    SESSION_LIFETIME,
    Denied,
    Gate,
    Refused,
)
from cryptify.crs.remote_admin.server import (
    MAX_BODY,
    SECURITY_HEADERS,
    AdminRoot,
    AdminService,
    AdminSite,
    SourceLimit,
)
from cryptify.crs.remote_admin.store import AdminStore, fingerprint, new_secret
from cryptify.tools import admin_cli
from tests.fakes import update_bytes
from tests.remote_admin_support import Interface, Rights, http, sign


class GateTests(SynchronousTestCase, Rights):
    """The rules of docs/admin.md, one boundary each."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(10_000)
        self.admins = self.make_admins(self, self.clock)
        self.gate = Gate(self.admins)

    def login(self, name: str = "alice") -> str:
        now = self.clock.seconds()
        nonce, _ = self.gate.challenge(name, now)
        token, _ = self.gate.login_signed(name, nonce, sign(self.secrets[name], name, nonce), now)
        return token

    def refused(self, reason: Refused, call: Any, *args: Any) -> None:
        with self.assertRaises(Denied) as caught:
            call(*args)
        self.assertEqual(caught.exception.reason, reason)

    def test_signed_login_opens_session_with_rights(self) -> None:
        """A signed challenge opens a session that may do what the admin is authorized for."""
        token = self.login()
        admin = self.gate.authorize(token, "acme", "statistics", self.clock.seconds())
        self.assertEqual(admin.name, "alice")

    def test_replayed_login_refused(self) -> None:
        """The same signed answer sent twice opens one session: the nonce is used up."""
        now = self.clock.seconds()
        nonce, _ = self.gate.challenge("alice", now)
        proof = sign(self.secrets["alice"], "alice", nonce)
        self.gate.login_signed("alice", nonce, proof, now)
        self.refused(Refused.UNKNOWN_CHALLENGE, self.gate.login_signed, "alice", nonce, proof, now)

    def test_failed_login_uses_up_challenge(self) -> None:
        """A wrong answer consumes the nonce too: no second guess on one challenge."""
        now = self.clock.seconds()
        nonce, _ = self.gate.challenge("alice", now)
        wrong = sign(self.secrets["bob"], "alice", nonce)
        self.refused(Refused.BAD_CREDENTIAL, self.gate.login_signed, "alice", nonce, wrong, now)
        right = sign(self.secrets["alice"], "alice", nonce)
        self.refused(Refused.UNKNOWN_CHALLENGE, self.gate.login_signed, "alice", nonce, right, now)

    def test_expired_challenge_refused(self) -> None:
        """A challenge answered CHALLENGE_TTL after it was given is refused."""
        nonce, _ = self.gate.challenge("alice", self.clock.seconds())
        proof = sign(self.secrets["alice"], "alice", nonce)
        self.clock.advance(CHALLENGE_TTL)
        now = self.clock.seconds()
        self.refused(Refused.EXPIRED_CHALLENGE, self.gate.login_signed, "alice", nonce, proof, now)

    def test_challenge_bound_to_its_admin(self) -> None:
        """bob cannot answer a challenge given to alice (even signed with his own key)."""
        now = self.clock.seconds()
        nonce, _ = self.gate.challenge("alice", now)
        proof = sign(self.secrets["bob"], "bob", nonce)
        self.refused(Refused.UNKNOWN_CHALLENGE, self.gate.login_signed, "bob", nonce, proof, now)

    def test_unknown_admin_and_garbage_signature(self) -> None:
        """An unknown admin, or a signature that is not one, is a bad credential."""
        now = self.clock.seconds()
        for admin, proof in (("mallory", "AAAA"), ("alice", "not base64"), ("alice", "AAAA")):
            nonce, _ = self.gate.challenge(admin, now)
            self.refused(Refused.BAD_CREDENTIAL, self.gate.login_signed, admin, nonce, proof, now)

    def test_secret_login(self) -> None:
        """The console's login: the right secret opens a session; another admin's does not."""
        now = self.clock.seconds()
        token, _ = self.gate.login_secret("alice", self.secrets["alice"], now)
        self.gate.authorize(token, "acme", "update", now)
        for name, secret in (("alice", self.secrets["bob"]), ("mallory", "x"), ("bob", "")):
            self.refused(Refused.BAD_CREDENTIAL, self.gate.login_secret, name, secret, now)

    def test_other_account_refused(self) -> None:
        """An admin is refused on an account it does not manage."""
        token = self.login("bob")
        self.refused(
            Refused.NOT_YOUR_ACCOUNT,
            self.gate.authorize,
            token,
            "acme",
            "statistics",
            self.clock.seconds(),
        )

    def test_missing_authorization_refused(self) -> None:
        """An account without the authorization asked for is refused."""
        token = self.login("alice")
        now = self.clock.seconds()
        self.refused(Refused.NOT_AUTHORIZED, self.gate.authorize, token, "beta", "statistics", now)
        self.admins.delete_authorization("alice", "acme", "update")
        self.refused(Refused.NOT_AUTHORIZED, self.gate.authorize, token, "acme", "update", now)

    def test_deleted_admin_loses_sessions(self) -> None:
        """A deleted admin's session is refused at its next use, and stays closed."""
        token = self.login("alice")
        now = self.clock.seconds()
        self.admins.delete("alice")
        self.refused(Refused.ADMIN_GONE, self.gate.session, token, now)
        _, key = new_secret()
        self.admins.create("alice", key)  # a new alice does not inherit the session
        self.refused(Refused.UNKNOWN_SESSION, self.gate.session, token, now)

    def test_recreated_admin_does_not_inherit(self) -> None:
        """An admin deleted and created again (new key) does not keep the old sessions."""
        token = self.login("alice")
        self.admins.delete("alice")
        _, key = new_secret()
        self.admins.create("alice", key)
        self.refused(Refused.ADMIN_GONE, self.gate.session, token, self.clock.seconds())

    def test_expired_session_refused(self) -> None:
        """A session is refused SESSION_LIFETIME after its login, however busy it was."""
        token = self.login()
        self.clock.advance(SESSION_LIFETIME - 1)
        self.gate.session(token, self.clock.seconds())
        self.clock.advance(1)
        self.refused(Refused.EXPIRED_SESSION, self.gate.session, token, self.clock.seconds())

    def test_logged_out_token_refused(self) -> None:
        """A token replayed after logout is refused."""
        token = self.login()
        self.gate.logout(token)
        self.refused(Refused.UNKNOWN_SESSION, self.gate.session, token, self.clock.seconds())
        self.refused(Refused.NO_CREDENTIAL, self.gate.session, None, self.clock.seconds())
        self.refused(Refused.UNKNOWN_SESSION, self.gate.session, "x" * 10_000, 0)

    def test_csrf(self) -> None:
        """A form must carry the CSRF token of its own session."""
        now = self.clock.seconds()
        _, session = self.gate.login_secret("alice", self.secrets["alice"], now)
        _, other = self.gate.login_secret("alice", self.secrets["alice"], now)
        self.gate.check_csrf(session, session.csrf)
        self.refused(Refused.BAD_CSRF, self.gate.check_csrf, session, other.csrf)
        self.refused(Refused.BAD_CSRF, self.gate.check_csrf, session, "")

    def test_bounded_state(self) -> None:
        """Challenges and sessions are bounded: the oldest go first."""
        now = self.clock.seconds()
        first, _ = self.gate.challenge("alice", now)
        for _ in range(MAX_CHALLENGES):
            self.gate.challenge("alice", now)
        self.assertEqual(len(self.gate.challenges), MAX_CHALLENGES)
        self.assertNotIn(first, self.gate.challenges)
        tokens = [self.login() for _ in range(MAX_SESSIONS_PER_ADMIN + 1)]
        self.refused(Refused.UNKNOWN_SESSION, self.gate.session, tokens[0], now)
        self.gate.session(tokens[-1], now)


class RouteTests(SynchronousTestCase):
    """The request parsers answer anything with a route, None or BadRequest."""

    def test_routes(self) -> None:
        self.assertEqual(route(b"POST", [b"login"]), Route("POST", "login"))
        self.assertEqual(
            route(b"GET", [b"accounts", b"acme", b"stats"]), Route("GET", "stats-export", "acme")
        )
        self.assertEqual(
            route(b"POST", [b"accounts", b"a-1", b"stats", b"clear"]),
            Route("POST", "stats-clear", "a-1"),
        )
        for method, path in (
            (b"GET", [b"login"]),
            (b"GET", [b"accounts", b"..", b"stats"]),
            (b"GET", [b"accounts", b"acme", b"stats", b"enable"]),
            (b"DELETE", [b"accounts", b"acme", b"update"]),
            (b"GET", [b"accounts", b"\xff", b"stats"]),
        ):
            self.assertIsNone(route(method, path))

    @given(st.binary(max_size=8), st.lists(st.binary(max_size=30), max_size=6))
    @settings(max_examples=300, deadline=None)
    def test_route_hostile(self, method: bytes, segments: list[bytes]) -> None:
        """Any method and path: a route with a valid account, or None."""
        found = route(method, segments)
        if found is not None and found.account is not None:
            self.assertRegex(found.account, r"\A[A-Za-z0-9_-]{1,20}\Z")

    @given(st.binary(max_size=200))
    @settings(max_examples=300, deadline=None)
    def test_fields_hostile_bytes(self, body: bytes) -> None:
        """Any body: the fields asked for, as strings, or BadRequest."""
        try:
            fields = parse_fields(body, ("admin",))
        except BadRequest:
            return
        self.assertIsInstance(fields["admin"], str)

    @given(st.dictionaries(st.text(max_size=8), st.none() | st.integers() | st.text(max_size=300)))
    @settings(max_examples=300, deadline=None)
    def test_fields_hostile_json(self, doc: dict[str, Any]) -> None:
        """JSON objects of any shape: exactly the names as printable strings, or BadRequest."""
        try:
            fields = parse_fields(json.dumps(doc).encode(), ("admin", "nonce"))
        except BadRequest:
            return
        self.assertEqual(set(fields), {"admin", "nonce"})
        self.assertTrue(all(v.isprintable() and len(v) <= 256 for v in fields.values()))


class ApiTests(Interface):
    """The HTTP API, in memory: every action and every refusal, logged."""

    def test_statistics_through_operator_path(self) -> None:
        """An authorized admin enables, exports and clears its account's statistics."""
        token = self.login()
        status, _, headers = self.request("POST", "/api/accounts/acme/stats/enable", token=token)
        self.assertEqual(status, 200)
        for name, value in SECURITY_HEADERS.items():
            self.assertEqual(headers[name.lower()], value)
        self.assertIn("acme", self.redis.client.sets["stats-enabled"])
        self.redis.client.sets["stats-uris:acme"] = {"tel:+1"}
        self.redis.client.hashes["stats:acme:tel:+1"] = {"session-outgoing": "3"}
        status, doc, _ = self.request("GET", "/api/accounts/acme/stats", token=token)
        self.assertEqual(status, 200)
        self.assertEqual(doc["table"]["columns"][0], "tel-uri")
        self.assertEqual(doc["table"]["rows"][0][:2], ["tel:+1", "3"])
        status, doc, _ = self.request("POST", "/api/accounts/acme/stats/clear", token=token)
        self.assertEqual((status, doc), (200, {"cleared": 1}))

    def test_update_applied_for_own_account_only(self) -> None:
        """update applies the account's own file; another account's file is refused."""
        token = self.login()
        period = "2026-09"
        status, doc, _ = self.request(
            "POST", "/api/accounts/acme/update", update_bytes("acme", period=period), token
        )
        self.assertEqual(status, 200, doc)
        self.assertEqual(doc["result"]["account"], "acme")
        acme = self.state.accounts.get("acme")
        assert acme is not None
        self.assertIn(period, acme.months)
        # beta's file sent through acme (alice has update on acme only)
        status, doc, _ = self.request(
            "POST", "/api/accounts/acme/update", update_bytes("beta", period=period), token
        )
        self.assertEqual((status, doc["error"]), (403, "not-your-account"))
        beta = self.state.accounts.get("beta")
        assert beta is not None
        self.assertEqual(beta.months, {})
        status, doc, _ = self.request("POST", "/api/accounts/acme/update", b"junk", token)
        self.assertEqual(status, 400)

    def test_boundaries_refused_and_logged(self) -> None:
        """Another account, a missing authorization, no token: refused, logged, nothing done."""
        bob = self.login("bob")
        alice = self.login("alice")
        cases = [
            ("POST", "/api/accounts/acme/stats/enable", bob, 403, "not-your-account"),
            ("POST", "/api/accounts/beta/stats/enable", alice, 403, "not-authorized"),
            ("POST", "/api/accounts/beta/update", bob, 403, "not-authorized"),
            ("GET", "/api/accounts/beta/blacklist", bob, 403, "not-authorized"),
            ("GET", "/api/accounts/acme/stats", None, 401, "no-credential"),
            ("GET", "/api/accounts/acme/stats", "forged", 401, "unknown-session"),
        ]
        for method, path, token, status, word in cases:
            got, doc, _ = self.request(method, path, token=token)
            self.assertEqual((got, doc), (status, {"error": word}), path)
        self.assertNotIn("stats-enabled", self.redis.client.sets)
        self.assertEqual(self.refusals(), [c[4] for c in cases])
        text = repr(self.logged)
        self.assertNotIn(alice, text)
        self.assertNotIn(bob, text)

    def test_unknown_actions_refused(self) -> None:
        """Anything that is not an action of the interface is refused and logged."""
        token = self.login()
        for method, path in (
            ("GET", "/api/accounts/acme/stats/clear"),
            ("POST", "/api/accounts/acme/purge"),
            ("GET", "/api/../etc/passwd"),
            ("PUT", "/api/login"),
        ):
            status, doc, _ = self.request(method, path, token=token)
            self.assertEqual((status, doc), (404, {"error": "not-found"}))
        self.assertEqual(len(self.refusals()), 4)

    def test_deleted_admin_and_logout(self) -> None:
        """A deleted admin's token and a logged-out token are both refused."""
        alice, bob = self.login("alice"), self.login("bob")
        self.assertEqual(self.request("POST", "/api/logout", token=alice)[0], 200)
        status, doc, _ = self.request("GET", "/api/accounts", token=alice)
        self.assertEqual((status, doc), (401, {"error": "unknown-session"}))
        self.admins.delete("bob")
        status, doc, _ = self.request("GET", "/api/accounts/beta/stats", token=bob)
        self.assertEqual((status, doc), (401, {"error": "admin-deleted"}))

    def test_replayed_login_over_http(self) -> None:
        """A login request sent again is refused: its challenge is used up."""
        _, doc, _ = self.request("POST", "/api/challenge", b'{"admin": "alice"}')
        proof = sign(self.secrets["alice"], "alice", doc["nonce"])
        body = json.dumps({"admin": "alice", "nonce": doc["nonce"], "signature": proof}).encode()
        self.assertEqual(self.request("POST", "/api/login", body)[0], 200)
        status, doc, _ = self.request("POST", "/api/login", body)
        self.assertEqual((status, doc), (401, {"error": "unknown-or-used-challenge"}))

    def test_expired_session_over_http(self) -> None:
        """A token used after SESSION_LIFETIME is refused."""
        token = self.login()
        self.clock.advance(SESSION_LIFETIME)
        status, doc, _ = self.request("GET", "/api/accounts", token=token)
        self.assertEqual((status, doc), (401, {"error": "expired-session"}))

    def test_accounts_lists_own_rights(self) -> None:
        """GET /api/accounts shows the admin its own accounts and authorizations only."""
        status, doc, _ = self.request("GET", "/api/accounts", token=self.login("bob"))
        self.assertEqual(
            (status, doc), (200, {"admin": "bob", "accounts": {"beta": ["statistics"]}})
        )

    def test_bad_login_bodies(self) -> None:
        """A login body that is not the expected JSON is a 400 with the reason."""
        for body in (b"", b"{", b'{"admin": 1}', b'{"admin": "a", "x": "y"}', b"[" * 5000):
            status, doc, _ = self.request("POST", "/api/challenge", body)
            self.assertEqual((status, doc["error"]), (400, "bad-request"))

    def test_oversized_body_closes(self) -> None:
        """A body announced larger than MAX_BODY is refused before it is read."""
        raw = (
            f"POST /api/accounts/acme/update HTTP/1.0\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"
        ).encode()
        status, _, _, transport = http(self.site, raw + b"x" * 1000)
        self.assertEqual(status, 413)
        self.assertTrue(transport.disconnecting)


class AdminCliTests(Interface):
    """cryptify-admin against the interface (HTTP over StringTransports)."""

    def setUp(self) -> None:
        super().setUp()
        directory = self.mktemp()
        os.makedirs(directory)
        self.files = {}
        for name, secret in self.secrets.items():
            path = os.path.join(directory, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, secret.encode() + b"\n")
            os.close(fd)
            self.files[name] = path
        self.sent: list[tuple[str, str]] = []

    def connect(self, url: str, ca: str) -> admin_cli.Exchange:
        self.assertEqual((url, ca), ("https://crs.example:8443", "ca.pem"))

        def exchange(
            method: str, path: str, body: bytes, headers: dict[str, str]
        ) -> tuple[int, bytes]:
            self.sent.append((method, path))
            lines = [f"{method} {path} HTTP/1.0", f"Content-Length: {len(body)}"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
            status, _, answer, _ = http(self.site, raw)
            return status, answer

        return exchange

    def cli(self, name: str, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        options = ["--url", "https://crs.example:8443", "--ca", "ca.pem"]
        options += ["--admin", name, "--secret-file", self.files[name]]
        status = admin_cli.run([*options, *argv], out, err, self.connect)
        return status, out.getvalue(), err.getvalue()

    def test_stats_and_accounts(self) -> None:
        """Each run logs in, acts and logs out; the session is closed afterwards."""
        self.assertEqual(
            self.cli("alice", "stats", "enable", "acme"), (0, "statistics enabled for acme\n", "")
        )
        self.assertEqual(
            [p for _, p in self.sent],
            ["/api/challenge", "/api/login", "/api/accounts/acme/stats/enable", "/api/logout"],
        )
        self.assertEqual(self.gate.sessions, {})
        status, text, _ = self.cli("alice", "stats", "export", "acme")
        self.assertEqual(status, 0)
        self.assertEqual(text.splitlines()[0].split("\t")[0], "tel-uri")
        status, text, _ = self.cli("bob", "accounts")
        self.assertEqual(
            [line.split() for line in text.splitlines()],
            [["Account", "Authorizations"], ["beta", "statistics"]],
        )

    def test_apply_and_blacklist(self) -> None:
        """apply sends the file's octets; blacklist shows the account's merged blacklist."""
        update = os.path.join(self.mktemp())
        with open(update, "wb") as f:
            f.write(update_bytes("acme", period="2026-09", blacklist=("tel:+4670",)))
        status, text, err = self.cli("alice", "apply", "acme", update)
        self.assertEqual(status, 0, err)
        self.assertIn("account acme, revision 1", text)
        status, text, _ = self.cli("alice", "blacklist", "acme")
        self.assertEqual(text.split(), ["URI", "tel:+4670"])

    def test_refusal_reported(self) -> None:
        """A refusal is printed with its reason and status 1."""
        status, out, err = self.cli("bob", "stats", "clear", "acme")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, "cryptify-admin: refused (403 not-your-account)\n")

    def test_wrong_secret(self) -> None:
        """bob's secret does not log in as alice."""
        self.files["alice"] = self.files["bob"]
        status, _, err = self.cli("alice", "accounts")
        self.assertEqual(status, 1)
        self.assertIn("401 bad-credential", err)

    def test_secret_file_must_be_private(self) -> None:
        """A secret file others can read is refused before anything is sent."""
        os.chmod(self.files["alice"], 0o644)
        status, _, err = self.cli("alice", "accounts")
        self.assertEqual(status, 1)
        self.assertIn(self.files["alice"], err)
        self.assertEqual(self.sent, [])

    def test_fingerprint_matches_show_admin(self) -> None:
        """cryptify-admin fingerprint prints what crs-cli show admin prints."""
        out = io.StringIO()
        status = admin_cli.run(["--secret-file", self.files["alice"], "fingerprint"], out)
        self.assertEqual(status, 0)
        self.assertEqual(out.getvalue(), fingerprint(self.admins.admin("alice").key) + "\n")


class SourceLimitTests(SynchronousTestCase):
    """One address may hold a bounded number of connections to the interface."""

    def test_limit_per_source(self) -> None:
        """Past the limit an address is refused (logged once); others are not; a close frees one."""
        clock = Clock()
        site = AdminSite(
            AdminRoot(
                AdminService(CrsState("crs1"), Gate(AdminStore("/nonexistent")), clock.seconds)
            ),
            reactor=clock,
        )
        limit = SourceLimit(site, limit=2)
        logged: list[LogEvent] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        mallory = IPv4Address("TCP", "192.0.2.66", 1)
        opened = []
        for _ in range(2):
            proto = limit.buildProtocol(mallory)
            assert proto is not None
            proto.makeConnection(StringTransport(peerAddress=mallory))
            opened.append(proto)
        self.assertIsNone(limit.buildProtocol(mallory))
        self.assertIsNone(limit.buildProtocol(mallory))
        other = IPv4Address("TCP", "192.0.2.1", 1)
        proto = limit.buildProtocol(other)
        assert proto is not None
        proto.makeConnection(StringTransport(peerAddress=other))
        opened.append(proto)
        self.assertEqual(sum("further ones refused" in e.get("log_format", "") for e in logged), 1)
        opened.pop(0).connectionLost(Failure(ConnectionDone()))
        proto = limit.buildProtocol(mallory)
        assert proto is not None
        proto.makeConnection(StringTransport(peerAddress=mallory))
        opened.append(proto)
        for proto in opened:
            proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(limit.open, {})
        self.assertEqual(clock.getDelayedCalls(), [])
