"""
The CIG manual's Migration: translate maps made from the old maps
(cryptify.config.cig_migrate, the cig-migrate-maps command).
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config import ConfigError, parse_cig_config
from cryptify.config._base import quote
from cryptify.config.cig_migrate import (
    MigrationError,
    appended,
    migrate_maps,
    render_translate_maps,
    run,
)
from cryptify.config.cig_model import TranslateMap, TranslateRule
from cryptify.config.patterns import expand_pattern

#: The CIG manual's "Example maps" (Migration chapter), as printed.
MANUAL_MAPS = (
    Path(__file__).parent / "fixtures" / "config" / "manual-migration-maps.conf"
).read_text()

#: The translate maps the manual says reproduce them, as printed (without
#: the example's mailboxes block and its stray closing brace).
MANUAL_TRANSLATE_MAPS = """\
translate_map telmap {
    rule
        match "tel:+8888;{series}"
        translation "sip:{series}@pbx.com";
}

translate_map telsrc {
    rule
        match "sip:{series}@{discard}"
        translation "tel:+8888;{series}";
}

translate_map sipsrc {
    rule
        match "tel:+{series}"
        translation "sip:{series}@{discard}";
}

translate_map sipmap {
    rule
        match "sip:{series}@secure.com"
        translation "tel:+{series}";
}
"""

MANUAL_MAILBOXES = """
mailboxes {
    read {
        path "/path/to/read/mailbox";
        map_from translate_map telsrc;
        map_to translate_map sipmap;
    }
    write {
        path "/path/to/write/mailbox";
        map_from translate_map sipsrc;
        map_to translate_map telmap;
    }
}
"""


class ManualExampleTests(SynchronousTestCase):
    def test_manual_example(self) -> None:
        """
        The manual's example maps give exactly the manual's translate maps,
        written in its layout.
        """
        migration = migrate_maps(MANUAL_MAPS)
        self.assertEqual(migration.maps, parse_cig_config(MANUAL_TRANSLATE_MAPS).translate_maps)
        self.assertEqual(migration.text().strip(), MANUAL_TRANSLATE_MAPS.strip())
        self.assertEqual(migration.skipped, ())

    def test_mailboxes_use_them(self) -> None:
        """
        Appended to the file, they parse, and the manual's mailboxes block
        naming them is then accepted and translates messages as the maps did.
        """
        text, cfg = appended(MANUAL_MAPS, migrate_maps(MANUAL_MAPS))
        cfg = parse_cig_config(text + MANUAL_MAILBOXES)
        write = cfg.mailboxes.write[0]
        self.assertEqual(
            cfg.get_translate_map(write.map_to).translate("tel:+8888;1234"), "sip:1234@pbx.com"
        )
        self.assertEqual(
            cfg.get_translate_map(write.map_from).translate("tel:+4670123"), "sip:4670123@"
        )
        read = cfg.mailboxes.read[0]
        self.assertEqual(
            cfg.get_translate_map(read.map_from).translate("sip:77@pbx.com"), "tel:+8888;77"
        )
        self.assertEqual(
            cfg.get_translate_map(read.map_to).translate("sip:4670123@secure.com"), "tel:+4670123"
        )

    def test_second_run_adds_nothing(self) -> None:
        """A map with a translate map of its name is left out (already migrated)."""
        text, _ = appended(MANUAL_MAPS, migrate_maps(MANUAL_MAPS))
        again = migrate_maps(text)
        self.assertEqual(again.maps, ())
        self.assertEqual(again.skipped, ("telmap", "telsrc", "sipsrc", "sipmap"))
        self.assertEqual(appended(text, again)[0], text)

    def test_reverse_and_only(self) -> None:
        """--reverse swaps a map's sides; --map picks maps."""
        migration = migrate_maps(MANUAL_MAPS, reverse=["telmap"], only=["telmap", "sipmap"])
        self.assertEqual([t.name for t in migration.maps], ["telmap", "sipmap"])
        self.assertEqual(
            migration.maps[0].rules,
            (TranslateRule("sip:{series}@pbx.com", "tel:+8888;{series}"),),
        )

    def test_mixed_orders(self) -> None:
        """
        A map whose entries are written in both orders is reported: its
        rules follow each entry's order.
        """
        text = (
            'map two { entry a tel "tel:+1{n}" sip "sip:{n}@pbx";\n'
            '  entry b sip "sip:{n}@pbx" tel "tel:+1{n}"; }\n'
        )
        migration = migrate_maps(text)
        self.assertEqual(migration.mixed, ("two",))
        self.assertEqual(
            migration.maps[0].rules,
            (
                TranslateRule("tel:+1{n}", "sip:{n}@pbx"),
                TranslateRule("sip:{n}@pbx", "tel:+1{n}"),
            ),
        )
        self.assertEqual(migrate_maps(MANUAL_MAPS).mixed, ())

    def test_unknown_map(self) -> None:
        """Naming a map the file lacks is refused, saying which."""
        with self.assertRaises(MigrationError) as caught:
            migrate_maps(MANUAL_MAPS, filename="cig.conf", reverse=["nosuch"])
        self.assertEqual(str(caught.exception), "cig.conf: no map named nosuch")
        with self.assertRaises(MigrationError):
            migrate_maps(MANUAL_MAPS, only=["other"])

    def test_invalid_config(self) -> None:
        """A file the CIG refuses is refused with the parser's message."""
        with self.assertRaises(ConfigError) as caught:
            migrate_maps('map m { entry e tel "tel:{x" sip "sip:a"; }', "cig.conf")
        self.assertIn("cig.conf:1:", str(caught.exception))


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.path = os.path.join(self.dir, "cig.conf")
        with open(self.path, "w") as f:
            f.write(MANUAL_MAPS)
        os.chmod(self.path, 0o640)

    def command(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = run(argv, out, err)
        return status, out.getvalue(), err.getvalue()

    def test_prints(self) -> None:
        status, out, err = self.command(self.path)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out.strip(), MANUAL_TRANSLATE_MAPS.strip())
        with open(self.path) as f:
            self.assertEqual(f.read(), MANUAL_MAPS)

    def test_in_place(self) -> None:
        """--in-place appends the blocks, keeps the mode; a second run adds nothing."""
        status, out, err = self.command("--in-place", self.path)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("added translate_map telmap, telsrc, sipsrc, sipmap", out)
        with open(self.path) as f:
            text = f.read()
        self.assertTrue(text.startswith(MANUAL_MAPS))
        self.assertEqual(len(parse_cig_config(text).translate_maps), 4)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)
        self.assertEqual(os.listdir(self.dir), ["cig.conf"])
        status, out, err = self.command("--in-place", self.path)
        self.assertEqual(status, 0)
        self.assertIn("nothing to add", out)
        self.assertIn("translate_map telmap already exists", err)
        with open(self.path) as f:
            self.assertEqual(f.read(), text)

    def test_refused_file_unchanged(self) -> None:
        with open(self.path, "a") as f:
            f.write("map broken {\n")
        status, out, err = self.command("--in-place", self.path)
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith(f"cig-migrate-maps: {self.path}:"), err)
        with open(self.path) as f:
            self.assertTrue(f.read().endswith("map broken {\n"))

    def test_missing_file_and_usage(self) -> None:
        status, _, err = self.command(os.path.join(self.dir, "none.conf"))
        self.assertEqual(status, 1)
        self.assertIn("cannot read", err)
        status, _, err = self.command()
        self.assertEqual(status, 2)
        self.assertIn("required: CIG_CONF", err)


# -- properties -----------------------------------------------------------

_literal = st.text(alphabet="abc19+;:@.-", max_size=6)
_param = st.sampled_from(["{a}", "{b}", "{series}"])


@st.composite
def patterns(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.one_of(_literal, _param), max_size=5))
    # Parameters next to each other are legal; keep the scheme apart so
    # the two sides usually differ.
    return draw(st.sampled_from(["tel:+", "sip:", ""])) + "".join(parts)


@st.composite
def old_maps(draw: st.DrawFn) -> tuple[str, list[tuple[str, list[tuple[str, str, bool]]]]]:
    """
    cig.conf text with maps, and each map's (tel, sip, tel written first);
    the entries of one map are written in one order.
    """
    maps = []
    out = []
    for m in range(draw(st.integers(1, 3))):
        entries = []
        lines = [f"map m{m} {{"]
        tel_first = draw(st.booleans())
        for e in range(draw(st.integers(1, 3))):
            tel, sip = draw(patterns()), draw(patterns())
            sides = [f"tel {quote(tel)}", f"sip {quote(sip)}"]
            if not tel_first:
                sides.reverse()
            sep = draw(st.sampled_from([" ", "\n        ", " /* c */ "]))
            lines.append(f"    entry e{e}{sep}{sides[0]}{sep}{sides[1]};")
            entries.append((tel, sip, tel_first))
        lines.append("}")
        out.append("\n".join(lines))
        maps.append((f"m{m}", entries))
    return "\n".join(out) + "\n", maps


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=100, deadline=None)
    @given(old_maps(), st.data())
    def test_same_results_as_the_map(
        self, case: tuple[str, list[tuple[str, str, bool]]], data: st.DataObject
    ) -> None:
        """
        Each translate map gives, for any URI, what its map gives in the
        direction of the entry's first-written pattern (to_sip when tel is
        written first), and the appended file parses to those maps.
        """
        text, maps = case
        migration = migrate_maps(text)
        _, cfg = appended(text, migration)
        self.assertEqual(cfg.translate_maps, migration.maps)
        for (name, entries), tmap in zip(maps, migration.maps):
            self.assertEqual(tmap.name, name)
            uri_map = cfg.get_map(name)
            for tel, sip, tel_first in entries:
                values = data.draw(st.dictionaries(st.sampled_from("ab"), _literal))
                values["series"] = data.draw(_literal)
                source = tel if tel_first else sip
                uri = expand_pattern(source, values)
                expected = uri_map.to_sip(uri) if tel_first else uri_map.to_tel(uri)
                self.assertEqual(tmap.translate(uri), expected)
            self.assertEqual(len(tmap.rules), len(entries))

    @settings(max_examples=150, deadline=None)
    @given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
    def test_hostile_input(self, text: str | bytes) -> None:
        """Any input gives a migration or a ConfigError, never a crash."""
        try:
            migration = migrate_maps(text)
        except ConfigError as exc:
            self.assertTrue(str(exc))
            return
        source = text if isinstance(text, str) else text.decode("utf-8")
        appended(source, migration)

    @settings(max_examples=100, deadline=None)
    @given(old_maps(), st.integers(0, 400), st.text(alphabet='{}";/* \nmaptelsip', max_size=4))
    def test_mutated_maps(
        self, case: tuple[str, list[tuple[str, str, bool]]], at: int, junk: str
    ) -> None:
        """Maps with text inserted anywhere: a migration or a ConfigError."""
        text = case[0]
        at = min(at, len(text))
        mutated = text[:at] + junk + text[at:]
        try:
            migration = migrate_maps(mutated)
        except ConfigError:
            return
        _, cfg = appended(mutated, migration)
        self.assertEqual(render_translate_maps(migration.maps), migration.text())
        for tmap in migration.maps:
            self.assertIsInstance(tmap, TranslateMap)
            self.assertIn(tmap, cfg.translate_maps)
