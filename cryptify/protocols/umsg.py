"""UMSG: the client <-> CRS message codec (sans-IO).

One UMSG message is one CBOR map (RFC 8949) carried in one binary WebSocket
message.  Every map has a ``type`` (text) and, for requests and their
answers, an ``id`` (unsigned integer chosen by the requester, echoed in the
answer).  The fields of every type, their CBOR types and their limits are
in :data:`FROM_CLIENT` and :data:`FROM_SERVER` (:mod:`cryptify.protocols.umsg_schema`,
re-exported here) and in ``docs/umsg.md``;
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

from collections.abc import Mapping
from typing import Any

import attrs
import cbor2

from . import cbor_subset
from .cbor_subset import MAX_DEPTH as MAX_DEPTH
from .cbor_subset import CborError
from .umsg_schema import ACCOUNT as ACCOUNT
from .umsg_schema import CODEC as CODEC
from .umsg_schema import ERROR_CODES as ERROR_CODES
from .umsg_schema import FROM_CLIENT as FROM_CLIENT
from .umsg_schema import FROM_SERVER as FROM_SERVER
from .umsg_schema import KEY_OCTETS as KEY_OCTETS
from .umsg_schema import MAX_CODECS as MAX_CODECS
from .umsg_schema import MAX_CONTENT as MAX_CONTENT
from .umsg_schema import MAX_ID as MAX_ID
from .umsg_schema import MAX_MIKEY as MAX_MIKEY
from .umsg_schema import MAX_RETRY_AFTER as MAX_RETRY_AFTER
from .umsg_schema import PERIOD as PERIOD
from .umsg_schema import TEL as TEL
from .umsg_schema import TEL_EXT as TEL_EXT
from .umsg_schema import Field as Field
from .umsg_schema import UmsgError as UmsgError
from .umsg_schema import base_uri as base_uri

#: The WebSocket subprotocol of this specification (major version 1).
SUBPROTOCOL = "umsg.1"
#: Revisions of umsg.1 this implementation speaks (attach ``versions``).
REVISIONS = (1,)
#: Largest UMSG message (one WebSocket message) accepted by default, octets.
MAX_MESSAGE = 64 * 1024
#: Most keys in one message map.
MAX_KEYS = 32
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
