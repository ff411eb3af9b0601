"""Provider tokens, answer classification and the HTTP/2 client, in memory."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from cryptify.push import apns, fcm
from cryptify.push.answers import Outcome
from cryptify.push.apns import TOKEN_LIFETIME, SignedTokens
from cryptify.push.fcm import ServiceAccount, ServiceAccountError
from cryptify.push.h2client import REQUEST_TIMEOUT, H2ClientProtocol, Unreachable
from cryptify.push.tokens import TokenKeyError, b64url_decode, es256_jwt, unverified_claims

KEY = ec.generate_private_key(ec.SECP256R1())


class ProviderTokenTests(SynchronousTestCase):
    def test_es256_token_verifies(self) -> None:
        """The token is header.claims.signature with an r||s ES256 signature
        that the public key verifies, and the documented header and claims."""
        token = es256_jwt(KEY, "KEY1234567", "TEAM123456", 1_700_000_000)
        head, claims, sig = token.split(".")
        raw = b64url_decode(sig)
        self.assertEqual(len(raw), 64)
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        KEY.public_key().verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
        self.assertEqual(json.loads(b64url_decode(head)), {"alg": "ES256", "kid": "KEY1234567"})
        self.assertEqual(unverified_claims(token), {"iss": "TEAM123456", "iat": 1_700_000_000})

    def test_wrong_key_kind(self) -> None:
        """A key that is not P-256 is refused with a clear error."""
        other = ec.generate_private_key(ec.SECP384R1())
        self.assertRaises(TokenKeyError, es256_jwt, other, "K", "T", 0)

    def test_token_is_kept_then_renewed_inside_the_hour(self) -> None:
        """One token is used until TOKEN_LIFETIME (well under an hour), then a new one."""
        clock = Clock()
        clock.advance(1_700_000_000)
        tokens = SignedTokens(KEY, "K", "T", clock.seconds)
        first, issued = tokens.current()
        clock.advance(TOKEN_LIFETIME - 1)
        self.assertEqual(tokens.current()[0], first)
        clock.advance(1)
        second, reissued = tokens.current()
        self.assertNotEqual(second, first)
        self.assertEqual(reissued - issued, TOKEN_LIFETIME)
        self.assertLess(TOKEN_LIFETIME, 3600)

    def test_renew_signs_a_new_token(self) -> None:
        """After renew() the next token is a new one."""
        tokens = SignedTokens(KEY, "K", "T", Clock().seconds)
        first = tokens.current()[0]
        tokens.renew()
        self.assertNotEqual(tokens.current()[0], first)


class ClassifyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        st.integers(0, 999),
        st.dictionaries(st.sampled_from(["retry-after", "x"]), st.text(max_size=20)),
        st.one_of(
            st.binary(max_size=200),
            st.builds(
                lambda v: json.dumps(v).encode(),
                st.recursive(
                    st.none() | st.text(max_size=10) | st.integers(),
                    lambda c: st.lists(c) | st.dictionaries(st.text(max_size=8), c),
                    max_leaves=10,
                ),
            ),
        ),
    )
    def test_any_answer_is_classified(
        self, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        """Whatever a provider answers, both classifiers give an outcome and a
        printable reason of bounded length; only 200 is SENT."""
        for classify in (apns.classify, fcm.classify):
            answer = classify(status, headers, body)
            self.assertIsInstance(answer.outcome, Outcome)
            self.assertEqual(answer.outcome is Outcome.SENT, status == 200)
            self.assertLessEqual(len(answer.reason), 200)
            self.assertTrue(answer.reason.isprintable())

    @settings(max_examples=200, deadline=None)
    @given(
        st.one_of(
            st.none(),
            st.text(),
            st.lists(st.text()),
            st.dictionaries(
                st.sampled_from(["project_id", "client_email", "private_key", "token_uri", "x"]),
                st.one_of(st.text(max_size=30), st.integers(), st.none()),
            ),
        )
    )
    def test_hostile_service_account(self, data: object) -> None:
        """A service-account file of any shape is refused with ServiceAccountError."""
        with self.assertRaises(ServiceAccountError):
            ServiceAccount.from_json(data)


class H2ClientProtocolTests(SynchronousTestCase):
    def test_request_times_out(self) -> None:
        """A request without an answer fails Unreachable after REQUEST_TIMEOUT
        and leaves no timer behind."""
        clock = Clock()
        proto = H2ClientProtocol(clock)
        proto.makeConnection(StringTransport())
        done = proto.request("POST", "/3/device/ab", "localhost", [], b"{}")
        clock.advance(REQUEST_TIMEOUT)
        self.failureResultOf(done, Unreachable)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_connection_lost_fails_requests(self) -> None:
        """Requests in flight fail Unreachable when the connection is lost."""
        clock = Clock()
        proto = H2ClientProtocol(clock)
        proto.makeConnection(StringTransport())
        done = proto.request("POST", "/x", "localhost", [], b"")
        proto.connectionLost(None)
        self.failureResultOf(done, Unreachable)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.failureResultOf(proto.request("POST", "/x", "localhost", [], b""), Unreachable)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300))
    def test_garbage_from_the_server(self, data: bytes) -> None:
        """Bytes that are not HTTP/2 close the connection, never raise."""
        proto = H2ClientProtocol(Clock())
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(data)
