"""``cryptify-client``: the reference secure client (attach, call, message).

The client arrives with the attach issue; for now the command prints its
help and refuses actions clearly.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO

HELP = """\
usage: cryptify-client ACTION [options]

The reference secure client of the Cryptify system.

actions:
  help          show this help

Attaching, calling and messaging are not available in this version.
"""


def run(argv: Sequence[str], out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Run with ``argv`` (without the program name); return the exit status."""
    if not argv or argv[0] in ("help", "-h", "--help"):
        out.write(HELP)
        return 0
    err.write(HELP)
    err.write(f"cryptify-client: error: unknown action {argv[0]!r}\n")
    return 2


def main() -> None:
    """Console script entry point."""
    sys.exit(run(sys.argv[1:]))
