"""The attach flow of one client connection (sans-IO).

:class:`AttachCore` holds what every connection shares (the accounts, the
slot map, the registry of attached clients, the clock, and the handlers
that features -- calls, messages, client objects -- register for the
attached state); :class:`AttachSession` is one connection's state machine, fed
decoded UMSG messages and reporting its effects through :class:`Peer`
(send a message; end the connection with a UMSG code).

States (docs/umsg.md draws them)::

    new --attach--> challenged --prove ok--> attached --detach/lost--> closed
     |                  |                       |
     +-- refused -------+---- refused ----------+-- disconnect --> closed
     +-- moved --> closed

Checks, in order: a UMSG revision in common; the account exists; the
stores are ready (``unavailable`` while ``redis_low`` or ``redis_high``
is out of reach, e.g. just after a restart); the URI's slot is this
instance's (else ``moved``, or ``unavailable`` while the slot has no owner
because a pool is handing it over); the account has keys for the current month
(``no-key-period``); then, after the challenge, the ECCSI signature over
:func:`~cryptify.protocols.umsg.attach_signed_octets` with the month's
KPAK (``bad-signature``) and the blacklist (``blacklisted``, checked
only once the client proved who it is).
"""

from __future__ import annotations

import enum
import os
import secrets
from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.logger import Logger

from cryptify.crs.attach.parking import ParkingLot
from cryptify.crs.attach.registry import Attachment, AttachRegistry
from cryptify.crs.attach.tickets import TicketKey
from cryptify.crs.slots import slot_of
from cryptify.crypto import eccsi
from cryptify.crypto.errors import CryptoError
from cryptify.crypto.identity import period_of, tel_identifier
from cryptify.protocols.umsg import (
    ERROR_CODES,
    REVISIONS,
    Message,
    UmsgError,
    attach_signed_octets,
    message,
)

log = Logger(namespace="cryptify.crs.attach")


class State(enum.Enum):
    """Where one connection is in the attach flow."""

    NEW = "new"
    CHALLENGED = "challenged"
    #: Waiting for its slot to get an owner (:mod:`cryptify.crs.attach.parking`).
    PARKED = "parked"
    ATTACHED = "attached"
    CLOSED = "closed"


NEW, CHALLENGED, ATTACHED, CLOSED = State.NEW, State.CHALLENGED, State.ATTACHED, State.CLOSED
PARKED = State.PARKED


class Peer(Protocol):
    """What a session needs of its connection."""

    def send(self, msg: Message) -> None:
        """Send one UMSG message."""

    def end(self, code: str) -> None:
        """Close the connection after what was sent; ``code`` says why (UMSG code)."""

    def promoted(self) -> None:
        """The session attached (now, or later than the message that asked:
        a parked attach): the connection is no longer unattached."""


class AccountLike(Protocol):
    @property
    def id(self) -> str: ...

    def kpak_for(self, period: str) -> bytes | None: ...

    def blacklisted(self, uri: str, period: str) -> bool: ...


class Accounts(Protocol):
    def get(self, account_id: str) -> AccountLike | None: ...


Verify = Callable[[bytes, bytes, bytes, bytes], None]

#: ``retry-after`` of an attach refused ``unavailable``, ms.
UNAVAILABLE_RETRY_MS = 2000
#: ``retry-after`` of an attach refused ``unavailable`` because its slot is
#: being handed over between pool instances (a hand-back step lasts ~1 s), ms.
HANDOVER_RETRY_MS = 1000


class SlotOwners(Protocol):
    """Who serves which slot: the fixed split (:class:`cryptify.crs.slots.SlotMap`)
    or a pool member's current map (:class:`cryptify.crs.pool.wiring.PoolLink`)."""

    def owner(self, slot: int) -> str | None:
        """The instance owning ``slot``, or None while it has no owner."""

    def mine(self, slot: int) -> bool:
        """Whether this instance serves ``slot`` now."""

    def standby(self, slot: int) -> str | None:
        """The instance that would take ``slot`` if this one died (None:
        none, or no pool)."""

    def address(self, host: str) -> str:
        """Where clients reach instance ``host``."""


@attrs.define
class AttachCore:
    """What all connections of one CRS process share."""

    crs_name: str
    accounts: Accounts
    registry: AttachRegistry
    clock: Callable[[], float]
    slots: SlotOwners | None = None
    verify: Verify = eccsi.verify
    nonce: Callable[[], bytes] = lambda: os.urandom(32)
    revisions: tuple[int, ...] = REVISIONS
    #: Port clients are told to move to (the client port of the owner).
    move_port: int = 5223
    #: Attach tickets (None: no tickets issued or accepted).
    tickets: TicketKey | None = None
    #: Handlers that features (calls, messages, client objects) register
    #: for attached-state types; a type nobody handles ends the connection
    #: ``unexpected``.
    handlers: dict[str, Callable[[AttachSession, Message], None]] = attrs.field(factory=dict)
    #: Called with (session, reason) when an attached connection ends.
    on_detach: list[Callable[[AttachSession, str], None]] = attrs.field(factory=list)
    #: Whether the stores attached clients need are reachable; while not,
    #: attaches are refused ``unavailable`` (the client retries later).
    ready: Callable[[], bool] = lambda: True
    #: Attaches waiting for their slot to get an owner (None: refused at once).
    parking: ParkingLot | None = None

    def session(
        self, peer: Peer, host: str, port: int, keepalive: tuple[str, int]
    ) -> AttachSession:
        """A session for a new connection from ``host:port``."""
        return AttachSession(self, peer, host, port, keepalive)


@attrs.define(eq=False)
class AttachSession:
    """One connection's attach state machine; also the registry's Connection."""

    core: AttachCore
    peer: Peer
    host: str
    port: int
    keepalive: tuple[str, int]
    state: State = NEW
    account: str | None = None
    uri: str | None = None
    period: str = ""
    version: int = 0
    app: str = ""
    nonce: bytes = b""
    slot: int = 0
    #: Names this connection, unique across connections and CRS restarts
    #: (scopes the request ids of posts that carry no message key).
    conn_id: str = attrs.field(factory=lambda: secrets.token_hex(12))
    #: The attach that waits while parked.
    _parked_msg: Message | None = None

    @property
    def attached(self) -> bool:
        return self.state is ATTACHED

    # ------------------------------------------------------------ inputs

    def received(self, msg: Message) -> None:
        """Handle one decoded message from the client."""
        if self.state is CLOSED:
            return
        if self.state is NEW:
            self._new(msg)
        elif self.state is CHALLENGED:
            self._challenged(msg)
        elif self.state is PARKED:
            self.refuse("unexpected", f"{msg.type} while the attach waits", msg.id)
        else:
            self._attached(msg)

    def protocol_error(self, error: UmsgError) -> None:
        """A message could not be decoded (or was too large): fatal.

        Before ``attached`` the refusal names the request's ``id`` when the
        message had a readable one.
        """
        self._fail(error.code, error.detail, error.id)

    def timed_out(self) -> None:
        """The attach took longer than allowed."""
        if self.state in (NEW, CHALLENGED, PARKED):
            self.refuse("attach-timeout", "no attach in time")

    def lost(self, reason: str) -> None:
        """The connection ended (either side)."""
        if self.state is ATTACHED and self.uri is not None:
            self.core.registry.detach(self.uri, self, reason)
            self._detached(reason)
        elif self.state is PARKED and self.core.parking is not None:
            self.core.parking.drop(self)
        self.state = CLOSED

    def send(self, msg: Message) -> None:
        """Send a message to this client if it is attached (for features)."""
        if self.state is ATTACHED:
            self.peer.send(msg)

    def _detached(self, reason: str) -> None:
        for listener in self.core.on_detach:
            try:
                listener(self, reason)
            except Exception:
                log.failure("detach listener failed")

    def disconnect(self, reason: str) -> None:
        """Close an attached client, telling it why (the registry's Connection)."""
        if self.state is CLOSED:
            return
        code = reason if reason in ERROR_CODES else "disconnected"
        if self.state is ATTACHED:
            self._detached(reason)
        self.state = CLOSED
        self.peer.send(message("disconnect", code=code, reason=reason))
        self.peer.end(code)

    # ------------------------------------------------------------ outputs

    def refuse(
        self, code: str, reason: str, msg_id: int | None = None, retry_after: int | None = None
    ) -> None:
        """Refuse the attach with ``code`` and close."""
        if self.state is CLOSED:
            return
        if self.state is PARKED and self.core.parking is not None:
            self.core.parking.drop(self)
        self.state = CLOSED
        self.core.registry.refused(self.uri, self.account, self.host, self.port, code)
        self.peer.send(
            message("refused", id=msg_id, code=code, reason=reason, retry_after=retry_after)
        )
        self.peer.end(code)

    def _fail(self, code: str, reason: str, msg_id: int | None = None) -> None:
        if self.state is ATTACHED and self.uri is not None:
            self.core.registry.detach(self.uri, self, code)
            self.disconnect(code)
        else:
            self.refuse(code, reason, msg_id)

    # ------------------------------------------------------------ states

    def _new(self, msg: Message) -> None:
        if msg.type != "attach":
            self.refuse("unexpected", f"{msg.type} before attach", msg.id)
            return
        core = self.core
        account_id, uri = msg.text("account"), msg.text("uri")
        self.account, self.uri, self.app = account_id, uri, msg.text("app")
        common = set(msg.numbers("versions")) & set(core.revisions)
        if not common:
            self.refuse("version", f"this CRS speaks revisions {list(core.revisions)}", msg.id)
            return
        self.version = max(common)
        self._checks(msg, "new")

    @property
    def parked(self) -> bool:
        return self.state is PARKED

    def resume(self, expired: bool) -> bool:
        """Parked: go on now (``expired``: refuse if the slot still has no
        owner).  True if it waits on (:class:`ParkingLot`)."""
        if self.state is not PARKED:
            return False
        self.state = NEW
        msg, self._parked_msg = self._parked_msg, None
        assert msg is not None
        return self._checks(msg, "expired" if expired else "wait")

    def _checks(self, msg: Message, mode: str) -> bool:
        """The account, the stores and the slot; then the challenge (or the
        ticket).  ``mode``: "new" (may park), "wait" (parked: True to wait
        on), "expired" (parked too long: refuse).  True when parked."""
        core = self.core
        account_id, uri = self.account or "", self.uri or ""
        account = core.accounts.get(account_id)
        if account is None:
            self.refuse("unknown-account", f"account {account_id} is not served", msg.id)
            return False
        if not core.ready():
            self.refuse(
                "unavailable", "the CRS is not ready yet", msg.id, retry_after=UNAVAILABLE_RETRY_MS
            )
            return False
        self.slot = slot_of(uri)
        if core.slots is not None and not core.slots.mine(self.slot):
            owner = core.slots.owner(self.slot)
            if owner is None:
                if mode == "wait" or (
                    mode == "new" and core.parking is not None and core.parking.park(self)
                ):
                    self.state = PARKED
                    self._parked_msg = msg
                    return True
                self.refuse(
                    "unavailable",
                    "the URI's slot has no owner in the pool right now (starting or handing over)",
                    msg.id,
                    retry_after=HANDOVER_RETRY_MS,
                )
                return False
            self.state = CLOSED
            core.registry.moved(uri, account_id, self.host, self.port, owner)
            self.peer.send(
                message(
                    "moved",
                    id=msg.id,
                    crs=owner,
                    host=core.slots.address(owner),
                    port=core.move_port,
                )
            )
            self.peer.end("moved")
            return False
        self._challenge(account, msg)
        return False

    def _challenge(self, account: AccountLike, msg: Message) -> None:
        core = self.core
        assert self.account is not None and self.uri is not None
        self.period = period_of(core.clock())
        if account.kpak_for(self.period) is None:
            self.refuse("no-key-period", f"no keys for {self.period}", msg.id)
            return
        ticket = msg.optional_octets("ticket")
        if (
            ticket is not None
            and core.tickets is not None
            and core.tickets.valid(ticket, self.account, self.uri, self.period, core.clock())
        ):
            self._admit(account, msg.id, resumed=True)
            return
        self.nonce = core.nonce()
        self.state = CHALLENGED
        self.peer.send(
            message(
                "challenge", id=msg.id, nonce=self.nonce, period=self.period, version=self.version
            )
        )

    def _challenged(self, msg: Message) -> None:
        if msg.type != "prove":
            self.refuse("unexpected", f"{msg.type} while waiting for prove", msg.id)
            return
        core = self.core
        assert self.account is not None and self.uri is not None
        account = core.accounts.get(self.account)
        if account is None:  # deleted while the client was signing
            self.refuse("unknown-account", f"account {self.account} is not served", msg.id)
            return
        kpak = account.kpak_for(self.period)
        if kpak is None:
            self.refuse("no-key-period", f"no keys for {self.period}", msg.id)
            return
        signed = attach_signed_octets(self.nonce, self.account, self.uri, self.period)
        try:
            core.verify(
                kpak, tel_identifier(self.uri, self.period), signed, msg.octets("signature")
            )
        except CryptoError:
            self.refuse("bad-signature", "the signature does not verify", msg.id)
            return
        self._admit(account, msg.id, resumed=False)

    def _admit(self, account: AccountLike, msg_id: int | None, resumed: bool) -> None:
        """The client proved who it is (signature or ticket): blacklist, then attach."""
        core = self.core
        assert self.account is not None and self.uri is not None
        if account.blacklisted(self.uri, self.period):
            self.refuse("blacklisted", f"{self.uri} is blacklisted", msg_id)
            return
        now = core.clock()
        self.state = ATTACHED
        self.nonce = b""
        core.registry.attach(
            Attachment(
                self.uri, self.account, now, self.app, self.host, self.port, self, self.period
            )
        )
        if self.state is not ATTACHED:
            return  # a registry listener closed us already
        method, interval = self.keepalive
        ticket = None
        if core.tickets is not None:
            ticket = core.tickets.issue(self.account, self.uri, self.period, now)
        slots = core.slots
        standby = None if slots is None else slots.standby(self.slot)
        self.peer.send(
            message(
                "attached",
                id=msg_id,
                uri=self.uri,
                crs=core.crs_name,
                slot=self.slot,
                time=int(now * 1000),
                keepalive=method,
                interval=interval,
                ticket=ticket,
                resumed=resumed or None,
                standby=standby,
                standby_host=None if standby is None or slots is None else slots.address(standby),
                standby_port=None if standby is None else core.move_port,
            )
        )
        self.peer.promoted()

    def _attached(self, msg: Message) -> None:
        assert self.account is not None and self.uri is not None
        if msg.type == "detach":
            self.core.registry.detach(self.uri, self, "client detached")
            self._detached("client detached")
            self.state = CLOSED
            if msg.id is not None:
                self.peer.send(message("ok", id=msg.id))
            self.peer.end("detach")
        elif msg.type in self.core.handlers:
            self.core.handlers[msg.type](self, msg)
        else:
            self._fail("unexpected", f"{msg.type} after attach")
