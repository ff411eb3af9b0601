"""
Interop: messages across a pool of two real ``twistd crs`` instances, each
in its own network namespace (the harness of tests/interop/_pool.py).

The sender is a client of crs1's home range, the recipient one of crs2's:
the sender's posts go from crs1 to crs2 over the pool link (TLS-PSK) and
are answered ``posted`` only once crs2 has stored them; the recipient's
``delivered`` comes back to the sender through crs1, and its ack message
goes the other way.  Then, under a stream of posts:

- ``kill -9`` of crs2 (and its Redis children): the posts crs1 cannot
  forward are kept in crs1's Redis (hinted hand-off) and answered; once
  crs1 has taken crs2's slots the recipient attaches there; crs2 comes
  back, its slots trickle back, and what crs1 kept for it is handed over;
- ``kill -9`` of crs2's ``redis_low`` with messages waiting in it: crs2
  restarts it from its append-only file;
- crs2 killed and started again with its ``redis_high`` wiped;
- a partition: both instances alive and reachable from the client host,
  but each with a blackhole route to the other's address (no packet
  filter is installed on this machine; a blackhole drops silently as a
  filter's drop does); then the routes are removed.

Each asserts that every post answered ``posted`` reaches the recipient,
once (by ID, and no content under two IDs), and logs (does not assert) how
long the pool took to deliver everything after the fault ended
(``convergence:`` lines in ``_trial_temp/test.log``).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import cbor2
from twisted.logger import Logger

from tests.interop._pool import CEILING, Client, PoolCase, address, send
from tests.interop._procs import wait_for

log = Logger(namespace="tests.pool_messages")


class Ledger:
    """What the sender was answered and what the recipient received."""

    def __init__(self) -> None:
        #: content -> ID answered ``posted``
        self.acked: dict[bytes, str] = {}
        self.refused: list[str] = []
        #: (ID, content) in the order received, repeats included
        self.received: list[tuple[str, bytes]] = []
        self.told: set[str] = set()
        self.acks: list[str] = []

    def missing(self) -> set[str]:
        got = {i for i, _ in self.received}
        return {i for i in self.acked.values() if i not in got}


class PoolMessagesTests(PoolCase):
    COUNT = 2

    def setUp(self) -> None:
        super().setUp()
        self.ledger = Ledger()
        self.posts = 0
        wait_for(lambda: self.formed([1, 2]), "the pool to form", CEILING)
        self.sender, self.recipient = self.attach_across()
        self.assertEqual(
            (self.sender.at, self.recipient.at, self.recipient.moves),
            (address(1), address(2), [address(2)]),
        )

    # -- the clients -----------------------------------------------------

    def post(self, content: bytes) -> str | None:
        """One post from the sender; the ID answered, or None if refused."""
        self.posts += 1
        n = self.posts
        send(
            self.sender.ws,
            type="post",
            id=n,
            to=self.recipient.uri,
            content=content,
            key=os.urandom(16),
        )
        deadline = time.monotonic() + CEILING
        while time.monotonic() < deadline:
            msg = self.read(self.sender, CEILING)
            if msg is None:
                raise AssertionError("the sender's connection ended")
            if msg.get("id") != n:
                continue
            if msg["type"] == "posted":
                self.ledger.acked[content] = msg["message"]
                return str(msg["message"])
            self.ledger.refused.append(str(msg.get("code")))
            return None
        raise AssertionError(f"post {n} not answered")

    def read(self, client: Client, timeout: float) -> dict[str, Any] | None:
        """The next frame for ``client`` (its own bookkeeping done), {} on a
        timeout, None when the connection ended."""
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
        if msg.get("type") == "delivered" and client is self.sender:
            self.ledger.told.add(str(msg["message"]))
        if msg.get("type") == "message":
            if client is self.recipient:
                self.ledger.received.append((str(msg["message"]), bytes(msg.get("content", b""))))
            else:
                self.ledger.acks.append(str(msg.get("ack")))
            send(client.ws, type="delivered", message=msg["message"])
        return msg

    def drain(self, client: Client, quiet: float = 1.0) -> None:
        """Read until ``client`` hears nothing for ``quiet`` seconds."""
        while client.ws is not None:
            msg = self.read(client, quiet)
            if msg == {}:
                return

    def collect(self, hosts: list[str]) -> float:
        """Keep the recipient attached (at whichever instance takes it) and
        reading until every acknowledged post has reached it; how long."""
        began = time.monotonic()
        deadline = began + 3 * CEILING
        while self.ledger.missing() and time.monotonic() < deadline:
            if self.recipient.ws is None:
                self.recipient.moves.clear()
                self.attach(self.recipient, hosts)
            self.read(self.recipient, 1.0)
        missing = self.ledger.missing()
        self.assertEqual(missing, set(), f"{len(missing)} acknowledged messages not delivered")
        return time.monotonic() - began

    def check_once(self) -> None:
        """No content under two IDs, and every ID received once (a repeat
        of an ID, which the client would recognise, is counted)."""
        ids: dict[bytes, set[str]] = {}
        for message_id, content in self.ledger.received:
            ids.setdefault(content, set()).add(message_id)
        twice = {c: i for c, i in ids.items() if len(i) > 1}
        self.assertEqual(twice, {}, "a message delivered under two IDs")
        seen = [i for i, _ in self.ledger.received]
        self.assertEqual(len(seen), len(set(seen)), "a message delivered twice")

    def load(self, count: int, pause: float, tag: bytes) -> None:
        for n in range(count):
            self.post(b"%s %d" % (tag, n))
            time.sleep(pause)

    def blackhole(self, add: bool) -> None:
        verb = "add" if add else "del"
        for index, other in ((1, 2), (2, 1)):
            self.net.hosts[index - 1].run("ip", "route", verb, "blackhole", f"{address(other)}/32")

    # -- the tests -------------------------------------------------------

    def test_message_and_ack_across(self) -> None:
        """Sender on crs1, recipient on crs2: the message is posted (stored
        at crs2), delivered, the sender told; the recipient's ack comes back."""
        message_id = self.post(b"hello across")
        self.assertIsNotNone(message_id)
        self.drain(self.recipient)
        self.assertEqual(self.ledger.received, [(message_id, b"hello across")])
        deadline = time.monotonic() + CEILING
        while message_id not in self.ledger.told and time.monotonic() < deadline:
            self.read(self.sender, 1.0)
        self.assertIn(message_id, self.ledger.told)
        send(self.recipient.ws, type="post", id=1, to=self.sender.uri, ack=str(message_id))
        while not self.ledger.acks and time.monotonic() < deadline:
            self.read(self.sender, 1.0)
        self.assertEqual(self.ledger.acks, [message_id])

    def test_kill_owner_under_load(self) -> None:
        """kill -9 of crs2 while the sender posts: what crs1 cannot forward
        it keeps; the recipient attaches at crs1 once it has the slots;
        offline, its messages wait at crs1; crs2 comes back, the slots
        trickle back and crs1 hands the waiting messages over.  Nothing
        acknowledged is lost or delivered twice."""
        self.load(10, 0.1, b"before")
        self.drain(self.recipient)
        self.kill(2)
        killed = time.monotonic()
        self.load(15, 0.3, b"during")
        held = [i for c, i in self.ledger.acked.items() if c.startswith(b"during")]
        # the recipient, cut off, attaches at crs1 once it has the slots
        self.recipient.close()
        self.attach(self.recipient, [address(2), address(1)])
        self.assertEqual(self.recipient.at, address(1))
        took_over = time.monotonic() - killed
        self.load(5, 0.1, b"taken over")
        self.drain(self.recipient)
        self.recipient.close()  # offline: the next ones wait at crs1
        self.load(10, 0.1, b"offline")
        self.start(2)
        restarted = time.monotonic()
        wait_for(lambda: self.formed([1, 2]), "the slots to come back", CEILING * 2)
        formed = time.monotonic() - restarted
        self.collect([address(1), address(2)])
        delivered = time.monotonic() - restarted
        self.assertEqual(self.recipient.at, address(2))
        self.check_once()
        log.info(
            "convergence: kill -9 of crs2: {acked} posts acknowledged ({held} kept at crs1"
            " while crs2 was away), {refused} refused ({codes}); the recipient attached at"
            " crs1 {took_over:.1f}s after the kill; crs2 restarted: slots back after"
            " {formed:.1f}s, every message delivered at crs2 after {delivered:.1f}s",
            acked=len(self.ledger.acked),
            held=len(held),
            refused=len(self.ledger.refused),
            codes=",".join(sorted(set(self.ledger.refused))) or "-",
            took_over=took_over,
            formed=formed,
            delivered=delivered,
        )

    def test_partition_heals(self) -> None:
        """Both instances alive and reachable from the client host, the link
        between them cut both ways: each takes the other's slots.  The
        recipient (known to both) stays at crs2 while the sender's posts
        are stored at crs1; when the cut heals, every acknowledged post is
        delivered once."""
        self.load(5, 0.1, b"before")
        self.drain(self.recipient)
        self.cut = True
        self.blackhole(True)
        self.addCleanup(lambda: self.blackhole(False) if self.cut else None)
        began = time.monotonic()
        self.load(5, 0.3, b"cutting")
        # crs1 takes the recipient's slot: it attaches there once (so crs1
        # knows it), then back at crs2, which serves it as well
        wait_for(
            lambda: "(crs1)" in self.cli(1, "check", "slot", self.recipient.uri),
            "crs1 to take the recipient's slot",
            CEILING,
        )
        self.recipient.close()
        self.attach(self.recipient, [address(1)])
        self.assertEqual(self.recipient.at, address(1))
        self.recipient.close()
        self.attach(self.recipient, [address(2)])
        self.assertEqual(self.recipient.at, address(2))
        self.load(20, 0.2, b"cut")
        self.drain(self.recipient)
        self.blackhole(False)
        self.cut = False
        healed = time.monotonic()
        took = self.collect([address(2), address(1)])
        wait_for(lambda: self.formed([1, 2]), "the pool to settle", CEILING * 2)
        self.collect([address(2), address(1)])
        self.check_once()
        log.info(
            "convergence: partition of {cut:.1f}s: {acked} posts acknowledged, {refused}"
            " refused ({codes}); all delivered {took:.1f}s after it healed, map settled"
            " after {settled:.1f}s",
            cut=healed - began,
            acked=len(self.ledger.acked),
            refused=len(self.ledger.refused),
            codes=",".join(sorted(set(self.ledger.refused))) or "-",
            took=took,
            settled=time.monotonic() - healed,
        )

    def redis_pid(self, index: int, name: str) -> int:
        path = os.path.join(self.dirs[index - 1], "data", "redis", name, "redis.pid")
        with open(path) as f:
            return int(f.read().strip())

    def service_active(self, index: int, name: str) -> bool:
        try:
            rows = self.cli(index, "show", "services").splitlines()
        except AssertionError:
            return False
        return any(r.split()[1:3] == [name, "active"] for r in rows if len(r.split()) >= 3)

    def test_redis_low_killed_under_load(self) -> None:
        """kill -9 of crs2's redis_low (the durable store) with messages
        waiting in it and posts streaming: crs2 restarts it from its
        append-only file; posts meanwhile are kept at crs1 or refused, never
        answered and lost; every acknowledged post reaches the recipient
        once."""
        self.load(5, 0.1, b"before")
        self.drain(self.recipient)
        self.recipient.close()  # offline: the next ones wait in crs2's redis_low
        self.load(5, 0.1, b"stored")
        old = self.redis_pid(2, "redis_low")
        os.kill(old, signal.SIGKILL)
        killed = time.monotonic()
        self.load(15, 0.2, b"during")
        wait_for(
            lambda: self.redis_pid(2, "redis_low") != old and self.service_active(2, "redis_low"),
            "crs2 to restart its redis_low",
            CEILING,
        )
        restarted = time.monotonic() - killed
        self.load(5, 0.1, b"after")
        took = self.collect([address(2), address(1)])
        self.check_once()
        log.info(
            "convergence: redis_low of crs2 killed: restarted after {restarted:.1f}s;"
            " {acked} posts acknowledged, {refused} refused ({codes}); all delivered"
            " {took:.1f}s after the recipient came back",
            restarted=restarted,
            acked=len(self.ledger.acked),
            refused=len(self.ledger.refused),
            codes=",".join(sorted(set(self.ledger.refused))) or "-",
            took=took,
        )

    def test_restart_with_empty_redis_high(self) -> None:
        """crs2 killed with messages waiting for its offline recipient, its
        redis_high (attachments, tickets: the volatile state) wiped, and
        started again: the waiting messages (in redis_low) and those crs1
        kept meanwhile all reach the recipient once."""
        self.load(5, 0.1, b"before")
        self.drain(self.recipient)
        self.recipient.close()
        self.load(5, 0.1, b"stored")
        self.kill(2)
        high = os.path.join(self.dirs[1], "data", "redis", "redis_high")
        for entry in os.listdir(high) if os.path.isdir(high) else ():
            path = os.path.join(high, entry)
            if os.path.isfile(path):
                os.unlink(path)
        self.load(10, 0.3, b"while down")
        self.start(2)
        restarted = time.monotonic()
        wait_for(lambda: self.formed([1, 2]), "the slots to come back", CEILING * 2)
        took = self.collect([address(2), address(1)])
        self.assertEqual(self.recipient.at, address(2))
        self.check_once()
        log.info(
            "convergence: crs2 restarted with an empty redis_high: {acked} posts"
            " acknowledged, {refused} refused ({codes}); all delivered {took:.1f}s after"
            " the pool settled ({settled:.1f}s after the restart)",
            acked=len(self.ledger.acked),
            refused=len(self.ledger.refused),
            codes=",".join(sorted(set(self.ledger.refused))) or "-",
            took=took,
            settled=time.monotonic() - restarted - took,
        )
