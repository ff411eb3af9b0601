"""``workers 2``: never acknowledge what is not done, across workers.

A hypothesis state machine, in memory on a Clock: two workers of one
instance share the durable message store (``redis_low``, kept across
everything) and the notice channel (``redis_high`` pub/sub: a notice
reaches the workers subscribed when it is published, each in its own
order and time).  Clients attach to either worker and move (the worker
left behind noticing, or not yet), post to each other (with a retry key
or without), fetch and confirm; workers restart
(their clients' connections die, the notices on the way to them are
lost); the store goes out of reach and comes back.

Properties, checked as each thing happens and at the end:

- ``posted`` goes out only for a message that is in the durable store
  (or already delivered and confirmed from it);
- a message confirmed delivered (removed from the store) never reaches
  its recipient again, on any worker or connection;
- no content reaches its recipient under two IDs, nothing arrives that
  was not posted;
- at the end, with every worker running and the store back, every
  message answered ``posted`` reaches its recipient, and the store is
  empty once they confirm.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.attach.registry import Attachment, AttachRegistry
from cryptify.crs.messages.wiring import DELIVERY_RETRY, Messaging
from cryptify.crs.trace import TraceHub
from cryptify.crs.workers.notices import channel
from cryptify.crs.workers.wake import Siblings, WakeListener
from cryptify.protocols.umsg import message
from tests.fakes import MemoryMessageStore

NOW = 1_800_000_000.0
URIS = ("tel:+1", "tel:+2", "tel:+3")
WORKERS = 2
CHANNEL = channel("crs1")


class Conn:
    """A client's connection to one worker; checks what it is sent."""

    ids = itertools.count(1)

    def __init__(self, machine: WorkersMachine, uri: str) -> None:
        self.machine = machine
        self.uri, self.account = uri, "acme"
        self.conn_id = f"c{next(self.ids)}"
        self.alive = True
        self.next_id = 1
        #: (message ID, content) received, in order
        self.got: list[tuple[str, bytes]] = []
        self.confirmed = 0
        self.answers: dict[int, Any] = {}

    def request_id(self) -> int:
        n, self.next_id = self.next_id, self.next_id + 1
        return n

    def send(self, msg: Any) -> None:
        if not self.alive:
            return
        if msg.type == "message":
            self.machine.received(self, msg["message"], msg["content"])
        elif msg.type == "posted":
            self.machine.check_stored(msg["message"])
            self.answers[msg.id] = msg
        elif msg.type in ("error", "ok"):
            self.answers[msg.id] = msg

    def disconnect(self, reason: str) -> None:
        self.alive = False


class High:
    """``redis_high`` pub/sub: a notice goes to the workers subscribed now."""

    def __init__(self, machine: WorkersMachine) -> None:
        self.machine = machine
        self.connected = True

    @property
    def client(self) -> High:
        return self

    def publish(self, where: str, text: str) -> defer.Deferred[int]:
        for worker in self.machine.workers:
            worker.notices.append(text)
        return defer.succeed(len(self.machine.workers))


class Worker:
    """One incarnation of a worker process (all of it lost on a restart)."""

    def __init__(self, machine: WorkersMachine, index: int) -> None:
        clock = machine.clock
        self.index = index
        trace = TraceHub(clock.seconds)
        self.registry = AttachRegistry("crs1", clock.seconds, trace)
        self.messaging = Messaging(
            machine.store,  # type: ignore[arg-type]
            self.registry,
            trace,
            window=2,
            scheduler=clock,
        )
        self.registry.on_attach.append(self.messaging.attached)
        self.messaging.siblings = Siblings(lambda: machine.high, CHANNEL)  # type: ignore[arg-type,return-value]
        subscription = SimpleNamespace(protocol=None, on_connect=[])
        self.listener = WakeListener(subscription, CHANNEL, self.messaging, lambda: None)  # type: ignore[arg-type]
        #: notices published and not yet read by this worker
        self.notices: list[str] = []
        self.timers: list[Any] = []


class WorkersMachine(RuleBasedStateMachine):
    """Posts, moves, confirmations, worker restarts, store outages."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = MemoryMessageStore(self.clock.seconds)
        self.store.known.update(URIS)
        self.high = High(self)
        self.workers = [Worker(self, i) for i in range(WORKERS)]
        #: uri -> (worker index, connection) while attached
        self.attached: dict[str, tuple[int, Conn]] = {}
        self.counter = 0
        #: content -> (sender, recipient, key)
        self.sent: dict[bytes, tuple[str, str, bytes | None]] = {}
        #: content -> the ID it was posted as
        self.posted: dict[bytes, str] = {}
        #: IDs confirmed and removed from the store: never to be seen again
        self.settled: set[str] = set()
        #: what recipients saw: ID -> content, content -> ID
        self.seen: dict[str, bytes] = {}
        self.seen_as: dict[bytes, str] = {}
        #: what went wrong, as it happened
        self.wrong: list[str] = []

    # -- checks as things happen ---------------------------------------------------

    # (what goes wrong is noted, not raised: the messaging code may be
    # inside a Deferred callback, which would take the exception for its own)

    def check_stored(self, message_id: str) -> None:
        if message_id not in self.store.messages and message_id not in self.settled:
            self.wrong.append(f"posted {message_id} before it was stored")

    def received(self, conn: Conn, message_id: str, content: bytes) -> None:
        if message_id in self.settled:
            self.wrong.append(f"{message_id} delivered again after its confirmation")
        if content not in self.sent or self.sent[content][1] != conn.uri:
            self.wrong.append(f"{message_id}: {content!r} never sent to {conn.uri}")
        if self.seen.setdefault(message_id, content) != content:
            self.wrong.append(f"{message_id} arrived with two contents")
        if self.seen_as.setdefault(content, message_id) != message_id:
            self.wrong.append(f"{content!r} arrived as {message_id} and {self.seen_as[content]}")
        conn.got.append((message_id, content))

    # -- helpers ----------------------------------------------------------------------

    def conn_of(self, uri: str) -> Conn | None:
        found = self.attached.get(uri)
        return found[1] if found is not None and found[1].alive else None

    def post(self, conn: Conn, to: str, content: bytes, key: bytes | None) -> None:
        msg_id = conn.request_id()
        fields: dict[str, Any] = {"id": msg_id, "to": to, "content": content}
        if key is not None:
            fields["key"] = key
        worker = self.workers[self.attached[conn.uri][0]]
        worker.messaging.post(conn, message("post", **fields))  # type: ignore[arg-type]
        answer = conn.answers.get(msg_id)
        assert answer is not None, "the memory store answers at once"
        if answer.type == "posted":
            first = self.posted.setdefault(content, answer["message"])
            assert first == answer["message"], (content, first, answer)
        else:
            assert answer["code"] in ("unavailable", "internal"), answer

    def detach(self, uri: str) -> None:
        found = self.attached.pop(uri, None)
        if found is not None:
            index, conn = found
            conn.alive = False
            self.workers[index].registry.detach(uri, conn, "closed")  # type: ignore[arg-type]

    # -- rules ------------------------------------------------------------------------

    @rule(uri=st.sampled_from(URIS), index=st.integers(0, WORKERS - 1))
    def attach(self, uri: str, index: int) -> None:
        """``uri`` (re)attaches, to the worker the kernel picked."""
        self.detach(uri)
        conn = Conn(self, uri)
        self.attached[uri] = (index, conn)
        attachment = Attachment(uri, "acme", self.clock.seconds(), "1", "192.0.2.1", 1, conn)
        self.workers[index].registry.attach(attachment)  # type: ignore[arg-type]

    @rule(uri=st.sampled_from(URIS))
    def leaves(self, uri: str) -> None:
        self.detach(uri)

    @rule(uri=st.sampled_from(URIS), index=st.integers(0, WORKERS - 1))
    def moves_abruptly(self, uri: str, index: int) -> None:
        """``uri``'s connection breaks and it attaches again at once: the
        worker it was on has not noticed yet (its attachment stays, the
        connection takes nothing more)."""
        found = self.attached.pop(uri, None)
        if found is not None:
            found[1].alive = False
        self.attach(uri, index)

    @initialize(where=st.lists(st.integers(0, WORKERS - 1), min_size=3, max_size=3))
    def everyone_attaches(self, where: list[int]) -> None:
        for uri, index in zip(URIS, where, strict=True):
            self.attach(uri, index)

    @rule(
        sender=st.sampled_from(URIS),
        to=st.sampled_from(URIS),
        keyed=st.booleans(),
        count=st.integers(1, 3),
        index=st.integers(0, WORKERS - 1),
    )
    def post_new(self, sender: str, to: str, keyed: bool, count: int, index: int) -> None:
        """New messages from a client (attached to worker ``index`` first
        when it is not attached)."""
        conn = self.conn_of(sender)
        if conn is None:
            self.attach(sender, index)
            conn = self.conn_of(sender)
            assert conn is not None
        for _ in range(count):
            self.counter += 1
            content = b"m%d" % self.counter
            key = b"%016d" % self.counter if keyed else None
            self.sent[content] = (sender, to, key)
            self.post(conn, to, content, key)

    @rule(n=st.integers(0, 10**6))
    def retry_keyed(self, n: int) -> None:
        """A keyed message again, with its key, from its sender's current connection."""
        keyed = sorted(c for c, (_, _, k) in self.sent.items() if k is not None)
        if not keyed:
            return
        content = keyed[n % len(keyed)]
        sender, to, key = self.sent[content]
        conn = self.conn_of(sender)
        if conn is not None:
            self.post(conn, to, content, key)

    @rule(uri=st.sampled_from(URIS))
    def confirms(self, uri: str) -> None:
        """The client confirms what it got so far."""
        conn = self.conn_of(uri)
        if conn is None:
            return
        worker = self.workers[self.attached[uri][0]]
        while conn.confirmed < len(conn.got):
            message_id, _ = conn.got[conn.confirmed]
            conn.confirmed += 1
            was_there = message_id in self.store.messages
            worker.messaging.delivered(conn, message("delivered", message=message_id))  # type: ignore[arg-type]
            if was_there and message_id not in self.store.messages:
                self.settled.add(message_id)

    @rule(uri=st.sampled_from(URIS))
    def fetches(self, uri: str) -> None:
        conn = self.conn_of(uri)
        if conn is not None:
            worker = self.workers[self.attached[uri][0]]
            worker.messaging.fetch(conn, message("fetch", id=conn.request_id()))  # type: ignore[arg-type]

    @rule(index=st.integers(0, WORKERS - 1), count=st.integers(1, 4))
    def notices_arrive(self, index: int, count: int) -> None:
        """Worker ``index`` reads some of the notices published for it."""
        worker = self.workers[index]
        for _ in range(min(count, len(worker.notices))):
            worker.listener.received(worker.notices.pop(0))

    @rule(index=st.integers(0, WORKERS - 1))
    def worker_restarts(self, index: int) -> None:
        """Worker ``index`` dies and starts again: its clients' connections
        close, the notices on their way to it are lost."""
        for uri, (where, conn) in list(self.attached.items()):
            if where == index:
                conn.alive = False
                del self.attached[uri]
        self.workers[index] = Worker(self, index)

    @rule()
    def store_away(self) -> None:
        self.store.down = True

    @rule()
    def store_back(self) -> None:
        self.store.down = False

    @rule()
    def time_passes(self) -> None:
        self.clock.advance(DELIVERY_RETRY)

    # -- the end ----------------------------------------------------------------------

    @invariant()
    def nothing_wrong(self) -> None:
        assert not self.wrong, self.wrong

    @invariant()
    def ids_match(self) -> None:
        for content, message_id in self.seen_as.items():
            if content in self.posted:
                assert self.posted[content] == message_id, (content, message_id)

    def teardown(self) -> None:
        self.store.down = False
        # every keyed post not answered is retried until it is stored
        for content, (sender, to, key) in sorted(self.sent.items()):
            if key is not None and content not in self.posted:
                if self.conn_of(sender) is None:
                    self.attach(sender, 0)
                conn = self.conn_of(sender)
                assert conn is not None
                self.post(conn, to, content, key)
                assert content in self.posted, content
        for index in range(WORKERS):
            self.notices_arrive(index, 10**6)
        # every client attaches again and confirms what it gets
        for i, uri in enumerate(URIS):
            self.attach(uri, i % WORKERS)
        for _ in range(50):
            for index in range(WORKERS):
                self.notices_arrive(index, 10**6)
            for uri in URIS:
                self.confirms(uri)
            self.clock.advance(DELIVERY_RETRY)
            if not self.store.messages:
                break
        self.nothing_wrong()
        for content, message_id in self.posted.items():
            assert self.seen_as.get(content) == message_id, f"{content!r} posted, not delivered"
        assert self.store.messages == {}, self.store.messages
        for uri in URIS:
            self.detach(uri)
        self.clock.advance(DELIVERY_RETRY)
        assert self.clock.getDelayedCalls() == [], self.clock.getDelayedCalls()


class WorkersMachineTests(SynchronousTestCase):
    def run_steps(self, steps: list[tuple[str, tuple[Any, ...]]]) -> None:
        machine = WorkersMachine()
        for name, args in steps:
            getattr(machine, name)(*args)
            machine.nothing_wrong()
        machine.teardown()

    def test_late_notices(self) -> None:
        """The cases the machine found (or would take long to find): a
        notice that arrives after the attach's read of the inbox sent the
        message, or after a ``fetch`` did, long after the attach, and the
        recipient confirmed it: nothing is sent again."""
        self.run_steps(
            [
                ("attach", ("tel:+1", 0)),
                ("post_new", ("tel:+1", "tel:+2", False, 1, 0)),
                ("attach", ("tel:+2", 1)),
                ("confirms", ("tel:+2",)),
                ("notices_arrive", (1, 5)),
            ]
        )
        self.run_steps(
            [
                ("attach", ("tel:+1", 0)),
                ("attach", ("tel:+2", 1)),
                ("time_passes", ()),
                ("post_new", ("tel:+1", "tel:+2", False, 1, 0)),
                ("fetches", ("tel:+2",)),
                ("confirms", ("tel:+2",)),
                ("notices_arrive", (1, 5)),
            ]
        )

    def test_never_acknowledge_what_is_not_done(self) -> None:
        """Across two workers, moves, worker restarts and store outages:
        ``posted`` only after the durable store, nothing acknowledged lost,
        nothing delivered again after its confirmation."""
        run_state_machine_as_test(
            WorkersMachine,
            settings=settings(
                max_examples=300,
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
