"""Which accounts live behind which inter-working peer (sans-IO).

Each side of an inter-working link advertises the accounts (security
domains) it hosts: ``iw-accounts {"accounts": [ACCOUNT, ...]}``, sent when
the link to a peer comes up and again whenever its own accounts change
(a peer that does not know the frame ignores it).  :class:`AccountRoutes`
keeps what every peer said and answers which peers serve an account.

Peers with the same shared secret are one operator's pool (the manual's
"two entries with the same secret"): they all advertise the same accounts
and any of them whose link is up may take a message.  Conflicts are
refused, never guessed:

- a peer that claims an account hosted here is not routed to for it;
- an account claimed by peers of two operators (two secrets) is routed to
  neither while both claim it.

Each conflict is reported once (:attr:`AccountRoutes.conflicts` returns the
new ones so the caller logs them); a peer's claims last until it says
otherwise or is removed from ``iw-crs.conf`` (a link going down keeps
them, so posts for its accounts are kept here until it is back).
"""

from __future__ import annotations

import re

import attrs

from cryptify.crs.pool.wire import WireError
from cryptify.protocols.umsg import ACCOUNT

ACCOUNTS = "iw-accounts"
#: Accounts one peer may advertise.
MAX_ACCOUNTS = 4096

_ACCOUNT = re.compile(ACCOUNT + r"\Z")


def encode_accounts(accounts: frozenset[str]) -> dict[str, object]:
    """The fields of an ``iw-accounts``: the first :data:`MAX_ACCOUNTS`
    accounts in order (a peer takes a frame with more for a broken one and
    drops the link; the caller logs what is left out)."""
    return {"accounts": sorted(accounts)[:MAX_ACCOUNTS]}


def decode_accounts(fields: dict[str, object]) -> frozenset[str]:
    """The accounts of an ``iw-accounts`` frame, checked (WireError otherwise)."""
    if set(fields) != {"accounts"}:
        raise WireError("iw-accounts fields wrong")
    accounts = fields["accounts"]
    if not isinstance(accounts, list) or len(accounts) > MAX_ACCOUNTS:
        raise WireError(f"iw-accounts is not a list of at most {MAX_ACCOUNTS} accounts")
    for account in accounts:
        if not isinstance(account, str) or _ACCOUNT.match(account) is None:
            raise WireError("iw-accounts holds an account that is not valid")
    return frozenset(accounts)


@attrs.frozen
class Conflict:
    """An account refused to a peer: ``local`` (hosted here) or ``contested``
    (claimed by another operator's peer ``other`` too)."""

    peer: str
    account: str
    why: str
    other: str | None = None


@attrs.define
class AccountRoutes:
    """The accounts hosted here and those each peer advertised.

    ``operator(peer)`` names the peer's operator (peers with one shared
    secret are one operator)."""

    local: frozenset[str] = frozenset()
    claims: dict[str, frozenset[str]] = attrs.field(factory=dict)
    operators: dict[str, str] = attrs.field(factory=dict)
    _reported: set[Conflict] = attrs.field(factory=set)

    def set_local(self, accounts: frozenset[str]) -> list[Conflict]:
        self.local = accounts
        return self._new_conflicts()

    def claim(self, peer: str, operator: str, accounts: frozenset[str]) -> list[Conflict]:
        """``peer`` (of ``operator``) hosts ``accounts`` now; the conflicts
        not reported before."""
        self.claims[peer] = accounts
        self.operators[peer] = operator
        return self._new_conflicts()

    def forget(self, peer: str) -> None:
        """``peer`` is no longer configured."""
        self.claims.pop(peer, None)
        self.operators.pop(peer, None)
        self._reported = {c for c in self._reported if peer not in (c.peer, c.other)}

    def peers_for(self, account: str) -> list[str]:
        """The peers that may take ``account``'s messages (one operator's),
        sorted; empty when it is hosted here, claimed by nobody, or
        contested."""
        if account in self.local:
            return []
        claimants = sorted(p for p, accounts in self.claims.items() if account in accounts)
        if len({self.operators[p] for p in claimants}) != 1:
            return []
        return claimants

    def remote(self, account: str) -> bool:
        return bool(self.peers_for(account))

    def conflicts(self) -> set[Conflict]:
        found: set[Conflict] = set()
        for peer, accounts in self.claims.items():
            for account in accounts:
                if account in self.local:
                    found.add(Conflict(peer, account, "local"))
                    continue
                for other, theirs in self.claims.items():
                    if account in theirs and self.operators[other] != self.operators[peer]:
                        found.add(Conflict(peer, account, "contested", other))
        return found

    def _new_conflicts(self) -> list[Conflict]:
        now = self.conflicts()
        new = now - self._reported
        # a conflict that ended may be reported again if it comes back
        self._reported = now
        return sorted(new, key=lambda c: (c.account, c.peer, c.other or ""))


__all__ = [
    "ACCOUNTS",
    "AccountRoutes",
    "Conflict",
    "decode_accounts",
    "encode_accounts",
]
