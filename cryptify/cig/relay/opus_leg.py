"""The Opus side of a bridged call (``secure_codec opus``): the G.711 law
tables of the transcoder, one call's decoder, encoder and timestamp map, and
the secure -> PBX path of an Opus call (:class:`OpusPaths`, a part of
:class:`~cryptify.cig.relay.bridge_core.CallBridge`); ``docs/bridge.md``,
"Opus on the secure leg"."""

from __future__ import annotations

import functools

import attrs

from cryptify.cig.relay import g711
from cryptify.cig.relay.bridge_spec import (
    FRAME_SAMPLES,
    HALF32,
    OPUS_COMPLEXITY,
    U32,
    BridgeCounters,
    PbxSide,
    SecureSide,
)
from cryptify.protocols import opus
from cryptify.protocols.rtp import RtpError, encode_rtp, parse_event, parse_rtp

#: RTP clock ticks of an Opus frame per tick of the PBX's 8 kHz clock.
OPUS_SCALE = opus.RTP_FRAME_TICKS // FRAME_SAMPLES


@functools.cache
def law(codec: str) -> opus.LawTables:
    """The C tables of a G.711 law for the Opus transcoder (built once)."""
    if codec == g711.PCMU:  # u-law ignores the 2 low bits, a-law the 3 low bits
        return opus.LawTables.build(codec, g711.ulaw_to_linear, g711.linear_to_ulaw, 2)
    return opus.LawTables.build(codec, g711.alaw_to_linear, g711.linear_to_alaw, 3)


def prepare_opus() -> None:
    """Build the transcoder's tables now (cig-relay's start), not in the first
    Opus call's ``BridgeAdd``, where it would hold every call's clock."""
    if opus.available():
        law(g711.PCMU)
        law(g711.PCMA)


@attrs.define(eq=False)
class OpusLeg:
    """The Opus side of a call: one decoder and one encoder, both in the PBX's law.

    Timestamps of what goes to the PBX follow the client's 48 kHz clock
    scaled to 8 kHz: ``ref_in``/``ref_out`` are the newest client
    timestamp and the PBX timestamp it became.
    """

    law: opus.LawTables
    decoder: opus.Decoder = attrs.field(factory=opus.Decoder)
    encoder: opus.Encoder = attrs.field(factory=lambda: opus.Encoder(complexity=OPUS_COMPLEXITY))
    ref_in: int = 0
    ref_out: int = 0

    def pbx_timestamp(self, timestamp: int) -> int:
        """The PBX timestamp of a client timestamp (reordering kept, wrap handled)."""
        delta = (timestamp - self.ref_in) % U32
        if delta >= HALF32:
            delta -= U32
        out = (self.ref_out + delta // OPUS_SCALE) % U32
        if delta > 0:
            self.ref_in, self.ref_out = timestamp, out
        return out


class OpusPaths:
    """:class:`~cryptify.cig.relay.bridge_core.CallBridge`'s secure -> PBX path
    for an Opus secure leg (the attributes are the bridge's)."""

    counters: BridgeCounters
    secure: SecureSide
    pbx: PbxSide
    _client_ssrc: int | None
    _pbx_ts_base: int
    _last_out_ts: int
    _pbx_pt: int
    _pbx_known: bool
    _pbx_ssrc: int

    def _new_client_stream(self, ssrc: int, seq: int) -> None:
        raise NotImplementedError

    def _out_seq(self, seq: int) -> int:
        raise NotImplementedError

    def _opus_to_pbx(self, rtp: bytes, leg: OpusLeg) -> bytes | None:
        """An Opus (or telephone-event) packet from the client, as G.711 for the PBX."""
        c = self.counters
        packet = parse_rtp(rtp)
        if isinstance(packet, RtpError):
            c.malformed += 1
            return None
        pt = packet.payload_type
        if pt == opus.PAYLOAD_TYPE:
            try:
                payload = leg.decoder.decode_law(packet.payload, leg.law)
            except opus.OpusError:
                c.malformed += 1
                return None
            out_pt = self._pbx_pt
            c.transcoded += 1
        elif pt == self.secure.dtmf_pt and self.pbx.dtmf_pt is not None:
            event = parse_event(packet.payload)
            if isinstance(event, RtpError):
                c.malformed += 1
                return None
            # RFC 4733 durations count the audio's clock: 48 kHz here, 8 kHz there.
            event = attrs.evolve(event, duration=event.duration // OPUS_SCALE)
            payload = event.encode()
            out_pt = self.pbx.dtmf_pt
            c.events_to_pbx += 1
        else:
            c.unknown_pt += 1
            return None
        marker = packet.marker
        if packet.ssrc != self._client_ssrc:
            if self._client_ssrc is None:
                leg.ref_out = self._pbx_ts_base
            else:
                leg.ref_out = (self._last_out_ts + FRAME_SAMPLES) % U32
            leg.ref_in = packet.timestamp
            self._new_client_stream(packet.ssrc, packet.sequence)
            marker = True
        seq = self._out_seq(packet.sequence)
        ts = leg.pbx_timestamp(packet.timestamp)
        self._last_out_ts = ts
        if not self._pbx_known:
            c.no_destination += 1
            return None
        c.pbx_tx += 1
        return encode_rtp(out_pt, seq, ts, self._pbx_ssrc, payload, marker)
