"""
SIP over TLS between the CIG and its PBX, with real TLS on loopback.

Certificates come from the openssl command (a test CA, a second CA the
CIG does not trust, the PBX's certificate for C{pbx.test} and
127.0.0.1, the CIG's for 127.0.0.1). First the outbound connector
against a Twisted TLS server: the certificate must chain to the pinned
CA and name the configured host. Then kamailio with C{tls.so}
(Debian C{kamailio-tls-modules}) and the C{auth} module: the CIG
registers over TLS, refuses a PBX whose certificate it cannot verify or
that is not the configured name, and calls go both ways over TLS (the
CIG's INVITE challenged with 407, baresip answering behind kamailio).
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SkipTest, TestCase

from cryptify.cig.calls import Call
from cryptify.cig.sif.register import Registration, RegState
from cryptify.cig.sif.tls import TlsMaterial, load_tls
from cryptify.config.cig_model import PbxAccount, SipInterface
from cryptify.protocols.sip.digest import Credentials
from cryptify.protocols.sip.errors import SipParseError
from cryptify.protocols.sip.locate import locate
from cryptify.protocols.sip.message import Request, Response
from cryptify.protocols.sip.transaction import Channel
from cryptify.protocols.sip.transport import SipStreamFactory, TcpConnector
from tests.interop._pbx import KAMAILIO_MODULES, AnsweringLeg, require_pbx, sleep, until
from tests.interop._procs import WAIT, Twistd, free_port, run_cli, short_tempdir, tcp_answers
from tests.interop._tls_certs import make_ca, make_leaf
from tests.interop._trunk import AUTH_CFG, PASSWORD, AuthPbx, TrunkAuthCase

OPTIONS = (
    b"OPTIONS sip:pbx.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKtls1\r\n"
    b"From: <sip:cig@127.0.0.1>;tag=a\r\nTo: <sip:pbx.test>\r\nCall-ID: tls1\r\n"
    b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


def require_tls_module() -> None:
    if not os.path.exists(os.path.join(KAMAILIO_MODULES, "tls.so")):
        raise SkipTest("kamailio's tls.so (Debian kamailio-tls-modules) is not installed")


class Certificates:
    """The test CAs and certificates in C{directory}."""

    def __init__(self, directory: str) -> None:
        self.ca = make_ca(directory, "ca")
        self.other_ca = make_ca(directory, "otherca")
        self.pbx, self.pbx_key = make_leaf(directory, "pbx", self.ca, "DNS:pbx.test,IP:127.0.0.1")
        self.cig, self.cig_key = make_leaf(directory, "cig", self.ca, "IP:127.0.0.1")


class Sink:
    """Records what a SIP TLS server receives."""

    def __init__(self) -> None:
        self.messages: list[Request | Response] = []
        self.channels: list[Channel] = []

    def message_received(self, message: Request | Response, channel: Channel) -> None:
        self.messages.append(message)
        self.channels.append(channel)

    def parse_failed(self, error: SipParseError, channel: Channel) -> None:
        pass


class ConnectorTests(TestCase):
    """L{TcpConnector} with TLS against a Twisted TLS server holding the PBX's certificate."""

    timeout = 60

    def setUp(self) -> None:
        self.dir = short_tempdir(self)
        self.certs = Certificates(self.dir)
        server = load_tls(SipInterface(tls_certificate=self.certs.pbx, tls_key=self.certs.pbx_key))
        self.sink = Sink()
        factory = SipStreamFactory(self.sink, secure=True)
        self.port = reactor.listenSSL(  # type: ignore[attr-defined]
            0, factory, server.server(), interface="127.0.0.1"
        )
        self.addCleanup(self.port.stopListening)
        self.address = ("127.0.0.1", self.port.getHost().port)

    def connector(self, ca: str) -> TcpConnector:
        material = load_tls(SipInterface(tls_ca=ca))
        connector = TcpConnector(reactor, Sink(), tls=material.client)
        self.addCleanup(connector.close)
        return connector

    async def test_verified(self) -> None:
        """
        The PBX's certificate chains to the pinned CA and names pbx.test
        (and 127.0.0.1): the channel is ready, says it is secure, and what
        is sent on it arrives.
        """
        for name in ("pbx.test", "127.0.0.1"):
            connector = self.connector(self.certs.ca)
            channel = await connector.channel(self.address, name)
            self.assertTrue(getattr(channel, "secure", False))
            channel.send(OPTIONS)
            await until(lambda: len(self.sink.messages) == 1, "the OPTIONS over TLS")
            self.assertEqual(self.sink.messages[0].method, "OPTIONS")  # type: ignore[union-attr]
            self.assertTrue(getattr(self.sink.channels[0], "secure", False))
            self.sink.messages.clear()
            connector.close()
            await until(lambda: not getattr(channel, "open", True), "the connection closed")
            await until(
                lambda: not any(getattr(c, "open", False) for c in self.sink.channels),
                "the server side closed",
            )

    async def test_wrong_name(self) -> None:
        """A certificate that does not name the configured host: no channel."""
        connector = self.connector(self.certs.ca)
        with self.assertRaises(Exception):
            await connector.channel(self.address, "other.test")
        await sleep(0.2)
        self.assertEqual(self.sink.messages, [])

    async def test_untrusted_ca(self) -> None:
        """A certificate from a CA that is not pinned: no channel."""
        connector = self.connector(self.certs.other_ca)
        with self.assertRaises(Exception):
            await connector.channel(self.address, "pbx.test")


TLS_LINES = """enable_tls=yes
listen=tls:127.0.0.1:{kam_tls}
"""
TLS_MODULE = """loadmodule "tls.so"
modparam("tls", "config", "{d}/kamailio-tls.cfg")
"""
KAMAILIO_TLS_CFG = """[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
private_key = {key}
certificate = {crt}

[client:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
"""


class TlsPbx(AuthPbx):
    """L{AuthPbx} listening for TLS too, sending the 9-numbers to the CIG over TLS."""

    def __init__(self, case: Any, directory: str, cig_port: int, cig_tls: int) -> None:
        super().__init__(case, directory, cig_port)
        self.kam_tls = free_port()
        self.cig_tls = cig_tls
        self.certs = Certificates(directory)

    def kamailio_config(self) -> str:
        with open(os.path.join(self.dir, "kamailio-tls.cfg"), "w") as f:
            f.write(KAMAILIO_TLS_CFG.format(key=self.certs.pbx_key, crt=self.certs.pbx))
        text = AUTH_CFG.format(
            kam_port=self.kam_port,
            cig_port=self.cig_port,
            modules=KAMAILIO_MODULES,
            password=PASSWORD,
            algorithm="MD5",
        )
        text = text.replace(
            f'$du = "sip:127.0.0.1:{self.cig_port}"',
            f'$du = "sip:127.0.0.1:{self.cig_tls};transport=tls"',
        )
        text = text.replace(" cseq $cs ", " cseq $cs proto $pr ")
        # From the CIG over TLS the source port is an ephemeral one.
        text = text.replace(
            f'$si == "127.0.0.1" && $sp == {self.cig_port}',
            f'$si == "127.0.0.1" && ($sp == {self.cig_port} || $pr == "tls")',
        )
        head, _, rest = text.partition("mpath=")
        head = head.replace("listen=", TLS_LINES.format(kam_tls=self.kam_tls) + "listen=", 1)
        modules_at = rest.index("loadmodule")
        rest = rest[:modules_at] + TLS_MODULE.format(d=self.dir) + rest[modules_at:]
        return head + "mpath=" + rest


class KamailioTlsTests(TrunkAuthCase):
    """The in-process SIF over TLS with kamailio."""

    async def setUp(self) -> None:  # type: ignore[override]
        require_tls_module()
        self.cig_tls = free_port()
        await super().setUp()

    def make_pbx(self, directory: str, cig_port: int) -> AuthPbx:
        self.tls_pbx = TlsPbx(self, directory, cig_port, self.cig_tls)
        return self.tls_pbx

    def sip_config(self) -> str:
        return (
            super()
            .sip_config()
            .replace("rtp_port_range", f"tls_port {self.cig_tls}; rtp_port_range")
        )

    def wire_tls(self, ca: str, listen: bool = True) -> TlsMaterial:
        """The SIF's TLS connector (pinned to C{ca}) and (C{listen}) its TLS listener."""
        certs = self.tls_pbx.certs
        material = load_tls(
            SipInterface(tls_certificate=certs.cig, tls_key=certs.cig_key, tls_ca=ca)
        )
        connector = TcpConnector(reactor, self.sif, tls=material.client)
        self.addCleanup(connector.close)
        self.sif.tls_channel = connector.channel
        self.sif.resolve = reactor.resolve  # type: ignore[attr-defined]
        if not listen:
            return material
        factory = SipStreamFactory(self.sif, secure=True)
        port = reactor.listenSSL(  # type: ignore[attr-defined]
            self.cig_tls, factory, material.server(), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        return material

    def tls_registration(self, host: str = "127.0.0.1") -> Registration:
        server = f"sip:{host}:{self.tls_pbx.kam_tls};transport=tls"
        account = PbxAccount(server, "cig", password=PASSWORD, register=60)
        registration = Registration(
            self.sif,
            account,
            locate(server),
            Credentials("cig", PASSWORD),
            lambda u, e: self.events.append(e),
        )
        self.addCleanup(registration.stop)
        return registration

    def tls_saved(self) -> list[str]:
        return re.findall(r"SAVED sip:cig@\S+ cseq \d+ proto tls", self.pbx.log("kamailio.log"))

    async def test_register_over_tls(self) -> None:
        """
        The CIG registers over TLS (kamailio's certificate checked against
        the pinned CA and 127.0.0.1); its contact says transport=tls.
        """
        self.wire_tls(self.tls_pbx.certs.ca)
        registration = self.tls_registration()
        registration.start()
        await until(
            lambda: registration.state is RegState.REGISTERED,
            "registered over TLS" + self.pbx.context(),
            timeout=WAIT,
        )
        self.assertTrue(self.tls_saved())
        register = [d for d in self.sent if d.startswith(b"REGISTER")]
        self.assertEqual(register, [])  # nothing went over UDP

    async def test_untrusted_pbx_refused(self) -> None:
        """A PBX certificate from a CA that is not pinned: nothing is sent, FAILED."""
        self.wire_tls(self.tls_pbx.certs.other_ca)
        registration = self.tls_registration()
        registration.start()
        await until(
            lambda: registration.state is RegState.FAILED,
            "the registration failed" + self.pbx.context(),
            timeout=WAIT,
        )
        await sleep(0.5)
        self.assertEqual(self.tls_saved(), [])
        self.assertNotIn("CHALLENGE REGISTER", self.pbx.log("kamailio.log"))

    async def test_wrong_name_refused(self) -> None:
        """
        The configured host is localhost, which kamailio's certificate does
        not name (it names pbx.test and 127.0.0.1): refused.
        """
        self.wire_tls(self.tls_pbx.certs.ca)
        registration = self.tls_registration("localhost")
        registration.start()
        await until(
            lambda: registration.state is RegState.FAILED,
            "the registration failed" + self.pbx.context(),
            timeout=WAIT,
        )
        self.assertEqual(self.tls_saved(), [])

    async def test_calls_both_ways_over_tls(self) -> None:
        """
        A call the CIG places over TLS is challenged (407), sent again and
        answered by baresip; baresip's call to a 9-number reaches the CIG
        over kamailio's TLS connection and is answered; both show SOURCE
        and transport as TLS.
        """
        self.wire_tls(self.tls_pbx.certs.ca)
        self.sif.keyring = self.keyring()
        leg = AnsweringLeg()
        call = Call("tel:+4670123456", "tel:+8888;101")
        call.out_from = "sip:94670123456@secure.example"
        call.out_to = f"sip:101@127.0.0.1:{self.tls_pbx.kam_tls};transport=tls"
        self.sif.place_call(call, leg)
        leg.answered_d.addTimeout(WAIT, reactor)  # type: ignore[arg-type]
        try:
            await leg.answered_d
        except Exception as exc:
            raise AssertionError(f"{exc}{self.pbx.context()}") from exc
        log = self.pbx.log("kamailio.log")
        self.assertIn("CHALLENGE INVITE", log)
        self.assertIn("AUTHORIZED INVITE", log)
        await sleep(0.5)
        self.sif.hang_up(call)
        await until(self.pbx.call_ended, "baresip to see the BYE" + self.pbx.context())
        # The other way: baresip dials a 9-number, kamailio sends it over TLS.
        self.pbx.command("dial", f"sip:94670123456@127.0.0.1:{self.kam_port}")
        await until(
            lambda: any(r[5].startswith("tls:") and r[4] == "ANSWER" for r in self.calls.rows()),
            "the call from baresip answered over TLS" + self.pbx.context(),
            timeout=WAIT,
        )
        _, tel_leg = self.tel.legs[-1]
        tel_leg.hung_up()
        await sleep(0.5)

    async def test_calls_back_over_our_connection(self) -> None:
        """
        RFC 5923: the CIG registers over TLS with C{alias} in its Via and
        does not listen for TLS at all; kamailio (C{tcp_accept_aliases})
        sends baresip's call to a 9-number back over the CIG's own
        connection, and it is answered.
        """
        cfg = os.path.join(self.tls_pbx.dir, "kamailio.cfg")
        with open(cfg) as f:
            text = f.read()
        self.assertIn("enable_tls=yes", text)
        with open(cfg, "w") as f:
            f.write(text.replace("enable_tls=yes", "enable_tls=yes\ntcp_accept_aliases=yes", 1))
        await self.pbx.restart_kamailio()
        self.wire_tls(self.tls_pbx.certs.ca, listen=False)
        self.assertFalse(tcp_answers(self.cig_tls))
        registration = self.tls_registration()
        registration.start()
        await until(
            lambda: registration.state is RegState.REGISTERED,
            "registered over TLS" + self.pbx.context(),
            timeout=WAIT,
        )
        self.pbx.command("dial", f"sip:94670123456@127.0.0.1:{self.kam_port}")
        await until(
            lambda: any(r[5].startswith("tls:") and r[4] == "ANSWER" for r in self.calls.rows()),
            "the call from baresip answered over the CIG's connection" + self.pbx.context(),
            timeout=WAIT,
        )
        _, tel_leg = self.tel.legs[-1]
        tel_leg.hung_up()
        await until(self.pbx.call_ended, "baresip to see the BYE" + self.pbx.context())


TWISTD_TLS_CONF = """
map mapsip2tel {{ entry nine sip "sip:9{{n}}@{{host}}" tel "tel:+{{n}}"; }}
interfaces {{
    sip {{
        extension map mapsip2tel;
        bind 127.0.0.1 {cig_port};
        rtp_port_range 31500 31600;
        trusted_peer 127.0.0.1;
        tls_certificate "{cert}";
        tls_key "{key}";
        tls_ca "{ca}";
        tls_port {cig_tls};
        pbx_account "sip:127.0.0.1:{kam_tls};transport=tls" {{
            username "cig";
            password_file "{d}/pbx.secret";
            register 60;
        }}
    }}
}}
crs {{ address 192.0.2.10 5223; keystore "{d}/userdata"; }}
relay {{ control "{d}/relay.sock"; }}
management {{ bind 127.0.0.1 {mgmt_port}; cookie "{d}/mgmt.cookie"; socket "{d}/cig.sock"; }}
logging {{ dir "{d}/log"; }}
"""


class TwistdTlsTests(TestCase):
    """C{twistd cig} registering over TLS, its TLS listener taking calls from kamailio."""

    timeout = 120

    async def test_registered_and_called_over_tls(self) -> None:
        """
        With tls_certificate/tls_key/tls_ca and a pbx_account over TLS,
        twistd cig registers at kamailio over TLS (status REGISTERED), and
        kamailio's TLS connection to the CIG's TLS port is accepted: a
        call from baresip reaches the CIG over TLS (session.log SOURCE tls:).
        """
        require_pbx_tls()
        d = short_tempdir(self)
        cig_port = free_port(socket.SOCK_DGRAM)
        cig_tls = free_port()
        mgmt_port = free_port()
        pbx = TlsPbx(self, d, cig_port, cig_tls)
        await pbx.start()
        secret = os.path.join(d, "pbx.secret")
        with open(secret, "w") as f:
            f.write(PASSWORD + "\n")
        os.chmod(secret, 0o600)
        conf = os.path.join(d, "cig.conf")
        with open(conf, "w") as f:
            f.write(
                TWISTD_TLS_CONF.format(
                    d=d,
                    cig_port=cig_port,
                    cig_tls=cig_tls,
                    kam_tls=pbx.kam_tls,
                    mgmt_port=mgmt_port,
                    cert=pbx.certs.cig,
                    key=pbx.certs.cig_key,
                    ca=pbx.certs.ca,
                )
            )
        cig = Twistd(d, "cig", "--config", conf, "--notify", "", "--tel-stub", "answer")
        self.addCleanup(cig.stop)
        await until(lambda: tcp_answers(mgmt_port), "CIG management port" + cig.output())
        await until(
            lambda: re.search(r"SAVED sip:cig@\S+ cseq \d+ proto tls", pbx.log("kamailio.log")),
            "the binding saved over TLS" + pbx.context() + cig.output()[-3000:],
            timeout=WAIT,
        )

        def status() -> str:
            return run_cli(
                "cig-cli",
                "--address",
                f"127.0.0.1:{mgmt_port}",
                "--cookie",
                os.path.join(d, "mgmt.cookie"),
                "status",
            )[1]

        await until(lambda: "REGISTERED" in status(), "REGISTERED in status", timeout=WAIT)
        pbx.command("dial", f"sip:94670123456@127.0.0.1:{pbx.kam_port}")
        await until(
            lambda: "tls:127.0.0.1" in _session_log(d),
            "the call over TLS in session.log" + pbx.context() + cig.output()[-3000:],
            timeout=WAIT,
        )
        self.assertNotIn(PASSWORD, cig.output())


def _session_log(directory: str) -> str:
    try:
        with open(os.path.join(directory, "log", "session.log")) as f:
            return f.read()
    except OSError:
        return ""


def require_pbx_tls() -> None:
    require_pbx()
    require_tls_module()
