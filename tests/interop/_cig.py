"""What the CIG end-to-end interop tests share: a real CRS, CIG and
cig-relay with kamailio and baresip as the PBX (L{SecurePbxFixture})."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import SkipTest, TestCase

from cryptify.client.audio import peak_frequency, read_wav, tone, write_wav
from cryptify.client.calls import END, TALK, Call, CallEvent
from cryptify.client.phone import Phone
from cryptify.client.servers import session_maker, tls_connector
from cryptify.crypto.identity import period_of
from cryptify.crypto.keymaterial import load_key_material
from tests.interop._pbx import CIG_TRUNK, Pbx, require_pbx, until
from tests.interop._procs import (
    WAIT,
    Twistd,
    cli_ok,
    free_port,
    kill_managed_redis,
    provision,
    short_tempdir,
    tcp_answers,
    unix_answers,
    wait_for,
    write_crs_conf,
)


class SecurePbxFixture(TestCase):
    """cryptify-client <-> CRS <-> CIG <-> kamailio <-> baresip, all started."""

    timeout = 180
    #: The CIG's ``srtp`` mode and baresip's ``mediaenc`` (None: plain RTP);
    #: ``test_cig_srtp`` runs the e2e tests again with SRTP on the PBX leg.
    SRTP: str | None = None
    MEDIAENC: str | None = None

    def make_pbx(self, audio: str) -> Pbx:
        """kamailio and baresip (``test_cig_srtp`` makes them speak TLS)."""
        return Pbx(self, self.dir, self.cig_port, audio=audio, mediaenc=self.MEDIAENC)

    def trunk_config(self, rtp_range: str) -> str:
        """cig.conf's maps and interfaces for the PBX."""
        trunk = CIG_TRUNK.format(
            kam_port=self.pbx.kam_port, cig_port=self.cig_port, rtp_range=rtp_range
        )
        if self.SRTP is not None:
            trunk = trunk.replace("rtp_port_range", f"srtp {self.SRTP}; rtp_port_range")
        return trunk

    def cig_conf_extra(self) -> str:
        """Text added at the end of cig.conf."""
        return ""

    async def setUp(self) -> None:  # type: ignore[override]
        if shutil.which("redis-server") is None:
            raise SkipTest("redis-server is not installed")
        require_pbx()
        self.dir = d = short_tempdir(self)
        self.procs: dict[str, Twistd] = {}
        self.addCleanup(self.stop_all)
        # the CRS side
        self.crs_port = free_port()
        self.crs_conf = write_crs_conf(d, self.crs_port, free_port(socket.SOCK_DGRAM))
        self.crs_socket = os.path.join(d, "crs.sock")
        self.start("crs-relay", "--config", self.crs_conf)
        wait_for(lambda: unix_answers(os.path.join(d, "relay.sock")), "relay control")
        self.start_crs()
        self.keys = provision(d, self.crs_socket, "acme", [CLIENT], period_of(time.time()))
        kms = ("--store", os.path.join(d, "kms"))
        blob = self.ok("cryptify-kms", *kms, "cig-keys", "acme", CIG_URI, "--reveal")
        self.ca = os.path.join(d, "data", "tls", "crs.crt")
        # the CIG
        self.cig_port = free_port(socket.SOCK_DGRAM)
        write_wav(os.path.join(d, "tone.wav"), tone(PBX_TONE, 60.0))
        self.pbx = self.make_pbx(os.path.join(d, "tone.wav"))
        for attempt in (1, 2):
            self.mgmt_port = free_port()
            low, high = rtp_range()
            with open(os.path.join(d, "cig.conf"), "w") as f:
                f.write(
                    self.trunk_config(f"{low} {high}")
                    + CIG_CONF.format(d=d, crs_port=self.crs_port, mgmt_port=self.mgmt_port)
                    + self.cig_conf_extra()
                )
            self.start("cig-relay", "--config", os.path.join(d, "cig.conf"))
            wait_for(lambda: unix_answers(os.path.join(d, "cig-relay.sock")), "cig-relay control")
            cig = Twistd(self.dir, "cig", "--config", os.path.join(d, "cig.conf"))
            self.procs["cig"] = cig
            try:
                wait_for(
                    lambda: tcp_answers(self.mgmt_port) or cig.proc.poll() is not None,
                    "CIG management port",
                    2 * WAIT,
                )
            except AssertionError:
                raise AssertionError(f"the CIG did not start:\n{cig.output()}") from None
            if cig.proc.poll() is None:
                break
            # a port free_port or rtp_range gave was taken by a test running
            # beside this one before the CIG bound it: once more with new ports
            self.procs.pop("cig-relay").stop()
            self.assertEqual(attempt, 1, f"the CIG did not start:\n{cig.output()}")
        self.cig_cli("set-key", stdin=blob)
        wait_for(lambda: self.cig_connected(), "the CIG attached")
        await self.pbx.start()

    # ---------------------------------------------------------------- processes

    def start(self, plugin: str, *args: str) -> None:
        self.procs[plugin] = Twistd(self.dir, plugin, *args)

    def start_crs(self) -> None:
        self.start("crs", "--config", self.crs_conf)
        wait_for(lambda: unix_answers(self.crs_socket), "CRS management socket")
        wait_for(lambda: "crs_relay   active" in self.crs_cli("show", "services"), "relay link")

    def stop_all(self) -> None:
        for name in ("cig", "cig-relay", "crs", "crs-relay"):
            if name in self.procs:
                self.procs[name].stop()
        kill_managed_redis(self.dir)

    def ok(self, program: str, *args: str, stdin: str | None = None) -> str:
        return cli_ok(self, program, *args, stdin=stdin)

    def crs_cli(self, *args: str) -> str:
        return self.ok("crs-cli", "--socket", self.crs_socket, *args)

    def cig_cli(self, *args: str, stdin: str | None = None) -> str:
        where = ("--address", f"127.0.0.1:{self.mgmt_port}")
        return self.ok("cig-cli", *where, "--cookie", f"{self.dir}/mgmt.cookie", *args, stdin=stdin)

    def cig_connected(self) -> bool:
        return "Connection state          CONNECTED" in self.cig_cli("status")

    async def in_thread(self, f: Any, *args: Any) -> Any:
        return await threads.deferToThread(f, *args)

    def call_states(self) -> list[str]:
        """The STATE column of `cig-cli show call` (which ends with OK)."""
        rows = self.cig_cli("show", "call").splitlines()
        self.assertEqual(rows[-1], "OK")
        return [row.split()[4] for row in rows[1:-1] if row.strip()]

    async def until_states(self, states: list[str]) -> None:
        seen: list[list[str]] = []

        def check() -> bool:
            seen.append(self.call_states())
            return seen[-1] == states

        try:
            await until(check, f"show call {states}", 10)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen {seen[-1:]}") from None

    def session_log(self) -> str:
        try:
            with open(os.path.join(self.dir, "cig-log", "session.log")) as f:
                return f.read()
        except OSError:
            return ""

    def call_records(self) -> list[dict[str, Any]]:
        """The lines of the CIG's call records file, read back."""
        try:
            with open(os.path.join(self.dir, "cig-log", "calls.json")) as f:
                return [json.loads(line) for line in f]
        except FileNotFoundError:
            return []

    def session_states(self) -> list[str]:
        """The State column of session.log, line by line."""
        return [line.split(", ")[6] for line in self.session_log().splitlines() if line]

    def sessions_empty(self) -> bool:
        """No live session (ended ones stay listed for a while with their final state)."""
        lines = self.crs_cli("show", "session").splitlines()
        live = [line for line in lines[1:] if line.split()[-1] in ("invite", "ringing", "talk")]
        return lines[0].split() == ["CALLER", "CALLEE", "TIME", "STATE"] and not live

    def context(self) -> str:
        return (
            self.pbx.context()
            + f"\ncig:\n{self.procs['cig'].output()[-4000:]}"
            + f"\ncig-relay:\n{self.procs['cig-relay'].output()[-2000:]}"
        )

    # ---------------------------------------------------------------- checks

    def assert_tone(self, samples: Any, freq: float, what: str) -> None:
        self.assertGreater(len(samples), 8000, f"{what}: less than 1 s recorded")
        # skip the first 200 ms, look at one second
        peak, share = peak_frequency(samples[1600:9600])
        self.assertEqual(peak, freq, f"{what}: peak at {peak} Hz")
        self.assertGreater(share, 0.5, what)

    def pbx_recording(self) -> Any:
        files = self.pbx.recordings()
        self.assertTrue(files, "baresip recorded nothing" + self.context())
        return read_wav(files[-1])

    def phone(self) -> Phone:
        material = load_key_material(self.keys[CLIENT])
        phone = Phone(
            reactor,
            material,
            tls_connector(reactor, self.ca, False),
            session_maker(material, "test"),
            "127.0.0.1",
            self.crs_port,
            play=tone(CLIENT_TONE, 1.0),
            loop_play=True,
        )
        self.addCleanup(phone.stop)
        return phone

    async def talk(self, phone: Phone) -> Call:
        """Call baresip from ``phone``; returns once talking."""
        call = phone.place(PBX_PHONE)
        talking = phone.until(
            lambda e: isinstance(e, CallEvent) and e.call is call and e.kind in (TALK, END)
        )
        talking.addTimeout(30, reactor)  # type: ignore[arg-type]
        try:
            event = await talking
        except defer.TimeoutError:
            raise AssertionError("no talk" + self.context()) from None
        self.assertEqual(event.kind, TALK, f"{call.code} {call.reason}" + self.context())
        return call


CLIENT = "tel:+46700000031"
CLIENT_TONE, PBX_TONE = 1000, 1500


CIG_URI = "tel:+8888"


#: What the client dials to reach baresip, and what baresip dials to reach the client.
PBX_PHONE = "tel:+8888;101"


DIAL_CLIENT = "946700000031"


CIG_CONF = """
crs {{
    address 127.0.0.1 {crs_port};
    keystore "{d}/userdata";
    ca "{d}/data/tls/crs.crt";
}}
relay {{ control "{d}/cig-relay.sock"; }}
management {{
    bind 127.0.0.1 {mgmt_port};
    cookie "{d}/mgmt.cookie";
    socket "{d}/cig.sock";
}}
logging {{ dir "{d}/cig-log"; call_records "{d}/cig-log/calls.json"; }}
notify "/bin/true";
"""


def rtp_range() -> tuple[int, int]:
    """A run of 100 even-started UDP ports, free right now."""
    for _ in range(50):
        low = free_port(socket.SOCK_DGRAM) & ~1
        if low + 100 < 65535:
            return low, low + 99
    raise AssertionError("no port range")
