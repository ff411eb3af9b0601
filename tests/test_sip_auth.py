"""
Tests for L{cryptify.cig.sif.auth}: the CIG answering a PBX's 401/407
challenges on its INVITEs, BYEs and MESSAGEs, the keyring that says whose
credentials a request uses, and password files.
"""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.sif.auth import (
    MAX_PASSWORD_FILE,
    MAX_RESENDS,
    ChallengedRequest,
    CredentialsError,
    Keyring,
    load_credentials,
)
from cryptify.config.cig_model import PbxAccount
from cryptify.protocols.sip.digest import (
    Credentials,
)
from cryptify.protocols.sip.locate import locate
from cryptify.protocols.sip.message import Headers, Request, response_to
from cryptify.protocols.sip.transaction import T1, TransactionLayer
from tests.fakes import FakeChannel, RecordingUser
from tests.sip_support import CREDENTIALS, OutgoingCase, challenge, verify


class ChallengedCallTests(OutgoingCase):
    """Calls the CIG places, challenged by the PBX."""

    def setUp(self) -> None:
        super().setUp()
        self.sif.keyring = Keyring(
            (
                (
                    PbxAccount("sip:192.0.2.50:5070", "cig", password="trunk-secret"),
                    locate("sip:192.0.2.50:5070"),
                    CREDENTIALS,
                ),
            )
        )

    def requests(self, method: str) -> list[Request]:
        return [m for m in self.channel.messages() if isinstance(m, Request) and m.method == method]

    def test_invite_407_resent_with_credentials(self) -> None:
        """
        A 407 to the INVITE is ACKed and the INVITE goes again with a
        Proxy-Authorization the PBX can check: CSeq 2, same Call-ID and
        From tag, a new branch. The 200 that follows is ACKed with CSeq 2
        and the same credentials, and the leg hears only the answer.
        """
        invite = self.place()
        self.sif.message_received(challenge(invite), self.channel)
        acks = self.requests("ACK")
        self.assertEqual([str(a.cseq) for a in acks], ["1 ACK"])
        invites = self.requests("INVITE")
        self.assertEqual(len(invites), 2)
        again = invites[1]
        self.assertEqual(str(again.cseq), "2 INVITE")
        self.assertEqual(again.call_id, invite.call_id)
        self.assertEqual(again.from_.tag, invite.from_.tag)
        self.assertNotEqual(again.vias[0].branch, invite.vias[0].branch)
        self.assertEqual(again.body, invite.body)
        self.assertTrue(verify(again, "Proxy-Authorization"))
        self.assertFalse(verify(again, "Proxy-Authorization", Credentials("cig", "wrong")))
        self.answer(again, 200)
        self.assertEqual(self.leg.events, ["answered"])
        ack = self.requests("ACK")[-1]
        self.assertEqual(str(ack.cseq), "2 ACK")
        self.assertEqual(
            ack.headers.get("Proxy-Authorization"), again.headers.get("Proxy-Authorization")
        )
        self.sif.hang_up(self.call)
        bye = self.requests("BYE")[-1]
        self.assertEqual(str(bye.cseq), "3 BYE")
        self.answer(bye, 200)  # type: ignore[arg-type]
        self.clock.advance(64 * T1)

    def test_refused_credentials_reported(self) -> None:
        """
        The same realm challenging the credentials again means they were
        refused: no third INVITE, the leg is rejected with the 407.
        """
        invite = self.place()
        self.sif.message_received(challenge(invite), self.channel)
        again = self.requests("INVITE")[-1]
        self.sif.message_received(challenge(again, nonce="n2"), self.channel)
        self.assertEqual(len(self.requests("INVITE")), 2)
        self.assertEqual(self.leg.events, ["rejected 407"])
        self.clock.advance(64 * T1)

    def test_stale_nonce_answered_again(self) -> None:
        """A challenge marked stale is answered again (RFC 3261 22.1), with the new nonce."""
        invite = self.place()
        self.sif.message_received(challenge(invite, status=401), self.channel)
        second = self.requests("INVITE")[-1]
        self.sif.message_received(challenge(second, 401, nonce="n2", stale=True), self.channel)
        third = self.requests("INVITE")[-1]
        self.assertEqual(str(third.cseq), "3 INVITE")
        self.assertIn('nonce="n2"', third.headers.get("Authorization") or "")
        self.assertTrue(verify(third, "Authorization"))
        self.answer(third, 486)
        self.assertEqual(self.leg.events, ["rejected 486"])
        self.clock.advance(64 * T1)

    def test_stale_loop_bounded(self) -> None:
        """A server that calls every nonce stale gets at most MAX_RESENDS resends."""
        request = self.place()
        for number in range(MAX_RESENDS + 3):
            self.sif.message_received(
                challenge(request, 401, nonce=f"n{number}", stale=True), self.channel
            )
            request = self.requests("INVITE")[-1]
        self.assertEqual(len(self.requests("INVITE")), 1 + MAX_RESENDS)
        self.assertEqual(self.leg.events, ["rejected 401"])
        self.clock.advance(64 * T1)

    def test_proxy_then_user_agent(self) -> None:
        """
        A proxy's 407 and then the far end's 401 (two realms): the third
        INVITE carries both answers, the proxy's nonce counted twice.
        """
        invite = self.place()
        self.sif.message_received(challenge(invite, 407, realm="proxy"), self.channel)
        second = self.requests("INVITE")[-1]
        self.sif.message_received(challenge(second, 401, realm="ua", nonce="u1"), self.channel)
        third = self.requests("INVITE")[-1]
        self.assertTrue(verify(third, "Proxy-Authorization"))
        self.assertTrue(verify(third, "Authorization"))
        self.assertIn("nc=00000002", third.headers.get("Proxy-Authorization") or "")
        self.answer(third, 603)
        self.clock.advance(64 * T1)

    def test_sha256_challenge(self) -> None:
        """An RFC 8760 SHA-256 challenge is answered with SHA-256."""
        invite = self.place()
        self.sif.message_received(challenge(invite, 401, algorithm="SHA-256"), self.channel)
        again = self.requests("INVITE")[-1]
        self.assertIn("algorithm=SHA-256", again.headers.get("Authorization") or "")
        self.assertTrue(verify(again, "Authorization"))
        self.answer(again, 486)
        self.clock.advance(64 * T1)

    def test_no_credentials_for_that_server(self) -> None:
        """A server we hold no credentials for: its 401 is the call's answer."""
        self.sif.keyring = Keyring()
        invite = self.place()
        self.sif.message_received(challenge(invite, 401), self.channel)
        self.assertEqual(len(self.requests("INVITE")), 1)
        self.assertEqual(self.leg.events, ["rejected 401"])
        self.clock.advance(64 * T1)

    def test_bye_challenged(self) -> None:
        """A BYE the PBX challenges goes again with credentials and the next CSeq."""
        invite = self.place()
        self.answer(invite, 200)
        self.sif.hang_up(self.call)
        bye = self.requests("BYE")[-1]
        self.sif.message_received(challenge(bye, 401), self.channel)
        again = self.requests("BYE")[-1]
        self.assertEqual(str(again.cseq), "3 BYE")
        self.assertTrue(verify(again, "Authorization"))
        self.answer(again, 200)  # type: ignore[arg-type]
        self.clock.advance(64 * T1)


class ChallengedRequestTests(SynchronousTestCase):
    """The resend logic on its own, with a MESSAGE (any request method works the same)."""

    def test_message_with_body(self) -> None:
        """
        A MESSAGE challenged with qop=auth-int is sent again with the body
        hashed into the answer; the 200 reaches the caller once.
        """
        clock = Clock()
        layer = TransactionLayer(clock, RecordingUser())
        channel = FakeChannel()
        headers = Headers(
            (
                ("Via", "SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKm1"),
                ("From", "<sip:cig@192.0.2.9>;tag=a"),
                ("To", "<sip:101@192.0.2.1>"),
                ("Call-ID", "m1"),
                ("CSeq", "7 MESSAGE"),
                ("Content-Type", "text/plain"),
            )
        )
        message = Request("MESSAGE", "sip:101@192.0.2.1", headers, b"hello")
        heard: list[int] = []
        sender = ChallengedRequest(
            layer, channel, message, CREDENTIALS, lambda r: heard.append(r.status), lambda: None
        )
        sender.send()
        value = 'Digest realm="r", nonce="x", qop="auth-int"'
        layer.receive(
            response_to(message.headers, 401, extra=(("WWW-Authenticate", value),)), channel
        )
        again = channel.messages()[-1]
        assert isinstance(again, Request)
        self.assertEqual(str(again.cseq), "8 MESSAGE")
        self.assertIn("qop=auth-int", again.headers.get("Authorization") or "")
        self.assertTrue(verify(again, "Authorization"))
        layer.receive(response_to(again.headers, 200), channel)
        self.assertEqual(heard, [200])
        clock.advance(64 * T1)
        self.assertEqual(clock.getDelayedCalls(), [])


class KeyringTests(SynchronousTestCase):
    """Whose credentials a request uses."""

    def setUp(self) -> None:
        self.one = Credentials("one", "1")
        self.two = Credentials("two", "2")
        self.keyring = Keyring(
            (
                (PbxAccount("sip:pbx.example", "one", "1"), locate("sip:pbx.example"), self.one),
                (
                    PbxAccount("sip:192.0.2.7:5080", "two", "2"),
                    locate("sip:192.0.2.7:5080"),
                    self.two,
                ),
            )
        )

    def test_by_target(self) -> None:
        """The account whose server has the target's host and port; none for others."""
        self.assertIs(self.keyring.for_target(locate("sip:101@PBX.example")), self.one)
        self.assertIs(self.keyring.for_target(locate("sip:101@192.0.2.7:5080")), self.two)
        self.assertIsNone(self.keyring.for_target(locate("sip:101@192.0.2.7")))
        self.assertIsNone(self.keyring.for_target(locate("sip:101@elsewhere.example")))

    def test_by_address(self) -> None:
        """Literal servers by address; named ones once their address was learnt."""
        self.assertIs(self.keyring.for_address("192.0.2.7"), self.two)
        self.assertIsNone(self.keyring.for_address("198.51.100.1"))
        self.keyring.learn("198.51.100.1", self.one)
        self.assertIs(self.keyring.for_address("198.51.100.1"), self.one)

    def test_single_account(self) -> None:
        """With one account, any server's challenge is answered with it."""
        keyring = Keyring(self.keyring.accounts[:1])
        self.assertIs(keyring.for_target(locate("sip:101@192.0.2.99")), self.one)
        self.assertIs(keyring.for_address("192.0.2.99"), self.one)


class PasswordFileTests(SynchronousTestCase):
    """Password files: 0600, one line, never echoed."""

    def account(self, content: bytes | None, mode: int = 0o600) -> PbxAccount:
        path = self.mktemp()
        if content is not None:
            with open(path, "wb") as f:
                f.write(content)
            os.chmod(path, mode)
        return PbxAccount("sip:pbx.example", "cig", password_file=path)

    def test_read(self) -> None:
        """The first line of a 0600 file is the password; the newline is not part of it."""
        found = load_credentials(self.account(b"s3cret\n"))
        self.assertEqual((found.username, found.password), ("cig", "s3cret"))

    def test_in_config(self) -> None:
        """A password written in cig.conf itself is used as it is."""
        found = load_credentials(PbxAccount("sip:pbx.example", "cig", password="p"))
        self.assertEqual(found.password, "p")

    def test_refusals(self) -> None:
        """
        Unsafe, missing, empty, long or binary files are refused; the
        message never holds the content.
        """
        cases = [
            (self.account(b"visible\n", 0o644), "accessible by group or others"),
            (self.account(b"visible\n", 0o620), "accessible by group or others"),
            (self.account(None), "No such file"),
            (self.account(b"\n"), "empty"),
            (self.account(b"x" * (MAX_PASSWORD_FILE + 1)), "too large"),
            (self.account(b"\xff\xfe\n"), "not UTF-8"),
        ]
        for account, reason in cases:
            with self.assertRaises(CredentialsError) as caught:
                load_credentials(account)
            self.assertIn(reason, str(caught.exception))
            self.assertNotIn("visible", str(caught.exception))

    def test_symlink_refused(self) -> None:
        """A symbolic link is not followed (someone else could point it anywhere)."""
        real = self.account(b"s3cret\n")
        assert real.password_file is not None
        link = self.mktemp()
        os.symlink(real.password_file, link)
        self.assertRaises(
            CredentialsError, load_credentials, PbxAccount("sip:p", "cig", password_file=link)
        )

    def test_keyring_load(self) -> None:
        """Keyring.load reads every account, and reports the first unusable one."""
        good = self.account(b"s3cret\n")
        keyring = Keyring.load((good,))
        self.assertEqual(keyring.accounts[0][2].password, "s3cret")
        self.assertRaises(CredentialsError, Keyring.load, (good, self.account(b"x\n", 0o640)))
