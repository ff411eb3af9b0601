"""The pool link's frames: heartbeats with the slot map as owner runs."""

from __future__ import annotations

import itertools
import struct

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.pool.core import Heartbeat, MapKey, SlotMap
from cryptify.crs.pool.wire import (
    DOWN_REPORT,
    MAX_FRAME,
    Envelope,
    Frame,
    FrameReader,
    WireError,
    decode_down,
    decode_frame,
    encode_down,
    encode_frame,
    encode_heartbeat,
    encode_map,
)
from cryptify.crs.slots import SLOTS
from cryptify.protocols import cbor_subset

NAMES = ["crs1", "crs2", "crs3"]


def split(owners: list[str | None]) -> SlotMap:
    return SlotMap(MapKey(7, "crs1", 1700000000), tuple(owners))


def halves() -> SlotMap:
    return split(["crs1"] * (SLOTS // 2) + ["crs2"] * (SLOTS // 2))


def payload(beat: Heartbeat, pid: int = 4242) -> bytes:
    frame = encode_heartbeat(beat, pid)
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    return frame[4:]


@st.composite
def slot_maps(draw: st.DrawFn) -> SlotMap:
    """Maps made of random runs (owners or released slots)."""
    cuts = sorted(draw(st.sets(st.integers(1, SLOTS - 1), max_size=40)))
    bounds = [0, *cuts, SLOTS]
    owners: list[str | None] = []
    for first, end in itertools.pairwise(bounds):
        owners.extend([draw(st.sampled_from([*NAMES, None]))] * (end - first))
    key = MapKey(
        draw(st.integers(0, 2**63 - 1)),
        draw(st.sampled_from(NAMES)),
        draw(st.integers(0, 2**63 - 1)),
    )
    return SlotMap(key, tuple(owners))


beats = st.builds(Heartbeat, st.sampled_from(NAMES), st.none() | slot_maps())


def beat_of(data: bytes) -> Heartbeat:
    frame = decode_frame(data)
    assert isinstance(frame, Frame)
    return frame.beat


def reencode(frame: Frame | Envelope) -> bytes:
    """The payload that encodes ``frame`` again."""
    if isinstance(frame, Frame):
        return payload(frame.beat, frame.pid)
    return encode_frame(frame.type, frame.fields)[4:]


class HeartbeatTests(SynchronousTestCase):
    def test_halves_are_two_runs(self) -> None:
        """A two-member split is sent as two runs, not 16,384 owners."""
        value = encode_map(halves())
        self.assertEqual(value["members"], ["crs1", "crs2"])
        self.assertEqual(value["runs"], [0, SLOTS // 2, 1, SLOTS // 2])
        self.assertLess(len(encode_heartbeat(Heartbeat("crs1", halves()))), 100)

    def test_released_slots_are_null_runs(self) -> None:
        """Slots being handed over travel as null-owner runs and come back as None."""
        owners: list[str | None] = ["crs1"] * SLOTS
        owners[10:20] = [None] * 10
        beat = Heartbeat("crs2", split(owners))
        self.assertEqual(decode_frame(payload(beat)), Frame(beat, 4242))

    def test_no_map(self) -> None:
        """A member that has no map yet sends null."""
        beat = Heartbeat("crs3", None)
        self.assertEqual(decode_frame(payload(beat)), Frame(beat, 4242))

    @given(beats)
    @settings(max_examples=200)
    def test_round_trip(self, beat: Heartbeat) -> None:
        """Every heartbeat decodes to itself and its encoding is canonical."""
        data = payload(beat)
        self.assertEqual(decode_frame(data), Frame(beat, 4242))
        self.assertEqual(payload(beat_of(data)), data)

    def refused(self, body: object, why: str) -> None:
        with self.assertRaises(WireError) as caught:
            decode_frame(cbor_subset.encode(body))
        self.assertIn(why, str(caught.exception))

    def good(self) -> dict[str, object]:
        return {"t": "beat", "from": "crs2", "pid": 1, "map": encode_map(halves())}

    def with_map(self, **fields: object) -> dict[str, object]:
        body = self.good()
        assert isinstance(body["map"], dict)
        body["map"] = {**body["map"], **fields}
        return body

    def test_refusals_say_why(self) -> None:
        """Each hostile shape is refused with a reason naming the fault."""
        self.refused({"t": "Gossip"}, "frame type")
        self.refused({"from": "crs2"}, "frame type")
        self.refused(["beat"], "frame is not a map")
        self.refused({**self.good(), "extra": 1}, "unexpected ['extra']")
        self.refused({**self.good(), "from": ""}, "sender is not a name")
        self.refused({**self.good(), "from": "x" * 65}, "longer than 64")
        self.refused({**self.good(), "from": "a b"}, "spaces")
        self.refused({**self.good(), "pid": -3}, "pid is not a number")
        self.refused(self.with_map(epoch=-1), "epoch is not a number")
        self.refused(self.with_map(epoch=True), "epoch is not a number")
        self.refused(self.with_map(runs=[0, SLOTS // 2]), "cover 8192 slots")
        self.refused(self.with_map(runs=[0, SLOTS, 1]), "owner, count pairs")
        self.refused(self.with_map(runs=[0, SLOTS + 1]), "bad count")
        self.refused(self.with_map(runs=[0, 0, 1, SLOTS]), "bad count")
        self.refused(self.with_map(runs=[2, SLOTS]), "names no listed member")
        self.refused(self.with_map(runs=[0, 1, 0, SLOTS - 1]), "same owner")
        self.refused(self.with_map(runs=[None, 1, None, SLOTS - 1]), "same owner")
        self.refused(self.with_map(runs=[1, 1, 0, SLOTS - 1]), "order of first use")
        self.refused(self.with_map(members=["crs1", "crs1"]), "listed twice")
        self.refused(self.with_map(members=["crs1", "crs2", "crs3"]), "owns no slot")
        self.refused(self.with_map(members=["m"] * 65), "at most 64")
        self.refused(self.with_map(runs=[0, 1] * (SLOTS + 1)), "owner, count pairs")

    def test_down_report(self) -> None:
        """The report of the members a sender sees down is a frame of its own
        (an older instance ignores it): sorted names, [] for none; anything
        else is refused with the reason."""
        for down in (frozenset(), frozenset({"crs3", "crs2"})):
            frame = decode_frame(encode_frame(DOWN_REPORT, encode_down(down))[4:])
            assert isinstance(frame, Envelope)
            self.assertEqual(frame.type, "pool-down")
            self.assertEqual(decode_down(frame.fields), down)
        bad = [
            ({"down": ["crs3", "crs1"]}, "not sorted"),
            ({"down": ["crs1", "crs1"]}, "twice"),
            ({"down": "crs1"}, "not a list"),
            ({"down": ["m"] * 65}, "at most 64"),
            ({"down": [""]}, "down member is not a name"),
            ({"down": [], "x": 1}, "unexpected ['x']"),
            ({}, "missing ['down']"),
        ]
        for fields, why in bad:
            with self.assertRaises(WireError) as caught:
                decode_down(fields)
            self.assertIn(why, str(caught.exception))

    def test_not_cbor(self) -> None:
        """Octets outside the CBOR subset are refused as such."""
        with self.assertRaises(WireError) as caught:
            decode_frame(b"\xff\x00")
        self.assertIn("not canonical CBOR", str(caught.exception))

    @given(st.binary(max_size=300))
    @settings(max_examples=500)
    def test_hostile_bytes(self, data: bytes) -> None:
        """Arbitrary octets give a heartbeat, an envelope or a WireError,
        nothing else, and what decodes encodes back to the same octets."""
        try:
            frame = decode_frame(data)
        except WireError as exc:
            self.assertTrue(str(exc))
        else:
            self.assertEqual(reencode(frame), data)

    @given(beats, st.data())
    @settings(max_examples=200)
    def test_mutated_frames(self, beat: Heartbeat, data: st.DataObject) -> None:
        """A valid frame with some octets changed is a heartbeat that
        encodes back to exactly those octets, or a WireError."""
        raw = bytearray(payload(beat))
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        try:
            decoded = decode_frame(bytes(raw))
        except WireError:
            return
        self.assertEqual(reencode(decoded), bytes(raw))


class EnvelopeTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """A frame of another type comes back as its type and fields."""
        data = encode_frame("fwd-post", {"id": 7, "to": "sip:a@b"})
        (body,) = FrameReader().feed(data)
        self.assertEqual(decode_frame(body), Envelope("fwd-post", {"id": 7, "to": "sip:a@b"}))

    def test_bad_types_refused(self) -> None:
        """The type must be a short a-z0-9- name, not the heartbeat's."""
        for bad in ("", "Fwd", "a b", "x" * 33, "beat", "é"):
            with self.assertRaises(WireError):
                encode_frame(bad, {})
        with self.assertRaises(WireError):
            encode_frame("fwd", {"t": "other"})
        for value in ({"t": 3}, {"t": "UP"}, [1], {"x": 1}):
            with self.assertRaises(WireError):
                decode_frame(cbor_subset.encode(value))

    def test_oversized_refused(self) -> None:
        with self.assertRaises(WireError):
            encode_frame("big", {"b": b"x" * MAX_FRAME})


class FrameReaderTests(SynchronousTestCase):
    @given(st.lists(beats, min_size=1, max_size=4), st.data())
    @settings(max_examples=100)
    def test_any_split(self, sent: list[Heartbeat], data: st.DataObject) -> None:
        """Frames come out whole and in order however the stream is cut."""
        stream = b"".join(encode_heartbeat(b) for b in sent)
        cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=8)))
        reader = FrameReader()
        got: list[Heartbeat] = []
        for first, end in zip([0, *cuts], [*cuts, len(stream)], strict=False):
            got.extend(beat_of(p) for p in reader.feed(stream[first:end]))
        self.assertEqual(got, sent)
        self.assertEqual(reader.buffered, 0)

    def test_oversized_length_refused_before_buffering(self) -> None:
        """A length prefix above MAX_FRAME fails at once and the reader stays failed."""
        reader = FrameReader()
        with self.assertRaises(WireError):
            reader.feed(struct.pack(">I", MAX_FRAME + 1))
        with self.assertRaises(WireError):
            reader.feed(encode_heartbeat(Heartbeat("crs1", None)))

    @given(st.binary(max_size=64))
    def test_hostile_stream(self, data: bytes) -> None:
        """Arbitrary streams give payloads or a WireError."""
        assume(data)
        try:
            FrameReader(max_frame=32).feed(data)
        except WireError:
            pass
