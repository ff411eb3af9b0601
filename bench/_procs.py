"""Process helpers the benchmarks share (ports, waiting, CPU time).

The port and waiting helpers are the interop tests' own
(``tests/interop/_procs.py``); ``proc_cpu`` reads a process's CPU seconds.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.interop._procs import free_port, unix_answers, wait_for  # noqa: E402

__all__ = ["free_port", "proc_cpu", "unix_answers", "wait_for"]


def proc_cpu(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
