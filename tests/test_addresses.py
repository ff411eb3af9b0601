"""
Tests for L{cryptify.addresses}.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.addresses import is_wildcard


class IsWildcardTests(SynchronousTestCase):
    def test_unspecified_addresses(self) -> None:
        """
        The unspecified IPv4 and IPv6 addresses are wildcards, in every
        spelling.
        """
        for host in ("0.0.0.0", "::", "::0", "0:0:0:0:0:0:0:0"):
            self.assertTrue(is_wildcard(host), host)

    def test_others(self) -> None:
        """
        A concrete address, a host name, an empty string or junk is not.
        """
        for host in ("127.0.0.1", "::1", "192.0.2.7", "localhost", "", "0.0.0", "any", "0"):
            self.assertFalse(is_wildcard(host), host)

    @given(st.text(max_size=60))
    def test_any_text(self, host: str) -> None:
        """
        Any text gives an answer, never an exception, and only an address
        that parses as unspecified is a wildcard.
        """
        answer = is_wildcard(host)
        if answer:
            self.assertTrue(ipaddress.ip_address(host).is_unspecified)

    @given(st.ip_addresses())
    def test_any_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        """
        For every address, the answer is whether it is unspecified.
        """
        self.assertEqual(is_wildcard(str(address)), address.is_unspecified)
