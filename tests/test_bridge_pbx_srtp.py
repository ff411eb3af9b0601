"""Tests for SRTP on the PBX leg of the CIG media bridge (SDES keys from the SIF)."""

from __future__ import annotations

import math
import os
from typing import Any, cast

import attrs
from pylibsrtp import Policy, Session
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.relay import g711
from cryptify.cig.relay.bridge_core import (
    FRAME_SAMPLES,
    BridgeSpecError,
    CallBridge,
    PbxSide,
    PbxSrtp,
    SecureSide,
)
from cryptify.cig.relay.bridge_wiring import BridgeService
from cryptify.cig.relay.control import control_factory
from cryptify.protocols.bridge_control import BridgeAdd, BridgeError, BridgeUpdate
from cryptify.protocols.rtp import RtpPacket, encode_rtp, parse_rtp

TAG = b"T" * 8
KEY_OUT = bytes(range(30))  # the secure leg: what the bridge sends with
KEY_IN = bytes(range(30, 60))  # what the secure client sends with
#: Our key towards the PBX and the PBX's key (SDES inline keys).
OURS = bytes(range(100, 130))
THEIRS = bytes(range(130, 160))
SUITES = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}


def tone(frame: int) -> list[int]:
    """A 1 kHz tone, frame ``frame`` of it."""
    n = FRAME_SAMPLES
    return [int(8000 * math.sin(2 * math.pi * 1000 * (frame * n + i) / 8000)) for i in range(n)]


def client_sessions() -> tuple[Session, Session]:
    """The secure client's (sender, receiver) SRTP sessions."""
    profile = Policy.SRTP_PROFILE_AES128_CM_SHA1_80
    tx = Session(Policy(key=KEY_IN, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
    rx = Session(Policy(key=KEY_OUT, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
    return tx, rx


def pbx_sessions(suite: str, ours: bytes = OURS, theirs: bytes = THEIRS) -> tuple[Session, Session]:
    """The PBX's (sender, receiver) SRTP sessions: it sends with its key, reads ours."""
    profile = SUITES[suite]
    tx = Session(Policy(key=theirs, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
    rx = Session(Policy(key=ours, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
    return tx, rx


def make_bridge(srtp: PbxSrtp | None) -> CallBridge:
    secure = SecureSide("192.0.2.1", 146, TAG, KEY_OUT, KEY_IN, dtmf_pt=101)
    return CallBridge("call-s", secure, PbxSide("198.51.100.7", 4000, g711.PCMU, 96, srtp))


class PbxSrtpTests(SynchronousTestCase):
    """The bridge protects what it sends the PBX and unprotects what the PBX sends."""

    def setUp(self) -> None:
        self.client_tx, self.client_rx = client_sessions()

    def from_client(self, seq: int, payload: bytes) -> bytes:
        return self.client_tx.protect(encode_rtp(0, seq, seq * 160, 7, payload, False))

    def heard_by_client(self, datagram: bytes) -> bytes:
        self.assertEqual(datagram[:8], TAG)
        packet = parse_rtp(self.client_rx.unprotect(datagram[8:]))
        assert isinstance(packet, RtpPacket)
        return packet.payload

    def test_both_ways_each_suite(self) -> None:
        """With either suite, client audio reaches the PBX as SRTP under our key
        and PBX SRTP under its key reaches the client, both sample-exact."""
        for suite in SUITES:
            self.client_tx, self.client_rx = client_sessions()
            pbx_tx, pbx_rx = pbx_sessions(suite)
            bridge = make_bridge(PbxSrtp(suite, OURS, THEIRS))
            frames = [g711.encode(g711.PCMU, tone(i)) for i in range(3)]
            for i, frame in enumerate(frames):
                out = bridge.from_secure(self.from_client(10 + i, frame))
                assert out is not None
                self.assertIsInstance(parse_rtp(out), RtpPacket)  # SRTP keeps the header
                packet = parse_rtp(pbx_rx.unprotect(out))
                assert isinstance(packet, RtpPacket)
                self.assertEqual(packet.payload, frame)
            for i, frame in enumerate(frames):
                bridge.from_pbx(pbx_tx.protect(encode_rtp(0, i, 8000 + 160 * i, 55, frame, False)))
            heard = [self.heard_by_client(bridge.tick()) for _ in range(5)]
            self.assertEqual(heard[2:], frames)
            self.assertEqual(bridge.counters.pbx_srtp_errors, 0)

    def test_plain_rtp_without_keys(self) -> None:
        """No keys: the PBX leg stays plain RTP, as before."""
        bridge = make_bridge(None)
        frame = g711.encode(g711.PCMU, tone(0))
        out = bridge.from_secure(self.from_client(1, frame))
        packet = parse_rtp(out or b"")
        assert isinstance(packet, RtpPacket)
        self.assertEqual(packet.payload, frame)

    def test_sent_packets_are_protected(self) -> None:
        """What reaches the PBX is not the plain RTP: its payload is encrypted
        and it carries the 10-byte authentication tag."""
        bridge = make_bridge(PbxSrtp("AES_CM_128_HMAC_SHA1_80", OURS, THEIRS))
        frame = g711.encode(g711.PCMU, tone(0))
        out = bridge.from_secure(self.from_client(1, frame))
        assert out is not None
        self.assertEqual(len(out), 12 + 160 + 10)
        self.assertNotIn(frame, out)

    def test_tampered_dropped_and_counted(self) -> None:
        """A PBX packet with one bit changed fails authentication: dropped, counted,
        and the client hears silence rather than it."""
        pbx_tx, _ = pbx_sessions("AES_CM_128_HMAC_SHA1_80")
        bridge = make_bridge(PbxSrtp("AES_CM_128_HMAC_SHA1_80", OURS, THEIRS))
        frame = b"\x10" * 160
        good = pbx_tx.protect(encode_rtp(0, 1, 8000, 55, frame, False))
        tampered = bytearray(good)
        tampered[20] ^= 0x01
        bridge.from_pbx(bytes(tampered))
        bridge.from_pbx(os.urandom(60))
        bridge.from_pbx(b"\x80")
        self.assertEqual(bridge.counters.pbx_srtp_errors, 3)
        heard = [self.heard_by_client(bridge.tick()) for _ in range(4)]
        self.assertEqual(heard, [b"\xff" * 160] * 4)

    def test_replay_dropped(self) -> None:
        """A PBX packet sent twice is taken once; the copy is dropped and counted."""
        pbx_tx, _ = pbx_sessions("AES_CM_128_HMAC_SHA1_32")
        bridge = make_bridge(PbxSrtp("AES_CM_128_HMAC_SHA1_32", OURS, THEIRS))
        packet = pbx_tx.protect(encode_rtp(0, 1, 8000, 55, b"\x20" * 160, False))
        bridge.from_pbx(packet)
        bridge.from_pbx(packet)
        self.assertEqual(bridge.counters.pbx_srtp_errors, 1)

    def test_plain_rtp_refused_when_keyed(self) -> None:
        """Plain RTP from the PBX on an SRTP leg is not played."""
        bridge = make_bridge(PbxSrtp("AES_CM_128_HMAC_SHA1_80", OURS, THEIRS))
        bridge.from_pbx(encode_rtp(0, 1, 8000, 55, b"\x20" * 160, False))
        self.assertEqual(bridge.counters.pbx_srtp_errors, 1)

    def test_update_same_keys_keeps_replay_state(self) -> None:
        """A BridgeUpdate with the same keys (a re-INVITE moving the media) keeps
        the sessions: a packet seen before is still a replay."""
        pbx_tx, _ = pbx_sessions("AES_CM_128_HMAC_SHA1_80")
        srtp = PbxSrtp("AES_CM_128_HMAC_SHA1_80", OURS, THEIRS)
        bridge = make_bridge(srtp)
        packet = pbx_tx.protect(encode_rtp(0, 1, 8000, 55, b"\x20" * 160, False))
        bridge.from_pbx(packet)
        bridge.update_pbx(PbxSide("198.51.100.8", 4002, g711.PCMU, 96, srtp))
        bridge.from_pbx(packet)
        self.assertEqual(bridge.counters.pbx_srtp_errors, 1)

    def test_update_new_keys(self) -> None:
        """New keys in an update take effect at once: the PBX's new key is read,
        the old one no longer."""
        old_tx, _ = pbx_sessions("AES_CM_128_HMAC_SHA1_80")
        new_theirs = bytes(range(160, 190))
        new_tx, new_rx = pbx_sessions("AES_CM_128_HMAC_SHA1_80", OURS[::-1], new_theirs)
        bridge = make_bridge(PbxSrtp("AES_CM_128_HMAC_SHA1_80", OURS, THEIRS))
        new = PbxSrtp("AES_CM_128_HMAC_SHA1_80", OURS[::-1], new_theirs)
        bridge.update_pbx(PbxSide("198.51.100.7", 4000, g711.PCMU, 96, new))
        bridge.from_pbx(old_tx.protect(encode_rtp(0, 1, 8000, 55, b"\x20" * 160, False)))
        self.assertEqual(bridge.counters.pbx_srtp_errors, 1)
        bridge.from_pbx(new_tx.protect(encode_rtp(0, 2, 8160, 55, b"\x20" * 160, False)))
        self.assertEqual(bridge.counters.pbx_srtp_errors, 1)
        out = bridge.from_secure(self.from_client(1, b"\x30" * 160))
        packet = parse_rtp(new_rx.unprotect(out or b""))
        assert isinstance(packet, RtpPacket)
        self.assertEqual(packet.payload, b"\x30" * 160)

    def test_bad_keys_refused(self) -> None:
        """Short keys or an unknown suite on the PBX leg are refused up front."""
        for srtp in (
            PbxSrtp("AES_CM_128_HMAC_SHA1_80", OURS[:16], THEIRS),
            PbxSrtp("AES_CM_128_HMAC_SHA1_80", OURS, THEIRS[:29]),
            PbxSrtp("F8_128_HMAC_SHA1_80", OURS, THEIRS),
        ):
            self.assertRaises(BridgeSpecError, make_bridge, srtp)

    def test_keys_not_in_repr(self) -> None:
        """Neither key shows in the reprs of the leg, its keys or the bridge."""
        srtp = PbxSrtp("AES_CM_128_HMAC_SHA1_80", OURS, THEIRS)
        bridge = make_bridge(srtp)
        for text in (repr(srtp), repr(bridge.pbx), repr(bridge)):
            self.assertNotIn(repr(OURS), text)
            self.assertNotIn(repr(THEIRS), text)


@attrs.define
class RecordingBridges:
    """The bridge service as the control locator uses it: builds the cores, no sockets."""

    calls: dict[str, Any] = attrs.field(factory=dict)

    def add(
        self, call: str, secure: SecureSide, pbx: PbxSide, pbx_port: int = 0
    ) -> tuple[int, int]:
        self.calls[call] = _Bridged(CallBridge(call, secure, pbx))
        return (40001, 40002)

    def update(self, call: str, pbx: PbxSide) -> bool:
        self.calls[call].core.update_pbx(pbx)
        return True


@attrs.define
class _Bridged:
    core: CallBridge


class ControlTests(SynchronousTestCase):
    """BridgeAdd/BridgeUpdate carry the PBX leg's keys over AMP."""

    def setUp(self) -> None:
        self.bridges = RecordingBridges()
        service = cast(BridgeService, self.bridges)
        client, _server, self.pump = connectedServerAndClient(
            lambda: control_factory(service).buildProtocol(None), amp.AMP
        )
        self.client = client

    def call(self, command: type[amp.Command], **kwargs: Any) -> Any:
        results: list[Any] = []
        self.client.callRemote(command, **kwargs).addBoth(results.append)
        self.pump.flush()
        return results[0]

    def add(self, **extra: Any) -> Any:
        args: dict[str, Any] = dict(
            call="c1",
            relay_host="192.0.2.1",
            relay_port=146,
            tag=TAG,
            srtp_tx_key=KEY_OUT,
            srtp_rx_key=KEY_IN,
            pbx_host="198.51.100.9",
            pbx_remote_port=4000,
        )
        args.update(extra)
        return self.call(BridgeAdd, **args)

    def test_add_and_update_carry_keys(self) -> None:
        """BridgeAdd's keys reach the core; BridgeUpdate without SRTP arguments keeps
        them, with new ones replaces them, with an empty profile turns SRTP off."""
        suite = "AES_CM_128_HMAC_SHA1_32"
        self.add(pbx_srtp_profile=suite, pbx_srtp_tx_key=OURS, pbx_srtp_rx_key=THEIRS)
        core = self.bridges.calls["c1"].core
        self.assertEqual(core.pbx.srtp, PbxSrtp(suite, OURS, THEIRS))
        self.call(BridgeUpdate, call="c1", pbx_remote_port=4002)
        self.assertEqual(
            (core.pbx.remote_port, core.pbx.srtp), (4002, PbxSrtp(suite, OURS, THEIRS))
        )
        self.call(
            BridgeUpdate,
            call="c1",
            pbx_srtp_profile="AES_CM_128_HMAC_SHA1_80",
            pbx_srtp_tx_key=THEIRS,
            pbx_srtp_rx_key=OURS,
        )
        self.assertEqual(core.pbx.srtp, PbxSrtp("AES_CM_128_HMAC_SHA1_80", THEIRS, OURS))
        self.call(BridgeUpdate, call="c1", pbx_srtp_profile="")
        self.assertIsNone(core.pbx.srtp)

    def test_plain_add_has_no_keys(self) -> None:
        """Without the SRTP arguments the PBX leg is plain RTP."""
        self.add()
        self.assertIsNone(self.bridges.calls["c1"].core.pbx.srtp)

    def test_half_given_keys_refused(self) -> None:
        """A profile without both keys, or keys without a profile, is a BridgeError."""
        self.add(pbx_srtp_profile="AES_CM_128_HMAC_SHA1_80", pbx_srtp_tx_key=OURS).trap(BridgeError)
        self.add(call="c2", pbx_srtp_tx_key=OURS, pbx_srtp_rx_key=THEIRS).trap(BridgeError)
        self.assertEqual(self.bridges.calls, {})
