"""The UMSG schema: every message type's fields, their kinds and limits,
the error codes, and :class:`UmsgError` (sans-IO, no CBOR here).

:mod:`cryptify.protocols.umsg` checks messages against these tables when
it encodes and decodes them, and re-exports every name; ``docs/umsg.md``
lists the same fields (a test keeps the two in step).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs

#: Largest request id.
MAX_ID = 2**32 - 1
#: Largest end-to-end content carried by ``post`` / ``message``, octets.
MAX_CONTENT = 48 * 1024
#: Largest MIKEY I_MESSAGE carried by ``invite``, octets.
MAX_MIKEY = 4096
#: Octets of a post's message key (its retry key).
KEY_OCTETS = 16
#: Longest ``retry-after`` hint, ms.
MAX_RETRY_AFTER = 3_600_000

#: Error and refusal codes, with what each means (docs/umsg.md lists them).
ERROR_CODES: dict[str, str] = {
    "malformed": "not a valid UMSG message (CBOR, type, fields or limits)",
    "too-large": "message larger than the server's maximum",
    "unexpected": "message type not allowed in this state",
    "version": "no UMSG revision in common",
    "unknown-account": "the account is not served by this CRS",
    "blacklisted": "the URI is blacklisted in its account",
    "bad-signature": "the attach signature does not verify",
    "no-key-period": "the account has no keys for the current month",
    "attach-timeout": "no attach completed within the time allowed",
    "too-many": "too many unattached connections from this address",
    "replaced": "the same URI attached again on another connection",
    "keepalive": "no answer to a keep-alive ping in time",
    "shutdown": "the CRS is shutting down",
    "purged": "the operator purged this client",
    "not-implemented": "this CRS does not handle this request yet",
    "not-found": "the responder or the session does not exist",
    "not-connected": "the responder is not attached",
    "internal": "the CRS could not handle the request",
    "disconnected": "the CRS closed the connection (the reason says why)",
    "unavailable": "a store is briefly out of reach: retry the same request later",
    "key-reused": "the post's retry key was used before for a different message",
}


class UmsgError(Exception):
    """A message that cannot be accepted; ``code`` is one of :data:`ERROR_CODES`.

    ``id`` is the request's ``id`` when the message was a CBOR map with a
    valid one (so that the refusal can name the request), else None.
    """

    def __init__(self, code: str, detail: str, id: int | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.id = id


# ---------------------------------------------------------------- schema


@attrs.frozen
class Field:
    """One field of a message type: name, kind, limits, whether required.

    Kinds: ``text`` (length ``lo``..``hi`` characters, optional ``pattern``),
    ``uint`` (``lo``..``hi``), ``int`` (``lo``..``hi``), ``bytes`` (length
    ``lo``..``hi``), ``bool``, ``uints`` (array of ``lo``..``hi`` unsigned
    integers below 2**16), ``texts`` (map of up to ``hi`` text keys to text
    values of at most 128 characters), ``names`` (array of ``lo``..``hi``
    texts matching ``pattern``).
    """

    name: str
    kind: str
    lo: int = 0
    hi: int = 0
    required: bool = True
    pattern: str | None = None

    def check(self, value: Any) -> None:
        """Raise UmsgError unless ``value`` is valid for this field."""
        ok = _CHECKS[self.kind](self, value)
        if not ok:
            raise UmsgError("malformed", f"field {self.name!r}: {self.describe()}")

    def describe(self) -> str:
        """This field's type and limits in words (used in errors and the doc test)."""
        if self.kind == "text":
            base = f"text, {self.lo}..{self.hi} characters"
            return base + (f", matching {self.pattern}" if self.pattern else "")
        if self.kind in ("uint", "int"):
            return f"{self.kind} {self.lo}..{self.hi}"
        if self.kind == "bytes":
            return f"bytes, {self.lo}..{self.hi} octets"
        if self.kind == "uints":
            return f"array of {self.lo}..{self.hi} uint"
        if self.kind == "texts":
            return f"map of at most {self.hi} text -> text (128 characters)"
        if self.kind == "names":
            return f"array of {self.lo}..{self.hi} text matching {self.pattern}"
        return self.kind


#: Compiled field patterns (a field's check runs for every message).
_PATTERNS: dict[str, re.Pattern[str]] = {}


def _check_text(f: Field, v: Any) -> bool:
    if not isinstance(v, str) or not f.lo <= len(v) <= f.hi:
        return False
    if f.pattern is None:
        return True
    pattern = _PATTERNS.get(f.pattern)
    if pattern is None:
        pattern = _PATTERNS[f.pattern] = re.compile(f.pattern)
    return pattern.fullmatch(v) is not None


def _check_int(f: Field, v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and f.lo <= v <= f.hi


def _check_bytes(f: Field, v: Any) -> bool:
    return isinstance(v, bytes) and f.lo <= len(v) <= f.hi


def _check_uints(f: Field, v: Any) -> bool:
    return (
        isinstance(v, list)
        and f.lo <= len(v) <= f.hi
        and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**16 for i in v)
    )


def _check_texts(f: Field, v: Any) -> bool:
    return (
        isinstance(v, dict)
        and len(v) <= f.hi
        and all(len(k) <= 32 and isinstance(x, str) and len(x) <= 128 for k, x in v.items())
    )


def _check_names(f: Field, v: Any) -> bool:
    if not isinstance(v, list) or not f.lo <= len(v) <= f.hi:
        return False
    item = Field(f.name, "text", 1, 64, pattern=f.pattern)
    return all(_check_text(item, x) for x in v)


_CHECKS: dict[str, Callable[[Field, Any], bool]] = {
    "text": _check_text,
    "uint": _check_int,
    "int": _check_int,
    "bytes": _check_bytes,
    "bool": lambda f, v: isinstance(v, bool),
    "uints": _check_uints,
    "texts": _check_texts,
    "names": _check_names,
}

#: A tel URI as clients attach with it (RFC 6509 form).
TEL = r"tel:\+[0-9]{1,15}"
#: A tel URI that may carry an extension (``tel:+8888;101``), as callees.
TEL_EXT = r"tel:\+[0-9]{1,15}(;[0-9A-Za-z*#]{1,16})?"
ACCOUNT = r"[A-Za-z0-9_-]{1,20}"
PERIOD = r"[0-9]{4}-(0[1-9]|1[0-2])"


def base_uri(uri: str) -> str:
    """A URI without its extension: ``tel:+8888;101`` -> ``tel:+8888``.

    Extensions route with their base number: the CRS delivers to, and the
    client and the CIG answer for, the base URI.
    """
    return uri.split(";", 1)[0]


def _id(required: bool = True) -> Field:
    return Field("id", "uint", 0, MAX_ID, required)


def _text(
    name: str, hi: int, lo: int = 1, *, pattern: str | None = None, req: bool = True
) -> Field:
    return Field(name, "text", lo, hi, req, pattern)


def _code(req: bool = True) -> Field:
    return _text("code", 32, pattern=r"[a-z-]{1,32}", req=req)


def _reason() -> Field:
    return _text("reason", 200, 0, req=False)


def _retry_after() -> Field:
    return Field("retry-after", "uint", 0, MAX_RETRY_AFTER, False)


_SESSION = _text("session", 64, pattern=r"[0-9A-Za-z_.:-]{1,64}")
_MESSAGE = _text("message", 64, pattern=r"[0-9A-Za-z_.:-]{1,64}")


#: A media codec's name in ``codecs``/``codec`` (``opus``, ``PCMU``, ``PCMA``).
CODEC = r"[A-Za-z0-9-]{1,16}"
#: Most codecs one ``invite`` offers.
MAX_CODECS = 8
#: The caller's codecs in order of preference (absent: ``PCMU`` only).
_CODECS = Field("codecs", "names", 1, MAX_CODECS, False, CODEC)
#: The codec the callee chose from them (absent: ``PCMU``).
_CODEC = _text("codec", 16, pattern=CODEC, req=False)


def _schema(*types: tuple[str, Iterable[Field]]) -> dict[str, tuple[Field, ...]]:
    return {name: tuple(fields) for name, fields in types}


#: Message types a client may send, with their fields.
FROM_CLIENT: dict[str, tuple[Field, ...]] = _schema(
    (
        "attach",
        [
            _id(),
            _text("account", 20, pattern=ACCOUNT),
            _text("uri", 20, pattern=TEL),
            Field("versions", "uints", 1, 8),
            _text("app", 64),
            Field("device", "texts", 0, 8, required=False),
            Field("ticket", "bytes", 1, 64, required=False),
        ],
    ),
    ("prove", [_id(), Field("signature", "bytes", 129, 129)]),
    ("detach", [_id(False)]),
    (
        "push-token",
        [_id(), _text("kind", 16, pattern=r"[a-z0-9-]{1,16}"), _text("token", 512)],
    ),
    (
        "client-info",
        [
            _id(),
            _text("os", 32, 0, req=False),
            _text("os-version", 32, 0, req=False),
            _text("cca-version", 32, 0, req=False),
            Field("client-time", "int", -(2**31), 2**31 - 1, False),
            Field("scan-time", "uint", 0, 2**40, False),
        ],
    ),
    (
        "invite",
        [
            _id(),
            _text("to", 40, pattern=TEL_EXT),
            Field("mikey", "bytes", 1, MAX_MIKEY),
            _text("from", 40, pattern=TEL_EXT, req=False),
            _CODECS,
            _text("to-account", 20, pattern=ACCOUNT, req=False),
        ],
    ),
    ("ringing", [_SESSION]),
    ("talk", [_SESSION, _CODEC]),
    ("hold", [_SESSION]),
    ("resume", [_SESSION]),
    ("hangup", [_SESSION, _code(), _reason()]),
    (
        "post",
        [
            _id(),
            _text("to", 40, pattern=TEL_EXT),
            Field("content", "bytes", 0, MAX_CONTENT, False),
            attrs.evolve(_MESSAGE, name="ack", required=False),
            Field("system", "bool", required=False),
            Field("key", "bytes", KEY_OCTETS, KEY_OCTETS, False),
            _text("to-account", 20, pattern=ACCOUNT, req=False),
        ],
    ),
    ("fetch", [_id()]),
    ("delivered", [_MESSAGE]),
)

#: Message types the CRS may send, with their fields.
FROM_SERVER: dict[str, tuple[Field, ...]] = _schema(
    (
        "challenge",
        [
            _id(),
            Field("nonce", "bytes", 32, 32),
            _text("period", 7, pattern=PERIOD),
            Field("version", "uint", 1, 2**16 - 1),
        ],
    ),
    (
        "attached",
        [
            _id(),
            _text("uri", 20, pattern=TEL),
            _text("crs", 64),
            Field("slot", "uint", 0, 16383),
            Field("time", "uint", 0, 2**53),
            _text("keepalive", 3, 2, pattern="ws|tcp"),
            Field("interval", "uint", 1000, 24 * 3600 * 1000),
            Field("ticket", "bytes", 1, 64, required=False),
            Field("resumed", "bool", required=False),
            _text("standby", 64, req=False),
            _text("standby-host", 255, req=False),
            Field("standby-port", "uint", 1, 65535, required=False),
        ],
    ),
    (
        "moved",
        [_id(), _text("crs", 64), _text("host", 255), Field("port", "uint", 1, 65535)],
    ),
    ("refused", [_id(False), _code(), _reason(), _retry_after()]),
    ("disconnect", [_code(), _reason()]),
    ("ok", [_id()]),
    ("error", [_id(False), _code(), _reason(), _retry_after()]),
    (
        "invite",
        [
            _SESSION,
            _text("from", 40, pattern=TEL_EXT),
            _text("to", 40, pattern=TEL_EXT),
            Field("mikey", "bytes", 1, MAX_MIKEY),
            _text("relay-host", 255),
            Field("relay-port", "uint", 1, 65535),
            Field("relay-tag", "bytes", 1, 16),
            _CODECS,
        ],
    ),
    (
        "session",
        [
            _id(),
            _SESSION,
            _text("relay-host", 255),
            Field("relay-port", "uint", 1, 65535),
            Field("relay-tag", "bytes", 1, 16),
        ],
    ),
    ("ringing", [_SESSION]),
    ("talk", [_SESSION, _CODEC]),
    ("hold", [_SESSION]),
    ("resume", [_SESSION]),
    ("hangup", [_SESSION, _code(), _reason(), _text("who", 16, pattern="caller|callee|crs")]),
    ("posted", [_id(), _MESSAGE]),
    (
        "message",
        [
            _MESSAGE,
            _text("from", 20, pattern=TEL),
            _text("to", 40, pattern=TEL_EXT),
            Field("time", "uint", 0, 2**53),
            Field("content", "bytes", 0, MAX_CONTENT, False),
            attrs.evolve(_MESSAGE, name="ack", required=False),
            Field("system", "bool", required=False),
        ],
    ),
    ("delivered", [_MESSAGE]),
)
