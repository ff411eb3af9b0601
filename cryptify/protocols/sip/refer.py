"""
REFER's pieces (RFC 3515), sans-IO: the Refer-To header, the Replaces
header an attended transfer carries in it (RFC 3891), and the
message/sipfrag bodies of the NOTIFYs that report a transfer's progress.

Every parser raises only L{ReferError} (a L{SipParseError}, status 400).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import attrs

from .address import parse_name_addr, parse_uri
from .errors import SipParseError

#: The longest Refer-To value read.
MAX_REFER_TO = 1024
#: The longest sipfrag body read.
MAX_SIPFRAG = 4096
SIPFRAG = "message/sipfrag;version=2.0"
_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9]) ?([^\r\n]*)\Z")
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")


class ReferError(SipParseError):
    """A Refer-To, Replaces or sipfrag that cannot be used."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, 400)


@attrs.frozen
class Replaces:
    """RFC 3891: the dialog the new INVITE replaces, as the target knows it."""

    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False

    def render(self) -> str:
        early = ";early-only" if self.early_only else ""
        return f"{self.call_id};to-tag={self.to_tag};from-tag={self.from_tag}{early}"


@attrs.frozen
class ReferTarget:
    """Where a REFER sends us: the URI to INVITE, and a Replaces to put in it."""

    uri: str
    replaces: Replaces | None = None


def parse_replaces(value: str) -> Replaces:
    """A Replaces header value: C{call-id;to-tag=..;from-tag=..[;early-only]}."""
    parts = [p.strip() for p in value.split(";")]
    call_id = parts[0]
    if not call_id or len(call_id) > 256 or any(c.isspace() for c in call_id):
        raise ReferError("Replaces without a usable Call-ID")
    tags: dict[str, str] = {}
    early = False
    for part in parts[1:]:
        name, eq, given = part.partition("=")
        name = name.strip().lower()
        if name == "early-only" and not eq:
            early = True
        elif name in ("to-tag", "from-tag") and eq and _TOKEN.match(given.strip()):
            if name in tags:
                raise ReferError(f"Replaces with {name} twice")
            tags[name] = given.strip()
        elif not name or (eq and not given.strip()):
            raise ReferError("Replaces with an empty parameter")
    if "to-tag" not in tags or "from-tag" not in tags:
        raise ReferError("Replaces without to-tag and from-tag")
    return Replaces(call_id, tags["to-tag"], tags["from-tag"], early)


def parse_refer_to(value: str) -> ReferTarget:
    """
    A Refer-To header value: a SIP or SIPS URI in name-addr or addr-spec
    form; its URI headers are dropped except C{Replaces}, which is read.
    """
    if len(value) > MAX_REFER_TO:
        raise ReferError("Refer-To too long")
    try:
        uri = parse_name_addr(value).uri
    except SipParseError as exc:
        raise ReferError(f"Refer-To: {exc.reason}") from None
    base, _, headers = uri.partition("?")
    try:
        parsed = parse_uri(base)
    except SipParseError as exc:
        raise ReferError(f"Refer-To: {exc.reason}") from None
    if parsed.scheme not in ("sip", "sips") or not parsed.host:
        raise ReferError("Refer-To is not a SIP URI")
    replaces = None
    for header in headers.split("&") if headers else ():
        name, eq, given = header.partition("=")
        if name.strip().lower() == "replaces":
            if not eq or replaces is not None:
                raise ReferError("Refer-To with an unusable Replaces")
            replaces = parse_replaces(unquote(given))
    return ReferTarget(base, replaces)


def sipfrag(status: int, reason: str) -> bytes:
    """A NOTIFY body: the status line of the referred request's response."""
    reason = "".join(c for c in reason if c.isprintable())[:100]
    return f"SIP/2.0 {status} {reason}\r\n".encode()


def parse_sipfrag(body: bytes) -> tuple[int, str]:
    """The status and reason of a sipfrag body's status line."""
    if len(body) > MAX_SIPFRAG:
        raise ReferError("sipfrag too long")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ReferError("sipfrag is not UTF-8") from None
    line = text.split("\n", 1)[0].rstrip("\r")
    found = _STATUS_LINE.match(line)
    if found is None:
        raise ReferError("sipfrag without a status line")
    return int(found.group(1)), found.group(2)
