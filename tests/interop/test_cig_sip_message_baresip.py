"""SIP MESSAGE through the CIG with a real phone: baresip behind kamailio.

The fixture of ``tests/interop/_cig.py`` (a real CRS and CIG, kamailio as
the PBX, baresip registered as extension 101), with ``messaging true`` on
the CIG's trunk and baresip's ``contact`` module, whose current contact is
the secure user (dialled as 9 + the number):

- ``cryptify-client send tel:+8888;101 ... --wait`` returns once baresip
  has answered the CIG's MESSAGE (through kamailio), and baresip prints it;
- baresip's ``message`` command sends a MESSAGE through kamailio to the
  CIG, which posts it sealed: a listening ``cryptify-client`` shows it
  verified as sent by ``tel:+8888;101``.
"""

from __future__ import annotations

import os
import subprocess

from tests.interop._cig import CLIENT, DIAL_CLIENT, PBX_PHONE, SecurePbxFixture
from tests.interop._pbx import Pbx, until
from tests.interop._procs import BIN


class MessagingPbx(Pbx):
    """baresip with its contact module, the secure user its current contact."""

    def write_baresip_config(self) -> None:
        super().write_baresip_config()
        d = os.path.join(self.dir, "baresip")
        uri = f"sip:{DIAL_CLIENT}@127.0.0.1:{self.kam_port}"
        with open(os.path.join(d, "config"), "a") as f:
            f.write("module_app contact.so\n")
        with open(os.path.join(d, "contacts"), "w") as f:
            f.write(f'"secure user" <{uri}>\n')
        with open(os.path.join(d, "current_contact"), "w") as f:
            f.write(uri + "\n")


class BaresipMessageTests(SecurePbxFixture):
    """cryptify-client <-> CRS <-> CIG <-> kamailio <-> baresip, text messages."""

    def make_pbx(self, audio: str) -> Pbx:
        return MessagingPbx(self, self.dir, self.cig_port, audio=audio)

    def trunk_config(self, rtp_range: str) -> str:
        return (
            super()
            .trunk_config(rtp_range)
            .replace("bind 127.0.0.1", "messaging true; bind 127.0.0.1")
        )

    def client_argv(self, *args: str) -> list[str]:
        return [os.path.join(BIN, "cryptify-client"), *args, "--keys", self.keys[CLIENT],
                "--server", f"127.0.0.1:{self.crs_port}", "--ca", self.ca]  # fmt: skip

    def cig_log(self) -> str:
        try:
            with open(os.path.join(self.dir, "cig-log", "cig.log")) as f:
                return f.read()
        except OSError:
            return ""

    async def test_both_ways(self) -> None:
        """send --wait to tel:+8888;101 returns after baresip's 200 and baresip shows
        the text; baresip's message to 9 + the client's number reaches the listening
        client verified as from tel:+8888;101."""

        # secure user -> baresip: delivered only once baresip answered the MESSAGE
        def send() -> subprocess.CompletedProcess[str]:
            argv = self.client_argv("send", PBX_PHONE, "hej baresip", "--wait")
            return subprocess.run(argv, capture_output=True, text=True, timeout=120)

        done = await self.in_thread(send)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr + self.context())
        await until(
            lambda: "hej baresip" in self.pbx.log("baresip.log"),
            "baresip to show the message" + self.context(),
        )
        self.assertIn("by SIP (200)", self.cig_log())
        # baresip -> secure user
        out = os.path.join(self.dir, "listen.out")
        with open(out, "wb") as f:
            listen = subprocess.Popen(
                self.client_argv("listen"), stdout=f, stderr=subprocess.STDOUT
            )
        self.addCleanup(lambda: listen.poll() is None and listen.kill())

        def said(text: str) -> bool:
            with open(out, errors="replace") as f:
                return text in f.read()

        await until(lambda: said("attached"), "the client attached", 30)
        self.pbx.command("message", "hello from baresip")
        await until(
            lambda: said(f"from {PBX_PHONE}: hello from baresip"),
            "the client to show baresip's message" + self.context() + self.cig_log()[-3000:],
            30,
        )
