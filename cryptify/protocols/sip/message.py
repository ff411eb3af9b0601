"""
SIP messages (RFC 3261 section 7): a sans-IO parser and serializer.

L{parse_datagram} reads one UDP datagram; L{StreamParser} frames messages
on a TCP byte stream by their Content-Length. Both give L{Request} and
L{Response} objects and raise only L{SipParseError}.

What the parser accepts:
 - leading CRLFs are skipped (keep-alives); a datagram of only white
   space is no message at all;
 - header names in any case and compact form (C{v}, C{f}, C{t}, C{i},
   C{m}, C{l}, C{c}, C{k}, C{s}, C{e}, ...), white space before the colon,
   values folded over several lines (unfolded to one space);
 - several values per line in the list-valued headers (L{Headers.values},
   in L{cryptify.protocols.sip.headers});
 - Content-Length: a single non-negative integer. On UDP a missing one
   means "the rest of the datagram", a shorter body is an error and extra
   octets are dropped (RFC 3261 18.3); on a stream it frames the message.

Limits: L{MAX_MESSAGE_BYTES} per message and L{MAX_HEADER_FIELDS}
header lines. L{check_request} / L{check_response} add the semantic
checks a transaction layer needs (mandatory and single headers, CSeq,
Via) before a message is acted on.
"""

from __future__ import annotations

import re

import attrs

from .address import (
    TOKEN,
    CSeq,
    NameAddr,
    Via,
    parse_cseq,
    received_via,
    response_address,
    shared,
    shared_name_addr,
    shared_uri,
    shared_via,
    split_top,
)
from .errors import SipParseError
from .headers import SINGLE_HEADERS, Headers, canonical, header_name
from .reasons import REASONS, reason_phrase

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_HEADER_FIELDS",
    "MAX_MESSAGE_BYTES",
    "REASONS",
    "SIP_VERSION",
    "Headers",
    "Message",
    "Request",
    "Response",
    "StreamParser",
    "check_request",
    "check_response",
    "parse_datagram",
    "reason_phrase",
    "response_to",
    "stamp_received",
]

SIP_VERSION = "SIP/2.0"
#: Largest message (head and body) accepted, in bytes.
MAX_MESSAGE_BYTES = 16 * 1024
#: Most header lines accepted in one message.
MAX_HEADER_FIELDS = 128
#: Largest Content-Length accepted.
MAX_BODY_BYTES = MAX_MESSAGE_BYTES

_VERSION = re.compile(r"SIP/([0-9]+)\.([0-9]+)", re.IGNORECASE)
_HEAD_END = re.compile(rb"\r?\n\r?\n")


# Header values repeat over a call's messages and are read several times
# per message; the parsed forms are immutable, so they are shared.
_cached_cseq = shared(parse_cseq, 4096)
_cached_via = shared_via
_cached_name_addr = shared_name_addr


class _Common:
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def call_id(self) -> str:
        return (self.headers.get("Call-ID") or "").strip()

    @property
    def cseq(self) -> CSeq:
        return _cached_cseq(self.headers.get("CSeq") or "")

    _vias: tuple[Via, ...] | None

    @property
    def vias(self) -> list[Via]:
        # read by the checks, the transaction key and every answer's Contact
        vias = self._vias
        if vias is None:
            vias = tuple([_cached_via(v) for v in self.headers.values("Via")])
            object.__setattr__(self, "_vias", vias)
        return list(vias)

    @property
    def top_via(self) -> Via:
        """The first Via (L{SipParseError} if there is none or it is unreadable)."""
        vias = self._vias
        if vias is None:
            self.vias  # noqa: B018
            vias = self._vias
            assert vias is not None
        if not vias:
            raise SipParseError("Missing Via header")
        return vias[0]

    _from: NameAddr | None
    _to: NameAddr | None

    @property
    def from_(self) -> NameAddr:
        found = self._from
        if found is None:
            found = _cached_name_addr(self.headers.get("From") or "")
            object.__setattr__(self, "_from", found)
        return found

    @property
    def to(self) -> NameAddr:
        found = self._to
        if found is None:
            found = _cached_name_addr(self.headers.get("To") or "")
            object.__setattr__(self, "_to", found)
        return found

    def _head_lines(self) -> list[str]:
        lines = [f"{n}: {v}" for n, v in self.headers.items if n.lower() != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return lines


@attrs.frozen
class Request(_Common):
    """A SIP request."""

    method: str
    uri: str
    headers: Headers = attrs.field(factory=Headers)
    #: Not in the repr: an SDP body may carry SRTP keys (C{a=crypto}).
    body: bytes = attrs.field(default=b"", repr=False)
    _vias: tuple[Via, ...] | None = attrs.field(init=False, default=None, eq=False, repr=False)
    _from: NameAddr | None = attrs.field(init=False, default=None, eq=False, repr=False)
    _to: NameAddr | None = attrs.field(init=False, default=None, eq=False, repr=False)

    def with_body(self, body: bytes) -> Request:
        """This request with C{body} (what C{attrs.evolve} gives, quicker)."""
        return Request(self.method, self.uri, self.headers, body)

    def with_headers(self, headers: Headers) -> Request:
        """This request with C{headers}."""
        return Request(self.method, self.uri, headers, self.body)

    def to_bytes(self) -> bytes:
        """The request on the wire; Content-Length always matches the body."""
        head = "\r\n".join([f"{self.method} {self.uri} {SIP_VERSION}", *self._head_lines()])
        return head.encode("utf-8") + b"\r\n\r\n" + self.body


@attrs.frozen
class Response(_Common):
    """A SIP response."""

    status: int
    reason: str
    headers: Headers = attrs.field(factory=Headers)
    #: Not in the repr: an SDP body may carry SRTP keys (C{a=crypto}).
    body: bytes = attrs.field(default=b"", repr=False)
    _vias: tuple[Via, ...] | None = attrs.field(init=False, default=None, eq=False, repr=False)
    _from: NameAddr | None = attrs.field(init=False, default=None, eq=False, repr=False)
    _to: NameAddr | None = attrs.field(init=False, default=None, eq=False, repr=False)
    #: The header lines as L{response_to} wrote them (each ending in CRLF,
    #: no Content-Length), so that they are not written again.
    _written: str | None = attrs.field(init=False, default=None, eq=False, repr=False)

    def with_body(self, body: bytes) -> Response:
        """This response with C{body}."""
        return Response(self.status, self.reason, self.headers, body)

    def to_bytes(self) -> bytes:
        """The response on the wire; Content-Length always matches the body."""
        written = self._written
        if written is not None:
            return (
                f"{SIP_VERSION} {self.status} {self.reason}\r\n{written}"
                f"Content-Length: {len(self.body)}\r\n\r\n"
            ).encode() + self.body
        head = "\r\n".join([f"{SIP_VERSION} {self.status} {self.reason}", *self._head_lines()])
        return head.encode("utf-8") + b"\r\n\r\n" + self.body


Message = Request | Response


def _parse_headers(lines: list[str]) -> Headers:
    items: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not items:
                raise SipParseError("continuation line before any header")
            name, value = items[-1]
            items[-1] = (name, (value + " " + line.strip(" \t")).strip(" \t"))
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not TOKEN.fullmatch(name):
            raise SipParseError(f"malformed header line {line[:60]!r}")
        items.append((canonical(name), value.strip(" \t")))
        if len(items) > MAX_HEADER_FIELDS:
            raise SipParseError("too many header fields")
    return Headers(tuple(items))


def _content_length(headers: Headers) -> int | None:
    found = headers.get_all("Content-Length")
    if not found:
        return None
    value = found[0].strip()
    if len(found) > 1 and len({v.strip() for v in found}) > 1:
        raise SipParseError("conflicting Content-Length values")
    if not value.isdigit() or not value.isascii():
        raise SipParseError("bad Content-Length")
    if len(value) > 9 or int(value) > MAX_BODY_BYTES:
        raise SipParseError("Content-Length too large", 513)
    return int(value)


def _check_version(version: str) -> None:
    m = _VERSION.fullmatch(version)
    if m is None:
        raise SipParseError(f"bad SIP version {version[:20]!r}")
    if (m.group(1), m.group(2)) != ("2", "0"):
        raise SipParseError("SIP version not supported", 505)


def _start_line(start: str, headers: Headers) -> tuple[str, str, str] | tuple[int, str]:
    if start.upper().startswith("SIP/"):
        version, _, rest = start.partition(" ")
        code, _, reason = rest.partition(" ")
        try:
            _check_version(version)
            if not (
                len(code) == 3 and code.isascii() and code.isdigit() and 100 <= int(code) <= 699
            ):
                raise SipParseError(f"bad status code {code[:20]!r}")
        except SipParseError as exc:
            raise SipParseError(exc.reason, exc.status, headers, False) from None
        return int(code), reason
    try:
        parts = start.split(" ")
        if len(parts) != 3 or not all(parts):
            raise SipParseError("malformed request line")
        method, uri, version = parts
        if not TOKEN.fullmatch(method):
            raise SipParseError("bad method")
        _check_version(version)
        parsed = shared_uri(uri)
        if parsed.scheme in ("sip", "sips") and parsed.headers:
            raise SipParseError("Request-URI with headers")
        if parsed.scheme not in ("sip", "sips", "tel"):
            raise SipParseError("Unsupported URI Scheme", 416)
    except SipParseError as exc:
        raise SipParseError(exc.reason, exc.status, headers, True) from None
    return method, uri, version


def _split_head(data: bytes, start: int) -> tuple[str, int] | None:
    """The head as text and where the body starts, or C{None} if incomplete."""
    end = data.find(b"\r\n\r\n", start)
    # The first CRLF CRLF ends the head, unless a bare LF before it makes
    # an earlier empty line (which the pattern finds).
    if end >= 0 and data.count(b"\n", start, end) == data.count(b"\r\n", start, end):
        body_at = end + 4
    else:
        m = _HEAD_END.search(data, start)
        if m is None:
            return None
        end, body_at = m.start(), m.end()
    try:
        head = data[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("header section is not UTF-8") from None
    return head, body_at


def _fast_headers(lines: list[str]) -> Headers | None:
    """
    The header lines of a head whose lines all ended in CRLF and none of
    which is folded, read in one pass with their lookup index; C{None}
    when a line needs L{_parse_headers} (which gives the error).
    """
    if len(lines) > MAX_HEADER_FIELDS:
        return None
    items: list[tuple[str, str]] = []
    index: dict[str, tuple[str, ...]] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        known = header_name(name) if colon else None
        if known is None:
            return None
        value = value.strip(" \t")
        items.append((known[0], value))
        found = index.get(known[1])
        index[known[1]] = (value,) if found is None else (*found, value)
    return Headers.indexed(tuple(items), index)


def _read_head(head: str) -> tuple[str, Headers]:
    """The start line and header fields of a header section."""
    # The last line's bare CR (from CR CRLF CRLF) is dropped by the line
    # reader, as if it were the line's CRLF; the quick path leaves it to it.
    if (
        head.count("\n") == head.count("\r\n")
        and "\r\n " not in head
        and "\r\n\t" not in head
        and not head.endswith("\r")
    ):
        lines = head.split("\r\n")
        headers = _fast_headers(lines[1:])
        if headers is not None:
            return lines[0], headers
    lines = head.split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    return lines[0], _parse_headers(lines[1:])


def _build(head: str, body: bytes) -> Message:
    start, headers = _read_head(head)
    parsed = _start_line(start, headers)
    if len(parsed) == 2:
        return Response(status=parsed[0], reason=parsed[1], headers=headers, body=body)
    return Request(method=parsed[0], uri=parsed[1], headers=headers, body=body)


def _skip_crlf(data: bytes) -> int:
    i = 0
    while data[i : i + 1] in (b"\r", b"\n") and i < len(data):
        i += 1
    return i


def _head_of(data: bytes) -> tuple[Headers | None, bool]:
    """The headers of an oversized message, if its head is in C{data}."""
    try:
        split = _split_head(data, _skip_crlf(data))
        if split is None:
            return None, True
        message = _build(split[0], b"")
    except SipParseError:
        return None, True
    return message.headers, isinstance(message, Request)


def parse_datagram(data: bytes) -> Message | None:
    """
    Parse one UDP datagram; C{None} for a keep-alive (only CR/LF).

    @raise SipParseError: if it is not an acceptable SIP message.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipParseError("Message Too Large", 513, *_head_of(data[:MAX_MESSAGE_BYTES]))
    start = _skip_crlf(data)
    if start == len(data):
        return None
    split = _split_head(data, start)
    if split is None:
        # Truncated: refuse it, with the headers if they can be read (a
        # 400 needs them).
        split = _split_head(data + b"\r\n\r\n", start)
        assert split is not None
        truncated = _build(split[0], b"")
        raise SipParseError(
            "no empty line after the header section",
            headers=truncated.headers,
            is_request=isinstance(truncated, Request),
        )
    head, body_at = split
    start_line, headers = _read_head(head)
    parsed = _start_line(start_line, headers)
    is_request = len(parsed) == 3
    try:
        length = _content_length(headers)
    except SipParseError as exc:
        raise SipParseError(exc.reason, exc.status, headers, is_request) from None
    body = data[body_at:]
    if length is not None:
        if length > len(body):
            raise SipParseError(
                "body shorter than Content-Length", headers=headers, is_request=is_request
            )
        body = body[:length]
    if len(parsed) == 2:
        return Response(parsed[0], parsed[1], headers, body)
    return Request(parsed[0], parsed[1], headers, body)


@attrs.define
class StreamParser:
    """
    Frames SIP messages on a byte stream (TCP) by Content-Length, which is
    taken as 0 when absent. Keep-alive CRLFs between messages are skipped.
    Once it has raised L{SipParseError} the stream cannot be resynchronized
    and should be closed.
    """

    buffer: bytearray = attrs.field(factory=bytearray)

    def feed(self, data: bytes) -> list[Message]:
        """Add received bytes; return the messages now complete."""
        self.buffer += data
        out: list[Message] = []
        while True:
            start = _skip_crlf(bytes(self.buffer[:2048]))
            if start:
                del self.buffer[:start]
                continue
            if not self.buffer:
                return out
            split = _split_head(bytes(self.buffer[:MAX_MESSAGE_BYTES]), 0)
            if split is None:
                if len(self.buffer) >= MAX_MESSAGE_BYTES:
                    raise SipParseError("Message Too Large", 513)
                return out
            head, body_at = split
            message = _build(head, b"")
            length = _content_length(message.headers) or 0
            if body_at + length > MAX_MESSAGE_BYTES:
                raise SipParseError("Message Too Large", 513)
            if len(self.buffer) < body_at + length:
                return out
            body = bytes(self.buffer[body_at : body_at + length])
            del self.buffer[: body_at + length]
            out.append(message.with_body(body))


_MANDATORY = tuple((name, name.lower()) for name in ("Via", "From", "To", "Call-ID", "CSeq"))
_SINGLE = tuple((name, name.lower()) for name in SINGLE_HEADERS)


def _check_common(message: Message) -> None:
    index = message.headers.by_key()
    for name, key in _MANDATORY:
        found = index.get(key)
        if not found or not found[0]:
            raise SipParseError(f"Missing {name} header")
    for name, key in _SINGLE:
        found = index.get(key)
        if found is not None and len(found) > 1:
            raise SipParseError(f"More than one {name} header")
    message.vias  # noqa: B018 - parse every Via
    message.from_  # noqa: B018
    message.to  # noqa: B018


def check_request(request: Request) -> None:
    """
    The checks a UAS makes before handling a request: mandatory headers
    present (Via, From, To, Call-ID, CSeq), single ones single, values
    well-formed, CSeq method equal to the request method, Max-Forwards a
    number.

    @raise SipParseError: with the status to answer and the headers to
        answer with.
    """
    try:
        _check_common(request)
        cseq = request.cseq
        if cseq.method != request.method:
            raise SipParseError("CSeq method does not match the request")
        max_forwards = request.headers.get("Max-Forwards")
        if max_forwards is not None and not (
            max_forwards.isdigit() and max_forwards.isascii() and len(max_forwards) <= 10
        ):
            raise SipParseError("bad Max-Forwards")
    except SipParseError as exc:
        raise SipParseError(exc.reason, exc.status, request.headers, True) from None


def check_response(response: Response) -> None:
    """
    The checks before a response is matched to a transaction.

    @raise SipParseError: if it cannot be.
    """
    try:
        _check_common(response)
        response.cseq  # noqa: B018
    except SipParseError as exc:
        raise SipParseError(exc.reason, exc.status, response.headers, False) from None


def stamp_received(headers: Headers, source: tuple[str, int]) -> tuple[Headers, tuple[str, int]]:
    """
    The header fields of a request that came from C{source}, with the top
    Via stamped with C{received} and C{rport} (L{received_via}), and where
    a response over UDP goes (L{response_address}). Responses copy the
    Vias, so they carry what was stamped. A top Via that needs no stamp is
    left as it was written; without a readable top Via the headers are
    unchanged and the answer goes back to the source.
    """
    found = headers.by_key().get("via")
    if not found:
        return headers, source
    value = found[0]
    try:
        parts = split_top(value, ",")
        via = shared_via(parts[0])
    except SipParseError:
        return headers, source
    where = response_address(via, source)
    stamped = received_via(via, source)
    if stamped is via:
        return headers, where
    parts[0] = str(stamped)
    return headers.with_value("via", ",".join(parts)), where


#: What every response to a request copies from it (RFC 3261 8.2.6.2): its
#: Vias and From, its To, its Call-ID and CSeq, as header fields and as
#: written lines (before the To, after it), made once per request. A plain
#: tuple of strings: the collector stops following it after one pass.
_Copied = tuple[tuple[tuple[str, str], ...], str | None, tuple[tuple[str, str], ...], str, str]


def _copied(headers: Headers) -> _Copied:
    index = headers.by_key()
    before = tuple([("Via", v) for v in index.get("via", ())])
    after: list[tuple[str, str]] = []
    found = index.get("from")
    if found:
        before += (("From", found[0]),)
    for name, key in (("Call-ID", "call-id"), ("CSeq", "cseq")):
        found = index.get(key)
        if found:
            after.append((name, found[0]))
    to = index.get("to")
    return (
        before,
        to[0] if to else None,
        tuple(after),
        "".join([f"{n}: {v}\r\n" for n, v in before]),
        "".join([f"{n}: {v}\r\n" for n, v in after]),
    )


def _with_tag(to: str, tag: str) -> str:
    """C{to} (a To value) with C{tag}, if it has no tag; as written otherwise."""
    try:
        parsed = shared_name_addr(to)
    except SipParseError:
        return to
    if parsed.tag is not None:
        return to
    # The request's To as it was, plus the tag; but a lone ';' after the
    # URI (which the parser lets by) would make ';;tag=', an empty param.
    if parsed.bracketed and not to.rstrip(" \t").endswith(";"):
        return f"{to};tag={tag}"
    return str(parsed.with_tag(tag))


def response_to(
    headers: Headers,
    status: int,
    reason: str | None = None,
    to_tag: str | None = None,
    extra: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
) -> Response:
    """
    A response to the request whose header fields are C{headers}: Via,
    From, To, Call-ID and CSeq copied (RFC 3261 8.2.6.2), a To tag added
    when C{to_tag} is given and the To has none.
    """
    before_to, to, after_to, before_text, after_text = headers.derived(_copied)
    if to is None:
        items = (*before_to, *after_to, *extra)
        to_text = ""
    else:
        if to_tag is not None:
            to = _with_tag(to, to_tag)
        items = (*before_to, ("To", to), *after_to, *extra)
        to_text = f"To: {to}\r\n"
    response = Response(status, reason or reason_phrase(status), Headers(items), body)
    written = "".join([f"{n}: {v}\r\n" for n, v in extra if n.lower() != "content-length"])
    object.__setattr__(response, "_written", f"{before_text}{to_text}{after_text}{written}")
    return response
