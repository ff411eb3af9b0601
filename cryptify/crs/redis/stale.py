"""Leftover Redis children of a CRS that died without stopping them.

If the CRS process is killed outright (``kill -9``, OOM killer), its
``redis-server`` children keep running and hold their ports, so the next
CRS could not start them again.  Before starting a child the supervisor
looks for such a leftover: the PID in the instance's pid file, still alive,
whose command line is ``redis-server`` titled with this instance's address.
It is stopped with SIGTERM (Redis then flushes its AOF), and with SIGKILL if
it has not gone after :data:`STALE_STOP_TIMEOUT`.  Every other process
is left alone.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from cryptify.crs.redis.instance import RedisInstance

log = Logger(namespace="cryptify.crs.redis")

#: Seconds a leftover Redis gets to exit after SIGTERM.
STALE_STOP_TIMEOUT = 5.0
#: Seconds between checks that it has gone.
STALE_POLL = 0.1


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(4096).decode("utf-8", "replace")
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_pid(instance: RedisInstance, read: Callable[[str], str | None] = _read) -> int | None:
    """The PID of a leftover ``redis-server`` of ``instance``, if there is one."""
    text = read(str(instance.pid_path))
    if text is None or not (text.strip().isascii() and text.strip().isdigit()):
        return None
    pid = int(text.strip())
    if pid <= 1 or pid == os.getpid():
        return None
    cmdline = read(f"/proc/{pid}/cmdline")
    if not cmdline:
        return None
    words = cmdline.replace("\0", " ").split()
    if not words or "redis-server" not in words[0]:
        return None
    address = instance.address.removeprefix("unix:")
    if address not in cmdline:
        return None
    return pid


async def reap_stale(
    instances: Sequence[RedisInstance],
    clock: IReactorTime,
    kill: Callable[[int, int], None] = os.kill,
    alive: Callable[[int], bool] = _alive,
    read: Callable[[str], str | None] = _read,
) -> list[int]:
    """Stop leftover children of ``instances``; return the PIDs stopped."""
    stopped = []
    for instance in instances:
        pid = stale_pid(instance, read)
        if pid is None:
            continue
        log.warn(
            "{name}: a leftover redis-server (pid {pid}) from an earlier CRS holds "
            "{address}; stopping it",
            name=instance.name,
            pid=pid,
            address=instance.address,
        )
        try:
            kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        waited = 0.0
        while alive(pid) and waited < STALE_STOP_TIMEOUT:
            await deferLater(clock, STALE_POLL, lambda: None)
            waited += STALE_POLL
        if alive(pid):
            log.warn(
                "{name}: leftover pid {pid} ignored SIGTERM; killing it",
                name=instance.name,
                pid=pid,
            )
            try:
                kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stopped.append(pid)
    return stopped
