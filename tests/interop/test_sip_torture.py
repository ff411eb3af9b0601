"""
Every RFC 4475 torture message over real UDP to a running C{twistd cig}:
each gets the treatment RFC 4475 gives it (parsed and processed, or
refused with the right status, or, for a response, nothing), and the
answer arrives where RFC 3261 18.2.2 and RFC 3581 send it.

The messages are read in place from the shared directory (never copied
here). Most of their Vias name no port, so their answers go to port 5060
of the source address: the CIG and the test's sockets run in a private
network namespace (L{NetNamespace}), where 127.0.0.1:5060 and :5050 are
the test's. The test sends from an ephemeral port of 127.0.0.1 (the
PBX's address in the configuration) and listens on 5060 and 5050 too.
"""

from __future__ import annotations

import os
import select
import socket
import time

from twisted.trial.unittest import SynchronousTestCase

from cryptify.protocols.sip.errors import SipParseError
from cryptify.protocols.sip.message import Request, Response, parse_datagram
from cryptify.protocols.sip.transaction import ack_for
from tests.interop._netns import NetNamespace
from tests.interop._procs import Twistd, short_tempdir, wait_for
from tests.torture import (
    SAME_TRANSACTION_AS_EARLIER,
    TORTURE_MAPS,
    TREATMENTS,
    call_id_of,
    read_torture,
    torture_dir,
)

SIP_PORT = 15060
CONF = """
interfaces {{
    tel {{
        extension map tel2sip;
        source map telsrc;
    }}
    sip {{
        extension map sip2tel;
        bind 127.0.0.1 {sip_port};
        rtp_port_range 30000 30100;
        messaging true;
    }}
}}
crs {{
    address 192.0.2.10 5223;
    keystore "{d}/userdata";
}}
relay {{
    control "{d}/relay.sock";
}}
management {{
    bind 127.0.0.1 18083;
    cookie "{d}/mgmt.cookie";
    socket "{d}/cig.sock";
}}
logging {{
    dir "{d}/log";
}}
"""
#: How long an answer may take to come, and how long silence is awaited.
ANSWER_WITHIN = 5.0
SILENCE = 0.5


class TortureTests(SynchronousTestCase):
    """
    The 49 messages of RFC 4475, one after the other, to one CIG (and the
    two that reuse an earlier one's transaction id to a second one).
    """

    def setUp(self) -> None:
        torture_dir()
        self.dir = short_tempdir(self)
        self.ns = NetNamespace(self, self.dir)
        self.sockets: dict[str, socket.socket] = {}
        for label, port in (("source", 0), ("5060", 5060), ("5050", 5050)):
            sock = self.ns.socket()
            self.addCleanup(sock.close)
            sock.bind(("127.0.0.1", port))
            sock.setblocking(False)
            self.sockets[label] = sock
        self.source_port = self.sockets["source"].getsockname()[1]
        self.cig: Twistd | None = None
        self.start_cig()

    def start_cig(self) -> None:
        """A CIG with no transaction yet (the one before, if any, stopped)."""
        if self.cig is not None:
            self.cig.stop()
        workdir = os.path.join(self.dir, f"cig{time.time_ns()}")
        os.mkdir(workdir)
        conf = os.path.join(workdir, "cig.conf")
        with open(conf, "w") as f:
            f.write(TORTURE_MAPS + CONF.format(d=workdir, sip_port=SIP_PORT))
        self.cig = Twistd(
            workdir,
            "cig",
            "--config",
            conf,
            "--notify",
            "",
            "--tel-stub",
            "answer",
            prefix=tuple(self.ns.prefix(workdir)),
        )
        self.addCleanup(self.cig.stop)
        wait_for(self.options_answered, "the CIG answering OPTIONS")

    def send(self, data: bytes) -> None:
        self.sockets["source"].sendto(data, ("127.0.0.1", SIP_PORT))

    def collect(self, call_id: str, until_final: bool) -> list[tuple[str, Response]]:
        """
        Responses with C{call_id} arriving on any socket: until a final one
        (then a short while more for stray copies), or for L{SILENCE}.
        """
        found: list[tuple[str, Response]] = []
        deadline = time.monotonic() + (ANSWER_WITHIN if until_final else SILENCE)
        by_fd = {s.fileno(): label for label, s in self.sockets.items()}
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return found
            ready, _, _ = select.select(list(by_fd), [], [], left)
            for fd in ready:
                label = by_fd[fd]
                data = self.sockets[label].recv(65535)
                message = parse_datagram(data)
                if isinstance(message, Response) and message.call_id == call_id:
                    found.append((label, message))
                    if until_final and message.status >= 200:
                        until_final = False
                        deadline = time.monotonic() + SILENCE

    def options_answered(self) -> bool:
        call_id = f"ready{time.time_ns()}"
        self.send(
            (
                "OPTIONS sip:cig@127.0.0.1 SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.source_port};branch=z9hG4bK{call_id}\r\n"
                "From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:cig@127.0.0.1>\r\n"
                f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )
        return any(r.status == 200 for _, r in self.collect(call_id, until_final=True))

    def test_every_message(self) -> None:
        """
        Each message gets its final status (after at most a 100 or 180) on
        the socket its Via points to, or nothing for a response; processed
        INVITEs refused are acknowledged, the answered RFC 2543 call is
        acknowledged and hung up; the CIG is then still up, with no
        traceback in its log. Every mismatch is listed by message name.
        """
        problems: list[str] = []
        later = [n for n in TREATMENTS if n in SAME_TRANSACTION_AS_EARLIER]
        for name in [n for n in TREATMENTS if n not in later] + ["(restart)"] + later:
            if name == "(restart)":
                self.start_cig()
                continue
            treatment = TREATMENTS[name]
            data = read_torture(name)
            call_id = call_id_of(name)
            self.send(data)
            answers = self.collect(call_id, until_final=treatment.final is not None)
            seen = [(label, r.status) for label, r in answers]
            label = f"{name} (RFC 4475 {treatment.section}, {treatment.why})"
            if treatment.final is None:
                if answers:
                    problems.append(f"{label}: expected silence, got {seen}")
                continue
            finals = {r.status for _, r in answers if r.status >= 200}
            provisional = {r.status for _, r in answers if r.status < 200}
            places = {where for where, _ in answers}
            if finals != {treatment.final} or not provisional <= {100, 180}:
                problems.append(f"{label}: expected {treatment.final}, got {seen}")
            elif places != {treatment.where}:
                problems.append(f"{label}: answered on {places}, expected {treatment.where}")
            else:
                self.check_via(name, answers[-1][1], problems)
                self.finish(data, answers[-1][1])
        self.assertEqual(problems, [], "\n" + "\n".join(problems))
        self.assertTrue(self.options_answered())
        assert self.cig is not None
        self.assertIsNone(self.cig.proc.poll(), "the CIG exited")
        self.assertNotIn("Traceback", self.cig.output())

    def check_via(self, name: str, response: Response, problems: list[str]) -> None:
        """The top Via says where the request came from (received, rport)."""
        top = response.headers.values("Via")[0]
        expect = {
            "transports": ";received=127.0.0.1",
            "mpart01": f";received=127.0.0.1;rport={self.source_port}",
            "inv2543": ";received=127.0.0.1",
        }.get(name)
        if expect is not None and not top.endswith(expect):
            problems.append(f"{name}: top Via {top!r} does not end with {expect!r}")

    def finish(self, data: bytes, response: Response) -> None:
        """ACK a refused INVITE; ACK and hang up the answered RFC 2543 call."""
        try:
            request = parse_datagram(data)
        except SipParseError:
            return  # refused statelessly: nothing to acknowledge
        if not isinstance(request, Request) or request.method != "INVITE":
            return
        if response.status >= 300:
            self.send(ack_for(request, response).to_bytes())
            return
        head = (
            "Via: SIP/2.0/UDP iftgw.example.com;branch=z9hG4bK{b}\r\n"
            f"From: {request.headers.get('From')}\r\nTo: {response.headers.get('To')}\r\n"
            f"Call-ID: {response.call_id}\r\n"
        )
        cseq = request.cseq.number
        self.send(
            (f"ACK {request.uri} SIP/2.0\r\n{head}CSeq: {cseq} ACK\r\n\r\n")
            .replace("{b}", "ack")
            .encode()
        )
        self.send(
            (f"BYE {request.uri} SIP/2.0\r\n{head}CSeq: {cseq + 1} BYE\r\n\r\n")
            .replace("{b}", "bye")
            .encode()
        )
        statuses = [
            (where, r.status)
            for where, r in self.collect(response.call_id, until_final=True)
            if r.cseq.method == "BYE"
        ]
        self.assertEqual(statuses, [("5060", 200)], "BYE of the RFC 2543 call")
