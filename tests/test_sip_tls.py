"""
Tests for SIP over TLS towards the PBX, in memory: the cig.conf
directives, reading the certificate, key and CAs (L{load_tls}), and the
SIF choosing TLS (Via, Contact, the name the certificate must carry).
"""

from __future__ import annotations

import os

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import crypto
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.calls import Call, CallTable, StubTelSide
from cryptify.cig.sif.auth import CredentialsError
from cryptify.cig.sif.core import Sif
from cryptify.cig.sif.tls import load_tls
from cryptify.config import ConfigError, parse_cig_config
from cryptify.config.cig_model import SipInterface, render_cig_config
from cryptify.protocols.sip.message import Request, parse_datagram
from cryptify.protocols.sip.transaction import T1, Address, Channel
from tests.fakes import FakeChannel, RecordingLeg


@attrs.define
class FakeTlsChannel(FakeChannel):
    """A fake channel on a TLS connection."""

    reliable: bool = True
    secure: bool = True
    initiated: bool = False


def self_signed(name: str) -> tuple[bytes, bytes]:
    """A certificate and its key, PEM."""
    key = crypto.PKey()
    key.generate_key(crypto.TYPE_RSA, 2048)
    cert = crypto.X509()
    cert.get_subject().CN = name
    cert.set_serial_number(1)
    cert.gmtime_adj_notBefore(0)
    cert.gmtime_adj_notAfter(3600)
    cert.set_issuer(cert.get_subject())
    cert.set_pubkey(key)
    cert.sign(key, "sha256")
    return (
        crypto.dump_certificate(crypto.FILETYPE_PEM, cert),
        crypto.dump_privatekey(crypto.FILETYPE_PEM, key),
    )


class ConfigTests(SynchronousTestCase):
    """The sip interface's TLS directives."""

    def test_parsed_and_written_back(self) -> None:
        """tls_certificate, tls_key, tls_ca and tls_port read and render back equal."""
        cfg = parse_cig_config(
            'interfaces { sip { tls_certificate "/etc/cig/cig.pem"; tls_key "/etc/cig/cig.key";'
            ' tls_ca "/etc/cig/pbx-ca.pem"; tls_port 5071; } }'
        )
        sip = cfg.sip
        self.assertEqual(
            (sip.tls_certificate, sip.tls_key, sip.tls_ca, sip.tls_port),
            ("/etc/cig/cig.pem", "/etc/cig/cig.key", "/etc/cig/pbx-ca.pem", 5071),
        )
        self.assertEqual(parse_cig_config(render_cig_config(cfg)), cfg)
        self.assertEqual(parse_cig_config("interfaces { sip { } }").sip.tls_port, 5061)

    def test_certificate_and_key_together(self) -> None:
        """A key without a certificate (or the reverse) is refused."""
        for text in ('tls_key "/k";', 'tls_certificate "/c";'):
            with self.assertRaises(ConfigError) as caught:
                parse_cig_config("interfaces { sip { " + text + " } }")
            self.assertIn("tls_certificate and tls_key go together", str(caught.exception))

    def test_tel_side_refused(self) -> None:
        """TLS towards the PBX is the sip interface's."""
        with self.assertRaises(ConfigError):
            parse_cig_config('interfaces { tel { tls_ca "/x"; } }')


class LoadTests(SynchronousTestCase):
    """Reading the TLS files."""

    def setUp(self) -> None:
        self.cert, self.key = self_signed("cig.test")
        self.other_cert, self.other_key = self_signed("other.test")

    def write(self, data: bytes, mode: int = 0o600) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        return path

    def test_loaded(self) -> None:
        """Certificate, key and two pinned CAs; the listener's options are made."""
        material = load_tls(
            SipInterface(
                tls_certificate=self.write(self.cert, 0o644),
                tls_key=self.write(self.key),
                tls_ca=self.write(self.cert + self.other_cert, 0o644),
            )
        )
        assert material.own is not None
        self.assertEqual(material.own.getSubject().commonName, b"cig.test")
        self.assertEqual(len(material.cas), 2)
        self.assertIsNotNone(material.server().getContext())
        self.assertIsNotNone(material.client("pbx.test"))

    def test_nothing_configured(self) -> None:
        """No files: outbound TLS with the system's CAs, no own certificate."""
        material = load_tls(SipInterface())
        self.assertIsNone(material.own)
        self.assertEqual(material.cas, ())

    def test_refusals(self) -> None:
        """Each unusable file is refused naming it; the key's content never shows."""
        key_text = self.key.decode().splitlines()[1]
        cases = [
            (
                SipInterface(
                    tls_certificate=self.write(self.cert), tls_key=self.write(self.key, 0o644)
                ),
                "accessible by group or others",
            ),
            (
                SipInterface(
                    tls_certificate=self.write(self.cert), tls_key=self.write(self.other_key)
                ),
                "not a PEM private key for tls_certificate",
            ),
            (
                SipInterface(tls_certificate=self.write(b"junk"), tls_key=self.write(self.key)),
                "no PEM certificate",
            ),
            (
                SipInterface(
                    tls_certificate=self.write(b"x-----END CERTIFICATE-----"),
                    tls_key=self.write(self.key),
                ),
                "not a PEM certificate",
            ),
            (SipInterface(tls_ca="/nonexistent/ca.pem"), "No such file"),
        ]
        for sip, reason in cases:
            with self.assertRaises(CredentialsError) as caught:
                load_tls(sip)
            self.assertIn(reason, str(caught.exception))
            self.assertNotIn(key_text, str(caught.exception))


class HostileFileTests(SynchronousTestCase):
    """Whatever the files hold, the answer is CredentialsError or material."""

    @given(st.binary(max_size=400), st.binary(max_size=400))
    @settings(max_examples=50)
    def test_any_bytes(self, cert: bytes, key: bytes) -> None:
        """Random certificate and key files never raise anything but CredentialsError."""
        cert_path, key_path = self.mktemp(), self.mktemp()
        for path, data in ((cert_path, b"-----BEGIN CERTIFICATE-----" + cert), (key_path, key)):
            with open(path, "wb") as f:
                f.write(data + b"-----END CERTIFICATE-----")
            os.chmod(path, 0o600)
        try:
            load_tls(SipInterface(tls_certificate=cert_path, tls_key=key_path, tls_ca=cert_path))
        except CredentialsError:
            pass


class SifOverTlsTests(SynchronousTestCase):
    """The SIF placing a call to a TLS target."""

    def setUp(self) -> None:
        self.clock = Clock()
        cfg = parse_cig_config("interfaces { sip { bind 192.0.2.9 5070; tls_port 5071; } }")
        self.sif = Sif(cfg, self.clock, StubTelSide("answer"), CallTable(self.clock))
        self.channel = FakeTlsChannel()
        self.asked: list[tuple[Address, str]] = []

        def tls_channel(address: Address, name: str) -> Deferred[Channel]:
            self.asked.append((address, name))
            return succeed(self.channel)

        self.sif.tls_channel = tls_channel
        self.sif.resolve = lambda name: succeed("198.51.100.7")

    def tearDown(self) -> None:
        self.sif.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_invite_over_tls(self) -> None:
        """
        sips: goes over TLS to port 5061 of the looked-up address, the
        certificate to be checked against the URI's host name; the Via
        says TLS and the Contact our TLS port with transport=tls.
        """
        call = Call("tel:+1", "tel:+8888;101", "sip:1@secure.example", "sips:101@pbx.example")
        leg = RecordingLeg()
        self.sif.place_call(call, leg)
        self.assertEqual(self.asked, [(("198.51.100.7", 5061), "pbx.example")])
        invite = parse_datagram(self.channel.sent[-1])
        assert isinstance(invite, Request)
        self.assertTrue(str(invite.vias[0]).startswith("SIP/2.0/TLS 192.0.2.9:5071;"))
        self.assertEqual(invite.headers.get("Contact"), "<sip:192.0.2.9:5071;transport=tls>")
        self.sif.hang_up(call)
        self.clock.advance(64 * T1)

    def test_via_alias(self) -> None:
        """
        RFC 5923: C{alias} only on a TLS connection we opened, never on one
        the PBX opened to us nor on TCP or UDP.
        """
        ours = FakeTlsChannel(initiated=True)
        self.assertTrue(self.sif.via(ours, "192.0.2.9").endswith(";rport;alias"))
        theirs = FakeTlsChannel()
        self.assertNotIn("alias", self.sif.via(theirs, "192.0.2.9"))
        tcp = FakeTlsChannel(secure=False, initiated=True)
        self.assertNotIn("alias", self.sif.via(tcp, "192.0.2.9"))
        self.assertNotIn("alias", self.sif.via(FakeChannel(), "192.0.2.9"))

    def test_no_tls_transport(self) -> None:
        """Without a TLS connector a TLS target is refused with 503."""
        self.sif.tls_channel = None
        call = Call(
            "tel:+1", "tel:+8888;101", "sip:1@secure.example", "sip:101@192.0.2.1;transport=tls"
        )
        leg = RecordingLeg()
        self.sif.place_call(call, leg)
        self.assertEqual(leg.events, ["rejected 503"])

    def test_answer_contact_over_tls(self) -> None:
        """A request that came over TLS is answered with our TLS contact."""
        request = parse_datagram(
            b"INVITE sip:9@192.0.2.9 SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK1\r\n"
            b"From: <sip:1@192.0.2.1>;tag=a\r\nTo: <sip:9@192.0.2.9>\r\nCall-ID: c\r\n"
            b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
        assert isinstance(request, Request)
        self.assertEqual(self.sif.contact_uri(request), "sip:192.0.2.9:5071;transport=tls")
