"""The console entry point's exits: Ctrl-C and a reader gone away."""

from __future__ import annotations

import sys
from typing import IO

from twisted.trial.unittest import SynchronousTestCase

from cryptify.console import EXIT_SIGINT, console_main


class ConsoleMainTests(SynchronousTestCase):
    def setUp(self) -> None:
        stdout = sys.stdout
        self.addCleanup(setattr, sys, "stdout", stdout)

    def test_status_returned(self) -> None:
        """The command's own status is the exit status."""

        def run(out: IO[str]) -> int:
            return 3

        with self.assertRaises(SystemExit) as caught:
            console_main(run)
        self.assertEqual(caught.exception.code, 3)

    def test_ctrl_c_is_quiet(self) -> None:
        """Ctrl-C the command does not handle ends it with 130, no traceback."""

        def run(out: IO[str]) -> int:
            raise KeyboardInterrupt

        with self.assertRaises(SystemExit) as caught:
            console_main(run)
        self.assertEqual(caught.exception.code, EXIT_SIGINT)
        self.assertEqual(EXIT_SIGINT, 130)
