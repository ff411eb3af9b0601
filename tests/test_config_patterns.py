"""
Tests for L{cryptify.config.patterns}: the URI patterns of C{cig.conf}.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config import PatternError, expand_pattern, match_pattern
from cryptify.config.patterns import check_pattern, translate


class MatchPatternTests(SynchronousTestCase):
    """
    L{match_pattern} and L{expand_pattern} with the manual's examples.
    """

    def test_strip_leading_nine(self) -> None:
        """
        The simple example's C{sip:9{SIPEXT}@secure.com} on
        C{sip:94670123456@secure.com} strips the 9: the TEL-URI is
        C{tel:+4670123456} (the manual prints C{tel:+464670123456}, which
        no pattern of that example can produce).
        """
        params = match_pattern("sip:9{SIPEXT}@secure.com", "sip:94670123456@secure.com")
        self.assertEqual(params, {"SIPEXT": "4670123456"})
        self.assertEqual(expand_pattern("tel:+{SIPEXT}", params or {}), "tel:+4670123456")

    def test_extension_to_pbx(self) -> None:
        """
        C{tel:+8888;{extension}} maps C{+8888;1234} to C{1234@pbx.com}.
        """
        self.assertEqual(
            translate("tel:+8888;{extension}", "sip:{extension}@pbx.com", "tel:+8888;1234"),
            "sip:1234@pbx.com",
        )

    def test_empty_parameter(self) -> None:
        """
        A parameter matches zero characters too: C{tel:+8888;} gives
        C{sip:@pbx.com}.
        """
        self.assertEqual(
            translate("tel:+8888;{extension}", "sip:{extension}@pbx.com", "tel:+8888;"),
            "sip:@pbx.com",
        )

    def test_discard(self) -> None:
        """
        C{{discard}} soaks up whatever follows the domain; expanding the
        SIP side from the TEL side leaves it empty.
        """
        sip = "sip:{foobar}@pbx.com{discard}"
        tel = "tel:+8888;{foobar}"
        self.assertEqual(
            match_pattern(sip, "sip:1234@pbx.com;transport=tcp"),
            {"foobar": "1234", "discard": ";transport=tcp"},
        )
        self.assertEqual(translate(sip, tel, "sip:1234@pbx.com;transport=tcp"), "tel:+8888;1234")
        self.assertEqual(translate(tel, sip, "tel:+8888;1234"), "sip:1234@pbx.com")

    def test_rule_to_bare_address(self) -> None:
        """
        The translate rule example turns C{tel:+8888;12345} into
        C{12345@pbx.com}.
        """
        self.assertEqual(
            translate("tel:+8888;{extension}", "{extension}@pbx.com", "tel:+8888;12345"),
            "12345@pbx.com",
        )

    def test_no_match(self) -> None:
        """
        The whole URI must match: a prefix or a different literal is no match.
        """
        self.assertIsNone(match_pattern("tel:+8888;{x}", "tel:+9999;1"))
        self.assertIsNone(match_pattern("sip:{x}@pbx.com", "sip:1@pbx.com.evil"))
        self.assertIsNone(match_pattern("tel:+{x}", "sip:+1"))

    def test_shortest_first(self) -> None:
        """
        Parameters take as little as they can, left to right.
        """
        self.assertEqual(
            match_pattern("sip:{user}@{host}", "sip:a@b@c"), {"user": "a", "host": "b@c"}
        )

    def test_repeated_name(self) -> None:
        """
        A name used twice must match the same text both times.
        """
        self.assertEqual(match_pattern("{x}-{x}", "ab-ab"), {"x": "ab"})
        self.assertIsNone(match_pattern("{x}-{x}", "ab-cd"))

    def test_literal_regex_characters(self) -> None:
        """
        C{+}, C{.} and other regular expression characters are literal.
        """
        self.assertIsNone(match_pattern("tel:+1.2", "tel:+1x2"))
        self.assertEqual(match_pattern("tel:+1.2{x}", "tel:+1.2*"), {"x": "*"})

    def test_malformed(self) -> None:
        """
        Unbalanced braces and bad names are L{PatternError}s with offsets.
        """
        for pattern, offset in [("tel:{x", 4), ("a}b", 1), ("{a b}", 0), ("{}", 0)]:
            e = self.assertRaises(PatternError, check_pattern, pattern)
            self.assertEqual(e.offset, offset, pattern)


names = st.from_regex(r"[A-Za-z0-9_]{1,8}", fullmatch=True)
literals = st.text(alphabet="abc:+;@.9", max_size=6)


class PatternPropertyTests(SynchronousTestCase):
    """
    Properties of matching and expanding.
    """

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(literals, names), max_size=4), literals, st.data())
    def test_expand_then_match(
        self, parts: list[tuple[str, str]], tail: str, data: st.DataObject
    ) -> None:
        """
        Expanding a pattern with some values gives a URI the pattern matches,
        and expanding again with what matched gives the same URI.
        """
        pattern = "".join(f"{lit}{{{name}}}" for lit, name in parts) + tail
        values = {name: data.draw(st.text(alphabet="abc12@;", max_size=5)) for _, name in parts}
        uri = expand_pattern(pattern, values)
        params = match_pattern(pattern, uri)
        self.assertIsNotNone(params)
        self.assertEqual(expand_pattern(pattern, params or {}), uri)
