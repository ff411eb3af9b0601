"""The relay core: forwarding, latching, hostile traffic, counters, expiry."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.relay.core import CREDIT_CAP, Drop, RelayCore, RelaySession
from cryptify.protocols import relay_packet
from cryptify.protocols.relay_packet import MAX_PACKET, MIN_PACKET, TAG_SIZE, PacketError

ALICE = ("198.51.100.10", 40000)
BOB = ("203.0.113.20", 50000)
MALLORY = ("192.0.2.66", 6666)
VICTIM = ("192.0.2.99", 53)
RTP = b"\x80\x00" + bytes(170)  # 172 bytes: RTP header + 160 bytes of G.711


def counting_random() -> object:
    """A deterministic stand-in for os.urandom: distinct values in order."""
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def make_core(**kwargs: object) -> RelayCore:
    return RelayCore(random=counting_random(), **kwargs)  # type: ignore[arg-type]


class Call:
    """A core with one session owned by crs1, and helpers to send on its legs."""

    def __init__(self, **kwargs: object) -> None:
        self.core = make_core(**kwargs)
        self.link = self.core.open_link("crs1", 0.0)
        self.session: RelaySession = self.core.add(self.link, 0.0, "call 1")

    def from_a(self, source: object = ALICE, now: float = 0.0, payload: bytes = RTP) -> object:
        return self.core.packet(self.session.a.tag + payload, source, now)  # type: ignore[arg-type]

    def from_b(self, source: object = BOB, now: float = 0.0, payload: bytes = RTP) -> object:
        return self.core.packet(self.session.b.tag + payload, source, now)  # type: ignore[arg-type]

    def both_latched(self, now: float = 0.0) -> None:
        self.from_a(now=now)
        self.from_b(now=now)

    def stats(self) -> dict[str, int]:
        return self.core.stats()


class ForwardingTests(SynchronousTestCase):
    def test_forwards_between_latched_legs_without_the_tag(self) -> None:
        """Once both legs sent, each packet goes to the other leg, tag stripped."""
        call = Call()
        self.assertIs(call.from_a(), Drop.PEER_NOT_LATCHED)
        self.assertEqual(call.from_b(), (ALICE, RTP))
        self.assertEqual(call.from_a(), (BOB, RTP))
        self.assertEqual(
            call.stats(),
            {
                "RX": 3,
                "TXB": 0,
                "TXERROR": 0,
                "ERRNODEST": 1,
                "ERRTOSHORT": 0,
                "ERRTOLONG": 0,
                "ENTRIES": 1,
            },
        )

    def test_nothing_goes_to_a_leg_that_never_sent(self) -> None:
        """A leg that has not proven an address receives nothing, however much the other sends."""
        call = Call()
        for _ in range(50):
            self.assertIs(call.from_a(), Drop.PEER_NOT_LATCHED)
        self.assertEqual(call.stats()["ERRNODEST"], 50)

    def test_tags_are_distinct_and_sixty_four_bits(self) -> None:
        """Every leg of every session gets its own 8-byte tag."""
        core = RelayCore()
        link = core.open_link("crs1", 0.0)
        tags = set()
        for _ in range(100):
            s = core.add(link, 0.0)
            tags.update((s.a.tag, s.b.tag))
        self.assertEqual(len(tags), 200)
        self.assertEqual({len(t) for t in tags}, {TAG_SIZE})

    def test_addr_map_applies_to_forwarded_media(self) -> None:
        """A leg latched at a mapped address is sent to at its addr-map address."""
        mapping = {BOB[0]: "10.0.0.2"}
        call = Call(map_address=lambda ip: mapping.get(ip, ip))
        call.both_latched()
        self.assertEqual(call.from_a(), (("10.0.0.2", BOB[1]), RTP))
        self.assertEqual(call.from_b(), (ALICE, RTP))

    def test_removed_session_forwards_nothing(self) -> None:
        """After remove, the legs' tags are unknown."""
        call = Call()
        call.both_latched()
        self.assertIs(call.core.remove(call.session.ident), call.session)
        self.assertIs(call.from_a(), Drop.UNKNOWN_TAG)
        self.assertIsNone(call.core.remove(call.session.ident))
        self.assertEqual(call.stats()["ENTRIES"], 0)


class HostileTests(SynchronousTestCase):
    def test_unknown_tag_counted_and_dropped(self) -> None:
        """A guessed tag is ERRNODEST and changes no session."""
        call = Call()
        call.both_latched()
        before = (call.session.a.source, call.session.b.source)
        self.assertIs(call.core.packet(b"\xff" * TAG_SIZE + RTP, MALLORY, 0.0), Drop.UNKNOWN_TAG)
        self.assertEqual((call.session.a.source, call.session.b.source), before)
        self.assertEqual(call.stats()["ERRNODEST"], 2)

    def test_short_and_long_packets(self) -> None:
        """Too short and too long datagrams go to ERRTOSHORT and ERRTOLONG, even with a good tag."""
        call = Call()
        call.both_latched()
        tag = call.session.a.tag
        self.assertIs(call.core.packet(b"", ALICE, 0.0), Drop.TOO_SHORT)
        self.assertIs(call.core.packet(tag + bytes(11), ALICE, 0.0), Drop.TOO_SHORT)
        self.assertIs(call.core.packet(tag + bytes(MAX_PACKET), ALICE, 0.0), Drop.TOO_LONG)
        self.assertEqual(call.core.packet(tag + bytes(12), ALICE, 0.0), (BOB, bytes(12)))
        stats = call.stats()
        self.assertEqual((stats["ERRTOSHORT"], stats["ERRTOLONG"]), (2, 1))

    def test_spoofed_source_cannot_steal_a_live_leg(self) -> None:
        """A packet with Alice's tag from another address while Alice talks is dropped, and Bob's
        media keeps going to Alice."""
        call = Call()
        call.both_latched()
        for t in (0.1, 0.5, 0.9):
            call.from_a(now=t)
            self.assertIs(call.from_a(MALLORY, now=t), Drop.FOREIGN_SOURCE)
            self.assertEqual(call.from_b(now=t), (ALICE, RTP))
        self.assertEqual(call.session.a.source, ALICE)

    def test_nat_rebinding_after_silence(self) -> None:
        """When Alice's address falls silent, her tag from a new address moves the latch."""
        call = Call()
        call.both_latched()
        self.assertIs(call.from_a(MALLORY, now=0.5), Drop.FOREIGN_SOURCE)
        new = ("198.51.100.10", 40001)
        self.assertEqual(call.from_a(new, now=1.0), (BOB, RTP))
        self.assertEqual(call.session.a.rebinds, 1)
        self.assertEqual(call.from_b(now=1.0), (new, RTP))
        # The old address is now the stranger.
        self.assertIs(call.from_a(ALICE, now=1.1), Drop.FOREIGN_SOURCE)

    def test_rebound_address_starts_without_credit(self) -> None:
        """A moved leg is owed only what its new address sends (no inherited credit)."""
        call = Call()
        call.both_latched()
        for _ in range(100):
            call.from_a(now=0.0)  # Alice banks credit at her own address
        new = ("198.51.100.10", 40001)
        call.from_a(new, now=5.0)
        sent = sum(call.from_b(now=5.0) == (new, RTP) for _ in range(10))
        self.assertEqual(sent, 2)

    def test_forged_source_is_no_amplifier(self) -> None:
        """A party forging a victim's address gets at most twice the bytes it forged sent there."""
        call = Call()
        call.from_b()
        # Alice forges the victim's address with one small packet.
        small = b"\x80" + bytes(11)
        call.from_a(VICTIM, payload=small)
        delivered = 0
        for _ in range(1000):
            result = call.from_b()
            if isinstance(result, tuple) and result[0] == VICTIM:
                delivered += len(result[1])
        self.assertLessEqual(delivered, 2 * (TAG_SIZE + len(small)))
        self.assertGreater(call.stats()["ERRNODEST"], 990)

    def test_flood_to_peer_is_bounded_by_what_peer_sends(self) -> None:
        """A flooding party reaches its peer only as fast as the peer's own traffic allows."""
        call = Call()
        call.both_latched()
        forwarded = sum(isinstance(call.from_a(), tuple) for _ in range(10_000))
        self.assertLessEqual(forwarded * len(RTP), CREDIT_CAP)
        self.assertEqual(call.from_b(), (ALICE, RTP))  # the other direction is unharmed

    def test_flood_of_junk_harms_no_other_session(self) -> None:
        """Unknown tags, runts and oversized datagrams from one source leave a live call intact."""
        call = Call()
        call.both_latched()
        for i in range(3000):
            junk = [b"x", bytes(MAX_PACKET + 1), i.to_bytes(TAG_SIZE, "little") + RTP][i % 3]
            call.core.packet(junk, MALLORY, 0.0)
        self.assertEqual(call.from_a(), (BOB, RTP))
        self.assertEqual(call.from_b(), (ALICE, RTP))
        stats = call.stats()
        self.assertEqual(
            (stats["ERRTOSHORT"], stats["ERRTOLONG"], stats["ERRNODEST"]), (1000, 1000, 1001)
        )

    def test_peer_never_learns_the_other_tag(self) -> None:
        """What a leg receives is the bare SRTP packet, never the sender's tag."""
        call = Call()
        call.both_latched()
        result = call.from_a()
        assert isinstance(result, tuple)
        self.assertNotIn(call.session.a.tag, result[1])

    def test_session_tags_do_not_cross(self) -> None:
        """A leg of one session cannot latch or send into another session."""
        call = Call()
        other = call.core.add(call.link, 0.0)
        call.both_latched()
        call.core.packet(other.a.tag + RTP, MALLORY, 0.0)
        call.core.packet(other.b.tag + RTP, VICTIM, 0.0)
        self.assertEqual(call.from_a(), (BOB, RTP))
        self.assertEqual(call.core.packet(other.a.tag + RTP, MALLORY, 0.0), (VICTIM, RTP))


class ExpiryTests(SynchronousTestCase):
    def test_idle_session_expires(self) -> None:
        """A session without media for idle_timeout seconds is removed; a talking one stays."""
        core = make_core(idle_timeout=30.0, owner_grace=1000.0)
        link = core.open_link("crs1", 0.0)
        quiet = core.add(link, 0.0)
        talking = core.add(link, 0.0)
        for t in range(0, 40, 5):
            core.heard(link, "crs1", float(t))
            core.packet(talking.a.tag + RTP, ALICE, float(t))
            core.expire(float(t))
        self.assertNotIn(quiet.ident, core.sessions)
        self.assertIn(talking.ident, core.sessions)
        gone = core.expire(200.0)
        self.assertEqual([(e.session, e.reason) for e in gone], [(talking, "inactivity")])

    def test_silent_crs_loses_its_sessions_after_grace(self) -> None:
        """A CRS that stops polling loses its sessions after the grace period, media or not."""
        core = make_core(idle_timeout=1000.0, owner_grace=60.0)
        link = core.open_link("crs1", 0.0)
        other = core.open_link("crs2", 0.0)
        mine = core.add(link, 0.0)
        theirs = core.add(other, 0.0)
        core.heard(other, "crs2", 50.0)
        core.packet(mine.a.tag + RTP, ALICE, 59.0)
        self.assertEqual(core.expire(60.0), [])
        gone = core.expire(61.0)
        self.assertEqual([(e.session, e.reason) for e in gone], [(mine, "CRS stopped polling")])
        self.assertIn(theirs.ident, core.sessions)

    def test_restarted_crs_lists_and_reclaims(self) -> None:
        """After its connection closes, a CRS's sessions live on; the restarted CRS lists them,
        reclaims the ones it knows, and the rest expire after the grace period."""
        core = make_core(idle_timeout=1000.0, owner_grace=60.0)
        old = core.open_link("crs1", 0.0)
        keep = core.add(old, 0.0)
        drop = core.add(old, 0.0)
        core.close_link(old, 10.0)
        new = core.open_link("crs1", 20.0)
        self.assertEqual({s.ident for s in core.owned_by("crs1")}, {keep.ident, drop.ident})
        self.assertEqual(core.reclaim(new, [keep.ident, 999], 20.0), [keep.ident])
        core.heard(new, "crs1", 65.0)
        gone = core.expire(71.0)
        self.assertEqual([(e.session, e.reason) for e in gone], [(drop, "CRS gone")])
        self.assertEqual(list(core.sessions), [keep.ident])

    def test_removed_sessions_release_closed_links(self) -> None:
        """Closed links are forgotten once they own nothing."""
        core = make_core()
        link = core.open_link("crs1", 0.0)
        s = core.add(link, 0.0)
        core.close_link(link, 1.0)
        self.assertEqual(len(core._links), 1)
        core.remove(s.ident)
        self.assertEqual(len(core._links), 0)


class PacketFormatTests(SynchronousTestCase):
    @settings(max_examples=300)
    @given(st.binary(min_size=TAG_SIZE, max_size=TAG_SIZE), st.binary(max_size=1600))
    def test_parse_inverts_encode(self, tag: bytes, srtp: bytes) -> None:
        """parse(encode(tag, srtp)) gives back tag and packet, or says why it is not a packet."""
        datagram = relay_packet.encode(tag, srtp)
        parsed = relay_packet.parse(datagram)
        if len(datagram) < MIN_PACKET:
            self.assertIs(parsed, PacketError.TOO_SHORT)
        elif len(datagram) > MAX_PACKET:
            self.assertIs(parsed, PacketError.TOO_LONG)
        else:
            self.assertEqual(parsed, (tag, srtp))

    @settings(max_examples=300)
    @given(st.binary(max_size=1600))
    def test_core_classifies_every_datagram_once(self, datagram: bytes) -> None:
        """Any datagram is counted in RX and in exactly one of TXB-bound or an error counter."""
        call = Call()
        call.both_latched()
        before = call.stats()
        result = call.core.packet(datagram, MALLORY, 0.0)
        after = call.stats()
        delta = {k: after[k] - before[k] for k in after}
        self.assertEqual(delta["RX"], 1)
        errors = delta["ERRNODEST"] + delta["ERRTOSHORT"] + delta["ERRTOLONG"]
        self.assertEqual(errors, 1)
        assert isinstance(result, Drop)
        self.assertEqual(delta[result.counter], 1)

    def test_encode_rejects_wrong_tag_size(self) -> None:
        """A tag must be exactly 8 bytes."""
        self.assertRaises(ValueError, relay_packet.encode, b"short", RTP)


ADDRESSES = [ALICE, BOB, MALLORY, VICTIM]


class InvariantTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "unknown"]),
                st.sampled_from(ADDRESSES),
                st.integers(0, 300),
                st.sampled_from([0.0, 0.02, 0.5, 1.5]),
            ),
            max_size=200,
        )
    )
    def test_never_sends_to_an_unproven_address_nor_amplifies(
        self, events: list[tuple[str, tuple[str, int], int, float]]
    ) -> None:
        """Whatever anyone sends from wherever: every packet goes to an address that itself sent
        with the destination leg's tag, and no address gets more than twice the bytes it sent."""
        call = Call()
        legs = {"a": call.session.a, "b": call.session.b}
        sent_from: dict[tuple[str, tuple[str, int]], int] = {}
        delivered: dict[tuple[str, tuple[str, int]], int] = {}
        now = 0.0
        for which, source, size, step in events:
            now += step
            tag = legs[which].tag if which in legs else b"\xee" * TAG_SIZE
            datagram = tag + bytes(size)
            if which in legs and MIN_PACKET <= len(datagram) <= MAX_PACKET:
                key = (which, source)
                sent_from[key] = sent_from.get(key, 0) + len(datagram)
            result = call.core.packet(datagram, source, now)
            if isinstance(result, tuple):
                dest_leg = "b" if which == "a" else "a"
                key = (dest_leg, result[0])
                self.assertIn(key, sent_from)
                delivered[key] = delivered.get(key, 0) + len(result[1])
                self.assertLessEqual(delivered[key], 2 * sent_from[key])


PEER_RELAY = ("192.0.2.200", 5146)
PEER_TAG = b"peer-tag"


class BridgeTests(SynchronousTestCase):
    """A leg bridged to another operator's relay (calls across operators)."""

    def test_bridged_leg_gets_the_peer_relays_tag_without_credit(self) -> None:
        """Alice's packets go to the peer relay with its tag in front, before
        that relay sent anything (no credit needed); its packets (with our
        leg b tag) reach Alice once she latched."""
        call = Call()
        self.assertTrue(call.core.bridge(call.session.ident, "b", *PEER_RELAY, PEER_TAG))
        for _ in range(20):
            self.assertEqual(call.from_a(), (PEER_RELAY, PEER_TAG + RTP))
        self.assertEqual(call.from_b(source=PEER_RELAY), (ALICE, RTP))
        self.assertEqual(call.from_a(), (PEER_RELAY, PEER_TAG + RTP))

    def test_bridge_keeps_its_destination_and_addr_map_applies(self) -> None:
        """The bridged destination is the configured (mapped) address, not
        where the peer relay's packets come from."""
        call = Call(map_address=lambda ip: "10.0.0.9" if ip == PEER_RELAY[0] else ip)
        call.core.bridge(call.session.ident, "b", *PEER_RELAY, PEER_TAG)
        call.from_b(source=("192.0.2.201", 7000))
        self.assertEqual(call.from_a(), (("10.0.0.9", 5146), PEER_TAG + RTP))

    def test_unbridged_packets_have_no_tag(self) -> None:
        """After a bridged packet, another session's packet goes out bare."""
        call = Call()
        core = call.core
        core.bridge(call.session.ident, "b", *PEER_RELAY, PEER_TAG)
        plain = core.add(call.link, 0.0)
        core.packet(plain.a.tag + RTP, MALLORY, 0.0)
        core.packet(plain.b.tag + RTP, BOB, 0.0)
        self.assertEqual(call.from_a(), (PEER_RELAY, PEER_TAG + RTP))
        self.assertEqual(core.packet(plain.a.tag + RTP, MALLORY, 0.0), (BOB, RTP))

    def test_bridge_refused_for_unknown_session_leg_or_tag(self) -> None:
        call = Call()
        self.assertFalse(call.core.bridge(12345, "a", *PEER_RELAY, PEER_TAG))
        self.assertFalse(call.core.bridge(call.session.ident, "c", *PEER_RELAY, PEER_TAG))
        self.assertFalse(call.core.bridge(call.session.ident, "a", *PEER_RELAY, b"short"))
