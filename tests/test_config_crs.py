"""
Tests for the CRS configuration files: C{crs.conf}, C{crs-local.conf} and
C{iw-crs.conf}.
"""

import ipaddress
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config import (
    AddressMap,
    ConfigError,
    Cps,
    CrsConfig,
    CrsGlobal,
    CrsLocalConfig,
    Endpoint,
    IwCrs,
    IwCrsConfig,
    KeepAlive,
    Pool,
    PoolHost,
    RedisSettings,
    load_crs_config,
    load_crs_local_config,
    load_iw_crs_config,
    parse_crs_config,
    parse_crs_local_config,
    parse_iw_crs_config,
    pool_host_for,
    render_crs_config,
    render_crs_local_config,
    render_iw_crs_config,
)

FIXTURES = Path(__file__).parent / "fixtures" / "config"
ETC = Path(__file__).parent.parent / "etc"
KEY = "kQ1bXSKl3xHc0u5hZ0bN7w=="
TWO_HOSTS = Pool((PoolHost("crs1", "203.0.113.101"), PoolHost("crs2", "203.0.113.102")))


class ManualExampleTests(SynchronousTestCase):
    """
    Every C{crs.conf}, C{crs-local.conf} and C{iw-crs.conf} example of the
    CRS manual parses to what the manual says it means.
    """

    def test_install(self) -> None:
        """
        4.1.2.1: the shared secret, and two hosts with their public IPs, in
        C{host} order (the order slots are split in).
        """
        cfg = load_crs_config(FIXTURES / "crs-install.conf")
        self.assertEqual(cfg, CrsConfig(CrsGlobal(key=KEY), TWO_HOSTS))
        self.assertEqual(cfg.pool.names, ("crs1", "crs2"))
        self.assertEqual(cfg.pool.host("crs2"), PoolHost("crs2", "203.0.113.102"))

    def test_push(self) -> None:
        """
        4.8: a CPS connection, the push feature and direct APNS push.
        """
        cfg = load_crs_config(FIXTURES / "crs-push.conf")
        self.assertEqual(cfg.global_.cps, Cps("cps.cryptify.net", 5230, "id", "shared-secret"))
        self.assertEqual(cfg.global_.features, ("push",))
        self.assertTrue(cfg.global_.push)
        self.assertEqual(cfg.global_.apns_type, "direct")

    def test_push_disabled(self) -> None:
        """
        4.8.1: an empty C{features} line means no push, and APNS goes
        through the CPS by default.
        """
        cfg = load_crs_config(FIXTURES / "crs-push-disabled.conf")
        self.assertEqual(cfg.global_.features, ())
        self.assertFalse(cfg.global_.push)
        self.assertEqual(cfg.global_.apns_type, "cps")

    def test_keep_alive(self) -> None:
        """
        4.10: C{keep-alive} rules keep their order, and the first whose
        range holds a client's address applies; none means the default.
        """
        cfg = load_crs_config(FIXTURES / "crs-keep-alive.conf")
        rules = cfg.global_.keep_alive
        self.assertEqual(
            rules,
            (
                KeepAlive(ipaddress.ip_network("10.20.0.0/16"), "tcp", 300000),
                KeepAlive(ipaddress.ip_network("10.0.0.0/8"), "ws", 600000),
                KeepAlive(ipaddress.ip_network("2001:db8::/32"), "ws", 900000),
            ),
        )
        self.assertIs(cfg.global_.keep_alive_for("10.20.1.1"), rules[0])
        self.assertIs(cfg.global_.keep_alive_for("10.21.1.1"), rules[1])
        self.assertIs(cfg.global_.keep_alive_for("2001:db8::1"), rules[2])
        self.assertIsNone(cfg.global_.keep_alive_for("192.0.2.1"))

    def test_addr_map(self) -> None:
        """
        4.11: public addresses in C{[POOL]}, VLAN addresses by C{addr-map}.
        """
        cfg = load_crs_config(FIXTURES / "crs-addr-map.conf")
        self.assertEqual(cfg.pool, TWO_HOSTS)
        self.assertEqual(
            cfg.global_.addr_map,
            (
                AddressMap("203.0.113.101", "198.51.100.1"),
                AddressMap("203.0.113.102", "198.51.100.2"),
            ),
        )
        self.assertEqual(cfg.global_.map_address("203.0.113.102"), "198.51.100.2")
        self.assertEqual(cfg.global_.map_address("192.0.2.9"), "192.0.2.9")

    def test_local(self) -> None:
        """
        4.1.2.2 and the upgrade steps: name and each db-backup mode.
        """
        self.assertEqual(
            load_crs_local_config(FIXTURES / "crs-local-install.conf"),
            CrsLocalConfig("crs1", "none"),
        )
        self.assertEqual(
            load_crs_local_config(FIXTURES / "crs-local-upgrade.conf"),
            CrsLocalConfig("crs2", "replicate-from-peer"),
        )
        self.assertEqual(
            load_crs_local_config(FIXTURES / "crs-local-read-from.conf"),
            CrsLocalConfig("crs1", "read-from"),
        )

    def test_iw_crs(self) -> None:
        """
        4.5: one line per inter-working instance, comment optional.
        """
        cfg = load_iw_crs_config(FIXTURES / "iw-crs.conf")
        self.assertEqual(
            cfg.instances,
            (
                IwCrs("192.168.1.2", "Xk29sPq81Lm0"),
                IwCrs("198.51.100.7", "b7Hq2zWm4", "operator B, instance 1"),
                IwCrs("198.51.100.8", "b7Hq2zWm4", "operator B, instance 2"),
            ),
        )
        self.assertEqual(cfg.get("198.51.100.8"), cfg.instances[2])
        self.assertIsNone(cfg.get("192.0.2.1"))

    def test_samples(self) -> None:
        """
        The sample files in C{etc/} parse, on loopback.
        """
        cfg = load_crs_config(ETC / "crs.conf")
        self.assertEqual(cfg.global_.listen.host, "127.0.0.1")
        local = load_crs_local_config(ETC / "crs-local.conf")
        self.assertEqual(pool_host_for(cfg, local), cfg.pool.hosts[0])
        load_iw_crs_config(ETC / "iw-crs.conf")


class DefaultsTests(SynchronousTestCase):
    """
    Empty files give the documented defaults.
    """

    def test_crs_defaults(self) -> None:
        """
        An empty C{crs.conf}: standard ports and directories, managed Redis.
        """
        cfg = parse_crs_config("")
        g = cfg.global_
        self.assertEqual(cfg, CrsConfig())
        self.assertEqual(g.listen, Endpoint("0.0.0.0", 5223))
        self.assertEqual(g.relay, Endpoint("0.0.0.0", 146))
        self.assertEqual((g.pool_port, g.sync_port, g.iw_port), (8090, 8091, 8080))
        self.assertEqual(g.management, "/run/crs/crs.sock")
        self.assertEqual(g.data_dir, "/opt/crs/data")
        self.assertEqual(g.log_dir, "/var/log/crs")
        self.assertEqual(
            g.redis,
            RedisSettings(
                "managed",
                "redis-server",
                Endpoint("127.0.0.1", 6390),
                Endpoint("127.0.0.1", 6391),
                Endpoint("127.0.0.1", 6392),
                None,
            ),
        )
        self.assertEqual(cfg.pool.hosts, ())
        self.assertEqual(g.tls_paths(), ("/opt/crs/data/crs.crt", "/opt/crs/data/crs.key"))
        absolute = parse_crs_config("[GLOBAL]\ntls-key /etc/k.pem\n").global_
        self.assertEqual(absolute.tls_paths()[1], "/etc/k.pem")

    def test_local_and_iw_defaults(self) -> None:
        """
        Empty C{crs-local.conf}: no name, no backup; empty C{iw-crs.conf}:
        no peers.
        """
        self.assertEqual(parse_crs_local_config(""), CrsLocalConfig(None, "none"))
        self.assertEqual(parse_iw_crs_config("# none yet\n"), IwCrsConfig(()))

    def test_comments_blank_lines_quotes(self) -> None:
        """
        Comments, blank lines, CRLF and quoted values with blanks.
        """
        cfg = parse_crs_config(
            '# top\r\n\r\n[GLOBAL]  # here\r\n  data-dir "/srv/crs data"  # quoted\r\n'
        )
        self.assertEqual(cfg.global_.data_dir, "/srv/crs data")

    def test_external_redis(self) -> None:
        """
        External Redis servers, with a password file.
        """
        cfg = parse_crs_config(
            "[GLOBAL]\nredis external\nredis-high redis.example.com 6379\n"
            "redis-password-file /etc/crs/redis.pass\n"
        )
        self.assertEqual(cfg.global_.redis.mode, "external")
        self.assertEqual(cfg.global_.redis.high, Endpoint("redis.example.com", 6379))
        self.assertEqual(cfg.global_.redis.password_file, "/etc/crs/redis.pass")


class PoolHostForTests(SynchronousTestCase):
    """
    L{pool_host_for} ties C{crsname} to the pool.
    """

    def test_found(self) -> None:
        """
        C{crsname} names a host of the pool: that host.
        """
        cfg = CrsConfig(pool=TWO_HOSTS)
        self.assertEqual(pool_host_for(cfg, CrsLocalConfig("crs2")), TWO_HOSTS.hosts[1])

    def test_missing(self) -> None:
        """
        A name that is not a host, or no name with a pool, is an error; no
        name and no pool is a single instance.
        """
        cfg = CrsConfig(pool=TWO_HOSTS)
        e = self.assertRaises(ConfigError, pool_host_for, cfg, CrsLocalConfig("crs3"))
        self.assertEqual(
            str(e),
            "crs-local.conf: crsname is not a host of the pool in crs.conf: 'crs3'"
            " (expected crs1, crs2)",
        )
        self.assertRaises(ConfigError, pool_host_for, cfg, CrsLocalConfig())
        self.assertIsNone(pool_host_for(CrsConfig(), CrsLocalConfig()))


BROKEN = {
    "crs-unknown-directive.conf": "4:1: unknown directive: 'lisen' (expected one of ",
    "crs-bad-cidr.conf": "2:12: bad CIDR range: '10.0.0.0/33' (expected ADDRESS/PREFIX",
    "crs-bad-ip.conf": "2:8: bad IP address: '127.0.0.300' (expected an IPv4 or IPv6 address)",
    "crs-bad-port.conf": "2:15: port out of range: '65536' (expected a number from 0 to 65535)",
    "crs-host-without-ip.conf": "5:6: host has no ip line: 'crs2' (expected ip crs2 ADDR)",
    "crs-ip-undeclared-host.conf": "4:4: ip for a host that is not declared: 'crs3'",
    "crs-duplicate-host.conf": "3:6: duplicate host (first on line 2): 'crs1'",
    "crs-duplicate-key.conf": "3:1: duplicate directive (first on line 2): 'key'",
    "crs-push-without-cps.conf": "2:1: feature push needs a cps line: 'features'",
    "crs-local-bad-db-backup.conf": "2:11: unknown db-backup mode: 'sometimes'"
    " (expected none, replicate-from-peer, read-from)",
    "iw-crs-duplicate-ip.conf": "2:8: duplicate iw-crs address (first on line 1): '192.168.1.2'",
    "iw-crs-bad-secret.conf": "1:20: bad shared secret: 'abc-123'"
    " (expected letters and digits only)",
}


def load_any(path: Path) -> object:
    name = path.name
    if name.startswith("iw-crs"):
        return load_iw_crs_config(path)
    if name.startswith("crs-local"):
        return load_crs_local_config(path)
    return load_crs_config(path)


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
            e = self.assertRaises(ConfigError, load_any, path)
            self.assertTrue(str(e).startswith(f"{path}:{message}"), str(e))

    def assertError(self, text: str, message: str, parse=parse_crs_config) -> None:  # type: ignore[no-untyped-def]
        e = self.assertRaises(ConfigError, parse, text, "crs.conf")
        self.assertEqual(str(e), message)

    def test_attributes(self) -> None:
        """
        L{ConfigError} carries its parts as attributes.
        """
        e = self.assertRaises(ConfigError, parse_crs_config, "[GLOBAL]\nlisten ::1 x\n", "f")
        self.assertEqual(
            (e.filename, e.line, e.column, e.text, e.expected),
            ("f", 2, 12, "x", "a number from 0 to 65535"),
        )

    def test_arity(self) -> None:
        """
        Too few values point past the last one; too many at the first extra.
        """
        self.assertError(
            "[GLOBAL]\nlisten 127.0.0.1\n",
            "crs.conf:2:18: missing PORT (expected listen ADDR PORT)",
        )
        self.assertError(
            "[GLOBAL]\npool-port 1 2\n",
            "crs.conf:2:13: unexpected value: '2' (expected pool-port PORT)",
        )

    def test_sections(self) -> None:
        """
        Directives need a section, the right one; headers are known and once.
        """
        self.assertError(
            "key abc\n",
            "crs.conf:1:1: directive before any section header: 'key'"
            " (expected [GLOBAL] or [POOL] first)",
        )
        self.assertError(
            "[GLOBAL]\nhost crs1\n",
            "crs.conf:2:1: directive belongs in the [POOL] section, not [GLOBAL]: 'host'"
            " (expected a [POOL] header before it)",
        )
        self.assertError(
            "[global]\n", "crs.conf:1:1: unknown section: '[global]' (expected [GLOBAL] or [POOL])"
        )
        self.assertError(
            "[POOL]\n[POOL]\n", "crs.conf:2:1: duplicate section (first on line 1): '[POOL]'"
        )
        self.assertError(
            "[GLOBAL] key\n",
            "crs.conf:1:10: unexpected value: 'key' (expected end of line)",
        )

    def test_values(self) -> None:
        """
        Enumerated values, ranges and strings are checked.
        """
        self.assertError(
            "[GLOBAL]\nkeep-alive 10.0.0.0/8 udp 10\n",
            "crs.conf:2:23: unknown keep-alive method: 'udp' (expected tcp or ws)",
        )
        self.assertError(
            "[GLOBAL]\nkeep-alive 10.0.0.0/8 ws 0\n",
            "crs.conf:2:26: interval out of range: '0' (expected a number from 1 to 86400000)",
        )
        self.assertError(
            "[GLOBAL]\nfeatures push push\n",
            "crs.conf:2:15: feature listed twice: 'push'",
        )
        self.assertError(
            "[GLOBAL]\nfeatures pull\n",
            "crs.conf:2:10: unknown feature: 'pull' (expected push)",
        )
        self.assertError(
            '[GLOBAL]\ndata-dir "/opt\n',
            "crs.conf:2:10: unterminated string: '\"' (expected a closing '\"')",
        )
        self.assertError(
            "[GLOBAL]\nredis-password-file /x\n",
            "crs.conf:2:1: redis-password-file applies only to external Redis:"
            " 'redis-password-file' (expected redis external)",
        )
        self.assertError(
            "[GLOBAL]\naddr-map 192.0.2.1 192.0.2.2\naddr-map 192.0.2.1 192.0.2.3\n",
            "crs.conf:3:10: address already mapped (first on line 2): '192.0.2.1'",
        )
        self.assertError(
            "[POOL]\nhost a\nhost b\nip a 192.0.2.1\nip b 192.0.2.1\n",
            "crs.conf:5:6: address already used by host a: '192.0.2.1'",
        )
        self.assertError(
            "[GLOBAL]\nkey a\x01b\n",
            "crs.conf:2:6: unexpected character: '\\x01'",
        )

    def test_bad_utf8(self) -> None:
        """
        Bytes that are not UTF-8 are an error at their position.
        """
        self.assertError(
            b"[GLOBAL]\nkey \xff\n",  # type: ignore[arg-type]
            "crs.conf:2:5: not valid UTF-8: '\xff'",
        )

    def test_iw_crs_comment(self) -> None:
        """
        After IP and secret only C{comment TEXT} may follow.
        """
        self.assertError(
            "iw-crs 192.0.2.1 abc note x\n",
            "crs.conf:1:22: unexpected value: 'note'"
            ' (expected iw-crs IP SECRET [comment "TEXT"])',
            parse_iw_crs_config,
        )
        self.assertError(
            "iw-crs 192.0.2.1 abc comment\n",
            'crs.conf:1:30: missing TEXT (expected iw-crs IP SECRET [comment "TEXT"])',
            parse_iw_crs_config,
        )

    def test_unreadable(self) -> None:
        """
        A file that cannot be read is a L{ConfigError} naming it.
        """
        e = self.assertRaises(ConfigError, load_crs_config, FIXTURES / "no-such.conf")
        self.assertIn("no-such.conf: cannot read", str(e))


# Generated configurations.

ips = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}", fullmatch=True)
paths = st.one_of(
    st.from_regex(r"/[A-Za-z0-9_./-]{1,20}", fullmatch=True),
    st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\n\r"),
        min_size=1,
        max_size=20,
    ),
)
ports = st.integers(1, 65535)
endpoints = st.builds(Endpoint, ips, st.integers(0, 65535))
hosts = st.one_of(ips, st.sampled_from(["localhost", "redis.example.com", "cps.cryptify.net"]))
secrets = st.from_regex(r"[A-Za-z0-9+/=_-]{1,30}", fullmatch=True)
networks = st.one_of(
    st.ip_addresses(v=4).flatmap(
        lambda a: st.integers(0, 32).map(lambda n: ipaddress.ip_network(f"{a}/{n}", strict=False))
    ),
    st.ip_addresses(v=6).flatmap(
        lambda a: st.integers(0, 128).map(lambda n: ipaddress.ip_network(f"{a}/{n}", strict=False))
    ),
)


@st.composite
def redis_settings(draw: st.DrawFn) -> RedisSettings:
    mode = draw(st.sampled_from(["managed", "external"]))
    redis_endpoints = st.builds(Endpoint, hosts, ports)
    return RedisSettings(
        mode=mode,
        binary=draw(paths) if mode == "managed" else "redis-server",
        high=draw(redis_endpoints),
        low=draw(redis_endpoints),
        backup=draw(redis_endpoints),
        password_file=draw(st.none() | paths) if mode == "external" else None,
    )


@st.composite
def crs_configs(draw: st.DrawFn) -> CrsConfig:
    cps = draw(st.none() | st.builds(Cps, hosts, ports, names, secrets))
    features = ("push",) if cps is not None and draw(st.booleans()) else ()
    mapped = draw(st.lists(ips, unique=True, max_size=3))
    glob = CrsGlobal(
        key=draw(st.none() | secrets),
        features=features,
        cps=cps,
        apns_type=draw(st.sampled_from(["cps", "direct"])),
        keep_alive=tuple(
            draw(
                st.lists(
                    st.builds(
                        KeepAlive,
                        networks,
                        st.sampled_from(["tcp", "ws"]),
                        st.integers(1, 86400000),
                    ),
                    max_size=3,
                )
            )
        ),
        addr_map=tuple(AddressMap(ip, draw(ips)) for ip in mapped),
        listen=draw(endpoints),
        tls_certificate=draw(st.none() | paths),
        tls_key=draw(st.none() | paths),
        admin_listen=draw(st.none() | endpoints),
        relay=draw(endpoints),
        relay_control=draw(paths),
        pool_port=draw(ports),
        sync_port=draw(ports),
        iw_port=draw(ports),
        management=draw(paths),
        management_group=draw(names),
        data_dir=draw(paths),
        accounts_dir=draw(paths),
        log_dir=draw(paths),
        notify=draw(paths),
        notify_timeout=draw(st.integers(1, 3600 * 1000).map(lambda ms: ms / 1000)),
        redis=draw(redis_settings()),
    )
    host_names = draw(st.lists(names, unique=True, max_size=4))
    host_ips = draw(st.lists(ips, unique=True, min_size=len(host_names), max_size=len(host_names)))
    pool = Pool(tuple(PoolHost(n, ip) for n, ip in zip(host_names, host_ips)))
    return CrsConfig(glob, pool)


local_configs = st.builds(
    CrsLocalConfig,
    st.none() | names,
    st.sampled_from(["none", "replicate-from-peer", "read-from"]),
    st.none(),
    st.integers(0, 256),
)


@st.composite
def iw_configs(draw: st.DrawFn) -> IwCrsConfig:
    addresses = draw(st.lists(ips, unique=True, max_size=4))
    return IwCrsConfig(
        tuple(
            IwCrs(
                ip,
                draw(st.from_regex(r"[A-Za-z0-9]{1,20}", fullmatch=True)),
                draw(st.none() | paths),
            )
            for ip in addresses
        )
    )


class RoundTripTests(SynchronousTestCase):
    """
    Rendering a configuration and parsing the text gives it back.
    """

    @settings(max_examples=200, deadline=None)
    @given(crs_configs())
    def test_crs(self, cfg: CrsConfig) -> None:
        """
        C{crs.conf} round-trips.
        """
        self.assertEqual(parse_crs_config(render_crs_config(cfg)), cfg)

    @settings(max_examples=100, deadline=None)
    @given(local_configs)
    def test_local(self, cfg: CrsLocalConfig) -> None:
        """
        C{crs-local.conf} round-trips.
        """
        self.assertEqual(parse_crs_local_config(render_crs_local_config(cfg)), cfg)

    @settings(max_examples=100, deadline=None)
    @given(iw_configs())
    def test_iw_crs(self, cfg: IwCrsConfig) -> None:
        """
        C{iw-crs.conf} round-trips.
        """
        self.assertEqual(parse_iw_crs_config(render_iw_crs_config(cfg)), cfg)

    def test_fixtures(self) -> None:
        """
        The manual's examples round-trip too.
        """
        for path in sorted(FIXTURES.glob("*.conf")):
            if path.name.startswith("crs-local"):
                local = load_crs_local_config(path)
                self.assertEqual(parse_crs_local_config(render_crs_local_config(local)), local)
            elif path.name.startswith("crs"):
                cfg = load_crs_config(path)
                self.assertEqual(parse_crs_config(render_crs_config(cfg)), cfg)
            elif path.name.startswith("iw-crs"):
                iw = load_iw_crs_config(path)
                self.assertEqual(parse_iw_crs_config(render_iw_crs_config(iw)), iw)


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        pos = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from(b' \n\t"#[]/.:;{}*0a9\xff\x00\xc3'))
        if op == "replace" and pos < len(data):
            data[pos] = byte
        elif op == "insert":
            data.insert(pos, byte)
        elif pos < len(data):
            del data[pos]
    return bytes(data)


def _originals(prefix: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted(FIXTURES.glob(prefix + "*.conf"))]


class MutationTests(SynchronousTestCase):
    """
    Random byte changes to valid files give a L{ConfigError} or a valid
    configuration, never another exception.
    """

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(_originals("crs")).flatmap(mutated))
    def test_crs(self, data: bytes) -> None:
        """
        C{crs.conf} and C{crs-local.conf} mutations.
        """
        for parse in (parse_crs_config, parse_crs_local_config):
            try:
                parse(data)
            except ConfigError:
                pass

    @settings(max_examples=100, deadline=None)
    @given(st.sampled_from(_originals("iw-crs")).flatmap(mutated))
    def test_iw_crs(self, data: bytes) -> None:
        """
        C{iw-crs.conf} mutations.
        """
        try:
            parse_iw_crs_config(data)
        except ConfigError:
            pass
