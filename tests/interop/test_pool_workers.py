"""
Interop: a pool of two real ``twistd crs`` instances (the harness of
tests/interop/_pool.py), crs1 with ``workers 2`` (docs/workers.md, Pools).

crs1's parent keeps the pool link, the slot map and the forwarder; its
workers hold the clients.  A client of crs2's slots that attaches at crs1
is answered ``moved`` to crs2 by the worker it lands on (the slot view
from the parent); messages go both ways between a client attached to a
worker of crs1 and one attached at crs2, each answered ``posted`` only
once stored where it will be delivered from, each arriving once, with
``delivered`` back to its sender across the pool; ``show system`` at
crs1 has its parent and each worker with its cut of crs1's slots.
"""

from __future__ import annotations

import re
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
        wait_for(lambda: self.formed([1, 2]), "the pool to form", CEILING)
        wait_for(lambda: len(self.workers(1)) == 2, "crs1's two workers", CEILING)
        home1 = [u for u in self.uris if self.owner_index(u) == 1]
        home2 = [u for u in self.uris if self.owner_index(u) == 2]
        a, b = Client(home1[0]), Client(home2[0])
        self.clients.extend([a, b])
        # (a worker starts with no slot view: until the parent's arrives
        # it answers unavailable, and the client tries again)
        self.attach(a, [address(1)])
        self.attach(b, [address(1)])
        self.assertEqual((a.at, b.at, b.moves), (address(1), address(2), [address(2)]))
        self.exchange(a, b, MESSAGES, b"from crs1's worker")
        self.exchange(b, a, MESSAGES, b"from crs2")
        rows = self.workers(1)
        cuts = [slots for _, slots in sorted(rows.items())]
        self.assertEqual(cuts, ["0-4095", "4096-8191"])
        self.assertIn("app:crs", self.cli(1, "show", "system"))
        out = self.cli(1, "check", "slot", home2[0])
        self.assertIn("crs2", out)

    def workers(self, index: int) -> dict[int, str]:
        """crs{index}'s workers in ``show system``: number -> SLOTS (running ones)."""
        out = self.cli(index, "show", "system")
        return {
            int(n): slots
            for n, pid, slots in re.findall(r"app:attach/(\d+)\s+(\S+)\s+(\S+)", out)
            if pid != "-"
        }
