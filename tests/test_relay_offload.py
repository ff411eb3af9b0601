"""The relay core with a kernel path: what it pushes, pulls and withdraws, and
that a core fronted by the kernel path decides every datagram as a core alone.

:class:`ModelPath` is ``cryptify/crs/relay/bpf/relay.bpf.c`` in Python, over
the core's addresses and clock (the real program runs against the same
scenarios in ``tests/interop/test_relay_kernel.py``).
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.relay.core import CREDIT_FACTOR, Address, Drop, RelayCore, RelaySession
from cryptify.protocols.relay_packet import MAX_PACKET, MIN_PACKET, TAG_SIZE

ALICE = ("198.51.100.10", 40000)
BOB = ("203.0.113.20", 50000)
MALLORY = ("192.0.2.66", 6666)
RTP = b"\x80\x00" + bytes(170)


@attrs.define
class KernelLeg:
    source: Address
    dest: Address
    peer: bytes
    credit: int
    seen: float
    packets: int
    bytes: int


@attrs.define
class ModelPath:
    """The kernel program's decision, and the loader's push/pull/withdraw."""

    credit_cap: int = 65536
    legs: dict[bytes, KernelLeg] = attrs.Factory(dict)
    stats: dict[str, int] = attrs.Factory(lambda: {"RX": 0, "TXB": 0, "ERRNODEST": 0})
    refuse: bool = False
    log: list[tuple[str, int]] = attrs.Factory(list)

    def push(self, session: RelaySession, now: float) -> bool:
        self.log.append(("push", session.ident))
        if self.refuse:
            return False
        for leg in (session.a, session.b):
            assert leg.source is not None and leg.dest is not None
            self.legs[leg.tag] = KernelLeg(
                leg.source, leg.dest, leg.peer.tag, leg.credit, leg.seen, leg.packets, leg.bytes
            )
        return True

    def pull(self, session: RelaySession, now: float) -> None:
        for leg in (session.a, session.b):
            mine = self.legs.get(leg.tag)
            if mine is not None:
                leg.credit, leg.packets, leg.bytes = mine.credit, mine.packets, mine.bytes
                leg.seen = max(leg.seen, mine.seen)

    def withdraw(self, session: RelaySession) -> None:
        self.log.append(("withdraw", session.ident))
        for leg in (session.a, session.b):
            self.legs.pop(leg.tag, None)

    def counters(self) -> dict[str, int]:
        return dict(self.stats)

    def forward(self, datagram: bytes, source: Address, now: float) -> Any:
        """(dest, packet), a Drop, or None: passed on to the userspace relay."""
        size = len(datagram)
        if not MIN_PACKET <= size <= MAX_PACKET:
            return None
        leg = self.legs.get(datagram[:TAG_SIZE])
        if leg is None or leg.source != source:
            return None
        peer = self.legs[leg.peer]
        self.stats["RX"] += 1
        leg.seen = now
        leg.packets += 1
        leg.bytes += size
        leg.credit = min(leg.credit + size * CREDIT_FACTOR, self.credit_cap)
        if peer.credit < size - TAG_SIZE:
            self.stats["ERRNODEST"] += 1
            return Drop.PEER_NO_CREDIT
        peer.credit -= size - TAG_SIZE
        self.stats["TXB"] += 1
        return peer.dest, datagram[TAG_SIZE:]


class Fronted:
    """A core with the model in front of it, fed like the media port."""

    def __init__(self, **kwargs: Any) -> None:
        self.path = ModelPath()
        self.core = RelayCore(offload=self.path, **kwargs)
        self.session = self.core.add(self.core.open_link("crs1", 0.0), 0.0)

    def packet(self, datagram: bytes, source: Address, now: float) -> Any:
        result = self.path.forward(datagram, source, now)
        if result is None:
            result = self.core.packet(datagram, source, now)
            if isinstance(result, tuple):
                self.core.counters.txb += 1
        return result

    def a(self, source: Address = ALICE, now: float = 0.0, payload: bytes = RTP) -> Any:
        return self.packet(self.session.a.tag + payload, source, now)

    def b(self, source: Address = BOB, now: float = 0.0, payload: bytes = RTP) -> Any:
        return self.packet(self.session.b.tag + payload, source, now)


class OffloadTests(SynchronousTestCase):
    def test_pushed_once_both_legs_latched(self) -> None:
        """Nothing is pushed while a leg is unlatched; the packet that latches the second leg
        is decided by the core, then the session is pushed and the kernel takes the rest."""
        relay = Fronted()
        self.assertIs(relay.a(), Drop.PEER_NOT_LATCHED)
        self.assertEqual(relay.path.log, [])
        self.assertEqual(relay.b(), (ALICE, RTP))
        self.assertEqual(relay.path.log, [("push", relay.session.ident)])
        self.assertTrue(relay.session.a.kernel and relay.session.b.kernel)
        self.assertEqual(relay.a(), (BOB, RTP))
        self.assertEqual(relay.path.stats["TXB"], 1)
        self.assertEqual(relay.core.stats()["TXB"], 2)
        self.assertEqual(relay.core.stats()["RX"], 3)

    def test_a_refused_push_leaves_the_session_in_userspace(self) -> None:
        """Where the path cannot take a session (IPv6, a full map), the core forwards it."""
        relay = Fronted()
        relay.path.refuse = True
        relay.a()
        relay.b()
        self.assertFalse(relay.session.a.kernel)
        self.assertEqual(relay.a(), (BOB, RTP))
        self.assertEqual(relay.path.stats["RX"], 0)

    def test_removal_and_expiry_withdraw(self) -> None:
        """A removed or expired session leaves the kernel's map."""
        relay = Fronted(idle_timeout=60.0)
        relay.a()
        relay.b()
        ident = relay.session.ident
        relay.core.remove(ident)
        self.assertEqual(relay.path.log[-1], ("withdraw", ident))
        self.assertEqual(relay.path.legs, {})
        self.assertIs(relay.a(), Drop.UNKNOWN_TAG)

    def test_media_seen_only_by_the_kernel_keeps_a_session_alive(self) -> None:
        """The sweep pulls the kernel's last-seen times: a call whose packets all went
        through the kernel does not expire for inactivity; one silent everywhere does."""
        relay = Fronted(idle_timeout=60.0, owner_grace=1000.0)
        relay.a()
        relay.b()
        for t in range(1, 100):
            relay.a(now=float(t))
            relay.b(now=float(t))
        self.assertEqual(relay.core.expire(99.0), [])
        self.assertEqual([e.reason for e in relay.core.expire(160.0)], ["inactivity"])
        self.assertEqual(relay.path.legs, {})

    def test_rebinding_moves_the_kernel_entry(self) -> None:
        """A stranger with Alice's tag is refused while the kernel saw Alice lately (even if
        the core's own view is old); once she is silent the new address takes the leg, with
        no credit, in the kernel too."""
        relay = Fronted()
        relay.a()
        relay.b()
        relay.a(now=0.9)  # only the kernel sees this one
        self.assertIs(relay.a(MALLORY, now=1.5), Drop.FOREIGN_SOURCE)
        self.assertEqual(relay.a(MALLORY, now=2.0), (BOB, RTP))
        self.assertEqual(relay.session.a.rebinds, 1)
        self.assertEqual(relay.path.legs[relay.session.a.tag].source, MALLORY)
        # Mallory sent 180 bytes: Bob's packets reach her two times.
        self.assertEqual(
            [relay.b(now=2.0) for _ in range(3)],
            [(MALLORY, RTP), (MALLORY, RTP), Drop.PEER_NO_CREDIT],
        )
        self.assertIsNone(relay.path.forward(relay.session.a.tag + RTP, ALICE, 2.0))

    def test_show_relay_counts_the_kernel_once(self) -> None:
        """Every datagram lands in exactly one counter, whichever path took it."""
        relay = Fronted()
        relay.a()
        relay.b()
        for _ in range(5):
            relay.a()
        relay.packet(b"x", MALLORY, 0.0)
        stats = relay.core.stats()
        self.assertEqual(stats["RX"], 8)
        self.assertEqual(stats["RX"], stats["TXB"] + stats["ERRNODEST"] + stats["ERRTOSHORT"])

    def test_a_bridged_session_stays_in_userspace(self) -> None:
        """A leg bridged to another operator's relay needs that relay's tag in
        front of each packet, which the kernel path cannot add: such a
        session is never pushed, and its packets keep the tag."""
        relay = Fronted()
        peer_relay, peer_tag = ("192.0.2.200", 5146), b"peer-tag"
        self.assertTrue(relay.core.bridge(relay.session.ident, "b", *peer_relay, peer_tag))
        for now in range(5):
            self.assertEqual(relay.a(now=float(now)), (peer_relay, peer_tag + RTP))
            self.assertEqual(relay.b(source=peer_relay, now=float(now)), (ALICE, RTP))
        self.assertEqual(relay.path.log, [])
        self.assertFalse(relay.session.a.kernel or relay.session.b.kernel)

    def test_bridging_a_pushed_session_withdraws_it(self) -> None:
        """A session already in the kernel that is then bridged is withdrawn
        first, so no packet leaves without the other relay's tag."""
        relay = Fronted()
        relay.a()
        relay.b()
        self.assertTrue(relay.session.a.kernel)
        peer_relay, peer_tag = ("192.0.2.200", 5146), b"peer-tag"
        relay.core.bridge(relay.session.ident, "b", *peer_relay, peer_tag)
        self.assertEqual(relay.path.log[-1], ("withdraw", relay.session.ident))
        self.assertFalse(relay.session.a.kernel)
        self.assertEqual(relay.a(now=1.0), (peer_relay, peer_tag + RTP))


ADDRESSES = [ALICE, BOB, MALLORY]


class EquivalenceTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "unknown"]),
                st.sampled_from(ADDRESSES),
                st.integers(0, 300),
                st.sampled_from([0.0, 0.02, 0.5, 1.5, 61.0]),
                st.booleans(),
            ),
            max_size=200,
        )
    )
    def test_fronted_core_decides_as_a_core_alone(
        self, events: list[tuple[str, tuple[str, int], int, float, bool]]
    ) -> None:
        """Whatever arrives from wherever, with sweeps between: each datagram gets the same
        answer, and the counters and legs end the same, with or without the kernel path."""
        alone = RelayCore(random=_counter())
        fronted = Fronted(random=_counter())
        alone_session = alone.add(alone.open_link("crs1", 0.0), 0.0)
        self.assertEqual(alone_session.a.tag, fronted.session.a.tag)
        now = 0.0
        for which, source, size, step, sweep in events:
            now += step
            if sweep:
                self.assertEqual(
                    [e.session.ident for e in alone.expire(now)],
                    [e.session.ident for e in fronted.core.expire(now)],
                )
            tag = {"a": alone_session.a.tag, "b": alone_session.b.tag}.get(which, b"\xee" * 8)
            datagram = tag + bytes(size)
            expected = alone.packet(datagram, source, now)
            if isinstance(expected, tuple):
                alone.counters.txb += 1
            self.assertEqual(fronted.packet(datagram, source, now), expected)
        fronted.core.sync(now)
        self.assertEqual(fronted.core.stats(), alone.stats())
        for ident, session in alone.sessions.items():
            mine = fronted.core.sessions[ident]
            for theirs, ours in ((session.a, mine.a), (session.b, mine.b)):
                self.assertEqual(
                    (ours.source, ours.credit, ours.packets, ours.bytes, ours.rebinds),
                    (theirs.source, theirs.credit, theirs.packets, theirs.bytes, theirs.rebinds),
                )


def _counter() -> Any:
    state = iter(range(1, 10**9))
    return lambda n: next(state).to_bytes(n, "big")
