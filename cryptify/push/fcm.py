"""FCM HTTP v1 with an OAuth2 service-account token (``docs/push.md``)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from urllib.parse import urlencode, urlsplit

import attrs
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from cryptify.push.answers import Answer, Outcome, clean, json_body, retry_after
from cryptify.push.h2client import H2Client, Unreachable
from cryptify.push.tokens import rs256_jwt

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
PRODUCTION = "https://fcm.googleapis.com"
#: Lifetime asked for an assertion (Google's maximum).
ASSERTION_LIFETIME = 3600
#: Renew an access token this long before it expires.
RENEW_BEFORE = 5 * 60.0
#: Largest service-account file read.
MAX_ACCOUNT_FILE = 64 * 1024
#: FCM registration tokens: long URL-safe strings.
DEVICE_TOKEN = re.compile(r"[A-Za-z0-9_:.\-]{16,512}")
#: TTL and collapse key of every wake.
TTL = "3600s"
COLLAPSE_KEY = "wakeup"


class ServiceAccountError(ValueError):
    """A service-account file that cannot be used."""


@attrs.frozen
class ServiceAccount:
    """What a Google service-account JSON file gives us."""

    project_id: str
    client_email: str
    private_key: PrivateKeyTypes = attrs.field(repr=False)
    token_uri: str
    key_id: str = ""

    @classmethod
    def load(cls, path: str) -> ServiceAccount:
        """Read and check a service-account file (raises ServiceAccountError)."""
        try:
            if os.path.getsize(path) > MAX_ACCOUNT_FILE:
                raise ServiceAccountError(f"{path}: larger than {MAX_ACCOUNT_FILE} bytes")
            with open(path, "rb") as f:
                data = json.loads(f.read())
        except (OSError, ValueError) as exc:
            raise ServiceAccountError(f"{path}: {exc}") from exc
        return cls.from_json(data, path)

    @classmethod
    def from_json(cls, data: object, where: str = "service account") -> ServiceAccount:
        if not isinstance(data, dict):
            raise ServiceAccountError(f"{where}: not a JSON object")
        fields = {}
        for name in ("project_id", "client_email", "private_key", "token_uri"):
            value = data.get(name)
            if not isinstance(value, str) or not value:
                raise ServiceAccountError(f"{where}: {name} missing")
            fields[name] = value
        if not re.fullmatch(r"[a-z0-9-]{1,64}", fields["project_id"]):
            raise ServiceAccountError(f"{where}: project_id is not a project id")
        if urlsplit(fields["token_uri"]).scheme != "https":
            raise ServiceAccountError(f"{where}: token_uri is not https")
        try:
            key = load_pem_private_key(fields["private_key"].encode(), None)
        except (ValueError, TypeError) as exc:
            raise ServiceAccountError(f"{where}: private_key unreadable") from exc
        key_id = data.get("private_key_id", "")
        return cls(
            fields["project_id"],
            fields["client_email"],
            key,
            fields["token_uri"],
            key_id if isinstance(key_id, str) else "",
        )


class TokenUnavailable(Exception):
    """No access token; ``answer`` says whether to back off or give up."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.reason)
        self.answer = answer


class AccessTokens:
    """OAuth2 access tokens for the FCM scope, renewed before they expire."""

    def __init__(
        self,
        account: ServiceAccount,
        client: H2Client,
        clock: Callable[[], float],
    ) -> None:
        self.account = account
        self.client = client
        self.clock = clock
        self.path = urlsplit(account.token_uri).path or "/"
        self._token: str | None = None
        self._expires = 0.0

    def assertion(self, now: int) -> str:
        """The signed JWT bearer grant."""
        claims = {
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.account.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        return rs256_jwt(self.account.private_key, claims, self.account.key_id)

    async def token(self) -> str:
        now = self.clock()
        if self._token is not None and now < self._expires - RENEW_BEFORE:
            return self._token
        body = urlencode({"grant_type": GRANT, "assertion": self.assertion(int(now))}).encode()
        headers = [("content-type", "application/x-www-form-urlencoded")]
        try:
            response = await self.client.request("POST", self.path, headers, body)
        except Unreachable as exc:
            raise TokenUnavailable(Answer(Outcome.LATER, f"token endpoint: {exc}")) from exc
        answer = json_body(response.body)
        token, lifetime = answer.get("access_token"), answer.get("expires_in")
        if response.status != 200 or not isinstance(token, str) or not token:
            reason = clean(answer.get("error", f"status {response.status}"))
            later = response.status == 429 or response.status >= 500
            outcome = Outcome.LATER if later else Outcome.REFUSED
            raise TokenUnavailable(
                Answer(outcome, f"token endpoint: {reason}", retry_after(response.headers))
            )
        if not isinstance(lifetime, int) or lifetime <= 0:
            lifetime = ASSERTION_LIFETIME
        self._token, self._expires = token, now + lifetime
        return token

    def renew(self) -> None:
        self._token = None


def _error_codes(body: bytes) -> tuple[str, set[str], str]:
    error = json_body(body).get("error")
    if not isinstance(error, dict):
        return "", set(), ""
    codes = set()
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and isinstance(detail.get("errorCode"), str):
            codes.add(detail["errorCode"])
    status = error.get("status")
    return (
        status if isinstance(status, str) else "",
        codes,
        clean(error.get("message", "")),
    )


def classify(status: int, headers: dict[str, str], body: bytes) -> Answer:
    """What an FCM v1 answer means, as Google documents it."""
    if status == 200:
        return Answer(Outcome.SENT)
    code, details, message = _error_codes(body)
    reason = clean(" ".join(sorted(details)) or code or f"status {status}")
    if status == 404 or "UNREGISTERED" in details:
        return Answer(Outcome.UNREGISTERED, reason)
    if status == 400 and "token" in message.lower():
        return Answer(Outcome.UNREGISTERED, reason)
    if status == 401:
        return Answer(Outcome.RENEW, reason)
    if status == 429 or status >= 500:
        return Answer(Outcome.LATER, reason, retry_after(headers))
    return Answer(Outcome.REFUSED, reason)


class FcmSender:
    """Sends wakes through FCM for one project."""

    def __init__(self, client: H2Client, tokens: AccessTokens) -> None:
        self.client = client
        self.tokens = tokens
        self.path = f"/v1/projects/{tokens.account.project_id}/messages:send"

    @staticmethod
    def body(device_token: str) -> bytes:
        """The whole request body: a data message with nothing in it."""
        message = {
            "message": {
                "token": device_token,
                "data": {"wakeup": "1"},
                "android": {"priority": "HIGH", "ttl": TTL, "collapse_key": COLLAPSE_KEY},
            }
        }
        return json.dumps(message, separators=(",", ":")).encode()

    async def wake(self, device_token: str) -> Answer:
        """Wake one device; renews the access token once after a 401."""
        if not DEVICE_TOKEN.fullmatch(device_token):
            return Answer(Outcome.UNREGISTERED, "not an FCM registration token")
        for _attempt in range(2):
            try:
                access = await self.tokens.token()
            except TokenUnavailable as exc:
                return exc.answer
            headers = [
                ("authorization", f"Bearer {access}"),
                ("content-type", "application/json; charset=UTF-8"),
            ]
            try:
                response = await self.client.request(
                    "POST", self.path, headers, self.body(device_token)
                )
            except Unreachable as exc:
                return Answer(Outcome.LATER, str(exc))
            answer = classify(response.status, response.headers, response.body)
            if answer.outcome is not Outcome.RENEW:
                return answer
            self.tokens.renew()
        return Answer(Outcome.REFUSED, "access token refused twice")
