"""
Interop: the OpenSSL command line tool against our TLS-PSK factories.

Our server listens on 127.0.0.1 on an ephemeral port and echoes one line;
C{openssl s_client -psk ... -psk_identity ...} connects, sends a line and
reads the echo.  The other way round, our client connects to
C{openssl s_server -psk ...}.  Skipped only when there is no C{openssl}
binary.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, reactor
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from cryptify.protocols.tls_psk import PskClientContextFactory, PskServerContextFactory

OPENSSL = shutil.which("openssl")
KEY = bytes.fromhex("8f3c0e5a9d27b1c4e6f8a0b2c4d6e8f0123456789abcdef0fedcba9876543210")
WRONG_KEY = bytes(reversed(KEY))
IDENTITY = b"crs-1.pool"

#: Seconds one openssl run may take before it is killed and the test fails.
PROCESS_TIMEOUT = 20


_help: dict[str, bytes] = {}


async def _openssl_has(command: str, option: str) -> bool:
    """
    Whether C{openssl COMMAND} knows C{option} (some builds lack TLS 1.3).
    """
    if OPENSSL is None:
        return False
    if command not in _help:
        d = getProcessOutputAndValue(OPENSSL, [command, "-help"], env={"LC_ALL": "C"})
        out, err, _ = await d.addTimeout(PROCESS_TIMEOUT, reactor)
        _help[command] = out + err
    return option.encode("ascii") in _help[command]


class _Echo(LineReceiver):
    """
    Answers one line with C{echo: LINE}, records the TLS parameters, then
    closes the connection.
    """

    delimiter = b"\n"
    factory: _EchoFactory

    def lineReceived(self, line: bytes) -> None:
        connection: SSL.Connection = self.transport.getHandle()  # type: ignore[union-attr]
        self.factory.sessions.append(
            (connection.get_protocol_version_name(), connection.get_cipher_name(), line)
        )
        self.sendLine(b"echo: " + line)
        self.transport.loseConnection()  # type: ignore[union-attr]


class _EchoFactory(Factory):
    protocol = _Echo

    def __init__(self) -> None:
        self.sessions: list[tuple[str, str | None, bytes]] = []


class _OpenSSLProcess(ProcessProtocol):
    """
    Runs one openssl command: writes C{stdin}, collects output, and fires
    C{ended} with the exit code.
    """

    def __init__(self, stdin: bytes | None) -> None:
        self.stdin = stdin
        self.output = b""
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.running = True

    def connectionMade(self) -> None:
        if self.stdin is not None:
            self.transport.write(self.stdin)  # type: ignore[union-attr]
            self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        if reason.check(ProcessDone):
            self.ended.callback(0)
        elif reason.check(ProcessTerminated):
            value: Any = reason.value
            self.ended.callback(value.exitCode if value.exitCode is not None else -1)
        else:
            self.ended.errback(reason)


class _Base(TestCase):
    """
    Starting openssl processes and our endpoints, with cleanup.
    """

    timeout = 60

    def setUp(self) -> None:
        if OPENSSL is None:
            raise self.skipTest("the openssl command line tool is not installed")
        self.openssl: str = OPENSSL

    def spawn(self, args: list[str], stdin: bytes | None = None) -> _OpenSSLProcess:
        """
        Start C{openssl ARGS}; it is killed at cleanup if still running, and
        killed after L{PROCESS_TIMEOUT} seconds.
        """
        process = _OpenSSLProcess(stdin)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            process, self.openssl, [self.openssl, *args], env=env
        )

        def kill() -> None:
            if process.running:
                transport.signalProcess("KILL")

        timer = reactor.callLater(PROCESS_TIMEOUT, kill)  # type: ignore[attr-defined]

        def cancel_timer(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        process.ended.addBoth(cancel_timer)

        async def cleanup() -> None:
            kill()
            if process.running:
                await process.ended

        self.addCleanup(lambda: defer.Deferred.fromCoroutine(cleanup()))
        return process

    async def listen(self, server: PskServerContextFactory) -> tuple[_EchoFactory, int]:
        factory = _EchoFactory()
        endpoint = SSL4ServerEndpoint(reactor, 0, server, interface="127.0.0.1")
        port: IListeningPort = await endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        return factory, port.getHost().port  # type: ignore[attr-defined]


class OpenSSLClientTests(_Base):
    """
    C{openssl s_client -psk} against L{PskServerContextFactory}.
    """

    def setUp(self) -> None:
        super().setUp()
        self.lookups: list[tuple[bytes, IAddress | None]] = []

        def lookup(identity: bytes, peer: IAddress | None) -> bytes | None:
            self.lookups.append((identity, peer))
            return KEY if identity == IDENTITY else None

        self.server = PskServerContextFactory(lookup)

    async def s_client(self, version: str, key: bytes, identity: bytes = IDENTITY) -> Any:
        factory, port = await self.listen(self.server)
        process = self.spawn(
            [
                "s_client",
                "-connect",
                f"127.0.0.1:{port}",
                version,
                "-psk",
                key.hex(),
                "-psk_identity",
                identity.decode("ascii"),
                "-ign_eof",
                "-no_ticket",
            ],
            stdin=b"hello over psk\n",
        )
        code = await process.ended
        return factory, code, process.output.decode("utf-8", "replace")

    async def test_tls12(self) -> None:
        """
        s_client completes a TLS 1.2 PSK handshake
        (ECDHE-PSK-CHACHA20-POLY1305) and gets its line echoed; our lookup
        saw its identity and its loopback address.
        """
        factory, code, output = await self.s_client("-tls1_2", KEY)
        self.assertEqual(code, 0, output)
        self.assertIn("echo: hello over psk", output)
        self.assertEqual(
            factory.sessions, [("TLSv1.2", "ECDHE-PSK-CHACHA20-POLY1305", b"hello over psk")]
        )
        [(identity, peer)] = self.lookups
        self.assertEqual(identity, IDENTITY)
        self.assertEqual(getattr(peer, "host", None), "127.0.0.1")

    async def test_tls13(self) -> None:
        """
        s_client completes a TLS 1.3 PSK handshake and gets its line echoed.
        """
        if not await _openssl_has("s_client", "-tls1_3"):
            raise self.skipTest("this openssl has no TLS 1.3")
        factory, code, output = await self.s_client("-tls1_3", KEY)
        self.assertEqual(code, 0, output)
        self.assertIn("echo: hello over psk", output)
        self.assertEqual([s[0] for s in factory.sessions], ["TLSv1.3"])
        self.assertEqual([i for i, _ in self.lookups], [IDENTITY])

    async def test_wrong_key_tls12(self) -> None:
        """
        With the wrong key the TLS 1.2 handshake fails: s_client exits
        non-zero and no line reaches the server.
        """
        factory, code, output = await self.s_client("-tls1_2", WRONG_KEY)
        self.assertNotEqual(code, 0, output)
        self.assertIn("bad record mac", output)
        self.assertNotIn("echo:", output)
        self.assertEqual(factory.sessions, [])
        self.assertEqual([i for i, _ in self.lookups], [IDENTITY])

    async def test_wrong_key_tls13(self) -> None:
        """
        With the wrong key the TLS 1.3 handshake fails.
        """
        if not await _openssl_has("s_client", "-tls1_3"):
            raise self.skipTest("this openssl has no TLS 1.3")
        factory, code, output = await self.s_client("-tls1_3", WRONG_KEY)
        self.assertNotEqual(code, 0, output)
        self.assertIn("decrypt error", output)
        self.assertNotIn("echo:", output)
        self.assertEqual(factory.sessions, [])

    async def test_unknown_identity(self) -> None:
        """
        An identity our lookup does not know is refused.
        """
        factory, code, output = await self.s_client("-tls1_2", KEY, identity=b"intruder")
        self.assertNotEqual(code, 0, output)
        self.assertIn("unknown psk identity", output)
        self.assertEqual(factory.sessions, [])
        self.assertEqual([i for i, _ in self.lookups], [b"intruder"])


class _LineClient(LineReceiver):
    """
    Sends one line, records the first answer and closes.
    """

    delimiter = b"\n"

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.reason: Failure | None = None
        self.done: defer.Deferred[list[bytes]] = defer.Deferred()

    def connectionMade(self) -> None:
        self.sendLine(b"hello from cryptify")

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.done.callback(self.lines)


class OpenSSLServerTests(_Base):
    """
    L{PskClientContextFactory} against C{openssl s_server -psk}, and against
    our own server over real loopback.
    """

    async def s_server(self, version: str) -> tuple[_OpenSSLProcess, int]:
        """
        Start s_server on an ephemeral loopback port and learn the port from
        its C{ACCEPT} line.
        """
        process = self.spawn(
            [
                "s_server",
                "-accept",
                "127.0.0.1:0",
                version,
                "-psk",
                KEY.hex(),
                "-psk_identity",
                IDENTITY.decode("ascii"),
                "-nocert",
                "-naccept",
                "1",
                "-rev",
            ]
        )
        for _ in range(100):
            match = re.search(rb"ACCEPT \S*:(\d+)", process.output)
            if match:
                return process, int(match.group(1))
            if not process.running:
                break
            await _sleep(0.05)
        self.fail(f"s_server did not start: {process.output!r}")

    async def connect(self, port: int, key: bytes, tls13: bool) -> _LineClient:
        client = _LineClient()
        endpoint = wrapClientTLS(
            PskClientContextFactory(IDENTITY, key, tls13=tls13),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port),
        )
        protocol = await endpoint.connect(Factory.forProtocol(lambda: client))

        def disconnect() -> None:
            if client.reason is None:
                protocol.transport.abortConnection()

        self.addCleanup(disconnect)
        await client.done.addTimeout(PROCESS_TIMEOUT, reactor)
        return client

    async def test_tls12_to_s_server(self) -> None:
        """
        Our client completes a TLS 1.2 PSK handshake with s_server, which
        answers our line reversed (C{-rev}).
        """
        process, port = await self.s_server("-tls1_2")
        client = await self.connect(port, KEY, tls13=False)
        self.assertIn(b"yfitpyrc morf olleh", b"\n".join(client.lines))
        await process.ended

    async def test_tls13_to_s_server(self) -> None:
        """
        Our client completes a TLS 1.3 PSK handshake with s_server.
        """
        if not await _openssl_has("s_server", "-tls1_3"):
            raise self.skipTest("this openssl has no TLS 1.3")
        process, port = await self.s_server("-tls1_3")
        client = await self.connect(port, KEY, tls13=True)
        self.assertIn(b"yfitpyrc morf olleh", b"\n".join(client.lines))
        await process.ended

    async def test_wrong_key_to_s_server(self) -> None:
        """
        With the wrong key our client's connection fails without data.
        """
        process, port = await self.s_server("-tls1_2")
        client = await self.connect(port, WRONG_KEY, tls13=False)
        self.assertEqual(client.lines, [])
        assert client.reason is not None
        self.assertTrue(client.reason.check(SSL.Error), client.reason)
        await process.ended

    async def test_our_client_and_server(self) -> None:
        """
        Our client and server complete a PSK handshake over real loopback
        through Twisted's endpoints.
        """
        server = PskServerContextFactory(lambda identity, peer: KEY)
        factory, port = await self.listen(server)
        client = await self.connect(port, KEY, tls13=True)
        self.assertEqual(client.lines, [b"echo: hello from cryptify"])
        self.assertEqual([s[0] for s in factory.sessions], ["TLSv1.3"])


async def _sleep(seconds: float) -> None:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)  # type: ignore[attr-defined]
    await d
