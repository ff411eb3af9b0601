"""Wiring calls into the CRS: UMSG session messages <-> the session table.

:func:`install` registers the session table as the handler of the
attached-state ``invite``, ``ringing``, ``talk`` and ``hangup`` messages and
as a listener of detaches; :class:`RegistryParties` finds callees among the
attached clients; :class:`LinkRelayAllocator` makes one relay session per
call through the ``crs_relay`` control link and removes it when the call
ends.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from cryptify.crs.attach import AttachCore, AttachSession
from cryptify.crs.attached import AttachRegistry
from cryptify.crs.sessions import RelayLegs, SessionTable
from cryptify.protocols.umsg import Message

log = Logger(namespace="cryptify.crs.session")


class RegistryParties:
    """Callees are the clients attached to this instance."""

    def __init__(self, registry: AttachRegistry) -> None:
        self.registry = registry

    def attached(self, uri: str) -> Any | None:
        return self.registry.get(uri)

    def known(self, uri: str) -> bool:
        return uri in self.registry.seen

    def send(self, uri: str, msg: Message) -> None:
        attachment = self.registry.get(uri)
        if attachment is not None:
            attachment.conn.send(msg)


class LinkRelayAllocator:
    """Relay sessions from ``crs_relay`` through its control link.

    ``public_host`` is the address clients send media to when the relay
    listens on every address (``0.0.0.0``); ``addr_map`` is applied to it.
    """

    def __init__(self, link: Any, public_host: str, addr_map: Any = None) -> None:
        self.link = link
        self.public_host = public_host
        self.addr_map = addr_map
        self.numbers: dict[str, int] = {}

    def allocate(self, session: str) -> defer.Deferred[RelayLegs]:
        async def run() -> RelayLegs:
            allocation = await self.link.add_session(label=session)
            self.numbers[session] = allocation.session
            host = allocation.host
            if host in ("0.0.0.0", "::", ""):
                host = self.public_host
            return RelayLegs(host, allocation.port, allocation.tag_a, allocation.tag_b)

        return defer.ensureDeferred(run())

    def release(self, session: str) -> None:
        number = self.numbers.pop(session, None)
        if number is None:
            return
        d = defer.ensureDeferred(self.link.remove_session(number))
        d.addErrback(
            lambda f: log.warn(
                "relay session {n} not removed: {why}", n=number, why=f.getErrorMessage()
            )
        )


def install(core: AttachCore, table: SessionTable) -> None:
    """Let attached clients call each other through ``table``."""

    def invite(session: AttachSession, msg: Message) -> None:
        caller = core.registry.get(session.uri or "")
        if caller is None or msg.id is None:
            return
        table.invite(caller, msg.id, msg["to"], msg["mikey"], msg.get("from"))

    def ringing(session: AttachSession, msg: Message) -> None:
        table.ringing(session.uri or "", msg["session"])

    def talk(session: AttachSession, msg: Message) -> None:
        table.talk(session.uri or "", msg["session"])

    def hangup(session: AttachSession, msg: Message) -> None:
        table.hangup(session.uri or "", msg["session"], msg["code"], msg.get("reason"))

    def detached(session: AttachSession, reason: str) -> None:
        if session.uri is not None:
            table.detached(session.uri)

    core.handlers.update(invite=invite, ringing=ringing, talk=talk, hangup=hangup)
    core.on_detach.append(detached)
