"""The durable message store against a real redis-server with its append-only file,
and `cryptify-client send` processes through a real `twistd crs`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Coroutine
from typing import Any

import cbor2
from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from cryptify.client.messages import MessageCrypto
from cryptify.crs.messages.store import MessageRefused, MessageStore, Posted
from cryptify.crs.redis.store import RedisStore
from cryptify.crypto.keymaterial import load_key_material
from tests.contracts import CONTRACT_INBOX, MessageStoreContract
from tests.interop._crs import CALLEE, CALLER, CrsFixture, send
from tests.interop._procs import BIN, durable_redis, free_port, short_tempdir

PASSWORD = "interop-secret"


class _RedisCase(TestCase):
    """A MessageStore (inbox limit 3) on a real redis-server with its append-only file."""

    timeout = 60

    def setUp(self) -> Any:
        if shutil.which("redis-server") is None:
            raise SkipTest("redis-server is not installed")
        self.dir = short_tempdir(self)
        self.port = free_port()
        self.now = 1_800_000_000.0
        self.start_redis()
        self.redis = RedisStore.tcp(reactor, "127.0.0.1", self.port, PASSWORD, "redis_low")
        self.redis.startService()
        self.addCleanup(self.redis.stopService)
        self.store = MessageStore(
            lambda: self.redis, clock=lambda: self.now, max_inbox=CONTRACT_INBOX
        )
        return self.redis.when_connected()

    def start_redis(self) -> None:
        self.proc = durable_redis(self.port, PASSWORD, self.dir)
        self.addCleanup(self.stop_redis)

    def stop_redis(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)


class MessageStoreContractTests(MessageStoreContract, _RedisCase):
    """The Lua scripts keep the contract the unit tests' fake keeps."""

    def drive(self, work: Coroutine[Any, Any, None]) -> defer.Deferred[None]:
        return defer.ensureDeferred(work)


class MessageStoreTests(_RedisCase):
    async def test_post_deliver(self) -> None:
        """A posted message waits for its recipient, then leaves on delivered."""
        posted = await self.store.post(
            "tel:+1", "conn:c:7", "tel:+2", "acme", "content", b"\x00secret"
        )
        self.assertFalse(posted.duplicate)
        [stored] = await self.store.waiting("tel:+2")
        self.assertEqual(
            (stored.id, stored.sender, stored.data, stored.time_ms),
            (posted.id, "tel:+1", b"\x00secret", int(self.now * 1000)),
        )
        self.assertIsNone(await self.store.delivered("tel:+3", posted.id))
        self.assertEqual(await self.store.delivered("tel:+2", posted.id), ("tel:+1", "content"))
        self.assertEqual(await self.store.waiting("tel:+2"), [])
        self.assertIsNone(await self.store.delivered("tel:+2", posted.id))

    async def test_exactly_once(self) -> None:
        """Repeating a post (same sender and id) stores it once, even after delivery."""
        first = await self.store.post("tel:+1", "conn:c:9", "tel:+2", "acme", "content", b"a")
        again = await self.store.post("tel:+1", "conn:c:9", "tel:+2", "acme", "content", b"a")
        self.assertEqual((again.id, again.duplicate), (first.id, True))
        self.assertEqual(await self.store.count("tel:+2"), 1)
        await self.store.delivered("tel:+2", first.id)
        late = await self.store.post("tel:+1", "conn:c:9", "tel:+2", "acme", "content", b"a")
        self.assertEqual(late.id, first.id)
        self.assertEqual(await self.store.count("tel:+2"), 0)

    async def test_key_scopes_one_message(self) -> None:
        """With a key, a retry from any connection answers the first ID; the same key
        for another content or recipient is refused ``key-reused`` and stores nothing;
        without a key, request id 1 on a new connection is a new message."""
        key = "key:" + bytes(range(16)).hex()
        first = await self.store.post("tel:+1", key, "tel:+2", "acme", "content", b"hello")
        retry = await self.store.post("tel:+1", key, "tel:+2", "acme", "content", b"hello")
        self.assertEqual((retry.id, retry.duplicate), (first.id, True))
        for recipient, content in (("tel:+2", b"other"), ("tel:+3", b"hello")):
            with self.assertRaises(MessageRefused) as caught:
                await self.store.post("tel:+1", key, recipient, "acme", "content", content)
            self.assertEqual(caught.exception.code, "key-reused")
        other_sender = await self.store.post("tel:+5", key, "tel:+2", "acme", "content", b"x")
        self.assertFalse(other_sender.duplicate)
        one = await self.store.post("tel:+1", "conn:a:1", "tel:+4", "acme", "content", b"one")
        two = await self.store.post("tel:+1", "conn:b:1", "tel:+4", "acme", "content", b"two")
        self.assertNotEqual(one.id, two.id)
        with self.assertRaises(MessageRefused) as caught:
            await self.store.post("tel:+1", "conn:a:1", "tel:+4", "acme", "content", b"three")
        self.assertEqual(caught.exception.code, "key-reused")
        self.assertEqual([m.data for m in await self.store.waiting("tel:+2")], [b"hello", b"x"])
        self.assertEqual([m.data for m in await self.store.waiting("tel:+4")], [b"one", b"two"])

    async def test_extension_kept(self) -> None:
        """A post to ``tel:+8888;101`` waits in ``tel:+8888``'s inbox and keeps its
        extension as recipient; expiry empties that inbox too."""
        await self.redis.client.sadd("known", "tel:+8888")
        posted = await self.store.post(
            "tel:+1", "conn:c:1", "tel:+8888;101", "acme", "content", b"hi", known="known"
        )
        [stored] = await self.store.waiting("tel:+8888")
        self.assertEqual((stored.id, stored.recipient), (posted.id, "tel:+8888;101"))
        with self.assertRaises(MessageRefused) as caught:
            await self.store.post(
                "tel:+1", "conn:c:2", "tel:+9999;101", "acme", "content", b"hi", known="known"
            )
        self.assertEqual(caught.exception.code, "not-found")
        self.now += self.store.expire_after + 1
        self.assertEqual(await self.store.expire(), 1)
        self.assertEqual(await self.store.count("tel:+8888"), 0)

    async def test_order_and_limit(self) -> None:
        """Messages come out in posting order; a full inbox refuses more."""
        for n, sender in enumerate(("tel:+1", "tel:+3", "tel:+1")):
            await self.store.post(sender, f"conn:c:{n}", "tel:+2", "acme", "content", bytes([n]))
        waiting = await self.store.waiting("tel:+2")
        self.assertEqual([m.data for m in waiting], [b"\x00", b"\x01", b"\x02"])
        with self.assertRaises(MessageRefused) as caught:
            await self.store.post("tel:+1", "conn:c:99", "tel:+2", "acme", "content", b"x")
        self.assertEqual(caught.exception.code, "inbox-full")

    async def test_one_batch(self) -> None:
        """Posts of one turn share a script call: each stored once, in order, a repeat
        inside the batch answers the first ID; deliveries of one turn likewise."""
        posts = [
            self.store.post("tel:+1", "conn:c:1", "tel:+2", "acme", "content", b"a"),
            self.store.post("tel:+3", "conn:c:1", "tel:+2", "acme", "content", b"b"),
            self.store.post("tel:+1", "conn:c:1", "tel:+2", "acme", "content", b"a"),
            self.store.post("tel:+1", "conn:c:2", "tel:+2", "acme", "ack", b"x"),
        ]
        first, second, repeat, ack = [await p for p in posts]
        self.assertEqual(self.store.posts.calls, 1)
        self.assertEqual((repeat.id, repeat.duplicate), (first.id, True))
        waiting = await self.store.waiting("tel:+2")
        self.assertEqual([m.id for m in waiting], [first.id, second.id, ack.id])
        done = [
            self.store.delivered("tel:+2", first.id, "stat:"),
            self.store.delivered("tel:+2", "no-such-id"),
            self.store.delivered("tel:+2", ack.id),
        ]
        self.assertEqual([await d for d in done], [("tel:+1", "content"), None, ("tel:+1", "ack")])
        self.assertEqual(self.store.deliveries.calls, 1)
        self.assertEqual(await self.redis.client.hget("stat:tel:+1", "deliv"), "1")
        self.assertEqual(await self.store.count("tel:+2"), 1)

    async def test_redis_error_fails_one_post(self) -> None:
        """A post Redis fails (its inbox key holds the wrong type) is refused ``internal``;
        the others of its batch are stored, and nothing of it is left behind."""
        await self.redis.client.set("inbox:tel:+9", "not a list")
        posts = [
            self.store.post("tel:+1", "conn:c:1", "tel:+2", "acme", "content", b"a"),
            self.store.post("tel:+1", "conn:c:2", "tel:+9", "acme", "content", b"b"),
            self.store.post("tel:+1", "conn:c:3", "tel:+2", "acme", "content", b"c"),
        ]
        results = []
        for p in posts:
            try:
                results.append(await p)
            except MessageRefused as refused:
                results.append(refused)
        self.assertEqual(self.store.posts.calls, 1)
        self.assertEqual([type(r) for r in results], [Posted, MessageRefused, Posted])
        bad = results[1]
        assert isinstance(bad, MessageRefused)
        self.assertEqual(bad.code, "internal")
        self.assertIn("WRONGTYPE", str(bad))
        self.assertEqual([m.data for m in await self.store.waiting("tel:+2")], [b"a", b"c"])
        self.assertIsNone(await self.redis.client.get("dedup:tel:+1:conn:c:2"))

    async def test_survives_redis_restart(self) -> None:
        """Posted messages are still there after redis-server restarts."""
        posted = await self.store.post("tel:+1", "conn:c:1", "tel:+2", "acme", "content", b"kept")
        self.stop_redis()
        self.start_redis()

        async def reconnected() -> None:
            for _ in range(200):
                if self.redis.connected:
                    try:
                        await self.redis.ping()
                        return
                    except Exception:
                        pass
                await deferLater(reactor, 0.05, lambda: None)
            self.fail("no reconnection")

        await reconnected()
        [stored] = await self.store.waiting("tel:+2")
        self.assertEqual((stored.id, stored.data), (posted.id, b"kept"))

    async def test_expiry(self) -> None:
        """Undelivered messages expire after their time, counted."""
        await self.store.post("tel:+1", "conn:c:1", "tel:+2", "acme", "content", b"old")
        self.now += self.store.expire_after - 10
        await self.store.post("tel:+1", "conn:c:2", "tel:+2", "acme", "content", b"new")
        self.now += 20
        self.assertEqual(await self.store.expire(), 1)
        self.assertEqual([m.data for m in await self.store.waiting("tel:+2")], [b"new"])
        self.assertEqual(self.store.expired, 1)

    def test_refuses_bad_posts(self) -> defer.Deferred[Any]:
        """Oversized content and unknown kinds are refused before touching Redis."""

        async def run() -> None:
            with self.assertRaises(MessageRefused):
                await self.store.post(
                    "tel:+1", "conn:c:1", "tel:+2", "acme", "content", b"x" * 50000
                )
            with self.assertRaises(MessageRefused):
                await self.store.post("tel:+1", "conn:c:1", "tel:+2", "acme", "weird", b"x")

        return defer.ensureDeferred(run())


class ClientSendTests(CrsFixture):
    """`cryptify-client send`, each a fresh process, through a real `twistd crs`."""

    #: Several fresh processes are what matters (each starts its request ids
    #: at 1); each costs a Python start and a SAKKE encapsulation.
    COUNT = 6
    #: Seconds of CPU each on a busy shared machine: more than the fixture's 120 s.
    timeout = 900

    def send_one(self, n: int) -> tuple[int, str]:
        cert = os.path.join(self.dir, "data", "tls", "crs.crt")
        done = subprocess.run(
            [
                os.path.join(BIN, "cryptify-client"),
                "send",
                CALLEE,
                f"message {n}",
                "--keys",
                self.key_files[CALLER],
                "--server",
                f"127.0.0.1:{self.client_port}",
                "--ca",
                cert,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.returncode, done.stdout + done.stderr

    def collect(self) -> list[str]:
        """Attach as the recipient and take every waiting message, confirming each."""
        self.opener = MessageCrypto(load_key_material(self.key_files[CALLEE]))
        recipient = self.attach(CALLEE)
        got: dict[str, str] = {}
        arrivals: list[str] = []
        try:
            send(recipient, type="fetch", id=1)
            while True:
                msg = cbor2.loads(recipient.recv(timeout=30))
                if msg.get("type") == "message":
                    arrivals.append(msg["message"])
                    opened = self.opener.open(msg["content"], msg["from"])
                    got[msg["message"]] = opened.body.text
                    send(recipient, type="delivered", message=msg["message"])
                elif msg.get("type") == "ok":
                    break
        finally:
            recipient.close()
        self.assertEqual(len(arrivals), len(got))  # none sent twice
        return sorted(got.values())

    async def test_fresh_processes_one_sender(self) -> None:
        """Sends from fresh client processes of one sender (each starting its
        request ids at 1) are all stored and arrive once each."""
        self.attach(CALLEE).close()  # known to the CRS, then offline
        posted = []
        for n in range(self.COUNT):
            status, out = await threads.deferToThread(self.send_one, n)
            self.assertEqual(status, 0, out)
            [line] = [line for line in out.splitlines() if " posted message " in line]
            posted.append(line.split()[-1])
        self.assertEqual(len(set(posted)), self.COUNT)
        contents = await threads.deferToThread(self.collect)
        self.assertEqual(contents, sorted(f"message {n}" for n in range(self.COUNT)))


class WaitingMessagesTests(CrsFixture):
    """Every waiting message arrives after an attach, through a real `twistd crs`."""

    COUNT = 199

    def post_all(self) -> None:
        self.attach(CALLEE).close()  # known to the CRS, then offline
        sender = self.attach(CALLER)
        try:
            for n in range(self.COUNT):
                send(
                    sender,
                    type="post",
                    id=n + 10,
                    to=CALLEE,
                    content=b"w%d" % n,
                    key=os.urandom(16),
                )
            answers = [cbor2.loads(sender.recv(timeout=30)) for _ in range(self.COUNT)]
        finally:
            sender.close()
        assert [a["type"] for a in answers] == ["posted"] * self.COUNT, answers[:3]

    def receive_all(self) -> list[bytes]:
        """Attach (no fetch) and confirm each message as it comes, until all came."""
        recipient = self.attach(CALLEE)
        got: list[bytes] = []
        try:
            while len(got) < self.COUNT:
                msg = cbor2.loads(recipient.recv(timeout=30))
                if msg.get("type") == "message":
                    got.append(msg["content"])
                    send(recipient, type="delivered", message=msg["message"])
        finally:
            recipient.close()
        return got

    async def test_all_waiting_arrive_in_one_attach(self) -> None:
        """199 waiting messages all arrive, in order and once each, in one attach of
        a client that confirms each (not only the first 100)."""
        await threads.deferToThread(self.post_all)
        got = await threads.deferToThread(self.receive_all)
        self.assertEqual(got, [b"w%d" % n for n in range(self.COUNT)])
        status, out, err = self.cli("show", "message")
        self.assertEqual(status, 0, err)
        [row] = [line.split() for line in out.splitlines() if line.startswith(CALLER)]
        self.assertEqual(row[1:3], [str(self.COUNT), str(self.COUNT)])
