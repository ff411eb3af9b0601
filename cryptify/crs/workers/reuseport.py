"""The client port shared by several processes (``SO_REUSEPORT``).

Each worker makes its own socket with ``SO_REUSEPORT``, binds the one
client address and listens; the kernel spreads new connections over the
listening sockets.  Twisted has no listen call with that option, so the
socket is made here and handed to ``adoptStreamPort`` (which takes a
copy of the descriptor; ours is closed).  The parent holds a socket bound
to the same address without listening (:func:`reserve`): a port taken by
someone else stops the start with one clear line, and nobody else can
take it while the workers come and go.
"""

from __future__ import annotations

import socket

from twisted.internet.interfaces import IListeningPort, IReactorSocket
from twisted.internet.protocol import ServerFactory

from cryptify.service import StartupError


def family_of(host: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 address, else AF_INET."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket with ``SO_REUSEPORT`` bound to ``host``:``port``, not listening.

    @raise StartupError: when it cannot be bound.
    """
    sock = socket.socket(family_of(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port} (client TLS): {exc.strerror}") from exc
    return sock


def reserve(host: str, port: int) -> socket.socket:
    """The parent's socket holding the client address for its workers."""
    return reuseport_socket(host, port)


def listen_reuseport(
    reactor: IReactorSocket, host: str, port: int, factory: ServerFactory, backlog: int
) -> IListeningPort:
    """Listen on ``host``:``port`` beside the other workers.

    @raise StartupError: when the address cannot be bound.
    """
    sock = reuseport_socket(host, port)
    try:
        sock.listen(backlog)
        sock.setblocking(False)
        listening: IListeningPort = reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    finally:
        sock.close()
    return listening
