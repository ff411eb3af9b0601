"""Wiring client objects into the CRS (UMSG ``push-token`` and ``client-info``).

:func:`install` lets attached clients store their push token and client
information: each is answered ``ok`` once stored, ``error unavailable``
(with ``retry-after``) while ``redis_low`` is out of reach, ``error
internal`` otherwise.  :func:`observe_attaches` remembers, for ``purge
observed``, which URIs attached under each account.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.crs.attach.core import UNAVAILABLE_RETRY_MS, AttachCore, AttachSession
from cryptify.crs.attach.registry import Attachment, AttachRegistry
from cryptify.crs.objects.store import ClientObjects
from cryptify.crs.redis.batch import transient
from cryptify.protocols.umsg import Message, message

log = Logger(namespace="cryptify.crs.attach")


class Objects(Protocol):
    """Where client objects are kept (:class:`~cryptify.crs.objects.store.ClientObjects`)."""

    def set_push_token(self, account: str, uri: str, token: str, kind: str) -> Awaitable[None]: ...

    def set_client_info(self, account: str, uri: str, info: dict[str, str]) -> Awaitable[None]: ...


def _store(session: AttachSession, msg_id: int | None, work: Callable[[], Awaitable[None]]) -> None:
    async def run() -> None:
        await work()

    def done(_: object) -> None:
        session.send(message("ok", id=msg_id))

    def failed(failure: Failure) -> None:
        if transient(failure):
            log.warn("client object not stored: {why}", why=failure.getErrorMessage())
            answer = message(
                "error",
                id=msg_id,
                code="unavailable",
                reason="store out of reach",
                retry_after=UNAVAILABLE_RETRY_MS,
            )
        else:
            log.failure("storing a client object failed", failure)
            answer = message("error", id=msg_id, code="internal", reason="could not store")
        session.send(answer)

    defer.ensureDeferred(run()).addCallbacks(done, failed)


def install(core: AttachCore, objects: Objects) -> None:
    """Let attached clients store their push token and client information."""

    def push_token(session: AttachSession, msg: Message) -> None:
        account, uri = session.account or "", session.uri or ""
        token, kind = msg.text("token"), msg.text("kind")
        _store(session, msg.id, lambda: objects.set_push_token(account, uri, token, kind))

    def client_info(session: AttachSession, msg: Message) -> None:
        account, uri = session.account or "", session.uri or ""
        info = {k: str(v) for k, v in msg.fields.items() if k != "id"}
        _store(session, msg.id, lambda: objects.set_client_info(account, uri, info))

    core.handlers.update({"push-token": push_token, "client-info": client_info})


def observe_attaches(registry: AttachRegistry, objects: ClientObjects) -> None:
    """Remember every URI that attaches under its account (``purge observed``)."""

    def observe(attachment: Attachment) -> None:
        d = defer.ensureDeferred(objects.observe(attachment.account, attachment.uri))
        d.addErrback(not_observed)

    def not_observed(failure: Failure) -> None:
        if transient(failure):
            log.warn("observed client not recorded: {why}", why=failure.getErrorMessage())
        else:
            log.failure("cannot record observed client", failure)

    registry.on_attach.append(observe)
