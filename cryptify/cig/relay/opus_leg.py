"""The Opus side of a bridged call (``secure_codec opus``): the G.711 law
tables of the transcoder and one call's decoder, encoder and timestamp map
(``docs/bridge.md``, "Opus on the secure leg")."""

from __future__ import annotations

import functools

import attrs

from cryptify.cig.relay import g711
from cryptify.cig.relay.bridge_spec import FRAME_SAMPLES, HALF32, OPUS_COMPLEXITY, U32
from cryptify.protocols import opus

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
