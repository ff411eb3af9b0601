"""
The CIG manual's Migration step: C{translate_map} rules from C{map} entries.

A CIG that used the message interface before the mailbox syntax translated
message URIs with its C{map} entries. The manual's migration adds one
C{translate_map} per map, of the same name (the two kinds of map have
separate name spaces), whose rules give the same results as the map's
entries for messages, to be named by the C{mailboxes} block.

An entry C{entry NAME tel "A" sip "B"} works both ways for calls; a
translate rule works one way. The manual's example matches, in each
entry, the pattern written first and translates into the one written
second (C{telmap}: C{tel} first; C{sipsrc}: C{sip} first), so that is
what this does; C{--reverse MAP} swaps the two sides of every entry of a
map (a map whose entries are written in both orders is reported, as its
rules then go both ways). A map that already has a C{translate_map} of its name was migrated
before and is left out, so running the step twice adds nothing.

The input is checked by the CIG's own parser first: a file the CIG would
refuse is refused here with the same message, and the result appended to
the file is parsed again before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from typing import IO, TYPE_CHECKING

import attrs

from cryptify.files import write_atomically

from ._base import ConfigError, quote, read_config_file
from ._cig_grammar import Block, CigGrammar, Stmt
from .cig import parse_cig_config
from .cig_model import CigConfig, TranslateMap, TranslateRule

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

PROG = "cig-migrate-maps"

_grammar = CigGrammar()


class MigrationError(Exception):
    """The maps cannot be migrated as asked (the text says why)."""


@attrs.frozen
class Migration:
    """
    What the step adds: C{maps}, one translate map per migrated map, and
    the names of the maps left out because a translate map of that name
    already exists (C{skipped}).
    """

    maps: tuple[TranslateMap, ...]
    skipped: tuple[str, ...]
    #: Maps whose entries are written in both orders: their translate maps
    #: match URIs of both kinds, each rule in its entry's direction.
    mixed: tuple[str, ...] = ()

    def text(self) -> str:
        """The C{translate_map} blocks to append to C{cig.conf}."""
        return render_translate_maps(self.maps)


def _written_first(text: str, filename: str) -> dict[tuple[str, str], bool]:
    """
    For each (map, entry): whether its C{tel} pattern is written before its
    C{sip} pattern.
    """
    order: dict[tuple[str, str], bool] = {}
    for item in _grammar.parse_text(text, filename):
        if not isinstance(item, Block) or item.kw.value != "map" or item.name is None:
            continue
        for stmt in item.body:
            assert isinstance(stmt, Stmt)
            name, tel, sip = stmt.args
            order[(item.name.value, name.value)] = (tel.line, tel.column) < (sip.line, sip.column)
    return order


def migrate_maps(
    text: str | bytes,
    filename: str = "<string>",
    reverse: Iterable[str] = (),
    only: Iterable[str] | None = None,
) -> Migration:
    """
    The translate maps that reproduce C{text}'s maps for messages.

    @param reverse: maps whose entries are matched on the pattern written
        second.
    @param only: the maps to migrate (default: all).
    @raise ConfigError: if C{text} is not a valid C{cig.conf}.
    @raise MigrationError: if C{reverse} or C{only} names a map the file
        does not have.
    """
    cfg = parse_cig_config(text, filename)
    source = text if isinstance(text, str) else text.decode("utf-8")
    order = _written_first(source, filename)
    known = {m.name for m in cfg.maps}
    reverse = set(reverse)
    chosen = set(known if only is None else only)
    unknown = sorted((reverse | chosen) - known)
    if unknown:
        raise MigrationError(f"{filename}: no map named {', '.join(unknown)}")
    existing = {t.name for t in cfg.translate_maps}
    made: list[TranslateMap] = []
    skipped: list[str] = []
    mixed: list[str] = []
    for uri_map in cfg.maps:
        if uri_map.name not in chosen:
            continue
        if uri_map.name in existing:
            skipped.append(uri_map.name)
            continue
        rules = []
        if len({order[(uri_map.name, e.name)] for e in uri_map.entries}) > 1:
            mixed.append(uri_map.name)
        for entry in uri_map.entries:
            tel_first = order[(uri_map.name, entry.name)]
            if uri_map.name in reverse:
                tel_first = not tel_first
            match, translation = (entry.tel, entry.sip) if tel_first else (entry.sip, entry.tel)
            rules.append(TranslateRule(match, translation))
        made.append(TranslateMap(uri_map.name, tuple(rules)))
    return Migration(tuple(made), tuple(skipped), tuple(mixed))


def render_translate_maps(maps: Sequence[TranslateMap]) -> str:
    """C{translate_map} blocks in the manual's layout."""
    out: list[str] = []
    for tmap in maps:
        out.append(f"translate_map {tmap.name} {{")
        for rule in tmap.rules:
            out += [
                "    rule",
                f"        match {quote(rule.match)}",
                f"        translation {quote(rule.translation)};",
            ]
        out += ["}", ""]
    return "\n".join(out)


def appended(text: str, migration: Migration, filename: str = "<string>") -> tuple[str, CigConfig]:
    """
    C{text} with the migration's blocks appended, and what it parses to.

    @raise ConfigError: if the result does not parse (it always should).
    """
    if not migration.maps:
        return text, parse_cig_config(text, filename)
    sep = "" if text.endswith("\n") or not text else "\n"
    header = "\n// translate maps made from the maps above by cig-migrate-maps\n"
    result = text + sep + header + migration.text()
    return result, parse_cig_config(result, filename)


def _replace(path: str, text: str) -> None:
    """Write C{path} anew through a temporary file: same owner and mode."""
    info = os.stat(path)

    def same_owner(fd: int) -> None:
        if os.geteuid() == 0:
            os.fchown(fd, info.st_uid, info.st_gid)

    write_atomically(path, text.encode("utf-8"), info.st_mode & 0o7777, prepare=same_owner)


USAGE = f"""\
{PROG} [--reverse MAP]... [--map MAP]... [--in-place] CIG_CONF

Print the translate_map blocks that give messages the same URIs as the
maps of CIG_CONF (the CIG manual's Migration), or with --in-place append
them to CIG_CONF. Each entry's rule matches the pattern written first and
translates into the one written second; --reverse MAP swaps them for MAP.
"""


class _Parser(argparse.ArgumentParser):
    """argparse writing its usage and errors to the command's streams."""

    def __init__(self, out: IO[str], err: IO[str]) -> None:
        super().__init__(prog=PROG, usage=USAGE)
        self.streams = (out, err)

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if message:
            (self.streams[1] if file is sys.stderr else self.streams[0]).write(message)


def run(argv: Sequence[str], out: IO[str], err: IO[str]) -> int:
    """The command; returns the exit status (0 done, 1 refused, 2 usage)."""
    parser = _Parser(out, err)
    parser.add_argument("config", metavar="CIG_CONF")
    parser.add_argument("--reverse", action="append", default=[], metavar="MAP")
    parser.add_argument("--map", action="append", default=None, metavar="MAP", dest="only")
    parser.add_argument("--in-place", action="store_true")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        data = read_config_file(args.config)
        migration = migrate_maps(data, args.config, args.reverse, args.only)
        text = data.decode("utf-8")
        result, _ = appended(text, migration, args.config)
    except (ConfigError, MigrationError) as exc:
        err.write(f"{PROG}: {exc}\n")
        return 1
    for name in migration.skipped:
        err.write(f"{PROG}: translate_map {name} already exists: map {name} left out\n")
    for name in migration.mixed:
        err.write(
            f"{PROG}: map {name} has entries written tel first and sip first: each rule"
            " matches its entry's first pattern (check it, or use --reverse)\n"
        )
    if not args.in_place:
        out.write(migration.text())
        return 0
    if not migration.maps:
        out.write(f"{args.config}: nothing to add\n")
        return 0
    try:
        _replace(args.config, result)
    except OSError as exc:
        err.write(f"{PROG}: cannot write {args.config}: {exc.strerror}\n")
        return 1
    names = ", ".join(t.name for t in migration.maps)
    out.write(f"{args.config}: added translate_map {names}\n")
    return 0


def main() -> None:
    """Console script entry point."""
    from cryptify.console import console_main

    console_main(lambda out: run(sys.argv[1:], out, sys.stderr))
