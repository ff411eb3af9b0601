"""
Tests for L{cryptify.cig.sif.keepalive}: OPTIONS towards the PBX servers of
the tel interface's extension maps, on a L{Clock}, with fake channels.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.calls import CallTable, StubTelSide
from cryptify.cig.operator.state import CigState
from cryptify.cig.sif.core import Sif
from cryptify.cig.sif.keepalive import DOWN, UNKNOWN, UP, KeepAlive, keepalive_targets
from cryptify.config import load_cig_config, parse_cig_config
from cryptify.protocols.sip.locate import Target
from cryptify.protocols.sip.message import Request, response_to
from cryptify.protocols.sip.transaction import T1, Channel
from tests.fakes import FakeChannel

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "config")

MAPS = """
map a {
    entry one sip "sip:{n}@pbx.com" tel "tel:+1{n}";
    entry two sip "sip:{n}@PBX.com:5060" tel "tel:+2{n}";
    entry three sip "sip:{n}@{host}" tel "tel:+3{n}";
    entry four sip "sip:{n}@10.0.0.7:5070;transport=tcp" tel "tel:+4{n}";
}
map b {
    entry five sip "sip:{n}@other.pbx" tel "tel:+5{n}";
}
interfaces {
    tel { extension map a; }
    sip { extension map b; }
}
"""


class TargetTests(SynchronousTestCase):
    """Which servers are probed."""

    def test_distinct_literal_hosts(self) -> None:
        """
        The tel interface's extension maps' literal servers, once each,
        in map order; placeholder hosts and the sip interface's maps are
        left out.
        """
        sif = Sif(parse_cig_config(MAPS), Clock(), StubTelSide("answer"), CallTable(Clock()))
        self.assertEqual(
            keepalive_targets(sif.router),
            (Target("pbx.com"), Target("10.0.0.7", 5070, "tcp")),
        )


class KeepAliveTests(SynchronousTestCase):
    """Probing, state changes, log lines and notifications."""

    def setUp(self) -> None:
        self.clock = Clock()
        config = load_cig_config(os.path.join(FIXTURES, "cig-simple.conf"))
        self.sif = Sif(config, self.clock, StubTelSide("answer"), CallTable(self.clock))
        self.channel = FakeChannel()
        self.resolved: list[str] = []

        def resolve(name: str) -> Deferred[str]:
            self.resolved.append(name)
            return succeed("192.0.2.70")

        self.sif.resolve = resolve
        self.sif.channel_to = lambda address: self.channel
        self.events: list[tuple[str, str]] = []
        targets = keepalive_targets(self.sif.router)
        self.assertEqual(targets, (Target("pbx.com"),))
        self.keepalive = KeepAlive(
            self.sif, targets, 30.0, lambda unit, event: self.events.append((unit, event))
        )
        self.addCleanup(self.check_stopped)

    def check_stopped(self) -> None:
        self.keepalive.stop()
        self.sif.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def last_options(self) -> Request:
        message = self.channel.messages()[-1]
        assert isinstance(message, Request)
        return message

    def answer(self, status: int = 200) -> None:
        options = self.last_options()
        self.sif.message_received(response_to(options.headers, status, to_tag="x"), self.channel)

    def test_options_every_interval(self) -> None:
        """
        OPTIONS goes out at start and every interval to the resolved
        address, addressed to the server; an answer (any status) is UP.
        """
        self.keepalive.start()
        options = self.last_options()
        self.assertEqual((options.method, options.uri), ("OPTIONS", "sip:pbx.com:5060"))
        self.assertEqual(self.resolved, ["pbx.com"])
        self.answer(404)
        self.assertEqual(self.keepalive.rows(), [("pbx.com:5060/udp", UP)])
        self.clock.advance(30)
        self.assertEqual(len(self.channel.sent), 2)
        self.answer()
        self.assertEqual(self.events, [])

    def test_down_and_up(self) -> None:
        """
        A timed-out OPTIONS marks the server DOWN and raises pbx-down
        once; no new probe while one is outstanding; the next answer
        raises pbx-up.
        """
        self.keepalive.start()
        self.assertEqual(self.keepalive.rows(), [("pbx.com:5060/udp", UNKNOWN)])
        self.clock.pump([T1] * 70)  # timer F (64*T1) ends it; the 30 s tick is skipped
        self.assertEqual(self.keepalive.rows(), [("pbx.com:5060/udp", DOWN)])
        self.assertEqual(self.events, [("cig-server", "pbx-down")])
        self.assertEqual(self.keepalive.probes, 1)
        self.clock.advance(30)
        self.assertEqual(self.keepalive.probes, 2)
        self.answer()
        self.assertEqual(self.events, [("cig-server", "pbx-down"), ("cig-server", "pbx-up")])
        self.clock.advance(30)
        self.answer()
        self.assertEqual(len(self.events), 2)

    def test_unreachable(self) -> None:
        """A failed lookup or connection counts as not answering."""
        self.sif.resolve = lambda name: fail(ConnectionRefusedError())
        self.keepalive.start()
        self.assertEqual(self.keepalive.rows(), [("pbx.com:5060/udp", DOWN)])
        self.assertEqual(self.events, [("cig-server", "pbx-down")])

    def test_tcp_target(self) -> None:
        """A C{;transport=tcp} server is probed over the TCP channel."""
        tcp = FakeChannel(reliable=True)

        def tcp_channel(address: tuple[str, int]) -> Deferred[Channel]:
            return succeed(tcp)

        self.sif.tcp_channel = tcp_channel
        self.keepalive.targets = (Target("10.0.0.7", 5070, "tcp"),)
        self.keepalive.start()
        options = tcp.messages()[-1]
        assert isinstance(options, Request)
        self.assertEqual(options.vias[0].transport, "TCP")
        self.assertEqual(options.uri, "sip:10.0.0.7:5070;transport=tcp")

    def test_disabled(self) -> None:
        """An interval of 0 sends nothing."""
        self.keepalive.interval = 0
        self.keepalive.start()
        self.assertEqual(self.channel.sent, [])

    def test_status_block(self) -> None:
        """C{cig-cli status} lists each PBX server's state in the SIP block."""
        self.keepalive.start()
        self.answer()
        state = CigState("192.0.2.10", "0.0.0.0", sip_peers=self.keepalive.rows)
        sip = state.status("1")["sections"][2]  # type: ignore[index]
        self.assertEqual(sip[1], [("SIP Bind address", "0.0.0.0"), ("PBX pbx.com:5060/udp", UP)])
