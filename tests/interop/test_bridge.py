"""The CIG media bridge in a real ``twistd cig-relay``, both sides played by UDP sockets.

One socket plays the CRS relay (it receives tag + SRTP from the bridge and
sends bare SRTP back, as the relay does after stripping the peer's tag),
one plays the PBX (plain RTP).  The secure client's SRTP sessions are
pylibsrtp with the keys given in BridgeAdd.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time

from pylibsrtp import Policy, Session
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.relay import g711
from cryptify.protocols.rtp import RtpPacket, TelephoneEvent, encode_rtp, parse_event, parse_rtp
from tests.interop._amp import AmpClient
from tests.interop._procs import Twistd, short_tempdir, unix_answers, wait_for

TAG = b"leg-tag1"
KEY_OUT = os.urandom(30)  # the bridge sends with it
KEY_IN = os.urandom(30)  # the client sends with it


def udp(case: SynchronousTestCase) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.05)
    case.addCleanup(s.close)
    return s


def drain(s: socket.socket, seconds: float) -> list[bytes]:
    """Everything ``s`` receives for ``seconds``."""
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got.append(s.recv(2048))
        except TimeoutError:
            pass
    return got


def flush(s: socket.socket) -> None:
    """Throw away every datagram already queued on ``s``."""
    timeout = s.gettimeout()
    s.setblocking(False)
    try:
        while True:
            s.recv(2048)
    except BlockingIOError:
        pass
    finally:
        s.settimeout(timeout)


def tone(frame: int) -> list[int]:
    return [int(9000 * math.sin(2 * math.pi * 697 * (frame * 160 + i) / 8000)) for i in range(160)]


class BridgeProcessTests(SynchronousTestCase):
    """SRTP <-> RTP through a real cig-relay, with transcoding, DTMF, loss and reordering."""

    def setUp(self) -> None:
        d = self.dir = short_tempdir(self)
        with open(os.path.join(d, "cig.conf"), "w") as f:
            f.write(
                "interfaces {\n"
                "  tel { rtp_remote_addr_override 192.0.2.77 127.0.0.1; }\n"
                "  sip { bind 127.0.0.1; rtp_port_range 41000 41999; }\n"
                "}\n"
                f'relay {{ control "{d}/relay.sock"; }}\n'
                f'logging {{ dir "{d}/log"; }}\n'
            )
        self.proc = Twistd(d, "cig-relay", "--config", os.path.join(d, "cig.conf"), "--notify", "")
        self.addCleanup(self.proc.stop)
        wait_for(lambda: unix_answers(f"{d}/relay.sock"), "cig-relay control socket")
        self.control = AmpClient(f"{d}/relay.sock")
        self.addCleanup(self.control.close)
        self.relay = udp(self)
        self.pbx = udp(self)
        profile = Policy.SRTP_PROFILE_AES128_CM_SHA1_80
        self.client_tx = Session(
            Policy(key=KEY_IN, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
        )
        self.client_rx = Session(
            Policy(key=KEY_OUT, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile)
        )

    def add(self, pbx_codec: str) -> None:
        answer = self.control.call(
            "BridgeAdd",
            call=b"call-1",
            relay_host=b"192.0.2.77",  # rewritten to 127.0.0.1 by the tel override
            relay_port=str(self.relay.getsockname()[1]).encode(),
            tag=TAG,
            srtp_tx_key=KEY_OUT,
            srtp_rx_key=KEY_IN,
            secure_codec=b"PCMU",
            secure_dtmf_pt=b"101",
            pbx_host=b"127.0.0.1",
            pbx_remote_port=str(self.pbx.getsockname()[1]).encode(),
            pbx_codec=pbx_codec.encode(),
            pbx_dtmf_pt=b"96",
        )
        self.assertIn("secure_port", answer, answer)
        self.secure_port = int(answer["secure_port"])
        self.pbx_port = int(answer["pbx_port"])
        self.assertTrue(41000 <= self.pbx_port <= 41999)

    def from_client(self, seq: int, payload: bytes, pt: int = 0, marker: bool = False) -> None:
        rtp = encode_rtp(pt, seq, seq * 160, 0x1234, payload, marker)
        self.relay.sendto(self.client_tx.protect(rtp), ("127.0.0.1", self.secure_port))

    def to_client(self, datagrams: list[bytes]) -> list[RtpPacket]:
        out = []
        for d in datagrams:
            self.assertEqual(d[:8], TAG)
            packet = parse_rtp(self.client_rx.unprotect(d[8:]))
            assert isinstance(packet, RtpPacket)
            out.append(packet)
        return out

    def run_call(self, pbx_codec: str) -> None:
        self.add(pbx_codec)
        sent = [g711.encode(g711.PCMU, tone(i)) for i in range(20)]
        order = list(range(20))
        order[5], order[6] = order[6], order[5]  # reordered
        del order[order.index(12)]  # lost
        for i in order:
            self.from_client(1000 + i, sent[i])
        got = [parse_rtp(d) for d in drain(self.pbx, 0.5)]
        packets = [p for p in got if isinstance(p, RtpPacket)]
        self.assertEqual(len(packets), 19)
        base = packets[0]
        by_index = {((p.sequence - base.sequence) & 0xFFFF): p for p in packets}
        self.assertEqual(sorted(by_index), [i for i in range(20) if i != 12])
        for i, p in by_index.items():
            self.assertEqual((p.timestamp - base.timestamp) % 2**32, 160 * i)
            if pbx_codec == "PCMU":
                self.assertEqual(p.payload, sent[i])  # sample-exact
            else:
                self.assertEqual(p.payload_type, 8)
                for u, a in zip(sent[i], p.payload):
                    self.assertLessEqual(
                        abs(g711.alaw_to_linear(a) - g711.ulaw_to_linear(u)),
                        max(16, abs(g711.ulaw_to_linear(u)) // 16),
                    )
        # PBX -> secure: reordered and lossy PBX audio comes out at a steady rate
        law = g711.PCMA if pbx_codec == "PCMA" else g711.PCMU
        pt = 8 if law == g711.PCMA else 0
        frames = [g711.encode(law, tone(i)) for i in range(25)]
        pbx_order = [i for i in range(25) if i != 7]
        pbx_order[10], pbx_order[11] = pbx_order[11], pbx_order[10]
        start = time.monotonic()
        for n, i in enumerate(pbx_order):
            self.pbx.sendto(
                encode_rtp(pt, 500 + i, 77 + 160 * i, 0xBEEF, frames[i], False),
                ("127.0.0.1", self.pbx_port),
            )
            time.sleep(max(0.0, start + 0.02 * (n + 1) - time.monotonic()))
        heard = self.to_client(drain(self.relay, 0.3))
        audio = b"".join(p.payload for p in heard if p.payload_type == 0)
        expected = [f if law == g711.PCMU else f.translate(g711.ALAW_TO_ULAW) for f in frames]
        found = [i for i, f in enumerate(expected) if f in audio]
        self.assertEqual(found, [i for i in range(25) if i != 7])
        self.assertEqual(audio.index(expected[8]) - audio.index(expected[6]), 320)

    def test_ulaw_to_ulaw_sample_exact(self) -> None:
        """u-law both sides: bytes arrive unchanged both ways; reordering and loss tolerated."""
        self.run_call("PCMU")

    def test_ulaw_to_alaw_transcoded(self) -> None:
        """u-law client, a-law PBX: transcoded both ways within the codec's error."""
        self.run_call("PCMA")

    def test_steady_rate_and_dtmf_both_ways(self) -> None:
        """The relay gets ~50 packets/s with no PBX audio; DTMF crosses in both directions."""
        self.add("PCMU")
        quiet = self.to_client(drain(self.relay, 1.0))
        self.assertTrue(40 <= len(quiet) <= 60, len(quiet))
        self.assertEqual({p.payload for p in quiet}, {b"\xff" * 160})
        # client digit 5 -> PBX as telephone-event with the PBX's payload type
        self.from_client(1, b"\xff" * 160)
        for n, (end, duration) in enumerate([(False, 160), (False, 480), (True, 800)]):
            self.from_client(2 + n, TelephoneEvent(5, end, 10, duration).encode(), 101, n == 0)
        got = [parse_rtp(d) for d in drain(self.pbx, 0.3)]
        events = [p for p in got if isinstance(p, RtpPacket) and p.payload_type == 96]
        self.assertEqual(
            [parse_event(p.payload) for p in events][-1], TelephoneEvent(5, True, 10, 800)
        )
        # PBX digit # -> client with the client's payload type
        for n, (end, duration) in enumerate([(False, 400), (True, 800), (True, 800)]):
            event = TelephoneEvent(11, end, 10, duration).encode()
            self.pbx.sendto(
                encode_rtp(96, 10 + n, 9600, 0xD7, event, n == 0), ("127.0.0.1", self.pbx_port)
            )
            time.sleep(0.05)
        heard = self.to_client(drain(self.relay, 0.3))
        client_events = [parse_event(p.payload) for p in heard if p.payload_type == 101]
        self.assertIn(TelephoneEvent(11, True, 10, 800), client_events)
        stats = json.loads(self.control.call("BridgeStats", call=b"call-1")["stats.1"])
        self.assertEqual(stats["events_to_pbx"], 3)
        self.assertEqual(stats["srtp_errors"], 0)
        removed = self.control.call("BridgeRemove", call=b"call-1")
        self.assertEqual(removed["removed"], b"True")
        # What the bridge sent before it was removed is already queued on
        # loopback; after that, nothing more may come.
        flush(self.relay)
        time.sleep(0.1)
        self.assertEqual(drain(self.relay, 0.2), [])
        with open(os.path.join(self.dir, "log", "relay.log")) as f:
            log = f.read()
        self.assertIn("INIT", log)
        self.assertIn("Bridge call-1 added", log)
        self.assertIn("relay 127.0.0.1:", log)
        self.assertIn("Bridge call-1 removed", log)
        self.assertNotIn(KEY_OUT.hex(), log)
