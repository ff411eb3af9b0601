"""``cryptify-push``: the server side of the push link (``docs/push.md``).

Each connection gets a :class:`PushLocator`: the first request must be a
good ``Login`` (secret compared in constant time), after which ``Wake``
is forwarded to APNs or FCM and answered once the provider answered, and
``ProviderToken`` hands out APNs provider tokens for direct APNs.
"""

from __future__ import annotations

import hmac
import json
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from cryptify.protocols import push_link
from cryptify.protocols.push_link import (
    MAX_ID,
    MAX_KIND,
    MAX_SECRET,
    MAX_TOKEN,
    Malformed,
    NotAvailable,
    Unauthorized,
    Unsupported,
    check_field,
)
from cryptify.push.answers import Answer, Outcome
from cryptify.push.apns import ApnsSender, SignedTokens
from cryptify.push.config import PushConfig, PushConfigError, read_secret_file
from cryptify.push.fcm import AccessTokens, FcmSender, ServiceAccount, ServiceAccountError
from cryptify.push.h2client import H2Client
from cryptify.reactor import IReactor

log = Logger(namespace="cryptify.push")

#: Seconds a connection may stay without a good login.
LOGIN_WITHIN = 30.0
#: Connections at once, at most.
MAX_CONNECTIONS = 200
#: Wakes in flight on one connection, at most (more are answered ``later``).
MAX_IN_FLIGHT = 100
#: Compared against when the id is unknown, so that both take the same time.
_DUMMY_SECRET = b"\x00" * 32


class Providers:
    """The senders the push server forwards wakes to."""

    def __init__(
        self,
        reactor: IReactor,
        apns_sender: ApnsSender | None = None,
        signed: SignedTokens | None = None,
        apns_endpoint: str = "",
        fcm_sender: FcmSender | None = None,
    ) -> None:
        self.reactor = reactor
        self.apns = apns_sender
        self.signed = signed
        self.apns_endpoint = apns_endpoint
        self.fcm = fcm_sender
        self.clients: list[H2Client] = []

    @classmethod
    def from_config(cls, cfg: PushConfig, reactor: IReactor) -> Providers:
        """Load keys and build senders (raises PushConfigError); opens nothing."""
        providers = cls(reactor)
        if cfg.apns is not None:
            pem = read_secret_file(cfg.apns.key_file, "APNs key")
            try:
                key = load_pem_private_key(pem, None)
            except (ValueError, TypeError) as exc:
                raise PushConfigError(f"{cfg.apns.key_file}: not a PEM private key") from exc
            providers.signed = SignedTokens(key, cfg.apns.key_id, cfg.apns.team_id, reactor.seconds)
            client = H2Client(reactor, cfg.apns.endpoint, cfg.trust)
            providers.clients.append(client)
            providers.apns = ApnsSender(client, providers.signed, cfg.apns.topic, reactor.seconds)
            providers.apns_endpoint = cfg.apns.endpoint
            try:
                providers.signed.current()
            except ValueError as exc:
                raise PushConfigError(f"{cfg.apns.key_file}: {exc}") from exc
        if cfg.fcm_account is not None:
            raw = read_secret_file(cfg.fcm_account, "service-account file")
            try:
                account = ServiceAccount.from_json(json.loads(raw), cfg.fcm_account)
            except (ValueError, ServiceAccountError) as exc:
                raise PushConfigError(str(exc)) from exc
            token_origin = "https://" + urlsplit(account.token_uri).netloc
            token_client = H2Client(reactor, token_origin, cfg.trust)
            send_client = H2Client(reactor, cfg.fcm_endpoint, cfg.trust)
            providers.clients += [token_client, send_client]
            providers.fcm = FcmSender(
                send_client, AccessTokens(account, token_client, reactor.seconds)
            )
        return providers

    async def wake(self, kind: str, token: str) -> Answer:
        if kind in ("apns", "voip") and self.apns is not None:
            return await self.apns.wake(token, voip=kind == "voip")
        if kind == "fcm" and self.fcm is not None:
            return await self.fcm.wake(token)
        raise Unsupported(f"no provider for push kind {kind!r} on this push server")

    def close(self) -> Deferred[list[None]]:
        return defer.gatherResults([c.close() for c in self.clients])


class PushLocator(amp.CommandLocator):
    """The commands of one connection, and whether it has logged in."""

    def __init__(self, server: PushServerFactory, peer: str) -> None:
        self.server = server
        self.peer = peer
        self.client: str | None = None
        self.in_flight = 0

    def _need_login(self) -> str:
        if self.client is None:
            log.warn("push link from {peer}: request before login", peer=self.peer)
            raise Unauthorized("log in first")
        return self.client

    @push_link.Login.responder
    def login(self, id: str, secret: str) -> dict[str, object]:
        if self.client is not None:
            raise Malformed("already logged in")
        given = secret.encode("utf-8")[:MAX_SECRET]
        expected = self.server.secrets.get(id[:MAX_ID])
        good = hmac.compare_digest(given, expected if expected is not None else _DUMMY_SECRET)
        if expected is None or not good:
            log.warn(
                "push link from {peer}: login refused for client id {id}",
                peer=self.peer,
                id=id[:MAX_ID],
            )
            raise Unauthorized("wrong client id or secret")
        self.client = id
        log.info("push link from {peer}: client {id} logged in", peer=self.peer, id=id)
        return {"server": self.server.name, "time": self.server.reactor.seconds()}

    @push_link.Wake.responder
    def wake(self, kind: str, token: str) -> Deferred[object] | dict[str, object]:
        self._need_login()
        check_field(kind, MAX_KIND, "kind")
        check_field(token, MAX_TOKEN, "token")
        if self.in_flight >= MAX_IN_FLIGHT:
            return {"outcome": push_link.LATER, "retry_after": 1.0, "reason": "busy"}
        self.in_flight += 1
        done = defer.ensureDeferred(self.server.providers.wake(kind, token))

        def answered(answer: Answer) -> dict[str, object]:
            self.server.counters[answer.outcome.value] += 1
            if answer.outcome is Outcome.SENT:
                return {"outcome": push_link.SENT}
            if answer.outcome is Outcome.UNREGISTERED:
                return {"outcome": push_link.UNREGISTERED, "reason": answer.reason}
            if answer.outcome is Outcome.LATER:
                log.warn("{kind} provider busy or down: {why}", kind=kind, why=answer.reason)
                return {
                    "outcome": push_link.LATER,
                    "retry_after": float(answer.retry_after or 0),
                    "reason": answer.reason,
                }
            log.warn("{kind} provider refused a wake: {why}", kind=kind, why=answer.reason)
            return {"outcome": push_link.REFUSED, "reason": answer.reason}

        def settled(result: object) -> object:
            self.in_flight -= 1
            return result

        return done.addCallback(answered).addBoth(settled)

    @push_link.ProviderToken.responder
    def provider_token(self) -> dict[str, object]:
        self._need_login()
        signed = self.server.providers.signed
        if signed is None or self.server.providers.apns is None:
            raise NotAvailable("this push server has no APNs key")
        token, issued = signed.current()
        return {
            "token": token,
            "issued": issued,
            "endpoint": self.server.providers.apns_endpoint,
            "topic": self.server.providers.apns.topic,
            "time": self.server.reactor.seconds(),
        }

    @push_link.Ping.responder
    def ping(self) -> dict[str, object]:
        self._need_login()
        return {}


class PushServerProtocol(amp.AMP):
    """One CRS connection; hung up when it does not log in in time."""

    def __init__(self, factory: PushServerFactory) -> None:
        self.factory = factory
        self.commands = PushLocator(factory, "?")
        self.login_timer: IDelayedCall | None = None
        amp.AMP.__init__(self, locator=self.commands)

    def connectionMade(self) -> None:
        peer = self.transport.getPeer() if self.transport is not None else None
        self.commands.peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self.factory.connections.add(self)
        self.login_timer = self.factory.reactor.callLater(LOGIN_WITHIN, self._no_login)
        amp.AMP.connectionMade(self)

    def _no_login(self) -> None:
        self.login_timer = None
        if self.commands.client is None:
            log.warn("push link from {peer}: no login in time", peer=self.commands.peer)
            if self.transport is not None:
                self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.connections.discard(self)
        if self.login_timer is not None and self.login_timer.active():
            self.login_timer.cancel()
        self.login_timer = None
        amp.AMP.connectionLost(self, reason)


class PushServerFactory(ServerFactory):
    """Accepts CRS connections for ``cryptify-push``."""

    def __init__(
        self, reactor: IReactor, name: str, secrets: dict[str, bytes], providers: Providers
    ) -> None:
        self.reactor = reactor
        self.name = name
        self.secrets = secrets
        self.providers = providers
        self.connections: set[PushServerProtocol] = set()
        self.counters = dict.fromkeys((o.value for o in Outcome), 0)

    def buildProtocol(self, addr: IAddress | None) -> PushServerProtocol | None:
        if len(self.connections) >= MAX_CONNECTIONS:
            log.warn("push link from {addr}: too many connections", addr=addr)
            return None
        return PushServerProtocol(self)


def load_secrets(cfg: PushConfig) -> dict[str, bytes]:
    """Each client's secret, from its 0600 file (raises PushConfigError)."""
    secrets = {}
    for client, path in cfg.clients.items():
        secret = read_secret_file(path, "client secret").strip()
        if not secret:
            raise PushConfigError(f"{path}: the secret of client {client} is empty")
        secrets[client] = secret
    return secrets
