"""
Interop: calls between clients attached at different instances of a pool.

Two real ``twistd crs`` instances and their ``twistd crs-relay``, each
pair on its own host (a network namespace on the bridge of
``tests/interop/_pool.py``); the clients are real ``cryptify-client``
processes in the client host.  The caller attaches at crs1, the callee at
crs2 (the owner of its slot): the invite, ringing, talk and hangup cross
the pool link, and the SRTP media of both legs goes through crs1's relay
(the caller's instance), whose public address the callee is given.  Each
side plays a tone and records the other: the recording must peak at the
other side's tone.  The clients are started with ``--insecure``: each
instance has its own self-signed development certificate named
``localhost``, which the client would otherwise check against the
instance's address (certificate checks are the TLS tests' business).
"""

from __future__ import annotations

import io
import os
import subprocess

import cbor2

from cryptify.client.audio import peak_frequency, read_wav
from tests.interop._pool import CEILING, CLIENT_PORT, Client, PoolCase, address, send
from tests.interop._procs import BIN, wait_for


def expect(client: Client, kind: str) -> dict[str, object]:
    """The next message of type ``kind`` ``client`` gets (others are
    skipped); an error or silence fails."""
    while True:
        msg = cbor2.loads(client.ws.recv(timeout=CEILING))
        if msg.get("type") == kind:
            return dict(msg)
        if msg.get("type") in ("error", "hangup", "disconnect"):
            raise AssertionError(f"{client.uri} got {msg} waiting for {kind}")


class PoolCallTests(PoolCase):
    COUNT = 2
    timeout = 600

    def setUp(self) -> None:
        super().setUp()
        self.start_relays()
        for index in range(1, self.COUNT + 1):
            wait_for(
                lambda i=index: self.relay_active(i),
                f"crs{index}'s relay link",
                CEILING,
            )
        wait_for(lambda: self.formed([1, 2]), "the pool to form", CEILING)
        self.caller, self.callee = self.home_uris(1)[0], self.home_uris(2)[0]

    # -- helpers -----------------------------------------------------------

    def relay_active(self, index: int) -> bool:
        rows = [line.split() for line in self.cli(index, "show", "services").splitlines()]
        return any(row[1:3] == ["crs_relay", "active"] for row in rows)

    def client(self, name: str, index: int, *args: str, keys: str) -> subprocess.Popen[bytes]:
        """A cryptify-client in the client host, attaching at crs{index}."""
        path = os.path.join(self.dir, f"client-{name}.out")
        argv = [
            *self.net.switch.prefix(self.dir),
            os.path.join(BIN, "cryptify-client"),
            *args,
            "--keys",
            keys,
            "--server",
            f"{address(index)}:{CLIENT_PORT}",
            "--insecure",
        ]
        with open(path, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        self.addCleanup(lambda: proc.poll() is None or proc.wait())
        return proc

    def output(self, name: str) -> str:
        with open(os.path.join(self.dir, f"client-{name}.out")) as f:
            return f.read()

    def callee_ready(self, name: str) -> None:
        wait_for(lambda: "attached" in self.output(name), f"{name} attached", CEILING)

    def assert_tone(self, path: str, freq: float) -> None:
        samples = read_wav(path)
        self.assertGreater(len(samples), 8000 * 0.8, f"less than 0.8 s recorded in {path}")
        peak, share = peak_frequency(samples[800:8800])
        self.assertEqual(peak, freq, path)
        self.assertGreater(share, 0.5, path)

    def live_sessions(self, index: int) -> list[str]:
        lines = self.cli(index, "show", "session").splitlines()[1:]
        return [line for line in lines if line.split()[-1] in ("invite", "ringing", "talk")]

    def relay_sessions(self, index: int) -> str:
        """The session count of crs{index}'s ``show relay``."""
        rows = self.cli(index, "show", "relay").splitlines()
        return rows[1].split()[-1] if len(rows) == 2 else "?"

    def nothing_left(self, indexes: list[int]) -> None:
        """No live session at the instances and no relay session at crs1."""
        for index in indexes:
            wait_for(lambda i=index: not self.live_sessions(i), f"crs{index}'s sessions end")
        wait_for(lambda: self.relay_sessions(1) == "0", "crs1's relay session removed")

    def assert_relayed_at_crs1(self, output: str) -> None:
        """The call's relay session was made at crs1's relay, none at crs2's."""
        session = output.split("call ", 1)[1].split()[0]
        logs = []
        for d in self.dirs:
            path = os.path.join(d, "log", "crs_relay.log")
            with open(path) if os.path.exists(path) else io.StringIO() as f:
                logs.append(f.read())
        self.assertIn("Command add: session", logs[0])
        self.assertIn(f"({session}) for crs1", logs[0])
        self.assertNotIn("Command add", logs[1])

    def wav(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.wav")

    # -- the tests ---------------------------------------------------------

    def test_caller_hangs_up(self) -> None:
        """crs1's client calls crs2's: invite, talk, tones both ways through
        crs1's relay, the caller's hangup reaches the callee; nothing is left."""
        keys = self.key_files
        answer = self.client(
            "answer", 2, "answer", "--tone", "1500", "--record", self.wav("b"),
            keys=keys[self.callee],
        )  # fmt: skip
        self.callee_ready("answer")
        call = self.client(
            "call", 1, "call", self.callee, "--tone", "1000", "--record", self.wav("a"),
            "--duration", "2", keys=keys[self.caller],
        )  # fmt: skip
        self.assertEqual(call.wait(CEILING), 0, self.output("call"))
        self.assertEqual(answer.wait(CEILING), 0, self.output("answer"))
        self.assertIn("ended: normal by caller", self.output("answer"))
        self.assert_relayed_at_crs1(self.output("answer"))
        self.assert_tone(self.wav("a"), 1500)
        self.assert_tone(self.wav("b"), 1000)
        self.nothing_left([1, 2])

    def test_callee_hangs_up(self) -> None:
        """The callee at crs2 hangs up: the caller at crs1 hears it (who = callee)."""
        keys = self.key_files
        answer = self.client(
            "answer", 2, "answer", "--tone", "1500", "--record", self.wav("b"),
            "--duration", "2", keys=keys[self.callee],
        )  # fmt: skip
        self.callee_ready("answer")
        call = self.client(
            "call", 1, "call", self.callee, "--tone", "1000", "--record", self.wav("a"),
            keys=keys[self.caller],
        )  # fmt: skip
        self.assertEqual(answer.wait(CEILING), 0, self.output("answer"))
        self.assertEqual(call.wait(CEILING), 0, self.output("call"))
        self.assertIn("ended: normal by callee", self.output("call"))
        self.assert_relayed_at_crs1(self.output("call"))
        self.assert_tone(self.wav("a"), 1500)
        self.assert_tone(self.wav("b"), 1000)
        self.nothing_left([1, 2])

    def test_callee_instance_killed(self) -> None:
        """kill -9 of crs2 during the call: crs1 hangs its caller up
        (not-connected, by crs) once the link is down, and removes the relay
        session."""
        keys = self.key_files
        self.client("answer", 2, "answer", "--tone", "1500", keys=keys[self.callee])
        self.callee_ready("answer")
        call = self.client("call", 1, "call", self.callee, "--tone", "1000", keys=keys[self.caller])
        wait_for(lambda: ": talk" in self.output("call"), "the call answered", CEILING)
        self.kill(2)
        self.assertEqual(call.wait(CEILING), 0, self.output("call"))
        self.assertIn("ended: not-connected by crs", self.output("call"))
        self.nothing_left([1])

    def test_caller_instance_killed(self) -> None:
        """kill -9 of crs1 (the caller's instance, holding the session and
        the relay) during the call: crs2 hangs its callee up (not-connected,
        by crs) once the link is down, and keeps nothing of the call."""
        keys = self.key_files
        answer = self.client("answer", 2, "answer", "--tone", "1500", keys=keys[self.callee])
        self.callee_ready("answer")
        self.client("call", 1, "call", self.callee, "--tone", "1000", keys=keys[self.caller])
        wait_for(lambda: ": talk" in self.output("answer"), "the call answered", CEILING)
        self.kill(1)
        self.assertEqual(answer.wait(CEILING), 0, self.output("answer"))
        self.assertIn("ended: not-connected by crs", self.output("answer"))
        wait_for(lambda: not self.live_sessions(2), "crs2's sessions end")

    def test_absent_callee_then_hold(self) -> None:
        """A callee of crs2 that is not attached anywhere: the caller at crs1
        gets the answer it gets for an absent callee of its own instance.
        Then a call to the attached callee (raw UMSG clients): each side's
        hold and resume cross the pool link, and the hangup ends it."""
        caller = Client(self.caller)
        self.clients.append(caller)
        self.attach(caller, [address(1)])
        absent = next(u for u in self.home_uris(2) if u != self.callee)
        send(caller.ws, type="invite", id=5, to=absent, mikey=b"\x01")
        answer = cbor2.loads(caller.ws.recv(timeout=CEILING))
        self.assertEqual((answer["type"], answer["id"]), ("error", 5))
        self.assertEqual(answer["code"], "not-found")
        self.assertIn("responder not found", self.cli(1, "show", "session"))
        self.assertEqual(self.relay_sessions(1), "0")
        callee = Client(self.callee)
        self.clients.append(callee)
        self.attach(callee, [address(2)])
        send(caller.ws, type="invite", id=6, to=self.callee, mikey=b"\x01")
        session = expect(caller, "session")["session"]
        self.assertEqual(expect(callee, "invite")["session"], session)
        send(callee.ws, type="talk", session=session)
        expect(caller, "talk")
        send(caller.ws, type="hold", session=session)
        expect(callee, "hold")
        send(callee.ws, type="hold", session=session)
        expect(caller, "hold")
        send(callee.ws, type="resume", session=session)
        expect(caller, "resume")
        send(caller.ws, type="resume", session=session)
        expect(callee, "resume")
        send(caller.ws, type="hangup", session=session, code="normal")
        self.assertEqual(expect(callee, "hangup")["who"], "caller")
