"""Messages across the pool: the frames and their checks (sans-IO).

A post whose recipient's slot another member owns is forwarded to that
member over the pool link (:mod:`cryptify.crs.pool.forward` does the
I/O).  These frame types ride the link (:meth:`PoolLink.send`)::

    {"t": "msg-post", "n": INT, "id": ID, "from": URI, "to": URI,
     "account": ACCOUNT, "kind": KIND, "time": INT, "data": BYTES,
     "scope": SCOPE, "hand": BOOL}
    {"t": "msg-stored", "n": INT, "id": ID, "dup": BOOL}
    {"t": "msg-refused", "n": INT, "code": CODE, "reason": TEXT}
    {"t": "msg-delivered", "from": URI, "message": ID}
    {"t": "msg-gone", "id": ID, "to": URI}
    {"t": "msg-gone-ok", "ids": [ID, ...]}
    {"t": "msg-known", "uris": [URI, ...]}

``msg-post`` asks the peer to store a message durably under the ID and
time it was given where it was first posted, in the sender's retry
``scope`` (so a copy and a retry are one message); ``n`` numbers the
request on the sending side and comes back in the answer: ``msg-stored``
(``dup`` when the scope already held it: the ID is the one stored first)
or ``msg-refused`` with a UMSG error code.  ``hand`` marks a message that
was already acknowledged to its sender (hinted hand-off, a sweep): the
owner stores it whether or not it knows the recipient.
``msg-delivered`` tells the member serving the sender that a message was
delivered (the sender is told when attached there).  ``msg-gone`` tells
the member that forwarded a message that its recipient confirmed it: a
copy that member kept after its forward timed out is dropped there
instead of being delivered a second time; it is sent again until the
member answers ``msg-gone-ok`` (done, durably; :mod:`cryptify.crs.pool.gone`;
at most :data:`MAX_GONE_OK_BATCH` IDs a frame).
``msg-known`` carries URIs that
have attached somewhere in the pool (at most :data:`MAX_KNOWN_BATCH` a
frame), so that every member takes posts for them.

Every field a peer sends is checked before it is used: the exact set of
keys, types, sizes (:data:`~cryptify.crs.messages.store.MAX_CONTENT`
octets of content, URIs as UMSG writes them, IDs and scopes of printable
ASCII of bounded length); anything else raises
:class:`~cryptify.crs.pool.wire.WireError`, which drops the connection.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from cryptify.crs.messages.store import KINDS, MAX_CONTENT, Stored
from cryptify.crs.pool.wire import MAX_NUMBER, WireError
from cryptify.logs import one_line
from cryptify.protocols.umsg import ACCOUNT, TEL_EXT

POST = "msg-post"
STORED = "msg-stored"
REFUSED = "msg-refused"
DELIVERED = "msg-delivered"
GONE = "msg-gone"
GONE_OK = "msg-gone-ok"
KNOWN = "msg-known"

#: Longest message ID, retry scope and refusal reason accepted.
MAX_ID = 64
MAX_SCOPE = 200
MAX_REASON = 200
#: URIs in one ``msg-known`` frame at most.
MAX_KNOWN_BATCH = 256
#: Message IDs in one ``msg-gone-ok`` frame at most.
MAX_GONE_OK_BATCH = 256

_URI = re.compile(TEL_EXT + r"\Z")
_ACCOUNT = re.compile(f"({ACCOUNT})?" + r"\Z")
_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_ID}}}\Z")
_SCOPE = re.compile(rf"[\x21-\x7e]{{1,{MAX_SCOPE}}}\Z")
_CODE = re.compile(r"[a-z][a-z-]{0,31}\Z")


class Unreachable(Exception):
    """The owner did not take the message (no link, no answer, its store out
    of reach): keep it here."""


class NoAnswer(Unreachable):
    """The request was sent and not answered (in time, or before its link
    went down): the owner may have stored it all the same."""


@attrs.frozen
class Post:
    """A ``msg-post`` request: request number, the message, its retry
    scope and whether it is a hand-off (already acknowledged)."""

    n: int
    message: Stored
    hand: bool

    @property
    def scope(self) -> str:
        assert self.message.scope is not None
        return self.message.scope


@attrs.frozen
class StoredReply:
    n: int
    id: str
    dup: bool


@attrs.frozen
class RefusedReply:
    n: int
    code: str
    reason: str


@attrs.frozen
class DeliveredNote:
    sender: str
    message: str


@attrs.frozen
class GoneNote:
    """A message the recipient confirmed at the member that took it."""

    id: str
    recipient: str


# -- encoding -----------------------------------------------------------------


def encode_post(n: int, message: Stored, hand: bool) -> dict[str, object]:
    """The fields of a ``msg-post`` (the message must carry its scope)."""
    if message.scope is None:
        raise ValueError("a forwarded message needs its retry scope")
    return {
        "n": n,
        "id": message.id,
        "from": message.sender,
        "to": message.recipient,
        "account": message.account,
        "kind": message.kind,
        "time": message.time_ms,
        "data": message.data,
        "scope": message.scope,
        "hand": hand,
    }


def encode_stored(n: int, message_id: str, dup: bool) -> dict[str, object]:
    return {"n": n, "id": message_id, "dup": dup}


def encode_refused(n: int, code: str, reason: str) -> dict[str, object]:
    """The fields of a ``msg-refused``: the reason (a store's error, say)
    with what is not printable written as escapes, at most
    :data:`MAX_REASON` characters, as :func:`decode_refused` takes it."""
    return {"n": n, "code": code, "reason": one_line(reason[:MAX_REASON])[:MAX_REASON]}


def encode_delivered(sender: str, message_id: str) -> dict[str, object]:
    return {"from": sender, "message": message_id}


def encode_gone(message_id: str, recipient: str) -> dict[str, object]:
    return {"id": message_id, "to": recipient}


def encode_gone_ok(message_ids: list[str]) -> dict[str, object]:
    if not 1 <= len(message_ids) <= MAX_GONE_OK_BATCH:
        raise ValueError(f"1 to {MAX_GONE_OK_BATCH} IDs a frame")
    return {"ids": list(message_ids)}


def encode_known(uris: list[str]) -> dict[str, object]:
    if not 1 <= len(uris) <= MAX_KNOWN_BATCH:
        raise ValueError(f"1 to {MAX_KNOWN_BATCH} URIs a frame")
    return {"uris": list(uris)}


# -- decoding -----------------------------------------------------------------


def _keys(fields: dict[str, object], keys: set[str], what: str) -> dict[str, Any]:
    if set(fields) != keys:
        missing = sorted(keys - set(fields))
        extra = sorted(str(k) for k in set(fields) - keys)
        raise WireError(f"{what} fields wrong (missing {missing}, unexpected {extra})")
    return fields


def _number(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_NUMBER:
        raise WireError(f"{what} is not a number from 0 to {MAX_NUMBER}")
    return value


def _flag(value: object, what: str) -> bool:
    if type(value) is not bool:
        raise WireError(f"{what} is not true or false")
    return value


def _text(value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or pattern.match(value) is None:
        raise WireError(f"{what} is not valid")
    return value


def message_id(value: object) -> str:
    """A message ID as the wire carries it, checked."""
    return _text(value, _ID, "message id")


def decode_post(fields: dict[str, object]) -> Post:
    f = _keys(
        fields,
        {"n", "id", "from", "to", "account", "kind", "time", "data", "scope", "hand"},
        POST,
    )
    kind = f["kind"]
    if kind not in KINDS:
        raise WireError(f"message kind {str(kind)[:16]!r} unknown")
    data = f["data"]
    if not isinstance(data, bytes):
        raise WireError("message data is not octets")
    if len(data) > MAX_CONTENT:
        raise WireError(f"message data over {MAX_CONTENT} octets")
    if kind == "ack" and not data.isascii():
        raise WireError("an ack is not ASCII")
    message = Stored(
        message_id(f["id"]),
        _text(f["from"], _URI, "sender"),
        _text(f["to"], _URI, "recipient"),
        _text(f["account"], _ACCOUNT, "account"),
        str(kind),
        _number(f["time"], "time"),
        data,
        _text(f["scope"], _SCOPE, "retry scope"),
    )
    return Post(_number(f["n"], "request number"), message, _flag(f["hand"], "hand"))


def decode_stored(fields: dict[str, object]) -> StoredReply:
    f = _keys(fields, {"n", "id", "dup"}, STORED)
    return StoredReply(
        _number(f["n"], "request number"), message_id(f["id"]), _flag(f["dup"], "dup")
    )


def decode_refused(fields: dict[str, object]) -> RefusedReply:
    f = _keys(fields, {"n", "code", "reason"}, REFUSED)
    reason = f["reason"]
    if not isinstance(reason, str) or len(reason) > MAX_REASON or not reason.isprintable():
        raise WireError("refusal reason is not valid")
    return RefusedReply(_number(f["n"], "request number"), _text(f["code"], _CODE, "code"), reason)


def decode_delivered(fields: dict[str, object]) -> DeliveredNote:
    f = _keys(fields, {"from", "message"}, DELIVERED)
    return DeliveredNote(_text(f["from"], _URI, "sender"), message_id(f["message"]))


def decode_gone(fields: dict[str, object]) -> GoneNote:
    f = _keys(fields, {"id", "to"}, GONE)
    return GoneNote(message_id(f["id"]), _text(f["to"], _URI, "recipient"))


def decode_gone_ok(fields: dict[str, object]) -> list[str]:
    """The message IDs a ``msg-gone-ok`` acknowledges."""
    ids = _keys(fields, {"ids"}, GONE_OK)["ids"]
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_GONE_OK_BATCH:
        raise WireError(f"acknowledged IDs are not a list of 1 to {MAX_GONE_OK_BATCH}")
    return [message_id(i) for i in ids]


def decode_known(fields: dict[str, object]) -> list[str]:
    f = _keys(fields, {"uris"}, KNOWN)
    uris = f["uris"]
    if not isinstance(uris, list) or not 1 <= len(uris) <= MAX_KNOWN_BATCH:
        raise WireError(f"known URIs are not a list of 1 to {MAX_KNOWN_BATCH}")
    return [_text(u, _URI, "known URI") for u in uris]


#: Refusals the forwarding member passes on to the sender with their code;
#: ``unavailable`` (the owner's store out of reach) makes it keep the
#: message itself instead (hinted hand-off), and any other code is passed
#: on as ``internal``.
PASSED_ON = frozenset(
    {"inbox-full", "key-reused", "not-found", "too-large", "malformed", "internal"}
)
#: The refusal code after which the forwarding member keeps the message.
UNAVAILABLE = "unavailable"
