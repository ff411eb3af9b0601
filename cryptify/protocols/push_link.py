"""The link between a CRS and its push server: AMP commands over TLS.

Written down in ``docs/push.md``.  Framing is AMP's (length-prefixed
keys and values, one answer box per request tag); this module holds the
commands, their limits and their errors, shared by ``cryptify-push``
(server side) and the CRS (client side).
"""

from __future__ import annotations

from twisted.protocols import amp

#: Longest client id.
MAX_ID = 64
#: Longest shared secret.
MAX_SECRET = 256
#: Longest push kind (as in UMSG ``push-token``).
MAX_KIND = 16
#: Longest device token (as in UMSG ``push-token``).
MAX_TOKEN = 512

#: Wake outcomes.
SENT = "sent"
UNREGISTERED = "unregistered"
LATER = "later"
REFUSED = "refused"
OUTCOMES = (SENT, UNREGISTERED, LATER, REFUSED)


class Unauthorized(Exception):
    """Not logged in, or a wrong id or secret (the server then hangs up)."""


class Unsupported(Exception):
    """No provider of that kind is configured on the push server."""


class Malformed(Exception):
    """A field is out of its limits."""


class NotAvailable(Exception):
    """The push server cannot give what was asked (e.g. no APNs key)."""


_ERRORS: dict[type[Exception], bytes] = {
    Unsupported: b"UNSUPPORTED",
    Malformed: b"MALFORMED",
    NotAvailable: b"NOT_AVAILABLE",
}

#: An answer with these errors closes the connection.
_FATAL: dict[type[Exception], bytes] = {Unauthorized: b"UNAUTHORIZED"}


class Login(amp.Command):
    """The first request: the CRS's id and shared secret."""

    arguments = [(b"id", amp.Unicode()), (b"secret", amp.Unicode())]
    response = [(b"server", amp.Unicode()), (b"time", amp.Float())]
    errors = _ERRORS
    fatalErrors = _FATAL


class Wake(amp.Command):
    """Wake one device; answered once the provider has answered.

    ``outcome`` is one of :data:`OUTCOMES`; ``later`` carries the seconds
    to wait (``retry_after``, 0 when the provider gave none) and
    ``refused`` the provider's reason.
    """

    arguments = [(b"kind", amp.Unicode()), (b"token", amp.Unicode())]
    response = [
        (b"outcome", amp.Unicode()),
        (b"retry_after", amp.Float(optional=True)),
        (b"reason", amp.Unicode(optional=True)),
    ]
    errors = _ERRORS
    fatalErrors = _FATAL


class ProviderToken(amp.Command):
    """An APNs provider token for direct APNs: the JWT, its ``iat``, the
    APNs base URL and topic it is for, and the server's clock (``time``,
    Unix seconds) so the CRS can see its own clock's skew."""

    arguments = []
    response = [
        (b"token", amp.Unicode()),
        (b"issued", amp.Integer()),
        (b"endpoint", amp.Unicode()),
        (b"topic", amp.Unicode()),
        (b"time", amp.Float()),
    ]
    errors = _ERRORS
    fatalErrors = _FATAL


class Ping(amp.Command):
    """Keep-alive; answered at once."""

    arguments = []
    response = []
    errors = _ERRORS
    fatalErrors = _FATAL


def check_field(value: str, limit: int, what: str) -> str:
    """``value`` when it is 1..limit printable ASCII characters, else Malformed."""
    if not 0 < len(value) <= limit or not value.isascii() or not value.isprintable():
        raise Malformed(f"{what} must be 1 to {limit} printable ASCII characters")
    return value
