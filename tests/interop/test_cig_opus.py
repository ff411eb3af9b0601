"""A secure client talks Opus to the CIG, which bridges it to baresip's G.711.

The set-up of ``test_cig_e2e`` (``_cig.SecurePbxFixture``: real CRS and
relays, CIG, kamailio, baresip playing 1,500 Hz), with a client that offers
``opus`` first (``docs/umsg.md`` 8.2): the CIG answers ``talk {codec:
opus}``, cig-relay bridges Opus on the secure leg to G.711 towards baresip,
and each side hears the other's tone.  One call, every check on it.

    secure client --SRTP/Opus--> crs-relay --> cig-relay --RTP/G.711--> baresip
"""

from __future__ import annotations

import re

from twisted.internet import reactor

from cryptify.client.audio import tone
from cryptify.client.calls import END, INCOMING, CallEvent
from cryptify.client.phone import Phone
from cryptify.client.servers import session_maker, tls_connector
from cryptify.crypto.keymaterial import load_key_material
from cryptify.protocols import opus
from tests.interop._cig import CLIENT, CLIENT_TONE, DIAL_CLIENT, PBX_TONE, SecurePbxFixture
from tests.interop._pbx import sleep, until


class OpusCallTests(SecurePbxFixture):
    """cryptify-client (Opus) <-> CRS <-> CIG <-> kamailio <-> baresip (G.711)."""

    def opus_phone(self) -> Phone:
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
            codecs=(opus.OPUS, "PCMU"),
        )
        self.addCleanup(phone.stop)
        return phone

    async def test_opus_calls_both_ways(self) -> None:
        """
        The client offers opus: the CIG chooses it, cig-relay transcodes to
        baresip's G.711; the tones cross both ways; hanging up ends the call.
        Then baresip calls the client, which answers opus: tones cross again.
        """
        phone = self.opus_phone()
        await phone.start()
        call = await self.talk(phone)
        self.assertEqual(call.codec, opus.OPUS, self.context())
        await sleep(2.5)
        stream = phone.stream(call)
        assert stream is not None
        self.assertEqual(stream.codec, opus.OPUS)
        self.assertEqual(stream.rejected, 0, self.context())
        ended = phone.until(lambda e: isinstance(e, CallEvent) and e.call is call and e.kind == END)
        phone.hangup(call)
        await ended
        await until(self.pbx.call_ended, "baresip to see the BYE" + self.context())
        relay_log = self.procs["cig-relay"].output()
        self.assertRegex(relay_log, r"Bridge \S+ added: .*\(opus, telephone-event 101\)")
        self.assert_tone(phone.recording(call).samples(), PBX_TONE, "the client's recording")
        await until(lambda: self.pbx.recordings(), "baresip's recording")
        self.assert_tone(self.pbx_recording(), CLIENT_TONE, "baresip's recording")
        await until(lambda: self.call_records(), "the call record" + self.context())
        [record] = self.call_records()
        self.assertEqual(record["result"], "answered")
        self.assertIn(record["codec"], ("PCMU", "PCMA"))  # the PBX leg's
        # The other way, on the same set-up: baresip dials the client, the
        # CIG offers PCMU then opus, the client (opus first) answers opus.
        incoming = phone.until(lambda e: isinstance(e, CallEvent) and e.kind == INCOMING)
        self.pbx.command("dial", f"sip:{DIAL_CLIENT}@127.0.0.1:{self.pbx.kam_port}")
        back = (await incoming).call
        phone.answer(back)
        self.assertEqual(back.codec, opus.OPUS)
        await sleep(2.5)
        ended = phone.until(lambda e: isinstance(e, CallEvent) and e.call is back and e.kind == END)
        self.pbx.command("hangup")
        await ended
        self.assertEqual(
            len(re.findall(r"\(opus, telephone-event", self.procs["cig-relay"].output())), 2
        )
        self.assert_tone(phone.recording(back).samples(), PBX_TONE, "the client's 2nd recording")
        await until(lambda: len(self.pbx.recordings()) > 1, "baresip's 2nd recording")
        self.assert_tone(self.pbx_recording(), CLIENT_TONE, "baresip's 2nd recording")
