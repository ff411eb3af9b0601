"""
The structured header values the SIP core needs (RFC 3261 section 25):
URIs, name-addr (From, To, Contact, Route), Via and CSeq.

Each parser takes the field value as text (already unfolded) and returns
a frozen object, or raises L{SipParseError}. They accept the linear white
space RFC 3261 allows around C{/ ; = : ,} and keep unknown parameters.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from typing import TypeVar

import attrs

from .errors import SipParseError

#: Largest CSeq number (RFC 3261 8.1.1.5: less than 2**31).
MAX_CSEQ = 2**31 - 1
TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_LWS = " \t"

Params = tuple[tuple[str, str | None], ...]


def split_top(value: str, sep: str) -> list[str]:
    """
    Split C{value} on C{sep} where it is outside quoted strings and C{<...>}.
    """
    if '"' not in value and "<" not in value:
        return value.split(sep)
    parts: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    start = 0
    for i, c in enumerate(value):
        if quoted:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                quoted = False
            continue
        if c == '"':
            quoted = True
        elif c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        elif c == sep and depth == 0:
            parts.append(value[start:i])
            start = i + 1
    if quoted:
        raise SipParseError("unbalanced quotes")
    parts.append(value[start:])
    return parts


def parse_params(text: str) -> Params:
    """
    C{;name=value;flag} (the leading C{;} already removed) into pairs.
    Values may be quoted strings; names are tokens.
    """
    out: list[tuple[str, str | None]] = []
    if not text.strip(_LWS):
        return ()
    for item in split_top(text, ";"):
        name, eq, val = item.partition("=")
        name = name.strip(_LWS)
        if not TOKEN.fullmatch(name):
            raise SipParseError(f"bad parameter {item.strip()!r}")
        if eq:
            val = val.strip(_LWS)
            if not val:
                raise SipParseError(f"empty value for parameter {name!r}")
            out.append((name.lower(), val))
        else:
            out.append((name.lower(), None))
    return tuple(out)


def render_params(params: Params) -> str:
    """Pairs back to C{;name=value;flag} text."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def param(params: Params, name: str) -> str | None:
    """The value of parameter C{name} (C{""} for a flag), or C{None}."""
    for k, v in params:
        if k == name:
            return "" if v is None else v
    return None


@attrs.frozen
class Uri:
    """
    A SIP, SIPS or TEL URI, or (opaquely) any other absolute URI.

    For C{sip}/C{sips}: C{user} (with any password), C{host}, C{port},
    C{params} and C{headers} (the text after C{?}). For C{tel}: C{user}
    is the number and C{params} its parameters. Other schemes keep their
    text in C{opaque}.
    """

    scheme: str
    user: str | None = None
    host: str = ""
    port: int | None = None
    params: Params = ()
    headers: str = ""
    opaque: str = ""

    def __str__(self) -> str:
        if self.scheme in ("sip", "sips"):
            user = f"{self.user}@" if self.user is not None else ""
            port = f":{self.port}" if self.port is not None else ""
            headers = f"?{self.headers}" if self.headers else ""
            return f"{self.scheme}:{user}{self.host}{port}{render_params(self.params)}{headers}"
        if self.scheme == "tel":
            return f"tel:{self.user or ''}{render_params(self.params)}"
        return f"{self.scheme}:{self.opaque}"

    def param(self, name: str) -> str | None:
        """The URI parameter C{name}, if present."""
        return param(self.params, name)


_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?::([0-9]{1,5}))?")
_USER_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%:]*")


def parse_uri(text: str) -> Uri:
    """
    Parse an absolute URI with no surrounding white space.

    @raise SipParseError: 400 for a malformed URI.
    """
    scheme, colon, rest = text.partition(":")
    if not colon or not SCHEME.fullmatch(scheme):
        raise SipParseError(f"bad URI {text[:80]!r}")
    if any(c in text for c in ' \t\r\n<>"') or not rest:
        raise SipParseError(f"bad URI {text[:80]!r}")
    scheme = scheme.lower()
    if scheme == "tel":
        number, _, params = rest.partition(";")
        if not number:
            raise SipParseError("empty telephone number")
        return Uri(scheme, user=number, params=parse_params(params))
    if scheme not in ("sip", "sips"):
        return Uri(scheme, opaque=rest)
    # Neither parameters nor headers may hold a bare '@'; the user part may
    # hold '?' and ';'.
    user: str | None = None
    if "@" in rest:
        user, _, rest = rest.rpartition("@")
        if not _USER_CHARS.fullmatch(user):
            raise SipParseError("bad characters in URI user part")
    rest, _, headers = rest.partition("?")
    hostport, _, params = rest.partition(";")
    m = _HOST.fullmatch(hostport)
    if m is None:
        raise SipParseError(f"bad host in URI {text[:80]!r}")
    port = int(m.group(2)) if m.group(2) else None
    if port is not None and port > 65535:
        raise SipParseError("URI port out of range")
    return Uri(
        scheme,
        user=user,
        host=m.group(1).lower(),
        port=port,
        params=parse_params(params),
        headers=headers,
    )


@attrs.frozen
class NameAddr:
    """
    From, To, Contact, Route and Record-Route values: an optional display
    name, the URI (as text, exactly as sent) and the header parameters.
    """

    uri: str
    display: str = ""
    params: Params = ()
    bracketed: bool = True

    @property
    def tag(self) -> str | None:
        """The C{tag} parameter (From and To)."""
        return param(self.params, "tag")

    def with_tag(self, tag: str) -> NameAddr:
        """This address with C{tag} set."""
        rest = tuple(p for p in self.params if p[0] != "tag")
        return NameAddr(self.uri, self.display, (*rest, ("tag", tag)), self.bracketed)

    def __str__(self) -> str:
        display = f"{self.display} " if self.display else ""
        return f"{display}<{self.uri}>{render_params(self.params)}"


def _quoted_end(value: str, start: int) -> int:
    """Index just past the quoted string opening at C{start}."""
    i = start + 1
    while i < len(value):
        if value[i] == "\\":
            i += 2
            continue
        if value[i] == '"':
            return i + 1
        i += 1
    raise SipParseError("unterminated quoted string")


def parse_name_addr(value: str) -> NameAddr:
    """
    Parse C{"Display" <uri>;params}, C{Display <uri>;params} or
    C{uri;params} (where, without brackets, parameters belong to the header).
    """
    value = value.strip(_LWS)
    if not value:
        raise SipParseError("empty address")
    display = ""
    rest = value
    if rest.startswith('"'):
        end = _quoted_end(rest, 0)
        display = rest[:end]
        rest = rest[end:].lstrip(_LWS)
        if not rest.startswith("<"):
            raise SipParseError("display name without <URI>")
    elif "<" in rest.split(";", 1)[0]:
        display, _, rest = rest.partition("<")
        display = display.strip(_LWS)
        rest = "<" + rest
        if display and not all(TOKEN.fullmatch(w) for w in display.split()):
            raise SipParseError("display name must be tokens or a quoted string")
    if rest.startswith("<"):
        uri, close, params = rest[1:].partition(">")
        if not close:
            raise SipParseError("'<' without '>'")
        parse_uri(uri)
        params = params.strip(_LWS)
        if params and not params.startswith(";"):
            raise SipParseError("junk after '>'")
        return NameAddr(uri=uri, display=display, params=parse_params(params[1:]))
    uri, _, params = rest.partition(";")
    uri = uri.strip(_LWS)
    parse_uri(uri)
    return NameAddr(uri=uri, params=parse_params(params), bracketed=False)


@attrs.frozen
class Via:
    """
    One Via value: transport, sent-by host and port, and parameters.
    """

    transport: str
    host: str
    port: int | None = None
    params: Params = ()

    @property
    def branch(self) -> str | None:
        """The C{branch} parameter."""
        return param(self.params, "branch")

    def with_params(self, **values: str | None) -> Via:
        """This Via with parameters set (C{None}: a flag with no value)."""
        rest = tuple(p for p in self.params if p[0] not in values)
        return Via(self.transport, self.host, self.port, rest + tuple(values.items()))

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{render_params(self.params)}"


_VIA = re.compile(
    r"SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?:[ \t]*:[ \t]*([0-9]{1,5}))?[ \t]*(;.*)?",
    re.IGNORECASE | re.DOTALL,
)


def parse_via(value: str) -> Via:
    """Parse one Via value (one element of the comma-separated list)."""
    m = _VIA.fullmatch(value.strip(_LWS))
    if m is None:
        raise SipParseError(f"bad Via {value.strip()[:80]!r}")
    port = int(m.group(3)) if m.group(3) else None
    if port is not None and port > 65535:
        raise SipParseError("Via port out of range")
    params = parse_params((m.group(4) or ";")[1:])
    return Via(m.group(1).upper(), m.group(2).lower(), port, params)


#: Where a response goes when the Via names no port (RFC 3261 18.2.2).
DEFAULT_SIP_PORT = 5060


def _same_address(host: str, ip: str) -> bool:
    """Whether the Via host C{host} is the address C{ip} (not a name, not another)."""
    bare = host[1:-1] if host.startswith("[") else host
    if bare == ip:
        return True
    try:
        return ipaddress.ip_address(bare) == ipaddress.ip_address(ip)
    except ValueError:
        return False


def received_via(via: Via, source: tuple[str, int]) -> Via:
    """
    The top Via of a request that came from C{source}, as the server
    transport records it: C{received} set to the source address when the
    sent-by host is a name or another address (RFC 3261 18.2.1), and, when
    the client asked with an empty C{rport}, C{rport} filled in with the
    source port and C{received} set in any case (RFC 3581 section 4).
    """
    ip, port = source
    if param(via.params, "rport") is not None:
        return via.with_params(received=ip, rport=str(port))
    if not _same_address(via.host, ip):
        return via.with_params(received=ip)
    return via


def response_address(via: Via, source: tuple[str, int]) -> tuple[str, int]:
    """
    Where a response to a request that came over UDP from C{source} with
    top Via C{via} (as received, before L{received_via}) is sent: with
    C{rport}, back to the source address and port (RFC 3581 section 4);
    otherwise to the C{received} address, which is the source address, at
    the sent-by port or 5060 (RFC 3261 18.2.2). C{maddr} is not followed:
    the gateway answers only where the request came from.
    """
    if param(via.params, "rport") is not None:
        return source
    return (source[0], via.port or DEFAULT_SIP_PORT)


@attrs.frozen
class CSeq:
    """A CSeq value: sequence number and method."""

    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


_CSEQ = re.compile(r"([0-9]{1,10})[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)")


def parse_cseq(value: str) -> CSeq:
    """Parse C{NUMBER METHOD}; the number must be below 2**31."""
    m = _CSEQ.fullmatch(value.strip(_LWS))
    if m is None:
        raise SipParseError(f"bad CSeq {value.strip()[:40]!r}")
    number = int(m.group(1))
    if number > MAX_CSEQ:
        raise SipParseError("CSeq number too large")
    return CSeq(number, m.group(2))


#: Values of at most this many characters have their parsed forms shared.
SHARED_LONGEST = 256

_Parsed = TypeVar("_Parsed")


def shared(parse: Callable[[str], _Parsed], size: int) -> Callable[[str], _Parsed]:
    """``parse`` with its answers for short values remembered (the ``size``
    latest): header values repeat over a call's messages and are read
    several times per message, and the parsed forms are immutable. Longer
    values, and malformed ones (the error is raised again), are parsed each
    time, so a peer's noise cannot make the cache large."""
    remembered = functools.lru_cache(maxsize=size)(parse)

    def lookup(value: str) -> _Parsed:
        return remembered(value) if len(value) <= SHARED_LONGEST else parse(value)

    return lookup


#: :func:`parse_name_addr`, :func:`parse_via` and :func:`parse_uri`, shared.
shared_name_addr = shared(parse_name_addr, 8192)
shared_via = shared(parse_via, 4096)
shared_uri = shared(parse_uri, 4096)
