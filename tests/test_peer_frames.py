"""No client can make a pool member or an inter-working peer drop its link.

A frame a peer's decoder refuses drops the link's connection (and a peer
whose connections are all closed for a second counts as down), so a
value a client chose must never reach a peer in a frame its decoder
refuses.  For each frame family that carries client values (messages:
``msg-post``, ``msg-stored``/``msg-refused``, ``msg-delivered``,
``msg-gone``; calls: ``call-invite`` and the steps, ``call-hangup``,
``call-hold``; both on the pool link and on the inter-working link) these
tests drive the local side with any client message the UMSG schema
accepts (its own limits are the strategies' bounds, and each message
goes through the UMSG codec as a client's does) and check that the
client is refused or that every frame sent decodes at the receiver (the
in-memory links hand each frame to the receiver's real handler: a
:class:`~cryptify.crs.pool.wire.WireError` fails the test), and that
every UMSG message a client is sent encodes.

Besides: a sender never sends a frame its peer's check refuses (it runs
that check itself), a handler's own error leaves the connection up, and
the largest values a client may send pass the workers' socket (AMP).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config.crs_model import CrsConfig, CrsGlobal
from cryptify.config.iw_crs import IwCrs, IwCrsConfig
from cryptify.crs.attach.registry import Attachment, AttachRegistry
from cryptify.crs.interwork.calls import IwCalls
from cryptify.crs.interwork.forward import IwForwarder
from cryptify.crs.interwork.link import IwLink, _InboundFactory
from cryptify.crs.interwork.routes_core import MAX_ACCOUNTS
from cryptify.crs.messages.store import MAX_CONTENT, Stored, retry_scope
from cryptify.crs.messages.wiring import Messaging
from cryptify.crs.pool.calls_core import PoolCalls
from cryptify.crs.pool.calls_frames import (
    HANGUP_FRAME,
    INVITE_FRAME,
    OFFERED_FRAME,
    CallHangup,
    CallInvite,
    decode_call,
)
from cryptify.crs.pool.core import HEARTBEAT_INTERVAL, JOIN_WAIT
from cryptify.crs.pool.forward import FORWARD_TIMEOUT, SWEEP_INTERVAL
from cryptify.crs.pool.forward_core import (
    MAX_REASON,
    REFUSED,
    STORED,
    decode_refused,
    encode_refused,
)
from cryptify.crs.pool.wire import encode_frame
from cryptify.crs.trace import TraceHub
from cryptify.crs.workers.pool_calls import pack
from cryptify.protocols import umsg
from cryptify.protocols.crs_workers import PoolFrame, PoolFrameIn, PoolInvite, PoolPost
from cryptify.protocols.umsg import (
    FROM_CLIENT,
    KEY_OCTETS,
    MAX_MIKEY,
    Field,
    Message,
    base_uri,
    decode_from_client,
    encode_from_client,
    encode_from_server,
)
from tests.calls_support import CallNode, CountingRelay, FakeCallLink
from tests.fakes import Att
from tests.forward_support import Conn, FakeLink, LinkPair, Net, Node, RecordingStore

NOW = 1_800_000_000.0

# -- client messages as the UMSG schema allows them --------------------------------


def _bounded(field: Field, strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return strategy.filter(lambda s: field.lo <= len(s) <= field.hi)


def _octets(lo: int, hi: int) -> st.SearchStrategy[bytes]:
    """Any octets of ``lo``..``hi``, with the bounds themselves often."""
    edges = st.sampled_from(sorted({lo, min(lo + 1, hi), max(hi - 1, lo), hi}))
    return st.one_of(
        st.binary(min_size=lo, max_size=min(hi, lo + 64)),
        st.tuples(edges, st.integers(0, 255)).map(lambda t: bytes([t[1]]) * t[0]),
    )


def field_values(field: Field) -> st.SearchStrategy[Any]:
    """Any value the UMSG schema accepts for ``field``."""
    if field.kind == "text":
        if field.pattern is None:
            return st.text(min_size=field.lo, max_size=field.hi)
        return _bounded(field, st.from_regex(field.pattern, fullmatch=True))
    if field.kind in ("uint", "int"):
        return st.integers(field.lo, field.hi)
    if field.kind == "bytes":
        return _octets(field.lo, field.hi)
    if field.kind == "bool":
        return st.booleans()
    if field.kind == "names":
        assert field.pattern is not None
        item = st.from_regex(field.pattern, fullmatch=True).filter(lambda s: 1 <= len(s) <= 64)
        return st.lists(item, min_size=field.lo, max_size=field.hi)
    raise AssertionError(f"no strategy for {field.kind}")


def _schema_field(type_: str, name: str) -> Field:
    return next(f for f in FROM_CLIENT[type_] if f.name == name)


def from_client(
    type_: str, force: tuple[str, ...] = (), **given_: st.SearchStrategy[Any]
) -> st.SearchStrategy[Message]:
    """A ``type_`` message as the CRS decodes it from a client: every
    required field and those named in ``force``, any of the optional
    ones, each within its limits (``given_``: strategies for some fields,
    by name with ``_`` for ``-``; a ``None`` drawn leaves the field out)."""
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in FROM_CLIENT[type_]:
        key = field.name.replace("-", "_") + ("_" if field.name == "from" else "")
        strategy = given_.get(key, field_values(field))
        wanted = field.required or field.name in force
        (required if wanted else optional)[field.name] = strategy

    def through_umsg(fields: dict[str, Any]) -> Message:
        present = {k: v for k, v in fields.items() if v is not None}
        return decode_from_client(encode_from_client(Message(type_, present)))

    return st.fixed_dictionaries(required, optional=optional).map(through_umsg)


#: Posts as clients make them: content (maybe a system message) or an ack.
POSTS = st.one_of(
    from_client("post", ("content",), ack=st.none()),
    from_client("post", ("ack",), content=st.none(), system=st.none()),
    from_client("post"),  # (content and ack, or neither: refused at once)
)
TELS = field_values(_schema_field("attach", "uri"))
ACCOUNTS = field_values(_schema_field("attach", "account"))
EXTENSION = st.from_regex(r"[0-9A-Za-z*#]{1,16}", fullmatch=True)


def shown(caller: str) -> st.SearchStrategy[str | None]:
    """An invite's ``from``: none, or the caller's own URI, with an
    extension or not (the CRS refuses any other at once)."""
    return st.one_of(st.none(), st.just(caller), EXTENSION.map(lambda e: f"{caller};{e}"))


def umsg_encodes(test: SynchronousTestCase, sent: list[Message]) -> None:
    """Every message a client was sent is a valid UMSG message."""
    for msg in sent:
        try:
            encode_from_server(msg)
        except umsg.UmsgError as exc:  # pragma: no cover - the failure itself
            test.fail(f"{msg.type} to a client does not encode: {exc}")


def answered(test: SynchronousTestCase, conn: Conn, request: int) -> str:
    """The one answer ``conn`` had to ``request``: ``posted`` or ``error``."""
    answers = [m for m in conn.sent if m.type in ("posted", "error") and m.get("id") == request]
    test.assertEqual(len(answers), 1, [m.type for m in conn.sent])
    return answers[0].type


def attach(registry: AttachRegistry, uri: str, account: str, clock: Clock) -> Conn:
    conn = Conn(uri, f"c{len(registry.matching())}:{uri}")
    conn.account = account
    registry.attach(Attachment(uri, account, clock.seconds(), "1", "192.0.2.1", 1, conn))
    return conn


SLOW = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- messages across the pool -----------------------------------------------------


class PoolMessageFrameTests(SynchronousTestCase):
    @SLOW
    @given(
        sender=TELS,
        account=ACCOUNTS,
        post=POSTS,
        cut_first=st.booleans(),
        answer_lost=st.booleans(),
    )
    def test_any_post_refused_or_decoded(
        self, sender: str, account: str, post: Message, cut_first: bool, answer_lost: bool
    ) -> None:
        """A post for a URI another member serves, with any fields the UMSG
        schema allows: forwarded (or kept here and handed over by the
        sweep), stored, delivered and confirmed, or refused to the client;
        each ``msg-post``, its answer, ``msg-delivered`` and ``msg-gone``
        decodes at the other member."""
        clock = Clock()
        clock.advance(NOW)
        net, confirmed = Net(), list[Stored]()
        a = Node(net, "crs1", clock, confirmed)
        b = Node(net, "crs2", clock, confirmed)
        recipient = base_uri(post.text("to"))
        for node in (a, b):
            node.link.default = "crs2"
            node.link.set_owner(sender, "crs1")
            node.store.known.update({sender, recipient})
        conn = attach(a.registry, sender, account, clock)
        held = (
            None if a.link.owner(recipient) == "crs1" else attach(b.registry, recipient, "x", clock)
        )
        if cut_first:
            net.set_link("crs1", "crs2", False)
        if answer_lost:
            net.lose_next.add(STORED)
        a.messaging.post(conn, post)  # type: ignore[arg-type]
        net.deliver()
        clock.advance(FORWARD_TIMEOUT)
        if cut_first:
            net.set_link("crs1", "crs2", True)
        for _ in range(3):
            net.deliver()
            clock.advance(SWEEP_INTERVAL)
        net.deliver()
        for node in (a, b):
            node.confirm_all()
            net.deliver()
        clock.advance(SWEEP_INTERVAL)
        net.deliver()
        answered(self, conn, post["id"])
        if held is not None:
            umsg_encodes(self, held.sent)
        umsg_encodes(self, conn.sent)
        for node in (a, b):
            node.forwarder.stopService()

    @given(reason=st.text(max_size=2 * MAX_REASON), code=st.sampled_from(["not-found", "x"]))
    def test_any_refusal_reason_decodes(self, reason: str, code: str) -> None:
        """A refusal's reason, whatever the store said (a Redis error with
        a line break, say), goes in a ``msg-refused`` the other member
        decodes."""
        refused = decode_refused(encode_refused(7, code, reason))
        self.assertEqual((refused.n, refused.code), (7, code))
        self.assertLessEqual(len(refused.reason), MAX_REASON)

    def test_refusal_with_a_line_break_reaches_the_sender(self) -> None:
        """The owner refuses with a reason holding a line break (a store's
        error text, say): the sender is refused, and the link stays (the
        frame decodes, the reason escaped)."""
        clock = Clock()
        clock.advance(NOW)
        net, confirmed = Net(), list[Stored]()
        a = Node(net, "crs1", clock, confirmed)
        b = Node(net, "crs2", clock, confirmed)
        for node in (a, b):
            node.link.default = "crs2"
            node.link.set_owner("tel:+100", "crs1")
        conn = attach(a.registry, "tel:+100", "acme", clock)
        sent: list[dict[str, object]] = []
        send = b.link.send

        def spy(peer: str, frame_type: str, fields: dict[str, object]) -> bool:
            if frame_type == REFUSED:
                sent.append(fields)
            return send(peer, frame_type, fields)

        b.link.send = spy  # type: ignore[method-assign]
        b.forwarder._check_post = lambda peer, m: ("internal", "ERR\nscript failed")  # type: ignore[method-assign]
        a.messaging.post(conn, umsg.message("post", id=1, to="tel:+200", content=b"x"))  # type: ignore[arg-type]
        net.deliver()
        [error] = conn.sent
        self.assertEqual((error.type, error["code"]), ("error", "internal"))
        self.assertEqual([f["reason"] for f in sent], ["ERR\\nscript failed"])
        for node in (a, b):
            node.forwarder.stopService()


# -- messages to another operator -------------------------------------------------


class _IwLink(FakeLink):
    """The inter-working link in memory: the pool's fake link, plus who
    runs each peer."""

    OPERATORS = {"crsA": "op-a", "crsB": "op-b"}

    def operator(self, peer: str) -> str | None:
        return self.OPERATORS.get(peer)

    def configured(self) -> list[str]:
        return [p for p in self.OPERATORS if p != self.me]


class _Operator:
    """One operator's CRS: a store, a registry, Messaging and IwForwarder."""

    def __init__(self, net: Net, name: str, accounts: frozenset[str], clock: Clock) -> None:
        self.clock = clock
        self.store = RecordingStore(clock.seconds, [], name)
        self.link = _IwLink(net, name)
        net.links[name] = self.link
        trace = TraceHub(clock.seconds)
        self.registry = AttachRegistry(name, clock.seconds, trace)
        self.messaging = Messaging(self.store, self.registry, trace, scheduler=clock)  # type: ignore[arg-type]
        self.registry.on_attach.append(self.messaging.attached)
        ids = (f"{name}-{n}" for n in itertools.count(1))
        self.forwarder = IwForwarder(
            self.link,
            self.store,  # type: ignore[arg-type]
            self.messaging,
            clock,
            lambda: accounts,
            new_id=lambda: next(ids),
        )
        self.forwarder.startService()

    def confirm_all(self) -> None:
        for attachment in self.registry.matching():
            conn = attachment.conn
            assert isinstance(conn, Conn)
            for got in conn.of("message")[conn.done :]:
                conn.done += 1
                delivered = umsg.message("delivered", message=got["message"])
                self.messaging.delivered(conn, delivered)  # type: ignore[arg-type]


class IwMessageFrameTests(SynchronousTestCase):
    @SLOW
    @given(
        sender=TELS,
        account=ACCOUNTS,
        post=from_client(
            "post", ("content", "to-account"), ack=st.none(), to_account=st.just("beta")
        ),
        cut_first=st.booleans(),
    )
    def test_any_post_refused_or_decoded(
        self, sender: str, account: str, post: Message, cut_first: bool
    ) -> None:
        """A post to another operator's account, with any fields the UMSG
        schema allows: stored there (or kept here and handed over), or
        refused; every frame decodes at the other operator."""
        clock = Clock()
        clock.advance(NOW)
        net = Net()
        a = _Operator(net, "crsA", frozenset({"alpha"}), clock)
        b = _Operator(net, "crsB", frozenset({"beta"}), clock)
        net.cut.add(frozenset(("crsA", "crsB")))
        net.set_link("crsA", "crsB", True)
        net.deliver()
        recipient = base_uri(post.text("to"))
        a.store.known.add(sender)
        b.store.known.add(recipient)
        conn = attach(a.registry, sender, account, clock)
        held = attach(b.registry, recipient, "beta", clock)
        if cut_first:
            net.set_link("crsA", "crsB", False)
        a.messaging.post(conn, post)  # type: ignore[arg-type]
        net.deliver()
        if cut_first:
            net.set_link("crsA", "crsB", True)
        for _ in range(3):
            net.deliver()
            clock.advance(SWEEP_INTERVAL)
        b.confirm_all()
        net.deliver()
        answered(self, conn, post["id"])
        umsg_encodes(self, conn.sent + held.sent)
        for op in (a, b):
            op.forwarder.stopService()

    def test_more_accounts_than_a_peer_takes(self) -> None:
        """A CRS hosting more accounts than an ``iw-accounts`` may carry
        tells its peers of the first :data:`MAX_ACCOUNTS` (and logs it):
        the peer decodes the frame and routes those (it dropped the link
        at every link-up)."""
        clock = Clock()
        clock.advance(NOW)
        net = Net()
        many = frozenset(f"acc{n:05}" for n in range(MAX_ACCOUNTS + 1))
        a = _Operator(net, "crsA", many, clock)
        b = _Operator(net, "crsB", frozenset({"beta"}), clock)
        net.cut.add(frozenset(("crsA", "crsB")))
        net.set_link("crsA", "crsB", True)
        net.deliver()
        self.assertEqual(b.forwarder.routes.peers_for("acc00000"), ["crsA"])
        self.assertEqual(b.forwarder.routes.peers_for(f"acc{MAX_ACCOUNTS:05}"), [])
        self.assertEqual(a.forwarder.routes.peers_for("beta"), ["crsB"])
        for op in (a, b):
            op.forwarder.stopService()


# -- calls across the pool and to another operator -----------------------------------


class _Node(CallNode):
    """One side of a call link; ``calls`` made by the test."""

    def sent(self) -> list[Message]:
        return [m for _, m in self.parties.sent]


def _party(node: _Node, uri: str, account: str) -> Att:
    att = Att(uri, account)
    node.parties.online[uri] = att
    node.parties.known_uris.add(uri)
    return att


def _pool_pair(caller: str, callee: str) -> tuple[Clock, FakeCallLink, _Node, _Node]:
    clock = Clock()
    link = FakeCallLink("crs1", "crs2")
    ids: Iterator[str] = (f"s{i}" for i in itertools.count(1))
    home = {caller: "crs1", callee: "crs2"}
    nodes = []
    for name in ("crs1", "crs2"):
        node = _Node(f"{name}.example", clock, ids)
        node.calls = PoolCalls(name, node.table, node.parties, link.end(name), home.get, clock)
        link.ends[name] = node.calls
        nodes.append(node)
    return clock, link, nodes[0], nodes[1]


class BridgingRelay(CountingRelay):
    """A relay whose sessions can be bridged to another operator's relay."""

    def __init__(self, host: str) -> None:
        super().__init__(host)
        self.bridges: list[tuple[str, str, str]] = []

    def bridge(self, session: str, leg: str, host: str, port: int, tag: bytes) -> Any:
        self.bridges.append((session, leg, host))
        return defer.succeed(True)


class _Accounts:
    def __init__(self, here: str, there: str, peer: str) -> None:
        self.here, self.there, self.peer = here, there, peer

    def remote(self, account: str) -> bool:
        return account == self.there

    def peer_for(self, account: str) -> str | None:
        return self.peer if account == self.there else None

    def hosts(self, account: str) -> bool:
        return account == self.here


def _iw_pair(relay_host: str = "192.0.2.7") -> tuple[Clock, FakeCallLink, _Node, _Node]:
    clock = Clock()
    link = FakeCallLink("crsA", "crsB")
    ids: Iterator[str] = (f"s{i}" for i in itertools.count(1))
    nodes = []
    for me, here, there, peer in (
        ("crsA", "alpha", "beta", "crsB"),
        ("crsB", "beta", "alpha", "crsA"),
    ):
        node = _Node(relay_host, clock, ids)
        node.relay = BridgingRelay(relay_host)
        node.table.relay = node.relay
        calls = IwCalls(node.table, node.parties, link.end(me), _Accounts(here, there, peer), clock)
        node.calls = calls
        link.ends[me] = calls
        nodes.append(node)
    return clock, link, nodes[0], nodes[1]


CALL = {
    "callee_hangs_up": st.booleans(),
    "hangup": from_client("hangup", session=st.just("s1")),
    "talk": from_client("talk", session=st.just("s1")),
    "hold": st.booleans(),
}


class CallFrameTests(SynchronousTestCase):
    def play(
        self,
        clock: Clock,
        link: FakeCallLink,
        a: _Node,
        b: _Node,
        caller: Att,
        invite: Message,
        callee_hangs_up: bool,
        hangup: Message,
        talk: Message,
        hold: bool,
    ) -> None:
        """``caller`` at ``a`` sends ``invite``; the callee at ``b`` answers
        (``talk``), one of them holds, then hangs up (``hangup``): every
        frame is handed to the other side's real handler."""
        a.table.invite(
            caller,
            invite["id"],
            invite.text("to"),
            invite.octets("mikey"),
            invite.optional_text("from"),
            invite.get("codecs"),
            invite.optional_text("to-account"),
        )
        link.flush()
        callee = base_uri(invite.text("to"))
        offered = [m for m in b.sent() if m.type == "invite"]
        if not offered:
            # refused at once: the caller was told
            self.assertTrue(any(m.type == "error" for m in a.sent()), [m.type for m in a.sent()])
            umsg_encodes(self, a.sent())
            return
        session = offered[0].text("session")
        if not b.calls.client_ringing(callee, session):
            b.table.ringing(callee, session)
        if not b.calls.client_talk(callee, session):
            b.table.talk(callee, session, talk.optional_text("codec"))
        link.flush()
        if hold and not b.calls.client_hold(callee, session, True):
            b.table.hold(callee, session, True)
        link.flush()
        code, reason = hangup.text("code"), hangup.optional_text("reason")
        if callee_hangs_up:
            if not b.calls.client_hangup(callee, session, code, reason):
                b.table.hangup(callee, session, code, reason)
        else:
            a.table.hangup(caller.uri, session, code, reason)
        link.flush()
        self.assertEqual((a.table.sessions, b.calls.forwarded), ({}, {}))
        umsg_encodes(self, a.sent() + b.sent())
        for call in clock.getDelayedCalls():
            call.cancel()

    @SLOW
    @given(
        data=st.data(),
        caller=TELS,
        account=ACCOUNTS,
        **CALL,  # type: ignore[arg-type]
    )
    def test_any_pool_call(
        self, data: st.DataObject, caller: str, account: str, **steps: Any
    ) -> None:
        """A call to a client of another member, with any invite, talk,
        hold and hangup the UMSG schema allows: each ``call-*`` frame
        decodes at the other member."""
        invite = data.draw(from_client("invite", from_=shown(caller)))
        callee = base_uri(invite.text("to"))
        clock, link, a, b = _pool_pair(caller, callee)
        att = _party(a, caller, account)
        if callee != caller:
            _party(b, callee, data.draw(ACCOUNTS))
        self.play(clock, link, a, b, att, invite, **steps)

    @SLOW
    @given(
        data=st.data(),
        caller=TELS,
        **CALL,  # type: ignore[arg-type]
    )
    def test_any_iw_call(self, data: st.DataObject, caller: str, **steps: Any) -> None:
        """A call to another operator's client (``to-account``), with any
        invite, talk, hold and hangup the UMSG schema allows: each frame
        decodes at the other operator."""
        invite = data.draw(
            from_client("invite", ("to-account",), from_=shown(caller), to_account=st.just("beta"))
        )
        callee = base_uri(invite.text("to"))
        clock, link, a, b = _iw_pair()
        att = _party(a, caller, "alpha")
        if callee != caller:
            _party(b, callee, "beta")
        self.play(clock, link, a, b, att, invite, **steps)

    def test_iw_relay_named_not_by_address(self) -> None:
        """A relay whose public host is a name: the callee's CRS offers the
        call without naming its relay leg (media through the caller's
        relay, as in a pool) -- the caller's CRS takes only an IP address
        there and would drop the link for a name."""
        clock, link, a, b = _iw_pair("relay.beta.example")
        caller = _party(a, "tel:+1", "alpha")
        _party(b, "tel:+2", "beta")
        invite = decode_from_client(
            encode_from_client(
                umsg.message("invite", id=1, to="tel:+2", mikey=b"k", to_account="beta")
            )
        )
        hangup = umsg.message("hangup", session="s1", code="normal")
        talk = umsg.message("talk", session="s1")
        self.play(clock, link, a, b, caller, invite, False, hangup, talk, False)
        offers = [fields for _, kind, fields in link.sent if kind == OFFERED_FRAME]
        self.assertEqual(offers, [{"session": "s1"}])
        self.assertEqual(b.relay.released, ["s1"])  # type: ignore[attr-defined]


# -- what the sender checks itself, a handler's own error, the workers' socket ----------


class SenderCheckTests(SynchronousTestCase):
    def test_sweep_keeps_what_the_owner_would_refuse(self) -> None:
        """A message kept here that the owner's check refuses (its sender
        not a URI: from a damaged backup, say) is not handed over: no
        ``msg-post`` goes, the message stays, the link with it."""
        clock = Clock()
        clock.advance(NOW)
        net = Net()
        a = Node(net, "crs1", clock, [])
        b = Node(net, "crs2", clock, [])
        for node in (a, b):
            node.link.default = "crs2"
        kept = a.store.post(
            "not a uri", "id:m1", "tel:+200", "acme", "content", b"x", message_id="m1"
        )
        self.successResultOf(defer.ensureDeferred(kept))
        a.forwarder.kick()
        net.deliver()
        self.assertEqual(net.queue + net.dropped, [])
        self.assertEqual(list(a.store.messages), ["m1"])
        self.assertEqual(b.store.messages, {})
        for node in (a, b):
            node.forwarder.stopService()

    def test_call_frame_the_peer_refuses_not_sent(self) -> None:
        """An invite the callee's instance would refuse (this relay's public
        host over the 255 characters of a UMSG ``relay-host``) is not sent:
        the caller is told ``not-connected`` and the link stays."""
        clock, link, a, b = _pool_pair("tel:+1", "tel:+2")
        a.relay = CountingRelay("h" * 256)
        a.table.relay = a.relay
        caller = _party(a, "tel:+1", "acme")
        _party(b, "tel:+2", "acme")
        a.table.invite(caller, 7, "tel:+2", b"mikey")
        self.assertEqual(link.queue, deque())
        [error] = [m for m in a.sent() if m.type == "error"]
        self.assertEqual((error["id"], error["code"]), (7, "not-connected"))
        self.assertEqual((a.table.sessions, a.relay.live), ({}, set()))
        self.assertEqual(clock.getDelayedCalls(), [])


class HandlerErrorTests(SynchronousTestCase):
    """A handler's own error is this side's bug, not the peer's bad frame:
    logged, and the connection stays for the frames that follow."""

    @staticmethod
    def handler(got: list[dict[str, object]]) -> Any:
        def handle(peer: str, fields: dict[str, object]) -> None:
            got.append(fields)
            if fields["boom"]:
                raise RuntimeError("a bug here")

        return handle

    def test_pool_link(self) -> None:
        pair = LinkPair()
        self.addCleanup(pair.stop)
        pair.flow(JOIN_WAIT + 3 * HEARTBEAT_INTERVAL)
        got: list[dict[str, object]] = []
        pair.links[1].handle("test-frame", self.handler(got))
        for boom in (True, False):
            self.assertTrue(pair.links[0].send("crs2", "test-frame", {"boom": boom}))
        pair.pump()
        self.assertEqual(got, [{"boom": True}, {"boom": False}])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual([w[5] for w in pair.wires], [False, False])

    def test_iw_link(self) -> None:
        reactor = MemoryReactorClock()
        peer = IwCrs("198.51.100.7", "SharedSecret42")
        link = IwLink(CrsConfig(global_=CrsGlobal()), IwCrsConfig((peer,)), reactor, "1")
        link.startService()
        self.addCleanup(link.stopService)
        address = IPv4Address("TCP", peer.ip, 40000)
        proto = _InboundFactory(link).buildProtocol(address)
        assert proto is not None
        transport = StringTransport(peerAddress=address)
        proto.makeConnection(transport)
        got: list[dict[str, object]] = []
        link.handle("test-frame", self.handler(got))
        proto.dataReceived(
            encode_frame("iw-hello", {"version": "9"})
            + encode_frame("test-frame", {"boom": True})
            + encode_frame("test-frame", {"boom": False})
        )
        self.assertEqual(got, [{"boom": True}, {"boom": False}])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(transport.disconnecting)


class WorkerSocketTests(SynchronousTestCase):
    """With ``workers N`` a worker's posts and call frames reach the pool
    and inter-working links through the parent's socket (AMP, at most
    65,535 octets a value): the largest a client may make goes through."""

    def test_largest_post(self) -> None:
        box = PoolPost.makeArguments(
            {
                "sender": "tel:+" + "9" * 15,
                "scope": retry_scope(b"\xff" * KEY_OCTETS, "c" * 24, 2**32 - 1),
                "to": "tel:+" + "9" * 15 + ";" + "#" * 16,
                "account": "a" * 20,
                "kind": "content",
                "data": b"\xff" * MAX_CONTENT,
                "via": "iw",
            },
            None,
        )
        self.assertGreater(len(box.serialize()), MAX_CONTENT)

    def test_largest_call_frames(self) -> None:
        invite = CallInvite(
            "s" * 64,
            "tel:+" + "9" * 15 + ";" + "#" * 16,
            "tel:+" + "8" * 15 + ";" + "*" * 16,
            "a" * 20,
            b"\xff" * MAX_MIKEY,
            "h" * 255,
            65535,
            b"t" * 16,
        )
        hangup = CallHangup("s" * 64, "z" * 32, "\U0001f4de" * 200, "callee")
        for frame_type, fields in (
            (INVITE_FRAME, invite.fields()),
            (HANGUP_FRAME, hangup.fields()),
        ):
            decode_call(frame_type, fields)
            data = pack(fields)
            for command in (PoolFrame, PoolFrameIn):
                box = command.makeArguments(
                    {"peer": "p" * 64, "frame_type": frame_type, "data": data, "via": "iw"}, None
                )
                box.serialize()
            PoolInvite.makeArguments(
                {"peer": "p" * 64, "data": data, "via": "iw"}, None
            ).serialize()
