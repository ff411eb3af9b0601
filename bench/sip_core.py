"""
The CIG's SIP call set-up path in one process, without sockets: one JSON line.

    python bench/sip_core.py [--calls N] [--profile]

Feeds the SIF (as ``twistd cig`` builds it: trusted peers, the stub tel
side answering at once, session.log and cig.log written by their
``LogFileService`` and every event also seen by twistd's own text log
observer, as with ``--logfile``) the datagrams sipp's built-in UAC sends
for a call (INVITE with SDP, ACK, BYE) through ``SipDatagramProtocol``,
with a transport that keeps what would be sent. It prints the least CPU
time per call set-up over ``--rounds`` rounds (and the median) of
everything but the kernel's sends, which ``bench/sip.py`` measures.
``--profile`` also prints (to stderr) where the time goes, by cProfile,
heaviest first.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet import reactor  # noqa: E402
from twisted.logger import globalLogBeginner, textFileLogObserver  # noqa: E402

from bench.sip import CONF  # noqa: E402
from cryptify.cig.calls import CallTable, SessionLogService, StubTelSide  # noqa: E402
from cryptify.cig.sif.core import Sif  # noqa: E402
from cryptify.cig.sif.peers import SipPeers  # noqa: E402
from cryptify.cig.tel.switch import TelSwitch  # noqa: E402
from cryptify.config.cig import parse_cig_config  # noqa: E402
from cryptify.logs import LogFileService  # noqa: E402
from cryptify.plugins.cig import tune_collector  # noqa: E402
from cryptify.protocols.sip.transport import SipDatagramProtocol  # noqa: E402

UAC = ("127.0.0.1", 5061)
SDP = (
    "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def request(method: str, n: int, cseq: int, branch: int, to_tag: str = "", body: str = "") -> bytes:
    """What sipp's built-in UAC sends for call C{n} (its scenario's headers)."""
    tag = f";tag={to_tag}" if to_tag else ""
    extra = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"{method} sip:9123@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4242-{n}-{branch}\r\n"
        f"From: sipp <sip:sipp@127.0.0.1:5061>;tag=4242SIPpTag00{n}\r\n"
        f"To: 9123 <sip:9123@127.0.0.1:5060>{tag}\r\n"
        f"Call-ID: {n}-4242@127.0.0.1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: sip:sipp@127.0.0.1:5061\r\n"
        "Max-Forwards: 70\r\n"
        "Subject: Performance Test\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


class Transport:
    """A listening port's C{write}, keeping the last datagram."""

    def __init__(self) -> None:
        self.sent = 0
        self.last = b""

    def write(self, data: bytes, addr: Any = None) -> None:
        self.sent += 1
        self.last = data


def to_tag(response: bytes) -> str:
    for line in response.split(b"\r\n"):
        if line.startswith(b"To:"):
            return line.split(b";tag=")[1].decode()
    raise AssertionError("no To tag")


def run(protocol: SipDatagramProtocol, transport: Transport, first: int, calls: int) -> None:
    for n in range(first, first + calls):
        protocol.datagramReceived(request("INVITE", n, 1, 0, body=SDP), UAC)
        tag = to_tag(transport.last)
        protocol.datagramReceived(request("ACK", n, 1, 5, to_tag=tag), UAC)
        protocol.datagramReceived(request("BYE", n, 2, 7, to_tag=tag), UAC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --calls calls")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="cry-bench-sipcore-", dir="/tmp")
    twistd_log = open(os.path.join(workdir, "twistd.log"), "w")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(twistd_log)], redirectStandardIO=False)
    cfg = parse_cig_config(CONF.format(d=workdir, sip_port=5060, mgmt_port=8083))
    logs = [
        LogFileService(cfg.logging.dir, "cig.log", "cig"),
        SessionLogService(cfg.logging.dir, reactor),
    ]
    for service in logs:
        service.startService()
    calls = CallTable(reactor)
    sif = Sif(
        cfg,
        reactor,
        TelSwitch(StubTelSide("answer")),
        calls,
        peers=SipPeers.from_config(cfg, reactor),
    )
    transport = Transport()
    protocol = SipDatagramProtocol(sif)
    protocol.transport = transport  # type: ignore[assignment]
    tune_collector()  # as twistd cig does once started
    run(protocol, transport, 0, 200)  # warm the caches
    profile = cProfile.Profile() if args.profile else None
    sent = transport.sent
    per_call: list[float] = []
    first = 200
    for _ in range(args.rounds):
        started = time.process_time()
        if profile is not None:
            profile.enable()
        run(protocol, transport, first, args.calls)
        if profile is not None:
            profile.disable()
        per_call.append((time.process_time() - started) / args.calls)
        first += args.calls
    sent = transport.sent - sent
    sif.stop()
    for service in logs:
        service.stopService()
    with open(os.path.join(workdir, "log", "session.log")) as f:
        lines = sum(1 for _ in f)
    twistd_log.close()
    shutil.rmtree(workdir, ignore_errors=True)
    if profile is not None:
        out = io.StringIO()
        order = os.environ.get("SIP_CORE_SORT", "tottime")  # or cumulative
        top = int(os.environ.get("SIP_CORE_TOP", "40"))
        pstats.Stats(profile, stream=out).sort_stats(order).print_stats(top)
        print(out.getvalue(), file=sys.stderr)
    print(
        json.dumps(
            {
                "bench": "sip_core",
                "calls": args.calls,
                "rounds": args.rounds,
                "cpu_per_call_ms": round(1000 * min(per_call), 4),
                "cpu_per_call_ms_median": round(1000 * sorted(per_call)[len(per_call) // 2], 4),
                "datagrams_sent_per_call": round(sent / args.calls / args.rounds, 2),
                "session_log_lines_per_call": round(lines / (args.calls * args.rounds + 200), 2),
                "profiled": args.profile,
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
