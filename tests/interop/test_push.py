"""The whole push chain: `twistd crs` -> `twistd cryptify-push` -> fake APNs / FCM.

The fake providers are HTTP/2 (h2) servers over real TLS in this test's
reactor; they check every request as Apple and Google document it.  The
clients are `websockets` clients speaking UMSG to the CRS (run in threads
so the reactor keeps serving the fakes).  A message to a client that is
offline and left a push token must give exactly one wake-up at the
provider, carrying nothing that identifies anyone, and the woken client
then gets the message.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import SkipTest, TestCase

from cryptify.crypto.identity import period_of
from cryptify.crypto.keymaterial import load_key_material
from cryptify.push.apns import PAYLOAD
from tests.interop._crs import CALLEE, CALLER, CrsFixture, recv, send
from tests.interop._procs import (
    Twistd,
    free_port,
    provision,
    short_tempdir,
    tcp_answers,
    unix_answers,
    wait_for,
    write_crs_conf,
)
from tests.interop._ws import available as websockets_available
from tests.push_fakes import (
    FakeApns,
    FakeFcm,
    FakeProvider,
    apns_key,
    h2_server_options,
    service_account,
    tls_pair,
)

TOPIC = "net.example.cca"
KEY_ID, TEAM_ID = "KEY1234567", "TEAM123456"
DEVICE = "5e" * 32
FCM_TOKEN = "dGVzdC1mY20tdG9rZW4:APA91b" + "Q" * 80
SECRET = "push-link-secret-0123456789"
CONTENT = b"meet me at the station"


def _secret_file(path: str, text: str) -> str:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text + "\n")
    return path


class _PushChain(TestCase):
    """Fake APNs and FCM, `cryptify-push`, a CRS with `features push`, relay, keys."""

    timeout = 180
    #: ``push-config apns type direct``
    DIRECT = False

    def setUp(self) -> None:
        if not websockets_available():
            raise SkipTest("websockets is not installed")
        if shutil.which("redis-server") is None:
            raise SkipTest("redis-server is not installed")
        self.dir = d = short_tempdir(self)
        self.procs: list[Twistd] = []
        self.addCleanup(lambda: [p.stop() for p in reversed(self.procs)])
        provider_cert, provider_key = tls_pair(d, "providers")
        signing, p8 = apns_key(d)
        self.apns = FakeApns(signing.public_key(), KEY_ID, TEAM_ID, TOPIC)
        apns_port = self.apns.listen(reactor, provider_cert, provider_key)
        self.addCleanup(apns_port.stopListening)
        fcm_port_number = free_port()
        fcm_origin = f"https://localhost:{fcm_port_number}"
        rsa_key, sa_path, sa = service_account(d, fcm_origin + FakeFcm.TOKEN_PATH)
        self.fcm = FakeFcm(rsa_key.public_key(), sa["client_email"], sa["project_id"])
        self.fcm.origin = fcm_origin
        fcm_port = reactor.listenSSL(  # type: ignore[attr-defined]
            fcm_port_number,
            self.fcm.factory(),
            h2_server_options(provider_cert, provider_key),
            interface="127.0.0.1",
        )
        self.addCleanup(fcm_port.stopListening)

        cps_cert, cps_key = tls_pair(d, "cps")
        self.cps_port = free_port()
        push_conf = os.path.join(d, "push.conf")
        with open(push_conf, "w") as f:
            f.write(
                f"listen 127.0.0.1 {self.cps_port}\n"
                f"tls-certificate {cps_cert} {cps_key}\n"
                f"client crs1 {_secret_file(os.path.join(d, 'crs1.secret'), SECRET)}\n"
                f"apns key {p8} key-id {KEY_ID} team-id {TEAM_ID} topic {TOPIC}\n"
                f"apns endpoint https://localhost:{apns_port.getHost().port}\n"
                f"fcm service-account {sa_path}\n"
                f"fcm endpoint {fcm_origin}\n"
                f"trust {provider_cert}\n"
            )
        os.makedirs(os.path.join(d, "log"), exist_ok=True)
        self.procs.append(
            Twistd(d, "cryptify-push", "--config", push_conf, "--log-dir", os.path.join(d, "log"))
        )
        wait_for(lambda: tcp_answers(self.cps_port), "cryptify-push listening")

        self.client_port = free_port()
        extra = (
            f"cps localhost {self.cps_port} crs1 {SECRET}\n"
            f"push-config cps trust {cps_cert}\n"
            "notify /bin/true\n"
        )
        if self.DIRECT:
            extra += f"push-config apns type direct\npush-config apns trust {provider_cert}\n"
        self.conf = write_crs_conf(d, self.client_port, free_port(socket.SOCK_DGRAM), extra)
        with open(self.conf) as f:
            text = f.read()
        with open(self.conf, "w") as f:
            f.write(text.replace("\nfeatures\n", "\nfeatures push\n", 1))
        self.socket = os.path.join(d, "crs.sock")
        self.procs.append(Twistd(d, "crs-relay", "--config", self.conf))
        wait_for(lambda: unix_answers(os.path.join(d, "relay.sock")), "relay control")
        self.procs.append(Twistd(d, "crs", "--config", self.conf))
        wait_for(lambda: unix_answers(self.socket), "CRS management socket")
        self.period = period_of(time.time())
        files = provision(d, self.socket, "acme", [CALLER, CALLEE], self.period)
        self.keys = {
            uri: load_key_material(path).for_period(self.period) for uri, path in files.items()
        }
        wait_for(lambda: "push        active" in self.cli("show", "services")[1], "push link up")

    # the fixture's client helpers, on this class's CRS
    attach = CrsFixture.attach
    cli = CrsFixture.cli

    def in_thread(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThread(fn, *args)

    def leave_token(self, kind: str, token: str, uri: str = CALLEE) -> None:
        """``uri`` attaches, leaves its push token, and goes offline."""
        ws = self.attach(uri)
        try:
            send(ws, type="push-token", id=5, kind=kind, token=token)
            recv(ws, "ok")
        finally:
            ws.close()
        wait_for(lambda: uri not in self.cli("show", "attach")[1], "client offline")

    def post(self, count: int = 1) -> None:
        """CALLER posts ``count`` messages to the offline CALLEE."""
        ws = self.attach(CALLER)
        try:
            for n in range(count):
                send(ws, type="post", id=20 + n, to=CALLEE, content=CONTENT, key=os.urandom(16))
                recv(ws, "posted")
        finally:
            ws.close()

    def woken_fetch(self) -> list[bytes]:
        """The woken CALLEE attaches and takes what waits."""
        ws = self.attach(CALLEE)
        got = []
        try:
            send(ws, type="fetch", id=9)
            while True:
                msg = recv_any(ws)
                if msg.get("type") == "message":
                    got.append(msg["content"])
                    send(ws, type="delivered", message=msg["message"])
                elif msg.get("type") == "ok" and msg.get("id") == 9:
                    return got
        finally:
            ws.close()

    def crs_log(self) -> str:
        with open(os.path.join(self.dir, "log", "crs.log")) as f:
            return f.read()

    def assert_nothing_identifying(self, provider: FakeProvider, sends: list[Any]) -> None:
        self.assertEqual(provider.problems, [])
        for request in sends:
            text = request.body.decode() + json.dumps(
                {k: v for k, v in request.headers.items() if k != "authorization"}
            )
            for word in (CALLER, CALLEE, CALLER[5:], CALLEE[5:], "acme", CONTENT.decode()):
                self.assertNotIn(word, text)


class ApnsChainTests(_PushChain):
    @defer.inlineCallbacks
    def test_message_to_offline_client_gives_exactly_one_push(self) -> Any:
        """Two messages to an offline iOS client with a token: exactly one
        wake-up reaches APNs (the second is within the rate limit), it
        carries no identifying data, and the woken client gets both messages."""
        yield self.in_thread(self.leave_token, "apns", DEVICE)
        yield self.in_thread(self.post, 2)
        yield self.in_thread(wait_for, lambda: self.apns.requests, "a push at the fake APNs")
        yield self.in_thread(wait_for, lambda: "wake-up sent" in self.crs_log(), "crs.log")
        [request] = self.apns.requests
        self.assertEqual(request.path, f"/3/device/{DEVICE}")
        self.assertEqual(request.body, PAYLOAD)
        self.assertEqual(request.headers["apns-push-type"], "background")
        self.assert_nothing_identifying(self.apns, self.apns.requests)
        got = yield self.in_thread(self.woken_fetch)
        self.assertEqual(got, [CONTENT, CONTENT])
        self.assertEqual(len(self.apns.requests), 1)

    @defer.inlineCallbacks
    def test_wakeup_client_limit_and_dead_token(self) -> Any:
        """crs-cli wakeup client sends one push and says so; a second one at
        once is refused as rate-limited; when APNs answers 410 Unregistered
        the token is removed (show push-token no longer has it)."""
        yield self.in_thread(self.leave_token, "apns", DEVICE)
        status, out, err = yield self.in_thread(
            self.cli, "wakeup", "client", "account", "acme", CALLEE
        )
        self.assertEqual(status, 0, err)
        self.assertIn(f"wake-up sent to {CALLEE}", out)
        status, out, err = yield self.in_thread(
            self.cli, "wakeup", "client", "account", "acme", CALLEE
        )
        self.assertNotEqual(status, 0)
        self.assertIn("limited", err)
        self.assertEqual(len(self.apns.requests), 1)

        other = "ab" * 32
        yield self.in_thread(self.leave_token, "apns", other, CALLER)
        _, shown, _ = yield self.in_thread(self.cli, "show", "push-token", "acme", CALLER)
        self.assertIn(other, shown)
        self.apns.answer(410, {"reason": "Unregistered", "timestamp": 0})
        status, out, err = yield self.in_thread(
            self.cli, "wakeup", "client", "account", "acme", CALLER
        )
        self.assertNotEqual(status, 0)
        self.assertIn("unregistered", err)
        _, shown, _ = yield self.in_thread(self.cli, "show", "push-token", "acme", CALLER)
        self.assertNotIn(other, shown)
        self.assert_nothing_identifying(self.apns, self.apns.requests)


class FcmChainTests(_PushChain):
    @defer.inlineCallbacks
    def test_message_to_offline_android_client(self) -> Any:
        """A message to an offline Android client with an FCM token: one
        OAuth2 token request and exactly one FCM send, without identifying data."""
        yield self.in_thread(self.leave_token, "fcm", FCM_TOKEN)
        yield self.in_thread(self.post, 1)
        sends = lambda: [r for r in self.fcm.requests if r.path != FakeFcm.TOKEN_PATH]  # noqa: E731
        yield self.in_thread(wait_for, sends, "a send at the fake FCM")
        yield self.in_thread(wait_for, lambda: "wake-up sent" in self.crs_log(), "crs.log")
        [request] = sends()
        message = json.loads(request.body)["message"]
        self.assertEqual(message["token"], FCM_TOKEN)
        self.assertEqual(message["data"], {"wakeup": "1"})
        self.assertEqual(len(self.fcm.issued), 1)
        self.assert_nothing_identifying(self.fcm, [request])
        got = yield self.in_thread(self.woken_fetch)
        self.assertEqual(got, [CONTENT])


class DirectApnsChainTests(_PushChain):
    DIRECT = True

    @defer.inlineCallbacks
    def test_crs_pushes_to_apns_itself(self) -> Any:
        """With push-config apns type direct the CRS sends the wake-up to APNs
        with a provider token from cryptify-push (valid for Apple's checks),
        and show services says direct."""
        _, services, _ = yield self.in_thread(self.cli, "show", "services")
        self.assertIn("direct", services)
        yield self.in_thread(self.leave_token, "apns", DEVICE)
        yield self.in_thread(self.post, 1)
        yield self.in_thread(wait_for, lambda: self.apns.requests, "a push at the fake APNs")
        yield self.in_thread(wait_for, lambda: "wake-up sent" in self.crs_log(), "crs.log")
        self.assertIn("direct:apns", self.crs_log())
        [request] = self.apns.requests
        self.assertEqual(request.body, PAYLOAD)
        self.assert_nothing_identifying(self.apns, self.apns.requests)


def recv_any(ws: Any) -> dict[str, Any]:
    import cbor2

    msg: dict[str, Any] = cbor2.loads(ws.recv(timeout=30))
    return msg
