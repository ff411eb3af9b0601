"""Messages and acks to other operators' accounts over the inter-working link.

:class:`IwForwarder` is the pool's
:class:`~cryptify.crs.pool.forward.Forwarder` with other routes: where the
pool sends a post to the member owning the recipient's slot, this sends it
to the peer hosting the recipient's *account* (``to-account`` of the
UMSG ``post``; :mod:`cryptify.crs.interwork.routes_core` keeps which peer
advertised which accounts).  Everything else is the pool's, on the
inter-working link (:class:`~cryptify.crs.interwork.link.IwLink`), with
the same frames (``msg-post``, ``msg-stored``, ``msg-refused``,
``msg-delivered``; :mod:`cryptify.crs.pool.forward_core`):

- the peer stores the message durably under the ID, time and retry scope
  given here, with its rules for a post made there (the account must be
  one it hosts, else ``not-found``; the recipient known there; the inbox
  limit), and only its ``msg-stored`` makes this CRS answer ``posted``;
  this CRS traces ``forward content`` (or ``forward ack``) with Account
  ``external``;
- when the peer cannot take it (no link, no answer within
  :data:`~cryptify.crs.pool.forward.FORWARD_TIMEOUT`, its store out of
  reach) the message is kept here, durably, in an inbox of its own
  (``iw:ACCOUNT:URI``: never a client's) before the ``posted``, and the
  sweep hands it over (``hand``) once a peer of that account is up,
  deleting it here only when the peer answered that it stored it; the
  peer's retry scope makes a copy sent twice one message;
- ``delivered`` for a sender behind a peer goes back to that peer
  (best effort, as for a sender that is not attached).

The frames of a peer that are not this CRS's business are refused as in
the pool; the ``account`` field of a ``msg-post`` on this link is the
recipient's account.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cryptify.crs.interwork.routes_core import (
    ACCOUNTS,
    MAX_ACCOUNTS,
    AccountRoutes,
    Conflict,
    decode_accounts,
    encode_accounts,
)
from cryptify.crs.messages.store import MessageStore, Stored
from cryptify.crs.messages.wiring import Messaging, Relayed
from cryptify.crs.pool.forward import FORWARD_TIMEOUT, Forwarder
from cryptify.crs.pool.forward_core import DELIVERED, encode_delivered

log = Logger(namespace="cryptify.crs.interwork")

#: Inboxes of messages kept here for another operator start with this.
HELD = "iw:"
#: Senders behind peers remembered for ``delivered`` (the oldest are forgotten).
MAX_SENDERS = 10_000


def held_inbox(account: str, to: str) -> str:
    """Where a message for ``to`` in another operator's ``account`` is kept."""
    return f"{HELD}{account}:{to}"


def parse_held(uri: str) -> tuple[str, str] | None:
    """(account, recipient) of a kept message's recipient, or None."""
    if not uri.startswith(HELD):
        return None
    account, sep, to = uri[len(HELD) :].partition(":")
    return (account, to) if sep and account else None


class IwRoutes(Protocol):
    """What the forwarder needs of the inter-working link
    (:class:`~cryptify.crs.interwork.link.IwLink`)."""

    def link_up(self, peer: str) -> bool: ...

    def send(self, peer: str, frame_type: str, fields: dict[str, object]) -> bool: ...

    def handle(
        self, frame_type: str, handler: Callable[[str, dict[str, object]], None]
    ) -> None: ...

    def on_link(self, listener: Callable[[str, bool], None]) -> None: ...

    def operator(self, peer: str) -> str | None: ...

    def configured(self) -> list[str]: ...


@attrs.define
class _AsPoolRoutes:
    """The inter-working link seen as the pool forwarder's routes: there is
    no slot map (routing is by account, in :class:`IwForwarder`)."""

    link: IwRoutes
    me: str = ""

    @property
    def peers(self) -> Sequence[str]:
        """No pool members here (what is known is not shared with another
        operator: :attr:`IwForwarder.shares_known`)."""
        return ()

    def owner(self, slot: int) -> str | None:
        return None

    def link_up(self, peer: str) -> bool:
        return self.link.link_up(peer)

    def send(self, peer: str, frame_type: str, fields: dict[str, object]) -> bool:
        return self.link.send(peer, frame_type, fields)

    def handle(self, frame_type: str, handler: Callable[[str, dict[str, object]], None]) -> None:
        self.link.handle(frame_type, handler)

    def on_link(self, listener: Callable[[str, bool], None]) -> None:
        self.link.on_link(listener)

    def watch(self, watcher: Callable[[], bool]) -> None:
        pass  # the forwarder sweeps on every change of the accounts itself


def _log_conflicts(conflicts: list[Conflict]) -> None:
    for c in conflicts:
        if c.why == "local":
            log.warn(
                "inter-working peer {peer} claims account {account}, hosted here: refused",
                peer=c.peer,
                account=c.account,
            )
        else:
            log.warn(
                "inter-working peers {peer} and {other} (two operators) both claim account "
                "{account}: refused to both",
                peer=c.peer,
                other=c.other,
                account=c.account,
            )


class IwForwarder(Forwarder):
    """Messages for accounts hosted by other operators (module docstring)."""

    trace_account = "external"

    def __init__(
        self,
        link: IwRoutes,
        store: MessageStore,
        messaging: Messaging,
        reactor: IReactorTime,
        local_accounts: Callable[[], frozenset[str]],
        *,
        pool: Forwarder | None = None,
        timeout: float = FORWARD_TIMEOUT,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.iw = link
        self.routes = AccountRoutes()
        self.local_accounts = local_accounts
        self.pool = pool
        #: Peers whose link is up.
        self.up: set[str] = set()
        self._senders: OrderedDict[str, str] = OrderedDict()
        super().__init__(
            _AsPoolRoutes(link), store, messaging, reactor, timeout=timeout, new_id=new_id
        )
        link.handle(ACCOUNTS, self._on_accounts)
        self._refresh_local()

    #: The URIs known here are not another operator's business.
    shares_known = False

    def _install(self, messaging: Messaging) -> None:
        messaging.iw = self

    # -- routes ------------------------------------------------------------

    def remote(self, account: str) -> bool:
        return self.routes.remote(account)

    def unknown(self, account: str) -> bool:
        """Whether ``account`` may be a peer's that has not told its
        accounts yet (since this CRS started, or since it was added): not
        hosted here, claimed by no peer, and some configured peer silent."""
        if account in self.routes.local or self.routes.remote(account):
            return False
        return any(peer not in self.routes.claims for peer in self.iw.configured())

    def hosts(self, account: str) -> bool:
        """Whether ``account`` is hosted here (as last advertised)."""
        return account in self.routes.local

    def peer_for(self, account: str) -> str | None:
        """A peer of ``account``'s operator, one whose link is up first."""
        peers = self.routes.peers_for(account)
        live = [p for p in peers if p in self.up]
        chosen = live or peers
        return chosen[0] if chosen else None

    def owner(self, uri: str) -> str | None:
        held = parse_held(uri)
        if held is None:
            return self.link.me  # a client's inbox: not this forwarder's
        return self.peer_for(held[0])

    def _route(self, to: str, account: str) -> str | None:
        return self.peer_for(account)

    def _sweeps(self, inbox: str) -> bool:
        return inbox.startswith(HELD)

    def _outgoing(self, message: Stored) -> Stored:
        held = parse_held(message.recipient)
        return message if held is None else attrs.evolve(message, recipient=held[1])

    def _hold(self, message: Stored) -> Deferred[Relayed]:
        kept = attrs.evolve(message, recipient=held_inbox(message.account, message.recipient))

        def answered(relayed: Relayed) -> Relayed:
            # kept for the peer: not offered to any client here
            return Relayed(attrs.evolve(relayed.posted, stored=None), None)

        return super()._hold(kept).addCallback(answered)

    # -- a peer's requests ---------------------------------------------------

    def _check_post(self, peer: str, message: Stored) -> tuple[str, str] | None:
        if message.account not in self.routes.local:
            return "not-found", f"account {message.account} is not hosted here"
        self._senders[message.sender] = peer
        self._senders.move_to_end(message.sender)
        while len(self._senders) > MAX_SENDERS:
            self._senders.popitem(last=False)
        return None

    def _taken(self, stored: Stored) -> None:
        self.messaging.arrived(stored)
        if self.pool is not None and self.pool.elsewhere(stored.recipient):
            self.pool.dirty = True  # another member serves it: the pool hands it on
            self.pool.kick()

    def knows(self, sender: str) -> bool:
        return sender in self._senders

    def tell_delivered(self, sender: str, message_id: str) -> None:
        peer = self._senders.get(sender)
        if peer is not None:
            self.link.send(peer, DELIVERED, encode_delivered(sender, message_id))

    # -- accounts ------------------------------------------------------------

    def _on_link(self, peer: str, up: bool) -> None:
        if up:
            self.up.add(peer)
            self.link.send(peer, ACCOUNTS, encode_accounts(self.routes.local))
        else:
            self.up.discard(peer)
            if self.iw.operator(peer) is None:
                self.routes.forget(peer)  # removed from iw-crs.conf
        super()._on_link(peer, up)

    def _on_accounts(self, peer: str, fields: dict[str, object]) -> None:
        accounts = decode_accounts(fields)
        operator = self.iw.operator(peer)
        if operator is None:
            return
        if self.routes.claims.get(peer) != accounts:
            log.info(
                "inter-working peer {peer} hosts {count} accounts",
                peer=peer,
                count=len(accounts),
            )
        _log_conflicts(self.routes.claim(peer, operator, accounts))
        self.dirty = True
        self.kick()

    def _refresh_local(self) -> None:
        """Advertise this CRS's accounts again when they changed."""
        local = self.local_accounts()
        if local == self.routes.local:
            return
        _log_conflicts(self.routes.set_local(local))
        if len(local) > MAX_ACCOUNTS:
            log.warn(
                "{count} accounts hosted here: inter-working peers are told of the first "
                "{most} only (by name), they do not send the others' messages and calls here",
                count=len(local),
                most=MAX_ACCOUNTS,
            )
        for peer in sorted(self.up):
            self.link.send(peer, ACCOUNTS, encode_accounts(local))

    def _tick(self) -> None:
        self._refresh_local()
        super()._tick()


__all__ = ["HELD", "IwForwarder", "held_inbox", "parse_held"]
