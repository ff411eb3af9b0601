"""The APNs and FCM senders against fake providers: HTTP/2 (h2) over real TLS.

Each fake checks the requests as Apple and Google document them; these
tests check what the senders make of every kind of answer, and of a
provider that is down.
"""

from __future__ import annotations

import json
import time

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from cryptify.push.answers import Outcome
from cryptify.push.apns import COLLAPSE_ID, PAYLOAD, ApnsSender, SignedTokens
from cryptify.push.fcm import AccessTokens, FcmSender, ServiceAccount
from cryptify.push.h2client import H2Client
from tests.interop._procs import free_port, short_tempdir
from tests.push_fakes import (
    FakeApns,
    FakeFcm,
    apns_key,
    h2_server_options,
    service_account,
    tls_pair,
)

DEVICE = "a1" * 32
FCM_TOKEN = "fcm-token:APA91b" + "x" * 100
TOPIC = "net.example.cca"
#: Strings that would identify someone if they reached a provider.
IDENTIFYING = ("tel:", "+46", "acme", "alice", "bob")


class ApnsTests(TestCase):
    def setUp(self) -> None:
        self.dir = short_tempdir(self)
        cert, key = tls_pair(self.dir, "apns")
        self.signing_key, _ = apns_key(self.dir)
        self.fake = FakeApns(self.signing_key.public_key(), "KEY1234567", "TEAM123456", TOPIC)
        port = self.fake.listen(reactor, cert, key)
        self.addCleanup(port.stopListening)
        self.client = H2Client(reactor, f"https://localhost:{port.getHost().port}", ca_path=cert)
        self.addCleanup(self.client.close)
        self.tokens = SignedTokens(self.signing_key, "KEY1234567", "TEAM123456", time.time)
        self.sender = ApnsSender(self.client, self.tokens, TOPIC, time.time)

    async def wake(self, device: str = DEVICE, voip: bool = False) -> Outcome:
        answer = await self.sender.wake(device, voip)
        self.assertEqual(self.fake.problems, [])
        return answer.outcome

    @defer.inlineCallbacks
    def test_wake_is_a_documented_request_without_identifying_data(self) -> object:
        """A wake is POST /3/device/TOKEN with a valid ES256 provider token,
        the documented headers and a payload with nothing but content-available."""
        outcome = yield defer.ensureDeferred(self.wake())
        self.assertIs(outcome, Outcome.SENT)
        [request] = self.fake.requests
        h = request.headers
        self.assertEqual(request.path, f"/3/device/{DEVICE}")
        self.assertEqual(h["apns-topic"], TOPIC)
        self.assertEqual(h["apns-push-type"], "background")
        self.assertEqual(h["apns-priority"], "5")
        self.assertEqual(h["apns-collapse-id"], COLLAPSE_ID)
        self.assertGreater(int(h["apns-expiration"]), time.time())
        self.assertEqual(json.loads(request.body), {"aps": {"content-available": 1}})
        self.assertEqual(request.body, PAYLOAD)
        for word in IDENTIFYING:
            self.assertNotIn(word, request.body.decode())

    @defer.inlineCallbacks
    def test_voip_wake(self) -> object:
        """A voip token is woken on the app's .voip topic with push type voip."""
        outcome = yield defer.ensureDeferred(self.wake(voip=True))
        self.assertIs(outcome, Outcome.SENT)
        self.assertEqual(self.fake.requests[0].headers["apns-topic"], TOPIC + ".voip")

    @defer.inlineCallbacks
    def test_connection_and_token_are_reused(self) -> object:
        """Two wakes share one HTTP/2 connection and one provider token."""
        yield defer.ensureDeferred(self.wake())
        yield defer.ensureDeferred(self.wake())
        self.assertEqual(len(self.fake.connections), 1)
        self.assertEqual(len(set(self.fake.tokens)), 1)

    @defer.inlineCallbacks
    def test_unregistered_410(self) -> object:
        """410 Unregistered means the token is dead."""
        self.fake.answer(410, {"reason": "Unregistered", "timestamp": 1700000000000})
        outcome = yield defer.ensureDeferred(self.wake())
        self.assertIs(outcome, Outcome.UNREGISTERED)

    @defer.inlineCallbacks
    def test_bad_device_token_400(self) -> object:
        """400 BadDeviceToken means the token is dead too."""
        self.fake.answer(400, {"reason": "BadDeviceToken"})
        outcome = yield defer.ensureDeferred(self.wake())
        self.assertIs(outcome, Outcome.UNREGISTERED)

    @defer.inlineCallbacks
    def test_expired_provider_token_renews(self) -> object:
        """403 ExpiredProviderToken: a new token is signed and the wake sent again."""
        self.fake.answer(403, {"reason": "ExpiredProviderToken"})
        outcome = yield defer.ensureDeferred(self.wake())
        self.assertIs(outcome, Outcome.SENT)
        self.assertEqual(len(self.fake.requests), 2)
        self.assertEqual(len(set(self.fake.tokens)), 2)

    @defer.inlineCallbacks
    def test_expired_twice_is_refused(self) -> object:
        """A renewed token refused as expired again is not retried forever."""
        self.fake.answer(403, {"reason": "ExpiredProviderToken"})
        self.fake.answer(403, {"reason": "ExpiredProviderToken"})
        answer = yield defer.ensureDeferred(self.sender.wake(DEVICE))
        self.assertIs(answer.outcome, Outcome.REFUSED)
        self.assertEqual(len(self.fake.requests), 2)

    @defer.inlineCallbacks
    def test_too_many_requests_429_backs_off(self) -> object:
        """429 TooManyRequests: later, with the Retry-After given."""
        self.fake.answer(429, {"reason": "TooManyRequests"}, retry_after="17")
        answer = yield defer.ensureDeferred(self.sender.wake(DEVICE))
        self.assertIs(answer.outcome, Outcome.LATER)
        self.assertEqual(answer.retry_after, 17)

    @defer.inlineCallbacks
    def test_server_errors_back_off(self) -> object:
        """500 InternalServerError and 503 ServiceUnavailable: later."""
        self.fake.answer(500, {"reason": "InternalServerError"})
        self.fake.answer(503, {"reason": "ServiceUnavailable"})
        first = yield defer.ensureDeferred(self.wake())
        second = yield defer.ensureDeferred(self.wake())
        self.assertEqual((first, second), (Outcome.LATER, Outcome.LATER))

    @defer.inlineCallbacks
    def test_other_errors_are_refused(self) -> object:
        """400 BadTopic, 403 InvalidProviderToken, 413: refused with Apple's reason."""
        for status, reason in [
            (400, "BadTopic"),
            (403, "InvalidProviderToken"),
            (413, "PayloadTooLarge"),
        ]:
            self.fake.answer(status, {"reason": reason})
            answer = yield defer.ensureDeferred(self.sender.wake(DEVICE))
            self.assertIs(answer.outcome, Outcome.REFUSED)
            self.assertEqual(answer.reason, reason)

    @defer.inlineCallbacks
    def test_hostile_device_token_is_not_sent(self) -> object:
        """A token that is not hexadecimal never reaches the path."""
        answer = yield defer.ensureDeferred(self.sender.wake("../../v1/other?x=" + "a" * 20))
        self.assertIs(answer.outcome, Outcome.UNREGISTERED)
        self.assertEqual(self.fake.requests, [])

    @defer.inlineCallbacks
    def test_provider_down(self) -> object:
        """Nobody listening: later, not an exception."""
        client = H2Client(reactor, f"https://localhost:{free_port()}")
        sender = ApnsSender(client, self.tokens, TOPIC, time.time)
        answer = yield defer.ensureDeferred(sender.wake(DEVICE))
        self.assertIs(answer.outcome, Outcome.LATER)

    @defer.inlineCallbacks
    def test_untrusted_provider(self) -> object:
        """A provider whose certificate is not trusted is not talked to."""
        other, _ = tls_pair(self.dir, "other")
        client = H2Client(reactor, f"https://localhost:{self.client.port}", ca_path=other)
        self.addCleanup(client.close)
        sender = ApnsSender(client, self.tokens, TOPIC, time.time)
        answer = yield defer.ensureDeferred(sender.wake(DEVICE))
        self.assertIs(answer.outcome, Outcome.LATER)
        self.assertEqual(self.fake.requests, [])


class FcmTests(TestCase):
    def setUp(self) -> None:
        self.dir = short_tempdir(self)
        cert, key = tls_pair(self.dir, "fcm")
        port_number = free_port()
        self.origin = f"https://localhost:{port_number}"
        rsa_key, path, _ = service_account(self.dir, self.origin + FakeFcm.TOKEN_PATH)
        self.fake = FakeFcm(
            rsa_key.public_key(), "push@cryptify-test.iam.gserviceaccount.com", "cryptify-test"
        )
        self.fake.origin = self.origin
        port = reactor.listenSSL(  # type: ignore[attr-defined]
            port_number, self.fake.factory(), h2_server_options(cert, key), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        self.client = H2Client(reactor, self.origin, ca_path=cert)
        self.addCleanup(self.client.close)
        self.tokens = AccessTokens(ServiceAccount.load(path), self.client, time.time)
        self.sender = FcmSender(self.client, self.tokens)

    async def wake(self) -> Outcome:
        answer = await self.sender.wake(FCM_TOKEN)
        self.assertEqual(self.fake.problems, [])
        return answer.outcome

    def sends(self) -> list[object]:
        return [r for r in self.fake.requests if r.path != FakeFcm.TOKEN_PATH]

    @defer.inlineCallbacks
    def test_wake_is_a_documented_request_without_identifying_data(self) -> object:
        """A wake fetches an OAuth2 token with a signed assertion, then posts
        a data message that carries nothing but the wake-up."""
        outcome = yield defer.ensureDeferred(self.wake())
        self.assertIs(outcome, Outcome.SENT)
        [send] = self.sends()
        self.assertEqual(send.headers["authorization"], f"Bearer {self.fake.issued[0]}")
        message = json.loads(send.body)["message"]
        self.assertEqual(message["token"], FCM_TOKEN)
        self.assertEqual(message["data"], {"wakeup": "1"})
        self.assertEqual(message["android"]["collapse_key"], "wakeup")
        for word in IDENTIFYING:
            self.assertNotIn(word, send.body.decode())

    @defer.inlineCallbacks
    def test_access_token_is_reused(self) -> object:
        """Two wakes, one access token request."""
        yield defer.ensureDeferred(self.wake())
        yield defer.ensureDeferred(self.wake())
        self.assertEqual(len(self.fake.issued), 1)
        self.assertEqual(len(self.sends()), 2)

    @defer.inlineCallbacks
    def test_unregistered_404(self) -> object:
        """404 UNREGISTERED: the token is dead."""
        self.fake.answer(
            404,
            {
                "error": {
                    "code": 404,
                    "status": "NOT_FOUND",
                    "details": [{"errorCode": "UNREGISTERED"}],
                }
            },
        )
        outcome = yield defer.ensureDeferred(self.wake())
        self.assertIs(outcome, Outcome.UNREGISTERED)

    @defer.inlineCallbacks
    def test_invalid_token_400(self) -> object:
        """400 INVALID_ARGUMENT about the registration token: the token is dead."""
        self.fake.answer(
            400,
            {
                "error": {
                    "code": 400,
                    "status": "INVALID_ARGUMENT",
                    "message": "The registration token is not a valid FCM registration token",
                }
            },
        )
        outcome = yield defer.ensureDeferred(self.wake())
        self.assertIs(outcome, Outcome.UNREGISTERED)

    @defer.inlineCallbacks
    def test_401_renews_the_access_token(self) -> object:
        """401: a new access token is fetched and the wake sent again."""
        self.fake.answer(401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}})
        outcome = yield defer.ensureDeferred(self.wake())
        self.assertIs(outcome, Outcome.SENT)
        self.assertEqual(len(self.fake.issued), 2)

    @defer.inlineCallbacks
    def test_quota_and_server_errors_back_off(self) -> object:
        """429 QUOTA_EXCEEDED (with Retry-After), 500 INTERNAL, 503 UNAVAILABLE: later."""
        self.fake.answer(
            429,
            {
                "error": {
                    "status": "RESOURCE_EXHAUSTED",
                    "details": [{"errorCode": "QUOTA_EXCEEDED"}],
                }
            },
            retry_after="30",
        )
        self.fake.answer(500, {"error": {"status": "INTERNAL"}})
        self.fake.answer(503, {"error": {"status": "UNAVAILABLE"}})
        answers = []
        for _ in range(3):
            answers.append((yield defer.ensureDeferred(self.sender.wake(FCM_TOKEN))))
        self.assertEqual([a.outcome for a in answers], [Outcome.LATER] * 3)
        self.assertEqual(answers[0].retry_after, 30)

    @defer.inlineCallbacks
    def test_other_errors_are_refused(self) -> object:
        """403 SENDER_ID_MISMATCH: refused."""
        self.fake.answer(
            403,
            {
                "error": {
                    "status": "PERMISSION_DENIED",
                    "details": [{"errorCode": "SENDER_ID_MISMATCH"}],
                }
            },
        )
        answer = yield defer.ensureDeferred(self.sender.wake(FCM_TOKEN))
        self.assertIs(answer.outcome, Outcome.REFUSED)
        self.assertEqual(answer.reason, "SENDER_ID_MISMATCH")

    @defer.inlineCallbacks
    def test_token_endpoint_refuses(self) -> object:
        """invalid_grant from the token endpoint: refused, nothing sent."""
        self.fake.answer_token(400, {"error": "invalid_grant"})
        answer = yield defer.ensureDeferred(self.sender.wake(FCM_TOKEN))
        self.assertIs(answer.outcome, Outcome.REFUSED)
        self.assertEqual(self.sends(), [])

    @defer.inlineCallbacks
    def test_token_endpoint_busy(self) -> object:
        """A 503 from the token endpoint: later."""
        self.fake.answer_token(503, {"error": "unavailable"})
        answer = yield defer.ensureDeferred(self.sender.wake(FCM_TOKEN))
        self.assertIs(answer.outcome, Outcome.LATER)

    @defer.inlineCallbacks
    def test_provider_down(self) -> object:
        """Nobody listening: later."""
        client = H2Client(reactor, f"https://localhost:{free_port()}")
        account = self.tokens.account
        sender = FcmSender(client, AccessTokens(account, client, time.time))
        answer = yield defer.ensureDeferred(sender.wake(FCM_TOKEN))
        self.assertIs(answer.outcome, Outcome.LATER)
