"""SIP MESSAGE (RFC 3428) on the CIG: what a PBX's MESSAGE may carry, and the answers.

Pure logic, used by the SIF (:meth:`~cryptify.cig.sif.core.Sif._message`)
and the mailboxes (:class:`~cryptify.cig.mail.wiring.MailDesk`):

- :func:`text_of` checks a MESSAGE's ``Content-Type`` and body: only
  ``text/plain`` (415 with ``Accept: text/plain`` otherwise), in UTF-8 or
  US-ASCII (415), at most :data:`MAX_SIP_TEXT` octets (413), and gives
  the text.
- :func:`post_key` derives the key of the CRS post from the request's
  identity (Call-ID, From tag, CSeq) and its octets, so the PBX sending
  the same request again after a 503 of ours (or the transaction layer
  missing a retransmission) falls in the same retry scope and is stored
  once.
- :class:`SipAnswer` is the status (and ``Retry-After``) a MESSAGE is
  answered with once the CRS has said what it did with the post.
"""

from __future__ import annotations

import hashlib

import attrs

#: Longest text a MESSAGE from the PBX may carry, in octets (half of the largest
#: SIP message the CIG reads; a UMSG post could carry more).
MAX_SIP_TEXT = 8 * 1024
#: Longest MESSAGE the CIG sends over UDP (RFC 3428 section 9); larger ones need TCP or TLS.
MAX_UDP_MESSAGE = 1300
#: Seconds the PBX is asked to wait before sending a MESSAGE again (Retry-After).
RETRY_AFTER = 30
#: The only media type taken, and what the CIG sends.
TEXT_PLAIN = "text/plain"
OUR_CONTENT_TYPE = "text/plain;charset=UTF-8"
#: Longest Content-Type value looked at.
MAX_CONTENT_TYPE = 256
_CHARSETS = ("utf-8", "utf8", "us-ascii", "ascii")
_TOKEN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")


class SipTextError(Exception):
    """A MESSAGE the CIG does not take: the status to answer and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@attrs.frozen
class SipAnswer:
    """The final status for a MESSAGE, and ``Retry-After`` seconds if any."""

    status: int
    retry_after: int | None = None
    why: str = ""


def _token(value: str) -> bool:
    return bool(value) and all(c in _TOKEN for c in value)


def media_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` (lower case) and the parameters (names lower case) of a Content-Type.

    @raise SipTextError: 400 for a value that is not ``type/subtype *(;name=value)``.
    """
    if len(value) > MAX_CONTENT_TYPE:
        raise SipTextError(400, "Content-Type too long")
    head, *params = value.split(";")
    kind, slash, sub = head.strip().partition("/")
    if not slash or not _token(kind) or not _token(sub):
        raise SipTextError(400, "Content-Type is not type/subtype")
    found: dict[str, str] = {}
    for param in params:
        if not param.strip():
            continue  # "text/plain;" as some agents write it
        name, equals, raw = param.strip().partition("=")
        name = name.strip().lower()
        raw = raw.strip()
        if not equals or not _token(name):
            raise SipTextError(400, "Content-Type parameter is not name=value")
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1]
            if '"' in raw or "\\" in raw:
                raise SipTextError(400, "Content-Type parameter is not name=value")
        elif not _token(raw):
            raise SipTextError(400, "Content-Type parameter is not name=value")
        found[name] = raw
    return f"{kind.lower()}/{sub.lower()}", found


def text_of(content_type: str | None, body: bytes) -> str:
    """The text of a MESSAGE from the PBX.

    @raise SipTextError: 413 for a body over :data:`MAX_SIP_TEXT` octets,
        415 for a media type other than ``text/plain``, another charset,
        or octets that are not in it; 400 for an unreadable Content-Type.
    """
    if len(body) > MAX_SIP_TEXT:
        raise SipTextError(413, f"text over {MAX_SIP_TEXT} octets")
    kind, params = media_type(content_type if content_type is not None else TEXT_PLAIN)
    if kind != TEXT_PLAIN:
        raise SipTextError(415, f"{kind} is not taken, only {TEXT_PLAIN}")
    charset = params.get("charset", "utf-8").lower()
    if charset not in _CHARSETS:
        raise SipTextError(415, f"charset {charset} is not taken, only UTF-8")
    try:
        text = body.decode("ascii" if "ascii" in charset else "utf-8")
    except UnicodeDecodeError:
        raise SipTextError(415, f"the text is not {charset}") from None
    if "\x00" in text:
        raise SipTextError(415, "the text holds a NUL character")
    return text


def post_key(call_id: str, from_tag: str, cseq: str, body: bytes) -> bytes:
    """The CRS post's key for one MESSAGE request (16 octets)."""
    digest = hashlib.sha256(b"cryptify cig sip message v1\x00")
    for part in (call_id.encode(), from_tag.encode(), cseq.encode(), body):
        digest.update(len(part).to_bytes(4, "big") + part)
    return digest.digest()[:16]


def answer_for(code: str | None) -> SipAnswer:
    """The answer to the PBX for the CRS's answer to the post (None: no answer came)."""
    if code in ("posted", "key-reused"):
        return SipAnswer(202)
    if code == "not-found":
        return SipAnswer(404, why="no such secure user")
    if code == "too-large":
        return SipAnswer(413, why="too large for the CRS")
    if code == "malformed":
        return SipAnswer(400, why="the CRS refused the post as malformed")
    return SipAnswer(503, RETRY_AFTER, why=f"the CRS did not store it ({code or 'no answer'})")
