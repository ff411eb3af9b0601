"""A call through a real CRS and relay: signaling, MIKEY-SAKKE keys, media by UDP.

Both parties are `websockets` clients (an independent WebSocket library)
speaking UMSG to `twistd crs`; the caller's I_MESSAGE is built with the
project's crypto for the callee, who verifies and decapsulates it; media
goes through `twistd crs-relay` with each leg's tag.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import cbor2
from twisted.internet import threads

from tests.interop._crs import CALLEE, CALLER, CrsFixture, recv, send
from tests.interop._procs import (
    Twistd,
    unix_answers,
    wait_for,
)


class CallTests(CrsFixture):
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


class MessageTests(CrsFixture):
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


class StatsTests(CrsFixture):
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


class BurstTests(CrsFixture):
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
