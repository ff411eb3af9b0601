"""Calls between clients attached at different pool instances (sans-IO).

In a pool each client attaches at the owner of its slot, so a caller on
instance A often calls a callee attached at instance B.  A keeps the
session (its :class:`~cryptify.crs.calls.core.SessionTable`: limits,
glare, the relay session on A's ``crs_relay``, the answer timeout, ``show
session``); B only passes the call to and from its attached callee.  The
frames go over the pool link (:mod:`cryptify.crs.pool.wire` envelopes)::

    caller      A                                   B            callee
    invite ->   allocate relay
                call-invite{session,from,to,account,mikey,relay-*} ->
                                                    invite{...}   ->
                <- call-offered{session}
    <- session  (answer timeout starts)
                                                    <- ringing
                <- call-ringing{session}
    <- ringing                                      <- talk
                <- call-talk{session}
    <- talk
    hangup ->   call-hangup{session,code,reason?,who} ->
                                                    hangup{...,who} ->

and the other way round for a hangup from the callee (``call-hangup``
from B).  While talking, either party's ``hold`` or ``resume`` goes to the
other as ``call-hold{session,held}`` (B passes its callee's, A its
caller's).  B answers ``call-refused{session,code}`` instead of
``call-offered`` when its callee is not attached (``not-connected``),
not known there (``not-found``), when the callee is calling the caller
at the same time with the smaller URI (``glare``: the smaller URI's
invite wins, as on one instance), or when the caller's instance has
:data:`MAX_FORWARDED` calls there already (``busy``): the
caller gets the same ``error`` as for a callee of its own instance.  If
B does not confirm within :data:`OFFER_TIMEOUT`, or the link to B is not
open, the caller gets ``error not-connected``.  A hangup that finds no
connection to the peer open (it is being replaced, the link is not yet
seen down) is kept and sent again every :data:`RESEND_INTERVAL` until a
connection takes it, so the other party's call ends within moments; when
the link is seen down the kept hangups are dropped (the peer ends those
calls itself).  When the pool link to a
peer goes down (no heartbeat for ``DOWN_AFTER``) every call through it
ends on both sides with ``hangup not-connected`` from ``crs``, and its
relay session is removed.

The media of a call goes through the relay of the caller's instance: the
callee's ``relay-host``/``relay-port`` in the forwarded invite are that
relay's public address, which every client of the pool can reach.

Every frame is checked field by field (:func:`decode_call`): a missing or
extra field, a wrong type, a value out of its UMSG limits raises
:class:`~cryptify.crs.pool.wire.WireError`, and the pool link drops the
connection.  A well-formed frame for a session that does not exist (any
more) at the receiver is ignored: hangups cross.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from cryptify.crs.calls.core import SessionTable
from cryptify.crs.calls.session import (
    CALLEE,
    CRS,
    INVITE,
    RINGING,
    TALK,
    Parties,
    RelayLegs,
    Session,
)
from cryptify.crs.pool.calls_frames import (
    FRAME_TYPES as FRAME_TYPES,
)
from cryptify.crs.pool.calls_frames import (
    HANGUP_FRAME,
    HOLD_FRAME,
    INVITE_FRAME,
    OFFERED_FRAME,
    REFUSED_FRAME,
    RINGING_FRAME,
    TALK_FRAME,
    CallHangup,
    CallHold,
    CallInvite,
    CallRefused,
    CallStep,
    decode_call,
)
from cryptify.crs.pool.calls_frames import (
    RelayLeg as RelayLeg,
)
from cryptify.crs.pool.wire import WireError
from cryptify.protocols.umsg import (
    base_uri,
    message,
)

log = Logger(namespace="cryptify.crs.session")

#: Seconds the callee's instance has to confirm (or refuse) a forwarded invite.
OFFER_TIMEOUT = 10.0
#: Calls offered here for one other instance at once (a peer's share).
MAX_FORWARDED = 65536
#: Seconds between attempts to send the hangups no connection took.
RESEND_INTERVAL = 0.5


class FrameLink(Protocol):
    """The pool link as the calls use it."""

    def send(self, peer: str, frame_type: str, fields: dict[str, object]) -> bool:
        """Send a frame to ``peer``; False when no connection to it is open."""


@attrs.define(eq=False)
class Forwarded:
    """A call offered here to an attached callee for another instance."""

    peer: str
    invite: CallInvite
    started: float
    state: str = INVITE
    #: Ends the call here if it is neither answered nor ended by the
    #: caller's instance in time (that instance's answer timeout, and some).
    timer: IDelayedCall | None = None


class PoolCalls:
    """One instance's calls across the pool (see the module docstring).

    As the caller's instance it is the ``remote`` of ``table``
    (:class:`~cryptify.crs.calls.core.RemoteCallees`); as the callee's it
    keeps the calls it offered to its attached clients (:attr:`forwarded`)
    and takes their ``ringing``, ``talk`` and ``hangup``.

    @param owner_of: the pool member serving a URI now (None: no map).
    """

    def __init__(
        self,
        me: str,
        table: SessionTable,
        parties: Parties,
        link: FrameLink,
        owner_of: Callable[[str], str | None],
        clock: IReactorTime,
        offer_timeout: float = OFFER_TIMEOUT,
        max_forwarded: int = MAX_FORWARDED,
    ) -> None:
        self.me = me
        self.table = table
        self.parties = parties
        self.link = link
        self.owner_of = owner_of
        self.clock = clock
        self.offer_timeout = offer_timeout
        self.max_forwarded = max_forwarded
        #: Hangups no connection took yet, per peer, in order.
        self.unsent: dict[str, list[CallHangup]] = {}
        self._resend: IDelayedCall | None = None
        self._stopped = False
        self.forwarded: dict[str, Forwarded] = {}
        self._by_uri: dict[str, set[str]] = {}
        self._per_peer: dict[str, int] = {}
        self.counters = {"forwarded": 0, "offered": 0, "refused": 0}
        self._install(table)

    def _install(self, table: SessionTable) -> None:
        table.remote = self

    # -- the caller's side (called by the session table) -------------------------

    def locate(self, uri: str, account: str | None = None) -> str | None:
        owner = self.owner_of(uri)
        return None if owner is None or owner == self.me else owner

    def _invite_account(self, session: Session) -> str:
        """The ``account`` of a forwarded invite: the caller's (one pool
        serves both); the inter-working calls send the callee's."""
        return session.account

    def offer(self, session: Session, mikey: bytes, legs: RelayLegs) -> bool:
        assert session.remote is not None
        invite = CallInvite(
            session.id,
            session.shown_caller or session.caller,
            session.to,
            self._invite_account(session),
            mikey,
            legs.host,
            legs.port,
            legs.callee_tag,
        )
        self.counters["forwarded"] += 1
        return self._send(session.remote, INVITE_FRAME, invite.fields())

    def hangup(self, session: Session, code: str, reason: str | None, who: str) -> None:
        assert session.remote is not None
        self._hangup(session.remote, CallHangup(session.id, code, reason, who))

    def hold(self, session: Session, held: bool) -> None:
        assert session.remote is not None
        self._send(session.remote, HOLD_FRAME, CallHold(session.id, held).fields())

    def rows(self, now: float) -> list[list[str]]:
        return [
            [f.invite.shown, f.invite.to, str(int(now - f.started)), f.state]
            for f in sorted(self.forwarded.values(), key=lambda f: f.started)
        ]

    def _hangup(self, peer: str, hangup: CallHangup) -> None:
        """Send a hangup, or keep it until a connection to ``peer`` takes it."""
        if self._stopped:
            self._send(peer, HANGUP_FRAME, hangup.fields())
            return
        if self.unsent.get(peer) or not self._send(peer, HANGUP_FRAME, hangup.fields()):
            kept = self.unsent.setdefault(peer, [])
            if len(kept) >= self.max_forwarded:
                log.warn("call hangup for {peer} dropped: too many kept", peer=peer)
                return
            kept.append(hangup)
            if self._resend is None:
                self._resend = self.clock.callLater(RESEND_INTERVAL, self._send_kept)

    def _send_kept(self) -> None:
        """Send the kept hangups a connection now takes; try again later
        while some are left."""
        self._resend = None
        for peer in sorted(self.unsent):
            kept = self.unsent[peer]
            while kept and self._send(peer, HANGUP_FRAME, kept[0].fields()):
                kept.pop(0)
            if not kept:
                del self.unsent[peer]
        if self.unsent:
            self._resend = self.clock.callLater(RESEND_INTERVAL, self._send_kept)

    def _send(self, peer: str, frame_type: str, fields: dict[str, object]) -> bool:
        """Send a frame; False when no connection takes it, or when the
        peer's own check refuses it (here: there, it drops the link)."""
        try:
            decode_call(frame_type, fields)
            return self.link.send(peer, frame_type, fields)
        except WireError as exc:
            log.error("call frame for {peer} not sent: {why}", peer=peer, why=str(exc))
            return False

    # -- frames from peers ---------------------------------------------------------

    def receive(self, peer: str, frame_type: str, fields: dict[str, object]) -> None:
        """A call frame from ``peer``; raises :class:`WireError` for a bad one."""
        frame = decode_call(frame_type, fields)
        if isinstance(frame, CallInvite):
            self._invited(peer, frame)
        elif isinstance(frame, CallRefused):
            self.counters["refused"] += 1
            self.table.remote_refused(peer, frame.session, frame.code)
        elif isinstance(frame, CallHold):
            forwarded = self.forwarded.get(frame.session)
            if forwarded is not None and forwarded.peer == peer:
                # the caller's side: its caller put the call on hold
                if forwarded.state == TALK:
                    self.parties.send(forwarded.invite.callee, frame.umsg())
            else:
                self.table.remote_hold(peer, frame.session, frame.held)
        elif isinstance(frame, CallHangup):
            forwarded = self.forwarded.get(frame.session)
            if forwarded is not None and forwarded.peer == peer:
                # a call offered here: the caller's side ended it
                self._drop(frame.session)
                self._tell_callee(forwarded, frame.code, frame.reason, frame.who)
            else:
                self.table.remote_hangup(peer, frame.session, frame.code, frame.reason, frame.who)
        elif frame.kind == OFFERED_FRAME:
            self.counters["offered"] += 1
            self.table.remote_offered(peer, frame.session)
        elif frame.kind == RINGING_FRAME:
            self.table.remote_ringing(peer, frame.session)
        else:
            self.table.remote_talk(peer, frame.session)

    def _refuse(self, peer: str, invite: CallInvite, code: str) -> None:
        self._send(peer, REFUSED_FRAME, CallRefused(invite.session, code).fields())

    def _invited(self, peer: str, invite: CallInvite) -> None:
        callee = invite.callee
        if invite.session in self.forwarded or invite.session in self.table.sessions:
            log.warn(
                "call invite from {peer} reuses session {session}: refused",
                peer=peer,
                session=invite.session,
            )
            self._refuse(peer, invite, "busy")
            return
        if self.parties.attached(callee) is None:
            if self.table.on_absent is not None:
                self.table.on_absent(invite.account, callee)
            self._refuse(
                peer, invite, "not-connected" if self.parties.known(callee) else "not-found"
            )
            return
        if not self._glare(peer, invite):
            return
        if self._per_peer.get(peer, 0) >= self.max_forwarded:
            log.warn(
                "{peer} forwards more than {count} calls at once: busy",
                peer=peer,
                count=self.max_forwarded,
            )
            self._refuse(peer, invite, "busy")
            return
        forwarded = Forwarded(peer, invite, self.clock.seconds())
        forwarded.timer = self.clock.callLater(
            self.table.answer_timeout + self.offer_timeout, self._unanswered, invite.session
        )
        self.forwarded[invite.session] = forwarded
        self._by_uri.setdefault(callee, set()).add(invite.session)
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        self._send(peer, OFFERED_FRAME, self._offer_step(invite).fields())
        self.parties.send(callee, invite.umsg())
        self._trace(forwarded, INVITE)

    def _offer_step(self, invite: CallInvite) -> CallStep:
        """The ``call-offered`` for ``invite`` (the inter-working calls name
        the callee's relay leg in it)."""
        return CallStep(OFFERED_FRAME, invite.session)

    def _glare(self, peer: str, invite: CallInvite) -> bool:
        """Two clients of different instances invited each other: the
        invite of the smaller URI wins, on both instances alike (each checks
        the other's invite when it arrives).  False if ``invite`` lost."""
        caller, callee = base_uri(invite.shown), invite.callee
        for session in self.table.sessions_of(callee):
            if session.caller == callee and session.callee == caller and session.state == INVITE:
                if callee < caller:
                    self._refuse(peer, invite, "glare")
                    return False
                self.table.glare_lost(session.id, caller)
        return True

    def _unanswered(self, session_id: str) -> None:
        """A call offered here that its caller's instance neither ended nor
        saw answered long after its own answer timeout (that instance
        restarted, say): it ends on both sides."""
        forwarded = self.forwarded.get(session_id)
        if forwarded is None:
            return
        forwarded.timer = None
        self._drop(session_id)
        hangup = CallHangup(session_id, "no-answer", "not answered in time", CRS)
        self._hangup(forwarded.peer, hangup)
        self._tell_callee(forwarded, "no-answer", "not answered in time", CRS)

    def _stop_timer(self, forwarded: Forwarded) -> None:
        if forwarded.timer is not None and forwarded.timer.active():
            forwarded.timer.cancel()
        forwarded.timer = None

    def _drop(self, session_id: str) -> Forwarded | None:
        forwarded = self.forwarded.pop(session_id, None)
        if forwarded is None:
            return None
        self._stop_timer(forwarded)
        callee = forwarded.invite.callee
        ids = self._by_uri.get(callee)
        if ids is not None:
            ids.discard(session_id)
            if not ids:
                del self._by_uri[callee]
        left = self._per_peer.get(forwarded.peer, 1) - 1
        if left:
            self._per_peer[forwarded.peer] = left
        else:
            self._per_peer.pop(forwarded.peer, None)
        return forwarded

    def _tell_callee(self, forwarded: Forwarded, code: str, reason: str | None, who: str) -> None:
        invite = forwarded.invite
        self.parties.send(
            invite.callee,
            message("hangup", session=invite.session, code=code, reason=reason, who=who),
        )
        self._trace(forwarded, f"hangup({code}; {who})")

    def _trace(self, forwarded: Forwarded, state: str) -> None:
        invite = forwarded.invite
        self.table.trace.emit(
            "session", invite.shown, invite.to, state, invite.account, invite.session
        )

    # -- the callee's side (its client's messages) -----------------------------------

    def _mine(self, uri: str, session_id: str) -> Forwarded | None:
        forwarded = self.forwarded.get(session_id)
        if forwarded is None or forwarded.invite.callee != uri:
            return None
        return forwarded

    def client_ringing(self, uri: str, session_id: str) -> bool:
        """``ringing`` from an attached client: True if it was for a call
        offered here (handled), False for the session table."""
        forwarded = self._mine(uri, session_id)
        if forwarded is None:
            return False
        if forwarded.state != INVITE:
            self.parties.send(uri, message("error", code="unexpected", reason="not ringing now"))
            return True
        forwarded.state = RINGING
        self._send(forwarded.peer, RINGING_FRAME, CallStep(RINGING_FRAME, session_id).fields())
        self._trace(forwarded, RINGING)
        return True

    def client_talk(self, uri: str, session_id: str) -> bool:
        """``talk`` from an attached client (as :meth:`client_ringing`)."""
        forwarded = self._mine(uri, session_id)
        if forwarded is None:
            return False
        if forwarded.state not in (INVITE, RINGING):
            self.parties.send(uri, message("error", code="unexpected", reason="cannot answer now"))
            return True
        forwarded.state = TALK
        self._stop_timer(forwarded)
        self._send(forwarded.peer, TALK_FRAME, CallStep(TALK_FRAME, session_id).fields())
        self._trace(forwarded, TALK)
        return True

    def client_hangup(self, uri: str, session_id: str, code: str, reason: str | None) -> bool:
        """``hangup`` from an attached client (as :meth:`client_ringing`)."""
        forwarded = self._mine(uri, session_id)
        if forwarded is None:
            return False
        self._drop(session_id)
        self._hangup(forwarded.peer, CallHangup(session_id, code, reason, CALLEE))
        self._trace(forwarded, f"hangup({code}; {CALLEE})")
        return True

    def client_detached(self, uri: str) -> None:
        """An attached client went away: its calls offered here end."""
        for session_id in sorted(self._by_uri.get(uri, ())):
            forwarded = self._drop(session_id)
            assert forwarded is not None
            hangup = CallHangup(session_id, "detached", "the callee went away", CALLEE)
            self._hangup(forwarded.peer, hangup)
            self._trace(forwarded, f"hangup(detached; {CALLEE})")

    def client_hold(self, uri: str, session_id: str, held: bool) -> bool:
        """``hold`` or ``resume`` from an attached client (as :meth:`client_ringing`)."""
        forwarded = self._mine(uri, session_id)
        if forwarded is None:
            return False
        if forwarded.state != TALK:
            self.parties.send(uri, message("error", code="unexpected", reason="not talking"))
            return True
        self._send(forwarded.peer, HOLD_FRAME, CallHold(session_id, held).fields())
        return True

    def busy(self, uri: str) -> bool:
        """Whether ``uri`` takes part in a call here (either side)."""
        return bool(self._by_uri.get(uri)) or bool(self.table.sessions_of(uri))

    # -- the link ----------------------------------------------------------------

    def link_changed(self, peer: str, up: bool) -> None:
        """The pool link to ``peer`` went up or down: when down, every call
        through it ends on this side (and the hangups kept for it are
        dropped: the peer ends those calls itself); when up, the kept
        hangups go at once."""
        if up:
            if peer in self.unsent:
                self._send_kept()
            return
        self.unsent.pop(peer, None)
        ended = [s for s, f in self.forwarded.items() if f.peer == peer]
        for session_id in ended:
            forwarded = self._drop(session_id)
            assert forwarded is not None
            self._tell_callee(
                forwarded, "not-connected", "the caller's CRS instance is unreachable", CRS
            )
        through = sum(1 for s in self.table.sessions.values() if s.remote == peer)
        if ended or through:
            log.warn(
                "pool link to {peer} down: {count} calls through it ended",
                peer=peer,
                count=len(ended) + through,
            )
        self.table.peer_lost(peer)

    def stop(self) -> None:
        """Shutdown: the calls offered here end on both sides (what no
        connection takes now is not kept)."""
        self._stopped = True
        if self._resend is not None and self._resend.active():
            self._resend.cancel()
        self._resend = None
        self.unsent.clear()
        for session_id in sorted(self.forwarded):
            forwarded = self._drop(session_id)
            assert forwarded is not None
            hangup = CallHangup(session_id, "shutdown", "the CRS is shutting down", CRS)
            self._send(forwarded.peer, HANGUP_FRAME, hangup.fields())
            self._tell_callee(forwarded, "shutdown", "the CRS is shutting down", CRS)
