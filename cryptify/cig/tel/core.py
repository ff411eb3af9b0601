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
from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cryptify.client.connection import Event
from cryptify.client.session import Answered, ClientSession, Incoming
from cryptify.crypto import mikey
from cryptify.crypto.errors import CryptoError
from cryptify.crypto.identity import period_of, tel_identifier
from cryptify.crypto.keymaterial import KeyMaterial
from cryptify.protocols import opus
from cryptify.protocols.sip.sdp import SrtpKeys
from cryptify.protocols.umsg import Message, base_uri

from ..calls import Call, CallState, CallTable, TelLeg
from ..route import TEL, Router, RouteRefused
from .bridge import BridgeLink
from .keys import BadKeys, Decapsulator
from .legs import OutLeg, TelCall, hold_from_secure, pbx_hold_changed

log = Logger(namespace="cryptify.cig.tel")


def bridgeable_codecs() -> tuple[str, ...]:
    """The secure leg's codecs cig-relay can bridge to the PBX's G.711."""
    return ("opus", "PCMU", "PCMA") if opus.available() else ("PCMU", "PCMA")


def choose_codec(offered: list[str] | None) -> str:
    """Answering a secure caller: its first offered codec we can bridge, else PCMU."""
    bridgeable = bridgeable_codecs()
    return next((c for c in offered or () if c in bridgeable), "PCMU")


def offered_codecs() -> list[str] | None:
    """What our invites offer a secure user: G.711 u-law first (the default), then
    Opus for a client that prefers it (docs/umsg.md 8.2)."""
    return ["PCMU", "opus"] if opus.available() else None


class SipSide(Protocol):
    """What the tel side needs of the SIF."""

    def place_call(self, call: Call, leg: TelLeg) -> object: ...

    def hang_up(self, call: Call) -> None: ...

    def media_of(self, call: Call) -> tuple[int | None, bytes] | None: ...

    def srtp_of(self, call: Call) -> SrtpKeys | None: ...

    def direction_of(self, call: Call) -> str: ...

    def hold(self, call: Call, held: bool) -> bool: ...

    def early_media(self, call: Call) -> bool: ...


#: Seconds an ended call stays in ``show umsg``, and how many such rows are kept.
UMSG_LINGER = 30.0
MAX_ENDED_ROWS = 1000


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
    outgoing: dict[Call, OutLeg] = attrs.field(factory=dict)
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
        live: dict[TelCall | OutLeg, None] = {}
        for leg in [*self.active.values(), *self.outgoing.values()]:
            if not leg.ended:
                live[leg] = None
        rows = [leg.umsg_row(now) for leg in sorted(live, key=lambda x: x.created)]
        return rows + [leg.umsg_row(now) for _, leg in self.ended]

    @keys.default
    def _keys(self) -> Decapsulator:
        return Decapsulator(self.material)

    def notify(self, type_: str, **fields: object) -> None:
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
            message_id = msg.text("message")
            log.info("message {message} to the CIG discarded", message=message_id)
            self.notify("delivered", message=message_id)
            return
        found = self.active.get(msg.optional_text("session") or "")
        if isinstance(found, OutLeg):
            found.incoming(msg)
        elif found is not None and msg.type == "hangup":
            found.end_from_tel(msg.optional_text("code") or "normal")
        elif found is not None and msg.type in ("hold", "resume") and found.talking:
            hold_from_secure(found, msg.type == "hold")

    def detached(self) -> None:
        """The UIF connection ended: every call is over."""
        for found in [*self.active.values(), *self.pending.values()]:
            found.call.note_end("cig", "connection to the CRS lost")
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
        out.offered = offered_codecs()
        fields: dict[str, object] = {"to": call.out_to, "mikey": built.data, "codecs": out.offered}
        if call.out_from != self.material.uri and base_uri(call.out_from) == self.material.uri:
            fields["from"] = call.out_from  # the PBX user, as an extension of our number
        request_id = session.request("invite", **fields)
        out.invited(request_id)
        self.pending[request_id] = out
        self.outgoing[call] = out

    def hang_up(self, call: Call) -> None:
        """The PBX ended a call to a secure user."""
        out = self.outgoing.get(call)
        if out is not None:
            out.hang_up()

    def media_changed(self, call: Call) -> None:
        """A re-INVITE moved the PBX's media: update the call's bridge."""
        found: TelCall | OutLeg | None = self.outgoing.get(call)
        if found is None:
            found = next((c for c in self.active.values() if c.call is call), None)
        if found is not None:
            found.bridge.update()
            pbx_hold_changed(found, self.sip.direction_of(call))

    def _invite(self, msg: Message) -> None:
        session = msg.text("session")
        call = Call(
            in_from=msg.text("from"), in_to=msg.text("to"), caller_if_id=session, source="umsg"
        )
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
            msg.text("relay-host"),
            msg.number("relay-port"),
            msg.octets("relay-tag"),
            policy_key,
            created=self.clock.seconds(),
        )
        leg.secure_codec = choose_codec(msg.get("codecs"))
        leg.offered = msg.get("codecs") is not None
        self.active[session] = leg
        self.sip.place_call(call, leg)

    def _refuse(self, call: Call, code: str, reason: str) -> None:
        call.note_end("cig", code)
        self.calls.add(call)
        self.calls.set_state(call, CallState.REJECT)
        self.calls.event(call, "failed")
        self.notify("hangup", session=call.caller_if_id, code=code, reason=reason)
