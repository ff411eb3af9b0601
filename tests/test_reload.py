"""Reload without restart: the diff, the reloader, SIGHUP and the CRS's live changes."""

from __future__ import annotations

import os
import signal
from typing import Any

import attrs
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config import CrsConfig, CrsLocalConfig, parse_cig_config, parse_crs_config
from cryptify.crs.attach.wiring import Limits, UmsgServerFactory
from cryptify.events import Notifier
from cryptify.ops.cig import DIRECTIVES as CIG_DIRECTIVES
from cryptify.ops.cig import CigLive
from cryptify.ops.crs import DIRECTIVES, NOT_DIRECTIVES, CrsFiles, CrsLive
from cryptify.ops.reload import (
    Directive,
    Plan,
    Reloader,
    ReloadError,
    SighupService,
    plan,
    uncovered,
    value_at,
)
from cryptify.plugins import crs
from cryptify.plugins.cig import dev_cig_config

BASE = """[GLOBAL]
key oldpoolkey
listen 127.0.0.1 15223
client-max-message 65536
notify /old/notify.sh
[POOL]
host crs1
ip crs1 127.0.0.1
"""


def files(text: str = BASE, local: CrsLocalConfig | None = None) -> CrsFiles:
    return CrsFiles(parse_crs_config(text), local or CrsLocalConfig())


def edited(*pairs: tuple[str, str]) -> CrsFiles:
    text = BASE
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new)
    return files(text)


class Captured:
    """Log events published while a test runs."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_namespace") == "cryptify.reload"]


class PlanTests(SynchronousTestCase):
    def test_same_file_changes_nothing(self) -> None:
        """Reading the same file again changes nothing and names nothing."""
        result = plan(files(), files(), DIRECTIVES)
        self.assertEqual((result.live, result.restart), ((), ()))
        self.assertEqual(result.config, files())

    def test_live_directive_takes_new_value(self) -> None:
        """A live directive's new value is in the configuration run with afterwards."""
        result = plan(files(), edited(("65536", "4096")), DIRECTIVES)
        self.assertEqual([d.name for d in result.live], ["client-max-message"])
        self.assertEqual(result.config.crs.global_.client_max_message, 4096)
        self.assertTrue(result.changed("client-max-message"))

    def test_restart_directive_keeps_running_value(self) -> None:
        """A directive that needs a restart is named and keeps its running value."""
        result = plan(
            files(),
            edited(("listen 127.0.0.1 15223", "listen 127.0.0.1 25223"), ("65536", "2000")),
            DIRECTIVES,
        )
        self.assertEqual([d.name for d in result.restart], ["listen"])
        self.assertEqual([d.name for d in result.live], ["client-max-message"])
        self.assertEqual(result.config.crs.global_.listen.port, 15223)
        self.assertEqual(result.config.crs.global_.client_max_message, 2000)

    def test_local_and_pool_need_restart(self) -> None:
        """crsname, db-backup and [POOL] are named for a restart."""
        loaded = CrsFiles(
            parse_crs_config(BASE + "host crs2\nip crs2 127.0.0.2\n"),
            CrsLocalConfig(crsname="crs1", db_backup="read-from"),
        )
        result = plan(files(), loaded, DIRECTIVES)
        self.assertEqual(
            [d.name for d in result.restart],
            ["[POOL] host and ip", "crsname (crs-local.conf)", "db-backup (crs-local.conf)"],
        )
        self.assertEqual(result.config, files())

    def test_every_setting_has_a_directive(self) -> None:
        """Every value of crs.conf and crs-local.conf belongs to a directive of the
        reload table, so a new setting cannot be silently ignored by a reload."""
        self.assertEqual(uncovered(files(), DIRECTIVES, NOT_DIRECTIVES), [])
        for d in DIRECTIVES:
            value_at(files(), d.path)  # every path exists

    def test_uncovered_finds_a_missing_directive(self) -> None:
        """The coverage check notices a setting no directive covers."""
        missing = [d for d in DIRECTIVES if d.name != "notify-timeout"]
        self.assertEqual(
            uncovered(files(), missing, NOT_DIRECTIVES), [("crs", "global_", "notify_timeout")]
        )


class ReloaderTests(SynchronousTestCase):
    def reloader(self, read: Any, applied: list[Plan[CrsFiles]]) -> Reloader[CrsFiles]:
        return Reloader("crs", files(), DIRECTIVES, read, applied.append)

    def test_refused_file_keeps_running_configuration(self) -> None:
        """A file that does not parse is refused with its reason in the log;
        nothing is applied and the running configuration stays."""
        log = Captured(self)
        applied: list[Plan[CrsFiles]] = []

        def read() -> CrsFiles:
            raise ReloadError("crs.conf:3:1: unknown directive: 'lisen'")

        reloader = self.reloader(read, applied)
        self.assertIsNone(reloader.reload())
        self.assertEqual(applied, [])
        self.assertEqual(reloader.running, files())
        self.assertEqual((reloader.reloads, reloader.failures), (0, 1))
        self.assertTrue(any("crs.conf:3:1: unknown directive" in line for line in log.lines()))

    def test_changes_named_in_log_without_values(self) -> None:
        """Each changed directive is logged by name: applied, or needing a restart;
        no value is logged (the pool key is a secret)."""
        log = Captured(self)
        applied: list[Plan[CrsFiles]] = []
        loaded = edited(("oldpoolkey", "newsecretkey"), ("/old/notify.sh", "/new/notify.sh"))
        reloader = self.reloader(lambda: loaded, applied)
        result = reloader.reload()
        assert result is not None
        self.assertEqual(applied, [result])
        lines = log.lines()
        self.assertTrue(any("key changed" in x and "restart" in x for x in lines), lines)
        self.assertTrue(any("notify changed: applied" in x for x in lines), lines)
        everything = repr([e for e in log.events])
        self.assertNotIn("newsecretkey", everything)
        self.assertNotIn("oldpoolkey", everything)
        self.assertEqual(reloader.running.crs.global_.key, "oldpoolkey")
        self.assertEqual(reloader.running.crs.global_.notify, "/new/notify.sh")
        self.assertEqual(reloader.reloads, 1)

    def test_apply_failure_keeps_running_configuration(self) -> None:
        """If applying fails, the failure is logged and the running configuration stays."""

        def broken(plan: Plan[CrsFiles]) -> None:
            raise RuntimeError("boom")

        reloader = Reloader("crs", files(), DIRECTIVES, lambda: edited(("65536", "2000")), broken)
        self.assertIsNone(reloader.reload())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(reloader.running, files())
        self.assertEqual(reloader.failures, 1)


class FakeAccounts:
    def __init__(self) -> None:
        self.reloads = 0

    def reload(self) -> dict[str, Any]:
        self.reloads += 1
        return {"problems": []}


class CrsLiveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = UmsgServerFactory(Any, self.clock, Limits.from_config(files().crs.global_))
        self.notifier = Notifier(self.clock, "/old/notify.sh")
        self.accounts = FakeAccounts()
        self.live = CrsLive(self.factory, self.notifier, self.accounts.reload)

    def test_limits_keepalive_notify_applied(self) -> None:
        """New client limits, keep-alive rules and notify settings reach the running
        listener and notifier; sweep periods stay as they were."""
        loaded = files(
            BASE.replace("65536", "2048").replace(
                "notify /old/notify.sh",
                "notify /new/notify.sh\nnotify-timeout 3\nclient-max-unattached 5\n"
                "keep-alive 10.0.0.0/8 tcp 60000",
            )
        )
        result = plan(files(), loaded, DIRECTIVES)
        self.live.apply(result)
        self.assertEqual(self.factory.limits.max_message, 2048)
        self.assertEqual(self.factory.limits.max_unattached, 5)
        self.assertEqual(self.factory.limits.sweep, Limits().sweep)
        rule = self.factory.keepalive_rule("10.1.2.3")
        assert rule is not None
        self.assertEqual(rule.interval_ms, 60000)
        self.assertEqual(self.notifier.script, "/new/notify.sh")
        self.assertEqual(self.notifier.timeout, 3)

    def test_accounts_reread_on_every_reload(self) -> None:
        """Every reload re-reads the accounts directory (as ``crs-cli reload account``),
        even with no change in the files."""
        self.live.apply(plan(files(), files(), DIRECTIVES))
        self.assertEqual(self.accounts.reloads, 1)


class FakeReactor:
    def __init__(self) -> None:
        self.called: list[Any] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.called.append(f)


class SighupServiceTests(SynchronousTestCase):
    def test_sighup_hands_reload_to_reactor(self) -> None:
        """SIGHUP while running hands the reload to the reactor thread; stopping
        puts the previous handler back."""
        before = signal.getsignal(signal.SIGHUP)
        reactor = FakeReactor()
        calls: list[int] = []
        service = SighupService(reactor, lambda: calls.append(1))
        service.startService()
        self.addCleanup(signal.signal, signal.SIGHUP, before)
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(len(reactor.called), 1)
        self.assertEqual(calls, [])
        reactor.called[0]()
        self.assertEqual(calls, [1])
        service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)


class CrsTreeTests(SynchronousTestCase):
    def test_reload_reaches_running_listener(self) -> None:
        """The CRS tree's SIGHUP service re-reads the files given to it and the
        client listener's limits change (nothing is started or opened)."""
        options = crs.Options()
        options.parseOptions(["--data-dir", self.mktemp()])
        cfg: CrsConfig = options["crs"]
        loaded = CrsFiles(
            attrs.evolve(cfg, global_=attrs.evolve(cfg.global_, client_max_message=999)),
            options["local"],
        )
        root = crs.make_crs_service(cfg, options["local"], Clock(), lambda: loaded)
        hup = list(root)[-1]
        assert isinstance(hup, SighupService)
        listener = next(s for s in root if getattr(s, "what", "") == "client TLS")
        hup.on_hup()
        self.assertEqual(listener.factory.limits.max_message, 999)  # type: ignore[attr-defined]

    def test_reread_refuses_broken_file(self) -> None:
        """Options.reread turns a file that no longer parses into a ReloadError
        naming the place."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(BASE)
        options = crs.Options()
        options.parseOptions(["--config", path])
        with open(path, "w") as f:
            f.write(BASE + "lisen 1 2\n")
        with self.assertRaises(ReloadError) as caught:
            options.reread()
        self.assertIn(":9:", str(caught.exception))
        with open(path, "w") as f:
            f.write(BASE.replace("65536", "7777"))
        self.assertEqual(options.reread().crs.global_.client_max_message, 7777)


class DirectiveTests(SynchronousTestCase):
    def test_directive_names_are_unique(self) -> None:
        """Each directive appears once in the table."""
        names = [d.name for d in DIRECTIVES]
        self.assertEqual(len(names), len(set(names)))
        self.assertIsInstance(DIRECTIVES[0], Directive)


CIG_BASE = """
map pbx { entry e tel "tel:+4670{n}" sip "sip:{n}@192.0.2.10"; }
interfaces {
    tel { extension map pbx; }
    sip { bind 127.0.0.1 15060; trusted_peer 198.51.100.0/24; }
}
notify "/old/notify.sh";
"""


class CigReloadTests(SynchronousTestCase):
    def test_every_setting_has_a_directive(self) -> None:
        """Every value of cig.conf belongs to a directive of the CIG's reload table."""
        cfg = parse_cig_config(CIG_BASE)
        self.assertEqual(uncovered(cfg, CIG_DIRECTIVES), [])
        names = [d.name for d in CIG_DIRECTIVES]
        self.assertEqual(len(names), len(set(names)))

    def tree(self, loaded: str) -> tuple[Any, Any]:
        from twisted.internet.testing import MemoryReactorClock

        from cryptify.plugins.cig import make_cig_service

        base = attrs.evolve(dev_cig_config(self.mktemp()), **_cig_fields(CIG_BASE))
        new = attrs.evolve(dev_cig_config(self.mktemp()), **_cig_fields(loaded))
        new = attrs.evolve(new, crs=base.crs, management=base.management, logging=base.logging)
        new = attrs.evolve(new, relay=base.relay)
        root = make_cig_service(base, MemoryReactorClock(), reread=lambda: new)
        hup = list(root)[-1]
        assert isinstance(hup, SighupService)
        reloader = hup.on_hup.__self__  # type: ignore[attr-defined]
        return hup, reloader.apply.__self__

    def test_maps_and_peers_change_live(self) -> None:
        """A reload of cig.conf routes new calls with the new map, takes the new
        PBX host and trusted_peer as SIP peers (the old ones no longer), probes
        the new PBX, and names a changed sip bind for a restart."""
        loaded = (
            CIG_BASE.replace("192.0.2.10", "192.0.2.20")
            .replace("198.51.100.0/24", "203.0.113.0/24")
            .replace("15060", "25060")
            .replace("/old/", "/new/")
        )
        log = Captured(self)
        hup, live = self.tree(loaded)
        self.assertIsInstance(live, CigLive)
        self.assertTrue(live.peers.trusted("192.0.2.10"))
        hup.on_hup()
        [pbx] = live.sif.router.extension_maps("tel")
        self.assertEqual(pbx.to_sip("tel:+46701234"), "sip:1234@192.0.2.20")
        self.assertIs(live.uif_calls.router, live.sif.router)
        self.assertTrue(live.peers.trusted("192.0.2.20"))
        self.assertTrue(live.peers.trusted("203.0.113.9"))
        self.assertFalse(live.peers.trusted("192.0.2.10"))
        self.assertFalse(live.peers.trusted("198.51.100.9"))
        self.assertEqual([str(t) for t in live.keepalive.targets], ["192.0.2.20:5060/udp"])
        self.assertEqual(live.notifier.script, "/new/notify.sh")
        self.assertEqual(live.sif.config.sip.port, 15060)
        lines = log.lines()
        self.assertTrue(any("interfaces sip bind (port) changed" in x for x in lines), lines)
        self.assertTrue(any("map changed: applied" in x for x in lines), lines)
        # cig.log records the maps' entries in force after the reload
        self.assertIn(
            'cig: reloaded map pbx entry e: tel "tel:+4670{n}" sip "sip:{n}@192.0.2.20"', lines
        )

    def test_translate_maps_reach_the_mailboxes(self) -> None:
        """A reloaded translate_map is the one the mailboxes use, and it is logged rule by rule."""
        rule = 'translate_map t { rule match "tel:+{n}" translation "sip:{n}@a.example"; }\n'
        log = Captured(self)
        hup, live = self.tree(CIG_BASE + rule)
        self.assertEqual(live.mail.translate_maps, ())
        hup.on_hup()
        [loaded] = live.mail.translate_maps
        self.assertEqual(loaded.translate("tel:+46"), "sip:46@a.example")
        self.assertIn(
            'cig: reloaded translate_map t rule 1: match "tel:+{n}" '
            'translation "sip:{n}@a.example"',
            log.lines(),
        )


def _cig_fields(text: str) -> dict[str, Any]:
    """The fields of a parsed cig.conf that the test files set."""
    cfg = parse_cig_config(text)
    return {
        "maps": cfg.maps,
        "translate_maps": cfg.translate_maps,
        "interfaces": cfg.interfaces,
        "notify": cfg.notify,
    }


class UnitTests(SynchronousTestCase):
    def test_reload_units(self) -> None:
        """``systemctl reload crs`` and ``cig-server`` send SIGHUP to the main
        process; the relays, which do not reload, have no ExecReload."""
        from tests.unit_files import service_settings

        for name in ("crs", "cig-server"):
            self.assertEqual(service_settings(name)["ExecReload"], "/bin/kill -HUP $MAINPID")
        for name in ("crs_relay", "cig-relay"):
            self.assertNotIn("ExecReload", service_settings(name))


class RelayTests(SynchronousTestCase):
    def test_relays_survive_sighup(self) -> None:
        """The relays do not reload, but a SIGHUP sent to them by mistake is
        logged instead of ending them (and their calls' media)."""
        from twisted.internet.testing import MemoryReactorClock

        from cryptify.plugins.cig_relay import make_cig_relay_service
        from cryptify.plugins.crs_relay import make_relay_service

        log = Captured(self)
        for root in (
            make_relay_service(crs.dev_crs_config(self.mktemp()), MemoryReactorClock()),
            make_cig_relay_service(dev_cig_config(self.mktemp()), MemoryReactorClock()),
        ):
            hup = list(root)[-1]
            assert isinstance(hup, SighupService)
            hup.on_hup()
        self.assertEqual(
            [line.split(":")[0] for line in log.lines() if "SIGHUP ignored" in line],
            ["crs_relay", "cig-relay"],
        )
