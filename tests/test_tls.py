"""
Tests for L{cryptify.protocols.tls}, L{cryptify.protocols.tls_psk} and
L{cryptify.tools.certs}.

Handshakes run in memory: two C{TLSMemoryBIOProtocol}s joined by an
C{iosim} pump with a L{Clock}; no sockets, no global reactor.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from twisted.internet.interfaces import IAddress, IHandshakeListener, IOpenSSLContextFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from cryptify.protocols.tls import (
    TLSConfigError,
    client_context_factory,
    server_context_factory,
)
from cryptify.protocols.tls_psk import (
    PskClientContextFactory,
    PskServerContextFactory,
    psk_supported,
)
from cryptify.tools.certs import ensure_self_signed, generate_self_signed

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
IDENTITY = b"crs-2.pool"


@implementer(IHandshakeListener)
class _Peer(Protocol):
    """
    Records what happens to one end of a connection.
    """

    def __init__(self) -> None:
        self.received = b""
        self.handshake_done = False
        self.lost: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


class _Connection:
    """
    One in-memory TLS connection, after the pump has been flushed.
    """

    def __init__(self, server_creator: Any, client_creator: Any) -> None:
        self.clock = Clock()
        server_factory = TLSMemoryBIOFactory(
            server_creator, False, Factory.forProtocol(_Peer), clock=self.clock
        )
        client_factory = TLSMemoryBIOFactory(
            client_creator, True, Factory.forProtocol(_Peer), clock=self.clock
        )
        self.client_tls: TLSMemoryBIOProtocol
        self.server_tls: TLSMemoryBIOProtocol
        # Twisted drops wrappedProtocol when the connection is lost: keep our
        # own references to the application protocols.
        self.client: _Peer
        self.server: _Peer

        def build_server() -> TLSMemoryBIOProtocol:
            protocol = server_factory.buildProtocol(None)
            self.server = protocol.wrappedProtocol
            return protocol

        def build_client() -> TLSMemoryBIOProtocol:
            protocol = client_factory.buildProtocol(None)
            self.client = protocol.wrappedProtocol
            return protocol

        self.pump: IOPump
        self.client_tls, self.server_tls, self.pump = connectedServerAndClient(
            build_server, build_client, clock=self.clock
        )
        self.client_tls.write(b"ping\n")
        self.pump.flush()
        self.clock.advance(60)
        self.pump.flush()

    @property
    def established(self) -> bool:
        """
        Both ends completed the handshake and the server got the client's data.
        """
        return (
            self.client.handshake_done
            and self.server.handshake_done
            and self.server.received == b"ping\n"
        )

    def server_version(self) -> str:
        connection: SSL.Connection = self.server_tls.getHandle()
        return connection.get_protocol_version_name()

    def server_cipher(self) -> str | None:
        connection: SSL.Connection = self.server_tls.getHandle()
        return connection.get_cipher_name()

    def failure_text(self) -> str:
        """
        Why each end was disconnected, for assertions on the cause.
        """
        return " | ".join(
            str(p.lost.value) for p in (self.client, self.server) if p.lost is not None
        )


def _lookup(table: dict[bytes, bytes], calls: list[tuple[bytes, IAddress | None]]) -> Any:
    def lookup(identity: bytes, peer: IAddress | None) -> bytes | None:
        calls.append((identity, peer))
        return table.get(identity)

    return lookup


class _Files:
    """
    Mixin: a fresh directory with a self-signed pair in it.
    """

    def make_pair(self: Any, hostnames: tuple[str, ...] = ("localhost",)) -> tuple[str, str, str]:
        directory = self.mktemp()
        os.makedirs(directory)
        cert = os.path.join(directory, "cert.pem")
        key = os.path.join(directory, "key.pem")
        generate_self_signed(cert, key, hostnames=hostnames)
        return directory, cert, key


class SelfSignedTests(_Files, SynchronousTestCase):
    """
    L{generate_self_signed} and L{ensure_self_signed}.
    """

    def test_generated_pair(self) -> None:
        """
        The pair is an EC P-256 key, written 0600, and a certificate whose
        subject alternative names are the host names and addresses asked for.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        cert_path = os.path.join(directory, "c.pem")
        key_path = os.path.join(directory, "k.pem")
        generate_self_signed(cert_path, key_path, hostnames=("crs.test", "localhost"))
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        public_key = cert.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        self.assertEqual(public_key.curve.name, "secp256r1")
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["crs.test", "localhost"])
        self.assertEqual(
            san.get_values_for_type(x509.IPAddress), [ipaddress.ip_address("127.0.0.1")]
        )
        self.assertEqual(
            [n for n in os.listdir(directory) if n.startswith(".tmp")],
            [],
            "temporary files left behind",
        )

    def test_ensure_keeps_valid_pair(self) -> None:
        """
        An existing valid pair naming the same hosts is kept byte for byte.
        """
        _, cert, key = self.make_pair()
        before = (open(cert, "rb").read(), open(key, "rb").read())
        self.assertFalse(ensure_self_signed(cert, key))
        self.assertEqual((open(cert, "rb").read(), open(key, "rb").read()), before)

    def test_ensure_creates_missing_pair(self) -> None:
        """
        With no files, a pair is created, and a second call keeps it.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        cert = os.path.join(directory, "cert.pem")
        key = os.path.join(directory, "key.pem")
        self.assertTrue(ensure_self_signed(cert, key))
        self.assertFalse(ensure_self_signed(cert, key))
        server_context_factory(cert, key)

    def test_ensure_replaces_expiring_pair(self) -> None:
        """
        A certificate that expires within the renewal margin is replaced.
        """
        _, cert, key = self.make_pair()
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=820)
        self.assertTrue(ensure_self_signed(cert, key, now=later))

    def test_ensure_replaces_when_names_change(self) -> None:
        """
        A certificate that does not name a requested host is replaced.
        """
        _, cert, key = self.make_pair()
        self.assertTrue(ensure_self_signed(cert, key, hostnames=("crs.example",)))

    def test_ensure_replaces_mismatched_pair(self) -> None:
        """
        A key that does not belong to the certificate gets a new pair.
        """
        _, cert, _ = self.make_pair()
        _, _, other_key = self.make_pair()
        self.assertTrue(ensure_self_signed(cert, other_key))
        server_context_factory(cert, other_key)


class ServerContextErrorTests(_Files, SynchronousTestCase):
    """
    L{server_context_factory} refuses unusable files with a message naming
    the file.
    """

    def test_missing_certificate(self) -> None:
        """
        A missing certificate file is named.
        """
        directory, _, key = self.make_pair()
        missing = os.path.join(directory, "nope.pem")
        e = self.assertRaises(TLSConfigError, server_context_factory, missing, key)
        self.assertIn(missing, str(e))
        self.assertIn("certificate", str(e))

    def test_missing_key(self) -> None:
        """
        A missing key file is named.
        """
        directory, cert, _ = self.make_pair()
        missing = os.path.join(directory, "nope.key")
        e = self.assertRaises(TLSConfigError, server_context_factory, cert, missing)
        self.assertIn(missing, str(e))

    def test_unreadable_key(self) -> None:
        """
        A key path that cannot be read (here a directory) is named.
        """
        directory, cert, _ = self.make_pair()
        e = self.assertRaises(TLSConfigError, server_context_factory, cert, directory)
        self.assertIn(directory, str(e))
        self.assertIn("cannot read", str(e))

    def test_garbage_certificate(self) -> None:
        """
        A certificate file without PEM certificates is named.
        """
        directory, _, key = self.make_pair()
        bad = os.path.join(directory, "bad.pem")
        with open(bad, "w") as f:
            f.write("hello\n")
        e = self.assertRaises(TLSConfigError, server_context_factory, bad, key)
        self.assertIn(bad, str(e))
        self.assertIn("not a PEM", str(e))

    def test_certificate_as_key(self) -> None:
        """
        A key file that holds no private key is named.
        """
        _, cert, _ = self.make_pair()
        e = self.assertRaises(TLSConfigError, server_context_factory, cert, cert)
        self.assertIn(cert, str(e))
        self.assertIn("private key", str(e))

    def test_mismatched_key(self) -> None:
        """
        A key from another pair is refused, naming both files.
        """
        _, cert, _ = self.make_pair()
        _, _, other_key = self.make_pair()
        e = self.assertRaises(TLSConfigError, server_context_factory, cert, other_key)
        self.assertIn(other_key, str(e))
        self.assertIn(cert, str(e))
        self.assertIn("does not match", str(e))

    def test_missing_ca_file(self) -> None:
        """
        The client factory names a missing CA file.
        """
        directory = self.mktemp()
        e = self.assertRaises(
            TLSConfigError, client_context_factory, "localhost", os.path.join(directory, "ca")
        )
        self.assertIn(directory, str(e))


def _legacy_client(max_version: int) -> Any:
    """
    A client that offers only protocol versions up to C{max_version}, with
    every cipher OpenSSL still has.
    """
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_VERSION)
    context.set_max_proto_version(max_version)
    context.set_cipher_list(b"ALL:@SECLEVEL=0")
    return _OldStyle(context)


@implementer(IOpenSSLContextFactory)
class _OldStyle:
    """
    A context factory of the older interface, around a given context.
    """

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def getContext(self) -> SSL.Context:
        return self._context


class CertificateHandshakeTests(_Files, SynchronousTestCase):
    """
    Handshakes between L{server_context_factory} and clients.
    """

    def test_verified_client(self) -> None:
        """
        A client trusting the self-signed certificate as its CA completes a
        TLS 1.3 handshake and delivers data.
        """
        _, cert, key = self.make_pair()
        c = _Connection(
            server_context_factory(cert, key), client_context_factory("localhost", cert)
        )
        self.assertTrue(c.established, c.failure_text())
        self.assertEqual(c.server_version(), "TLSv1.3")

    def test_verified_client_by_ip(self) -> None:
        """
        A client connecting by IP address verifies it against the IP SAN.
        """
        _, cert, key = self.make_pair()
        c = _Connection(
            server_context_factory(cert, key), client_context_factory("127.0.0.1", cert)
        )
        self.assertTrue(c.established, c.failure_text())

    def test_wrong_hostname_refused(self) -> None:
        """
        A verifying client refuses a certificate that does not name the host.
        """
        _, cert, key = self.make_pair()
        c = _Connection(
            server_context_factory(cert, key), client_context_factory("crs.example", cert)
        )
        self.assertFalse(c.established)
        self.assertEqual(c.server.received, b"")
        self.flushLoggedErrors()

    def test_untrusted_certificate_refused(self) -> None:
        """
        A verifying client refuses a certificate its CA file does not vouch for.
        """
        _, cert, key = self.make_pair()
        _, other_cert, _ = self.make_pair()
        c = _Connection(
            server_context_factory(cert, key), client_context_factory("localhost", other_cert)
        )
        self.assertFalse(c.established)
        self.assertIn("certificate verify failed", c.failure_text())

    def test_insecure_client(self) -> None:
        """
        With C{verify=False} the client accepts a certificate it cannot verify.
        """
        _, cert, key = self.make_pair()
        c = _Connection(
            server_context_factory(cert, key),
            client_context_factory("crs.example", verify=False),
        )
        self.assertTrue(c.established, c.failure_text())

    def test_insecure_client_with_ca_file(self) -> None:
        """
        A CA file together with C{verify=False} is a configuration error.
        """
        _, cert, _ = self.make_pair()
        self.assertRaises(TLSConfigError, client_context_factory, "localhost", cert, False)

    def test_no_resumption(self) -> None:
        """
        The server keeps no session cache and issues no stateless tickets:
        every connection is a full handshake.
        """
        _, cert, key = self.make_pair()
        context = server_context_factory(cert, key).getContext()
        self.assertEqual(context.get_session_cache_mode(), SSL.SESS_CACHE_OFF)
        self.assertTrue(context.set_options(0) & SSL.OP_NO_TICKET)
        c = _Connection(
            server_context_factory(cert, key), client_context_factory("localhost", cert)
        )
        self.assertTrue(c.established, c.failure_text())

    def test_tls12_uses_modern_cipher(self) -> None:
        """
        A TLS 1.2 client gets an ECDHE suite with an AEAD cipher.
        """
        _, cert, key = self.make_pair()
        client = _legacy_client(SSL.TLS1_2_VERSION)
        c = _Connection(server_context_factory(cert, key), client)
        self.assertTrue(c.established, c.failure_text())
        self.assertEqual(c.server_version(), "TLSv1.2")
        cipher = c.server_cipher()
        assert cipher is not None
        self.assertTrue(cipher.startswith("ECDHE-ECDSA-"), cipher)
        self.assertTrue("GCM" in cipher or "CHACHA20" in cipher, cipher)

    def test_tls12_cbc_refused(self) -> None:
        """
        A TLS 1.2 client offering only CBC suites finds no shared cipher.
        """
        _, cert, key = self.make_pair()
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        context.set_cipher_list(b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384")
        c = _Connection(server_context_factory(cert, key), _OldStyle(context))
        self.assertFalse(c.established)
        self.assertIn("no shared cipher", c.failure_text())

    def test_tls11_refused(self) -> None:
        """
        The server refuses a client that offers at most TLS 1.1.
        """
        self._refuses(SSL.TLS1_1_VERSION)

    def test_tls10_refused(self) -> None:
        """
        The server refuses a client that offers only TLS 1.0.
        """
        self._refuses(SSL.TLS1_VERSION)

    def _refuses(self, max_version: int) -> None:
        _, cert, key = self.make_pair()
        c = _Connection(server_context_factory(cert, key), _legacy_client(max_version))
        self.assertFalse(c.established)
        self.assertFalse(c.server.handshake_done)
        # The server saw the ClientHello and refused its version.
        assert c.server.lost is not None
        self.assertIn("unsupported protocol", str(c.server.lost.value))


class _LogCapture:
    """
    Mixin: collect every log event while a test runs.
    """

    def capture_logs(self: Any) -> list[LogEvent]:
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events


class PskTests(_LogCapture, _Files, SynchronousTestCase):
    """
    Handshakes between L{PskClientContextFactory} and
    L{PskServerContextFactory}.
    """

    def setUp(self) -> None:
        self.calls: list[tuple[bytes, IAddress | None]] = []
        self.server = PskServerContextFactory(_lookup({IDENTITY: KEY}, self.calls))

    def test_tls12(self) -> None:
        """
        A TLS 1.2 PSK handshake uses ECDHE-PSK-CHACHA20-POLY1305 and carries
        data; the lookup saw the identity and the peer's address.
        """
        c = _Connection(self.server, PskClientContextFactory(IDENTITY, KEY, tls13=False))
        self.assertTrue(c.established, c.failure_text())
        self.assertEqual(c.server_version(), "TLSv1.2")
        self.assertEqual(c.server_cipher(), "ECDHE-PSK-CHACHA20-POLY1305")
        self.assertEqual(self.calls, [(IDENTITY, c.server_tls.transport.getPeer())])

    def test_tls13(self) -> None:
        """
        Where the library supports it, a TLS 1.3 PSK handshake carries data.
        """
        if not psk_supported()[1]:
            raise self.skipTest("no TLS 1.3 PSK in this OpenSSL")
        c = _Connection(self.server, PskClientContextFactory(IDENTITY, KEY))
        self.assertTrue(c.established, c.failure_text())
        self.assertEqual(c.server_version(), "TLSv1.3")
        self.assertEqual([i for i, _ in self.calls], [IDENTITY])

    def test_tls12_server_only(self) -> None:
        """
        A server built with C{tls13=False} negotiates TLS 1.2 with a client
        that offers 1.3.
        """
        server = PskServerContextFactory(_lookup({IDENTITY: KEY}, []), tls13=False)
        c = _Connection(server, PskClientContextFactory(IDENTITY, KEY))
        self.assertTrue(c.established, c.failure_text())
        self.assertEqual(c.server_version(), "TLSv1.2")

    def test_wrong_key_tls12(self) -> None:
        """
        A client with the wrong key fails the TLS 1.2 handshake; no data
        reaches the server.
        """
        c = _Connection(self.server, PskClientContextFactory(IDENTITY, OTHER_KEY, tls13=False))
        self.assertFalse(c.established)
        self.assertEqual(c.server.received, b"")
        self.assertIn("bad record mac", c.failure_text())

    def test_wrong_key_tls13(self) -> None:
        """
        A client with the wrong key fails the TLS 1.3 handshake.
        """
        c = _Connection(self.server, PskClientContextFactory(IDENTITY, OTHER_KEY))
        self.assertFalse(c.established)
        self.assertEqual(c.server.received, b"")
        self.assertIn("binder does not verify", c.failure_text())

    def test_unknown_identity(self) -> None:
        """
        An identity the lookup does not know fails the handshake, in both
        protocol versions, and is logged without any key.
        """
        events = self.capture_logs()
        for tls13 in (False, True):
            c = _Connection(self.server, PskClientContextFactory(b"stranger", KEY, tls13=tls13))
            self.assertFalse(c.established)
            self.assertEqual(c.server.received, b"")
        texts = [formatEvent(e) for e in events]
        self.assertTrue(any("unknown identity b'stranger'" in t for t in texts), texts)
        self._assert_no_key(events, KEY)

    def test_lookup_error(self) -> None:
        """
        An exception in the lookup fails the handshake and is logged; it
        does not escape into OpenSSL.
        """

        def broken(identity: bytes, peer: IAddress | None) -> bytes | None:
            raise RuntimeError("store down")

        c = _Connection(
            PskServerContextFactory(broken), PskClientContextFactory(IDENTITY, KEY, tls13=False)
        )
        self.assertFalse(c.established)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_short_key_from_lookup(self) -> None:
        """
        A key shorter than 16 bytes from the lookup fails the handshake.
        """
        server = PskServerContextFactory(lambda identity, peer: b"short")
        c = _Connection(server, PskClientContextFactory(IDENTITY, KEY, tls13=False))
        self.assertFalse(c.established)

    def test_psk_client_refuses_certificate_server(self) -> None:
        """
        A PSK client does not accept a server that authenticates with a
        certificate instead of the PSK.
        """
        _, cert, key = self.make_pair()
        for tls13 in (False, True):
            c = _Connection(
                server_context_factory(cert, key),
                PskClientContextFactory(IDENTITY, KEY, tls13=tls13),
            )
            self.assertFalse(c.established)
            self.assertEqual(c.server.received, b"")
            # TLS 1.2: no PSK suite on the server; TLS 1.3: certificate refused.
            reason = "certificate verify failed" if tls13 else "no shared cipher"
            self.assertIn(reason, c.failure_text())

    def test_certificate_client_refused(self) -> None:
        """
        A client without the PSK gets nowhere with a PSK server.
        """
        c = _Connection(self.server, client_context_factory("localhost", verify=False))
        self.assertFalse(c.established)
        self.flushLoggedErrors()

    def test_key_never_logged_or_shown(self) -> None:
        """
        Neither factory shows the key in C{repr}, and nothing logged during
        good and failed handshakes contains it.
        """
        events = self.capture_logs()
        client = PskClientContextFactory(IDENTITY, KEY)
        self.assertNotIn(repr(KEY), repr(client))
        self.assertNotIn(KEY.hex(), repr(client))
        _Connection(self.server, client)
        _Connection(self.server, PskClientContextFactory(IDENTITY, OTHER_KEY))
        self._assert_no_key(events, KEY)
        self._assert_no_key(events, OTHER_KEY)

    def _assert_no_key(self, events: list[LogEvent], key: bytes) -> None:
        for event in events:
            text = formatEvent(event) + repr(event)
            for form in (repr(key), key.hex(), key.hex().upper()):
                self.assertNotIn(form, text)

    def test_invalid_client_arguments(self) -> None:
        """
        Keys shorter than 16 bytes and identities that are empty, too long or
        not printable are refused at construction.
        """
        self.assertRaises(ValueError, PskClientContextFactory, IDENTITY, b"k" * 15)
        self.assertRaises(ValueError, PskClientContextFactory, b"", KEY)
        self.assertRaises(ValueError, PskClientContextFactory, b"a" * 129, KEY)
        self.assertRaises(ValueError, PskClientContextFactory, b"a\x00b", KEY)
        self.assertRaises(ValueError, PskClientContextFactory, b"a b", KEY)

    def test_identity_hint(self) -> None:
        """
        A server with an identity hint still completes TLS 1.2 handshakes.
        """
        server = PskServerContextFactory(_lookup({IDENTITY: KEY}, []), identity_hint=b"crs-pool")
        c = _Connection(server, PskClientContextFactory(IDENTITY, KEY, tls13=False))
        self.assertTrue(c.established, c.failure_text())

    def test_many_connections_share_context(self) -> None:
        """
        One factory serves many connections; the callbacks stay alive.
        """
        import gc

        client = PskClientContextFactory(IDENTITY, KEY)
        for _ in range(3):
            gc.collect()
            c = _Connection(self.server, client)
            self.assertTrue(c.established, c.failure_text())
        self.assertEqual(len(self.calls), 3)
