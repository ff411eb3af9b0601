"""Where the client connects: ``--server`` values (several, or a name with
several addresses, for a pool), TLS to each, and the attach sessions made
over it."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable, Sequence

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IProtocol, IProtocolFactory

from cryptify.client.connection import Connector
from cryptify.client.session import ClientSession, Signer
from cryptify.crypto.keymaterial import KeyMaterial
from cryptify.protocols.stdtls import TLSClientFactory, TLSProtocol
from cryptify.protocols.tls import client_context_factory
from cryptify.protocols.umsg import Message
from cryptify.reactor import IReactor


def parse_server(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


#: Most addresses taken from the ``--server`` options and their names.
MAX_SERVERS = 64

Resolver = Callable[[str, int], Sequence[str]]


def resolve_ipv4(host: str, port: int) -> list[str]:
    """The IPv4 addresses of ``host`` (``getaddrinfo``), in the order given;
    none when it does not resolve now (it is then tried by name)."""
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def expand_servers(
    servers: Sequence[tuple[str, int]], resolve: Resolver = resolve_ipv4
) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """Every address to try, in turn: each ``--server`` in the order given,
    a name that resolves to several addresses as each of them (as a pool's
    DNS name gives every instance's address).  Also the name each address
    came from, which TLS checks the certificate against."""
    found: list[tuple[str, int]] = []
    names: dict[str, str] = {}
    for host, port in servers:
        addresses = resolve(host, port) or [host]
        for address in addresses:
            if (address, port) not in found and len(found) < MAX_SERVERS:
                found.append((address, port))
                if address != host:
                    names.setdefault(address, host)
    return found, names


def _inner(proto: IProtocol) -> IProtocol:
    """The inner protocol of a connected L{TLSClientFactory}'s protocol."""
    assert isinstance(proto, TLSProtocol)
    return proto.wrapped


def tls_connector(
    reactor: IReactor,
    ca: str | None,
    insecure: bool,
    bind: str | None = None,
    names: dict[str, str] | None = None,
) -> Connector:
    """A connector for AttachingClient: TLS to HOST:PORT (per-host context);
    the certificate of an address in ``names`` is checked against its name."""
    creators: dict[str, IOpenSSLClientConnectionCreator] = {}
    names = names or {}

    def connect(host: str, port: int, factory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        if host not in creators:
            creators[host] = client_context_factory(names.get(host, host), ca, verify=not insecure)
        bind_address = (bind, 0) if bind else None
        tcp = TCP4ClientEndpoint(reactor, host, port, timeout=10, bindAddress=bind_address)
        # The lean TLS layer (protocols/stdtls.py) with the same creator:
        # same context, server name and verification as wrapClientTLS.
        tls = TLSClientFactory(creators[host], factory, reactor)
        return tcp.connect(tls).addCallback(_inner)

    return connect


def session_maker(
    material: KeyMaterial, app: str
) -> Callable[[Callable[[Message], None]], ClientSession]:
    """Sessions for the key file's account and URI, signing with its keys."""
    signers: dict[str, Signer] = {}

    def signer_for(period: str) -> Signer:
        if period not in signers:
            signers[period] = material.for_period(period).signer()
        return signers[period]

    def make(send: Callable[[Message], None]) -> ClientSession:
        return ClientSession(material.account, material.uri, signer_for, send, app=app)

    return make
