"""
The SIF challenging its PBX (C{pbx_challenge}) with kamailio as the PBX:
baresip, registered at kamailio, dials 9...; kamailio relays the INVITE
to the CIG, which answers 401; kamailio's C{uac} module answers it in a
failure_route (C{uac_auth()}) and the CIG answers the call. With a wrong
password in kamailio.cfg the call fails and the CIG logs the refusal.

kamailio 5.6's uac module computes MD5 only: the block offers MD5
(SHA-256 is tested in memory, tests/test_sip_challenge.py).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from cryptify.cig.calls import CallTable, StubTelSide
from cryptify.cig.sif.challenge import Challenger, load_guard
from cryptify.cig.sif.core import Sif
from cryptify.config import parse_cig_config
from cryptify.config.cig_model import PbxChallenge
from cryptify.protocols.sip.transport import SipDatagramProtocol, UdpChannel
from tests.interop._pbx import (
    CIG_TRUNK,
    KAMAILIO_HEAD,
    KAMAILIO_MODULES,
    Pbx,
    require_pbx,
    until,
)
from tests.interop._procs import free_port, short_tempdir

PASSWORD = "kam-In-Secret-3"

#: kamailio relaying 9... to the CIG and answering the CIG's 401 with uac_auth().
UAC_CFG = (
    KAMAILIO_HEAD
    + """loadmodule "uac.so"
modparam("uac", "auth_username_avp", "$avp(au)")
modparam("uac", "auth_password_avp", "$avp(ap)")
modparam("uac", "auth_realm_avp", "$avp(ar)")
request_route {{
  if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
  if (has_totag()) {{
    if (loose_route()) {{ t_relay(); exit; }}
    if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    sl_send_reply("404", "Not here"); exit;
  }}
  if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
  if (is_method("REGISTER")) {{ save("location"); exit; }}
  record_route();
  if ($rU =~ "^9") {{
    $du = "sip:127.0.0.1:{cig_port}";
    t_on_failure("CIG_AUTH");
    t_relay(); exit;
  }}
  if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
  t_relay();
}}
failure_route[CIG_AUTH] {{
  if (t_is_canceled()) {{ exit; }}
  if (t_check_status("401|407")) {{
    $avp(au) = "pbx";
    $avp(ap) = "{password}";
    $avp(ar) = "cig.test";
    if (uac_auth()) {{
      xlog("L_INFO", "ANSWERED CHALLENGE $ci\\n");
      t_relay();
    }}
    exit;
  }}
}}
"""
)


class UacPbx(Pbx):
    """L{Pbx} whose kamailio answers the CIG's challenges with C{password}."""

    def __init__(self, case: Any, directory: str, cig_port: int, password: str) -> None:
        super().__init__(case, directory, cig_port)
        self.password = password

    def kamailio_config(self) -> str:
        return UAC_CFG.format(
            kam_port=self.kam_port,
            cig_port=self.cig_port,
            modules=KAMAILIO_MODULES,
            password=self.password,
        )


class KamailioUacTests(TestCase):
    """baresip -> kamailio (uac_auth) -> the challenging SIF."""

    timeout = 90

    async def start(self, password: str) -> None:
        require_pbx()
        self.dir = d = short_tempdir(self)
        self.cig_port = free_port(socket.SOCK_DGRAM)
        self.pbx = UacPbx(self, d, self.cig_port, password)
        self.kam_port = self.pbx.kam_port
        trunk = CIG_TRUNK.format(
            kam_port=self.kam_port, cig_port=self.cig_port, rtp_range="31400 31500"
        )
        cfg = parse_cig_config(trunk)
        self.tel = StubTelSide("answer")
        self.calls = CallTable(reactor)  # type: ignore[arg-type]
        self.sif = Sif(cfg, reactor, self.tel, self.calls)  # type: ignore[arg-type]
        block = PbxChallenge("127.0.0.1", "cig.test", "pbx", password=PASSWORD, algorithms=("MD5",))
        self.sif.challenger = Challenger(reactor, (load_guard(block),))  # type: ignore[arg-type]
        port = reactor.listenUDP(  # type: ignore[attr-defined]
            self.cig_port, SipDatagramProtocol(self.sif), interface="127.0.0.1"
        )
        self.sif.channel_to = lambda address: UdpChannel(port, address)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.sif.stop)
        self.logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "cryptify.cig.peers":
                self.logged.append(str(event.get("log_format", "")).format(**event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        await self.pbx.start()

    async def test_uac_auth_answered(self) -> None:
        """
        baresip's call to 94670123456 is challenged, kamailio answers
        the challenge with uac_auth() and the CIG answers the call.
        """
        await self.start(PASSWORD)
        self.pbx.command("dial", f"sip:94670123456@127.0.0.1:{self.kam_port}")
        await until(
            lambda: self.calls.rows() and self.calls.rows()[0][4] == "ANSWER",
            "the call answered" + self.pbx.context(),
        )
        self.assertIn("ANSWERED CHALLENGE", self.pbx.log("kamailio.log"))
        self.assertEqual(self.calls.rows()[0][2:4], ["tel:+8888;101", "tel:+4670123456"])
        self.assertEqual(self.logged, [])
        _, leg = self.tel.legs[0]
        leg.hung_up()
        await until(self.pbx.call_ended, "baresip to see the BYE" + self.pbx.context())

    async def test_wrong_password_no_call(self) -> None:
        """
        kamailio with a wrong password: its answer is refused (401), no
        call is made, and the CIG logs the refusal naming kamailio's address.
        """
        await self.start("not-the-password")
        self.pbx.command("dial", f"sip:94670123456@127.0.0.1:{self.kam_port}")
        await until(
            lambda: any("digest credentials refused" in line for line in self.logged),
            "the refusal logged" + self.pbx.context(),
        )
        self.assertIn("ANSWERED CHALLENGE", self.pbx.log("kamailio.log"))
        self.assertEqual(self.calls.rows(), [])
        self.assertTrue(all(PASSWORD not in line for line in self.logged))
