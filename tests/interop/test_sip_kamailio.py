"""
The SIF with kamailio as the PBX and baresip as a phone behind it.

kamailio (no database: registrar and usrloc in memory) takes baresip's
REGISTER, sends the number range starting with 9 to the CIG trunk and
everything else to registered phones, record-routing all of it. The SIF
runs in this process on the real reactor; its tel side is the stub that
answers at once, or this test, placing calls the other way.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SkipTest, TestCase

from cryptify.cig.calls import Call, CallTable, StubTelSide
from cryptify.cig.sif import Sif
from cryptify.config import parse_cig_config
from cryptify.protocols.sip.transport import SipDatagramProtocol, UdpChannel
from tests.interop._procs import free_port, short_tempdir

KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
BARESIP_MODULES = "/usr/lib/baresip/modules"

KAMAILIO_CFG = """#!KAMAILIO
debug=2
log_stderror=yes
children=2
listen=udp:127.0.0.1:{kam_port}
mpath="{modules}"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
modparam("usrloc", "db_mode", 0)
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
  if ($rU =~ "^9") {{ $du = "sip:127.0.0.1:{cig_port}"; t_relay(); exit; }}
  if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
  t_relay();
}}
"""

CIG_CONF = """
map maptel2sip {{ entry pbx tel "tel:+8888;{{ext}}" sip "sip:{{ext}}@127.0.0.1:{kam_port}"; }}
map mapsip2tel {{ entry nine sip "sip:9{{n}}@{{host}}" tel "tel:+{{n}}"; }}
map srcsip2tel {{ entry all sip "sip:{{user}}@{{host}}" tel "tel:+8888;{{user}}"; }}
map srctel2sip {{ entry all tel "tel:+{{n}}" sip "sip:9{{n}}@secure.example"; }}
interfaces {{
    tel {{ extension map maptel2sip; source map srcsip2tel; }}
    sip {{ extension map mapsip2tel; source map srctel2sip;
           bind 127.0.0.1 {cig_port}; rtp_port_range 31000 31100; }}
}}
"""

BARESIP_CONFIG = f"""poll_method epoll
sip_listen 127.0.0.1:{{bs_port}}
audio_player aubridge,cig
audio_source aubridge,cig
audio_alert aubridge,alert
module_path {BARESIP_MODULES}
module g711.so
module aubridge.so
module_app account.so
module_app menu.so
module_app ctrl_tcp.so
ctrl_tcp_listen 127.0.0.1:{{ctrl_port}}
"""


class Leg:
    """The test as the tel side of a call the CIG places."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.answered_d: defer.Deferred[None] = defer.Deferred()

    def trying(self) -> None:
        self.events.append("trying")

    def ringing(self) -> None:
        self.events.append("ringing")

    def answered(self) -> None:
        self.events.append("answered")
        self.answered_d.callback(None)

    def rejected(self, status: int = 480) -> None:
        self.events.append(f"rejected {status}")
        if not self.answered_d.called:
            self.answered_d.errback(AssertionError(f"call rejected with {status}"))

    def hung_up(self) -> None:
        self.events.append("hung up")


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


async def until(predicate: Any, what: str, timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.1)):
        if predicate():
            return
        await sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class KamailioBaresipTests(TestCase):
    """
    baresip registered at kamailio; calls both ways through the CIG trunk.
    """

    timeout = 90

    async def setUp(self) -> None:  # type: ignore[override]
        for program in ("kamailio", "baresip"):
            if shutil.which(program) is None:
                raise SkipTest(f"{program} is not installed")
        if not os.path.isdir(KAMAILIO_MODULES) or not os.path.isdir(BARESIP_MODULES):
            raise SkipTest("kamailio or baresip modules not found")
        self.dir = d = short_tempdir(self)
        self.kam_port = free_port(socket.SOCK_DGRAM)
        self.cig_port = free_port(socket.SOCK_DGRAM)
        bs_port = free_port(socket.SOCK_DGRAM)
        self.ctrl_port = free_port()
        with open(os.path.join(d, "kamailio.cfg"), "w") as f:
            f.write(
                KAMAILIO_CFG.format(
                    kam_port=self.kam_port, cig_port=self.cig_port, modules=KAMAILIO_MODULES
                )
            )
        self.kamailio = self.spawn(
            "kamailio.log",
            [
                "kamailio",
                "-f",
                f"{d}/kamailio.cfg",
                "-DD",
                "-E",
                "-m",
                "32",
                "-M",
                "4",
                "-Y",
                d,
                "-P",
                f"{d}/kamailio.pid",
            ],
        )
        cfg = parse_cig_config(CIG_CONF.format(kam_port=self.kam_port, cig_port=self.cig_port))
        self.tel = StubTelSide("answer")
        self.calls = CallTable(reactor)  # type: ignore[arg-type]
        self.sif = Sif(cfg, reactor, self.tel, self.calls)  # type: ignore[arg-type]
        port = reactor.listenUDP(  # type: ignore[attr-defined]
            self.cig_port, SipDatagramProtocol(self.sif), interface="127.0.0.1"
        )
        self.sif.channel_to = lambda address: UdpChannel(port, address)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.sif.stop)
        os.makedirs(f"{d}/baresip")
        with open(f"{d}/baresip/config", "w") as f:
            f.write(BARESIP_CONFIG.format(bs_port=bs_port, ctrl_port=self.ctrl_port, d=d))
        with open(f"{d}/baresip/accounts", "w") as f:
            f.write(f"<sip:101@127.0.0.1:{self.kam_port}>;regint=600;answermode=auto\n")
        await sleep(0.5)
        self.baresip = self.spawn("baresip.log", ["baresip", "-s", "-f", f"{d}/baresip"])
        await until(lambda: "200 OK" in self.log("baresip.log"), "baresip registered")

    def spawn(self, log: str, argv: list[str]) -> subprocess.Popen[bytes]:
        out = open(os.path.join(self.dir, log), "wb")
        proc = subprocess.Popen(
            argv, cwd=self.dir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

        def stop() -> None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            out.close()

        self.addCleanup(stop)
        return proc

    def log(self, name: str) -> str:
        try:
            with open(os.path.join(self.dir, name), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def baresip_command(self, command: str, params: str = "") -> None:
        body = json.dumps({"command": command, "params": params, "token": "t"}).encode()
        with socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=5) as s:
            s.sendall(str(len(body)).encode() + b":" + body + b",")
            s.recv(4096)

    def bye_answered(self) -> bool:
        """Whether the CIG's BYE has had its final response."""
        byes = [c for c in self.sif.layer.clients.values() if c.request.method == "BYE"]
        return all(c.state == "completed" for c in byes)

    def context(self) -> str:
        return (
            f"\nbaresip:\n{self.log('baresip.log')[-6000:]}"
            f"\nkamailio:\n{self.log('kamailio.log')[-2000:]}"
        )

    async def test_baresip_calls_cig(self) -> None:
        """
        baresip dials 94670123456; kamailio sends it to the CIG, which
        routes it to tel:+4670123456 from tel:+8888;101 and (the stub
        answering) answers; the CIG's BYE reaches baresip through
        kamailio's record-route.
        """
        self.baresip_command("dial", f"sip:94670123456@127.0.0.1:{self.kam_port}")
        await until(
            lambda: self.calls.rows() and self.calls.rows()[0][4] == "ANSWER",
            "the call answered" + self.context(),
        )
        row = self.calls.rows()[0]
        self.assertEqual(row[2:4], ["tel:+8888;101", "tel:+4670123456"])
        await sleep(0.5)
        _, leg = self.tel.legs[0]
        leg.hung_up()
        self.assertEqual([c.request.method for c in self.sif.layer.clients.values()], ["BYE"])
        await until(
            lambda: (
                "terminated" in self.log("baresip.log").lower()
                or "closed" in self.log("baresip.log").lower()
            ),
            "baresip to see the BYE" + self.context(),
        )
        await until(self.bye_answered, "a final response to the BYE")
        self.assertEqual(self.calls.rows()[0][4], "HANGUP")

    async def test_cig_calls_baresip(self) -> None:
        """
        A call the tel side places to tel:+8888;101 goes through kamailio's
        location lookup to baresip, which answers; hanging up sends BYE
        along the route set.
        """
        leg = Leg()
        call = Call("tel:+4670123456", "tel:+8888;101")
        routed = self.sif.router.route("tel", call.in_from, call.in_to)
        call.out_from, call.out_to = routed.out_from, routed.out_to
        self.assertEqual(call.out_to, f"sip:101@127.0.0.1:{self.kam_port}")
        self.assertIsNotNone(self.sif.place_call(call, leg))
        leg.answered_d.addTimeout(20, reactor)  # type: ignore[arg-type]
        try:
            await leg.answered_d
        except Exception as exc:
            raise AssertionError(f"{exc}{self.context()}") from exc
        self.assertIn("answered", leg.events)
        self.assertEqual(self.calls.rows()[0][4], "ANSWER")
        await sleep(0.5)
        self.sif.hang_up(call)
        self.assertEqual(
            [c.request.method for c in self.sif.layer.clients.values()], ["INVITE", "BYE"]
        )
        await until(
            lambda: (
                "terminated" in self.log("baresip.log").lower()
                or "closed" in self.log("baresip.log").lower()
            ),
            "baresip to see the BYE" + self.context(),
        )
        await until(self.bye_answered, "a final response to the BYE")
        self.assertEqual(self.calls.rows()[0][4], "HANGUP")
