"""What bench/pool.py's failover generators count, and how it reads them.

Both generators (the lean one and the reference client's) keep a
:class:`bench._pool_lean.FailoverTally`: each orphan is counted back
once, a failure to bring them all back within the ceiling is reported as
incomplete, and the survivors' clients that lost their connection are
counted once each.  bench/pool.py reads one JSON line per generator at a
time, even when a generator writes two at once, and merges their
``done`` lines without losing or doubling a client; from the survivors'
crs.log it takes the takeover that followed the kill, not a false one
before it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench._pool_lean import FailoverTally
from bench.pool import JsonLines, back_at, merge_done

CEILING = 300.0


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _tally(clients: int) -> tuple[FailoverTally, _Clock, list[dict[str, Any]]]:
    clock, lines = _Clock(), []
    tally = FailoverTally(clients, CEILING, clock, lines.append)
    return tally, clock, lines


def _attach_all(tally: FailoverTally, clients: int) -> None:
    for index in range(clients):
        tally.attached(index, True, True)


class FailoverTallyTests(SynchronousTestCase):
    def test_orphan_back_once(self) -> None:
        """An orphan is back the first time it attaches away from the
        victim, counted once however often it attaches again; the done line
        comes when the last orphan is back, with its time and the first
        loss."""
        tally, clock, lines = _tally(3)
        _attach_all(tally, 3)
        self.assertTrue(tally.all_attached())
        tally.ready({0, 1})
        self.assertEqual(lines, [{"event": "ready", "orphans": 2}])
        clock.now = 1001.0
        self.assertTrue(tally.lost(0))
        self.assertFalse(tally.lost(1))
        clock.now = 1002.0
        tally.attached(0, False, True)  # at the victim: not back
        tally.attached(0, True, True)
        clock.now = 1003.0
        tally.attached(0, True, False)  # again: not counted twice
        self.assertEqual(len(lines), 1)
        tally.attached(1, True, False)
        done = lines[1]
        self.assertEqual(
            (done["complete"], done["orphans"], done["reattached"], done["resumed"]),
            (True, 2, 2, 1),
        )
        self.assertEqual(
            (done["times"], done["last"], done["first_lost"]), ([1002.0, 1003.0], 1003.0, 1001.0)
        )
        self.assertEqual(done["full_attaches"], 2)
        tally.report(False)
        self.assertEqual(len(lines), 2)

    def test_before_ready_not_counted(self) -> None:
        """What happens while the clients first attach (moves, refusals,
        failed connects, lost connections, full attaches) is not counted;
        a client's first attach is what the generator waits for."""
        tally, _, lines = _tally(2)
        tally.moved()
        tally.refused("unavailable")
        tally.cannot_connect("cannot connect: refused")
        self.assertFalse(tally.lost(0))
        self.assertTrue(tally.attached(0, True, False))
        self.assertFalse(tally.attached(0, True, False))
        self.assertFalse(tally.all_attached())
        self.assertTrue(tally.attached(1, True, False))
        tally.ready({1})
        tally.report(False)
        done = lines[1]
        for key in ("moves", "connect_failures", "full_attaches", "others_lost"):
            self.assertEqual(done[key], 0, key)
        self.assertEqual((done["refusals"], done["connect_errors"]), ({}, {}))
        self.assertIsNone(done["first_lost"])

    def test_incomplete_at_the_ceiling(self) -> None:
        """The ceiling counts from the first orphan lost; past it the done
        line says incomplete with how many came back, once."""
        tally, clock, lines = _tally(2)
        _attach_all(tally, 2)
        tally.ready({0, 1})
        self.assertFalse(tally.overdue())
        tally.lost(0)
        tally.attached(0, True, True)
        clock.now += CEILING
        self.assertFalse(tally.overdue())
        clock.now += 0.1
        self.assertTrue(tally.overdue())
        tally.report(False)
        tally.report(True)
        self.assertEqual(len(lines), 2)
        self.assertEqual(
            (lines[1]["complete"], lines[1]["orphans"], lines[1]["reattached"]), (False, 2, 1)
        )

    def test_others_lost_per_client(self) -> None:
        """A survivor's client that loses its connection is counted once,
        however many of its tries end after; failed connects and refusals
        are counted by reason."""
        tally, _, lines = _tally(3)
        _attach_all(tally, 3)
        tally.ready({0})
        for _ in range(3):
            tally.lost(1)
        tally.lost(2)
        tally.cannot_connect("cannot connect: No route to host")
        tally.cannot_connect("cannot connect: No route to host")
        tally.refused("unavailable")
        tally.moved()
        tally.report(False)
        done = lines[1]
        self.assertEqual(done["others_lost"], 2)
        self.assertEqual(done["connect_errors"], {"cannot connect: No route to host": 2})
        self.assertEqual((done["connect_failures"], done["moves"]), (2, 1))
        self.assertEqual(done["refusals"], {"unavailable": 1})

    def test_no_orphans(self) -> None:
        """A generator none of whose clients were the victim's (or with no
        clients at all) is ready and done at once."""
        tally, _, lines = _tally(0)
        self.assertTrue(tally.all_attached())
        tally.ready(set())
        self.assertEqual([line["event"] for line in lines], ["ready", "done"])
        self.assertTrue(lines[1]["complete"])


class _Proc:
    """The part of a Popen JsonLines uses: a pipe's read end as stdout."""

    def __init__(self, case: SynchronousTestCase) -> None:
        read, self.write_fd = os.pipe()
        self.stdout = os.fdopen(read)
        case.addCleanup(self.stdout.close)
        case.addCleanup(lambda: self.write_fd >= 0 and os.close(self.write_fd))

    def say(self, *lines: dict[str, Any]) -> None:
        os.write(self.write_fd, b"".join(json.dumps(x).encode() + b"\n" for x in lines))

    def end(self) -> None:
        os.close(self.write_fd)
        self.write_fd = -1

    def wait(self) -> int:
        return 0


class JsonLinesTests(SynchronousTestCase):
    def test_two_lines_at_once(self) -> None:
        """Two lines a generator wrote at once are read one per read, the
        second without waiting for more from its pipe."""
        one, two = _Proc(self), _Proc(self)
        lines = JsonLines([one, two])  # type: ignore[list-item]
        one.say({"event": "ready"}, {"event": "done"})
        two.say({"event": "ready"})
        self.assertEqual([x["event"] for x in lines.read(5.0)], ["ready", "ready"])
        two.say({"event": "done"})
        self.assertEqual([x["event"] for x in lines.read(0.5)], ["done", "done"])

    def test_silent_and_ended(self) -> None:
        """A generator that says nothing in time is a timeout; one that
        ends without its line is an error, not a line missing."""
        proc = _Proc(self)
        lines = JsonLines([proc])  # type: ignore[list-item]
        self.assertRaises(TimeoutError, lines.read, 0.0)
        proc.end()
        self.assertRaises(RuntimeError, lines.read, 1.0)


def _done(**fields: Any) -> dict[str, Any]:
    line = {
        "complete": True,
        "orphans": 0,
        "reattached": 0,
        "times": [],
        "first_lost": None,
        "resumed": 0,
        "full_attaches": 0,
        "moves": 0,
        "connect_failures": 0,
        "others_lost": 0,
        "refusals": {},
        "connect_errors": {},
    }
    line.update(fields)
    return line


class MergeTests(SynchronousTestCase):
    def test_merge(self) -> None:
        """The generators' done lines add up: counts summed, refusals per
        code, times in order, the earliest loss, complete only if every
        generator was."""
        merged = merge_done(
            [
                _done(
                    orphans=2,
                    reattached=2,
                    times=[3.0, 5.0],
                    first_lost=2.0,
                    moves=1,
                    refusals={"unavailable": 1},
                ),
                _done(
                    complete=False,
                    orphans=3,
                    reattached=1,
                    times=[4.0],
                    first_lost=1.5,
                    others_lost=1,
                    refusals={"unavailable": 2, "not-found": 1},
                ),
                _done(),
            ]
        )
        self.assertEqual(
            (merged["complete"], merged["orphans"], merged["reattached"], merged["times"]),
            (False, 5, 3, [3.0, 4.0, 5.0]),
        )
        self.assertEqual(
            (merged["first_lost"], merged["moves"], merged["others_lost"]), (1.5, 1, 1)
        )
        self.assertEqual(merged["refusals"], {"unavailable": 3, "not-found": 1})

    def test_back_at(self) -> None:
        """Half and nine tenths back count against every orphan: None while
        that many have not come back, not a figure of those that did."""
        times = [1.0, 2.0, 3.0, 4.0]
        self.assertEqual(back_at(times, 4, 0.5), 3.0)
        self.assertEqual(back_at(times, 4, 0.9), 4.0)
        self.assertIsNone(back_at(times, 10, 0.5))
        self.assertIsNone(back_at([], 0, 0.5))


def _log_line(when: str, text: str) -> str:
    return f"[2026-12-03 {when} | crs#info] {text}\n"


class PoolLogTests(SynchronousTestCase):
    def test_false_failover_of_the_victim(self) -> None:
        """The takeover of the victim is the first one logged after the kill;
        the victim declared down before it was killed (and any other peer
        declared down) counts as a live peer declared down."""
        from bench._pool import BenchPool, line_time

        pool = BenchPool.__new__(BenchPool)
        pool.dirs = [self.mktemp(), self.mktemp()]
        pool.procs = {1: None}  # type: ignore[dict-item]
        os.makedirs(os.path.join(pool.dirs[0], "log"))
        down = "pool link to crs2 down: no heartbeat for 3.1s (the last arrived at {})"
        took = "pool map {}: took over the slots of members that are down (crs2)"
        with open(os.path.join(pool.dirs[0], "log", "crs.log"), "w") as f:
            f.write(_log_line("08:00:03.100", down.format(1796284800.0)))
            f.write(_log_line("08:00:03.200", took.format(5)))
            f.write(_log_line("08:01:01.500", down.format(1796284860.2)))
            f.write(_log_line("08:01:01.600", took.format(9)))
        killed_at = line_time(_log_line("08:01:00.400", ""))
        assert killed_at is not None
        took_at = line_time(_log_line("08:01:01.600", ""))
        self.assertEqual(pool.takeover_at(2, killed_at), took_at)
        self.assertEqual(pool.last_heartbeat(2), 1796284860.2)
        self.assertEqual(pool.pool_events(2, killed_at)["live_peer_declared_down"], 1)
        self.assertEqual(pool.pool_events(2, killed_at)["map_changes_seen"], 2)
