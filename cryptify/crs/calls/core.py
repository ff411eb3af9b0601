"""Calls through the CRS: the session state machine (sans-IO).

A session goes ``invite -> ringing -> talk -> hangup``::

    caller            CRS                         callee
    invite{id,to,mikey} ->  find callee, allocate relay
                      <- session{id,session,relay...}
                            invite{session,from,to,mikey,relay...} ->
                                              <- ringing{session}
                      <- ringing{session}
                                              <- talk{session}
                      <- talk{session}
    hangup{session,code} -> (either side)      hangup{...,who} ->

The CRS never reads the MIKEY-SAKKE I_MESSAGE (``mikey``): it is passed
to the callee as it came.  A ``to`` with an extension (``tel:+8888;101``)
reaches the client attached as its base number, with the full URI.

``show session`` lists the live sessions and, for :data:`ENDED_SHOWN_FOR`
after they ended, the ended ones with their final state as the manual's
state list writes it: ``hangup(reason, who)``, ``responder not found``,
``responder not connected`` (at most :data:`MAX_ENDED_SHOWN` of them, the
most recent).

Ends the CRS decides itself carry ``who = crs``: an invite not answered
within :data:`ANSWER_TIMEOUT` (``no-answer``), a party that detaches
mid-call (``detached``, ``who`` naming that party), and glare: when two
clients invite each other before either answered, the invite of the
smaller URI wins and the other session ends with ``glare`` -- the same
decision on every instance, whatever order the invites arrived in.

The table reports its effects through a :class:`Parties` object (send a
message to an attached URI, find who is attached) and a relay allocator;
traces go to the :class:`~cryptify.crs.trace.TraceHub` as the manual's
``trace session`` lines.

In a pool the callee may be attached at another instance: then
:attr:`SessionTable.remote` (:class:`RemoteCallees`, the pool's calls in
:mod:`cryptify.crs.pool.calls_core`) names that instance, the session is
*remote*, and what the table would send the callee goes over the pool
link instead.  The caller is sent ``session`` only once the callee's
instance confirms it offered the call (:meth:`SessionTable.remote_offered`);
until then a failure is the answer an unreachable callee gets here
(``error not-connected``, ``responder not connected``).
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cryptify.crs.calls.session import (
    ANSWER_TIMEOUT,
    CALLEE,
    CALLER,
    CRS,
    ENDED_SHOWN_FOR,
    INVITE,
    MAX_ENDED_SHOWN,
    MAX_SESSIONS_PER_URI,
    NOT_CONNECTED_STATE,
    NOT_FOUND_STATE,
    RINGING,
    TALK,
    EndedSession,
    Parties,
    Party,
    RelayAllocator,
    RelayLegs,
    RemoteCallees,
    RemoteParty,
    Session,
    hangup_state,
)
from cryptify.crs.trace import TraceHub
from cryptify.protocols.umsg import base_uri, message

log = Logger(namespace="cryptify.crs.session")


class SessionTable:
    """Every live call of this instance."""

    def __init__(
        self,
        parties: Parties,
        relay: RelayAllocator,
        clock: IReactorTime,
        trace: TraceHub,
        new_id: Callable[[], str] = lambda: secrets.token_hex(12),
        answer_timeout: float = ANSWER_TIMEOUT,
        on_invite: Callable[[Party, Party], object] | None = None,
        ended_shown_for: float = ENDED_SHOWN_FOR,
    ) -> None:
        self.parties = parties
        self.relay = relay
        self.clock = clock
        self.trace = trace
        self.new_id = new_id
        self.answer_timeout = answer_timeout
        self.ended_shown_for = ended_shown_for
        self.sessions: dict[str, Session] = {}
        #: Ended sessions, oldest first, for ``show session``.
        self.ended: deque[EndedSession] = deque(maxlen=MAX_ENDED_SHOWN)
        self.by_uri: dict[str, set[str]] = {}
        self.counters = {"invites": 0, "talks": 0, "hangups": 0}
        #: Called with (caller, callee) attachments for every call placed
        #: (statistics); it must not raise and does its I/O elsewhere.
        self.on_invite = on_invite
        #: Called with (account, callee URI) when an invite finds its callee
        #: not attached (push wake-ups); it must not raise.
        self.on_absent: Callable[[str, str], object] | None = None
        #: Callees attached at other pool instances (None: not in a pool).
        self.remote: RemoteCallees | None = None
        #: Callees of other operators' accounts, over the inter-working
        #: link (None: no inter-working); an invite names the account.
        self.external: RemoteCallees | None = None

    # -- bookkeeping -----------------------------------------------------------

    def _trace(self, session: Session, state: str) -> None:
        self.trace.emit("session", session.caller, session.to, state, session.account, session.id)

    def _add(self, session: Session) -> None:
        self.sessions[session.id] = session
        for uri in (session.caller, session.callee):
            self.by_uri.setdefault(uri, set()).add(session.id)

    def _remove(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        for uri in (session.caller, session.callee):
            ids = self.by_uri.get(uri)
            if ids is not None:
                ids.discard(session.id)
                if not ids:
                    del self.by_uri[uri]
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.timer = None
        if session.relayed:
            self.relay.release(session.id)
            session.relayed = False

    def sessions_of(self, uri: str) -> list[Session]:
        return [self.sessions[i] for i in sorted(self.by_uri.get(uri, ()))]

    def _ended(self, caller: str, to: str, started: float, state: str) -> None:
        """Remember a session's final state for ``show session``."""
        now = self.clock.seconds()
        self._forget_ended(now)
        self.ended.append(EndedSession(caller, to, started, now, state))

    def _forget_ended(self, now: float) -> None:
        while self.ended and now - self.ended[0].ended >= self.ended_shown_for:
            self.ended.popleft()

    def rows(self) -> list[list[str]]:
        """``show session`` rows: CALLER CALLEE TIME STATE.

        Live sessions first (TIME so far), then those that ended less than
        :data:`ENDED_SHOWN_FOR` ago (TIME: their whole length), oldest first.
        """
        now = self.clock.seconds()
        self._forget_ended(now)
        live = [
            [s.caller, s.to, str(int(now - s.started)), s.state]
            for s in sorted(self.sessions.values(), key=lambda s: s.started)
        ]
        ended = [[e.caller, e.to, str(int(e.ended - e.started)), e.state] for e in self.ended]
        offered = [] if self.remote is None else self.remote.rows(now)
        if self.external is not None:
            offered += self.external.rows(now)
        return live + offered + ended

    def _remotes(self, session: Session) -> RemoteCallees:
        """Who carries a remote ``session``: the pool, or the inter-working link."""
        remotes = self.external if session.to_account is not None else self.remote
        assert remotes is not None
        return remotes

    # -- from the caller ---------------------------------------------------------

    def invite(
        self,
        caller: Party,
        request_id: int,
        to: str,
        mikey: bytes,
        shown: str | None = None,
        codecs: list[str] | None = None,
        to_account: str | None = None,
    ) -> None:
        """``invite`` from an attached client (``caller`` is its attachment);
        ``shown`` is the ``from`` it asked for: its own URI, with an
        extension; ``codecs`` its media codecs, passed on to the callee
        unread; ``to_account`` the callee's account when the caller named it
        (another operator's, reached over the inter-working link)."""
        callee_uri = base_uri(to)
        account = caller.account
        if shown is not None and base_uri(shown) != caller.uri:
            self._error(caller.uri, request_id, "rejected", "from is not the caller's own URI")
            return
        if callee_uri == caller.uri:
            self._error(caller.uri, request_id, "rejected", "cannot call yourself")
            return
        if len(self.by_uri.get(caller.uri, ())) >= MAX_SESSIONS_PER_URI:
            self._error(caller.uri, request_id, "busy", "too many calls at once")
            return
        peer = None
        external = None
        if to_account is not None and self.external is not None:
            peer = self.external.locate(callee_uri, to_account)
            external = to_account if peer is not None else None
        callee = None if peer is not None else self.parties.attached(callee_uri)
        if callee is None and peer is None and self.remote is not None:
            peer = self.remote.locate(callee_uri)
        if callee is None and peer is not None:
            callee = RemoteParty(callee_uri, external or account)
        if callee is None:
            if self.on_absent is not None:
                self.on_absent(account, callee_uri)
            if self.parties.known(callee_uri):
                code, state = "not-connected", NOT_CONNECTED_STATE
            else:
                code, state = "not-found", NOT_FOUND_STATE
            self.trace.emit("session", caller.uri, to, state, account, "-")
            self._ended(caller.uri, to, self.clock.seconds(), state)
            self._error(caller.uri, request_id, code, state)
            return
        if not self._resolve_glare(caller.uri, callee_uri, request_id):
            return
        session = Session(
            self.new_id(),
            caller.uri,
            callee_uri,
            to,
            account,
            self.clock.seconds(),
            request_id=request_id,
            shown_caller=shown or caller.uri,
            remote=peer,
            codecs=codecs,
            to_account=external,
        )
        self._add(session)
        self.counters["invites"] += 1
        if self.on_invite is not None:
            try:
                self.on_invite(caller, callee)
            except Exception:
                log.failure("invite listener failed")
        allocation = self.relay.allocate(session.id)
        allocation.addCallbacks(
            lambda legs: self._allocated(session, request_id, mikey, legs),
            lambda failure: self._allocation_failed(session, request_id, failure),
        )

    def _resolve_glare(self, caller: str, callee: str, request_id: int) -> bool:
        """Two clients inviting each other: the smaller URI's invite wins."""
        for session in self.sessions_of(callee):
            if session.caller == callee and session.callee == caller and session.state == INVITE:
                if callee < caller:
                    self._error(caller, request_id, "glare", f"{callee} is calling you")
                    self.trace.emit("session", caller, callee, "hangup(glare; crs)", "-", "-")
                    self._ended(caller, callee, self.clock.seconds(), hangup_state("glare", CRS))
                    return False
                self._end(session, "glare", CRS, f"{caller} called at the same time")
        return True

    def _allocated(self, session: Session, request_id: int, mikey: bytes, legs: RelayLegs) -> None:
        if session.id not in self.sessions:
            # ended while the relay was being allocated
            self.relay.release(session.id)
            return
        session.relayed = True
        if session.remote is not None:
            remotes = self._remotes(session)
            session.legs = legs
            if not remotes.offer(session, mikey, legs):
                self._unreachable(session, tell=False)
                return
            session.timer = self.clock.callLater(
                remotes.offer_timeout, self._offer_timeout, session.id
            )
            return
        self._tell_caller(session, legs)
        self.parties.send(
            session.callee,
            message(
                "invite",
                session=session.id,
                **{"from": session.shown_caller or session.caller},
                to=session.to,
                mikey=mikey,
                relay_host=legs.host,
                relay_port=legs.port,
                relay_tag=legs.callee_tag,
                **({} if session.codecs is None else {"codecs": session.codecs}),
            ),
        )
        self._ring(session)

    def _tell_caller(self, session: Session, legs: RelayLegs) -> None:
        """The caller's ``session``: the call is placed."""
        session.offered = True
        self.parties.send(
            session.caller,
            message(
                "session",
                id=session.request_id,
                session=session.id,
                relay_host=legs.host,
                relay_port=legs.port,
                relay_tag=legs.caller_tag,
            ),
        )

    def _ring(self, session: Session) -> None:
        """The callee was offered the call: it has the answer timeout to take it."""
        session.timer = self.clock.callLater(self.answer_timeout, self._no_answer, session.id)
        self._trace(session, INVITE)

    def _allocation_failed(self, session: Session, request_id: int, failure: Any) -> None:
        log.warn(
            "no relay session for call {caller} -> {callee}: {why}",
            caller=session.caller,
            callee=session.callee,
            why=failure.getErrorMessage(),
        )
        self._remove(session)
        self._ended(session.caller, session.to, session.started, hangup_state("internal", CRS))
        self._error(session.caller, request_id, "internal", "no media relay available")

    def _error(self, uri: str, request_id: int, code: str, reason: str) -> None:
        self.parties.send(uri, message("error", id=request_id, code=code, reason=reason))

    # -- during the call ---------------------------------------------------------

    def _find(self, uri: str, session_id: str) -> Session | None:
        session = self.sessions.get(session_id)
        if session is None or session.role_of(uri) is None:
            self.parties.send(
                uri, message("error", code="not-found", reason=f"no session {session_id[:64]}")
            )
            return None
        return session

    def ringing(self, uri: str, session_id: str) -> None:
        """``ringing`` from the callee."""
        session = self._find(uri, session_id)
        if session is None:
            return
        if session.remote is not None or session.role_of(uri) != CALLEE or session.state != INVITE:
            self.parties.send(uri, message("error", code="unexpected", reason="not ringing now"))
            return
        self._ringing(session)

    def _ringing(self, session: Session) -> None:
        session.state = RINGING
        self.parties.send(session.caller, message("ringing", session=session.id))
        self._trace(session, RINGING)

    def talk(self, uri: str, session_id: str, codec: str | None = None) -> None:
        """``talk`` from the callee: the call is answered (``codec``: the one it
        chose from the caller's ``codecs``, passed on unread)."""
        session = self._find(uri, session_id)
        if session is None:
            return
        if (
            session.remote is not None
            or session.role_of(uri) != CALLEE
            or session.state not in (INVITE, RINGING)
        ):
            self.parties.send(uri, message("error", code="unexpected", reason="cannot answer now"))
            return
        self._talk(session, codec)

    def _talk(self, session: Session, codec: str | None = None) -> None:
        session.state = TALK
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.timer = None
        self.counters["talks"] += 1
        chosen = {} if codec is None else {"codec": codec}
        self.parties.send(session.caller, message("talk", session=session.id, **chosen))
        self._trace(session, TALK)

    def hold(self, uri: str, session_id: str, held: bool) -> None:
        """``hold`` or ``resume`` from either party while talking: passed to the other."""
        session = self._find(uri, session_id)
        if session is None:
            return
        if session.state != TALK:
            self.parties.send(uri, message("error", code="unexpected", reason="not talking"))
            return
        if session.remote is not None:
            # the callee is attached at another instance or behind an
            # inter-working peer: it goes over that link
            if session.role_of(uri) != CALLER:
                self.parties.send(
                    uri, message("error", code="not-found", reason=f"no session {session_id[:64]}")
                )
                return
            self._remotes(session).hold(session, held)
            return
        kind = "hold" if held else "resume"
        self.parties.send(session.other(uri), message(kind, session=session.id))

    def hangup(self, uri: str, session_id: str, code: str, reason: str | None = None) -> None:
        """``hangup`` from either party."""
        session = self._find(uri, session_id)
        if session is None:
            return
        role = session.role_of(uri)
        assert role is not None
        if session.remote is not None and role == CALLEE:
            # the callee of a remote session is attached elsewhere, not as this client
            self.parties.send(
                uri, message("error", code="not-found", reason=f"no session {session_id[:64]}")
            )
            return
        self._end(session, code, role, reason, skip=uri)

    def _end(
        self, session: Session, code: str, who: str, reason: str | None, skip: str | None = None
    ) -> None:
        self._remove(session)
        self.counters["hangups"] += 1
        self._ended(session.caller, session.to, session.started, hangup_state(code, who))
        if session.remote is not None and session.legs is not None and session.callee != skip:
            # its instance was sent the invite: it ends there too
            self._remotes(session).hangup(session, code, reason, who)
        if not session.offered:
            # Nobody has heard of this session yet: the caller's invite fails.
            if session.caller != skip:
                error = "not-connected" if code == "detached" else code
                self._error(session.caller, session.request_id, error, reason or code)
            self._trace(session, f"hangup({code}; {who})")
            return
        for party in (session.caller, session.callee):
            if party != skip and not (session.remote is not None and party == session.callee):
                self.parties.send(
                    party,
                    message("hangup", session=session.id, code=code, reason=reason, who=who),
                )
        self._trace(session, f"hangup({code}; {who})")

    def _no_answer(self, session_id: str) -> None:
        session = self.sessions.get(session_id)
        if session is None:
            return
        session.timer = None
        self._end(session, "no-answer", CRS, "not answered in time")

    def detached(self, uri: str) -> None:
        """A party's connection ended: its calls end, the other party is told."""
        for session in self.sessions_of(uri):
            role = session.role_of(uri)
            assert role is not None
            if session.remote is not None and role == CALLEE:
                continue  # that callee is attached at another instance
            self._end(session, "detached", role, f"the {role} went away", skip=uri)

    def stop(self) -> None:
        """Shutdown: end every call."""
        for session in list(self.sessions.values()):
            self._end(session, "shutdown", CRS, "the CRS is shutting down")

    # -- callees at other pool instances ---------------------------------------

    def _remote_session(self, peer: str, session_id: str) -> Session | None:
        """The remote session ``session_id`` whose callee is at ``peer``."""
        session = self.sessions.get(session_id)
        if session is None or session.remote != peer:
            return None
        return session

    def _unreachable(self, session: Session, tell: bool, code: str = "not-connected") -> None:
        """A remote session whose callee's instance did not take it: the
        caller's invite fails as for a callee that is not attached here
        (``code``: ``not-connected``, or what that instance answered)."""
        self._remove(session)
        if tell:
            self._remotes(session).hangup(session, code, None, CRS)
        state = {"not-connected": NOT_CONNECTED_STATE, "not-found": NOT_FOUND_STATE}.get(code)
        if state is None:
            state = hangup_state(code, CRS)
        self.trace.emit("session", session.caller, session.to, state, session.account, session.id)
        self._ended(session.caller, session.to, session.started, state)
        self._error(session.caller, session.request_id, code, state)

    def _offer_timeout(self, session_id: str) -> None:
        session = self.sessions.get(session_id)
        if session is None or session.offered:
            return
        session.timer = None
        log.warn(
            "call {caller} -> {callee}: {peer} did not confirm the offer in time",
            caller=session.caller,
            callee=session.callee,
            peer=session.remote,
        )
        self._unreachable(session, tell=True)

    def _confirmed(self, session: Session) -> None:
        """The callee's instance offered the call: the caller is told."""
        if session.offered:
            return
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.timer = None
        assert session.legs is not None
        self._tell_caller(session, session.legs)
        self._ring(session)

    def remote_offered(self, peer: str, session_id: str) -> None:
        """``peer`` offered the remote session to its attached callee."""
        session = self._remote_session(peer, session_id)
        if session is not None and session.legs is not None:
            self._confirmed(session)

    def remote_refused(self, peer: str, session_id: str, code: str) -> None:
        """``peer`` could not offer the call (``not-connected``, ``not-found``,
        ``glare``, ``busy``): the caller's invite fails with that code."""
        session = self._remote_session(peer, session_id)
        if session is not None and not session.offered:
            self._unreachable(session, tell=False, code=code)

    def remote_ringing(self, peer: str, session_id: str) -> None:
        """``ringing`` from a remote session's callee."""
        session = self._remote_session(peer, session_id)
        if session is None or session.legs is None:
            return
        self._confirmed(session)
        if session.state == INVITE:
            self._ringing(session)

    def remote_talk(self, peer: str, session_id: str) -> None:
        """``talk`` from a remote session's callee."""
        session = self._remote_session(peer, session_id)
        if session is None or session.legs is None:
            return
        self._confirmed(session)
        if session.state in (INVITE, RINGING):
            self._talk(session)

    def remote_hold(self, peer: str, session_id: str, held: bool) -> None:
        """``hold`` or ``resume`` from a remote session's callee while talking."""
        session = self._remote_session(peer, session_id)
        if session is not None and session.state == TALK:
            kind = "hold" if held else "resume"
            self.parties.send(session.caller, message(kind, session=session.id))

    def remote_hangup(
        self, peer: str, session_id: str, code: str, reason: str | None, who: str
    ) -> None:
        """A remote session ended at its callee's instance (the callee hung
        up or went away, or that instance ended it)."""
        session = self._remote_session(peer, session_id)
        if session is None:
            return
        if not session.offered and session.legs is not None:
            # the callee's instance ended it before confirming: e.g. the
            # callee hung up at once; the caller is told it was placed first
            self._confirmed(session)
        self._end(session, code, who, reason, skip=session.callee)

    def glare_lost(self, session_id: str, winner: str) -> None:
        """``winner`` (a client of another instance) invited the caller of
        ``session_id`` while that invite was not answered, and its URI is
        the smaller: this session ends with ``glare``, as between two
        clients of this instance."""
        session = self.sessions.get(session_id)
        if session is not None and session.state == INVITE:
            self._end(session, "glare", CRS, f"{winner} called at the same time")

    def peer_lost(self, peer: str) -> None:
        """The pool link to ``peer`` is down: its callees' calls end here."""
        for session in [s for s in self.sessions.values() if s.remote == peer]:
            if session.offered:
                self._end(
                    session,
                    "not-connected",
                    CRS,
                    "the callee's CRS instance is unreachable",
                    skip=session.callee,
                )
            else:
                self._unreachable(session, tell=False)
