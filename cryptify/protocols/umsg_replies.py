"""The CRS's per-message UMSG messages, encoded from templates (sans-IO).

Every stored message costs the CRS three messages of its own: ``posted``
to the sender, ``message`` to the recipient, ``delivered`` to the sender.
:func:`~cryptify.protocols.umsg.encode` would check each against the
whole schema and have cbor2 encode a new map; here the CBOR of the parts
that never change (the map head, the keys, the type) is made once and
only the values are encoded, after checks of the values that may come
from elsewhere (a message ID or a URI from a pool member or an
inter-working peer).  Each function returns an
:class:`~cryptify.protocols.umsg.Encoded` message: its fields, for those
who read them, and its octets (``encoded``), which are exactly what ``encode`` would
write (``tests/test_umsg_replies.py`` compares them, hypothesis).  A
value that fails its check raises :class:`~cryptify.protocols.umsg.UmsgError`,
as ``encode`` would.
"""

from __future__ import annotations

import re
from typing import Any

from .cbor_subset import head, text_item
from .umsg import MAX_CONTENT, MAX_ID, TEL, TEL_EXT, Encoded, UmsgError

_MESSAGE_ID = re.compile(r"[0-9A-Za-z_.:-]{1,64}")
_FROM = re.compile(TEL)
_TO = re.compile(TEL_EXT)
_LARGEST_TIME = 2**53


def _checked(pattern: re.Pattern[str], name: str, value: Any, longest: int) -> str:
    if type(value) is not str or len(value) > longest or pattern.fullmatch(value) is None:
        raise UmsgError("malformed", f"field {name!r}: not a valid {name}")
    return value


_POSTED = head(5, 3) + text_item("type") + text_item("posted") + text_item("id")
_POSTED_MESSAGE = text_item("message")
_DELIVERED = head(5, 2) + text_item("type") + text_item("delivered") + text_item("message")
_MESSAGE_KEYS = {
    name: text_item(name) for name in ("message", "from", "to", "time", "content", "ack", "system")
}
_MESSAGE_TYPE = text_item("type") + text_item("message")


def posted(request_id: int, message_id: str) -> Encoded:
    """``posted {id, message}``: the post ``request_id`` is stored as ``message_id``."""
    if type(request_id) is not int or not 0 <= request_id <= MAX_ID:
        raise UmsgError("malformed", "field 'id': not a request id")
    _checked(_MESSAGE_ID, "message", message_id, 64)
    octets = b"".join((_POSTED, head(0, request_id), _POSTED_MESSAGE, text_item(message_id)))
    return Encoded("posted", {"id": request_id, "message": message_id}, octets)


def delivered(message_id: str) -> Encoded:
    """``delivered {message}``: the recipient has ``message_id``."""
    _checked(_MESSAGE_ID, "message", message_id, 64)
    return Encoded("delivered", {"message": message_id}, _DELIVERED + text_item(message_id))


def message(
    message_id: str,
    sender: str,
    recipient: str,
    time_ms: int,
    content: bytes | None = None,
    ack: str | None = None,
    system: bool = False,
) -> Encoded:
    """``message {message, from, to, time, content | ack [, system]}``, with
    the fields in that order (as :func:`~cryptify.protocols.umsg.message`
    would give them)."""
    keys = _MESSAGE_KEYS
    _checked(_MESSAGE_ID, "message", message_id, 64)
    _checked(_FROM, "from", sender, 20)
    _checked(_TO, "to", recipient, 40)
    if type(time_ms) is not int or not 0 <= time_ms <= _LARGEST_TIME:
        raise UmsgError("malformed", "field 'time': not a time")
    fields: dict[str, Any] = {
        "message": message_id,
        "from": sender,
        "to": recipient,
        "time": time_ms,
    }
    parts = [
        b"",
        _MESSAGE_TYPE,
        keys["message"],
        text_item(message_id),
        keys["from"],
        text_item(sender),
        keys["to"],
        text_item(recipient),
        keys["time"],
        head(0, time_ms),
    ]
    if (content is None) == (ack is None):
        raise UmsgError("malformed", "message: content or ack, not both")
    if content is not None:
        if type(content) is not bytes or len(content) > MAX_CONTENT:
            raise UmsgError("malformed", "field 'content': not content")
        fields["content"] = content
        parts += (keys["content"], head(2, len(content)), content)
    else:
        fields["ack"] = _checked(_MESSAGE_ID, "ack", ack, 64)
        parts += (keys["ack"], text_item(fields["ack"]))
    if system:
        fields["system"] = True
        parts += (keys["system"], b"\xf5")
    parts[0] = head(5, len(fields) + 1)
    return Encoded("message", fields, b"".join(parts))
