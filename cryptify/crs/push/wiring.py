"""Push wake-ups in the CRS: the link to the push server and the wake path.

- :class:`CpsLink`: TLS + AMP to ``cps HOST PORT``, logged in with the
  configured id and secret, reconnected with exponential back-off and
  jitter (1 s up to 60 s; Twisted's ``backoffPolicy``), pinged every
  :data:`PING_EVERY`.
- :class:`Pusher`: a call or message waits for a client that is not
  attached -> read its push token -> ask the rules
  (:mod:`cryptify.crs.push.core`) -> send over the link, or straight to
  APNs with ``push-config apns type direct`` (:class:`DirectApns`).
  Dead tokens are removed; "later" answers back the route off and the
  wake is sent again when it opens.

The payload carries nothing about the client (``docs/push.md``); a
device token is never written to a log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Literal, Protocol, cast

from twisted.application import service
from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from cryptify.crs.push.core import Counter, Decision, PushRules
from cryptify.protocols import push_link
from cryptify.protocols.amp_calls import AmpAnswer, call_remote, number, optional_number, text
from cryptify.protocols.tls import client_context_factory
from cryptify.push.answers import Answer, Outcome, clean
from cryptify.push.apns import ApnsSender
from cryptify.push.h2client import H2Client, Unreachable
from cryptify.reactor import IReactor

log = Logger(namespace="cryptify.crs.push")

#: Seconds between keep-alive pings on the link.
PING_EVERY = 60.0
#: Seconds a ping may take before the link is closed.
PING_TIMEOUT = 30.0
#: Seconds a wake may take over the link (the provider's own timeouts are shorter).
CALL_TIMEOUT = 90.0
#: Seconds a provider token from the push server is used before asking again.
PROVIDER_TOKEN_REUSE = 10 * 60.0
#: A clock further than this from the push server's is reported.
MAX_SKEW = 10 * 60.0

CPS_APNS = "cps:apns"
CPS_FCM = "cps:fcm"
DIRECT_APNS = "direct:apns"


class LinkDown(Exception):
    """The push server link is not logged in."""


class _LinkProtocol(amp.AMP):
    def __init__(self, link: CpsLink) -> None:
        amp.AMP.__init__(self)
        self.link = link
        self.gone: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        amp.AMP.connectionLost(self, reason)
        self.link.lost(self)
        self.gone.callback(None)


#: The link's states: ``IDLE`` (not started), ``CONNECTING`` (TCP + TLS +
#: login under way), ``UP`` (logged in), ``WAITING`` (for the next attempt),
#: ``STOPPED``.
LinkState = Literal["idle", "connecting", "up", "waiting", "stopped"]


class CpsLink(service.Service):
    """The CRS's end of the push link (``docs/push.md``).

    Transitions: idle -start-> connecting; connecting -logged in-> up;
    connecting -connect or login failed-> waiting (back-off grows with each
    failure in a row); up -lost-> waiting (first delay); waiting -delay
    over-> connecting; any -stop-> stopped.  A refused login closes the
    connection, so a wrong secret is retried slowly, not hammered.
    """

    def __init__(
        self,
        reactor: IReactor,
        host: str,
        port: int,
        client_id: str,
        secret: str,
        trust: str | None = None,
        retry: Callable[[int], float] | None = None,
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.client_id = client_id
        self.secret = secret
        self.trust = trust
        self.retry = retry or backoffPolicy(initialDelay=1.0, maxDelay=60.0)
        self.state: LinkState = "idle"
        self.failures = 0
        self.proto: _LinkProtocol | None = None
        self.server = ""
        #: our clock minus the push server's, seconds, from the last answer that had it
        self.skew: float | None = None
        #: called each time the link has logged in, and each time it is lost
        self.on_login: list[Callable[[], None]] = []
        self.on_lost: list[Callable[[], None]] = []
        self._attempt: Deferred[IProtocol] | None = None
        self._conn: _LinkProtocol | None = None
        self._timer: IDelayedCall | None = None
        self._ping: LoopingCall | None = None

    @property
    def active(self) -> bool:
        return self.proto is not None

    def _endpoint(self) -> IStreamClientEndpoint:
        tcp = HostnameEndpoint(self.reactor, self.host, self.port, timeout=15)
        return wrapClientTLS(client_context_factory(self.host, self.trust), tcp)

    def startService(self) -> None:
        service.Service.startService(self)
        self._connect()
        self._ping = LoopingCall(self._ping_once)
        self._ping.clock = self.reactor
        self._ping.start(PING_EVERY, now=False)

    def stopService(self) -> Deferred[None]:
        service.Service.stopService(self)
        self.state = "stopped"
        if self._ping is not None and self._ping.running:
            self._ping.stop()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._attempt is not None:
            self._attempt.cancel()
        conn = self._conn
        if conn is None or conn.transport is None or conn.gone.called:
            return defer.succeed(None)
        conn.transport.loseConnection()
        return conn.gone

    def _connect(self) -> None:
        self._timer = None
        if self.state == "stopped":
            return
        self.state = "connecting"
        factory = Factory.forProtocol(lambda: _LinkProtocol(self))
        self._attempt = self._endpoint().connect(factory)
        self._attempt.addCallback(self._login)
        self._attempt.addErrback(self._failed)

    async def _login_coroutine(self, proto: _LinkProtocol) -> None:
        self._conn = proto
        d = call_remote(proto, push_link.Login, id=self.client_id, secret=self.secret)
        answer = await d.addTimeout(CALL_TIMEOUT, self.reactor)
        if self.state != "connecting" or proto.gone.called:
            raise LinkDown("the connection ended during the login")
        self.state, self.failures, self.proto = "up", 0, proto
        self.server = clean(answer["server"])
        self.skew = self.reactor.seconds() - number(answer, "time")
        log.info(
            "push link: logged in to {server} at {host}:{port}",
            server=self.server,
            host=self.host,
            port=self.port,
        )
        for callback in list(self.on_login):
            try:
                callback()
            except Exception:
                log.failure("push link: login listener failed")

    def _login(self, proto: IProtocol) -> Deferred[None]:
        # the factory of _connect builds only _LinkProtocol
        return defer.ensureDeferred(self._login_coroutine(cast(_LinkProtocol, proto)))

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        if self.state == "stopped":
            return
        log.warn(
            "push link: no login at {host}:{port} as {id}: {why}",
            host=self.host,
            port=self.port,
            id=self.client_id,
            why=failure.getErrorMessage(),
        )
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None and not conn.gone.called:
            conn.transport.loseConnection()
        self._wait()

    def _wait(self) -> None:
        self.failures += 1
        self.state = "waiting"
        self._timer = self.reactor.callLater(self.retry(self.failures), self._connect)

    def lost(self, proto: _LinkProtocol) -> None:
        if self._conn is proto:
            self._conn = None
        if self.proto is not proto:
            return  # not logged in yet: the login's failure handles it
        self.proto = None
        log.warn("push link: connection to {host}:{port} lost", host=self.host, port=self.port)
        for callback in list(self.on_lost):
            try:
                callback()
            except Exception:
                log.failure("push link: loss listener failed")
        if self.state == "up":
            self.failures = 0
            self._wait()

    def call(self, command: type[amp.Command], **kwargs: object) -> Deferred[AmpAnswer]:
        """Send a command over the logged-in link (LinkDown when it is not)."""
        if self.proto is None:
            return defer.fail(LinkDown("the push link is not up"))
        return call_remote(self.proto, command, **kwargs).addTimeout(CALL_TIMEOUT, self.reactor)

    def _ping_once(self) -> None:
        proto = self.proto
        if proto is None:
            return

        def silent(failure: Failure) -> None:
            log.warn("push link: no answer to a ping: {why}", why=failure.getErrorMessage())
            if proto.transport is not None:
                proto.transport.loseConnection()

        call_remote(proto, push_link.Ping).addTimeout(PING_TIMEOUT, self.reactor).addErrback(silent)


class LinkCalls(Protocol):
    """What the push path needs of the link (a :class:`CpsLink` or a test double)."""

    skew: float | None
    on_login: list[Callable[[], None]]

    @property
    def active(self) -> bool: ...

    def call(self, command: type[amp.Command], **kwargs: object) -> Deferred[AmpAnswer]: ...


class TokenStore(Protocol):
    """Where push tokens are kept (:class:`~cryptify.crs.objects.store.ClientObjects`)."""

    def push_token(self, account: str, uri: str) -> Awaitable[dict[str, str] | None]: ...

    def forget_push_token(self, account: str, uri: str, token: str) -> Awaitable[bool]: ...


class CpsProviderTokens:
    """APNs provider tokens fetched from the push server for direct APNs."""

    def __init__(self, link: LinkCalls, clock: Callable[[], float]) -> None:
        self.link = link
        self.clock = clock
        self.endpoint = ""
        self.topic = ""
        self._token: str | None = None
        self._fetched = 0.0
        self.skew: float | None = None
        self._reported = False

    async def token(self) -> str:
        now = self.clock()
        if self._token is not None and 0 <= now - self._fetched < PROVIDER_TOKEN_REUSE:
            return self._token
        try:
            answer = await self.link.call(push_link.ProviderToken)
        except Exception as exc:
            raise Unreachable(f"push server: {exc}") from exc
        token = text(answer, "token")
        self._token, self._fetched = token, now
        self.endpoint, self.topic = text(answer, "endpoint"), text(answer, "topic")
        self.note_skew(now - number(answer, "time"))
        return token

    def note_skew(self, skew: float) -> None:
        """Report, once per change, a clock further than MAX_SKEW from the push server's."""
        self.skew = skew
        off = abs(skew) > MAX_SKEW
        if off and not self._reported:
            log.warn(
                "direct APNs: this CRS's clock is {skew:.0f} s off the push server's "
                "(more than {limit:.0f} s): APNs will refuse its provider tokens; fix the time",
                skew=skew,
                limit=MAX_SKEW,
            )
        elif not off and self._reported:
            log.info("direct APNs: clock skew back within limits ({skew:.0f} s)", skew=skew)
        self._reported = off

    def renew(self) -> None:
        self._token = None


class DirectApns:
    """``push-config apns type direct``: the CRS's own HTTP/2 client to APNs."""

    def __init__(self, reactor: IReactor, link: LinkCalls, trust: str | None = None) -> None:
        self.reactor = reactor
        self.tokens = CpsProviderTokens(link, reactor.seconds)
        self.trust = trust
        self.client: H2Client | None = None
        self.sender: ApnsSender | None = None

    async def wake(self, token: str, voip: bool) -> Answer:
        try:
            await self.tokens.token()
        except Unreachable as exc:
            return Answer(Outcome.LATER, str(exc))
        if self.sender is None or self.sender.topic != self.tokens.topic:
            if self.client is not None:
                self.client.close()
            try:
                self.client = H2Client(self.reactor, self.tokens.endpoint, self.trust)
            except ValueError as exc:
                return Answer(Outcome.REFUSED, clean(exc))
            self.sender = ApnsSender(
                self.client, self.tokens, self.tokens.topic, self.reactor.seconds
            )
        return await self.sender.wake(token, voip)

    def close(self) -> Deferred[None]:
        return self.client.close() if self.client is not None else defer.succeed(None)


def _outcome(answer: Mapping[str, object]) -> Answer:
    outcome = answer.get("outcome")
    reason = clean(answer.get("reason") or "")
    if outcome == push_link.SENT:
        return Answer(Outcome.SENT)
    if outcome == push_link.UNREGISTERED:
        return Answer(Outcome.UNREGISTERED, reason)
    if outcome == push_link.LATER:
        return Answer(Outcome.LATER, reason, optional_number(answer, "retry_after") or None)
    return Answer(Outcome.REFUSED, reason or f"outcome {clean(outcome)}")


class Pusher:
    """Wakes clients that are not attached and left a push token."""

    def __init__(
        self,
        reactor: IReactor,
        tokens: TokenStore,
        link: LinkCalls,
        direct: DirectApns | None = None,
        rules: PushRules | None = None,
    ) -> None:
        self.reactor = reactor
        self.tokens = tokens
        self.link = link
        self.direct = direct
        self.rules = rules if rules is not None else PushRules()
        self.timers: dict[str, IDelayedCall] = {}
        link.on_login.append(self._link_up)

    # -- entry points ------------------------------------------------------------

    def absent(self, account: str, uri: str) -> None:
        """A call or message waits for ``uri`` (of ``account``), not attached."""
        d = defer.ensureDeferred(self.wake(account, uri))
        d.addErrback(self._failed, uri)

    def _failed(self, failure: Failure, uri: str) -> None:
        log.warn("no wake-up for {uri}: {why}", uri=uri, why=failure.getErrorMessage())

    async def wake(self, account: str, uri: str) -> str:
        """Wake ``uri`` if it has a token; say what happened (``wakeup client``)."""
        found = await self.tokens.push_token(account, uri)
        if not found or not found.get("token"):
            return "no push token"
        kind, token = found.get("type", ""), found["token"]
        route = self.route(kind)
        if route is None:
            return f"push kind {clean(kind)} is not supported"
        client = (account, uri)
        decision = self.rules.ask(client, route, self.reactor.seconds(), self._open(route))
        if decision is Decision.SEND:
            return await self._send(client, route, kind, token)
        if decision is Decision.DEFERRED:
            self._schedule(route)
            return "deferred: the push service is not reachable now; sent when it is"
        if decision is Decision.LIMITED:
            return "limited: this client was woken a moment ago"
        return "dropped: too many wake-ups waiting"

    def route(self, kind: str) -> str | None:
        if kind in ("apns", "voip"):
            return DIRECT_APNS if self.direct is not None else CPS_APNS
        if kind == "fcm":
            return CPS_FCM
        return None

    def _open(self, route: str) -> bool:
        # direct APNs needs the link for its provider tokens too
        return self.link.active

    # -- sending -----------------------------------------------------------------

    async def _send(self, client: tuple[str, str], route: str, kind: str, token: str) -> str:
        account, uri = client
        try:
            if route == DIRECT_APNS and self.direct is not None:
                answer = await self.direct.wake(token, voip=kind == "voip")
            else:
                answer = _outcome(await self.link.call(push_link.Wake, kind=kind, token=token))
        except (LinkDown, defer.TimeoutError, push_link.Malformed) as exc:
            answer = Answer(Outcome.LATER, clean(exc) or type(exc).__name__)
        except push_link.Unsupported as exc:
            answer = Answer(Outcome.REFUSED, clean(exc))
        except Exception as exc:
            # the link broke under the call (connection lost)
            answer = Answer(Outcome.LATER, clean(exc) or type(exc).__name__)
        now = self.reactor.seconds()
        if answer.outcome is Outcome.SENT:
            self.rules.sent(route)
            log.info("wake-up sent to {uri} ({route})", uri=uri, route=route)
            return "sent"
        if answer.outcome is Outcome.UNREGISTERED:
            self.rules.unregistered(route)
            removed = await self.tokens.forget_push_token(account, uri, token)
            log.info(
                "push token of {uri} is no longer valid ({why}){removed}",
                uri=uri,
                why=answer.reason,
                removed=": removed" if removed else "",
            )
            return f"unregistered: {answer.reason}; the token was removed"
        if answer.outcome is Outcome.LATER:
            delay = self.rules.later(client, route, now, answer.retry_after)
            log.warn(
                "wake-up of {uri} not sent ({why}): {route} backs off {delay:.0f} s",
                uri=uri,
                why=answer.reason,
                route=route,
                delay=delay,
            )
            self._schedule(route)
            return f"deferred: {answer.reason}; sent again in {delay:.0f} s"
        self.rules.refused()
        log.warn("wake-up of {uri} refused: {why}", uri=uri, why=answer.reason)
        return f"refused: {answer.reason}"

    def _schedule(self, route: str) -> None:
        """Send the route's deferred wakes once it is open again."""
        if route in self.timers or not self.link.active:
            return  # a timer is set, or the next login releases them
        state = self.rules.routes.get(route)
        delay = max(0.0, (state.blocked_until if state else 0.0) - self.reactor.seconds())
        self.timers[route] = self.reactor.callLater(delay, self._release, route)

    def _release(self, route: str) -> None:
        self.timers.pop(route, None)
        if not self.link.active:
            return
        for client in self.rules.due(route, self.reactor.seconds()):
            d = defer.ensureDeferred(self._resend(client, route))
            d.addErrback(self._failed, client[1])

    async def _resend(self, client: tuple[str, str], route: str) -> None:
        found = await self.tokens.push_token(*client)
        if found and found.get("token") and self.route(found.get("type", "")) == route:
            await self._send(client, route, found.get("type", ""), found["token"])

    def _link_up(self) -> None:
        if self.direct is not None and self.link.skew is not None:
            self.direct.tokens.note_skew(self.link.skew)
        for route in list(self.rules.routes):
            self._schedule(route)

    def stop(self) -> Deferred[None]:
        """Cancel the back-off timers and close the direct APNs connection."""
        for timer in self.timers.values():
            if timer.active():
                timer.cancel()
        self.timers.clear()
        return self.direct.close() if self.direct is not None else defer.succeed(None)

    # -- show services -----------------------------------------------------------

    def status(self) -> str:
        """The ``push`` row of ``show services``."""
        state = "active" if self.link.active else "inactive"
        notes = []
        if self.direct is not None:
            notes.append("direct")
            skew = self.direct.tokens.skew
            if skew is not None and abs(skew) > MAX_SKEW:
                notes.append(f"clock skew {skew:.0f} s")
        counters = self.rules.counters
        notes.append(
            " ".join(
                f"{c.value} {counters[c]}"
                for c in (Counter.SENT, Counter.LIMITED, Counter.FAILED, Counter.UNREGISTERED)
            )
        )
        waiting = self.rules.waiting()
        if waiting:
            notes.append(f"waiting {waiting}")
        return f"{state} ({', '.join(notes)})"
