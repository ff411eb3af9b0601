"""cryptify-push's side of the push link, in memory (iosim), and its configuration."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from cryptify.protocols import push_link
from cryptify.push.answers import Answer, Outcome
from cryptify.push.config import PushConfigError, parse, read_secret_file
from cryptify.push.server import LOGIN_WITHIN, PushServerFactory

SECRET = "s3cret-for-crs1"


class StubProviders:
    """Answers wakes from a script; remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []
        self.answers: list[Answer] = []
        self.signed = None
        self.apns = None

    async def wake(self, kind: str, token: str) -> Answer:
        self.asked.append((kind, token))
        if kind not in ("apns", "fcm", "voip"):
            raise push_link.Unsupported(kind)
        return self.answers.pop(0) if self.answers else Answer(Outcome.SENT)


class LinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.providers = StubProviders()
        self.factory = PushServerFactory(
            self.clock,
            "push-test",
            {"crs1": SECRET.encode()},
            self.providers,  # type: ignore[arg-type]
        )
        self.server = self.factory.buildProtocol(None)
        self.client = amp.AMP()
        self.client_io, self.server_io, self.pump = iosim.connectedServerAndClient(
            lambda: self.server, lambda: self.client
        )
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def call(self, command: type[amp.Command], **kwargs: Any) -> defer.Deferred[Any]:
        """Call, with the answer caught before it arrives (AMP logs answers
        nobody waits for), and return a Deferred that has its result."""
        results: list[Any] = []
        self.client.callRemote(command, **kwargs).addBoth(results.append)
        self.pump.flush()
        if not results:
            return defer.Deferred()
        return (
            defer.succeed(results[0])
            if not isinstance(results[0], Failure)
            else defer.fail(results[0])
        )

    def login(self) -> None:
        answer = self.successResultOf(self.call(push_link.Login, id="crs1", secret=SECRET))
        self.assertEqual(answer["server"], "push-test")

    def closed(self) -> bool:
        transport = self.server.transport
        return transport is None or bool(transport.disconnecting)

    def test_login_then_wake(self) -> None:
        """After a good login a wake is forwarded and answered sent."""
        self.login()
        answer = self.successResultOf(self.call(push_link.Wake, kind="apns", token="ab" * 32))
        self.assertEqual(answer["outcome"], push_link.SENT)
        self.assertEqual(self.providers.asked, [("apns", "ab" * 32)])

    def test_wrong_secret_is_refused_and_hung_up(self) -> None:
        """A wrong secret is UNAUTHORIZED, the connection is closed, and the
        log names the id but never the secret given."""
        failure = self.failureResultOf(self.call(push_link.Login, id="crs1", secret="guess"))
        failure.trap(push_link.Unauthorized)
        self.assertTrue(self.closed())
        text = " ".join(str(e) for e in self.events)
        self.assertIn("crs1", text)
        self.assertNotIn("guess", text)
        self.assertNotIn(SECRET, text)

    def test_unknown_id_is_refused(self) -> None:
        """An id that is not configured is refused like a wrong secret."""
        failure = self.failureResultOf(self.call(push_link.Login, id="nobody", secret=SECRET))
        failure.trap(push_link.Unauthorized)

    def test_wake_before_login_is_refused(self) -> None:
        """No wake goes out for a connection that has not logged in."""
        failure = self.failureResultOf(self.call(push_link.Wake, kind="apns", token="ab" * 32))
        failure.trap(push_link.Unauthorized)
        self.assertEqual(self.providers.asked, [])
        self.assertTrue(self.closed())

    def test_provider_token_before_login_is_refused(self) -> None:
        """Provider tokens are given to logged-in clients only."""
        failure = self.failureResultOf(self.call(push_link.ProviderToken))
        failure.trap(push_link.Unauthorized)

    def test_outcomes(self) -> None:
        """Each provider outcome reaches the CRS with its retry-after or reason."""
        self.login()
        self.providers.answers = [
            Answer(Outcome.UNREGISTERED, "Unregistered"),
            Answer(Outcome.LATER, "TooManyRequests", 12.0),
            Answer(Outcome.REFUSED, "BadTopic"),
        ]
        answers = [
            self.successResultOf(self.call(push_link.Wake, kind="apns", token="ab" * 32))
            for _ in range(3)
        ]
        self.assertEqual(
            [a["outcome"] for a in answers],
            [push_link.UNREGISTERED, push_link.LATER, push_link.REFUSED],
        )
        self.assertEqual(answers[1]["retry_after"], 12.0)
        self.assertEqual(answers[2]["reason"], "BadTopic")

    def test_unsupported_kind(self) -> None:
        """A kind without a provider is UNSUPPORTED, the link stays up."""
        self.login()
        failure = self.failureResultOf(self.call(push_link.Wake, kind="other", token="x" * 20))
        failure.trap(push_link.Unsupported)
        self.assertFalse(self.closed())

    def test_oversized_token_is_malformed(self) -> None:
        """A token beyond the limit is refused before any provider sees it."""
        self.login()
        failure = self.failureResultOf(self.call(push_link.Wake, kind="apns", token="a" * 600))
        failure.trap(push_link.Malformed)
        self.assertEqual(self.providers.asked, [])

    def test_no_provider_token_without_apns_key(self) -> None:
        """ProviderToken on a server without an APNs key: NOT_AVAILABLE."""
        self.login()
        failure = self.failureResultOf(self.call(push_link.ProviderToken))
        failure.trap(push_link.NotAvailable)

    @settings(max_examples=100, deadline=None)
    @given(st.text(max_size=40), st.text(max_size=700))
    def test_any_wake_fields(self, kind: str, token: str) -> None:
        """Whatever kind and token a logged-in client sends, the answer is an
        outcome or MALFORMED / UNSUPPORTED, and the link stays up."""
        if self.server.commands.client is None:
            self.login()
        result = self.call(push_link.Wake, kind=kind, token=token)
        outcome: list[Any] = []
        result.addCallbacks(
            outcome.append,
            lambda f: outcome.append(f.trap(push_link.Malformed, push_link.Unsupported)),
        )
        self.assertEqual(len(outcome), 1)
        self.assertFalse(self.closed())

    def test_silent_connection_is_closed(self) -> None:
        """A connection that does not log in within LOGIN_WITHIN is closed,
        and its timer does not outlive it."""
        self.clock.advance(LOGIN_WITHIN)
        self.pump.flush()
        self.assertTrue(self.closed())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_logged_in_connection_stays(self) -> None:
        """A logged-in connection is not closed by the login timer."""
        self.login()
        self.clock.advance(LOGIN_WITHIN)
        self.assertFalse(self.closed())
        self.successResultOf(self.call(push_link.Ping))


GOOD = """
# a push server
listen 127.0.0.1 5230
tls-certificate /etc/push/server.crt /etc/push/server.key
client crs-pool-1 /etc/push/crs1.secret
apns key /etc/push/AuthKey.p8 key-id ABC1234567 team-id TEAM123456 topic net.example.cca
apns endpoint https://api.sandbox.push.apple.com
fcm service-account /etc/push/sa.json
trust /etc/push/ca.pem
"""


class ConfigTests(SynchronousTestCase):
    def test_good_file(self) -> None:
        """Every setting of docs/push.md is read."""
        cfg = parse(GOOD)
        self.assertEqual((cfg.host, cfg.port), ("127.0.0.1", 5230))
        self.assertEqual(cfg.clients, {"crs-pool-1": "/etc/push/crs1.secret"})
        assert cfg.apns is not None
        self.assertEqual(cfg.apns.key_file, "/etc/push/AuthKey.p8")
        self.assertEqual(cfg.apns.topic, "net.example.cca")
        self.assertEqual(cfg.apns.endpoint, "https://api.sandbox.push.apple.com")
        self.assertEqual(cfg.fcm_account, "/etc/push/sa.json")
        self.assertEqual(cfg.trust, "/etc/push/ca.pem")

    def test_problems_name_file_and_line(self) -> None:
        """A bad line is reported as FILE:LINE: problem."""
        for text, line in [
            ("client a /x\nlisten here 99999\n", 2),
            ("client a /x\nwhatever\n", 2),
            ("client a /x\nclient a /y\n", 2),
            ("client a /x\napns endpoint http://plain\n", 2),
            ("client a /x\napns key f key-id bad team-id TEAM123456 topic t\n", 2),
        ]:
            with self.assertRaises(PushConfigError) as caught:
                parse(text, "push.conf")
            self.assertTrue(
                str(caught.exception).startswith(f"push.conf:{line}:"), caught.exception
            )

    def test_needs_a_client(self) -> None:
        """A server nobody may log in to is a configuration error."""
        self.assertRaises(PushConfigError, parse, "listen 0.0.0.0 5230\n")

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=400))
    def test_any_text(self, text: str) -> None:
        """Any text parses or is refused with PushConfigError, nothing else."""
        try:
            parse(text)
        except PushConfigError:
            pass

    def test_secret_file_readable_by_others_is_refused(self) -> None:
        """A secret file others may read is refused; 0600 is read."""
        directory = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(directory))
        path = os.path.join(directory, "secret")
        with open(path, "w") as f:
            f.write("x")
        os.chmod(path, 0o644)
        self.assertRaises(PushConfigError, read_secret_file, path, "client secret")
        os.chmod(path, 0o600)
        self.assertEqual(read_secret_file(path, "client secret"), b"x")
