"""The bridge of a secure call on cig-relay: one :class:`Bridge` handle per call.

Both directions (:class:`~cryptify.cig.tel.legs.TelCall`,
:class:`~cryptify.cig.tel.legs.OutLeg`) bridge through the same handle:
:meth:`Bridge.add` sends ``BridgeAdd`` once, :meth:`Bridge.update` sends
``BridgeUpdate`` only while the bridge is up, :meth:`Bridge.remove` sends
``BridgeRemove`` once, and, when the call ended while ``BridgeAdd`` was on
its way, as soon as cig-relay has answered it.  The PBX leg comes from the
SIF (our RTP port and the PBX's SDP, :func:`pbx_media`), the secure leg
from the UMSG session (relay host, port and tag, the SSV's SRTP policy
key).

The handle's lifecycle (:class:`BridgeState`)::

    NONE -add-> ADDING -answer-> UP -remove-> GONE
    NONE -remove-> GONE          ADDING -refused-> GONE
    ADDING -remove-> UNWANTED -answer (BridgeRemove sent) or refused-> GONE
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from cryptify.addresses import is_wildcard
from cryptify.lifecycle import Lifecycle, check_table
from cryptify.protocols.bridge_control import BridgeAdd, BridgeRemove, BridgeUpdate
from cryptify.protocols.sip.sdp import SdpError, SrtpKeys, chosen_codec, parse_sdp

from ..calls import Call
from .keys import BadKeys

log = Logger(namespace="cryptify.cig.tel")


class BridgeLink(Protocol):
    """The cig-relay control link (:class:`~cryptify.links.relay_link.RelayLink`)."""

    def call(
        self, command: type[amp.Command], **kwargs: object
    ) -> Awaitable[dict[str, object]]: ...


class MediaSource(Protocol):
    """What a bridge needs of the SIF: a call's RTP port and the PBX's SDP."""

    def media_of(self, call: Call) -> tuple[int | None, bytes] | None: ...

    def srtp_of(self, call: Call) -> SrtpKeys | None: ...

    def direction_of(self, call: Call) -> str: ...


class SecureLeg(Protocol):
    """What a bridge needs of a secure call leg: its UMSG session and relay."""

    @property
    def call(self) -> Call: ...

    @property
    def session(self) -> str | None: ...

    @property
    def relay_host(self) -> str: ...

    @property
    def relay_port(self) -> int: ...

    @property
    def relay_tag(self) -> bytes: ...

    @property
    def policy_key(self) -> bytes: ...

    @property
    def secure_codec(self) -> str: ...


@attrs.frozen
class PbxMedia:
    """The PBX leg of a bridge, from the SDP answer."""

    host: str
    port: int
    codec: str
    dtmf_pt: int
    #: SDES keys of the PBX leg (None: plain RTP).
    srtp: SrtpKeys | None = None

    def srtp_arguments(self) -> dict[str, object]:
        """BridgeAdd/BridgeUpdate's SRTP arguments (none: plain RTP)."""
        if self.srtp is None:
            return {}
        return {
            "pbx_srtp_profile": self.srtp.suite,
            "pbx_srtp_tx_key": self.srtp.tx,
            "pbx_srtp_rx_key": self.srtp.rx,
        }


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


class BridgeState(enum.Enum):
    """A call's bridge on cig-relay."""

    #: Nothing asked of cig-relay yet.
    NONE = "none"
    #: ``BridgeAdd`` sent, not answered yet.
    ADDING = "adding"
    #: cig-relay bridges the call.
    UP = "up"
    #: The call ended while ``BridgeAdd`` was on its way: removed once answered.
    UNWANTED = "unwanted"
    #: Removed, refused, or never made.
    GONE = "gone"


BRIDGE_MOVES = check_table(
    BridgeState,
    {
        BridgeState.NONE: frozenset({BridgeState.ADDING, BridgeState.GONE}),
        BridgeState.ADDING: frozenset({BridgeState.UP, BridgeState.UNWANTED, BridgeState.GONE}),
        BridgeState.UP: frozenset({BridgeState.GONE}),
        BridgeState.UNWANTED: frozenset({BridgeState.GONE}),
        BridgeState.GONE: frozenset(),
    },
)


@attrs.define(eq=False)
class Bridge:
    """One call's bridge on cig-relay, idempotent in both directions."""

    link: BridgeLink
    media: MediaSource
    leg: SecureLeg
    #: Told the bridge's last counters once removed (None: they did not come).
    stats: Callable[[Call, dict[str, int] | None], None] | None = None
    lifecycle: Lifecycle[BridgeState] = attrs.field(
        factory=lambda: Lifecycle("Bridge", BRIDGE_MOVES, BridgeState.NONE)
    )

    @property
    def up(self) -> bool:
        """Whether cig-relay bridges the call."""
        return self.lifecycle.state is BridgeState.UP

    def add(self) -> Deferred[bool]:
        """
        Ask cig-relay to bridge the call: the secure leg through the CRS
        relay, the PBX leg from the PBX's SDP.  Fires True once the bridge
        is up; False if the call ended meanwhile (the bridge is then
        removed) or if it was asked before; fails if cig-relay refused it
        or the PBX's SDP is unusable (L{BadKeys}).
        """
        if not self.lifecycle.can(BridgeState.ADDING):
            return defer.succeed(False)
        self.lifecycle.move(BridgeState.ADDING)
        return defer.ensureDeferred(self._add())

    async def _add(self) -> bool:
        try:
            port, pbx = self._pbx()
            self.leg.call.codec = pbx.codec
            await self.link.call(
                BridgeAdd,
                call=self.leg.session,
                relay_host=self.leg.relay_host,
                relay_port=self.leg.relay_port,
                tag=self.leg.relay_tag,
                srtp_tx_key=self.leg.policy_key,
                srtp_rx_key=self.leg.policy_key,
                **self._secure_codec(),
                pbx_port=port or 0,
                pbx_host=pbx.host,
                pbx_remote_port=pbx.port,
                pbx_codec=pbx.codec,
                pbx_dtmf_pt=pbx.dtmf_pt,
                **pbx.srtp_arguments(),
                **self._direction(),
            )
        except Exception:
            self.lifecycle.move(BridgeState.GONE)
            raise
        if self.lifecycle.state is BridgeState.UNWANTED:  # hung up meanwhile
            self.lifecycle.move(BridgeState.GONE)
            self._send_remove()
            return False
        self.lifecycle.move(BridgeState.UP)
        return True

    def update(self) -> None:
        """
        Tell cig-relay where the PBX leg now is (after a re-INVITE), if the
        bridge is up.  An offer on hold (``c=0.0.0.0``) leaves it as it is.
        """
        if not self.up:
            return
        session = self.leg.session
        defer.ensureDeferred(self._update()).addErrback(
            lambda f: log.warn(
                "cannot update bridge {session}: {why}", session=session, why=f.getErrorMessage()
            )
        )

    async def _update(self) -> None:
        _, pbx = self._pbx()
        direction = self.media.direction_of(self.leg.call)
        where: dict[str, object] = {"pbx_host": pbx.host, "pbx_remote_port": pbx.port}
        if is_wildcard(pbx.host):  # RFC 2543 hold: the address stays as it was
            where = {}
        log.info(
            "session {session}: PBX leg {direction}", session=self.leg.session, direction=direction
        )
        await self.link.call(
            BridgeUpdate,
            call=self.leg.session,
            pbx_codec=pbx.codec,
            pbx_dtmf_pt=pbx.dtmf_pt,
            pbx_direction=direction,
            **where,
            **(pbx.srtp_arguments() or {"pbx_srtp_profile": ""}),
        )

    def _secure_codec(self) -> dict[str, str]:
        """BridgeAdd's secure codec argument: none for the usual PCMU."""
        codec = self.leg.secure_codec
        return {} if codec == "PCMU" else {"secure_codec": codec}

    def _direction(self) -> dict[str, str]:
        """BridgeAdd's direction argument: none for the usual sendrecv."""
        direction = self.media.direction_of(self.leg.call)
        return {} if direction == "sendrecv" else {"pbx_direction": direction}

    def remove(self) -> None:
        """The call ended: take the bridge down (at once, or once ``BridgeAdd`` is answered)."""
        state = self.lifecycle.state
        if state is BridgeState.ADDING:
            self.lifecycle.move(BridgeState.UNWANTED)
        elif state is BridgeState.UP:
            self.lifecycle.move(BridgeState.GONE)
            self._send_remove()
        elif state is BridgeState.NONE:
            self.lifecycle.move(BridgeState.GONE)

    def _send_remove(self) -> None:
        session = self.leg.session
        call = self.leg.call
        call.media_pending = True

        def failed(failure: Failure) -> None:
            log.warn(
                "cannot remove bridge {session}: {why}",
                session=session,
                why=failure.getErrorMessage(),
            )
            self._stats(None)

        defer.ensureDeferred(self._remove(session)).addErrback(failed)

    async def _remove(self, session: str | None) -> None:
        answer = await self.link.call(BridgeRemove, call=session)
        stats = answer.get("stats")
        self._stats(stats if isinstance(stats, dict) else None)

    def _stats(self, stats: dict[str, int] | None) -> None:
        call = self.leg.call
        call.media_pending = False
        if self.stats is not None:
            self.stats(call, stats)

    def _pbx(self) -> tuple[int | None, PbxMedia]:
        """The call's local RTP port and the PBX's media (BadKeys: no usable SDP)."""
        media = self.media.media_of(self.leg.call)
        pbx = pbx_media(media[1]) if media is not None else None
        if media is None or pbx is None:
            raise BadKeys("no usable SDP from the PBX")
        try:
            srtp = self.media.srtp_of(self.leg.call)
        except SdpError as exc:
            raise BadKeys(f"no SRTP keys agreed with the PBX: {exc}") from None
        return media[0], attrs.evolve(pbx, srtp=srtp)
