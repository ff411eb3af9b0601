"""Messages across the pool in memory: forwarding to the owner, hinted
hand-off, the sweep, the frames' checks, and a state machine that posts,
delivers, cuts links, loses frames, restarts members and moves slots, and
checks that every acknowledged message is delivered exactly once."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.messages.store import MAX_CONTENT, Stored
from cryptify.crs.pool.core import DOWN_AFTER, HEARTBEAT_INTERVAL, JOIN_WAIT
from cryptify.crs.pool.forward import FORWARD_TIMEOUT, KNOWN_RESYNC, SWEEP_INTERVAL
from cryptify.crs.pool.forward_core import (
    DELIVERED,
    GONE,
    GONE_OK,
    KNOWN,
    MAX_KNOWN_BATCH,
    POST,
    REFUSED,
    STORED,
    GoneNote,
    decode_delivered,
    decode_gone,
    decode_known,
    decode_post,
    decode_refused,
    decode_stored,
    encode_gone,
    encode_known,
    encode_post,
)
from cryptify.crs.pool.gone import RESEND_FIRST, RESEND_MOST
from cryptify.crs.pool.wire import WireError
from cryptify.crs.slots import SLOTS, slot_of
from cryptify.protocols.umsg import message
from tests.forward_support import Conn, LinkPair, Net, Node

NOW = 1_800_000_000.0
SENDER = "tel:+100"
U = "tel:+200"


def two() -> tuple[Clock, Net, Node, Node, list[Stored]]:
    clock = Clock()
    clock.advance(NOW)
    net = Net()
    confirmed: list[Stored] = []
    a = Node(net, "crs1", clock, confirmed)
    b = Node(net, "crs2", clock, confirmed)
    for node in (a, b):
        node.link.default = "crs1"
        node.link.set_owner(U, "crs2")
        node.store.known.update({SENDER, U})
    return clock, net, a, b, confirmed


def states(node: Node) -> list[str]:
    return [line.split(", ")[4] for line in node.traces]


class ForwardTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock, self.net, self.a, self.b, self.confirmed = two()
        self.sender = self.a.attach(SENDER)

    def post(
        self, request: int = 1, content: bytes = b"hello", key: bytes = b"k" * 16, to: str = U
    ) -> None:
        self.a.post(self.sender, request, to, content, key)

    def test_stored_at_the_owner_before_posted(self) -> None:
        """The post goes to the owner, which stores it durably; only its
        answer makes the sender's `posted`; the owner delivers it, and the
        confirmation reaches the sender on the other member."""
        u = self.b.attach(U)
        self.post()
        self.assertEqual(self.sender.of("posted"), [])
        self.assertEqual(self.net.deliver(1), 1)  # the post reaches crs2
        self.assertEqual(list(self.b.store.messages), ["crs1-1"])
        self.assertEqual(self.sender.of("posted"), [])  # its answer not yet back
        self.net.deliver()
        [posted] = self.sender.of("posted")
        self.assertEqual(posted["message"], "crs1-1")
        self.assertEqual(self.a.store.messages, {})
        self.assertEqual(states(self.a), ["forward content"])
        self.assertIn("internal", self.a.traces[0])
        self.assertEqual(states(self.b), ["posted content"])
        [got] = u.of("message")
        self.assertEqual((got["message"], got["content"]), ("crs1-1", b"hello"))
        self.b.confirm_all()
        self.assertEqual(self.b.store.messages, {})
        self.assertEqual(self.sender.of("delivered"), [])
        self.net.deliver()
        [told] = self.sender.of("delivered")
        self.assertEqual(told["message"], "crs1-1")
        self.assertEqual(self.a.forwarder.counters["forwarded"], 1)
        self.assertEqual(self.b.forwarder.counters["taken"], 1)

    def test_ack_traced_as_forward_ack(self) -> None:
        self.a.messaging.post(
            self.sender,  # type: ignore[arg-type]
            message("post", id=3, to=U, ack="m1"),
        )
        self.net.deliver()
        self.assertEqual(states(self.a), ["forward ack"])
        self.assertEqual(self.b.store.messages["crs1-1"].kind, "ack")

    def test_owner_refusal_passed_on(self) -> None:
        """A recipient the owner does not know is refused there as it
        would be on one instance; nothing is stored anywhere."""
        self.b.store.known.discard(U)
        self.post()
        self.net.deliver()
        [error] = self.sender.of("error")
        self.assertEqual(error["code"], "not-found")
        self.assertEqual(self.sender.of("posted"), [])
        self.assertEqual((self.a.store.messages, self.b.store.messages), ({}, {}))

    def test_too_large_refused_before_forwarding(self) -> None:
        """Content over the store's limit for a URI of another member is
        refused ``too-large`` here, as the store refuses it, and never sent
        (the owner would take the frame for a broken one and drop the link)."""
        self.post(content=b"x" * (MAX_CONTENT + 1))
        self.net.deliver()
        [error] = self.sender.of("error")
        self.assertEqual(error["code"], "too-large")
        self.assertEqual(self.sender.of("posted"), [])
        self.assertEqual((self.a.store.messages, self.b.store.messages), ({}, {}))
        self.assertEqual(self.a.forwarder.counters["forwarded"], 0)
        self.post(request=2, content=b"x" * MAX_CONTENT)
        self.net.deliver()
        self.assertEqual(len(self.sender.of("posted")), 1)

    def test_repeat_answers_the_first_id(self) -> None:
        self.post()
        self.net.deliver()
        self.post(request=2)
        self.net.deliver()
        ids = [p["message"] for p in self.sender.of("posted")]
        self.assertEqual(ids, ["crs1-1", "crs1-1"])
        self.assertEqual(list(self.b.store.messages), ["crs1-1"])

    def test_owner_unreachable_kept_here_then_handed_over(self) -> None:
        """No link: the message is kept here (durably, then `posted`); when
        the link comes up it is stored at the owner, then deleted here."""
        self.net.set_link("crs1", "crs2", False)
        self.post()
        [posted] = self.sender.of("posted")
        self.assertEqual(list(self.a.store.messages), [posted["message"]])
        self.assertEqual(self.a.forwarder.counters["held"], 1)
        self.assertEqual(states(self.a), ["posted content"])
        u = self.b.attach(U)
        self.net.set_link("crs1", "crs2", True)
        self.net.deliver()
        self.assertEqual(self.a.store.messages, {})
        self.assertEqual(list(self.b.store.messages), [posted["message"]])
        self.assertEqual(states(self.a), ["posted content", "forward content"])
        self.assertEqual([m["message"] for m in u.of("message")], [posted["message"]])

    def test_confirmed_at_owner_drops_the_kept_copy(self) -> None:
        """The owner stored it, its answer was lost and the copy kept here;
        the recipient confirms it at the owner: msg-gone drops the copy here
        (not delivered a second time if the slot comes here first)."""
        u = self.b.attach(U)
        self.post()
        self.net.deliver(1)  # stored at crs2 and offered to U
        self.net.lose()  # the answer
        self.clock.advance(FORWARD_TIMEOUT)
        self.assertIn("crs1-1", self.a.store.messages)
        self.assertEqual(self.a.forwarder.counters["timeouts"], 1)
        self.b.confirm_all()
        self.net.deliver()
        self.assertEqual(self.a.store.messages, {})
        self.assertEqual(self.a.forwarder.counters["gone"], 1)
        self.assertEqual([m["message"] for m in u.of("message")], ["crs1-1"])
        # a retry is still a repeat here (the scope's tombstone stays)
        self.post()
        self.net.deliver()
        self.assertEqual([p["message"] for p in self.sender.of("posted")], ["crs1-1"] * 2)

    def test_origin_survives_a_restart(self) -> None:
        """The owner restarts between storing the message and its
        recipient's confirmation (its store and origin map kept, its memory
        gone): it still knows crs1 kept a copy and tells it, msg-gone, and
        crs1 (restarted too) drops it."""
        self.post()
        self.net.deliver(1)  # stored at crs2
        self.net.lose()  # the answer
        self.clock.advance(FORWARD_TIMEOUT)
        self.assertIn("crs1-1", self.a.store.messages)
        self.b.restart()
        self.a.restart()
        u = self.b.attach(U)
        self.b.confirm_all()
        self.net.deliver()
        self.assertEqual([m["message"] for m in u.of("message")], ["crs1-1"])
        self.assertEqual(self.a.store.messages, {})
        self.assertEqual(self.a.forwarder.counters["gone"], 1)
        self.assertEqual((self.a.origins.entries, self.b.origins.entries), ({}, {}))

    def test_confirmed_here_drops_the_owners_copy(self) -> None:
        """The other way round: the slot comes here (in this member's map)
        before the kept copy was handed over; confirmed here, the owner's
        copy is dropped there."""
        self.post()
        self.net.deliver(1)
        self.net.lose()
        self.clock.advance(FORWARD_TIMEOUT)
        self.assertIn("crs1-1", self.b.store.messages)
        self.a.link.set_owner(U, "crs1")  # crs1's view only, for a moment
        u = self.a.attach(U)
        self.a.confirm_all()
        self.assertEqual([m["message"] for m in u.of("message")], ["crs1-1"])
        self.net.deliver()
        self.assertEqual(self.b.store.messages, {})
        self.assertEqual(self.b.forwarder.counters["gone"], 1)

    def test_copy_handed_to_a_third_member_is_followed(self) -> None:
        """Three members: crs1's forward to crs2 timed out although crs2
        stored it, so crs1 kept a copy; the slot moves to crs3 and crs1
        hands its copy there; the recipient then confirms crs2's copy at
        crs2: crs2's msg-gone reaches crs1, which passes it on to crs3, and
        crs3 drops its copy instead of delivering it a second time."""
        c = Node(self.net, "crs3", self.clock, self.confirmed)
        c.link.default = "crs1"
        c.link.set_owner(U, "crs2")
        c.store.known.update({SENDER, U})
        u = self.b.attach(U)
        self.post()
        self.net.deliver(1)  # stored at crs2 and offered to U there
        self.net.lose()  # the answer
        self.clock.advance(FORWARD_TIMEOUT)
        self.assertIn("crs1-1", self.a.store.messages)
        for node in (self.a, c):
            node.link.set_owner(U, "crs3")  # crs2 has not heard yet
        self.net.deliver()
        self.assertEqual(self.a.store.messages, {})
        self.assertIn("crs1-1", c.store.messages)
        self.b.confirm_all()
        self.net.deliver()
        self.assertEqual(c.store.messages, {})
        self.assertEqual(c.forwarder.counters["gone"], 1)
        later = c.attach(U)
        self.assertEqual(later.of("message"), [])
        self.assertEqual([m.id for m in self.confirmed], ["crs1-1"])
        self.assertEqual([m["message"] for m in u.of("message")], ["crs1-1"])

    def test_known_uris_shared(self) -> None:
        """A URI that attaches at one member is known at the other (posts
        there are taken after a takeover); a member whose link comes up gets
        every known URI, and keeps them in its store across a restart."""
        self.a.store.known.clear()
        self.b.store.known.clear()
        self.b.attach("tel:+777")
        self.net.deliver()
        self.assertIn("tel:+777", self.a.store.known)
        self.assertEqual(self.a.forwarder.counters["learned"], 1)
        self.net.set_link("crs1", "crs2", False)
        self.b.attach("tel:+778")
        self.b.attach("tel:+779;12")
        self.net.deliver()
        self.assertNotIn("tel:+778", self.a.store.known)
        self.a.restart()
        self.sender = self.a.attach(SENDER)
        self.net.set_link("crs1", "crs2", True)
        self.net.deliver()
        self.assertLessEqual({"tel:+777", "tel:+778", "tel:+779"}, self.a.store.known)
        # a post at crs1 for a client of crs2 after crs1 took crs2's slots over
        self.a.link.set_owner("tel:+778", "crs1")
        self.post(to="tel:+778")
        [posted] = self.sender.of("posted")
        self.assertIn(posted["message"], self.a.store.messages)

    def test_show_services_row(self) -> None:
        """``show services`` row pool_messages: every counter, by name."""
        self.post()
        self.net.deliver()
        self.assertEqual(
            self.a.forwarder.status(),
            "active (forwarded 1, held 0, handed 0, taken 0, duplicates 0, gone 0,"
            " timeouts 0, learned 0; msg-gone pending 0)",
        )
        self.assertIn("taken 1", self.b.forwarder.status())
        self.a.forwarder.stopService()
        self.assertEqual(self.a.forwarder.status(), "inactive")

    def test_known_uris_resent_periodically(self) -> None:
        """A msg-known lost with its connection is made good by the resend."""
        self.a.store.known.clear()
        self.b.attach("tel:+777")
        self.net.lose()
        self.assertNotIn("tel:+777", self.a.store.known)
        self.clock.advance(KNOWN_RESYNC + SWEEP_INTERVAL)
        self.net.deliver()
        self.assertIn("tel:+777", self.a.store.known)

    def test_no_answer_in_time_kept_here_and_not_stored_twice(self) -> None:
        """The owner stored it but its answer was late: the message is kept
        here too, and the sweep's copy is recognised there (same scope)."""
        self.post()
        self.net.deliver(1)  # stored at crs2; its answer is under way
        self.clock.advance(FORWARD_TIMEOUT)
        [posted] = self.sender.of("posted")
        self.assertIn(posted["message"], self.a.store.messages)
        self.net.deliver()  # the late answer is ignored
        self.assertEqual(len(self.sender.of("posted")), 1)
        self.clock.advance(SWEEP_INTERVAL)
        self.net.deliver()
        self.assertEqual(self.a.store.messages, {})
        self.assertEqual(list(self.b.store.messages), ["crs1-1"])

    def test_owner_store_out_of_reach_kept_here(self) -> None:
        self.b.store.down = True
        self.post()
        self.net.deliver()
        self.assertEqual(len(self.sender.of("posted")), 1)
        self.assertEqual(len(self.a.store.messages), 1)
        self.b.store.down = False
        self.clock.advance(SWEEP_INTERVAL)
        self.net.deliver()
        self.assertEqual((len(self.a.store.messages), len(self.b.store.messages)), (0, 1))

    def test_local_store_out_of_reach_refused(self) -> None:
        self.net.set_link("crs1", "crs2", False)
        self.a.store.down = True
        self.post()
        [error] = self.sender.of("error")
        self.assertEqual(error["code"], "unavailable")

    def test_retry_after_hand_off_is_one_message(self) -> None:
        """Kept here while the owner was away, then the sender retries
        (same key) once it is back: the owner stores one message."""
        self.net.set_link("crs1", "crs2", False)
        self.post()
        self.net.cut.discard(frozenset(("crs1", "crs2")))  # back, not yet swept
        self.post(request=2)
        self.net.deliver()
        self.assertEqual(list(self.b.store.messages), ["crs1-2"])
        self.clock.advance(SWEEP_INTERVAL)
        self.net.deliver()
        self.assertEqual(self.a.store.messages, {})
        self.assertEqual(list(self.b.store.messages), ["crs1-2"])

    def test_restart_before_delete_sends_again_once(self) -> None:
        self.net.set_link("crs1", "crs2", False)
        self.post()
        self.net.set_link("crs1", "crs2", True)
        self.net.deliver(1)  # stored at crs2, crs1 dies before the answer
        self.a.restart()
        self.assertEqual(len(self.a.store.messages), 1)
        self.clock.advance(SWEEP_INTERVAL)
        self.net.deliver()
        self.assertEqual(self.a.store.messages, {})
        self.assertEqual(len(self.b.store.messages), 1)

    def test_sweep_after_hand_back(self) -> None:
        """Messages stored here while this member owned the slot go to the
        new owner once the client has moved away, and only then."""
        self.a.link.set_owner(U, "crs1")  # crs1's view only, for a moment
        u = self.a.attach(U)
        self.post()
        self.post(request=2, content=b"two", key=b"j" * 16)
        self.assertEqual(len(u.of("message")), 2)
        self.assertEqual(len(self.a.store.messages), 2)
        for node in (self.a, self.b):
            node.link.set_owner(U, "crs2")
        self.net.deliver()
        self.assertEqual(len(self.a.store.messages), 2)  # its client is still here
        self.a.detach(U)
        self.clock.advance(SWEEP_INTERVAL)
        self.net.deliver()
        self.assertEqual(self.a.store.messages, {})
        self.assertEqual(len(self.b.store.messages), 2)

    def test_sweep_with_workers(self) -> None:
        """With workers the sweep leaves alone the inbox of a client a
        worker holds, and sweeps nothing while it does not know what they
        hold (a worker late, or following an older slot view)."""
        self.a.link.set_owner(U, "crs1")
        self.post()
        self.assertEqual(len(self.a.store.messages), 1)
        held: list[frozenset[str] | None] = [frozenset({U})]

        async def holds() -> frozenset[str] | None:
            return held[0]

        self.a.forwarder.held_by_workers = holds
        for node in (self.a, self.b):
            node.link.set_owner(U, "crs2")
        self.net.deliver()
        self.assertEqual(len(self.a.store.messages), 1)  # a worker's client
        held[0] = None
        self.clock.advance(SWEEP_INTERVAL)
        self.net.deliver()
        self.assertEqual(len(self.a.store.messages), 1)  # not known now
        held[0] = frozenset()
        self.clock.advance(SWEEP_INTERVAL)
        self.net.deliver()
        self.assertEqual((len(self.a.store.messages), len(self.b.store.messages)), (0, 1))

    def test_no_owner_kept_until_there_is_one(self) -> None:
        for node in (self.a, self.b):
            node.link.set_owner(U, None)
        self.post()
        self.assertEqual(len(self.a.store.messages), 1)
        self.clock.advance(SWEEP_INTERVAL)
        self.assertEqual(len(self.a.store.messages), 1)
        for node in (self.a, self.b):
            node.link.set_owner(U, "crs2")
        self.net.deliver()
        self.assertEqual((len(self.a.store.messages), len(self.b.store.messages)), (0, 1))


# -- the frames ---------------------------------------------------------------

GOOD_POST = encode_post(
    7,
    Stored("crs1-1", SENDER, "tel:+200;12", "acme", "content", 5, b"\x00x", "key:ab"),
    False,
)
DECODERS = {POST: decode_post, STORED: decode_stored, REFUSED: decode_refused}
DECODERS[DELIVERED] = decode_delivered
DECODERS[GONE] = decode_gone
DECODERS[KNOWN] = decode_known

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.text(max_size=80)
    | st.binary(max_size=80),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


class FrameTests(SynchronousTestCase):
    def test_post_round_trip(self) -> None:
        request = decode_post(dict(GOOD_POST))
        self.assertEqual(request.n, 7)
        self.assertEqual(request.message.recipient, "tel:+200;12")
        self.assertEqual(request.scope, "key:ab")
        self.assertFalse(request.hand)

    def test_each_refusal(self) -> None:
        bad: list[dict[str, object]] = [
            {**GOOD_POST, "kind": "spam"},
            {**GOOD_POST, "data": "text"},
            {**GOOD_POST, "data": b"x" * (48 * 1024 + 1)},
            {**GOOD_POST, "from": "sip:alice"},
            {**GOOD_POST, "id": "a b"},
            {**GOOD_POST, "id": "x" * 65},
            {**GOOD_POST, "scope": "with space"},
            {**GOOD_POST, "n": -1},
            {**GOOD_POST, "hand": 1},
            {**GOOD_POST, "account": "a" * 21},
            {**GOOD_POST, "kind": "ack", "data": b"\xff"},
            {k: v for k, v in GOOD_POST.items() if k != "time"},
            {**GOOD_POST, "extra": 1},
        ]
        for fields in bad:
            with self.assertRaises(WireError):
                decode_post(fields)
        with self.assertRaises(WireError):
            decode_refused({"n": 1, "code": "Bad Code", "reason": "x"})
        with self.assertRaises(WireError):
            decode_refused({"n": 1, "code": "internal", "reason": "\n"})
        with self.assertRaises(WireError):
            decode_stored({"n": 1, "id": "m", "dup": "no"})
        with self.assertRaises(WireError):
            decode_delivered({"from": SENDER, "message": ""})
        for fields in (
            {"id": "m1", "to": "sip:bob"},
            {"id": "", "to": U},
            {"id": "m1", "to": U, "x": 1},
        ):
            with self.assertRaises(WireError):
                decode_gone(fields)
        for known in (
            [],
            [U] * (MAX_KNOWN_BATCH + 1),
            ["tel:+1", "mailto:x"],
            "tel:+1",
            [b"tel:+1"],
        ):
            with self.assertRaises(WireError):
                decode_known({"uris": known})

    def test_gone_and_known_round_trip(self) -> None:
        self.assertEqual(decode_gone(encode_gone("m1", "tel:+200;3")), GoneNote("m1", "tel:+200;3"))
        uris = [f"tel:+{n}" for n in range(MAX_KNOWN_BATCH)]
        self.assertEqual(decode_known(encode_known(uris)), uris)
        with self.assertRaises(ValueError):
            encode_known([])

    @given(st.sampled_from(sorted(DECODERS)), st.dictionaries(st.text(max_size=8), values))
    @settings(max_examples=300)
    def test_hostile_fields_refused_cleanly(self, kind: str, fields: dict[str, Any]) -> None:
        try:
            DECODERS[kind](fields)
        except WireError:
            pass

    @given(st.sampled_from(sorted(GOOD_POST)), values)
    @settings(max_examples=300)
    def test_mutated_post_refused_or_checked(self, key: str, value: Any) -> None:
        try:
            request = decode_post({**GOOD_POST, key: value})
        except WireError:
            return
        self.assertLessEqual(len(request.message.data), 48 * 1024)


# -- the state machine --------------------------------------------------------

URIS = ("tel:+201", "tel:+202", "tel:+203")


class PoolMessages(RuleBasedStateMachine):
    """Members (:attr:`NAMES`), three recipients; the sender posts at any
    member.

    Each post has its own content; a retry repeats an earlier post's key
    and content at any member.  A recipient is known nowhere until it has
    attached at one member (which tells the others).  Checked: no content
    is ever stored or delivered under two IDs; an ID confirmed a second
    time (a twin: a forward or hand-off whose answer was lost, so the
    message is kept on two members) only while a ``msg-gone`` for it is
    still pending at some member (sent again until acknowledged, across
    restarts: a lost ``msg-gone``, a restart or a lost follow entry is no
    excuse once it was acknowledged); and after the links heal and the
    members agree, every post answered ``posted`` is delivered (confirmed
    by its recipient) exactly once, nothing is left in any store, every
    ``msg-gone`` is acknowledged, and all members know the same recipients
    (every one that attached at any)."""

    NAMES: tuple[str, ...] = ("crs1", "crs2")

    @initialize()
    def setup(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.net = Net()
        self.confirmed: list[Stored] = []
        self.nodes = {n: Node(self.net, n, self.clock, self.confirmed) for n in self.NAMES}
        #: IDs confirmed a second time while no msg-gone for them was pending.
        self.twice: list[str] = []
        for node in self.nodes.values():
            node.link.default = "crs1"
            node.store.witness = self.witness
        #: Contents that may reach the recipient under two IDs: a sender's
        #: retry while the first answer was lost, or after the slot moved
        #: since the first post (docs/pool.md, "Exactly once").
        self.two_ids: set[bytes] = set()
        self.moves = 0
        self.first_posted: dict[bytes, int] = {}
        self.lost_answers: set[bytes] = set()
        for i, uri in enumerate(URIS):
            self.set_owner(uri, self.home(i))
        self.senders = {n: Conn(SENDER, f"s-{n}") for n in self.NAMES}
        self.posts: list[tuple[str, bytes, str, bytes]] = []  # at, key, to, content
        self.requests = 0

    # -- helpers

    def home(self, i: int) -> str:
        return self.NAMES[i % len(self.NAMES)]

    def witness(self, found: Stored) -> None:
        """A client confirms ``found``: a second time only while a msg-gone
        for it waits for its answer somewhere."""
        if any(m.id == found.id for m in self.confirmed) and not any(
            node.forwarder._gones.pending(found.id) for node in self.nodes.values()
        ):
            self.twice.append(found.id)

    def all_linked(self) -> bool:
        return all(self.net.connected(a, b) for a, b in itertools.combinations(self.NAMES, 2))

    def set_owner(self, uri: str, owner: str | None, only: str | None = None) -> None:
        self.moves += 1
        for name, node in self.nodes.items():
            if only is None or name == only:
                node.link.set_owner(uri, owner)
        self.move_clients()

    def move_clients(self) -> None:
        for name, node in self.nodes.items():
            for attachment in node.registry.matching():
                if node.link.owner(slot_of(attachment.uri)) != name:
                    node.detach(attachment.uri)

    def acked(self) -> dict[bytes, set[str]]:
        """content -> the IDs it was answered with."""
        by_request: dict[tuple[str, int], bytes] = {}
        for name, key, to, content, request in self.sent:
            by_request[(name, request)] = content
        result: dict[bytes, set[str]] = {}
        for name, conn in self.senders.items():
            for posted in conn.of("posted"):
                content = by_request[(name, posted.id)]
                result.setdefault(content, set()).add(posted["message"])
        return result

    @property
    def sent(self) -> list[tuple[str, bytes, str, bytes, int]]:
        if not hasattr(self, "_sent"):
            self._sent: list[tuple[str, bytes, str, bytes, int]] = []
        return self._sent

    def name(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(self.NAMES))

    # -- rules

    @rule(data=st.data(), to=st.sampled_from(URIS))
    def post(self, data: st.DataObject, to: str) -> None:
        self.post_at(self.name(data), to)

    def post_at(self, at: str, to: str) -> None:
        n = len(self.posts)
        key, content = n.to_bytes(16, "big"), b"content %d" % n
        self.posts.append((at, key, to, content))
        self.first_posted[content] = self.moves
        self.send(at, key, to, content)

    @rule(data=st.data(), to=st.sampled_from(URIS), taken=st.booleans(), moved=st.booleans())
    def answer_lost(self, data: st.DataObject, to: str, taken: bool, moved: bool) -> None:
        """A post forwarded to the owner is stored there, but its answer is
        lost (or late): the forward times out and the message is kept here
        as well, under the same ID.  ``taken``: the recipient, attached at
        the owner, confirms it there at once; ``moved``: then the slot moves
        here (the owner died, a partition) before the kept copy was handed
        over, and the recipient attaches here."""
        at = self.name(data)
        owner = self.nodes[at].link.owner(slot_of(to))
        if owner is None or owner == at or not self.net.connected(at, owner):
            return
        self.net.deliver()
        if taken:
            self.attach_at(to, owner)
        self.post_at(at, to)
        self.net.deliver(1)  # the msg-post, stored at the owner
        self.net.drop(lambda q: not (q[0] == owner and q[2].type in (STORED, REFUSED)))
        self.clock.advance(FORWARD_TIMEOUT)
        self.lost_answers.add(self.posts[-1][3])
        if taken:
            self.nodes[owner].confirm_all()
            self.net.deliver()
        if moved:
            self.set_owner(to, at)
            self.attach_at(to, at)
            self.nodes[at].confirm_all()

    @rule(data=st.data(), to=st.sampled_from(URIS), restart=st.booleans())
    def handed_on(self, data: st.DataObject, to: str, restart: bool) -> None:
        """Three members or more: a post at ``at`` is stored at the owner
        but its answer is lost (a twin kept at ``at``); the slot moves to a
        third member in the views of ``at`` and the third (the owner has
        not heard yet, its client stays), ``at`` hands its twin to the
        third; ``restart``: then ``at`` restarts; then the recipient
        confirms the owner's copy: the third member's twin must go."""
        at = self.name(data)
        owner = self.nodes[at].link.owner(slot_of(to))
        others = [n for n in self.NAMES if n not in (at, owner)]
        if owner is None or owner == at or not others:
            return
        third = data.draw(st.sampled_from(others))
        if not (self.net.connected(at, owner) and self.net.connected(at, third)):
            return
        self.net.deliver()
        self.attach_at(to, owner)
        self.post_at(at, to)
        self.net.deliver(1)  # the msg-post, stored at the owner
        self.net.drop(lambda q: not (q[0] == owner and q[2].type in (STORED, REFUSED)))
        self.clock.advance(FORWARD_TIMEOUT)
        self.lost_answers.add(self.posts[-1][3])
        self.set_owner(to, third, only=at)
        self.set_owner(to, third, only=third)
        self.net.deliver()  # the twin handed to the third member
        if restart:
            self.restart_at(at)
        self.nodes[owner].confirm_all()
        self.net.deliver()

    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """The sender posts an earlier message again (its answer lost), on
        the member it posted it at (it stays attached there)."""
        if not self.posts:
            return
        at, key, to, content = data.draw(st.sampled_from(self.posts))
        if content in self.lost_answers or self.moves > self.first_posted[content]:
            self.two_ids.add(content)
        self.send(at, key, to, content)

    def send(self, at: str, key: bytes, to: str, content: bytes) -> None:
        self.requests += 1
        self.sent.append((at, key, to, content, self.requests))
        self.nodes[at].post(self.senders[at], self.requests, to, content, key)

    @rule(limit=st.integers(min_value=1, max_value=6))
    def deliver(self, limit: int) -> None:
        self.net.deliver(limit)

    def disturbed(self) -> None:
        """Frames lost with a connection, a cut, a restart: an answer may be
        lost, so a sender's retry may get a second ID (docs/pool.md)."""
        self.lost_answers.update(p[3] for p in self.posts)

    @rule()
    def lose_frames(self) -> None:
        self.disturbed()
        self.net.lose()

    @rule(kind=st.sampled_from((GONE, GONE_OK)))
    def lose_next(self, kind: str) -> None:
        """The next msg-gone (or its msg-gone-ok) is lost on the way."""
        self.net.lose_next.add(kind)

    @rule(data=st.data(), up=st.booleans())
    def link(self, data: st.DataObject, up: bool) -> None:
        a, b = data.draw(st.sampled_from(list(itertools.combinations(self.NAMES, 2))))
        self.disturbed()
        self.net.set_link(a, b, up)

    @rule(seconds=st.sampled_from([0.5, FORWARD_TIMEOUT, SWEEP_INTERVAL, RESEND_FIRST]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        """A member restarts with its store (its durable origin and follow
        maps and pending msg-gone) kept: the frames under way to and from
        it are lost."""
        self.restart_at(self.name(data))

    def restart_at(self, name: str) -> None:
        self.disturbed()
        self.nodes[name].restart()
        for peer in self.NAMES:
            if peer == name or not self.net.connected(name, peer):
                continue
            for listener in self.nodes[peer].link.listeners:
                listener(name, False)
                listener(name, True)
            for listener in self.nodes[name].link.listeners:
                listener(peer, True)

    @rule(data=st.data(), uri=st.sampled_from(URIS))
    def move_slot(self, data: st.DataObject, uri: str) -> None:
        """A new map (every view while all are linked; one side's during a cut)."""
        owner = data.draw(st.sampled_from((*self.NAMES, None)))
        only = data.draw(st.sampled_from((None, *self.NAMES)))
        if self.all_linked():
            only = None
        self.set_owner(uri, owner, only)

    @rule(data=st.data(), uri=st.sampled_from(URIS))
    def attach(self, data: st.DataObject, uri: str) -> None:
        self.attach_at(uri, self.name(data))

    def attach_at(self, uri: str, at: str) -> None:
        if self.nodes[at].link.owner(slot_of(uri)) != at:
            return
        for node in self.nodes.values():
            node.detach(uri)
        self.nodes[at].attach(uri)

    @rule(data=st.data())
    def confirm(self, data: st.DataObject) -> None:
        self.nodes[self.name(data)].confirm_all()

    @rule(data=st.data())
    def store_down(self, data: st.DataObject) -> None:
        store = self.nodes[self.name(data)].store
        store.down = not store.down

    # -- checks

    @invariant()
    def delivered_under_one_id(self) -> None:
        """No message reaches its recipient as two messages (two IDs); the
        same ID twice only while a msg-gone for it was pending (the client
        recognises the repeat by its ID, cryptify/client/messages.py)."""
        if not hasattr(self, "nodes"):
            return
        ids: dict[bytes, set[str]] = {}
        for m in self.confirmed:
            ids.setdefault(m.data, set()).add(m.id)
        for content, found in ids.items():
            assert len(found) == 1 or content in self.two_ids, (content, found)
        assert self.twice == [], self.twice

    def teardown(self) -> None:
        if not hasattr(self, "nodes"):
            return
        for node in self.nodes.values():
            node.store.down = False
        self.net.lose_next.clear()
        for a, b in itertools.combinations(self.NAMES, 2):
            self.net.set_link(a, b, True)
        self.clock.advance(KNOWN_RESYNC)  # known URIs sent again
        self.net.deliver()
        known = [node.store.known for node in self.nodes.values()]
        assert all(k == known[0] for k in known), known
        for i, uri in enumerate(URIS):
            self.set_owner(uri, self.home(i))
        for i, uri in enumerate(URIS):
            # attach again: what an earlier connection received and could not
            # confirm (the store out of reach) is sent again
            for node in self.nodes.values():
                node.detach(uri)
            self.nodes[self.home(i)].attach(uri)
        for step in [SWEEP_INTERVAL] * 20 + [RESEND_MOST] * 3:
            self.net.deliver()
            for node in self.nodes.values():
                node.confirm_all()
            self.clock.advance(step)
        self.net.deliver()
        for node in self.nodes.values():
            node.confirm_all()
        self.delivered_under_one_id()
        delivered = {m.data for m in self.confirmed}
        for content in self.acked():
            assert content in delivered, (content, self.confirmed)
        for node in self.nodes.values():
            assert node.store.messages == {}, (node.name, node.store.messages)
            assert len(node.forwarder._gones) == 0, (node.name, node.origins.gones)
            assert node.origins.gones == {}, (node.name, node.origins.gones)


class PoolMessages3(PoolMessages):
    """The same with three members: a twin handed to a third member is
    followed (its msg-gone passed on), across restarts of the middle one."""

    NAMES = ("crs1", "crs2", "crs3")


class PoolMessagesTests(SynchronousTestCase):
    def test_machine(self) -> None:
        """Random posts, retries, frame losses (msg-gone and msg-gone-ok
        among them), cuts, restarts with the store kept, stores out of
        reach and slot moves never store or deliver a message twice, and
        every acknowledged one is delivered once the pool heals."""
        run_state_machine_as_test(
            PoolMessages,
            settings=settings(
                max_examples=200,
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )

    def test_machine_three_members(self) -> None:
        """The same with three members, where twins are followed."""
        run_state_machine_as_test(
            PoolMessages3,
            settings=settings(
                max_examples=150,
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )


# -- over two real pool links -------------------------------------------------


class OverPoolLinkTests(SynchronousTestCase):
    def test_post_across_real_links(self) -> None:
        """Two PoolLinks over memory transports, each with its Messaging and
        Forwarder: a post at crs1 for a client of crs2's slots is stored at
        crs2 and answered; cut, it is kept at crs1 and handed over once the
        link is back."""
        pair = LinkPair()
        self.addCleanup(pair.stop)
        pair.flow(JOIN_WAIT + 3 * HEARTBEAT_INTERVAL)
        a, b = pair.nodes
        to = next(f"tel:+3{n}" for n in range(100) if slot_of(f"tel:+3{n}") >= SLOTS // 2)
        b.store.known.add(to)
        sender, recipient = a.attach(SENDER), b.attach(to)
        a.post(sender, 1, to, b"across", b"a" * 16)
        pair.flow(HEARTBEAT_INTERVAL)
        [posted] = sender.of("posted")
        self.assertEqual([m["message"] for m in recipient.of("message")], [posted["message"]])
        self.assertEqual(states(a), ["forward content"])
        pair.cut = True
        a.post(sender, 2, to, b"kept", b"b" * 16)
        self.assertEqual(len(sender.of("posted")), 1)  # waits for crs2's answer
        pair.flow(FORWARD_TIMEOUT)
        [_, kept] = sender.of("posted")
        self.assertIn(kept["message"], a.store.messages)
        pair.flow(DOWN_AFTER + 2 * HEARTBEAT_INTERVAL)  # crs1 takes crs2's slots over
        self.assertEqual(a.link.owner(slot_of(to)), "crs1")
        pair.cut = False
        # crs2's slots trickle back; then crs1 hands the message over
        pair.flow(150.0)
        self.assertEqual(a.link.owner(slot_of(to)), "crs2")
        self.assertEqual(a.store.messages, {})
        self.assertEqual(
            [m["message"] for m in recipient.of("message")],
            [posted["message"], kept["message"]],
        )
