"""
The parts of PLY's lexer and parser objects that the config grammars use.

PLY ships no type information; these protocols name what our token rules
and grammar actions touch, so mypy checks those uses.  A token's ``value``
is the matched text when a rule receives it and the rule replaces it with
a L{cryptify.config._base.Tok}; a production's slots hold whatever the
grammar actions put there, which is why both stay dynamically typed.
"""

from __future__ import annotations

from typing import Any, Protocol


class Lexer(Protocol):
    """A PLY lexer, with the per-parse state our grammars keep on it."""

    lineno: int
    #: Whether the next token starts a line (the line-based grammar).
    at_line_start: bool

    def input(self, text: str) -> None: ...

    def token(self) -> LexToken | None: ...

    def clone(self) -> Lexer: ...


class LexToken(Protocol):
    """A token: its type name, its value, and where it starts."""

    type: str
    value: Any
    lexpos: int
    lexer: Lexer


class Production(Protocol):
    """The symbols of a grammar rule being reduced: ``p[0]`` is the result."""

    def __getitem__(self, n: int) -> Any: ...

    def __setitem__(self, n: int, value: object) -> None: ...

    def __len__(self) -> int: ...
