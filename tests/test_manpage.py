"""The manual pages and per-action help generated from the CLIs' definitions."""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify import __version__
from cryptify.cig.operator import cli as cig
from cryptify.client import cli_args as client
from cryptify.crs.operator import cli as crs
from cryptify.crs.operator import cli_text as crs_text
from cryptify.kms import cli as kms
from cryptify.tools import admin_cli, manpage

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: What cig-cli's check_action accepts, written out here (not taken from
#: the table the page is made of).
CIG_ACTIONS = (
    ("echo", "hello"),
    ("show", "call"),
    ("show", "umsg"),
    ("read", "FILE"),
    ("set-key",),
    ("status",),
    ("help",),
)


def leaf_paths(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Every action path a parser accepts, walked here independently."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield words
        return
    for group in groups:
        for name, sub in group.choices.items():
            yield from leaf_paths(sub, (*words, name))


def plain(roff: str) -> str:
    """The page's text with roff's escapes for hyphens and backslashes undone."""
    return roff.replace("\\-", "-").replace("\\e", "\\").replace("\\&", "")


def page_of(name: str) -> str:
    for page in manpage.pages():
        if page.name == name:
            return manpage.render(page, __version__)
    raise AssertionError(name)


def run_cli(
    run: Callable[[Sequence[str], io.StringIO, io.StringIO], int], argv: Sequence[str]
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(list(argv), out, err)
    return status, out.getvalue(), err.getvalue()


class EveryActionOnItsPage(SynchronousTestCase):
    def assertActionsOnPage(self, prog: str, paths: Sequence[tuple[str, ...]]) -> None:
        text = plain(page_of(prog))
        headings = [line[3:] for line in text.splitlines() if line.startswith(".B ")]
        for path in paths:
            wanted = f"{prog} {' '.join(path)}"
            self.assertTrue(
                any(h == wanted or h.startswith(wanted + " ") for h in headings),
                f"{wanted!r} has no entry in {prog}'s page",
            )

    def test_crs_cli(self) -> None:
        paths = list(leaf_paths(crs.build_parser(io.StringIO())))
        self.assertIn(("show", "push-token"), paths)
        self.assertGreater(len(paths), 30)
        self.assertActionsOnPage("crs-cli", paths)

    def test_cig_cli(self) -> None:
        for words in CIG_ACTIONS:
            cig.check_action(list(words))
        paths = [w if w[0] == "show" else w[:1] for w in CIG_ACTIONS]
        self.assertActionsOnPage("cig-cli", paths)

    def test_kms(self) -> None:
        paths = list(leaf_paths(kms.build_parser(io.StringIO())))
        self.assertEqual(
            sorted(p[0] for p in paths),
            ["cig-keys", "export", "init", "inspect", "issue", "update"],
        )
        self.assertActionsOnPage("cryptify-kms", paths)

    def test_client(self) -> None:
        paths = list(leaf_paths(client.build_parser()))
        self.assertEqual(sorted(p[0] for p in paths), sorted(client.ACTIONS))
        self.assertActionsOnPage("cryptify-client", paths)

    def test_admin(self) -> None:
        paths = list(leaf_paths(admin_cli.build_parser(io.StringIO())))
        self.assertIn(("apply",), paths)
        self.assertActionsOnPage("cryptify-admin", paths)
        self.assertIn("CRYPTIFY_ADMIN_SECRET_FILE", plain(page_of("cryptify-admin")))

    def test_options_and_arguments(self) -> None:
        """Each option's help text is on the page (--socket, -b BITS ...)."""
        text = plain(page_of("crs-cli"))
        self.assertIn("--socket PATH", text)
        self.assertIn(crs_text.SIZE_HELP["bits"], text)
        self.assertIn(crs_text.ACCOUNT_HELP, text)
        text = plain(page_of("cryptify-kms"))
        self.assertIn("--period YYYY-MM", text)
        self.assertIn("--store", text)

    def test_sections(self) -> None:
        for page in manpage.pages():
            text = manpage.render(page, __version__)
            for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "ACTIONS", "EXIT STATUS"):
                self.assertIn(f".SH {section}\n", text, page.name)
            self.assertIn(".SH SEE ALSO", text)


class ValidRoff(SynchronousTestCase):
    def test_groff_renders_without_warnings(self) -> None:
        groff = shutil.which("groff")
        self.assertIsNotNone(groff, "groff is missing: make debs-test installs groff-base")
        for page in manpage.pages():
            done = subprocess.run(
                [str(groff), "-man", "-Tutf8", "-ww", "-z"],
                input=manpage.render(page, __version__),
                capture_output=True,
                text=True,
                check=False,
            )
            self.assertEqual((done.returncode, done.stderr), (0, ""), page.name)

    @given(st.text())
    def test_escape(self, text: str) -> None:
        """No text starts a request or leaves a bare backslash or hyphen."""
        line = manpage.escape(text)
        self.assertFalse(line.startswith((".", "'")))
        rest = re.sub(r"\\[e&-]", "", line)
        self.assertNotIn("\\", rest)
        self.assertNotIn("-", rest)

    def test_page_does_not_take_the_build_environment(self) -> None:
        target = self.mktemp()
        with mock.patch.dict(os.environ, {"CRS_CLI_SOCKET": "/tmp/elsewhere.sock"}):
            manpage.write_all(target)
            self.assertEqual(os.environ.get("CRS_CLI_SOCKET"), "/tmp/elsewhere.sock")
        with open(os.path.join(target, "crs-cli.8"), encoding="utf-8") as f:
            text = f.read()
        self.assertNotIn("elsewhere", text)
        self.assertIn(crs.DEFAULT_SOCKET, plain(text))

    def test_written_as_the_packages_install_them(self) -> None:
        """make man writes exactly the pages packaging/stage.sh installs."""
        target = self.mktemp()
        self.assertEqual(manpage.main([target], io.StringIO()), 0)
        with open(os.path.join(TOP, "packaging", "stage.sh"), encoding="utf-8") as f:
            staged = re.findall(r"^\s*install_man (.+)$", f.read(), re.M)
        names = {name for line in staged for name in line.split()}
        self.assertEqual(set(os.listdir(target)), names)


class HelpEqualsDashHelp(SynchronousTestCase):
    def test_crs_every_action(self) -> None:
        paths = list(leaf_paths(crs.build_parser(io.StringIO())))
        groups = {p[:1] for p in paths if len(p) > 1}
        for path in paths + sorted(groups):
            asked = run_cli(crs.run, ["help", *path])
            dashed = run_cli(crs.run, [*path, "--help"])
            self.assertEqual(asked, dashed, path)
            self.assertEqual(asked[0], 0, path)
            self.assertIn(f"usage: crs-cli {' '.join(path)}", asked[1])
            self.assertEqual(run_cli(crs.run, ["--socket", "/x", *path, "-h"]), asked)

    def test_crs_help_text_is_the_page_text(self) -> None:
        _, out, _ = run_cli(crs.run, ["help", "show", "blacklist"])
        self.assertIn("show the blacklist of ACCOUNT", out)
        self.assertIn("show the blacklist of ACCOUNT", page_of("crs-cli"))
        self.assertIn(crs_text.ACCOUNT_HELP, out)

    def test_crs_overview_names_every_action(self) -> None:
        """The hand-laid overview (crs-cli help) cannot leave an action out."""
        lines = crs.HELP.splitlines()
        for path in leaf_paths(crs.build_parser(io.StringIO())):
            self.assertTrue(
                any(
                    line.split()[:1] == [path[0]] and all(w in line for w in path)
                    for line in lines
                    if line.strip()
                ),
                f"{' '.join(path)} is not in crs-cli help",
            )

    def test_cig_overview_names_every_action(self) -> None:
        lines = cig.HELP.splitlines()
        for action in cig.ACTIONS:
            if action.words[0] == "quit":
                continue
            self.assertTrue(
                any(
                    line.split()[:1] == [action.words[0]] and all(w in line for w in action.words)
                    for line in lines
                    if line.strip()
                ),
                f"{' '.join(action.words)} is not in cig-cli help",
            )

    def test_crs_overview_and_unknown(self) -> None:
        self.assertEqual(run_cli(crs.run, ["help"]), (0, crs.HELP, ""))
        self.assertEqual(run_cli(crs.run, ["--help"]), (0, crs.HELP, ""))
        status, out, err = run_cli(crs.run, ["help", "nosuch"])
        self.assertEqual((status, out), (2, ""))
        self.assertIn("no action 'nosuch'", err)

    def test_cig_every_action(self) -> None:
        for words in CIG_ACTIONS:
            path = list(words[:2]) if words[0] == "show" else list(words[:1])
            asked = run_cli(cig.run, ["help", *path])
            dashed = run_cli(cig.run, [*path, "--help"])
            self.assertEqual(asked, dashed, path)
            self.assertEqual(asked[0], 0)
            self.assertIn(f"usage: cig-cli {' '.join(path)}", asked[1])

    def test_cig_overview_and_unknown(self) -> None:
        self.assertEqual(run_cli(cig.run, ["help"]), (0, cig.HELP, ""))
        status, _, err = run_cli(cig.run, ["help", "nosuch"])
        self.assertEqual(status, 2)
        self.assertIn("no action 'nosuch'", err)
