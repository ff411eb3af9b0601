"""cryptify.client.media: RTP, SRTP streams, recording, the paced UDP leg."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.client import audio, media
from cryptify.protocols import relay_packet

KEY = bytes(range(30))
TAG_A, TAG_B = b"A" * 8, b"B" * 8


def pair() -> tuple[media.MediaStream, media.MediaStream]:
    caller = media.MediaStream(KEY, TAG_A, media.pick_ssrc(True))
    callee = media.MediaStream(KEY, TAG_B, media.pick_ssrc(False))
    return caller, callee


def relayed(datagram: bytes) -> bytes:
    """What the relay forwards: the datagram without its tag."""
    parsed = relay_packet.parse(datagram)
    assert isinstance(parsed, tuple)
    return parsed[1]


class RtpTests(SynchronousTestCase):
    """RTP header encoding and parsing."""

    def test_round_trip(self) -> None:
        """rtp_encode then rtp_decode gives the packet back; 160 octets make 172."""
        packet = media.RtpPacket(0, 65535, 2**32 - 1, 0xDEADBEEF, bytes(160), marker=True)
        data = media.rtp_encode(packet)
        self.assertEqual(len(data), media.RTP_PACKET_SIZE)
        self.assertEqual(media.rtp_decode(data), packet)

    def test_csrc_extension_padding(self) -> None:
        """CSRCs, a header extension and padding are skipped."""
        head = bytes([0xB1, 0x00, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3])  # P, X, CC=1
        data = head + bytes(4) + b"\xbe\xde\x00\x01" + bytes(4) + b"abc" + b"\x00\x02"
        parsed = media.rtp_decode(data)
        assert parsed is not None
        self.assertEqual(parsed.payload, b"abc")

    def test_refused(self) -> None:
        """Short, version 1, bad padding or a truncated extension: not RTP."""
        for data in (
            bytes(11),
            bytes([0x40]) + bytes(11),
            bytes([0xA0]) + bytes(10) + b"\x00",
            bytes([0xA0]) + bytes(11) + b"\x40",
            bytes([0x90]) + bytes(11) + b"\x00",
        ):
            self.assertIsNone(media.rtp_decode(data), data)

    @given(st.binary(max_size=64))
    def test_any_octets(self, data: bytes) -> None:
        """rtp_decode never raises: a packet or None."""
        parsed = media.rtp_decode(data)
        if parsed is not None:
            self.assertLessEqual(len(parsed.payload), len(data) - 12)


class StreamTests(SynchronousTestCase):
    """Two MediaStreams keyed alike talk to each other through a pretend relay."""

    def test_ssrcs_differ(self) -> None:
        """The caller's SSRC has its top bit clear, the callee's set."""
        for _ in range(50):
            self.assertLess(media.pick_ssrc(True), 2**31)
            self.assertGreaterEqual(media.pick_ssrc(False), 2**31)

    def test_both_ways(self) -> None:
        """Each side records the other's frames; datagrams are tag + 182 octets."""
        caller, callee = pair()
        caller.source = media.FrameSource(audio.tone(1000, 0.2))
        callee.source = media.FrameSource(audio.tone(1500, 0.2))
        for _ in range(10):
            a, b = caller.next_datagram(), callee.next_datagram()
            self.assertEqual((len(a), a[:8]), (8 + media.RTP_PACKET_SIZE + 10, TAG_A))
            self.assertTrue(callee.datagram_received(relayed(a)))
            self.assertTrue(caller.datagram_received(relayed(b)))
        self.assertEqual(audio.peak_frequency(callee.recorder.samples())[0], 1000)
        self.assertEqual(audio.peak_frequency(caller.recorder.samples())[0], 1500)
        self.assertEqual(len(caller.recorder.samples()), 1600)

    def test_silence_after_source(self) -> None:
        """When the source runs out, frames keep coming, as silence."""
        source = media.FrameSource(audio.tone(1000, 0.03))
        frames = [source.next_frame() for _ in range(3)]
        self.assertEqual(len({len(f) for f in frames}), 1)
        self.assertEqual(frames[2], bytes([audio.ULAW_SILENCE]) * 160)
        self.assertNotEqual(frames[1][:80], bytes([audio.ULAW_SILENCE]) * 80)
        self.assertEqual(frames[1][80:], bytes([audio.ULAW_SILENCE]) * 80)  # padded
        looped = media.FrameSource(audio.tone(1000, 0.02), loop=True)
        self.assertEqual(looped.next_frame(), looped.next_frame())

    def test_forged_and_replayed(self) -> None:
        """A packet under another key, a replay, an echo of our own SSRC: refused."""
        caller, callee = pair()
        stranger = media.MediaStream(os.urandom(30), TAG_A, media.pick_ssrc(True))
        self.assertFalse(callee.datagram_received(relayed(stranger.next_datagram())))
        good = relayed(caller.next_datagram())
        self.assertTrue(callee.datagram_received(good))
        self.assertFalse(callee.datagram_received(good))
        echo = relayed(callee.next_datagram())
        self.assertFalse(callee.datagram_received(echo))
        self.assertEqual((callee.received, callee.rejected), (1, 3))

    def test_lost_and_late_frames(self) -> None:
        """A lost frame is recorded as silence; frames are placed by timestamp."""
        caller, callee = pair()
        caller.source = media.FrameSource([1000] * 800)
        packets = [relayed(caller.next_datagram()) for _ in range(4)]
        for index in (0, 3, 1):
            callee.datagram_received(packets[index])
        samples = callee.recorder.samples()
        self.assertEqual(len(samples), 640)
        self.assertEqual(set(samples[320:480]), {0})
        self.assertEqual(set(samples[160:320]) - {0}, {samples[0]})

    def test_recorder_bounds(self) -> None:
        """Frames older than the first, from a second SSRC, or too far ahead are dropped."""
        recorder = media.Recorder()
        first = media.RtpPacket(0, 1, 1000, 7, b"x" * 160)
        self.assertTrue(recorder.add(first))
        self.assertFalse(recorder.add(media.RtpPacket(0, 0, 840, 7, b"y" * 160)))
        self.assertFalse(recorder.add(media.RtpPacket(0, 2, 1160, 8, b"y" * 160)))
        far = 1000 + 160 * media.MAX_RECORDED_FRAMES
        self.assertFalse(recorder.add(media.RtpPacket(0, 3, far, 7, b"y" * 160)))
        self.assertTrue(recorder.add(media.RtpPacket(0, 2, (1000 + 160) & 0xFFFFFFFF, 7, b"z")))
        self.assertEqual(media.Recorder().samples().tolist(), [])


class DtmfTests(SynchronousTestCase):
    """RFC 4733 digits sent in place of audio frames, and received once each."""

    def test_digits_cross(self) -> None:
        """Two digits: 5 event packets each (the end one three times), one timestamp
        per digit, durations growing; sequence numbers run on; the far side
        counts each digit once and records the audio between them."""
        caller, callee = pair()
        caller.send_dtmf("1#")
        sent: list[media.RtpPacket] = []
        for _ in range(20):
            for datagram in caller.next_datagrams():
                callee.datagram_received(relayed(datagram))
                sent.append(self._clear(datagram))
        events = [p for p in sent if p.payload_type == media.PT_TELEPHONE_EVENT]
        self.assertEqual(len(events), 2 * (media.DTMF_FRAMES - 1 + media.DTMF_END_REPEATS))
        self.assertEqual(len({p.timestamp for p in events}), 2)
        first = events[: media.DTMF_FRAMES - 1 + media.DTMF_END_REPEATS]
        parsed = [media.parse_event(p.payload) for p in first]
        self.assertEqual([e.duration for e in parsed], [160, 320, 480, 640, 800, 800, 800])
        self.assertEqual([e.end for e in parsed], [False] * 4 + [True] * 3)
        self.assertEqual([p.marker for p in first], [True] + [False] * 6)
        self.assertEqual({e.digit for e in parsed}, {"1"})
        seqs = [p.sequence for p in sent]
        self.assertEqual(seqs, [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))])
        self.assertEqual(callee.dtmf_received.digits, ["1", "#"])
        audio_frames = [p for p in sent if p.payload_type == media.PT_PCMU]
        self.assertEqual(len(audio_frames), 20 - 2 * media.DTMF_FRAMES)

    def _clear(self, datagram: bytes) -> media.RtpPacket:
        rx = media.srtp_sessions(KEY)[1]
        packet = media.rtp_decode(rx.unprotect(relayed(datagram)))
        assert packet is not None
        return packet

    def test_refused_digits(self) -> None:
        """Not a digit, or too many waiting: ValueError, nothing queued."""
        caller, _ = pair()
        with self.assertRaises(ValueError):
            caller.send_dtmf("12x")
        with self.assertRaises(ValueError):
            caller.send_dtmf("1" * (media.MAX_DTMF_QUEUE + 1))
        self.assertEqual(caller.dtmf.queue, [])

    @given(st.binary(max_size=8), st.integers(0, 2**32 - 1))
    def test_any_event_payload(self, payload: bytes, timestamp: int) -> None:
        """Any telephone-event payload is taken or refused, never raises."""
        receiver = media.DtmfReceiver()
        packet = media.RtpPacket(media.PT_TELEPHONE_EVENT, 0, timestamp, 1, payload)
        if receiver.add(packet):
            self.assertEqual(len(receiver.digits), 1)


class _Port:
    """A fake UDP port: records writes."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any]] = []
        self.stopped = False

    def write(self, data: bytes, addr: Any) -> None:
        self.written.append((data, addr))

    def stopListening(self) -> None:
        self.stopped = True


class LegTests(SynchronousTestCase):
    """MediaLeg paces frames on the clock and only listens to the relay."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.caller, self.callee = pair()
        self.got: list[media.MediaLeg] = []
        self.leg = media.MediaLeg(self.callee, ("127.0.0.1", 146), self.clock, self.got.append)
        self.port = _Port()
        self.leg.transport = self.port  # type: ignore[assignment]
        self.leg.startProtocol()

    def test_steady_rate(self) -> None:
        """One frame now and one every 20 ms; a late reactor catches up (at most 5)."""
        self.assertEqual(len(self.port.written), 1)
        for _ in range(49):
            self.clock.advance(0.02)
        self.assertEqual(len(self.port.written), 50)
        self.assertEqual({addr for _, addr in self.port.written}, {("127.0.0.1", 146)})
        self.clock.advance(0.06)
        self.assertEqual(len(self.port.written), 53)
        self.clock.advance(1.0)
        self.assertEqual(len(self.port.written), 53 + media.MAX_CATCH_UP)

    def test_receive_only_from_relay(self) -> None:
        """A datagram from the relay is recorded; one from elsewhere is ignored."""
        packet = relayed(self.caller.next_datagram())
        self.leg.datagramReceived(packet, ("10.0.0.1", 146))
        self.assertEqual(self.got, [])
        self.leg.datagramReceived(packet, ("127.0.0.1", 146))
        self.assertEqual(self.got, [self.leg])

    def test_stop(self) -> None:
        """stop() ends the pacing and closes the port."""
        self.leg.stop()
        self.clock.advance(1)
        self.assertEqual(len(self.port.written), 1)
        self.assertTrue(self.port.stopped)
        self.leg.stopProtocol()
        self.assertEqual(self.clock.getDelayedCalls(), [])
