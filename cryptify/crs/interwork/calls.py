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

Media: both legs go through the caller's operator's relay, whose public
address the callee is given (as in the pool); the relay-to-relay leg
(each operator relaying its own client) is not built yet.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IReactorTime

from cryptify.crs.calls.core import Parties, Session, SessionTable
from cryptify.crs.pool.calls_core import CallInvite, FrameLink, PoolCalls


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
        super().__init__("", table, parties, link, lambda uri: None, clock)

    def _install(self, table: SessionTable) -> None:
        table.external = self

    def locate(self, uri: str, account: str | None = None) -> str | None:
        if account is None or not self.accounts.remote(account):
            return None
        return self.accounts.peer_for(account)

    def _invite_account(self, session: Session) -> str:
        return session.to_account or session.account

    def _invited(self, peer: str, invite: CallInvite) -> None:
        attachment = self.parties.attached(invite.callee)
        if not self.accounts.hosts(invite.account) or (
            attachment is not None and getattr(attachment, "account", None) != invite.account
        ):
            self._refuse(peer, invite, "not-found")
            return
        super()._invited(peer, invite)


__all__ = ["IwCalls"]
