"""
Route: which interface a call leaves by, and with which URIs.

The CIG manual's rules, applied to a call arriving on interface C{tel}
(the secure side) or C{sip} (the PBX side):

 1. The incoming interface's I{extension maps} are tried in order, their
    entries in order; the first entry whose incoming-side pattern matches
    the original to-URI gives the new to-URI (its other side, expanded).
    An entry has one TEL and one SIP side, so the outgoing interface is
    the other one.
 2. The outgoing interface's I{source maps} (or, when it has none, its
    extension maps) are tried the same way on the original from-URI; the
    first match gives the new from-URI.
 3. A missing to- or from-URI rejects the call: L{RouteRefused}.

Patterns are those of L{cryptify.config.patterns}: C{{name}} matches zero
or more characters, several per pattern, and a parameter the matched side
does not have expands to nothing. URIs longer than L{MAX_URI_LENGTH} are
refused before any matching, which keeps the (backtracking) matcher fast
on hostile input.
"""

from __future__ import annotations

from typing import Literal

import attrs

from cryptify.config.cig_model import CigConfig, MapEntry, UriMap
from cryptify.config.patterns import PatternError, expand_pattern, match_pattern

Interface = Literal["tel", "sip"]
TEL: Interface = "tel"
SIP: Interface = "sip"

#: Longest URI route will look at, in characters.
MAX_URI_LENGTH = 256


class RouteRefused(Exception):
    """
    The call cannot be routed; C{reason} says why, for logs and responses.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class Routed:
    """
    A routed call: where it came in, where it goes out, and its URIs on
    both sides. C{to_entry}/C{from_entry} name the map entries used
    (C{"map/entry"}).
    """

    incoming: Interface
    outgoing: Interface
    in_from: str
    in_to: str
    out_from: str
    out_to: str
    to_entry: str
    from_entry: str


def other(interface: Interface) -> Interface:
    """The interface a call on C{interface} leaves by."""
    return SIP if interface == TEL else TEL


def _side(entry: MapEntry, interface: Interface) -> str:
    return entry.tel if interface == TEL else entry.sip


def _apply(maps: tuple[UriMap, ...], incoming: Interface, uri: str) -> tuple[str, str] | None:
    """
    The first entry of C{maps} whose C{incoming} side matches C{uri}: its
    other side expanded, and the entry's name.
    """
    outgoing = other(incoming)
    for uri_map in maps:
        for entry in uri_map.entries:
            try:
                params = match_pattern(_side(entry, incoming), uri)
                if params is None:
                    continue
                return expand_pattern(_side(entry, outgoing), params), (
                    f"{uri_map.name}/{entry.name}"
                )
            except PatternError:
                # The config parser checks patterns; one built by hand
                # that is malformed simply never matches.
                continue
    return None


@attrs.frozen
class Router:
    """
    The route module over one configuration's maps and interfaces.
    """

    config: CigConfig

    def _maps(self, names: tuple[str, ...]) -> tuple[UriMap, ...]:
        found = []
        for name in names:
            try:
                found.append(self.config.get_map(name))
            except KeyError:
                continue
        return tuple(found)

    def extension_maps(self, interface: Interface) -> tuple[UriMap, ...]:
        """The extension maps configured on C{interface}, in order."""
        iface = self.config.tel if interface == TEL else self.config.sip
        return self._maps(iface.extension_maps)

    def source_maps(self, interface: Interface) -> tuple[UriMap, ...]:
        """
        The maps giving the from-URI of calls leaving by C{interface}: its
        source maps, or its extension maps when it has no source map.
        """
        iface = self.config.tel if interface == TEL else self.config.sip
        if iface.source_maps:
            return self._maps(iface.source_maps)
        return self._maps(iface.extension_maps)

    def route(self, incoming: Interface, from_uri: str, to_uri: str) -> Routed:
        """
        Route a call that arrived on C{incoming} from C{from_uri} to C{to_uri}.

        @raise RouteRefused: if no rule gives a to-URI or a from-URI, or a
            URI is too long to route.
        """
        for what, uri in (("to", to_uri), ("from", from_uri)):
            if len(uri) > MAX_URI_LENGTH:
                raise RouteRefused(f"{what}-URI longer than {MAX_URI_LENGTH} characters")
        outgoing = other(incoming)
        to = _apply(self.extension_maps(incoming), incoming, to_uri)
        if to is None:
            raise RouteRefused(f"no extension map on {incoming} matches {to_uri}")
        source = _apply(self.source_maps(outgoing), incoming, from_uri)
        if source is None:
            raise RouteRefused(f"no source map on {outgoing} matches {from_uri}")
        return Routed(
            incoming=incoming,
            outgoing=outgoing,
            in_from=from_uri,
            in_to=to_uri,
            out_from=source[0],
            out_to=to[0],
            to_entry=to[1],
            from_entry=source[1],
        )
