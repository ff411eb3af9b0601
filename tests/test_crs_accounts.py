"""Tests for cryptify.crs.accounts: account files, update files, blacklists."""

from __future__ import annotations

import os
import stat
from functools import cache

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.accounts import AccountError, AccountStore, check_account_id
from cryptify.crypto.updatefile import seal_update_file
from cryptify.kms.store import KmsAccount

SECRET = "c2VjcmV0LXNoYXJlZC13aXRoLWNtcw=="


@cache
def kms(account: str = "acme") -> KmsAccount:
    return KmsAccount.generate(account)


def update_bytes(
    account: str = "acme",
    secret: str = SECRET,
    revision: int = 1,
    blacklist: tuple[str, ...] = (),
    period: str = "2026-11",
    with_next: bool = True,
) -> bytes:
    domain = attrs.evolve(kms(account), revision=revision)
    return seal_update_file(domain.update(period, with_next, blacklist), secret)


class AccountIdTests(SynchronousTestCase):
    def test_rules(self) -> None:
        """IDs are letters, digits, '-' and '_', 1 to 20 characters; others are refused clearly."""
        for good in ("acme", "A-b_9", "x" * 20):
            self.assertEqual(check_account_id(good), good)
        for bad in ("", "x" * 21, "a b", "a/b", "..", "ä", "a\n"):
            exc = self.assertRaises(AccountError, check_account_id, bad)
            self.assertIn("at most 20 characters", str(exc))

    @settings(max_examples=200)
    @given(st.text(max_size=30))
    def test_never_other_errors(self, text: str) -> None:
        """Any text is either a valid ID or an AccountError."""
        try:
            check_account_id(text)
        except AccountError:
            pass


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.store = AccountStore(self.dir)

    def test_create_private_secret(self) -> None:
        """create writes the secret 0600 in a 0750 directory; reload finds the account."""
        account = self.store.create("acme", SECRET)
        mode = stat.S_IMODE(os.stat(os.path.join(account.path, "secret")).st_mode)
        self.assertEqual(mode, 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(account.path).st_mode), 0o750)
        fresh = AccountStore(self.dir)
        self.assertEqual(fresh.reload(), [])
        found = fresh.get("acme")
        assert found is not None
        self.assertEqual(found.secret, SECRET)

    def test_create_refusals(self) -> None:
        """Duplicate accounts, bad IDs and non-base64 secrets are refused."""
        self.store.create("acme", SECRET)
        self.assertRaises(AccountError, self.store.create, "acme", SECRET)
        self.assertRaises(AccountError, self.store.create, "bad id", SECRET)
        self.assertRaises(AccountError, self.store.create, "other", "not base64!")

    def test_apply_stores_months(self) -> None:
        """An update file is opened with the account's secret; both months become loaded."""
        self.store.create("acme", SECRET)
        applied = self.store.apply(update_bytes(blacklist=("tel:+4670000001",)))
        self.assertEqual(applied.periods, ("2026-11", "2026-12"))
        account = self.store.get("acme")
        assert account is not None
        self.assertEqual(account.kpak_for("2026-11"), kms("acme").kpak)
        self.assertIsNone(account.kpak_for("2027-01"))
        self.assertTrue(account.blacklisted("tel:+4670000001", "2026-11"))
        self.assertFalse(account.blacklisted("tel:+4670000002", "2026-11"))
        fresh = AccountStore(self.dir)
        fresh.reload()
        again = fresh.get("acme")
        assert again is not None
        self.assertEqual(again.months, account.months)

    def test_wrong_secret_changes_nothing(self) -> None:
        """A file sealed with another secret is refused and nothing loaded changes."""
        self.store.create("acme", SECRET)
        self.store.apply(update_bytes(revision=1))
        before = self.store.get("acme")
        exc = self.assertRaises(
            AccountError, self.store.apply, update_bytes(secret="b3RoZXI=", revision=2)
        )
        self.assertIn("refused", str(exc))
        self.assertEqual(self.store.get("acme"), before)

    def test_unknown_account(self) -> None:
        """A file for an account this CRS does not have is refused by name."""
        exc = self.assertRaises(AccountError, self.store.apply, update_bytes())
        self.assertIn("'acme', which is unknown", str(exc))

    def test_older_revision_refused(self) -> None:
        """A month cannot go back to an older revision."""
        self.store.create("acme", SECRET)
        self.store.apply(update_bytes(revision=5))
        exc = self.assertRaises(AccountError, self.store.apply, update_bytes(revision=4))
        self.assertIn("older than the applied revision 5", str(exc))

    @settings(max_examples=60, deadline=None)
    @given(st.data())
    def test_tampered_files_refused(self, data: st.DataObject) -> None:
        """Any change to a sealed file is refused with an AccountError and changes nothing."""
        if self.store.get("acme") is None:
            self.store.create("acme", SECRET)
        sealed = bytearray(update_bytes(revision=1))
        index = data.draw(st.integers(0, len(sealed) - 1))
        sealed[index] ^= data.draw(st.integers(1, 255))
        before = self.store.get("acme")
        try:
            self.store.apply(bytes(sealed))
        except AccountError:
            pass
        else:
            self.fail("a tampered update file was applied")
        self.assertEqual(self.store.get("acme"), before)

    def test_blacklist_persisted(self) -> None:
        """Operator blacklist entries persist, merge with the update's, and can be removed."""
        self.store.create("acme", SECRET)
        self.store.apply(update_bytes(blacklist=("tel:+1",)))
        self.store.set_blacklisted("acme", "tel:+2", True)
        fresh = AccountStore(self.dir)
        fresh.reload()
        account = fresh.get("acme")
        assert account is not None
        self.assertEqual(account.effective_blacklist("2026-11"), ["tel:+1", "tel:+2"])
        fresh.set_blacklisted("acme", "tel:+2", False)
        self.assertRaises(AccountError, fresh.set_blacklisted, "acme", "tel:+2", False)
        self.assertRaises(AccountError, fresh.set_blacklisted, "acme", "not a uri", True)

    def test_broken_account_keeps_loaded_state(self) -> None:
        """A damaged month file is reported on reload; the account keeps what it had."""
        self.store.create("acme", SECRET)
        self.store.apply(update_bytes())
        before = self.store.get("acme")
        with open(os.path.join(self.dir, "acme", "2026-11.json"), "w") as f:
            f.write("{broken")
        problems = self.store.reload()
        self.assertEqual(len(problems), 1)
        self.assertIn("acme", problems[0])
        self.assertEqual(self.store.get("acme"), before)

    def test_world_readable_secret_refused(self) -> None:
        """A secret file others can read makes the account fail to load, loudly."""
        account = self.store.create("acme", SECRET)
        os.chmod(os.path.join(account.path, "secret"), 0o644)
        fresh = AccountStore(self.dir)
        problems = fresh.reload()
        self.assertIn("chmod 600", problems[0])
        self.assertIsNone(fresh.get("acme"))

    def test_delete(self) -> None:
        """delete removes the account and its files."""
        account = self.store.create("acme", SECRET)
        self.store.apply(update_bytes())
        self.store.delete("acme")
        self.assertFalse(os.path.exists(account.path))
        self.assertRaises(AccountError, self.store.delete, "acme")
