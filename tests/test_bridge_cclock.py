"""The CIG bridge's clocked direction in C (playout buffer, tick, one clock for
every call) against the Python reference, and the re-sequencing of what goes
to the PBX (a client's sequence jump must not stop SRTP towards the PBX).

- ``Playout`` and ``CPlayout`` take the same pushes and pulls (hypothesis:
  any frame sizes, reordering, loss, duplicates, jumps, wrap) and answer the
  same frames and counters.
- Two cores, one per engine, fed a realistic PBX stream (20 ms, jitter,
  loss, reordering, telephone-events, a new SSRC) and ticked, send the same
  datagrams.
- ``BridgeService`` on real loopback sockets ticks its C calls from C.
"""

from __future__ import annotations

import select
import socket
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pylibsrtp import Error as SrtpError
from pylibsrtp import Policy, Session
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from cryptify.cig.relay import cpath, g711
from cryptify.cig.relay.bridge_core import CallBridge, PbxSide, PbxSrtp, SecureSide
from cryptify.cig.relay.bridge_spec import FRAME_SAMPLES, SEQ_MAX_DROPOUT, TICK_SECONDS
from cryptify.cig.relay.bridge_wiring import BridgeService
from cryptify.cig.relay.playout import Playout
from cryptify.config.cig_model import SipInterface
from cryptify.protocols.rtp import RtpPacket, encode_rtp, parse_event, parse_rtp

TAG = b"T" * 8
KEY_OUT = bytes(range(30))
KEY_IN = bytes(range(30, 60))
OURS = bytes(range(100, 130))
THEIRS = bytes(range(130, 160))
SUITE = "AES_CM_128_HMAC_SHA1_80"
SAME = {
    "pbx_ssrc": 0x11223344,
    "pbx_seq_base": 0x9000,
    "pbx_ts_base": 0xFFFFF000,
    "secure_ssrc": 0x55667788,
    "secure_seq": 0xFFFE,
    "secure_ts": 0xFFFFFF00,
}

skip_unbuilt = None if cpath.available() else "the C path (_cbridge) was not built"


def session(key: bytes, outbound: bool) -> Session:
    kind = Policy.SSRC_ANY_OUTBOUND if outbound else Policy.SSRC_ANY_INBOUND
    return Session(
        Policy(key=key, ssrc_type=kind, srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
    )


def pair(pbx: PbxSide, secure_codec: str = g711.PCMU) -> tuple[CallBridge, CallBridge]:
    secure = SecureSide("192.0.2.1", 146, TAG, KEY_OUT, KEY_IN, secure_codec)
    py = CallBridge("p", secure, pbx, engine="python", **SAME)  # type: ignore[call-arg]
    c = CallBridge("c", secure, pbx, engine="c", **SAME)  # type: ignore[call-arg]
    return py, c


frame_sizes = st.sampled_from([160, 160, 160, 160, 80, 240, 320, 1, 7, 400])
playout_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("push"),
            # step from the stream's position, in samples
            st.sampled_from([160, 160, 160, 0, -160, -480, 320, 80, 1700, -1700, 1 << 31]),
            frame_sizes,
        ),
        st.tuples(st.just("pull"), st.sampled_from([160, 160, 80, 320]), st.just(0)),
        st.tuples(st.just("restart"), st.just(0), st.just(0)),
    ),
    max_size=120,
)


class PlayoutTests(SynchronousTestCase):
    """The C playout buffer is playout.py's, frame for frame."""

    skip = skip_unbuilt

    @settings(max_examples=300, deadline=None)
    @given(
        start=st.integers(0, 0xFFFFFFFF),
        silence=st.sampled_from([0xFF, 0xD5]),
        ops=playout_ops,
    )
    def test_same_frames(self, start: int, silence: int, ops: list[tuple[str, int, int]]) -> None:
        ref = Playout(silence=silence)
        call = cpath.CCall(session(KEY_IN, False), session(KEY_OUT, True))
        c = call.playout
        c.silence = silence
        ts = start
        for i, (op, step, size) in enumerate(ops):
            if op == "push":
                ts = (ts + step) % (1 << 32)
                frame = bytes((i + k) & 0xFF for k in range(size))
                ref.push(ts, frame)
                c.push(ts, frame)
            elif op == "pull":
                self.assertEqual(ref.pull(step), c.pull(step))
            else:
                ref.restart()
                c.restart()
            counts = (ref.late, ref.concealed, ref.underruns, ref.resyncs, len(ref.frames))
            self.assertEqual(counts, (c.late, c.concealed, c.underruns, c.resyncs, c.frames))


pbx_steps = st.lists(
    st.one_of(
        st.sampled_from(["ok"] * 12 + ["lost", "swap", "dup", "late", "burst", "jump"]),
        st.sampled_from(["tick", "tick", "event", "ssrc", "sendonly", "sendrecv"]),
    ),
    min_size=20,
    max_size=150,
)


class StreamTests(SynchronousTestCase):
    """A realistic PBX stream through both engines: the same datagrams each tick."""

    skip = skip_unbuilt

    @settings(max_examples=120, deadline=None)
    @given(
        steps=pbx_steps,
        codecs=st.sampled_from([(g711.PCMU, g711.PCMU), (g711.PCMA, g711.PCMU)]),
        srtp=st.booleans(),
    )
    def test_same_ticks(self, steps: list[str], codecs: tuple[str, str], srtp: bool) -> None:
        secure_codec, pbx_codec = codecs
        keys = PbxSrtp(SUITE, OURS, THEIRS) if srtp else None
        pbx = PbxSide("198.51.100.7", 4000, pbx_codec, 101, keys)
        py, c = pair(pbx, secure_codec)
        phone = session(THEIRS, True)
        pt = g711.STATIC_PAYLOAD_TYPES[pbx_codec]
        seq, ts, ssrc, held = 100, 5000, 9, []
        event_at: int | None = None

        def packet(pt: int, seq: int, ts: int, payload: bytes) -> bytes:
            rtp = encode_rtp(pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, payload, False)
            return phone.protect(rtp) if srtp else rtp

        def deliver(data: bytes) -> None:
            py.from_pbx(data)
            c.from_pbx(data)

        for i, step in enumerate(steps):
            if step == "tick":
                self.assertEqual(py.tick(), c.tick())
            elif step == "event":
                event_at = ts if event_at is None else event_at
                body = bytes([5, 0x0A]) + (160 * (i % 7 + 1)).to_bytes(2, "big")
                deliver(packet(101, seq, event_at, body))
                seq += 1
            elif step == "ssrc":
                ssrc += 1
            elif step in ("sendonly", "sendrecv"):
                pbx = PbxSide("198.51.100.7", 4000, pbx_codec, 101, keys, step)
                py.update_pbx(pbx)
                c.update_pbx(pbx)
            else:
                frames = [(seq, ts, bytes([i & 0xFF]) * FRAME_SAMPLES)]
                if step == "burst":
                    frames += [(seq + 1, ts + 160, bytes([(i + 1) & 0xFF]) * 160)]
                if step == "jump":
                    ts += 4000
                seq += len(frames)
                ts += FRAME_SAMPLES * len(frames)
                if step == "lost":
                    continue
                if step == "late":
                    frames = [(s, t - 2000, f) for s, t, f in frames]
                data = [packet(pt, s, t, f) for s, t, f in frames]
                if step == "swap":
                    held.extend(data)
                    continue
                for d in data + held:
                    deliver(d)
                    if step == "dup":
                        deliver(d)
                held = []
            self.assertEqual(py.snapshot(), c.snapshot())


class HostileTests(SynchronousTestCase):
    """Hostile datagrams from the PBX (any bytes, any length, RTCP, version
    0, CSRC lists claiming more than there is) crash neither engine, and both
    count and play them alike."""

    skip = skip_unbuilt

    @settings(max_examples=200, deadline=None)
    @given(
        datagrams=st.lists(
            st.one_of(
                st.binary(max_size=40),
                st.binary(min_size=160, max_size=2100),
                st.builds(
                    lambda head, body: bytes([0x80 | (head & 0x3F)]) + body,
                    st.integers(0, 255),
                    st.binary(max_size=200),
                ),
            ),
            max_size=30,
        ),
        srtp=st.booleans(),
    )
    def test_any_bytes(self, datagrams: list[bytes], srtp: bool) -> None:
        keys = PbxSrtp(SUITE, OURS, THEIRS) if srtp else None
        py, c = pair(PbxSide("198.51.100.7", 4000, g711.PCMU, 101, keys))
        for data in datagrams:
            py.from_pbx(data)
            c.from_pbx(data)
            self.assertEqual(py.tick(), c.tick())
            self.assertEqual(py.snapshot(), c.snapshot())


class ResequenceTests(SynchronousTestCase):
    """What goes to the PBX is our own stream: loss and reordering pass as they
    were, a jump of the client's sequence numbers continues ours by one, so
    SRTP towards the PBX goes on (libsrtp refused every packet after a jump
    of 2^15 or more, both engines)."""

    def bridges(self) -> list[CallBridge]:
        pbx = PbxSide("198.51.100.7", 4000, g711.PCMU, 101, PbxSrtp(SUITE, OURS, THEIRS))
        secure = SecureSide("192.0.2.1", 146, TAG, KEY_OUT, KEY_IN)
        engines = ["python"] + (["c"] if cpath.available() else [])
        return [
            CallBridge(e, secure, pbx, engine=e, **SAME)  # type: ignore[call-arg]
            for e in engines
        ]

    def run_client(self, bridge: CallBridge, seqs: list[int]) -> list[RtpPacket]:
        """The client sends ``seqs`` (timestamps follow); what the PBX decrypts."""
        client, pbx = session(KEY_IN, True), session(OURS, False)
        got = []
        for seq in seqs:
            rtp = encode_rtp(0, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, 7, bytes(160), False)
            try:
                srtp = bridge.from_secure(client.protect(rtp))
            except SrtpError:
                srtp = None
            self.assertIsNotNone(srtp, f"{bridge.engine}: nothing sent for {seq}")
            assert srtp is not None
            packet = parse_rtp(pbx.unprotect(srtp))
            assert isinstance(packet, RtpPacket)
            got.append(packet)
        return got

    def test_jump_of_half_the_space(self) -> None:
        """A client jump of 2^15 (and more) keeps SRTP to the PBX going, one step on."""
        for jump in (0x8000, 0x8001, 0xC000):
            for bridge in self.bridges():
                seqs = [10, 11, 12] + [12 + jump + k for k in range(1, 6)]
                got = self.run_client(bridge, seqs)
                out = [p.sequence for p in got]
                self.assertEqual(out, [(0x9000 + k) & 0xFFFF for k in range(8)], bridge.engine)
                self.assertEqual(bridge.snapshot()["pbx_tx"], 8)

    def test_small_steps_kept(self) -> None:
        """Loss and reordering within RFC 3550's limits reach the PBX as they were."""
        for bridge in self.bridges():
            seqs = [10, 11, 14, 13, 15, 15 + SEQ_MAX_DROPOUT, 16 + SEQ_MAX_DROPOUT + 1]
            out = [p.sequence - 0x9000 for p in self.run_client(bridge, seqs)]
            self.assertEqual(out, [0, 1, 4, 3, 5, 5 + SEQ_MAX_DROPOUT, 7 + SEQ_MAX_DROPOUT])

    def test_wrap_is_no_jump(self) -> None:
        """The client's sequence numbers wrapping at 2^16 is a step of one."""
        for bridge in self.bridges():
            seqs = [0xFFFD, 0xFFFE, 0xFFFF, 0x10000, 0x10001]
            out = [(p.sequence - 0x9000) & 0xFFFF for p in self.run_client(bridge, seqs)]
            self.assertEqual(out, [0, 1, 2, 3, 4])

    def test_new_stream_after_reordering_reuses_no_index(self) -> None:
        """A new client SSRC continues after the newest number sent, not the last one."""
        for bridge in self.bridges():
            client, pbx = session(KEY_IN, True), session(OURS, False)
            out = []
            for seq, ssrc in ((10, 7), (12, 7), (11, 7), (500, 8), (501, 8)):
                rtp = encode_rtp(0, seq, seq * 160, ssrc, bytes(160), False)
                srtp = bridge.from_secure(client.protect(rtp))
                assert srtp is not None
                packet = parse_rtp(pbx.unprotect(srtp))
                assert isinstance(packet, RtpPacket)
                out.append(packet.sequence - 0x9000)
            self.assertEqual(out, [0, 2, 1, 3, 4], bridge.engine)


@implementer(IReactorFDSet)
class FdReactor(Clock):
    """A Clock with a real reactor's reader registration (readers recorded)."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: list[Any] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.remove(reader)


class ServiceClockTests(SynchronousTestCase):
    """``BridgeService`` ticks its C path calls in one C loop over real sockets;
    a call with a telephone-event under way is ticked in Python, on the same
    stream; a removed call is ticked no more."""

    skip = skip_unbuilt

    def udp(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        self.addCleanup(sock.close)
        return sock

    def test_clock_in_c(self) -> None:
        reactor = FdReactor()
        service = BridgeService(reactor, sip=SipInterface(bind="127.0.0.1"))
        service.startService()
        self.addCleanup(service.stopService)
        relay, phone = self.udp(), self.udp()
        calls = {}
        for name in ("a", "b"):
            secure = SecureSide("127.0.0.1", relay.getsockname()[1], TAG, KEY_OUT, KEY_IN)
            here = phone.getsockname()
            secure_port, pbx_port = service.add(name, secure, PbxSide(here[0], here[1]))
            calls[name] = (secure_port, pbx_port)
            self.assertEqual(service.calls[name].core.engine_used, "c")
        (poller,) = reactor.readers
        rx = {port: session(KEY_OUT, False) for port, _ in calls.values()}
        heard: dict[int, list[RtpPacket]] = {port: [] for port in rx}
        for tick in range(12):
            for k, (name, (_secure_port, pbx_port)) in enumerate(sorted(calls.items())):
                if name == "a" and tick == 6:  # a telephone-event from the PBX
                    payload, pt, ts = bytes([5, 0x8A, 0, 160]), 101, 1000 + 160 * tick
                else:
                    payload, pt, ts = bytes([0x10 * k + tick]) * 160, 0, 1000 + 160 * tick
                rtp = encode_rtp(pt, tick, ts, 40 + k, payload, False)
                phone.sendto(rtp, ("127.0.0.1", pbx_port))
            select.select([], [], [], 0.05)
            poller.doRead()
            reactor.advance(TICK_SECONDS)
            while select.select([relay], [], [], 0.05)[0]:
                datagram, source = relay.recvfrom(2048)
                self.assertEqual(datagram[:8], TAG)
                packet = parse_rtp(rx[source[1]].unprotect(datagram[8:]))
                assert isinstance(packet, RtpPacket)
                heard[source[1]].append(packet)
        a, b = heard[calls["a"][0]], heard[calls["b"][0]]
        stats = service.stats()
        assert stats is not None
        # (a Clock advanced by 0.02 s steps may come due a step late: a catch-up)
        self.assertEqual(stats["secure_tx"], len(a) + len(b))
        self.assertEqual(len(a), len(b))
        self.assertGreaterEqual(len(a), 10)
        for stream in (a, b):
            seqs = [p.sequence for p in stream]
            self.assertEqual(seqs, [(seqs[0] + i) & 0xFFFF for i in range(len(stream))])
        # b: silence for the playout delay, then its frames in order
        played = [p.payload[0] for p in b if p.payload != b"\xff" * 160]
        self.assertEqual(played, [0x10 + t for t in range(len(played))])
        self.assertGreater(len(played), 5)
        # a: the event replaced the audio of its ticks (sent by Python's tick)
        events = [p for p in a if p.payload_type == 101]
        self.assertTrue(events)
        event = parse_event(events[0].payload)
        self.assertEqual(getattr(event, "event", None), 5)
        service.remove("a")
        reactor.advance(2 * TICK_SECONDS)
        sources = set()
        while select.select([relay], [], [], 0.05)[0]:
            sources.add(relay.recvfrom(2048)[1][1])
        self.assertEqual(sources, {calls["b"][0]})

    def test_late_clock_reads_one_frame_a_tick(self) -> None:
        """A late clock's catch-up reads one datagram per C leg before each
        made-up tick: the queued PBX frames play in order, no resync, none late."""
        reactor = FdReactor()
        service = BridgeService(reactor, sip=SipInterface(bind="127.0.0.1"))
        service.startService()
        self.addCleanup(service.stopService)
        relay, phone = self.udp(), self.udp()
        secure = SecureSide("127.0.0.1", relay.getsockname()[1], TAG, KEY_OUT, KEY_IN)
        here = phone.getsockname()
        _secure_port, pbx_port = service.add("a", secure, PbxSide(here[0], here[1]))
        for k in range(10):
            rtp = encode_rtp(0, k, 1000 + 160 * k, 9, bytes([0x20 + k]) * 160, False)
            phone.sendto(rtp, ("127.0.0.1", pbx_port))
        select.select([], [], [], 0.1)
        reactor.advance(12 * TICK_SECONDS)  # one late wakeup: 12 ticks due
        rx = session(KEY_OUT, False)
        got = []
        while select.select([relay], [], [], 0.05)[0]:
            packet = parse_rtp(rx.unprotect(relay.recv(2048)[8:]))
            assert isinstance(packet, RtpPacket)
            got.append(packet.payload[0])
        self.assertGreaterEqual(len(got), 11)
        played = [b for b in got if b != 0xFF]
        self.assertEqual(played, [0x20 + k for k in range(len(played))])
        self.assertGreaterEqual(len(played), 8)
        stats = service.stats("a")
        assert stats is not None
        self.assertEqual((stats["resyncs"], stats["late"], stats["pbx_rx"]), (0, 0, 10))

    def test_update_moves_the_pbx(self) -> None:
        """A BridgeUpdate's new PBX address is where C sends from then on."""
        reactor = FdReactor()
        service = BridgeService(reactor, sip=SipInterface(bind="127.0.0.1"))
        self.addCleanup(service.stopService)
        first, second, client_sock = self.udp(), self.udp(), self.udp()
        secure = SecureSide("127.0.0.1", 9, TAG, KEY_OUT, KEY_IN)
        here = first.getsockname()
        secure_port, _ = service.add("a", secure, PbxSide(here[0], here[1]))
        (poller,) = reactor.readers
        client = session(KEY_IN, True)
        for k, sink in enumerate((first, first, second, second)):
            if k == 2:
                there = second.getsockname()
                self.assertTrue(service.update("a", PbxSide(there[0], there[1])))
            rtp = encode_rtp(0, k, 160 * k, 5, bytes([k]) * 160, False)
            client_sock.sendto(client.protect(rtp), ("127.0.0.1", secure_port))
            select.select([], [], [], 0.05)
            poller.doRead()
            select.select([sink], [], [], 2)
            self.assertEqual(sink.recv(2048)[12], k)
