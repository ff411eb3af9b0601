"""
SIP header fields (RFC 3261 section 7.3): names in their usual spelling
(compact forms expanded by L{canonical}), and L{Headers}, the ordered,
immutable list of fields a message carries, with case-blind lookups and
the comma lists of list-valued headers split by L{Headers.values}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar, cast

import attrs

from .address import TOKEN, split_top

COMPACT = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}
_KNOWN = [
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Authorization",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Error-Info",
    "Expires",
    "From",
    "In-Reply-To",
    "Max-Forwards",
    "MIME-Version",
    "Min-Expires",
    "Organization",
    "Priority",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "Record-Route",
    "Reply-To",
    "Require",
    "Retry-After",
    "Route",
    "Server",
    "Subject",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Warning",
    "WWW-Authenticate",
    *COMPACT.values(),
]
CANONICAL = {name.lower(): name for name in _KNOWN}
#: Headers whose values may be listed with commas on one line.
LIST_HEADERS = frozenset(
    name.lower()
    for name in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Call-Info",
        "Contact",
        "Content-Encoding",
        "Content-Language",
        "Error-Info",
        "In-Reply-To",
        "Proxy-Require",
        "Record-Route",
        "Require",
        "Route",
        "Supported",
        "Unsupported",
        "Via",
        "Warning",
    )
)
#: Headers a message may carry only once.
SINGLE_HEADERS = ("To", "From", "Call-ID", "CSeq", "Max-Forwards", "Content-Type")


#: Lower-case names, compact forms included, to their usual spelling.
_SPELLING = {**CANONICAL, **COMPACT}
#: Lookup keys (lower-case usual spelling) of the names the code asks for;
#: those are few, so they are kept once computed (up to L{_KEYS_KEPT}).
_KEYS: dict[str, str] = {}
_KEYS_KEPT = 512
#: Longer name texts are not kept (a peer's noise cannot grow the table).
_NAME_KEPT_LONGEST = 64


def canonical(name: str) -> str:
    """The usual spelling of a header name (compact forms expanded)."""
    return _SPELLING.get(name.lower(), name)


def _key(name: str) -> str:
    """The index key of C{name}: its usual spelling, lower case."""
    key = _KEYS.get(name)
    if key is None:
        key = canonical(name).lower()
        if len(_KEYS) < _KEYS_KEPT:
            _KEYS[name] = key
    return key


#: Header name texts as they stood before the colon (trailing white space
#: and all) to their usual spelling and lookup key; a peer's names are
#: few, and those past L{_KEYS_KEPT} are looked up each time.
_NAMES: dict[str, tuple[str, str]] = {}


def header_name(text: str) -> tuple[str, str] | None:
    """
    The usual spelling and lookup key of the header name written C{text}
    (what stood before the colon, trailing white space included), or
    C{None} if it is not a token.
    """
    known = _NAMES.get(text)
    if known is None:
        name = text.rstrip(" \t")
        if not TOKEN.fullmatch(name):
            return None
        spelled = canonical(name)
        known = (spelled, spelled.lower())
        if len(_NAMES) < _KEYS_KEPT and len(text) <= _NAME_KEPT_LONGEST:
            _NAMES[text] = known
    return known


_Derived = TypeVar("_Derived")


@attrs.frozen
class Headers:
    """
    Header fields in order, names in their usual spelling. Lookups ignore
    case; list-valued headers split on top-level commas in L{values}.
    The index for lookups is made at the first lookup (the headers of a
    response being built are only ever written out).
    """

    items: tuple[tuple[str, str], ...] = ()
    _index: dict[str, tuple[str, ...]] | None = attrs.field(
        init=False, default=None, eq=False, repr=False
    )
    _derived_by: Callable[[Headers], object] | None = attrs.field(
        init=False, default=None, eq=False, repr=False
    )
    _derived: object = attrs.field(init=False, default=None, eq=False, repr=False)

    def derived(self, make: Callable[[Headers], _Derived]) -> _Derived:
        """
        C{make(self)}, made at the first call and then remembered (headers
        never change): what the answers to a request copy from it, say.
        One such value is remembered, the latest C{make}'s.
        """
        if self._derived_by is make:
            return cast(_Derived, self._derived)
        value = make(self)
        object.__setattr__(self, "_derived_by", make)
        object.__setattr__(self, "_derived", value)
        return value

    def _lookup(self) -> dict[str, tuple[str, ...]]:
        index = self._index
        if index is None:
            index = {}
            for n, v in self.items:
                key = n.lower()
                found = index.get(key)
                index[key] = (v,) if found is None else (*found, v)
            object.__setattr__(self, "_index", index)
        return index

    @classmethod
    def indexed(
        cls, items: tuple[tuple[str, str], ...], index: dict[str, tuple[str, ...]]
    ) -> Headers:
        """
        Headers whose lookup index (lower-case usual name to values, in
        order) the caller made while reading C{items}: the parser has it
        for free. Tuples, not lists: the collector stops following tuples
        of strings once they have lived through one of its passes, and a
        call's requests live for half a minute.
        """
        headers = cls(items)
        object.__setattr__(headers, "_index", index)
        return headers

    def by_key(self) -> dict[str, tuple[str, ...]]:
        """
        The lookup index: each lower-case usual name to its values, one per
        header line, in order. Read it, never change it.
        """
        index = self._index
        return index if index is not None else self._lookup()

    def with_value(self, key: str, value: str) -> Headers:
        """
        These headers with the first line of lookup key C{key} (lower-case
        usual name; there must be one) holding C{value}, in its place; the
        index follows without being made again.
        """
        index = dict(self.by_key())
        old = index[key]
        index[key] = (value, *old[1:])
        items = list(self.items)
        for i, (n, _) in enumerate(items):
            if n.lower() == key:
                items[i] = (n, value)
                break
        return Headers.indexed(tuple(items), index)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items)

    def get_all(self, name: str) -> list[str]:
        """Every field value of C{name}, one per header line."""
        return list(self._lookup().get(_key(name), ()))

    def get(self, name: str) -> str | None:
        """The first field value of C{name}."""
        # the hottest lookup (a score of times per message): inlined steps
        index = self._index
        if index is None:
            index = self._lookup()
        found = index.get(_KEYS.get(name) or _key(name))
        return found[0] if found else None

    def values(self, name: str) -> list[str]:
        """Every value of C{name}, splitting comma lists of list headers."""
        key = _key(name)
        found = self._lookup().get(key)
        if not found:
            return []
        out: list[str] = []
        split = key in LIST_HEADERS
        for value in found:
            # without a comma or a quote there is nothing to split (nor any
            # quote to balance)
            if not split or ("," not in value and '"' not in value):
                value = value.strip(" \t")
                if value:
                    out.append(value)
                continue
            for part in split_top(value, ","):
                part = part.strip(" \t")
                if part:
                    out.append(part)
        return out

    def count(self, name: str) -> int:
        """How many header lines C{name} has."""
        return len(self._lookup().get(_key(name), ()))

    def without(self, name: str) -> Headers:
        """These headers without C{name}."""
        key = _key(name)
        return Headers(tuple((n, v) for n, v in self.items if n.lower() != key))

    def add(self, name: str, value: str, first: bool = False) -> Headers:
        """These headers with one more line, at the end or at the top."""
        item = (canonical(name), value)
        return Headers((item, *self.items) if first else (*self.items, item))

    def set(self, name: str, value: str) -> Headers:
        """These headers with C{name} replaced (in place of its first line)."""
        key = _key(name)
        out: list[tuple[str, str]] = []
        done = False
        for n, v in self.items:
            if n.lower() == key:
                if not done:
                    out.append((canonical(name), value))
                    done = True
                continue
            out.append((n, v))
        if not done:
            out.append((canonical(name), value))
        return Headers(tuple(out))
