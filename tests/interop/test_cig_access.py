"""
Who reaches a running C{twistd cig} (issue 13): SIP only from its peers
(here C{trusted_peer 127.0.0.1}; sipp and raw sockets on 127.0.0.2 are
strangers), and no connection on the SIP TCP port or the management port
kept open without a reason.
"""

from __future__ import annotations

import os
import socket
import time

from twisted.trial.unittest import SkipTest

from cryptify.protocols.mgmt import MAX_PER_SOURCE
from cryptify.protocols.sip.message import Response, parse_datagram
from cryptify.protocols.sip.transport import MAX_TCP_PER_SOURCE
from tests.interop._procs import wait_for
from tests.interop._sipp import INVITE_MSG, SippCase, failure_ack

STRANGER = "127.0.0.2"

#: INVITE refused with 403 (the ACK is taken silently).
FORBIDDEN = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="refused: not a SIP peer">
  <send retrans="500"><![CDATA[{INVITE_MSG}]]></send>
  <recv response="403"/>
  <send><![CDATA[{failure_ack("[branch-3]")}]]></send>
</scenario>
"""


def probe(method: str, user: str, port: int, n: int) -> bytes:
    """A SIPVicious-style probe for extension C{user}."""
    return (
        f"{method} sip:{user}@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {STRANGER}:{port};branch=z9hG4bKsweep{n}x{time.time_ns()}\r\n"
        f"From: <sip:101@pbx.local>;tag=sv{n}\r\nTo: <sip:{user}@127.0.0.1>\r\n"
        f"Call-ID: sweep{n}@{STRANGER}\r\nCSeq: 1 {method}\r\n"
        f"Contact: <sip:101@{STRANGER}:{port}>\r\nMax-Forwards: 70\r\n"
        "User-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def stranger_socket(case: SippCase) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((STRANGER, 0))
    except OSError as exc:
        sock.close()
        raise SkipTest(f"cannot bind {STRANGER}: {exc}") from None
    case.addCleanup(sock.close)
    return sock


def answers(sock: socket.socket, wait: float = 1.0) -> list[Response]:
    """Every response arriving until C{wait} seconds pass without one."""
    out = []
    sock.settimeout(wait)
    while True:
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            return out
        message = parse_datagram(data)
        assert isinstance(message, Response)
        out.append(message)
        sock.settimeout(0.2)


def shape(response: Response) -> tuple[int, str, tuple[str, ...]]:
    return response.status, response.reason, tuple(sorted({n.lower() for n, _ in response.headers}))


class StrangerTests(SippCase):
    """
    SIP from an address that is not a peer: 403, nothing routed, listed
    or written to session.log, and one cig.log line for a whole sweep.
    """

    def call_rows(self) -> list[list[str]]:
        """C{show call}'s rows, split (the header must have SOURCE last)."""
        lines = self.show_call().splitlines()
        self.assertEqual(lines[0].split(), ["IN-FROM", "IN-TO", "OUT-FROM", "OUT-TO", "STATE",
                                            "SOURCE"])  # fmt: skip
        return [line.split() for line in lines[1:] if line.strip() != "OK"]

    def cig_log(self) -> str:
        try:
            with open(os.path.join(self.dir, "log", "cig.log")) as f:
                return f.read()
        except OSError:
            return ""

    def test_sipp_stranger_refused(self) -> None:
        """
        sipp on 127.0.0.2 calling a routable number with a PBX-looking
        From gets 403; C{show call} and session.log stay empty. The same
        call from 127.0.0.1 (the trusted peer) is routed and answered,
        its source shown in C{show call} and session.log.
        """
        self.run_sipp("-s", "94670123456", "-m", "1", "-i", STRANGER, scenario=FORBIDDEN)
        self.assertEqual(self.call_rows(), [])
        self.assertEqual(self.session_log(), "")
        self.assertIn(f"refusing SIP from {STRANGER}: not a SIP peer (udp INVITE)", self.cig_log())
        self.run_sipp("-s", "94670123456", "-m", "1", "-d", "100")
        rows = self.call_rows()
        self.assertEqual(len(rows), 1)
        self.assertRegex(rows[0][5], r"^udp:127\.0\.0\.1:\d+$")
        sources = {line.split(", ")[9] for line in self.session_log().splitlines()}
        self.assertEqual(sources, {rows[0][5]})

    def test_sweep(self) -> None:
        """
        200 INVITE/OPTIONS/REGISTER probes from 127.0.0.2 to an extension
        that routes and 200 to one that does not: every answer is 403 and
        the two sets have the same shape (no Server, no User-Agent);
        C{show call} and session.log are unchanged; cig.log has one line
        for the source (the rest are summed up later).
        """
        sock = stranger_socket(self)
        port = sock.getsockname()[1]
        before = self.show_call()
        shapes: dict[str, set[tuple[int, str, tuple[str, ...]]]] = {}
        for user in ("94670123456", "101"):
            got: list[Response] = []
            for n in range(200):
                method = ("INVITE", "OPTIONS", "REGISTER")[n % 3]
                sock.sendto(probe(method, f"{user}", port, n), ("127.0.0.1", self.sip_port))
                if n % 20 == 19:
                    got += answers(sock, 0.5)
            got += answers(sock)
            self.assertEqual(len(got), 200, user)
            shapes[user] = {shape(r) for r in got}
            for response in got:
                self.assertIsNone(response.headers.get("Server"))
                self.assertIsNone(response.headers.get("User-Agent"))
        self.assertEqual(shapes["94670123456"], shapes["101"])
        self.assertEqual({s[0] for s in shapes["101"]}, {403})
        self.assertEqual(self.show_call(), before)
        self.assertEqual(self.session_log(), "")
        self.assertEqual(self.cig_log().count(f"refusing SIP from {STRANGER}"), 1)
        self.assertEqual(self.client.options(), 200)


class SilentTests(SippCase):
    """C{untrusted_answer silence}: strangers hear nothing."""

    sip_extra = "\n        untrusted_answer silence;"

    def test_silence(self) -> None:
        """Probes from 127.0.0.2 get no answer; the trusted peer still does."""
        sock = stranger_socket(self)
        port = sock.getsockname()[1]
        for n in range(30):
            method = ("INVITE", "OPTIONS", "REGISTER")[n % 3]
            sock.sendto(probe(method, "94670123456", port, n), ("127.0.0.1", self.sip_port))
        self.assertEqual(answers(sock), [])
        # The probes did reach the CIG: it counted and logged the stranger.
        log_path = os.path.join(self.dir, "log", "cig.log")

        def logged() -> bool:
            with open(log_path) as f:
                return f"refusing SIP from {STRANGER}" in f.read()

        wait_for(logged, "the refusal in cig.log")
        self.assertEqual(self.client.options(), 200)


def connect_many(port: int, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    out = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((source, 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        out.append(sock)
    return out


def is_closed(sock: socket.socket) -> bool:
    """Whether the far end closed (or reset) the connection."""
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def closed_count(socks: list[socket.socket]) -> int:
    return sum(1 for s in socks if is_closed(s))


class ConnectionLimitTests(SippCase):
    """
    300 connections each to the SIP TCP port and to the management port
    of a real CIG: over the per-address cap they are refused at once, the
    rest closed when idle (SIP, C{tcp_idle_timeout 2}) or unauthenticated
    (management); strangers' SIP connections are refused at once.
    """

    sip_extra = "\n        tcp_idle_timeout 2;"

    def hold(self, socks: list[socket.socket]) -> list[socket.socket]:
        for sock in socks:
            self.addCleanup(sock.close)
        return socks

    def test_sip_tcp(self) -> None:
        """
        Of 300 idle SIP TCP connections from 127.0.0.1, those past the cap
        are closed at once; the rest are closed once idle; the CIG still
        answers OPTIONS. 50 from 127.0.0.2 are all closed.
        """
        socks = self.hold(connect_many(self.sip_port, 300))
        wait_for(
            lambda: closed_count(socks) >= 300 - MAX_TCP_PER_SOURCE, "connections over the cap"
        )
        wait_for(lambda: closed_count(socks) == 300, "idle connections closed")
        try:
            strangers = self.hold(connect_many(self.sip_port, 50, STRANGER))
        except OSError as exc:
            raise SkipTest(f"cannot connect from {STRANGER}: {exc}") from None
        wait_for(lambda: closed_count(strangers) == 50, "strangers' connections closed")
        self.assertEqual(self.client.options(), 200)
        self.assertIsNone(self.cig.proc.poll())

    def test_management(self) -> None:
        """
        Of 300 management connections that never authenticate, those past
        the cap are closed at once and the rest within the auth timeout;
        cig-cli works afterwards.
        """
        socks = self.hold(connect_many(self.mgmt_port, 300))
        wait_for(lambda: closed_count(socks) >= 300 - MAX_PER_SOURCE, "connections over the cap")
        wait_for(lambda: closed_count(socks) == 300, "unauthenticated connections closed")
        self.assertIn("IN-FROM", self.show_call())
