"""
The manuals' operating procedures, followed as written on installed
systems (`make test-packages`): the CRS and CIG back-up and restore onto
a freshly installed Debian 12 root, and the CIG manual's migration steps
(the key file of CMS 3.5.2 or older, translate maps from the old maps).
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.packaging import _root, test_packages
from tests.packaging._root import DebianRoot, log

#: The CIG's number in these tests (the packaged cig.conf's maps use it).
CIG_URI = "tel:+8888"
#: Where the CIG's configuration step puts the CRS's certificate.
CRS_CA = "/opt/cig/crs-ca.pem"
SENDER, RECIPIENT = "tel:+4611111", "tel:+4622222"
KMS = ("/opt/crs/venv/bin/cryptify-kms", "--store", "/root/kms")

#: The CIG manual's Migration example maps, as the operator's old cig.conf has them.
OLD_MAPS = (
    Path(__file__).parent.parent / "fixtures" / "config" / "manual-migration-maps.conf"
).read_text()

#: The manual's mailboxes block, with mailboxes where the package's unit may write.
MAILBOXES = """
mailboxes {
    read {
        path "/opt/cig/mail/read";
        map_from translate_map telsrc;
        map_to translate_map sipmap;
    }
    write {
        path "/opt/cig/mail/write";
        map_from translate_map sipsrc;
        map_to translate_map telmap;
    }
}
"""

# Not imported by name: trial would run the package tests here again.
_helpers = vars(test_packages.PackagesTestCase)


class ProceduresTestCase(SynchronousTestCase):
    skip = _root.not_root_reason()

    # The installed-system helpers of the package tests.
    setUp = _helpers["setUp"]
    new_root = _helpers["new_root"]
    install = _helpers["install"]
    crs_cli = _helpers["crs_cli"]
    start_all = _helpers["start_all"]
    stop_all = _helpers["stop_all"]
    crs_running = _helpers["crs_running"]
    cig_status = _helpers["cig_status"]
    client_until = _helpers["client_until"]
    client_args = _helpers["client_args"]

    def sh(self, root: DebianRoot, command: str) -> str:
        """A command line of the manual, run by the shell in the root."""
        return root.chroot("/bin/sh", "-c", command).stdout

    def keys(self, root: DebianRoot, secret: str) -> None:
        """
        Account acme's keys: two users (/root/4611111.keys, 4622222.keys),
        the CIG's key material (/root/cig.keys), the month applied.
        """
        period = time.strftime("%Y-%m", time.gmtime())
        root.chroot(*KMS, "init", "acme")
        for uri in (SENDER, RECIPIENT):
            root.chroot(
                *KMS, "issue", "acme", uri, "--period", period, "-o", f"/root/{uri[5:]}.keys"
            )
        root.chroot(*KMS, "cig-keys", "acme", CIG_URI, "--period", period, "-o", "/root/cig.keys")
        root.chroot(
            *KMS, "update", "acme", "--secret", secret, "--period", period, "-o", "/root/acme.upd"
        )
        self.crs_cli(root, "apply", "/root/acme.upd")

    def trust_crs(self, root: DebianRoot) -> None:
        """
        The CIG's configuration step for a CRS with its own certificate:
        the CRS's certificate as the CA file cig.conf names.
        """
        shutil.copy(root.file("/opt/crs/data/tls/crs.crt"), root.file(CRS_CA))
        os.chmod(root.file(CRS_CA), 0o644)
        conf = root.read("/opt/cig/cig.conf")
        self.assertIn(f'// ca "{CRS_CA}";', conf)
        with open(root.file("/opt/cig/cig.conf"), "w") as f:
            f.write(conf.replace(f'// ca "{CRS_CA}";', f'ca "{CRS_CA}";'))

    def wait_attached(self, root: DebianRoot, what: str) -> str:
        """cig-cli status once it shows the CIG attached (cig.log if never)."""
        try:
            result: str = root.wait_for(lambda: self.cig_connected(root), what)
        except AssertionError as exc:
            logs = ""
            for name in ("/var/log/cig/cig.log", "/var/log/cig/twistd.log"):
                if os.path.exists(root.file(name)):
                    logs += f"\n{name}:\n" + root.read(name)[-3000:]
            raise AssertionError(f"{exc}{logs}") from None
        return result

    def cig_connected(self, root: DebianRoot) -> str:
        status = self.cig_status(root)
        for line in status.splitlines():
            if line.startswith("Connection state") and line.split()[-1] == "CONNECTED":
                return status
        return ""

    def mode(self, root: DebianRoot, inside: str) -> int:
        return stat.S_IMODE(os.lstat(root.file(inside)).st_mode)

    def group_of(self, root: DebianRoot, inside: str) -> str:
        gid = os.lstat(root.file(inside)).st_gid
        return root.chroot("getent", "group", str(gid)).stdout.split(":")[0]

    # -- back-up and restore ---------------------------------------------

    def test_backup_and_restore(self) -> None:
        """
        The CRS manual's back-up (4.19.1) and restore (4.19.2) and the CIG
        manual's Back-up and restore, as written, from one installed system
        to a freshly installed one: the restored CRS starts, repairs the
        modes the restore's chmod steps left on its account files (with a
        warning), loads the account and delivers a message stored before
        the back-up; the restored CIG attaches with its keystore and its
        mailbox is back.
        """
        old = self.new_root()
        self.install(old, self.version)
        self.start_all(old)
        self.trust_crs(old)
        old.stop_unit("cig-server")  # systemctl restart cig-server
        old.start_unit("cig-server")
        out = self.crs_cli(old, "create", "account", "acme", "-B", "32")
        self.keys(old, out.split("shared secret ")[1].split()[0])
        # The CRS stores messages for users it knows: the recipient
        # attaches once and goes away; then a message is posted to it.
        recipient = self.client_args(f"/root/{RECIPIENT[5:]}.keys")
        self.client_until(old, ["listen", *recipient], f"attached {RECIPIENT}")
        posted = old.chroot(
            "/opt/crs/venv/bin/cryptify-client", "send", RECIPIENT, "stored before the back-up",
            *self.client_args(f"/root/{SENDER[5:]}.keys"), check=False,
        )  # fmt: skip
        self.assertEqual(posted.returncode, 0, posted.stdout)
        # The CIG gets its key material the CMS 3.6.0 way and attaches.
        old.wait_for(lambda: self.cig_status(old), "cig-cli status")
        self.sh(old, "cig-cli set-key < /root/cig.keys")
        self.wait_attached(old, "the CIG attached")
        # Operator's edits, and a message waiting in a mailbox.
        for path, comment in (
            ("/opt/crs/crs.conf", "#"),
            ("/opt/crs/crs-local.conf", "#"),
            ("/opt/crs/iw-crs.conf", "#"),
            ("/opt/cig/cig.conf", "//"),
        ):
            with open(old.file(path), "a") as f:
                f.write(f"{comment} operator's edit of {path}\n")
        self.sh(old, "/opt/cig/bin/create_cig_maildir /opt/cig/mail/outgoing")
        self.sh(old, "echo 'Subject: waiting' > /opt/cig/mail/outgoing/cur/1.msg")
        self.stop_all(old)

        # Back-up, as the manuals write it (the CIG's with its mailboxes).
        day = time.strftime("%Y%m%d")
        crs_tar, cig_tar = f"crs-backup-crs1-{day}.tar", f"cig-backup-cig1-{day}.tar"
        self.sh(
            old,
            f"cd /root && tar cfv {crs_tar} /opt/crs/crs.conf /opt/crs/crs-local.conf"
            " /opt/crs/iw-crs.conf /opt/crs/accounts /opt/crs/data",
        )
        self.sh(
            old,
            f"cd /root && tar cfv {cig_tar} /opt/cig/cig.conf /opt/cig/userdata"
            f" /opt/cig/mail {CRS_CA}",
        )
        media = os.path.join(self.work, "media")
        os.mkdir(media)
        for name in (crs_tar, cig_tar, "4611111.keys", "4622222.keys"):
            shutil.copy(old.file(f"/root/{name}"), media)
        keystore = f"/opt/cig/userdata/.ks.{CIG_URI}"
        self.assertIn(
            f"opt/cig/userdata/.ks.{CIG_URI}",
            _root.run(["tar", "tf", os.path.join(media, cig_tar)]).stdout,
        )
        old.close()

        # The new system: the software installed anew, then the restore.
        new = self.new_root()
        self.install(new, self.version)
        for name in os.listdir(media):
            new.copy_in(os.path.join(media, name))
        log("restoring the CRS as its manual writes (4.19.2)")
        for line in (
            f"cd /root && tar xfv {crs_tar} -C /",
            "chown -R crsuser:crsuser /opt/crs",
            "chmod 644 /opt/crs/crs.conf",
            "chmod 644 /opt/crs/crs-local.conf",
            "chmod 644 /opt/crs/iw-crs.conf",
            "chmod -R 644 /opt/crs/accounts",
            "chmod 755 /opt/crs/accounts",
            "chmod 755 /opt/crs/accounts/*",
        ):
            self.sh(new, line)
        self.assertEqual(self.mode(new, "/opt/crs/accounts/acme/secret"), 0o644)
        log("restoring the CIG as its manual writes")
        self.sh(new, f"cd /root && tar xfv {cig_tar} -C /")
        self.sh(new, "chown -R ciguser:ciguser /opt/cig")
        # The manual's chown takes the mailbox from the group cigmail:
        # create_cig_maildir puts an existing mailbox's owner and mode right.
        self.assertEqual(self.group_of(new, "/opt/cig/mail/outgoing/new"), "ciguser")
        self.sh(new, "/opt/cig/bin/create_cig_maildir /opt/cig/mail/outgoing")

        # "systemctl restart crs", cig-relay, cig-server.
        self.start_all(new)
        self.assertIn("acme", self.crs_cli(new, "list", "account"))
        self.assertEqual(self.mode(new, "/opt/crs/accounts/acme/secret"), 0o600)
        crs_log = new.read("/var/log/crs/crs.log")
        self.assertIn(
            "/opt/crs/accounts/acme/secret had mode 0644, open to other users; "
            "the CRS owns it and set it to 0600",
            crs_log,
        )
        for path in ("/opt/crs/crs.conf", "/opt/crs/crs-local.conf", "/opt/crs/iw-crs.conf"):
            self.assertIn(f"operator's edit of {path}", new.read(path))
        self.client_until(
            new,
            ["listen", *self.client_args(f"/root/{RECIPIENT[5:]}.keys")],
            "stored before the back-up",
        )

        status = self.wait_attached(new, "the restored CIG attached")
        self.assertIn(CIG_URI, status)
        self.assertEqual(self.mode(new, keystore), 0o600)
        self.assertIn("operator's edit of /opt/cig/cig.conf", new.read("/opt/cig/cig.conf"))
        self.assertEqual(new.read("/opt/cig/mail/outgoing/cur/1.msg"), "Subject: waiting\n")
        self.assertEqual(self.group_of(new, "/opt/cig/mail/outgoing/new"), "cigmail")
        self.assertEqual(self.mode(new, "/opt/cig/mail/outgoing/new"), 0o2770)
        self.stop_all(new)

    # -- the CIG manual's migration steps --------------------------------

    def test_cig_migration(self) -> None:
        """
        The CIG manual's steps for an older installation: key material from
        CMS 3.5.2 or older (a PDF holding a QR code) through pdftoraw into
        cig.raw, consumed by the CIG at its restart into its keystore; and
        the Migration chapter's translate maps made from the old maps by
        cig-migrate-maps, with the manual's mailboxes block naming them:
        the configuration reads, and the CIG runs with it.
        """
        root = self.new_root()
        self.install(root, self.version)
        # The tools the manual's pdftoraw step needs (the cig package
        # recommends them), and two to make a PDF with a QR code in it.
        root.apt_install("poppler-utils", "zbar-tools", "qrencode", "img2pdf")
        self.start_all(root)
        self.trust_crs(root)
        out = self.crs_cli(root, "create", "account", "acme", "-B", "32")
        self.keys(root, out.split("shared secret ")[1].split()[0])
        # What an older CMS handed over: the key material as a QR code in a PDF.
        self.sh(root, "qrencode -r /root/cig.keys -o /root/cig-qr.png")
        self.sh(root, "img2pdf /root/cig-qr.png -o /root/cig-qr.pdf")

        log("the key step for CMS 3.5.2 or older")
        self.sh(root, "pdftoraw /root/cig-qr.pdf > /opt/cig/userdata/cig.raw")
        self.assertEqual(root.read("/opt/cig/userdata/cig.raw"), root.read("/root/cig.keys"))
        self.sh(root, "chown ciguser:ciguser /opt/cig/userdata/cig.raw")
        root.stop_unit("cig-server")  # systemctl restart cig-server
        root.start_unit("cig-server")
        status = self.wait_attached(root, "the CIG attached with cig.raw")
        self.assertIn(CIG_URI, status)
        self.assertFalse(os.path.exists(root.file("/opt/cig/userdata/cig.raw")))
        self.assertEqual(self.mode(root, f"/opt/cig/userdata/.ks.{CIG_URI}"), 0o600)
        refused = root.chroot("pdftoraw", "/root/cig-qr.png", check=False)
        self.assertEqual(refused.returncode, 1)
        self.assertIn("not a readable PDF", refused.stdout)

        log("the Migration chapter: translate maps from the old maps")
        with open(root.file("/opt/cig/cig.conf"), "a") as f:
            f.write(OLD_MAPS)
        printed = self.sh(root, "cig-migrate-maps --map telmap --map sipmap /opt/cig/cig.conf")
        self.assertIn(
            'translate_map telmap {\n    rule\n        match "tel:+8888;{series}"', printed
        )
        done = self.sh(
            root,
            "cig-migrate-maps --map telmap --map telsrc --map sipsrc --map sipmap"
            " --in-place /opt/cig/cig.conf",
        )
        self.assertIn("added translate_map telmap, telsrc, sipsrc, sipmap", done)
        for box in ("read", "write"):
            self.sh(root, f"/opt/cig/bin/create_cig_maildir /opt/cig/mail/{box}")
        with open(root.file("/opt/cig/cig.conf"), "a") as f:
            f.write(MAILBOXES)
        self.assertEqual(self.sh(root, "cig-cli read /opt/cig/cig.conf").strip(), "OK")
        conf = os.stat(root.file("/opt/cig/cig.conf"))
        self.assertEqual((conf.st_uid, stat.S_IMODE(conf.st_mode)), (0, 0o644))

        root.stop_unit("cig-server")
        root.start_unit("cig-server")
        self.wait_attached(root, "the CIG attached after the migration")
        cig_log = root.wait_for(
            lambda: (
                "mailboxes: 1 read, 1 write" in root.read("/var/log/cig/cig.log")
                and root.read("/var/log/cig/cig.log")
            ),
            "the migrated configuration in cig.log",
        )
        self.assertIn("translate maps from_secure, to_pbx, telmap, telsrc, sipsrc, sipmap", cig_log)
        self.stop_all(root)
