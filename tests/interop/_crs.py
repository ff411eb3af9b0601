"""What the CRS interop tests share: a real twistd crs with accounts and
managed Redis (L{CrsFixture}), two users, and WebSocket send/receive."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import time
from typing import Any

import cbor2
from twisted.trial.unittest import SkipTest, TestCase

from cryptify.crypto import mikey
from cryptify.crypto.identity import period_of, tel_identifier
from cryptify.crypto.keymaterial import load_key_material
from cryptify.protocols.relay_packet import encode as relay_packet
from cryptify.protocols.umsg import attach_signed_octets
from tests.interop._procs import (
    Twistd,
    free_port,
    provision,
    run_cli,
    short_tempdir,
    unix_answers,
    wait_for,
    write_crs_conf,
)
from tests.interop._ws import available as websockets_available
from tests.interop._ws import ws_connect

CALLER = "tel:+46700000001"


CALLEE = "tel:+46700000002"


class CrsFixture(TestCase):
    """A real CRS and relay with one account and two users' keys."""

    timeout = 120

    def setUp(self) -> None:
        if not websockets_available():
            raise SkipTest("websockets is not installed")
        if shutil.which("redis-server") is None:
            raise SkipTest("redis-server is not installed")
        self.dir = d = short_tempdir(self)
        self.client_port = free_port()
        self.relay_port = free_port(socket.SOCK_DGRAM)
        self.conf = write_crs_conf(d, self.client_port, self.relay_port, self.conf_extra())
        self.socket = os.path.join(d, "crs.sock")
        self.procs = [Twistd(d, "crs-relay", "--config", self.conf)]
        wait_for(lambda: unix_answers(os.path.join(d, "relay.sock")), "relay control")
        self.procs.append(Twistd(d, "crs", "--config", self.conf, *self.crs_args()))
        self.addCleanup(lambda: [p.stop() for p in reversed(self.procs)])
        wait_for(lambda: unix_answers(self.socket), "CRS management socket")
        self.period = period_of(time.time())
        files = self.key_files = provision(d, self.socket, "acme", [CALLER, CALLEE], self.period)
        self.keys = {
            uri: load_key_material(path).for_period(self.period) for uri, path in files.items()
        }
        wait_for(lambda: "crs_relay   active" in self.cli("show", "services")[1], "relay link")

    def conf_extra(self) -> str:
        """Lines added to crs.conf's GLOBAL section."""
        return ""

    def crs_args(self) -> list[str]:
        """Arguments added to ``twistd crs``'s command line."""
        return []

    def cli(self, *args: str) -> tuple[int, str, str]:
        return run_cli("crs-cli", "--socket", self.socket, *args)

    def attach(self, uri: str) -> Any:
        """Attach ``uri``; an attach refused ``unavailable`` (a CRS still connecting
        to its stores) is tried again after its ``retry-after``, as clients do."""
        cafile = os.path.join(self.dir, "data", "tls", "crs.crt")
        tls = ssl.create_default_context(cafile=cafile)
        for _attempt in range(20):
            ws = ws_connect(
                f"wss://127.0.0.1:{self.client_port}/",
                ssl=tls,
                subprotocols=["umsg.1"],
            )
            send(ws, type="attach", id=1, account="acme", uri=uri, versions=[1], app="test")
            challenge = cbor2.loads(ws.recv(timeout=30))
            if challenge.get("code") != "unavailable":
                break
            ws.close()
            time.sleep(challenge["retry-after"] / 1000)
        assert challenge.get("type") == "challenge", challenge
        octets = attach_signed_octets(challenge["nonce"], "acme", uri, challenge["period"])
        send(ws, type="prove", id=2, signature=self.keys[uri].signer().sign(octets))
        recv(ws, "attached")
        return ws

    def call(self, caller: Any = None, callee: Any = None) -> dict[str, Any]:
        """A call from CALLER to CALLEE (attached here unless given) with media."""
        caller = caller if caller is not None else self.attach(CALLER)
        callee = callee if callee is not None else self.attach(CALLEE)
        results: dict[str, Any] = {}
        try:
            send(caller, type="invite", id=10, to="tel:+46700000099", mikey=b"\x01")
            results["unknown"] = recv(caller, "error")
            keys = self.keys[CALLER]
            built = mikey.build_i_message(
                keys.signer(),
                keys.public_key(),
                tel_identifier(CALLEE, self.period),
                now=time.time(),
                idrs=mikey.tel_idrs(CALLER, CALLEE),
            )
            send(caller, type="invite", id=11, to=CALLEE, mikey=built.data)
            offer = recv(caller, "session")
            invite = recv(callee, "invite")
            received = mikey.receive_i_message(
                invite["mikey"],
                kpak=self.keys[CALLEE].kpak,
                receiver=self.keys[CALLEE].receiver(),
                now=time.time(),
            )
            results["ssv_match"] = received.ssv == built.ssv
            results["invite"] = invite
            results["sessions_during"] = self.cli("show", "session")[1]
            send(callee, type="ringing", session=invite["session"])
            results["ringing"] = recv(caller, "ringing")
            send(callee, type="talk", session=invite["session"])
            results["talk"] = recv(caller, "talk")
            results["media"] = self.media(offer, invite)
            send(caller, type="hangup", session=offer["session"], code="normal")
            results["hangup"] = recv(callee, "hangup")
        finally:
            caller.close()
            callee.close()
        return results

    def media(self, offer: dict[str, Any], invite: dict[str, Any]) -> list[bytes]:
        relay = (offer["relay-host"], offer["relay-port"])
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        a.settimeout(5)
        b.settimeout(5)
        try:
            rtp = b"\x80\x00" + bytes(10) + b"caller audio"
            back = b"\x80\x00" + bytes(10) + b"callee audio"
            got = []
            # both legs speak first, so both are latched
            b.sendto(relay_packet(invite["relay-tag"], back), relay)
            for _ in range(3):
                a.sendto(relay_packet(offer["relay-tag"], rtp), relay)
            got.append(b.recvfrom(2048)[0])
            b.sendto(relay_packet(invite["relay-tag"], back), relay)
            got.append(a.recvfrom(2048)[0])
            return got
        finally:
            a.close()
            b.close()


def send(ws: Any, **fields: Any) -> None:
    ws.send(cbor2.dumps(fields))


def recv(ws: Any, kind: str) -> dict[str, Any]:
    """The next message of type ``kind`` (others are skipped)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        msg: dict[str, Any] = cbor2.loads(ws.recv(timeout=30))
        if msg.get("type") == kind:
            return msg
        if msg.get("type") in ("error", "refused", "disconnect") and kind != "error":
            raise AssertionError(f"wanted {kind}, got {msg}")
    raise AssertionError(f"no {kind} message")
