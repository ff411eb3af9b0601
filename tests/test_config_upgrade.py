"""
An upgraded C{crs.conf} that still has the host section's C{app <module>}
lines (CRS manual 4.1.2.1: not needed since 4.11.0) is accepted with a
warning, not refused.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config import ConfigError, load_crs_config, parse_crs_config
from cryptify.crs.operator import cli as crs_cli
from cryptify.events import Notifier
from cryptify.plugins import crs
from cryptify.plugins._common import lifecycle

INSTALL = Path(__file__).parent / "fixtures" / "config" / "crs-install.conf"
#: The manual's crs.conf as a pre-4.11.0 installation had it.
UPGRADED = INSTALL.read_text().replace(
    "host crs1\nhost crs2\n",
    "host crs1\napp attach\napp relay\nhost crs2\napp attach\napp relay\n",
)


class AppLinesTests(SynchronousTestCase):
    """C{app} lines are read, ignored and reported."""

    def write(self) -> str:
        path = self.mktemp()
        Path(path).write_text(UPGRADED)
        return path

    def test_accepted_as_without(self) -> None:
        """
        The file means what it means without its C{app} lines, and each
        line is one warning naming file, line and column.
        """
        path = self.write()
        cfg = load_crs_config(path)
        self.assertEqual(cfg, load_crs_config(INSTALL))
        self.assertEqual(
            cfg.warnings,
            tuple(
                f"{path}:{line}:1: warning: 'app' lines are no longer needed since CRS 4.11.0;"
                f" ignored: 'app {module}'"
                for line, module in ((11, "attach"), (12, "relay"), (14, "attach"), (15, "relay"))
            ),
        )

    def test_only_in_pool(self) -> None:
        """
        An C{app} line outside C{[POOL]}, or without its module, is still
        an error.
        """
        self.assertRaises(ConfigError, parse_crs_config, "[GLOBAL]\napp attach\n")
        self.assertRaises(ConfigError, parse_crs_config, "[POOL]\napp\n")

    def test_check_config_warns(self) -> None:
        """
        crs-cli check-config says OK (status 0) and shows the warnings on
        stderr.
        """
        path = self.write()
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(crs_cli.run(["check-config", path], out, err), 0)
        self.assertEqual(out.getvalue(), "OK\n")
        self.assertEqual(len(err.getvalue().splitlines()), 4)
        self.assertIn(f"{path}:11:1: warning: 'app' lines", err.getvalue())

    def test_twistd_crs_starts_and_logs(self) -> None:
        """
        twistd crs accepts the file and logs each warning when it starts.
        """
        options = crs.Options()
        options.parseOptions(["--config", self.write()])
        warnings = options["crs"].warnings
        self.assertEqual(len(warnings), 4)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service = lifecycle("crs", Notifier(Clock(), None), [], warnings)
        service.startService()
        logged = [e["config_warning"] for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(logged, list(warnings))
