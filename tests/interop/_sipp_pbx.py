"""sipp standing in for the PBX of ``_cig.SecurePbxFixture`` (L{SippPbx}):
the CIG's calls to extension EXT go straight to a sipp UAS scenario, which
plays RTP from pcap files written by L{tone_pcap}."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from typing import Any

from twisted.trial.unittest import SkipTest

from cryptify.client.audio import tone, ulaw_encode
from tests.interop._procs import free_port

#: What the sipp PBX's responses carry as SDP (its media port, PCMU).
SIPP_SDP = """v=0
o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""


def response(status: str, sdp: bool = True, to_tag: bool = True) -> str:
    """A sipp <send> of a response to the last request (with our SDP)."""
    tag = ";tag=[pid]SIPpTag01[call_number]" if to_tag else ""
    body = (
        f"Content-Type: application/sdp\nContent-Length: [len]\n\n{SIPP_SDP}"
        if sdp
        else ("Content-Length: 0\n")
    )
    return f"""<send><![CDATA[
SIP/2.0 {status}
[last_Via:]
[last_From:]
[last_To:]{tag}
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port];transport=[transport]>
{body}
]]></send>
"""


def tone_pcap(path: str, freq: float, seconds: float, ssrc: int = 0x5EED) -> None:
    """A pcap of PCMU RTP packets (20 ms each) of a C{freq} Hz tone, for
    sipp's ``play_pcap_audio`` (Ethernet, IPv4, UDP; sipp re-addresses them)."""
    payload = ulaw_encode(tone(freq, seconds))
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(len(payload) // 160):
        rtp = struct.pack("!BBHII", 0x80, 0, i, 160 * i, ssrc) + payload[i * 160 : i * 160 + 160]
        udp = struct.pack("!HHHH", 9000, 9002, 8 + len(rtp), 0) + rtp
        header = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
            bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]),
        )  # fmt: skip
        words = struct.unpack("!10H", header)
        total = sum(words)
        total = (total & 0xFFFF) + (total >> 16)
        checksum = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
        ip = header[:10] + struct.pack("!H", checksum) + header[12:] + udp
        frame = b"\x00" * 12 + b"\x08\x00" + ip
        usec = i * 20000
        out.append(struct.pack("<IIII", usec // 1000000, usec % 1000000, len(frame), len(frame)))
        out.append(frame)
    with open(path, "wb") as f:
        f.write(b"".join(out))


class SippPbx:
    """sipp as the PBX: a UAS scenario on ``kam_port`` (the name the fixture uses)."""

    def __init__(self, case: Any, directory: str, scenario: str) -> None:
        self.sipp = shutil.which("sipp")
        if self.sipp is None:
            raise SkipTest("sipp (Debian sip-tester) is not installed")
        self.case = case
        self.dir = directory
        self.scenario = scenario
        self.kam_port = free_port(socket.SOCK_DGRAM)
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        path = os.path.join(self.dir, "pbx.xml")
        with open(path, "w") as f:
            f.write(self.scenario)
        argv = [self.sipp or "sipp", "-sf", path, "-i", "127.0.0.1", "-p", str(self.kam_port)]
        argv += ["-mp", str(free_port(socket.SOCK_DGRAM)), "-aa", "-nostdin"]
        argv += ["-trace_msg", "-trace_err", "-timeout", "120"]
        out = open(os.path.join(self.dir, "sipp.out"), "wb")
        self.proc = subprocess.Popen(argv, cwd=self.dir, stdout=out, stderr=subprocess.STDOUT)

        def stop() -> None:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            out.close()

        self.case.addCleanup(stop)

    def messages(self) -> str:
        """What sipp's -trace_msg wrote."""
        text = ""
        for name in sorted(os.listdir(self.dir)):
            if name.startswith("pbx_") and name.endswith(("_messages.log", "_errors.log")):
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    text += f.read()
        return text

    def context(self) -> str:
        try:
            with open(os.path.join(self.dir, "sipp.out"), errors="replace") as f:
                out = f.read()[-2000:]
        except OSError:
            out = ""
        return f"\nsipp messages:\n{self.messages()[-4000:]}\nsipp output:\n{out}"
