"""Early media: a PBX's 183 with SDP plays its ringback to the secure caller.

The processes of ``_cig.SecurePbxFixture`` (CRS, CIG, both relays, the
secure client), with sipp as the PBX (``_sipp_pbx.SippPbx``): it answers
the CIG's INVITE with 100, then 183 with SDP, plays a 400 Hz "ringback"
for 3 s, then answers 200 with the same SDP and plays 700 Hz (another
RTP stream: a new SSRC, timestamps from 0 again, as when the answering
phone takes over from an announcement server).  The
client's recording has the ringback before the answer and the 700 Hz
after: the CIG bridged the call at the 183 and kept the bridge at the 200.

    secure client --SRTP--> crs-relay --SRTP--> cig-relay --RTP--> sipp
    cig --SIP--> sipp (100, 183+SDP, RTP, 200+SDP)
"""

from __future__ import annotations

import os
from typing import Any

from cryptify.client.audio import peak_frequency
from cryptify.client.calls import END, TALK, CallEvent
from tests.interop._cig import PBX_PHONE, SecurePbxFixture
from tests.interop._pbx import sleep, until
from tests.interop._sipp_pbx import SippPbx, response, tone_pcap

#: On peak_frequency's 50 Hz grid (a ringback of 400 Hz, as in the UK).
RINGBACK, ANSWERED = 400, 700

EARLY_UAS = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="PBX with early media">
  <recv request="INVITE" crlf="true"/>
  {response("100 Trying", sdp=False, to_tag=False)}
  {response("183 Session Progress")}
  <nop><action><exec play_pcap_audio="ringback.pcap"/></action></nop>
  <pause milliseconds="3000"/>
  {response("200 OK").replace("<send>", '<send retrans="500">')}
  <recv request="ACK"/>
  <nop><action><exec play_pcap_audio="answered.pcap"/></action></nop>
  <recv request="BYE"/>
  {response("200 OK", sdp=False, to_tag=False)}
</scenario>
"""


class EarlyMediaTests(SecurePbxFixture):
    def make_pbx(self, audio: str) -> Any:
        tone_pcap(os.path.join(self.dir, "ringback.pcap"), RINGBACK, 3.0, ssrc=0x1111)
        tone_pcap(os.path.join(self.dir, "answered.pcap"), ANSWERED, 20.0, ssrc=0x2222)
        return SippPbx(self, self.dir, EARLY_UAS)

    def context(self) -> str:
        return (
            self.pbx.context()
            + f"\ncig:\n{self.procs['cig'].output()[-4000:]}"
            + f"\ncig-relay:\n{self.procs['cig-relay'].output()[-2000:]}"
        )

    def peaks(self, samples: Any) -> list[float]:
        """The peak frequency of each half-second of a recording (quiet ones: 0)."""
        found = []
        for start in range(0, len(samples) - 4000, 4000):
            window = samples[start : start + 4000]
            if max(abs(int(x)) for x in window) < 300:
                found.append(0.0)
                continue
            found.append(peak_frequency(window)[0])
        return found

    async def test_ringback_before_the_answer(self) -> None:
        """The client hears the PBX's 400 Hz while ringing, then its 700 Hz once
        answered; the bridge is added once (at the 183), updated at the 200."""
        phone = self.phone()
        await phone.start()
        call = phone.place(PBX_PHONE)
        talking = phone.until(
            lambda e: isinstance(e, CallEvent) and e.call is call and e.kind in (TALK, END)
        )
        await until(lambda: talking.called, "talk" + self.context(), 30)
        self.assertEqual(call.state, "talking", f"{call.code} {call.reason}" + self.context())
        await sleep(2.0)
        ended = phone.until(lambda e: isinstance(e, CallEvent) and e.call is call and e.kind == END)
        phone.hangup(call)
        await ended
        relay = self.procs["cig-relay"].output()
        await until(lambda: "removed:" in self.procs["cig-relay"].output(), "bridge removed")
        self.assertEqual(relay.count(" added: "), 1, self.context())
        self.assertIn(" updated: PBX ", relay)
        self.assertIn("early media from the PBX for call", self.procs["cig"].output())
        peaks = self.peaks(phone.recording(call).samples())
        self.assertIn(float(RINGBACK), peaks, f"{peaks}" + self.context())
        self.assertIn(float(ANSWERED), peaks, f"{peaks}" + self.context())
        first_answered = peaks.index(float(ANSWERED))
        self.assertLess(peaks.index(float(RINGBACK)), first_answered, peaks)
        self.assertGreaterEqual(peaks.count(float(RINGBACK)), 4, peaks)  # >= 2 s of ringback
        self.assertEqual(
            self.session_states(),
            ["routing", "routed", "trying", "ringing", "talk", "hangup"],
            self.session_log(),
        )
