"""Call media: RTP/SRTP G.711 u-law (or Opus) through the CRS relay.

Each party sends one 20 ms frame every 20 ms for the whole call (silence
when it has nothing to play), as ``docs/relay.md`` asks: constant-rate
media leaks nothing through packet sizes or timing, keeps the leg latched
and keeps the relay's credit up.

A frame is 160 u-law octets in an RTP packet (payload type 0, 12-octet
header: 172 octets), protected with SRTP (AES_CM_128_HMAC_SHA1_80, so 182
octets) and sent to the relay behind the leg's 8-octet tag (190 octets).

With Opus agreed (``codecs``/``codec`` in ``invite``/``talk``,
``docs/umsg.md``), a frame is one narrowband Opus packet of the same 20 ms
(payload type 111, the 48 kHz RTP clock of RFC 7587: 960 ticks a frame),
encoded from and decoded to u-law by our libopus binding
(:mod:`cryptify.protocols.opus`); a caller sends G.711 until ``talk``
names the codec, then switches to a new SSRC.

Keys: both parties derive the same SRTP master key and salt from the
MIKEY-SAKKE SSV (``docs/crypto.md``: ``BuiltIMessage.srtp()`` on the
caller, ``ReceivedIMessage.srtp()`` on the callee, crypto session 1).
One master key then protects both directions, so the two streams must
never share an SSRC (the SSRC is part of the AES-CM counter): the
caller's SSRC has its top bit clear and the callee's set
(:func:`pick_ssrc`).

:class:`MediaStream` is sans-IO (frames in, datagrams out, datagrams in,
frames recorded); :class:`MediaLeg` is its Twisted UDP adapter, paced by
a :class:`~twisted.internet.task.LoopingCall` on the reactor's clock.
"""

from __future__ import annotations

import secrets
from array import array
from collections.abc import Callable, Sequence

import attrs
from pylibsrtp import Error as SrtpError
from pylibsrtp import Policy, Session
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall

from cryptify.client.audio import ULAW_SILENCE, ulaw_decode, ulaw_encode
from cryptify.protocols import opus, relay_packet
from cryptify.protocols.rtp import DTMF_DIGITS, RtpPacket, TelephoneEvent, parse_event, parse_rtp

#: Samples (and u-law octets) in one 20 ms frame.
FRAME_SAMPLES = 160
#: Seconds between frames.
FRAME_INTERVAL = 0.020
#: RTP payload type of G.711 u-law (PCMU).
PT_PCMU = 0
#: Octets of an RTP packet carrying one frame.
RTP_PACKET_SIZE = 12 + FRAME_SAMPLES
#: Most frames sent at once to catch up after the reactor was late.
MAX_CATCH_UP = 5
#: Most frames a recording keeps (one hour).
MAX_RECORDED_FRAMES = 3600 * 50
#: RTP payload type of RFC 4733 telephone-events (the CIG bridge's default).
PT_TELEPHONE_EVENT = 101
#: Frames one DTMF digit lasts (100 ms), then frames of audio before the next.
DTMF_FRAMES = 5
DTMF_GAP_FRAMES = 3
#: Times the end packet of a digit is sent (RFC 4733 2.5.1.4).
DTMF_END_REPEATS = 3
#: Volume of the digits we send (-10 dBm0).
DTMF_VOLUME = 10
#: Most digits waiting to be sent, and most received digits kept.
MAX_DTMF_QUEUE = 64
MAX_DTMF_RECEIVED = 1024
_SILENT_FRAME = bytes([ULAW_SILENCE]) * FRAME_SAMPLES
#: Codec names of the UMSG ``codecs``/``codec`` fields this client speaks.
PCMU = "PCMU"
OPUS = opus.OPUS
#: RTP clock ticks of one 20 ms frame, per codec.
FRAME_TICKS = {PCMU: FRAME_SAMPLES, OPUS: opus.RTP_FRAME_TICKS}
_ULAW_TABLES: list[opus.LawTables] = []


def supported_codecs() -> tuple[str, ...]:
    """The codecs this client can speak: Opus when the binding is built, and PCMU."""
    return (OPUS, PCMU) if opus.available() else (PCMU,)


def _ulaw_tables() -> opus.LawTables:
    """u-law as the Opus binding's C helpers take it (built once)."""
    if not _ULAW_TABLES:
        _ULAW_TABLES.append(
            opus.LawTables.build(
                PCMU, lambda c: ulaw_decode(bytes([c]))[0], lambda s: ulaw_encode((s,))[0], 2
            )
        )
    return _ULAW_TABLES[0]


def pick_ssrc(caller: bool) -> int:
    """A random SSRC, top bit clear for the caller and set for the callee."""
    value = secrets.randbits(31)
    return value if caller else value | 0x8000_0000


def rtp_encode(packet: RtpPacket) -> bytes:
    """An RTP packet (version 2, no CSRC, no extension, no padding)."""
    return packet.encode()


def rtp_decode(data: bytes) -> RtpPacket | None:
    """Parse an RTP packet; ``None`` when it is not one (RFC 3550 5.1)."""
    parsed = parse_rtp(data)
    return parsed if isinstance(parsed, RtpPacket) else None


def srtp_sessions(policy_key: bytes) -> tuple[Session, Session]:
    """(outbound, inbound) SRTP sessions for a MIKEY policy key (key || salt)."""
    profile = Policy.SRTP_PROFILE_AES128_CM_SHA1_80
    tx = Session(Policy(key=policy_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
    rx = Session(Policy(key=policy_key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
    return tx, rx


@attrs.define(eq=False)
class FrameSource:
    """20 ms u-law frames of some samples, then silence for ever."""

    samples: Sequence[int] = ()
    position: int = 0
    #: Play the samples again and again instead of going silent.
    loop: bool = False

    def next_frame(self) -> bytes:
        n = len(self.samples)
        if self.loop and n and self.position >= n:
            self.position = 0
        if self.position >= n:
            return _SILENT_FRAME
        chunk = list(self.samples[self.position : self.position + FRAME_SAMPLES])
        self.position += FRAME_SAMPLES
        chunk.extend([0] * (FRAME_SAMPLES - len(chunk)))
        return ulaw_encode(chunk)


@attrs.define(eq=False)
class Recorder:
    """Received frames, placed by RTP timestamp (lost frames become silence)."""

    frames: dict[int, bytes] = attrs.field(factory=dict)
    first: int | None = None
    ssrc: int | None = None
    #: RTP ticks of a frame of the stream kept (960 for Opus).
    step: int = FRAME_SAMPLES
    #: The frame index the stream kept starts at (a codec switch continues).
    base: int = 0

    def add(self, packet: RtpPacket, step: int = FRAME_SAMPLES) -> bool:
        """Keep one frame (``packet.payload``: u-law) placed by its timestamp."""
        if self.first is None or packet.ssrc != self.ssrc:
            if self.first is not None and step == self.step:
                return False  # a second stream: keep the first one's
            if self.first is not None:  # the other party switched codecs
                self.base = max(self.frames, default=-1) + 1
            self.first, self.ssrc, self.step = packet.timestamp, packet.ssrc, step
        offset = (packet.timestamp - self.first) & 0xFFFF_FFFF
        if offset >= 0x8000_0000:
            return False  # older than the first frame kept
        index = self.base + offset // step
        if index >= MAX_RECORDED_FRAMES:
            return False
        self.frames[index] = packet.payload
        return True

    def samples(self) -> array[int]:
        """Everything received as 8 kHz 16-bit samples, from the first frame."""
        if not self.frames:
            return array("h")
        last = max(self.frames)
        octets = b"".join(self.frames.get(i, _SILENT_FRAME) for i in range(last + 1))
        return ulaw_decode(octets)


@attrs.define(eq=False)
class DtmfSender:
    """Digits to send as RFC 4733 events, each replacing 100 ms of audio.

    A digit's packets all carry the timestamp of its first frame and a
    growing duration; the last one has the end bit and goes out
    :data:`DTMF_END_REPEATS` times.  :data:`DTMF_GAP_FRAMES` frames of
    audio separate two digits.
    """

    queue: list[int] = attrs.field(factory=list)
    _frame: int = 0
    _start: int = 0
    _gap: int = 0

    def add(self, digits: str) -> None:
        """Queue ``digits`` (0-9, *, #, A-D); raises ValueError on anything else."""
        codes = []
        for digit in digits.upper():
            if digit not in DTMF_DIGITS:
                raise ValueError(f"not a DTMF digit: {digit!r}")
            codes.append(DTMF_DIGITS.index(digit))
        if len(self.queue) + len(codes) > MAX_DTMF_QUEUE:
            raise ValueError(f"more than {MAX_DTMF_QUEUE} DTMF digits waiting")
        self.queue.extend(codes)

    def next_payloads(
        self, timestamp: int, step: int = FRAME_SAMPLES
    ) -> tuple[int, list[bytes]] | None:
        """The event payloads for this frame and their timestamp, or None for audio
        (``step``: RTP ticks a frame, so durations count the audio's clock)."""
        if self._gap:
            self._gap -= 1
            return None
        if not self.queue:
            return None
        if self._frame == 0:
            self._start = timestamp
        self._frame += 1
        end = self._frame == DTMF_FRAMES
        event = TelephoneEvent(self.queue[0], end, DTMF_VOLUME, self._frame * step)
        if not end:
            return self._start, [event.encode()]
        self.queue.pop(0)
        self._frame = 0
        self._gap = DTMF_GAP_FRAMES
        return self._start, [event.encode()] * DTMF_END_REPEATS


@attrs.define(eq=False)
class DtmfReceiver:
    """Digits received as RFC 4733 events, each counted once (by its timestamp)."""

    digits: list[str] = attrs.field(factory=list)
    _last: int | None = None

    def add(self, packet: RtpPacket) -> bool:
        event = parse_event(packet.payload)
        if not isinstance(event, TelephoneEvent) or event.digit is None:
            return False
        if packet.timestamp != self._last and len(self.digits) < MAX_DTMF_RECEIVED:
            self._last = packet.timestamp
            self.digits.append(event.digit)
        return True


@attrs.define(eq=False)
class MediaStream:
    """One party's media of one call, sans-IO."""

    policy_key: bytes = attrs.field(repr=False)
    tag: bytes
    ssrc: int
    source: FrameSource = attrs.field(factory=FrameSource)
    recorder: Recorder = attrs.field(factory=Recorder)
    sequence: int = attrs.field(factory=lambda: secrets.randbits(16))
    timestamp: int = attrs.field(factory=lambda: secrets.randbits(32))
    dtmf: DtmfSender = attrs.field(factory=DtmfSender)
    dtmf_received: DtmfReceiver = attrs.field(factory=DtmfReceiver)
    #: What we send: ``PCMU`` or ``opus`` (:meth:`use_codec`).
    codec: str = PCMU
    sent: int = 0
    received: int = 0
    rejected: int = 0
    _tx: Session = attrs.field(init=False, repr=False)
    _rx: Session = attrs.field(init=False, repr=False)
    _encoder: opus.Encoder | None = None
    _decoder: opus.Decoder | None = None

    def __attrs_post_init__(self) -> None:
        self._tx, self._rx = srtp_sessions(self.policy_key)
        if self.codec != PCMU:
            codec, self.codec = self.codec, PCMU
            self.use_codec(codec, new_ssrc=False)

    def use_codec(self, codec: str, new_ssrc: bool = True) -> None:
        """Send ``codec`` from now on (a caller, once ``talk`` named it): a new
        SSRC of the same half (:func:`pick_ssrc`), so the two clocks never mix."""
        if codec not in FRAME_TICKS:
            raise ValueError(f"codec {codec!r}: PCMU or opus")
        if codec == self.codec:
            return
        if codec == OPUS:
            self._encoder = opus.Encoder()
        self.codec = codec
        if new_ssrc:
            self.ssrc = pick_ssrc(not self.ssrc & 0x8000_0000)
            self.timestamp = secrets.randbits(32)

    def next_datagram(self) -> bytes:
        """The next frame as a relay datagram (tag + SRTP)."""
        return self.next_datagrams()[0]

    def next_datagrams(self) -> list[bytes]:
        """The next 20 ms as relay datagrams (tag + SRTP): one audio frame, or
        the packets of a DTMF event (the audio of that frame is skipped)."""
        audio = self.source.next_frame()
        step = FRAME_TICKS[self.codec]
        event = self.dtmf.next_payloads(self.timestamp, step)
        if event is None and self._encoder is not None and self.codec == OPUS:
            packet = self._encoder.encode_law(audio, _ulaw_tables())
            frames = [(opus.PAYLOAD_TYPE, self.timestamp, packet, self.sent == 0)]
        elif event is None:
            frames = [(PT_PCMU, self.timestamp, audio, self.sent == 0)]
        else:
            start, payloads = event
            first = start == self.timestamp
            frames = [
                (PT_TELEPHONE_EVENT, start, p, first and i == 0) for i, p in enumerate(payloads)
            ]
        out = []
        for pt, timestamp, payload, marker in frames:
            rtp = rtp_encode(RtpPacket(pt, self.sequence, timestamp, self.ssrc, payload, marker))
            self.sequence = (self.sequence + 1) & 0xFFFF
            out.append(relay_packet.encode(self.tag, self._tx.protect(rtp)))
        self.timestamp = (self.timestamp + step) & 0xFFFF_FFFF
        self.sent += 1
        return out

    def send_dtmf(self, digits: str) -> None:
        """Queue DTMF digits; raises ValueError for a character that is not one."""
        self.dtmf.add(digits)

    def datagram_received(self, data: bytes) -> bool:
        """An SRTP packet from the relay: authenticate, decrypt, record."""
        try:
            rtp = self._rx.unprotect(data)
        except SrtpError:
            self.rejected += 1
            return False
        packet = rtp_decode(rtp)
        if packet is None or packet.ssrc == self.ssrc:
            self.rejected += 1
            return False
        if packet.payload_type == PT_TELEPHONE_EVENT:
            if not self.dtmf_received.add(packet):
                self.rejected += 1
                return False
            self.received += 1
            return True
        if packet.payload_type == opus.PAYLOAD_TYPE and opus.available():
            return self._opus_received(packet)
        if packet.payload_type != PT_PCMU:
            self.rejected += 1
            return False
        self.received += 1
        self.recorder.add(packet)
        return True

    def _opus_received(self, packet: RtpPacket) -> bool:
        """An Opus frame: decoded to u-law and recorded on the 48 kHz clock."""
        if self._decoder is None:
            self._decoder = opus.Decoder()
        try:
            ulaw = self._decoder.decode_law(packet.payload, _ulaw_tables())
        except opus.OpusError:
            self.rejected += 1
            return False
        self.received += 1
        self.recorder.add(attrs.evolve(packet, payload=ulaw), opus.RTP_FRAME_TICKS)
        return True


class MediaLeg(DatagramProtocol):
    """A :class:`MediaStream` on a UDP socket, one frame every 20 ms to the relay."""

    def __init__(
        self,
        stream: MediaStream,
        relay: tuple[str, int],
        clock: IReactorTime,
        on_packet: Callable[[MediaLeg], None] | None = None,
    ) -> None:
        self.stream = stream
        self.relay = relay
        self.clock = clock
        self.on_packet = on_packet
        self.loop: LoopingCall | None = None

    def startProtocol(self) -> None:
        self.loop = LoopingCall.withCount(self._tick)
        self.loop.clock = self.clock
        self.loop.start(FRAME_INTERVAL, now=True)

    def _tick(self, count: int) -> None:
        if self.transport is None:
            return
        for _ in range(min(count, MAX_CATCH_UP)):
            for datagram in self.stream.next_datagrams():
                self.transport.write(datagram, self.relay)

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        if (addr[0], addr[1]) != self.relay:
            return
        if self.stream.datagram_received(datagram) and self.on_packet is not None:
            self.on_packet(self)

    def stop(self) -> None:
        """Stop sending and close the socket."""
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.loop = None
        if self.transport is not None:
            port = self.transport
            self.transport = None
            port.stopListening()

    def stopProtocol(self) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.loop = None
