"""
CIG SIP call setup rate: one JSON line.

    python bench/sip.py [--step-seconds S] [--start CPS] [--max CPS]

Starts ``twistd -n cig`` on loopback with the tel side stubbed to answer
every routed call at once (``--tel-stub answer``), then has sipp's
built-in UAC place calls (INVITE, 100/180/200, ACK, BYE, 200: every call
routed through the manual's maps, logged to session.log and listed in
``show call``) at a rising rate, each step for ``--step-seconds``. A step
passes when at most 0.1% of its calls fail and sipp kept up the offered
rate (within 5%); the ladder stops at the first step that does not pass.
The result is the highest passing rate, in call setups per second.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

BIN = os.path.dirname(sys.executable)
FAILURE_LIMIT = 0.001
CONF = """
map sip2tel {{ entry nine sip "sip:9{{n}}@{{host}}" tel "tel:+{{n}}"; }}
map telsrc {{ entry all sip "sip:{{user}}@{{host}}" tel "tel:+8888;{{user}}"; }}
interfaces {{
    tel {{ source map telsrc; }}
    sip {{ extension map sip2tel; bind 127.0.0.1 {sip_port}; rtp_port_range 20000 60000;
           trusted_peer 127.0.0.1; }}
}}
relay {{ control "{d}/relay.sock"; }}
management {{ bind 127.0.0.1 {mgmt_port}; cookie "{d}/mgmt.cookie"; socket "{d}/cig.sock"; }}
logging {{ dir "{d}/log"; }}
"""


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def options_answered(port: int) -> bool:
    probe = (
        b"OPTIONS sip:cig@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKb\r\n"
        b"From: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:cig@127.0.0.1>\r\nCall-ID: bench\r\n"
        b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        s.sendto(probe, ("127.0.0.1", port))
        try:
            return s.recv(4096).startswith(b"SIP/2.0 200")
        except OSError:
            return False


def run_step(workdir: str, sip_port: int, rate: int, seconds: float) -> dict[str, Any]:
    calls = max(1, int(rate * seconds))
    stat = os.path.join(workdir, f"stat{rate}.csv")
    argv = [
        shutil.which("sipp") or "sipp",
        "-sn",
        "uac",
        f"127.0.0.1:{sip_port}",
        "-s",
        "9123",
        "-i",
        "127.0.0.1",
        "-p",
        str(free_port(socket.SOCK_DGRAM)),
        "-mp",
        str(free_port(socket.SOCK_DGRAM)),
        "-r",
        str(rate),
        "-m",
        str(calls),
        "-l",
        str(max(1000, rate * 4)),
        "-d",
        "0",
        "-nostdin",
        "-timeout",
        str(int(seconds * 3 + 40)),
        "-trace_stat",
        "-stf",
        stat,
        "-fd",
        "1",
    ]
    started = time.monotonic()
    subprocess.run(argv, cwd=workdir, capture_output=True, timeout=seconds * 4 + 120)
    elapsed = time.monotonic() - started
    with open(stat) as f:
        lines = f.read().strip().splitlines()
    head = lines[0].split(";")
    last = lines[-1].split(";")
    field = {name: last[i] for i, name in enumerate(head) if i < len(last)}
    ok = int(field.get("SuccessfulCall(C)", "0"))
    failed = int(field.get("FailedCall(C)", "0"))
    done = ok + failed
    lost = calls - done
    failure = (failed + lost) / calls
    achieved = float(field.get("CallRate(C)", "0").replace(",", "."))
    return {
        "offered_cps": rate,
        "achieved_cps": round(achieved, 1),
        "calls": calls,
        "successful": ok,
        "failed": failed + lost,
        "failure_ratio": round(failure, 5),
        "seconds": round(elapsed, 1),
        "passed": failure <= FAILURE_LIMIT and achieved >= 0.95 * rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step-seconds", type=float, default=5.0)
    parser.add_argument("--start", type=int, default=100)
    parser.add_argument("--max", type=int, default=5000)
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        sys.exit("sipp (Debian sip-tester) is not installed")
    workdir = tempfile.mkdtemp(prefix="cry-bench-sip-", dir="/tmp")
    sip_port = free_port(socket.SOCK_DGRAM)
    conf = os.path.join(workdir, "cig.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(d=workdir, sip_port=sip_port, mgmt_port=free_port(socket.SOCK_STREAM)))
    cig = subprocess.Popen(
        [
            os.path.join(BIN, "twistd"),
            "-n",
            "--pidfile=",
            f"--logfile={workdir}/twistd.log",
            "cig",
            "--config",
            conf,
            "--notify",
            "",
            "--tel-stub",
            "answer",
        ],
        cwd=workdir,
    )
    steps: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 30
        while not options_answered(sip_port):
            if time.monotonic() > deadline or cig.poll() is not None:
                sys.exit("the CIG did not start")
            time.sleep(0.2)
        rate = args.start
        while rate <= args.max:
            step = run_step(workdir, sip_port, rate, args.step_seconds)
            steps.append(step)
            if not step["passed"]:
                break
            rate = int(rate * 1.3 + 0.5) if rate >= 300 else rate + 100
            time.sleep(1)
    finally:
        cig.terminate()
        cig.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    passed = [s["offered_cps"] for s in steps if s["passed"]]
    print(
        json.dumps(
            {
                "bench": "sip",
                "sustained_call_setups_per_second": max(passed) if passed else 0,
                "failure_limit": FAILURE_LIMIT,
                "step_seconds": args.step_seconds,
                "steps": steps,
            }
        )
    )


if __name__ == "__main__":
    main()
