"""Tests for the twistd plugins: options, development defaults, service trees."""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.application.service import IServiceMaker
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config._base import evolve_at
from cryptify.config.crs import Endpoint
from cryptify.crs.attach.registry import Attachment
from cryptify.crs.attach.wiring import UmsgListenService
from cryptify.crs.redis.services import ManagedRedis
from cryptify.crs.redis.store import RedisNotConnected
from cryptify.logs import LogFileService
from cryptify.ops.reload import SighupService
from cryptify.plugins import _crs_build, cig, cig_relay, crs, crs_relay
from cryptify.service import CallbackService, ListenService


def write(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


class DiscoveryTests(SynchronousTestCase):
    def test_four_plugins(self) -> None:
        """twistd finds crs, crs-relay, cig and cig-relay."""
        names = {p.tapname for p in getPlugins(IServiceMaker)}
        self.assertTrue({"crs", "crs-relay", "cig", "cig-relay"} <= names, names)


class CrsOptionsTests(SynchronousTestCase):
    def test_development_defaults(self) -> None:
        """With no options the CRS runs on loopback with its files under ./crs-dev."""
        options = crs.Options()
        options.parseOptions([])
        g = options["crs"].global_
        self.assertEqual((g.listen.host, g.listen.port), ("127.0.0.1", 15223))
        self.assertEqual(g.relay.host, "127.0.0.1")
        self.assertEqual(g.data_dir, os.path.abspath("crs-dev/data"))
        self.assertEqual(g.management, os.path.abspath("crs-dev/crs.sock"))

    def test_overrides(self) -> None:
        """Directory options win over crs.conf."""
        conf = write(self.mktemp(), "[GLOBAL]\nkey k\n")
        options = crs.Options()
        options.parseOptions(["--config", conf, "--data-dir", "/srv/d", "--log-dir", "/srv/l"])
        g = options["crs"].global_
        self.assertEqual((g.data_dir, g.log_dir), ("/srv/d", "/srv/l"))
        self.assertEqual(g.listen.port, 5223)

    def test_broken_config_names_place(self) -> None:
        """A broken crs.conf is a usage error naming file:line:column."""
        conf = write(self.mktemp(), "[GLOBAL]\nkey k\nlisten 127.0.0.1 nope\n")
        options = crs.Options()
        exc = self.assertRaises(usage.UsageError, options.parseOptions, ["--config", conf])
        self.assertIn(f"{conf}:3:", str(exc))

    def test_missing_config(self) -> None:
        """A missing crs.conf is a usage error naming the path."""
        exc = self.assertRaises(
            usage.UsageError, crs.Options().parseOptions, ["--config", "/nonexistent/crs.conf"]
        )
        self.assertIn("/nonexistent/crs.conf", str(exc))

    def test_crsname_must_be_pool_host(self) -> None:
        """crs-local.conf naming a host outside the POOL section is refused."""
        conf = write(self.mktemp(), "[GLOBAL]\nkey k\n[POOL]\nhost crs1\nip crs1 192.0.2.1\n")
        local = write(self.mktemp(), "crsname crs9\n")
        exc = self.assertRaises(
            usage.UsageError,
            crs.Options().parseOptions,
            ["--config", conf, "--local-config", local],
        )
        self.assertIn("crs9", str(exc))

    POOL2 = "[POOL]\nhost crs1\nhost crs2\nip crs1 192.0.2.1\nip crs2 192.0.2.2\n"

    def pool_options(self, conf_text: str, crsname: str | None) -> crs.Options:
        conf = write(self.mktemp(), conf_text)
        args = ["--config", conf, "--data-dir", self.mktemp()]
        if crsname is not None:
            # one process: the test looks at the one process's tree
            local = f"crsname {crsname}\nworkers 1\n"
            args += ["--local-config", write(self.mktemp(), local)]
        options = crs.Options()
        options.parseOptions(args)
        return options

    def test_pool_needs_key(self) -> None:
        """A crsname in a pool of two without the GLOBAL key is refused."""
        exc = self.assertRaises(
            usage.UsageError, self.pool_options, "[GLOBAL]\n" + self.POOL2, "crs2"
        )
        self.assertIn("key", str(exc))

    def test_pool_link_in_tree(self) -> None:
        """With a crsname in a pool of two the tree has the pool link before
        the client listener, attach asks the link who owns a slot (through
        its client view) and show
        services probes the link to the peer; without a crsname it has none."""
        from cryptify.crs.pool.wiring import ClientSlots, PoolLink

        options = self.pool_options("[GLOBAL]\nkey k\n" + self.POOL2, "crs2")
        root = crs.make_crs_service(options["crs"], options["local"], Clock())
        children = list(root)
        [link] = [c for c in children if isinstance(c, PoolLink)]
        [listener] = [c for c in children if isinstance(c, UmsgListenService)]
        self.assertLess(children.index(link), children.index(listener))
        slots = listener.factory.core.slots
        self.assertIsInstance(slots, ClientSlots)
        self.assertIs(slots.link, link)  # a late owner's slot is no move target
        self.assertEqual(link.me, "crs2")
        self.assertEqual(link.peers, ("crs1",))
        basics = _crs_build.build_basics(options["crs"], options["local"], Clock())
        assert basics.pool is not None
        self.assertEqual(list(basics.probes), ["crs", "pool_link_crs1"])
        self.assertFalse(basics.probes["pool_link_crs1"]())
        single = self.pool_options("[GLOBAL]\nkey k\n" + self.POOL2, None)
        root = crs.make_crs_service(single["crs"], single["local"], Clock())
        self.assertEqual([c for c in root if isinstance(c, PoolLink)], [])

    def test_tree_order(self) -> None:
        """The CRS tree starts its log first and its listeners last, without opening anything."""
        options = crs.Options()
        options.parseOptions(["--data-dir", self.mktemp()])
        # without crs-local.conf (development settings): one process
        self.assertEqual(options["local"].workers, 1)
        root = crs.make_crs_service(options["crs"], options["local"], Clock())
        children = list(root)
        self.assertIsInstance(children[0], LogFileService)
        self.assertIsInstance(children[1], CallbackService)
        self.assertIsInstance(children[2], ManagedRedis)
        listeners = [c for c in children if isinstance(c, ListenService)]
        self.assertEqual([s.what for s in listeners], ["client TLS", "management"])
        # the SIGHUP reload comes last, so it stops first
        self.assertIsInstance(children[-1], SighupService)
        self.assertIs(children[-2], listeners[-1])
        self.assertFalse(os.path.exists(options["crs"].global_.data_dir))

    def test_admin_interface_only_when_configured(self) -> None:
        """The admin interface is off by default; admin-listen adds it last, opening nothing."""
        options = crs.Options()
        options.parseOptions(["--data-dir", self.mktemp()])
        cfg = options["crs"]
        root = crs.make_crs_service(cfg, options["local"], Clock())
        self.assertNotIn("admin interface", [getattr(c, "what", None) for c in root])
        g = attrs.evolve(cfg.global_, admin_listen=Endpoint("127.0.0.1", 18443))
        root = crs.make_crs_service(attrs.evolve(cfg, global_=g), options["local"], Clock())
        children = list(root)
        self.assertIsInstance(children[-1], ListenService)
        self.assertEqual(children[-1].what, "admin interface")
        self.assertEqual(children[-1].where, "127.0.0.1:18443")
        self.assertFalse(os.path.exists(cfg.global_.data_dir))

    def test_attach_waits_for_both_stores(self) -> None:
        """The client listener's attaches are accepted only while redis_high and
        redis_low are both connected (not before the stores exist either)."""
        options = crs.Options()
        options.parseOptions(["--data-dir", self.mktemp()])
        root = crs.make_crs_service(options["crs"], options["local"], Clock())
        [listener] = [c for c in root if isinstance(c, UmsgListenService)]
        [managed] = [c for c in root if isinstance(c, ManagedRedis)]
        ready = listener.factory.core.ready
        self.assertFalse(ready())
        high, low = _Store("redis_high", True), _Store("redis_low", False)
        managed.stores = [high, low]  # type: ignore[list-item]
        self.assertFalse(ready())
        low.connected = True
        self.assertTrue(ready())
        high.connected = False
        self.assertFalse(ready())

    def test_attach_listeners_without_redis_log_no_traceback(self) -> None:
        """When redis_low drops right after an attach, the attach listeners log a
        warning line, not a traceback."""
        options = crs.Options()
        options.parseOptions(["--data-dir", self.mktemp()])
        root = crs.make_crs_service(options["crs"], options["local"], Clock())
        [listener] = [c for c in root if isinstance(c, UmsgListenService)]
        [managed] = [c for c in root if isinstance(c, ManagedRedis)]
        managed.stores = [_Store("redis_high", True), _Store("redis_low", False)]  # type: ignore[list-item]
        registry = listener.factory.core.registry
        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        registry.attach(Attachment("tel:+4612345", "acme", 0.0, "t", "192.0.2.1", 1, _Conn()))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual([e for e in seen if "log_failure" in e], [])
        self.assertTrue(any("not recorded" in e.get("log_format", "") for e in seen))


class _Conn:
    def send(self, msg: Any) -> None:
        pass

    def disconnect(self, reason: str) -> None:
        pass


class _Store:
    def __init__(self, name: str, connected: bool) -> None:
        self.name, self.connected = name, connected

    @property
    def client(self) -> Any:
        if not self.connected:
            raise RedisNotConnected(f"{self.name}: not connected")
        raise AssertionError("not used")

    def when_connected(self) -> Any:
        return defer.fail(RedisNotConnected(f"{self.name}: not connected"))


class RelayAndCigOptionsTests(SynchronousTestCase):
    def test_relay_shares_dev_defaults(self) -> None:
        """crs-relay's development control socket is the one the CRS dials."""
        relay, server = crs_relay.Options(), crs.Options()
        relay.parseOptions([])
        server.parseOptions([])
        self.assertEqual(relay["crs"].global_.relay_control, server["crs"].global_.relay_control)

    def test_cig_defaults_and_overrides(self) -> None:
        """
        The CIG runs on loopback by default, taking SIP from loopback only;
        options override cig.conf paths.
        """
        options = cig.Options()
        options.parseOptions(["--cookie", "/srv/cookie", "--log-dir", "/srv/log"])
        cfg = options["cig"]
        self.assertEqual((cfg.management.bind.host, cfg.management.bind.port), ("127.0.0.1", 18083))
        self.assertEqual(cfg.sip.trusted_peers, ("127.0.0.0/8", "::1/128"))
        self.assertEqual(cfg.management.cookie, "/srv/cookie")
        self.assertEqual(cfg.logging.dir, "/srv/log")
        relay = cig_relay.Options()
        relay.parseOptions([])
        self.assertEqual(relay["cig"].relay.control, cfg.relay.control)

    def test_cig_broken_config(self) -> None:
        """A broken cig.conf is a usage error naming the line."""
        conf = write(self.mktemp(), "interfaces {\n  tel {\n    extension mop x;\n  }\n}\n")
        exc = self.assertRaises(usage.UsageError, cig.Options().parseOptions, ["--config", conf])
        self.assertIn(f"{conf}:3:", str(exc))


class CigCollectorTests(SynchronousTestCase):
    def test_twistd_cig_tunes_the_collector(self) -> None:
        """
        Once C{twistd cig} has started, the start-up heap is frozen and the
        collector's young passes come every GC_YOUNG_THRESHOLD allocations
        (the other thresholds kept).
        """
        done: list[Any] = []

        class FakeGc:
            def collect(self) -> None:
                done.append("collect")

            def freeze(self) -> None:
                done.append("freeze")

            def get_threshold(self) -> tuple[int, int, int]:
                return (700, 10, 10)

            def set_threshold(self, *values: int) -> None:
                done.append(values)

        self.patch(cig, "gc", FakeGc())
        cig.tune_collector()
        self.assertEqual(done, ["collect", "freeze", (cig.GC_YOUNG_THRESHOLD, 10, 10)])


class SharedOptionsTests(SynchronousTestCase):
    """
    The four programs read their file and take path overrides the same way
    (L{cryptify.plugins._common.ConfigOptions}).
    """

    PROGRAMS = (
        (crs.Options, "crs", ("global_", "log_dir"), ("global_", "notify")),
        (crs_relay.Options, "crs", ("global_", "log_dir"), ("global_", "notify")),
        (cig.Options, "cig", ("logging", "dir"), ("notify",)),
        (cig_relay.Options, "cig", ("logging", "dir"), ("notify",)),
    )

    def test_same_paths_same_answers(self) -> None:
        """
        In every program a relative --log-dir becomes absolute and an empty
        --notify means no script; an option left out keeps the file's value.
        """
        for make, key, log_dir, notify in self.PROGRAMS:
            options = make()
            options.parseOptions(["--log-dir", "logs", "--notify", ""])
            cfg = options[key]
            self.assertEqual(attrs_at(cfg, log_dir), os.path.abspath("logs"), make)
            self.assertEqual(attrs_at(cfg, notify), "", make)
            plain = make()
            plain.parseOptions([])
            self.assertEqual(attrs_at(plain[key], notify), "", make)
            self.assertNotEqual(attrs_at(plain[key], log_dir), os.path.abspath("logs"), make)

    def test_missing_file_in_every_program(self) -> None:
        """
        Every program answers a --config that cannot be read with a usage
        error naming the file.
        """
        for make, _, _, _ in self.PROGRAMS:
            exc = self.assertRaises(
                usage.UsageError, make().parseOptions, ["--config", "/nonexistent/x.conf"]
            )
            self.assertIn("/nonexistent/x.conf", str(exc))

    def test_evolve_at(self) -> None:
        """
        evolve_at replaces one nested attribute and leaves the rest, and
        the original, as they were.
        """
        cfg = cig.dev_cig_config("base")
        changed = evolve_at(cfg, ("management", "cookie"), "/c")
        self.assertEqual(changed.management.cookie, "/c")
        self.assertEqual(changed.management.socket, cfg.management.socket)
        self.assertNotEqual(cfg.management.cookie, "/c")


def attrs_at(obj: Any, where: tuple[str, ...]) -> Any:
    for name in where:
        obj = getattr(obj, name)
    return obj
