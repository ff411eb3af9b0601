"""
The SIF with kamailio as the PBX and baresip as a phone behind it.

kamailio (no database: registrar and usrloc in memory) takes baresip's
REGISTER, sends the number range starting with 9 to the CIG trunk and
everything else to registered phones, record-routing all of it. The SIF
runs in this process on the real reactor; its tel side is the stub that
answers at once, or this test, placing calls the other way.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from cryptify.cig.calls import Call, CallTable, StubTelSide
from cryptify.cig.sif.core import Sif
from cryptify.config import parse_cig_config
from cryptify.protocols.sip.transport import SipDatagramProtocol, UdpChannel
from tests.interop._pbx import CIG_TRUNK, AnsweringLeg, Pbx, require_pbx, sleep, until
from tests.interop._procs import free_port, short_tempdir


class KamailioBaresipTests(TestCase):
    """
    baresip registered at kamailio; calls both ways through the CIG trunk.
    """

    timeout = 90

    async def setUp(self) -> None:  # type: ignore[override]
        require_pbx()
        self.dir = d = short_tempdir(self)
        self.cig_port = free_port(socket.SOCK_DGRAM)
        self.pbx = Pbx(self, d, self.cig_port)
        self.kam_port = self.pbx.kam_port
        trunk = CIG_TRUNK.format(
            kam_port=self.kam_port, cig_port=self.cig_port, rtp_range="31000 31100"
        )
        cfg = parse_cig_config(trunk)
        self.tel = StubTelSide("answer")
        self.calls = CallTable(reactor)  # type: ignore[arg-type]
        self.sif = Sif(cfg, reactor, self.tel, self.calls)  # type: ignore[arg-type]
        port = reactor.listenUDP(  # type: ignore[attr-defined]
            self.cig_port, SipDatagramProtocol(self.sif), interface="127.0.0.1"
        )
        self.sif.channel_to = lambda address: UdpChannel(port, address)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.sif.stop)
        await self.pbx.start()

    def bye_answered(self) -> bool:
        """Whether the CIG's BYE has had its final response."""
        byes = [c for c in self.sif.layer.clients.values() if c.request.method == "BYE"]
        return all(c.state == "completed" for c in byes)

    def context(self) -> str:
        return self.pbx.context()

    async def test_baresip_calls_cig(self) -> None:
        """
        baresip dials 94670123456; kamailio sends it to the CIG, which
        routes it to tel:+4670123456 from tel:+8888;101 and (the stub
        answering) answers; the CIG's BYE reaches baresip through
        kamailio's record-route.
        """
        self.pbx.command("dial", f"sip:94670123456@127.0.0.1:{self.kam_port}")
        await until(
            lambda: self.calls.rows() and self.calls.rows()[0][4] == "ANSWER",
            "the call answered" + self.context(),
        )
        row = self.calls.rows()[0]
        self.assertEqual(row[2:4], ["tel:+8888;101", "tel:+4670123456"])
        await sleep(0.5)
        _, leg = self.tel.legs[0]
        leg.hung_up()
        self.assertEqual([c.request.method for c in self.sif.layer.clients.values()], ["BYE"])
        await until(
            self.pbx.call_ended,
            "baresip to see the BYE" + self.context(),
        )
        await until(self.bye_answered, "a final response to the BYE")
        self.assertEqual(self.calls.rows()[0][4], "HANGUP")

    async def test_cig_calls_baresip(self) -> None:
        """
        A call the tel side places to tel:+8888;101 goes through kamailio's
        location lookup to baresip, which answers; hanging up sends BYE
        along the route set.
        """
        leg = AnsweringLeg()
        call = Call("tel:+4670123456", "tel:+8888;101")
        routed = self.sif.router.route("tel", call.in_from, call.in_to)
        call.out_from, call.out_to = routed.out_from, routed.out_to
        self.assertEqual(call.out_to, f"sip:101@127.0.0.1:{self.kam_port}")
        self.assertIsNotNone(self.sif.place_call(call, leg))
        leg.answered_d.addTimeout(20, reactor)  # type: ignore[arg-type]
        try:
            await leg.answered_d
        except Exception as exc:
            raise AssertionError(f"{exc}{self.context()}") from exc
        self.assertIn("answered", leg.events)
        self.assertEqual(self.calls.rows()[0][4], "ANSWER")
        await sleep(0.5)
        self.sif.hang_up(call)
        self.assertEqual(
            [c.request.method for c in self.sif.layer.clients.values()], ["INVITE", "BYE"]
        )
        await until(
            self.pbx.call_ended,
            "baresip to see the BYE" + self.context(),
        )
        await until(self.bye_answered, "a final response to the BYE")
        self.assertEqual(self.calls.rows()[0][4], "HANGUP")
