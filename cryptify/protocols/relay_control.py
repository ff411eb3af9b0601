"""Control channel between a signaling server and its media relay.

The CRS drives its ``crs_relay`` and the CIG its ``cig-relay`` over AMP on a
UNIX socket.  The signaling side keeps one connection open
(:class:`RelayLink`, reconnecting with backoff) and polls it as a heartbeat;
the relay side answers with :class:`Poll` and reports counters with
:class:`RelayStats`.  Later commands (add, remove, list sessions) extend the
same channel.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp

from cryptify.protocols.mgmt import JsonValue

log = Logger(namespace="cryptify.relaylink")

#: Seconds between heartbeats.
POLL_INTERVAL = 10.0
#: A relay whose last answer is older than this is reported inactive.
POLL_STALE = 3 * POLL_INTERVAL
#: Seconds a poll may take before it counts as failed.
POLL_TIMEOUT = 5.0


class Poll(amp.Command):
    """Heartbeat from the signaling server; answers with the session count."""

    arguments = [(b"server", amp.Unicode())]
    response = [(b"sessions", amp.Integer()), (b"version", amp.Unicode())]


class RelayStats(amp.Command):
    """The relay's counters as a JSON object."""

    arguments = []
    response = [(b"stats", JsonValue())]


class RelayLink(service.MultiService):
    """Keep a control connection to a relay and poll it as a heartbeat."""

    def __init__(
        self,
        reactor: IReactorTime,
        endpoint: IStreamClientEndpoint,
        server_name: str,
        interval: float = POLL_INTERVAL,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.reactor = reactor
        self.server_name = server_name
        self.interval = interval
        self.last_answer: float | None = None
        self.client = ClientService(
            endpoint,
            Factory.forProtocol(amp.AMP),
            retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=10.0),
            clock=reactor,
        )
        self.addService(self.client)  # type: ignore[no-untyped-call]
        self._loop = LoopingCall(self.poll)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("relay poll loop stopped", f)
        )

    def stopService(self) -> defer.Deferred[None]:
        if self._loop.running:
            self._loop.stop()
        result: defer.Deferred[None] = super().stopService()  # type: ignore[no-untyped-call]
        return result

    @property
    def active(self) -> bool:
        """Whether the relay answered a poll recently."""
        if self.last_answer is None:
            return False
        return self.reactor.seconds() - self.last_answer <= POLL_STALE

    async def call(self, command: type[amp.Command], **kwargs: Any) -> dict[str, Any]:
        """Send one command on the current connection (fails when down)."""
        proto: Any = await self.client.whenConnected(failAfterFailures=1)
        result: dict[str, Any] = await proto.callRemote(command, **kwargs)
        return result

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
