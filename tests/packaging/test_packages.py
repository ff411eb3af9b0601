"""
The crs and cig packages on a clean Debian 12 system (`make test-packages`).

Each test builds the packages from this tree (once per run), unpacks a
fresh debootstrap root, installs them with apt so their dependencies come
from Debian, and starts the services the way their units say. These tests
are slow (minutes): they are not part of `make test`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.packaging import _root
from tests.packaging._root import DebianRoot, log, package_file, packages, project_version

CRS_UNITS = ("crs_relay", "crs")
CIG_UNITS = ("cig-relay", "cig-server")
ALL_UNITS = CRS_UNITS + CIG_UNITS

#: What the manuals name, and what else the packages must ship.
CRS_FILES = (
    "/opt/crs/crs.conf",
    "/opt/crs/crs-local.conf",
    "/opt/crs/iw-crs.conf",
    "/opt/crs/accounts",
    "/opt/crs/data",
    "/opt/crs/scripts/notify.sh",
    "/opt/crs/venv/bin/twistd",
    "/usr/bin/crs-cli",
    "/usr/share/man/man8/crs-cli.8.gz",
    "/usr/share/man/man1/cryptify-kms.1.gz",
    "/usr/share/man/man1/cryptify-client.1.gz",
    "/lib/systemd/system/crs.service",
    "/lib/systemd/system/crs_relay.service",
)
CIG_FILES = (
    "/opt/cig/cig.conf",
    "/opt/cig/userdata",
    "/opt/cig/bin/create_cig_maildir",
    "/opt/cig/scripts/notify.sh",
    "/opt/cig/venv/bin/twistd",
    "/usr/bin/cig-cli",
    "/usr/share/man/man8/cig-cli.8.gz",
    "/lib/systemd/system/cig-server.service",
    "/lib/systemd/system/cig-relay.service",
)
CRS_CONFFILES = {
    "/opt/crs/crs.conf",
    "/opt/crs/crs-local.conf",
    "/opt/crs/iw-crs.conf",
    "/opt/crs/scripts/notify.sh",
}
CIG_CONFFILES = {"/opt/cig/cig.conf", "/opt/cig/scripts/notify.sh"}


def upgrade_version(version: str) -> str:
    """A version newer than C{version} for deb, rpm and Python alike."""
    return f"{version}.post1"


class PackagesTestCase(SynchronousTestCase):
    skip = _root.not_root_reason()

    def setUp(self) -> None:
        self.work = tempfile.mkdtemp(prefix="cryptify-packaging-")
        self.addCleanup(shutil.rmtree, self.work, True)
        self.version = project_version()

    def new_root(self) -> DebianRoot:
        started = time.monotonic()
        root = DebianRoot.create(self.work)
        self.addCleanup(root.close)
        log(f"root ready in {time.monotonic() - started:.0f} s: {root.path}")
        return root

    def install(self, root: DebianRoot, version: str) -> str:
        """apt-get install ./crs_*.deb ./cig_*.deb of C{version}."""
        built = packages(version)
        debs = [
            root.copy_in(package_file(built, f"{name}_{version}-1_amd64.deb"))
            for name in ("crs", "cig")
        ]
        started = time.monotonic()
        out = root.apt_install(*debs)
        log(f"installed {version} in {time.monotonic() - started:.0f} s")
        return out

    def crs_cli(self, root: DebianRoot, *args: str, check: bool = True) -> str:
        result = root.chroot("crs-cli", *args, check=check)
        return result.stdout

    def start_all(self, root: DebianRoot) -> None:
        for name in ALL_UNITS:
            root.start_unit(name)
        root.wait_for(lambda: self.crs_running(root), "crs and crs_relay active")

    def crs_running(self, root: DebianRoot) -> bool:
        result = root.chroot("crs-cli", "show", "services", check=False)
        if result.returncode != 0:
            return False
        rows = {tuple(line.split()[1:3]) for line in result.stdout.splitlines() if line.strip()}
        return ("crs", "active") in rows and ("crs_relay", "active") in rows

    def cig_status(self, root: DebianRoot) -> str:
        result = root.chroot("cig-cli", "status", check=False)
        return result.stdout if result.returncode == 0 else ""

    def stop_all(self, root: DebianRoot) -> None:
        for name in reversed(ALL_UNITS):
            root.stop_unit(name)

    # -- the tests -------------------------------------------------------

    def test_install_and_run(self) -> None:
        """
        Installing both .deb files on a fresh Debian 12 with apt creates
        what the manuals name (files, users, the cigmail group, enabled
        units, conffiles), the units pass systemd-analyze verify, and the
        services started as their units say answer crs-cli and cig-cli;
        the relay holds port 146 as crsuser through its ambient capability.
        """
        root = self.new_root()
        self.install(root, self.version)

        for path in CRS_FILES + CIG_FILES:
            self.assertTrue(os.path.lexists(root.file(path)), path)
        for user in ("crsuser", "ciguser"):
            self.assertEqual(root.chroot("id", "-u", user).returncode, 0)
        self.assertIn("cigmail", root.chroot("id", "-nG", "ciguser").stdout.split())
        for name in ALL_UNITS:
            link = f"/etc/systemd/system/multi-user.target.wants/{name}.service"
            self.assertTrue(os.path.islink(root.file(link)), f"{name} not enabled")
        conffiles = root.chroot("dpkg-query", "-W", "-f=${Conffiles}\\n", "crs", "cig").stdout
        listed = {line.split()[0] for line in conffiles.splitlines() if line.strip()}
        self.assertEqual(listed, CRS_CONFFILES | CIG_CONFFILES)
        stat = os.stat(root.file("/opt/crs/crs.conf"))
        self.assertEqual(stat.st_mode & 0o777, 0o640)
        self.assertEqual(stat.st_gid, int(root.chroot("id", "-g", "crsuser").stdout))
        cookie = os.stat(root.file("/opt/cig/mgmt.cookie"))
        self.assertEqual(cookie.st_mode & 0o777, 0o640)

        units = [f"/lib/systemd/system/{name}.service" for name in ALL_UNITS]
        verify = root.chroot("systemd-analyze", "verify", *units, check=False)
        self.assertEqual((verify.returncode, verify.stdout), (0, ""))
        for name in ALL_UNITS:
            unit = root.unit(name)
            self.assertEqual(unit.get("NoNewPrivileges"), "yes", name)
            self.assertEqual(unit.get("ProtectSystem"), "strict", name)
            self.assertEqual(unit.get("PrivateTmp"), "yes", name)
            self.assertNotEqual(unit.get("User", "root"), "root", name)
            expected_caps = (
                "CAP_NET_BIND_SERVICE CAP_BPF CAP_NET_ADMIN" if name == "crs_relay" else ""
            )
            self.assertEqual(unit.get("AmbientCapabilities"), expected_caps, name)

        self.start_all(root)
        services = self.crs_cli(root, "show", "services")
        self.assertIn("redis_low", services)
        out = self.crs_cli(root, "create", "account", "acme")
        self.assertIn("shared secret", out)
        self.assertIn("acme", self.crs_cli(root, "list", "account"))
        secret = os.stat(root.file("/opt/crs/accounts/acme/secret"))
        self.assertEqual(secret.st_uid, int(root.chroot("id", "-u", "crsuser").stdout))
        self.assertEqual(secret.st_mode & 0o777, 0o600)

        status = root.wait_for(lambda: self.cig_status(root), "cig-cli status")
        self.assertIn("Connection", status)

        relay = root.services["crs_relay"]
        pid = self.twistd_pid(root, relay.pid)
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        crsuser = root.chroot("id", "-u", "crsuser").stdout.strip()
        self.assertEqual(fields["Uid"].split()[0], crsuser)
        # CAP_NET_BIND_SERVICE, CAP_NET_ADMIN, CAP_BPF
        self.assertEqual(int(fields["CapAmb"], 16), 1 << 10 | 1 << 12 | 1 << 39)
        sockets = root.chroot("ss", "-ulnp").stdout
        self.assertRegex(sockets, r"0\.0\.0\.0:146\b")
        self.stop_all(root)

    def twistd_pid(self, root: DebianRoot, leader: int) -> int:
        """The twistd process a service's command became."""
        # setpriv and sh exec into twistd: the process keeps the pid.
        with open(f"/proc/{leader}/cmdline", "rb") as f:
            self.assertIn(b"twistd", f.read())
        return leader

    def test_remove_keeps_purge_deletes(self) -> None:
        """
        apt-get remove keeps the configuration, the accounts and the data;
        purge deletes them.
        """
        root = self.new_root()
        self.install(root, self.version)
        self.start_all(root)
        self.crs_cli(root, "create", "account", "acme")
        self.stop_all(root)
        with open(root.file("/opt/crs/crs-local.conf"), "a") as f:
            f.write("# edited by the operator\n")
        # Data of the CIG: a key file left for it and a mailbox made the
        # manual's way, in the group cigmail.
        with open(root.file("/opt/cig/userdata/cig.raw"), "w") as f:
            f.write("key material\n")
        root.chroot("/opt/cig/bin/create_cig_maildir", "/opt/cig/mail/outgoing")
        mailbox = os.stat(root.file("/opt/cig/mail/outgoing/new"))
        self.assertEqual(
            mailbox.st_gid, int(root.chroot("getent", "group", "cigmail").stdout.split(":")[2])
        )
        self.assertEqual(mailbox.st_mode & 0o7777, 0o2770)

        root.chroot("apt-get", "remove", "-y", "crs", "cig", netns=False)
        for path in (
            "/opt/crs/crs.conf",
            "/opt/crs/crs-local.conf",
            "/opt/crs/accounts/acme/secret",
            "/opt/crs/data",
            "/opt/cig/cig.conf",
            "/opt/cig/userdata/cig.raw",
            "/opt/cig/mail/outgoing/new",
            "/opt/cig/mgmt.cookie",
        ):
            self.assertTrue(os.path.exists(root.file(path)), f"{path} removed by remove")
        self.assertFalse(os.path.exists(root.file("/opt/crs/venv")))
        self.assertIn("edited by the operator", root.read("/opt/crs/crs-local.conf"))

        root.chroot("apt-get", "purge", "-y", "crs", "cig", netns=False)
        for path in ("/opt/crs", "/opt/cig", "/var/log/crs", "/var/log/cig"):
            self.assertFalse(os.path.exists(root.file(path)), f"{path} left after purge")

    def test_upgrade_keeps_config_accounts_messages(self) -> None:
        """
        Upgrading from this version to a newer one keeps an edited config,
        an account and a stored message, and the services run again.
        """
        new = upgrade_version(self.version)
        packages(new)
        root = self.new_root()
        self.install(root, self.version)
        self.start_all(root)
        out = self.crs_cli(root, "create", "account", "acme", "-B", "32")
        secret = out.split("shared secret ")[1].split()[0]
        sender, recipient = self.issue_keys(root, secret)
        # The CRS stores messages only for users it knows: the recipient
        # attaches once, then goes away.
        self.client_until(root, ["listen", *self.client_args(recipient)], "attached tel:+4622222")
        posted = root.chroot(
            "/opt/crs/venv/bin/cryptify-client", "send", "tel:+4622222", "kept over the upgrade",
            *self.client_args(sender), check=False,
        )  # fmt: skip
        self.assertEqual(posted.returncode, 0, posted.stdout)
        with open(root.file("/opt/crs/crs.conf"), "a") as f:
            f.write("# operator's note: kept over the upgrade\n")
        with open(root.file("/opt/cig/cig.conf"), "a") as f:
            f.write("// operator's note: kept over the upgrade\n")
        self.stop_all(root)

        self.install(root, new)
        versions = root.chroot("dpkg-query", "-W", "-f=${Version}\\n", "crs", "cig").stdout.split()
        self.assertEqual(versions, [f"{new}-1"] * 2)
        self.assertIn("kept over the upgrade", root.read("/opt/crs/crs.conf"))
        self.assertIn("kept over the upgrade", root.read("/opt/cig/cig.conf"))

        self.start_all(root)
        self.assertIn(new, self.crs_cli(root, "show", "version"))
        self.assertIn("acme", self.crs_cli(root, "list", "account"))
        root.wait_for(lambda: self.cig_status(root), "cig-cli status after the upgrade")
        self.client_until(root, ["listen", *self.client_args(recipient)], "kept over the upgrade")
        self.stop_all(root)

    def client_until(self, root: DebianRoot, args: list[str], text: str) -> str:
        """Run cryptify-client in the root until its output shows C{text}."""
        client = subprocess.Popen(
            [
                "ip", "netns", "exec", root.netns, "chroot", root.path,
                "/opt/crs/venv/bin/cryptify-client", *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        assert client.stdout is not None
        os.set_blocking(client.stdout.fileno(), False)
        seen = b""
        try:
            deadline = time.monotonic() + _root.ANSWER_WITHIN
            while text.encode() not in seen and time.monotonic() < deadline:
                if client.poll() is not None:
                    seen += client.stdout.read() or b""
                    break
                seen += client.stdout.read() or b""
                time.sleep(0.5)
        finally:
            if client.poll() is None:
                os.killpg(client.pid, signal.SIGKILL)
            client.wait()
        output = seen.decode(errors="replace")
        self.assertIn(text, output)
        return output

    def issue_keys(self, root: DebianRoot, secret: str) -> tuple[str, str]:
        """Keys for two users of account acme, and its month applied."""
        period = time.strftime("%Y-%m", time.gmtime())
        kms = ("/opt/crs/venv/bin/cryptify-kms", "--store", "/root/kms")
        root.chroot(*kms, "init", "acme")
        files = []
        for uri in ("tel:+4611111", "tel:+4622222"):
            path = f"/root/{uri[5:]}.keys"
            root.chroot(*kms, "issue", "acme", uri, "--period", period, "-o", path)
            files.append(path)
        root.chroot(
            *kms, "update", "acme", "--secret", secret, "--period", period, "-o", "/root/acme.upd"
        )
        self.crs_cli(root, "apply", "/root/acme.upd")
        return files[0], files[1]

    def client_args(self, keys: str) -> list[str]:
        return ["--keys", keys, "--server", "127.0.0.1:5223", "--ca", "/opt/crs/data/tls/crs.crt"]

    def test_rpm_same_files_and_scripts(self) -> None:
        """
        The rpm packages list the same files as the .deb ones (Debian's own
        /usr/share/doc aside), mark the same configuration files, carry the
        scripts that make the users, and rpmlint finds nothing rpm/rpmlintrc
        does not explain.
        """
        built = packages(self.version)
        for name, conffiles in (("crs", CRS_CONFFILES), ("cig", CIG_CONFFILES)):
            rpm = package_file(built, f"{name}-{self.version}-1.x86_64.rpm")
            deb = package_file(built, f"{name}_{self.version}-1_amd64.deb")
            listing = _root.run(["rpm", "-qlp", "--scripts", rpm]).stdout
            rpm_files = {line for line in listing.splitlines() if line.startswith("/")}
            deb_files = set()
            for line in _root.run(["dpkg-deb", "-c", deb]).stdout.splitlines():
                path = line.split(None, 5)[5].split(" -> ")[0].lstrip(".").rstrip("/")
                if path and path != "/usr/share" and not path.startswith("/usr/share/doc"):
                    deb_files.add(path)
            self.assertEqual(rpm_files - deb_files, set(), name)
            # Only the system's own directories above ours may be the deb's alone.
            for path in deb_files - rpm_files:
                self.assertFalse(path.startswith(f"/opt/{name}"), path)
                self.assertTrue(any(f.startswith(path + "/") for f in rpm_files), path)
            user = "crsuser" if name == "crs" else "ciguser"
            self.assertRegex(listing, rf"useradd .*{user}")
            self.assertIn("systemctl enable", listing)
            configs = _root.run(["rpm", "-qcp", rpm]).stdout.split()
            self.assertEqual(set(configs), conffiles, name)
        # Both at once: a filter one package needs is unused for the other.
        rpms = [
            package_file(built, f"{name}-{self.version}-1.x86_64.rpm") for name in ("crs", "cig")
        ]
        rcfile = os.path.join(_root.TOP, "rpm", "rpmlintrc")
        lint = _root.run(["rpmlint", "-r", rcfile, *rpms], check=False)
        log(f"rpmlint: {lint.stdout.strip().splitlines()[-1:]}")
        self.assertNotRegex(lint.stdout, r"(?m)^\S+: [EW]: ", lint.stdout)
