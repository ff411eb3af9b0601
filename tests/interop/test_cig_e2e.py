"""A secure client and a SIP phone talk through the CRS and the CIG, all real.

Processes: `twistd crs-relay` and `twistd crs` (managed Redis), `twistd
cig-relay` and `twistd cig` (attached to the CRS as tel:+8888 with keys
from `cryptify-kms cig-keys` given to `cig-cli set-key`), kamailio as the
PBX and baresip registered behind it as extension 101, playing a 1,500 Hz
tone and recording what it hears (``tests/interop/_pbx.py``).  The secure
client is a :class:`~cryptify.client.phone.Phone` on the test's reactor
playing 1,000 Hz, or a `cryptify-client listen --auto-answer` process.

    secure client --UMSG/TLS--> crs --> cig (UIF) --SIP--> kamailio --> baresip
    secure client --SRTP--> crs-relay --SRTP--> cig-relay --RTP--> baresip
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

from twisted.internet import threads

from cryptify.client.audio import read_wav
from cryptify.client.calls import END, CallEvent
from cryptify.client.session import Attached
from tests.interop._cig import (
    CIG_URI,
    CLIENT,
    CLIENT_TONE,
    DIAL_CLIENT,
    PBX_PHONE,
    PBX_TONE,
    SecurePbxFixture,
)
from tests.interop._pbx import sleep, until
from tests.interop._procs import (
    BIN,
)


class SecurePbxTests(SecurePbxFixture):
    """cryptify-client <-> CRS <-> CIG <-> kamailio <-> baresip, with tones and DTMF."""

    async def test_secure_client_calls_pbx_phone(self) -> None:
        """
        The client dials tel:+8888;101: baresip answers; each side hears the
        other's tone; the digits 1 2 3 # reach baresip as telephone-events
        and baresip's 7 reaches the client; baresip's re-INVITE is answered
        and the audio goes on; the client's hangup ends the SIP leg, the CRS
        session and the bridge; `cig-cli show call` and session.log followed.
        """
        phone = self.phone()
        await phone.start()
        call = await self.talk(phone)
        self.assertIn("ANSWER", await self.in_thread(self.call_states))
        umsg = (await self.in_thread(self.cig_cli, "show", "umsg")).splitlines()
        self.assertEqual(umsg[0].split(), ["FROM", "TO", "STATE", "TIME", "ID"])
        self.assertEqual([row.split()[:3] for row in umsg[1:-1]],
                         [[CLIENT, PBX_PHONE, "TALK"], ["ZERO", "ZERO", "ZERO"]])  # fmt: skip
        self.assertIn(CLIENT, await self.in_thread(self.crs_cli, "show", "session"))
        await sleep(1.0)
        phone.send_dtmf(call, "123#")
        self.pbx.command("sndcode", "7")
        await sleep(1.0)
        # baresip re-INVITEs with its (same) offer: answered, the bridge updated
        self.pbx.command("reinvite")
        await until(
            lambda: "re-INVITE: new PBX media" in self.procs["cig"].output(),
            "the CIG to take the re-INVITE" + self.context(),
        )
        await until(
            lambda: "updated: PBX" in self.procs["cig-relay"].output(),
            "BridgeUpdate" + self.context(),
        )
        await sleep(1.5)
        self.assertEqual(phone.dtmf_received(call), "7", self.context())
        ended = phone.until(lambda e: isinstance(e, CallEvent) and e.call is call and e.kind == END)
        phone.hangup(call)
        await ended
        await until(self.pbx.call_ended, "baresip to see the BYE" + self.context())
        self.assertEqual(self.pbx.dtmf_received(), ["1", "2", "3", "#"], self.context())
        self.assert_tone(phone.recording(call).samples(), PBX_TONE, "the client's recording")
        await until(lambda: self.pbx.recordings(), "baresip's recording")
        self.assert_tone(self.pbx_recording(), CLIENT_TONE, "baresip's recording")
        await self.until_states(["HANGUP"])
        self.assertTrue(await self.in_thread(self.sessions_empty))
        stats = await self.in_thread(self.cig_cli, "status")
        self.assertIn("Connection state          CONNECTED", stats)
        self.assertEqual(
            self.session_states(),
            ["routing", "routed", "trying", "ringing", "talk", "hangup"],
            self.session_log(),
        )
        await until(lambda: self.call_records(), "the call record" + self.context())
        [record] = self.call_records()
        self.assertEqual(
            [record[k] for k in ("direction", "from", "to", "source")],
            ["to-pbx", CLIENT, PBX_PHONE, "umsg"],
        )
        # the maps' URI (test_cig_srtp's TLS trunk routes to kamailio's TLS port)
        self.assertTrue(record["routed_to"].startswith("sip:101@127.0.0.1:"), record)
        self.assertEqual((record["ended_by"], record["reason"]), ("secure", "normal"))
        self.assertEqual(record["result"], "answered")
        self.assertIn(record["codec"], ("PCMU", "PCMA"))
        self.assertGreater(record["duration"], 3.0)
        # 5 s of 20 ms G.711 packets at least, each way (172 octets each, more with SRTP)
        self.assertGreater(record["octets_to_pbx"], 200 * 172, record)
        self.assertGreater(record["octets_from_pbx"], 200 * 172, record)
        self.assertIn("@", record["sip_call_id"])
        mode = os.stat(os.path.join(self.dir, "cig-log", "calls.json")).st_mode & 0o777
        self.assertEqual(mode, 0o640)

    async def test_pbx_phone_calls_listening_client(self) -> None:
        """
        baresip dials 9 + the client's number: the CIG sends its own
        I_MESSAGE to `cryptify-client listen --auto-answer`, which answers;
        tones cross; baresip's hangup ends the client's call and the CRS
        session.
        """
        wav = os.path.join(self.dir, "client.wav")
        log = os.path.join(self.dir, "listen.out")
        argv = [os.path.join(BIN, "cryptify-client"), "listen", "--auto-answer"]
        argv += ["--tone", str(CLIENT_TONE), "--record", wav, "--keys", self.keys[CLIENT]]
        argv += ["--server", f"127.0.0.1:{self.crs_port}", "--ca", self.ca]
        with open(log, "wb") as out:
            listen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: listen.poll() is None and listen.kill())

        def said(text: str) -> bool:
            with open(log) as f:
                return text in f.read()

        await until(lambda: said("attached"), "the client attached", 30)
        self.pbx.command("dial", f"sip:{DIAL_CLIENT}@127.0.0.1:{self.pbx.kam_port}")
        await until(lambda: said(": talk"), "the client talking" + self.context(), 30)
        self.assertIn(CIG_URI, await self.in_thread(self.crs_cli, "show", "session"))
        self.assertEqual(await self.in_thread(self.call_states), ["ANSWER"])
        await sleep(2.5)
        self.pbx.command("hangup")
        await until(lambda: said("recorded"), "the client to see the hangup" + self.context())
        listen.send_signal(signal.SIGTERM)
        self.assertEqual(await threads.deferToThread(listen.wait, 30), 0)
        with open(log) as f:
            out = f.read()
        self.assertRegex(out, "call [0-9a-f]+ from " + re.escape(f"{CIG_URI};101") + ": incoming")
        self.assertIn("ended: normal by caller", out)
        self.assert_tone(read_wav(wav), PBX_TONE, "the client's recording")
        await until(lambda: self.pbx.recordings(), "baresip's recording")
        self.assert_tone(self.pbx_recording(), CLIENT_TONE, "baresip's recording")
        self.assertTrue(await self.in_thread(self.sessions_empty))
        await self.until_states(["HANGUP"])
        self.assertEqual(
            self.session_states(),
            ["routing", "routed", "trying", "ringing", "talk", "hangup"],
            self.session_log(),
        )
        fields = self.session_log().splitlines()[-1].split(", ")
        self.assertEqual(
            fields[2:6],
            [f"sip:101@127.0.0.1:{self.pbx.kam_port}", f"sip:{DIAL_CLIENT}@127.0.0.1:"
             f"{self.pbx.kam_port}", f"{CIG_URI};101", CLIENT],
        )  # fmt: skip

    async def test_crs_restart_mid_call(self) -> None:
        """
        The CRS stops during a call: the client's call ends, the CIG hangs
        up the SIP leg and removes the bridge.  Once the CRS is back and the
        UIF and the client have re-attached, a new call goes through.
        """
        phone = self.phone()
        await phone.start()
        call = await self.talk(phone)
        ended = phone.until(lambda e: isinstance(e, CallEvent) and e.call is call and e.kind == END)
        await threads.deferToThread(self.procs["crs"].stop)
        await ended
        await until(self.pbx.call_ended, "baresip to see the BYE" + self.context())
        await self.until_states(["HANGUP"])
        attached = phone.until(lambda e: isinstance(e, Attached))
        await threads.deferToThread(self.start_crs)
        await attached
        await until(self.cig_connected, "the CIG re-attached", 60)
        again = await self.talk(phone)
        await sleep(1.5)
        phone.hangup(again)
        await until(lambda: self.pbx.byes_received() == 2, "the second BYE" + self.context())
        self.assert_tone(phone.recording(again).samples(), PBX_TONE, "the second call")
