"""
SIP digest authentication, the client's side (RFC 3261 section 22, with
the algorithms of RFC 8760), sans-IO.

A server that wants credentials answers a request with 401 and
C{WWW-Authenticate} (a user agent, a registrar) or 407 and
C{Proxy-Authenticate} (a proxy). L{challenges_of} reads those headers
into L{Challenge}s, L{choose} picks the first one whose algorithm we
support (RFC 8760 2.4: servers list them in order of preference), and
L{authorization} computes the C{Authorization}/C{Proxy-Authorization}
value for the resent request.

Rules:
 - Algorithms: C{MD5}, C{MD5-sess}, C{SHA-256}, C{SHA-256-sess}; a
   challenge without C{algorithm} means MD5. Others (C{SHA-512-256},
   unknown tokens) are skipped, never guessed.
 - qop: C{auth} when offered, else C{auth-int} (the body hashed), else the
   RFC 2069 form without qop, nc and cnonce.
 - Limits: a challenge of at most L{MAX_CHALLENGE_LENGTH} characters and
   L{MAX_PARAMS} parameters; anything unreadable raises L{DigestError},
   never another exception.
 - The password is never part of a repr, a log line or an error message.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from typing import Literal

import attrs

from .message import Response

#: The longest challenge header value read.
MAX_CHALLENGE_LENGTH = 4096
#: The most parameters one challenge may carry.
MAX_PARAMS = 32
#: Algorithm names (upper case) and the hash each uses.
ALGORITHMS = {
    "MD5": "md5",
    "MD5-SESS": "md5",
    "SHA-256": "sha256",
    "SHA-256-SESS": "sha256",
}
#: How each algorithm is spelled in an Authorization header.
SPELLING = {
    "MD5": "MD5",
    "MD5-SESS": "MD5-sess",
    "SHA-256": "SHA-256",
    "SHA-256-SESS": "SHA-256-sess",
}
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_LWS = " \t\r\n"
_SCHEME = re.compile(r"(\S*)\s*(.*)", re.DOTALL)

Header = Literal["WWW-Authenticate", "Proxy-Authenticate"]


class DigestError(Exception):
    """A challenge that cannot be read or answered; C{reason} says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class Credentials:
    """A user name and password for one server; the password stays out of reprs."""

    username: str
    password: str = attrs.field(repr=False)


@attrs.frozen
class Challenge:
    """
    One C{Digest} challenge: the header it came in (which says the header
    of the answer), realm, nonce, algorithm (upper case), the qop options,
    opaque and stale.
    """

    header: Header
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False

    @property
    def answer_header(self) -> str:
        """C{Authorization} for a 401's challenge, C{Proxy-Authorization} for a 407's."""
        return "Authorization" if self.header == "WWW-Authenticate" else "Proxy-Authorization"

    @property
    def supported(self) -> bool:
        """Whether we can answer it (a known algorithm)."""
        return self.algorithm in ALGORITHMS


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in _LWS:
        at += 1
    return at


def _quoted(text: str, at: int) -> tuple[str, int]:
    """The quoted-string starting at C{text[at]} (a '"'), unescaped, and where it ends."""
    out: list[str] = []
    at += 1
    while at < len(text):
        char = text[at]
        if char == "\\":
            if at + 1 >= len(text):
                break
            out.append(text[at + 1])
            at += 2
            continue
        if char == '"':
            return "".join(out), at + 1
        out.append(char)
        at += 1
    raise DigestError("unterminated quoted string")


def parse_params(text: str) -> dict[str, str]:
    """
    The comma-separated C{name=value} list after the scheme; names lower
    case; values tokens or quoted strings.
    """
    params: dict[str, str] = {}
    at = _skip(text, 0)
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise DigestError("expected a parameter name")
        name = match.group().lower()
        at = _skip(text, match.end())
        if at >= len(text) or text[at] != "=":
            raise DigestError(f"parameter {name[:20]!r} without a value")
        at = _skip(text, at + 1)
        if at < len(text) and text[at] == '"':
            value, at = _quoted(text, at)
        else:
            match = _TOKEN.match(text, at)
            if match is None:
                raise DigestError(f"parameter {name[:20]!r} without a value")
            value, at = match.group(), match.end()
        if name in params:
            raise DigestError(f"parameter {name[:20]!r} given twice")
        params[name] = value
        if len(params) > MAX_PARAMS:
            raise DigestError("too many parameters")
        at = _skip(text, at)
        if at < len(text):
            if text[at] != ",":
                raise DigestError("expected ',' between parameters")
            at = _skip(text, at + 1)
    return params


def parse_challenge(value: str, header: Header = "WWW-Authenticate") -> Challenge:
    """
    One challenge header value (C{Digest realm="...", nonce="...", ...}).

    @raise DigestError: not a Digest challenge, or unreadable, or missing
        its realm or nonce, or too long.
    """
    if len(value) > MAX_CHALLENGE_LENGTH:
        raise DigestError("challenge too long")
    match = _SCHEME.fullmatch(value.strip(_LWS))
    if match is None:
        raise DigestError("unreadable challenge")
    scheme, rest = match.groups()
    if scheme.lower() != "digest":
        raise DigestError(f"not a Digest challenge ({scheme[:20]!r})")
    params = parse_params(rest)
    for needed in ("realm", "nonce"):
        if needed not in params:
            raise DigestError(f"challenge without {needed}")
    qop = tuple(
        option.strip(_LWS).lower() for option in params.get("qop", "").split(",") if option.strip()
    )
    return Challenge(
        header=header,
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=params.get("algorithm", "MD5").upper(),
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
    )


def challenges_of(response: Response) -> list[Challenge]:
    """
    The readable Digest challenges of a 401 (C{WWW-Authenticate}) or 407
    (C{Proxy-Authenticate}), in header order; unreadable ones are left out.
    """
    header: Header = "Proxy-Authenticate" if response.status == 407 else "WWW-Authenticate"
    found: list[Challenge] = []
    for value in response.headers.get_all(header)[:MAX_PARAMS]:
        try:
            found.append(parse_challenge(value, header))
        except DigestError:
            continue
    return found


def choose(challenges: Iterable[Challenge]) -> Challenge | None:
    """The first challenge with an algorithm we support (RFC 8760 2.4)."""
    for challenge in challenges:
        if challenge.supported:
            return challenge
    return None


def new_cnonce() -> str:
    """A fresh client nonce."""
    return secrets.token_hex(8)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def response_digest(
    challenge: Challenge,
    credentials: Credentials,
    method: str,
    uri: str,
    cnonce: str,
    nc: int = 1,
    body: bytes = b"",
) -> tuple[str, str | None]:
    """
    The C{response} value (and the qop used, if any) for C{method} on
    C{uri}: RFC 8760 section 2 (RFC 7616 3.4.1, RFC 2617 3.2.2).

    @raise DigestError: for an algorithm we do not support.
    """
    name = ALGORITHMS.get(challenge.algorithm)
    if name is None:
        raise DigestError(f"unsupported algorithm {challenge.algorithm[:20]!r}")

    def digest(data: str | bytes) -> str:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        return hashlib.new(name, raw).hexdigest()

    ha1 = digest(f"{credentials.username}:{challenge.realm}:{credentials.password}")
    if challenge.algorithm.endswith("-SESS"):
        ha1 = digest(f"{ha1}:{challenge.nonce}:{cnonce}")
    qop: str | None = None
    if "auth" in challenge.qop:
        qop = "auth"
    elif "auth-int" in challenge.qop:
        qop = "auth-int"
    ha2 = digest(f"{method}:{uri}" + (f":{digest(body)}" if qop == "auth-int" else ""))
    if qop is None:
        return digest(f"{ha1}:{challenge.nonce}:{ha2}"), None
    return digest(f"{ha1}:{challenge.nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}"), qop


def authorization(
    challenge: Challenge,
    credentials: Credentials,
    method: str,
    uri: str,
    cnonce: str | None = None,
    nc: int = 1,
    body: bytes = b"",
) -> str:
    """
    The C{Authorization} (or C{Proxy-Authorization}) value answering
    C{challenge} for a request C{method} to C{uri}.

    @raise DigestError: for an algorithm we do not support.
    """
    cnonce = new_cnonce() if cnonce is None else cnonce
    response, qop = response_digest(challenge, credentials, method, uri, cnonce, nc, body)
    parts = [
        f"username={_quote(credentials.username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
        f"algorithm={SPELLING[challenge.algorithm]}",
    ]
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc:08x}", f"cnonce={_quote(cnonce)}"]
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    return "Digest " + ", ".join(parts)


# --- the server's side: reading an Authorization header -----------------------

#: The parameters an answer to our C{qop=auth} challenge must carry.
_NEEDED = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")
_HEX = re.compile(r"[0-9a-fA-F]+")


@attrs.frozen
class DigestAnswer:
    """
    One C{Authorization: Digest ...} value, as a server reads it: what the
    client says it answered (realm, nonce, algorithm upper case), for
    which URI, with which nonce count and client nonce, and its response.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    qop: str
    nc: int
    cnonce: str
    opaque: str | None = None


def parse_authorization(value: str) -> DigestAnswer:
    """
    An C{Authorization}/C{Proxy-Authorization} value answering a
    C{qop=auth} challenge (RFC 3261 22.4, RFC 8760).

    @raise DigestError: not Digest, unreadable, too long, or missing one
        of username, realm, nonce, uri, response, qop, nc and cnonce; an
        nc that is not 8 hex digits.
    """
    if len(value) > MAX_CHALLENGE_LENGTH:
        raise DigestError("credentials too long")
    match = _SCHEME.fullmatch(value.strip(_LWS))
    if match is None:
        raise DigestError("unreadable credentials")
    scheme, rest = match.groups()
    if scheme.lower() != "digest":
        raise DigestError(f"not Digest credentials ({scheme[:20]!r})")
    params = parse_params(rest)
    for needed in _NEEDED:
        if needed not in params:
            raise DigestError(f"credentials without {needed}")
    nc = params["nc"]
    if len(nc) != 8 or not _HEX.fullmatch(nc):
        raise DigestError("nc is not 8 hex digits")
    return DigestAnswer(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"],
        algorithm=params.get("algorithm", "MD5").upper(),
        qop=params["qop"].lower(),
        nc=int(nc, 16),
        cnonce=params["cnonce"],
        opaque=params.get("opaque"),
    )


def challenge_value(realm: str, nonce: str, algorithm: str, stale: bool = False) -> str:
    """A C{WWW-Authenticate} value offering C{qop=auth} with C{algorithm}."""
    value = (
        f"Digest realm={_quote(realm)}, nonce={_quote(nonce)}, "
        f'algorithm={SPELLING[algorithm]}, qop="auth"'
    )
    return value + (", stale=true" if stale else "")
