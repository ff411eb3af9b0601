"""A call through a real CRS and relay: signaling, MIKEY-SAKKE keys, media by UDP.

Both parties are `websockets` clients (an independent WebSocket library)
speaking UMSG to `twistd crs`; the caller's I_MESSAGE is built with the
project's crypto for the callee, who verifies and decapsulates it; media
goes through `twistd crs-relay` with each leg's tag.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import time
from typing import Any

import cbor2
from twisted.internet import threads
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


class _CrsFixture(TestCase):
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
        self.procs.append(Twistd(d, "crs", "--config", self.conf))
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

    def call(self) -> dict[str, Any]:
        caller, callee = self.attach(CALLER), self.attach(CALLEE)
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


class CallTests(_CrsFixture):
    async def test_call(self) -> None:
        """Invite, ringing, talk, media both ways, hangup: each party sees each step."""
        results = await threads.deferToThread(self.call)
        self.assertEqual(results["unknown"]["code"], "not-found")
        self.assertTrue(results["ssv_match"])
        self.assertEqual(results["invite"]["from"], CALLER)
        self.assertIn("invite", results["sessions_during"])
        self.assertEqual(results["hangup"]["who"], "caller")
        self.assertEqual(results["hangup"]["code"], "normal")
        self.assertTrue(results["media"][0].endswith(b"caller audio"))
        self.assertTrue(results["media"][1].endswith(b"callee audio"))
        shown = self.cli("show", "session")[1].splitlines()
        self.assertEqual(shown[0].split(), ["CALLER", "CALLEE", "TIME", "STATE"])
        # ended sessions stay listed for a while with their final state
        states = [line.split(None, 3)[3] for line in shown[1:]]
        self.assertEqual(states, ["responder not found", "hangup(normal, caller)"])

        def relay_empty() -> bool:
            rows = self.cli("show", "relay")[1].splitlines()
            return len(rows) == 2 and rows[1].split()[-1] == "0"

        wait_for(relay_empty, "relay session removed")


class MessageTests(_CrsFixture):
    """Store-and-forward messages through the same real CRS."""

    def messages(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        sender, recipient = self.attach(CALLER), self.attach(CALLEE)
        send(sender, type="post", id=20, to="tel:+46700000099", content=b"nobody")
        results["unknown"] = recv(sender, "error")
        send(sender, type="post", id=21, to=CALLEE, content=b"\x00hello")
        posted = recv(sender, "posted")
        got = recv(recipient, "message")
        results["live"] = (posted["message"], got)
        send(recipient, type="delivered", message=got["message"])
        results["receipt"] = recv(sender, "delivered")
        recipient.close()
        send(sender, type="post", id=22, to=CALLEE, content=b"while away")
        results["away"] = recv(sender, "posted")["message"]
        send(sender, type="post", id=22, to=CALLEE, content=b"while away")
        results["again"] = recv(sender, "posted")["message"]
        sender.close()
        return results

    def back(self) -> list[dict[str, Any]]:
        recipient = self.attach(CALLEE)
        try:
            first = recv(recipient, "message")
            send(recipient, type="delivered", message=first["message"])
            send(recipient, type="fetch", id=30)
            recv(recipient, "ok")
            return [first]
        finally:
            recipient.close()

    async def test_messages(self) -> None:
        """Posted, delivered live, kept across a CRS restart, delivered once."""
        results = await threads.deferToThread(self.messages)
        self.assertEqual(results["unknown"]["code"], "not-found")
        message_id, got = results["live"]
        self.assertEqual((got["message"], got["content"]), (message_id, b"\x00hello"))
        self.assertEqual(results["receipt"]["message"], message_id)
        self.assertEqual(results["again"], results["away"])
        crs = self.procs.pop()
        crs.stop()
        self.procs.append(Twistd(self.dir, "crs", "--config", self.conf))
        wait_for(lambda: unix_answers(self.socket), "CRS back")
        [first] = await threads.deferToThread(self.back)
        self.assertEqual((first["message"], first["content"]), (results["away"], b"while away"))
        status, out, err = self.cli("show", "message")
        self.assertEqual(status, 0, err)
        rows = out.splitlines()
        self.assertEqual(rows[0].split(), ["URI", "POST", "DELIV", "READ", "ACCOUNT"])
        self.assertEqual(rows[1].split()[:3], [CALLER, "2", "2"])


class StatsTests(_CrsFixture):
    """``crs-cli stats`` counts a call, a message and a system message on a real CRS."""

    def traffic(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        caller, callee = self.attach(CALLER), self.attach(CALLEE)
        try:
            send(caller, type="invite", id=10, to=CALLEE, mikey=b"\x01")
            offer = recv(caller, "session")
            recv(callee, "invite")
            send(caller, type="hangup", session=offer["session"], code="normal")
            recv(callee, "hangup")
            send(caller, type="post", id=11, to=CALLEE, content=b"hello")
            send(caller, type="post", id=12, to=CALLEE, content=b"group", system=True)
            results["got"] = [recv(callee, "message"), recv(callee, "message")]
            for got in results["got"]:
                send(callee, type="delivered", message=got["message"])
            recv(caller, "delivered")
            recv(caller, "delivered")
        finally:
            caller.close()
            callee.close()

        want = {
            CALLER: ["1", "0", "1", "0", "1", "0", "yes"],
            CALLEE: ["0", "1", "0", "1", "0", "1", "yes"],
        }

        def complete() -> str | None:
            status, out, _ = self.cli("stats", "export", "acme")
            if status != 0:
                return None
            rows = {line.split("\t")[0]: line.split("\t")[1:] for line in out.splitlines()[1:]}
            return out if rows == want else None

        results["export"] = wait_for(complete, "statistics counted", timeout=10)
        return results

    async def test_stats_export(self) -> None:
        """Disabled by default; once enabled, one call and two kinds of message are counted."""
        self.assertEqual(self.cli("stats", "export", "acme")[1].count("\n"), 1)
        status, _, err = self.cli("stats", "enable", "acme")
        self.assertEqual(status, 0, err)
        results = await threads.deferToThread(self.traffic)
        content, system = results["got"]
        self.assertNotIn("system", content)
        self.assertIs(system["system"], True)
        lines = str(results["export"]).splitlines()
        self.assertEqual(
            lines[0].split("\t"),
            [
                "tel-uri",
                "session-outgoing",
                "session-incoming",
                "message-outgoing",
                "message-incoming",
                "system-outgoing",
                "system-incoming",
                "updated",
            ],
        )
        status, out, err = self.cli("stats", "clear", "acme")
        self.assertEqual(status, 0, err)
        self.assertIn("cleared (2 URIs)", out)
        self.assertEqual(self.cli("stats", "export", "acme")[1].count("\n"), 1)
        self.assertEqual(self.cli("stats", "disable", "acme")[0], 0)


class BurstTests(_CrsFixture):
    """A burst of posts across a redis_low restart: each message once, in order."""

    COUNT = 40

    def burst(self) -> list[str]:
        self.attach(CALLEE).close()  # the recipient is known, then offline
        sender = self.attach(CALLER)
        pid_file = os.path.join(self.dir, "data", "redis", "redis_low", "redis.pid")
        try:
            for n in range(self.COUNT):
                if n == self.COUNT // 2:
                    with open(pid_file) as f:
                        self.old_pid = int(f.read().strip())
                    os.kill(self.old_pid, signal.SIGTERM)
                    # Redis acts on SIGTERM at its next cron tick: wait until it
                    # is really gone, so the rest of the burst meets the restart
                    wait_for(lambda: not os.path.exists(f"/proc/{self.old_pid}"), "old redis")
                for _attempt in range(200):
                    # a post the CRS could not store is repeated with the same id
                    send(sender, type="post", id=100 + n, to=CALLEE, content=f"m{n}".encode())
                    answer = cbor2.loads(sender.recv(timeout=30))
                    if answer.get("type") == "posted":
                        break
                    assert answer.get("code") == "unavailable", answer
                    assert answer.get("retry-after", 0) > 0, answer
                    time.sleep(0.05)
                else:
                    raise AssertionError(f"post {n} never stored")
        finally:
            sender.close()
        recipient = self.attach(CALLEE)
        seen: list[str] = []
        try:
            send(recipient, type="fetch", id=1)
            while True:
                msg = cbor2.loads(recipient.recv(timeout=30))
                if msg.get("type") == "message":
                    if msg["message"] not in [s.split("|")[0] for s in seen]:
                        seen.append(f"{msg['message']}|{msg['content'].decode()}")
                    send(recipient, type="delivered", message=msg["message"])
                elif msg.get("type") == "ok":
                    if len(seen) >= self.COUNT:
                        break
                    send(recipient, type="fetch", id=1)
        finally:
            recipient.close()
        return [s.split("|")[1] for s in seen]

    async def test_burst_across_redis_restart(self) -> None:
        """40 posts with redis_low restarted halfway arrive once each and in order."""
        contents = await threads.deferToThread(self.burst)
        self.assertEqual(contents, [f"m{n}" for n in range(self.COUNT)])
        pid_file = os.path.join(self.dir, "data", "redis", "redis_low", "redis.pid")
        with open(pid_file) as f:
            self.assertNotEqual(int(f.read().strip()), self.old_pid)  # it did restart
        logs = [os.path.join(self.dir, "log", "crs.log"), self.procs[-1].log]
        for path in logs:
            with open(path) as f:
                self.assertNotIn("Traceback", f.read(), path)


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
