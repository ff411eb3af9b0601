"""The media bridge's sockets on a real reactor: every leg a plain
non-blocking UDP socket in one epoll set of our own, which the reactor sees
as a single reader (:class:`MediaPoller`; the C path's legs are in C's own
set, :class:`CPoller`), each leg's port a :class:`SocketPort`.  One wakeup
serves every leg that has a datagram, with one ``recv`` each (``recvmmsg``
of up to 32 in C) and no per-packet reactor dispatch.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable

from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cryptify.cig.relay import cpath

log = Logger(namespace="cryptify.cig.bridge")

#: Bytes read per datagram (the longest RTP/SRTP packet we expect fits).
DATAGRAM_MAX = 2048
#: epoll rounds per reactor wakeup, and events per round, of the poller.
POLL_ROUNDS = 4
POLL_EVENTS = 4096
#: Receive buffer of each leg's socket.
LEG_RCVBUF = 1 << 18


@implementer(IReadDescriptor)
class MediaPoller:
    """Every leg socket in one epoll set, read by the reactor as one descriptor.

    Level-triggered: a wakeup polls (without waiting) up to
    :data:`POLL_ROUNDS` times and reads one datagram from each ready
    socket per round; what is left makes the set readable again at once.
    """

    def __init__(self, reactor: IReactorFDSet) -> None:
        self.reactor = reactor
        self._ep = select.epoll()
        self._legs: dict[int, tuple[Callable[[int], bytes], Callable[[bytes], None]]] = {}
        self._reading = False

    def fileno(self) -> int:
        return self._ep.fileno()

    def logPrefix(self) -> str:
        return "cig_relay media"

    def add(self, sock: socket.socket, receive: Callable[[bytes], None]) -> None:
        self._legs[sock.fileno()] = (sock.recv, receive)
        self._ep.register(sock.fileno(), select.EPOLLIN)
        if not self._reading:
            self._reading = True
            self.reactor.addReader(self)

    def remove(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self._legs.pop(fd, None) is not None:
            self._ep.unregister(fd)
        if not self._legs and self._reading:
            self._reading = False
            self.reactor.removeReader(self)

    def connectionLost(self, reason: Failure) -> None:
        self._reading = False

    def doRead(self) -> None:
        self.drain(POLL_ROUNDS)

    def drain(self, rounds: int) -> None:
        """Poll (without waiting) up to ``rounds`` times, one datagram per ready leg a round."""
        poll, legs = self._ep.poll, self._legs
        for _ in range(rounds):
            events = poll(0, POLL_EVENTS)
            if not events:
                return
            for fd, _mask in events:
                leg = legs.get(fd)
                if leg is None:
                    continue
                try:
                    data = leg[0](DATAGRAM_MAX)
                except OSError:
                    continue  # nothing after all, or an ICMP error report
                try:
                    leg[1](data)
                except Exception:
                    log.failure("bridge media: datagram handling failed")


class SocketPort:
    """A leg's bound UDP socket in a :class:`MediaPoller` (the parts of a
    Twisted UDP port the bridge uses: ``write``, ``getHost``,
    ``stopListening``)."""

    def __init__(
        self,
        poller: MediaPoller | None,
        sock: socket.socket,
        receive: Callable[[bytes], None],
    ) -> None:
        #: None: the leg is read by the C poller (:class:`CPoller`).
        self.poller = poller
        self.socket = sock
        #: ``write(datagram, (host, port))``: a plain ``sendto``.
        self.write: Callable[[bytes, tuple[str, int]], int] = sock.sendto
        self._host = sock.getsockname()
        if poller is not None:
            poller.add(sock, receive)

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self._host[0], self._host[1])

    def stopListening(self) -> None:
        if self.socket.fileno() >= 0:
            if self.poller is not None:
                self.poller.remove(self.socket)
            self.socket.close()


@implementer(IReadDescriptor)
class CPoller:
    """The C path's legs (:class:`cpath.CTable`'s epoll set) as one reader of
    the reactor: a wakeup reads every ready leg in C; ``read(rounds, most)``
    is the service's (packets for Python included)."""

    def __init__(
        self, reactor: IReactorFDSet, fileno: int, read: Callable[[int, int], None]
    ) -> None:
        self.reactor = reactor
        self._fileno = fileno
        self.read = read
        self.reading = False

    def fileno(self) -> int:
        return self._fileno

    def logPrefix(self) -> str:
        return "cig_relay media (C)"

    def start(self) -> None:
        if not self.reading:
            self.reading = True
            self.reactor.addReader(self)

    def stop(self) -> None:
        if self.reading:
            self.reading = False
            self.reactor.removeReader(self)

    def connectionLost(self, reason: Failure) -> None:
        self.reading = False

    def doRead(self) -> None:
        self.read(POLL_ROUNDS, cpath.BATCH)


def bind_udp(port: int, interface: str) -> socket.socket:
    """A non-blocking UDP socket bound to (interface, port); CannotListenError if not."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LEG_RCVBUF)
        sock.bind((interface, port))
    except OSError as exc:
        sock.close()
        raise CannotListenError(interface, port, exc) from None
    return sock
