"""
Pieces shared by every configuration grammar: the error type, positioned
tokens, the PLY driver, value checks and quoting.

Every grammar module builds its PLY lexer and parser once, on first use,
without writing table files, and parses under a lock so one set of tables
serves the whole process.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import attrs
from ply import lex, yacc

from cryptify.config._ply import Lexer, LexToken

_F = TypeVar("_F", bound=Callable[..., object])

MAX_CONFIG_BYTES = 1024 * 1024
"""Largest configuration file read (1 MiB); a longer file is refused."""
MAX_LINE_BYTES = 8192
"""Longest line of a configuration file, without its line break."""
QUOTE_CHARS = 60
"""Most characters of the file an error message quotes."""
MESSAGE_CHARS = 200
"""Most characters of an error's message and of its "expected" part."""
READ_CHUNK = 64 * 1024


class ConfigError(Exception):
    """
    A configuration file is not valid.

    Reads as ``FILE:LINE:COL: message: 'text' (expected ...)``; line and
    column are 1-based, and missing parts are left out. The quoted text is
    cut to L{QUOTE_CHARS} and the message and "expected" parts to
    L{MESSAGE_CHARS}, so an error is one short line whatever the file holds.
    """

    def __init__(
        self,
        message: str,
        filename: str = "<string>",
        line: int | None = None,
        column: int | None = None,
        text: str | None = None,
        expected: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.filename = filename
        self.line = line
        self.column = column
        self.text = text
        self.expected = expected

    def __str__(self) -> str:
        where = self.filename
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        out = f"{where}: {printable(self.message, MESSAGE_CHARS)}"
        if self.text is not None:
            out += f": '{printable(self.text)}'"
        if self.expected:
            out += f" (expected {printable(self.expected, MESSAGE_CHARS)})"
        return out


def printable(text: str, limit: int = QUOTE_CHARS) -> str:
    """
    The first C{limit} characters of C{text}, control characters shown as
    escapes, with C{...} when some were left out: for error messages.
    """
    shown = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text[: limit + 1])
    # Escapes make a character several long: cut what is shown, not the input.
    return shown if len(shown) <= limit else shown[:limit] + "..."


class _LineCounter:
    """
    Counts lines of a file read in pieces, refusing one that is too long.
    """

    def __init__(self, filename: str, limit: int, unit: str) -> None:
        self.filename = filename
        self.limit = limit
        self.unit = unit
        self.line = 1
        self.length = 0

    def feed(self, data: str | bytes) -> None:
        start = 0
        while True:
            end = data.find(b"\n", start) if isinstance(data, bytes) else data.find("\n", start)
            self.length += (len(data) if end < 0 else end) - start
            if self.length > self.limit:
                raise ConfigError(
                    f"line is longer than {self.limit} {self.unit}", self.filename, self.line
                )
            if end < 0:
                return
            self.line += 1
            self.length = 0
            start = end + 1


def _too_large(filename: str) -> ConfigError:
    return ConfigError(f"file is larger than {MAX_CONFIG_BYTES} bytes", filename)


def read_config_file(path: str | os.PathLike[str]) -> bytes:
    """
    Read a configuration file in bounded pieces: never more than
    L{MAX_CONFIG_BYTES}, and stop at the first line longer than
    L{MAX_LINE_BYTES} (so a device such as C{/dev/zero} is refused quickly).

    @raise ConfigError: if it cannot be read or breaks a limit.
    """
    filename = str(path)
    try:
        with open(path, "rb", buffering=0) as f:
            info = os.fstat(f.fileno())
            if stat.S_ISREG(info.st_mode) and info.st_size > MAX_CONFIG_BYTES:
                raise _too_large(filename)
            lines = _LineCounter(filename, MAX_LINE_BYTES, "bytes")
            chunks: list[bytes] = []
            total = 0
            while chunk := f.read(READ_CHUNK):
                total += len(chunk)
                if total > MAX_CONFIG_BYTES:
                    raise _too_large(filename)
                lines.feed(chunk)
                chunks.append(chunk)
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", filename) from None
    return b"".join(chunks)


@attrs.frozen
class Tok:
    """
    One word of a configuration file and where it starts.
    """

    value: str
    line: int
    column: int
    quoted: bool = False
    type: str = ""

    @property
    def end_column(self) -> int:
        """
        The column just after this token (approximate for quoted text).
        """
        return self.column + len(self.value) + (2 if self.quoted else 0)


def grammar(rule: str) -> Callable[[_F], _F]:
    """
    Attach a PLY grammar rule to a C{p_} function without relying on its
    docstring (so C{python -OO} keeps working).
    """

    def attach(f: _F) -> _F:
        f.__doc__ = rule
        return f

    return attach


def token_rule(regex: str) -> Callable[[_F], _F]:
    """
    Attach a PLY token regex to a C{t_} function (docstring-free).
    """

    def attach(f: _F) -> _F:
        f.__dict__["regex"] = regex  # PLY reads the rule from the function
        return f

    return attach


def decode(data: str | bytes, filename: str) -> str:
    """
    Turn file contents into text, or say where the bad UTF-8 is; refuse
    text that breaks the size or line-length limit.
    """
    if len(data) > MAX_CONFIG_BYTES:
        raise _too_large(filename)
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            before = data[: e.start].decode("utf-8", "replace")
            line = before.count("\n") + 1
            column = len(before) - (before.rfind("\n") + 1) + 1
            raise ConfigError(
                "not valid UTF-8",
                filename,
                line,
                column,
                data[e.start : e.start + 1].decode("latin-1"),
            ) from None
    _LineCounter(filename, MAX_LINE_BYTES, "characters").feed(text)
    return text.removeprefix("\ufeff")


def expected_list(names: Iterable[str]) -> str:
    """
    C{'a', 'b' or 'c'}.
    """
    items = list(dict.fromkeys(names))
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]


class Context:
    """
    What one parse is working on: the file's name and text.

    Positions come from an index of line starts built once, so placing
    every token of a file costs time linear in its size.
    """

    def __init__(self, filename: str, text: str) -> None:
        self.filename = filename
        self.text = text
        self._starts: list[int] | None = None

    def position(self, lexpos: int) -> tuple[int, int]:
        if self._starts is None:
            self._starts = [0, *(m.end() for m in re.finditer("\n", self.text))]
        index = bisect_right(self._starts, lexpos) - 1
        return index + 1, lexpos - self._starts[index] + 1

    def tok(self, value: str, lexpos: int, quoted: bool = False, type: str = "") -> Tok:
        line, column = self.position(lexpos)
        return Tok(value, line, column, quoted, type)

    def error(
        self,
        message: str,
        at: Tok | None = None,
        text: str | None = None,
        expected: str | None = None,
        column: int | None = None,
    ) -> ConfigError:
        if at is None:
            line, col = self.position(len(self.text))
        else:
            line, col = at.line, at.column
            if text is None:
                text = at.value if at.value or at.quoted else None
        if column is not None:
            col = column
        return ConfigError(message, self.filename, line, col, text, expected)


class Grammar:
    """
    Base for one file kind's PLY lexer and parser, built lazily, once.

    Subclasses define C{tokens}, C{t_} rules, C{p_} rules (with
    L{grammar}), C{start} and C{token_names}, the way each token type is
    named in "expected" messages.
    """

    tokens: tuple[str, ...] = ()
    start = "config"
    token_names: dict[str, str] = {}

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lexer: Lexer | None = None
        self._parser: yacc.LRParser | None = None
        self.ctx = Context("<string>", "")
        self.last: LexToken | None = None
        self.prev: LexToken | None = None

    def _build(self) -> Lexer:
        if self._lexer is None or self._parser is None:
            self._lexer = lex.lex(module=self, optimize=False, errorlog=lex.NullLogger())
            self._parser = yacc.yacc(
                module=self,
                start=self.start,
                write_tables=False,
                debug=False,
                errorlog=yacc.NullLogger(),
            )
        return self._lexer

    def prepare_lexer(self, lexer: Lexer) -> None:
        """
        Reset any per-parse lexer state.
        """

    def parse_text(self, text: str, filename: str) -> Any:
        """
        Run lexer and parser over C{text}, returning the start rule's value.
        """
        with self._lock:
            lexer = self._build().clone()
            self.ctx = Context(filename, text)
            lexer.lineno = 1
            self.prepare_lexer(lexer)
            lexer.input(self.lexer_input(text))
            self.last = self.prev = None

            def token() -> LexToken | None:
                tok = lexer.token()
                self.prev, self.last = self.last, tok
                return tok

            assert self._parser is not None  # _build made it
            try:
                return self._parser.parse(lexer=lexer, tokenfunc=token)
            finally:
                self.ctx = Context(filename, "")

    def lexer_input(self, text: str) -> str:
        return text

    def name_of(self, token_type: str) -> str:
        if token_type == "$end":  # noqa: S105 (PLY's end-of-input token)
            return "end of file"
        return self.token_names.get(token_type, token_type.lower())

    def expected_now(self) -> list[str]:
        """
        The token types the parser could have accepted where it stopped.
        """
        assert self._parser is not None  # called by the parser's error rule
        state = self._parser.state
        return sorted(self._parser.action[state], key=self.token_order)

    def token_order(self, token_type: str) -> int:
        order = [*self.tokens, "$end"]
        return order.index(token_type) if token_type in order else len(order)

    def p_error(self, t: LexToken | None) -> None:
        expected = self.expected_now()
        raise self.syntax_error(t, expected)

    def syntax_error(self, t: LexToken | None, expected: list[str]) -> ConfigError:
        names = expected_list(self.name_of(e) for e in expected)
        if t is None:
            return self.ctx.error("unexpected end of file", expected=names)
        what = self.name_of(t.type)
        if what.startswith("'"):
            return self.ctx.error("unexpected", t.value, expected=names)
        return self.ctx.error("unexpected " + re.sub(r"^an? ", "", what), t.value, expected=names)


def check_ip(ctx: Context, tok: Tok) -> str:
    """
    An IPv4 or IPv6 address, in its canonical spelling.
    """
    try:
        return str(ipaddress.ip_address(tok.value))
    except ValueError:
        raise ctx.error("bad IP address", tok, expected="an IPv4 or IPv6 address") from None


def check_network(ctx: Context, tok: Tok) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """
    A CIDR range such as C{10.0.0.0/8}; host bits must be zero.
    """
    if "/" not in tok.value:
        raise ctx.error("bad CIDR range", tok, expected="ADDRESS/PREFIX, e.g. 10.0.0.0/8")
    try:
        return ipaddress.ip_network(tok.value, strict=True)
    except ValueError as e:
        raise ctx.error(
            "bad CIDR range", tok, expected=f"ADDRESS/PREFIX, e.g. 10.0.0.0/8; {e}"
        ) from None


_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z"
)


def check_host(ctx: Context, tok: Tok) -> str:
    """
    An IP address or a DNS name.
    """
    try:
        return str(ipaddress.ip_address(tok.value))
    except ValueError:
        pass
    if _HOSTNAME.match(tok.value) and not re.fullmatch(r"[0-9.]+", tok.value):
        return tok.value
    raise ctx.error("bad host", tok, expected="an IP address or a DNS name")


def check_int(ctx: Context, tok: Tok, what: str, low: int, high: int) -> int:
    """
    A decimal integer in C{[low, high]}.
    """
    if not re.fullmatch(r"[0-9]{1,10}", tok.value):
        raise ctx.error(f"bad {what}", tok, expected=f"a number from {low} to {high}")
    value = int(tok.value)
    if not low <= value <= high:
        raise ctx.error(f"{what} out of range", tok, expected=f"a number from {low} to {high}")
    return value


def check_port(ctx: Context, tok: Tok, listening: bool = False) -> int:
    """
    A TCP/UDP port; 0 (any free port) only where we listen.
    """
    return check_int(ctx, tok, "port", 0 if listening else 1, 65535)


def quote(text: str) -> str:
    """
    Write C{text} as a double-quoted string with C{\\} escapes.
    """
    if "\n" in text or "\r" in text:
        raise ValueError(f"cannot write a line break inside a string: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unquote(raw: str) -> str:
    """
    The text of a double-quoted string token: C{\\"} and C{\\\\} escape.
    """
    return re.sub(r"\\(.)", r"\1", raw[1:-1])


STRING_REGEX = r'"([^"\\\n]|\\[^\n])*"'


A = TypeVar("A", bound=attrs.AttrsInstance)


def evolve_at(obj: A, path: Sequence[str], value: object) -> A:
    """C{obj} (a frozen attrs object) with the value at attribute path
    C{path} replaced; the objects on the way are evolved, the rest shared."""
    head, *rest = path
    new = value if not rest else evolve_at(getattr(obj, head), rest, value)
    # The attrs plugin of mypy checks evolve() only on concrete classes.
    changed: A = attrs.evolve(cast(Any, obj), **{head: new})
    return changed
