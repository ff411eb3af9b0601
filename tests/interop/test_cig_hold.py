"""Hold and resume between a secure client and baresip behind kamailio, all real.

The processes of ``_cig.SecurePbxFixture`` (CRS, CIG, both relays, kamailio,
baresip playing 1,500 Hz; the client plays 1,000 Hz):

- baresip holds the call (its ``hold`` command: a re-INVITE with
  ``a=sendonly``): the CIG answers ``recvonly``, cig-relay stops sending
  to baresip, the client hears of it as UMSG ``hold``; ``resume`` turns
  everything back, and the tones cross both ways again;
- the client holds the call (UMSG ``hold``): the CIG re-INVITEs baresip
  with ``a=sendonly``, cig-relay plays the client nothing from baresip;
  ``resume`` re-INVITEs with ``sendrecv`` and the tones cross again.
"""

from __future__ import annotations

import re
from typing import Any

from cryptify.client.audio import peak_frequency
from cryptify.client.calls import END, HELD, RESUMED, CallEvent
from tests.interop._cig import CLIENT_TONE, PBX_TONE, SecurePbxFixture
from tests.interop._pbx import sleep, until


class HoldTests(SecurePbxFixture):
    def relay_log(self) -> str:
        return str(self.procs["cig-relay"].output())

    def cig_log(self) -> str:
        return str(self.procs["cig"].output())

    def held_packets(self) -> int:
        found = re.findall(r"removed: .* held (\d+)", self.relay_log())
        self.assertTrue(found, "no bridge removal logged" + self.context())
        return int(found[-1])

    def assert_tail_tone(self, samples: Any, freq: float, what: str) -> None:
        """The end of a recording (up to its last second, but 0.1 s) is C{freq}
        (baresip starts a new file when the stream comes back from hold)."""
        window = samples[max(1600, len(samples) - 8800) : len(samples) - 800]
        self.assertGreater(len(window), 4000, f"{what}: less than 0.5 s recorded")
        peak, share = peak_frequency(window)
        self.assertEqual(peak, freq, f"{what}: peak at {peak} Hz" + self.context())
        self.assertGreater(share, 0.5, what)

    def longest_silence(self, samples: Any) -> float:
        """The longest run of 20 ms frames without sound once sound began, in seconds."""
        longest = run = 0
        heard = False
        for start in range(0, len(samples) - 160, 160):
            frame = samples[start : start + 160]
            quiet = max(abs(int(x)) for x in frame) < 300
            heard = heard or not quiet
            run = run + 1 if quiet and heard else 0
            longest = max(longest, run)
        return longest * 0.020

    async def event(self, phone: Any, call: Any, kind: str, what: str) -> None:
        waiting = phone.until(
            lambda e: isinstance(e, CallEvent) and e.call is call and e.kind == kind
        )
        await until(lambda: waiting.called, what + self.context(), 15)

    async def hang_up(self, phone: Any, call: Any) -> None:
        ended = phone.until(lambda e: isinstance(e, CallEvent) and e.call is call and e.kind == END)
        phone.hangup(call)
        await ended
        await until(self.pbx.call_ended, "baresip to see the BYE" + self.context())
        await until(lambda: "removed:" in self.relay_log(), "the bridge removed" + self.context())

    async def test_pbx_phone_holds_and_resumes(self) -> None:
        """baresip's hold: the CIG answers recvonly, the bridge holds what goes
        to baresip, the client is told ``hold``; resume undoes it all."""
        phone = self.phone()
        await phone.start()
        call = await self.talk(phone)
        await sleep(1.0)
        held = phone.until(lambda e: isinstance(e, CallEvent) and e.call is call and e.kind == HELD)
        self.pbx.command("hold")
        await until(lambda: held.called, "the client told of the hold" + self.context())
        await until(
            lambda: re.search(r"updated: PBX .*recvonly\)", self.relay_log()) is not None,
            "the bridge on hold towards baresip" + self.context(),
        )
        self.assertTrue(call.held)
        await sleep(1.5)
        resumed = phone.until(
            lambda e: isinstance(e, CallEvent) and e.call is call and e.kind == RESUMED
        )
        self.pbx.command("resume")
        await until(lambda: resumed.called, "the client told of the resume" + self.context())
        await until(
            lambda: (
                re.search(r"updated: PBX .*sendrecv\)\s*$", self.relay_log(), re.M) is not None
                and self.relay_log().rfind("sendrecv)") > self.relay_log().rfind("recvonly)")
            ),
            "the bridge back to sendrecv" + self.context(),
        )
        await sleep(2.0)
        await self.hang_up(phone, call)
        # the client's audio was not sent to baresip while it held the call
        self.assertGreater(self.held_packets(), 20, self.context())
        self.assert_tail_tone(phone.recording(call).samples(), PBX_TONE, "the client's recording")
        await until(lambda: self.pbx.recordings(), "baresip's recording")
        self.assert_tail_tone(self.pbx_recording(), CLIENT_TONE, "baresip's recording")

    async def test_secure_client_holds_and_resumes(self) -> None:
        """The client's hold: a re-INVITE with sendonly that baresip accepts, the
        bridge plays the client nothing from baresip; resume: sendrecv again."""
        phone = self.phone()
        await phone.start()
        call = await self.talk(phone)
        await sleep(1.0)
        phone.hold(call)
        await until(
            lambda: "hold: re-INVITE for" in self.cig_log(),
            "baresip to answer the hold" + self.context(),
        )
        await until(
            lambda: re.search(r"updated: PBX .*sendonly\)", self.relay_log()) is not None,
            "the bridge holding baresip's audio" + self.context(),
        )
        await sleep(1.5)
        phone.hold(call, False)
        await until(
            lambda: "resume: re-INVITE for" in self.cig_log(),
            "baresip to answer the resume" + self.context(),
        )
        await until(
            lambda: self.relay_log().rfind("sendrecv)") > self.relay_log().rfind("sendonly)"),
            "the bridge back to sendrecv" + self.context(),
        )
        await sleep(2.0)
        await self.hang_up(phone, call)
        # 1.5 s on hold: the client heard nothing of baresip's tone for most of it
        recording = phone.recording(call).samples()
        self.assertGreater(self.longest_silence(recording), 0.8, self.context())
        self.assert_tail_tone(recording, PBX_TONE, "the client's recording")
        await until(lambda: self.pbx.recordings(), "baresip's recording")
        self.assert_tail_tone(self.pbx_recording(), CLIENT_TONE, "baresip's recording")


class SrtpHoldTests(HoldTests):
    """The same with SDES SRTP required on the PBX leg: the re-INVITEs keep
    the keys both ways, and the audio comes back after the hold."""

    SRTP = "require"
    MEDIAENC = "srtp-mand"
