"""A CRS instance with workers in a pool (cryptify/crs/workers/pool.py):
the slot view the parent sends its workers, a worker's attaches and mover
by it, and a worker's posts through the parent's forwarder."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.attach.registry import Attachment, AttachRegistry
from cryptify.crs.interwork.routes_core import AccountRoutes
from cryptify.crs.messages.store import MAX_CONTENT, MessageRefused, Posted, Stored
from cryptify.crs.messages.wiring import Relayed
from cryptify.crs.pool.calls_frames import (
    HANGUP_FRAME,
    INVITE_FRAME,
    OFFERED_FRAME,
    REFUSED_FRAME,
    RINGING_FRAME,
    TALK_FRAME,
    CallHangup,
    CallInvite,
    CallRefused,
    CallStep,
)
from cryptify.crs.pool.core import MapKey, SlotMap
from cryptify.crs.pool.wire import WireError
from cryptify.crs.pool.wiring import MOVED_AWAY
from cryptify.crs.slots import SLOTS, slot_of
from cryptify.crs.workers.iw import WorkerIw
from cryptify.crs.workers.parent import ParentPool, _ParentProtocol
from cryptify.crs.workers.pool import MOVE_AGAIN, WorkerPool, _WorkerProtocol
from cryptify.crs.workers.pool_calls import CallRelay
from cryptify.crs.workers.slot_view import NO_VIEW, ViewError, decode_view, slot_view
from tests.fakes import FakeConnection

HALF = SLOTS // 2


def uri_in(first: int, last: int) -> str:
    """A URI whose slot is in ``first``..``last``."""
    n = 0
    while not first <= slot_of(f"tel:+46{n}") <= last:
        n += 1
    return f"tel:+46{n}"


class FakeLink:
    """The pool link as the parent's view reads it."""

    def __init__(self) -> None:
        self.me = "crs1"
        self.peers = ("crs2",)
        self.pool = SimpleNamespace(names=("crs1", "crs2"))
        self.member: Any = None
        self.late_peers: set[str] = set()
        self.watchers: list[Any] = []

    def place(self, owners: tuple[str | None, ...], epoch: int = 1) -> None:
        self.member = SimpleNamespace(map=SlotMap(MapKey(epoch, "crs1", 7), owners))
        for watcher in self.watchers:
            watcher()

    def late(self, peer: str) -> bool:
        return peer in self.late_peers

    def address(self, name: str) -> str:
        return {"crs1": "10.0.0.1", "crs2": "10.0.0.2"}[name]

    def watch(self, watcher: Any) -> None:
        self.watchers.append(watcher)

    # (the call frames, for the call relay)
    handlers: dict[str, Any]
    sent: list[tuple[str, str, dict[str, object]]]
    up = True

    def handle(self, frame_type: str, handler: Any) -> None:
        self.__dict__.setdefault("handlers", {})[frame_type] = handler

    def on_link(self, listener: Any) -> None:
        self.__dict__.setdefault("listeners", []).append(listener)

    def send(self, peer: str, frame_type: str, fields: dict[str, object]) -> bool:
        self.__dict__.setdefault("sent", []).append((peer, frame_type, fields))
        return self.up


SPLIT = ("crs1",) * HALF + ("crs2",) * HALF


class SlotViewTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """The parent's view reads back as its map, its late members and
        their addresses; before any map no slot has an owner."""
        link = FakeLink()
        before = decode_view(slot_view(link))  # type: ignore[arg-type]
        self.assertEqual((before.key, before.owners), ("", (None,) * SLOTS))
        link.place(SPLIT[:10] + (None,) * 5 + SPLIT[15:])
        link.late_peers.add("crs2")
        view = decode_view(slot_view(link))  # type: ignore[arg-type]
        self.assertEqual(view.key, "1/crs1/7")
        self.assertEqual(view.owners, SPLIT[:10] + (None,) * 5 + SPLIT[15:])
        self.assertEqual((view.me, view.late), ("crs1", frozenset({"crs2"})))
        self.assertEqual(view.addresses["crs2"], "10.0.0.2")
        self.assertIsNone(view.standby)

    def test_standby(self) -> None:
        """With a pool link that names who takes a slot if this instance
        dies, a worker's attach names it too (the slots of this instance)."""
        link = FakeLink()
        link.place(SPLIT)
        link.standby = lambda slot: "crs2"  # type: ignore[attr-defined]
        reactor = MemoryReactorClock()
        pool = WorkerPool(reactor, "/nowhere", AttachRegistry("crs1", reactor.seconds), print)
        pool.adopt(slot_view(link))  # type: ignore[arg-type]
        self.assertEqual((pool.standby(0), pool.standby(HALF)), ("crs2", None))

    @settings(max_examples=300, deadline=None)
    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers(-2, SLOTS + 2) | st.text(max_size=4),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["key", "me", "owners", "late", "addresses", "x"]), inner
                )
            ),
            max_leaves=20,
        )
    )
    def test_hostile_views(self, value: object) -> None:
        """Whatever comes, it is a view or a ViewError, never a crash."""
        try:
            view = decode_view(value)
        except ViewError:
            return
        self.assertEqual(len(view.owners), SLOTS)


class WorkerPoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.registry = AttachRegistry("crs1", self.reactor.seconds)
        self.told: list[tuple[str, str]] = []
        self.pool = WorkerPool(
            self.reactor, "/nowhere/crs.sock.w0", self.registry, lambda *a: self.told.append(a)
        )
        self.link = FakeLink()
        self.link.place(SPLIT)

    def view(self) -> dict[str, object]:
        return slot_view(self.link)  # type: ignore[arg-type]

    def test_owners_for_attach(self) -> None:
        """Before the parent's view no slot is this instance's nor has an
        owner (attach: unavailable); then its map says who owns what, and
        a late member's slots have no owner (not moved to it)."""
        self.assertIs(self.pool.view, NO_VIEW)
        self.assertEqual((self.pool.mine(0), self.pool.owner(0)), (False, None))
        self.pool.adopt(self.view())
        self.assertEqual((self.pool.mine(0), self.pool.owner(0)), (True, "crs1"))
        self.assertEqual((self.pool.mine(HALF), self.pool.owner(HALF)), (False, "crs2"))
        self.assertEqual(self.pool.address("crs2"), "10.0.0.2")
        self.link.late_peers.add("crs2")
        self.pool.adopt(self.view())
        self.assertIsNone(self.pool.owner(HALF))
        self.assertTrue(self.pool.elsewhere(uri_in(HALF, SLOTS - 1)))
        self.assertFalse(self.pool.elsewhere(uri_in(0, HALF - 1)))
        self.pool.adopt({"owners": "garbage"})
        self.assertEqual(self.pool.refused, 1)
        self.assertEqual(self.pool.view.key, "1/crs1/7")

    def test_mover(self) -> None:
        """When slots move away, their idle clients are told to move at
        once, one in a call once its call has ended."""
        self.pool.startService()
        self.addCleanup(self.pool.stopService)
        self.pool.adopt(self.view())
        idle, talking, staying = (uri_in(0, 99), uri_in(100, 199), uri_in(HALF - 99, HALF - 1))
        conns = {}
        for port, uri in enumerate((idle, talking, staying)):
            conns[uri] = FakeConnection()
            self.registry.attach(Attachment(uri, "acme", 1.0, "1", "192.0.2.1", port, conns[uri]))  # type: ignore[arg-type]
        busy = {talking}
        self.pool.busy = lambda uri: uri in busy
        self.link.place(("crs2",) * 200 + SPLIT[200:], epoch=2)
        self.pool.adopt(self.view())
        self.assertEqual(
            [conns[u].reasons for u in (idle, talking, staying)], [[MOVED_AWAY], [], []]
        )
        self.reactor.advance(MOVE_AGAIN)
        self.assertEqual(conns[talking].reasons, [])
        busy.clear()
        self.reactor.advance(MOVE_AGAIN)
        self.assertEqual(conns[talking].reasons, [MOVED_AWAY])
        self.reactor.advance(MOVE_AGAIN)
        self.assertEqual(conns[talking].reasons, [MOVED_AWAY])

    def test_delivered_to_a_sender_here_or_elsewhere(self) -> None:
        """``delivered`` for a sender of this instance's slots goes to its
        worker (a notice); for one of another member's, to the parent."""
        self.pool.adopt(self.view())
        mine, theirs = uri_in(0, HALF - 1), uri_in(HALF, SLOTS - 1)
        self.pool.tell_delivered(mine, "m-1")
        self.pool.tell_delivered(theirs, "m-2")  # (no parent connected: dropped)
        self.assertEqual(self.told, [(mine, "m-1")])


class FakeForwarder:
    def __init__(self) -> None:
        self.answer: defer.Deferred[Relayed] | None = None
        self.notes: list[tuple[str, ...]] = []

    def post(self, *args: Any) -> defer.Deferred[Relayed]:
        self.posts = args
        assert self.answer is not None
        return self.answer

    def tell_delivered(self, sender: str, message_id: str) -> None:
        self.notes.append(("delivered", sender, message_id))

    def settled(self, recipient: str, message_id: str) -> None:
        self.notes.append(("settled", recipient, message_id))

    def learned(self, uri: str) -> None:
        self.notes.append(("learned", uri))


class ParentLinkTests(SynchronousTestCase):
    """A worker and its parent over the parent's socket (in memory)."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.link = FakeLink()
        self.forwarder = FakeForwarder()
        self.parent = ParentPool(self.reactor, "/nowhere/crs.sock.w0", self.link, self.forwarder)  # type: ignore[arg-type]
        self.pool = WorkerPool(
            self.reactor,
            "/nowhere/crs.sock.w0",
            AttachRegistry("crs1", self.reactor.seconds),
            print,
        )
        server, client = _ParentProtocol(self.parent), _WorkerProtocol(self.pool)
        self.pump = iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client)
        )

    def test_view_on_connect_and_on_change(self) -> None:
        """The worker asks for the view as it connects; the parent sends it
        again when the map changes or a member becomes late."""
        self.pump.flush()
        self.assertEqual(self.pool.view.key, "")
        self.link.place(SPLIT)
        self.pump.flush()
        self.assertEqual((self.pool.view.key, self.pool.mine(0)), ("1/crs1/7", True))
        self.link.late_peers.add("crs2")
        self.parent.check()
        self.pump.flush()
        self.assertEqual(self.pool.view.late, frozenset({"crs2"}))

    def test_post_through_the_parent(self) -> None:
        """A worker's post for another member's slot is answered as the
        parent's forwarder answers: stored there, kept here (the message
        as stored, for the trace and the wake), or refused with its code;
        the worker's notes reach the forwarder."""
        self.pump.flush()
        self.link.place(SPLIT)
        self.pump.flush()
        to = uri_in(HALF, SLOTS - 1)
        self.forwarder.answer = defer.succeed(Relayed(Posted("m-1", False), "crs2"))
        d = self.pool.post("tel:+1", "scope", to, "acme", "content", b"hi")
        self.pump.flush()
        self.assertEqual(self.successResultOf(d), Relayed(Posted("m-1", False), "crs2"))
        self.assertEqual(self.forwarder.posts, ("tel:+1", "scope", to, "acme", "content", b"hi"))
        kept = Stored("m-2", "tel:+1", to, "acme", "content", 5, b"hi", "scope")
        self.forwarder.answer = defer.succeed(Relayed(Posted("m-2", False, kept), None))
        d = self.pool.post("tel:+1", "scope", to, "acme", "content", b"hi")
        self.pump.flush()
        self.assertEqual(self.successResultOf(d), Relayed(Posted("m-2", False, kept), None))
        self.forwarder.answer = defer.fail(MessageRefused("not-found", "no such URI"))
        d = self.pool.post("tel:+1", "scope", to, "acme", "content", b"hi")
        self.pump.flush()
        self.assertEqual(self.failureResultOf(d, MessageRefused).value.code, "not-found")
        self.forwarder.answer = defer.fail(RuntimeError("store gone"))
        d = self.pool.post("tel:+1", "scope", to, "acme", "content", b"hi")
        self.pump.flush()
        self.assertEqual(self.failureResultOf(d, MessageRefused).value.code, "unavailable")
        self.flushLoggedErrors()
        self.pool.tell_delivered(to, "m-1")
        self.pool.settled(to, "m-1")
        self.pool.learned("tel:+1")
        self.pump.flush()
        self.assertEqual(
            self.forwarder.notes,
            [("delivered", to, "m-1"), ("settled", to, "m-1"), ("learned", "tel:+1")],
        )

    def test_forwarder_error_keeps_the_worker(self) -> None:
        """A forwarder that raises instead of failing its Deferred, or an
        answer that cannot be read, is a post refused ``unavailable`` (and
        logged); the worker's connection to the parent stays."""
        self.pump.flush()

        def broken(*args: Any) -> defer.Deferred[Relayed]:
            raise RuntimeError("a forwarder's bug")

        self.forwarder.post = broken  # type: ignore[method-assign]
        d = self.pool.post("tel:+1", "scope", "tel:+2", "acme", "content", b"hi")
        self.pump.flush()
        self.assertEqual(self.failureResultOf(d, MessageRefused).value.code, "unavailable")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.parent.workers), 1)
        self.assertIsNotNone(self.pool.proto)

    def test_note_error_keeps_the_worker(self) -> None:
        """A worker's note the parent's forwarder fails to take is logged;
        the worker's connection stays and the next note goes through."""
        self.pump.flush()

        def broken(uri: str) -> None:
            raise RuntimeError("a forwarder's bug")

        self.forwarder.learned = broken  # type: ignore[method-assign]
        self.pool.learned("tel:+1")
        self.pool.settled("tel:+2", "m-1")
        self.pump.flush()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.parent.workers), 1)
        self.assertEqual(self.forwarder.notes, [("settled", "tel:+2", "m-1")])

    def test_post_too_large(self) -> None:
        """Content over the store's limit is refused ``too-large``, as the
        store refuses it, before it goes to the parent (one over AMP's
        64 KiB a value would fail in the worker)."""
        self.pump.flush()
        for size in (MAX_CONTENT + 1, 70_000):
            d = self.pool.post("tel:+1", "scope", "tel:+2", "acme", "content", b"x" * size)
            self.assertEqual(self.failureResultOf(d, MessageRefused).value.code, "too-large")
        self.assertFalse(hasattr(self.forwarder, "posts"))

    def test_parent_lost_mid_post(self) -> None:
        """The parent's connection lost before it answers a post: the post
        is refused ``unavailable`` at once, not left waiting."""
        self.pump.flush()
        self.forwarder.answer = defer.Deferred()
        d = self.pool.post("tel:+1", "scope", "tel:+2", "acme", "content", b"hi")
        self.pump.flush()
        self.assertNoResult(d)
        assert self.pool.proto is not None
        self.pool.proto.transport.loseConnection()
        self.pump.flush()
        self.assertEqual(self.failureResultOf(d, MessageRefused).value.code, "unavailable")

    def test_parent_gone(self) -> None:
        """Without the parent's socket a post is refused ``unavailable``
        (the client tries again)."""
        self.pump.flush()
        self.pool.proto = None
        d = self.pool.post("tel:+1", "scope", "tel:+2", "acme", "content", b"hi")
        self.assertEqual(self.failureResultOf(d, MessageRefused).value.code, "unavailable")


INVITE = CallInvite("s1", "tel:+1", "tel:+2", "acme", b"\x01", "192.0.2.9", 5146, b"t" * 16)


class FakeWorker:
    def __init__(self, has: set[str]) -> None:
        self.has = has
        self.frames: list[tuple[str, str, dict[str, object]]] = []
        self.peers: list[tuple[str, bool]] = []

    def frame(self, peer: str, frame_type: str, fields: dict[str, object], via: str) -> None:
        self.frames.append((peer, frame_type, fields))

    def invite(self, peer: str, fields: dict[str, object], via: str) -> defer.Deferred[bool]:
        took = fields["to"] in self.has
        if took:
            self.frames.append((peer, INVITE_FRAME, fields))
        return defer.succeed(took)

    def peer(self, peer: str, up: bool, via: str) -> None:
        self.peers.append((peer, up))


class CallRelayTests(SynchronousTestCase):
    """The parent passes the calls' frames between members and workers."""

    def setUp(self) -> None:
        self.link = FakeLink()
        self.w1, self.w2 = FakeWorker(set()), FakeWorker({"tel:+2"})
        self.relay = CallRelay(self.link, lambda: [self.w1, self.w2])  # type: ignore[arg-type]

    def test_member_calls_a_worker_client(self) -> None:
        """A member's invite goes to the worker holding the callee; the
        member's other frames for the call follow it there, until the
        hangup; a frame of a call no worker has is ignored."""
        self.link.handlers[INVITE_FRAME]("crs2", INVITE.fields())
        self.assertEqual(self.w2.frames, [("crs2", INVITE_FRAME, INVITE.fields())])
        talk = CallStep("talk", "s1").fields()
        self.link.handlers[TALK_FRAME]("crs2", talk)
        hangup = CallHangup("s1", "normal", None, "caller").fields()
        self.link.handlers[HANGUP_FRAME]("crs2", hangup)
        self.link.handlers[TALK_FRAME]("crs2", talk)
        self.assertEqual([f[1] for f in self.w2.frames], [INVITE_FRAME, TALK_FRAME, HANGUP_FRAME])
        self.assertEqual(self.w1.frames, [])
        self.assertEqual(self.relay.sessions, {})
        self.assertRaises(WireError, self.link.handlers[TALK_FRAME], "crs2", {"x": 1})

    def test_refused_before_taken(self) -> None:
        """A worker that refuses the invite it takes (busy, glare) sends the
        refusal before its answer: the call is not noted afterwards."""
        relay = self.relay
        self.w2.has.clear()
        answer: defer.Deferred[bool] = defer.Deferred()
        self.w2.invite = lambda peer, fields, via: answer  # type: ignore[method-assign]
        self.link.handlers[INVITE_FRAME]("crs2", INVITE.fields())
        refused = CallRefused("s1", "busy").fields()
        relay.from_worker(self.w2, "crs2", REFUSED_FRAME, refused)  # type: ignore[arg-type]
        answer.callback(True)
        self.assertEqual(relay.sessions, {})
        self.assertEqual(self.link.sent, [("crs2", REFUSED_FRAME, refused)])

    def test_taken_by_a_worker_gone_meanwhile(self) -> None:
        """A worker whose answer that it takes the invite comes once it has
        exited does not keep the call: it is refused ``not-connected``
        (the member's caller is not left waiting for a worker gone)."""
        relay = self.relay
        workers = [self.w1, self.w2]
        relay.workers = lambda: list(workers)
        first: defer.Deferred[bool] = defer.Deferred()
        second: defer.Deferred[bool] = defer.Deferred()
        self.w1.invite = lambda peer, fields, via: first  # type: ignore[method-assign]
        self.w2.invite = lambda peer, fields, via: second  # type: ignore[method-assign]
        self.link.handlers[INVITE_FRAME]("crs2", INVITE.fields())
        workers.remove(self.w2)
        relay.worker_lost(self.w2)  # type: ignore[arg-type]
        second.callback(True)
        first.callback(False)
        self.assertEqual(relay.sessions, {})
        self.assertEqual(
            self.link.sent, [("crs2", REFUSED_FRAME, CallRefused("s1", "not-connected").fields())]
        )

    def test_frames_while_the_workers_answer(self) -> None:
        """The member's frames for a call whose invite the workers are still
        answering (its caller hangs up at once) follow the invite to the
        worker that takes it, in order; when none takes it they are
        dropped with the refusal."""
        relay = self.relay
        answers: list[defer.Deferred[bool]] = [defer.Deferred(), defer.Deferred()]
        self.w1.invite = lambda peer, fields, via: answers[0]  # type: ignore[method-assign]
        self.w2.invite = lambda peer, fields, via: answers[1]  # type: ignore[method-assign]
        self.link.handlers[INVITE_FRAME]("crs2", INVITE.fields())
        hangup = CallHangup("s1", "normal", None, "caller").fields()
        self.link.handlers[HANGUP_FRAME]("crs2", hangup)
        self.assertEqual(self.w2.frames, [])
        answers[1].callback(True)
        self.assertEqual(self.w2.frames, [("crs2", HANGUP_FRAME, hangup)])
        answers[0].callback(False)
        sent = self.link.__dict__.get("sent", [])
        self.assertEqual((relay.sessions, relay.waiting, sent), ({}, {}, []))
        self.assertEqual(self.w1.frames, [])
        other = CallInvite("s2", "tel:+1", "tel:+9", "acme", b"\x01", "192.0.2.9", 5146, b"t" * 16)
        answers[:] = [defer.Deferred(), defer.Deferred()]
        self.link.handlers[INVITE_FRAME]("crs2", other.fields())
        self.link.handlers[HANGUP_FRAME](
            "crs2", CallHangup("s2", "normal", None, "caller").fields()
        )
        answers[0].callback(False)
        answers[1].errback(RuntimeError("the worker's connection lost"))
        self.assertEqual(relay.waiting, {})
        self.assertEqual(
            self.link.sent, [("crs2", REFUSED_FRAME, CallRefused("s2", "not-connected").fields())]
        )
        self.assertEqual((self.w1.frames, self.w2.frames[1:]), ([], []))

    def test_callee_attached_nowhere(self) -> None:
        """An invite no worker takes is refused ``not-connected``."""
        self.w2.has.clear()
        self.link.handlers[INVITE_FRAME]("crs2", INVITE.fields())
        self.assertEqual(
            self.link.sent, [("crs2", REFUSED_FRAME, CallRefused("s1", "not-connected").fields())]
        )

    def test_worker_calls_a_member_client(self) -> None:
        """A worker's invite goes on the pool link, the member's answers come
        back to that worker; no connection to the member: refused at once;
        the worker gone: its calls are hung up at the member; a member's
        link down is told to every worker."""
        self.relay.from_worker(self.w1, "crs2", INVITE_FRAME, INVITE.fields())  # type: ignore[arg-type]
        self.assertEqual(self.link.sent, [("crs2", INVITE_FRAME, INVITE.fields())])
        self.link.handlers[RINGING_FRAME]("crs2", CallStep("talk", "s1").fields())
        self.assertEqual(self.w1.frames, [("crs2", RINGING_FRAME, CallStep("talk", "s1").fields())])
        self.relay.worker_lost(self.w1)  # type: ignore[arg-type]
        self.assertEqual(self.link.sent[-1][:2], ("crs2", HANGUP_FRAME))
        self.link.up = False
        other = CallInvite("s2", "tel:+1", "tel:+3", "acme", b"\x01", "192.0.2.9", 5146, b"t" * 16)
        self.relay.from_worker(self.w1, "crs2", INVITE_FRAME, other.fields())  # type: ignore[arg-type]
        self.assertEqual(self.w1.frames[-1][1], REFUSED_FRAME)
        self.assertEqual(self.relay.sessions, {})
        for listener in self.link.listeners:  # type: ignore[attr-defined]
            listener("crs2", False)
        self.assertEqual((self.w1.peers, self.w2.peers), ([("crs2", False)], [("crs2", False)]))

    def test_data_state(self) -> None:
        """``show iw-crs`` DATA columns: a call offered and not ended through
        a peer, by direction."""
        self.assertEqual(self.relay.data_state("crs2"), ("down", "down", "down"))
        self.relay.from_worker(self.w1, "crs2", INVITE_FRAME, INVITE.fields())  # type: ignore[arg-type]
        self.assertEqual(self.relay.data_state("crs2"), ("down", "down", "down"))
        self.link.handlers[OFFERED_FRAME]("crs2", CallStep("offered", "s1").fields())
        self.assertEqual(self.relay.data_state("crs2"), ("up", "up", "down"))
        other = CallInvite("s2", "tel:+3", "tel:+2", "acme", b"\x01", "192.0.2.9", 5146, b"t" * 16)
        self.link.handlers[INVITE_FRAME]("crs2", other.fields())
        self.relay.from_worker(self.w2, "crs2", OFFERED_FRAME, CallStep("offered", "s2").fields())  # type: ignore[arg-type]
        self.assertEqual(self.relay.data_state("crs2"), ("up", "up", "up"))
        hangup = CallHangup("s1", "normal", None, "caller").fields()
        self.relay.from_worker(self.w1, "crs2", HANGUP_FRAME, hangup)  # type: ignore[arg-type]
        self.assertEqual(self.relay.data_state("crs2"), ("up", "down", "up"))
        self.assertEqual(self.relay.data_state("crs3"), ("down", "down", "down"))


class WorkerIwTests(SynchronousTestCase):
    """A worker follows the parent's inter-working routes."""

    def setUp(self) -> None:
        self.delivered: list[tuple[str, str]] = []
        self.posts: list[tuple[Any, ...]] = []
        outer = self

        class Poster:
            def post(self, *args: Any, via: str = "pool") -> defer.Deferred[Relayed]:
                outer.posts.append((*args, via))
                return defer.succeed(Relayed(Posted("m-1", False), "198.51.100.7"))

            def tell_parent_delivered(self, sender: str, message_id: str) -> None:
                outer.delivered.append((sender, message_id))

        self.elsewhere = {"tel:+5": "w2"}
        self.iw = WorkerIw(Poster(), self.elsewhere.get)

    def test_routes(self) -> None:
        """Before the parent's routes every account not hosted here may be
        a peer's (unavailable); then they say which peer hosts which."""
        self.assertTrue(self.iw.unknown("beta"))
        self.iw.adopt(
            {
                "routes": {"beta": ["198.51.100.8", "198.51.100.7"]},
                "silent": False,
                "local": ["acme"],
            }
        )
        self.assertEqual((self.iw.remote("beta"), self.iw.unknown("beta")), (True, False))
        self.assertEqual((self.iw.remote("gamma"), self.iw.unknown("gamma")), (False, False))
        self.assertEqual(self.iw.peer_for("beta"), "198.51.100.8")
        self.assertEqual((self.iw.hosts("acme"), self.iw.hosts("beta")), (True, False))
        self.iw.adopt({"routes": "garbage"})
        self.assertEqual(self.iw.refused, 1)
        self.assertTrue(self.iw.remote("beta"))

    def test_posts_and_delivered_through_the_parent(self) -> None:
        """Posts go to the parent marked ``iw``; ``delivered`` for a sender
        attached to no other worker goes to the parent (it knows the senders
        behind its peers), one attached to another worker does not."""
        d = self.iw.post("tel:+1", "s", "tel:+2", "beta", "content", b"hi")
        self.assertEqual(self.successResultOf(d).peer, "198.51.100.7")
        self.assertEqual(self.posts, [("tel:+1", "s", "tel:+2", "beta", "content", b"hi", "iw")])
        self.assertEqual((self.iw.knows("tel:+9"), self.iw.knows("tel:+5")), (True, False))
        self.iw.tell_delivered("tel:+9", "m-1")
        self.assertEqual(self.delivered, [("tel:+9", "m-1")])

    @settings(max_examples=200, deadline=None)
    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=4),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(["routes", "silent", "local", "x"]) | st.text(max_size=3), inner
                )
            ),
            max_leaves=15,
        )
    )
    def test_hostile_views(self, value: object) -> None:
        """Whatever comes is taken or counted, never a crash."""
        self.iw.adopt(value)


class FakeIwForwarder:
    """The inter-working forwarder as the parent's routes read it."""

    def __init__(self) -> None:
        self.routes = AccountRoutes()
        self.up: set[str] = set()
        self.peers = ["198.51.100.7", "198.51.100.8"]
        self.iw = SimpleNamespace(configured=lambda: self.peers)


class ParentRoutesTests(SynchronousTestCase):
    def test_routes_sent_on_change(self) -> None:
        """The parent sends a connected worker the routes when it connects
        and again when a peer's accounts or link change, not otherwise."""
        reactor = MemoryReactorClock()
        iw = FakeIwForwarder()
        iw.routes.set_local(frozenset({"acme"}))
        parent = ParentPool(reactor, "/nowhere", None, None, iw=iw, iw_link=FakeLink())  # type: ignore[arg-type]
        pool = WorkerPool(reactor, "/nowhere", AttachRegistry("crs1", reactor.seconds), print)
        pool.pooled = False
        worker_iw = pool.iw = WorkerIw(pool, lambda uri: None)
        adopted: list[object] = []
        adopt = worker_iw.adopt
        worker_iw.adopt = lambda view: (adopted.append(view), adopt(view))  # type: ignore[method-assign]
        server, client = _ParentProtocol(parent), _WorkerProtocol(pool)
        pump = iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client)
        )
        pump.flush()
        self.assertEqual((len(adopted), worker_iw.unknown("beta")), (1, True))
        iw.routes.claim("198.51.100.8", "opB", frozenset({"beta"}))
        iw.routes.claim("198.51.100.7", "opB", frozenset({"beta"}))
        iw.up.add("198.51.100.8")
        parent.check()
        parent.check()
        pump.flush()
        self.assertEqual(len(adopted), 2)
        self.assertEqual(worker_iw.peer_for("beta"), "198.51.100.8")
        self.assertEqual((worker_iw.remote("beta"), worker_iw.unknown("gamma")), (True, False))
        self.assertTrue(worker_iw.hosts("acme"))


class RaisingSink:
    """A worker's calls whose handlers fail (a bug, not a bad frame)."""

    def deliver(self, peer: str, frame_type: str, fields: dict[str, object]) -> None:
        raise RuntimeError("a handler's bug")

    def peer_changed(self, peer: str, up: bool) -> None:
        raise RuntimeError("a listener's bug")


class ParentCallsTests(SynchronousTestCase):
    """A worker's calls through its parent's pool and inter-working links,
    over the parent's socket (in memory)."""

    PEER = "198.51.100.7"

    def setUp(self) -> None:
        reactor = MemoryReactorClock()
        self.link, self.iw_link = FakeLink(), FakeLink()
        self.parent = ParentPool(
            reactor,
            "/nowhere",
            self.link,  # type: ignore[arg-type]
            None,
            iw=FakeIwForwarder(),  # type: ignore[arg-type]
            iw_link=self.iw_link,
        )
        self.pool = WorkerPool(reactor, "/nowhere", AttachRegistry("crs1", reactor.seconds), print)
        self.pool.pooled = False
        self.server, self.client = _ParentProtocol(self.parent), _WorkerProtocol(self.pool)
        self.pump = iosim.connect(
            self.server,
            iosim.makeFakeServer(self.server),
            self.client,
            iosim.makeFakeClient(self.client),
        )
        self.pump.flush()

    def test_worker_gone_ends_its_calls_on_both_links(self) -> None:
        """A worker that exits has its calls hung up where they go: at the
        pool's member and at the inter-working peer alike (``not-connected``,
        from ``crs``), and the parent forgets them."""
        other = CallInvite("s2", "tel:+1", "tel:+3", "beta", b"\x01", "192.0.2.9", 5146, b"t" * 16)
        self.assertTrue(self.pool.send_frame("crs2", INVITE_FRAME, INVITE.fields()))
        self.assertTrue(self.pool.send_iw_frame(self.PEER, INVITE_FRAME, other.fields()))
        self.pump.flush()
        self.assertEqual([s[:2] for s in self.iw_link.sent], [(self.PEER, INVITE_FRAME)])
        self.client.transport.loseConnection()
        self.pump.flush()
        self.assertEqual(self.parent.workers, set())
        gone = "the party's process ended"
        self.assertEqual(
            self.link.sent[-1],
            ("crs2", HANGUP_FRAME, CallHangup("s1", "not-connected", gone, "crs").fields()),
        )
        self.assertEqual(
            self.iw_link.sent[-1],
            (self.PEER, HANGUP_FRAME, CallHangup("s2", "not-connected", gone, "crs").fields()),
        )
        assert self.parent.calls is not None and self.parent.iw_calls is not None
        self.assertEqual((self.parent.calls.sessions, self.parent.iw_calls.sessions), ({}, {}))

    def test_a_worker_handler_error_keeps_the_link(self) -> None:
        """A call frame or link change the worker fails to handle is logged;
        the worker's connection to the parent stays (AMP would drop it,
        and every call through it)."""
        self.pool.calls = RaisingSink()
        self.server.frame("crs2", TALK_FRAME, CallStep("talk", "s1").fields(), "pool")
        self.server.peer("crs2", False, "pool")
        self.pump.flush()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(self.parent.workers, {self.server})
        self.assertIs(self.pool.proto, self.client)
        self.assertTrue(self.pool.send_frame("crs2", INVITE_FRAME, INVITE.fields()))
        self.pump.flush()
        self.assertEqual([s[:2] for s in self.link.sent], [("crs2", INVITE_FRAME)])

    def test_a_worker_invite_error_keeps_the_link(self) -> None:
        """An invite the worker fails to offer (an error, not a bad frame)
        is logged and answered not here: the member is refused
        ``not-connected`` and the worker stays connected."""
        self.pool.calls = RaisingSink()
        callee = Attachment("tel:+2", "acme", 1.0, "1", "192.0.2.1", 1, FakeConnection())
        self.pool.registry.attach(callee)  # type: ignore[arg-type]
        self.link.handlers[INVITE_FRAME]("crs2", INVITE.fields())
        self.pump.flush()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(
            self.link.sent, [("crs2", REFUSED_FRAME, CallRefused("s1", "not-connected").fields())]
        )
        self.assertEqual(self.parent.workers, {self.server})

    def test_a_parent_link_error_keeps_the_worker(self) -> None:
        """A worker's frame the parent's link fails to send (an error, not a
        bad frame) is logged; the worker stays connected, its calls too."""

        def broken(peer: str, frame_type: str, fields: dict[str, object]) -> bool:
            raise RuntimeError("a link's bug")

        self.iw_link.send = broken  # type: ignore[method-assign]
        self.assertTrue(self.pool.send_frame("crs2", INVITE_FRAME, INVITE.fields()))
        self.assertTrue(
            self.pool.send_iw_frame(self.PEER, TALK_FRAME, CallStep("talk", "s2").fields())
        )
        self.pump.flush()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.parent.workers, {self.server})
        assert self.parent.calls is not None
        self.assertEqual(list(self.parent.calls.sessions), ["s1"])
