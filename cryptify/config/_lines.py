"""
The line-oriented files of the CRS: C{crs.conf}, C{crs-local.conf} and
C{iw-crs.conf}.

One directive per line: a keyword, then its values separated by blanks.
C{#} starts a comment that runs to the end of the line; a value holding
blanks or C{#} is written in double quotes. C{crs.conf} also has section
headers, C{[GLOBAL]} and C{[POOL]}, on lines of their own.

The grammar is shared; each file kind names its directives, and checks
their values and their number after parsing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from cryptify.config._ply import Lexer, LexToken, Production

from ._base import STRING_REGEX, ConfigError, Context, Grammar, Tok, grammar, token_rule, unquote


@attrs.frozen
class Line:
    """
    One directive or section header, with its values.
    """

    keyword: Tok
    args: tuple[Tok, ...]
    section: bool = False


class LineGrammar(Grammar):
    """
    Lexer and parser for one line-oriented file kind.
    """

    tokens = ("SECTION", "DIRECTIVE", "WORD", "STRING", "NEWLINE")
    token_names = {
        "SECTION": "a section header",
        "DIRECTIVE": "a directive",
        "WORD": "a value",
        "STRING": "a quoted value",
        "NEWLINE": "end of line",
    }
    t_ignore = " \t\r\f\v"
    directives: frozenset[str] = frozenset()
    has_sections = False

    def __init__(self, directives: frozenset[str], has_sections: bool) -> None:
        super().__init__()
        self.directives = directives
        self.has_sections = has_sections

    def prepare_lexer(self, lexer: Lexer) -> None:
        lexer.at_line_start = True

    def lexer_input(self, text: str) -> str:
        return text + "\n"

    @token_rule(r"\#[^\n]*")
    def t_COMMENT(self, t: LexToken) -> None:
        return None

    @token_rule(r"\n+")
    def t_NEWLINE(self, t: LexToken) -> LexToken | None:
        t.lexer.lineno += len(t.value)
        if t.lexer.at_line_start:
            return None
        t.lexer.at_line_start = True
        t.value = self.ctx.tok("", t.lexpos, type="NEWLINE")
        return t

    @token_rule(r"\[[^\]\s\#\"]*\]")
    def t_SECTION(self, t: LexToken) -> LexToken | None:
        return self._word(t)

    @token_rule(STRING_REGEX)
    def t_STRING(self, t: LexToken) -> LexToken | None:
        t.lexer.at_line_start = False
        t.value = self.ctx.tok(unquote(t.value), t.lexpos, quoted=True, type="STRING")
        return t

    @token_rule(r"[^\s\"\#\x00-\x1f\x7f]+")
    def t_WORD(self, t: LexToken) -> LexToken | None:
        return self._word(t)

    def _word(self, t: LexToken) -> LexToken | None:
        if t.type == "WORD" and t.lexer.at_line_start:
            if t.value in self.directives:
                t.type = "DIRECTIVE"
        t.lexer.at_line_start = False
        t.value = self.ctx.tok(t.value, t.lexpos, type=t.type)
        return t

    def t_error(self, t: LexToken) -> None:
        char = t.value[0]
        tok = self.ctx.tok(char, t.lexpos)
        if char == '"':
            raise self.ctx.error("unterminated string", tok, expected="a closing '\"'")
        raise self.ctx.error("unexpected character", tok)

    @grammar("config : lines")
    def p_config(self, p: Production) -> None:
        p[0] = p[1]

    @grammar("lines : lines line")
    def p_lines(self, p: Production) -> None:
        p[0] = p[1]
        p[0].append(p[2])

    @grammar("lines : ")
    def p_lines_empty(self, p: Production) -> None:
        p[0] = []

    @grammar("line : SECTION NEWLINE")
    def p_line_section(self, p: Production) -> None:
        p[0] = Line(p[1], (), section=True)

    @grammar("line : DIRECTIVE args NEWLINE")
    def p_line_directive(self, p: Production) -> None:
        p[0] = Line(p[1], tuple(p[2]))

    @grammar("args : args arg")
    def p_args(self, p: Production) -> None:
        p[0] = p[1]
        p[0].append(p[2])

    @grammar("args : ")
    def p_args_empty(self, p: Production) -> None:
        p[0] = []

    @grammar("arg : WORD\n| STRING")
    def p_arg(self, p: Production) -> None:
        p[0] = p[1]

    def syntax_error(self, t: LexToken | None, expected: list[str]) -> ConfigError:
        known = ", ".join(sorted(self.directives))
        if t is not None and t.type == "WORD" and "DIRECTIVE" in expected:
            return self.ctx.error("unknown directive", t.value, expected=f"one of {known}")
        if t is not None and t.type == "SECTION" and not self.has_sections:
            return self.ctx.error("this file has no sections", t.value, expected="a directive")
        if t is not None and t.type == "SECTION":
            return self.ctx.error(
                "section header must be alone on its line", t.value, expected="end of line"
            )
        return super().syntax_error(t, expected)


def parse_lines(g: LineGrammar, text: str, filename: str) -> list[Line]:
    result: list[Line] = g.parse_text(text, filename)
    return result


class Args:
    """
    Checks the number of values a directive has against its usage string.
    """

    def __init__(self, ctx: Context, line: Line, usage: str) -> None:
        self.ctx = ctx
        self.line = line
        self.usage = f"{line.keyword.value} {usage}".strip()

    def exactly(self, names: Sequence[str]) -> tuple[Tok, ...]:
        return self.between(len(names), len(names), names)

    def between(self, low: int, high: int | None, names: Sequence[str]) -> tuple[Tok, ...]:
        args = self.line.args
        if len(args) < low:
            last = args[-1] if args else self.line.keyword
            missing = names[len(args)] if len(args) < len(names) else "a value"
            raise self.ctx.error(
                f"missing {missing}",
                text=None,
                at=Tok("", last.line, last.end_column + 1),
                expected=self.usage,
            )
        if high is not None and len(args) > high:
            extra = args[high]
            raise self.ctx.error("unexpected value", extra, expected=self.usage)
        return args


Handler = Callable[[Context, Line], None]
