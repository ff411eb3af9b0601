"""Messages on the client side (sans-IO): post, receive once, confirm.

``post {to, content, key}`` is answered ``posted {message}`` once the CRS
has stored it.  ``key`` is 16 random octets drawn for each new message
(:func:`new_message_key`) and sent again, unchanged, only when the same
message is retried (after ``error unavailable`` or a lost connection): the
CRS then answers the first message's id instead of storing it twice, and
no two messages of this client -- in this process or any other -- share
a key. the recipient's ``delivered`` comes back later as
``delivered {message}``.  Every incoming ``message`` is confirmed with
``delivered`` (also a repeat, so that the CRS stops sending it), but is
reported to the application only once: ids already seen are remembered
(the last :data:`SEEN_LIMIT`).  After each attach the client sends
``fetch`` to get whatever was stored while it was away.

The reference client posts the text's UTF-8 octets as ``content``; the
CRS does not read it.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import attrs

from cryptify.client.session import Answered, ClientEvent, ClientSession, Incoming

#: Message ids remembered for de-duplication.
SEEN_LIMIT = 100_000
#: Octets of a message key.
KEY_OCTETS = 16
#: Refusals after which the same post (same key) may be sent again.
RETRYABLE = frozenset(("unavailable", "internal"))


def new_message_key() -> bytes:
    """A fresh message key: 128 random bits, unique to one message."""
    return os.urandom(KEY_OCTETS)


@attrs.frozen
class Posted:
    """The CRS stored our message (``message`` is its id), or refused it (``error``).

    ``key`` is the message key the post carried (retry with it);
    ``retry_after`` the CRS's hint in ms with ``error unavailable``.
    """

    request_id: int
    message: str | None
    error: str | None = None
    key: bytes = b""
    retry_after: int | None = None

    @property
    def retryable(self) -> bool:
        """Whether sending the same post again (same key) may succeed."""
        return self.error in RETRYABLE


@attrs.frozen
class Received:
    """A message for us, reported once."""

    message: str
    sender: str
    to: str
    time_ms: int
    content: bytes | None
    ack: str | None


@attrs.frozen
class Receipt:
    """The recipient confirmed one of our messages."""

    message: str


MessageEvent = Posted | Received | Receipt


@attrs.define(eq=False)
class Messenger:
    """Posting, receiving and confirming messages over a session."""

    session: ClientSession | None = None
    #: Posts not answered yet: request id -> message key.
    pending: dict[int, bytes] = attrs.field(factory=dict)
    seen: OrderedDict[str, None] = attrs.field(factory=OrderedDict)

    @property
    def attached(self) -> bool:
        return self.session is not None and self.session.state == "attached"

    def post(self, to: str, content: bytes, key: bytes | None = None) -> int:
        """Post ``content`` to ``to``; returns the request id.

        ``key``: the message key of an earlier attempt of this same message
        (a retry); a new message gets a fresh one.
        """
        if self.session is None or not self.attached:
            raise RuntimeError("not attached")
        key = new_message_key() if key is None else key
        request_id = self.session.request("post", to=to, content=content, key=key)
        self.pending[request_id] = key
        return request_id

    def fetch(self) -> int | None:
        """Ask for every stored message (after an attach)."""
        if self.session is None or not self.attached:
            return None
        return self.session.request("fetch")

    def connection_lost(self) -> list[MessageEvent]:
        """The connection ended: every post still unanswered is reported
        ``unavailable`` with its key, so it is retried with the same key (the
        CRS may or may not have stored it), and no later answer on a new
        connection is taken for one of these."""
        lost: list[MessageEvent] = [
            Posted(request_id, None, "unavailable", key=key)
            for request_id, key in self.pending.items()
        ]
        self.pending.clear()
        return lost

    def handle(self, event: ClientEvent) -> list[MessageEvent]:
        if isinstance(event, Answered) and event.id in self.pending:
            key = self.pending.pop(event.id)
            msg = event.message
            if msg.type == "posted":
                return [Posted(event.id, msg["message"], key=key)]
            return [
                Posted(
                    event.id,
                    None,
                    msg.get("code", msg.type),
                    key=key,
                    retry_after=msg.get("retry-after"),
                )
            ]
        if not isinstance(event, Incoming):
            return []
        msg = event.message
        if msg.type == "delivered":
            return [Receipt(msg["message"])]
        if msg.type != "message":
            return []
        message_id = msg["message"]
        if self.session is not None and self.session.state == "attached":
            self.session.notify("delivered", message=message_id)
        if message_id in self.seen:
            return []
        self.seen[message_id] = None
        if len(self.seen) > SEEN_LIMIT:
            self.seen.popitem(last=False)
        return [
            Received(
                message_id,
                msg["from"],
                msg["to"],
                msg["time"],
                msg.get("content"),
                msg.get("ack"),
            )
        ]
