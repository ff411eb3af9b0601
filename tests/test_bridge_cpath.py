"""The CIG bridge's C path against its Python path, packet for packet.

Two :class:`CallBridge` cores with the same keys and the same random
stream state, one on each engine, are fed the same datagrams (valid SRTP
from the client on several streams, telephone-events, CSRC lists,
tampered and truncated packets, PBX audio and events, plain and SRTP) and
the same PBX leg changes; every output datagram and every counter must be
equal.  The batched reader (``recvmmsg``/``sendmmsg``) is checked on real
loopback sockets against the per-packet function.
"""

from __future__ import annotations

import select
import socket
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pylibsrtp import Error as SrtpError
from pylibsrtp import Policy, Session
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from cryptify.cig.relay import cpath, g711
from cryptify.cig.relay.bridge_core import (
    BridgeSpecError,
    CallBridge,
    PbxSide,
    PbxSrtp,
    SecureSide,
)
from cryptify.cig.relay.bridge_wiring import BridgeService
from cryptify.config.cig_model import SipInterface
from cryptify.protocols.rtp import RtpPacket, encode_rtp, parse_rtp

TAG = b"T" * 8
KEY_OUT = bytes(range(30))
KEY_IN = bytes(range(30, 60))
OURS = bytes(range(100, 130))
THEIRS = bytes(range(130, 160))
PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
#: The random stream state both cores share.
SAME = {
    "pbx_ssrc": 0x11223344,
    "pbx_seq_base": 0xFFF0,
    "pbx_ts_base": 0xFFFFF000,
    "secure_ssrc": 0x55667788,
    "secure_seq": 0xFFFE,
    "secure_ts": 0xFFFFFF00,
}

skip_unbuilt = None if cpath.available() else "the C path (_cbridge) was not built"


def sender(key: bytes, profile: str) -> Session:
    """A sending session that may repeat a sequence number (a replay, for the receiver)."""
    policy = Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=PROFILES[profile])
    policy.allow_repeat_tx = True
    return Session(policy)


def protect(session: Session, key: bytes, profile: str, rtp: bytes) -> bytes:
    """``rtp`` protected by ``session``, or, too old for its window, by a sender of its own."""
    try:
        return session.protect(rtp)
    except SrtpError:
        return sender(key, profile).protect(rtp)


def outcome(method: Any, data: bytes) -> object:
    """What ``method(data)`` answers, or that it raised (both paths raise when
    libsrtp refuses to protect an index towards the PBX a second time)."""
    try:
        return method(data)
    except SrtpError:
        return SrtpError


def pair(secure: SecureSide, pbx: PbxSide) -> tuple[CallBridge, CallBridge]:
    py = CallBridge("call-p", secure, pbx, engine="python", **SAME)  # type: ignore[call-arg]
    c = CallBridge("call-c", secure, pbx, engine="c", **SAME)  # type: ignore[call-arg]
    return py, c


def rtp_packet(
    pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool, csrc: int
) -> bytes:
    packet = encode_rtp(pt, seq, ts, ssrc, payload, marker)
    if csrc:  # a CSRC list: not the fast path's plain header
        packet = bytes([packet[0] | csrc]) + packet[1:12] + bytes(4 * csrc) + packet[12:]
    return packet


event_payloads = st.builds(
    lambda e, end, vol, dur: bytes([e, (0x80 if end else 0) | vol]) + dur.to_bytes(2, "big"),
    st.integers(0, 15),
    st.booleans(),
    st.integers(0, 63),
    st.integers(0, 2000),
)

secure_packet = st.fixed_dictionaries(
    {
        "kind": st.just("secure"),
        # "audio": the secure leg's own payload type
        "pt": st.sampled_from(["audio"] * 5 + [0, 8, 101, 96]),
        # steps along the stream's sequence numbers (timestamps follow)
        "jump": st.sampled_from([1, 1, 1, 1, 2, 0, -1, 5, 0x7FFF]),
        "ssrc": st.sampled_from([7, 7, 7, 8, 0xFFFFFFFF]),
        "payload": st.one_of(
            st.binary(min_size=160, max_size=160), st.binary(max_size=200), event_payloads
        ),
        "marker": st.booleans(),
        "csrc": st.sampled_from([0, 0, 0, 1]),
        "damage": st.sampled_from([None] * 8 + ["flip", "cut", "raw"]),
    }
)
pbx_packet = st.fixed_dictionaries(
    {
        "kind": st.just("pbx"),
        "pt": st.sampled_from([0, 8, 96, 101]),
        "seq": st.integers(0, 0xFFFF),
        "ts": st.integers(0, 0xFFFFFFFF),
        "ssrc": st.sampled_from([9, 10]),
        "payload": st.one_of(st.binary(min_size=0, max_size=200), event_payloads),
        "marker": st.booleans(),
        "damage": st.sampled_from([None, None, None, "flip"]),
    }
)
change = st.fixed_dictionaries(
    {
        "kind": st.just("update"),
        "codec": st.sampled_from([g711.PCMU, g711.PCMA]),
        "direction": st.sampled_from(["sendrecv", "sendrecv", "sendonly", "recvonly", "inactive"]),
        "known": st.sampled_from([True, True, True, False]),
        "srtp": st.sampled_from([None, "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"]),
    }
)
steps = st.lists(
    st.one_of(
        secure_packet, secure_packet, secure_packet, pbx_packet, change, st.just({"kind": "tick"})
    ),
    min_size=12,
    max_size=80,
)


def pbx_side(codec: str, direction: str, known: bool, srtp: str | None) -> PbxSide:
    keys = None if srtp is None else PbxSrtp(srtp, OURS, THEIRS)
    host, port = ("198.51.100.7", 4000) if known else (None, None)
    return PbxSide(host, port, codec, 96, keys, direction)


class DifferentialTests(SynchronousTestCase):
    """Both engines make the same datagrams and counts from the same input."""

    skip = skip_unbuilt

    @settings(max_examples=150, deadline=None)
    @given(
        profile=st.sampled_from(sorted(PROFILES)),
        secure_codec=st.sampled_from([g711.PCMU, g711.PCMA]),
        pbx_codec=st.sampled_from([g711.PCMU, g711.PCMA]),
        pbx_srtp=st.sampled_from([None, "AES_CM_128_HMAC_SHA1_80"]),
        script=steps,
    )
    def test_same_output(
        self,
        profile: str,
        secure_codec: str,
        pbx_codec: str,
        pbx_srtp: str | None,
        script: list[dict[str, Any]],
    ) -> None:
        secure = SecureSide("192.0.2.1", 146, TAG, KEY_OUT, KEY_IN, secure_codec, 101, profile)
        pbx = pbx_side(pbx_codec, "sendrecv", True, pbx_srtp)
        py, c = pair(secure, pbx)
        self.assertEqual((py.engine_used, c.engine_used), ("python", "c"))
        client = sender(KEY_IN, profile)
        phone: dict[str | None, Session] = {}
        streams: dict[int, int] = {}
        for step in script:
            kind = step["kind"]
            if kind == "tick":
                self.assertEqual(py.tick(), c.tick())
            elif kind == "update":
                pbx = pbx_side(step["codec"], step["direction"], step["known"], step["srtp"])
                py.update_pbx(pbx)
                c.update_pbx(pbx)
            elif kind == "secure":
                data = self.secure_datagram(client, profile, secure.payload_type, streams, step)
                self.assertEqual(outcome(py.from_secure, data), outcome(c.from_secure, data))
            else:
                data = encode_rtp(
                    step["pt"],
                    step["seq"],
                    step["ts"],
                    step["ssrc"],
                    step["payload"],
                    step["marker"],
                )
                suite = None if pbx.srtp is None else pbx.srtp.profile
                if suite is not None:
                    data = protect(
                        phone.setdefault(suite, sender(THEIRS, suite)), THEIRS, suite, data
                    )
                if step["damage"] == "flip":
                    data = data[:-1] + bytes([data[-1] ^ 1])
                py.from_pbx(data)
                c.from_pbx(data)
            self.assertEqual(py.snapshot(), c.snapshot())

    def secure_datagram(
        self,
        client: Session,
        profile: str,
        secure_pt: int,
        streams: dict[int, int],
        step: dict[str, Any],
    ) -> bytes:
        if step["damage"] == "raw":
            return bytes(step["payload"])
        ssrc = step["ssrc"]
        pt = secure_pt if step["pt"] == "audio" else step["pt"]
        index = streams[ssrc] = streams.get(ssrc, ssrc * 1000) + step["jump"]
        rtp = rtp_packet(
            pt, index & 0xFFFF, (index * 160) & 0xFFFFFFFF, ssrc, step["payload"],
            step["marker"], step["csrc"],
        )  # fmt: skip
        data = protect(client, KEY_IN, profile, rtp)
        if step["damage"] == "flip":
            return data[:12] + bytes([data[12] ^ 0x40]) + data[13:]
        if step["damage"] == "cut":
            return data[:-3]
        return data

    def test_opus_stays_in_python(self) -> None:
        """An Opus secure leg is not on the C path (G.711 only, for now)."""
        from cryptify.protocols import opus

        if not opus.available():
            raise self.skipTest("built without libopus")
        secure = SecureSide("192.0.2.1", 146, TAG, KEY_OUT, KEY_IN, opus.OPUS)
        bridge = CallBridge("o", secure, pbx_side(g711.PCMU, "sendrecv", True, None), engine="c")
        self.assertEqual(bridge.engine_used, "python")

    def test_unknown_engine(self) -> None:
        secure = SecureSide("192.0.2.1", 146, TAG, KEY_OUT, KEY_IN)
        with self.assertRaises(BridgeSpecError):
            CallBridge("x", secure, pbx_side(g711.PCMU, "sendrecv", True, None), engine="rust")


class DrainTests(SynchronousTestCase):
    """``recvmmsg``/``sendmmsg`` over real loopback sockets make what
    ``from_secure`` makes, in order, also around a packet for the Python path."""

    skip = skip_unbuilt

    def udp(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        self.addCleanup(sock.close)
        return sock

    def test_batch_matches_per_packet(self) -> None:
        secure = SecureSide("192.0.2.1", 146, TAG, KEY_OUT, KEY_IN, g711.PCMA)
        pbx = pbx_side(g711.PCMU, "sendrecv", True, "AES_CM_128_HMAC_SHA1_80")
        py, c = pair(secure, pbx)
        leg_in, leg_out, sink, source = self.udp(), self.udp(), self.udp(), self.udp()
        client = sender(KEY_IN, "AES_CM_128_HMAC_SHA1_80")
        datagrams = []
        for i in range(70):
            # a new stream at 40 and a telephone-event at 55 take the Python path
            ssrc = 7 if i < 40 else 8
            pt, payload = (101, b"\x05\x0a\x00\xa0") if i == 55 else (8, bytes([i]) * 160)
            datagrams.append(client.protect(encode_rtp(pt, i, i * 160, ssrc, payload, False)))
        expected = [out for out in map(py.from_secure, datagrams) if out is not None]
        for data in datagrams:
            source.sendto(data, leg_in.getsockname())
        address = cpath.sockaddr(sink.getsockname())
        assert c._c is not None
        got = []
        while True:
            n, slow = c._c.drain_secure(leg_in.fileno(), leg_out.fileno(), address, cpath.BATCH)
            if n < 0:
                break
            got.extend(self.received(sink))
            if slow is not None:
                out = c.finish_secure(slow)
                if out is not None:
                    got.append(out)
        self.assertEqual(got, expected)
        self.assertEqual(py.snapshot(), c.snapshot())

    @staticmethod
    def received(sock: socket.socket) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(sock.recv(4096))
            except BlockingIOError:
                return out


@implementer(IReactorFDSet)
class FdReactor(Clock):
    """A Clock with a real reactor's reader registration (readers recorded)."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: list[Any] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.remove(reader)


class FailingOnce:
    """A core whose Python part fails on the first packet it is given."""

    def __init__(self, core: CallBridge) -> None:
        self.core = core
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)

    def finish_secure(self, rtp: bytes) -> bytes | None:
        self.calls += 1
        if self.calls == 1:
            raise ValueError("boom")
        return self.core.finish_secure(rtp)


class ServiceTests(SynchronousTestCase):
    """``BridgeService`` puts G.711 calls on the C path (``fast_path auto``),
    whose secure legs C reads itself; ``off`` keeps them in Python."""

    def test_off(self) -> None:
        service = BridgeService(FdReactor(), sip=SipInterface(bind="127.0.0.1"), fast_path="off")
        self.assertEqual(service.engine, "python")

    def test_secure_leg_read_by_c(self) -> None:
        if skip_unbuilt:
            raise self.skipTest(skip_unbuilt)
        reactor = FdReactor()
        service = BridgeService(reactor, sip=SipInterface(bind="127.0.0.1"))
        service.startService()
        self.addCleanup(service.stopService)
        phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        phone.bind(("127.0.0.1", 0))
        phone.settimeout(2)
        self.addCleanup(phone.close)
        secure = SecureSide("127.0.0.1", 9, TAG, KEY_OUT, KEY_IN, g711.PCMA)
        here = phone.getsockname()
        secure_port, _pbx_port = service.add("c1", secure, PbxSide(here[0], here[1]))
        self.assertEqual(service.calls["c1"].core.engine_used, "c")
        (poller,) = reactor.readers
        client = sender(KEY_IN, "AES_CM_128_HMAC_SHA1_80")
        sent = []
        for i in range(20):
            pt, payload = (101, b"\x05\x0a\x00\xa0") if i == 10 else (8, bytes([i]) * 160)
            sent.append((pt, payload))
            phone.sendto(
                client.protect(encode_rtp(pt, i, i * 160, 5, payload, False)),
                ("127.0.0.1", secure_port),
            )
        got: list[bytes] = []
        while len(got) < 20:
            select.select([phone], [], [], 2)
            poller.doRead()
            got.append(phone.recv(2048))
        for (pt, payload), rtp in zip(sent, got, strict=True):
            packet = parse_rtp(rtp)
            assert isinstance(packet, RtpPacket)
            expected = (
                payload if pt == 101 else payload.translate(g711.translation(g711.PCMA, g711.PCMU))
            )
            self.assertEqual(
                (packet.payload_type, packet.payload), (101 if pt == 101 else 0, expected)
            )
        seqs = [parse_rtp(rtp).sequence for rtp in got]  # type: ignore[union-attr]
        self.assertEqual(seqs, [(seqs[0] + i) & 0xFFFF for i in range(20)])
        stats = service.stats("c1")
        assert stats is not None
        self.assertEqual((stats["secure_rx"], stats["pbx_tx"], stats["events_to_pbx"]), (20, 20, 1))

    def test_failure_in_python_part_keeps_the_batch(self) -> None:
        """A packet the Python part fails on is logged; the rest of its batch still goes."""
        if skip_unbuilt:
            raise self.skipTest(skip_unbuilt)
        reactor = FdReactor()
        service = BridgeService(reactor, sip=SipInterface(bind="127.0.0.1"))
        self.addCleanup(service.stopService)
        phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        phone.bind(("127.0.0.1", 0))
        phone.settimeout(2)
        self.addCleanup(phone.close)
        here = phone.getsockname()
        secure = SecureSide("127.0.0.1", 9, TAG, KEY_OUT, KEY_IN)
        secure_port, _ = service.add("c1", secure, PbxSide(here[0], here[1]))
        bridged = service.calls["c1"]
        bridged.core = FailingOnce(bridged.core)  # type: ignore[assignment]
        client = sender(KEY_IN, "AES_CM_128_HMAC_SHA1_80")
        for i in range(10):
            phone.sendto(
                client.protect(encode_rtp(0, i, i * 160, 5, bytes([i]) * 160, False)),
                ("127.0.0.1", secure_port),
            )
        (poller,) = reactor.readers
        got: list[bytes] = []
        while len(got) < 9:
            select.select([phone], [], [], 2)
            poller.doRead()
            got.append(phone.recv(2048))
        self.assertEqual([rtp[12] for rtp in got], list(range(1, 10)))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
