"""baresip transfers a secure client's call to another phone, all real.

The processes of ``_cig.SecurePbxFixture`` (CRS, CIG, both relays,
kamailio with baresip as extension 101 playing 1,500 Hz, the secure
client playing 1,000 Hz), plus sipp as the transfer target (a UAS that
answers with SDP and plays 700 Hz from a pcap).  The client calls 101;
baresip's ``transfer`` sends REFER (through kamailio) naming sipp: the
CIG answers 202, NOTIFYs the progress, INVITEs sipp from the same RTP
port, moves the bridge once sipp answers, NOTIFYs 200 and ends baresip's
dialog; the client, still in its call, now hears sipp's 700 Hz.

    secure client --SRTP--> crs-relay --SRTP--> cig-relay --RTP--> baresip, then sipp
    baresip --REFER--> kamailio --> cig --INVITE--> sipp
"""

from __future__ import annotations

import os
from typing import Any

from cryptify.client.audio import peak_frequency
from cryptify.client.calls import END, CallEvent
from tests.interop._cig import PBX_TONE, SecurePbxFixture
from tests.interop._pbx import sleep, until
from tests.interop._sipp_pbx import SippPbx, response, tone_pcap

TARGET_TONE = 700

#: The target's INVITE check: none (blind), or a Replaces header (attended).
REPLACES_CHECK = """<recv request="INVITE" crlf="true"><action>
    <ereg regexp="c2@pbx;to-tag=a;from-tag=b" search_in="hdr" header="Replaces:"
          check_it="true" assign_to="replaces"/>
    <log message="Replaces [$replaces]"/>
  </action></recv>"""

TARGET_UAS = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="transfer target">
  <recv request="INVITE" crlf="true"/>
  {response("100 Trying", sdp=False, to_tag=False)}
  {response("200 OK").replace("<send>", '<send retrans="500">')}
  <recv request="ACK"/>
  <nop><action><exec play_pcap_audio="target.pcap"/></action></nop>
  <recv request="BYE"/>
  {response("200 OK", sdp=False, to_tag=False)}
</scenario>
"""


class TransferTests(SecurePbxFixture):
    def peaks(self, samples: Any) -> list[float]:
        """The peak frequency of each half-second of a recording (quiet ones: 0)."""
        found = []
        for start in range(0, len(samples) - 4000, 4000):
            window = samples[start : start + 4000]
            quiet = max(abs(int(x)) for x in window) < 300
            found.append(0.0 if quiet else peak_frequency(window)[0])
        return found

    async def test_blind_transfer_to_another_phone(self) -> None:
        """baresip transfers the client's call to sipp: the client's call goes
        on, now with sipp's tone; baresip's call ends; the record names sipp."""
        await self.transfer(TARGET_UAS, "")

    async def test_attended_transfer_carries_replaces(self) -> None:
        """A Refer-To with ?Replaces= (an attended transfer's): the CIG's INVITE
        to the target carries that Replaces header (sipp checks it: a call
        without it fails), and the call moves as before."""
        await self.transfer(
            TARGET_UAS.replace('<recv request="INVITE" crlf="true"/>', REPLACES_CHECK),
            "?Replaces=c2%40pbx%3Bto-tag%3Da%3Bfrom-tag%3Db",
        )

    async def transfer(self, scenario: str, headers: str) -> None:
        tone_pcap(os.path.join(self.dir, "target.pcap"), TARGET_TONE, 20.0, ssrc=0x7777)
        target = SippPbx(self, self.dir, scenario)
        await target.start()
        phone = self.phone()
        await phone.start()
        call = await self.talk(phone)
        await sleep(1.5)
        uri = f"sip:201@127.0.0.1:{target.kam_port}"
        self.pbx.command("transfer", uri + headers)
        cig = self.procs["cig"]
        try:
            await until(
                lambda: "transfer of" in cig.output() and " done" in cig.output(),
                "the transfer done",
                20,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}{self.context()}{target.context()}") from None
        await until(self.pbx.call_ended, "baresip's call to end" + self.context())
        await sleep(2.5)
        self.assertEqual(call.state, "talking", self.context())
        ended = phone.until(lambda e: isinstance(e, CallEvent) and e.call is call and e.kind == END)
        phone.hangup(call)
        await ended
        await until(lambda: self.call_records(), "the call record" + self.context())
        [record] = self.call_records()
        self.assertEqual((record["routed_to"], record["ended_by"]), (uri, "secure"))
        peaks = self.peaks(phone.recording(call).samples())
        self.assertIn(float(PBX_TONE), peaks, peaks)
        self.assertIn(float(TARGET_TONE), peaks, peaks)
        self.assertLess(peaks.index(float(PBX_TONE)), peaks.index(float(TARGET_TONE)), peaks)
        self.assertGreaterEqual(peaks[-5:].count(float(TARGET_TONE)), 3, peaks)
