"""
Locating a SIP server from a URI (RFC 3263, simplified), sans-IO.

The CIG does not look up NAPTR or SRV records: a C{sip:} URI's host is
used as it is (an IP address) or looked up as an A record by the caller;
an explicit port is honoured, otherwise 5060 (5061 for TLS); the
C{transport} URI parameter chooses C{udp} (the default), C{tcp} or
C{tls}, and a C{sips:} URI means TLS (RFC 3261 26.2). Anything else
(other schemes or transports, a URI that does not parse) is a
L{LocateError}.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

import attrs

from .address import parse_uri
from .errors import SipParseError

Transport = Literal["udp", "tcp", "tls"]
DEFAULT_PORT = 5060
DEFAULT_TLS_PORT = 5061
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")


class LocateError(Exception):
    """The URI names no server the CIG can reach."""


@attrs.frozen
class Target:
    """Where to send requests for a URI: host (name or address), port, transport."""

    host: str
    port: int = DEFAULT_PORT
    transport: Transport = "udp"

    @property
    def numeric(self) -> bool:
        """Whether C{host} is an IP address (no lookup needed)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def uri(self) -> str:
        """A request-URI for the server itself (for OPTIONS and REGISTER)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = "" if self.transport == "udp" else f";transport={self.transport}"
        return f"sip:{host}:{self.port}{suffix}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}/{self.transport}"


def locate(text: str) -> Target:
    """The L{Target} for SIP URI C{text}; L{LocateError} if there is none."""
    try:
        uri = parse_uri(text)
    except SipParseError as exc:
        raise LocateError(f"bad URI: {exc.reason}") from None
    scheme = uri.scheme.lower()
    if scheme not in ("sip", "sips"):
        raise LocateError(f"scheme {uri.scheme!r} not supported")
    host = uri.host.strip("[]")
    if not host:
        raise LocateError("URI without a host")
    transport = (uri.param("transport") or ("tls" if scheme == "sips" else "udp")).lower()
    if scheme == "sips" and transport == "tcp":
        transport = "tls"  # sips: over TCP is TLS (RFC 3261 26.2.2)
    if transport not in ("udp", "tcp", "tls"):
        raise LocateError(f"transport {transport!r} not supported")
    if scheme == "sips" and transport != "tls":
        raise LocateError("a sips: URI needs TLS")
    found: Transport = "tls" if transport == "tls" else "tcp" if transport == "tcp" else "udp"
    default = DEFAULT_TLS_PORT if found == "tls" else DEFAULT_PORT
    port = uri.port if uri.port is not None else default
    if not 0 < port < 65536:
        raise LocateError(f"bad port {port}")
    return Target(host.lower(), port, found)


def literal_target(pattern: str) -> Target | None:
    """
    The server a map entry's SIP side always sends to, when its host, port
    and parameters are literal (placeholders only in the user part):
    C{sip:{ext}@pbx.com} gives pbx.com:5060/udp, C{sip:{ext}@{host}} none.
    """
    rest = pattern.split(":", 1)[-1]
    hostpart = rest.rsplit("@", 1)[-1]
    if _PLACEHOLDER.search(hostpart) or "{" in hostpart:
        return None
    try:
        return locate(_PLACEHOLDER.sub("x", pattern))
    except LocateError:
        return None
