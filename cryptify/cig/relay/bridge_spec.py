"""What a bridge is asked to do: each side's codec, address, keys and
direction (:class:`SecureSide`, :class:`PbxSide`, checked by
:func:`check_spec`), the bridge's limits and its counters.

The bridge itself is :mod:`cryptify.cig.relay.bridge_core`.
"""

from __future__ import annotations

import attrs
from pylibsrtp import Policy

from cryptify.cig.relay import g711
from cryptify.protocols import opus, relay_packet

#: Samples per tick (20 ms of 8 kHz audio) and the tick period.
FRAME_SAMPLES = 160
TICK_SECONDS = 0.020
#: Playout delay of PBX audio (samples buffered ahead of the cursor).
PLAYOUT_DELAY = 2 * FRAME_SAMPLES
#: A packet starting further ahead than this resynchronises the playout.
PLAYOUT_MAX_AHEAD = 10 * FRAME_SAMPLES
#: Packets held in the playout buffer at most.
PLAYOUT_MAX_PACKETS = 32
#: Re-sequencing towards the PBX (RFC 3550 A.1's limits): a client step of
#: up to this many sequence numbers forward, or this many back, reaches the
#: PBX as it was (loss, reordering); a larger jump continues our stream by
#: one, so that its SRTP index never leaps 2^15 (RFC 3711 3.3.1).
SEQ_MAX_DROPOUT = 3000
SEQ_MAX_MISORDER = 100
#: Times an event's end packet is sent (RFC 4733 2.5.1.4).
EVENT_END_REPEATS = 3
#: Ticks without an update after which a PBX event is ended by us.
EVENT_TIMEOUT_TICKS = 10
#: SRTP master key || master salt (AES-CM-128: 16 + 14 bytes).
POLICY_KEY_SIZE = 30
#: SRTP profiles by their SDES names.
SRTP_PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}

#: Codecs of the secure leg: G.711, or Opus (transcoded to the PBX's G.711).
SECURE_CODECS = (g711.PCMU, g711.PCMA, opus.OPUS)
#: The bridge's Opus encoder complexity (0..10): 3 costs about 3/4 of the
#: default 5's CPU (``bench/cig_media.py``) for narrowband speech alike to the ear.
OPUS_COMPLEXITY = 3

#: Where a call's packets are handled: C{"python"}, or C{"c"} (the C path of
#: :mod:`cryptify.cig.relay.cpath`, for a G.711 secure leg where it was built;
#: others stay in Python).
ENGINES = ("python", "c")

#: The RFC 3264 directions of the PBX leg.
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

#: RTP timestamps are 32-bit: their modulus and half of it.
U32 = 1 << 32
HALF32 = 1 << 31


class BridgeSpecError(ValueError):
    """A bridge request that cannot be carried out as given."""


@attrs.frozen
class SecureSide:
    """The secure leg: the CRS relay's address, our leg tag, SRTP, payload types.

    ``tx_key``/``rx_key`` are pylibsrtp policy keys (master key || salt,
    ``SrtpKeying.policy_key``) for what we send and what we receive; they
    may be equal (one MIKEY crypto session for both directions).
    """

    relay_host: str
    relay_port: int
    tag: bytes = attrs.field(repr=False)
    tx_key: bytes = attrs.field(repr=False)
    rx_key: bytes = attrs.field(repr=False)
    codec: str = g711.PCMU
    dtmf_pt: int | None = 101
    profile: str = "AES_CM_128_HMAC_SHA1_80"

    @property
    def payload_type(self) -> int:
        if self.codec == opus.OPUS:
            return opus.PAYLOAD_TYPE
        return g711.STATIC_PAYLOAD_TYPES[self.codec]


@attrs.frozen
class PbxSrtp:
    """SRTP on the PBX leg: the SDES suite, our key (``tx``) and the PBX's (``rx``).

    Each key is the SDES ``inline:`` key, master key || salt (30 bytes);
    neither is ever in a repr.
    """

    profile: str
    tx_key: bytes = attrs.field(repr=False)
    rx_key: bytes = attrs.field(repr=False)


@attrs.frozen
class PbxSide:
    """The PBX leg: where to send RTP (None until known), codec, DTMF type, SRTP keys."""

    remote_host: str | None
    remote_port: int | None
    codec: str = g711.PCMU
    dtmf_pt: int | None = 101
    #: None: plain RTP.
    srtp: PbxSrtp | None = None
    #: Our side of the PBX leg as the SDP says (RFC 3264): C{sendrecv};
    #: C{recvonly} (the PBX holds the call: nothing is sent to it);
    #: C{sendonly} (we hold it: what it sends is not played);
    #: C{inactive} (neither).
    direction: str = "sendrecv"

    @property
    def payload_type(self) -> int:
        return g711.STATIC_PAYLOAD_TYPES[self.codec]

    @property
    def sends(self) -> bool:
        """Whether media goes to the PBX."""
        return self.direction in ("sendrecv", "sendonly")

    @property
    def receives(self) -> bool:
        """Whether the PBX's media is played to the secure side."""
        return self.direction in ("sendrecv", "recvonly")

    @property
    def remote(self) -> tuple[str, int] | None:
        if self.remote_host is None or not self.remote_port:
            return None
        return (self.remote_host, self.remote_port)


def check_spec(secure: SecureSide, pbx: PbxSide) -> None:
    """Raise :class:`BridgeSpecError` for anything the bridge cannot use."""
    if len(secure.tag) != relay_packet.TAG_SIZE:
        raise BridgeSpecError(f"the leg tag is {relay_packet.TAG_SIZE} bytes")
    for name, key in (("tx", secure.tx_key), ("rx", secure.rx_key)):
        if len(key) != POLICY_KEY_SIZE:
            raise BridgeSpecError(f"the SRTP {name} key is {POLICY_KEY_SIZE} bytes (key || salt)")
    if secure.profile not in SRTP_PROFILES:
        raise BridgeSpecError(f"unknown SRTP profile {secure.profile!r}")
    if pbx.srtp is not None:
        for name, key in (("tx", pbx.srtp.tx_key), ("rx", pbx.srtp.rx_key)):
            if len(key) != POLICY_KEY_SIZE:
                raise BridgeSpecError(
                    f"the PBX SRTP {name} key is {POLICY_KEY_SIZE} bytes (key || salt)"
                )
        if pbx.srtp.profile not in SRTP_PROFILES:
            raise BridgeSpecError(f"unknown PBX SRTP profile {pbx.srtp.profile!r}")
    if secure.codec not in SECURE_CODECS:
        raise BridgeSpecError(f"secure codec must be PCMU, PCMA or opus, not {secure.codec!r}")
    if secure.codec == opus.OPUS and not opus.available():
        raise BridgeSpecError("secure codec opus: this cig-relay was built without libopus")
    if pbx.codec not in g711.STATIC_PAYLOAD_TYPES:
        raise BridgeSpecError(f"pbx codec must be PCMU or PCMA, not {pbx.codec!r}")
    for side, pt in (("secure", secure.dtmf_pt), ("pbx", pbx.dtmf_pt)):
        if pt is not None and not 96 <= pt <= 127:
            raise BridgeSpecError(f"{side} telephone-event payload type must be 96-127")
    if not 0 < secure.relay_port < 65536:
        raise BridgeSpecError("relay port out of range")
    if pbx.direction not in DIRECTIONS:
        raise BridgeSpecError("PBX direction must be sendrecv, sendonly, recvonly or inactive")


@attrs.define
class BridgeCounters:
    """What happened to a call's media (also summed over calls)."""

    secure_rx: int = 0  # SRTP packets received from the relay
    secure_tx: int = 0  # SRTP packets sent to the relay (one per tick)
    pbx_rx: int = 0  # RTP packets received from the PBX
    pbx_tx: int = 0  # RTP packets sent to the PBX
    srtp_errors: int = 0  # failed authentication or replay check
    pbx_srtp_errors: int = 0  # the same on the PBX leg (SRTP towards the PBX)
    malformed: int = 0  # not RTP, RTCP, or a bad telephone-event
    unknown_pt: int = 0  # payload type not negotiated (or no DTMF on the other side)
    no_destination: int = 0  # PBX packets with no PBX address yet
    late: int = 0  # PBX audio that came after its playout time
    concealed: int = 0  # ticks with a gap filled by silence
    underruns: int = 0  # ticks with no PBX audio at all
    resyncs: int = 0  # playout jumps (timestamp jump or drift)
    transcoded: int = 0  # audio frames converted between u-law and a-law, or Opus and G.711
    events_to_pbx: int = 0  # telephone-event packets sent to the PBX
    events_to_secure: int = 0  # telephone-event packets sent to the relay
    tx_errors: int = 0  # sends the kernel refused (counted by the adapter)
    pbx_rx_octets: int = 0  # octets of the datagrams received from the PBX
    pbx_tx_octets: int = 0  # octets of the datagrams sent to the PBX
    held: int = 0  # packets not passed on because that direction is on hold

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self)

    def add(self, other: BridgeCounters) -> None:
        """Add ``other``'s counts to these."""
        for field in attrs.fields(BridgeCounters):
            name = field.name
            setattr(self, name, getattr(self, name) + getattr(other, name))
