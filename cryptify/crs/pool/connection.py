"""The pool link's connections: one TLS-PSK connection (either direction)
carrying frames, the factories that make them, the PSK and the
incarnation file.  :class:`~cryptify.crs.pool.wiring.PoolLink` owns them
and is what they report to (see its module docstring for the rules).
"""

from __future__ import annotations

import hmac
import os
from typing import TYPE_CHECKING, Any

from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IAddress, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.crs.pool.core import DOWN_AFTER, PoolError
from cryptify.crs.pool.wire import Envelope, FrameReader, WireError, decode_frame
from cryptify.files import write_atomically
from cryptify.protocols.streams import IdleTimer, abort

if TYPE_CHECKING:
    from cryptify.crs.pool.wiring import PoolLink

log = Logger(namespace="cryptify.crs.pool")

#: A pool-link connection that delivers no frame for this long is dropped
#: (this also bounds a TLS handshake that never finishes).
IDLE_TIMEOUT = 3 * DOWN_AFTER
#: Incoming pool-link connections held at once, per other member.
INBOUND_PER_PEER = 4
#: Where the incarnation is kept, under ``data-dir``.
INCARNATION_FILE = "pool-incarnation"
#: Longest incarnation file read (a decimal number).
MAX_INCARNATION_FILE = 32
#: What the derivation of the pool link's PSK from the pool key mixes in.
PSK_LABEL = b"crs pool link psk"


def pool_psk(key: str) -> bytes:
    """The pool link's TLS-PSK key: HMAC-SHA-256 of :data:`PSK_LABEL`
    under the ``[GLOBAL]`` ``key`` (32 octets, whatever the key's length)."""
    return hmac.new(key.encode("utf-8"), PSK_LABEL, "sha256").digest()


def next_incarnation(data_dir: str, now: float) -> int:
    """This start's incarnation, stored before it is used.

    It is one more than the stored one, and at least the current Unix time
    in seconds, so it grows across restarts even when the file was lost
    (the clock) or the clock went back (the file).  An unreadable file
    counts as absent.  ``now``: the Unix time, from the reactor's clock.
    """
    path = os.path.join(data_dir, INCARNATION_FILE)
    stored = 0
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_INCARNATION_FILE + 1)
        if len(text) <= MAX_INCARNATION_FILE and text.strip().isascii() and text.strip().isdigit():
            stored = int(text)
        else:
            log.warn("ignoring the unreadable {path}", path=path)
    except FileNotFoundError:
        pass
    wall = int(now)
    incarnation = max(stored + 1, wall)
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    write_atomically(path, b"%d\n" % incarnation, 0o600)
    return incarnation


class _LinkProtocol(Protocol):
    """One pool-link connection (either direction): frames in, heartbeats out."""

    def __init__(self, link: PoolLink, peer: str | None) -> None:
        self.link = link
        #: The member on the other end: known for outgoing connections,
        #: learnt from the first frame for incoming ones.
        self.peer = peer
        self.reader = FrameReader()
        self.outgoing = peer is not None
        self.idle = IdleTimer(link.reactor, IDLE_TIMEOUT, self.timeoutConnection)

    def connectionMade(self) -> None:
        self.link._open.add(self)
        self.idle.reset()
        # a frame written while the previous one is unacknowledged must not
        # wait for the peer's delayed ACK (Nagle), as on the iw link
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        if self.outgoing:
            self.link._connected(self)

    def dataReceived(self, data: bytes) -> None:
        try:
            for payload in self.reader.feed(data):
                frame = decode_frame(payload)
                if isinstance(frame, Envelope):
                    if self.peer is None or self not in self.link._conns:
                        raise WireError(f"a {frame.type!r} frame before the first heartbeat")
                    self.link._alive(self.peer)
                    try:
                        self.link._dispatch(self.peer, frame)
                    except (WireError, PoolError):
                        raise  # the peer's fault: its connection is dropped
                    except Exception:  # this side's fault: the connection stays
                        log.failure(
                            "pool link: a {type} frame from {peer} failed",
                            type=frame.type,
                            peer=self.peer,
                        )
                    self.idle.reset()
                    continue
                first = self.peer is None
                if first:
                    self.peer = frame.beat.sender
                elif frame.beat.sender != self.peer:
                    raise WireError(f"sender {frame.beat.sender!r} on {self.peer!r}'s connection")
                self.link._received(frame.beat, frame.pid)
                if first:
                    self.link._connected(self)
                self.idle.reset()
        except (WireError, PoolError) as exc:
            log.warn(
                "pool link: dropping the connection from {address}: {why}",
                address=self._address(),
                why=str(exc),
            )
            self.idle.stop()
            abort(self.transport)

    def timeoutConnection(self) -> None:
        if self.link.stalled():
            # The silence may be this reactor's own: judge once it has read.
            self.idle.reset()
            return
        log.info(
            "pool link: dropping the connection from {address}: silent for {idle}s",
            address=self._address(),
            idle=IDLE_TIMEOUT,
        )
        abort(self.transport)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.idle.stop()
        self.link._open.discard(self)
        self.link._conns.discard(self)
        if not self.outgoing:
            self.link._inbound -= 1
        self.link._closed(self)

    def send(self, frame: bytes) -> None:
        self.transport.write(frame)  # type: ignore[union-attr]

    def _address(self) -> str:
        if self.transport is None:
            return "?"
        peer: IAddress = self.transport.getPeer()
        return str(getattr(peer, "host", peer))


class _Refused(Protocol):
    """A connection over the limit, closed as soon as it is made.  (The
    listener is ``listenSSL``'s: its factory may not refuse by returning
    None, or TLS would wrap nothing and fail when the connection ends.)"""

    def connectionMade(self) -> None:
        abort(self.transport)


class _InboundFactory(Factory):
    noisy = False

    def __init__(self, link: PoolLink) -> None:
        self.link = link

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        link = self.link
        if link._inbound >= link.max_inbound:
            log.warn("pool link: refusing {addr}: too many connections", addr=addr)
            return _Refused()
        link._inbound += 1
        return _LinkProtocol(link, None)


class _OutboundFactory(Factory):
    #: Not "Starting factory" in crs.log at every reconnect to a peer that is down.
    noisy = False

    def __init__(self, link: PoolLink, peer: str) -> None:
        self.link = link
        self.peer = peer

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return _LinkProtocol(self.link, self.peer)


def _tcp_endpoint(reactor: Any, host: str, port: int) -> IStreamClientEndpoint:
    if ":" in host:
        return TCP6ClientEndpoint(reactor, host, port, timeout=int(DOWN_AFTER) + 2)
    return TCP4ClientEndpoint(reactor, host, port, timeout=int(DOWN_AFTER) + 2)
