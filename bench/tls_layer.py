"""The client port's TLS layer in one process: server CPU per handshake and per message.

    .venv/bin/python bench/tls_layer.py [--handshakes 300] [--messages 20000] [--rounds 3]

Server sides compared (same certificate, same policy):

- ``twisted``: Twisted's ``TLSMemoryBIOProtocol`` over pyOpenSSL, as the
  client port ran before (``TLSMemoryBIOFactory`` with
  ``tls.server_context_factory``);
- ``stdtls-openssl``: :mod:`cryptify.protocols.stdtls` with pyOpenSSL's
  engine (the client port's choice while the standard library's OpenSSL
  lacks the hybrid group);
- ``stdtls-stdlib``: the same layer with the standard library's engine.

Each server runs on a ``StringTransport`` with a ``Clock``; the client is
driven by hand over memory BIOs, either the standard library's (which
offers classical groups only: X25519) or pyOpenSSL's (which offers
X25519MLKEM768 first, as the reference client does). Only the server's
calls are timed (``time.process_time``).

- handshake: from the connection to the last handshake octet written
  (the server's TLS 1.3 session tickets included);
- message: a 120-octet record from the client decrypted and handed to the
  inner protocol, which answers 120 octets that are encrypted and written
  (an end-of-turn flush for the layers that batch).

One JSON line: the least of ``--rounds`` rounds, in microseconds, per
server and client.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from OpenSSL import SSL  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.protocols.tls import TLSMemoryBIOFactory  # noqa: E402

from cryptify.protocols import stdtls  # noqa: E402
from cryptify.protocols.tls import server_context_factory  # noqa: E402
from cryptify.tools.certs import generate_self_signed  # noqa: E402

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
MESSAGE = b"m" * 120


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(MESSAGE)


class _Client:
    """A client driven by hand over memory BIOs: the standard library's
    engine (``stdlib``) or pyOpenSSL's, behind the same four calls."""

    def __init__(self, kind: str) -> None:
        if kind == "stdlib":
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            std = context.wrap_bio(incoming, outgoing)
            self._feed, self._handshake, self._send = incoming.write, std.do_handshake, std.write
            self._drain = outgoing.read
        else:
            ossl = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
            ossl.set_connect_state()
            self._feed, self._handshake, self._send = ossl.bio_write, ossl.do_handshake, ossl.send

            def drain() -> bytes:
                try:
                    return ossl.bio_read(65536)
                except SSL.WantReadError:
                    return b""

            self._drain = drain
        self.done = False

    def step(self, data: bytes) -> bytes:
        """Take the server's octets; the client's answer (the handshake's next flight)."""
        if data:
            self._feed(data)
        try:
            self._handshake()
            self.done = True
        except (ssl.SSLWantReadError, SSL.WantReadError):
            pass
        return self._drain()

    def record(self) -> bytes:
        """One application record of MESSAGE."""
        self._send(MESSAGE)
        return self._drain()


def _servers(cert: str, key: str, clock: Clock) -> dict[str, Callable[[], Any]]:
    inner = Factory.forProtocol(_Echo)
    twisted = TLSMemoryBIOFactory(server_context_factory(cert, key), False, inner, clock=clock)
    openssl = stdtls.TLSServerFactory(stdtls.server_engines(cert, key, False), inner, clock)
    std = stdtls.TLSServerFactory(stdtls.server_engines(cert, key, True), inner, clock)
    return {
        "twisted": lambda: twisted.buildProtocol(PEER),
        "stdtls-openssl": lambda: openssl.buildProtocol(PEER),
        "stdtls-stdlib": lambda: std.buildProtocol(PEER),
    }


def _handshake(build: Callable[[], Any], client: _Client, clock: Clock) -> tuple[float, Any, Any]:
    """(server CPU seconds, server protocol, its transport) for one handshake."""
    start = time.process_time()
    proto = build()
    transport = StringTransport(peerAddress=PEER)
    proto.makeConnection(transport)
    cpu = time.process_time() - start
    data = client.step(b"")
    while data:
        start = time.process_time()
        proto.dataReceived(data)
        clock.advance(0)
        out = transport.value()
        transport.clear()
        cpu += time.process_time() - start
        data = client.step(out)
    return cpu, proto, transport


def run(handshakes: int, messages: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cry-tlsbench-") as directory:
        cert, key = os.path.join(directory, "crs.crt"), os.path.join(directory, "crs.key")
        generate_self_signed(cert, key)
        clock = Clock()
        servers = _servers(cert, key, clock)
    result: dict[str, Any] = {"handshake_us": {}, "message_us": {}}
    for client_kind in ("stdlib", "pyopenssl"):
        for name, build in servers.items():
            best_hs = best_msg = float("inf")
            for _ in range(rounds):
                cpu = 0.0
                for _ in range(handshakes):
                    cpu += _handshake(build, _Client(client_kind), clock)[0]
                best_hs = min(best_hs, cpu / handshakes)
                client = _Client(client_kind)
                _, proto, transport = _handshake(build, client, clock)
                records = [client.record() for _ in range(messages)]
                start = time.process_time()
                for record in records:
                    proto.dataReceived(record)
                    clock.advance(0)
                    transport.clear()
                best_msg = min(best_msg, (time.process_time() - start) / messages)
            label = f"{name}/{client_kind}"
            result["handshake_us"][label] = round(best_hs * 1e6, 1)
            result["message_us"][label] = round(best_msg * 1e6, 2)
    result["stdlib_openssl"] = ssl.OPENSSL_VERSION
    result["pyopenssl_openssl"] = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    result["client_port_engine"] = "stdlib" if stdtls.stdlib_groups_suffice() else "openssl"
    result["load"] = os.getloadavg()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(run(args.handshakes, args.messages, args.rounds)))


if __name__ == "__main__":
    main()
