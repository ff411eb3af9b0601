"""Contract suites: one set of tests run against a fake and against the real thing.

:class:`MessageStoreContract` runs against
:class:`~tests.fakes.MemoryMessageStore` in ``tests.test_messages`` and
against :class:`~cryptify.crs.messages.store.MessageStore` on a real
redis-server in ``tests.interop.test_messages``, so the fake the unit tests
rely on and the Lua scripts agree.

A test case using a contract sets ``self.store`` (inbox limit 3) and
``self.now`` (the store's clock) in ``setUp`` and says how to run a
coroutine (:meth:`drive`): to completion at once, or as a Deferred.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from cryptify.crs.messages.store import MAX_CONTENT, MessageRefused, UriCounters
from cryptify.crs.pool.origins import Gone

#: The inbox limit the store under test is built with.
CONTRACT_INBOX = 3


class MessageStoreContract:
    """What every message store does, seen through its interface."""

    store: Any
    now: float

    def drive(self, work: Coroutine[Any, Any, None]) -> Any:
        raise NotImplementedError

    async def refused(self, work: Any) -> str:
        """The code ``work`` (an awaitable post) was refused with."""
        try:
            await work
        except MessageRefused as refused:
            return refused.code
        raise AssertionError("not refused")

    # -- post, waiting, delivered ----------------------------------------------------

    async def _post_wait_deliver(self) -> None:
        t: Any = self
        posted = await self.store.post("tel:+1", "conn:c:1", "tel:+2", "acme", "content", b"\0a")
        t.assertFalse(posted.duplicate)
        t.assertEqual(posted.stored.id, posted.id)
        [stored] = await self.store.waiting("tel:+2")
        t.assertEqual(stored, posted.stored)
        t.assertEqual(
            (stored.sender, stored.recipient, stored.account, stored.kind, stored.data),
            ("tel:+1", "tel:+2", "acme", "content", b"\0a"),
        )
        t.assertEqual(stored.time_ms, int(self.now * 1000))
        t.assertEqual(await self.store.get(posted.id), stored)
        raw = await self.store.raw_fields(posted.id)
        t.assertEqual(
            {k: raw[k] for k in ("from", "to", "account", "kind", "time", "data")},
            {
                "from": "tel:+1",
                "to": "tel:+2",
                "account": "acme",
                "kind": "content",
                "time": str(int(self.now * 1000)),
                "data": "AGE=",
            },
        )
        t.assertIsNone(await self.store.delivered("tel:+3", posted.id))
        t.assertEqual(await self.store.delivered("tel:+2", posted.id), ("tel:+1", "content"))
        t.assertIsNone(await self.store.delivered("tel:+2", posted.id))
        t.assertEqual(await self.store.waiting("tel:+2"), [])
        t.assertIsNone(await self.store.get(posted.id))
        t.assertEqual(await self.store.raw_fields(posted.id), {})

    def test_post_wait_deliver(self) -> Any:
        """A post waits for its recipient as stored; only the recipient's delivered
        removes it, once."""
        return self.drive(self._post_wait_deliver())

    async def _pool_copy(self) -> None:
        t: Any = self
        post = self.store.post
        first = await post("tel:+1", "key:aa", "tel:+2", "a", "content", b"x", None, None, "m-1", 5)
        t.assertEqual((first.id, first.duplicate, first.stored.time_ms), ("m-1", False, 5))
        t.assertEqual((await self.store.get("m-1")).scope, "key:aa")
        t.assertEqual(await self.store.inboxes(), ["tel:+2"])
        again = await post("tel:+1", "key:aa", "tel:+2", "a", "content", b"x", None, None, "m-9")
        t.assertEqual((again.id, again.duplicate), ("m-1", True))
        t.assertFalse(await self.store.handed("tel:+3", "m-1"))
        t.assertTrue(await self.store.handed("tel:+2", "m-1"))
        t.assertFalse(await self.store.handed("tel:+2", "m-1"))
        t.assertEqual(
            (await self.store.waiting_ids("tel:+2", 5), await self.store.inboxes()), ([], [])
        )
        back = await post("tel:+1", "key:aa", "tel:+2", "a", "content", b"x", None, None, "m-1", 5)
        t.assertEqual((back.id, back.duplicate), ("m-1", False))
        t.assertEqual(await self.store.delivered("tel:+2", "m-1"), ("tel:+1", "content"))
        late = await post("tel:+1", "key:aa", "tel:+2", "a", "content", b"x", None, None, "m-2")
        t.assertEqual((late.id, late.duplicate), ("m-1", True))
        t.assertEqual(await self.store.waiting_ids("tel:+2", 5), [])

    def test_pool_copy(self) -> Any:
        """A copy from another pool member keeps its ID, time and scope; once
        handed on it may come back and is stored again; once delivered, a
        copy is a repeat."""
        return self.drive(self._pool_copy())

    async def _order_and_limit(self) -> None:
        t: Any = self
        ids = []
        for n in range(CONTRACT_INBOX):
            posted = await self.store.post("tel:+1", f"conn:c:{n}", "tel:+2", "a", "ack", b"%d" % n)
            ids.append(posted.id)
        t.assertEqual(await self.store.waiting_ids("tel:+2", 10), ids)
        t.assertEqual(await self.store.waiting_ids("tel:+2", 2), ids[:2])
        t.assertEqual(await self.store.waiting_ids("tel:+2", 0), [])
        t.assertEqual(await self.store.inbox_page("tel:+2", 1, 2), ids[1:3])
        t.assertEqual(await self.store.inbox_page("tel:+2", CONTRACT_INBOX, 2), [])
        t.assertEqual(await self.store.count("tel:+2"), CONTRACT_INBOX)
        code = await self.refused(self.store.post("tel:+1", "conn:c:9", "tel:+2", "a", "ack", b"x"))
        t.assertEqual(code, "inbox-full")
        t.assertEqual(await self.store.count("tel:+2"), CONTRACT_INBOX)

    def test_order_and_limit(self) -> Any:
        """Messages wait in posting order; a full inbox refuses the next post."""
        return self.drive(self._order_and_limit())

    async def _repeats(self) -> None:
        t: Any = self
        first = await self.store.post("tel:+1", "key:ab", "tel:+2", "acme", "content", b"hi")
        again = await self.store.post("tel:+1", "key:ab", "tel:+2", "acme", "content", b"hi")
        t.assertEqual((again.id, again.duplicate, again.stored), (first.id, True, None))
        for recipient, kind, data in (
            ("tel:+2", "content", b"other"),
            ("tel:+3", "content", b"hi"),
            ("tel:+2", "system", b"hi"),
        ):
            code = await self.refused(
                self.store.post("tel:+1", "key:ab", recipient, "acme", kind, data)
            )
            t.assertEqual(code, "key-reused")
        other = await self.store.post("tel:+5", "key:ab", "tel:+2", "acme", "content", b"hi")
        t.assertFalse(other.duplicate)
        await self.store.delivered("tel:+2", first.id)
        late = await self.store.post("tel:+1", "key:ab", "tel:+2", "acme", "content", b"hi")
        t.assertEqual((late.id, late.duplicate), (first.id, True))
        t.assertEqual(await self.store.waiting_ids("tel:+2", 10), [other.id])

    def test_repeats(self) -> Any:
        """A repeat in the same scope answers the first ID (also after delivery);
        the scope used for another message is refused; another sender is another scope."""
        return self.drive(self._repeats())

    async def _extension(self) -> None:
        t: Any = self
        posted = await self.store.post("tel:+1", "conn:c:1", "tel:+8888;101", "a", "content", b"x")
        [stored] = await self.store.waiting("tel:+8888")
        t.assertEqual((stored.id, stored.recipient), (posted.id, "tel:+8888;101"))
        t.assertEqual(await self.store.waiting("tel:+8888;101"), [])
        t.assertEqual(await self.store.delivered("tel:+8888", posted.id), ("tel:+1", "content"))

    def test_extension(self) -> Any:
        """A post to an extension waits in its base number's inbox, keeping the extension."""
        return self.drive(self._extension())

    async def _bad_posts(self) -> None:
        t: Any = self
        post = self.store.post
        code = await self.refused(post("tel:+1", "conn:c:1", "tel:+2", "a", "voice", b"x"))
        t.assertEqual(code, "malformed")
        big = b"x" * (MAX_CONTENT + 1)
        code = await self.refused(post("tel:+1", "conn:c:2", "tel:+2", "a", "content", big))
        t.assertEqual(code, "too-large")
        t.assertEqual(await self.store.count("tel:+2"), 0)

    def test_bad_posts(self) -> Any:
        """An unknown kind and content over the limit are refused and store nothing."""
        return self.drive(self._bad_posts())

    # -- what messaging keeps in the store -------------------------------------------

    async def _known_and_counters(self) -> None:
        t: Any = self
        code = await self.refused(
            self.store.submit("tel:+1", "conn:c:1", "tel:+2", "acme", "content", b"x")
        )
        t.assertEqual(code, "not-found")
        t.assertTrue(await self.store.remember("tel:+1"))
        t.assertFalse(await self.store.remember("tel:+1"))
        # what another pool member tells: learned, listed, counted once
        t.assertEqual(await self.store.learn(["tel:+2", "tel:+3"]), 2)
        t.assertEqual(await self.store.learn(["tel:+3"]), 0)
        t.assertEqual(await self.store.known_uris(), ["tel:+1", "tel:+2", "tel:+3"])
        t.assertFalse(await self.store.remember("tel:+2"))
        first = await self.store.submit("tel:+1", "conn:c:1", "tel:+2;7", "acme", "content", b"x")
        await self.store.submit("tel:+1", "conn:c:2", "tel:+2", "acme", "ack", b"y")
        await self.store.submit("tel:+1", "conn:c:2", "tel:+2", "acme", "ack", b"y")  # repeat
        t.assertEqual(await self.store.confirm("tel:+2", first.id), ("tel:+1", "content"))
        t.assertIsNone(await self.store.confirm("tel:+2", first.id))
        await self.store.mark_read("tel:+2")
        t.assertEqual(
            await self.store.counters(),
            [
                UriCounters("tel:+1", 2, 1, None, "acme"),
                UriCounters("tel:+2", 0, 0, int(self.now), None),
            ],
        )

    def test_known_and_counters(self) -> Any:
        """Clients post only to URIs that attached; each new post and each delivery
        counts in the sender's row, a fetch stamps the reader's; only known URIs are
        listed."""
        return self.drive(self._known_and_counters())


class OriginStoreContract:
    """What every :class:`~cryptify.crs.pool.origins.OriginStore` does
    (``self.origins``): the memory one in ``tests.test_pool_origins``, the
    Redis one in ``tests.interop.test_pool_origins``."""

    origins: Any

    def drive(self, work: Coroutine[Any, Any, None]) -> Any:
        raise NotImplementedError

    async def _save_peek_take(self) -> None:
        t: Any = self
        t.assertIsNone(await self.origins.peek("m1"))
        t.assertIsNone(await self.origins.take("m1"))
        await self.origins.save("m1", "crs2")
        await self.origins.save("m2", "crs3")
        t.assertEqual(await self.origins.peek("m1"), "crs2")
        t.assertEqual(await self.origins.take("m1"), "crs2")
        t.assertIsNone(await self.origins.peek("m1"))
        t.assertIsNone(await self.origins.take("m1"))
        t.assertEqual(await self.origins.take("m2"), "crs3")

    def test_save_peek_take(self) -> Any:
        """An origin saved is found (peek keeps it, take forgets it), per ID."""
        return self.drive(self._save_peek_take())

    async def _overwrite(self) -> None:
        t: Any = self
        await self.origins.save("m1", "crs2")
        await self.origins.save("m1", "crs3")
        t.assertEqual(await self.origins.take("m1"), "crs3")

    def test_overwrite(self) -> Any:
        """The last origin saved for an ID is the one kept."""
        return self.drive(self._overwrite())

    async def _follow(self) -> None:
        t: Any = self
        t.assertIsNone(await self.origins.peek_follow("m1"))
        t.assertEqual(await self.origins.find("m1"), (None, None))
        await self.origins.save_follow("m1", "crs2", "crs3")
        t.assertEqual(await self.origins.peek_follow("m1"), ("crs2", "crs3"))
        t.assertIsNone(await self.origins.peek("m1"))  # not an origin
        t.assertEqual(await self.origins.find("m1"), (None, ("crs2", "crs3")))
        await self.origins.save("m1", "crs4")
        t.assertEqual(await self.origins.find("m1"), ("crs4", ("crs2", "crs3")))
        await self.origins.take("m1")
        await self.origins.forget_follow("m1")
        t.assertIsNone(await self.origins.peek_follow("m1"))
        await self.origins.forget_follow("m1")

    def test_follow(self) -> Any:
        """A follow entry (origin, holder) is kept per ID until forgotten;
        ``find`` answers the origin and the follow entry at once."""
        return self.drive(self._follow())

    async def _pending_gones(self) -> None:
        t: Any = self
        t.assertEqual(await self.origins.pending_gones(1000.0), [])
        first = Gone("crs2", "m1", "tel:+200", 2000.0)
        second = Gone("crs3", "m2", "tel:+201;5", 3000.0)
        old = Gone("crs2", "m0", "tel:+200", 1500.0)
        await self.origins.save("m1", "crs2")
        await self.origins.save_follow("m1", "crs3", "crs4")
        await self.origins.save("m2", "crs3")
        await self.origins.add_gones([first, old], "m1", True, False)
        t.assertEqual(await self.origins.find("m1"), (None, ("crs3", "crs4")))
        await self.origins.add_gones([second, first], "m1", False, True)
        t.assertEqual(await self.origins.find("m1"), (None, None))
        t.assertEqual(await self.origins.peek("m2"), "crs3")  # another ID's, kept
        await self.origins.add_gones([], "m2", True, True)
        t.assertIsNone(await self.origins.peek("m2"))
        t.assertEqual(await self.origins.pending_gones(1000.0), [old, first, second])
        await self.origins.remove_gones([first])
        await self.origins.remove_gones([first])
        await self.origins.remove_gones([])
        t.assertEqual(await self.origins.pending_gones(1600.0), [second])
        t.assertEqual(await self.origins.pending_gones(1000.0), [second])  # m0 expired, gone
        await self.origins.remove_gones([second, old])
        t.assertEqual(await self.origins.pending_gones(1000.0), [])

    def test_pending_gones(self) -> Any:
        """Pending msg-gone are kept once each until removed, listed by
        expiry, and forgotten once expired; adding them forgets the
        message's origin and follow entry when asked, in the same step."""
        return self.drive(self._pending_gones())
