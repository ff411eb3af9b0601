"""``workers N``: the operator's commands, traces and metrics see the whole
instance (docs/workers.md).  Workers in memory, each answering its
parent's questions over a real AMP connection through ``iosim`` pumps;
time on a Clock."""

from __future__ import annotations

import argparse
import io
import ipaddress
import pickle
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config import CrsConfig, CrsLocalConfig
from cryptify.config.crs_model import Endpoint, KeepAlive
from cryptify.crs.accounts import AccountStore
from cryptify.crs.attach.registry import Attachment, AttachRegistry
from cryptify.crs.attach.wiring import Limits, UmsgServerFactory
from cryptify.crs.calls.core import SessionTable
from cryptify.crs.calls.session import EndedSession, Session
from cryptify.crs.messages.wiring import Messaging
from cryptify.crs.operator import cli
from cryptify.crs.operator.admin import CrsAdmin
from cryptify.crs.operator.state import CrsState
from cryptify.crs.pool.changes_apply import StateApplier
from cryptify.crs.trace import TraceHub
from cryptify.crs.workers.admin import (
    WorkerCommands,
    WorkerView,
    client_rules,
    with_rules,
    worker_socket,
)
from cryptify.crs.workers.fanout import (
    ANSWER_WAIT,
    TRACE_RETRY,
    Answers,
    WorkerViews,
    merge_accounts,
    merge_attach,
    merge_sessions,
    sum_counters,
)
from cryptify.crs.workers.wake import Siblings
from cryptify.events import Notifier
from cryptify.logs import LogFileService
from cryptify.ops.crs import DIRECTIVES, CrsFiles, CrsLive, CrsMetrics
from cryptify.ops.metrics import Queries
from cryptify.ops.reload import plan
from cryptify.plugins._crs_listeners import HeldClientPort, client_workers
from cryptify.plugins.crs import dev_crs_config
from cryptify.protocols import crs_admin
from cryptify.protocols.crs_workers import COUNTERS, Disconnect
from cryptify.protocols.mgmt import CommandFailed, ManagementClient, ManagementProtocol
from cryptify.service import StartupError
from tests.fakes import SECRET, FakeConnection, FakeParties, FakeRelay, MemoryMessageStore

NOW = 1_800_000_000.0


class Worker:
    """One worker process in memory: what serves its clients, and the
    connections its parent opened to it."""

    def __init__(self, clock: Clock, index: int) -> None:
        self.index = index
        self.trace = TraceHub(clock.seconds)
        self.registry = AttachRegistry("crs1", clock.seconds, self.trace)
        self.sessions = SessionTable(FakeParties(), FakeRelay(), clock, self.trace)  # type: ignore[arg-type]
        store = MemoryMessageStore(clock.seconds)
        self.messaging = Messaging(store, self.registry, self.trace, scheduler=clock)  # type: ignore[arg-type]
        self.view = WorkerView(self.registry, self.trace, self.sessions, self.messaging)
        self.pumps: list[iosim.IOPump] = []
        #: running (the supervisor says so), reachable, answering
        self.running = self.reachable = self.answering = True

    def attach(self, uri: str, since: float, port: int = 1) -> FakeConnection:
        conn = FakeConnection()
        self.registry.attach(Attachment(uri, "acme", since, "1.2", "192.0.2.7", port, conn))  # type: ignore[arg-type]
        return conn


class Instance:
    """A parent's view of ``count`` workers in memory."""

    def __init__(self, clock: Clock, count: int = 2) -> None:
        self.clock = clock
        self.workers = [Worker(clock, i) for i in range(count)]
        self.views = WorkerViews(clock, count, self.open, self.rows)
        self.state = CrsState("crs1", trace=TraceHub(clock.seconds), fanout=self.views)

    def rows(self) -> list[tuple[int, int | None]]:
        return [(w.index, 100 + w.index if w.running else None) for w in self.workers]

    def open(self, index: int, on_trace: Any) -> defer.Deferred[ManagementClient]:
        worker = self.workers[index]
        if not worker.reachable:
            return defer.fail(ConnectionRefusedError("no socket"))
        server = ManagementProtocol(lambda proto: WorkerCommands(worker.view, proto))
        client = ManagementClient(on_trace)
        worker.pumps.append(
            iosim.connect(
                server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client)
            )
        )
        return defer.succeed(client)

    def flush(self) -> None:
        for _ in range(4):
            for worker in self.workers:
                if worker.answering:
                    for pump in worker.pumps:
                        pump.flush()


def answer_of(case: SynchronousTestCase, instance: Instance, d: defer.Deferred[Any]) -> Any:
    instance.flush()
    return case.successResultOf(d)


class WholeInstanceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.instance = Instance(self.clock)
        self.w1, self.w2 = self.instance.workers
        self.admin = CrsAdmin(self.instance.state)

    def one_process(self) -> tuple[CrsAdmin, AttachRegistry, SessionTable]:
        """The same clients and calls in one process, for comparison."""
        trace = TraceHub(self.clock.seconds)
        registry = AttachRegistry("crs1", self.clock.seconds, trace)
        sessions = SessionTable(FakeParties(), FakeRelay(), self.clock, trace)  # type: ignore[arg-type]
        state = CrsState("crs1", trace=trace, registry=registry, sessions=sessions)
        return CrsAdmin(state), registry, sessions

    def test_show_attach_as_one_process(self) -> None:
        """``show attach`` lists the clients of every worker, sorted as one
        process sorts its own, in the same table."""
        self.w1.attach("tel:+3", NOW - 30, 3)
        self.w2.attach("tel:+1", NOW - 10, 1)
        self.w2.attach("tel:+2", NOW - 20, 2)
        one, registry, _ = self.one_process()
        for uri, since, port in (("tel:+1", 10, 1), ("tel:+2", 20, 2), ("tel:+3", 30, 3)):
            conn = FakeConnection()
            registry.attach(Attachment(uri, "acme", NOW - since, "1.2", "192.0.2.7", port, conn))  # type: ignore[arg-type]
        whole = answer_of(self, self.instance, self.admin.show_attach())
        alone = self.successResultOf(one.show_attach())
        self.assertEqual(whole, alone)
        self.assertEqual([r[0] for r in whole["table"]["rows"]], ["tel:+1", "tel:+2", "tel:+3"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_show_session_as_one_process(self) -> None:
        """``show session`` lists every worker's calls: the live ones by
        their start, then those ended, by their end, as one process."""
        calls = [
            (self.w2, Session("s1", "tel:+1", "tel:+2", "tel:+2", "acme", NOW - 50, "talk")),
            (self.w1, Session("s2", "tel:+3", "tel:+4", "tel:+4", "acme", NOW - 70, "invite")),
            (self.w2, Session("s3", "tel:+5", "tel:+6", "tel:+6", "acme", NOW - 5, "ringing")),
        ]
        ended = [
            (
                self.w1,
                EndedSession("tel:+7", "tel:+8", NOW - 100, NOW - 40, "hangup(normal, caller)"),
            ),
            (self.w2, EndedSession("tel:+9", "tel:+1", NOW - 90, NOW - 30, "responder not found")),
            (self.w1, EndedSession("tel:+2", "tel:+3", NOW - 60, NOW - 20, "hangup(busy, callee)")),
        ]
        one, _, sessions = self.one_process()
        for worker, session in calls:
            worker.sessions.sessions[session.id] = session
            sessions.sessions[session.id] = session
        for worker, done in ended:
            worker.sessions.ended.append(done)
            sessions.ended.append(done)
        whole = answer_of(self, self.instance, self.admin.show_session())
        alone = self.successResultOf(one.show_session())
        self.assertEqual(whole, alone)
        self.assertEqual(len(whole["table"]["rows"]), 6)

    def test_show_account_per_worker(self) -> None:
        """``show account`` has the parent's row (``app:crs``) and one per
        worker (``app:attach/K``, its PID, the accounts it has loaded), as
        the manual's SERVER MODULE PID LOADED ACCOUNTS; a worker that does
        not answer is left out and named."""
        parent = self.instance.state.accounts = AccountStore(self.mktemp())
        parent.create("acme", SECRET)
        parent.create("beta", SECRET)
        for worker, names in ((self.w1, ["acme", "beta"]), (self.w2, ["acme"])):
            worker.view.accounts = AccountStore(self.mktemp())
            worker.view.pid = 100 + worker.index
            for name in names:
                worker.view.accounts.create(name, SECRET)
        answer = answer_of(self, self.instance, self.admin.show_account())
        self.assertEqual(answer["table"]["columns"], ["SERVER", "MODULE", "PID", "LOADED ACCOUNTS"])
        pid = str(self.instance.state.pid)
        self.assertEqual(
            answer["table"]["rows"],
            [
                ["crs1", "app:crs", pid, "acme,beta"],
                ["crs1", "app:attach/1", "100", "acme,beta"],
                ["crs1", "app:attach/2", "101", "acme"],
            ],
        )
        self.assertNotIn("missing", answer)
        self.w1.running = False
        answer = answer_of(self, self.instance, self.admin.show_account())
        self.assertEqual([r[1] for r in answer["table"]["rows"]], ["app:crs", "app:attach/2"])
        self.assertEqual(answer["missing"], "worker 1 did not answer: its accounts are not listed")

    def test_show_account_one_process(self) -> None:
        """Without workers ``show account`` is the one process's row."""
        state = CrsState("crs1", accounts=AccountStore(self.mktemp()))
        state.accounts.create("acme", SECRET)
        answer = self.successResultOf(CrsAdmin(state).show_account())
        self.assertEqual(answer["table"]["rows"], [["crs1", "app:attach", str(state.pid), "acme"]])

    def test_pool_changes_reach_the_workers(self) -> None:
        """A pool-wide purge, account deletion or blacklist from another
        member closes the workers' clients too; the purge counts them."""
        self.instance.state.accounts = AccountStore(self.mktemp())
        self.instance.state.accounts.create("acme", SECRET)
        applier = StateApplier(self.instance.state)
        a = self.w1.attach("tel:+1", NOW)
        b = self.w2.attach("tel:+2", NOW)
        self.assertEqual(answer_of(self, self.instance, applier.purge("acme", "tel:+1")), 1)  # type: ignore[arg-type]
        self.assertEqual((a.reasons, b.reasons), (["purged"], []))
        self.instance.state.accounts.set_blacklisted("acme", "tel:+2", True)
        applier.enforce_blacklists()
        self.instance.flush()
        self.assertEqual(b.reasons, ["blacklisted"])
        c = self.w2.attach("tel:+3", NOW)
        applier.delete_account("acme")
        self.instance.flush()
        self.assertEqual(c.reasons, ["account deleted"])

    def test_holds_for_the_sweep(self) -> None:
        """In a pool the parent's sweep learns the URIs the workers hold,
        only when every running worker answers and follows the current slot
        view (a worker not running holds none)."""
        self.w1.attach("tel:+1", NOW)
        self.w2.attach("tel:+2", NOW)
        keys = {0: "1/crs1/7", 1: "1/crs1/7"}
        for worker in (self.w1, self.w2):
            worker.view.pool_key = lambda i=worker.index: keys[i]

        def holds(key: str) -> defer.Deferred[frozenset[str] | None]:
            return defer.ensureDeferred(self.instance.views.holds(key))

        self.assertEqual(answer_of(self, self.instance, holds("1/crs1/7")), {"tel:+1", "tel:+2"})
        keys[1] = "0/crs2/3"
        self.assertIsNone(answer_of(self, self.instance, holds("1/crs1/7")))
        self.w2.running = False
        self.assertEqual(answer_of(self, self.instance, holds("1/crs1/7")), {"tel:+1"})
        self.w1.reachable = False
        self.assertIsNone(answer_of(self, self.instance, holds("1/crs1/7")))
        self.flushLoggedErrors()

    def test_worker_late_is_named(self) -> None:
        """A worker that does not answer within the bound is left out and
        named; the others' rows are there.  Nothing waits longer."""
        self.w1.attach("tel:+1", NOW)
        self.w2.attach("tel:+2", NOW)
        self.w2.answering = False
        d = self.admin.show_attach()
        self.instance.flush()
        self.assertNoResult(d)
        self.clock.advance(ANSWER_WAIT)
        answer = self.successResultOf(d)
        self.assertEqual([r[0] for r in answer["table"]["rows"]], ["tel:+1"])
        self.assertEqual(answer["missing"], "worker 2 did not answer: its clients are not listed")
        self.assertEqual(self.instance.views.unanswered, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.flushLoggedErrors()

    def test_workers_down_are_named_at_once(self) -> None:
        """A worker not running is not waited for, nor one whose socket
        refuses the connection."""
        self.w1.running = False
        self.w2.reachable = False
        answer = answer_of(self, self.instance, self.admin.show_session())
        self.assertEqual(answer["table"]["rows"], [])
        self.assertEqual(
            answer["missing"], "workers 1, 2 did not answer: their calls are not listed"
        )

    def test_purge_reaches_every_worker(self) -> None:
        """``purge clients`` disconnects the account's clients on every worker."""
        self.instance.state.accounts = AccountStore(self.mktemp())
        self.instance.state.accounts.create("acme", SECRET)
        a = self.w1.attach("tel:+1", NOW)
        b = self.w2.attach("tel:+2", NOW)
        answer = answer_of(self, self.instance, self.admin.purge_clients("acme"))
        self.assertEqual(answer, {"purged": 2})
        self.assertEqual((a.reasons, b.reasons), (["purged"], ["purged"]))
        answer = answer_of(self, self.instance, self.admin.purge_client("acme", "tel:+1"))
        self.assertEqual(answer, {"purged": 0})

    def test_account_deleted_and_blacklists(self) -> None:
        """A client of a deleted account, or one blacklisted (now, or by a
        reload), is disconnected on whichever worker it is attached to,
        with the reason one process gives."""
        accounts = self.instance.state.accounts = AccountStore(self.mktemp())
        accounts.create("acme", SECRET)
        a = self.w1.attach("tel:+1", NOW)
        b = self.w2.attach("tel:+2", NOW)
        c = self.w2.attach("tel:+3", NOW)
        answer = answer_of(self, self.instance, self.admin.add_blacklist("acme", "tel:+2"))
        self.assertEqual(answer, {"disconnected": 1})
        self.assertEqual((a.reasons, b.reasons, c.reasons), ([], ["blacklisted"], []))
        # a reload finds a client blacklisted in the files
        accounts.set_blacklisted("acme", "tel:+1", True)
        self.admin.reload_here()
        self.instance.flush()
        self.assertEqual(a.reasons, ["blacklisted"])
        answer = answer_of(self, self.instance, self.admin.delete_account("acme"))
        self.assertEqual(answer, {"disconnected": 1})
        self.assertEqual(c.reasons, ["account deleted"])

    def test_worker_refuses_other_reasons(self) -> None:
        """A worker closes connections only for the reasons one process has."""
        self.w1.attach("tel:+1", NOW)
        d = self.instance.views.ask_one(0, Disconnect, account="acme", reason="whatever")
        self.instance.flush()
        self.failureResultOf(d)
        self.assertEqual(len(self.w1.registry), 1)
        self.flushLoggedErrors()

    def test_trace_follows_every_worker(self) -> None:
        """One ``trace`` gets every worker's lines in its stream; a worker
        that goes away is traced again once it is back; when the operator
        leaves, every worker's trace ends."""
        # the operator's connection to the parent
        lines: list[str] = []
        parent = ManagementProtocol(lambda proto: CrsAdmin(self.instance.state, proto))
        cli_side = ManagementClient(lines.append)
        pump = iosim.connect(
            parent, iosim.makeFakeServer(parent), cli_side, iosim.makeFakeClient(cli_side)
        )
        d = cli_side.callRemote(crs_admin.Trace, element="attach")
        pump.flush()
        self.instance.flush()
        pump.flush()
        self.assertIsNone(self.successResultOf(d).get("missing"))
        self.w1.trace.emit("attach", "tel:+1", "attached")
        self.w2.trace.emit("attach", "tel:+2", "attached")
        self.instance.flush()
        pump.flush()
        self.assertEqual([line.split(", ")[2] for line in lines], ["tel:+1", "tel:+2"])
        # worker 2 dies: its connection closes, and it is not there for a while
        self.w2.reachable = False
        for p in self.w2.pumps:
            p.server.transport.loseConnection()  # type: ignore[attr-defined]
        self.instance.flush()
        self.w2.pumps.clear()
        self.clock.advance(TRACE_RETRY)
        self.w2.reachable = True
        self.clock.advance(TRACE_RETRY)
        self.instance.flush()
        self.w2.trace.emit("attach", "tel:+2", "attached")
        self.instance.flush()
        pump.flush()
        self.assertEqual(len(lines), 3)
        # the operator stops
        cli_side.transport.loseConnection()
        pump.flush()
        self.instance.flush()
        self.assertFalse(self.w1.trace.active("attach") or self.w2.trace.active("attach"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.flushLoggedErrors()

    def test_trace_names_a_worker_not_traced(self) -> None:
        """A worker that cannot be traced when the trace starts is named in
        the answer, and traced once it answers."""
        self.w2.reachable = False
        pushed: list[str] = []
        started = defer.ensureDeferred(self.instance.views.trace("message", pushed.append))
        self.instance.flush()
        stop, missing = self.successResultOf(started)
        self.assertEqual(
            missing, "worker 2 did not answer: its events are not traced until it answers"
        )
        self.w2.reachable = True
        self.clock.advance(TRACE_RETRY)
        self.instance.flush()
        self.assertTrue(self.w2.trace.active("message"))
        stop()
        self.instance.flush()
        self.assertFalse(self.w2.trace.active("message"))

    def test_counters(self) -> None:
        """A worker's counters are those of its parts; the metrics add
        every worker's that answered to the parent's own."""
        self.w1.attach("tel:+1", NOW)
        self.w1.messaging.counters["posted"] = 5
        self.w2.sessions.counters["invites"] = 2
        got = [
            answer_of(self, self.instance, self.instance.views.counters_of(i)()) for i in range(2)
        ]
        self.assertEqual(got[0]["counters"]["attached"], 1)
        self.assertEqual(sorted(got[0]["counters"]), sorted(COUNTERS))
        queries = Queries(self.clock, {})
        queries.values = {"worker_w1": got[0], "worker_w2": got[1]}
        parent = self.one_process()
        metrics = CrsMetrics(
            parent[1],
            UmsgServerFactory(Any, self.clock),  # type: ignore[arg-type]
            parent[2],
            self.instance.workers[0].messaging,
            _Expired(),  # type: ignore[arg-type]
            {},
            queries,
            workers=("worker_w1", "worker_w2"),
        )
        values = {f.name: f.samples[0].value for f in metrics.families() if f.samples}
        self.assertEqual(values["cryptify_crs_attached_clients"], 1)
        self.assertEqual(values["cryptify_crs_call_invites"], 2)
        # the parent's messaging is worker 1's here: counted once as its own, once as theirs
        self.assertEqual(values["cryptify_crs_messages_posted"], 10)

    def test_socket_beside_management(self) -> None:
        """A worker's socket is named after the management socket; a
        management path too long for it stops the start with one line,
        before any worker runs."""
        self.assertEqual(worker_socket("/run/crs/crs.sock", 1), "/run/crs/crs.sock.w2")
        cfg = dev_crs_config("/tmp")
        long_path = "/run/" + "c" * 96 + ".sock"
        cfg = attrs.evolve(cfg, global_=attrs.evolve(cfg.global_, management=long_path))
        error = self.assertRaises(StartupError, HeldClientPort(cfg, 12).startService)
        self.assertIn(f"{long_path}.w12 (a worker's socket", str(error))


class _Expired:
    expired = 0


class MergeTests(SynchronousTestCase):
    json = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    )

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.dictionaries(st.sampled_from(["table", "sessions", "counters"]), json)))
    def test_hostile_answers(self, answers: list[dict[str, Any]]) -> None:
        """Whatever a worker answers, merging takes what has the right shape
        and never raises."""
        got = Answers(list(enumerate(answers)), [])
        for row in merge_attach(got) + merge_sessions(got) + merge_accounts(got):
            self.assertTrue(all(isinstance(c, str) for c in row))
        self.assertEqual(sorted(sum_counters(answers)), sorted(COUNTERS))


class CliTests(SynchronousTestCase):
    """crs-cli prints a partial answer and says which workers are missing."""

    def run_action(self, argv: list[str], answer: dict[str, Any]) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        args: argparse.Namespace = cli.build_parser(err).parse_args(argv)

        class Client:
            lost: defer.Deferred[None] = defer.succeed(None)

            async def call(self, command: Any, **kwargs: Any) -> dict[str, Any]:
                return answer

        status = self.successResultOf(
            defer.ensureDeferred(cli.remote_action(args, out, err, lambda: True)(Client()))
        )
        return status, out.getvalue(), err.getvalue()

    def test_show_with_missing(self) -> None:
        """The table as always on standard output; the note on standard
        error, and status 1: the answer is not the whole instance's."""
        table = {"columns": ["URI", "ACCOUNT"], "rows": [["tel:+1", "acme"]]}
        whole = self.run_action(["show", "attach"], {"table": table})
        part = self.run_action(["show", "attach"], {"table": table, "missing": "worker 2 late"})
        self.assertEqual((whole[0], whole[2]), (0, ""))
        self.assertEqual(part, (1, whole[1], "crs-cli: worker 2 late\n"))

    def test_trace_with_missing(self) -> None:
        """A trace names the workers not traced yet and goes on."""
        status, _, err = self.run_action(["trace", "attach"], {"missing": "worker 1 late"})
        self.assertEqual((status, err), (0, "crs-cli: worker 1 late\n"))


class ClientRulesTests(SynchronousTestCase):
    """A reload's client limits and keep-alive rules reach every worker,
    and the workers that start afterwards."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.old = CrsFiles(CrsConfig(), CrsLocalConfig())
        g = self.old.crs.global_
        self.new_g = attrs.evolve(
            g,
            client_max_message=2048,
            client_max_unattached=5,
            keep_alive=(KeepAlive(ipaddress.ip_network("10.0.0.0/8"), "tcp", 60000),),
            listen=Endpoint("192.0.2.1", 1),  # not live: stays as served
        )
        self.new = CrsFiles(attrs.evolve(self.old.crs, global_=self.new_g), self.old.local)

    def test_reload_tells_the_workers(self) -> None:
        """CrsLive hands the new GLOBAL section on when a client limit or
        the keep-alive rules changed, and only then."""
        told: list[Any] = []
        factory = UmsgServerFactory(Any, self.clock)  # type: ignore[arg-type]
        live = CrsLive(factory, Notifier(self.clock, None), lambda: {"problems": []}, told.append)
        live.apply(plan(self.old, self.new, DIRECTIVES))
        live.apply(plan(self.new, self.new, DIRECTIVES))
        [g] = told
        self.assertEqual((g.client_max_message, g.keep_alive), (2048, self.new_g.keep_alive))
        self.assertEqual(g.listen, self.old.crs.global_.listen)  # a restart's

    def test_workers_take_the_rules(self) -> None:
        """Each running worker takes the rules for connections from then
        on; garbage changes nothing."""
        instance = Instance(self.clock)
        g = self.old.crs.global_
        for worker in instance.workers:
            worker.view.clients = UmsgServerFactory(Any, self.clock, Limits.from_config(g))  # type: ignore[arg-type]
            worker.view.global_ = g
        d = instance.views.send_rules(client_rules(self.new_g))
        instance.flush()
        self.successResultOf(d)
        for worker in instance.workers:
            clients = worker.view.clients
            assert clients is not None
            self.assertEqual((clients.limits.max_message, clients.limits.max_unattached), (2048, 5))
            rule = clients.keepalive_rule("10.1.2.3")
            self.assertEqual(rule.interval_ms if rule else None, 60000)
            assert worker.view.global_ is not None
            self.assertEqual(worker.view.global_.listen, g.listen)

    @settings(max_examples=200, deadline=None)
    @given(MergeTests.json)
    def test_garbage_rules(self, rules: Any) -> None:
        """What is not rules is refused with a reason, never a crash."""
        g = CrsConfig().global_
        try:
            taken = with_rules(g, rules)
        except CommandFailed:
            return
        self.assertEqual(taken.listen, g.listen)

    def test_workers_started_later(self) -> None:
        """A worker started after the reload reads the new rules (and the
        rest of crs.conf as the parent serves it)."""
        state = CrsState("crs1", accounts=AccountStore(self.mktemp()))
        reactor = MemoryReactorClock()
        local = CrsLocalConfig(workers=2)
        _held, supervisor = client_workers(
            self.old.crs,
            local,
            reactor,  # type: ignore[arg-type]
            LogFileService(self.mktemp(), "crs.log", "crs"),
            state,
            Siblings(lambda: None, "crs:crs1:workers"),  # type: ignore[arg-type,return-value]
        )
        assert state.worker_rules is not None
        state.worker_rules(self.new_g)
        served, _, iw = pickle.loads(supervisor.payload())
        self.assertFalse(iw)
        self.assertEqual(served.global_.client_max_message, 2048)
        self.assertEqual(served.global_.keep_alive, self.new_g.keep_alive)
        self.assertEqual(served.global_.listen, self.old.crs.global_.listen)
        self.flushLoggedErrors()
