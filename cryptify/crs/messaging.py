"""Wiring store-and-forward messages into the CRS (UMSG ``post``/``fetch``/``delivered``).

- ``post {id, to, content | ack, system?}``: the recipient must be known to this CRS
  (it has attached at some time, under any account), else ``error
  not-found``.  The message is stored durably (:mod:`cryptify.crs.messages`)
  and only then answered ``posted {id, message}``; an attached recipient
  gets it at once as ``message``.  A repeated post answers the first ID.
  ``system: true`` with ``content`` marks a system message (group invites
  and updates): stored with kind ``system``, delivered with ``system:
  true``, traced as ``posted system`` and counted apart from content.
- ``delivered {message}`` from the recipient removes it; the sender of a
  content message is told ``delivered {message}`` when attached.
- ``fetch {id}`` sends every waiting message, then ``ok {id}``; waiting
  messages are also sent right after each attach.

``trace message`` lines (Header, Time, From, To, State, Account,
Message-ID) use the manual's states: not-found, posted content, posted
ack, delivered.  Per-user counters for ``show message`` (URI POST DELIV
READ ACCOUNT) live in Redis next to the messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.crs.attach import AttachCore, AttachSession
from cryptify.crs.attached import Attachment, AttachRegistry
from cryptify.crs.messages import MessageRefused, MessageStore, Posted, Stored
from cryptify.crs.sessions import base_uri
from cryptify.crs.stats import Statistics
from cryptify.crs.trace import TraceHub
from cryptify.protocols.umsg import message

log = Logger(namespace="cryptify.crs.message")

#: Messages sent per fetch (the rest follow on the next fetch or delivery).
FETCH_BATCH = 100
KNOWN_URIS = "known-uris"


def _stat_key(uri: str) -> str:
    return f"msgstat:{uri}"


class Messaging:
    """Post, fetch and delivered for attached clients."""

    def __init__(
        self,
        store: MessageStore,
        registry: AttachRegistry,
        trace: TraceHub,
        redis: Callable[[], Any],
        clock: Callable[[], float] = time.time,
        stats: Statistics | None = None,
    ) -> None:
        self.store = store
        self.stats = stats
        self.registry = registry
        self.trace = trace
        self.redis = redis
        self.clock = clock
        self.counters = {"posted": 0, "delivered": 0, "refused": 0}

    def _client(self) -> Any:
        return self.redis().client

    def _refuse(self, failure: Failure, session: AttachSession, msg_id: int | None) -> None:
        if failure.check(MessageRefused):
            refused: Any = failure.value
            self.counters["refused"] += 1
            session.send(message("error", id=msg_id, code=refused.code, reason=str(refused)))
            return
        log.failure("message handling failed", failure)
        session.send(message("error", id=msg_id, code="internal", reason="message not stored"))

    def _run(self, work: Any, session: AttachSession, msg_id: int | None) -> None:
        defer.ensureDeferred(work).addErrback(self._refuse, session, msg_id)

    # -- requests ----------------------------------------------------------------
    # post and delivered run once per message: plain callbacks, no coroutine.

    def post(self, session: AttachSession, msg: Any) -> None:
        sender, account = session.uri or "", session.account or ""
        to = msg["to"]
        recipient = base_uri(to)
        content, ack = msg.get("content"), msg.get("ack")
        try:
            if (content is None) == (ack is None):
                raise MessageRefused("malformed", "a post carries content or ack, not both")
            system = bool(msg.get("system"))
            if system and content is None:
                raise MessageRefused("malformed", "a system message carries content")
            kind = ("system" if system else "content") if content is not None else "ack"
            data = content if content is not None else ack.encode("ascii")
            stored: Deferred[Posted] = defer.maybeDeferred(
                self.store.post,
                sender,
                msg.id,
                recipient,
                account,
                kind,
                data,
                known=KNOWN_URIS,
                counters=_stat_key(sender),
            )
        except Exception:
            self._refuse(Failure(), session, msg.id)
            return

        def posted(posted: Posted) -> Any:
            session.send(message("posted", id=msg.id, message=posted.id))
            if posted.duplicate or posted.stored is None:
                return None
            self.counters["posted"] += 1
            target = self.registry.get(recipient)
            if target is not None:
                self._deliver(target, posted.stored)
            if self.trace.active("message"):
                self.trace.emit(
                    "message",
                    sender,
                    to,
                    f"posted {kind}",
                    target.account if target else account,
                    posted.id,
                )
            if self.stats is not None and self.stats.may_count(account):
                return defer.ensureDeferred(self.stats.message_posted(account, sender, kind))
            return None

        def not_found(failure: Failure) -> Failure:
            if failure.check(MessageRefused) and failure.value.code == "not-found":  # type: ignore[union-attr]
                self.trace.emit("message", sender, to, "not-found", account, "-")
            return failure

        stored.addCallbacks(posted, not_found).addErrback(self._refuse, session, msg.id)

    def fetch(self, session: AttachSession, msg: Any) -> None:
        async def run() -> None:
            uri = session.uri or ""
            await self._client().hset(_stat_key(uri), "read", str(int(self.clock())))
            attachment = self.registry.get(uri)
            if attachment is not None:
                for stored in await self.store.waiting(uri, FETCH_BATCH):
                    self._deliver(attachment, stored)
            session.send(message("ok", id=msg.id))

        self._run(run(), session, msg.id)

    def delivered(self, session: AttachSession, msg: Any) -> None:
        uri, account, message_id = session.uri or "", session.account or "", msg["message"]

        def found(found: tuple[str, str] | None) -> Any:
            if found is None:
                return None
            sender, kind = found
            self.counters["delivered"] += 1
            self.trace.emit("message", sender, uri, "delivered", account, message_id)
            if kind != "ack":
                origin = self.registry.get(sender)
                if origin is not None:
                    origin.conn.send(message("delivered", message=message_id))
            if self.stats is not None and self.stats.may_count(account):
                return defer.ensureDeferred(self.stats.message_delivered(account, uri, kind))
            return None

        defer.maybeDeferred(self.store.delivered, uri, message_id, _stat_key("")).addCallback(
            found
        ).addErrback(self._refuse, session, None)

    # -- delivery ----------------------------------------------------------------

    def _deliver(self, attachment: Attachment, stored: Stored) -> None:
        fields: dict[str, Any] = {
            "message": stored.id,
            "from": stored.sender,
            "to": stored.recipient,
            "time": stored.time_ms,
        }
        if stored.kind == "ack":
            fields["ack"] = stored.data.decode("ascii", "replace")
        else:
            fields["content"] = stored.data
            if stored.kind == "system":
                fields["system"] = True
        attachment.conn.send(message("message", **fields))

    def attached(self, attachment: Attachment) -> None:
        """A client attached: remember its URI, send what waits for it."""

        async def run() -> None:
            # clients may attach before Redis is back after a restart
            await self.redis().when_connected()
            await self._client().sadd(KNOWN_URIS, attachment.uri)
            for stored in await self.store.waiting(attachment.uri, FETCH_BATCH):
                self._deliver(attachment, stored)

        defer.ensureDeferred(run()).addErrback(
            lambda f: log.failure("cannot deliver waiting messages", f)
        )

    async def rows(self) -> list[list[str]]:
        """``show message`` rows: URI POST DELIV READ ACCOUNT."""
        client = self._client()
        rows = []
        for uri in sorted(await client.smembers(KNOWN_URIS)):
            stats = await client.hgetall(_stat_key(uri))
            if not stats:
                continue
            read = stats.get("read", "")
            when = (
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(read)))
                if read.isdigit()
                else "-"
            )
            rows.append(
                [
                    uri,
                    stats.get("post", "0"),
                    stats.get("deliv", "0"),
                    when,
                    stats.get("account", "-"),
                ]
            )
        return rows


def install(core: AttachCore, messaging: Messaging) -> None:
    """Let attached clients post, fetch and confirm messages."""
    core.handlers.update(post=messaging.post, fetch=messaging.fetch, delivered=messaging.delivered)
    core.registry.on_attach.append(messaging.attached)
