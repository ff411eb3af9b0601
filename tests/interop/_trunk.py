"""What the SIP trunk interop tests share: kamailio asking for credentials
(L{AuthPbx}), a CIG with a PBX account (L{TrunkAuthCase}), a recording
channel."""

from __future__ import annotations

import re
import socket
import subprocess
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from cryptify.cig.calls import CallTable, StubTelSide
from cryptify.cig.sif.auth import Keyring
from cryptify.cig.sif.core import Sif
from cryptify.cig.sif.register import Registration
from cryptify.config import parse_cig_config
from cryptify.config.cig_model import PbxAccount
from cryptify.protocols.sip.digest import Credentials
from cryptify.protocols.sip.locate import locate
from cryptify.protocols.sip.transport import SipDatagramProtocol, UdpChannel
from tests.interop._pbx import (
    CIG_TRUNK,
    KAMAILIO_HEAD,
    KAMAILIO_MODULES,
    Pbx,
    require_pbx,
)
from tests.interop._procs import WAIT, free_port, short_tempdir

PASSWORD = "trunk-Secret-7"


#: kamailio asking for credentials: a REGISTER for the CIG's user needs
#: them (401), so does every INVITE from the CIG's port (407); each saved
#: binding and each accepted INVITE is logged for the test to read.
AUTH_CFG = (
    KAMAILIO_HEAD
    + """loadmodule "auth.so"
modparam("registrar", "min_expires", 5)
modparam("auth", "algorithm", "{algorithm}")
request_route {{
  if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
  if (has_totag()) {{
    if (loose_route()) {{ t_relay(); exit; }}
    if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    sl_send_reply("404", "Not here"); exit;
  }}
  if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
  if (is_method("REGISTER")) {{
    if ($tU == "cig") {{
      if (!pv_www_authenticate("$td", "{password}", "0")) {{
        xlog("L_INFO", "CHALLENGE REGISTER $tu\\n");
        www_challenge("$td", "1");
        exit;
      }}
      if ($au != "cig") {{ sl_send_reply("403", "Wrong user"); exit; }}
      consume_credentials();
    }}
    if (!save("location")) {{ sl_reply_error(); exit; }}
    xlog("L_INFO", "SAVED $tu cseq $cs expires $hdr(Expires)\\n");
    exit;
  }}
  if (is_method("INVITE") && $si == "127.0.0.1" && $sp == {cig_port}) {{
    if (!pv_proxy_authenticate("$fd", "{password}", "0")) {{
      xlog("L_INFO", "CHALLENGE INVITE $ci\\n");
      proxy_challenge("$fd", "1");
      exit;
    }}
    xlog("L_INFO", "AUTHORIZED INVITE $ci as $au\\n");
    consume_credentials();
  }}
  record_route();
  if ($rU =~ "^9" || $rU == "cig") {{
    if (!lookup("location")) {{ $du = "sip:127.0.0.1:{cig_port}"; }}
    t_relay(); exit;
  }}
  if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
  t_relay();
}}
"""
)


class AuthPbx(Pbx):
    """L{Pbx} with kamailio requiring credentials; kamailio can be restarted."""

    def __init__(self, case: Any, directory: str, cig_port: int, algorithm: str = "MD5") -> None:
        super().__init__(case, directory, cig_port)
        self.algorithm = algorithm
        self.kamailio: subprocess.Popen[bytes] | None = None
        self.kamailio_log = "kamailio.log"

    def kamailio_config(self) -> str:
        return AUTH_CFG.format(
            kam_port=self.kam_port,
            cig_port=self.cig_port,
            modules=KAMAILIO_MODULES,
            password=PASSWORD,
            algorithm=self.algorithm,
        )

    def spawn(self, log: str, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = super().spawn(log, argv)
        if argv[0] == "kamailio":
            self.kamailio = proc
        return proc

    async def restart_kamailio(self) -> None:
        """Stop kamailio (its in-memory bindings go) and start it again."""
        assert self.kamailio is not None
        self.kamailio.terminate()
        self.kamailio.wait(WAIT)
        self.kamailio_log = "kamailio-2.log"
        d = self.dir
        self.spawn(
            self.kamailio_log,
            ["kamailio", "-f", f"{d}/kamailio.cfg", "-DD", "-E", "-m", "32", "-M", "4",
             "-Y", d, "-P", f"{d}/kamailio.pid"],
        )  # fmt: skip

    def saved(self, log: str | None = None) -> list[str]:
        """The CSeq numbers of the CIG's bindings kamailio saved."""
        text = self.log(log or self.kamailio_log)
        return re.findall(r"SAVED sip:cig@\S+ cseq (\d+)", text)

    def context(self) -> str:
        extra = "" if self.kamailio_log == "kamailio.log" else self.log(self.kamailio_log)
        return super().context() + extra[-2000:]


class TrunkAuthCase(TestCase):
    """The SIF in this process against L{AuthPbx}."""

    timeout = 120
    algorithm = "MD5"

    async def setUp(self) -> None:  # type: ignore[override]
        require_pbx()
        self.dir = d = short_tempdir(self)
        self.cig_port = free_port(socket.SOCK_DGRAM)
        self.pbx = self.make_pbx(d, self.cig_port)
        self.kam_port = self.pbx.kam_port
        self.server = f"sip:127.0.0.1:{self.kam_port}"
        cfg = parse_cig_config(self.sip_config())
        self.tel = StubTelSide("answer")
        self.calls = CallTable(reactor)  # type: ignore[arg-type]
        self.sif = Sif(cfg, reactor, self.tel, self.calls)  # type: ignore[arg-type]
        port = reactor.listenUDP(  # type: ignore[attr-defined]
            self.cig_port, SipDatagramProtocol(self.sif), interface="127.0.0.1"
        )
        self.sent: list[bytes] = []
        self.sif.channel_to = lambda address: RecordingChannel(port, address, self.sent)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.sif.stop)
        self.events: list[str] = []
        await self.pbx.start()

    def make_pbx(self, directory: str, cig_port: int) -> AuthPbx:
        return AuthPbx(self, directory, cig_port, self.algorithm)

    def sip_config(self) -> str:
        """The trunk's cig.conf: the PBX's maps and one for calls to the CIG's AOR."""
        trunk = CIG_TRUNK.format(
            kam_port=self.kam_port, cig_port=self.cig_port, rtp_range="31100 31200"
        )
        return AOR_ENTRY.format() + trunk.replace(
            "extension map mapsip2tel;", "extension map mapsip2tel; extension map aor;"
        )

    def keyring(self, password: str = PASSWORD) -> Keyring:
        account = PbxAccount(self.server, "cig", password=password, register=10)
        return Keyring(((account, locate(self.server), Credentials("cig", password)),))

    def registration(self, password: str = PASSWORD) -> Registration:
        keyring = self.keyring(password)
        account, target, credentials = keyring.accounts[0]
        registration = Registration(
            self.sif, account, target, credentials, lambda u, e: self.events.append(e)
        )
        self.addCleanup(registration.stop)
        return registration


#: The trunk's maps, and an entry for calls to the CIG's registered AOR.
AOR_ENTRY = 'map aor {{ entry reg sip "sip:cig@{{host}}" tel "tel:+4670999"; }}\n'


class RecordingChannel:
    """A UDP channel that keeps a copy of what the CIG sends."""

    reliable = False

    def __init__(self, port: Any, address: tuple[str, int], sent: list[bytes]) -> None:
        self.channel = UdpChannel(port, address)
        self.address = address
        self.sent = sent

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        self.channel.send(data)
