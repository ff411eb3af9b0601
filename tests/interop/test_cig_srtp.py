"""The secure client and baresip talk through the CIG with SRTP on the PBX leg.

The end-to-end calls of ``test_cig_e2e`` (on ``_cig.SecurePbxFixture``) run again with the CIG's sip
interface set to ``srtp require`` and baresip's account to
``mediaenc=srtp-mand`` (its ``srtp`` module: SDES, RTP/SAVP with
``a=crypto``), so every call's PBX leg is SRTP both ways: the tones cross
in both directions, the DTMF and re-INVITE go through, and calls either
side places work.  One more test checks that the PBX leg really was SRTP
(the relay's log names the suite, and no packet of it failed) and that no
key reached a log.  ``TlsSrtpTests`` runs them all once more with SIP
over TLS between kamailio and the CIG (kamailio's ``tls.so``, Debian
``kamailio-tls-modules``), so the keys cross the trunk encrypted.  (The
CRS-restart test of ``test_cig_e2e`` is not repeated: SRTP on the PBX leg
does not change the secure side it checks.)

    secure client --SRTP--> crs-relay --SRTP--> cig-relay --SRTP--> baresip
    cig --SIP/TLS (a=crypto)--> kamailio --SIP--> baresip
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.trial.unittest import SkipTest

from tests.interop import test_cig_e2e as e2e
from tests.interop._cig import SecurePbxFixture
from tests.interop._pbx import KAMAILIO_MODULES, Pbx, sleep, until
from tests.interop._procs import free_port
from tests.interop._tls_certs import make_ca, make_leaf

TLS_LINES = "enable_tls=yes\nlisten=tls:127.0.0.1:{kam_tls}\n"
TLS_MODULE = 'loadmodule "tls.so"\nmodparam("tls", "config", "{d}/kamailio-tls.cfg")\n'
KAMAILIO_TLS_CFG = """[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
private_key = {key}
certificate = {crt}

[client:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
"""


class SrtpMandatoryTests(SecurePbxFixture):
    """The e2e calls, both ways, with SDES SRTP required on the PBX leg.

    The e2e test of a CRS restarted mid-call is not run again here: what it
    checks happens on the secure side, which SRTP on the PBX leg does not
    change, and each run costs a whole CRS, CIG and PBX start.
    """

    SRTP = "require"
    MEDIAENC = "srtp-mand"

    test_secure_client_calls_pbx_phone = e2e.SecurePbxTests.test_secure_client_calls_pbx_phone
    test_pbx_phone_calls_listening_client = e2e.SecurePbxTests.test_pbx_phone_calls_listening_client

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


class TlsPbx(Pbx):
    """The PBX with kamailio also on TLS, sending the 9-numbers to the CIG's TLS port."""

    def __init__(self, case: Any, directory: str, cig_port: int, cig_tls: int, **kw: Any):
        super().__init__(case, directory, cig_port, **kw)
        self.kam_tls = free_port()
        self.cig_tls = cig_tls
        self.ca = make_ca(directory, "ca")
        self.crt, self.key = make_leaf(directory, "pbx", self.ca, "IP:127.0.0.1")

    def kamailio_config(self) -> str:
        with open(os.path.join(self.dir, "kamailio-tls.cfg"), "w") as f:
            f.write(KAMAILIO_TLS_CFG.format(key=self.key, crt=self.crt))
        text = super().kamailio_config()
        text = text.replace(
            f'$du = "sip:127.0.0.1:{self.cig_port}"',
            f'$du = "sip:127.0.0.1:{self.cig_tls};transport=tls"',
        )
        text = text.replace("listen=", TLS_LINES.format(kam_tls=self.kam_tls) + "listen=", 1)
        return text.replace(
            'loadmodule "kex.so"', TLS_MODULE.format(d=self.dir) + 'loadmodule "kex.so"', 1
        )


class TlsSrtpTests(SrtpMandatoryTests):
    """The same with SIP over TLS between kamailio and the CIG, both ways."""

    async def setUp(self) -> None:  # type: ignore[override]
        if not os.path.exists(os.path.join(KAMAILIO_MODULES, "tls.so")):
            raise SkipTest("kamailio's tls.so (Debian kamailio-tls-modules) is not installed")
        await super().setUp()

    def make_pbx(self, audio: str) -> Pbx:
        self.cig_tls = free_port()
        return TlsPbx(
            self, self.dir, self.cig_port, self.cig_tls, audio=audio, mediaenc=self.MEDIAENC
        )

    def trunk_config(self, rtp_range: str) -> str:
        pbx = self.pbx
        assert isinstance(pbx, TlsPbx)
        crt, key = make_leaf(self.dir, "cig", pbx.ca, "IP:127.0.0.1")
        trunk = super().trunk_config(rtp_range)
        trunk = trunk.replace(
            f'@127.0.0.1:{pbx.kam_port}"', f'@127.0.0.1:{pbx.kam_tls};transport=tls"'
        )
        tls = (
            f'tls_certificate "{crt}"; tls_key "{key}"; tls_ca "{pbx.ca}"; tls_port {self.cig_tls};'
        )
        return trunk.replace("rtp_port_range", tls + " rtp_port_range")

    async def test_trunk_is_tls(self) -> None:
        """
        The call to baresip leaves the CIG over TLS (kamailio's TLS port,
        the CIG's certificate checked by nobody, kamailio's by the CIG
        against the pinned CA) with SRTP on its media; the tones cross.
        """
        phone = self.phone()
        await phone.start()
        call = await self.talk(phone)
        self.assertIn("SRTP AES_CM_128_HMAC_SHA1_", self.procs["cig-relay"].output())
        await sleep(1.5)
        phone.hangup(call)
        await until(self.pbx.call_ended, "baresip to see the BYE" + self.context())
        self.assertIn(f"SIP 127.0.0.1:{self.cig_port}", self.procs["cig"].output())
        self.assertIn(f"TLS 127.0.0.1:{self.cig_tls}", self.procs["cig"].output())
        self.assert_tone(phone.recording(call).samples(), e2e.PBX_TONE, "the client's recording")
