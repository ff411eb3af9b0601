"""Cheap UMSG frames for load generators (bench/messages.py), sans-IO.

A load generator must cost much less per message than the server it
measures.  The reference client (:mod:`cryptify.client.connection`)
builds a :class:`~cryptify.protocols.umsg.Message`, validates and encodes
it, masks it with a fresh random key and goes through Twisted's TLS for
every message; here the octets of a ``post`` are made once per
sender/recipient pair and only the changing parts are joined in:

- :class:`PostTemplate`: one WebSocket frame carrying ``post {id, to,
  content [, to-account]}``; per message only the request ``id`` (its
  shortest CBOR form) and the content are put in;
- :func:`delivered_frame`: ``delivered {message}`` for a message ID;
- :class:`ServerFrames`: splits what the CRS writes (unmasked, final,
  unfragmented binary frames, as the CRS writes them) into payloads.

The frames are masked with the all-zero key: RFC 6455 requires a client
to mask and a server to unmask (which the CRS does the same whatever the
key); a zero key makes the masked payload equal the payload, so no XOR is
spent on the generator's side.  That is for a load generator only (the
key must not be predictable in a real client, RFC 6455 section 10.3).
The frames are valid UMSG: ``tests/test_loadgen.py`` decodes them with the
CRS's own frame and message decoders.
"""

from __future__ import annotations

import struct

from cryptify.protocols.cbor_subset import head, text_item

#: Zero masking key (see the module docstring).
_ZERO_KEY = b"\x00\x00\x00\x00"
_BINARY_FINAL = 0x82
_MASKED = 0x80


class FrameError(ValueError):
    """The CRS wrote something a load generator does not expect (a close,
    a fragmented or masked frame)."""


#: ``id`` in its shortest form for the small request ids (most of a run's).
_SMALL_IDS = [head(0, n) for n in range(0x10000)]


def _frame_header(size: int) -> bytes:
    """A final binary client frame's header (with the zero key) for ``size`` octets."""
    if size < 126:
        return bytes((_BINARY_FINAL, _MASKED | size)) + _ZERO_KEY
    if size < 0x10000:
        return bytes((_BINARY_FINAL, _MASKED | 126)) + struct.pack(">H", size) + _ZERO_KEY
    return bytes((_BINARY_FINAL, _MASKED | 127)) + struct.pack(">Q", size) + _ZERO_KEY


def _client_frame(payload: bytes) -> bytes:
    return _frame_header(len(payload)) + payload


class PostTemplate:
    """``post`` frames from one sender to one recipient with ``size``-octet content.

    ``frame(request_id, content)`` returns the whole WebSocket frame; the
    content must be ``size`` octets.
    """

    def __init__(self, to: str, size: int, to_account: str | None = None) -> None:
        fields = 5 if to_account is not None else 4
        start = head(5, fields) + text_item("type") + text_item("post")
        start += text_item("to") + text_item(to)
        if to_account is not None:
            start += text_item("to-account") + text_item(to_account)
        self.size = size
        #: Everything before the content's octets, and the ``id`` key after them.
        self._before = start + text_item("content") + head(2, size)
        self._id_key = text_item("id")
        self._fixed = len(self._before) + size + len(self._id_key)
        # the frame header for each length the id's encoding may give
        self._headers: dict[int, bytes] = {}

    def frame(self, request_id: int, content: bytes) -> bytes:
        encoded = _SMALL_IDS[request_id] if request_id < 0x10000 else head(0, request_id)
        payload_size = self._fixed + len(encoded)
        header = self._headers.get(payload_size)
        if header is None:
            header = self._headers[payload_size] = _frame_header(payload_size)
        return b"".join((header, self._before, content, self._id_key, encoded))


_DELIVERED_HEAD = head(5, 2) + text_item("type") + text_item("delivered") + text_item("message")


def delivered_frame(message_id: str) -> bytes:
    """``delivered {message}`` as one client frame."""
    return _client_frame(_DELIVERED_HEAD + text_item(message_id))


class ServerFrames:
    """Payloads of the frames the CRS writes, from octets cut anywhere.

    Pings (the CRS's keep-alive, after 20 minutes of silence) are dropped,
    a close or anything else unexpected raises :class:`FrameError`.
    """

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._rest + data if self._rest else data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            first, size = buf[pos], buf[pos + 1]
            if size & _MASKED:
                raise FrameError("a masked frame from the CRS")
            start = pos + 2
            if size == 126:
                if end - pos < 4:
                    break
                size = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            elif size == 127:
                if end - pos < 10:
                    break
                (size,) = struct.unpack_from(">Q", buf, pos + 2)
                start = pos + 10
            if end - start < size:
                break
            if first == _BINARY_FINAL:
                out.append(buf[start : start + size])
            elif first != 0x89:  # a ping: not answered, a bench run is short
                raise FrameError(f"unexpected frame {first:#x} from the CRS")
            pos = start + size
        self._rest = buf[pos:]
        return out
