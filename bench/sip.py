"""
CIG SIP call setup rate against Kamailio's, same run, same ladder: one JSON line.

    python bench/sip.py [--step-seconds S] [--start CPS] [--max CPS]
                        [--subjects cig,kamailio,sipp]

Three subjects climb the same ladder of offered rates, step by step in
turn (so a busy minute of this shared machine hits all of them alike):

``cig``
    ``twistd -n cig`` on loopback with the tel side stubbed to answer every
    routed call at once (``--tel-stub answer``); every call is routed
    through the manual's maps, logged to session.log and listed in
    ``show call``.
``kamailio``
    the anchor of ``../shared/ANCHORS.md``: Kamailio as a minimal stateful
    proxy (tm + rr, two UDP children) relaying every call to a
    ``sipp -sn uas``.
``sipp``
    the generator's own ceiling: the same sipp UAC straight to that UAS.

At each step sipp's built-in UAC places calls (INVITE, 100/180/200, ACK,
BYE, 200) for ``--step-seconds``. A step passes when at most 0.1% of its
calls fail and sipp kept up the offered rate (within 5%). A step that
does not pass is run once more (``retry`` in its record; a busy moment of
the shared machine costs Kamailio a call or two as well as the CIG); a
subject stops climbing at its first step that fails twice. A subject's
result is its
highest passing rate, in call setups per second. Each step also reports
the CPU seconds the server (the CIG, all of Kamailio's processes) and the
UAC spent per successful call, which compare across runs where the rates
(on a loaded machine) do not. ``ratio`` is the CIG's rate over
Kamailio's; ``generator_limited`` says whether a subject's rate reached
the generator's own ceiling (then sipp, not the subject, was measured).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench._procs import cpu_budget, free_port  # noqa: E402

BIN = os.path.dirname(sys.executable)
FAILURE_LIMIT = 0.001
SUBJECTS = ("cig", "kamailio", "sipp")
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
#: The anchor's proxy (ANCHORS.md, "SIP call rate"): stateful, record-routing.
KAMAILIO_CFG = """#!KAMAILIO
debug=1
log_stderror=yes
children=2
listen=udp:{address}:{port}
mpath="{modules}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "siputils.so"
request_route {{
  if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
  if (has_totag()) {{
    if (loose_route()) {{ t_relay(); exit; }}
    if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    $du = "sip:{uas}"; t_relay(); exit;
  }}
  if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
  record_route();
  $du = "sip:{uas}";
  t_relay();
}}
"""
KAMAILIO_ADDRESS = "127.0.0.2"
UAS_ADDRESS = "127.0.0.3"


def free_udp(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def options_answered(address: str, port: int) -> bool:
    """Whether a SIP server at C{address}:C{port} answers OPTIONS (any status;
    with Max-Forwards 0 a proxy answers itself instead of relaying)."""
    probe = (
        f"OPTIONS sip:probe@{address} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bKbench\r\n"
        f"From: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:probe@{address}>\r\nCall-ID: bench\r\n"
        "CSeq: 1 OPTIONS\r\nMax-Forwards: 0\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        s.bind(("127.0.0.1", 0))
        s.sendto(probe, (address, port))
        try:
            return s.recv(4096).startswith(b"SIP/2.0 ")
        except OSError:
            return False


def tree_cpu(pid: int) -> float:
    """CPU seconds of C{pid} and its children (Kamailio forks its workers)."""
    total = 0.0
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                text = f.read()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        child = int(stat.split("/")[2])
        if child == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_step(
    workdir: str, name: str, target: str, rate: int, seconds: float, server_pid: int | None
) -> dict[str, Any]:
    calls = max(1, int(rate * seconds))
    stat = os.path.join(workdir, f"stat-{name}-{rate}.csv")
    argv = [
        shutil.which("sipp") or "sipp",
        "-sn",
        "uac",
        target,
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
    server_before = tree_cpu(server_pid) if server_pid else 0.0
    uac_before = children_cpu()
    started = time.monotonic()
    subprocess.run(argv, cwd=workdir, capture_output=True, timeout=seconds * 4 + 120)
    elapsed = time.monotonic() - started
    uac_cpu = children_cpu() - uac_before
    server_cpu = tree_cpu(server_pid) - server_before if server_pid else 0.0
    try:
        with open(stat) as f:
            lines = f.read().strip().splitlines()
    except OSError:
        lines = ["", ""]
    head = lines[0].split(";")
    last = lines[-1].split(";")
    field = {n: last[i] for i, n in enumerate(head) if i < len(last)}
    ok = int(field.get("SuccessfulCall(C)", "0") or 0)
    failed = int(field.get("FailedCall(C)", "0") or 0)
    lost = calls - ok - failed
    failure = (failed + lost) / calls
    achieved = float((field.get("CallRate(C)", "0") or "0").replace(",", "."))
    step: dict[str, Any] = {
        "offered_cps": rate,
        "achieved_cps": round(achieved, 1),
        "calls": calls,
        "successful": ok,
        "failed": failed + lost,
        "failure_ratio": round(failure, 5),
        "seconds": round(elapsed, 1),
        "uac_cpu_per_call_ms": round(1000 * uac_cpu / max(ok, 1), 3),
        "passed": failure <= FAILURE_LIMIT and achieved >= 0.95 * rate,
    }
    if server_pid:
        step["server_cpu_per_call_ms"] = round(1000 * server_cpu / max(ok, 1), 3)
    return step


class Subjects:
    """The processes under test and where the UAC sends its calls."""

    def __init__(self, workdir: str) -> None:
        self.dir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.targets: dict[str, tuple[str, int | None]] = {}

    def start(self, wanted: list[str]) -> None:
        if "cig" in wanted:
            self.targets["cig"] = self.start_cig()
        if "kamailio" in wanted or "sipp" in wanted:
            uas = self.start_uas()
            if "kamailio" in wanted:
                self.targets["kamailio"] = self.start_kamailio(uas)
            if "sipp" in wanted:
                self.targets["sipp"] = (uas, None)

    def spawn(self, log: str | None, argv: list[str]) -> subprocess.Popen[bytes]:
        path = os.path.join(self.dir, log) if log else os.devnull  # sipp redraws its screen
        with open(path, "wb") as out:
            proc = subprocess.Popen(argv, cwd=self.dir, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def wait_answering(
        self, what: str, proc: subprocess.Popen[bytes], addr: str, port: int
    ) -> None:
        deadline = time.monotonic() + 60
        while not options_answered(addr, port):
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit(f"{what} did not start (see {self.dir})")
            time.sleep(0.2)

    def start_cig(self) -> tuple[str, int]:
        d = self.dir
        port = free_port(socket.SOCK_DGRAM)
        conf = os.path.join(d, "cig.conf")
        with open(conf, "w") as f:
            f.write(CONF.format(d=d, sip_port=port, mgmt_port=free_port(socket.SOCK_STREAM)))
        argv = [os.path.join(BIN, "twistd"), "-n", "--pidfile=", f"--logfile={d}/twistd.log"]
        argv += ["cig", "--config", conf, "--notify", "", "--tel-stub", "answer"]
        cig = self.spawn("cig.out", argv)
        self.wait_answering("the CIG", cig, "127.0.0.1", port)
        return f"127.0.0.1:{port}", cig.pid

    def start_uas(self) -> str:
        port = free_udp(UAS_ADDRESS)
        argv = ["sipp", "-sn", "uas", "-i", UAS_ADDRESS, "-p", str(port), "-nostdin"]
        self.spawn(None, argv)
        time.sleep(0.5)
        return f"{UAS_ADDRESS}:{port}"

    def start_kamailio(self, uas: str) -> tuple[str, int]:
        if shutil.which("kamailio") is None:
            sys.exit("kamailio is not installed (make debs-test)")
        modules = next(iter(sorted(glob.glob("/usr/lib/*/kamailio/modules/"))), "")
        port = free_udp(KAMAILIO_ADDRESS)
        cfg = os.path.join(self.dir, "kamailio.cfg")
        with open(cfg, "w") as f:
            f.write(
                KAMAILIO_CFG.format(address=KAMAILIO_ADDRESS, port=port, modules=modules, uas=uas)
            )
        argv = ["kamailio", "-f", cfg, "-DD", "-E", "-m", "256", "-M", "16"]
        argv += ["-Y", self.dir, "-P", os.path.join(self.dir, "kamailio.pid")]
        kamailio = self.spawn("kamailio.log", argv)
        self.wait_answering("kamailio", kamailio, KAMAILIO_ADDRESS, port)
        return f"{KAMAILIO_ADDRESS}:{port}", kamailio.pid

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def best(steps: list[dict[str, Any]]) -> int:
    passed = [s["offered_cps"] for s in steps if s["passed"]]
    return max(passed) if passed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step-seconds", type=float, default=5.0)
    parser.add_argument("--start", type=int, default=100)
    parser.add_argument("--max", type=int, default=6000)
    parser.add_argument(
        "--subjects", default=",".join(SUBJECTS), help="a comma list of " + ", ".join(SUBJECTS)
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    wanted = [s for s in args.subjects.split(",") if s]
    if not wanted or set(wanted) - set(SUBJECTS):
        sys.exit(f"--subjects: a comma list of {', '.join(SUBJECTS)}")
    if shutil.which("sipp") is None:
        sys.exit("sipp (Debian sip-tester) is not installed")
    workdir = tempfile.mkdtemp(prefix="cry-bench-sip-", dir="/tmp")
    steps: dict[str, list[dict[str, Any]]] = {name: [] for name in wanted}
    load = os.getloadavg()
    subjects = Subjects(workdir)
    try:
        subjects.start(wanted)
        climbing = list(wanted)
        rate = args.start
        while rate <= args.max and climbing:
            for name in list(climbing):
                target, pid = subjects.targets[name]
                for attempt in range(2):
                    step = run_step(workdir, name, target, rate, args.step_seconds, pid)
                    step["retry"] = attempt > 0
                    steps[name].append(step)
                    time.sleep(1)
                    if step["passed"]:
                        break
                else:
                    climbing.remove(name)
            rate = int(rate * 1.3 + 0.5) if rate >= 300 else rate + 100
    finally:
        subjects.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result: dict[str, Any] = {"bench": "sip"}
    for name in wanted:
        result[f"{name}_call_setups_per_second"] = best(steps[name])
    if "cig" in wanted:
        result["sustained_call_setups_per_second"] = best(steps["cig"])
    if "cig" in wanted and "kamailio" in wanted:
        anchor = best(steps["kamailio"])
        result["ratio"] = round(best(steps["cig"]) / anchor, 3) if anchor else None
    if "sipp" in wanted:
        ceiling = best(steps["sipp"])
        result["generator_ceiling_cps"] = ceiling
        result["generator_limited"] = {
            name: bool(ceiling) and best(steps[name]) >= ceiling
            for name in wanted
            if name != "sipp"
        }
    for name in wanted:
        last_pass = [s for s in steps[name] if s["passed"]][-1:]
        if last_pass and "server_cpu_per_call_ms" in last_pass[0]:
            result[f"{name}_cpu_per_call_ms"] = last_pass[0]["server_cpu_per_call_ms"]
    result.update(
        {
            "failure_limit": FAILURE_LIMIT,
            "step_seconds": args.step_seconds,
            "cpus": cpu_budget(),
            "load_average_at_start": [round(x, 2) for x in load],
            "steps": steps,
        }
    )
    if args.keep:
        result["workdir"] = workdir
    print(json.dumps(result))


if __name__ == "__main__":
    main()
