"""Remote administration end to end: ``twistd crs`` with ``admin-listen``, ``crs-cli``
making the admin, and ``cryptify-admin`` over real TLS on loopback."""

from __future__ import annotations

import os

from tests.fakes import SECRET, update_bytes
from tests.interop._admin import CrsWithAdmin
from tests.interop._procs import (
    run_cli,
)


class RemoteAdminTests(CrsWithAdmin):
    def test_manual_procedure_and_boundaries(self) -> None:
        """Section 4.9's three steps, then what the admin may and may not do over TLS."""
        self.crs_cli("create", "account", "acme", "-s", SECRET)
        self.crs_cli("create", "account", "beta", "-s", SECRET)
        self.create_admin("alice")
        self.crs_cli("add", "admin-account", "alice", "acme")
        # step 2 done, no authorization yet: refused
        status, _, err = self.admin("alice", "stats", "enable", "acme")
        self.assertEqual((status, err), (1, "cryptify-admin: refused (403 not-authorized)\n"))
        self.crs_cli("add", "admin-account-authorization", "alice", "acme", "statistics")
        self.crs_cli("add", "admin-account-authorization", "alice", "acme", "update")
        status, out, err = self.admin("alice", "stats", "enable", "acme")
        self.assertEqual((status, out), (0, "statistics enabled for acme\n"), err)
        status, out, err = self.admin("alice", "stats", "export", "acme")
        self.assertEqual(status, 0, err)
        self.assertTrue(out.startswith("tel-uri\tsession-outgoing"), out)
        update = os.path.join(self.dir, "acme.upd")
        with open(update, "wb") as f:
            f.write(update_bytes("acme", period="2026-12"))
        status, out, err = self.admin("alice", "apply", "acme", update)
        self.assertEqual(status, 0, err)
        self.assertIn("account acme", out)
        self.assertIn("2026-12", self.crs_cli("show", "updates"))
        # another account
        status, _, err = self.admin("alice", "stats", "export", "beta")
        self.assertEqual(err, "cryptify-admin: refused (403 not-your-account)\n")
        # a deleted admin
        self.crs_cli("delete", "admin", "alice")
        status, _, err = self.admin("alice", "accounts")
        self.assertEqual((status, err), (1, "cryptify-admin: refused (401 bad-credential)\n"))
        with open(os.path.join(self.dir, "log", "crs.log")) as f:
            log = f.read()
        self.assertIn("not-authorized (admin alice)", log)
        self.assertIn("not-your-account (admin alice)", log)
        with open(os.path.join(self.dir, "alice.secret")) as f:
            self.assertNotIn(f.read().strip(), log)

    def test_untrusted_certificate_refused(self) -> None:
        """cryptify-admin does not talk to a CRS whose certificate it cannot verify."""
        self.create_admin("alice")
        status, _, err = run_cli(
            "cryptify-admin",
            "--url",
            f"https://127.0.0.1:{self.port}",
            "--admin",
            "alice",
            "--secret-file",
            os.path.join(self.dir, "alice.secret"),
            "accounts",
        )
        self.assertEqual(status, 1)
        self.assertIn("not trusted", err)
