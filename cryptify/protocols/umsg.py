"""UMSG: the client <-> CRS message codec (sans-IO).

One UMSG message is one CBOR map (RFC 8949) carried in one binary WebSocket
message.  Every map has a ``type`` (text) and, for requests and their
answers, an ``id`` (unsigned integer chosen by the requester, echoed in the
answer).  The fields of every type, their CBOR types and their limits are
in :data:`FROM_CLIENT` and :data:`FROM_SERVER` and in ``docs/umsg.md``;
a test keeps the two in step.

:func:`decode` accepts only what the schema allows: the strict CBOR subset
below, a known type, every required field present with the right type and
within its limits.  Unknown fields are ignored (a later revision may add
fields).  Anything else raises :class:`UmsgError` -- never any other
exception -- with an error code from :data:`ERROR_CODES`.

The CBOR subset (:mod:`cryptify.protocols.cbor_subset`): unsigned and
negative integers (up to 64 bits), byte strings, UTF-8 text strings,
arrays, maps with text keys (no duplicates), ``true``, ``false`` and
``null``; definite lengths only; no tags, no floats; nesting at most
:data:`MAX_DEPTH` deep; every integer and length in its shortest form (RFC
8949 section 4.2.1), so that one message has one encoding.  Encoding uses
the same subset.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import cbor2

from . import cbor_subset
from .cbor_subset import MAX_DEPTH as MAX_DEPTH
from .cbor_subset import CborError

#: The WebSocket subprotocol of this specification (major version 1).
SUBPROTOCOL = "umsg.1"
#: Revisions of umsg.1 this implementation speaks (attach ``versions``).
REVISIONS = (1,)
#: Largest UMSG message (one WebSocket message) accepted by default, octets.
MAX_MESSAGE = 64 * 1024
#: Most keys in one message map.
MAX_KEYS = 32
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


# ---------------------------------------------------------------- CBOR subset


def cbor_encode(value: Any) -> bytes:
    """Encode ``value`` in the UMSG CBOR subset (raises UmsgError otherwise)."""
    try:
        return cbor_subset.encode(value)
    except CborError as exc:
        raise UmsgError("malformed", str(exc)) from None


def cbor_decode(data: bytes) -> Any:
    """Decode one complete item of the UMSG CBOR subset; raise UmsgError."""
    try:
        return cbor_subset.decode(data)
    except CborError as exc:
        raise UmsgError("malformed", str(exc)) from None


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


@attrs.frozen
class Message:
    """A decoded (or to-be-encoded) UMSG message: its type and its fields."""

    type: str
    fields: Mapping[str, Any] = attrs.field(factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    @property
    def id(self) -> int | None:
        value = self.fields.get("id")
        return value if isinstance(value, int) else None

    # Typed reads of fields.  A decoded message has passed its schema, so
    # these only fail on a field the schema does not give that type (or a
    # message built by hand): UmsgError ``malformed`` names the field.

    def _wrong(self, name: str, what: str) -> UmsgError:
        return UmsgError("malformed", f"field {name!r}: not {what}", self.id)

    def text(self, name: str) -> str:
        """The text field ``name``."""
        value = self.fields.get(name)
        if not isinstance(value, str):
            raise self._wrong(name, "text")
        return value

    def number(self, name: str) -> int:
        """The integer field ``name`` (``uint`` or ``int``)."""
        value = self.fields.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._wrong(name, "an integer")
        return value

    def octets(self, name: str) -> bytes:
        """The byte string field ``name``."""
        value = self.fields.get(name)
        if not isinstance(value, bytes):
            raise self._wrong(name, "bytes")
        return value

    def numbers(self, name: str) -> list[int]:
        """The array of integers field ``name`` (``uints``)."""
        value = self.fields.get(name)
        if not isinstance(value, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in value
        ):
            raise self._wrong(name, "an array of integers")
        return value

    def optional_text(self, name: str) -> str | None:
        """The text field ``name``, None when the message has none."""
        return None if self.fields.get(name) is None else self.text(name)

    def optional_number(self, name: str) -> int | None:
        """The integer field ``name``, None when the message has none."""
        return None if self.fields.get(name) is None else self.number(name)

    def optional_octets(self, name: str) -> bytes | None:
        """The byte string field ``name``, None when the message has none."""
        return None if self.fields.get(name) is None else self.octets(name)


@attrs.frozen(eq=False)
class Encoded(Message):
    """A message already encoded (:mod:`cryptify.protocols.umsg_replies`
    makes the CRS's per-message replies from templates): :func:`encode`
    returns ``encoded`` for the direction it was made for.  Equal to the
    :class:`Message` of the same type and fields."""

    encoded: bytes = b""
    from_server: bool = True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.type, self.fields) == (other.type, other.fields)

    __hash__ = None  # type: ignore[assignment]


def message(type_: str, /, **fields: Any) -> Message:
    """Build a Message; field names with ``_`` become ``-`` (``relay_host``)."""
    return Message(type_, {k.replace("_", "-"): v for k, v in fields.items() if v is not None})


def _validate(
    schema: Mapping[str, tuple[Field, ...]], msg_type: Any, body: Mapping[str, Any]
) -> None:
    if not isinstance(msg_type, str):
        raise UmsgError("malformed", "no message type")
    fields = schema.get(msg_type)
    if fields is None:
        raise UmsgError("malformed", f"unknown message type {msg_type[:32]!r}")
    for field in fields:
        if field.name in body:
            field.check(body[field.name])
        elif field.required:
            raise UmsgError("malformed", f"{msg_type}: field {field.name!r} is missing")


_NAMES: dict[int, tuple[tuple[Field, ...], frozenset[str]]] = {}


def _names(fields: tuple[Field, ...]) -> frozenset[str]:
    """The field names of one message type (kept per schema tuple, which the
    cache holds on to, so an ID is never reused for another tuple)."""
    entry = _NAMES.get(id(fields))
    if entry is None or entry[0] is not fields:
        entry = _NAMES[id(fields)] = (fields, frozenset(f.name for f in fields))
    return entry[1]


def encode(msg: Message, schema: Mapping[str, tuple[Field, ...]]) -> bytes:
    """Validate ``msg`` against ``schema`` and encode it as one CBOR map.

    Validation leaves only types of the UMSG subset, so the C encoder of
    cbor2 writes the same octets as :func:`cbor_encode`, faster.
    """
    if type(msg) is Encoded and msg.from_server == (schema is FROM_SERVER):
        return msg.encoded
    _validate(schema, msg.type, msg.fields)
    unknown = msg.fields.keys() - _names(schema[msg.type])
    if unknown:
        raise UmsgError("malformed", f"{msg.type}: unknown fields {sorted(unknown)}")
    return bytes(cbor2.dumps({"type": msg.type, **msg.fields}))


def decode(
    data: bytes, schema: Mapping[str, tuple[Field, ...]], max_size: int = MAX_MESSAGE
) -> Message:
    """Decode and validate one UMSG message; raise UmsgError (and nothing else)."""
    if len(data) > max_size:
        raise UmsgError("too-large", f"{len(data)} octets, at most {max_size}")
    body = cbor_decode(data)
    if not isinstance(body, dict):
        raise UmsgError("malformed", "a UMSG message is a CBOR map")
    if len(body) > MAX_KEYS:
        raise UmsgError("malformed", f"more than {MAX_KEYS} fields")
    msg_type = body.pop("type", None)
    try:
        _validate(schema, msg_type, body)
    except UmsgError as exc:
        request_id = body.get("id")
        if type(request_id) is int and 0 <= request_id <= MAX_ID:
            exc.id = request_id
        raise
    known = _names(schema[msg_type])
    return Message(msg_type, {k: v for k, v in body.items() if k in known})


def encode_from_client(msg: Message) -> bytes:
    """Encode a client -> CRS message."""
    return encode(msg, FROM_CLIENT)


def encode_from_server(msg: Message) -> bytes:
    """Encode a CRS -> client message."""
    return encode(msg, FROM_SERVER)


def decode_from_client(data: bytes, max_size: int = MAX_MESSAGE) -> Message:
    """Decode what a client sent (the CRS side)."""
    return decode(data, FROM_CLIENT, max_size)


def decode_from_server(data: bytes, max_size: int = MAX_MESSAGE) -> Message:
    """Decode what the CRS sent (the client side)."""
    return decode(data, FROM_SERVER, max_size)


def attach_signed_octets(nonce: bytes, account: str, uri: str, period: str) -> bytes:
    """The octets a client signs to prove an attach (docs/umsg.md, "Attach")."""
    return b"\0".join(
        (
            b"umsg.1 attach",
            nonce,
            account.encode("ascii"),
            uri.encode("ascii"),
            period.encode("ascii"),
        )
    )
