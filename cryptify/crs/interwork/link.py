"""The inter-working link (``iw-port``, 8080): TLS-PSK to other operators' CRS instances.

Each instance configured in ``iw-crs.conf`` (``iw-crs IP SECRET``) is a
*peer*.  For every peer the link

- keeps one outgoing TLS-PSK connection to ``IP`` (after ``addr-map``) on
  ``iw-port``, reconnecting with backoff;
- accepts incoming connections only from a source address that is a
  peer's ``IP`` (or its ``addr-map`` value): any other source is closed on
  accept, before TLS, and logged once per address; at most
  :data:`INBOUND_PER_PEER` connections per peer are held;
- uses as the TLS-PSK key HMAC-SHA-256 of :data:`PSK_LABEL` under the
  peer's shared secret (so a short secret still makes a full key, and the
  secret itself never enters TLS); the listener picks the key by the
  connection's source address, whatever identity the client sends, so a
  connection from a peer's address with another peer's secret fails the
  handshake.

On a connection each side first sends ``iw-hello`` (its CRS version),
then ``iw-beat`` every :data:`BEAT_INTERVAL`; a connection that carries
nothing for :data:`IDLE_TIMEOUT` is dropped.  Frames are the pool link's
(:mod:`cryptify.crs.pool.wire`: a length, then strict CBOR); a frame of a
type nobody here handles is ignored, so a newer peer can talk to an older
one; a handler's :class:`~cryptify.crs.pool.wire.WireError` drops the
connection, and any other error of a handler is logged (this side's
fault: the connection stays).  :meth:`IwLink.update` applies a changed ``iw-crs.conf`` without a
restart: new peers are connected, removed ones disconnected.  The port is
open only while there is at least one peer.

``show iw-crs`` (:meth:`IwLink.rows`) gives each peer's signal link: up
when a connection either way has exchanged hellos and is alive, with the
outgoing and incoming connections' own states and the version the peer
announced; the data link (media between the two operators' relays, UDP
``relay`` port) comes from the calls (:attr:`IwLink.data_state`).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IAddress, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from cryptify.config.crs_model import CrsConfig
from cryptify.config.iw_crs import IwCrs, IwCrsConfig
from cryptify.crs.pool.wire import Envelope, FrameReader, WireError, decode_frame, encode_frame
from cryptify.protocols.streams import IdleTimer, abort
from cryptify.protocols.tls_psk import PskClientContextFactory, PskServerContextFactory
from cryptify.reactor import IReactor
from cryptify.service import ListenService, StartupError

log = Logger(namespace="cryptify.crs.interwork")

#: What the derivation of a peer's TLS-PSK key from its shared secret mixes in.
PSK_LABEL = b"crs inter-working link psk"
#: The PSK identity an outgoing connection sends (the listener ignores it).
PSK_IDENTITY = b"crs-iw"
#: Seconds between two beats on a connection.
BEAT_INTERVAL = 1.0
#: A connection that carries no frame for this long is dropped (also
#: bounds a TLS handshake that never ends).
IDLE_TIMEOUT = 9.0
#: Incoming connections held at once from one peer.
INBOUND_PER_PEER = 4
#: Refused source addresses remembered (each is logged once).
MAX_REFUSED_LOGGED = 1024
#: Longest version text accepted in a hello.
MAX_VERSION = 64

HELLO = "iw-hello"
BEAT = "iw-beat"


def iw_psk(secret: str) -> bytes:
    """A peer's TLS-PSK key: HMAC-SHA-256 of :data:`PSK_LABEL` under its
    shared secret (32 octets)."""
    return hmac.new(secret.encode("utf-8"), PSK_LABEL, "sha256").digest()


def _host(address: IAddress | None) -> str | None:
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else None


class _IwProtocol(Protocol):
    """One connection to or from a peer: hello, then beats, both ways."""

    def __init__(self, link: IwLink, peer: str, outgoing: bool) -> None:
        self.link = link
        self.peer = peer
        self.outgoing = outgoing
        self.reader = FrameReader()
        #: The peer's hello arrived (the link is up on this connection).
        self.ready = False
        self.idle = IdleTimer(link.reactor, IDLE_TIMEOUT, self._silent)

    def connectionMade(self) -> None:
        self.link._open.add(self)
        self.idle.reset()
        # Requests and answers go on different connections (each side
        # sends on its outgoing one first): without this, a frame written
        # while the previous one is unacknowledged waits for the peer's
        # delayed ACK (Nagle), tens of milliseconds per post or call step.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self.send(HELLO, {"version": self.link.version})

    def dataReceived(self, data: bytes) -> None:
        try:
            for payload in self.reader.feed(data):
                frame = decode_frame(payload)
                if not isinstance(frame, Envelope):
                    raise WireError("a pool heartbeat on an inter-working link")
                self.idle.reset()
                if frame.type == HELLO:
                    self._hello(frame.fields)
                elif not self.ready:
                    raise WireError(f"a {frame.type!r} frame before the hello")
                elif frame.type != BEAT:
                    self.link._dispatch(self.peer, frame)
        except WireError as exc:
            log.warn(
                "inter-working link: dropping the {direction} connection of {peer}: {why}",
                direction="outgoing" if self.outgoing else "incoming",
                peer=self.peer,
                why=str(exc),
            )
            self.idle.stop()
            abort(self.transport)

    def _hello(self, fields: dict[str, object]) -> None:
        version = fields.get("version")
        if set(fields) != {"version"} or not isinstance(version, str):
            raise WireError("a hello without exactly its version")
        if not 1 <= len(version) <= MAX_VERSION or not version.isprintable():
            raise WireError("a hello with an unprintable or overlong version")
        if self.ready:
            raise WireError("a second hello")
        self.ready = True
        self.link._up(self, version)

    def _silent(self) -> None:
        log.info(
            "inter-working link: dropping the {direction} connection of {peer}: silent for {idle}s",
            direction="outgoing" if self.outgoing else "incoming",
            peer=self.peer,
            idle=IDLE_TIMEOUT,
        )
        abort(self.transport)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.idle.stop()
        self.link._open.discard(self)
        self.link._lost(self)

    def send(self, frame_type: str, fields: dict[str, object]) -> None:
        if self.transport is not None:
            self.transport.write(encode_frame(frame_type, fields))


class _InboundFactory(ServerFactory):
    """Builds the protocol inside TLS for a connection :class:`_Gate` let in."""

    noisy = False

    def __init__(self, link: IwLink) -> None:
        self.link = link

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        return self.link._accept(_host(addr))


class _Gate(ServerFactory):
    """The plain TCP listener's factory: a connection from a source that is
    no peer (or one over its peer's limit) is closed on accept, before any
    TLS; the others get TLS-PSK around :class:`_InboundFactory`'s protocol.
    (A factory wrapped by ``listenSSL`` may not refuse a connection: TLS
    would wrap nothing.)"""

    noisy = False

    def __init__(self, link: IwLink, tls: PskServerContextFactory) -> None:
        self.link = link
        self.tls = TLSMemoryBIOFactory(tls, False, _InboundFactory(link))

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        if not self.link._admit(_host(addr)):
            return None
        return self.tls.buildProtocol(addr)


class _OutboundFactory(Factory):
    noisy = False

    def __init__(self, link: IwLink, peer: str) -> None:
        self.link = link
        self.peer = peer

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return _IwProtocol(self.link, self.peer, outgoing=True)


def _tcp_endpoint(reactor: IReactor, host: str, port: int) -> IStreamClientEndpoint:
    if ":" in host:
        return TCP6ClientEndpoint(reactor, host, port, timeout=int(IDLE_TIMEOUT))
    return TCP4ClientEndpoint(reactor, host, port, timeout=int(IDLE_TIMEOUT))


class IwLink(service.MultiService):
    """The inter-working link of this instance (see the module docstring).

    @param endpoint: makes the plain TCP endpoint to ``(address, port)``;
        the default connects with TCP.
    @param listen: binds the listener, given its plain TCP factory (which
        adds TLS-PSK itself; default: ``listenTCP`` on ``iw-port`` of the
        client listener's interface).
    """

    def __init__(
        self,
        config: CrsConfig,
        peers: IwCrsConfig,
        reactor: IReactor,
        version: str,
        *,
        endpoint: Callable[[str, int], IStreamClientEndpoint] | None = None,
        listen: Callable[[ServerFactory], object] | None = None,
    ) -> None:
        service.MultiService.__init__(self)
        self.config = config
        self.reactor = reactor
        self.version = version[:MAX_VERSION]
        self._make_endpoint = endpoint or (lambda host, port: _tcp_endpoint(reactor, host, port))
        self.peers: dict[str, IwCrs] = {}
        self._clients: dict[str, ClientService] = {}
        self._open: set[_IwProtocol] = set()
        self._refused: set[str] = set()
        #: Incoming connections held per peer (counted from accept, so a
        #: TLS handshake that never ends counts too).
        self._inbound: dict[str, int] = {}
        self._versions: dict[str, str] = {}
        self._handlers: dict[str, Callable[[str, dict[str, object]], None]] = {}
        self._listeners: list[Callable[[str, bool], None]] = []
        #: The data-link columns of a peer (the inter-working calls'
        #: :meth:`~cryptify.crs.interwork.calls.IwCalls.data_state`).
        self.data_state: Callable[[str], tuple[str, str, str]] | None = None
        self._unhandled: set[str] = set()
        g = config.global_
        gate = _Gate(self, PskServerContextFactory(self._lookup))
        port = g.iw_port
        if listen is None:
            host = g.listen.host

            def bind() -> object:
                return reactor.listenTCP(port, gate, interface=host)

        else:

            def bind() -> object:
                return listen(gate)

        #: Listening only while there are peers (the port stays closed on a
        #: CRS that inter-works with nobody); :meth:`update` opens and closes it.
        self.listener = ListenService("inter-working link", f"{g.listen.host}:{port}", bind)
        self._loop = LoopingCall(self._beat)
        self._loop.clock = reactor
        self.update(peers)

    # -- lifecycle -------------------------------------------------------

    def startService(self) -> None:
        service.MultiService.startService(self)
        self._loop.start(BEAT_INTERVAL, now=False).addErrback(
            lambda f: log.failure("inter-working beat loop stopped", f)
        )

    def stopService(self) -> object:
        if self._loop.running:
            self._loop.stop()
        result = service.MultiService.stopService(self)
        for proto in list(self._open):
            abort(proto.transport)
        return result

    def update(self, peers: IwCrsConfig) -> None:
        """Apply ``iw-crs.conf`` as it is now: connect to new peers, drop
        removed ones (and their connections), take changed secrets."""
        wanted = {p.ip: p for p in peers.instances}
        for ip in list(self.peers):
            old = self.peers[ip]
            new = wanted.get(ip)
            if new is None or new.secret != old.secret:
                self._remove(ip)
        for ip, peer in wanted.items():
            if ip not in self.peers:
                self._add(peer)
            else:
                self.peers[ip] = peer
        self._refused.clear()
        self._listen(bool(self.peers))

    def _listen(self, wanted: bool) -> None:
        listening = self.listener in self.services
        if wanted and not listening:
            try:
                service.MultiService.addService(self, self.listener)
            except StartupError as exc:
                if not self.running:
                    raise
                # Asked at run time (add iw-crs): say so; the next change retries.
                service.MultiService.removeService(self, self.listener)
                log.error("inter-working link: {why}", why=str(exc))
        elif listening and not wanted:
            service.MultiService.removeService(self, self.listener)

    def _add(self, peer: IwCrs) -> None:
        g = self.config.global_
        self.peers[peer.ip] = peer
        tls = PskClientContextFactory(PSK_IDENTITY, iw_psk(peer.secret))
        client = ClientService(
            wrapClientTLS(tls, self._make_endpoint(g.map_address(peer.ip), g.iw_port)),
            _OutboundFactory(self, peer.ip),
            retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=30.0),
            clock=self.reactor,
        )
        self._clients[peer.ip] = client
        service.MultiService.addService(self, client)
        log.info("inter-working peer {ip} added", ip=peer.ip)

    def _remove(self, ip: str) -> None:
        self.peers.pop(ip, None)
        self._versions.pop(ip, None)
        client = self._clients.pop(ip, None)
        if client is not None:
            service.MultiService.removeService(self, client)
        for proto in [p for p in self._open if p.peer == ip]:
            abort(proto.transport)
        log.info("inter-working peer {ip} removed", ip=ip)
        self._tell(ip, False)

    # -- what the CRS asks -----------------------------------------------

    def handle(self, frame_type: str, handler: Callable[[str, dict[str, object]], None]) -> None:
        """Call ``handler(peer_ip, fields)`` for each frame of ``frame_type``."""
        if frame_type in self._handlers or frame_type in (HELLO, BEAT):
            raise ValueError(f"inter-working frame type {frame_type!r} already has a handler")
        self._handlers[frame_type] = handler

    def on_link(self, listener: Callable[[str, bool], None]) -> None:
        """Call ``listener(peer, up)`` when ``peer``'s signal link comes up
        (a first connection exchanged hellos) or goes down (the last one
        closed, or the peer was removed)."""
        self._listeners.append(listener)

    def operator(self, peer: str) -> str | None:
        """Who runs ``peer``: instances configured with the same shared
        secret are one operator's (an opaque name, never the secret); None
        when ``peer`` is not configured."""
        found = self.peers.get(peer)
        if found is None:
            return None
        return hmac.new(iw_psk(found.secret), b"operator", "sha256").hexdigest()[:16]

    def configured(self) -> list[str]:
        """The peers of ``iw-crs.conf``, by address."""
        return list(self.peers)

    def link_up(self, peer: str) -> bool:
        return self.state(peer)[0] == "up"

    def _tell(self, peer: str, up: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(peer, up)
            except Exception:
                log.failure("inter-working link listener failed")

    def send(self, peer: str, frame_type: str, fields: dict[str, object]) -> bool:
        """Send a frame to ``peer`` on a ready connection (its outgoing one
        first); False when none is ready (nothing is queued)."""
        ready = sorted(
            (p for p in self._open if p.peer == peer and p.ready), key=lambda p: not p.outgoing
        )
        if not ready:
            return False
        ready[0].send(frame_type, fields)
        return True

    def state(self, peer: str) -> tuple[str, str, str]:
        """(link, outgoing, incoming) signal states of ``peer``."""
        outgoing = any(p.ready and p.outgoing for p in self._open if p.peer == peer)
        incoming = any(p.ready and not p.outgoing for p in self._open if p.peer == peer)
        link = "up" if outgoing or incoming else "down"
        return link, "up" if outgoing else "down", "up" if incoming else "down"

    def rows(self) -> list[tuple[str, str, str, str, str, str, str, str]]:
        """``show iw-crs``: IW-CRS SIGNAL-LINK SIGNAL-OUTGOING SIGNAL-INCOMING
        DATA-LINK DATA-OUTGOING DATA-INCOMING VERSION, one row per peer."""
        rows = []
        for ip in self.peers:
            link, outgoing, incoming = self.state(ip)
            data = self.data_state(ip) if self.data_state is not None else ("-", "-", "-")
            rows.append((ip, link, outgoing, incoming, *data, self._versions.get(ip, "-")))
        return rows

    # -- the link --------------------------------------------------------

    def _peer_of(self, host: str | None) -> str | None:
        """The peer whose configured address (or its addr-map value) is ``host``."""
        if host is None:
            return None
        if host in self.peers:
            return host
        g = self.config.global_
        for ip in self.peers:
            if g.map_address(ip) == host:
                return ip
        return None

    def _admit(self, host: str | None) -> bool:
        """Whether a connection from ``host`` may go on to TLS: it is a
        peer's address and the peer holds fewer than
        :data:`INBOUND_PER_PEER` connections (TLS handshakes included)."""
        peer = self._peer_of(host)
        if peer is None:
            source = host or "?"
            if source not in self._refused and len(self._refused) < MAX_REFUSED_LOGGED:
                self._refused.add(source)
                log.warn(
                    "inter-working link: refusing connections from {source}: not an iw-crs peer",
                    source=source,
                )
            return False
        if self._inbound.get(peer, 0) >= INBOUND_PER_PEER:
            log.warn("inter-working link: refusing {peer}: too many connections", peer=peer)
            return False
        return True

    def _accept(self, host: str | None) -> Protocol | None:
        peer = self._peer_of(host)
        if not self._admit(host) or peer is None:
            return None
        self._inbound[peer] = self._inbound.get(peer, 0) + 1
        return _IwProtocol(self, peer, outgoing=False)

    def _lookup(self, identity: bytes, address: IAddress | None) -> bytes | None:
        peer = self._peer_of(_host(address))
        return None if peer is None else iw_psk(self.peers[peer].secret)

    def _up(self, proto: _IwProtocol, version: str) -> None:
        self._versions[proto.peer] = version
        if not any(p.ready for p in self._open if p.peer == proto.peer and p is not proto):
            log.info(
                "inter-working link to {peer} up ({direction}), version {version}",
                peer=proto.peer,
                direction="outgoing" if proto.outgoing else "incoming",
                version=version,
            )
            self._tell(proto.peer, True)

    def _lost(self, proto: _IwProtocol) -> None:
        if not proto.outgoing and self._inbound.get(proto.peer, 0) > 0:
            self._inbound[proto.peer] -= 1
        if proto.ready and self.state(proto.peer)[0] == "down":
            if proto.peer in self.peers:
                log.warn("inter-working link to {peer} down", peer=proto.peer)
            self._tell(proto.peer, False)

    def _dispatch(self, peer: str, envelope: Envelope) -> None:
        handler = self._handlers.get(envelope.type)
        if handler is None:
            if envelope.type not in self._unhandled:
                self._unhandled.add(envelope.type)
                log.warn(
                    "inter-working link: ignoring frames of type {type} from {peer}",
                    type=envelope.type,
                    peer=peer,
                )
            return
        try:
            handler(peer, envelope.fields)
        except WireError:
            raise  # the peer's fault: its connection is dropped
        except Exception:
            # This side's fault: the peer's connection (and the link) stays.
            log.failure(
                "inter-working link: a {type} frame from {peer} not handled",
                type=envelope.type,
                peer=peer,
            )

    def _beat(self) -> None:
        for proto in list(self._open):
            if proto.ready:
                proto.send(BEAT, {})


__all__ = ["IwLink", "iw_psk"]
