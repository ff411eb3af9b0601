"""The client side of UMSG (sans-IO): attach, then requests and incoming messages.

:class:`ClientSession` is fed the messages the CRS sent (already decoded)
and returns :data:`ClientEvent` values for the application; what it sends
goes through the ``send`` callable it was given.  Every CRS -> client
message type of docs/umsg.md has a handler in :data:`HANDLERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs

from cryptify.crypto.errors import CryptoError
from cryptify.protocols.umsg import REVISIONS, Message, attach_signed_octets, message


class Signer(Protocol):
    def sign(self, message: bytes) -> bytes: ...


@attrs.frozen
class Attached:
    """The CRS accepted the attach."""

    uri: str
    crs: str
    slot: int
    keepalive: str
    interval_ms: int
    server_time_ms: int
    #: A ticket for the next attach (skips the signature), if the CRS gave one.
    ticket: bytes | None = attrs.field(default=None, repr=False)
    #: Whether this attach used a ticket.
    resumed: bool = False
    #: Where to attach first if this connection is lost (the pool instance
    #: that takes the URI's slot if this one dies): (host, port), or None.
    standby: tuple[str, int] | None = None


@attrs.frozen
class Moved:
    """Another CRS instance owns this URI's slot: attach there."""

    crs: str
    host: str
    port: int


@attrs.frozen
class Refused:
    """The attach was refused (``local`` when this client gave up itself)."""

    code: str
    reason: str
    local: bool = False
    #: The CRS's hint (ms) with ``unavailable``: try again after this long.
    retry_after: int | None = None


@attrs.frozen
class Disconnected:
    """The CRS closed an attached connection and said why."""

    code: str
    reason: str


@attrs.frozen
class Answered:
    """A request was answered: ``ok``, ``error``, ``session`` or ``posted``."""

    id: int | None
    message: Message

    @property
    def ok(self) -> bool:
        return self.message.type != "error"


@attrs.frozen
class Incoming:
    """Something for the application: an invite, call progress, a message."""

    message: Message


ClientEvent = Attached | Moved | Refused | Disconnected | Answered | Incoming

NEW = "new"
ATTACHING = "attaching"
PROVING = "proving"
ATTACHED = "attached"
CLOSED = "closed"


@attrs.define(eq=False)
class ClientSession:
    """One connection's UMSG state on the client side."""

    account: str
    uri: str
    signer_for: Callable[[str], Signer]
    send: Callable[[Message], None]
    app: str = "cryptify-client"
    device: dict[str, str] | None = None
    revisions: tuple[int, ...] = REVISIONS
    state: str = NEW
    next_id: int = 1
    attached: Attached | None = None
    #: Ticket to present in the attach (from an earlier ``attached``).
    ticket: bytes | None = attrs.field(default=None, repr=False)

    def _id(self) -> int:
        value = self.next_id
        self.next_id = value + 1 if value < 2**32 - 1 else 1
        return value

    def start(self) -> None:
        """The WebSocket is open: send ``attach``."""
        self.state = ATTACHING
        self.send(
            message(
                "attach",
                id=self._id(),
                account=self.account,
                uri=self.uri,
                versions=list(self.revisions),
                app=self.app,
                device=self.device,
                ticket=self.ticket,
            )
        )

    def request(self, type_: str, **fields: object) -> int:
        """Send a request (``push-token``, ``client-info``, ...); return its id."""
        msg_id = self._id()
        self.send(message(type_, id=msg_id, **fields))
        return msg_id

    def notify(self, type_: str, **fields: object) -> None:
        """Send a message that has no id (``ringing``, ``delivered``, ...)."""
        self.send(message(type_, **fields))

    def detach(self) -> None:
        """Leave: the CRS answers ``ok`` and closes."""
        if self.state == ATTACHED:
            self.request("detach")
        self.state = CLOSED

    def received(self, msg: Message) -> list[ClientEvent]:
        """Handle one message from the CRS."""
        handler = HANDLERS[msg.type]
        return handler(self, msg)

    # ------------------------------------------------------------ handlers

    def _challenge(self, msg: Message) -> list[ClientEvent]:
        if self.state != ATTACHING:
            return self._give_up("unexpected", "challenge outside an attach")
        period = msg["period"]
        try:
            signer = self.signer_for(period)
            signed = attach_signed_octets(msg["nonce"], self.account, self.uri, period)
            signature = signer.sign(signed)
        except (CryptoError, KeyError) as exc:
            return self._give_up("no-key-period", f"no key for {period}: {exc}")
        self.state = PROVING
        self.send(message("prove", id=msg["id"], signature=signature))
        return []

    def _give_up(self, code: str, reason: str) -> list[ClientEvent]:
        self.state = CLOSED
        return [Refused(code, reason, local=True)]

    def _attached(self, msg: Message) -> list[ClientEvent]:
        resumed = bool(msg.get("resumed", False))
        if self.state != PROVING and not (resumed and self.state == ATTACHING):
            return self._give_up("unexpected", "attached without a prove")
        self.state = ATTACHED
        self.attached = Attached(
            msg["uri"],
            msg["crs"],
            msg["slot"],
            msg["keepalive"],
            msg["interval"],
            msg["time"],
            msg.get("ticket"),
            resumed,
            _standby(msg),
        )
        return [self.attached]

    def _moved(self, msg: Message) -> list[ClientEvent]:
        self.state = CLOSED
        return [Moved(msg["crs"], msg["host"], msg["port"])]

    def _refused(self, msg: Message) -> list[ClientEvent]:
        self.state = CLOSED
        return [Refused(msg["code"], msg.get("reason", ""), retry_after=msg.get("retry-after"))]

    def _disconnect(self, msg: Message) -> list[ClientEvent]:
        self.state = CLOSED
        return [Disconnected(msg["code"], msg.get("reason", ""))]

    def _answer(self, msg: Message) -> list[ClientEvent]:
        return [Answered(msg.id, msg)]

    def _incoming(self, msg: Message) -> list[ClientEvent]:
        return [Incoming(msg)]


def _standby(msg: Message) -> tuple[str, int] | None:
    """``attached``'s standby address, when it names both host and port."""
    host, port = msg.get("standby-host"), msg.get("standby-port")
    if host is None or port is None:
        return None
    return str(host), int(port)


#: The handler of every CRS -> client message type.
HANDLERS: dict[str, Callable[[ClientSession, Message], list[ClientEvent]]] = {
    "challenge": ClientSession._challenge,
    "attached": ClientSession._attached,
    "moved": ClientSession._moved,
    "refused": ClientSession._refused,
    "disconnect": ClientSession._disconnect,
    "ok": ClientSession._answer,
    "error": ClientSession._answer,
    "session": ClientSession._answer,
    "posted": ClientSession._answer,
    "invite": ClientSession._incoming,
    "ringing": ClientSession._incoming,
    "talk": ClientSession._incoming,
    "hold": ClientSession._incoming,
    "resume": ClientSession._incoming,
    "hangup": ClientSession._incoming,
    "message": ClientSession._incoming,
    "delivered": ClientSession._incoming,
}
