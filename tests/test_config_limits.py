"""
Tests for the bounds every configuration reader keeps: file size, line
length, work linear in the file's size, and short error messages.
"""

from __future__ import annotations

import os
import re
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config import (
    ConfigError,
    cig,
    crs,
    load_cig_config,
    load_crs_config,
    parse_cig_config,
    parse_crs_config,
    parse_crs_local_config,
    parse_iw_crs_config,
)
from cryptify.config._base import MAX_CONFIG_BYTES, MAX_LINE_BYTES, QUOTE_CHARS

FIXTURES = Path(__file__).parent / "fixtures" / "config"


def big_cig(maps: int) -> str:
    """A valid C{cig.conf} of C{maps} maps of ten entries each."""
    out = []
    for m in range(maps):
        entries = "".join(
            f'    entry e{i} tel "+{m}{i}{{n}}" sip "sip:{{n}}@pbx{i}.example";\n'
            for i in range(10)
        )
        out.append(f"map m{m} {{\n{entries}}}\n")
    refs = "".join(f"    extension map m{m};\n" for m in range(maps))
    out.append(f"interfaces {{\n  tel {{\n{refs}  }}\n}}\n")
    return "".join(out)


def big_crs(hosts: int) -> str:
    """A valid C{crs.conf} with a pool of C{hosts} hosts."""
    names = [f"crs{i}" for i in range(hosts)]
    return (
        "[GLOBAL]\nlisten 0.0.0.0 5223\n[POOL]\n"
        + "".join(f"host {n}\n" for n in names)
        + "".join(
            f"ip {n} 10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}\n"
            for i, n in enumerate(names)
        )
    )


class SizeLimitTests(SynchronousTestCase):
    """
    A reader never takes in more than L{MAX_CONFIG_BYTES}, nor a line longer
    than L{MAX_LINE_BYTES}; each refusal is one error naming the file.
    """

    def path(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def assertRefused(self, load: Callable[[str], Any], path: str, message: str) -> ConfigError:
        e = self.assertRaises(ConfigError, load, path)
        self.assertIn(message, str(e))
        self.assertTrue(str(e).startswith(path + ":"), str(e))
        return e

    def test_dev_zero(self) -> None:
        """
        C{/dev/zero}, endless and without a line break, is refused at its
        first line, for every file kind.
        """
        for load in (load_crs_config, load_cig_config):
            e = self.assertRefused(load, "/dev/zero", "line is longer than")
            self.assertEqual(e.line, 1)

    def test_fifo_without_newline(self) -> None:
        """
        A FIFO that writes more than a line's limit without a line break is
        refused as soon as the limit is crossed; the reader does not wait
        for the writer to finish.
        """
        fifo = os.path.join(os.path.abspath(self.mktemp()))
        os.mkfifo(fifo)
        written: list[int] = []

        def writer() -> None:
            try:
                with open(fifo, "wb", buffering=0) as f:
                    for _ in range(64):
                        f.write(b"x" * 4096)
                        written.append(4096)
            except BrokenPipeError:
                pass

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            self.assertRefused(load_cig_config, fifo, f"line is longer than {MAX_LINE_BYTES} bytes")
        finally:
            thread.join()
        self.assertLess(sum(written), 64 * 4096)

    def test_long_line_named(self) -> None:
        """
        The line that breaks the limit is named by its number.
        """
        data = b"[GLOBAL]\n# fine\nlisten " + b"1" * MAX_LINE_BYTES + b" 5223\n"
        e = self.assertRefused(load_crs_config, self.path(data), "line is longer than")
        self.assertEqual(e.line, 3)
        self.assertLess(len(str(e)), 200)

    def test_line_at_limit(self) -> None:
        """
        A line exactly as long as the limit is read.
        """
        data = b"#" + b"x" * (MAX_LINE_BYTES - 1) + b"\n[GLOBAL]\n"
        load_crs_config(self.path(data))

    def test_text_line_limit(self) -> None:
        """
        Text handed to a parser directly keeps the same line limit.
        """
        text = "map m {\n}\n// " + "y" * MAX_LINE_BYTES
        e = self.assertRaises(ConfigError, parse_cig_config, text, "cig.conf")
        self.assertEqual((e.filename, e.line), ("cig.conf", 3))

    def test_file_too_large(self) -> None:
        """
        A file over the size limit is refused, by its size, however short
        its lines.
        """
        data = b"# comment\n" * (MAX_CONFIG_BYTES // 10 + 1)
        self.assertRefused(load_cig_config, self.path(data), "file is larger than")
        self.assertRaises(ConfigError, parse_crs_config, data)

    def test_unreadable(self) -> None:
        """
        A directory, or a missing file, is one error naming it.
        """
        self.assertRefused(load_crs_config, os.path.dirname(self.path(b"")), "cannot read")
        self.assertRefused(load_crs_config, self.mktemp(), "cannot read")


class _CountingStr(str):
    """
    Text that counts the characters its search methods look at.
    """

    scanned = 0

    def _span(self, args: tuple[Any, ...]) -> int:
        start = args[1] if len(args) > 1 and args[1] is not None else 0
        end = args[2] if len(args) > 2 and args[2] is not None else len(self)
        return max(0, min(end, len(self)) - max(start, 0))

    def count(self, *args: Any) -> int:  # type: ignore[override]
        _CountingStr.scanned += self._span(args)
        return super().count(*args)

    def find(self, *args: Any) -> int:  # type: ignore[override]
        _CountingStr.scanned += self._span(args)
        return super().find(*args)

    def rfind(self, *args: Any) -> int:  # type: ignore[override]
        _CountingStr.scanned += self._span(args)
        return super().rfind(*args)

    def index(self, *args: Any) -> int:  # type: ignore[override]
        _CountingStr.scanned += self._span(args)
        return super().index(*args)

    def rindex(self, *args: Any) -> int:  # type: ignore[override]
        _CountingStr.scanned += self._span(args)
        return super().rindex(*args)


class LinearWorkTests(SynchronousTestCase):
    """
    Parsing costs work and memory in proportion to the file's size, measured
    by counting, never by the clock.
    """

    def scanned(self, grammar: Any, text: str) -> int:
        _CountingStr.scanned = 0
        grammar.parse_text(_CountingStr(text), "big.conf")
        return _CountingStr.scanned

    def test_cig_positions_linear(self) -> None:
        """
        Placing every token of a large C{cig.conf} (line and column) looks
        at each character of the text a bounded number of times, not once
        per token.
        """
        text = big_cig(300)
        self.assertLessEqual(self.scanned(cig._grammar, text), 2 * len(text))

    def test_crs_positions_linear(self) -> None:
        """
        The same for a C{crs.conf} with a large pool.
        """
        text = big_crs(5000)
        self.assertLessEqual(self.scanned(crs._grammar, text), 2 * len(text))

    def test_memory_bounded(self) -> None:
        """
        The peak memory of parsing a large generated C{cig.conf} stays
        within a fixed multiple of its size.
        """
        text = big_cig(300)
        self.assertGreater(len(text), 150_000)
        tracemalloc.start()
        try:
            parse_cig_config(text)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 40 * len(text))


@st.composite
def hostile(draw: st.DrawFn) -> tuple[Callable[..., Any], str]:
    """A fixture file with a long run of hostile text put into it."""
    path = draw(st.sampled_from(sorted(FIXTURES.glob("*.conf"))))
    parse: Callable[..., Any] = parse_cig_config
    if path.name.startswith("crs-local"):
        parse = parse_crs_local_config
    elif path.name.startswith("crs"):
        parse = parse_crs_config
    elif path.name.startswith("iw-crs"):
        parse = parse_iw_crs_config
    lines = path.read_text().splitlines()
    size = draw(st.integers(QUOTE_CHARS, 4000))
    run = draw(st.sampled_from(["a", "1", "x.", "{", "%", "\x01", "é", '\\"', "*/"])) * size
    piece = draw(
        st.sampled_from(
            [
                run,
                f'"{run}"',
                f'"{run}',
                f"listen {run} 5223",
                f"host {run}",
                f"ip {run} 10.0.0.1",
                f"keep-alive {run}/8 tcp 5",
                f'map {run} {{ entry {run} tel "{run}" sip "{{x}}"; }}',
                f"interfaces {{ sip {{ bind {run}; }} }}",
                f'mailboxes {{ read {{ path "/x"; map_from translate_map {run}; }} }}',
                f"iw-crs {run} secret",
                f"crsname {run}",
                f"/* {run}",
            ]
        )
    )
    at = draw(st.integers(0, len(lines)))
    lines.insert(at, piece)
    return parse, "\n".join(lines) + "\n"


class ShortErrorTests(SynchronousTestCase):
    """
    However much text a file holds, an error is one short line that names
    the file and line, and quotes at most a short excerpt.
    """

    WHERE = re.compile(r"\Ahostile\.conf:\d+(:\d+)?: ")

    @settings(max_examples=300, deadline=None)
    @given(hostile())
    def test_errors_short(self, case: tuple[Callable[..., Any], str]) -> None:
        """
        Every error a hostile file gives is under 500 characters, on one
        line, starting with file:line(:column), its quote no longer than
        L{QUOTE_CHARS} and an ellipsis.
        """
        parse, text = case
        try:
            parse(text, "hostile.conf")
        except ConfigError as e:
            message = str(e)
            self.assertLess(len(message), 500, message)
            self.assertNotIn("\n", message)
            self.assertRegex(message, self.WHERE)
            if e.text is not None and len(e.text) > QUOTE_CHARS:
                self.assertIn("...'", message)

    def test_undefined_map_list_cut(self) -> None:
        """
        The list of known names in an "expected" part is cut short too.
        """
        maps = "".join(f"map {'n' * 40}{i} {{ }}\n" for i in range(500))
        text = maps + "interfaces { tel { extension map nothing; } }\n"
        e = self.assertRaises(ConfigError, parse_cig_config, text, "cig.conf")
        self.assertIn("reference to an undefined map", str(e))
        self.assertLess(len(str(e)), 500)

    def test_bad_network_cut(self) -> None:
        """
        A CIDR error does not repeat the whole bad value from the library's
        message.
        """
        text = f"[GLOBAL]\nkeep-alive 10.0.0.{'1' * 5000}/8 tcp 5\n"
        e = self.assertRaises(ConfigError, parse_crs_config, text, "crs.conf")
        self.assertLess(len(str(e)), 500)
        self.assertTrue(str(e).startswith("crs.conf:2:"))

    def test_escaped_characters_cut(self) -> None:
        """
        Control characters are shown escaped (several characters each); the
        cut applies to what is shown, so such an error stays short too.
        """
        e = ConfigError("\x01" * 300, "c.conf", 1, 1, "\x02" * 300, "\x03" * 300)
        self.assertLess(len(str(e)), 500, str(e))
        self.assertIn("\\x01", str(e))
