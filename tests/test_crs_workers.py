"""``workers N``: the notices between workers, the parent's supervision of
its worker processes, the directive, and the hooks in messaging, accounts
and the client port (docs/workers.md).  All in memory except the
``SO_REUSEPORT`` sockets, which are real loopback sockets."""

from __future__ import annotations

import os
import socket
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config import ConfigError
from cryptify.config.crs_local import (
    AUTO_WORKERS,
    CrsLocalConfig,
    parse_crs_local_config,
    render_crs_local_config,
    worker_count,
)
from cryptify.crs.accounts import AccountStore
from cryptify.crs.attach.registry import Attachment, AttachRegistry
from cryptify.crs.messages.store import Stored
from cryptify.crs.messages.wiring import NOTICE_MARGIN_MS
from cryptify.crs.pool.wire import WireError
from cryptify.crs.redis.store import RedisNotConnected
from cryptify.crs.slots import SLOTS, slot_of
from cryptify.crs.trace import TraceHub
from cryptify.crs.workers.calls import (
    LOOK_AGAIN,
    SETTLE,
    AttachDirectory,
    WorkerLink,
    describe_worker,
)
from cryptify.crs.workers.notices import (
    AccountsChanged,
    Ask,
    Attached,
    Delivered,
    Detached,
    Frame,
    Gone,
    Hello,
    NoticeError,
    Wake,
    channel,
    decode,
    encode,
    worker_channel,
    worker_name,
)
from cryptify.crs.workers.reuseport import reserve, reuseport_socket
from cryptify.crs.workers.supervisor import STOP_GRACE, Backoff, WorkerSupervisor
from cryptify.crs.workers.wake import HomeRouter, Siblings, WakeListener
from cryptify.plugins.crs import Options
from cryptify.service import StartupError
from tests.fakes import SECRET
from tests.messages_support import NOW, Conn, DeliveryCase

words = st.text(st.characters(blacklist_categories=("Z", "C")), min_size=1, max_size=60)


class NoticeTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        st.one_of(
            st.builds(Wake, words),
            st.builds(Wake, words, st.none(), words),
            st.builds(
                Wake,
                words,
                st.builds(
                    Stored, words, words, words, words, words, st.integers(0, 2**63), st.binary()
                ),
            ),
            st.builds(
                Stored, words, words, words, words, words, st.integers(0, 2**63), st.binary()
            ).map(lambda stored: Wake("tel:+1", stored, stored.account)),
            st.builds(Delivered, words, words),
            st.just(AccountsChanged()),
            st.builds(Attached, words, words, st.integers(0, 2**63)),
            st.builds(Detached, words, words),
            st.builds(Hello, words),
            st.builds(Ask, words),
            st.builds(Gone, words),
            st.builds(
                Frame,
                words,
                words,
                st.dictionaries(
                    st.text(max_size=10),
                    st.one_of(st.text(max_size=20), st.binary(max_size=40), st.integers(0, 2**32)),
                    max_size=8,
                ),
            ),
        )
    )
    def test_round_trip(self, notice: Any) -> None:
        """Every notice reads back as itself, from text or from bytes."""
        self.assertEqual(decode(encode(notice)), notice)
        self.assertEqual(decode(encode(notice).encode("utf-8")), notice)

    @settings(max_examples=500, deadline=None)
    @given(st.one_of(st.text(max_size=2000), st.binary(max_size=2000), st.integers(), st.none()))
    def test_hostile_input(self, data: object) -> None:
        """Whatever the channel carries is a notice or a NoticeError, never a crash."""
        try:
            decode(data)
        except NoticeError:
            pass

    def test_refused(self) -> None:
        """Unknown kinds, wrong arity, empty words and non-UTF-8 are refused."""
        for bad in ("", "x tel:+1", "m", "m a b", "d a", "a b", "m  ", b"\xff", "m " + "u" * 2000):
            self.assertRaises(NoticeError, decode, bad)
        self.assertRaises(NoticeError, encode, Wake("two words"))

    def test_channel(self) -> None:
        """The channels name the instance (and the worker); workers count from 1."""
        self.assertEqual(channel("crs1"), "crs:crs1:workers")
        self.assertEqual(worker_channel("crs1", worker_name(0)), "crs:crs1:workers:w1")

    def test_bad_frames(self) -> None:
        """A call frame whose data is not base64 CBOR of a map is refused."""
        for bad in (
            "at tel:+1 w1",
            "at tel:+1 w1 -5",
            "c w1 call-invite !!",
            "c w1 call-invite AQ==",
            "c w1 call-invite gA==",
            "n tel:+1 gA==",
            "n tel:+1 hwEBAQEBAQE=",
        ):
            self.assertRaises(NoticeError, decode, bad)


class FakeClient:
    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []
        self.fail = False

    def publish(self, where: str, text: str) -> defer.Deferred[int]:
        if self.fail:
            return defer.fail(ConnectionError("gone"))
        self.published.append((where, text))
        return defer.succeed(1)


class FakeStore:
    def __init__(self) -> None:
        self.connection: FakeClient | None = FakeClient()

    @property
    def connected(self) -> bool:
        return self.connection is not None

    @property
    def client(self) -> FakeClient:
        if self.connection is None:
            raise RedisNotConnected("redis_high: not connected")
        return self.connection


class SiblingsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.siblings = Siblings(lambda: self.store, "crs:crs1:workers")  # type: ignore[arg-type,return-value]

    def test_publishes(self) -> None:
        """Wake-ups, delivered notices and account changes go on the channel."""
        self.siblings.wake("tel:+1")
        self.siblings.tell_delivered("tel:+2", "m-1")
        self.siblings.accounts_changed()
        assert self.store.connection is not None
        self.assertEqual(
            self.store.connection.published,
            [("crs:crs1:workers", t) for t in ("m tel:+1", "d tel:+2 m-1", "a")],
        )
        self.assertEqual((self.siblings.sent, self.siblings.failed), (3, 0))

    def test_addressed(self) -> None:
        """With a router (a worker's) a notice about a client goes to one
        worker's channel, and says whether the client is attached elsewhere
        (no push wake-up then)."""
        routes = {"tel:+1": ("w2", "crs:crs1:workers:w2"), "tel:+2": (None, "crs:crs1:workers:w1")}

        class Router:
            def where(self, uri: str) -> str | None:
                return routes[uri][0]

            def route(self, uri: str) -> str:
                return routes[uri][1]

        self.siblings.router = Router()
        self.assertTrue(self.siblings.wake("tel:+1"))
        self.assertFalse(self.siblings.wake("tel:+2"))
        self.siblings.tell_delivered("tel:+1", "m-1")
        self.siblings.accounts_changed()
        assert self.store.connection is not None
        self.assertEqual(
            self.store.connection.published,
            [
                ("crs:crs1:workers:w2", "m tel:+1"),
                ("crs:crs1:workers:w1", "m tel:+2"),
                ("crs:crs1:workers:w2", "d tel:+1 m-1"),
                ("crs:crs1:workers", "a"),
            ],
        )

    def test_parent_marks_absent(self) -> None:
        """The parent's notices go to the home worker of the recipient's slot
        and carry the account to push for (not for an ack); the parent then
        asks for no push wake-up itself."""
        self.siblings.router = HomeRouter("crs1", 2)
        self.siblings.marks_absent = True
        stored = Stored("m-1", "tel:+9", "tel:+1", "acme", "content", 5, b"hi")
        self.assertTrue(self.siblings.wake("tel:+1", stored))
        ack = Stored("m-2", "tel:+9", "tel:+1", "acme", "ack", 5, b"m-1")
        self.siblings.wake("tel:+1", ack)
        assert self.store.connection is not None
        [(where, text), (_, ack_text)] = self.store.connection.published
        home = "w1" if slot_of("tel:+1") < SLOTS // 2 else "w2"
        self.assertEqual(where, f"crs:crs1:workers:{home}")
        self.assertEqual(decode(text), Wake("tel:+1", stored, "acme"))
        self.assertEqual(decode(ack_text), Wake("tel:+1", ack))

    def test_failures_are_counted(self) -> None:
        """A notice that cannot go is counted and dropped; an account notice
        while Redis is away is not even counted (workers read the accounts
        when they subscribe)."""
        assert self.store.connection is not None
        self.store.connection.fail = True
        self.siblings.wake("tel:+1")
        self.store.connection = None
        self.siblings.wake("tel:+1")
        self.siblings.accounts_changed()
        self.assertEqual((self.siblings.sent, self.siblings.failed), (0, 2))
        self.flushLoggedErrors()


class Mailman:
    def __init__(self) -> None:
        self.woken: list[str] = []
        self.stored: list[Any] = []
        self.told: list[tuple[str, str]] = []

    def wake(self, uri: str, stored: Any = None) -> None:
        self.woken.append(uri)
        self.stored.append(stored)

    def tell_sender(self, sender: str, message_id: str) -> None:
        self.told.append((sender, message_id))


class WakeListenerTests(SynchronousTestCase):
    def setUp(self) -> None:
        from cryptify.crs.redis.store import RedisStore

        self.store = RedisStore(None, Clock(), None)  # type: ignore[arg-type]
        self.mailman = Mailman()
        self.reloads = 0

        def reload() -> None:
            self.reloads += 1

        self.listener = WakeListener(self.store, "crs:crs1:workers", self.mailman, reload)

    def test_dispatch(self) -> None:
        """Each notice goes where it belongs; garbage is counted, not a crash."""
        self.listener.received("m tel:+1")
        self.listener.received(b"d tel:+2 m-9")
        self.listener.received("a")
        self.listener.received("nonsense here")
        self.assertEqual(self.mailman.woken, ["tel:+1"])
        self.assertEqual(self.mailman.told, [("tel:+2", "m-9")])
        self.assertEqual((self.reloads, self.listener.refused), (1, 1))

    def test_addressed_notices_asked_first(self) -> None:
        """A wake-up or delivered notice on the worker's own channel goes to
        its messaging only when the link says the client is its own; on
        the instance's channel it always does."""
        asked: list[object] = []

        class Peers:
            channel = "crs:crs1:workers:w1"

            def mine(self, notice: object) -> bool:
                asked.append(notice)
                return notice == Wake("tel:+1")

            def received(self, notice: object) -> None:
                pass

            def subscribed(self) -> None:
                pass

        self.listener.peers = Peers()
        self.listener.received("m tel:+1", b"crs:crs1:workers:w1")
        self.listener.received("m tel:+2", b"crs:crs1:workers:w1")
        self.listener.received("d tel:+3 m-1", "crs:crs1:workers:w1")
        self.listener.received("m tel:+4", b"crs:crs1:workers")
        self.assertEqual(self.mailman.woken, ["tel:+1", "tel:+4"])
        self.assertEqual(self.mailman.told, [])
        self.assertEqual(asked, [Wake("tel:+1"), Wake("tel:+2"), Delivered("tel:+3", "m-1")])

    def test_subscribes_on_each_connection(self) -> None:
        """Every new connection subscribes to the channel and then reads
        the accounts again (a change may have gone by meanwhile)."""
        from cryptify.crs.workers.wake import _Subscriber

        class Connection(_Subscriber):
            def subscribe(self, where: list[str]) -> defer.Deferred[None]:
                self.subscribed = where
                return defer.succeed(None)

        self.assertIs(self.store.protocol, _Subscriber)
        for expected in (1, 2):
            proto = Connection()
            for hook in self.store.on_connect:
                hook(proto)
            self.assertEqual(proto.subscribed, ["crs:crs1:workers"])
            proto.received("m tel:+5")
            self.assertEqual(self.reloads, expected)
        self.assertEqual(self.mailman.woken, ["tel:+5", "tel:+5"])


class MessagingHookTests(DeliveryCase):
    def setUp(self) -> None:
        super().setUp()
        self.siblings = Mailman()
        self.delivered: list[tuple[str, str]] = []
        self.messaging.siblings = self  # type: ignore[assignment]

    #: the recipients attached to another worker, as the directory says
    elsewhere: frozenset[str] = frozenset()

    def wake(self, uri: str, stored: Any) -> bool:
        self.siblings.woken.append(uri)
        self.siblings.stored.append(stored)
        return uri in self.elsewhere

    def test_parent_passes_delivered_on(self) -> None:
        """In a parent (its workers serve the clients) a ``delivered`` from
        another pool member goes to the workers; in a worker, for a sender
        not attached here, it goes nowhere (the notice came from there)."""
        self.messaging.tell_sender("tel:+9", "m-1")
        self.assertEqual(self.delivered, [])
        self.messaging.workers_serve = True
        self.messaging.tell_sender("tel:+9", "m-1")
        self.assertEqual(self.delivered, [("tel:+9", "m-1")])

    def test_push_only_when_attached_nowhere(self) -> None:
        """A recipient the directory places on another worker gets the
        notice and no push wake-up; one attached nowhere gets both."""
        absent: list[str] = []
        self.messaging.on_absent = lambda account, uri: absent.append(uri)
        self.elsewhere = frozenset({"tel:+2"})
        sender = self.attach("tel:+1")
        self.store.known.update({"tel:+1", "tel:+3"})
        self.post(sender, 1, "tel:+2", b"hi")
        self.post(sender, 2, "tel:+3", b"hi")
        self.assertEqual(self.siblings.woken, ["tel:+2", "tel:+3"])
        self.assertEqual(absent, ["tel:+3"])

    def tell_delivered(self, sender: str, message_id: str) -> None:
        self.delivered.append((sender, message_id))

    def test_post_for_client_elsewhere(self) -> None:
        """A message stored for a recipient not attached in this process
        wakes the other workers; its delivery notice goes to them too when
        the sender is not attached here."""
        sender = self.attach("tel:+1")
        self.store.known.add("tel:+1")
        self.post(sender, 1, "tel:+2", b"hi")
        self.assertEqual(self.siblings.woken, ["tel:+2"])
        [posted] = sender.of("posted")
        [stored] = self.siblings.stored
        self.assertEqual((stored.id, stored.data), (posted["message"], b"hi"))
        # the sender moves to another worker
        self.registry.detach("tel:+1", sender, "gone")  # type: ignore[arg-type]
        recipient = self.attach("tel:+2")
        [got] = recipient.of("message")
        self.confirm(recipient)
        self.assertEqual(self.delivered, [("tel:+1", posted["message"])])
        self.assertEqual(got["message"], posted["message"])

    def test_wake_sends_waiting(self) -> None:
        """A wake-up for a client attached here sends what waits for it;
        for a client not attached here it does nothing."""
        recipient = self.attach("tel:+2")
        self.messaging.wake("tel:+9")
        self.store.known.add("tel:+1")
        # stored by another worker: straight into the store
        self.successResultOf(
            defer.ensureDeferred(
                self.store.post("tel:+1", "conn:x:1", "tel:+2", "acme", "content", b"x")
            )
        )
        self.assertEqual(recipient.of("message"), [])
        self.messaging.wake("tel:+2")
        [got] = recipient.of("message")
        self.assertEqual(got["content"], b"x")

    def test_wake_with_the_message(self) -> None:
        """A wake-up that carries the stored message sends it at once (no
        store read); the client confirms it as any other."""
        recipient = self.attach("tel:+2")
        self.store.known.add("tel:+1")
        posted = self.successResultOf(
            defer.ensureDeferred(
                self.store.post("tel:+1", "conn:x:1", "tel:+2", "acme", "content", b"y")
            )
        )
        later_ms = int(NOW * 1000) + NOTICE_MARGIN_MS + 1
        stored = Stored(posted.id, "tel:+1", "tel:+2", "acme", "content", later_ms, b"y")
        self.store.down = True  # not read: it comes from the notice
        self.messaging.wake("tel:+2", stored)
        self.store.down = False
        [got] = recipient.of("message")
        self.assertEqual((got["message"], got["content"]), (posted.id, b"y"))
        self.assertEqual(self.confirm(recipient), 1)

    def test_late_notice_sends_nothing_again(self) -> None:
        """A notice that arrives after the recipient's inbox was read (its
        attach, here) does not send the message again once it is confirmed:
        the store, not the notice, says what still waits."""
        self.store.known.add("tel:+1")
        posted = self.successResultOf(
            defer.ensureDeferred(
                self.store.post("tel:+1", "conn:x:1", "tel:+2", "acme", "content", b"z")
            )
        )
        recipient = self.attach("tel:+2")
        [got] = recipient.of("message")
        self.assertEqual(self.confirm(recipient), 1)
        stored = Stored(posted.id, "tel:+1", "tel:+2", "acme", "content", int(NOW * 1000), b"z")
        self.messaging.wake("tel:+2", stored)
        self.assertEqual(recipient.of("message"), [got])


class FakeProcess:
    """What spawnProcess hands back: a PID, stdin, signals."""

    def __init__(self, pid: int, proto: ProcessProtocol) -> None:
        self.pid = pid
        self.proto = proto
        self.stdin = b""
        self.stdin_closed = False
        self.signals: list[str] = []

    def write(self, data: bytes) -> None:
        self.stdin += data

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def end(self, status: int | None = 0) -> None:
        reason = ProcessDone(0) if status == 0 else ProcessTerminated(status)
        self.proto.processEnded(Failure(reason))


class Processes(Clock):
    """A clock that spawns fake processes."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[list[str], FakeProcess]] = []

    def spawnProcess(
        self, proto: ProcessProtocol, executable: str, args: list[str], **kw: Any
    ) -> FakeProcess:
        process = FakeProcess(100 + len(self.spawned), proto)
        self.spawned.append((args, process))
        proto.makeConnection(process)  # type: ignore[arg-type]
        return process


class BackoffTests(SynchronousTestCase):
    def test_delays(self) -> None:
        """Delays double per exit in a row up to the most; a worker that ran
        long enough starts over at the first delay."""
        backoff = Backoff(first=0.5, most=4.0, steady=60.0)
        exits, delays = 0, []
        for _ in range(6):
            delay, exits = backoff.delay(exits, 1.0)
            delays.append(delay)
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0])
        self.assertEqual(backoff.delay(exits, 60.0), (0.5, 1))


class SupervisorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = Processes()
        self.lines: list[str] = []
        self.supervisor = WorkerSupervisor(
            self.reactor,  # type: ignore[arg-type]
            2,
            lambda: b"payload",
            self.lines.append,
            command=lambda i: ["python", "-m", "worker", str(i)],
        )
        self.addCleanup(lambda: self.assertEqual(self.reactor.getDelayedCalls(), []))

    def process(self, n: int) -> FakeProcess:
        return self.reactor.spawned[n][1]

    def test_start(self) -> None:
        """Starting runs each worker with its index, gives it the payload
        on standard input and closes it; show system gets their PIDs."""
        self.supervisor.startService()
        self.assertEqual([a[-1] for a, _ in self.reactor.spawned], ["0", "1"])
        self.assertEqual(
            [(p.stdin, p.stdin_closed) for _, p in self.reactor.spawned], [(b"payload", True)] * 2
        )
        self.assertEqual(self.supervisor.rows(), [(0, 100), (1, 101)])
        self.stop_all()

    def test_log_lines(self) -> None:
        """A worker's standard output goes to the log a whole line at a
        time; what is left when it ends is written too."""
        self.supervisor.startService()
        proto = self.process(0).proto
        proto.outReceived(b"one\ntw")
        self.assertEqual(self.lines, ["one\n"])
        proto.outReceived(b"o\nthr")
        self.assertEqual(self.lines, ["one\n", "two\n"])
        proto.errReceived(b"a warning\n")
        self.stop_all()
        self.assertEqual(self.lines, ["one\n", "two\n", "thr\n"])

    def test_restart(self) -> None:
        """A worker that exits is started again after the backoff with a
        new PID; meanwhile show system has no PID for it."""
        self.supervisor.startService()
        exits: list[int] = []
        self.supervisor.on_exit.append(exits.append)
        self.process(1).end(9)
        self.assertEqual(exits, [1])
        self.assertEqual(self.supervisor.rows(), [(0, 100), (1, None)])
        self.assertEqual(self.supervisor.status(), "inactive (1 of 2 running)")
        self.reactor.advance(0.5)
        self.assertIs(self.supervisor.status(), True)
        self.assertEqual(self.reactor.spawned[2][0][-1], "1")
        self.assertEqual(self.supervisor.rows(), [(0, 100), (1, 102)])
        self.assertEqual(self.supervisor.restarts, 1)
        self.process(2).end(9)
        self.reactor.advance(0.5)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.reactor.advance(0.5)
        self.assertEqual(len(self.reactor.spawned), 4)
        self.flushLoggedErrors()
        self.stop_all()

    def test_stop(self) -> None:
        """Stopping sends SIGTERM, then SIGKILL to a worker still there
        after the grace; it fires when every worker has exited, and a
        worker waiting to start again is not started."""
        self.supervisor.startService()
        self.process(1).end(9)
        stopped = self.supervisor.stopService()
        self.assertEqual(self.process(0).signals, ["TERM"])
        self.assertNoResult(stopped)
        self.reactor.advance(STOP_GRACE)
        self.assertEqual(self.process(0).signals, ["TERM", "KILL"])
        self.process(0).end(9)
        self.successResultOf(stopped)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.flushLoggedErrors()

    def stop_all(self) -> None:
        stopped = self.supervisor.stopService()
        for _, process in self.reactor.spawned:
            if process.signals:
                process.end(0)
        self.successResultOf(stopped)


class DirectiveTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """``workers N|auto`` reads as a count (auto: one per core); the
        default is auto, and 1 is written out; anything else is refused
        with its line."""
        self.assertEqual(parse_crs_local_config("").workers, AUTO_WORKERS)
        one = parse_crs_local_config("workers 1\n")
        self.assertIn("workers 1", render_crs_local_config(one))
        self.assertEqual(parse_crs_local_config(render_crs_local_config(one)), one)
        self.assertEqual(parse_crs_local_config("workers 4\n").workers, 4)
        local = parse_crs_local_config("workers auto\n")
        self.assertEqual(local.workers, AUTO_WORKERS)
        self.assertEqual(worker_count(local, cores=8), 8)
        self.assertEqual(worker_count(local, cores=0), 1)
        self.assertEqual(worker_count(CrsLocalConfig(workers=3)), 3)
        for bad in ("workers 0", "workers -1", "workers many", "workers 257", "workers 1 2"):
            self.assertRaises(ConfigError, parse_crs_local_config, bad + "\n")
        self.assertEqual(parse_crs_local_config(render_crs_local_config(local)), local)

    def test_with_a_pool_and_peers(self) -> None:
        """workers 2 in a pool of two, with inter-working peers, starts (the
        parent keeps the pool and inter-working links)."""
        d = self.mktemp()
        os.makedirs(d)
        conf = os.path.join(d, "crs.conf")
        with open(conf, "w") as f:
            f.write(
                "[GLOBAL]\nkey k\n[POOL]\nhost crs1\nhost crs2\n"
                "ip crs1 10.0.0.1\nip crs2 10.0.0.2\n"
            )
        local = os.path.join(d, "crs-local.conf")
        with open(local, "w") as f:
            f.write("crsname crs1\nworkers 2\n")
        with open(os.path.join(d, "iw-crs.conf"), "w") as f:
            f.write("iw-crs 198.51.100.7 b7Hq2zWm4\n")
        options = Options()
        options.parseOptions(["--config", conf, "--local-config", local])
        self.assertEqual(len(options["crs"].pool.hosts), 2)
        self.assertEqual(len(options["iw"].config.instances), 1)


class AccountsHookTests(SynchronousTestCase):
    def test_on_change(self) -> None:
        """Creating, changing and deleting an account, and a reload, call
        the change hooks (the parent then tells its workers)."""
        store = AccountStore(self.mktemp())
        calls: list[int] = []
        store.on_change.append(lambda: calls.append(1))
        store.create("acme", SECRET)
        store.set_secret("acme", SECRET)
        store.set_blacklisted("acme", "tel:+1", True)
        store.delete("acme")
        store.reload()
        self.assertEqual(len(calls), 5)


class ReuseportTests(SynchronousTestCase):
    def test_shared_port(self) -> None:
        """Several SO_REUSEPORT sockets bind one port (the parent's held one
        and each worker's); a port held without the option is a clear
        start-up error."""
        held = reserve("127.0.0.1", 0)
        self.addCleanup(held.close)
        port = held.getsockname()[1]
        worker = reuseport_socket("127.0.0.1", port)
        self.addCleanup(worker.close)
        worker.listen(5)
        other = socket.socket()
        self.addCleanup(other.close)
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        error = self.assertRaises(
            StartupError, reuseport_socket, "127.0.0.1", other.getsockname()[1]
        )
        self.assertIn("client TLS", str(error))


class Published:
    """Siblings as the link uses them: what was published, where."""

    def __init__(self) -> None:
        self.notices: list[tuple[Any, str | None]] = []
        self.up = True

    def publish(self, notice: Any, to: str | None = None) -> bool:
        self.notices.append((notice, to))
        return self.up


class DirectoryTests(SynchronousTestCase):
    def test_moves_and_forget(self) -> None:
        """The latest attach wins; a detach from a worker the URI has left
        changes nothing; a worker forgotten takes only its own entries."""
        directory = AttachDirectory()
        directory.attached("tel:+1", "w1")
        directory.attached("tel:+2", "w1")
        directory.attached("tel:+1", "w2")
        directory.detached("tel:+1", "w1")
        self.assertEqual(directory.owner("tel:+1"), "w2")
        directory.forget("w1")
        self.assertEqual((directory.owner("tel:+1"), directory.owner("tel:+2")), ("w2", None))


class WorkerLinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        clock = Clock()
        self.registry = AttachRegistry("crs1", clock.seconds, TraceHub(clock.seconds))
        self.siblings = Published()
        self.link = WorkerLink("w1", "crs1", self.registry, self.siblings)  # type: ignore[arg-type]
        self.downs: list[tuple[str, bool]] = []
        self.link.on_link(lambda peer, up: self.downs.append((peer, up)))
        self.frames: list[tuple[str, dict[str, object]]] = []
        self.link.handle("call-talk", lambda peer, fields: self.frames.append((peer, fields)))

    def test_frames(self) -> None:
        """A frame goes to the peer worker's channel, False when it cannot
        go; a frame that arrives goes to its handler, an unknown or bad one
        is counted."""
        self.assertTrue(self.link.send("w2", "call-talk", {"session": "s"}))
        self.assertEqual(
            self.siblings.notices,
            [(Frame("w1", "call-talk", {"session": "s"}), "crs:crs1:workers:w2")],
        )
        self.siblings.up = False
        self.assertFalse(self.link.send("w2", "call-talk", {"session": "s"}))
        self.link.received(Frame("w2", "call-talk", {"session": "s"}))
        self.assertEqual(self.frames, [("w2", {"session": "s"})])
        self.link.received(Frame("w2", "call-nonsense", {}))

        def bad(peer: str, fields: dict[str, object]) -> None:
            raise WireError("bad frame")

        self.link.handle("call-hold", bad)
        self.link.received(Frame("w2", "call-hold", {}))
        self.assertEqual(self.link.refused, 2)

    def test_directory_from_notices(self) -> None:
        """Other workers' attach and detach notices fill the directory (its
        own are already in it); a worker's hello or gone forgets its
        clients and ends the calls through it; a hello is answered with
        this worker's attachments."""
        self.link.received(Attached("tel:+2", "w2", 5))
        self.assertEqual(self.link.owner("tel:+2"), "w2")
        self.link.received(Detached("tel:+2", "w2"))
        self.assertIsNone(self.link.owner("tel:+2"))
        self.link.received(Attached("tel:+3", "w2", 5))
        self.link.received(Gone("w2"))
        self.assertIsNone(self.link.owner("tel:+3"))
        self.assertEqual(self.downs, [("w2", False)])
        conn = Conn("tel:+1")
        self.registry.attach(Attachment("tel:+1", "acme", 0.0, "1", "192.0.2.1", 1, conn))
        self.link.client_attached("tel:+1", 0.0)
        self.siblings.notices.clear()
        self.link.received(Hello("w3"))
        self.assertEqual(self.siblings.notices, [(Attached("tel:+1", "w1", 0), None)])
        self.assertEqual(self.downs, [("w2", False), ("w3", False)])
        self.link.received(Hello("w1"))
        self.assertEqual(len(self.downs), 2)
        self.siblings.notices.clear()
        self.link.received(Ask("w3"))
        self.assertEqual(self.siblings.notices, [(Attached("tel:+1", "w1", 0), None)])
        self.assertEqual(len(self.downs), 2)

    def test_own_clients(self) -> None:
        """Its clients' attaches are published; a detach only when the URI
        is not attached here again (a replaced connection is no detach)."""
        conn = Conn("tel:+1")
        self.registry.attach(Attachment("tel:+1", "acme", 0.0, "1", "192.0.2.1", 1, conn))
        self.link.client_attached("tel:+1", 0.0)
        self.link.client_detached("tel:+1")
        self.registry.detach("tel:+1", conn, "gone")  # type: ignore[arg-type]
        self.link.client_detached("tel:+1")
        self.link.subscribed()
        self.assertEqual(
            [n for n, _ in self.siblings.notices],
            [Attached("tel:+1", "w1", 0), Detached("tel:+1", "w1"), Hello("w1")],
        )

    def test_subscribed_again(self) -> None:
        """After a reconnection a worker asks for the others' attachments
        and tells its own, without a hello (its calls go on)."""
        self.link.subscribed()
        conn = Conn("tel:+1")
        self.registry.attach(Attachment("tel:+1", "acme", 0.0, "1", "192.0.2.1", 1, conn))
        self.siblings.notices.clear()
        self.link.subscribed()
        self.assertEqual(
            [n for n, _ in self.siblings.notices], [Ask("w1"), Attached("tel:+1", "w1", 0)]
        )

    def test_attached_again_elsewhere(self) -> None:
        """A URI attached here and then on another worker: the older
        connection here is closed ``replaced``; a notice of an older attach
        elsewhere closes nothing."""
        closed: list[str] = []

        class Closing(Conn):
            def disconnect(self, reason: str) -> None:
                closed.append(reason)

        conn = Closing("tel:+1")
        self.registry.attach(Attachment("tel:+1", "acme", 10.0, "1", "192.0.2.1", 1, conn))
        self.link.received(Attached("tel:+1", "w2", 9_000))
        self.assertEqual(closed, [])
        self.link.received(Attached("tel:+1", "w2", 11_000))
        self.assertEqual(closed, ["replaced"])
        self.assertEqual(self.link.owner("tel:+1"), "w2")


class NoticeRoutingTests(SynchronousTestCase):
    """Where a worker sends a notice about a client, and what it does with
    one addressed to it (docs/workers.md, Slots)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = AttachRegistry("crs1", self.clock.seconds, TraceHub(self.clock.seconds))
        self.siblings = Published()
        self.link = WorkerLink("w1", "crs1", self.registry, self.siblings, 2, self.clock)  # type: ignore[arg-type]
        #: a URI of each worker's slots
        self.homes = {self.link.home(u): u for u in (f"tel:+{n}" for n in range(40))}

    def test_slots_cut_in_equal_ranges(self) -> None:
        """Each worker is the home of an equal consecutive range of slots."""
        self.assertEqual(
            [describe_worker(2, i, [(0, SLOTS - 1)]) for i in range(2)], ["0-8191", "8192-16383"]
        )
        self.assertEqual(self.link.home("tel:+1"), "w1" if slot_of("tel:+1") < 8192 else "w2")
        self.assertEqual(self.link.home("tel:+1;ext=2"), self.link.home("tel:+1"))

    @settings(max_examples=50, deadline=None)
    @given(
        st.integers(1, 64),
        st.lists(st.tuples(st.integers(0, SLOTS - 1), st.integers(0, SLOTS - 1)), max_size=4),
    )
    def test_cuts_partition_the_instance(self, count: int, ranges: list[tuple[int, int]]) -> None:
        """The workers' cuts cover the instance's slots, each slot once."""
        owned: list[tuple[int, int]] = []
        for a, b in sorted((min(a, b), max(a, b)) for a, b in ranges):
            if not owned or a > owned[-1][1]:  # (an instance's ranges do not overlap)
                owned.append((a, b))
        want = {s for a, b in owned for s in range(a, b + 1)}
        got: list[int] = []
        for index in range(count):
            text = describe_worker(count, index, owned)
            if text != "-":
                for part in text.split(","):
                    a, b = (int(n) for n in part.split("-"))
                    got += range(a, b + 1)
        self.assertEqual(sorted(got), sorted(want))

    def test_route(self) -> None:
        """A notice goes to the worker the client is attached to, else to
        the home worker of its slot (this one included)."""
        self.link.received(Attached(self.homes["w1"], "w2", 5))
        self.assertEqual(self.link.route(self.homes["w1"]), "crs:crs1:workers:w2")
        self.assertEqual(self.link.where(self.homes["w1"]), "w2")
        self.assertEqual(self.link.route(self.homes["w2"]), "crs:crs1:workers:w2")
        self.assertIsNone(self.link.where(self.homes["w2"]))
        other = next(u for u in (f"tel:+{n}" for n in range(40)) if self.link.home(u) == "w1")
        self.link.received(Detached(self.homes["w1"], "w2"))
        self.assertEqual(self.link.route(other), "crs:crs1:workers:w1")

    def test_addressed_here(self) -> None:
        """A notice addressed here: for a client of this worker it is taken;
        for one the directory places elsewhere it goes to every worker;
        for one attached nowhere it goes to every worker while the
        directory may still be filling, and is dropped after."""
        uri = self.homes["w1"]
        conn = Conn(uri)
        self.registry.attach(Attachment(uri, "acme", 0.0, "1", "192.0.2.1", 1, conn))
        self.link.client_attached(uri, 0.0)
        self.link.subscribed()
        self.siblings.notices.clear()
        self.assertTrue(self.link.mine(Wake(uri)))
        self.link.received(Attached("tel:+77", "w2", 5))
        self.assertFalse(self.link.mine(Delivered("tel:+77", "m-1")))
        self.assertFalse(self.link.mine(Wake("tel:+78")))
        self.assertEqual(
            self.siblings.notices, [(Delivered("tel:+77", "m-1"), None), (Wake("tel:+78"), None)]
        )
        self.clock.advance(SETTLE)
        self.assertFalse(self.link.mine(Wake("tel:+78")))
        self.assertEqual(len(self.siblings.notices), 2)
        self.assertEqual((self.link.passed, self.link.dropped), (2, 1))

    def test_push_for_the_parent(self) -> None:
        """A notice of the parent's for a client attached nowhere asks for its
        push wake-up (also while the directory fills, then passed on without
        the mark); one for a client attached elsewhere does not."""
        pushed: list[tuple[str, str]] = []
        self.link.on_absent = lambda account, uri: pushed.append((account, uri))
        self.link.subscribed()
        self.link.received(Attached("tel:+77", "w2", 5))
        self.siblings.notices.clear()
        self.assertFalse(self.link.mine(Wake("tel:+77", None, "acme")))
        self.assertFalse(self.link.mine(Wake("tel:+78", None, "acme")))
        self.assertEqual(pushed, [("acme", "tel:+78")])
        self.assertEqual(self.siblings.notices, [(Wake("tel:+77"), None), (Wake("tel:+78"), None)])
        self.clock.advance(SETTLE)
        self.assertFalse(self.link.mine(Wake("tel:+79", None, "acme")))
        self.assertEqual(pushed, [("acme", "tel:+78"), ("acme", "tel:+79")])

    def test_looks_again_after_a_drop(self) -> None:
        """A wake-up dropped for a client attached nowhere: when its attach
        reaches the directory only afterwards (read out of order by Redis),
        the client is woken after LOOK_AGAIN; one still attached nowhere is
        not; nothing is left scheduled."""
        self.link.subscribed()
        self.clock.advance(SETTLE)
        self.siblings.notices.clear()
        self.assertFalse(self.link.mine(Wake("tel:+78", None)))
        self.assertFalse(self.link.mine(Wake("tel:+79", None)))
        self.link.received(Attached("tel:+78", "w2", 5))
        self.siblings.notices.clear()
        self.clock.advance(LOOK_AGAIN)
        self.assertEqual(self.siblings.notices, [(Wake("tel:+78"), None)])
        self.assertEqual(self.link.woken_late, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class HeldPortTests(SynchronousTestCase):
    def test_taken_port(self) -> None:
        """The parent holds the client port for its workers when it starts;
        a port another socket listens on stops the start with one line."""
        import attrs

        from cryptify.config.crs_model import Endpoint
        from cryptify.plugins._crs_listeners import HeldClientPort
        from cryptify.plugins.crs import dev_crs_config

        other = socket.socket()
        self.addCleanup(other.close)
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        cfg = dev_crs_config(self.mktemp())
        taken = Endpoint("127.0.0.1", other.getsockname()[1])
        cfg = attrs.evolve(cfg, global_=attrs.evolve(cfg.global_, listen=taken))
        error = self.assertRaises(StartupError, HeldClientPort(cfg).startService)
        self.assertIn("cannot listen on 127.0.0.1:", str(error))
        free = attrs.evolve(cfg, global_=attrs.evolve(cfg.global_, listen=Endpoint("127.0.0.1", 0)))
        held = HeldClientPort(free)
        held.startService()
        self.assertIsNotNone(held.sock)
        held.stopService()
        self.assertIsNone(held.sock)
