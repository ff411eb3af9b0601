"""What a call session is (sans-IO): its parties and roles, its relay legs,
the states the manual's ``trace session`` and ``show session`` print,
and the interfaces the session table works through (attached parties,
remote callees, the relay allocator).

The table of sessions is :mod:`cryptify.crs.calls.core`.
"""

from __future__ import annotations

from typing import Protocol

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from cryptify.protocols.umsg import Message

SECOND = 1.0
#: Seconds an invite may ring unanswered.
ANSWER_TIMEOUT = 60 * SECOND
#: Sessions one URI may take part in at once.
MAX_SESSIONS_PER_URI = 8
#: How long ``show session`` keeps listing a session after it ended.
ENDED_SHOWN_FOR = 60 * SECOND
#: Most ended sessions kept for ``show session`` (clients control how many fail).
MAX_ENDED_SHOWN = 1000
#: Longest hangup reason (a client's code) shown, in characters.
MAX_CODE_SHOWN = 64
#: The final states of ``show session`` for invites that found nobody.
NOT_FOUND_STATE = "responder not found"
NOT_CONNECTED_STATE = "responder not connected"

INVITE = "invite"
RINGING = "ringing"
TALK = "talk"

CALLER = "caller"
CALLEE = "callee"
CRS = "crs"


@attrs.frozen
class RelayLegs:
    """A relay session: where both parties send media, and each leg's tag."""

    host: str
    port: int
    caller_tag: bytes
    callee_tag: bytes


class Party(Protocol):
    """A party of a call: an attached client, or a callee at another CRS."""

    @property
    def uri(self) -> str: ...

    @property
    def account(self) -> str: ...


class Parties(Protocol):
    """Who is attached here, and how to reach them."""

    def attached(self, uri: str) -> Party | None:
        """The attachment of ``uri``, or None."""

    def known(self, uri: str) -> bool:
        """Whether ``uri`` belongs to an account served here (not-connected vs not-found)."""

    def send(self, uri: str, msg: Message) -> None:
        """Deliver a message to the attached client ``uri`` (dropped if it is gone)."""


class RemoteCallees(Protocol):
    """Callees attached at other pool instances (the pool's calls)."""

    #: Seconds the callee's instance has to confirm an offer.
    offer_timeout: float

    def locate(self, uri: str, account: str | None = None) -> str | None:
        """The other instance serving ``uri`` (in ``account``, when the
        caller named it), or None (here, or nobody)."""

    def offer(self, session: Session, mikey: bytes, legs: RelayLegs) -> bool:
        """Forward the invite of a remote ``session``; False if its instance
        cannot be reached now."""

    def hangup(self, session: Session, code: str, reason: str | None, who: str) -> None:
        """Tell the callee's instance that a remote ``session`` ended."""

    def hold(self, session: Session, held: bool) -> None:
        """Pass the caller's ``hold`` (or ``resume``) to the callee's instance."""

    def rows(self, now: float) -> list[list[str]]:
        """``show session`` rows of the calls offered here for other instances."""


@attrs.frozen
class RemoteParty:
    """The callee of a remote session as ``on_invite`` sees it."""

    uri: str
    account: str


class RelayAllocator(Protocol):
    """The relay sessions of calls."""

    def allocate(self, session: str) -> defer.Deferred[RelayLegs]:
        """Create a relay session; fires with its legs."""

    def release(self, session: str) -> None:
        """Remove a relay session (fire and forget)."""


@attrs.define(eq=False)
class Session:
    """One call."""

    id: str
    caller: str
    callee: str
    to: str
    account: str
    started: float
    state: str = INVITE
    request_id: int = 0
    timer: IDelayedCall | None = None
    relayed: bool = False
    #: Whether both parties were told of the session (after the relay answered).
    offered: bool = False
    #: What the callee is shown as the caller: ``caller``, or the caller's
    #: URI with an extension (a CIG naming the PBX user who called).
    shown_caller: str = ""
    #: The pool instance the callee is attached at (None: here).
    remote: str | None = None
    #: The relay legs of a remote session, until its callee's instance
    #: confirmed the offer (the caller is sent them then).
    legs: RelayLegs | None = None
    #: The caller's ``codecs`` (None: it offered none, G.711 u-law only),
    #: passed on to the callee unread.
    codecs: list[str] | None = None
    #: The callee's account when it is another operator's (``to-account``
    #: of the invite): ``remote`` is then an inter-working peer.
    to_account: str | None = None

    def role_of(self, uri: str) -> str | None:
        if uri == self.caller:
            return CALLER
        if uri == self.callee:
            return CALLEE
        return None

    def other(self, uri: str) -> str:
        return self.callee if uri == self.caller else self.caller


@attrs.frozen
class EndedSession:
    """A session ``show session`` still lists after it ended."""

    caller: str
    to: str
    started: float
    ended: float
    state: str


def hangup_state(code: str, who: str) -> str:
    """The final state ``show session`` shows: ``hangup(reason, who)``."""
    return f"hangup({code[:MAX_CODE_SHOWN]}, {who})"
