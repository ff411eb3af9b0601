"""What the CIG's sipp tests share: a CIG started with a sipp PBX beside it
(L{SippCase}), a raw SIP/UDP client, and the messages they send."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from cryptify.protocols.sip.message import Response, parse_datagram
from tests.interop._procs import (
    WAIT,
    Twistd,
    free_port,
    run_cli,
    short_tempdir,
    tcp_answers,
    wait_for,
)

INVITE_MSG = """
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
"""


def failure_ack(branch: str) -> str:
    return f"""
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
"""


class SippCase(SynchronousTestCase):
    tel_stub = "answer"
    #: More statements for the sip interface.
    sip_extra = ""
    #: The address sipp sends from (any 127/8 address is the loopback).
    sipp_ip = "127.0.0.1"

    def setUp(self) -> None:
        self.sipp = shutil.which("sipp")
        if self.sipp is None:
            raise SkipTest("sipp (Debian sip-tester) is not installed")
        self.dir = short_tempdir(self)
        self.conf = os.path.join(self.dir, "cig.conf")
        for attempt in (1, 2):
            self.sip_port = free_port(socket.SOCK_DGRAM)
            self.mgmt_port = free_port()
            with open(self.conf, "w") as f:
                f.write(
                    CONF.format(
                        d=self.dir,
                        sip_port=self.sip_port,
                        mgmt_port=self.mgmt_port,
                        sip_extra=self.sip_extra,
                    )
                )
            cig = Twistd(
                self.dir, "cig", "--config", self.conf, "--notify", "", "--tel-stub", self.tel_stub
            )
            self.addCleanup(cig.stop)
            try:
                wait_for(
                    lambda: tcp_answers(self.mgmt_port) or cig.proc.poll() is not None,
                    "CIG management port",
                    2 * WAIT,
                )
            except AssertionError:
                raise AssertionError(f"the CIG did not start:\n{cig.output()}") from None
            if cig.proc.poll() is None:
                break
            # a port free_port gave was taken by a test running beside this
            # one before the CIG bound it: once more with new ports
            self.assertEqual(attempt, 1, f"the CIG did not start:\n{cig.output()}")
        self.cig = cig
        self.client = SipUdpClient(self, self.sip_port)
        wait_for(lambda: self.client.options() == 200, "CIG answering OPTIONS")

    def run_sipp(
        self, *args: str, scenario: str | None = None, wait: bool = True
    ) -> subprocess.Popen[bytes]:
        argv = [self.sipp or "sipp"]
        if scenario is not None:
            path = os.path.join(self.dir, f"scenario{time.time_ns()}.xml")
            with open(path, "w") as f:
                f.write(scenario)
            argv += ["-sf", path]
        else:
            argv += ["-sn", "uac"]
        argv += [
            f"127.0.0.1:{self.sip_port}",
            "-i",
            self.sipp_ip,
            "-p",
            str(free_port(socket.SOCK_DGRAM)),
            "-mp",
            str(free_port(socket.SOCK_DGRAM)),
            "-nostdin",
            "-timeout",
            "30",
            "-timeout_error",
            *args,
        ]
        proc = subprocess.Popen(argv, cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        if wait:
            self.finish(proc)
        return proc

    def finish(self, proc: subprocess.Popen[bytes]) -> None:
        out, err = proc.communicate(timeout=60)
        self.assertEqual(
            proc.returncode,
            0,
            f"sipp failed:\n{err.decode(errors='replace')}\n{out.decode(errors='replace')[-3000:]}"
            f"\nCIG log:\n{self.cig.output()[-3000:]}",
        )

    def show_call(self) -> str:
        status, out, err = run_cli(
            "cig-cli",
            "--address",
            f"127.0.0.1:{self.mgmt_port}",
            "--cookie",
            os.path.join(self.dir, "mgmt.cookie"),
            "show",
            "call",
        )
        self.assertEqual(status, 0, err)
        return out

    def session_log(self) -> str:
        try:
            with open(os.path.join(self.dir, "log", "session.log")) as f:
                return f.read()
        except OSError:
            return ""


CONF = """
map sip2tel {{
    entry nine
        sip "sip:9{{n}}@{{host}}"
        tel "tel:+{{n}}";
}}
map telsrc {{
    entry all
        sip "sip:{{user}}@{{host}}"
        tel "tel:+8888;{{user}}";
}}
interfaces {{
    tel {{
        source map telsrc;
    }}
    sip {{
        extension map sip2tel;
        bind 127.0.0.1 {sip_port};
        rtp_port_range 30000 30100;
        messaging true;
        trusted_peer 127.0.0.1;{sip_extra}
    }}
}}
crs {{
    address 192.0.2.10 5223;
    keystore "{d}/userdata";
}}
relay {{
    control "{d}/relay.sock";
}}
management {{
    bind 127.0.0.1 {mgmt_port};
    cookie "{d}/mgmt.cookie";
    socket "{d}/cig.sock";
}}
logging {{
    dir "{d}/log";
}}
"""


class SipUdpClient:
    """A raw UDP socket on loopback for hand-made SIP."""

    def __init__(self, case: SynchronousTestCase, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        case.addCleanup(self.sock.close)
        self.count = 0

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.target)

    def replies(self, wait: float = 0.3) -> list[bytes]:
        out = []
        self.sock.settimeout(wait)
        while True:
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                return out
            out.append(data)
            self.sock.settimeout(0.05)

    def options(self) -> int | None:
        """Send OPTIONS; the status of the answer, if one comes."""
        self.count += 1
        self.send(
            OPTIONS.format(port=self.port, branch=f"opt{self.count}{time.time_ns()}").encode()
        )
        for data in self.replies(1.0):
            message = parse_datagram(data)
            if isinstance(message, Response) and message.cseq.method == "OPTIONS":
                return message.status
        return None


OPTIONS = (
    "OPTIONS sip:cig@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{branch}\r\n"
    "From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:cig@127.0.0.1>\r\n"
    "Call-ID: {branch}@probe\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)
