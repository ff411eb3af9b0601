"""
CRS relay speed against rtpengine, on the same load in the same run: one JSON line.

    python bench/relay.py [--seconds S] [--relay-arg ARG ...]

Load: 2 legs per session, each sending 172-byte RTP packets (12-byte header
and 160 bytes of G.711, 20 ms apart: 100 packets/s per session) to the relay,
ours with the leg's 8-byte tag ahead of the packet.  Runs: 1, 100 and 1,000
concurrent sessions at that rate, then a saturation ladder (100 sessions,
offered rate raised step by step until more than 1% is lost, twice in a row;
the two relays take turns at each step).  Every run uses
fresh sessions on a freshly started relay, both for ours (``twistd -n
crs-relay``) and for rtpengine (userspace, one thread, sessions created with
ng ``offer``/``answer`` on loopback), each pinned to its own core.

The load generator is a C program compiled here with gcc, pinned to the other
core: one thread, one socket per leg, ``sendmmsg``/``recvmmsg``; each packet
carries its send time, so the latency is measured where it arrives.  Its
ceiling (legs sending straight to each other, as fast as it can, with the same
send and receive work per packet) is printed with the results, and "added
latency" is the latency through a relay less the latency of that same load
sent straight from leg to leg.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: Packets per second per session: 2 legs, one packet each 20 ms.
SESSION_RATE = 100
#: Saturation ladder (offered packets/s, 100 sessions).
LADDER = (
    15_000,
    30_000,
    60_000,
    90_000,
    120_000,
    150_000,
    180_000,
    240_000,
    300_000,
    400_000,
    500_000,
    600_000,
)
#: Loss above which a ladder step counts as saturated.
LOSS_LIMIT = 0.01
#: Packets a generator leg hands to sendmmsg at once.
BATCH = 8
GEN_CPU = 0
RELAY_CPU = 1

GEN_C = r"""/* Relay load generator: 2N UDP legs on 127.0.0.1, paced sending, latency.
 *
 * stdin/stdout protocol:
 *   argv: NLEGS
 *   prints: one line with the NLEGS local ports, space separated
 *   reads:  NLEGS lines "DESTPORT HEXHEADER|-"
 *   reads:  "RATE SECONDS" (RATE 0: as fast as possible)
 *   prints: "sent received p50_us p99_us max_us"
 * Each packet: header (0 or more bytes) + 12-byte RTP header + 160 bytes,
 * the payload's first 8 bytes the CLOCK_MONOTONIC send time in ns.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RTP 172
#define HMAX 32
#define HIST 200000 /* µs */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

struct leg {
    int fd;
    struct sockaddr_in dest;
    unsigned char pkt[HMAX + RTP];
    int hlen;
    uint16_t seq;
};

static uint32_t hist[HIST + 1];

int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    struct leg *legs = calloc(n, sizeof *legs);
    int ep = epoll_create1(0);
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        int sz = 1 << 20;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 1; }
        socklen_t l = sizeof a;
        getsockname(fd, (struct sockaddr *)&a, &l);
        legs[i].fd = fd;
        printf("%s%d", i ? " " : "", ntohs(a.sin_port));
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    printf("\n");
    fflush(stdout);
    for (int i = 0; i < n; i++) {
        int port;
        char hex[128];
        if (scanf("%d %127s", &port, hex) != 2) return 2;
        struct leg *g = &legs[i];
        g->dest.sin_family = AF_INET;
        g->dest.sin_port = htons(port);
        g->dest.sin_addr.s_addr = htonl(0x7f000001);
        g->hlen = 0;
        if (strcmp(hex, "-") != 0) {
            g->hlen = strlen(hex) / 2;
            for (int k = 0; k < g->hlen; k++) sscanf(hex + 2 * k, "%2hhx", &g->pkt[k]);
        }
        unsigned char *r = g->pkt + g->hlen;
        memset(r, 0, RTP);
        r[0] = 0x80;
        r[1] = 0;
        uint32_t ssrc = htonl(0x1000 + i);
        memcpy(r + 8, &ssrc, 4);
    }
    double rate, secs;
    int batch;
    if (scanf("%lf %lf %d", &rate, &secs, &batch) != 3) return 2;
    if (batch < 1) batch = 1;
    if (batch > 64) batch = 64;
    static unsigned char bufs[64][HMAX + RTP], rbufs[64][2048];
    static struct mmsghdr smsg[64], rmsg[64];
    static struct iovec siov[64], riov[64];
    for (int j = 0; j < 64; j++) {
        riov[j].iov_base = rbufs[j];
        riov[j].iov_len = sizeof rbufs[j];
        rmsg[j].msg_hdr.msg_iov = &riov[j];
        rmsg[j].msg_hdr.msg_iovlen = 1;
    }
    uint64_t dropped = 0;

    /* Warm up as calls already under way: every leg latches and both
       directions flow for a few packets, then the queues settle. */
    for (int round = 0; round < 16; round++) {
        for (int i = 0; i < n; i++) {
            struct leg *g = &legs[i];
            uint64_t tn = now_ns();
            memcpy(g->pkt + g->hlen + 12, &tn, 8);
            sendto(g->fd, g->pkt, g->hlen + RTP, 0, (struct sockaddr *)&g->dest, sizeof g->dest);
        }
        usleep(2000);
        for (int i = 0; i < n; i++)
            while (recvmmsg(legs[i].fd, rmsg, 64, MSG_DONTWAIT, NULL) > 0)
                ;
    }
    usleep(300000);
    for (int i = 0; i < n; i++)
        while (recvmmsg(legs[i].fd, rmsg, 64, MSG_DONTWAIT, NULL) > 0)
            ;
    uint64_t sent = 0, received = 0, start = now_ns();
    uint64_t end = start + (uint64_t)(secs * 1e9), drain_end = end + 500000000ull;
        struct epoll_event evs[256];
    int li = 0;
    for (;;) {
        uint64_t t = now_ns();
        if (t >= drain_end) break;
        if (t < end) {
            uint64_t due = rate > 0 ? (uint64_t)((t - start) * rate / 1e9) : sent + 64;
            int burst = 0;
            while (sent < due && burst < 256) {
                struct leg *g = &legs[li];
                li = li + 1 == n ? 0 : li + 1;
                int b = due - sent < (uint64_t)batch ? (int)(due - sent) : batch;
                uint64_t tn = now_ns();
                for (int j = 0; j < b; j++) {
                    unsigned char *r = bufs[j];
                    memcpy(r, g->pkt, g->hlen + RTP);
                    r += g->hlen;
                    g->seq++;
                    uint16_t s = htons(g->seq);
                    memcpy(r + 2, &s, 2);
                    uint32_t ts = htonl(g->seq * 160u);
                    memcpy(r + 4, &ts, 4);
                    memcpy(r + 12, &tn, 8);
                    siov[j].iov_base = bufs[j];
                    siov[j].iov_len = g->hlen + RTP;
                    smsg[j].msg_hdr.msg_iov = &siov[j];
                    smsg[j].msg_hdr.msg_iovlen = 1;
                    smsg[j].msg_hdr.msg_name = &g->dest;
                    smsg[j].msg_hdr.msg_namelen = sizeof g->dest;
                }
                int done = sendmmsg(g->fd, smsg, b, 0);
                if (done < b) dropped += b - (done < 0 ? 0 : done);
                sent += b;
                burst += b;
            }
        }
        int k = epoll_wait(ep, evs, 256, 0);
        for (int e = 0; e < k; e++) {
            int fd = legs[evs[e].data.u32].fd;
            for (;;) {
                int got = recvmmsg(fd, rmsg, 64, MSG_DONTWAIT, NULL);
                if (got <= 0) break;
                uint64_t tr = now_ns();
                for (int j = 0; j < got; j++) {
                    int m = rmsg[j].msg_len;
                    if (m < RTP) continue;
                    uint64_t tn;
                    memcpy(&tn, rbufs[j] + m - RTP + 12, 8);
                    uint64_t us = (tr - tn) / 1000;
                    hist[us > HIST ? HIST : us]++;
                    received++;
                }
                if (got < 64) break;
            }
        }
    }
    uint64_t acc = 0, p50 = 0, p99 = 0, mx = 0;
    int have50 = 0, have99 = 0;
    for (int i = 0; i <= HIST; i++) {
        if (!hist[i]) continue;
        acc += hist[i];
        mx = i;
        if (!have50 && acc * 2 >= received) { p50 = i; have50 = 1; }
        if (!have99 && acc * 100 >= received * 99) { p99 = i; have99 = 1; }
    }
    printf("%llu %llu %llu %llu %llu %llu\n", (unsigned long long)sent,
           (unsigned long long)dropped, (unsigned long long)received,
           (unsigned long long)p50, (unsigned long long)p99, (unsigned long long)mx);
    return 0;
}
"""


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: int, argv: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(cpu), *argv] if taskset and os.cpu_count() != 1 else argv


def build_generator(workdir: str) -> str:
    source = os.path.join(workdir, "gen.c")
    exe = os.path.join(workdir, "gen")
    Path(source).write_text(GEN_C)
    subprocess.run(["gcc", "-O2", "-o", exe, source], check=True)
    return exe


class Generator:
    """One run of the C load generator with ``legs`` sockets."""

    def __init__(self, exe: str, legs: int) -> None:
        self.proc = subprocess.Popen(
            pinned(GEN_CPU, [exe, str(legs)]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.ports = [int(p) for p in self.proc.stdout.readline().split()]

    def run(
        self, legs: list[tuple[int, str]], rate: float, seconds: float, batch: int
    ) -> dict[str, Any]:
        lines = "".join(f"{port} {header or '-'}\n" for port, header in legs)
        out, _ = self.proc.communicate(f"{lines}{rate} {seconds} {batch}\n", timeout=seconds + 30)
        sent, dropped, received, p50, p99, peak = (int(x) for x in out.split())
        return {
            "offered_pps": round(sent / seconds),
            "forwarded_pps": round(received / seconds),
            "loss": round(1 - received / sent, 5) if sent else 0.0,
            "send_errors": dropped,
            "p50_us": p50,
            "p99_us": p99,
            "max_us": peak,
        }


# -- our relay --------------------------------------------------------------


def amp_box(**fields: bytes) -> bytes:
    out = b""
    for key, value in fields.items():
        k = key.encode("ascii")
        out += struct.pack("!H", len(k)) + k + struct.pack("!H", len(value)) + value
    return out + b"\x00\x00"


def read_box(sock: socket.socket, buffer: bytearray) -> dict[str, bytes]:
    box: dict[str, bytes] = {}
    while True:
        while len(buffer) < 2:
            buffer += sock.recv(65536)
        (klen,) = struct.unpack("!H", buffer[:2])
        if klen == 0:
            del buffer[:2]
            return box
        while len(buffer) < 4 + klen:
            buffer += sock.recv(65536)
        key = bytes(buffer[2 : 2 + klen]).decode("ascii")
        (vlen,) = struct.unpack("!H", buffer[2 + klen : 4 + klen])
        while len(buffer) < 4 + klen + vlen:
            buffer += sock.recv(65536)
        box[key] = bytes(buffer[4 + klen : 4 + klen + vlen])
        del buffer[: 4 + klen + vlen]


def start_pinned_twistd(
    workdir: str, extra: list[str], plugin_args: list[str], wait: float = 30.0
) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """``twistd -n PLUGIN ...`` pinned to the relay's core, and a connection
    to its control socket ``workdir/relay.sock`` once it answers."""
    proc = subprocess.Popen(
        pinned(
            RELAY_CPU,
            [
                str(BIN / "twistd"),
                "-n",
                "--pidfile=",
                f"--logfile={workdir}/twistd.log",
                *extra,
                *plugin_args,
            ],
        ),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + wait
    while True:
        try:
            control.connect(f"{workdir}/relay.sock")
            return proc, control
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(Path(f"{workdir}/twistd.log").read_text()) from None
            time.sleep(0.05)


class OurRelay:
    """``twistd -n crs-relay`` on loopback, sessions added over its control socket."""

    def __init__(self, workdir: str, extra: list[str], media_io: str, kernel_path: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="rb-", dir=workdir)
        self.port = free_port()
        conf = os.path.join(self.dir, "crs.conf")
        Path(conf).write_text(
            f"[GLOBAL]\nkey benchkey\nrelay 127.0.0.1 {self.port}\n"
            f"relay-control {self.dir}/relay.sock\nlog-dir {self.dir}\n"
            "[POOL]\nhost crs1\nip crs1 127.0.0.1\n"
        )
        self.proc, self.control = start_pinned_twistd(
            self.dir,
            extra,
            [
                *("crs-relay", "--config", conf, "--notify", "", "--media-io", media_io),
                *("--kernel-path", kernel_path),
            ],
        )
        self.log = os.path.join(self.dir, "crs_relay.log")
        self.buffer = bytearray()
        self.asks = 0

    def call(self, command: str, **fields: bytes) -> dict[str, bytes]:
        self.asks += 1
        ask = str(self.asks).encode()
        self.control.sendall(amp_box(_command=command.encode(), _ask=ask, **fields))
        answer = read_box(self.control, self.buffer)
        if "_error" in answer:
            raise RuntimeError(answer)
        return answer

    def configure(self, ports: list[int]) -> list[tuple[int, str]]:
        legs = []
        for _ in range(len(ports) // 2):
            answer = self.call("Add", server=b"bench", label=b"")
            legs.append((self.port, answer["tag_a"].hex()))
            legs.append((self.port, answer["tag_b"].hex()))
        return legs

    def stats(self) -> dict[str, int]:
        answer = self.call("RelayStats")
        chunks = int(answer["stats"])
        text = b"".join(answer[f"stats.{i}"] for i in range(1, chunks + 1))
        stats: dict[str, int] = json.loads(text)
        return stats

    def kernel_path(self) -> str:
        """The relay's log line about its eBPF fast path."""
        for line in Path(self.log).read_text().splitlines():
            if "kernel path" in line:
                return line.split("] ", 1)[1]
        return ""

    def stop(self) -> None:
        self.control.close()
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- rtpengine ----------------------------------------------------------------


def bencode(value: Any) -> bytes:
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(value)


def bdecode(data: bytes, at: int = 0) -> tuple[Any, int]:
    kind = data[at : at + 1]
    if kind == b"i":
        end = data.index(b"e", at)
        return int(data[at + 1 : end]), end + 1
    if kind in (b"l", b"d"):
        at += 1
        items = []
        while data[at : at + 1] != b"e":
            item, at = bdecode(data, at)
            items.append(item)
        if kind == b"l":
            return items, at + 1
        return {items[i].decode(): items[i + 1] for i in range(0, len(items), 2)}, at + 1
    colon = data.index(b":", at)
    size = int(data[at:colon])
    return data[colon + 1 : colon + 1 + size], colon + 1 + size


def sdp(port: int) -> str:
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )


def sdp_port(text: bytes) -> int:
    for line in text.decode().splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise ValueError(text)


class Rtpengine:
    """rtpengine, userspace forwarding, one thread; sessions by ng offer/answer."""

    def __init__(self, workdir: str) -> None:
        self.ng = free_port()
        self.proc = subprocess.Popen(
            pinned(
                RELAY_CPU,
                [
                    "rtpengine",
                    "--config-file=none",
                    "--interface=127.0.0.1",
                    f"--listen-ng=127.0.0.1:{self.ng}",
                    "--table=-1",
                    "--foreground",
                    "--port-min=20000",
                    "--port-max=29999",
                    "--num-threads=1",
                    "--log-level=3",
                    "--log-stderr",
                ],
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.5)
        self.cookie = 0
        deadline = time.monotonic() + 20
        while True:
            try:
                self.command({"command": "ping"})
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("rtpengine did not answer ping") from None

    def command(self, message: dict[str, Any]) -> dict[str, Any]:
        self.cookie += 1
        cookie = b"c%d" % self.cookie
        self.sock.sendto(cookie + b" " + bencode(message), ("127.0.0.1", self.ng))
        while True:
            data = self.sock.recv(65536)
            if data.startswith(cookie + b" "):
                answer, _ = bdecode(data, len(cookie) + 1)
                result: dict[str, Any] = answer
                return result

    def configure(self, ports: list[int]) -> list[tuple[int, str]]:
        legs = []
        for i in range(0, len(ports), 2):
            call = {"call-id": f"bench-{i}", "from-tag": f"a{i}"}
            offer = self.command({"command": "offer", "sdp": sdp(ports[i]), **call})
            answer = self.command(
                {"command": "answer", "sdp": sdp(ports[i + 1]), "to-tag": f"b{i}", **call}
            )
            if offer.get("result") != b"ok" or answer.get("result") != b"ok":
                raise RuntimeError((offer, answer))
            legs.append((sdp_port(answer["sdp"]), ""))
            legs.append((sdp_port(offer["sdp"]), ""))
        return legs

    def stop(self) -> None:
        self.sock.close()
        stop_process(self.proc)


class Direct:
    """No relay: each leg sends straight to its peer (baseline and ceiling)."""

    def configure(self, ports: list[int]) -> list[tuple[int, str]]:
        return [(ports[i ^ 1], "") for i in range(len(ports))]

    def stop(self) -> None:
        pass


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(
    exe: str, start: Any, sessions: int, rate: float, seconds: float, batch: int
) -> dict[str, Any]:
    """One run: a fresh relay, ``sessions`` fresh sessions, ``rate`` packets/s."""
    relay = start()
    try:
        gen = Generator(exe, 2 * sessions)
        legs = relay.configure(gen.ports)
        pid = getattr(getattr(relay, "proc", None), "pid", None)
        cpu = cpu_seconds(pid)
        softirq = softirq_seconds(RELAY_CPU)
        result = gen.run(legs, rate, seconds, batch)
        if pid is not None and result["forwarded_pps"]:
            # CPU time is far less disturbed by other work on a shared
            # machine than packets per second of wall-clock time.
            used = cpu_seconds(pid) - cpu
            packets = result["forwarded_pps"] * seconds
            result["cpu_us_per_packet"] = round(used * 1e6 / packets, 2)
            # The kernel's receive work on the relay's core (where --netns
            # steers loopback's), the kernel path's forwarding included.
            kernel = softirq_seconds(RELAY_CPU) - softirq
            result["softirq_us_per_packet"] = round(kernel * 1e6 / packets, 2)
        if isinstance(relay, OurRelay):
            result["counters"] = relay.stats()
            result["kernel_path"] = relay.kernel_path()
        return result
    finally:
        relay.stop()


def softirq_seconds(cpu: int) -> float:
    """Seconds one core has spent in softirq (/proc/stat), all processes'."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                return int(line.split()[7]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_netns(rps_cpu: int) -> None:
    """Run this bench again in a private network and mount namespace whose
    loopback steers received packets to ``rps_cpu``."""
    setup = (
        "mount -t sysfs sysfs /sys && ip link set lo up && "
        f'echo {1 << rps_cpu:x} > /sys/class/net/lo/queues/rx-0/rps_cpus && exec "$@"'
    )
    argv = ["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", setup, "sh"]
    env = {**os.environ, "RELAY_BENCH_NETNS": "1"}
    sys.stdout.flush()
    os.execvpe("unshare", [*argv, sys.executable, *sys.argv], env)


def ratio(ours: float, theirs: float) -> float | None:
    return round(ours / theirs, 3) if theirs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run")
    parser.add_argument(
        "--relay-arg",
        action="append",
        default=[],
        help="extra twistd argument for our relay (before the plugin name), e.g. --reactor=poll",
    )
    parser.add_argument(
        "--media-io", default="mmsg", help="our relay's media adapter: mmsg, reader, twisted"
    )
    parser.add_argument(
        "--kernel-path",
        default="auto",
        help="our relay's eBPF fast path: auto, tcx, tc or off (userspace only)",
    )
    parser.add_argument(
        "--netns",
        action="store_true",
        help="run in a private network namespace (root) whose loopback hands its receive work "
        "to the relay's core (RPS), as a NIC's interrupts would: the kernel path's forwarding "
        "then runs on the relay's core, not in the generator's sends",
    )
    parser.add_argument("--no-rtpengine", action="store_true", help="skip the anchor")
    parser.add_argument("--ladder", default=",".join(str(r) for r in LADDER))
    args = parser.parse_args()
    if args.netns and not os.environ.get("RELAY_BENCH_NETNS"):
        in_netns(RELAY_CPU)
    if shutil.which("gcc") is None:
        sys.exit("bench/relay.py needs gcc for its load generator")
    anchor = not args.no_rtpengine and shutil.which("rtpengine") is not None
    ladder = [int(r) for r in args.ladder.split(",")]
    seconds = args.seconds
    began = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="rbench-", dir="/tmp")
    try:
        exe = build_generator(workdir)
        relays: dict[str, Any] = {
            "ours": lambda: OurRelay(workdir, args.relay_arg, args.media_io, args.kernel_path)
        }
        if anchor:
            relays["rtpengine"] = lambda: Rtpengine(workdir)
        out: dict[str, Any] = {
            "bench": "relay",
            "packet_bytes": 172,
            "seconds_per_run": seconds,
            "cpus": {"generator": GEN_CPU, "relay": RELAY_CPU},
            "ours_media_io": args.media_io,
            "ours_kernel_path": args.kernel_path,
            "netns_rps_to_relay_cpu": bool(os.environ.get("RELAY_BENCH_NETNS")),
            "ours_twistd_args": args.relay_arg,
        }
        ceiling = measure(exe, Direct, 100, 0, seconds, 32)
        out["generator_ceiling_pps"] = ceiling["forwarded_pps"]
        out["paced"] = {}
        for sessions in (1, 100, 1000):
            rate = sessions * SESSION_RATE
            row: dict[str, Any] = {"offered_pps": rate}
            base = measure(exe, Direct, sessions, rate, seconds, 1)
            row["direct"] = {k: base[k] for k in ("loss", "p50_us", "p99_us")}
            for name, start in relays.items():
                got = measure(exe, start, sessions, rate, seconds, 1)
                got["added_p50_us"] = got["p50_us"] - base["p50_us"]
                got["added_p99_us"] = got["p99_us"] - base["p99_us"]
                row[name] = got
            out["paced"][str(sessions)] = row
        # The ladder interleaves the relays step by step, so that both see
        # the same machine (these machines are shared and noisy).
        ladder_out: dict[str, dict[str, Any]] = {
            name: {"no_loss_pps": 0, "steps": []} for name in relays
        }
        for rate in ladder:
            climbing = [n for n in relays if not ladder_out[n].get("saturated")]
            if not climbing:
                break
            for name in climbing:
                # A lossy step is run once more before it counts: another
                # process's burst on a shared machine is not saturation.
                for attempt in (1, 2):
                    got = measure(exe, relays[name], 100, rate, seconds, BATCH)
                    got["attempts"] = attempt
                    if got["loss"] <= LOSS_LIMIT:
                        break
                entry = ladder_out[name]
                keys = ("offered_pps", "forwarded_pps", "loss", "p99_us", "attempts")
                keys += ("cpu_us_per_packet", "softirq_us_per_packet")
                step = {"rate": rate, **{k: got.get(k) for k in keys}}
                if "counters" in got:
                    step["counters"] = got["counters"]
                    out.setdefault("ours_kernel_path_log", got["kernel_path"])
                entry["steps"].append(step)
                if got["loss"] > LOSS_LIMIT:
                    entry["saturated"] = True
                else:
                    entry["no_loss_pps"] = max(entry["no_loss_pps"], got["forwarded_pps"])
        out["saturation"] = ladder_out
        if anchor:
            ours, theirs = out["saturation"]["ours"], out["saturation"]["rtpengine"]
            out["ratio_saturation"] = ratio(ours["no_loss_pps"], theirs["no_loss_pps"])
            out["ratio_peak_forwarded"] = ratio(
                max(s["forwarded_pps"] for s in ours["steps"]),
                max(s["forwarded_pps"] for s in theirs["steps"]),
            )
            clean = {
                name: {
                    st["rate"]: (st.get("cpu_us_per_packet"), st.get("softirq_us_per_packet"))
                    for st in out["saturation"][name]["steps"]
                    if st["loss"] <= LOSS_LIMIT
                }
                for name in ("ours", "rtpengine")
            }
            common = sorted(set(clean["ours"]) & set(clean["rtpengine"]))
            if common:
                (ours_cpu, ours_irq), (their_cpu, their_irq) = (
                    clean[name][common[-1]] for name in ("ours", "rtpengine")
                )
                out["cpu_us_per_packet_at"] = {
                    "offered_pps": common[-1],
                    "ours": ours_cpu,
                    "rtpengine": their_cpu,
                    "ours_softirq": ours_irq,
                    "rtpengine_softirq": their_irq,
                }
                if ours_cpu and their_cpu:
                    # Packets per CPU-second: ours over rtpengine's.
                    out["ratio_cpu_efficiency"] = round(their_cpu / ours_cpu, 3)
                ours_all, their_all = (
                    (ours_cpu or 0) + (ours_irq or 0),
                    (their_cpu or 0) + (their_irq or 0),
                )
                if ours_all and their_all:
                    # The same with the relay core's softirq time (the kernel
                    # path's forwarding is there, not in the process).
                    out["ratio_cpu_efficiency_with_softirq"] = round(their_all / ours_all, 3)
            p99 = out["paced"]["1000"]
            out["ratio_p99_1000"] = ratio(p99["ours"]["p99_us"], p99["rtpengine"]["p99_us"])
        out["bench_seconds"] = round(time.monotonic() - began, 1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(out, separators=(",", ":")))


if __name__ == "__main__":
    main()
