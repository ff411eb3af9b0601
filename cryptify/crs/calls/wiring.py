"""Wiring calls into the CRS: UMSG session messages <-> the session table.

:func:`install` registers the session table as the handler of the
attached-state ``invite``, ``ringing``, ``talk`` and ``hangup`` messages and
as a listener of detaches; :class:`RegistryParties` finds callees among the
attached clients; :class:`LinkRelayAllocator` makes one relay session per
call through the ``crs_relay`` control link and removes it when the call
ends (the sessions of one reactor turn in one command), and keeps a few
spare ones for :meth:`LinkRelayAllocator.allocate_spare` (no round trip to
the relay on a call's path).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from cryptify.addresses import is_wildcard
from cryptify.crs.attach.core import AttachCore, AttachSession
from cryptify.crs.attach.registry import Attachment, AttachRegistry
from cryptify.crs.calls.core import SessionTable
from cryptify.crs.calls.session import RelayLegs
from cryptify.protocols.relay_control import MAX_BATCH, RelayAllocation
from cryptify.protocols.umsg import Message

log = Logger(namespace="cryptify.crs.session")

#: Spare relay sessions :meth:`LinkRelayAllocator.allocate_spare` keeps ready.
SPARES = 16
#: A spare older than this is removed, not used (the relay removes a
#: session idle for 60 s; a relay restarted meanwhile has lost it).
SPARE_AGE = 10.0
#: The label of a spare relay session in the relay's logs.
SPARE_LABEL = "spare"


class RegistryParties:
    """Callees are the clients attached to this instance."""

    def __init__(self, registry: AttachRegistry) -> None:
        self.registry = registry

    def attached(self, uri: str) -> Attachment | None:
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

    The sessions asked for (released, bridged to another operator's relay)
    in one reactor turn go to the relay as one ``AddMany`` (``RemoveMany``,
    ``BridgeMany``) at the end of the turn, on
    ``scheduler`` (by default the link's reactor).  If that command fails,
    every allocation of that batch fails, and no other.  A relay that does
    not know the batched commands gets one ``Add`` / ``Remove`` / ``Bridge``
    per session.

    :meth:`allocate_spare` is :meth:`allocate` without the wait: once
    asked for, up to ``spares`` relay sessions are kept allocated ahead
    (each used within ``SPARE_AGE`` seconds, else removed), topped up in
    the same batches as the other adds; none is ready (the first call, a
    burst, the relay out of reach): an ordinary allocation.
    """

    def __init__(
        self,
        link: Any,
        public_host: str,
        addr_map: Any = None,
        scheduler: IReactorTime | None = None,
        max_batch: int = MAX_BATCH,
        spares: int = SPARES,
    ) -> None:
        self.link = link
        self.public_host = public_host
        self.addr_map = addr_map
        self.scheduler = scheduler
        self.max_batch = max_batch
        self.numbers: dict[str, int] = {}
        #: False once the relay answered that it does not know AddMany.
        self.batched = True
        #: False once it answered that it does not know BridgeMany.
        self.batched_bridges = True
        self._adds: list[tuple[str, defer.Deferred[RelayLegs]]] = []
        self.spares = spares
        #: Ready spare relay sessions (oldest first) with when they were made.
        self._spares: deque[tuple[RelayAllocation, float]] = deque()
        #: Spares asked of the relay and not answered yet.
        self._spares_asked = 0
        self._removes: list[int] = []
        self._bridges: list[tuple[tuple[int, str, str, int, bytes], defer.Deferred[bool]]] = []
        self._call: IDelayedCall | None = None

    def allocate(self, session: str) -> defer.Deferred[RelayLegs]:
        legs: defer.Deferred[RelayLegs] = defer.Deferred()
        self._adds.append((session, legs))
        self._later()
        return legs

    def allocate_spare(self, session: str) -> defer.Deferred[RelayLegs]:
        """As :meth:`allocate`, from a spare relay session when one is
        ready: the answer is then immediate.  Tops the spares up."""
        now = self._clock().seconds()
        legs: defer.Deferred[RelayLegs] | None = None
        while self._spares and legs is None:
            allocation, made = self._spares.popleft()
            if now - made <= SPARE_AGE:
                legs = defer.succeed(self._legs(session, allocation))
            else:
                self._removes.append(allocation.session)
                self._later()
        self._top_up()
        return legs if legs is not None else self.allocate(session)

    def _top_up(self) -> None:
        wanted = self.spares - len(self._spares) - self._spares_asked
        for _ in range(max(0, wanted)):
            self._spares_asked += 1
            spare: defer.Deferred[RelayLegs] = defer.Deferred()
            self._adds.append((SPARE_LABEL, spare))
            spare.addErrback(self._spare_failed)
        if wanted > 0:
            self._later()

    def _spare_made(self, allocation: RelayAllocation) -> None:
        self._spares_asked -= 1
        self._spares.append((allocation, self._clock().seconds()))

    def _spare_failed(self, failure: Failure) -> None:
        """The relay refused or is out of reach: drop the spares (a relay
        that restarted has lost them); the next call asks again."""
        self._spares_asked -= 1
        dropped = [allocation.session for allocation, _ in self._spares]
        self._spares.clear()
        if dropped:
            self._removes.extend(dropped)
            self._later()

    def _clock(self) -> IReactorTime:
        clock: IReactorTime = self.scheduler or self.link.reactor
        return clock

    def bridge(
        self, session: str, leg: str, host: str, port: int, tag: bytes
    ) -> defer.Deferred[bool]:
        """Send leg ``leg`` (``a``: the caller's, ``b``: the callee's) of
        ``session``'s relay session to another operator's relay; False when
        the session has no relay session (any more)."""
        number = self.numbers.get(session)
        if number is None:
            return defer.succeed(False)
        bridged: defer.Deferred[bool] = defer.Deferred()
        self._bridges.append(((number, leg, host, port, tag), bridged))
        self._later()
        return bridged

    def release(self, session: str) -> None:
        number = self.numbers.pop(session, None)
        if number is None:
            return
        self._removes.append(number)
        self._later()

    def _later(self) -> None:
        if max(len(self._adds), len(self._removes), len(self._bridges)) >= self.max_batch:
            self.flush()
        elif self._call is None:
            self._call = self._clock().callLater(0, self.flush)

    def flush(self) -> None:
        """Send the queued adds and removes now."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        adds, self._adds = self._adds, []
        removes, self._removes = self._removes, []
        bridges, self._bridges = self._bridges, []
        for start in range(0, len(adds), self.max_batch):
            self._add(adds[start : start + self.max_batch])
        for start in range(0, len(bridges), self.max_batch):
            self._bridge(bridges[start : start + self.max_batch])
        for start in range(0, len(removes), self.max_batch):
            self._remove(removes[start : start + self.max_batch])

    def _legs_of(self, allocation: RelayAllocation, session: str) -> RelayLegs:
        return self._legs(session, allocation)

    def _legs(self, session: str, allocation: RelayAllocation) -> RelayLegs:
        self.numbers[session] = allocation.session
        host = allocation.host
        if not host or is_wildcard(host):
            host = self.public_host
        return RelayLegs(host, allocation.port, allocation.tag_a, allocation.tag_b)

    def _add(self, adds: list[tuple[str, defer.Deferred[RelayLegs]]]) -> None:
        if not self.batched:
            for session, legs in adds:
                one: defer.Deferred[RelayAllocation] = defer.ensureDeferred(
                    self.link.add_session(label=session)
                )
                if session == SPARE_LABEL:
                    one.addCallbacks(self._spare_made, legs.errback)
                else:
                    one.addCallback(self._legs_of, session).chainDeferred(legs)
            return

        def added(allocations: list[RelayAllocation]) -> None:
            if len(allocations) != len(adds):
                failed(Failure(RuntimeError(f"{len(allocations)} relay sessions for {len(adds)}")))
                return
            for (session, legs), allocation in zip(adds, allocations, strict=True):
                if session == SPARE_LABEL:
                    self._spare_made(allocation)
                else:
                    legs.callback(self._legs(session, allocation))

        def failed(failure: Failure) -> None:
            if failure.check(amp.UnhandledCommand):
                log.info("crs_relay does not know AddMany: one Add per session")
                self.batched = False
                self._add(adds)
                return
            for _, legs in adds:
                legs.errback(failure)

        labels = [session for session, _ in adds]
        defer.ensureDeferred(self.link.add_sessions(labels)).addCallbacks(added, failed)

    def _bridge(
        self, bridges: list[tuple[tuple[int, str, str, int, bytes], defer.Deferred[bool]]]
    ) -> None:
        if not self.batched or not self.batched_bridges:
            for legs, done in bridges:
                defer.ensureDeferred(self.link.bridge_session(*legs)).chainDeferred(done)
            return

        def bridged(answers: list[bool]) -> None:
            if len(answers) != len(bridges):
                failed(Failure(RuntimeError(f"{len(answers)} answers for {len(bridges)} legs")))
                return
            for (_, done), answer in zip(bridges, answers, strict=True):
                done.callback(answer)

        def failed(failure: Failure) -> None:
            if failure.check(amp.UnhandledCommand):
                log.info("crs_relay does not know BridgeMany: one Bridge per leg")
                self.batched_bridges = False
                self._bridge(bridges)
                return
            for _, done in bridges:
                done.errback(failure)

        entries = [entry for entry, _ in bridges]
        self.link.bridge_sessions(entries).addCallbacks(bridged, failed)

    def _remove(self, numbers: list[int]) -> None:
        def failed(failure: Failure) -> None:
            log.warn(
                "relay sessions {numbers} not removed: {why}",
                numbers=numbers,
                why=failure.getErrorMessage(),
            )

        if not self.batched:
            for number in numbers:
                defer.ensureDeferred(self.link.remove_session(number)).addErrback(failed)
            return
        defer.ensureDeferred(self.link.remove_sessions(numbers)).addErrback(failed)


def install(core: AttachCore, table: SessionTable) -> None:
    """Let attached clients call each other through ``table``."""

    def invite(session: AttachSession, msg: Message) -> None:
        caller = core.registry.get(session.uri or "")
        if caller is None or msg.id is None:
            return
        table.invite(
            caller,
            msg.id,
            msg.text("to"),
            msg.octets("mikey"),
            msg.optional_text("from"),
            msg.get("codecs"),
            msg.optional_text("to-account"),
        )

    def ringing(session: AttachSession, msg: Message) -> None:
        table.ringing(session.uri or "", msg.text("session"))

    def talk(session: AttachSession, msg: Message) -> None:
        table.talk(session.uri or "", msg.text("session"), msg.optional_text("codec"))

    def hangup(session: AttachSession, msg: Message) -> None:
        table.hangup(
            session.uri or "", msg.text("session"), msg.text("code"), msg.optional_text("reason")
        )

    def hold(session: AttachSession, msg: Message) -> None:
        table.hold(session.uri or "", msg.text("session"), msg.type == "hold")

    def detached(session: AttachSession, reason: str) -> None:
        if session.uri is not None:
            table.detached(session.uri)

    core.handlers.update(
        invite=invite, ringing=ringing, talk=talk, hangup=hangup, hold=hold, resume=hold
    )
    core.on_detach.append(detached)
