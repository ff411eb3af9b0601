"""
Tests for L{cryptify.cig.route}: the CIG manual's routing rules.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.route import MAX_URI_LENGTH, SIP, TEL, Routed, Router, RouteRefused
from cryptify.config import (
    CigConfig,
    Interfaces,
    MapEntry,
    SipInterface,
    TelInterface,
    UriMap,
    load_cig_config,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "config")


def fixture(name: str) -> Router:
    return Router(load_cig_config(os.path.join(FIXTURES, name)))


def config(
    maps: list[UriMap],
    tel_ext: tuple[str, ...] = (),
    tel_src: tuple[str, ...] = (),
    sip_ext: tuple[str, ...] = (),
    sip_src: tuple[str, ...] = (),
) -> CigConfig:
    return CigConfig(
        maps=tuple(maps),
        interfaces=Interfaces(
            tel=TelInterface(extension_maps=tel_ext, source_maps=tel_src),
            sip=SipInterface(extension_maps=sip_ext, source_maps=sip_src),
        ),
    )


class SimpleExampleTests(SynchronousTestCase):
    """
    The manual's simple configuration (C{cig-simple.conf}).
    """

    def setUp(self) -> None:
        self.router = fixture("cig-simple.conf")

    def test_sip_to_tel(self) -> None:
        """
        The worked example: sip 101 calls sip 94670123456. The to-URI goes
        through C{mapsip2tel}, losing the leading 9; the tel interface has
        no source map, so its extension map C{maptel2sip} gives the
        from-URI C{tel:+8888;101}. (The manual prints C{tel:+464670123456};
        no entry of this configuration can add the 46, so the stripped
        number is what route gives.)
        """
        routed = self.router.route(SIP, "sip:101@pbx.com", "sip:94670123456@secure.com")
        self.assertEqual(
            routed,
            Routed(
                incoming=SIP,
                outgoing=TEL,
                in_from="sip:101@pbx.com",
                in_to="sip:94670123456@secure.com",
                out_from="tel:+8888;101",
                out_to="tel:+4670123456",
                to_entry="mapsip2tel/sipext2tel",
                from_entry="maptel2sip/telext2sip",
            ),
        )

    def test_tel_to_sip(self) -> None:
        """
        A secure client dials the CIG number with extension 101: to
        C{sip:101@pbx.com}; the sip interface's source map gives the
        caller C{sip:4670123456@secure.com} (no leading 9, as the manual
        says of source rules).
        """
        routed = self.router.route(TEL, "tel:+4670123456", "tel:+8888;101")
        self.assertEqual(
            (routed.outgoing, routed.out_from, routed.out_to),
            (SIP, "sip:4670123456@secure.com", "sip:101@pbx.com"),
        )

    def test_empty_extension(self) -> None:
        """
        The parameter matches zero characters: C{tel:+8888;} routes to
        C{sip:@pbx.com}.
        """
        routed = self.router.route(TEL, "tel:+4670123456", "tel:+8888;")
        self.assertEqual(routed.out_to, "sip:@pbx.com")

    def test_no_extension_match(self) -> None:
        """
        A to-URI no extension map matches rejects the call.
        """
        with self.assertRaises(RouteRefused) as caught:
            self.router.route(SIP, "sip:101@pbx.com", "sip:4670123456@secure.com")
        self.assertIn("no extension map on sip", caught.exception.reason)

    def test_no_source_match(self) -> None:
        """
        A from-URI no source map matches rejects the call too.
        """
        with self.assertRaises(RouteRefused) as caught:
            self.router.route(SIP, "sip:101@elsewhere.com", "sip:94670123456@secure.com")
        self.assertIn("no source map on tel", caught.exception.reason)


class ElaborateExampleTests(SynchronousTestCase):
    """
    The manual's more elaborate configuration (C{cig-elaborate.conf}): the
    calling domain and any options are discarded.
    """

    def setUp(self) -> None:
        self.router = fixture("cig-elaborate.conf")

    def test_tel_to_sip(self) -> None:
        """
        C{tel:+8888;1234} goes to C{sip:1234@pbx.com}; the caller is taken
        from C{srctel2sip}.
        """
        routed = self.router.route(TEL, "tel:+4670123456", "tel:+8888;1234")
        self.assertEqual(
            (routed.out_from, routed.out_to, routed.to_entry, routed.from_entry),
            (
                "sip:4670123456@secure.com",
                "sip:1234@pbx.com",
                "maptel2sip/asterisk",
                "srctel2sip/all",
            ),
        )

    def test_sip_domain_discarded(self) -> None:
        """
        C{sip:{series}@{discard}} takes any domain and options: the to-URI
        loses them.
        """
        routed = self.router.route(
            SIP, "sip:101@secure.com", "sip:4670123456@192.168.1.1;transport=tcp"
        )
        self.assertEqual((routed.out_to, routed.out_from), ("tel:+4670123456", "tel:+101"))

    def test_tel_source_map_is_used(self) -> None:
        """
        The tel interface has a source map here (C{srctel2sip}), so its
        extension map is not consulted for the from-URI: a caller outside
        C{secure.com} is refused, as the configuration says.
        """
        with self.assertRaises(RouteRefused):
            self.router.route(SIP, "sip:101@pbx.com", "sip:4670123456@pbx.com")


class ParameterExampleTests(SynchronousTestCase):
    """
    The manual's two parameterized entries (C{cig-param-examples.conf}).
    """

    def router(self, extension: str, source: str) -> Router:
        cfg = load_cig_config(os.path.join(FIXTURES, "cig-param-examples.conf"))
        return Router(
            config(
                list(cfg.maps),
                tel_ext=(extension,),
                sip_ext=(extension,),
                tel_src=(source,),
                sip_src=(source,),
            )
        )

    def test_extension_to_pbx(self) -> None:
        """
        C{+8888;1234} is mapped to C{1234@pbx.com}.
        """
        routed = self.router("tel2sip", "tel2sip").route(TEL, "tel:+8888;77", "tel:+8888;1234")
        self.assertEqual(routed.out_to, "sip:1234@pbx.com")

    def test_discard_empty_on_tel_side(self) -> None:
        """
        Used as an extension on the tel interface, C{{discard}} is empty and
        the SIP URI ends with the domain name.
        """
        routed = self.router("sip2tel", "sip2tel").route(TEL, "tel:+8888;77", "tel:+8888;1234")
        self.assertEqual(routed.out_to, "sip:1234@pbx.com")

    def test_discard_on_sip_side(self) -> None:
        """
        From the SIP side, whatever follows C{pbx.com} is dropped.
        """
        routed = self.router("sip2tel", "sip2tel").route(
            SIP, "sip:55@pbx.com;user=phone", "sip:1234@pbx.com;transport=udp"
        )
        self.assertEqual((routed.out_to, routed.out_from), ("tel:+8888;1234", "tel:+8888;55"))


class RuleOrderTests(SynchronousTestCase):
    """
    First match wins, over maps and over entries.
    """

    def test_first_entry_wins(self) -> None:
        """
        Of two matching entries (in two maps), the earlier one routes.
        """
        first = UriMap("a", (MapEntry("x", "tel:+1{n}", "sip:first{n}@p"),))
        second = UriMap("b", (MapEntry("y", "tel:+{n}", "sip:second{n}@p"),))
        router = Router(config([first, second], tel_ext=("a", "b"), sip_src=("b",)))
        self.assertEqual(router.route(TEL, "tel:+5", "tel:+123").out_to, "sip:first23@p")
        self.assertEqual(router.route(TEL, "tel:+5", "tel:+923").out_to, "sip:second923@p")

    def test_several_parameters(self) -> None:
        """
        Several parameters in one pattern are carried across, reordered.
        """
        entry = MapEntry("e", "tel:+{cc};{ext}", "sip:{ext}@{cc}.pbx")
        router = Router(config([UriMap("m", (entry,))], tel_ext=("m",), sip_src=("m",)))
        routed = router.route(TEL, "tel:+46;2", "tel:+46;101")
        self.assertEqual((routed.out_to, routed.out_from), ("sip:101@46.pbx", "sip:2@46.pbx"))

    def test_no_maps(self) -> None:
        """
        An interface without extension maps takes no calls.
        """
        with self.assertRaises(RouteRefused):
            Router(CigConfig()).route(SIP, "sip:a@b", "sip:c@d")

    def test_long_uri_refused(self) -> None:
        """
        A URI over L{MAX_URI_LENGTH} is refused before matching.
        """
        entry = MapEntry("e", "tel:{a}", "sip:{a}")
        router = Router(config([UriMap("m", (entry,))], tel_ext=("m",), sip_ext=("m",)))
        long_uri = "tel:" + "1" * MAX_URI_LENGTH
        with self.assertRaises(RouteRefused) as caught:
            router.route(TEL, "tel:1", long_uri)
        self.assertIn("longer than", caught.exception.reason)

    def test_malformed_pattern_never_matches(self) -> None:
        """
        A map built by hand with a malformed pattern is skipped, not a crash.
        """
        bad = UriMap("m", (MapEntry("e", "tel:{a", "sip:{a}"),))
        router = Router(config([bad], tel_ext=("m",), sip_ext=("m",)))
        with self.assertRaises(RouteRefused):
            router.route(TEL, "tel:1", "tel:1")


LITERAL = st.text(alphabet="abcxyz:;@+.-=", min_size=0, max_size=6)
VALUE = st.text(alphabet="0123456789", min_size=0, max_size=12)


class RouteProperties(SynchronousTestCase):
    """
    Properties of route over generated maps and URIs.
    """

    @settings(max_examples=150, deadline=None)
    @given(
        tel_parts=st.lists(LITERAL, min_size=2, max_size=4),
        sip_parts=st.lists(LITERAL, min_size=2, max_size=4),
        values=st.lists(VALUE, min_size=3, max_size=3),
        data=st.data(),
    )
    def test_mirrored_entry_maps_back(
        self,
        tel_parts: list[str],
        sip_parts: list[str],
        values: list[str],
        data: st.DataObject,
    ) -> None:
        """
        A URI that an entry produces maps back, through the same entry used
        the other way round, to the URI it came from (parameters are digits
        and literals carry none, so every split is unambiguous; each side
        uses every parameter, in any order).
        """
        n = min(len(tel_parts), len(sip_parts)) - 1
        names = [f"p{i}" for i in range(n)]
        order = data.draw(st.permutations(names))

        def build(parts: list[str], use: list[str]) -> str:
            out = parts[0]
            for i, name in enumerate(use):
                # A literal between parameters keeps the split unambiguous.
                out += "{" + name + "}" + (parts[i + 1] or "/")
            return out

        tel = "tel:" + build(tel_parts, names)
        sip = "sip:" + build(sip_parts, list(order))
        entry = MapEntry("e", tel, sip)
        cfg = config(
            [UriMap("m", (entry,))],
            tel_ext=("m",),
            sip_ext=("m",),
        )
        router = Router(cfg)
        params = dict(zip(names, values))
        tel_uri = tel
        for name, value in params.items():
            tel_uri = tel_uri.replace("{" + name + "}", value)
        forward = router.route(TEL, tel_uri, tel_uri)
        back = router.route(SIP, forward.out_from, forward.out_to)
        self.assertEqual((back.out_to, back.out_from), (tel_uri, tel_uri))

    @settings(max_examples=150, deadline=None)
    @given(
        patterns=st.lists(
            st.tuples(
                st.text(alphabet="ab{}:;@+1", max_size=12),
                st.text(alphabet="ab{}:;@+1", max_size=12),
            ),
            max_size=4,
        ),
        incoming=st.sampled_from([TEL, SIP]),
        from_uri=st.text(max_size=300),
        to_uri=st.text(max_size=300),
    )
    def test_only_refusals(
        self,
        patterns: list[tuple[str, str]],
        incoming: str,
        from_uri: str,
        to_uri: str,
    ) -> None:
        """
        Whatever the maps (even malformed patterns) and URIs, route gives a
        routed call or a L{RouteRefused}, nothing else.
        """
        entries = tuple(MapEntry(f"e{i}", t, s) for i, (t, s) in enumerate(patterns))
        cfg = config([UriMap("m", entries)], tel_ext=("m",), sip_ext=("m", "missing"))
        try:
            routed = Router(cfg).route(TEL if incoming == TEL else SIP, from_uri, to_uri)
        except RouteRefused:
            return
        self.assertNotEqual(routed.incoming, routed.outgoing)
