"""
Interop: messages in a pool of three real ``twistd crs`` instances, each in
its own network namespace (the harness of tests/interop/_pool.py).

One client in each instance's home range; each posts to the two others
(every ordered pair, so posts go between every two instances over the
pool link).  Then ``kill -9`` of crs3 (and its Redis children) while
clients of crs1 and crs2 keep posting, to each other and to crs3's client
(which is not attached anywhere for a while): the survivors keep or store
those posts and never refuse them ``not-found`` (the URIs known in the
pool are shared between its members, docs/pool.md), crs3's client attaches
at a survivor once crs3's slots are taken over, and every post answered
``posted`` reaches its recipient exactly once (by ID, and no content under
two IDs).  crs3 is not started again (the hand-back trickle takes a minute;
tests/interop/test_pool_messages.py covers a return).

A second test kills the middle member, crs2, with ``kill -9`` under the
same load and starts it again (its ``redis_low`` read back from its
append-only file): the slots come back, every acknowledged post reaches
its recipient once, and in the end no member has a ``msg-gone`` pending
(``pool-gone`` in each ``redis_low``: each was acknowledged, also those
sent to or held by the restarted member).  The times are logged
(``convergence:`` lines in ``_trial_temp/test.log``), not asserted.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import cbor2
from twisted.logger import Logger

from tests.interop._pool import CEILING, Client, PoolCase, address, send
from tests.interop._procs import unix_answers, wait_for

log = Logger(namespace="tests.pool_messages3")


class ThreeMembersMessagesTests(PoolCase):
    COUNT = 3

    def setUp(self) -> None:
        super().setUp()
        wait_for(lambda: self.formed([1, 2, 3]), "the pool of three to form", CEILING)
        self.members = {
            i: Client(next(u for u in self.uris if self.owner_index(u) == i)) for i in (1, 2, 3)
        }
        for client in self.members.values():
            self.clients.append(client)
            self.attach(client, [address(1)])
        #: message ID -> (recipient URI, content) for every post answered ``posted``
        self.acked: dict[str, tuple[str, bytes]] = {}
        #: recipient URI -> (ID, content) in the order received, repeats included
        self.received: dict[str, list[tuple[str, bytes]]] = {
            c.uri: [] for c in self.members.values()
        }
        self.refused: list[str] = []
        self.requests = 0

    def read(self, client: Client, timeout: float) -> dict[str, Any] | None:
        """The next frame for ``client`` (a message recorded and confirmed),
        {} on a timeout, None when the connection ended."""
        try:
            msg: dict[str, Any] = cbor2.loads(client.ws.recv(timeout=timeout))
        except TimeoutError:
            return {}
        except Exception:
            client.close()
            return None
        if msg.get("type") == "disconnect":
            client.close()
            return None
        if msg.get("type") == "message":
            try:
                send(client.ws, type="delivered", message=msg["message"])
            except Exception:
                client.close()  # not confirmed: it comes again
                return None
            self.received[client.uri].append((str(msg["message"]), bytes(msg.get("content", b""))))
        return msg

    def post(self, sender: Client, to: Client, content: bytes) -> None:
        self.requests += 1
        n = self.requests
        send(sender.ws, type="post", id=n, to=to.uri, content=content, key=os.urandom(16))
        deadline = time.monotonic() + CEILING
        while time.monotonic() < deadline:
            msg = self.read(sender, CEILING)
            if msg is None:
                raise AssertionError(f"{sender.uri}'s connection ended")
            if msg.get("id") != n:
                continue
            if msg["type"] == "posted":
                self.acked[str(msg["message"])] = (to.uri, content)
            else:
                self.refused.append(str(msg.get("code")))
            return
        raise AssertionError(f"post {n} not answered")

    def all_pairs(self, tag: bytes, senders: list[int]) -> None:
        for i in senders:
            for j in (1, 2, 3):
                if i != j:
                    self.post(self.members[i], self.members[j], b"%s %d->%d" % (tag, i, j))

    def missing(self) -> set[str]:
        got = {i for found in self.received.values() for i, _ in found}
        return {i for i in self.acked if i not in got}

    def collect(self, hosts: list[str]) -> float:
        """Read every client (attaching again any whose connection ended)
        until every acknowledged post has reached its recipient; how long."""
        began = time.monotonic()
        deadline = began + 2 * CEILING
        while self.missing() and time.monotonic() < deadline:
            for client in self.members.values():
                if client.ws is None:
                    client.moves.clear()
                    self.attach(client, hosts)
                self.read(client, 0.3)
        missing = self.missing()
        self.assertEqual(missing, set(), f"{len(missing)} acknowledged messages not delivered")
        return time.monotonic() - began

    def pump_until(self, done: Any, what: str, hosts: list[str], ceiling: float) -> None:
        """Read every client (attaching again any whose connection ended,
        e.g. moved back) until ``done()``: an unread client's queue would
        fill and its keep-alive fail."""
        deadline = time.monotonic() + ceiling
        while True:
            for client in self.members.values():
                if client.ws is None:
                    client.moves.clear()
                    self.attach(client, hosts)
                self.read(client, 0.2)
            if done():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")

    def check_once(self) -> None:
        for uri, found in self.received.items():
            ids = [i for i, _ in found]
            self.assertEqual(len(ids), len(set(ids)), f"a message delivered twice to {uri}")
            by_content: dict[bytes, set[str]] = {}
            for message_id, content in found:
                by_content.setdefault(content, set()).add(message_id)
            twice = {c: i for c, i in by_content.items() if len(i) > 1}
            self.assertEqual(twice, {}, f"a message delivered under two IDs to {uri}")
            for message_id, content in found:
                if message_id in self.acked:
                    self.assertEqual(self.acked[message_id], (uri, content))

    def pending_gones(self, index: int) -> int:
        """How many msg-gone crs{index} has not had acknowledged (ZCARD of
        ``pool-gone`` in its redis_low, read with redis-cli in its host)."""
        d = self.dirs[index - 1]
        with open(os.path.join(d, "data", "redis", "redis_low", "password")) as f:
            password = f.read().strip()
        done = subprocess.run(
            [*self.net.hosts[index - 1].prefix(d), "redis-cli", "-p", "6391", "zcard", "pool-gone"],
            capture_output=True,
            text=True,
            env=dict(os.environ, REDISCLI_AUTH=password),
            timeout=30,
        )
        return int(done.stdout.strip())

    def test_middle_member_killed_and_restarted(self) -> None:
        """kill -9 of crs2 under load and its restart with its store: every
        acknowledged post delivered once, and every msg-gone acknowledged."""
        began = time.monotonic()
        for n in range(2):
            self.all_pairs(b"round %d" % n, [1, 2, 3])
        self.collect([address(1)])
        c1, c2, c3 = (self.members[i] for i in (1, 2, 3))
        self.kill(2)
        c2.close()
        for n in range(6):
            for sender, to in ((c1, c2), (c3, c2), (c1, c3), (c3, c1)):
                self.post(
                    sender, to, b"during %d %s->%s" % (n, sender.uri.encode(), to.uri.encode())
                )
            time.sleep(0.25)
        wait_for(
            lambda: "(crs2)" not in self.cli(1, "check", "slot", c2.uri),
            "crs2's slots to be taken over",
            CEILING,
        )
        self.attach(c2, [address(1), address(3)])
        self.collect([address(1), address(3)])
        self.start(2)
        restarted = time.monotonic()
        wait_for(lambda: unix_answers(self.socket(2)), "crs2's socket", CEILING)
        hosts = [address(2), address(1), address(3)]
        # crs2's client is moved back in the trickle: it only receives now
        for n in range(4):
            self.all_pairs(b"back %d" % n, [1, 3])
            self.pump_until(lambda: True, "a read", hosts, CEILING)
        self.pump_until(
            lambda: self.formed([1, 2, 3]), "the slots to come back", hosts, 2 * CEILING
        )
        formed = time.monotonic() - restarted
        self.collect(hosts)  # crs2's client attached again
        self.all_pairs(b"after", [1, 2, 3])
        took = self.collect([address(1), address(2), address(3)])
        self.check_once()
        self.assertEqual(self.refused, [], "posts refused")
        wait_for(
            lambda: all(self.pending_gones(i) == 0 for i in (1, 2, 3)),
            "every msg-gone to be acknowledged",
            CEILING,
        )
        rows = [
            r.split("pool_messages", 1)[1].strip()
            for i in (1, 2, 3)
            for r in self.cli(i, "show", "services").splitlines()
            if "pool_messages" in r
        ]
        log.info(
            "convergence: 3 instances, crs2 killed and restarted: {acked} posts acknowledged;"
            " slots back {formed:.1f}s after the restart, everything delivered {took:.1f}s after"
            " the last post, {total:.1f}s in all; pool_messages: {rows}",
            acked=len(self.acked),
            formed=formed,
            took=took,
            total=time.monotonic() - began,
            rows=" | ".join(rows),
        )

    def test_all_pairs_and_kill_under_load(self) -> None:
        """Posts between every two instances; kill -9 of crs3 under load;
        nothing acknowledged is lost or delivered twice, and posts to crs3's
        client are taken by the survivors, not refused ``not-found``."""
        began = time.monotonic()
        for n in range(2):
            self.all_pairs(b"round %d" % n, [1, 2, 3])
        self.collect([address(1)])
        across = time.monotonic() - began
        c1, c2, c3 = (self.members[i] for i in (1, 2, 3))
        self.kill(3)
        killed = time.monotonic()
        c3.close()
        for n in range(8):
            for sender, to in ((c1, c3), (c2, c3), (c1, c2), (c2, c1)):
                self.post(
                    sender, to, b"during %d %s->%s" % (n, sender.uri.encode(), to.uri.encode())
                )
            time.sleep(0.25)
        # crs3's slots taken over: posts to its client (not attached
        # anywhere) are stored by the survivor that owns its slot now
        wait_for(
            lambda: (
                "(crs3)" not in self.cli(1, "check", "slot", c3.uri)
                and "(crs3)" not in self.cli(2, "check", "slot", c3.uri)
            ),
            "crs3's slots to be taken over",
            CEILING,
        )
        for n in range(3):
            self.post(c1, c3, b"taken over %d 1" % n)
            self.post(c2, c3, b"taken over %d 2" % n)
        self.assertEqual(self.refused, [], "posts refused after the kill")
        self.attach(c3, [address(3), address(1), address(2)])
        self.assertIn(c3.at, (address(1), address(2)))
        attached = time.monotonic() - killed
        self.all_pairs(b"after", [1, 2, 3])
        took = self.collect([address(1), address(2)])
        self.check_once()
        rows = [r for r in self.cli(1, "show", "services").splitlines() if "pool_messages" in r]
        self.assertEqual(len(rows), 1)
        self.assertIn("active (forwarded ", rows[0])
        log.info(
            "convergence: 3 instances: {acked} posts acknowledged, {refused} refused; all pairs"
            " delivered in {across:.1f}s; crs3 killed: its client attached at a survivor after"
            " {attached:.1f}s, everything delivered {took:.1f}s after the last post;"
            " crs1 {row}",
            acked=len(self.acked),
            refused=len(self.refused),
            across=across,
            attached=attached,
            took=took,
            row=" ".join(rows[0].split()[1:]),
        )
