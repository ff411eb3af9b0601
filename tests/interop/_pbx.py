"""A PBX for the CIG's interop tests: kamailio with baresip registered behind it.

kamailio (no database: registrar and usrloc in memory) takes baresip's
REGISTER, sends the number range starting with 9 to the CIG trunk and
everything else to registered phones, record-routing all of it.  baresip
registers as 101 and answers every call by itself; it is driven over its
``ctrl_tcp`` module and logs verbosely (``-v`` shows the telephone-events
it receives).  With ``audio`` set, baresip plays that WAV file (8 kHz mono)
into every call and its ``sndfile`` module records what it receives into
``snd/``.  With ``mediaenc`` set (``srtp`` or ``srtp-mand``), baresip
loads its ``srtp`` module and offers (or insists on) SDES SRTP.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import subprocess
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SkipTest

from tests.interop._procs import free_port

#: Debian's kamailio module directory for this machine's architecture.
KAMAILIO_MODULES = next(
    iter(sorted(glob.glob("/usr/lib/*/kamailio/modules/"))),
    "/usr/lib/x86_64-linux-gnu/kamailio/modules/",
)
BARESIP_MODULES = "/usr/lib/baresip/modules"

# One UDP worker: with two, a 180 and the 200 right behind it could be
# forwarded out of order, and the CIG would (rightly) never show RING.
#: What every kamailio of the tests loads (one UDP worker, in-memory usrloc);
#: the proxies below add their route (and _trunk its auth modules).
KAMAILIO_HEAD = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
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
"""

KAMAILIO_CFG = (
    KAMAILIO_HEAD
    + """request_route {{
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
)

BARESIP_CONFIG = """poll_method epoll
sip_listen 127.0.0.1:{bs_port}
audio_player aubridge,cig
audio_source {source}
audio_alert aubridge,alert
module_path {modules}
module g711.so
{srtp}module aubridge.so
module aufile.so
{sndfile}module_app account.so
module_app menu.so
module_app ctrl_tcp.so
ctrl_tcp_listen 127.0.0.1:{ctrl_port}
"""


#: The CIG's maps for this PBX (a str.format template: kam_port, cig_port,
#: rtp_range): secure users dial tel:+8888;EXT for extension EXT, PBX users
#: dial 9 + a secure number, each shown to the other side accordingly.
CIG_TRUNK = """
map maptel2sip {{ entry pbx tel "tel:+8888;{{ext}}" sip "sip:{{ext}}@127.0.0.1:{kam_port}"; }}
map mapsip2tel {{ entry nine sip "sip:9{{n}}@{{host}}" tel "tel:+{{n}}"; }}
map srcsip2tel {{ entry all sip "sip:{{user}}@{{host}}" tel "tel:+8888;{{user}}"; }}
map srctel2sip {{ entry all tel "tel:+{{n}}" sip "sip:9{{n}}@secure.example"; }}
interfaces {{
    tel {{ extension map maptel2sip; source map srcsip2tel; }}
    sip {{ extension map mapsip2tel; source map srctel2sip;
           bind 127.0.0.1 {cig_port}; rtp_port_range {rtp_range}; }}
}}
"""


class AnsweringLeg:
    """The test as the tel side of a call the CIG places: records the SIF's
    reports; ``answered_d`` fires on the answer, fails on a rejection."""

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
    """Poll ``predicate`` on the reactor every 0.1 s; fail after ``timeout``."""
    for _ in range(int(timeout / 0.1)):
        if predicate():
            return
        await sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def require_pbx() -> None:
    """SkipTest when kamailio or baresip (or their modules) are missing."""
    for program in ("kamailio", "baresip"):
        if shutil.which(program) is None:
            raise SkipTest(f"{program} is not installed")
    if not os.path.isdir(KAMAILIO_MODULES) or not os.path.isdir(BARESIP_MODULES):
        raise SkipTest("kamailio or baresip modules not found")


class Pbx:
    """kamailio on ``kam_port`` trunking 9... to the CIG, baresip registered as 101."""

    def __init__(
        self,
        case: Any,
        directory: str,
        cig_port: int,
        audio: str | None = None,
        mediaenc: str | None = None,
    ):
        self.case = case
        self.mediaenc = mediaenc
        self.dir = directory
        self.cig_port = cig_port
        self.audio = audio
        self.kam_port = free_port(socket.SOCK_DGRAM)
        self.bs_port = free_port(socket.SOCK_DGRAM)
        self.ctrl_port = free_port()

    async def start(self) -> None:
        d = self.dir
        with open(os.path.join(d, "kamailio.cfg"), "w") as f:
            f.write(self.kamailio_config())
        self.spawn(
            "kamailio.log",
            ["kamailio", "-f", f"{d}/kamailio.cfg", "-DD", "-E", "-m", "32", "-M", "4",
             "-Y", d, "-P", f"{d}/kamailio.pid"],
        )  # fmt: skip
        os.makedirs(f"{d}/baresip")
        os.makedirs(f"{d}/snd")
        with open(f"{d}/baresip/accounts", "w") as f:
            enc = f";mediaenc={self.mediaenc}" if self.mediaenc else ""
            f.write(f"<sip:101@127.0.0.1:{self.kam_port}>;regint=600;answermode=auto{enc}\n")
        await sleep(0.5)
        # free_port() can race with other programs on a busy machine: a port
        # taken meanwhile makes baresip exit at once, so try a fresh one
        for attempt in range(3):
            self.write_baresip_config()
            log = f"baresip-{attempt}.log" if attempt else "baresip.log"
            proc = self.spawn(log, ["baresip", "-v", "-s", "-f", f"{d}/baresip"])
            await until(
                lambda: "200 OK" in self.log(log) or proc.poll() is not None,
                "baresip registered" + self.context(),
            )
            if proc.poll() is None:
                if attempt:
                    os.replace(os.path.join(d, log), os.path.join(d, "baresip.log"))
                return
            self.bs_port = free_port(socket.SOCK_DGRAM)
            self.ctrl_port = free_port()
        raise AssertionError("baresip did not start" + self.context())

    def kamailio_config(self) -> str:
        """kamailio.cfg's text (subclasses add authentication)."""
        return KAMAILIO_CFG.format(
            kam_port=self.kam_port, cig_port=self.cig_port, modules=KAMAILIO_MODULES
        )

    def write_baresip_config(self) -> None:
        d = self.dir
        source = f"aufile,{self.audio}" if self.audio else "aubridge,cig"
        sndfile = f"module sndfile.so\nsnd_path {d}/snd\n" if self.audio else ""
        with open(f"{d}/baresip/config", "w") as f:
            f.write(
                BARESIP_CONFIG.format(
                    bs_port=self.bs_port,
                    ctrl_port=self.ctrl_port,
                    source=source,
                    sndfile=sndfile,
                    srtp="module srtp.so\n" if self.mediaenc else "",
                    modules=BARESIP_MODULES,
                )
            )

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

        self.case.addCleanup(stop)
        return proc

    def log(self, name: str) -> str:
        try:
            with open(os.path.join(self.dir, name), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def command(self, command: str, params: str = "") -> None:
        """One ctrl_tcp command to baresip (netstring-framed JSON)."""
        body = json.dumps({"command": command, "params": params, "token": "t"}).encode()
        with socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=5) as s:
            s.sendall(str(len(body)).encode() + b":" + body + b",")
            s.recv(4096)

    def call_ended(self) -> bool:
        """Whether baresip's log shows a call ended."""
        text = self.log("baresip.log").lower()
        return "terminated" in text or "closed" in text

    def byes_received(self) -> int:
        """How many calls the other side has hung up on baresip."""
        return self.log("baresip.log").count("session closed")

    def dtmf_received(self) -> list[str]:
        """The DTMF digits baresip received as telephone-events (its -v log
        shows each event's end)."""
        found = re.findall(r"received event: '(.)' \(end=1\)", self.log("baresip.log"))
        return list(found)

    def recordings(self) -> list[str]:
        """The WAV files sndfile wrote of what baresip received (decoded)."""
        return sorted(glob.glob(os.path.join(self.dir, "snd", "*-dec.wav")))

    def context(self) -> str:
        return (
            f"\nbaresip:\n{self.log('baresip.log')[-6000:]}"
            f"\nkamailio:\n{self.log('kamailio.log')[-2000:]}"
        )
