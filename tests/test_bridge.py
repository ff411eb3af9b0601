"""Tests for the CIG media bridge's core: G.711, RTP parsing, playout, CallBridge."""

from __future__ import annotations

import bisect
import math
import os

from hypothesis import given
from hypothesis import strategies as st
from pylibsrtp import Policy, Session
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.relay import g711
from cryptify.cig.relay.bridge_core import (
    EVENT_END_REPEATS,
    FRAME_SAMPLES,
    BridgeSpecError,
    CallBridge,
    PbxSide,
    Playout,
    SecureSide,
)
from cryptify.protocols.rtp import (
    RtpError,
    RtpPacket,
    TelephoneEvent,
    encode_rtp,
    parse_event,
    parse_rtp,
)

TAG = b"T" * 8
KEY_OUT = bytes(range(30))  # what the bridge sends with (the client receives)
KEY_IN = bytes(range(30, 60))  # what the client sends with


def tone(frame: int, n: int = FRAME_SAMPLES, amplitude: int = 8000) -> list[int]:
    """A 1 kHz tone, frame ``frame`` of it."""
    return [
        int(amplitude * math.sin(2 * math.pi * 1000 * (frame * n + i) / 8000)) for i in range(n)
    ]


_LEVELS = {
    g711.PCMU: sorted({g711.ulaw_to_linear(c) for c in range(256)}),
    g711.PCMA: sorted({g711.alaw_to_linear(c) for c in range(256)}),
}


def step(code: int, codec: str) -> int:
    """The quantisation step around code ``code`` of ``codec`` (its error bound)."""
    to_linear = g711.ulaw_to_linear if codec == g711.PCMU else g711.alaw_to_linear
    levels = _LEVELS[codec]
    i = bisect.bisect_left(levels, to_linear(code))
    gaps = [levels[j + 1] - levels[j] for j in (i - 1, i) if 0 <= j < len(levels) - 1]
    return max(gaps)


class G711Tests(SynchronousTestCase):
    """The G.711 tables agree with the reference values and with each other."""

    def test_reference_values(self) -> None:
        """Silence and full scale decode to the reference linear values."""
        self.assertEqual(g711.ulaw_to_linear(0xFF), 0)
        self.assertEqual(g711.ulaw_to_linear(0x00), -32124)
        self.assertEqual(g711.ulaw_to_linear(0x80), 32124)
        self.assertEqual(g711.alaw_to_linear(0xD5), 8)
        self.assertEqual(g711.alaw_to_linear(0xAA), 32256)
        self.assertEqual(g711.linear_to_ulaw(0), 0xFF)
        self.assertEqual(g711.linear_to_alaw(0), 0xD5)

    def test_codes_round_trip(self) -> None:
        """Every code decodes to a value that encodes back to it (u-law's -0 aside)."""
        for code in range(256):
            self.assertEqual(g711.linear_to_alaw(g711.alaw_to_linear(code)), code)
            if code != 0x7F:
                self.assertEqual(g711.linear_to_ulaw(g711.ulaw_to_linear(code)), code)

    @given(st.integers(-32768, 32767))
    def test_encode_error_bounded(self, sample: int) -> None:
        """Encoding then decoding stays within the segment's step size."""
        # Segment boundaries differ: u-law's top segments start at 8060 and
        # 16252, a-law's at 8192 and 16384. A value near a boundary may come
        # back in the segment above, so the larger of the two magnitudes
        # names the segment whose step bounds the error.
        for codec, limit, (six, seven) in (
            (g711.PCMU, 32124, (8060, 16252)),
            (g711.PCMA, 32256, (8192, 16384)),
        ):
            (back,) = g711.decode(codec, g711.encode(codec, [sample]))
            clipped = max(-limit, min(limit, sample))
            largest = max(abs(clipped), abs(back))
            bound = 1024 if largest > seven else 512 if largest > six else 256
            self.assertLessEqual(abs(back - clipped), bound, (codec, sample, back))

    def test_encode_error_at_segment_edge(self) -> None:
        """The sample hypothesis found: u-law's -8057 comes back as -8316, one
        segment up, within that segment's step."""
        (back,) = g711.decode(g711.PCMU, g711.encode(g711.PCMU, [-8057]))
        self.assertEqual(back, -8316)

    @given(st.binary(min_size=1, max_size=320))
    def test_transcoding_within_codec_error(self, frame: bytes) -> None:
        """u-law -> a-law -> linear is within one a-law step of u-law -> linear."""
        alaw = frame.translate(g711.ULAW_TO_ALAW)
        for u, a in zip(frame, alaw):
            expected = g711.ulaw_to_linear(u)
            self.assertLessEqual(abs(g711.alaw_to_linear(a) - expected), step(a, g711.PCMA))

    @given(st.binary(min_size=1, max_size=320))
    def test_alaw_ulaw_alaw_stable(self, frame: bytes) -> None:
        """a-law -> u-law -> a-law keeps every value within one a-law step."""
        back = frame.translate(g711.ALAW_TO_ULAW).translate(g711.ULAW_TO_ALAW)
        for a, b in zip(frame, back):
            self.assertLessEqual(
                abs(g711.alaw_to_linear(a) - g711.alaw_to_linear(b)), step(a, g711.PCMA)
            )

    def test_translation_identity(self) -> None:
        """Same codec both sides: no table, so frames pass untouched."""
        self.assertIsNone(g711.translation(g711.PCMU, g711.PCMU))
        self.assertIs(g711.translation(g711.PCMU, g711.PCMA), g711.ULAW_TO_ALAW)
        self.assertIs(g711.translation(g711.PCMA, g711.PCMU), g711.ALAW_TO_ULAW)


rtp_packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127).filter(lambda pt: not 64 <= pt <= 95),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=200),
    marker=st.booleans(),
)


class RtpTests(SynchronousTestCase):
    """The RTP and telephone-event parsers."""

    @given(rtp_packets)
    def test_round_trip(self, packet: RtpPacket) -> None:
        """Whatever we encode parses back to the same fields."""
        self.assertEqual(parse_rtp(packet.encode()), packet)

    @given(st.binary(max_size=64))
    def test_hostile_bytes(self, data: bytes) -> None:
        """Any bytes give a packet or an RtpError, never an exception."""
        result = parse_rtp(data)
        self.assertIsInstance(result, (RtpPacket, RtpError))

    def test_csrc_extension_padding(self) -> None:
        """CSRCs, a header extension and padding are skipped."""
        header = bytes([0x80 | 0x20 | 0x10 | 1, 0, 0, 1]) + bytes(8)
        data = header + b"CSRC" + b"\xbe\xde\x00\x01" + b"EXT!" + b"audio" + b"\x00\x00\x03"
        packet = parse_rtp(data)
        assert isinstance(packet, RtpPacket)
        self.assertEqual(packet.payload, b"audio")

    def test_refusals(self) -> None:
        """Short, wrong version, RTCP and bad padding are each named."""
        self.assertEqual(parse_rtp(b"\x80" * 11), RtpError.TOO_SHORT)
        self.assertEqual(parse_rtp(b"\x40" + bytes(11)), RtpError.VERSION)
        self.assertEqual(parse_rtp(b"\x80\xc8" + bytes(10)), RtpError.RTCP)
        self.assertEqual(parse_rtp(b"\xa0\x00" + bytes(10) + b"\x00"), RtpError.BAD_PADDING)
        self.assertEqual(parse_rtp(b"\xa0\x00" + bytes(10) + b"\x09"), RtpError.BAD_PADDING)

    @given(st.integers(0, 255), st.booleans(), st.integers(0, 63), st.integers(0, 0xFFFF))
    def test_event_round_trip(self, event: int, end: bool, volume: int, duration: int) -> None:
        """A telephone-event payload parses back to its fields."""
        ev = TelephoneEvent(event, end, volume, duration)
        self.assertEqual(parse_event(ev.encode()), ev)

    def test_event_digits(self) -> None:
        """Events 0-15 are the digits of RFC 4733 3.2; a short payload is refused."""
        self.assertEqual(TelephoneEvent(11, False, 10, 0).digit, "#")
        self.assertIsNone(TelephoneEvent(16, False, 10, 0).digit)
        self.assertEqual(parse_event(b"\x01\x02"), RtpError.TOO_SHORT)


class PlayoutTests(SynchronousTestCase):
    """The PBX-side playout buffer orders, fills, drops and resynchronises."""

    def frames(self, count: int, start: int = 1000) -> list[tuple[int, bytes]]:
        return [(start + i * 160, bytes([i % 200]) * 160) for i in range(count)]

    def test_delay_then_in_order(self) -> None:
        """Audio plays after the playout delay, frame by frame."""
        p = Playout(silence=0xFF)
        self.assertIsNone(p.pull())
        frames = self.frames(4)
        for ts, f in frames:
            p.push(ts, f)
        out = [p.pull() for _ in range(6)]
        self.assertEqual(out[:2], [b"\xff" * 160] * 2)
        self.assertEqual(out[2:], [f for _, f in frames])

    def test_reordered(self) -> None:
        """Frames that arrive out of order play in timestamp order."""
        p = Playout(silence=0xFF)
        frames = self.frames(4)
        for i in (0, 2, 1, 3):
            p.push(*frames[i])
        played = [p.pull() for _ in range(6)][2:]
        self.assertEqual(played, [f for _, f in frames])

    def test_loss_filled_with_silence(self) -> None:
        """A missing frame is a silent frame, and the rest play on time."""
        p = Playout(silence=0xFF)
        frames = self.frames(4)
        for i in (0, 1, 3):
            p.push(*frames[i])
        played = [p.pull() for _ in range(6)][2:]
        self.assertEqual(played, [frames[0][1], frames[1][1], b"\xff" * 160, frames[3][1]])
        self.assertEqual(p.concealed, 1)

    def test_underrun_holds(self) -> None:
        """With nothing newer buffered the cursor holds, so a late frame still plays."""
        p = Playout(silence=0xFF, delay=0)
        frames = self.frames(3)
        p.push(*frames[0])
        self.assertEqual(p.pull(), frames[0][1])
        self.assertIsNone(p.pull())
        self.assertEqual(p.underruns, 1)
        p.push(*frames[1])
        self.assertEqual(p.pull(), frames[1][1])

    def test_late_dropped(self) -> None:
        """A frame after its playout time is dropped and counted."""
        p = Playout(silence=0xFF, delay=0)
        frames = self.frames(3)
        p.push(*frames[0])
        p.push(*frames[2])
        p.pull()
        p.pull()
        p.push(*frames[1])
        self.assertEqual(p.late, 1)
        self.assertEqual(p.pull(), frames[2][1])

    def test_other_frame_sizes(self) -> None:
        """10 ms and 30 ms packets are re-cut into 20 ms frames."""
        p = Playout(silence=0xFF, delay=0)
        p.push(0, b"a" * 80)
        p.push(80, b"b" * 240)
        p.push(320, b"c" * 80)
        self.assertEqual(p.pull(), b"a" * 80 + b"b" * 80)
        self.assertEqual(p.pull(), b"b" * 160)
        self.assertEqual(p.pull(), b"c" * 80 + b"\xff" * 80)

    def test_jump_resynchronises(self) -> None:
        """A timestamp jump (or drift past the limit) moves the cursor."""
        p = Playout(silence=0xFF, delay=0)
        p.push(0, b"a" * 160)
        p.pull()
        p.push(50_000, b"b" * 160)
        self.assertEqual(p.resyncs, 1)
        self.assertEqual(p.pull(), b"b" * 160)

    def test_timestamp_wrap(self) -> None:
        """Timestamps wrapping past 2**32 continue the stream."""
        p = Playout(silence=0xFF, delay=0)
        p.push(0xFFFFFF60, b"a" * 160)
        p.push(0, b"b" * 160)
        self.assertEqual((p.pull(), p.pull()), (b"a" * 160, b"b" * 160))

    @given(st.permutations(list(range(8))), st.sets(st.integers(0, 7), max_size=3))
    def test_any_order_any_loss(self, order: list[int], lost: set[int]) -> None:
        """Within the playout delay, any order and loss plays each frame once, in place."""
        p = Playout(silence=0xFF, delay=8 * 160)
        frames = self.frames(8)
        for i in order:
            if i not in lost:
                p.push(*frames[i])
        played = [p.pull() for _ in range(24)]
        where = {frame: played.index(frame) for _, frame in frames if frame in played}
        kept = [i for i in range(8) if i not in lost]
        self.assertEqual(sorted(where.values()), [where[frames[i][1]] for i in kept])
        first = where[frames[kept[0]][1]] - kept[0] if kept else 0
        for i in kept:
            self.assertEqual(where[frames[i][1]], first + i)
        self.assertEqual(p.late, 0)


def client_sessions() -> tuple[Session, Session]:
    """The secure client's (sender, receiver) SRTP sessions."""
    profile = Policy.SRTP_PROFILE_AES128_CM_SHA1_80
    tx = Session(Policy(key=KEY_IN, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
    rx = Session(Policy(key=KEY_OUT, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
    return tx, rx


def make_bridge(secure_codec: str = g711.PCMU, pbx_codec: str = g711.PCMU) -> CallBridge:
    secure = SecureSide("192.0.2.1", 146, TAG, KEY_OUT, KEY_IN, codec=secure_codec, dtmf_pt=101)
    pbx = PbxSide("198.51.100.7", 4000, pbx_codec, dtmf_pt=96)
    return CallBridge("call-1", secure, pbx)


class CallBridgeTests(SynchronousTestCase):
    """One call's bridge, fed packets by hand."""

    def setUp(self) -> None:
        self.client_tx, self.client_rx = client_sessions()

    def srtp(
        self, seq: int, payload: bytes, pt: int = 0, ssrc: int = 7, marker: bool = False
    ) -> bytes:
        return self.client_tx.protect(encode_rtp(pt, seq, seq * 160, ssrc, payload, marker))

    def received(self, datagram: bytes) -> RtpPacket:
        """What the client gets from the relay (the tag stripped) after decryption."""
        self.assertEqual(datagram[:8], TAG)
        packet = parse_rtp(self.client_rx.unprotect(datagram[8:]))
        assert isinstance(packet, RtpPacket)
        return packet

    def test_secure_to_pbx_sample_exact(self) -> None:
        """u-law on both sides: the PBX gets the client's bytes unchanged, in our stream."""
        bridge = make_bridge()
        frames = [g711.encode(g711.PCMU, tone(i)) for i in range(5)]
        out = [bridge.from_secure(self.srtp(100 + i, f)) for i, f in enumerate(frames)]
        packets = [parse_rtp(o) for o in out if o is not None]
        self.assertEqual([p.payload for p in packets if isinstance(p, RtpPacket)], frames)
        first = packets[0]
        assert isinstance(first, RtpPacket)
        self.assertTrue(first.marker)
        for i, p in enumerate(packets):
            assert isinstance(p, RtpPacket)
            self.assertEqual(p.payload_type, 0)
            self.assertEqual(p.sequence, (first.sequence + i) & 0xFFFF)
            self.assertEqual(p.timestamp, (first.timestamp + 160 * i) % 2**32)
            self.assertNotEqual(p.ssrc, 7)

    def test_secure_to_pbx_transcoded(self) -> None:
        """u-law from the client reaches an a-law PBX within a-law's error."""
        bridge = make_bridge(pbx_codec=g711.PCMA)
        frame = g711.encode(g711.PCMU, tone(0))
        out = bridge.from_secure(self.srtp(1, frame))
        assert out is not None
        packet = parse_rtp(out)
        assert isinstance(packet, RtpPacket)
        self.assertEqual(packet.payload_type, 8)
        for u, a in zip(frame, packet.payload):
            diff = abs(g711.alaw_to_linear(a) - g711.ulaw_to_linear(u))
            self.assertLessEqual(diff, step(a, g711.PCMA))
        self.assertEqual(bridge.counters.transcoded, 1)

    def test_reorder_and_loss_pass_through(self) -> None:
        """Reordered and missing client packets keep their places in our numbering."""
        bridge = make_bridge()
        outs = {}
        for seq in (10, 12, 11, 14):
            out = bridge.from_secure(self.srtp(seq, bytes([seq]) * 160))
            packet = parse_rtp(out or b"")
            assert isinstance(packet, RtpPacket)
            outs[seq] = packet
        base = outs[10]
        for seq, p in outs.items():
            self.assertEqual((p.sequence - base.sequence) & 0xFFFF, seq - 10)
            self.assertEqual((p.timestamp - base.timestamp) % 2**32, (seq - 10) * 160)

    def test_new_client_ssrc_continues_stream(self) -> None:
        """A new SSRC from the client continues our numbering with a marker."""
        bridge = make_bridge()
        a = parse_rtp(bridge.from_secure(self.srtp(500, b"a" * 160)) or b"")
        b = parse_rtp(bridge.from_secure(self.srtp(9, b"b" * 160, ssrc=99)) or b"")
        assert isinstance(a, RtpPacket) and isinstance(b, RtpPacket)
        self.assertEqual(b.sequence, (a.sequence + 1) & 0xFFFF)
        self.assertEqual(b.timestamp, (a.timestamp + 160) % 2**32)
        self.assertTrue(b.marker)

    def test_forged_and_replayed_srtp_dropped(self) -> None:
        """Packets failing SRTP authentication or replay are counted, not sent."""
        bridge = make_bridge()
        good = self.srtp(1, b"x" * 160)
        self.assertIsNotNone(bridge.from_secure(good))
        self.assertIsNone(bridge.from_secure(good))
        self.assertIsNone(bridge.from_secure(os.urandom(60)))
        self.assertEqual(bridge.counters.srtp_errors, 2)

    def test_secure_dtmf_to_pbx(self) -> None:
        """A client telephone-event goes to the PBX with the PBX's payload type."""
        bridge = make_bridge()
        bridge.from_secure(self.srtp(1, b"x" * 160))
        ev = TelephoneEvent(5, False, 10, 320)
        out = bridge.from_secure(self.srtp(2, ev.encode(), pt=101, marker=True))
        packet = parse_rtp(out or b"")
        assert isinstance(packet, RtpPacket)
        self.assertEqual((packet.payload_type, parse_event(packet.payload)), (96, ev))
        self.assertEqual(bridge.counters.events_to_pbx, 1)

    def test_unknown_payload_type_dropped(self) -> None:
        """A payload type not negotiated is counted and dropped."""
        bridge = make_bridge()
        self.assertIsNone(bridge.from_secure(self.srtp(1, b"x" * 160, pt=18)))
        self.assertEqual(bridge.counters.unknown_pt, 1)

    def test_no_pbx_address_yet(self) -> None:
        """Until the PBX's address is known, its packets are counted as no destination."""
        bridge = make_bridge()
        bridge.update_pbx(PbxSide(None, None))
        self.assertIsNone(bridge.from_secure(self.srtp(1, b"x" * 160)))
        self.assertEqual(bridge.counters.no_destination, 1)

    def test_tick_constant_rate_silence(self) -> None:
        """With no PBX audio, every tick still sends one silent SRTP frame."""
        bridge = make_bridge()
        packets = [self.received(bridge.tick()) for _ in range(3)]
        self.assertEqual([p.payload for p in packets], [b"\xff" * 160] * 3)
        self.assertTrue(packets[0].marker)
        self.assertEqual((packets[2].sequence - packets[0].sequence) & 0xFFFF, 2)
        self.assertEqual((packets[2].timestamp - packets[0].timestamp) % 2**32, 320)

    def test_pbx_to_secure_transcoded(self) -> None:
        """a-law from the PBX reaches a u-law client within codec error, after the delay."""
        bridge = make_bridge(pbx_codec=g711.PCMA)
        frames = [g711.encode(g711.PCMA, tone(i)) for i in range(3)]
        for i, f in enumerate(frames):
            bridge.from_pbx(encode_rtp(8, i, 8000 + i * 160, 55, f, False))
        got = [self.received(bridge.tick()).payload for _ in range(5)][2:]
        for sent, heard in zip(frames, got):
            for a, u in zip(sent, heard):
                diff = abs(g711.ulaw_to_linear(u) - g711.alaw_to_linear(a))
                self.assertLessEqual(diff, step(u, g711.PCMU))

    def test_pbx_dtmf_to_secure(self) -> None:
        """A PBX event replaces audio in the ticks it lasts, its end sent three times."""
        bridge = make_bridge()
        for i in range(3):
            bridge.from_pbx(
                encode_rtp(
                    96, i, 4000, 55, TelephoneEvent(1, False, 10, 160 * (i + 1)).encode(), i == 0
                )
            )
        bridge.from_pbx(
            encode_rtp(96, 3, 4000, 55, TelephoneEvent(1, True, 10, 640).encode(), False)
        )
        packets = [self.received(bridge.tick()) for _ in range(EVENT_END_REPEATS + 1)]
        events = [p for p in packets if p.payload_type == 101]
        self.assertEqual(len(events), EVENT_END_REPEATS)
        self.assertTrue(events[0].marker)
        self.assertEqual({p.timestamp for p in events}, {events[0].timestamp})
        self.assertEqual(
            [parse_event(p.payload) for p in events], [TelephoneEvent(1, True, 10, 640)] * 3
        )
        self.assertEqual(packets[-1].payload_type, 0)
        bridge.from_pbx(
            encode_rtp(96, 4, 4000, 55, TelephoneEvent(1, True, 10, 640).encode(), False)
        )
        self.assertEqual(self.received(bridge.tick()).payload_type, 0)

    def test_pbx_event_without_end_times_out(self) -> None:
        """An event whose end never comes is ended by the bridge."""
        bridge = make_bridge()
        bridge.from_pbx(
            encode_rtp(96, 1, 4000, 55, TelephoneEvent(9, False, 10, 160).encode(), True)
        )
        packets = [self.received(bridge.tick()) for _ in range(20)]
        ends = [p for p in packets if p.payload_type == 101 and parse_event(p.payload).end]  # type: ignore[union-attr]
        self.assertEqual(len(ends), EVENT_END_REPEATS)
        self.assertEqual(packets[-1].payload_type, 0)

    def test_bad_spec_refused(self) -> None:
        """Wrong tag or key sizes, codecs and payload types are refused up front."""
        good = SecureSide("192.0.2.1", 146, TAG, KEY_OUT, KEY_IN)
        pbx = PbxSide(None, None)
        cases = [
            SecureSide("192.0.2.1", 146, b"short", KEY_OUT, KEY_IN),
            SecureSide("192.0.2.1", 146, TAG, KEY_OUT[:16], KEY_IN),
            SecureSide("192.0.2.1", 146, TAG, KEY_OUT, KEY_IN, codec="G729"),
            SecureSide("192.0.2.1", 146, TAG, KEY_OUT, KEY_IN, dtmf_pt=8),
            SecureSide("192.0.2.1", 0, TAG, KEY_OUT, KEY_IN),
            SecureSide("192.0.2.1", 146, TAG, KEY_OUT, KEY_IN, profile="NULL"),
        ]
        for secure in cases:
            self.assertRaises(BridgeSpecError, CallBridge, "c", secure, pbx)
        self.assertRaises(BridgeSpecError, CallBridge, "c", good, PbxSide(None, None, "GSM"))
