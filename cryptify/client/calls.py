"""Calls on the client side (sans-IO): invite, answer, hangup, with MIKEY-SAKKE.

:class:`CallAgent` is fed the events of a
:class:`~cryptify.client.session.ClientSession` and returns
:class:`CallEvent` values; what it sends goes through the session.

Placing a call builds a real I_MESSAGE (RFC 6509) for the callee's
identifier of the current key period (``period 00 uri 00``; for a URI
with an extension, the base number's), signed with our ECCSI key, and
sends ``invite {to, mikey}``.  The CRS answers ``session`` with the
relay's address and our leg's tag: media may start (:data:`MEDIA`).

An incoming ``invite`` is verified and decapsulated with our keys (the
signature must be the ``from`` party's, for the month of the message's
T payload; RANDs are remembered for the replay window).  A good one is
answered ``ringing`` and reported (:data:`INCOMING`); a bad one is hung
up with code ``bad-keys``.  :meth:`CallAgent.answer` sends ``talk`` and
starts media; :meth:`CallAgent.hangup` sends ``hangup``.  Both parties
derive the same SRTP master key and salt from the SSV.

Other security domains (``docs/interworking.md``): :meth:`CallAgent.place`
with ``to_account`` naming another account sends ``to-account`` and
encapsulates the SSV with that domain's KMS Public Key Z (from
:attr:`CallAgent.domains`, loaded with ``--peer-domain``).  An incoming
I_MESSAGE is verified with our own domain's KPAK, else with each known
domain's KPAK of that period: the one that verifies names the caller's
domain (:attr:`Call.account`); none does: ``bad-keys``.

Codecs (``docs/umsg.md`` section 8): an agent with ``codecs`` (say
``("opus", "PCMU")``) offers them in ``invite``; answering, it takes the
first of its own codecs that the caller offered and names it in ``talk``.
Without an offer, or without ``codecs``, a call is G.711 u-law (``PCMU``),
as it always was.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from cryptify.client.session import Answered, ClientEvent, ClientSession, Incoming
from cryptify.crypto import mikey
from cryptify.crypto.domains import PeerDomain
from cryptify.crypto.errors import CryptoError, SignatureInvalid
from cryptify.crypto.identity import period_of, split_tel_identifier, tel_identifier
from cryptify.crypto.keymaterial import KeyMaterial, PeriodKeys
from cryptify.crypto.replay import ReplayGuard
from cryptify.protocols.umsg import Message, base_uri

#: Call states.
INVITING = "inviting"
CALLING = "calling"
RINGING = "ringing"
TALKING = "talking"
ENDED = "ended"

#: Call event kinds.
INCOMING = "incoming"
MEDIA = "media"
RING = "ringing"
TALK = "talk"
END = "ended"
#: The other party put the call on hold, or took it off hold.
HELD = "held"
RESUMED = "resumed"


class CallError(Exception):
    """A call cannot be placed or answered now."""


@attrs.define(eq=False)
class Call:
    """One call, outgoing or incoming."""

    peer: str
    outgoing: bool
    state: str
    policy_key: bytes = attrs.field(repr=False)
    request_id: int | None = None
    session: str | None = None
    relay_host: str | None = None
    relay_port: int | None = None
    relay_tag: bytes | None = attrs.field(default=None, repr=False)
    code: str | None = None
    reason: str | None = None
    who: str | None = None
    #: Whether this side holds the call, and whether the other side does.
    holding: bool = False
    held: bool = False
    #: The caller's ``codecs`` of an incoming call (None: none offered).
    offered: list[str] | None = None
    #: The media codec agreed (``PCMU`` until ``talk`` says otherwise).
    codec: str = "PCMU"
    #: The other party's security domain (account): ``to_account`` of a call
    #: placed, the domain whose KPAK verified an incoming one (None: ours).
    account: str | None = None

    @property
    def relay(self) -> tuple[str, int] | None:
        if self.relay_host is None or self.relay_port is None:
            return None
        return self.relay_host, self.relay_port


@attrs.frozen
class CallEvent:
    """Something happened to a call: ``kind`` is one of the kinds above."""

    kind: str
    call: Call


@attrs.define(eq=False)
class CallAgent:
    """A client's calls: one agent per key material, any number of calls."""

    material: KeyMaterial = attrs.field(repr=False)
    now: Callable[[], float]
    session: ClientSession | None = None
    replay: ReplayGuard = attrs.field(factory=lambda: ReplayGuard(window=300))
    calls: dict[str, Call] = attrs.field(factory=dict)
    pending: dict[int, Call] = attrs.field(factory=dict)
    #: Codecs to offer and accept, most preferred first (empty: G.711 u-law only,
    #: nothing offered); ``PCMU`` is always the fallback.
    codecs: tuple[str, ...] = ()
    #: Other security domains' public KMS parameters, by account.
    domains: dict[str, PeerDomain] = attrs.field(factory=dict)
    _keys: dict[str, tuple[PeriodKeys, object, object, object]] = attrs.field(
        factory=dict, repr=False
    )

    @property
    def uri(self) -> str:
        return self.material.uri

    def _period_keys(self, period: str) -> tuple[PeriodKeys, object, object, object]:
        """(keys, signer, Z, receiver) of a period, built once."""
        if period not in self._keys:
            keys = self.material.for_period(period)
            z = keys.public_key()
            self._keys[period] = (keys, keys.signer(), z, keys.receiver(z))
        return self._keys[period]

    def _attached(self) -> ClientSession:
        if self.session is None or self.session.state != "attached":
            raise CallError("not attached")
        return self.session

    # ------------------------------------------------------------ outgoing

    def _foreign(self, account: str | None) -> PeerDomain | None:
        """The domain of ``account`` when it is not ours (CallError: unknown)."""
        if account is None or account == self.material.account:
            return None
        domain = self.domains.get(account)
        if domain is None:
            raise CallError(f"no public KMS parameters for security domain {account}")
        return domain

    def place(self, to: str, to_account: str | None = None) -> Call:
        """Invite ``to`` (of the security domain ``to_account``, when it is
        another's); the call is :data:`INVITING` until the CRS answers."""
        session = self._attached()
        now = self.now()
        period = period_of(now)
        domain = self._foreign(to_account)
        try:
            _, signer, z, _ = self._period_keys(period)
            if domain is not None:
                z = domain.public_key(period)
            built = mikey.build_i_message(
                signer,  # type: ignore[arg-type]
                z,  # type: ignore[arg-type]
                tel_identifier(base_uri(to), period),
                now=now,
                idrs=mikey.tel_idrs(self.uri, base_uri(to)),
            )
        except CryptoError as exc:
            raise CallError(f"cannot key a call to {to}: {exc}") from exc
        call = Call(to, True, INVITING, built.srtp().policy_key, account=to_account)
        offer = self.offer()
        extra = {} if to_account is None else {"to-account": to_account}
        call.request_id = session.request("invite", to=to, mikey=built.data, codecs=offer, **extra)
        self.pending[call.request_id] = call
        return call

    def offer(self) -> list[str] | None:
        """The ``codecs`` an invite offers: ours, then PCMU; None for PCMU only."""
        if not self.codecs:
            return None
        return [*self.codecs, *([] if "PCMU" in self.codecs else ["PCMU"])]

    def choose(self, offered: list[str] | None) -> str:
        """The codec to answer an offer with: our first that the caller offered, else PCMU."""
        for codec in self.codecs:
            if offered is not None and codec in offered:
                return codec
        return "PCMU"

    # ------------------------------------------------------------ actions

    def answer(self, call: Call) -> list[CallEvent]:
        """Take an incoming call: ``talk`` (naming the codec chosen), and media starts."""
        if call.outgoing or call.state != RINGING or call.session is None:
            raise CallError(f"cannot answer a call that is {call.state}")
        call.codec = self.choose(call.offered)
        chosen = None if call.offered is None else call.codec
        self._attached().notify("talk", session=call.session, codec=chosen)
        call.state = TALKING
        return [CallEvent(MEDIA, call), CallEvent(TALK, call)]

    def hold(self, call: Call, held: bool = True) -> None:
        """Put a call on hold (``hold``) or take it off (``resume``); media goes on."""
        if call.state != TALKING or call.session is None:
            raise CallError(f"cannot hold a call that is {call.state}")
        self._attached().notify("hold" if held else "resume", session=call.session)
        call.holding = held

    def hangup(
        self, call: Call, code: str = "normal", reason: str | None = None
    ) -> list[CallEvent]:
        """End a call from this side."""
        if call.state == ENDED:
            return []
        if call.session is not None and self.session is not None:
            if self.session.state == "attached":
                self.session.notify("hangup", session=call.session, code=code, reason=reason)
        elif call.request_id is not None:
            # No session id yet: end it as soon as the CRS names the session.
            call.code = code
            return []
        return self._ended(call, code, reason, "caller" if call.outgoing else "callee")

    def _ended(self, call: Call, code: str, reason: str | None, who: str) -> list[CallEvent]:
        call.state = ENDED
        call.code, call.reason, call.who = code, reason, who
        if call.session is not None:
            self.calls.pop(call.session, None)
        if call.request_id is not None:
            self.pending.pop(call.request_id, None)
        return [CallEvent(END, call)]

    def detached(self) -> list[CallEvent]:
        """The connection ended: every call is over (the CRS ends them too)."""
        events: list[CallEvent] = []
        for call in [*self.calls.values(), *self.pending.values()]:
            if call.state != ENDED:
                events += self._ended(call, "detached", "the connection ended", "crs")
        self.calls.clear()
        self.pending.clear()
        return events

    # ------------------------------------------------------------ events

    def handle(self, event: ClientEvent) -> list[CallEvent]:
        """Feed one session event; call events come back."""
        if isinstance(event, Answered) and event.id in self.pending:
            return self._answered(self.pending.pop(event.id), event.message)
        if isinstance(event, Incoming):
            msg = event.message
            if msg.type == "invite":
                return self._invite(msg)
            call = self.calls.get(msg.get("session", ""))
            if call is None:
                return []
            if msg.type == "ringing" and call.outgoing and call.state == CALLING:
                call.state = RINGING
                return [CallEvent(RING, call)]
            if msg.type == "talk" and call.outgoing and call.state in (CALLING, RINGING):
                call.state = TALKING
                codec = msg.get("codec", "PCMU")
                offered = self.offer() or ["PCMU"]
                call.codec = codec if codec in offered else "PCMU"
                return [CallEvent(TALK, call)]
            if msg.type in ("hold", "resume") and call.state == TALKING:
                call.held = msg.type == "hold"
                return [CallEvent(HELD if call.held else RESUMED, call)]
            if msg.type == "hangup":
                return self._ended(call, msg["code"], msg.get("reason"), msg["who"])
        return []

    def _answered(self, call: Call, msg: Message) -> list[CallEvent]:
        if msg.type != "session":
            call.request_id = None
            return self._ended(call, msg.get("code", msg.type), msg.get("reason"), "crs")
        call.session = msg["session"]
        call.relay_host, call.relay_port = msg["relay-host"], msg["relay-port"]
        call.relay_tag = msg["relay-tag"]
        self.calls[msg["session"]] = call
        if call.code is not None:  # hung up while inviting
            return self.hangup(call, call.code)
        call.state = CALLING
        return [CallEvent(MEDIA, call)]

    def _receiver(self, identifier: bytes) -> object:
        period, uri = split_tel_identifier(identifier)
        if uri != self.uri:
            raise CallError("the I_MESSAGE is for someone else")
        return self._period_keys(period)[3]

    def _receive(self, data: bytes, now: float) -> tuple[mikey.ReceivedIMessage, str | None]:
        """Verify and decapsulate an I_MESSAGE: with our domain's KPAK, else
        with each other domain's of this period; (message, other domain)."""
        period = period_of(now)
        candidates: list[tuple[str | None, bytes]] = [(None, self._period_keys(period)[0].kpak)]
        for name, domain in self.domains.items():
            try:
                candidates.append((name, domain.for_period(period).kpak))
            except CryptoError:
                continue  # no keys of that domain for this period
        for index, (account, kpak) in enumerate(candidates):
            try:
                got = mikey.receive_i_message(
                    data,
                    kpak=kpak,
                    receiver=self._receiver,  # type: ignore[arg-type]
                    now=now,
                    replay=self.replay,
                )
            except SignatureInvalid:
                if index == len(candidates) - 1:
                    raise
                continue
            return got, account
        raise SignatureInvalid("no security domain's KPAK verifies it")  # pragma: no cover

    def _invite(self, msg: Message) -> list[CallEvent]:
        session = self._attached()
        now = self.now()
        try:
            got, account = self._receive(msg["mikey"], now)
            _, initiator = split_tel_identifier(got.initiator_id)
            if initiator != base_uri(msg["from"]):
                raise CallError("the I_MESSAGE is signed by someone else")
        except (CryptoError, CallError) as exc:
            reason = f"MIKEY-SAKKE: {exc}"[:200]
            session.notify("hangup", session=msg["session"], code="bad-keys", reason=reason)
            call = Call(msg["from"], False, ENDED, b"", session=msg["session"])
            call.code, call.reason, call.who = "bad-keys", reason, "callee"
            return [CallEvent(END, call)]
        call = Call(
            msg["from"],
            False,
            RINGING,
            got.srtp().policy_key,
            session=msg["session"],
            relay_host=msg["relay-host"],
            relay_port=msg["relay-port"],
            relay_tag=msg["relay-tag"],
            offered=msg.get("codecs"),
            account=account,
        )
        self.calls[call.session] = call  # type: ignore[index]
        session.notify("ringing", session=msg["session"])
        return [CallEvent(INCOMING, call)]
