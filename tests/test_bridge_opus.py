"""The CIG bridge with Opus on the secure leg and G.711 towards the PBX."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from pylibsrtp import Policy, Session
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.relay import g711
from cryptify.cig.relay.bridge_core import CallBridge, PbxSide, SecureSide
from cryptify.client.audio import peak_frequency, tone
from cryptify.protocols import opus
from cryptify.protocols.rtp import RtpPacket, TelephoneEvent, encode_rtp, parse_event, parse_rtp

TAG = b"T" * 8
KEY_OUT = bytes(range(30))  # what the bridge sends with (the client receives)
KEY_IN = bytes(range(30, 60))  # what the client sends with


def make_bridge(pbx_codec: str = g711.PCMA) -> CallBridge:
    secure = SecureSide("192.0.2.1", 146, TAG, KEY_OUT, KEY_IN, codec=opus.OPUS, dtmf_pt=101)
    pbx = PbxSide("198.51.100.7", 4000, pbx_codec, dtmf_pt=96)
    return CallBridge("call-1", secure, pbx)


class OpusBridgeTests(SynchronousTestCase):
    """Tones through the transcoder both ways; timestamps, DTMF and bad packets."""

    def setUp(self) -> None:
        profile = Policy.SRTP_PROFILE_AES128_CM_SHA1_80
        self.client_tx = Session(
            Policy(key=KEY_IN, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
        )
        self.client_rx = Session(
            Policy(key=KEY_OUT, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile)
        )

    def srtp(self, seq: int, payload: bytes, pt: int = opus.PAYLOAD_TYPE, ts: int = -1) -> bytes:
        timestamp = (seq * opus.RTP_FRAME_TICKS if ts < 0 else ts) % 2**32
        return self.client_tx.protect(encode_rtp(pt, seq, timestamp, 7, payload, False))

    def received(self, datagram: bytes) -> RtpPacket:
        self.assertEqual(datagram[:8], TAG)
        packet = parse_rtp(self.client_rx.unprotect(datagram[8:]))
        assert isinstance(packet, RtpPacket)
        return packet

    def test_secure_opus_to_pbx_tone(self) -> None:
        """A 1 kHz tone the client sends as Opus reaches an a-law PBX as 1 kHz,
        in 160-sample frames on the PBX's 8 kHz clock."""
        bridge = make_bridge()
        encoder = opus.Encoder()
        samples = tone(1000, 0.6)
        first_seq = 65530  # the sequence and the 48 kHz timestamps wrap on the way
        packets = []
        for i in range(len(samples) // 160):
            packet = encoder.encode(samples[i * 160 : (i + 1) * 160])
            seq = (first_seq + i) & 0xFFFF
            ts = 2**32 - 3 * 960 + i * 960
            out = bridge.from_secure(self.srtp(seq, packet, ts=ts))
            parsed = parse_rtp(out or b"")
            assert isinstance(parsed, RtpPacket)
            packets.append(parsed)
        self.assertEqual({p.payload_type for p in packets}, {8})
        self.assertEqual({len(p.payload) for p in packets}, {160})
        for a, b in itertools.pairwise(packets):
            self.assertEqual((b.sequence - a.sequence) & 0xFFFF, 1)
            self.assertEqual((b.timestamp - a.timestamp) % 2**32, 160)
        audio = g711.decode(g711.PCMA, b"".join(p.payload for p in packets))
        freq, share = peak_frequency(audio[800:])
        self.assertEqual(freq, 1000)
        self.assertGreater(share, 0.9)
        self.assertEqual(bridge.counters.transcoded, len(packets))

    def test_reordered_opus_keeps_its_place(self) -> None:
        """A late Opus packet keeps its timestamp place on the PBX's clock."""
        bridge = make_bridge(g711.PCMU)
        encoder = opus.Encoder()
        frames = {seq: encoder.encode([0] * 160) for seq in (10, 11, 12, 13)}
        outs = {}
        for seq in (10, 12, 11, 13):
            packet = parse_rtp(bridge.from_secure(self.srtp(seq, frames[seq])) or b"")
            assert isinstance(packet, RtpPacket)
            outs[seq] = packet
        for seq, p in outs.items():
            self.assertEqual((p.timestamp - outs[10].timestamp) % 2**32, (seq - 10) * 160)
            self.assertEqual((p.sequence - outs[10].sequence) & 0xFFFF, seq - 10)

    def test_pbx_to_secure_opus_tone(self) -> None:
        """A 600 Hz tone from a u-law PBX reaches the client as Opus, one packet a
        tick on the 48 kHz clock, and decodes to 600 Hz."""
        bridge = make_bridge(g711.PCMU)
        samples = tone(600, 0.6)
        frames = len(samples) // 160
        decoder = opus.Decoder()
        heard: list[int] = []
        packets = []
        for i in range(frames):
            frame = g711.encode(g711.PCMU, list(samples[i * 160 : (i + 1) * 160]))
            bridge.from_pbx(encode_rtp(0, i, 8000 + i * 160, 55, frame, False))
            packet = self.received(bridge.tick())
            packets.append(packet)
            heard.extend(decoder.decode(packet.payload))
        self.assertEqual({p.payload_type for p in packets}, {opus.PAYLOAD_TYPE})
        for a, b in itertools.pairwise(packets):
            self.assertEqual((b.timestamp - a.timestamp) % 2**32, 960)
        self.assertLess(max(len(p.payload) for p in packets), 160)
        freq, share = peak_frequency(heard[1600:])
        self.assertEqual(freq, 600)
        self.assertGreater(share, 0.9)

    def test_silence_ticks_are_opus(self) -> None:
        """With nothing from the PBX, each tick still sends one Opus packet."""
        bridge = make_bridge()
        decoder = opus.Decoder()
        for _ in range(3):
            packet = self.received(bridge.tick())
            self.assertEqual(packet.payload_type, opus.PAYLOAD_TYPE)
            self.assertLess(max(map(abs, decoder.decode(packet.payload))), 100)

    def test_dtmf_durations_scaled(self) -> None:
        """Telephone-events count 48 kHz on the Opus leg and 8 kHz on the PBX's."""
        bridge = make_bridge()
        bridge.from_secure(self.srtp(1, opus.Encoder().encode([0] * 160)))
        ev = TelephoneEvent(5, False, 10, 1920)
        out = parse_rtp(bridge.from_secure(self.srtp(2, ev.encode(), pt=101)) or b"")
        assert isinstance(out, RtpPacket)
        self.assertEqual(
            (out.payload_type, parse_event(out.payload)), (96, ev.__class__(5, False, 10, 320))
        )
        bridge.from_pbx(
            encode_rtp(96, 1, 4000, 55, TelephoneEvent(1, True, 10, 640).encode(), True)
        )
        packet = self.received(bridge.tick())
        self.assertEqual(packet.payload_type, 101)
        self.assertEqual(parse_event(packet.payload), TelephoneEvent(1, True, 10, 3840))

    @settings(max_examples=100)
    @given(st.binary(min_size=1, max_size=1500))
    def test_hostile_opus_counted(self, payload: bytes) -> None:
        """Whatever an authenticated client puts in an Opus packet: G.711 out or a count."""
        bridge = make_bridge()
        self.seq = getattr(self, "seq", 0) + 1  # one client stream for every example
        out = bridge.from_secure(self.srtp(self.seq, payload))
        if out is None:
            self.assertEqual(bridge.counters.malformed, 1)
        else:
            packet = parse_rtp(out)
            assert isinstance(packet, RtpPacket)
            self.assertLessEqual(len(packet.payload), 960)

    def test_pbx_codec_change(self) -> None:
        """A re-INVITE from u-law to a-law: the transcoder follows."""
        bridge = make_bridge(g711.PCMU)
        bridge.update_pbx(PbxSide("198.51.100.7", 4000, g711.PCMA, dtmf_pt=96))
        out = parse_rtp(bridge.from_secure(self.srtp(1, opus.Encoder().encode([0] * 160))) or b"")
        assert isinstance(out, RtpPacket)
        self.assertEqual(out.payload_type, 8)
        self.assertLess(max(map(abs, g711.decode(g711.PCMA, out.payload))), 16)
