"""Fake APNs and FCM: HTTP/2 servers (``h2``) over real TLS on loopback.

Each fake checks every request as Apple and Google document it and keeps
what it got; the test scripts its answers (status, headers, body) in
order, the default being success.  A request that breaks the provider's
rules is answered 400 and its problem kept in ``problems`` so a test
can show it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import attrs
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, StreamEnded
from OpenSSL import crypto
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions

from cryptify.push.tokens import b64url_decode
from cryptify.tools.certs import generate_self_signed

Answer = tuple[int, dict[str, str], bytes]
Handler = Callable[["Request"], Answer]


@attrs.define
class Request:
    """One request as the fake received it."""

    headers: dict[str, str]
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.headers.get(":path", "")


class FakeH2(Protocol):
    """The server side of one HTTP/2 connection."""

    def __init__(self, handler: Handler, connections: list[FakeH2]) -> None:
        self.handler = handler
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.requests: dict[int, Request] = {}
        connections.append(self)

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, RequestReceived):
                self.requests[event.stream_id] = Request(dict(event.headers))
            elif isinstance(event, DataReceived):
                self.requests[event.stream_id].body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                request = self.requests.pop(event.stream_id)
                status, headers, body = self.handler(request)
                self.conn.send_headers(
                    event.stream_id,
                    [(":status", str(status)), *headers.items()],
                    end_stream=not body,
                )
                if body:
                    self.conn.send_data(event.stream_id, body, end_stream=True)
        self.transport.write(self.conn.data_to_send())  # type: ignore[union-attr]


def tls_pair(directory: str, name: str) -> tuple[str, str]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    cert, key = os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key")
    generate_self_signed(cert, key)
    return cert, key


def h2_server_options(cert: str, key: str) -> CertificateOptions:
    """TLS server options offering ALPN ``h2`` only."""
    with open(cert, "rb") as f:
        x509 = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())
    with open(key, "rb") as f:
        pkey = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read())
    return CertificateOptions(privateKey=pkey, certificate=x509, acceptableProtocols=[b"h2"])


class FakeProvider:
    """Scripted answers and the checks of one provider."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.problems: list[str] = []
        self.script: list[Answer] = []
        self.connections: list[FakeH2] = []

    def factory(self) -> Factory:
        return Factory.forProtocol(lambda: FakeH2(self.handle, self.connections))

    def listen(self, reactor: Any, cert: str, key: str) -> Any:
        return reactor.listenSSL(
            0, self.factory(), h2_server_options(cert, key), interface="127.0.0.1"
        )

    def answer(self, status: int, body: Any = None, **headers: str) -> None:
        """Answer the next request so (after its checks passed)."""
        data = json.dumps(body).encode() if body is not None else b""
        self.script.append((status, {k.replace("_", "-"): v for k, v in headers.items()}, data))

    def handle(self, request: Request) -> Answer:
        raise NotImplementedError

    def _refuse(self, problem: str) -> Answer:
        self.problems.append(problem)
        return 400, {}, json.dumps({"reason": "FakeProviderCheckFailed"}).encode()

    def _scripted(self) -> Answer:
        return self.script.pop(0) if self.script else (200, {}, b"")


def _verify_es256(
    token: str, public: ec.EllipticCurvePublicKey
) -> tuple[dict[str, Any], dict[str, Any]]:
    header_b64, claims_b64, sig_b64 = token.split(".")
    sig = b64url_decode(sig_b64)
    if len(sig) != 64:
        raise ValueError("ES256 signature is not r||s of 64 bytes")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    public.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    return json.loads(b64url_decode(header_b64)), json.loads(b64url_decode(claims_b64))


#: Every header APNs documents for a request; anything else is a mistake here.
APNS_HEADERS = {
    "authorization",
    "apns-topic",
    "apns-push-type",
    "apns-priority",
    "apns-expiration",
    "apns-collapse-id",
    "apns-id",
    "content-type",
    "content-length",
}


class FakeApns(FakeProvider):
    """APNs: ``POST /3/device/<token>`` with a provider token."""

    def __init__(
        self, public: ec.EllipticCurvePublicKey, key_id: str, team_id: str, topic: str
    ) -> None:
        super().__init__()
        self.public, self.key_id, self.team_id, self.topic = public, key_id, team_id, topic
        self.tokens: list[str] = []

    def handle(self, request: Request) -> Answer:
        self.requests.append(request)
        h = request.headers
        if h.get(":method") != "POST" or not request.path.startswith("/3/device/"):
            return self._refuse(f"not POST /3/device/: {h.get(':method')} {request.path}")
        device = request.path[len("/3/device/") :]
        if not device or any(c not in "0123456789abcdefABCDEF" for c in device):
            return self._refuse("device token in the path is not hexadecimal")
        extra = {k for k in h if not k.startswith(":")} - APNS_HEADERS
        if extra:
            return self._refuse(f"headers APNs does not know: {sorted(extra)}")
        auth = h.get("authorization", "")
        if not auth.startswith("bearer "):
            return 403, {}, json.dumps({"reason": "MissingProviderToken"}).encode()
        token = auth[len("bearer ") :]
        try:
            header, claims = _verify_es256(token, self.public)
        except Exception as exc:
            self.problems.append(f"provider token: {exc!r}")
            return 403, {}, json.dumps({"reason": "InvalidProviderToken"}).encode()
        if header != {"alg": "ES256", "kid": self.key_id} or claims.get("iss") != self.team_id:
            return self._refuse(f"provider token header/claims wrong: {header} {claims}")
        if abs(time.time() - claims.get("iat", 0)) > 3600:
            return 403, {}, json.dumps({"reason": "ExpiredProviderToken"}).encode()
        self.tokens.append(token)
        push_type = h.get("apns-push-type")
        if push_type not in ("background", "voip", "alert"):
            return self._refuse(f"apns-push-type {push_type!r}")
        expected_topic = self.topic + (".voip" if push_type == "voip" else "")
        if h.get("apns-topic") != expected_topic:
            return self._refuse(f"apns-topic {h.get('apns-topic')!r}")
        if push_type == "background" and h.get("apns-priority") != "5":
            return self._refuse("a background push must have apns-priority 5")
        if not h.get("apns-expiration", "").isdigit():
            return self._refuse("apns-expiration is not a UNIX epoch in seconds")
        if len(h.get("apns-collapse-id", "").encode()) > 64:
            return self._refuse("apns-collapse-id longer than 64 bytes")
        if len(request.body) > 4096:
            return 413, {}, json.dumps({"reason": "PayloadTooLarge"}).encode()
        try:
            payload = json.loads(request.body)
        except ValueError:
            return 400, {}, json.dumps({"reason": "PayloadEmpty"}).encode()
        if not isinstance(payload.get("aps"), dict):
            return self._refuse("payload has no aps dictionary")
        return self._scripted()


class FakeFcm(FakeProvider):
    """FCM v1 ``messages:send`` and the OAuth2 token endpoint, on one origin."""

    TOKEN_PATH = "/token"

    def __init__(self, public: rsa.RSAPublicKey, email: str, project: str) -> None:
        super().__init__()
        self.public, self.email, self.project = public, email, project
        self.issued: list[str] = []
        self.token_script: list[Answer] = []
        self.origin = ""

    def answer_token(self, status: int, body: Any) -> None:
        self.token_script.append((status, {}, json.dumps(body).encode()))

    def handle(self, request: Request) -> Answer:
        self.requests.append(request)
        if request.path == self.TOKEN_PATH:
            return self._token(request)
        h = request.headers
        if (
            h.get(":method") != "POST"
            or request.path != f"/v1/projects/{self.project}/messages:send"
        ):
            return self._refuse(f"not POST messages:send: {h.get(':method')} {request.path}")
        auth = h.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[len("Bearer ") :] not in self.issued:
            return (
                401,
                {},
                json.dumps({"error": {"code": 401, "status": "UNAUTHENTICATED"}}).encode(),
            )
        if not h.get("content-type", "").startswith("application/json"):
            return self._refuse("content-type is not JSON")
        try:
            message = json.loads(request.body)["message"]
        except (ValueError, KeyError, TypeError):
            return self._refuse("body is not {message: ...}")
        if not isinstance(message.get("token"), str):
            return self._refuse("message has no token")
        data = message.get("data", {})
        if not all(isinstance(v, str) for v in data.values()):
            return self._refuse("data values must be strings")
        ttl = message.get("android", {}).get("ttl", "")
        if ttl and not (ttl.endswith("s") and ttl[:-1].isdigit()):
            return self._refuse(f"android.ttl {ttl!r} is not a duration")
        return self._scripted()

    def _token(self, request: Request) -> Answer:
        if request.headers.get("content-type") != "application/x-www-form-urlencoded":
            return self._refuse("token request is not form-encoded")
        form = parse_qs(request.body.decode())
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return self._refuse(f"grant_type {form.get('grant_type')}")
        assertion = form.get("assertion", [""])[0]
        try:
            head_b64, claims_b64, sig_b64 = assertion.split(".")
            self.public.verify(
                b64url_decode(sig_b64),
                f"{head_b64}.{claims_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
            header = json.loads(b64url_decode(head_b64))
            claims = json.loads(b64url_decode(claims_b64))
        except Exception as exc:
            self.problems.append(f"assertion: {exc!r}")
            return 400, {}, json.dumps({"error": "invalid_grant"}).encode()
        if header.get("alg") != "RS256":
            return self._refuse(f"assertion alg {header.get('alg')}")
        wanted = {
            "iss": self.email,
            "scope": "https://www.googleapis.com/auth/firebase.messaging",
            "aud": self.origin + self.TOKEN_PATH,
        }
        if any(claims.get(k) != v for k, v in wanted.items()):
            return self._refuse(f"assertion claims {claims}")
        if not 0 < claims["exp"] - claims["iat"] <= 3600:
            return self._refuse("assertion lifetime is not within an hour")
        if self.token_script:
            return self.token_script.pop(0)
        token = f"ya29.fake-{len(self.issued)}"
        self.issued.append(token)
        return (
            200,
            {},
            json.dumps(
                {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}
            ).encode(),
        )


def apns_key(directory: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A new P-256 key and the path of its ``.p8`` (PKCS#8 PEM, 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = os.path.join(directory, "AuthKey_KEY1234567.p8")
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(pem)
    return key, path


def service_account(
    directory: str, token_uri: str, project: str = "cryptify-test"
) -> tuple[rsa.RSAPrivateKey, str, dict[str, str]]:
    """A new RSA key and a service-account file (0600) naming it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    data = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": f"push@{project}.iam.gserviceaccount.com",
        "token_uri": token_uri,
    }
    path = os.path.join(directory, "service-account.json")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(data, f)
    return key, path, data
