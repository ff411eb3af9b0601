"""The CIG relay process (``cig-relay``): the media bridge's control.

:class:`BridgeControl` answers the CIG server's control connection: the
heartbeat and counters every relay answers (:class:`Poll`,
:class:`RelayStats`) and the bridge commands of
:mod:`cryptify.protocols.bridge_control`, each carried out by the
:class:`~cryptify.cig.relay.bridge_wiring.BridgeService`.  ``docs/bridge.md``
describes the contract.
"""

from __future__ import annotations

from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from cryptify import __version__
from cryptify.cig.relay import g711
from cryptify.cig.relay.bridge_spec import PbxSide, PbxSrtp, SecureSide
from cryptify.cig.relay.bridge_wiring import BridgeRefused, BridgeService
from cryptify.protocols.bridge_control import (
    BridgeAdd,
    BridgeError,
    BridgeRemove,
    BridgeStats,
    BridgeUpdate,
)
from cryptify.protocols.relay_control import Poll, RelayStats

log = Logger(namespace="cryptify.cig.relay")

#: The telephone-event payload type when a command does not name one.
DEFAULT_DTMF_PT = 101


def _dtmf(pt: int | None) -> int | None:
    """A payload type from a command: absent means the default, negative means none."""
    if pt is None:
        return DEFAULT_DTMF_PT
    return None if pt < 0 else pt


def _pbx_srtp(profile: str | None, tx_key: bytes | None, rx_key: bytes | None) -> PbxSrtp | None:
    """The PBX leg's SRTP from a command's arguments (None: plain RTP)."""
    if not profile:
        if tx_key or rx_key:
            raise BridgeError("PBX SRTP keys without a profile")
        return None
    if tx_key is None or rx_key is None:
        raise BridgeError("PBX SRTP needs both keys")
    return PbxSrtp(profile, tx_key, rx_key)


class BridgeControl(amp.CommandLocator):
    """Responders for the CIG server's control connection."""

    def __init__(self, bridges: BridgeService) -> None:
        super().__init__()
        self.bridges = bridges

    @Poll.responder
    def poll(self, server: str) -> dict[str, object]:
        log.debug("poll from {server}", server=server)
        return {"sessions": len(self.bridges.calls), "version": __version__}

    @RelayStats.responder
    def stats(self) -> dict[str, object]:
        totals = self.bridges.stats()
        assert totals is not None
        return {"stats": dict(totals, sessions=totals["calls"])}

    @BridgeAdd.responder
    def bridge_add(
        self,
        call: str,
        relay_host: str,
        relay_port: int,
        tag: bytes,
        srtp_tx_key: bytes,
        srtp_rx_key: bytes,
        secure_codec: str | None = None,
        secure_dtmf_pt: int | None = None,
        srtp_profile: str | None = None,
        pbx_port: int | None = None,
        pbx_host: str | None = None,
        pbx_remote_port: int | None = None,
        pbx_codec: str | None = None,
        pbx_dtmf_pt: int | None = None,
        pbx_srtp_profile: str | None = None,
        pbx_srtp_tx_key: bytes | None = None,
        pbx_srtp_rx_key: bytes | None = None,
        pbx_direction: str | None = None,
    ) -> dict[str, object]:
        srtp = _pbx_srtp(pbx_srtp_profile, pbx_srtp_tx_key, pbx_srtp_rx_key)
        secure = SecureSide(
            relay_host,
            relay_port,
            tag,
            srtp_tx_key,
            srtp_rx_key,
            codec=secure_codec or g711.PCMU,
            dtmf_pt=_dtmf(secure_dtmf_pt),
            profile=srtp_profile or "AES_CM_128_HMAC_SHA1_80",
        )
        pbx = PbxSide(
            pbx_host,
            pbx_remote_port,
            pbx_codec or g711.PCMU,
            _dtmf(pbx_dtmf_pt),
            srtp,
            pbx_direction or "sendrecv",
        )
        try:
            ports = self.bridges.add(call, secure, pbx, pbx_port or 0)
        except BridgeRefused as exc:
            log.warn("Bridge {call} refused: {why}", call=call, why=str(exc))
            raise BridgeError(str(exc)) from None
        return {"secure_port": ports[0], "pbx_port": ports[1]}

    @BridgeUpdate.responder
    def bridge_update(
        self,
        call: str,
        pbx_host: str | None = None,
        pbx_remote_port: int | None = None,
        pbx_codec: str | None = None,
        pbx_dtmf_pt: int | None = None,
        pbx_srtp_profile: str | None = None,
        pbx_srtp_tx_key: bytes | None = None,
        pbx_srtp_rx_key: bytes | None = None,
        pbx_direction: str | None = None,
    ) -> dict[str, object]:
        bridged = self.bridges.calls.get(call)
        if bridged is None:
            return {"updated": False}
        old = bridged.core.pbx
        srtp = old.srtp
        if pbx_srtp_profile is not None:
            srtp = _pbx_srtp(pbx_srtp_profile, pbx_srtp_tx_key, pbx_srtp_rx_key)
        pbx = PbxSide(
            pbx_host if pbx_host is not None else old.remote_host,
            pbx_remote_port if pbx_remote_port is not None else old.remote_port,
            pbx_codec or old.codec,
            old.dtmf_pt if pbx_dtmf_pt is None else _dtmf(pbx_dtmf_pt),
            srtp,
            pbx_direction or old.direction,
        )
        try:
            return {"updated": self.bridges.update(call, pbx)}
        except BridgeRefused as exc:
            raise BridgeError(str(exc)) from None

    @BridgeRemove.responder
    def bridge_remove(self, call: str) -> dict[str, object]:
        stats = self.bridges.remove(call)
        return {"removed": stats is not None, "stats": stats or {}}

    @BridgeStats.responder
    def bridge_stats(self, call: str | None = None) -> dict[str, object]:
        stats = self.bridges.stats(call)
        if stats is None:
            raise BridgeError(f"call {call} is not bridged")
        return {"stats": stats}


class BridgeControlProtocol(amp.AMP):
    """One control connection from the CIG server."""

    def connectionMade(self) -> None:
        amp.AMP.connectionMade(self)
        log.info("CIG server connected")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        amp.AMP.connectionLost(self, reason)
        log.info("CIG server disconnected")


def control_factory(bridges: BridgeService) -> Factory[BridgeControlProtocol]:
    """Factory of control connections, all driving ``bridges``."""
    locator = BridgeControl(bridges)
    factory = Factory.forProtocol(lambda: BridgeControlProtocol(locator=locator))  # type: ignore[no-untyped-call]
    factory.noisy = False
    return factory
