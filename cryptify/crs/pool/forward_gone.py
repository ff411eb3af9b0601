"""``msg-gone`` for :class:`~cryptify.crs.pool.forward.Forwarder`: two
copies of one message ID, and the one not confirmed dropped
(``docs/pool.md``, "Two copies of one ID").

- **Telling.** When a recipient confirms a message here whose origin (a
  member that may hold a twin) is known, that member is told
  ``msg-gone``; the message stays *pending* (:class:`GoneOutbox`, durable)
  and is sent again until the member answers ``msg-gone-ok``.
- **Told.** A member told drops its copy (as if delivered, not counted),
  passes the news on to the member it handed its copy to (the follow map)
  and to the origin it knows, if that is another member (each of those a
  pending ``msg-gone`` of its own, stored before the answer), forgets the
  entries, and only then answers ``msg-gone-ok`` (the answers to one
  member gathered for :data:`ACK_DELAY`, one frame).  Told again (its answer
  lost), it finds nothing left to do and answers again.  A store out of
  reach leaves it unanswered: the teller sends it again.
- Between the members of one pool every member told acts on any copy it
  has that an origin or a follow entry names; an inter-working peer (another
  operator's CRS, :attr:`GoneMixin.shares_known` false) only on a copy
  whose origin is that peer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from cryptify.crs.messages.store import MessageStore, Posted
from cryptify.crs.pool.forward_core import (
    GONE,
    GONE_OK,
    MAX_GONE_OK_BATCH,
    GoneNote,
    decode_gone,
    decode_gone_ok,
    encode_gone,
    encode_gone_ok,
)
from cryptify.crs.pool.gone import GoneOutbox
from cryptify.crs.pool.origins import Gone, OriginMap
from cryptify.protocols.umsg import base_uri

if TYPE_CHECKING:
    from cryptify.crs.pool.forward import PoolRoutes, _Pending

log = Logger(namespace="cryptify.crs.pool")

#: Seconds the ``msg-gone-ok`` answers to one member are gathered before
#: they are sent in one frame (far below the teller's resend time).
ACK_DELAY = 0.1


class GoneMixin:
    """The ``msg-gone`` half of the forwarder (the state lives there)."""

    link: PoolRoutes
    store: MessageStore
    reactor: IReactorTime
    counters: dict[str, int]
    shares_known: bool
    _origins: OriginMap
    _gones: GoneOutbox
    _pending: dict[int, _Pending]
    #: Peer -> the IDs whose msg-gone-ok is not sent yet.
    _acks: dict[str, list[str]]
    _ack_timer: IDelayedCall | None

    if TYPE_CHECKING:

        def _take(self, n: int, peer: str) -> _Pending | None: ...

    def _install_gone(self) -> None:
        self._acks = {}
        self._ack_timer = None
        self.link.handle(GONE, self._on_gone)
        self.link.handle(GONE_OK, self._on_gone_ok)

    def _stop_gone(self) -> None:
        """Stopping: the answers gathered go now."""
        self._send_acks()

    # -- telling -----------------------------------------------------------

    def settled(self, recipient: str, message_id: str) -> None:
        """Confirmed here: a member that may hold a twin drops it."""
        defer.ensureDeferred(self._settle(recipient, message_id)).addErrback(
            lambda f: log.warn(
                "origin of message {id} not found: {why}", id=message_id, why=f.getErrorMessage()
            )
        )

    async def _settle(self, recipient: str, message_id: str) -> None:
        origin, followed = await self._origins.lookup(message_id)
        if origin is None and followed is None:
            return  # the usual case: no member may hold a twin
        tell = set(followed) if followed is not None else set()
        if origin is not None:
            tell.add(origin)
        await self._tell(sorted(tell - {self.link.me}), message_id, recipient, origin, followed)

    async def _tell(
        self,
        peers: list[str],
        message_id: str,
        recipient: str,
        origin: str | None,
        followed: tuple[str, str] | None,
    ) -> None:
        """Send each of ``peers`` a ``msg-gone``, kept until it answers;
        the origin and follow entry it replaces are forgotten in the same
        step."""
        gones = await self._gones.add(
            peers,
            message_id,
            recipient,
            self.reactor.seconds(),
            origin=origin is not None,
            follow=followed is not None,
        )
        self._origins.forgotten(message_id)
        for gone in gones:
            self._send_gone(gone)

    def _send_gone(self, gone: Gone) -> None:
        if self.link.link_up(gone.peer):
            self.link.send(gone.peer, GONE, encode_gone(gone.id, gone.recipient))

    def _resend_gones(self, peer: str | None = None) -> None:
        """Send again the ``msg-gone`` due now (or all of ``peer``'s: its
        link just came up)."""
        now = self.reactor.seconds()
        for gone in self._gones.due(now) if peer is None else self._gones.for_peer(peer, now):
            self._send_gone(gone)

    def _on_gone_ok(self, peer: str, fields: dict[str, object]) -> None:
        for message_id in decode_gone_ok(fields):
            self._gones.acknowledged(peer, message_id)

    def _ack(self, peer: str, message_id: str) -> None:
        """Answer ``peer``'s msg-gone (with the others within ACK_DELAY)."""
        self._acks.setdefault(peer, []).append(message_id)
        if self._ack_timer is None:
            self._ack_timer = self.reactor.callLater(ACK_DELAY, self._send_acks)

    def _send_acks(self) -> None:
        if self._ack_timer is not None and self._ack_timer.active():
            self._ack_timer.cancel()
        self._ack_timer = None
        acks, self._acks = self._acks, {}
        for peer, ids in acks.items():
            for i in range(0, len(ids), MAX_GONE_OK_BATCH):
                # a lost answer: the msg-gone comes again and is answered again
                self.link.send(peer, GONE_OK, encode_gone_ok(ids[i : i + MAX_GONE_OK_BATCH]))

    # -- told --------------------------------------------------------------

    def _on_gone(self, peer: str, fields: dict[str, object]) -> None:
        """``peer`` confirmed a message: a twin kept here is dropped, not
        delivered a second time; one handed on is followed."""
        note = decode_gone(fields)
        for n, pending in list(self._pending.items()):
            if pending.peer == peer and pending.message_id == note.id:
                # a forward still waiting: the peer obviously stored it
                self._take(n, peer)
                pending.answer.callback(Posted(note.id, duplicate=False))
        defer.ensureDeferred(self._told(peer, note)).addErrback(
            lambda f: log.warn(
                "msg-gone of message {id} from {peer} not done yet (it comes again): {why}",
                id=note.id,
                peer=peer,
                why=f.getErrorMessage(),
            )
        )

    async def _told(self, peer: str, note: GoneNote) -> None:
        trusted = self.shares_known  # between members of one pool
        origin, followed = await self._origins.lookup(note.id)
        if followed is not None and not trusted and followed[0] != peer:
            followed = None
        if origin is not None and not trusted and origin != peer:
            origin = None
        if origin is not None or followed is not None:
            dropped = await self.store.delivered(base_uri(note.recipient), note.id)
            if dropped is not None:
                self.counters["gone"] += 1
                log.debug(
                    "message {id} kept here was delivered by {peer}: dropped",
                    id=note.id,
                    peer=peer,
                )
            # the copy kept here went on (followed), or a third member may
            # hold a twin too: each is told, until it answers
            tell = set(followed) if followed is not None else set()
            if origin is not None:
                tell.add(origin)
            others = sorted(tell - {peer, self.link.me})
            await self._tell(others, note.id, note.recipient, origin, followed)
        self._ack(peer, note.id)
