"""The remote admin interface in memory (L{Interface}), with admin
signatures and rights set-up, shared by the API and console tests."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.accounts import AccountStore
from cryptify.crs.operator.state import CrsState
from cryptify.crs.operator.stats import Statistics
from cryptify.crs.remote_admin.auth import (
    Gate,
    login_message,
)
from cryptify.crs.remote_admin.server import (
    AdminRoot,
    AdminService,
    AdminSite,
)
from cryptify.crs.remote_admin.store import AdminStore, new_secret
from cryptify.crs.trace import TraceHub
from tests.fakes import SECRET, FakeStore


def http(site: AdminSite, raw: bytes) -> tuple[int, dict[bytes, bytes], bytes, StringTransport]:
    """One HTTP/1.0 exchange with ``site`` over a StringTransport."""
    peer = IPv4Address("TCP", "192.0.2.9", 40000)
    proto = site.buildProtocol(peer)
    assert proto is not None
    transport = StringTransport(peerAddress=peer)
    proto.makeConnection(transport)
    proto.dataReceived(raw)
    head, _, body = transport.value().partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1]) if lines[0] else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b": ")
        headers[name.lower()] = value
    proto.connectionLost(Failure(ConnectionDone()))
    return status, headers, body, transport


def sign(secret: str, admin: str, nonce: str) -> str:
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(secret))
    return base64.b64encode(key.sign(login_message(admin, nonce))).decode("ascii")


class Rights:
    """alice: acme (statistics, update), beta (nothing); bob: beta (statistics)."""

    def make_admins(self, case: SynchronousTestCase, clock: Clock) -> AdminStore:
        admins = AdminStore(os.path.join(case.mktemp(), "admins.json"), clock=clock.seconds)
        self.secrets = {}
        for name in ("alice", "bob"):
            secret, key = new_secret()
            admins.create(name, key)
            self.secrets[name] = secret
        admins.add_account("alice", "acme")
        admins.add_authorization("alice", "acme", "statistics")
        admins.add_authorization("alice", "acme", "update")
        admins.add_account("alice", "beta")
        admins.add_account("bob", "beta")
        admins.add_authorization("bob", "beta", "statistics")
        return admins


class Interface(SynchronousTestCase, Rights):
    """The admin interface of a CRS with accounts acme and beta, in memory."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_790_000_000)
        self.admins = self.make_admins(self, self.clock)
        accounts = AccountStore(self.mktemp(), clock=self.clock.seconds)
        accounts.create("acme", SECRET)
        accounts.create("beta", SECRET)
        self.redis = FakeStore()
        self.state = CrsState(
            "crs1",
            {"crs": lambda: True},
            accounts,
            TraceHub(self.clock.seconds),
            stats=Statistics(lambda: self.redis, self.clock.seconds),
            admins=self.admins,
        )
        self.gate = Gate(self.admins)
        service = AdminService(self.state, self.gate, self.clock.seconds)
        self.site = AdminSite(AdminRoot(service), reactor=self.clock)
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))
        self.logged: list[LogEvent] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[bytes, bytes]]:
        lines = [f"{method} {path} HTTP/1.0", f"Content-Length: {len(body)}"]
        if token is not None:
            lines.append(f"Authorization: Bearer {token}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        status, got, answer, _ = http(self.site, raw)
        self.assertEqual(got.get(b"content-type"), b"application/json", answer)
        return status, json.loads(answer), got

    def login(self, name: str = "alice") -> str:
        status, doc, _ = self.request(
            "POST", "/api/challenge", json.dumps({"admin": name}).encode()
        )
        self.assertEqual(status, 200)
        proof = sign(self.secrets[name], name, doc["nonce"])
        body = json.dumps({"admin": name, "nonce": doc["nonce"], "signature": proof}).encode()
        status, doc, _ = self.request("POST", "/api/login", body)
        self.assertEqual(status, 200, doc)
        token: str = doc["token"]
        return token

    def refusals(self) -> list[str]:
        return [
            str(e.get("reason", e.get("why")))
            for e in self.logged
            if "refused" in str(e.get("log_format", ""))
        ]
