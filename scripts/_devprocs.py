"""What ``make run`` (devrun.py) and ``make run-pool`` (devpool.py) share:
waiting for a program's socket, showing the end of its log, stopping the
programs one after the other."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterable

#: Seconds a program has to stop on SIGTERM before it is killed.
STOP_TIMEOUT = 30


def socket_answers(where: str) -> bool:
    """Whether something accepts connections on the UNIX socket ``where``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(where)
    except OSError:
        return False
    finally:
        s.close()
    return True


def last_lines(log_path: str, count: int = 15) -> str:
    """The last ``count`` lines of a log ('' when it cannot be read)."""
    try:
        with open(log_path) as f:
            return "".join(f.readlines()[-count:])
    except OSError:
        return ""


def stop_in_order(procs: Iterable[tuple[str, subprocess.Popen[bytes]]]) -> None:
    """SIGTERM each running program in turn, waiting for it to end (killed
    after :data:`STOP_TIMEOUT`) before the next."""
    for name, proc in procs:
        if proc.poll() is None:
            print(f"stopping {name} ...", flush=True)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in time; killing it", flush=True)
                proc.kill()
                proc.wait()
