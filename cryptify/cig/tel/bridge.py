"""The bridge of a secure call on cig-relay: ``BridgeAdd`` and ``BridgeUpdate``.

The PBX leg comes from the SIF (our RTP port and the PBX's SDP,
:func:`pbx_media`), the secure leg from the UMSG session (relay host, port
and tag, the SSV's SRTP policy key).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

import attrs
from twisted.logger import Logger
from twisted.protocols import amp

from cryptify.protocols.bridge_control import BridgeAdd, BridgeUpdate
from cryptify.protocols.sip.sdp import SdpError, chosen_codec, parse_sdp

from .keys import BadKeys

log = Logger(namespace="cryptify.cig.tel")


class BridgeLink(Protocol):
    """The cig-relay control link (:class:`~cryptify.protocols.relay_control.RelayLink`)."""

    def call(self, command: type[amp.Command], **kwargs: Any) -> Awaitable[dict[str, Any]]: ...


@attrs.frozen
class PbxMedia:
    """The PBX leg of a bridge, from the SDP answer."""

    host: str
    port: int
    codec: str
    dtmf_pt: int


def pbx_media(sdp: bytes) -> PbxMedia | None:
    """The PBX's media address, codec and telephone-event type (None: unusable)."""
    try:
        parsed = parse_sdp(sdp)
    except SdpError:
        return None
    audio = parsed.audio()
    codec = chosen_codec(parsed)
    host = (audio.address if audio is not None else None) or parsed.address
    if audio is None or codec is None or host is None or audio.port == 0:
        return None
    dtmf = -1
    for pt, value in audio.rtpmap:
        if value.lower().startswith("telephone-event/") and pt in audio.formats:
            dtmf = int(pt)
            break
    return PbxMedia(host, audio.port, codec, dtmf)


def _pbx_leg(leg: Any) -> tuple[int | None, PbxMedia]:
    """A call's local RTP port and the PBX's media (BadKeys: no usable SDP)."""
    media = leg.tel.sip.media_of(leg.call)
    pbx = pbx_media(media[1]) if media is not None else None
    if media is None or pbx is None:
        raise BadKeys("no usable SDP from the PBX")
    return media[0], pbx


async def add_bridge(leg: Any) -> None:
    """Ask cig-relay to bridge a call: the secure leg through the CRS relay
    (its host, port and tag, the SRTP key from the SSV) and the PBX leg from
    the PBX's SDP.  ``leg`` is a :class:`TelCall` or an :class:`OutLeg`."""
    port, pbx = _pbx_leg(leg)
    await leg.tel.bridge.call(
        BridgeAdd,
        call=leg.session,
        relay_host=leg.relay_host,
        relay_port=leg.relay_port,
        tag=leg.relay_tag,
        srtp_tx_key=leg.policy_key,
        srtp_rx_key=leg.policy_key,
        pbx_port=port or 0,
        pbx_host=pbx.host,
        pbx_remote_port=pbx.port,
        pbx_codec=pbx.codec,
        pbx_dtmf_pt=pbx.dtmf_pt,
    )


async def update_bridge(leg: Any) -> None:
    """Tell cig-relay where the PBX leg of a bridged call now is (after a
    re-INVITE).  An offer on hold (``c=0.0.0.0``) leaves the bridge as it is."""
    _, pbx = _pbx_leg(leg)
    if pbx.host in ("0.0.0.0", "::"):
        log.info("session {session}: PBX media on hold", session=leg.session)
        return
    await leg.tel.bridge.call(
        BridgeUpdate,
        call=leg.session,
        pbx_host=pbx.host,
        pbx_remote_port=pbx.port,
        pbx_codec=pbx.codec,
        pbx_dtmf_pt=pbx.dtmf_pt,
    )
