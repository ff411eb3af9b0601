"""The secure client and baresip talk through the CIG with SRTP on the PBX leg.

The end-to-end tests of ``test_cig_e2e`` run again with the CIG's sip
interface set to ``srtp require`` and baresip's account to
``mediaenc=srtp-mand`` (its ``srtp`` module: SDES, RTP/SAVP with
``a=crypto``), so every call's PBX leg is SRTP both ways: the tones cross
in both directions, the DTMF and re-INVITE go through, and calls either
side places work.  One more test checks that the PBX leg really was SRTP
(the relay's log names the suite, and no packet of it failed) and that no
key reached a log.

    secure client --SRTP--> crs-relay --SRTP--> cig-relay --SRTP--> baresip
"""

from __future__ import annotations

import os
import re

from tests.interop import test_cig_e2e as e2e
from tests.interop._pbx import sleep, until


class SrtpMandatoryTests(e2e.SecurePbxTests):
    """The e2e tests with SDES SRTP required on the PBX leg."""

    SRTP = "require"
    MEDIAENC = "srtp-mand"

    def all_logs(self) -> str:
        text = self.procs["cig"].output() + self.procs["cig-relay"].output()
        log_dir = os.path.join(self.dir, "cig-log")
        for name in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []:
            with open(os.path.join(log_dir, name), errors="replace") as f:
                text += f.read()
        return text

    async def test_pbx_leg_is_srtp_and_keys_not_logged(self) -> None:
        """
        A call to baresip is bridged with an SRTP suite on the PBX leg;
        baresip's SRTP reaches the bridge without an authentication
        failure; no a=crypto key appears in the CIG's or cig-relay's logs.
        """
        phone = self.phone()
        await phone.start()
        call = await self.talk(phone)
        await until(
            lambda: "SRTP AES_CM_128_HMAC_SHA1_" in self.procs["cig-relay"].output(),
            "the bridge added with SRTP" + self.context(),
        )
        await sleep(1.5)
        phone.hangup(call)
        await until(self.pbx.call_ended, "baresip to see the BYE" + self.context())
        await until(
            lambda: "removed:" in self.procs["cig-relay"].output(),
            "the bridge removed" + self.context(),
        )
        removed = re.search(
            r"PBX rx (\d+) tx (\d+), SRTP errors \d+ \(PBX (\d+)\)",
            self.procs["cig-relay"].output(),
        )
        assert removed is not None, self.context()
        rx, tx, errors = (int(n) for n in removed.groups())
        self.assertGreater(rx, 25, self.context())
        self.assertGreater(tx, 25, self.context())
        self.assertEqual(errors, 0, self.context())
        logs = self.all_logs()
        self.assertNotIn("inline:", logs)
        self.assertNotIn("a=crypto", logs)
        self.assert_tone(phone.recording(call).samples(), e2e.PBX_TONE, "the client's recording")
