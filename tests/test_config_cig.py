"""
Tests for C{cig.conf}: L{cryptify.config.parse_cig_config} and friends.
"""

import ipaddress
from pathlib import Path

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config import (
    AddressOverride,
    CigConfig,
    ConfigError,
    CrsLink,
    Endpoint,
    Interfaces,
    Logging,
    Mailbox,
    Mailboxes,
    Management,
    MapEntry,
    PortRange,
    RelayLink,
    SipInterface,
    TelInterface,
    TranslateMap,
    TranslateRule,
    UriMap,
    load_cig_config,
    parse_cig_config,
    render_cig_config,
)

FIXTURES = Path(__file__).parent / "fixtures" / "config"
ETC = Path(__file__).parent.parent / "etc"

SIMPLE_MAPS = (
    UriMap("maptel2sip", (MapEntry("telext2sip", "tel:+8888;{TELEXT}", "sip:{TELEXT}@pbx.com"),)),
    UriMap("mapsip2tel", (MapEntry("sipext2tel", "tel:+{SIPEXT}", "sip:9{SIPEXT}@secure.com"),)),
    UriMap("srctel2sip", (MapEntry("tel2sipsrc", "tel:+{TELEXT}", "sip:{TELEXT}@secure.com"),)),
)


class ManualExampleTests(SynchronousTestCase):
    """
    Every C{cig.conf} example of the CIG manual parses to what the manual
    says it means.
    """

    def test_simple(self) -> None:
        """
        The simple example: three maps, a tel interface with one extension
        map, a sip interface bound to 192.168.1.1 with RTP on 1024-2048
        and messaging on.
        """
        cfg = load_cig_config(FIXTURES / "cig-simple.conf")
        self.assertEqual(
            cfg,
            CigConfig(
                maps=SIMPLE_MAPS,
                interfaces=Interfaces(
                    TelInterface(extension_maps=("maptel2sip",)),
                    SipInterface(
                        extension_maps=("mapsip2tel",),
                        source_maps=("srctel2sip",),
                        bind="192.168.1.1",
                        rtp_port_range=PortRange(1024, 2048),
                        messaging=True,
                    ),
                ),
            ),
        )

    def test_simple_call(self) -> None:
        """
        The manual's walk-through: sip 101 calls sip:94670123456@secure.com.
        The sip extension map strips the 9 (to-URI C{tel:+4670123456}; the
        manual's C{tel:+464670123456} is a misprint), and with no source
        map on tel, tel's extension map turns C{sip:101@pbx.com} into the
        from-URI C{tel:+8888;101}.
        """
        cfg = load_cig_config(FIXTURES / "cig-simple.conf")
        to_map = cfg.get_map(cfg.sip.extension_maps[0])
        self.assertEqual(to_map.to_tel("sip:94670123456@secure.com"), "tel:+4670123456")
        self.assertEqual(cfg.tel.source_maps, ())
        from_map = cfg.get_map(cfg.tel.extension_maps[0])
        self.assertEqual(from_map.to_tel("sip:101@pbx.com"), "tel:+8888;101")
        # The other way: a secure user dials +8888;101.
        self.assertEqual(from_map.to_sip("tel:+8888;101"), "sip:101@pbx.com")
        source = cfg.get_map(cfg.sip.source_maps[0])
        self.assertEqual(source.to_sip("tel:+4670123456"), "sip:4670123456@secure.com")

    def test_elaborate(self) -> None:
        """
        The more elaborate example: comments everywhere, four maps, source
        maps on both interfaces; the calling domain is discarded.
        """
        cfg = load_cig_config(FIXTURES / "cig-elaborate.conf")
        self.assertEqual(
            [m.name for m in cfg.maps], ["maptel2sip", "srcsip2tel", "mapsip2tel", "srctel2sip"]
        )
        self.assertEqual(
            cfg.get_map("srcsip2tel").entries,
            (MapEntry("all", "tel:+8888;{series}", "sip:{series}@{discard}"),),
        )
        self.assertEqual(
            cfg.interfaces,
            Interfaces(
                TelInterface(extension_maps=("maptel2sip",), source_maps=("srctel2sip",)),
                SipInterface(
                    extension_maps=("mapsip2tel",),
                    source_maps=("srctel2sip",),
                    bind="192.168.1.1",
                    rtp_port_range=PortRange(1024, 2048),
                    messaging=True,
                ),
            ),
        )
        self.assertEqual(
            cfg.get_map("mapsip2tel").to_tel("sip:4670123456@any.where"), "tel:+4670123456"
        )
        self.assertEqual(
            cfg.get_map("srcsip2tel").to_tel("sip:101@pbx.com;user=phone"), "tel:+8888;101"
        )

    def test_elaborate_verbatim(self) -> None:
        """
        As printed, the elaborate example repeats a comment's C{*/} after
        its page break; that is reported where it stands.
        """
        path = FIXTURES / "broken" / "cig-elaborate-verbatim.conf"
        e = self.assertRaises(ConfigError, load_cig_config, path)
        self.assertEqual(
            str(e), f"{path}:56:1: '*/' outside a comment: '*/' (expected '/*' before it)"
        )

    def test_parameter_examples(self) -> None:
        """
        The two parameterized entries: C{+8888;1234} goes to
        C{1234@pbx.com}, an empty extension to C{sip:@pbx.com}, and
        C{{discard}} is empty when the SIP side is built from the TEL side.
        """
        cfg = load_cig_config(FIXTURES / "cig-param-examples.conf")
        tel2sip, sip2tel = cfg.maps
        self.assertEqual(tel2sip.to_sip("tel:+8888;1234"), "sip:1234@pbx.com")
        self.assertEqual(tel2sip.to_sip("tel:+8888;"), "sip:@pbx.com")
        self.assertEqual(sip2tel.to_tel("sip:1234@pbx.com;transport=tcp"), "tel:+8888;1234")
        self.assertEqual(sip2tel.to_sip("tel:+8888;1234"), "sip:1234@pbx.com")

    def test_outline(self) -> None:
        """
        The outline, filled in: several extension and source map lines,
        repeated overrides, and C{bind} without its C{;} at the end of a
        line.
        """
        cfg = load_cig_config(FIXTURES / "cig-outline.conf")
        self.assertEqual(
            cfg.tel,
            TelInterface(
                extension_maps=("telmap",),
                source_maps=("srcmap",),
                rtp_port_range=PortRange(20000, 20999),
                rtp_remote_addr_overrides=(
                    AddressOverride("203.0.113.10", "192.168.1.10"),
                    AddressOverride("203.0.113.11", "192.168.1.11"),
                ),
            ),
        )
        self.assertEqual(cfg.sip.bind, "192.168.1.1")
        self.assertFalse(cfg.sip.messaging)
        # First match wins: "second" is never reached for tel:+8888;9...
        self.assertEqual(cfg.get_map("telmap").to_sip("tel:+8888;9123"), "sip:9123@pbx.com")

    def test_alternative_deployment(self) -> None:
        """
        Alternative deployment: the public address of each CRS instance is
        replaced by its private one on the tel interface.
        """
        cfg = load_cig_config(FIXTURES / "cig-alternative.conf")
        self.assertEqual(
            cfg.tel.rtp_remote_addr_overrides,
            (
                AddressOverride("46.16.234.56", "192.168.1.15"),
                AddressOverride("46.16.235.34", "192.168.1.16"),
            ),
        )
        self.assertEqual(cfg.tel.override("46.16.235.34"), "192.168.1.16")
        self.assertEqual(cfg.tel.override("192.0.2.1"), "192.0.2.1")

    def test_mailboxes(self) -> None:
        """
        The mailbox outline: one read and two write mailboxes, each naming
        its translate maps; the translate rule example turns
        C{tel:+8888;12345} into C{12345@pbx.com}.
        """
        cfg = load_cig_config(FIXTURES / "cig-mailboxes.conf")
        self.assertEqual(
            cfg.mailboxes,
            Mailboxes(
                read=(Mailbox("/path/to/read/mailbox", "example_map1", "example_map2"),),
                write=(
                    Mailbox("/path/to/write/mailbox", "example_map3", "example_map4"),
                    Mailbox("/path/to/second/write/mailbox", "example_map3", "example_map4"),
                ),
            ),
        )
        self.assertEqual(
            cfg.get_translate_map("example_map4").translate("tel:+8888;12345"), "12345@pbx.com"
        )
        map3 = cfg.get_translate_map("example_map3")
        self.assertEqual(map3.translate("tel:+46701"), "sip:46701@secure.com")
        self.assertEqual(map3.translate("tel:8888"), "sip:unknown@secure.com")
        self.assertIsNone(map3.translate("sip:1@x"))

    def test_migration_maps(self) -> None:
        """
        Migration, example maps: C{sip}/C{tel} may come in either order,
        and the keyword, not the URI scheme, says which side is which.
        """
        cfg = load_cig_config(FIXTURES / "cig-migration-maps.conf")
        self.assertEqual(
            cfg.maps,
            (
                UriMap(
                    "telmap", (MapEntry("asterisk", "tel:+8888;{series}", "sip:{series}@pbx.com"),)
                ),
                UriMap(
                    "telsrc", (MapEntry("all", "tel:+8888;{series}", "sip:{series}@{discard}"),)
                ),
                UriMap("sipsrc", (MapEntry("all", "sip:{series}@{discard}", "tel:+{series}"),)),
                UriMap("sipmap", (MapEntry("all", "sip:{series}@secure.com", "tel:+{series}"),)),
            ),
        )

    def test_migration(self) -> None:
        """
        Migration: each translate_map gives the same result as the map of
        the same name (maps and translate maps have separate names), and
        the mailboxes use them.
        """
        cfg = load_cig_config(FIXTURES / "cig-migration.conf")
        self.assertEqual(
            cfg.translate_maps[0],
            TranslateMap("telmap", (TranslateRule("tel:+8888;{series}", "sip:{series}@pbx.com"),)),
        )
        self.assertEqual(
            cfg.get_translate_map("telmap").translate("tel:+8888;77"),
            cfg.get_map("telmap").to_sip("tel:+8888;77"),
        )
        self.assertEqual(
            cfg.get_translate_map("telsrc").translate("sip:77@pbx.com"),
            cfg.get_map("telsrc").to_tel("sip:77@pbx.com"),
        )
        self.assertEqual(
            cfg.get_translate_map("sipmap").translate("sip:4670@secure.com"), "tel:+4670"
        )
        self.assertEqual(
            cfg.mailboxes,
            Mailboxes(
                read=(Mailbox("/path/to/read/mailbox", "telsrc", "sipmap"),),
                write=(Mailbox("/path/to/write/mailbox", "sipsrc", "telmap"),),
            ),
        )

    def test_migration_verbatim(self) -> None:
        """
        As printed, the Migration example has one C{}} too many; the error
        points at it.
        """
        path = FIXTURES / "broken" / "cig-migration-verbatim.conf"
        e = self.assertRaises(ConfigError, load_cig_config, path)
        self.assertEqual(str(e), f"{path}:39:1: '}}' without a matching '{{': '}}'")

    def test_sample(self) -> None:
        """
        C{etc/cig.conf} parses, listening on loopback only and taking SIP
        from loopback.
        """
        cfg = load_cig_config(ETC / "cig.conf")
        self.assertEqual((cfg.sip.bind, cfg.sip.port), ("127.0.0.1", 15060))
        self.assertEqual(cfg.sip.trusted_peers, ("127.0.0.1/32",))
        self.assertEqual(cfg.management.bind, Endpoint("127.0.0.1", 18083))
        self.assertEqual(cfg.crs.address, Endpoint("127.0.0.1", 15223))


class DefaultsAndSettingsTests(SynchronousTestCase):
    """
    Defaults, and the blocks this implementation adds.
    """

    def test_empty(self) -> None:
        """
        An empty file gives the defaults.
        """
        cfg = parse_cig_config("")
        self.assertEqual(cfg, CigConfig())
        self.assertEqual((cfg.sip.bind, cfg.sip.port, cfg.sip.messaging), ("0.0.0.0", 5060, False))
        self.assertEqual(cfg.crs, CrsLink(Endpoint("127.0.0.1", 5223), "/opt/cig/userdata", None))
        self.assertEqual(cfg.relay, RelayLink("/run/cig/relay.sock"))
        self.assertEqual(
            cfg.management,
            Management(Endpoint("127.0.0.1", 8083), "/opt/cig/mgmt.cookie", "/run/cig/cig.sock"),
        )
        self.assertEqual(cfg.logging, Logging("/var/log/cig"))
        self.assertEqual(cfg.notify, "/opt/cig/scripts/notify.sh")

    def test_settings(self) -> None:
        """
        crs, relay, management, logging and notify, with C{;} after blocks
        allowed and keywords usable as names.
        """
        cfg = parse_cig_config(
            'crs { address crs.example.com 5223; keystore "/ks"; ca "/ca.pem"; };\n'
            'relay { control "/r.sock"; }\n'
            'management { bind ::1 0; cookie "/c"; socket "/s"; }\n'
            'logging { dir "/l" }\n'
            'notify "/n"\n'
            'map sip { entry tel tel "tel:{x}" sip "sip:{x}"; }\n'
            "interfaces { sip { extension map sip; } }\n"
        )
        self.assertEqual(cfg.crs, CrsLink(Endpoint("crs.example.com", 5223), "/ks", "/ca.pem"))
        self.assertEqual(cfg.relay.control, "/r.sock")
        self.assertEqual(cfg.management, Management(Endpoint("::1", 0), "/c", "/s"))
        self.assertEqual(cfg.logging.dir, "/l")
        self.assertEqual(cfg.notify, "/n")
        self.assertEqual(cfg.get_map("sip").entries, (MapEntry("tel", "tel:{x}", "sip:{x}"),))

    def test_fast_path(self) -> None:
        """C{relay { fast_path auto|off; }}: C{auto} by default, anything else refused."""
        self.assertEqual(parse_cig_config("").relay.fast_path, "auto")
        cfg = parse_cig_config('relay { fast_path off; control "/r.sock"; }')
        self.assertEqual(cfg.relay, RelayLink("/r.sock", "off"))
        for text in ("relay { fast_path on; }", "relay { fast_path off; fast_path auto; }"):
            with self.assertRaises(ConfigError):
                parse_cig_config(text)

    def test_sip_peers_and_tcp(self) -> None:
        """
        C{trusted_peer} (an address or a CIDR range, repeatable),
        C{untrusted_answer} and C{tcp_idle_timeout} in the sip interface;
        defaults: no extra peers, 403, 300 seconds.
        """
        cfg = parse_cig_config("")
        self.assertEqual(cfg.sip.trusted_peers, ())
        self.assertEqual((cfg.sip.untrusted_answer, cfg.sip.tcp_idle_timeout), ("403", 300))
        cfg = parse_cig_config(
            "interfaces { sip { trusted_peer 192.0.2.7; trusted_peer 10.0.0.0/8;\n"
            "trusted_peer fd00::/8; untrusted_answer silence; tcp_idle_timeout 45; } }"
        )
        self.assertEqual(cfg.sip.trusted_peers, ("192.0.2.7/32", "10.0.0.0/8", "fd00::/8"))
        self.assertEqual((cfg.sip.untrusted_answer, cfg.sip.tcp_idle_timeout), ("silence", 45))

    def test_sip_peer_errors(self) -> None:
        """
        Bad peers, answers and timeouts are refused with the place and
        what was expected.
        """
        cases = {
            "trusted_peer 10.0.0.1/8;": "1:33: bad CIDR range: '10.0.0.1/8' (expected"
            " ADDRESS/PREFIX, e.g. 10.0.0.0/8; 10.0.0.1/8 has host bits set)",
            "trusted_peer pbx;": "1:33: bad IP address: 'pbx' (expected an IPv4 or IPv6 address)",
            "trusted_peer 10.0.0.1; trusted_peer 10.0.0.1;": "1:56: peer listed twice"
            " (first on line 1): '10.0.0.1'",
            "untrusted_answer 404;": "1:37: bad untrusted_answer: '404' (expected 403 or silence)",
            "tcp_idle_timeout 0;": "1:37: timeout out of range: '0' (expected a number from 1"
            " to 86400)",
        }
        for text, message in cases.items():
            with self.assertRaises(ConfigError) as raised:
                parse_cig_config("interfaces { sip { " + text + " } }")
            self.assertEqual(str(raised.exception), f"<string>:{message}", text)
        with self.assertRaises(ConfigError) as raised:
            parse_cig_config("interfaces { tel { trusted_peer 10.0.0.1; } }")
        self.assertIn("'trusted_peer' belongs in the sip interface", str(raised.exception))

    def test_escapes(self) -> None:
        """
        C{\\"} and C{\\\\} in strings.
        """
        cfg = parse_cig_config('notify "/a \\"b\\" \\\\c";')
        self.assertEqual(cfg.notify, '/a "b" \\c')


BROKEN = {
    "cig-undefined-map.conf": "6:19: reference to an undefined map: 'b' (expected one of: a)",
    "cig-duplicate-map.conf": "3:5: duplicate map name (first on line 1): 'a'",
    "cig-port-range-reversed.conf": "3:20: range is empty: '2048' (expected LOW <= 1024)",
    "cig-missing-semicolon.conf": "3:22: missing ';' before: 'messaging'"
    " (expected ';' or a line break)",
    "cig-bad-ip.conf": "3:10: bad IP address: '192.168.1.256' (expected an IPv4 or IPv6 address)",
    "cig-override-one-address.conf": "3:41: unexpected: ';' (expected a name or value)",
    "cig-unknown-keyword.conf": "3:5: unknown keyword: 'mesaging' (expected 'extension',"
    " 'source', 'bind', 'messaging', 'rtp_port_range', 'rtp_remote_addr_override',"
    " 'trusted_peer', 'untrusted_answer', 'tcp_idle_timeout',"
    " 'pbx_account', 'tls_certificate', 'tls_key', 'tls_ca',...)",
    "cig-bad-pattern.conf": "2:21: '{' without a closing '}': 'tel:+{x'"
    " (expected {name} parameters)",
    "cig-unterminated-comment.conf": "1:1: unterminated comment: '/' (expected '*/')",
    "cig-mailbox-incomplete.conf": "2:3: read mailbox has no 'map_to': 'read'"
    " (expected path, map_from and map_to)",
    "cig-bind-on-tel.conf": "3:5: 'bind' belongs in the sip interface: 'bind'",
    "cig-bad-bool.conf": "3:15: unexpected name or value: 'yes' (expected 'true' or 'false')",
    "cig-unterminated-string.conf": "2:30: unterminated string: '\"'"
    " (expected a closing '\"' on this line)",
    "cig-duplicate-crs-address.conf": "3:3: duplicate 'address' (first on line 2): 'address'",
}


class ErrorTests(SynchronousTestCase):
    """
    Errors name file, line and column, quote the text and say what was
    expected.
    """

    def test_broken_fixtures(self) -> None:
        """
        Each broken fixture fails with its message.
        """
        for name, message in BROKEN.items():
            path = FIXTURES / "broken" / name
            e = self.assertRaises(ConfigError, load_cig_config, path)
            self.assertEqual(str(e), f"{path}:{message}")

    def assertError(self, text: str, message: str) -> None:
        e = self.assertRaises(ConfigError, parse_cig_config, text, "cig.conf")
        self.assertEqual(str(e), message)

    def test_end_of_file(self) -> None:
        """
        A block left open is reported at the end of the file.
        """
        self.assertError(
            "interfaces {\n  tel {\n  }\n",
            "cig.conf:4:1: unexpected end of file (expected 'tel', 'sip' or '}')",
        )

    def test_references(self) -> None:
        """
        Mailboxes must name translate maps, not maps.
        """
        self.assertError(
            'map m { }\nmailboxes { write { path "/p"; map_from translate_map m;'
            " map_to translate_map m; } }\n",
            "cig.conf:2:55: reference to an undefined translate_map: 'm'"
            " (expected no translate_map is defined)",
        )

    def test_duplicates(self) -> None:
        """
        Duplicate blocks, entries, interfaces and mailbox paths are errors.
        """
        self.assertError(
            "logging { }\nlogging { }\n",
            "cig.conf:2:1: duplicate 'logging' (first on line 1): 'logging'",
        )
        self.assertError(
            'map m {\n entry e tel "a" sip "b";\n entry e tel "c" sip "d";\n}\n',
            "cig.conf:3:8: duplicate entry name (first on line 2): 'e'",
        )
        self.assertError(
            "interfaces { tel { } tel { } }",
            "cig.conf:1:22: duplicate 'tel' interface (first on line 1): 'tel'",
        )
        self.assertError(
            "translate_map t { }\nmailboxes {\n"
            ' read { path "/m"; map_from translate_map t; map_to translate_map t; }\n'
            ' write { path "/m"; map_from translate_map t; map_to translate_map t; }\n}\n',
            "cig.conf:4:15: mailbox path used twice (first on line 3): '/m'",
        )

    def test_values(self) -> None:
        """
        Ports, hosts and names are checked.
        """
        self.assertError(
            "interfaces { sip { rtp_port_range 0 10; } }",
            "cig.conf:1:35: port out of range: '0' (expected a number from 1 to 65535)",
        )
        self.assertError(
            "crs { address -bad- 5223; }",
            "cig.conf:1:15: bad host: '-bad-' (expected an IP address or a DNS name)",
        )
        self.assertError(
            "map a:b { }",
            "cig.conf:1:5: bad map name: 'a:b' (expected letters, digits, '_', '-', '.')",
        )
        self.assertError('notify "";', "cig.conf:1:8: bad path: '' (expected a file system path)")


# Generated configurations.

names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", fullmatch=True)
ips = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="{}"),
    max_size=8,
)
patterns = st.lists(
    st.one_of(texts, st.from_regex(r"\{[A-Za-z0-9_]{1,4}\}", fullmatch=True)), max_size=4
).map("".join)
paths = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=16)
ports = st.integers(1, 65535)


def unique_by_name(items: list, key=lambda x: x.name) -> tuple:  # type: ignore[no-untyped-def,type-arg]
    seen = {}
    for item in items:
        seen.setdefault(key(item), item)
    return tuple(seen.values())


networks = st.builds(
    lambda address, prefix: str(ipaddress.ip_network(f"{address}/{prefix}", strict=False)),
    st.ip_addresses(v=4),
    st.integers(0, 32),
) | st.builds(
    lambda address, prefix: str(ipaddress.ip_network(f"{address}/{prefix}", strict=False)),
    st.ip_addresses(v=6),
    st.integers(0, 128),
)


@st.composite
def cig_configs(draw: st.DrawFn) -> CigConfig:
    maps = unique_by_name(
        draw(
            st.lists(
                st.builds(
                    UriMap,
                    names,
                    st.lists(st.builds(MapEntry, names, patterns, patterns), max_size=3).map(
                        unique_by_name
                    ),
                ),
                max_size=3,
            )
        )
    )
    tmaps = unique_by_name(
        draw(
            st.lists(
                st.builds(
                    TranslateMap,
                    names,
                    st.lists(st.builds(TranslateRule, patterns, patterns), max_size=3).map(tuple),
                ),
                max_size=3,
            )
        )
    )
    map_names = [m.name for m in maps]
    refs = (
        st.lists(st.sampled_from(map_names), unique=True, max_size=2).map(tuple)
        if maps
        else st.just(())
    )
    ranges = st.none() | st.tuples(ports, ports).map(lambda p: PortRange(min(p), max(p)))
    overrides = st.lists(st.tuples(ips, ips), max_size=2).map(
        lambda xs: unique_by_name([AddressOverride(a, b) for a, b in xs], lambda o: o.original)
    )
    tel = TelInterface(draw(refs), draw(refs), draw(ranges), draw(overrides))
    sip = SipInterface(
        draw(refs),
        draw(refs),
        draw(ips),
        draw(st.integers(0, 65535)),
        draw(st.booleans()),
        draw(ranges),
        draw(overrides),
        draw(st.lists(networks, unique=True, max_size=3).map(tuple)),
        draw(st.sampled_from(["403", "silence"])),
        draw(st.integers(1, 86400)),
    )
    boxes = Mailboxes()
    if tmaps:
        tnames = st.sampled_from([t.name for t in tmaps])
        box_list = unique_by_name(
            draw(st.lists(st.builds(Mailbox, paths, tnames, tnames), max_size=4)), lambda b: b.path
        )
        split = draw(st.integers(0, len(box_list)))
        boxes = Mailboxes(box_list[:split], box_list[split:])
    return CigConfig(
        maps=maps,
        translate_maps=tmaps,
        interfaces=Interfaces(tel, sip),
        mailboxes=boxes,
        crs=CrsLink(
            Endpoint(draw(ips | st.just("crs.example.com")), draw(ports)),
            draw(paths),
            draw(st.none() | paths),
        ),
        relay=RelayLink(draw(paths), draw(st.sampled_from(["auto", "off"]))),
        management=Management(
            Endpoint(draw(ips), draw(st.integers(0, 65535))), draw(paths), draw(paths)
        ),
        logging=Logging(draw(paths)),
        notify=draw(paths),
    )


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        pos = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from(b' \n"/*;{}\\:.0a9\xff\x00\xc3'))
        if op == "replace" and pos < len(data):
            data[pos] = byte
        elif op == "insert":
            data.insert(pos, byte)
        elif pos < len(data):
            del data[pos]
    return bytes(data)


ORIGINALS = [p.read_bytes() for p in sorted(FIXTURES.glob("cig-*.conf"))]


class PropertyTests(SynchronousTestCase):
    """
    Round trips and mutations.
    """

    @settings(max_examples=200, deadline=None)
    @given(cig_configs())
    def test_round_trip(self, cfg: CigConfig) -> None:
        """
        Rendering a configuration and parsing the text gives it back.
        """
        self.assertEqual(parse_cig_config(render_cig_config(cfg)), cfg)

    def test_fixtures_round_trip(self) -> None:
        """
        The manual's examples round-trip too.
        """
        for path in sorted(FIXTURES.glob("cig-*.conf")):
            cfg = load_cig_config(path)
            self.assertEqual(parse_cig_config(render_cig_config(cfg)), cfg, path)

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(ORIGINALS).flatmap(mutated))
    def test_mutations(self, data: bytes) -> None:
        """
        Random byte changes give a L{ConfigError} or a valid configuration,
        never another exception.
        """
        try:
            parse_cig_config(data)
        except ConfigError:
            pass


class MapLinesTests(SynchronousTestCase):
    """cig.log records every map entry, translate rule and mailbox at start (INIT lines)."""

    def test_every_entry_in_order(self) -> None:
        from cryptify.config.cig_model import map_lines
        from cryptify.plugins.cig import describe

        cfg = load_cig_config(FIXTURES / "cig-simple.conf")
        mail = load_cig_config(FIXTURES / "cig-mailboxes.conf")
        cfg = attrs.evolve(cfg, translate_maps=mail.translate_maps, mailboxes=mail.mailboxes)
        lines = map_lines(cfg)
        self.assertEqual(
            lines[:3],
            [
                'map maptel2sip entry telext2sip: tel "tel:+8888;{TELEXT}" '
                'sip "sip:{TELEXT}@pbx.com"',
                'map mapsip2tel entry sipext2tel: tel "tel:+{SIPEXT}" '
                'sip "sip:9{SIPEXT}@secure.com"',
                'map srctel2sip entry tel2sipsrc: tel "tel:+{TELEXT}" '
                'sip "sip:{TELEXT}@secure.com"',
            ],
        )
        self.assertIn(
            'translate_map example_map3 rule 2: match "tel:{any}" '
            'translation "sip:unknown@secure.com"',
            lines,
        )
        self.assertEqual(
            lines[-1],
            'mailbox write "/path/to/second/write/mailbox": '
            "map_from translate_map example_map3, map_to translate_map example_map4",
        )
        self.assertEqual(len(lines), 3 + 5 + 3)
        described = describe(cfg)
        self.assertEqual(described[-len(lines) - 2 : -2], lines)
