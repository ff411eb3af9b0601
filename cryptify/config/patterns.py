"""
URI patterns of C{cig.conf} map entries and translate rules.

A pattern is literal text with parameters, C{{name}}, in it. A parameter
matches zero or more characters; matching is exact and case-sensitive
otherwise, and must cover the whole URI. Where a URI could be split
between parameters in more than one way, each parameter takes as little
as it can, left to right (so C{sip:{user}@{host}} on C{sip:a@b@c} gives
C{user=a}). A name used twice must match the same text both times.

Expanding a pattern puts each parameter's value in its place; a parameter
that the matched side did not have expands to nothing, so
C{sip:{series}@pbx.com{discard}} expands to C{sip:1234@pbx.com} when only
C{series} is known.
"""

from __future__ import annotations

import functools
import re

PARAMETER = re.compile(r"\{([A-Za-z0-9_]+)\}")


class PatternError(ValueError):
    """
    A pattern is malformed; C{offset} is where, in the pattern text.
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


def check_pattern(pattern: str) -> tuple[str, ...]:
    """
    Check that every C{{} opens a well-formed parameter.

    @return: the parameter names, in order of first use.
    @raise PatternError: on an unmatched brace or a bad parameter name.
    """
    names: list[str] = []
    pos = 0
    while pos < len(pattern):
        c = pattern[pos]
        if c == "{":
            m = PARAMETER.match(pattern, pos)
            if m is None:
                close = pattern.find("}", pos)
                if close < 0:
                    raise PatternError("'{' without a closing '}'", pos)
                raise PatternError("parameter names are letters, digits and '_'", pos)
            if m.group(1) not in names:
                names.append(m.group(1))
            pos = m.end()
            continue
        if c == "}":
            raise PatternError("'}' without an opening '{'", pos)
        pos += 1
    return tuple(names)


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    names = check_pattern(pattern)
    out: list[str] = []
    seen: set[str] = set()
    pos = 0
    for m in PARAMETER.finditer(pattern):
        out.append(re.escape(pattern[pos : m.start()]))
        group = f"p{names.index(m.group(1))}"
        out.append(f"(?P={group})" if group in seen else f"(?P<{group}>.*?)")
        seen.add(group)
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out), re.DOTALL), names


def match_pattern(pattern: str, uri: str) -> dict[str, str] | None:
    """
    Match C{uri} against C{pattern}.

    @return: the parameters' values, or C{None} if it does not match.
    @raise PatternError: if C{pattern} is malformed.
    """
    regex, names = _compile(pattern)
    m = regex.fullmatch(uri)
    if m is None:
        return None
    return {name: m.group(f"p{i}") for i, name in enumerate(names)}


def expand_pattern(pattern: str, params: dict[str, str]) -> str:
    """
    Fill C{pattern}'s parameters from C{params}; missing ones are empty.

    @raise PatternError: if C{pattern} is malformed.
    """
    check_pattern(pattern)
    return PARAMETER.sub(lambda m: params.get(m.group(1), ""), pattern)


def translate(match: str, translation: str, uri: str) -> str | None:
    """
    Match C{uri} against C{match}, and if it matches expand C{translation}.
    """
    params = match_pattern(match, uri)
    if params is None:
        return None
    return expand_pattern(translation, params)
