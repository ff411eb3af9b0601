"""
Tests for L{cryptify.cig.sif.challenge}: the CIG asking its PBX for digest
credentials (C{pbx_challenge}), its stateless nonces, replay limits, and
the SIF answering 401 before anything else looks at a request.
"""

from __future__ import annotations

import ipaddress
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.calls import CallTable, StubTelSide
from cryptify.cig.sif.auth import CredentialsError
from cryptify.cig.sif.challenge import (
    NONCE_LIFETIME,
    Challenger,
    Verdict,
    load_guard,
)
from cryptify.cig.sif.core import Sif
from cryptify.cig.sif.peers import SipPeers
from cryptify.cig.sif.register import Registrations, TrunkService
from cryptify.config.cig_model import CigConfig, Interfaces, PbxChallenge, SipInterface
from cryptify.protocols.sip.digest import (
    Credentials,
    DigestError,
    authorization,
    challenges_of,
    choose,
    parse_authorization,
)
from cryptify.protocols.sip.headers import Headers
from cryptify.protocols.sip.message import Request, Response
from cryptify.service import StartupError
from tests.sip_support import SifCase, in_dialog, invite

PEER = "192.0.2.1"
BLOCK = PbxChallenge("192.0.2.0/24", "cig.example", "pbx", password="in-Secret-9")
CREDS = Credentials("pbx", "in-Secret-9")
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def request(method: str = "INVITE", uri: str = "sip:94670123456@secure.com", *auth: str) -> Request:
    headers = Headers(
        (
            ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx"),
            ("From", "<sip:101@pbx.com>;tag=f1"),
            ("To", f"<{uri}>"),
            ("Call-ID", "c1"),
            ("CSeq", f"1 {method}"),
            *(("Authorization", value) for value in auth),
        )
    )
    return Request(method, uri, headers)


def answered(
    decision_headers: tuple[tuple[str, str], ...],
    req: Request,
    creds: Credentials = CREDS,
    nc: int = 1,
) -> Request:
    """C{req} again with credentials for the first challenge in C{decision_headers}."""
    response = Response(401, "Unauthorized", Headers(decision_headers))
    found = choose(challenges_of(response))
    assert found is not None
    value = authorization(found, creds, req.method, req.uri, nc=nc)
    return request(req.method, req.uri, value)


class _AnyNonce(Challenger):
    """A challenger that takes any nonce (for the RFC's published ones)."""

    def issued(self, nonce: str, host: str, realm: str) -> int | None:
        return 0


class ChallengerTests(SynchronousTestCase):
    """The verdicts of L{Challenger.check}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.challenger = Challenger(self.clock, (load_guard(BLOCK),))
        self.addCleanup(self.challenger.stop)

    def first(self, req: Request | None = None) -> tuple[Request, tuple[tuple[str, str], ...]]:
        req = req or request()
        decision = self.challenger.check(req, PEER)
        self.assertEqual((decision.verdict, decision.status), (Verdict.CHALLENGE, 401))
        return req, decision.headers

    def test_challenge_sha256_first(self) -> None:
        """
        No credentials: 401 with one WWW-Authenticate per algorithm,
        SHA-256 first, each with qop=auth and the realm; no stale.
        """
        _, headers = self.first()
        self.assertEqual([name for name, _ in headers], ["WWW-Authenticate"] * 2)
        self.assertIn("algorithm=SHA-256", headers[0][1])
        self.assertIn("algorithm=MD5", headers[1][1])
        for _, value in headers:
            self.assertIn('realm="cig.example"', value)
            self.assertIn('qop="auth"', value)
            self.assertNotIn("stale", value)

    def test_valid_credentials_pass(self) -> None:
        """Credentials computed from the challenge (SHA-256 chosen) pass."""
        req, headers = self.first()
        again = answered(headers, req)
        self.assertIn("algorithm=SHA-256", again.headers.get("Authorization") or "")
        self.assertIs(self.challenger.check(again, PEER).verdict, Verdict.PASS)

    def test_md5_only(self) -> None:
        """A block offering MD5 only challenges with MD5 and takes MD5 answers."""
        block = PbxChallenge("192.0.2.1", "r", "pbx", password="pw", algorithms=("MD5",))
        challenger = Challenger(self.clock, (load_guard(block),))
        decision = challenger.check(request(), PEER)
        self.assertEqual(len(decision.headers), 1)
        self.assertIn("algorithm=MD5", decision.headers[0][1])
        again = answered(decision.headers, request(), Credentials("pbx", "pw"))
        self.assertIs(challenger.check(again, PEER).verdict, Verdict.PASS)

    def test_other_peers_ack_cancel_not_challenged(self) -> None:
        """Addresses outside the block, ACK and CANCEL pass without credentials."""
        self.assertIs(self.challenger.check(request(), "198.51.100.7").verdict, Verdict.PASS)
        self.assertIs(self.challenger.check(request(), "pbx.example").verdict, Verdict.PASS)
        for method in ("ACK", "CANCEL"):
            self.assertIs(self.challenger.check(request(method), PEER).verdict, Verdict.PASS)

    def test_host_name_peer(self) -> None:
        """
        A block naming a PBX host challenges the addresses the peers last
        looked it up to, and no others.
        """
        block = PbxChallenge("pbx.example", "r", "pbx", password="pw")
        found = {"pbx.example": frozenset({ipaddress.ip_address("198.51.100.7")})}
        challenger = Challenger(self.clock, (load_guard(block),))
        challenger.addresses_of = lambda name: found.get(name, frozenset())
        self.assertIs(challenger.check(request(), "198.51.100.7").verdict, Verdict.CHALLENGE)
        self.assertIs(challenger.check(request(), "198.51.100.8").verdict, Verdict.PASS)
        found["pbx.example"] = frozenset({ipaddress.ip_address("198.51.100.8")})
        self.assertIs(challenger.check(request(), "198.51.100.8").verdict, Verdict.CHALLENGE)

    def test_unknown_host_name_refused(self) -> None:
        """A host name the peers do not look up (not a map's PBX host) stops start-up."""
        block = PbxChallenge("elsewhere.example", "r", "pbx", password="pw")
        peers = SipPeers(self.clock, hosts=("pbx.example",))
        with self.assertRaises(CredentialsError) as caught:
            Challenger.load(self.clock, (block,), peers)
        self.assertIn("not a PBX host name", str(caught.exception))
        ok = PbxChallenge("pbx.example", "r", "pbx", password="pw")
        peers.resolved["pbx.example"] = frozenset({ipaddress.ip_address("198.51.100.7")})
        loaded = Challenger.load(self.clock, (ok,), peers)
        self.addCleanup(loaded.stop)
        self.assertIsNotNone(loaded.guard_for("198.51.100.7"))

    def test_wrong_password_refused_and_logged_once(self) -> None:
        """
        A wrong password gets 401 again (not stale), counted once per
        source: the first logged, the rest summed up a minute later.
        """
        req, headers = self.first()
        for _ in range(3):
            wrong = answered(headers, req, Credentials("pbx", "guess"))
            decision = self.challenger.check(wrong, PEER)
            self.assertEqual((decision.verdict, decision.status), (Verdict.REFUSED, 401))
            self.assertNotIn("stale", decision.headers[0][1])
        self.assertEqual(self.challenger.refusals.lines, 1)
        self.clock.advance(60)
        self.assertEqual(self.challenger.refusals.lines, 2)

    def test_wrong_user_and_uri_refused(self) -> None:
        """Another user name, or credentials for another Request-URI, are refused."""
        req, headers = self.first()
        other_user = answered(headers, req, Credentials("eve", "in-Secret-9"))
        self.assertIs(self.challenger.check(other_user, PEER).verdict, Verdict.REFUSED)
        good = answered(headers, req)
        moved = request("INVITE", "sip:999@secure.com", good.headers.get("Authorization") or "")
        self.assertIs(self.challenger.check(moved, PEER).verdict, Verdict.REFUSED)

    def test_other_method_refused(self) -> None:
        """Credentials computed for INVITE do not pass on a MESSAGE."""
        req, headers = self.first()
        good = answered(headers, req)
        message = request("MESSAGE", req.uri, good.headers.get("Authorization") or "")
        self.assertIs(self.challenger.check(message, PEER).verdict, Verdict.REFUSED)

    def test_expired_nonce_stale(self) -> None:
        """A nonce older than NONCE_LIFETIME gets 401 with stale=true."""
        req, headers = self.first()
        self.clock.advance(NONCE_LIFETIME + 1)
        decision = self.challenger.check(answered(headers, req), PEER)
        self.assertIs(decision.verdict, Verdict.STALE)
        self.assertTrue(all("stale=true" in value for _, value in decision.headers))

    def test_nonce_bound_to_peer_and_secret(self) -> None:
        """
        A nonce issued to another address, or by a CIG started since (a
        new secret), is stale.
        """
        req, headers = self.first()
        good = answered(headers, req)
        self.assertIs(self.challenger.check(good, "192.0.2.2").verdict, Verdict.STALE)
        restarted = Challenger(self.clock, (load_guard(BLOCK),))
        self.assertIs(restarted.check(good, PEER).verdict, Verdict.STALE)

    def test_replayed_count_stale(self) -> None:
        """The same nonce count twice is a replay (stale); the next count passes."""
        req, headers = self.first()
        good = answered(headers, req, nc=1)
        self.assertIs(self.challenger.check(good, PEER).verdict, Verdict.PASS)
        self.assertIs(self.challenger.check(good, PEER).verdict, Verdict.STALE)
        self.assertIs(
            self.challenger.check(answered(headers, req, nc=2), PEER).verdict, Verdict.PASS
        )

    def test_forgotten_nonce_stale(self) -> None:
        """
        Past max_nonces the oldest nonce is forgotten, and from then on it
        is stale rather than open to replay.
        """
        self.challenger.max_nonces = 2
        first, headers = self.first()
        good = answered(headers, first)
        self.assertIs(self.challenger.check(good, PEER).verdict, Verdict.PASS)
        self.clock.advance(1)
        for _ in range(2):
            req, others = self.first()
            self.assertIs(self.challenger.check(answered(others, req), PEER).verdict, Verdict.PASS)
        self.assertEqual(len(self.challenger.counts), 2)
        self.assertIs(self.challenger.check(good, PEER).verdict, Verdict.STALE)

    def test_unreadable_credentials_400(self) -> None:
        """Credentials that cannot be read get 400 with a Warning."""
        decision = self.challenger.check(request("INVITE", "sip:a@b", 'Digest realm="x'), PEER)
        self.assertEqual((decision.verdict, decision.status), (Verdict.BAD, 400))
        self.assertEqual(decision.headers[0][0], "Warning")

    def test_other_realm_or_scheme_challenged(self) -> None:
        """Credentials for another realm, or Basic, are as none: a plain 401."""
        req, headers = self.first()
        value = answered(headers, req).headers.get("Authorization") or ""
        other = value.replace('realm="cig.example"', 'realm="elsewhere"')
        self.assertIs(
            self.challenger.check(request("INVITE", req.uri, other), PEER).verdict,
            Verdict.CHALLENGE,
        )
        for basic in ("Basic cGJ4OnB3", 'Bearer "x', "Digest"):
            decision = self.challenger.check(request("INVITE", req.uri, basic), PEER)
            expected = Verdict.BAD if basic == "Digest" else Verdict.CHALLENGE
            self.assertIs(decision.verdict, expected, basic)

    def test_warning_quoted_safely(self) -> None:
        """A hostile value's text in the 400's Warning cannot break its quoted string."""
        decision = self.challenger.check(request("INVITE", "sip:a@b", 'Digest a"b\\c=1'), PEER)
        self.assertIs(decision.verdict, Verdict.BAD)
        text = decision.headers[0][1]
        self.assertEqual(text.count('"'), 2)
        self.assertNotIn("\\", text)

    def test_rfc7616_known_answers(self) -> None:
        """
        RFC 7616 3.9.1's Authorization values (MD5 and SHA-256, qop=auth)
        verify against its password, read as the server reads them.
        """
        block = PbxChallenge(
            "192.0.2.1", "http-auth@example.org", "Mufasa", password="Circle of Life"
        )
        challenger = _AnyNonce(self.clock, (load_guard(block),))
        published = {
            "MD5": "8ca523f5e9506fed4657c9700eebdbec",
            "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        }
        for algorithm, response in published.items():
            challenger.counts.clear()
            value = (
                'Digest username="Mufasa", realm="http-auth@example.org", '
                f'uri="/dir/index.html", algorithm={algorithm}, nonce="{RFC7616_NONCE}", '
                f'nc=00000001, cnonce="{RFC7616_CNONCE}", qop=auth, response="{response}"'
            )
            req = Request("GET", "/dir/index.html", Headers((("Authorization", value),)))
            self.assertIs(challenger.check(req, "192.0.2.1").verdict, Verdict.PASS)

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=300))
    def test_hostile_authorization_never_crashes(self, value: str) -> None:
        """Any Authorization value gets a verdict (never PASS), never an exception."""
        req = request("INVITE", "sip:a@b", "Digest " + value)
        self.assertIsNot(self.challenger.check(req, PEER).verdict, Verdict.PASS)
        try:
            parse_authorization(value)
        except DigestError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(st.text(alphabet="abcdefXYZ0123456789/+=-_", max_size=60))
    def test_forged_nonce_stale(self, nonce: str) -> None:
        """A nonce we did not make is stale, whatever it looks like."""
        value = authorization(
            choose(
                challenges_of(
                    Response(
                        401,
                        "Unauthorized",
                        Headers(
                            (
                                (
                                    "WWW-Authenticate",
                                    f'Digest realm="cig.example", nonce="{nonce}", qop="auth"',
                                ),
                            )
                        ),
                    )
                )
            )
            or self.fail("no challenge"),
            CREDS,
            "INVITE",
            "sip:a@b",
        )
        req = request("INVITE", "sip:a@b", value)
        self.assertIs(self.challenger.check(req, PEER).verdict, Verdict.STALE)


class LoadTests(SynchronousTestCase):
    """Reading a pbx_challenge block's password file."""

    def test_password_file(self) -> None:
        """The file's first line is the password; a group-readable file is refused."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("file-Secret\nignored\n")
        os.chmod(path, 0o600)
        block = PbxChallenge("192.0.2.1", "r", "pbx", password_file=path)
        self.assertEqual(load_guard(block).credentials.password, "file-Secret")
        os.chmod(path, 0o640)
        with self.assertRaises(CredentialsError) as caught:
            load_guard(block)
        self.assertNotIn("file-Secret", str(caught.exception))

    def test_no_password_in_repr(self) -> None:
        """Neither the block nor the loaded guard shows the password."""
        self.assertNotIn("in-Secret-9", repr(BLOCK))
        self.assertNotIn("in-Secret-9", repr(load_guard(BLOCK)))


class TrunkServiceTests(SynchronousTestCase):
    """The trunk service reads the blocks' passwords at start, as root."""

    def make(self, *blocks: PbxChallenge) -> tuple[Sif, TrunkService]:
        clock = Clock()
        config = CigConfig(interfaces=Interfaces(sip=SipInterface(pbx_challenges=blocks)))
        sif = Sif(config, clock, StubTelSide("answer"), CallTable(clock))
        return sif, TrunkService(sif, Registrations(sif))

    def test_loaded_at_start(self) -> None:
        """With blocks, the SIF gets a Challenger with their passwords; without, none."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("file-Secret\n")
        os.chmod(path, 0o600)
        sif, trunk = self.make(PbxChallenge("192.0.2.1", "r", "pbx", password_file=path))
        trunk.privilegedStartService()
        assert sif.challenger is not None
        self.assertEqual(sif.challenger.guards[0].credentials.password, "file-Secret")
        sif, trunk = self.make()
        trunk.privilegedStartService()
        self.assertIsNone(sif.challenger)

    def test_unsafe_file_stops_startup(self) -> None:
        """A password file others may read stops start-up, naming it, not its content."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("file-Secret\n")
        os.chmod(path, 0o644)
        _, trunk = self.make(PbxChallenge("192.0.2.1", "r", "pbx", password_file=path))
        with self.assertRaises(StartupError) as caught:
            trunk.privilegedStartService()
        self.assertIn("accessible by group or others", str(caught.exception))
        self.assertNotIn("file-Secret", str(caught.exception))


class SifChallengeTests(SifCase):
    """The SIF with a Challenger: 401 first, then the call as usual."""

    def setUp(self) -> None:
        super().setUp()
        self.clock.advance(1_700_000_000)
        self.sif.challenger = Challenger(self.clock, (load_guard(BLOCK),))

    def test_invite_challenged_then_answered(self) -> None:
        """
        An INVITE without credentials gets 401 (no call, no session line);
        sent again with credentials it is routed and answered 200; a BYE in
        that dialog is not challenged.
        """
        first = self.send(invite())
        self.assertEqual(self.statuses(first), [401])
        self.assertEqual(self.session, [])
        self.send(
            b"ACK sip:94670123456@secure.com SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport\r\n"
            b"From: <sip:101@pbx.com>;tag=f1\r\n"
            + f"To: {first[0].headers.get('To')}\r\n".encode()
            + b"Call-ID: c1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        )
        response = first[0]
        assert isinstance(response, Response)
        found = choose(challenges_of(response))
        assert found is not None
        value = authorization(found, CREDS, "INVITE", "sip:94670123456@secure.com")
        raw = invite(branch="z9hG4bK2", extra=f"Authorization: {value}\r\n")
        raw = raw.replace(b"CSeq: 1 INVITE", b"CSeq: 2 INVITE")
        second = self.send(raw)
        self.assertIn(200, self.statuses(second))
        ok = next(m for m in second if isinstance(m, Response) and m.status == 200)
        bye = self.send(in_dialog("BYE", ok, cseq=3, branch="z9hG4bK3"))
        self.assertEqual(self.statuses(bye), [200])

    def test_options_and_unknown_dialog_challenged(self) -> None:
        """OPTIONS, and a BYE for a dialog the CIG does not know, get 401 too."""
        options = (
            b"OPTIONS sip:192.0.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKo\r\n"
            b"From: <sip:101@pbx.com>;tag=f1\r\nTo: <sip:192.0.2.9>\r\nCall-ID: o1\r\n"
            b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(self.statuses(self.send(options)), [401])
        stray = options.replace(b"OPTIONS", b"BYE").replace(
            b"To: <sip:192.0.2.9>", b"To: <sip:192.0.2.9>;tag=zz"
        )
        self.assertEqual(self.statuses(self.send(stray)), [401])

    def test_parsed_response_has_challenges(self) -> None:
        """The 401 on the wire carries two readable challenges."""
        (sent,) = self.send(invite())
        assert isinstance(sent, Response)
        self.assertEqual([c.algorithm for c in challenges_of(sent)], ["SHA-256", "MD5"])

    @settings(max_examples=150, deadline=None)
    @given(
        st.text(
            alphabet=st.characters(
                min_codepoint=32, max_codepoint=0x2FF, blacklist_characters="\x7f"
            ),
            max_size=200,
        )
    )
    def test_hostile_authorization_on_the_wire(self, value: str) -> None:
        """
        An INVITE from the wire with any Authorization value gets 400 or
        401 and makes no call.
        """
        raw = invite(branch=f"z9hG4bK{len(self.channel.sent)}", extra=f"Authorization: {value}\r\n")
        statuses = self.statuses(self.send(raw))
        self.assertIn(statuses[-1] if statuses else 400, (400, 401))
        self.assertEqual(self.calls.rows(), [])
