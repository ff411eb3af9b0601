"""The strict CBOR subset UMSG is written in (RFC 8949), sans-IO.

Unsigned and negative integers (up to 64 bits), byte strings, UTF-8 text
strings, arrays, maps with text keys (no duplicates), ``true``, ``false``
and ``null``; definite lengths only; no tags, no floats; nesting at most
:data:`MAX_DEPTH` deep; every integer and length in its shortest form (RFC
8949 section 4.2.1, preferred serialization), so that one value has one
encoding.  :func:`decode` accepts only that and raises :class:`CborError`,
saying what is wrong, for anything else; :func:`encode` writes only that.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import cbor2

#: Deepest nesting accepted.
MAX_DEPTH = 4


class CborError(ValueError):
    """Octets (or a value) outside the subset; the message says what is wrong."""


def head(major: int, value: int) -> bytes:
    """The shortest head of an item of ``major`` type with argument ``value``
    (a length, a count or the integer itself)."""
    if value < 24:
        return bytes((major << 5 | value,))
    if value < 0x100:
        return bytes((major << 5 | 24, value))
    if value < 0x10000:
        return bytes((major << 5 | 25,)) + struct.pack(">H", value)
    if value < 0x100000000:
        return bytes((major << 5 | 26,)) + struct.pack(">I", value)
    return bytes((major << 5 | 27,)) + struct.pack(">Q", value)


def text_item(value: str) -> bytes:
    """A text string item."""
    raw = value.encode("utf-8")
    return head(3, len(raw)) + raw


def encode(value: object) -> bytes:
    """Encode ``value`` in the subset (raises :class:`CborError` otherwise)."""
    out: list[bytes] = []
    _encode_into(value, out, 0)
    return b"".join(out)


def _encode_into(value: object, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CborError("nesting too deep")
    if value is True:
        out.append(b"\xf5")
    elif value is False:
        out.append(b"\xf4")
    elif value is None:
        out.append(b"\xf6")
    elif isinstance(value, int):
        if 0 <= value < 2**64:
            out.append(head(0, value))
        elif -(2**64) <= value < 0:
            out.append(head(1, -1 - value))
        else:
            raise CborError("integer out of range")
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out.append(head(2, len(raw)))
        out.append(raw)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(head(3, len(raw)))
        out.append(raw)
    elif isinstance(value, list | tuple):
        out.append(head(4, len(value)))
        for item in value:
            _encode_into(item, out, depth + 1)
    elif isinstance(value, Mapping):
        out.append(head(5, len(value)))
        for key, item in value.items():
            if not isinstance(key, str):
                raise CborError("map keys must be text")
            _encode_into(key, out, depth + 1)
            _encode_into(item, out, depth + 1)
    else:
        raise CborError(f"cannot encode {type(value).__name__}")


_SIZES = {24: 1, 25: 2, 26: 4, 27: 8}
#: The smallest argument each additional-information size may carry: a
#: smaller one had a shorter head (RFC 8949 section 4.2.1, preferred
#: serialization), and is refused.
_SMALLEST = {24: 24, 25: 1 << 8, 26: 1 << 16, 27: 1 << 32}


def decode(data: bytes) -> object:
    """Decode one complete item of the subset; raise :class:`CborError`.

    cbor2's C decoder goes first: when what it decoded is made of the
    subset's types only and encodes back to exactly ``data`` (so ``data``
    was minimal, definite, without duplicate keys, tags, floats or trailing
    octets), that is the answer.  Anything else goes through the strict
    decoder below, which says what is wrong.
    """
    view = bytes(data)
    try:
        value = cbor2.loads(view)
        if _plain(value, 0) and cbor2.dumps(value) == view:
            return value
    except Exception:  # noqa: S110 -- the strict decoder below says what is wrong
        pass
    value, end = _decode_at(view, 0, 0)
    if end != len(view):
        raise CborError("trailing octets after the CBOR item")
    return value


def _plain(value: object, depth: int) -> bool:
    """Whether ``value`` holds only what :func:`_decode_at` can produce."""
    if depth > MAX_DEPTH:
        return False
    kind = type(value)
    if kind is str or kind is bytes or kind is bool or value is None:
        return True
    if isinstance(value, int) and kind is int:
        return bool(-(2**64) <= value < 2**64)
    if isinstance(value, dict) and kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _plain(item, depth + 1):
                return False
        return True
    if isinstance(value, list) and kind is list:
        return all(_plain(item, depth + 1) for item in value)
    return False


def _decode_at(data: bytes, pos: int, depth: int) -> tuple[object, int]:
    if depth > MAX_DEPTH:
        raise CborError("nesting too deep")
    if pos >= len(data):
        raise CborError("truncated CBOR")
    initial = data[pos]
    pos += 1
    major, info = initial >> 5, initial & 0x1F
    if major == 7:
        simple = {20: False, 21: True, 22: None}
        if info in simple:
            return simple[info], pos
        raise CborError("floats and other simple values are not allowed")
    if info < 24:
        arg = info
    elif info in _SIZES:
        size = _SIZES[info]
        if pos + size > len(data):
            raise CborError("truncated CBOR")
        arg = int.from_bytes(data[pos : pos + size], "big")
        pos += size
        if arg < _SMALLEST[info]:
            raise CborError("integers and lengths must use their shortest form")
    else:
        raise CborError("indefinite lengths are not allowed")
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major in (2, 3):
        if arg > len(data) - pos:
            raise CborError("truncated CBOR string")
        raw = data[pos : pos + arg]
        pos += arg
        if major == 2:
            return raw, pos
        try:
            return raw.decode("utf-8"), pos
        except UnicodeDecodeError:
            raise CborError("text is not UTF-8") from None
    if major == 4:
        if arg > len(data) - pos:
            raise CborError("truncated CBOR array")
        items: list[object] = []
        for _ in range(arg):
            item, pos = _decode_at(data, pos, depth + 1)
            items.append(item)
        return items, pos
    if major == 5:
        if arg > (len(data) - pos) // 2:
            raise CborError("truncated CBOR map")
        result: dict[str, object] = {}
        for _ in range(arg):
            key, pos = _decode_at(data, pos, depth + 1)
            if not isinstance(key, str):
                raise CborError("map keys must be text")
            if key in result:
                raise CborError(f"duplicate key {key!r}")
            result[key], pos = _decode_at(data, pos, depth + 1)
        return result, pos
    raise CborError("CBOR tags are not allowed")
