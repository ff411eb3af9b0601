"""Wiring calls across the pool: :class:`~cryptify.crs.pool.calls_core.PoolCalls`
on the pool link and the attached clients.

:func:`install` registers the call frame types on the
:class:`~cryptify.crs.pool.wiring.PoolLink` (a bad frame drops the
connection), ends the calls through a peer when its link goes down, and
puts the pool's calls in front of the session table for the attached
clients' ``ringing``, ``talk``, ``hangup``, ``hold`` and ``resume`` (those of a call offered
here for another instance go back to it) and their detaches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IReactorTime

from cryptify.crs.attach.core import AttachCore, AttachSession
from cryptify.crs.calls.core import SessionTable
from cryptify.crs.calls.session import Parties
from cryptify.crs.pool.calls_core import PoolCalls
from cryptify.crs.pool.calls_frames import FRAME_TYPES
from cryptify.crs.pool.wiring import PoolLink
from cryptify.crs.slots import slot_of
from cryptify.protocols.umsg import Message

Handler = Callable[[AttachSession, Message], None]


def pool_calls(
    link: PoolLink, table: SessionTable, parties: Parties, clock: IReactorTime
) -> PoolCalls:
    """The pool's calls of ``link``'s member, the remote of ``table``."""
    return PoolCalls(link.me, table, parties, link, lambda uri: link.owner(slot_of(uri)), clock)


def _receiver(calls: PoolCalls, frame_type: str) -> Callable[[str, dict[str, object]], None]:
    def receive(peer: str, fields: dict[str, object]) -> None:
        calls.receive(peer, frame_type, fields)

    return receive


class CallLink(Protocol):
    """What :func:`install` needs of a link: the pool's
    (:class:`~cryptify.crs.pool.wiring.PoolLink`) or the inter-working one
    (:class:`~cryptify.crs.interwork.link.IwLink`)."""

    def handle(
        self, frame_type: str, handler: Callable[[str, dict[str, object]], None]
    ) -> None: ...

    def on_link(self, listener: Callable[[str, bool], None]) -> None: ...


def install(core: AttachCore, link: CallLink, calls: PoolCalls) -> None:
    """Carry ``calls`` on ``link`` and take the attached clients' call
    messages for the calls offered here (after :func:`cryptify.crs.calls.wiring.install`)."""
    for frame_type in FRAME_TYPES:
        link.handle(frame_type, _receiver(calls, frame_type))
    link.on_link(calls.link_changed)
    table_ringing: Handler = core.handlers["ringing"]
    table_talk: Handler = core.handlers["talk"]
    table_hangup: Handler = core.handlers["hangup"]
    table_hold: Handler = core.handlers["hold"]
    table_resume: Handler = core.handlers["resume"]

    def ringing(session: AttachSession, msg: Message) -> None:
        if not calls.client_ringing(session.uri or "", msg.text("session")):
            table_ringing(session, msg)

    def talk(session: AttachSession, msg: Message) -> None:
        if not calls.client_talk(session.uri or "", msg.text("session")):
            table_talk(session, msg)

    def hangup(session: AttachSession, msg: Message) -> None:
        uri = session.uri or ""
        if not calls.client_hangup(
            uri, msg.text("session"), msg.text("code"), msg.optional_text("reason")
        ):
            table_hangup(session, msg)

    def hold(session: AttachSession, msg: Message) -> None:
        if not calls.client_hold(session.uri or "", msg.text("session"), msg.type == "hold"):
            (table_hold if msg.type == "hold" else table_resume)(session, msg)

    def detached(session: AttachSession, reason: str) -> None:
        if session.uri is not None:
            calls.client_detached(session.uri)

    core.handlers.update(ringing=ringing, talk=talk, hangup=hangup, hold=hold, resume=hold)
    core.on_detach.append(detached)
