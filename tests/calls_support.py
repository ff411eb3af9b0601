"""What the in-memory tests of calls across a link share: two CRS nodes,
each with its own session table, relay and link calls (the pool's
:class:`PoolCalls` or the inter-working :class:`IwCalls`, which extends
it), joined by a fake link that carries the real frames
(``wire.encode_frame`` / ``decode_frame``) in order and can be cut.

Used by tests/test_pool_calls.py and tests/test_iw_calls.py.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterator, Sequence

from twisted.internet import defer
from twisted.internet.task import Clock

from cryptify.crs.calls.core import SessionTable
from cryptify.crs.calls.session import RelayLegs
from cryptify.crs.pool.calls_core import FrameLink, PoolCalls
from cryptify.crs.pool.wire import Envelope, decode_frame, encode_frame
from cryptify.crs.trace import TraceHub
from tests.fakes import Att, FakeParties

#: One frame as the link saw it sent: (sender, frame type, fields).
Sent = tuple[str, str, dict[str, object]]


class CountingRelay:
    """Relay sessions allocated at once, each counted until released."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.live: set[str] = set()
        self.released: list[str] = []

    def allocate(self, session: str) -> defer.Deferred[RelayLegs]:
        self.live.add(session)
        return defer.succeed(RelayLegs(self.host, 5146, b"A" * 8, b"B" * 8))

    def release(self, session: str) -> None:
        self.live.discard(session)
        self.released.append(session)


class _End:
    """One node's end of a L{FakeCallLink}."""

    def __init__(self, link: FakeCallLink, me: str) -> None:
        self.link = link
        self.me = me

    def send(self, peer: str, frame_type: str, fields: dict[str, object]) -> bool:
        frame = encode_frame(frame_type, fields)
        if not self.link.up:
            return False
        self.link.sent.append((self.me, frame_type, dict(fields)))
        self.link.queue.append((self.me, frame))
        return True


class FakeCallLink:
    """Both nodes' ends of one link: frames are encoded, queued in order and
    decoded at the other end; a cut link drops what is queued."""

    def __init__(self, first: str, second: str) -> None:
        self.names = (first, second)
        self.up = True
        self.queue: deque[tuple[str, bytes]] = deque()
        self.ends: dict[str, PoolCalls] = {}
        self.sent: list[Sent] = []

    def end(self, me: str) -> FrameLink:
        return _End(self, me)

    def other(self, name: str) -> str:
        first, second = self.names
        return second if name == first else first

    def flush(self, limit: int | None = None) -> None:
        """Deliver queued frames (all, or at most ``limit``)."""
        count = 0
        while self.queue and (limit is None or count < limit):
            sender, frame = self.queue.popleft()
            (length,) = struct.unpack(">I", frame[:4])
            envelope = decode_frame(frame[4 : 4 + length])
            assert isinstance(envelope, Envelope)
            self.ends[self.other(sender)].receive(sender, envelope.type, envelope.fields)
            count += 1

    def _changed(self, up: bool) -> None:
        first, second = self.names
        self.ends[first].link_changed(second, up)
        self.ends[second].link_changed(first, up)

    def cut(self) -> None:
        self.up = False
        self.queue.clear()
        self._changed(False)

    def heal(self) -> None:
        self.up = True
        self._changed(True)


class CallNode:
    """One CRS: its attached clients, relay, traced sessions and table;
    a subclass makes ``calls`` and registers it with the link.  The
    client methods do what the attach wiring does with a client's
    messages: the link's calls first, else the local table."""

    calls: PoolCalls

    def __init__(self, relay_host: str, clock: Clock, ids: Iterator[str]) -> None:
        self.parties = FakeParties()
        self.relay = CountingRelay(relay_host)
        self.traced: list[str] = []
        hub = TraceHub(clock.seconds)
        hub.subscribe("session", self.traced.append)
        self.table = SessionTable(self.parties, self.relay, clock, hub, lambda: next(ids))

    def ringing(self, uri: str, session: str) -> None:
        if not self.calls.client_ringing(uri, session):
            self.table.ringing(uri, session)

    def talk(self, uri: str, session: str) -> None:
        if not self.calls.client_talk(uri, session):
            self.table.talk(uri, session)

    def hangup(self, uri: str, session: str, code: str = "normal") -> None:
        if not self.calls.client_hangup(uri, session, code, None):
            self.table.hangup(uri, session, code)

    def hold(self, uri: str, session: str, held: bool = True) -> None:
        if not self.calls.client_hold(uri, session, held):
            self.table.hold(uri, session, held)

    def resume(self, uri: str, session: str) -> None:
        self.hold(uri, session, False)

    def detach(self, uri: str) -> None:
        self.parties.online.pop(uri, None)
        self.table.detached(uri)
        self.calls.client_detached(uri)

    def attach(self, uri: str, account: str = "acme") -> None:
        self.parties.online[uri] = Att(uri, account)


def kinds(sent: Sequence[tuple[str, str, object]]) -> list[tuple[str, str]]:
    """(URI, kind) of each message (or sender, frame type of each frame)."""
    return [(uri, kind) for uri, kind, _ in sent]
