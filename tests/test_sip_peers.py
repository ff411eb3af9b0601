"""
Tests for L{cryptify.cig.sif.peers} and the SIF's access control: only the
PBX's addresses and C{trusted_peer} networks get in; strangers get 403
or nothing, never a call, a C{show call} row or a session.log line, and
their refusals are logged once per source and summed up per interval.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from ipaddress import ip_network
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import DNSLookupError
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.calls import (
    CALL_LINGER,
    CallTable,
    StubTelSide,
    session_records,
    source_of,
)
from cryptify.cig.sif.core import Sif
from cryptify.cig.sif.peers import REFRESH_EVERY, SUMMARY_EVERY, Refusals, SipPeers, pbx_hosts
from cryptify.config import load_cig_config, parse_cig_config
from cryptify.config.cig_model import CigConfig
from cryptify.protocols.sip.errors import SipParseError
from cryptify.protocols.sip.message import Response, parse_datagram
from tests.fakes import FakeChannel
from tests.sip_support import FIXTURES, OFFER, invite

PBX = "192.0.2.1"
STRANGER = "203.0.113.9"


def probe(method: str, user: str, n: int) -> bytes:
    """A scanner's request (SIPVicious style) for extension C{user}."""
    uri = f"sip:{user}@secure.com"
    body = OFFER if method == "INVITE" else ""
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {STRANGER}:5060;branch=z9hG4bKscan{n};rport\r\n"
        f"From: <sip:101@pbx.com>;tag=s{n}\r\nTo: <{uri}>\r\nCall-ID: scan{n}\r\n"
        f"CSeq: 1 {method}\r\nContact: <sip:101@{STRANGER}:5060>\r\nMax-Forwards: 70\r\n"
        f"User-Agent: friendly-scanner\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


class Resolver:
    """A name resolver the test answers by hand."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.asked: list[str] = []

    def __call__(self, name: str) -> Deferred[Sequence[str]]:
        self.asked.append(name)
        answer = self.answers.get(name)
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer or [])


class PeersCase(SynchronousTestCase):
    config_text: str | None = None

    def setUp(self) -> None:
        self.clock = Clock()
        self.tel = StubTelSide("answer")
        self.calls = CallTable(self.clock)
        config = load_cig_config(os.path.join(FIXTURES, "cig-simple.conf"))
        if self.config_text is not None:
            config = parse_cig_config(self.config_text)
        self.config = config
        self.resolver = Resolver()
        self.resolver.answers["pbx.com"] = [PBX]
        self.peers = SipPeers.from_config(config, self.clock, self.resolver)
        self.sif = Sif(config, self.clock, self.tel, self.calls, peers=self.peers)
        self.peers.start()
        self.session: list[str] = []
        self.warnings: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "cryptify.cig.peers":
                self.warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        session_records.add(self.session.append)
        self.addCleanup(session_records.remove, self.session.append)
        self.addCleanup(self.assert_no_timers)

    def assert_no_timers(self) -> None:
        self.sif.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def send(self, data: bytes, host: str, transport: str = "udp") -> list[Response]:
        channel = FakeChannel(reliable=transport == "tcp", address=(host, 5060))
        self.sif.message_received(parse_datagram(data), channel)  # type: ignore[arg-type]
        return [m for m in channel.messages() if isinstance(m, Response)]

    def with_sif(self, **sip: Any) -> None:
        """Rebuild the SIF with other sip interface settings."""
        self.sif.stop()
        config = attrs.evolve(
            self.config,
            interfaces=attrs.evolve(
                self.config.interfaces, sip=attrs.evolve(self.config.sip, **sip)
            ),
        )
        self.peers = SipPeers.from_config(config, self.clock, self.resolver)
        self.sif = Sif(config, self.clock, self.tel, self.calls, peers=self.peers)
        self.peers.start()


class AccessTests(PeersCase):
    """
    Requests from addresses that are not SIP peers.
    """

    def test_faked_from_refused(self) -> None:
        """
        The issue's attack: an INVITE from an address that is not the PBX,
        its From faked to a PBX user, gets 403 and nothing else: no leg
        to the tel side, no C{show call} row, no session.log line.
        """
        answers = self.send(invite(frm="sip:101@pbx.com"), STRANGER)
        self.assertEqual([r.status for r in answers], [403])
        self.assertEqual((self.tel.legs, self.calls.rows(), self.session), ([], [], []))

    def test_pbx_address_taken(self) -> None:
        """
        The same INVITE from the address the PBX's name resolves to is
        routed and answered, and its source (transport, address, port)
        is in C{show call} and session.log.
        """
        answers = self.send(invite(), PBX)
        self.assertEqual([r.status for r in answers], [100, 180, 200])
        self.assertEqual(self.calls.rows()[0][5], "udp:192.0.2.1:5060")
        self.assertEqual({line.split(", ")[9] for line in self.session}, {"udp:192.0.2.1:5060"})
        self.sif.stop()

    def test_tcp_source(self) -> None:
        """A call over TCP shows C{tcp:} as its source."""
        self.send(invite(), PBX, "tcp")
        self.assertEqual(self.calls.rows()[0][5], "tcp:192.0.2.1:5060")
        self.sif.stop()

    def test_source_format(self) -> None:
        """IPv6 sources are bracketed."""
        self.assertEqual(source_of("tcp", ("2001:db8::1", 5060)), "tcp:[2001:db8::1]:5060")

    def test_silence(self) -> None:
        """C{untrusted_answer silence}: strangers get nothing at all."""
        self.with_sif(untrusted_answer="silence")
        self.assertEqual(self.send(invite(), STRANGER), [])
        self.assertEqual(self.calls.rows(), [])

    def test_trusted_peer_network(self) -> None:
        """A C{trusted_peer} network lets its addresses in, and only those."""
        self.with_sif(trusted_peers=("203.0.113.0/28",))
        self.assertEqual([r.status for r in self.send(invite(), STRANGER)], [100, 180, 200])
        answers = self.send(invite(call_id="c2", branch="z9hG4bK2"), "203.0.113.16")
        self.assertEqual([r.status for r in answers], [403])
        self.sif.stop()

    def test_ack_and_malformed_silent(self) -> None:
        """
        An ACK or a malformed request from a stranger gets nothing (not
        even the parser's 4xx), and is counted.
        """
        ack = invite().replace(b"INVITE sip", b"ACK sip").replace(b"1 INVITE", b"1 ACK")
        self.assertEqual(self.send(ack, STRANGER), [])
        channel = FakeChannel(address=(STRANGER, 5060))
        self.sif.parse_failed(SipParseError("bad", 400), channel)  # type: ignore[arg-type]
        self.assertEqual(channel.sent, [])
        self.assertEqual(self.sif.refusals.total, 2)
        self.clock.advance(SUMMARY_EVERY)

    def test_responses_pass(self) -> None:
        """
        Responses are not filtered here: the transaction layer takes only
        those answering a branch the SIF sent, whoever sends them.
        """
        response = parse_datagram(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKnone\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\n"
            b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        self.sif.message_received(response, FakeChannel(address=(STRANGER, 5060)))  # type: ignore[arg-type]
        self.assertEqual(self.sif.refusals.total, 0)

    def test_no_peers_refuses_all(self) -> None:
        """
        A PBX name that does not resolve and no C{trusted_peer}: every
        request is refused (the issue's gateway let everyone in).
        """
        self.resolver.answers["pbx.com"] = DNSLookupError("pbx.com")
        self.with_sif()
        self.assertEqual([r.status for r in self.send(invite(), PBX)], [403])
        self.clock.advance(SUMMARY_EVERY)


class SweepTests(PeersCase):
    """
    A SIPVicious-style sweep from a stranger learns nothing and leaves
    little trace.
    """

    def sweep(self, users: list[str]) -> list[Response]:
        answers = []
        for n in range(200):
            method = ("INVITE", "OPTIONS", "REGISTER")[n % 3]
            answers += self.send(probe(method, users[n % len(users)], n), STRANGER)
        return answers

    @staticmethod
    def shape(response: Response) -> tuple[int, str, tuple[str, ...]]:
        return (
            response.status,
            response.reason,
            tuple(sorted({name.lower() for name, _ in response.headers})),
        )

    def test_sweep(self) -> None:
        """
        200 INVITE/OPTIONS/REGISTER probes: C{show call} and session.log
        unchanged, one log line for the source plus one summary line per
        interval, and the answers to an extension that routes (94670...)
        and to ones that do not (101, 4670...) have the same shape,
        with no Server or User-Agent header.
        """
        routed = self.sweep(["94670123456"])
        unrouted = self.sweep(["101", "4670123456"])
        self.assertEqual(len(routed), 200)
        self.assertEqual({self.shape(r) for r in routed}, {self.shape(r) for r in unrouted})
        self.assertEqual({r.status for r in routed + unrouted}, {403})
        for response in routed:
            self.assertIsNone(response.headers.get("Server"))
            self.assertIsNone(response.headers.get("User-Agent"))
        self.assertEqual((self.calls.rows(), self.session, self.tel.legs), ([], [], []))
        self.assertEqual(len(self.warnings), 1)
        self.clock.advance(SUMMARY_EVERY)
        self.assertEqual(len(self.warnings), 2)
        self.assertEqual(self.warnings[1]["count"], 399)
        self.clock.advance(SUMMARY_EVERY)
        self.assertEqual(len(self.warnings), 2)
        self.clock.advance(CALL_LINGER)


class RefusalsTests(SynchronousTestCase):
    """
    The refusal log on its own.
    """

    def test_once_then_summed(self) -> None:
        """
        The first refusal from a source is logged at once, the next ones
        once per interval with their count; a quiet source is forgotten
        and logged afresh when it comes back.
        """
        clock = Clock()
        refusals = Refusals(clock)
        for _ in range(50):
            refusals.refused("203.0.113.9", "udp INVITE")
        self.assertEqual(refusals.lines, 1)
        clock.advance(SUMMARY_EVERY)
        self.assertEqual(refusals.lines, 2)
        clock.advance(SUMMARY_EVERY)
        self.assertEqual((refusals.lines, clock.getDelayedCalls()), (2, []))
        refusals.refused("203.0.113.9", "udp INVITE")
        self.assertEqual(refusals.lines, 3)
        refusals.stop()

    def test_many_sources_bounded(self) -> None:
        """
        More sources than C{max_sources} in one interval: the extra ones
        share one count and one summary line.
        """
        clock = Clock()
        refusals = Refusals(clock, max_sources=10)
        for n in range(1000):
            refusals.refused(f"198.51.{n // 256}.{n % 256}", "udp OPTIONS")
        self.assertEqual((refusals.lines, len(refusals.counts), refusals.others), (10, 10, 990))
        clock.advance(SUMMARY_EVERY)
        self.assertEqual(refusals.lines, 11)
        self.assertEqual(clock.getDelayedCalls(), [])


class PeerSetTests(SynchronousTestCase):
    """
    Which addresses L{SipPeers} takes.
    """

    def test_pbx_hosts(self) -> None:
        """
        The literal hosts of the tel interface's extension and source
        maps' SIP sides; placeholders and other interfaces' maps are not
        peers.
        """
        config = parse_cig_config(
            'map a { entry x tel "tel:+1{n}" sip "sip:{n}@pbx.example:5070"; }\n'
            'map b { entry y tel "tel:+2{n}" sip "sip:{n}@{host}"; }\n'
            'map c { entry z tel "tel:+3{n}" sip "sip:{n}@192.0.2.5;transport=tcp"; }\n'
            'map d { entry w sip "sip:9{n}@secure.example" tel "tel:+{n}"; }\n'
            "interfaces { tel { extension map a; extension map b; source map c; }"
            " sip { extension map d; } }"
        )
        self.assertEqual(pbx_hosts(config), ("pbx.example", "192.0.2.5"))
        self.assertEqual(pbx_hosts(CigConfig()), ())

    def test_literal_and_networks(self) -> None:
        """Literal addresses and networks, IPv4-mapped IPv6 included."""
        peers = SipPeers(Clock(), (ip_network("10.1.0.0/16"),), ("192.0.2.5", "2001:db8::5"))
        for host in ("192.0.2.5", "::ffff:192.0.2.5", "2001:db8::5", "10.1.2.3"):
            self.assertTrue(peers.trusted(host), host)
        for host in ("192.0.2.6", "10.2.0.1", "", "pbx.example", "2001:db8::6"):
            self.assertFalse(peers.trusted(host), host)

    def test_names_refreshed_last_good_kept(self) -> None:
        """
        A name is looked up at start and every L{REFRESH_EVERY} seconds;
        its new addresses replace the old, a failed or empty lookup keeps
        the last good ones.
        """
        clock = Clock()
        resolver = Resolver()
        resolver.answers["pbx.example"] = ["192.0.2.5", "192.0.2.6"]
        peers = SipPeers(clock, (), ("pbx.example",), resolver)
        self.assertFalse(peers.trusted("192.0.2.5"))
        peers.start()
        self.assertTrue(peers.trusted("192.0.2.6"))
        resolver.answers["pbx.example"] = DNSLookupError("pbx.example")
        clock.advance(REFRESH_EVERY)
        self.assertTrue(peers.trusted("192.0.2.5"))
        resolver.answers["pbx.example"] = []
        clock.advance(REFRESH_EVERY)
        self.assertTrue(peers.trusted("192.0.2.5"))
        resolver.answers["pbx.example"] = ["192.0.2.7"]
        clock.advance(REFRESH_EVERY)
        self.assertEqual((peers.trusted("192.0.2.5"), peers.trusted("192.0.2.7")), (False, True))
        self.assertEqual(resolver.asked, ["pbx.example"] * 4)
        self.assertEqual(peers.addresses(), ["192.0.2.7"])
        peers.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
