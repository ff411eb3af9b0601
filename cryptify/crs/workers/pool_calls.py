"""Calls across pool members with workers (docs/workers.md, Pools).

The worker of a call's party runs the pool's calls
(:class:`~cryptify.crs.pool.calls_core.PoolCalls`) as one process does;
the parent, which has the pool link, only passes their frames on:

- a worker's frame for a member (``call-invite`` of its caller, or the
  answers of its callee) goes to the parent
  (:class:`~cryptify.protocols.crs_workers.PoolFrame`), which sends it on
  the pool link and notes which worker the call's session is with (an
  invite no connection takes is refused ``not-connected`` to the worker
  at once, as the link does for one process);
- a member's ``call-invite`` is offered to every worker
  (:class:`~cryptify.protocols.crs_workers.PoolInvite`): the one where the
  callee is attached takes it (the member's frames for the call that
  came before its answer follow it there); when none does (or the one
  that did had exited by its answer), the parent refuses it
  ``not-connected``.  The member's other frames go to the worker the
  session is with (one no worker has is ignored, as hangups cross);
- a member's link going down is told to every worker
  (:class:`~cryptify.protocols.crs_workers.PoolPeer`), which end the calls
  through it; a worker that goes away has its calls hung up at the
  members (``not-connected``, from ``crs``), on either link.

:class:`CallRelay` is the parent's side; the worker's is in
:class:`~cryptify.crs.workers.pool.WorkerPool` and
:class:`~cryptify.crs.workers.calls.WorkerLink`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger

from cryptify.crs.pool.calls_frames import (
    FRAME_TYPES,
    HANGUP_FRAME,
    INVITE_FRAME,
    OFFERED_FRAME,
    REFUSED_FRAME,
    CallHangup,
    CallRefused,
    decode_call,
)
from cryptify.crs.pool.wire import WireError
from cryptify.protocols import cbor_subset as cbor

log = Logger(namespace="cryptify.crs.workers")

#: Who ends a call whose worker went away (as for a member lost).
CRS = "crs"
#: Sessions remembered as ended.
MAX_ENDED = 4096
#: Most frames of a member kept for a call whose invite the workers are
#: still answering (its hangup, say: more is not a well-behaved member's).
MAX_WAITING = 8


def pack(fields: dict[str, object]) -> bytes:
    """A call frame's fields as they go between a worker and its parent."""
    return cbor.encode(fields)


def unpack(data: bytes) -> dict[str, object]:
    """The fields of :func:`pack`.

    @raise WireError: when ``data`` is not a map.
    """
    try:
        value = cbor.decode(data)
    except (ValueError, cbor.CborError) as exc:
        raise WireError(f"call frame not readable: {exc}") from None
    if not isinstance(value, dict):
        raise WireError("call frame fields are not a map")
    return value


class Worker(Protocol):
    """One worker's connection to the parent, as the relay uses it
    (``via``: which link, ``pool`` or ``iw``)."""

    def frame(self, peer: str, frame_type: str, fields: dict[str, object], via: str) -> None:
        """Pass a member's frame to the worker."""

    def invite(self, peer: str, fields: dict[str, object], via: str) -> defer.Deferred[bool]:
        """Offer a member's invite; whether the worker took it."""

    def peer(self, peer: str, up: bool, via: str) -> None:
        """A member's link went up or down."""


class Link(Protocol):
    """What the relay needs of the pool link."""

    def send(self, peer: str, frame_type: str, fields: dict[str, object]) -> bool: ...

    def handle(
        self, frame_type: str, handler: Callable[[str, dict[str, object]], None]
    ) -> None: ...

    def on_link(self, listener: Callable[[str, bool], None]) -> None: ...


def _session(fields: dict[str, object]) -> str:
    session = fields.get("session")
    if not isinstance(session, str):
        raise WireError("call frame without its session")
    return session


class CallRelay:
    """The parent's side (module docstring); ``workers()``: the workers
    connected now."""

    def __init__(
        self, link: Link, workers: Callable[[], Iterable[Worker]], via: str = "pool"
    ) -> None:
        self.link = link
        self.workers = workers
        #: The link's name for the workers (``pool``, or ``iw``: the
        #: inter-working link, whose peers are other operators' CRSes).
        self.via = via
        #: session -> (the worker it is with, the member it is with)
        self.sessions: dict[str, tuple[Worker, str]] = {}
        #: session -> ``outgoing`` (placed by a worker's client) or ``incoming``
        self.directions: dict[str, str] = {}
        #: The sessions whose offer went through (``call-offered``).
        self.offered: set[str] = set()
        #: The sessions ended lately (a worker's refusal can pass its answer
        #: to the invite: the call is not noted after it ended).
        self.ended: OrderedDict[str, None] = OrderedDict()
        #: session -> (the member, its frames since) of a member's invite
        #: the workers are still answering: they follow the invite to the
        #: worker that takes it.
        self.waiting: dict[str, tuple[str, list[tuple[str, dict[str, object]]]]] = {}
        self.counters = {"relayed": 0, "refused": 0}
        for frame_type in FRAME_TYPES:
            link.handle(frame_type, self._from_member(frame_type))
        link.on_link(self._link_changed)

    # -- from a member ------------------------------------------------------------------

    def _from_member(self, frame_type: str) -> Callable[[str, dict[str, object]], None]:
        def receive(peer: str, fields: dict[str, object]) -> None:
            decode_call(frame_type, fields)  # (a bad frame drops the connection)
            session = _session(fields)
            if frame_type == INVITE_FRAME:
                if session not in self.waiting:  # (again while offered: ignored)
                    self._invited(peer, session, fields)
                return
            waiting = self.waiting.get(session)
            if waiting is not None and waiting[0] == peer:
                if len(waiting[1]) < MAX_WAITING:
                    waiting[1].append((frame_type, fields))
                return
            self._to_worker(peer, session, frame_type, fields)

        return receive

    def _to_worker(
        self, peer: str, session: str, frame_type: str, fields: dict[str, object]
    ) -> None:
        """A member's frame (not an invite) to the worker its call is with."""
        found = self.sessions.get(session)
        if found is None or found[1] != peer:
            return
        if frame_type in (HANGUP_FRAME, REFUSED_FRAME):
            self._forget(session)
        elif frame_type == OFFERED_FRAME:
            self.offered.add(session)
        self.counters["relayed"] += 1
        found[0].frame(peer, frame_type, fields, self.via)

    def _invited(self, peer: str, session: str, fields: dict[str, object]) -> None:
        """Offer a member's invite to every worker: the first that takes
        it (and is still connected) has the call, and the member's frames
        that came meanwhile; none: refused ``not-connected``."""
        workers = list(self.workers())
        self.waiting[session] = (peer, [])
        left, taken = len(workers), False

        def refuse() -> None:
            self.waiting.pop(session, None)
            self.counters["refused"] += 1
            refused = CallRefused(session, "not-connected")
            self.link.send(peer, REFUSED_FRAME, refused.fields())

        def answered(took: object, worker: Worker) -> None:
            nonlocal left, taken
            left -= 1
            if took is True and not taken and worker in set(self.workers()):
                taken = True
                _, frames = self.waiting.pop(session, (peer, []))
                if session in self.ended:
                    return  # refused or hung up by the worker meanwhile
                self.sessions[session] = (worker, peer)
                self.directions[session] = "incoming"
                self.counters["relayed"] += 1
                for frame_type, kept in frames:
                    self._to_worker(peer, session, frame_type, kept)
            if left == 0 and not taken:
                refuse()

        if not workers:
            refuse()
        for worker in workers:
            # (a worker's failure or lost connection: not taken)
            worker.invite(peer, fields, self.via).addBoth(answered, worker)

    def _link_changed(self, peer: str, up: bool) -> None:
        if not up:
            for session in [s for s, (_, p) in self.sessions.items() if p == peer]:
                self._forget(session)
        for worker in list(self.workers()):
            worker.peer(peer, up, self.via)

    # -- from a worker ------------------------------------------------------------------

    def from_worker(
        self, worker: Worker, peer: str, frame_type: str, fields: dict[str, object]
    ) -> None:
        """A worker's frame for member ``peer``."""
        decode_call(frame_type, fields)
        session = _session(fields)
        if frame_type in (HANGUP_FRAME, REFUSED_FRAME):
            self._forget(session)
        else:
            self.sessions[session] = (worker, peer)
            if frame_type == INVITE_FRAME:
                self.directions[session] = "outgoing"
            elif frame_type == OFFERED_FRAME:
                self.offered.add(session)
        if self.link.send(peer, frame_type, fields):
            self.counters["relayed"] += 1
            return
        if frame_type == INVITE_FRAME:
            # no connection to the member: the caller is told at once
            self._forget(session)
            refused = CallRefused(session, "not-connected").fields()
            worker.frame(peer, REFUSED_FRAME, refused, self.via)

    def worker_lost(self, worker: Worker) -> None:
        """A worker's connection ended (it exited): its calls end at the members."""
        for session, (held, peer) in list(self.sessions.items()):
            if held is worker:
                self._forget(session)
                hangup = CallHangup(session, "not-connected", "the party's process ended", CRS)
                self.link.send(peer, HANGUP_FRAME, hangup.fields())

    def _forget(self, session: str) -> None:
        self.sessions.pop(session, None)
        self.directions.pop(session, None)
        self.offered.discard(session)
        self.ended[session] = None
        while len(self.ended) > MAX_ENDED:
            self.ended.popitem(last=False)

    def data_state(self, peer: str) -> tuple[str, str, str]:
        """``show iw-crs``'s DATA-LINK, DATA-OUTGOING and DATA-INCOMING of
        ``peer``: each ``up`` while a call in that direction through it is
        offered and not ended (the workers bridge their relay legs; one
        process says ``up`` once its relay confirmed the bridge)."""
        directions = {
            self.directions.get(s)
            for s, (_, p) in self.sessions.items()
            if p == peer and s in self.offered
        }
        outgoing = "up" if "outgoing" in directions else "down"
        incoming = "up" if "incoming" in directions else "down"
        return ("up" if directions - {None} else "down"), outgoing, incoming
