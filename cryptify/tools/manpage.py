"""Manual pages and per-action help, both from the CLIs' own definitions.

Each CLI describes its actions once: ``crs-cli``, ``cryptify-kms`` and
``cryptify-client`` in their argparse parsers, ``cig-cli`` in a table of
:class:`ActionDoc`.  From that one description come ``PROG help ACTION``,
``PROG ACTION --help`` (:func:`action_help`) and the manual page
(:func:`render`), so the page cannot say something the program does not.

``python -m cryptify.tools.manpage DIR`` writes every page into DIR
(``make man``: ``build/man``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import IO


@dataclass(frozen=True)
class Arg:
    """One argument or option: how it is written and what it means."""

    term: str
    help: str


@dataclass(frozen=True)
class ActionDoc:
    """One action: its words (``("show", "blacklist")``), usage and help."""

    words: tuple[str, ...]
    usage: str
    help: str
    args: tuple[Arg, ...] = ()


@dataclass(frozen=True)
class Page:
    """What a manual page says, apart from what comes from the actions."""

    name: str
    section: int
    summary: str
    synopsis: tuple[str, ...]
    description: str
    actions: tuple[ActionDoc, ...]
    options: tuple[Arg, ...] = ()
    exit_status: tuple[tuple[str, str], ...] = ()
    environment: tuple[Arg, ...] = ()
    files: tuple[Arg, ...] = ()
    see_also: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()


def _expand(action: argparse.Action) -> str:
    text = action.help or ""
    if "%" not in text:
        return text
    try:
        return text % {"default": action.default}
    except (KeyError, TypeError, ValueError):
        return text


def _term(action: argparse.Action) -> str:
    metavar = action.metavar if isinstance(action.metavar, str) else None
    if not action.option_strings:
        return metavar or action.dest.upper()
    names = ", ".join(action.option_strings)
    if action.nargs == 0:
        return names
    value = metavar or action.dest.upper()
    if action.nargs in ("*", "+"):
        return f"{names} {value}..."
    return f"{names} {value}"


def arguments(parser: argparse.ArgumentParser) -> tuple[Arg, ...]:
    """The arguments and options of a parser, without help and subcommands."""
    found = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        found.append(Arg(_term(action), _expand(action)))
    return tuple(found)


def _usage(parser: argparse.ArgumentParser) -> str:
    text = " ".join(parser.format_usage().split())
    return text.removeprefix("usage:").strip()


def actions_from_parser(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> tuple[ActionDoc, ...]:
    """Every leaf action of an argparse parser, in the order it defines them."""
    found: list[ActionDoc] = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        for name, sub in action.choices.items():
            path = (*words, name)
            if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                found.extend(actions_from_parser(sub, path))
            else:
                text = helps.get(name, "") or sub.description or ""
                found.append(ActionDoc(path, _usage(sub), text, arguments(sub)))
    return tuple(found)


def select(actions: Iterable[ActionDoc], words: Sequence[str]) -> tuple[ActionDoc, ...]:
    """The actions that ``words`` name: one action, or all under a group."""
    wanted = tuple(words)
    return tuple(a for a in actions if a.words[: len(wanted)] == wanted)


def action_help(actions: Iterable[ActionDoc], words: Sequence[str]) -> str | None:
    """The help text of the actions ``words`` names; None if it names none."""
    chosen = select(actions, words)
    if not words or not chosen:
        return None
    blocks = []
    for action in chosen:
        lines = [f"usage: {action.usage}", "", f"  {action.help}"]
        if action.args:
            lines += ["", "arguments:"]
            width = max(len(arg.term) for arg in action.args)
            for arg in action.args:
                lines.append(f"  {arg.term.ljust(width)}  {arg.help}".rstrip())
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def help_words(
    argv: Sequence[str], actions: Iterable[ActionDoc], valued: Iterable[str]
) -> list[str]:
    """The action words before ``--help`` in ``argv``, skipping global options.

    ``valued`` are the global options that take a value (``--socket``).
    """
    takes_value = set(valued)
    words: list[str] = []
    skip = False
    for word in argv:
        if word in ("-h", "--help"):
            break
        if skip:
            skip = False
            continue
        if word in takes_value:
            skip = True
            continue
        if word.startswith("-"):
            continue
        words.append(word)
    known = tuple(actions)
    while words and not select(known, words):
        words.pop()
    return words


# -- roff ------------------------------------------------------------------


def escape(text: str) -> str:
    """Text safe in a roff line: backslashes, hyphens, leading dots and quotes."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text[:1] in (".", "'"):
        text = "\\&" + text
    return text


def render(page: Page, version: str) -> str:
    """The page as man(7) roff."""
    out: list[str] = [
        f'.TH {page.name.upper()} {page.section} "" "cryptify {escape(version)}" "Cryptify"',
        ".SH NAME",
        f"{escape(page.name)} \\- {escape(page.summary)}",
        ".SH SYNOPSIS",
    ]
    for n, line in enumerate(page.synopsis):
        if n:
            out.append(".br")
        out.append(f".B {escape(page.name)}")
        out.append(escape(line))
    out += [".SH DESCRIPTION", *_paragraphs(page.description)]
    if page.actions:
        out.append(".SH ACTIONS")
        for action in page.actions:
            out += [".TP", f".B {escape(action.usage)}", escape(action.help)]
            for arg in action.args:
                out += [".RS", ".TP", f".I {escape(arg.term)}", escape(arg.help) or "\\&", ".RE"]
    for title, items in (("OPTIONS", page.options), ("ENVIRONMENT", page.environment)):
        if items:
            out.append(f".SH {title}")
            for arg in items:
                out += [".TP", f".B {escape(arg.term)}", escape(arg.help)]
    for title, text in page.extra:
        out += [f".SH {title}", *_paragraphs(text)]
    if page.exit_status:
        out.append(".SH EXIT STATUS")
        for code, meaning in page.exit_status:
            out += [".TP", f".B {escape(code)}", escape(meaning)]
    if page.files:
        out.append(".SH FILES")
        for arg in page.files:
            out += [".TP", f".I {escape(arg.term)}", escape(arg.help)]
    if page.see_also:
        out += [".SH SEE ALSO", ",\n".join(_reference(ref) for ref in page.see_also)]
    return "\n".join(out) + "\n"


def _reference(ref: str) -> str:
    name, _, section = ref.partition("(")
    return f".BR {escape(name)} ({section}" if section else f".B {escape(name)}"


def _paragraphs(text: str) -> list[str]:
    lines: list[str] = []
    for n, paragraph in enumerate(p for p in text.strip().split("\n\n") if p.strip()):
        if n:
            lines.append(".PP")
        lines.append(escape(" ".join(paragraph.split())))
    return lines


def pages() -> tuple[Page, ...]:
    """The pages, from each CLI's own definitions."""
    from cryptify.cig.operator import cli as cig
    from cryptify.client import cli_args as client
    from cryptify.crs.operator import cli as crs
    from cryptify.kms import cli as kms
    from cryptify.tools import admin_cli

    makers: Sequence[Callable[[], Page]] = (
        crs.manual_page,
        cig.manual_page,
        kms.manual_page,
        client.manual_page,
        admin_cli.manual_page,
    )
    return tuple(make() for make in makers)


def write_all(directory: str) -> list[str]:
    """Write every page as DIRECTORY/NAME.SECTION; return the paths."""
    from cryptify import __version__

    # Defaults some CLIs take from the environment: the pages show the
    # built-in ones, whatever the environment of the build.
    names = {variable.term for page in pages() for variable in page.environment}
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        made = pages()
    finally:
        os.environ.update(saved)
    os.makedirs(directory, exist_ok=True)
    written = []
    for page in made:
        path = os.path.join(directory, f"{page.name}.{page.section}")
        with open(path, "w", encoding="utf-8") as f:
            f.write(render(page, __version__))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """``python -m cryptify.tools.manpage DIRECTORY``: write the pages there."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m cryptify.tools.manpage DIRECTORY\n")
        return 2
    for path in write_all(args[0]):
        (out or sys.stdout).write(path + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
