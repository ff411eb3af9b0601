"""
The signaling side of a relay's control channel: L{RelayLink} keeps one AMP
connection to the relay open (reconnecting with backoff), polls it as a
heartbeat and sends the commands of L{cryptify.protocols.relay_control}.
The CRS runs one towards ``crs_relay``, the CIG one towards ``cig-relay``;
``docs/relay.md`` describes the API.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from cryptify.protocols.amp_calls import call_remote
from cryptify.protocols.relay_control import (
    Add,
    AddSessions,
    Bridge,
    BridgeSessions,
    ListSessions,
    Poll,
    Reclaim,
    RelayAllocation,
    RelayStats,
    Remove,
    RemoveSessions,
)

log = Logger(namespace="cryptify.relaylink")

#: Seconds between heartbeats.
POLL_INTERVAL = 10.0
#: A relay whose last answer is older than this is reported inactive.
POLL_STALE = 3 * POLL_INTERVAL
#: Seconds a poll may take before it counts as failed.
POLL_TIMEOUT = 5.0


class _ControlProtocol(amp.AMP):
    """The control connection; tells its link while it is connected."""

    def __init__(self, link: RelayLink) -> None:
        amp.AMP.__init__(self)
        self.link = link

    def connectionMade(self) -> None:
        amp.AMP.connectionMade(self)
        self.link.connected = self

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.link.connected is self:
            self.link.connected = None
        amp.AMP.connectionLost(self, reason)


class RelayLink(service.MultiService):
    """Keep a control connection to a relay and poll it as a heartbeat."""

    def __init__(
        self,
        reactor: IReactorTime,
        endpoint: IStreamClientEndpoint,
        server_name: str,
        interval: float = POLL_INTERVAL,
    ) -> None:
        service.MultiService.__init__(self)
        self.reactor = reactor
        self.server_name = server_name
        self.interval = interval
        self.last_answer: float | None = None
        #: The connected control protocol, while there is one: commands go
        #: straight to it (``ClientService.whenConnected`` makes a Deferred
        #: and steps its state machine for each; several per call add up).
        self.connected: amp.AMP | None = None
        self.client = ClientService(
            endpoint,
            Factory.forProtocol(lambda: _ControlProtocol(self)),
            retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=10.0),
            clock=reactor,
        )
        service.MultiService.addService(self, self.client)
        self._loop = LoopingCall(self.poll)
        self._loop.clock = reactor

    def startService(self) -> None:
        service.MultiService.startService(self)
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("relay poll loop stopped", f)
        )

    def stopService(self) -> defer.Deferred[None]:
        if self._loop.running:
            self._loop.stop()
        result: defer.Deferred[None] = service.MultiService.stopService(self)
        return result

    @property
    def active(self) -> bool:
        """Whether the relay answered a poll recently."""
        if self.last_answer is None:
            return False
        return self.reactor.seconds() - self.last_answer <= POLL_STALE

    def call(self, command: type[amp.Command], **kwargs: object) -> defer.Deferred[dict[str, Any]]:
        """Send one command on the current connection (fails when down)."""
        if self.connected is not None:
            # AMP logs and swallows an error its answer's Deferred has no
            # errback for yet when it arrives: hand it on to one that keeps it
            # for a caller that looks later.
            answer: defer.Deferred[dict[str, Any]] = defer.Deferred()
            call_remote(self.connected, command, **kwargs).chainDeferred(answer)
            return answer
        # the client's factory builds amp.AMP protocols
        connected: defer.Deferred[Any] = self.client.whenConnected(failAfterFailures=1)
        return connected.addCallback(
            lambda proto: call_remote(cast(amp.AMP, proto), command, **kwargs)
        )

    def add_session(self, label: str = "") -> defer.Deferred[RelayAllocation]:
        """Create a relay session: its number, leg tags and media address."""
        return self.call(Add, server=self.server_name, label=label).addCallback(
            lambda answer: RelayAllocation(
                answer["session"], answer["tag_a"], answer["tag_b"], answer["host"], answer["port"]
            )
        )

    async def remove_session(self, session: int) -> bool:
        """Delete a relay session; False when the relay did not have it."""
        answer = await self.call(Remove, server=self.server_name, session=session)
        return bool(answer["removed"])

    def add_sessions(self, labels: list[str]) -> defer.Deferred[list[RelayAllocation]]:
        """Create one relay session per label with one command, in order."""

        def allocations(answer: dict[str, Any]) -> list[RelayAllocation]:
            host, port = answer["host"], answer["port"]
            return [
                RelayAllocation(s["session"], s["tag_a"], s["tag_b"], host, port)
                for s in answer["sessions"]
            ]

        return self.call(AddSessions, server=self.server_name, labels=labels).addCallback(
            allocations
        )

    def remove_sessions(self, sessions: list[int]) -> defer.Deferred[list[int]]:
        """Delete relay sessions with one command; answers those the relay had."""
        return self.call(RemoveSessions, server=self.server_name, sessions=sessions).addCallback(
            lambda answer: list(answer["removed"])
        )

    def bridge_session(
        self, session: int, leg: str, host: str, port: int, tag: bytes
    ) -> defer.Deferred[bool]:
        """Send leg ``leg`` of ``session`` to another operator's relay."""
        return self.call(
            Bridge,
            server=self.server_name,
            session=session,
            leg=leg,
            host=host,
            port=port,
            tag=tag,
        ).addCallback(lambda answer: bool(answer["bridged"]))

    def bridge_sessions(
        self, legs: list[tuple[int, str, str, int, bytes]]
    ) -> defer.Deferred[list[bool]]:
        """:meth:`bridge_session` for many (session, leg, host, port, tag)
        with one command; answers, in order, which were bridged."""
        entries = [
            {"session": session, "leg": leg, "host": host, "port": port, "tag": tag}
            for session, leg, host, port, tag in legs
        ]
        return self.call(BridgeSessions, server=self.server_name, legs=entries).addCallback(
            lambda answer: [bool(done) for done in answer["bridged"]]
        )

    async def stats(self) -> dict[str, int]:
        """The relay's counters: RX, TXB, TXERROR, ERRNODEST, ERRTOSHORT,
        ERRTOLONG, ENTRIES."""
        answer = await self.call(RelayStats)
        return dict(answer["stats"])

    async def list_sessions(self) -> list[dict[str, object]]:
        """This server's live relay sessions (see docs/relay.md for the keys)."""
        answer = await self.call(ListSessions, server=self.server_name)
        return list(answer["sessions"])

    async def reclaim(self, sessions: Iterable[int]) -> list[int]:
        """Adopt live sessions (after a restart); returns those still live."""
        answer = await self.call(Reclaim, server=self.server_name, sessions=list(sessions))
        return list(answer["reclaimed"])

    def poll(self) -> defer.Deferred[None]:
        """One heartbeat; its failure only marks the relay stale."""

        async def once() -> None:
            try:
                answer = await self.call(Poll, server=self.server_name)
            except Exception as exc:
                log.debug("relay poll failed: {why}", why=str(exc))
                return
            self.last_answer = self.reactor.seconds()
            log.debug("relay poll: {sessions} sessions", sessions=answer["sessions"])

        d = defer.ensureDeferred(once())
        d.addTimeout(POLL_TIMEOUT, self.reactor)
        d.addErrback(lambda f: None)
        return d
