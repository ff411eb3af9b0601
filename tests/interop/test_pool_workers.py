"""
Interop: a pool of two real ``twistd crs`` instances (the harness of
tests/interop/_pool.py), crs1 with ``workers 2`` (docs/workers.md, Pools).

crs1's parent keeps the pool link, the slot map and the forwarder; its
workers hold the clients.  A client of crs2's slots that attaches at crs1
is answered ``moved`` to crs2 by the worker it lands on (the slot view
from the parent); messages go both ways between a client attached to a
worker of crs1 and one attached at crs2, each answered ``posted`` only
once stored where it will be delivered from, each arriving once, with
``delivered`` back to its sender across the pool; calls go both ways
between them (the parent passes the call frames between the pool link and
the worker), and a call whose worker is killed is hung up at crs2;
``show system`` at crs1 has its parent and each worker with its cut of
crs1's slots.
"""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

import cbor2

from tests.interop._pool import CEILING, Client, PoolCase, address, send
from tests.interop._procs import wait_for

#: Messages each way.
MESSAGES = 20


class PoolWorkersTests(PoolCase):
    COUNT = 2
    LOCAL = {1: "workers 2\n"}

    def setUp(self) -> None:
        super().setUp()
        self.start_relays()
        wait_for(lambda: self.formed([1, 2]), "the pool to form", CEILING)
        wait_for(lambda: len(self.workers(1)) == 2, "crs1's two workers", CEILING)
        # (a worker starts with no slot view: until the parent's arrives
        # it answers unavailable, and the client tries again)
        self.a, self.b = self.attach_across()

    def call(self, caller: Client, callee: Client, request: int) -> None:
        """``caller`` calls ``callee``: invite, ringing, talk, hold and
        resume, and the callee's hangup, each reaching the other side."""
        send(caller.ws, type="invite", id=request, to=callee.uri, mikey=b"\x01")
        session = self.next_of(caller, "session")["session"]
        self.assertEqual(self.next_of(callee, "invite")["session"], session)
        send(callee.ws, type="ringing", session=session)
        self.next_of(caller, "ringing")
        send(callee.ws, type="talk", session=session)
        self.next_of(caller, "talk")
        send(caller.ws, type="hold", session=session)
        self.next_of(callee, "hold")
        send(callee.ws, type="resume", session=session)
        self.next_of(caller, "resume")
        send(callee.ws, type="hangup", session=session, code="normal")
        self.assertEqual(self.next_of(caller, "hangup")["who"], "callee")

    def test_calls_both_ways(self) -> None:
        """A client of crs1's worker calls a client of crs2 and back: every
        step of each call crosses the pool and the parent."""
        self.call(self.a, self.b, 40)
        self.call(self.b, self.a, 41)
        for index in (1, 2):
            rows = self.cli(index, "show", "session").splitlines()[1:]
            self.assertFalse([r for r in rows if r.split()[3:4] == ["talk"]], rows)

    def test_worker_lost_during_a_call(self) -> None:
        """crs1's workers killed -9 during a call from a client of one of
        them to a client at crs2: the parent hangs the call up at crs2
        (``hangup not-connected`` from ``crs``), and the workers are started
        again."""
        send(self.a.ws, type="invite", id=50, to=self.b.uri, mikey=b"\x01")
        session = self.next_of(self.a, "session")["session"]
        self.assertEqual(self.next_of(self.b, "invite")["session"], session)
        send(self.b.ws, type="talk", session=session)
        self.next_of(self.a, "talk")
        pids = self.pids(1)
        self.assertEqual(len(pids), 2, pids)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        hangup = self.next_of(self.b, "hangup")
        self.assertEqual(
            (hangup["session"], hangup["code"], hangup["who"]), (session, "not-connected", "crs")
        )
        wait_for(
            lambda: len(self.workers(1)) == 2 and not set(pids) & set(self.pids(1)),
            "crs1's workers started again",
            CEILING,
        )

    def pids(self, index: int) -> list[int]:
        out = self.cli(index, "show", "system")
        return [int(p) for p in re.findall(r"app:attach/\d+\s+(\d+)", out)]

    def exchange(self, sender: Client, recipient: Client, count: int, tag: bytes) -> None:
        """``sender`` posts ``count`` messages to ``recipient``: every one
        answered ``posted`` arrives once, is confirmed, and the sender is
        told ``delivered``."""
        posted: dict[str, bytes] = {}
        for n in range(1, count + 1):
            content = tag + b" %d" % n
            send(sender.ws, type="post", id=n, to=recipient.uri, content=content)
            answer = self.next_of(sender, "posted", "error")
            self.assertEqual(answer["type"], "posted", answer)
            posted[str(answer["message"])] = content
        got: dict[str, bytes] = {}
        while len(got) < len(posted):
            msg = self.next_of(recipient, "message")
            message_id = str(msg["message"])
            self.assertNotIn(message_id, got, "a message arrived twice")
            got[message_id] = bytes(msg["content"])
            send(recipient.ws, type="delivered", message=msg["message"])
        self.assertEqual(got, posted)
        told: set[str] = set()
        while told != set(posted):
            told.add(str(self.next_of(sender, "delivered")["message"]))

    def next_of(self, client: Client, *types: str) -> dict[str, Any]:
        """The next frame of one of ``types`` for ``client`` (others skipped)."""
        deadline = time.monotonic() + CEILING
        while time.monotonic() < deadline:
            msg: dict[str, Any] = cbor2.loads(client.ws.recv(timeout=CEILING))
            if msg.get("type") in types:
                return msg
        raise AssertionError(f"{client.uri}: no {types} within {CEILING}s")

    def test_messages_both_ways(self) -> None:
        """Moved at attach by a worker; messages both ways across the pool
        with a worker's client, none lost, none twice; show system."""
        a, b = self.a, self.b
        self.assertEqual((a.at, b.at, b.moves), (address(1), address(2), [address(2)]))
        self.exchange(a, b, MESSAGES, b"from crs1's worker")
        self.exchange(b, a, MESSAGES, b"from crs2")
        rows = self.workers(1)
        cuts = [slots for _, slots in sorted(rows.items())]
        self.assertEqual(cuts, ["0-4095", "4096-8191"])
        self.assertIn("app:crs", self.cli(1, "show", "system"))
        out = self.cli(1, "check", "slot", b.uri)
        self.assertIn("crs2", out)

    def workers(self, index: int) -> dict[int, str]:
        """crs{index}'s workers in ``show system``: number -> SLOTS (running ones)."""
        out = self.cli(index, "show", "system")
        return {
            int(n): slots
            for n, pid, slots in re.findall(r"app:attach/(\d+)\s+(\S+)\s+(\S+)", out)
            if pid != "-"
        }
