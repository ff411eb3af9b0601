"""cryptify-client calls through a real CRS and relay, with audio both ways.

`twistd crs` and `twistd crs-relay` run as in ``test_calls.py``.  The
clients are either two real `cryptify-client` processes (``answer`` and
``call``) or two in-process :class:`~cryptify.client.phone.Phone` objects
on the test's reactor.  Each side plays a tone; the other side's
recording must have its spectral peak at that tone (Goertzel over a grid
of frequencies, no numpy).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import SkipTest, TestCase

from cryptify.client.audio import peak_frequency, read_wav, tone
from cryptify.client.calls import END, INCOMING, TALK, CallEvent
from cryptify.client.messages import Posted, Receipt, Received
from cryptify.client.phone import Phone, PhoneEvent
from cryptify.client.servers import session_maker, tls_connector
from cryptify.crypto.identity import period_of
from cryptify.crypto.keymaterial import load_key_material
from tests.interop._procs import (
    BIN,
    Twistd,
    free_port,
    provision,
    run_cli,
    short_tempdir,
    unix_answers,
    write_crs_conf,
)
from tests.interop._procs import wait_for as _wait_for

CALLER = "tel:+46700000011"
CALLEE = "tel:+46700000012"


def wait_for(predicate: Any, what: str, timeout: float = 30.0) -> Any:
    return _wait_for(predicate, what, timeout)


class _ClientCrs(TestCase):
    """A real CRS and relay, one account, key files for two users."""

    timeout = 60

    def setUp(self) -> None:
        if shutil.which("redis-server") is None:
            raise SkipTest("redis-server is not installed")
        self.dir = d = short_tempdir(self)
        self.client_port = free_port()
        self.relay_port = free_port(socket.SOCK_DGRAM)
        conf = write_crs_conf(d, self.client_port, self.relay_port)
        self.socket = os.path.join(d, "crs.sock")
        self.procs = [Twistd(d, "crs-relay", "--config", conf)]
        wait_for(lambda: unix_answers(os.path.join(d, "relay.sock")), "relay control")
        self.procs.append(Twistd(d, "crs", "--config", conf))
        self.addCleanup(lambda: [p.stop() for p in reversed(self.procs)])
        wait_for(lambda: unix_answers(self.socket), "CRS management socket")
        self.key_files = provision(d, self.socket, "acme", [CALLER, CALLEE], period_of(time.time()))
        wait_for(lambda: "crs_relay   active" in self.cli("show", "services")[1], "relay link")
        self.ca = os.path.join(d, "data", "tls", "crs.crt")

    def cli(self, *args: str) -> tuple[int, str, str]:
        return run_cli("crs-cli", "--socket", self.socket, *args)

    def sessions_empty(self) -> bool:
        """No live session (ended ones stay listed for a while with their final state)."""
        lines = self.cli("show", "session")[1].splitlines()
        live = [line for line in lines[1:] if line.split()[-1] in ("invite", "ringing", "talk")]
        return lines[0].split() == ["CALLER", "CALLEE", "TIME", "STATE"] and not live

    def assert_tone(self, path_or_samples: Any, freq: float) -> None:
        samples = read_wav(path_or_samples) if isinstance(path_or_samples, str) else path_or_samples
        self.assertGreater(len(samples), 8000 * 0.8, "less than 0.8 s recorded")
        # skip the first 100 ms, look at one second
        peak, share = peak_frequency(samples[800:8800])
        self.assertEqual(peak, freq)
        self.assertGreater(share, 0.5)


class ProcessCallTests(_ClientCrs):
    """Two `cryptify-client` processes: answer and call."""

    def client(self, *args: str, keys: str) -> tuple[subprocess.Popen[bytes], str]:
        log = os.path.join(self.dir, f"client-{args[0]}.out")
        argv = [os.path.join(BIN, "cryptify-client"), *args, "--keys", keys]
        argv += ["--server", f"127.0.0.1:{self.client_port}", "--ca", self.ca]
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        return proc, log

    def test_call_with_tones(self) -> None:
        """call --tone 1000 / answer --tone 1000: each recording holds the other's
        1 kHz tone; the caller's hangup ends both processes; no session is left."""
        a_wav, b_wav = os.path.join(self.dir, "a.wav"), os.path.join(self.dir, "b.wav")
        answer, b_log = self.client(
            "answer", "--tone", "1000", "--record", b_wav, keys=self.key_files[CALLEE]
        )
        wait_for(lambda: "attached" in open(b_log).read(), "callee attached")
        call, a_log = self.client(
            "call", CALLEE, "--tone", "1000", "--record", a_wav, "--duration", "2",
            keys=self.key_files[CALLER],
        )  # fmt: skip
        self.assertEqual(call.wait(30), 0, open(a_log).read())
        self.assertEqual(answer.wait(30), 0, open(b_log).read())
        self.assertIn("ended: normal by caller", open(b_log).read())
        self.assert_tone(a_wav, 1000)
        self.assert_tone(b_wav, 1000)
        self.assertTrue(self.sessions_empty())


class InProcessCallTests(_ClientCrs):
    """Two Phones on the test's reactor."""

    def phone(self, uri: str, freq: float, events: list[PhoneEvent]) -> Phone:
        material = load_key_material(self.key_files[uri])
        phone = Phone(
            reactor,
            material,
            tls_connector(reactor, self.ca, False),
            session_maker(material, "test"),
            "127.0.0.1",
            self.client_port,
            events.append,
            play=tone(freq, 1.0),
            loop_play=True,
        )
        self.addCleanup(phone.stop)
        return phone

    async def test_callee_hangs_up(self) -> None:
        """Tones 1000 Hz (caller) and 1500 Hz (callee) cross; the callee's hangup
        ends the call on both sides and at the CRS; an unknown callee is not-found."""
        a_events: list[PhoneEvent] = []
        b_events: list[PhoneEvent] = []
        a, b = self.phone(CALLER, 1000, a_events), self.phone(CALLEE, 1500, b_events)
        await defer.gatherResults([a.start(), b.start()])

        nobody = a.place("tel:+46700000099")
        ended = await a.until(lambda e: isinstance(e, CallEvent) and e.call is nobody)
        self.assertEqual((ended.kind, nobody.code), (END, "not-found"))

        incoming = b.until(lambda e: isinstance(e, CallEvent) and e.kind == INCOMING)
        call = a.place(CALLEE)
        talk = a.until(lambda e: isinstance(e, CallEvent) and e.call is call and e.kind == TALK)
        their = (await incoming).call
        self.assertEqual(their.peer, CALLER)
        b.answer(their)
        await talk
        during = await threads.deferToThread(self.cli, "show", "session")
        self.assertIn(CALLER, during[1])

        # 1.5 s of media, then the callee hangs up
        await _sleep(1.5)
        a_end = a.until(lambda e: isinstance(e, CallEvent) and e.call is call and e.kind == END)
        b.hangup(their)
        await a_end
        self.assertEqual((call.code, call.who), ("normal", "callee"))
        self.assertEqual(their.state, "ended")
        self.assertFalse(a.legs or b.legs)
        self.assert_tone(a.recording(call).samples(), 1500)
        self.assert_tone(b.recording(their).samples(), 1000)
        self.assertTrue(await threads.deferToThread(self.sessions_empty))

    async def test_message(self) -> None:
        """A message posted by one client is received once by the other, which
        confirms it; the sender gets posted and then the delivery receipt."""
        a_events: list[PhoneEvent] = []
        b_events: list[PhoneEvent] = []
        a, b = self.phone(CALLER, 1000, a_events), self.phone(CALLEE, 1500, b_events)
        await defer.gatherResults([a.start(), b.start()])
        got = b.until(lambda e: isinstance(e, Received))
        request = a.post(CALLEE, b"hello 1")
        posted = await a.until(lambda e: isinstance(e, Posted) and e.request_id == request)
        self.assertIsNone(posted.error)
        receipt = a.until(lambda e: isinstance(e, Receipt) and e.message == posted.message)
        message = await got
        self.assertEqual((message.message, message.sender, message.content),
                         (posted.message, CALLER, b"hello 1"))  # fmt: skip
        await receipt
        self.assertEqual(len([e for e in b_events if isinstance(e, Received)]), 1)


def _sleep(seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)  # type: ignore[attr-defined]
    return d
