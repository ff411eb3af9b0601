"""
Tests for L{cryptify.protocols.sip.digest}: reading 401/407 challenges
and computing the answer (RFC 3261 22, RFC 8760), with the published
test vectors of RFC 2617 and RFC 7616.
"""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.protocols.sip.digest import (
    MAX_CHALLENGE_LENGTH,
    Challenge,
    Credentials,
    DigestError,
    authorization,
    challenges_of,
    choose,
    parse_challenge,
    parse_params,
    response_digest,
)
from cryptify.protocols.sip.message import Headers, Response

#: RFC 2617 3.5 (MD5, qop=auth).
RFC2617 = Challenge(
    "WWW-Authenticate",
    realm="testrealm@host.com",
    nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
    qop=("auth", "auth-int"),
    opaque="5ccc069c403ebaf9f0171e9517f40e41",
)
#: RFC 7616 3.9.1 (the same request under MD5 and SHA-256).
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


class VectorTests(SynchronousTestCase):
    """The RFCs' worked examples."""

    def test_rfc2617_md5(self) -> None:
        """RFC 2617's Mufasa example gives its published response."""
        response, qop = response_digest(
            RFC2617,
            Credentials("Mufasa", "Circle Of Life"),
            "GET",
            "/dir/index.html",
            cnonce="0a4f113b",
        )
        self.assertEqual(response, "6629fae49393a05397450978507c4ef1")
        self.assertEqual(qop, "auth")

    def test_rfc7616_md5_and_sha256(self) -> None:
        """RFC 7616 3.9.1: the MD5 and SHA-256 responses it publishes."""
        expected = {
            "MD5": "8ca523f5e9506fed4657c9700eebdbec",
            "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        }
        for algorithm, value in expected.items():
            challenge = Challenge(
                "WWW-Authenticate",
                realm="http-auth@example.org",
                nonce=RFC7616_NONCE,
                algorithm=algorithm,
                qop=("auth",),
            )
            response, _ = response_digest(
                challenge,
                Credentials("Mufasa", "Circle of Life"),
                "GET",
                "/dir/index.html",
                cnonce=RFC7616_CNONCE,
            )
            self.assertEqual(response, value, algorithm)

    def test_rfc7616_challenge_parsed(self) -> None:
        """RFC 7616's SHA-256 challenge header reads as it says."""
        value = (
            'Digest\r\n realm="http-auth@example.org",\r\n qop="auth, auth-int",\r\n'
            " algorithm=SHA-256,\r\n"
            f' nonce="{RFC7616_NONCE}",\r\n'
            ' opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
        )
        challenge = parse_challenge(value)
        self.assertEqual(challenge.realm, "http-auth@example.org")
        self.assertEqual(challenge.algorithm, "SHA-256")
        self.assertEqual(challenge.qop, ("auth", "auth-int"))
        self.assertEqual(challenge.nonce, RFC7616_NONCE)
        self.assertEqual(challenge.opaque, "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS")
        self.assertFalse(challenge.stale)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class AuthorizationTests(SynchronousTestCase):
    """The header value the CIG sends back."""

    def test_sip_register_rfc2069(self) -> None:
        """
        Without qop (RFC 2069 form, RFC 3261 22.4) the response is
        MD5(HA1:nonce:HA2) and no nc/cnonce is sent.
        """
        challenge = parse_challenge('Digest realm="pbx.com", nonce="abc"')
        value = authorization(challenge, Credentials("cig", "s3cret"), "REGISTER", "sip:pbx.com")
        ha1 = _md5("cig:pbx.com:s3cret")
        ha2 = _md5("REGISTER:sip:pbx.com")
        self.assertIn(f'response="{_md5(f"{ha1}:abc:{ha2}")}"', value)
        self.assertNotIn("cnonce", value)
        self.assertNotIn("nc=", value)
        self.assertTrue(value.startswith('Digest username="cig", realm="pbx.com"'))

    def test_qop_auth_fields(self) -> None:
        """With qop=auth: qop, an 8-hex-digit nc, the cnonce and the opaque echo back."""
        challenge = parse_challenge(
            'Digest realm="r", nonce="n", qop="auth", opaque="o", algorithm=SHA-256'
        )
        value = authorization(challenge, Credentials("u", "p"), "INVITE", "sip:x@y", "cn", nc=2)
        self.assertIn("qop=auth", value)
        self.assertIn("nc=00000002", value)
        self.assertIn('cnonce="cn"', value)
        self.assertIn('opaque="o"', value)
        self.assertIn("algorithm=SHA-256", value)

    def test_auth_int_hashes_the_body(self) -> None:
        """With only auth-int offered the body is part of HA2: two bodies, two answers."""
        challenge = parse_challenge('Digest realm="r", nonce="n", qop="auth-int"')
        creds = Credentials("u", "p")
        one = response_digest(challenge, creds, "MESSAGE", "sip:a@b", "c", body=b"hello")
        two = response_digest(challenge, creds, "MESSAGE", "sip:a@b", "c", body=b"other")
        self.assertEqual(one[1], "auth-int")
        self.assertNotEqual(one[0], two[0])

    def test_sess_algorithms(self) -> None:
        """The -sess variants fold the nonces into HA1 and are spelled as RFC 8760 does."""
        plain = parse_challenge('Digest realm="r", nonce="n", qop=auth, algorithm=MD5')
        sess = parse_challenge('Digest realm="r", nonce="n", qop=auth, algorithm=md5-sess')
        creds = Credentials("u", "p")
        self.assertNotEqual(
            response_digest(plain, creds, "BYE", "sip:a", "c")[0],
            response_digest(sess, creds, "BYE", "sip:a", "c")[0],
        )
        self.assertIn("algorithm=MD5-sess", authorization(sess, creds, "BYE", "sip:a", "c"))

    def test_quotes_escaped(self) -> None:
        """A realm with a quote in it is escaped, and reads back the same."""
        challenge = Challenge("WWW-Authenticate", realm='a"b', nonce="n")
        value = authorization(challenge, Credentials("u", "p"), "BYE", "sip:a")
        params = parse_params(value.partition(" ")[2])
        self.assertEqual(params["realm"], 'a"b')

    def test_password_not_in_repr(self) -> None:
        """The password never shows in a repr (which logs and tracebacks use)."""
        self.assertNotIn("hunter2", repr(Credentials("u", "hunter2")))

    def test_proxy_header(self) -> None:
        """A 407's challenge is answered in Proxy-Authorization, a 401's in Authorization."""
        headers = Headers((("Proxy-Authenticate", 'Digest realm="r", nonce="n"'),))
        found = challenges_of(Response(407, "Proxy Authentication Required", headers))
        self.assertEqual(found[0].answer_header, "Proxy-Authorization")
        headers = Headers((("WWW-Authenticate", 'Digest realm="r", nonce="n"'),))
        found = challenges_of(Response(401, "Unauthorized", headers))
        self.assertEqual(found[0].answer_header, "Authorization")


class ChooseTests(SynchronousTestCase):
    """Which of several challenges is answered."""

    def test_first_supported(self) -> None:
        """RFC 8760 2.4: the topmost challenge we support wins; unknown ones are skipped."""
        headers = Headers(
            (
                ("WWW-Authenticate", 'Digest realm="r", nonce="1", algorithm=SHA-512-256'),
                ("WWW-Authenticate", 'Digest realm="r", nonce="2", algorithm=SHA-256'),
                ("WWW-Authenticate", 'Digest realm="r", nonce="3", algorithm=MD5'),
            )
        )
        chosen = choose(challenges_of(Response(401, "Unauthorized", headers)))
        assert chosen is not None
        self.assertEqual(chosen.nonce, "2")

    def test_none_supported(self) -> None:
        """Only unknown algorithms or other schemes: nothing to answer."""
        headers = Headers(
            (
                ("WWW-Authenticate", 'Basic realm="r"'),
                ("WWW-Authenticate", 'Digest realm="r", nonce="1", algorithm=AKAv1-MD5'),
            )
        )
        self.assertIsNone(choose(challenges_of(Response(401, "Unauthorized", headers))))


class HostileTests(SynchronousTestCase):
    """Whatever a server sends, the parser answers DigestError or a Challenge."""

    def test_bad_examples(self) -> None:
        """Each broken challenge is refused with a reason."""
        for value in (
            "",
            "Digest",
            'Digest realm="r"',
            'Digest nonce="n"',
            'Digest realm="r, nonce="n"',
            'Digest realm="r" nonce="n"',
            'Digest realm="r", realm="s", nonce="n"',
            "Digest realm=, nonce=n",
            'Digest =x, realm="r", nonce="n"',
            'Digest realm="r\\',
            "Digest " + ", ".join(f"p{i}=x" for i in range(40)),
            'Digest realm="' + "x" * MAX_CHALLENGE_LENGTH + '", nonce="n"',
        ):
            self.assertRaises(DigestError, parse_challenge, value)

    @given(st.text(max_size=300))
    def test_any_text(self, value: str) -> None:
        """Arbitrary text is a challenge or a DigestError, never another exception."""
        try:
            challenge = parse_challenge(value)
        except DigestError as error:
            self.assertTrue(error.reason)
            return
        self.assertIsInstance(challenge.realm, str)

    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["realm", "nonce", "qop", "algorithm", "opaque", "stale", "x"]),
                st.one_of(
                    st.from_regex(r"[A-Za-z0-9\-]{1,10}", fullmatch=True),
                    st.text(max_size=20).map(
                        lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
                    ),
                ),
            ),
            max_size=8,
        )
    )
    def test_well_formed(self, params: list[tuple[str, str]]) -> None:
        """
        Well-formed parameter lists read back their values; a challenge that
        parses can always be answered or is refused as unsupported.
        """
        value = "Digest " + ", ".join(f"{name}={v}" for name, v in params)
        names = [name for name, _ in params]
        try:
            challenge = parse_challenge(value)
        except DigestError:
            self.assertTrue(
                len(set(names)) != len(names) or "realm" not in names or "nonce" not in names
            )
            return
        try:
            text = authorization(challenge, Credentials("u", "p"), "INVITE", "sip:a@b")
        except DigestError:
            self.assertFalse(challenge.supported)
            return
        self.assertTrue(text.startswith("Digest "))
        self.assertEqual(parse_params(text[7:])["nonce"], challenge.nonce)
