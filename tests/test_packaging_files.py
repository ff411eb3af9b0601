"""
The files the crs and cig packages install agree with the programs.

Quick checks for `make test`: the packaged configurations parse, the
systemd units run each program with options it accepts, as a user that
is not root, hardened, with write access exactly where the configuration
puts its files and a capability only where a privileged port is bound.
Building and installing the packages is `make test-packages`
(tests/packaging/).
"""

from __future__ import annotations

import configparser
import grp
import os
import pwd
import shlex
import stat
import subprocess
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from cryptify.config import load_cig_config, load_crs_config
from cryptify.plugins import cig, cig_relay, crs, crs_relay
from tests.unit_files import service_settings

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRIVILEGED_BELOW = 1024

#: Where each installed path comes from in this tree.
SOURCES = {
    "/opt/crs/crs.conf": os.path.join(TOP, "packaging", "crs.conf"),
    "/opt/crs/crs-local.conf": os.path.join(TOP, "etc", "crs-local.conf"),
    "/opt/cig/cig.conf": os.path.join(TOP, "packaging", "cig.conf"),
}

PROGRAMS = {
    "crs": crs.Options,
    "crs-relay": crs_relay.Options,
    "cig": cig.Options,
    "cig-relay": cig_relay.Options,
}


def program_args(settings: dict[str, str]) -> tuple[str, list[str]]:
    """The twistd plugin a unit runs and the plugin's own arguments."""
    argv = shlex.split(settings["ExecStart"])
    plugin_at = next(i for i, arg in enumerate(argv) if arg in PROGRAMS)
    return argv[plugin_at], argv[plugin_at + 1 :]


def under(path: str, directories: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in directories)


class UnitTests(SynchronousTestCase):
    def writable(self, settings: dict[str, str]) -> list[str]:
        paths = settings.get("ReadWritePaths", "").split()
        paths += ["/run/" + d for d in settings.get("RuntimeDirectory", "").split()]
        paths += ["/var/log/" + d for d in settings.get("LogsDirectory", "").split()]
        return paths

    def test_hardened(self) -> None:
        """
        Every unit runs as its own user with no new privileges, a read-only
        system, a private /tmp and a bounded capability set.
        """
        for name, user in (
            ("crs", "crsuser"),
            ("crs_relay", "crsuser"),
            ("cig-server", "ciguser"),
            ("cig-relay", "ciguser"),
        ):
            settings = service_settings(name)
            self.assertEqual(settings["User"], user, name)
            self.assertEqual(settings["NoNewPrivileges"], "yes", name)
            self.assertEqual(settings["ProtectSystem"], "strict", name)
            self.assertEqual(settings["PrivateTmp"], "yes", name)
            self.assertIn("CapabilityBoundingSet", settings, name)

    def test_programs_accept_the_command_lines(self) -> None:
        """
        Each unit's ExecStart names a twistd plugin and options that plugin
        accepts, with the packaged configuration files.
        """
        for name in ("crs", "crs_relay", "cig-server", "cig-relay"):
            program, args = program_args(service_settings(name))
            args = [SOURCES.get(arg, arg) for arg in args]
            options = PROGRAMS[program]()
            options.parseOptions(args)
            self.assertTrue(options["config"].startswith(os.path.join(TOP, "packaging")), name)

    def test_crs_writes_only_where_allowed(self) -> None:
        """
        The packaged crs.conf puts data, accounts, logs and sockets where
        the crs unit may write, and the relay's log and socket where the
        crs_relay unit may.
        """
        g = load_crs_config(SOURCES["/opt/crs/crs.conf"]).global_
        server = self.writable(service_settings("crs"))
        for path in (g.data_dir, g.accounts_dir, g.log_dir, g.management, g.relay_control):
            self.assertTrue(under(path, server), f"crs cannot write {path}: {server}")
        relay = self.writable(service_settings("crs_relay"))
        for path in (g.log_dir, g.relay_control):
            self.assertTrue(under(path, relay), f"crs_relay cannot write {path}: {relay}")
        self.assertFalse(under(g.data_dir, relay))

    def test_cig_writes_only_where_allowed(self) -> None:
        """
        The packaged cig.conf puts the keystore, logs and sockets where the
        cig-server unit may write; the cookie is read-only (the package
        makes it).
        """
        cfg = load_cig_config(SOURCES["/opt/cig/cig.conf"])
        server = self.writable(service_settings("cig-server"))
        for path in (cfg.crs.keystore, cfg.logging.dir, cfg.management.socket, cfg.relay.control):
            self.assertTrue(under(path, server), f"cig-server cannot write {path}: {server}")
        self.assertFalse(under(cfg.management.cookie, server))
        relay = self.writable(service_settings("cig-relay"))
        for path in (cfg.logging.dir, cfg.relay.control):
            self.assertTrue(under(path, relay), f"cig-relay cannot write {path}: {relay}")

    def test_capability_only_for_privileged_ports(self) -> None:
        """
        Only a unit whose program binds a port below 1024 gets
        CAP_NET_BIND_SERVICE, as an ambient capability; the others get
        none at all, but for the CRS relay's CAP_BPF and CAP_NET_ADMIN (its
        eBPF fast path).
        """
        crs_cfg = load_crs_config(SOURCES["/opt/crs/crs.conf"]).global_
        cig_cfg = load_cig_config(SOURCES["/opt/cig/cig.conf"])
        rtp = cig_cfg.sip.rtp_port_range
        assert rtp is not None
        lowest = {
            "crs_relay": crs_cfg.relay.port,
            "crs": min(crs_cfg.listen.port, crs_cfg.pool_port, crs_cfg.sync_port, crs_cfg.iw_port),
            "cig-server": min(cig_cfg.sip.port, cig_cfg.management.bind.port),
            "cig-relay": rtp.low,
        }
        self.assertEqual(lowest["crs_relay"], 146)
        for name, port in lowest.items():
            settings = service_settings(name)
            if port < PRIVILEGED_BELOW:
                caps = "CAP_NET_BIND_SERVICE"
                if name == "crs_relay":
                    caps += " CAP_BPF CAP_NET_ADMIN"
                self.assertEqual(settings["AmbientCapabilities"], caps, name)
                self.assertEqual(settings["CapabilityBoundingSet"], caps, name)
            else:
                self.assertNotIn("AmbientCapabilities", settings, name)
                self.assertEqual(settings["CapabilityBoundingSet"], "", name)


class WheelContentsTests(SynchronousTestCase):
    def test_every_package_is_listed(self) -> None:
        """
        Every package of cryptify/ is in setup.cfg's packages, so the wheel
        the packages install has it (an editable install hides a missing
        one; the installed CIG failed to import cryptify.protocols.sip).
        """
        parser = configparser.ConfigParser()
        parser.read(os.path.join(TOP, "setup.cfg"))
        listed = set(parser["options"]["packages"].split())
        found = set()
        for directory, _dirs, files in os.walk(os.path.join(TOP, "cryptify")):
            if "__init__.py" in files:
                found.add(os.path.relpath(directory, TOP).replace(os.sep, "."))
        self.assertEqual(found - listed, set())
        self.assertIn("twisted.plugins", listed)


class CreateCigMaildirTests(SynchronousTestCase):
    script = os.path.join(TOP, "packaging", "create_cig_maildir")

    def run_script(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env["CIG_MAILDIR_OWNER"] = pwd.getpwuid(os.getuid()).pw_name
        env["CIG_MAILDIR_GROUP"] = grp.getgrgid(os.getgid()).gr_name
        return subprocess.run(
            [self.script, *args], env=env, capture_output=True, text=True, check=False
        )

    def test_makes_a_maildir(self) -> None:
        """
        create_cig_maildir makes the mailbox and its tmp, new and cur, with
        the set-group-id bit so files inside keep the mail group, and no
        access for others; run again it changes nothing.
        """
        base = tempfile.mkdtemp()
        self.addCleanup(subprocess.run, ["rm", "-rf", base], check=False)
        box = os.path.join(base, "mail", "outgoing")
        for _ in range(2):
            result = self.run_script(box)
            self.assertEqual(result.returncode, 0, result.stderr)
            for sub in ("", "tmp", "new", "cur"):
                mode = os.stat(os.path.join(box, sub)).st_mode
                self.assertEqual(stat.S_IMODE(mode), 0o2770, sub)

    def test_refuses_a_relative_path(self) -> None:
        """A relative path is refused (the manual asks for an absolute one)."""
        result = self.run_script("mail/outgoing")
        self.assertEqual(result.returncode, 2)
        self.assertIn("not an absolute path", result.stderr)
        self.assertFalse(os.path.exists("mail"))

    def test_refuses_an_existing_non_maildir(self) -> None:
        """A file, a symbolic link, or a directory of other things at PATH is
        refused and left untouched; an empty directory becomes the mailbox."""
        base = tempfile.mkdtemp()
        self.addCleanup(subprocess.run, ["rm", "-rf", base], check=False)
        afile = os.path.join(base, "file")
        with open(afile, "w") as f:
            f.write("x")
        os.symlink(base, os.path.join(base, "link"))
        other = os.path.join(base, "other")
        os.makedirs(os.path.join(other, "new"))
        with open(os.path.join(other, "notes.txt"), "w") as f:
            f.write("mine")
        for path in (afile, os.path.join(base, "link"), other):
            result = self.run_script(path)
            self.assertEqual(result.returncode, 1, path)
            self.assertIn("exists and is not a", result.stderr)
        self.assertEqual(sorted(os.listdir(other)), ["new", "notes.txt"])
        empty = os.path.join(base, "empty")
        os.mkdir(empty)
        self.assertEqual(self.run_script(empty).returncode, 0)
        self.assertEqual(sorted(os.listdir(empty)), ["cur", "new", "tmp"])

    def test_refuses_a_missing_group(self) -> None:
        """Without the cigmail group (no cig package) it says so and does nothing."""
        env = dict(os.environ, CIG_MAILDIR_GROUP="no-such-group-cigmail")
        box = os.path.join(tempfile.mkdtemp(), "box")
        result = subprocess.run(
            [self.script, box], env=env, capture_output=True, text=True, check=False
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("does not exist", result.stderr)
        self.assertFalse(os.path.exists(box))
