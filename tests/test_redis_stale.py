"""Tests for cryptify.crs.redis.stale: leftover Redis children are found and stopped."""

from __future__ import annotations

import signal
from pathlib import Path

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.redis.instance import RedisInstance
from cryptify.crs.redis.stale import STALE_STOP_TIMEOUT, reap_stale, stale_pid


def instance(port: int = 6391) -> RedisInstance:
    return RedisInstance(
        name="redis_low", password="pw", data_dir=Path("/d"), log_dir=Path("/l"), port=port
    )


def reader(files: dict[str, str]):  # type: ignore[no-untyped-def]
    return lambda path: files.get(path)


class StaleTests(SynchronousTestCase):
    def files(self, title: str = "redis-server 127.0.0.1:6391\0\0") -> dict[str, str]:
        return {"/d/redis_low/redis.pid": "4242\n", "/proc/4242/cmdline": title}

    def test_finds_own_leftover(self) -> None:
        """A live redis-server titled with this instance's address is a leftover."""
        self.assertEqual(stale_pid(instance(), reader(self.files())), 4242)

    def test_leaves_others_alone(self) -> None:
        """Another program, another Redis, a dead PID or a junk pid file are not touched."""
        for files in (
            self.files("/usr/bin/python3\0app.py\0"),
            self.files("redis-server 127.0.0.1:7000\0"),
            {"/d/redis_low/redis.pid": "4242\n"},
            {"/d/redis_low/redis.pid": "junk"},
            {"/d/redis_low/redis.pid": "1"},
            {},
        ):
            self.assertIsNone(stale_pid(instance(), reader(files)), files)

    def test_reap_term_then_gone(self) -> None:
        """SIGTERM first; nothing more once it has exited."""
        clock = Clock()
        sent: list[tuple[int, int]] = []
        alive = {"value": True}

        def kill(pid: int, sig: int) -> None:
            sent.append((pid, sig))

        d = ensureDeferred(
            reap_stale([instance()], clock, kill, lambda pid: alive["value"], reader(self.files()))
        )
        self.assertEqual(sent, [(4242, signal.SIGTERM)])
        clock.advance(0.1)
        alive["value"] = False
        clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), [4242])
        self.assertEqual(sent, [(4242, signal.SIGTERM)])

    def test_reap_kill_if_stubborn(self) -> None:
        """A leftover that ignores SIGTERM is killed after the time limit."""
        clock = Clock()
        sent: list[int] = []
        d = ensureDeferred(
            reap_stale(
                [instance()],
                clock,
                lambda p, s: sent.append(s),
                lambda p: True,
                reader(self.files()),
            )
        )
        clock.pump([0.1] * int(STALE_STOP_TIMEOUT / 0.1 + 2))
        self.successResultOf(d)
        self.assertEqual(sent, [signal.SIGTERM, signal.SIGKILL])
        self.assertEqual(clock.getDelayedCalls(), [])
