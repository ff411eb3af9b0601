"""
Tests for L{cryptify.protocols.sip.locate}: which server a SIP URI names
(RFC 3263, simplified) and the literal servers of map entries.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.protocols.sip.locate import LocateError, Target, literal_target, locate

hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
)


class LocateTests(SynchronousTestCase):
    """L{locate} on hand-picked URIs."""

    def test_defaults(self) -> None:
        """A host alone is port 5060 over UDP; a name is not numeric."""
        target = locate("sip:101@pbx.com")
        self.assertEqual(target, Target("pbx.com", 5060, "udp"))
        self.assertFalse(target.numeric)
        self.assertTrue(locate("sip:10.0.0.1").numeric)

    def test_port_and_transport(self) -> None:
        """An explicit port and C{;transport=tcp} (any case) are honoured."""
        self.assertEqual(
            locate("sip:101@PBX.com:5070;transport=TCP;user=phone"),
            Target("pbx.com", 5070, "tcp"),
        )
        self.assertEqual(locate("sip:[::1]:5062;transport=udp"), Target("::1", 5062, "udp"))
        self.assertEqual(Target("::1", 5062, "tcp").uri, "sip:[::1]:5062;transport=tcp")
        self.assertEqual(str(Target("pbx.com")), "pbx.com:5060/udp")

    def test_tls(self) -> None:
        """
        C{;transport=tls} and C{sips:} mean TLS, by default on port 5061;
        the server's own URI says so.
        """
        self.assertEqual(locate("sip:1@pbx.com;transport=TLS"), Target("pbx.com", 5061, "tls"))
        self.assertEqual(locate("sips:1@pbx.com:5071"), Target("pbx.com", 5071, "tls"))
        self.assertEqual(locate("sips:1@pbx.com;transport=tcp"), Target("pbx.com", 5061, "tls"))
        self.assertEqual(Target("pbx.com", 5061, "tls").uri, "sip:pbx.com:5061;transport=tls")

    def test_refused(self) -> None:
        """sips over UDP, tel, other transports and unparsable URIs are refused."""
        for uri in (
            "sips:1@pbx.com;transport=udp",
            "tel:+4670",
            "sip:1@h;transport=sctp",
            "sip:",
            "x",
        ):
            with self.assertRaises(LocateError, msg=uri):
                locate(uri)

    def test_literal_target(self) -> None:
        """
        A map side with placeholders only in the user part names a server;
        one with a placeholder in the host or parameters does not.
        """
        self.assertEqual(literal_target("sip:{ext}@pbx.com"), Target("pbx.com"))
        self.assertEqual(
            literal_target("sip:{a}{b}@pbx.com:5070;transport=tcp"),
            Target("pbx.com", 5070, "tcp"),
        )
        self.assertIsNone(literal_target("sip:{ext}@{host}"))
        self.assertIsNone(literal_target("sip:{ext}@pbx{n}.com"))
        self.assertIsNone(literal_target("sip:{ext}@pbx.com;transport={t}"))
        self.assertIsNone(literal_target("tel:+{n}"))

    @given(
        user=st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
        host=hosts,
        port=st.one_of(st.none(), st.integers(1, 65535)),
        transport=st.sampled_from([None, "udp", "tcp", "UDP", "Tcp"]),
    )
    def test_round_trip(
        self, user: str, host: str, port: int | None, transport: str | None
    ) -> None:
        """Any generated SIP URI locates to its host, port and transport."""
        uri = f"sip:{user}@{host}" + (f":{port}" if port else "")
        uri += f";transport={transport}" if transport else ""
        target = locate(uri)
        self.assertEqual(
            target, Target(host, port or 5060, "tcp" if transport in ("tcp", "Tcp") else "udp")
        )
        self.assertEqual(locate(target.uri), target)

    @given(st.text(max_size=80))
    def test_never_raises_otherwise(self, text: str) -> None:
        """Arbitrary text gives a L{Target} or L{LocateError}, nothing else."""
        try:
            locate(text)
        except LocateError:
            pass
        try:
            literal_target(text)
        except LocateError:
            self.fail("literal_target raised")
