"""The CIG's tel side over UMSG: secure calls to the PBX, bridged by cig-relay.

:class:`UmsgTel` is fed the UIF session's events (:meth:`UmsgTel.handle`).
An incoming ``invite`` for ``tel:+NUMBER;EXT`` is verified and
decapsulated with the CIG's keys (MIKEY-SAKKE, as
:mod:`cryptify.client.calls` does it); a bad one is hung up ``bad-keys``.
A good one is routed from ``tel`` (:class:`~cryptify.cig.route.Router`)
and placed on the SIP side (:meth:`~cryptify.cig.sif.Sif.place_call`),
whose progress comes back through :class:`TelCall` (a
:class:`~cryptify.cig.calls.TelLeg`):

- SIP 18x -> UMSG ``ringing``;
- SIP 200 -> ``BridgeAdd`` on cig-relay (secure leg: the invite's relay
  host, port and tag, the SSV's SRTP policy key both ways, as the client
  uses it; PBX leg: our RTP port and the PBX's SDP answer), then UMSG
  ``talk``; a refused bridge hangs both legs up;
- a SIP rejection -> UMSG ``hangup`` with a code for the status;
- BYE from the PBX, or ``hangup`` from the secure side, ends the other leg
  and removes the bridge.

The SIF keeps the call's row in ``show call`` and its ``session.log``
lines; a call that never reaches the SIF (refused keys or route) is
logged here.
"""

from __future__ import annotations

import collections
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from cryptify.addresses import is_wildcard
from cryptify.client.connection import ConnectionEnded, Event
from cryptify.client.session import Answered, ClientSession, Disconnected, Incoming
from cryptify.crypto import mikey
from cryptify.crypto.errors import CryptoError
from cryptify.crypto.identity import period_of, split_tel_identifier, tel_identifier
from cryptify.crypto.keymaterial import KeyMaterial
from cryptify.crypto.replay import ReplayGuard
from cryptify.protocols.bridge_control import BridgeAdd, BridgeRemove, BridgeUpdate
from cryptify.protocols.sip.sdp import SdpError, chosen_codec, parse_sdp
from cryptify.protocols.umsg import Message, base_uri

from .calls import ENDED, Call, CallState, CallTable, TelLeg, TelSide
from .route import TEL, Router, RouteRefused

log = Logger(namespace="cryptify.cig.tel")

#: UMSG hangup codes for SIP final statuses (others: ``unavailable``).
SIP_CODES = {
    404: "not-found",
    484: "not-found",
    408: "no-answer",
    480: "no-answer",
    486: "busy",
    600: "busy",
    603: "rejected",
}


class BadKeys(Exception):
    """The invite's I_MESSAGE cannot be used."""


class BridgeLink(Protocol):
    """The cig-relay control link (:class:`~cryptify.links.relay_link.RelayLink`)."""

    def call(self, command: type[amp.Command], **kwargs: Any) -> Awaitable[dict[str, Any]]: ...


class SipSide(Protocol):
    """What the tel side needs of the SIF."""

    def place_call(self, call: Call, leg: TelLeg) -> object: ...

    def hang_up(self, call: Call) -> None: ...

    def media_of(self, call: Call) -> tuple[int | None, bytes] | None: ...


#: ``show umsg`` states: being created, invite sent, ringing, talking, ended.
CREATE, BANG, GROWL, TALK, HANGUP = "CREATE", "BANG", "GROWL", "TALK", "HANGUP"
#: Seconds an ended call stays in ``show umsg``, and how many such rows are kept.
UMSG_LINGER = 30.0
MAX_ENDED_ROWS = 1000


def _age(created: float, now: float) -> str:
    return str(max(0, int(now - created)))


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
    if is_wildcard(pbx.host):
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


@attrs.define(eq=False)
class Decapsulator:
    """Verifies and decapsulates invites with the CIG's key material."""

    material: KeyMaterial = attrs.field(repr=False)
    replay: ReplayGuard = attrs.field(factory=lambda: ReplayGuard(window=300))
    _keys: dict[str, tuple[Any, Any]] = attrs.field(factory=dict, repr=False)

    def _period(self, period: str) -> tuple[Any, Any]:
        if period not in self._keys:
            keys = self.material.for_period(period)
            self._keys[period] = (keys, keys.receiver(keys.public_key()))
        return self._keys[period]

    def _receiver(self, identifier: bytes) -> Any:
        period, uri = split_tel_identifier(identifier)
        if uri != base_uri(self.material.uri):
            raise BadKeys("the I_MESSAGE is for someone else")
        return self._period(period)[1]

    def policy_key(self, msg: Message, now: float) -> bytes:
        """The SRTP policy key of an invite.

        @raise BadKeys: if the I_MESSAGE does not verify, is not for us, is
            a replay or is signed by someone other than C{from}.
        """
        try:
            keys = self._period(period_of(now))[0]
            got = mikey.receive_i_message(
                msg["mikey"], kpak=keys.kpak, receiver=self._receiver, now=now, replay=self.replay
            )
            _, initiator = split_tel_identifier(got.initiator_id)
        except CryptoError as exc:
            raise BadKeys(str(exc)) from exc
        if initiator != base_uri(msg["from"]):
            raise BadKeys("the I_MESSAGE is signed by someone else")
        key: bytes = got.srtp().policy_key
        return key


@attrs.define(eq=False)
class TelCall:
    """One secure call to the PBX: the UMSG session and the SIP leg's reports."""

    tel: UmsgTel
    call: Call
    session: str
    relay_host: str
    relay_port: int
    relay_tag: bytes = attrs.field(repr=False)
    policy_key: bytes = attrs.field(repr=False)
    bridged: bool = False
    ended: bool = False
    rang: bool = False
    talking: bool = False
    created: float = 0.0

    def umsg_row(self, now: float) -> list[str]:
        """This call's ``show umsg`` row."""
        state = HANGUP if self.ended else TALK if self.talking else GROWL if self.rang else BANG
        return [self.call.in_from, self.call.in_to, state, _age(self.created, now), self.session]

    # TelLeg
    def trying(self) -> None:
        pass

    def ringing(self) -> None:
        if not self.ended:
            self.rang = True
            self.tel.notify("ringing", session=self.session)

    def answered(self) -> None:
        if self.ended:
            return
        defer.ensureDeferred(self._bridge()).addErrback(self._bridge_failed)

    def rejected(self, status: int = 480) -> None:
        if self.ended:
            return
        if self.call.state not in ENDED:  # refused before the SIF sent anything
            self.tel.calls.set_state(self.call, CallState.REJECT)
            self.tel.calls.event(self.call, "failed")
        self._end(SIP_CODES.get(status, "unavailable"), f"SIP {status}")

    def hung_up(self) -> None:
        if not self.ended:
            self._end("normal", None)

    # bridge
    async def _bridge(self) -> None:
        await add_bridge(self)
        self.bridged = True
        if self.ended:  # hung up while the bridge was being set up
            self._remove_bridge()
            return
        self.talking = True
        self.tel.notify("talk", session=self.session)

    def _bridge_failed(self, failure: Failure) -> None:
        log.warn(
            "no media bridge for session {session}: {why}",
            session=self.session,
            why=failure.getErrorMessage(),
        )
        if not self.ended:
            self.tel.sip.hang_up(self.call)
            self._end("bridge-failed", "no media bridge")

    def _remove_bridge(self) -> None:
        if not self.bridged:
            return
        self.bridged = False
        defer.ensureDeferred(self._remove()).addErrback(
            lambda f: log.warn(
                "cannot remove bridge {session}: {why}",
                session=self.session,
                why=f.getErrorMessage(),
            )
        )

    async def _remove(self) -> None:
        await self.tel.bridge.call(BridgeRemove, call=self.session)

    # ending
    def _finish(self) -> None:
        """Mark the call ended and let go of it."""
        self.ended = True
        self.tel.active.pop(self.session, None)
        self.tel.retire(self)
        self._remove_bridge()

    def _end(self, code: str, reason: str | None) -> None:
        """The SIP side ended: hang up the secure side."""
        self._finish()
        fields: dict[str, Any] = {"session": self.session, "code": code}
        if reason is not None:
            fields["reason"] = reason
        self.tel.notify("hangup", **fields)

    def end_from_tel(self) -> None:
        """The secure side hung up (or went away): end the SIP leg."""
        if self.ended:
            return
        self._finish()
        self.tel.sip.hang_up(self.call)
        if self.call.state not in ENDED:  # nothing sent to the PBX yet
            self.tel.calls.set_state(self.call, CallState.HANGUP)
            self.tel.calls.event(self.call, "hangup")


#: SIP statuses for UMSG error and hangup codes of calls to secure users.
UMSG_STATUS = {
    "not-found": 404,
    "not-connected": 480,
    "no-answer": 480,
    "busy": 486,
    "rejected": 603,
    "glare": 486,
}


@attrs.define(eq=False)
class OutLeg:
    """A call from the PBX to a secure user: the UMSG side of the SIF's call."""

    tel: UmsgTel
    call: Call
    leg: TelLeg
    policy_key: bytes = attrs.field(repr=False)
    request_id: int | None = None
    session: str | None = None
    relay_host: str = ""
    relay_port: int = 0
    relay_tag: bytes = attrs.field(default=b"", repr=False)
    bridged: bool = False
    answered: bool = False
    ended: bool = False
    rang: bool = False
    created: float = 0.0

    def umsg_row(self, now: float) -> list[str]:
        """This call's ``show umsg`` row."""
        if self.ended:
            state = HANGUP
        elif self.answered:
            state = TALK
        elif self.rang:
            state = GROWL
        else:
            state = BANG if self.request_id is not None or self.session else CREATE
        shown = [self.call.out_from, self.call.out_to, state, _age(self.created, now)]
        return [*shown, self.session or "-"]

    def session_answer(self, msg: Message) -> None:
        """The CRS answered our invite: ``session``, or an error."""
        self.request_id = None
        if msg.type != "session":
            self.ended = True
            self.tel.outgoing.pop(id(self.call), None)
            self.tel.retire(self)
            self.leg.rejected(UMSG_STATUS.get(msg.get("code", ""), 480))
            return
        self.session = msg["session"]
        self.call.callee_if_id = msg["session"]
        self.relay_host, self.relay_port = msg["relay-host"], msg["relay-port"]
        self.relay_tag = msg["relay-tag"]
        if self.ended:  # the PBX hung up meanwhile
            self.tel.notify("hangup", session=self.session, code="normal")
            return
        self.tel.active[msg["session"]] = self
        self.leg.trying()

    def incoming(self, msg: Message) -> None:
        """``ringing``, ``talk`` or ``hangup`` from the secure user."""
        if self.ended:
            return
        if msg.type == "ringing":
            self.rang = True
            self.leg.ringing()
        elif msg.type == "talk" and not self.answered:
            self.answered = True
            defer.ensureDeferred(self._bridge()).addErrback(self._bridge_failed)
        elif msg.type == "hangup":
            self.end_from_tel(msg.get("code", "normal"))

    async def _bridge(self) -> None:
        assert self.session is not None
        await add_bridge(self)
        self.bridged = True
        if self.ended:
            self._remove_bridge()
            return
        self.leg.answered()

    def _bridge_failed(self, failure: Failure) -> None:
        log.warn(
            "no media bridge for session {session}: {why}",
            session=self.session,
            why=failure.getErrorMessage(),
        )
        if not self.ended:
            self.hang_up("bridge-failed")
            self.leg.rejected(503)

    def _remove_bridge(self) -> None:
        if not self.bridged or self.session is None:
            return
        self.bridged = False
        session = self.session

        async def remove() -> None:
            await self.tel.bridge.call(BridgeRemove, call=session)

        defer.ensureDeferred(remove()).addErrback(
            lambda f: log.warn("cannot remove bridge {session}: {why}", session=session, why=f)
        )

    def _finish(self) -> bool:
        """Mark the call ended and let go of it (False: it already was)."""
        if self.ended:
            return False
        self.ended = True
        self.tel.outgoing.pop(id(self.call), None)
        self.tel.retire(self)
        self._remove_bridge()
        if self.session is not None:
            self.tel.active.pop(self.session, None)
        return True

    def end_from_tel(self, code: str = "normal") -> None:
        """The secure user hung up (or the UIF went away): end the SIP leg."""
        if not self._finish():
            return
        if self.answered:
            self.leg.hung_up()
        else:
            self.leg.rejected(UMSG_STATUS.get(code, 480))

    def hang_up(self, code: str = "normal") -> None:
        """The PBX ended the call: hang up the secure side."""
        if self._finish() and self.session is not None:
            self.tel.notify("hangup", session=self.session, code=code)


@attrs.define(eq=False)
class UmsgTel:
    """The tel side of the CIG over its UIF session."""

    material: KeyMaterial = attrs.field(repr=False)
    clock: IReactorTime
    session: Callable[[], ClientSession | None]
    sip: SipSide
    calls: CallTable
    router: Router
    bridge: BridgeLink
    keys: Decapsulator = attrs.field()
    active: dict[str, TelCall | OutLeg] = attrs.field(factory=dict)
    pending: dict[int, OutLeg] = attrs.field(factory=dict)
    outgoing: dict[int, OutLeg] = attrs.field(factory=dict)
    #: Calls that ended lately (``show umsg`` lists them as HANGUP for a while).
    ended: collections.deque[tuple[float, TelCall | OutLeg]] = attrs.field(
        factory=lambda: collections.deque(maxlen=MAX_ENDED_ROWS)
    )
    #: Messages sent to the CIG's own number, fetched and discarded.
    discarded: int = 0

    def retire(self, leg: TelCall | OutLeg) -> None:
        """A call ended: keep its row for ``UMSG_LINGER`` seconds."""
        self.ended.append((self.clock.seconds(), leg))

    def umsg_rows(self) -> list[list[str]]:
        """``show umsg``: every call on the UMSG side, oldest first, then the
        ones that ended in the last ``UMSG_LINGER`` seconds."""
        now = self.clock.seconds()
        while self.ended and now - self.ended[0][0] > UMSG_LINGER:
            self.ended.popleft()
        live: dict[int, TelCall | OutLeg] = {}
        for leg in [*self.active.values(), *self.outgoing.values()]:
            if not leg.ended:
                live[id(leg)] = leg
        rows = [leg.umsg_row(now) for leg in sorted(live.values(), key=lambda x: x.created)]
        return rows + [leg.umsg_row(now) for _, leg in self.ended]

    @keys.default
    def _keys(self) -> Decapsulator:
        return Decapsulator(self.material)

    def notify(self, type_: str, **fields: Any) -> None:
        """Send a UMSG notification if attached (a detached session's calls are over)."""
        session = self.session()
        if session is not None and session.state == "attached":
            session.notify(type_, **fields)

    def handle(self, event: Event) -> None:
        """One event of the UIF session."""
        if isinstance(event, Answered) and event.id in self.pending:
            self.pending.pop(event.id).session_answer(event.message)
            return
        if not isinstance(event, Incoming):
            return
        msg = event.message
        if msg.type == "invite":
            self._invite(msg)
            return
        if msg.type == "message":
            # nobody reads the CIG's own inbox: confirm (the CRS drops it)
            self.discarded += 1
            log.info("message {message} to the CIG discarded", message=msg["message"])
            self.notify("delivered", message=msg["message"])
            return
        found = self.active.get(msg.get("session", ""))
        if isinstance(found, OutLeg):
            found.incoming(msg)
        elif found is not None and msg.type == "hangup":
            found.end_from_tel()

    def detached(self) -> None:
        """The UIF connection ended: every call is over."""
        for found in [*self.active.values(), *self.pending.values()]:
            found.end_from_tel()
        self.pending.clear()

    # TelSide: calls from the PBX
    def place_call(self, call: Call, leg: TelLeg) -> None:
        """Invite C{call.out_to} with the CIG's own I_MESSAGE; the SIF hears on C{leg}."""
        session = self.session()
        if session is None or session.state != "attached":
            leg.rejected(480)
            return
        to = base_uri(call.out_to)
        now = self.clock.seconds()
        period = period_of(now)
        try:
            keys = self.material.for_period(period)
            built = mikey.build_i_message(
                keys.signer(),
                keys.public_key(),
                tel_identifier(to, period),
                now=now,
                idrs=mikey.tel_idrs(self.material.uri, to),
            )
        except CryptoError as exc:
            log.warn("cannot key a call to {to}: {why}", to=call.out_to, why=str(exc))
            leg.rejected(500)
            return
        out = OutLeg(self, call, leg, built.srtp().policy_key, created=now)
        fields: dict[str, Any] = {"to": call.out_to, "mikey": built.data}
        if call.out_from != self.material.uri and base_uri(call.out_from) == self.material.uri:
            fields["from"] = call.out_from  # the PBX user, as an extension of our number
        out.request_id = session.request("invite", **fields)
        self.pending[out.request_id] = out
        self.outgoing[id(call)] = out

    def hang_up(self, call: Call) -> None:
        """The PBX ended a call to a secure user."""
        out = self.outgoing.get(id(call))
        if out is not None:
            out.hang_up()

    def send_message(self, call: Call, content_type: str, body: bytes) -> bool:
        """SIP MESSAGE to secure users is not carried yet."""
        return False

    def media_changed(self, call: Call) -> None:
        """A re-INVITE moved the PBX's media: update the call's bridge."""
        found: TelCall | OutLeg | None = self.outgoing.get(id(call))
        if found is None:
            found = next((c for c in self.active.values() if c.call is call), None)
        if found is None or not found.bridged or found.ended:
            return
        session = found.session
        defer.ensureDeferred(update_bridge(found)).addErrback(
            lambda f: log.warn(
                "cannot update bridge {session}: {why}", session=session, why=f.getErrorMessage()
            )
        )

    def _invite(self, msg: Message) -> None:
        session = msg["session"]
        call = Call(in_from=msg["from"], in_to=msg["to"], caller_if_id=session, source="umsg")
        self.calls.event(call, "routing")
        try:
            policy_key = self.keys.policy_key(msg, self.clock.seconds())
        except BadKeys as exc:
            reason = f"MIKEY-SAKKE: {exc}"[:200]
            log.warn("invite {session} refused: {why}", session=session, why=reason)
            self._refuse(call, "bad-keys", reason)
            return
        try:
            routed = self.router.route(TEL, call.in_from, call.in_to)
        except RouteRefused as exc:
            log.info("invite {session} not routed: {why}", session=session, why=exc.reason)
            self._refuse(call, "not-found", exc.reason[:200])
            return
        call.out_from, call.out_to = routed.out_from, routed.out_to
        self.calls.add(call)
        self.calls.set_state(call, CallState.ROUTED)
        self.calls.event(call, "routed")
        leg = TelCall(
            self,
            call,
            session,
            msg["relay-host"],
            msg["relay-port"],
            msg["relay-tag"],
            policy_key,
            created=self.clock.seconds(),
        )
        self.active[session] = leg
        self.sip.place_call(call, leg)

    def _refuse(self, call: Call, code: str, reason: str) -> None:
        self.calls.add(call)
        self.calls.set_state(call, CallState.REJECT)
        self.calls.event(call, "failed")
        self.notify("hangup", session=call.caller_if_id, code=code, reason=reason)


class UifLike(Protocol):
    """What :class:`UifCalls` needs of the :class:`~cryptify.cig.uif.Uif`."""

    material: KeyMaterial | None

    def session(self) -> ClientSession | None: ...


@attrs.define(eq=False)
class UifCalls:
    """
    The UIF's events to a :class:`UmsgTel` for its current key material
    (``Uif.on_call_event``): a new keystore starts a new one, and the
    connection ending ends every call.
    """

    clock: IReactorTime
    uif: UifLike
    sip: SipSide
    calls: CallTable
    router: Router
    bridge: BridgeLink
    tel: UmsgTel | None = None
    #: When the CIG started (the message descriptor's TIME counts from it).
    started: float = attrs.field()

    @started.default
    def _now(self) -> float:
        return self.clock.seconds()

    def umsg_rows(self) -> list[list[str]]:
        """``show umsg``: the calls, then, while attached, the message descriptor."""
        rows = self.tel.umsg_rows() if self.tel is not None else []
        session = self.uif.session()
        if session is not None and session.state == "attached":
            age = _age(self.started, self.clock.seconds())
            rows.append(["ZERO", "ZERO", "ZERO", age, "umsg"])
        return rows

    def handle(self, event: Event) -> None:
        """One event of the UIF's client."""
        if isinstance(event, (ConnectionEnded, Disconnected)):
            if self.tel is not None:
                self.tel.detached()
            return
        material = self.uif.material
        if material is None:
            return
        if self.tel is None or self.tel.material is not material:
            if self.tel is not None:
                self.tel.detached()
            self.tel = UmsgTel(
                material,
                self.clock,
                self.uif.session,
                self.sip,
                self.calls,
                self.router,
                self.bridge,
            )
        self.tel.handle(event)


@attrs.define(eq=False)
class TelSwitch:
    """
    The SIF's tel side: the UIF's :class:`UmsgTel` once it has one (key
    material and an event from the CRS), else the stand-in ``stub``
    (``--tel-stub``). A call is hung up on the side that placed it.
    """

    stub: TelSide
    uif_calls: UifCalls | None = None
    placed: weakref.WeakKeyDictionary[Call, TelSide] = attrs.field(
        factory=weakref.WeakKeyDictionary
    )

    def side(self) -> TelSide:
        """Where a new call goes."""
        tel = self.uif_calls.tel if self.uif_calls is not None else None
        return tel if tel is not None else self.stub

    def place_call(self, call: Call, leg: TelLeg) -> None:
        side = self.side()
        self.placed[call] = side
        side.place_call(call, leg)

    def hang_up(self, call: Call) -> None:
        side = self.placed.pop(call, None)
        if side is not None:
            side.hang_up(call)

    def send_message(self, call: Call, content_type: str, body: bytes) -> bool:
        return self.side().send_message(call, content_type, body)

    def media_changed(self, call: Call) -> None:
        (self.placed.get(call) or self.side()).media_changed(call)
