"""The CIG media bridge's sans-IO core: one :class:`CallBridge` per call.

The secure side speaks SRTP through the CRS relay (every datagram we send
is the leg tag then an SRTP packet; what the relay sends us is bare SRTP),
the PBX side plain RTP, or SRTP when the SIP side agreed SDES keys with
the PBX (:class:`PbxSrtp`: ours protects what we send, the PBX's
unprotects what it sends; a packet that fails authentication or the
replay check is dropped and counted in ``pbx_srtp_errors``).  Both
carry G.711 (PCMU or PCMA, transcoded where the two sides differ) and
RFC 4733 telephone-events; the secure side may instead carry Opus
(``opus``: narrowband, 20 ms, payload type 111, 48 kHz RTP clock), which
the bridge decodes to and encodes from the PBX's G.711 through our libopus
binding (:mod:`cryptify.protocols.opus`).  Nothing here opens a socket or reads a
clock; the adapters in :mod:`cryptify.cig.relay.bridge_wiring` feed
datagrams in and send what comes back.

Secure -> PBX is pass-through: each packet is unprotected, transcoded and
sent at once with its sequence number and timestamp shifted into our own
stream (so the PBX's jitter buffer still sees reordering and gaps as they
were); a new SSRC from the client, or a jump of its sequence numbers
beyond :data:`SEQ_MAX_DROPOUT` forward or :data:`SEQ_MAX_MISORDER` back,
continues our stream seamlessly (its SRTP index must never leap 2^15,
RFC 3711 3.3.1, or libsrtp refuses every later packet).

PBX -> secure is clocked: the CRS relay and the secure clients expect a
constant rate both ways, so :meth:`CallBridge.tick` (every 20 ms) sends one
SRTP packet of 160 samples whatever the PBX did.  PBX audio goes through a
:class:`Playout` buffer that orders packets by timestamp, fills gaps and
underruns with silence, drops what comes too late and resynchronises on
jumps; a telephone-event from the PBX replaces the audio of the ticks it
lasts.  See ``docs/bridge.md``.
"""

from __future__ import annotations

import os
import struct

import attrs

from cryptify.cig.relay import cpath, g711
from cryptify.cig.relay.bridge_spec import (
    DIRECTIONS,
    ENGINES,
    EVENT_END_REPEATS,
    EVENT_TIMEOUT_TICKS,
    FRAME_SAMPLES,
    PLAYOUT_DELAY,
    PLAYOUT_MAX_AHEAD,
    PLAYOUT_MAX_PACKETS,
    POLICY_KEY_SIZE,
    SECURE_CODECS,
    SEQ_MAX_DROPOUT,
    SEQ_MAX_MISORDER,
    TICK_SECONDS,
    U32,
    BridgeCounters,
    BridgeSpecError,
    PbxSide,
    PbxSrtp,
    SecureSide,
    check_spec,
)
from cryptify.cig.relay.opus_leg import OPUS_SCALE, OpusLeg, OpusPaths, law, prepare_opus
from cryptify.cig.relay.playout import Playout
from cryptify.cig.relay.srtp import FastSrtp, SrtpSession, new_session
from cryptify.protocols import opus
from cryptify.protocols.rtp import (
    RtpError,
    TelephoneEvent,
    encode_rtp,
    parse_event,
    parse_rtp,
)

#: What this module gives (the spec's names included, for the bridge's users).
__all__ = [
    "DIRECTIONS",
    "EVENT_END_REPEATS",
    "FRAME_SAMPLES",
    "PLAYOUT_DELAY",
    "PLAYOUT_MAX_AHEAD",
    "PLAYOUT_MAX_PACKETS",
    "POLICY_KEY_SIZE",
    "SECURE_CODECS",
    "SEQ_MAX_DROPOUT",
    "TICK_SECONDS",
    "BridgeCounters",
    "BridgeSpecError",
    "CallBridge",
    "PbxSide",
    "PbxSrtp",
    "Playout",
    "SecureSide",
    "prepare_opus",
]

#: The RTP fixed header, and its sequence/timestamp/SSRC part.
_HEADER = struct.Struct("!BBHII")
_SEQ_TS_SSRC = struct.Struct("!HII")


def _rtp_not_rtcp(data: bytes) -> bool:
    """Whether C{data} looks like RTP (version 2, a fixed header) and not RTCP (RFC 5761)."""
    return len(data) >= 12 and data[0] & 0xC0 == 0x80 and not 72 <= data[1] & 0x7F <= 76


def _random32() -> int:
    return int.from_bytes(os.urandom(4), "big")


@attrs.define
class _EventState:
    """A telephone-event from the PBX being replayed towards the secure side."""

    pbx_timestamp: int
    event: TelephoneEvent
    secure_timestamp: int | None = None
    quiet_ticks: int = 0
    ends_sent: int = 0


@attrs.define(eq=False)
class CallBridge(OpusPaths):
    """One call's media: SRTP from the relay <-> RTP to the PBX."""

    call: str
    secure: SecureSide
    pbx: PbxSide
    counters: BridgeCounters = attrs.field(factory=BridgeCounters)
    #: C{"c"} asks for the C path (see :data:`ENGINES`); :attr:`engine_used` says
    #: which one the call got.
    engine: str = "python"
    # what we send to the PBX
    _pbx_ssrc: int = attrs.field(factory=_random32)
    _pbx_seq_base: int = attrs.field(factory=lambda: _random32() & 0xFFFF)
    _pbx_ts_base: int = attrs.field(factory=_random32)
    _client_ssrc: int | None = None
    #: The newest sequence number of the client stream (re-sequencing).
    _client_high: int = 0
    _seq_offset: int = 0
    _ts_offset: int = 0
    _last_out_ts: int = 0
    # what we send to the relay
    _secure_ssrc: int = attrs.field(factory=_random32)
    _secure_seq: int = attrs.field(factory=lambda: _random32() & 0xFFFF)
    _secure_ts: int = attrs.field(factory=_random32)
    _marker_next: bool = True
    _event: _EventState | None = None
    _last_pbx_event: tuple[int, int] | None = None
    #: The SSRC (4 octets) of the PBX stream being played out.
    _pbx_rx_ssrc: bytes | None = None
    # derived
    _tx: SrtpSession = attrs.field(init=False)
    _rx: SrtpSession = attrs.field(init=False)
    _to_pbx: bytes | None = attrs.field(init=False)
    _to_secure: bytes | None = attrs.field(init=False)
    _playout: Playout | cpath.CPlayout = attrs.field(init=False)
    _silence_frame: bytes = attrs.field(init=False)
    _tag: bytes = attrs.field(init=False, repr=False)
    _secure_pt: int = attrs.field(init=False)
    _pbx_pt: int = attrs.field(init=False)
    _pbx_known: bool = attrs.field(init=False)
    _pbx_sends: bool = attrs.field(init=False)
    _pbx_receives: bool = attrs.field(init=False)
    _pbx_srtp: PbxSrtp | None = attrs.field(init=False, default=None, repr=False)
    _pbx_tx: SrtpSession | None = attrs.field(init=False, default=None)
    _pbx_rx: SrtpSession | None = attrs.field(init=False, default=None)
    #: The Opus transcoder when the secure side is Opus (else None).
    _opus: OpusLeg | None = attrs.field(init=False, default=None)
    #: RTP clock ticks of one tick towards the secure side.
    _secure_step: int = attrs.field(init=False, default=FRAME_SAMPLES)
    #: The call's C state on the C path (else None).
    _c: cpath.CCall | None = attrs.field(init=False, default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        check_spec(self.secure, self.pbx)
        if self.engine not in ENGINES:
            raise BridgeSpecError(f"engine must be python or c, not {self.engine!r}")
        if self.engine == "c" and self.secure.codec != opus.OPUS and cpath.available():
            self._c = cpath.CCall(
                new_session(self.secure.rx_key, self.secure.profile, outbound=False),
                new_session(self.secure.tx_key, self.secure.profile, outbound=True),
            )
            self._tx, self._rx = self._c.secure_tx, self._c.secure_rx
            self._playout = self._c.playout
            self._playout.silence = g711.SILENCE[self._frame_codec()]
        else:
            self._tx = FastSrtp(new_session(self.secure.tx_key, self.secure.profile, outbound=True))
            self._rx = FastSrtp(
                new_session(self.secure.rx_key, self.secure.profile, outbound=False)
            )
            self._playout = Playout(silence=g711.SILENCE[self._frame_codec()])
        self._tag = self.secure.tag
        self._configure_pbx()
        if self._c is not None:
            st = self._c.state
            st.tag = self._tag
            self._c_tx_push(self._c)

    def _frame_codec(self) -> str:
        """The G.711 law of the frames played out: the secure side's, or the PBX's under Opus."""
        return self.pbx.codec if self.secure.codec == opus.OPUS else self.secure.codec

    def _configure_pbx(self) -> None:
        if self.secure.codec == opus.OPUS:
            # Opus is decoded straight into the PBX's law and encoded from it.
            tables = law(self.pbx.codec)
            if self._opus is None:
                self._opus = OpusLeg(tables)
            self._opus.law = tables
            self._secure_step = opus.RTP_FRAME_TICKS
            self._to_pbx = self._to_secure = None
        else:
            self._to_pbx = g711.translation(self.secure.codec, self.pbx.codec)
            self._to_secure = g711.translation(self.pbx.codec, self.secure.codec)
        silence = g711.SILENCE[self._frame_codec()]
        self._playout.silence = silence
        self._silence_frame = bytes([silence]) * FRAME_SAMPLES
        # The hot paths compare payload types and read the PBX address
        # without going through the frozen specs' properties.
        self._secure_pt = self.secure.payload_type
        self._pbx_pt = self.pbx.payload_type
        self._pbx_known = self.pbx.remote is not None
        self._pbx_sends, self._pbx_receives = self.pbx.sends, self.pbx.receives
        srtp = self.pbx.srtp
        if srtp != self._pbx_srtp:
            # New keys (or none): new sessions.  The same keys keep theirs,
            # so a re-INVITE neither reuses a keystream nor resets replay.
            self._pbx_srtp = srtp
            if srtp is None:
                self._pbx_tx = self._pbx_rx = None
                if self._c is not None:
                    self._c.set_pbx(None, None)
            elif self._c is not None:
                self._c.set_pbx(
                    new_session(srtp.rx_key, srtp.profile, outbound=False),
                    new_session(srtp.tx_key, srtp.profile, outbound=True),
                )
                self._pbx_tx, self._pbx_rx = self._c.pbx_tx, self._c.pbx_rx
            else:
                self._pbx_tx = FastSrtp(new_session(srtp.tx_key, srtp.profile, outbound=True))
                self._pbx_rx = FastSrtp(new_session(srtp.rx_key, srtp.profile, outbound=False))
        if self._c is not None:
            self._c_pull(self._c)  # the stream state stays what the C path made it
            self._c_push()

    @property
    def c_call(self) -> cpath.CCall | None:
        """The call's C state on the C path."""
        return self._c

    @property
    def engine_used(self) -> str:
        """C{"c"} when this call's packets go through the C path."""
        return "python" if self._c is None else "c"

    def _c_push(self) -> None:
        """Hand the fast paths' state to the C side (after the Python path changed it)."""
        c = self._c
        if c is None:
            return
        st = c.state
        st.client_known = self._client_ssrc is not None
        st.client_ssrc = self._client_ssrc or 0
        st.client_high = self._client_high
        st.seq_offset = self._seq_offset & 0xFFFF
        st.ts_offset = self._ts_offset % U32
        st.last_out_ts = self._last_out_ts
        st.pbx_ssrc = self._pbx_ssrc
        st.secure_pt = self._secure_pt
        st.pbx_pt = self._pbx_pt
        st.pbx_known = self._pbx_known
        st.pbx_sends = self._pbx_sends
        st.pbx_receives = self._pbx_receives
        st.translate = self._to_pbx is not None
        if self._to_pbx is not None:
            st.to_pbx = self._to_pbx
        st.translate_secure = self._to_secure is not None
        if self._to_secure is not None:
            st.to_secure = self._to_secure
        st.py_tick = self._event is not None

    def _c_pull(self, c: cpath.CCall) -> None:
        """What the C fast path changed, before the Python path goes on from it."""
        st = c.state
        self._client_high, self._seq_offset = st.client_high, st.seq_offset
        self._last_out_ts = st.last_out_ts

    def _c_tx_push(self, c: cpath.CCall) -> None:
        """Our stream towards the secure side, for the C tick."""
        st = c.state
        st.secure_ssrc = self._secure_ssrc
        st.secure_seq = self._secure_seq
        st.secure_ts = self._secure_ts
        st.marker_next = self._marker_next
        st.py_tick = self._event is not None

    def _c_tx_pull(self, c: cpath.CCall) -> None:
        """Our stream towards the secure side as the C ticks left it."""
        st = c.state
        self._secure_seq, self._secure_ts = st.secure_seq, st.secure_ts
        self._marker_next = bool(st.marker_next)

    @property
    def relay_address(self) -> tuple[str, int]:
        return (self.secure.relay_host, self.secure.relay_port)

    def update_pbx(self, pbx: PbxSide) -> None:
        """The PBX leg changed (its answer arrived, or a re-INVITE)."""
        check_spec(self.secure, pbx)
        self.pbx = pbx
        self._configure_pbx()

    # -- secure -> PBX -------------------------------------------------------

    def from_secure(self, srtp: bytes) -> bytes | None:
        """An SRTP packet from the relay; the (S)RTP packet for the PBX, if any."""
        c = self._c
        if c is not None:
            status, data = c.secure_to_pbx(srtp)
            if status != cpath.SLOW:
                return data
            assert data is not None
            return self.finish_secure(data)
        return self._to_pbx_out(self._secure_to_pbx(srtp))

    def finish_secure(self, rtp: bytes) -> bytes | None:
        """The Python path of an unprotected packet the C fast path did not take."""
        c = self._c
        assert c is not None
        self._c_pull(c)
        try:
            return self._to_pbx_out(self._after_unprotect(rtp))
        finally:  # also when the protect towards the PBX raises
            self._c_push()

    def _to_pbx_out(self, rtp: bytes | None) -> bytes | None:
        if rtp is not None and not self._pbx_sends:
            # Unprotected all the same, so the SRTP rollover count keeps up.
            self.counters.held += 1
            self.counters.pbx_tx -= 1
            return None
        if rtp is not None and self._pbx_tx is not None:
            rtp = self._pbx_tx.protect(rtp)
        if rtp is not None:
            self.counters.pbx_tx_octets += len(rtp)
        return rtp

    def _secure_to_pbx(self, srtp: bytes) -> bytes | None:
        c = self.counters
        c.secure_rx += 1
        rtp = self._rx.unprotect(srtp)
        if rtp is None:
            c.srtp_errors += 1
            return None
        return self._after_unprotect(rtp)

    def _after_unprotect(self, rtp: bytes) -> bytes | None:
        c = self.counters
        if self._opus is not None:
            return self._opus_to_pbx(rtp, self._opus)
        # Fast path: audio of the current client stream, a plain fixed
        # header (no CSRC, extension or padding), a PBX to send to.
        if rtp[0] == 0x80 and len(rtp) > 12 and (rtp[1] & 0x7F) == self._secure_pt:
            seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(rtp, 2)
            if ssrc == self._client_ssrc and self._pbx_known:
                seq = self._out_seq(seq)
                ts = (ts + self._ts_offset) % U32
                self._last_out_ts = ts
                payload = rtp[12:]
                if self._to_pbx is not None:
                    payload = payload.translate(self._to_pbx)
                    c.transcoded += 1
                c.pbx_tx += 1
                second = (rtp[1] & 0x80) | self._pbx_pt
                return _HEADER.pack(0x80, second, seq, ts, self._pbx_ssrc) + payload
        packet = parse_rtp(rtp)
        if isinstance(packet, RtpError):
            c.malformed += 1
            return None
        pt = packet.payload_type
        payload = packet.payload
        if pt == self.secure.payload_type:
            out_pt = self.pbx.payload_type
            if self._to_pbx is not None:
                payload = payload.translate(self._to_pbx)
                c.transcoded += 1
        elif pt == self.secure.dtmf_pt and self.pbx.dtmf_pt is not None:
            if isinstance(parse_event(payload), RtpError):
                c.malformed += 1
                return None
            out_pt = self.pbx.dtmf_pt
            c.events_to_pbx += 1
        else:
            c.unknown_pt += 1
            return None
        marker = packet.marker
        if packet.ssrc != self._client_ssrc:
            if self._client_ssrc is None:
                self._ts_offset = self._pbx_ts_base - packet.timestamp
            else:
                step = len(payload) if out_pt == self.pbx.payload_type else FRAME_SAMPLES
                self._ts_offset = self._last_out_ts + step - packet.timestamp
            self._new_client_stream(packet.ssrc, packet.sequence)
            marker = True
        seq = self._out_seq(packet.sequence)
        ts = (packet.timestamp + self._ts_offset) % U32
        self._last_out_ts = ts
        if self.pbx.remote is None:
            c.no_destination += 1
            return None
        c.pbx_tx += 1
        return encode_rtp(out_pt, seq, ts, self._pbx_ssrc, payload, marker)

    def _new_client_stream(self, ssrc: int, seq: int) -> None:
        """A new client SSRC: its first packet continues our stream by one."""
        if self._client_ssrc is None:
            self._seq_offset = (self._pbx_seq_base - seq) & 0xFFFF
        else:
            newest = self._client_high + self._seq_offset
            self._seq_offset = (newest + 1 - seq) & 0xFFFF
        self._client_ssrc = ssrc
        self._client_high = seq

    def _out_seq(self, seq: int) -> int:
        """Our sequence number towards the PBX for ``seq`` of the client stream.

        Steps within RFC 3550's limits (loss up to :data:`SEQ_MAX_DROPOUT`,
        reordering up to :data:`SEQ_MAX_MISORDER`) are kept; a larger jump
        (the client's own restart, or a wrap its SRTP index estimation cannot
        follow) continues our stream by one, so that our SRTP index, which
        libsrtp and the PBX estimate from the sequence number (RFC 3711
        3.3.1), never leaps 2^15 and is never refused again and again."""
        step = (seq - self._client_high) & 0xFFFF
        if step >= 0x8000:
            step -= 0x10000
        if step > SEQ_MAX_DROPOUT or step < -SEQ_MAX_MISORDER:
            self._seq_offset = (self._client_high + self._seq_offset + 1 - seq) & 0xFFFF
            self._client_high = seq
        elif step > 0:
            self._client_high = seq
        return (seq + self._seq_offset) & 0xFFFF

    # -- PBX -> secure -------------------------------------------------------

    def from_pbx(self, data: bytes) -> None:
        """An (S)RTP packet from the PBX: buffered for the next ticks."""
        cc = self._c
        if cc is not None:
            rtp = cc.pbx_in(data)
            if rtp is not None:
                self.pbx_slow(rtp)
            return
        c = self.counters
        c.pbx_rx += 1
        c.pbx_rx_octets += len(data)
        if self._pbx_rx is not None:
            rtp = self._pbx_rx.unprotect(data)
            if rtp is None:
                c.pbx_srtp_errors += 1
                return
            data = rtp
        if not self._pbx_receives:  # unprotected all the same: the rollover count keeps up
            c.held += 1
            return
        ssrc = data[8:12]
        if ssrc != self._pbx_rx_ssrc and _rtp_not_rtcp(data):
            # Another stream (the answering phone after a PBX's early media,
            # say): its timestamps have nothing to do with the last one's.
            if self._pbx_rx_ssrc is not None:
                self._playout.restart()
            self._pbx_rx_ssrc = ssrc
        # Fast path: audio with a plain fixed header.
        if data[0:1] == b"\x80" and len(data) > 12 and (data[1] & 0x7F) == self._pbx_pt:
            payload = data[12:]
            if self._to_secure is not None:
                payload = payload.translate(self._to_secure)
                c.transcoded += 1
            self._playout.push(int.from_bytes(data[4:8], "big"), payload)
            return
        self._pbx_packet(data)

    def pbx_slow(self, rtp: bytes) -> None:
        """The Python path of an unprotected PBX packet the C path did not take."""
        try:
            self._pbx_packet(rtp)
        finally:
            if self._c is not None:
                self._c.state.py_tick = self._event is not None

    def _pbx_packet(self, data: bytes) -> None:
        c = self.counters
        packet = parse_rtp(data)
        if isinstance(packet, RtpError):
            c.malformed += 1
            return
        pt = packet.payload_type
        if pt == self.pbx.payload_type:
            payload = packet.payload
            if self._to_secure is not None:
                payload = payload.translate(self._to_secure)
                c.transcoded += 1
            self._playout.push(packet.timestamp, payload)
        elif pt == self.pbx.dtmf_pt and self.secure.dtmf_pt is not None:
            event = parse_event(packet.payload)
            if isinstance(event, RtpError):
                c.malformed += 1
                return
            self._pbx_event(packet.timestamp, event)
        else:
            c.unknown_pt += 1

    def _pbx_event(self, timestamp: int, event: TelephoneEvent) -> None:
        key = (timestamp, event.event)
        state = self._event
        if state is not None and (state.pbx_timestamp, state.event.event) == key:
            if state.event.end:
                return
            if event.end or event.duration >= state.event.duration:
                state.event = event
                state.quiet_ticks = 0
            return
        if key == self._last_pbx_event:
            return  # a late repeat of an event already ended
        self._last_pbx_event = key
        self._event = _EventState(timestamp, event)

    def tick(self) -> bytes:
        """The datagram for the relay this tick (tag + SRTP), always one."""
        cc = self._c
        if cc is None:
            return self._tick()
        out = cc.tick()
        if out is not None:
            return out
        # A telephone-event under way: Python ticks, on the C side's stream.
        self._c_tx_pull(cc)
        try:
            return self._tick()
        finally:
            self._c_tx_push(cc)

    def _tick(self) -> bytes:
        c = self.counters
        audio = self._playout.pull(FRAME_SAMPLES)
        ts = self._secure_ts
        marker = self._marker_next
        self._marker_next = False
        state = self._event
        if state is not None:
            if state.secure_timestamp is None:
                state.secure_timestamp = ts
                marker = True
            event = state.event
            if not event.end:
                state.quiet_ticks += 1
                if state.quiet_ticks > EVENT_TIMEOUT_TICKS:
                    event = state.event = attrs.evolve(event, end=True)
            if event.end:
                state.ends_sent += 1
                if state.ends_sent >= EVENT_END_REPEATS:
                    self._last_pbx_event = (state.pbx_timestamp, event.event)
                    self._event = None
            pt = self.secure.dtmf_pt
            assert pt is not None
            if self._opus is not None:
                duration = min(0xFFFF, event.duration * OPUS_SCALE)
                event = attrs.evolve(event, duration=duration)
            rtp = encode_rtp(
                pt, self._secure_seq, state.secure_timestamp, self._secure_ssrc,
                event.encode(), marker,
            )  # fmt: skip
            c.events_to_secure += 1
        else:
            payload = self._silence_frame if audio is None else audio
            leg = self._opus
            if leg is not None:
                payload = leg.encoder.encode_law(payload, leg.law)
                if audio is not None:
                    c.transcoded += 1
            second = self._secure_pt | 0x80 if marker else self._secure_pt
            rtp = _HEADER.pack(0x80, second, self._secure_seq, ts, self._secure_ssrc) + payload
        self._secure_seq = (self._secure_seq + 1) & 0xFFFF
        self._secure_ts = (ts + self._secure_step) % U32
        c.secure_tx += 1
        return self._tag + self._tx.protect(rtp)

    def snapshot(self) -> dict[str, int]:
        """The call's counters, the playout's and the C path's included."""
        p = self._playout
        c = self.counters
        if self._c is not None:
            for name, value in self._c.take_counters().items():
                setattr(c, name, getattr(c, name) + value)
        c.late, c.concealed, c.underruns, c.resyncs = p.late, p.concealed, p.underruns, p.resyncs
        return c.as_dict()
