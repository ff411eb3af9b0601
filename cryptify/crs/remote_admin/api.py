"""The admin interface's requests: which route a method and path name, and the
small JSON bodies of its login (sans-IO, hostile input answered with BadRequest).

Routes (docs/admin.md has the whole protocol)::

    POST /api/challenge                       {"admin"}            -> {"nonce", "expires_in"}
    POST /api/login                           {"admin", "nonce", "signature"} -> {"token", ...}
    POST /api/logout
    GET  /api/accounts                                             -> {"accounts": {ID: [AUTH]}}
    GET  /api/accounts/ID/stats               statistics           -> {"table"}
    POST /api/accounts/ID/stats/enable|disable|clear   statistics
    POST /api/accounts/ID/update  (the update file's octets)  update -> {"result"}
    GET  /api/accounts/ID/blacklist           update               -> {"table"}
"""

from __future__ import annotations

import json
from typing import Literal

import attrs

from cryptify.crs.accounts import ACCOUNT_ID, excerpt

Action = Literal[
    "challenge",
    "login",
    "logout",
    "accounts",
    "stats-export",
    "stats-enable",
    "stats-disable",
    "stats-clear",
    "update",
    "blacklist",
]
#: The authorization each per-account action needs.  The blacklist comes
#: with the monthly updates, so reading it goes with ``update``.
NEEDS: dict[str, str] = {
    "stats-export": "statistics",
    "stats-enable": "statistics",
    "stats-disable": "statistics",
    "stats-clear": "statistics",
    "update": "update",
    "blacklist": "update",
}
#: Largest JSON body of a login request, in octets.
MAX_JSON_BODY = 4096
#: Longest path accepted, in octets.
MAX_PATH = 512


class BadRequest(Exception):
    """A request that is not one of ours; the message says why (safe to echo)."""


@attrs.frozen
class Route:
    method: Literal["GET", "POST"]
    action: Action
    account: str | None = None


_FIXED: dict[tuple[bytes, tuple[bytes, ...]], Action] = {
    (b"POST", (b"challenge",)): "challenge",
    (b"POST", (b"login",)): "login",
    (b"POST", (b"logout",)): "logout",
    (b"GET", (b"accounts",)): "accounts",
}
_PER_ACCOUNT: dict[tuple[bytes, tuple[bytes, ...]], Action] = {
    (b"GET", (b"stats",)): "stats-export",
    (b"POST", (b"stats", b"enable")): "stats-enable",
    (b"POST", (b"stats", b"disable")): "stats-disable",
    (b"POST", (b"stats", b"clear")): "stats-clear",
    (b"POST", (b"update",)): "update",
    (b"GET", (b"blacklist",)): "blacklist",
}


def route(method: bytes, segments: list[bytes]) -> Route | None:
    """The route of ``METHOD /api/SEGMENTS...``, or None for anything else."""
    if sum(len(s) + 1 for s in segments) > MAX_PATH:
        return None
    tail = tuple(segments)
    fixed = _FIXED.get((method, tail))
    if fixed is not None:
        return Route("GET" if method == b"GET" else "POST", fixed)
    if len(tail) < 3 or tail[0] != b"accounts":
        return None
    action = _PER_ACCOUNT.get((method, tail[2:]))
    try:
        account = tail[1].decode("ascii")
    except UnicodeDecodeError:
        return None
    if action is None or not ACCOUNT_ID.match(account):
        return None
    return Route("GET" if method == b"GET" else "POST", action, account)


def parse_fields(body: bytes, names: tuple[str, ...]) -> dict[str, str]:
    """A JSON object of exactly ``names``, each a short string; BadRequest otherwise."""
    if len(body) > MAX_JSON_BODY:
        raise BadRequest(f"the body is larger than {MAX_JSON_BODY} octets")
    try:
        doc: object = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("the body is not JSON text") from None
    if not isinstance(doc, dict) or set(doc) != set(names):
        raise BadRequest(f"expected a JSON object with exactly {', '.join(names)}")
    for name in names:
        if not isinstance(doc[name], str) or len(doc[name]) > 256:
            raise BadRequest(f"{name} must be a string of at most 256 characters")
        if not doc[name].isprintable():
            raise BadRequest(f"{name} {excerpt(doc[name])} holds control characters")
    return {name: doc[name] for name in names}
