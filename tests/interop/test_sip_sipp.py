"""
The CIG's SIP interface against real peers: sipp (Debian C{sip-tester})
placing calls into a running C{twistd cig}, and raw UDP sockets sending
malformed SIP. The tel side is the built-in stub (C{--tel-stub}).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from cryptify.protocols.sip.message import Response, parse_datagram
from tests.interop._pbx import AnsweringLeg
from tests.interop._procs import (
    free_port,
    short_tempdir,
    wait_for,
)
from tests.interop._sipp import CONF, INVITE_MSG, SippCase, failure_ack
from tests.torture import torture_files

#: INVITE answered 404 by route; the ACK reuses the INVITE's branch.
REJECTED = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="rejected by route">
  <send retrans="500"><![CDATA[{INVITE_MSG}]]></send>
  <recv response="100" optional="true"/>
  <recv response="404"/>
  <send><![CDATA[{failure_ack("[branch-3]")}]]></send>
</scenario>
"""

#: INVITE left ringing, then CANCEL: 200 for the CANCEL, 487 for the INVITE.
CANCELLED = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="cancelled while ringing">
  <send retrans="500"><![CDATA[{INVITE_MSG}]]></send>
  <recv response="100" optional="true"/>
  <recv response="180"/>
  <send><![CDATA[
      CANCEL sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 CANCEL
      Max-Forwards: 70
      Content-Length: 0
]]></send>
  <recv response="200"/>
  <recv response="487"/>
  <send><![CDATA[{failure_ack("[branch-6]")}]]></send>
</scenario>
"""

#: INVITE answered, then the CIG hangs up: sipp expects the BYE.
BYE_FROM_CIG = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="BYE from the CIG">
  <send retrans="500"><![CDATA[{INVITE_MSG}]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200"/>
  <send><![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
]]></send>
  <recv request="BYE"/>
  <send><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
]]></send>
</scenario>
"""


class AnsweredCallTests(SippCase):
    """
    sipp's built-in UAC scenario against the CIG with a tel side that
    answers at once.
    """

    def test_routed_and_answered(self) -> None:
        """
        A call to 94670123456 is routed to tel:+4670123456 from
        tel:+8888;sipp and answered; while it lasts C{show call} lists it
        as ANSWER; sipp's BYE ends it (HANGUP); session.log has every state.
        """
        proc = self.run_sipp("-s", "94670123456", "-m", "1", "-d", "10000", wait=False)
        shown: list[str] = []

        def answered() -> bool:
            shown.append(self.show_call())
            return "ANSWER" in shown[-1]

        # The row is read from the very output that showed it: on a loaded
        # machine the call may be over by the time another crs-cli runs.
        wait_for(answered, "the call in show call")
        row = next(line for line in shown[-1].splitlines() if "ANSWER" in line)
        self.assertEqual(
            row.split()[:4],
            [
                f"sip:sipp@127.0.0.1:{row.split()[0].rsplit(':', 1)[-1]}",
                f"sip:94670123456@127.0.0.1:{self.sip_port}",
                "tel:+8888;sipp",
                "tel:+4670123456",
            ],
        )
        self.finish(proc)
        wait_for(lambda: "HANGUP" in self.show_call(), "HANGUP in show call")
        states = [line.split(", ")[6] for line in self.session_log().splitlines()]
        self.assertEqual(states, ["routing", "routed", "trying", "ringing", "talk", "hangup"])

    def test_several_calls(self) -> None:
        """
        Twenty calls at 10 per second all succeed.
        """
        self.run_sipp("-s", "9123", "-m", "20", "-r", "10", "-d", "100")

    def test_rejected_by_route(self) -> None:
        """
        A number no extension map takes (no leading 9) gets 404, and is
        listed as REJECT; session.log says routing, failed.
        """
        self.run_sipp("-s", "4670123456", "-m", "1", scenario=REJECTED)
        self.assertIn("REJECT", self.show_call())
        states = [line.split(", ")[6] for line in self.session_log().splitlines()]
        self.assertEqual(states, ["routing", "failed"])


class CancelledCallTests(SippCase):
    """
    A tel side that only rings: sipp cancels.
    """

    tel_stub = "ring"

    def test_cancel_while_ringing(self) -> None:
        """
        CANCEL while ringing: 200 to the CANCEL, 487 to the INVITE, the
        call listed as HANGUP.
        """
        self.run_sipp("-s", "94670123456", "-m", "1", scenario=CANCELLED)
        self.assertIn("HANGUP", self.show_call())


#: The answer each hand-made malformed request gets (None: silence, as for
#: what cannot be answered: no Via, too large to read, not text).
EXPECTED = {
    "truncated": 400,
    "no blank line": 400,
    "oversized": 513,
    "oversized header": None,
    "many headers": None,
    "duplicate Call-ID": 400,
    "duplicate CSeq": 400,
    "missing Via": None,
    "missing From": 400,
    "missing CSeq": 400,
    "wrong Content-Length": 400,
    "negative Content-Length": 400,
    "bad Request-URI": 400,
    "unknown scheme": 416,
    "bad To": 400,
    "unknown method": 501,
    "bad version": 505,
    "binary": None,
    "empty": None,
}


def malformed(port: int) -> list[tuple[str, bytes]]:
    """Hand-made malformed requests: (name, datagram)."""
    good = (
        "INVITE sip:94670123456@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{{b}}\r\n"
        "From: <sip:x@127.0.0.1>;tag=m\r\nTo: <sip:94670123456@127.0.0.1>\r\n"
        "Call-ID: {b}@mal\r\nCSeq: 1 INVITE\r\nContact: <sip:x@127.0.0.1>\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    cases = {
        "truncated": good[:90],
        "no blank line": good[: good.index("Content-Length")],
        "oversized": good.replace("Content-Length: 0", "Content-Length: 40000") + "a" * 40000,
        "oversized header": good.replace(
            "Max-Forwards", "X-Pad: " + "a" * 40000 + "\r\nMax-Forwards"
        ),
        "many headers": good.replace("Max-Forwards", "X-A: 1\r\n" * 500 + "Max-Forwards"),
        "duplicate Call-ID": good.replace("Max-Forwards", "Call-ID: other\r\nMax-Forwards"),
        "duplicate CSeq": good.replace("Max-Forwards", "CSeq: 2 INVITE\r\nMax-Forwards"),
        "missing Via": good.replace(
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{{b}}\r\n", ""
        ),
        "missing From": good.replace("From: <sip:x@127.0.0.1>;tag=m\r\n", ""),
        "missing CSeq": good.replace("CSeq: 1 INVITE\r\n", ""),
        "wrong Content-Length": good.replace("Content-Length: 0", "Content-Length: 500"),
        "negative Content-Length": good.replace("Content-Length: 0", "Content-Length: -1"),
        "bad Request-URI": good.replace("INVITE sip:94670123456@127.0.0.1", "INVITE sip:<>@@"),
        "unknown scheme": good.replace("INVITE sip:", "INVITE xyz:"),
        "bad To": good.replace("To: <sip:94670123456@127.0.0.1>", "To: <sip:94670123456"),
        "unknown method": good.replace("INVITE sip", "FROBNICATE sip").replace(
            "1 INVITE", "1 FROBNICATE"
        ),
        "bad version": good.replace("SIP/2.0\r\n", "SIP/3.0\r\n", 1),
        "binary": "\x00\x01\x02\xff garbage",
        "empty": "",
    }
    out = []
    for i, (name, text) in enumerate(cases.items()):
        data = text.replace("{b}", f"mal{i}").encode("latin-1")
        out.append((name, data))
    return out


class MalformedTests(SippCase):
    """
    Malformed SIP over raw UDP: a 4xx/5xx or silence, never a crash, and
    a call in progress carries on.
    """

    def check_answers(self, name: str, replies: list[bytes]) -> None:
        for data in replies:
            message = parse_datagram(data)
            self.assertIsInstance(message, Response, name)
            assert isinstance(message, Response)
            if message.status in (100, 200) and name in ("torture", "flood"):
                continue
            self.assertGreaterEqual(message.status, 400, f"{name}: {message.status}")

    def test_malformed_suite(self) -> None:
        """
        Hand-made malformed requests, every RFC 4475 torture message and a
        flood of INVITEs, sent while a sipp call is up: the answers are
        errors (or nothing), OPTIONS is still answered, and the sipp call
        completes with its BYE.
        """
        call = self.run_sipp("-s", "94670123456", "-m", "1", "-d", "4000", wait=False)
        wait_for(lambda: "ANSWER" in self.show_call(), "the call in show call")
        for name, data in malformed(self.client.port):
            self.client.send(data)
            replies = self.client.replies(0.2)
            self.check_answers(name, replies)
            statuses = [m.status for m in map(parse_datagram, replies) if isinstance(m, Response)]
            expected = EXPECTED[name]
            self.assertEqual(statuses, [expected] if expected else [], name)
        for _, data in torture_files():
            self.client.send(data)
        self.client.replies(0.5)
        for i in range(300):
            self.client.send(
                malformed(self.client.port)[0][1].replace(b"mal0", f"flood{i}".encode())
            )
            self.client.send(
                (
                    "INVITE sip:94670123456@127.0.0.1 SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{self.client.port};branch=z9hG4bKfl{i}\r\n"
                    f"From: <sip:x@127.0.0.1>;tag=m\r\nTo: <sip:4@127.0.0.1>\r\n"
                    f"Call-ID: flood{i}\r\nCSeq: 1 INVITE\r\nContact: <sip:x@127.0.0.1>\r\n"
                    "Content-Length: 0\r\n\r\n"
                ).encode()
            )
        self.client.replies(1.0)
        self.assertEqual(self.client.options(), 200)
        self.finish(call)
        self.assertIsNone(self.cig.proc.poll(), "the CIG exited")
        self.assertNotIn("Traceback", self.cig.output())

    def test_torture_answers(self) -> None:
        """
        Each RFC 4475 message (read from the shared directory) sent alone
        gets an answer that is a provisional, a 200, an error, or nothing.
        """
        for name, data in torture_files():
            self.client.send(data)
            for reply in self.client.replies(0.15):
                message = parse_datagram(reply)
                self.assertIsInstance(message, Response, name)
        self.assertEqual(self.client.options(), 200)


class InProcessSifTests(TestCase):
    """
    The SIF in this process on the real reactor, the tel side driven by
    the test: sipp's built-in UAS answering a call the CIG places, and a
    sipp UAC that expects the CIG's BYE.
    """

    timeout = 60

    async def test_call_answered_and_hung_up(self) -> None:
        """
        The CIG's INVITE (PCMU/PCMA/telephone-event offer) is answered by
        sipp; the leg hears ringing and answered; the tel side's hang-up
        sends BYE, which sipp answers, ending its scenario successfully.
        """
        await self.uas_call("127.0.0.1", "udp")

    async def test_host_name(self) -> None:
        """
        A to-URI naming its host (C{localhost}) is looked up with the
        reactor's resolver and the call goes through as with an address.
        """
        await self.uas_call("localhost", "udp")

    async def test_tcp(self) -> None:
        """
        C{;transport=tcp}: the CIG connects to sipp (C{-t t1}) and runs
        the INVITE, ACK and BYE over that one connection.
        """
        await self.uas_call("localhost", "tcp")

    async def uas_call(self, host: str, transport: str) -> None:
        from twisted.internet import reactor, task

        from cryptify.cig.calls import Call, CallTable
        from cryptify.cig.sif.core import Sif
        from cryptify.config import CigConfig, SipInterface
        from cryptify.protocols.sip.transport import (
            SipDatagramProtocol,
            TcpConnector,
            UdpChannel,
        )

        sipp = shutil.which("sipp")
        if sipp is None:
            raise SkipTest("sipp (Debian sip-tester) is not installed")
        workdir = short_tempdir(self)
        tcp = transport == "tcp"
        uas_port = free_port(socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
        proc = subprocess.Popen(
            [
                sipp,
                "-sn",
                "uas",
                "-i",
                "127.0.0.1",
                "-p",
                str(uas_port),
                *(["-t", "t1"] if tcp else []),
                "-m",
                "1",
                "-mp",
                str(free_port(socket.SOCK_DGRAM)),
                "-nostdin",
                "-timeout",
                "30",
                "-timeout_error",
            ],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        cfg = CigConfig()
        sip_port = free_port(socket.SOCK_DGRAM)
        cfg = attrs_evolve_sip(cfg, SipInterface(bind="127.0.0.1", port=sip_port))
        calls = CallTable(reactor)  # type: ignore[arg-type]
        sif = Sif(cfg, reactor, None, calls)  # type: ignore[arg-type]
        port = reactor.listenUDP(sip_port, SipDatagramProtocol(sif), interface="127.0.0.1")  # type: ignore[attr-defined]
        connector = TcpConnector(reactor, sif)
        self.addCleanup(port.stopListening)
        self.addCleanup(connector.close)
        self.addCleanup(sif.stop)
        sif.channel_to = lambda address: UdpChannel(port, address)
        sif.resolve = reactor.resolve  # type: ignore[attr-defined]
        sif.tcp_channel = connector.channel
        await task.deferLater(reactor, 0.5, lambda: None)  # type: ignore[arg-type]
        leg = AnsweringLeg()
        call = Call(
            "tel:+4670123456",
            "tel:+8888;101",
            "sip:4670123456@secure.com",
            f"sip:service@{host}:{uas_port}" + (";transport=tcp" if tcp else ""),
        )
        sif.place_call(call, leg)
        await leg.answered_d
        self.assertEqual(leg.events, ["ringing", "answered"])
        self.assertEqual(calls.rows()[0][4], "ANSWER")
        if tcp:
            self.assertEqual(list(connector.connections), [("127.0.0.1", uas_port)])
        sif.hang_up(call)
        for _ in range(200):
            if proc.poll() is not None:
                break
            await task.deferLater(reactor, 0.1, lambda: None)  # type: ignore[arg-type]
        out, err = proc.communicate(timeout=10)
        self.assertEqual(
            proc.returncode, 0, err.decode(errors="replace") + out.decode(errors="replace")[-2000:]
        )
        self.assertEqual(calls.rows()[0][4], "HANGUP")

    async def test_bye_from_cig(self) -> None:
        """
        sipp calls in, the tel side answers, then hangs up: the CIG sends
        BYE in the dialog and sipp (expecting it) ends successfully.
        """
        from twisted.internet import reactor, task

        from cryptify.cig.calls import CallTable, StubTelSide
        from cryptify.cig.sif.core import Sif
        from cryptify.config import parse_cig_config
        from cryptify.protocols.sip.transport import SipDatagramProtocol

        sipp = shutil.which("sipp")
        if sipp is None:
            raise SkipTest("sipp (Debian sip-tester) is not installed")
        workdir = short_tempdir(self)
        sip_port = free_port(socket.SOCK_DGRAM)
        cfg = parse_cig_config(
            CONF.format(d=workdir, sip_port=sip_port, mgmt_port=1, sip_extra="").split("crs {")[0]
        )
        cfg = attrs_evolve_sip(cfg, attrs_evolve(cfg.sip, bind="127.0.0.1", port=sip_port))
        tel = StubTelSide("answer")
        calls = CallTable(reactor)  # type: ignore[arg-type]
        sif = Sif(cfg, reactor, tel, calls)  # type: ignore[arg-type]
        port = reactor.listenUDP(sip_port, SipDatagramProtocol(sif), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.addCleanup(sif.stop)
        scenario = os.path.join(workdir, "bye.xml")
        with open(scenario, "w") as f:
            f.write(BYE_FROM_CIG)
        proc = subprocess.Popen(
            [
                sipp,
                "-sf",
                scenario,
                f"127.0.0.1:{sip_port}",
                "-s",
                "94670123456",
                "-i",
                "127.0.0.1",
                "-p",
                str(free_port(socket.SOCK_DGRAM)),
                "-m",
                "1",
                "-mp",
                str(free_port(socket.SOCK_DGRAM)),
                "-nostdin",
                "-timeout",
                "30",
                "-timeout_error",
            ],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        for _ in range(100):
            if calls.rows() and calls.rows()[0][4] == "ANSWER":
                break
            await task.deferLater(reactor, 0.1, lambda: None)  # type: ignore[arg-type]
        self.assertEqual(calls.rows()[0][4], "ANSWER")
        await task.deferLater(reactor, 0.3, lambda: None)  # type: ignore[arg-type]
        _, leg = tel.legs[0]
        leg.hung_up()
        for _ in range(200):
            if proc.poll() is not None:
                break
            await task.deferLater(reactor, 0.1, lambda: None)  # type: ignore[arg-type]
        out, err = proc.communicate(timeout=10)
        self.assertEqual(
            proc.returncode, 0, err.decode(errors="replace") + out.decode(errors="replace")[-2000:]
        )
        self.assertEqual(calls.rows()[0][4], "HANGUP")


def attrs_evolve(obj: Any, **changes: Any) -> Any:
    import attrs

    return attrs.evolve(obj, **changes)


def attrs_evolve_sip(cfg: Any, sip: Any) -> Any:
    import attrs

    return attrs.evolve(cfg, interfaces=attrs.evolve(cfg.interfaces, sip=sip))
