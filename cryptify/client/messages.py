"""Messages on the client side (sans-IO): post, receive once, confirm.

``post {to, content}`` is answered ``posted {message}`` once the CRS has
stored it; the recipient's ``delivered`` comes back later as
``delivered {message}``.  Every incoming ``message`` is confirmed with
``delivered`` (also a repeat, so that the CRS stops sending it), but is
reported to the application only once: ids already seen are remembered
(the last :data:`SEEN_LIMIT`).  After each attach the client sends
``fetch`` to get whatever was stored while it was away.

The reference client posts the text's UTF-8 octets as ``content``; the
CRS does not read it.
"""

from __future__ import annotations

from collections import OrderedDict

import attrs

from cryptify.client.session import Answered, ClientEvent, ClientSession, Incoming

#: Message ids remembered for de-duplication.
SEEN_LIMIT = 100_000


@attrs.frozen
class Posted:
    """The CRS stored our message (``message`` is its id), or refused it (``error``)."""

    request_id: int
    message: str | None
    error: str | None = None


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
    pending: set[int] = attrs.field(factory=set)
    seen: OrderedDict[str, None] = attrs.field(factory=OrderedDict)

    def post(self, to: str, content: bytes) -> int:
        """Post ``content`` to ``to``; returns the request id."""
        if self.session is None or self.session.state != "attached":
            raise RuntimeError("not attached")
        request_id = self.session.request("post", to=to, content=content)
        self.pending.add(request_id)
        return request_id

    def fetch(self) -> int | None:
        """Ask for every stored message (after an attach)."""
        if self.session is None or self.session.state != "attached":
            return None
        return self.session.request("fetch")

    def handle(self, event: ClientEvent) -> list[MessageEvent]:
        if isinstance(event, Answered) and event.id in self.pending:
            self.pending.discard(event.id)
            msg = event.message
            if msg.type == "posted":
                return [Posted(event.id, msg["message"])]
            return [Posted(event.id, None, msg.get("code", msg.type))]
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
