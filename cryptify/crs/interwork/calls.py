"""Calls to clients of other operators' accounts over the inter-working link.

:class:`IwCalls` is the pool's :class:`~cryptify.crs.pool.calls_core.PoolCalls`
on the inter-working link: the same frames (``call-invite``,
``call-offered``, ``call-refused``, ``call-ringing``, ``call-talk``,
``call-hangup``), the same checks and the same split of work.  An
``invite`` naming ``to-account`` that an inter-working peer hosts (and
this CRS does not) is the :attr:`~cryptify.crs.calls.core.SessionTable.external`
session of the caller's CRS: it keeps the session, allocates its relay
session and sends ``call-invite`` to a peer of that account (one whose
link is up first); the peer offers it to its attached callee and passes
``ringing``, ``talk`` and ``hangup`` back.  The link going down ends the
calls through it on both sides (``hangup not-connected``, ``crs``).

What differs from the pool: the ``account`` of a ``call-invite`` is the
callee's, and the callee's CRS refuses (``not-found``) an invite for an
account it does not host or for a callee attached under another account.

Media: each operator relays its own client's leg, and the two relays
send to each other on the relay port::

    Alice -> relay A (leg a) | relay A leg b <-> relay B leg a | (leg b) relay B <- Bob

The caller's CRS allocates its relay session as for any call and puts its
relay address and its leg b tag in ``call-invite``.  The callee's CRS
allocates a relay session of its own (before offering the call), bridges
its leg a to relay A (that address and tag: every packet relay B sends
there carries A's tag), gives Bob its relay B address and leg b tag, and
names relay B's address and leg a tag in ``call-offered``; the caller's
CRS then bridges its leg b to relay B the same way.  ``addr-map`` applies
to both bridged addresses (in each relay).  The callee's relay session is
released when the call ends there.  A CRS whose relay allocator cannot
bridge (or whose relay session failed) offers the call with the caller's
relay for both legs, as in a pool.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.crs.calls.core import SessionTable
from cryptify.crs.calls.session import Parties, RelayLegs, Session
from cryptify.crs.pool.calls_core import FrameLink, PoolCalls
from cryptify.crs.pool.calls_frames import (
    HANGUP_FRAME,
    OFFERED_FRAME,
    CallInvite,
    CallStep,
    RelayLeg,
    decode_call,
)

log = Logger(namespace="cryptify.crs.session")


def _address(host: str) -> bool:
    """Whether ``host`` is an IP address (what ``call-offered`` may name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Accounts(Protocol):
    """Which accounts live where (:class:`~cryptify.crs.interwork.forward.IwForwarder`)."""

    def remote(self, account: str) -> bool: ...

    def peer_for(self, account: str) -> str | None: ...

    def hosts(self, account: str) -> bool: ...


class IwCalls(PoolCalls):
    """This CRS's calls with other operators' clients (module docstring)."""

    def __init__(
        self,
        table: SessionTable,
        parties: Parties,
        link: FrameLink,
        accounts: Accounts,
        clock: IReactorTime,
    ) -> None:
        self.accounts = accounts
        #: Invites whose relay session is being allocated here: session -> peer.
        self._allocating: dict[str, str] = {}
        #: This CRS's relay leg offered to the caller's relay, per session.
        self._relayed: dict[str, RelayLeg] = {}
        #: Calls whose relay leg the relay confirmed bridged to a peer's
        #: relay: session -> (peer, "outgoing" for a call placed here,
        #: "incoming" for one from the peer's client).
        self.bridged: dict[str, tuple[str, str]] = {}
        #: Whether the relay's host was found not to be an IP address (logged once).
        self._named_relay = False
        super().__init__("", table, parties, link, lambda uri: None, clock)

    def _install(self, table: SessionTable) -> None:
        table.external = self

    def locate(self, uri: str, account: str | None = None) -> str | None:
        if account is None or not self.accounts.remote(account):
            return None
        return self.accounts.peer_for(account)

    def _invite_account(self, session: Session) -> str:
        return session.to_account or session.account

    def _bridger(self) -> Any:
        """The relay allocator's ``bridge``, when it has one."""
        return getattr(self.table.relay, "bridge", None)

    def _invited(self, peer: str, invite: CallInvite) -> None:
        attachment = self.parties.attached(invite.callee)
        if not self.accounts.hosts(invite.account) or (
            attachment is not None and getattr(attachment, "account", None) != invite.account
        ):
            self._refuse(peer, invite, "not-found")
            return
        if invite.session in self._allocating:
            self._refuse(peer, invite, "busy")  # that session is being set up already
            return
        bridge = self._bridger()
        if bridge is None or attachment is None or invite.session in self.forwarded:
            PoolCalls._invited(self, peer, invite)  # refused there, or no relay of ours
            return
        self._allocating[invite.session] = peer
        # a spare relay session when the allocator keeps them: no round
        # trip to the relay before the callee is offered the call
        allocate = getattr(self.table.relay, "allocate_spare", self.table.relay.allocate)
        allocated: defer.Deferred[RelayLegs] = allocate(invite.session)
        allocated.addCallbacks(
            lambda legs: self._allocated(peer, invite, legs, bridge),
            lambda failure: self._not_allocated(peer, invite, failure),
        )

    def _allocated(self, peer: str, invite: CallInvite, legs: RelayLegs, bridge: Any) -> None:
        if self._allocating.pop(invite.session, None) != peer:
            self.table.relay.release(invite.session)  # ended meanwhile
            return
        if not _address(legs.host):
            # The peer takes only an IP address for this relay's leg (it
            # drops the link for anything else): media through its relay.
            self.table.relay.release(invite.session)
            if not self._named_relay:
                self._named_relay = True
                log.warn(
                    "relay host {host} is not an IP address: calls from inter-working "
                    "peers go through their relay only",
                    host=legs.host,
                )
            PoolCalls._invited(self, peer, invite)
            return
        self._relayed[invite.session] = RelayLeg(legs.host, legs.port, legs.caller_tag)
        ours = attrs.evolve(
            invite, relay_host=legs.host, relay_port=legs.port, relay_tag=legs.callee_tag
        )
        PoolCalls._invited(self, peer, ours)
        if invite.session not in self.forwarded:  # refused (glare, busy)
            self._release(invite.session)
            return
        bridged: defer.Deferred[bool] = bridge(
            invite.session, "a", invite.relay_host, invite.relay_port, invite.relay_tag
        )
        bridged.addCallback(self._bridged, invite.session, peer, "incoming")
        bridged.addErrback(self._bridge_failed, invite.session)

    def _not_allocated(self, peer: str, invite: CallInvite, failure: Failure) -> None:
        if self._allocating.pop(invite.session, None) != peer:
            return
        log.warn(
            "no relay session for the call from {peer}: media through its relay ({why})",
            peer=peer,
            why=failure.getErrorMessage(),
        )
        PoolCalls._invited(self, peer, invite)

    def _bridged(self, done: bool, session: str, peer: str, direction: str) -> None:
        if done:
            self.bridged[session] = (peer, direction)
            if len(self.bridged) > 2 * (len(self.table.sessions) + len(self.forwarded)) + 64:
                self._prune()  # amortised: ended calls do not pile up

    def _prune(self) -> None:
        for session in list(self.bridged):
            if session not in self.table.sessions and session not in self.forwarded:
                del self.bridged[session]  # the call ended

    def data_state(self, peer: str) -> tuple[str, str, str]:
        """``show iw-crs``'s DATA-LINK, DATA-OUTGOING and DATA-INCOMING of
        ``peer``: each ``up`` while a live call in that direction (placed
        here, or from the peer's client) has its relay leg bridged to the
        peer's relay, else ``down``."""
        self._prune()
        directions = {d for p, d in self.bridged.values() if p == peer}
        outgoing = "up" if "outgoing" in directions else "down"
        incoming = "up" if "incoming" in directions else "down"
        link = "up" if directions else "down"
        return link, outgoing, incoming

    def _bridge_failed(self, failure: Failure, session: str) -> None:
        log.warn(
            "relay leg of call {session} not bridged: {why}",
            session=session,
            why=failure.getErrorMessage(),
        )

    def _release(self, session_id: str) -> None:
        if self._relayed.pop(session_id, None) is not None:
            self.table.relay.release(session_id)

    def _offer_step(self, invite: CallInvite) -> CallStep:
        return CallStep(OFFERED_FRAME, invite.session, self._relayed.get(invite.session))

    def _drop(self, session_id: str) -> Any:
        forwarded = super()._drop(session_id)
        self._release(session_id)
        return forwarded

    def receive(self, peer: str, frame_type: str, fields: dict[str, object]) -> None:
        frame = decode_call(frame_type, fields)
        if frame_type == HANGUP_FRAME and self._allocating.get(frame.session) == peer:
            del self._allocating[frame.session]  # released once allocated
            return
        if isinstance(frame, CallStep) and frame.relay is not None:
            session = self.table.sessions.get(frame.session)
            bridge = self._bridger()
            if session is not None and session.remote == peer and bridge is not None:
                relay = frame.relay
                bridged: defer.Deferred[bool] = bridge(
                    frame.session, "b", relay.host, relay.port, relay.tag
                )
                bridged.addCallback(self._bridged, frame.session, peer, "outgoing")
                bridged.addErrback(self._bridge_failed, frame.session)
        super().receive(peer, frame_type, fields)

    def link_changed(self, peer: str, up: bool) -> None:
        if not up:
            for session_id in [s for s, p in self._allocating.items() if p == peer]:
                del self._allocating[session_id]
        super().link_changed(peer, up)


__all__ = ["IwCalls"]
