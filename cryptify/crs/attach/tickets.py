"""Attach tickets: a client that attached once may attach again without the ECCSI proof.

The key is derived from the pool key, so every instance of a pool (and a
restarted one) accepts the tickets of the others; see :class:`TicketKey`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

import attrs

#: How long an attach ticket stays valid (it also dies with its key period).
TICKET_LIFETIME = 24 * 3600


@attrs.frozen
class TicketKey:
    """Attach tickets: a re-attach with a valid ticket skips the ECCSI proof.

    A ticket is ``01 || expiry (4 octets, Unix seconds) || tag (16 octets)``,
    the tag being HMAC-SHA-256 under this key of ``"umsg.1 ticket" 00
    account 00 uri 00 period 00 expiry``.  It binds the account, the URI and
    the key period, so it dies at the month change, and the blacklist is
    checked again on every use.  The key is derived from the pool key when
    there is one, so every instance of the pool, and a restarted one,
    accepts the tickets of the others.
    """

    key: bytes = attrs.field(repr=False)
    #: HMAC-SHA-256's inner and outer hashes with the key's pads already in
    #: (RFC 2104): a tag is two copies and two updates, not a new HMAC.
    _pads: tuple[Any, Any] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        key = self.key if len(self.key) <= 64 else hashlib.sha256(self.key).digest()
        key = key.ljust(64, b"\0")
        inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        object.__setattr__(self, "_pads", (inner, outer))

    @classmethod
    def derive(cls, pool_key: str | None) -> TicketKey:
        if not pool_key:
            return cls(os.urandom(32))
        return cls(hmac.new(pool_key.encode(), b"umsg.1 attach ticket key", "sha256").digest())

    def _tag(self, account: str, uri: str, period: str, expiry: int) -> bytes:
        data = b"\0".join(
            (b"umsg.1 ticket", account.encode(), uri.encode(), period.encode(), b"%d" % expiry)
        )
        inner, outer = (pad.copy() for pad in self._pads)
        inner.update(data)
        outer.update(inner.digest())
        tag: bytes = outer.digest()[:16]
        return tag

    def issue(self, account: str, uri: str, period: str, now: float) -> bytes:
        expiry = int(now) + TICKET_LIFETIME
        return b"\x01" + expiry.to_bytes(4, "big") + self._tag(account, uri, period, expiry)

    def valid(self, ticket: bytes, account: str, uri: str, period: str, now: float) -> bool:
        if len(ticket) != 21 or ticket[0] != 1:
            return False
        expiry = int.from_bytes(ticket[1:5], "big")
        if expiry < now:
            return False
        return hmac.compare_digest(ticket[5:], self._tag(account, uri, period, expiry))
