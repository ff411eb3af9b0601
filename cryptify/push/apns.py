"""APNs over HTTP/2 with token-based authentication (``docs/push.md``).

Used by ``cryptify-push`` and, with ``push-config apns type direct``, by
the CRS itself; the two differ only in where provider tokens come from
(:class:`SignedTokens` holds the key; the CRS asks the push server).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Protocol

from cryptify.push.answers import Answer, Outcome, clean, json_body, retry_after
from cryptify.push.h2client import H2Client, Unreachable
from cryptify.push.tokens import es256_jwt

#: Renew a provider token this long after it was issued: Apple refuses
#: tokens older than an hour and throttles renewals under 20 minutes.
TOKEN_LIFETIME = 40 * 60.0
#: How long APNs keeps trying to deliver a wake, seconds.
EXPIRATION = 3600
#: One collapse id for every wake: a device keeps only the latest.
COLLAPSE_ID = "wakeup"
#: The whole payload: a silent background wake with nothing in it.
PAYLOAD = json.dumps({"aps": {"content-available": 1}}, separators=(",", ":")).encode()
#: The payload of a VoIP wake (kind ``voip``): still nothing in it.
VOIP_PAYLOAD = json.dumps({"aps": {}}, separators=(",", ":")).encode()
#: Device tokens are hexadecimal (64 digits today; Apple says they may grow).
DEVICE_TOKEN = re.compile(r"[0-9A-Fa-f]{16,200}")
#: APNs reasons that mean the device token is dead.
DEAD_TOKEN = {"Unregistered", "BadDeviceToken", "DeviceTokenNotForTopic"}

PRODUCTION = "https://api.push.apple.com"
SANDBOX = "https://api.sandbox.push.apple.com"


class ProviderTokens(Protocol):
    """Where provider tokens come from."""

    async def token(self) -> str:
        """The current provider token (a fresh one after :meth:`renew`)."""

    def renew(self) -> None:
        """The current token was refused as expired: use a new one next."""


class SignedTokens:
    """Provider tokens signed here with the ``.p8`` key; one per
    :data:`TOKEN_LIFETIME`."""

    def __init__(
        self,
        key: object,
        key_id: str,
        team_id: str,
        clock: Callable[[], float],
        lifetime: float = TOKEN_LIFETIME,
    ) -> None:
        self.key = key
        self.key_id = key_id
        self.team_id = team_id
        self.clock = clock
        self.lifetime = lifetime
        self._token: str | None = None
        self._issued = 0

    def current(self) -> tuple[str, int]:
        """The token to use now and its ``iat``."""
        now = self.clock()
        if self._token is None or now - self._issued >= self.lifetime or now < self._issued:
            self._issued = int(now)
            self._token = es256_jwt(self.key, self.key_id, self.team_id, self._issued)
        return self._token, self._issued

    async def token(self) -> str:
        return self.current()[0]

    def renew(self) -> None:
        # a new token is signed at the next use, not before
        self._token = None


def classify(status: int, headers: dict[str, str], body: bytes) -> Answer:
    """What an APNs answer means, as Apple documents it."""
    if status == 200:
        return Answer(Outcome.SENT)
    reason = clean(json_body(body).get("reason", "")) or f"status {status}"
    if status == 410 or (status == 400 and reason in DEAD_TOKEN):
        return Answer(Outcome.UNREGISTERED, reason)
    if status == 403 and reason == "ExpiredProviderToken":
        return Answer(Outcome.RENEW, reason)
    if status == 429 or status >= 500:
        return Answer(Outcome.LATER, reason, retry_after(headers))
    return Answer(Outcome.REFUSED, reason)


class ApnsSender:
    """Sends wakes to one APNs endpoint for one app (``topic``)."""

    def __init__(
        self,
        client: H2Client,
        tokens: ProviderTokens,
        topic: str,
        clock: Callable[[], float],
    ) -> None:
        self.client = client
        self.tokens = tokens
        self.topic = topic
        self.clock = clock

    def request(
        self, device_token: str, provider_token: str, voip: bool = False
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        """The path, headers and body of one wake."""
        headers = [
            ("authorization", f"bearer {provider_token}"),
            ("apns-topic", f"{self.topic}.voip" if voip else self.topic),
            ("apns-push-type", "voip" if voip else "background"),
            ("apns-priority", "10" if voip else "5"),
            ("apns-expiration", str(int(self.clock()) + EXPIRATION)),
            ("apns-collapse-id", COLLAPSE_ID),
            ("content-type", "application/json"),
        ]
        return f"/3/device/{device_token}", headers, VOIP_PAYLOAD if voip else PAYLOAD

    async def wake(self, device_token: str, voip: bool = False) -> Answer:
        """Wake one device; renews the provider token once if it expired."""
        if not DEVICE_TOKEN.fullmatch(device_token):
            return Answer(Outcome.UNREGISTERED, "not an APNs device token")
        for _attempt in range(2):
            try:
                provider_token = await self.tokens.token()
            except Unreachable as exc:
                return Answer(Outcome.LATER, f"no provider token: {exc}")
            path, headers, body = self.request(device_token, provider_token, voip)
            try:
                response = await self.client.request("POST", path, headers, body)
            except Unreachable as exc:
                return Answer(Outcome.LATER, str(exc))
            answer = classify(response.status, response.headers, response.body)
            if answer.outcome is not Outcome.RENEW:
                return answer
            self.tokens.renew()
        return Answer(Outcome.REFUSED, "provider token refused as expired twice")
