"""The CIG's mailbox messages (sans-IO): the manual's format, and which mailbox.

The CIG manual's "Text message interface" chapter defines a message file:
UTF-8, LF line endings, no line over 1,000 octets, a header of ``NAME:
VALUE`` lines, an empty line, a body.  :func:`build` writes one for a
secure user's message, the header names in this order::

    To, From, Date, Content-Type, Content-Transfer-Encoding,
    Auto-Submitted, X-Responder-Type, X-Sender-URI, X-Sender-Domain

``To`` and ``From`` are the translated addresses in ``<`` ``>``; ``Date``
is RFC 5322 ``date-time`` (``26 Nov 2015 17:15:44 +0000``); the body is
``text/plain; charset="UTF-8"`` (``8bit``, or ``base64`` when the text has
a line too long for the format, a carriage return or a NUL), or, with
attachments, ``multipart/mixed`` with the text first and each attachment
in ``base64`` with ``Content-Disposition: attachment; filename="..."``.

:func:`parse` reads a file of that format (both content types; other
headers are ignored) and answers anything else with :class:`MailError`,
whose ``reason`` (one of :data:`REASONS`) goes into the quarantine log.

:func:`write_targets` and :func:`read_route` apply a mailbox's
``map_from`` and ``map_to`` translate maps in the two directions.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Sequence
from typing import Literal, get_args

import attrs

from cryptify.config.cig_model import Mailbox, TranslateMap
from cryptify.protocols.message_payload import Attachment, MessageBody, PayloadError
from cryptify.protocols.umsg import MAX_CONTENT, TEL_EXT, base_uri

#: Octets of a line, its LF not counted, that the format allows (the manual: 1,000).
MAX_LINE = 1000
#: Octets of a line, LF not counted, that :func:`build` writes at most (RFC 5322's 998).
WRITE_LINE = 998
#: Octets of a mailbox file that :func:`parse` reads at most: a message as
#: large as a post can carry, base64 and headers included, fits.
MAX_FILE = 128 * 1024
#: Header lines a file may have (other headers are ignored, but counted).
MAX_HEADERS = 200
#: Parts of a multipart body (the text and the attachments).
MAX_PARTS = 1 + 16
#: base64 line length in what we write.
BASE64_LINE = 76

Reason = Literal[
    "oversized",
    "charset",
    "long-line",
    "malformed",
    "content-type",
    "encoding",
    "attachment",
    "no-route",
]
REASONS: tuple[Reason, ...] = get_args(Reason)

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_TEL_EXT = re.compile(r"\A" + TEL_EXT + r"\Z")
_HEADER = re.compile(r"\A([!-9;-~]+)[ \t]*:[ \t]*(.*)\Z", re.DOTALL)
_BOUNDARY = re.compile(r"\A[0-9A-Za-z'()+_,./:=? -]{1,70}\Z")
_NOT_HEADER_SAFE = re.compile(r"[\x00-\x1f\x7f]")
_PARAM = re.compile(r'\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)\s*;?')


class MailError(ValueError):
    """A message that cannot be written or read in the format; ``reason`` says why."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail


@attrs.frozen
class MailMessage:
    """One message in a mailbox: the addresses as in ``To``/``From`` (inside
    ``<>``), its date (Unix seconds), text and attachments, and the
    CIG's own headers."""

    to: str
    sender: str
    date: int
    body: MessageBody
    sender_uri: str = ""
    sender_domain: str = ""
    auto_submitted: str = "no"
    responder_type: str = "tel-uri"


def format_date(when: float) -> str:
    """RFC 5322 ``date-time`` in UTC, English month names whatever the locale."""
    t = time.gmtime(when)
    return (
        f"{t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


def _header(name: str, value: str) -> str:
    if _NOT_HEADER_SAFE.search(value):
        raise MailError("malformed", f"{name} holds a control character")
    line = f"{name}: {value}"
    if len(line.encode("utf-8")) > WRITE_LINE:
        raise MailError("long-line", f"{name} is longer than a line may be")
    return line + "\n"


def _base64_lines(data: bytes) -> str:
    text = base64.b64encode(data).decode("ascii")
    return "".join(text[i : i + BASE64_LINE] + "\n" for i in range(0, len(text), BASE64_LINE))


def _text_part(text: str) -> tuple[str, str]:
    """(Content-Transfer-Encoding, encoded text with a final LF)."""
    lines = text.split("\n")
    if (
        "\r" in text
        or "\x00" in text
        or any(len(line.encode("utf-8")) > WRITE_LINE for line in lines)
    ):
        return "base64", _base64_lines(text.encode("utf-8"))
    return "8bit", text + "\n"


def _quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build(mail: MailMessage, boundary: str) -> bytes:
    """The file for ``mail`` (``boundary``: random text for a multipart body,
    used only when it occurs nowhere in the text).

    @raise MailError: an address or name that cannot be a header value.
    """
    text = mail.body.text.rstrip("\n")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MailError("charset", "the text is not UTF-8") from None
    head = [_header("To", f"<{mail.to}>"), _header("From", f"<{mail.sender}>")]
    head.append(_header("Date", format_date(mail.date)))
    if not mail.body.attachments:
        encoding, body = _text_part(text)
        head.append(_header("Content-Type", 'text/plain; charset="UTF-8"'))
        head.append(_header("Content-Transfer-Encoding", encoding))
    else:
        if not _BOUNDARY.match(boundary) or boundary in text:
            raise MailError("malformed", "the boundary is not usable for this text")
        head.append(_header("Content-Type", f'multipart/mixed; boundary="{boundary}"'))
        head.append(_header("Content-Transfer-Encoding", "8bit"))
        encoding, encoded = _text_part(text)
        parts = [
            f"--{boundary}\n",
            _header("Content-Type", 'text/plain; charset="UTF-8"'),
            _header("Content-Transfer-Encoding", encoding),
            "\n",
            encoded,
        ]
        for item in mail.body.attachments:
            parts += [
                f"--{boundary}\n",
                _header("Content-Type", item.media_type),
                _header("Content-Transfer-Encoding", "base64"),
                _header("Content-Disposition", f"attachment; filename={_quoted(item.name)}"),
                "\n",
                _base64_lines(item.data),
            ]
        parts.append(f"--{boundary}--\n")
        body = "".join(parts)
    head.append(_header("Auto-Submitted", mail.auto_submitted))
    head.append(_header("X-Responder-Type", mail.responder_type))
    head.append(_header("X-Sender-URI", mail.sender_uri))
    head.append(_header("X-Sender-Domain", mail.sender_domain))
    return ("".join(head) + "\n" + body).encode("utf-8")


# ------------------------------------------------------------------ parsing


def _lines(data: bytes) -> list[str]:
    if len(data) > MAX_FILE:
        raise MailError("oversized", f"over {MAX_FILE} octets")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MailError("charset", "not UTF-8") from None
    if "\x00" in text:
        raise MailError("charset", "holds a NUL character")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out = []
    for line in lines:
        if line.endswith("\r"):
            line = line[:-1]  # tolerated: some delivery agents write CRLF
        if len(line.encode("utf-8")) > MAX_LINE:
            raise MailError("long-line", f"a line is over {MAX_LINE} octets")
        out.append(line)
    return out


def _headers(lines: list[str]) -> tuple[dict[str, str], list[str]]:
    """The header fields (lower-case names; the first of each name) and the body lines."""
    fields: list[tuple[str, str]] = []
    for n, line in enumerate(lines):
        if line == "":
            return dict(reversed(fields)), lines[n + 1 :]
        if line[0] in " \t" or (fields and fields[-1][1].endswith(";") and ":" not in line):
            if not fields:
                raise MailError("malformed", "the header starts with a continuation line")
            name, value = fields[-1]
            fields[-1] = (name, value + " " + line.strip())
            continue
        m = _HEADER.match(line)
        if m is None:
            raise MailError("malformed", "a header line is not NAME: VALUE")
        fields.append((m.group(1).lower(), m.group(2).strip()))
        if len(fields) > MAX_HEADERS:
            raise MailError("malformed", f"more than {MAX_HEADERS} header fields")
    raise MailError("malformed", "no empty line after the header")


def _params(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=b; c="d"`` -> ("type/subtype", {"a": "b", "c": "d"})."""
    head, _, rest = value.partition(";")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            if rest[pos:].strip(" \t;"):
                raise MailError("malformed", "a parameter is not NAME=VALUE")
            break
        raw = m.group(2).strip()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params.setdefault(m.group(1).lower(), raw)
        pos = m.end()
    return head.strip().lower(), params


def _address(fields: dict[str, str], name: str) -> str:
    value = fields.get(name)
    if value is None:
        raise MailError("malformed", f"no {name.title()} header")
    m = re.fullmatch(r"[^<>]*<([^<>]+)>\s*", value) or re.fullmatch(r"([^<>\s]+)", value)
    if m is None:
        raise MailError("malformed", f"{name.title()} is not <ADDRESS>")
    return m.group(1).strip()


def _decode(encoding: str, lines: list[str]) -> bytes:
    encoding = encoding.lower() or "7bit"
    joined = "\n".join(lines)
    if encoding in ("7bit", "8bit", "binary"):
        return joined.encode("utf-8")
    try:
        if encoding == "base64":
            return base64.b64decode("".join(line.strip() for line in lines), validate=True)
        if encoding == "quoted-printable":
            return binascii.a2b_qp(joined.encode("utf-8"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise MailError("encoding", f"bad {encoding} data") from None
    raise MailError("encoding", "Content-Transfer-Encoding is not 7bit, 8bit or base64")


def _text(fields: dict[str, str], lines: list[str]) -> str:
    kind, params = _params(fields.get("content-type", "text/plain"))
    if kind != "text/plain":
        raise MailError("content-type", "the text is not text/plain")
    if params.get("charset", "us-ascii").lower() not in ("utf-8", "us-ascii"):
        raise MailError("charset", "the text's charset is not UTF-8")
    raw = _decode(fields.get("content-transfer-encoding", ""), lines)
    try:
        return raw.decode("utf-8").replace("\r\n", "\n").rstrip("\n")
    except UnicodeDecodeError:
        raise MailError("charset", "the text is not UTF-8") from None


def _parts(lines: list[str], boundary: str) -> list[list[str]]:
    parts: list[list[str]] = []
    current: list[str] | None = None
    for line in lines:
        if line.rstrip() == f"--{boundary}--":
            if current is not None:
                parts.append(current)
            return parts
        if line.rstrip() == f"--{boundary}":
            if current is not None:
                parts.append(current)
            current = []
            if len(parts) >= MAX_PARTS:
                raise MailError("attachment", f"more than {MAX_PARTS - 1} attachments")
        elif current is not None:
            current.append(line)
    raise MailError("malformed", "the multipart body has no closing boundary")


def _attachment(part: list[str]) -> Attachment:
    fields, body = _headers(part)
    media_type, _ = _params(fields.get("content-type", "application/octet-stream"))
    disposition, params = _params(fields.get("content-disposition", ""))
    if disposition != "attachment" or "filename" not in params:
        raise MailError("attachment", "a part is not an attachment with a filename")
    if fields.get("content-transfer-encoding", "").lower() != "base64":
        raise MailError("attachment", "an attachment is not base64")
    try:
        return Attachment(params["filename"], media_type, _decode("base64", body))
    except PayloadError as exc:
        raise MailError("attachment", exc.detail) from None


def parse(data: bytes) -> MailMessage:
    """Read a mailbox file.

    @raise MailError: the first thing found wrong (never anything else).
    """
    fields, body_lines = _headers(_lines(data))
    to, sender = _address(fields, "to"), _address(fields, "from")
    kind, params = _params(fields.get("content-type", "text/plain"))
    if kind == "text/plain":
        body = MessageBody(_text(fields, body_lines))
    elif kind == "multipart/mixed":
        boundary = params.get("boundary", "")
        if not _BOUNDARY.match(boundary):
            raise MailError("malformed", "multipart/mixed without a usable boundary")
        parts = _parts(body_lines, boundary)
        if not parts:
            raise MailError("malformed", "the multipart body has no parts")
        text_fields, text_lines = _headers(parts[0])
        text = _text(text_fields, text_lines)
        body = MessageBody(text, tuple(_attachment(part) for part in parts[1:]))
    else:
        raise MailError("content-type", "Content-Type is not text/plain or multipart/mixed")
    size = len(body.text.encode("utf-8")) + sum(len(a.data) for a in body.attachments)
    if size > MAX_CONTENT:
        raise MailError("oversized", f"the message is over {MAX_CONTENT} octets")
    return MailMessage(to, sender, 0, body)


# ------------------------------------------------------------------ routing


@attrs.frozen
class WriteTarget:
    """A write mailbox that takes a message, with the headers its maps made."""

    mailbox: Mailbox
    to: str
    sender: str


def _maps(tmaps: Sequence[TranslateMap]) -> dict[str, TranslateMap]:
    return {t.name: t for t in tmaps}


def write_targets(
    mailboxes: Sequence[Mailbox], tmaps: Sequence[TranslateMap], sender: str, recipient: str
) -> list[WriteTarget]:
    """Every write mailbox whose ``map_from`` translates ``sender`` and whose
    ``map_to`` translates ``recipient``, in configuration order."""
    by_name = _maps(tmaps)
    found = []
    for box in mailboxes:
        map_from, map_to = by_name.get(box.map_from), by_name.get(box.map_to)
        if map_from is None or map_to is None:
            continue
        translated_from, translated_to = map_from.translate(sender), map_to.translate(recipient)
        if translated_from is not None and translated_to is not None:
            found.append(WriteTarget(box, translated_to, translated_from))
    return found


@attrs.frozen
class ReadRoute:
    """Where a read mailbox's message goes: from the CIG's ``sender`` to ``recipient``."""

    sender: str
    recipient: str


def read_route(
    mailbox: Mailbox, tmaps: Sequence[TranslateMap], mail: MailMessage, cig_uri: str
) -> ReadRoute:
    """``From`` through ``map_from`` to a tel URI of the CIG itself, ``To``
    through ``map_to`` to a tel URI.

    @raise MailError: (reason ``no-route``) when either does not map so.
    """
    by_name = _maps(tmaps)
    map_from, map_to = by_name.get(mailbox.map_from), by_name.get(mailbox.map_to)
    sender = map_from.translate(mail.sender) if map_from is not None else None
    if sender is None or not _TEL_EXT.match(sender) or base_uri(sender) != cig_uri:
        raise MailError("no-route", f"From does not map to a tel URI of {cig_uri}")
    recipient = map_to.translate(mail.to) if map_to is not None else None
    if recipient is None or not _TEL_EXT.match(recipient):
        raise MailError("no-route", "To does not map to a tel URI")
    return ReadRoute(sender, recipient)
