"""What a provider's answer to a wake means for the sender (``docs/push.md``)."""

from __future__ import annotations

import enum
import json

import attrs

#: Longest provider reason kept (for logs and errors).
MAX_REASON = 200


class Outcome(enum.Enum):
    """How a wake ended."""

    #: the provider accepted it
    SENT = "sent"
    #: the device token is dead: forget it
    UNREGISTERED = "unregistered"
    #: our credential (provider or access token) is stale: renew, send again
    RENEW = "renew"
    #: the provider is busy or down: back off, then send again
    LATER = "later"
    #: refused for another reason: not retried
    REFUSED = "refused"


@attrs.frozen
class Answer:
    """An outcome, the provider's reason and its ``Retry-After`` (seconds)."""

    outcome: Outcome
    reason: str = ""
    retry_after: float | None = None


def retry_after(headers: dict[str, str]) -> float | None:
    """``Retry-After`` in seconds when it is a plain number, else None."""
    value = headers.get("retry-after", "").strip()
    if value.isascii() and value.isdigit() and len(value) <= 9:
        return float(value)
    return None


def json_body(body: bytes) -> dict[str, object]:
    """The answer's JSON object, or an empty one when it is not one."""
    try:
        value = json.loads(body.decode("utf-8")) if body else {}
    except (UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def clean(text: object) -> str:
    """A provider-supplied reason made safe for one log line."""
    return "".join(c if c.isprintable() else "?" for c in str(text)[:MAX_REASON])
