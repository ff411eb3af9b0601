"""Tests for cryptify.crs.accounts: account files, update files, blacklists."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.accounts import (
    AccountError,
    AccountStore,
    Month,
    check_account_id,
    read_blacklist,
    read_month,
    read_secret,
)
from cryptify.crypto.updatefile import seal_update_file
from tests.fakes import SECRET, cms_account, update_bytes


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

    def test_undated_update_stamped_by_the_clock(self) -> None:
        """A month from an update file without a creation time is stamped with the
        store's clock (the reactor's in the CRS), not the wall clock."""
        store = AccountStore(self.dir, clock=lambda: 1_700_000_000.5)
        store.create("acme", SECRET)
        undated = attrs.evolve(cms_account("acme").update("2026-11", True, ()), created=0)
        store.apply(seal_update_file(undated, SECRET))
        account = store.get("acme")
        assert account is not None
        self.assertEqual(account.months["2026-11"].created, 1_700_000_000)

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
        self.assertEqual(account.kpak_for("2026-11"), cms_account("acme").kpak)
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

    def test_delete(self) -> None:
        """delete removes the account and its files."""
        account = self.store.create("acme", SECRET)
        self.store.apply(update_bytes())
        self.store.delete("acme")
        self.assertFalse(os.path.exists(account.path))
        self.assertRaises(AccountError, self.store.delete, "acme")


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def chmod_tree(top: str, change: Callable[[int, bool], int]) -> None:
    """``chmod -R`` as the manuals run it: ``change(mode, is_directory)`` for every entry."""
    for root, dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(root, name)
            os.chmod(path, change(mode_of(path), False))
        for name in dirs:
            path = os.path.join(root, name)
            os.chmod(path, change(mode_of(path), True))
    os.chmod(top, change(mode_of(top), True))


class LogCapture:
    """Formatted log events while a test runs."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self)
        case.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        self.lines.append(formatEvent(event))

    def warnings(self, word: str) -> list[str]:
        return [line for line in self.lines if word in line]


# A month file's JSON: anything JSON can hold, and the expected keys with hostile values.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
month_docs = st.fixed_dictionaries(
    {},
    optional={
        "account": st.sampled_from(["acme", "other"]) | json_values,
        "period": st.sampled_from(["2026-11", "2026-12"]) | json_values,
        "kpak": st.sampled_from(["04ab", "zz", ""]) | json_values,
        "z": st.sampled_from(["04cd", "0"]) | json_values,
        "revision": st.integers(-2, 10**30) | json_values,
        "created": st.integers(-2, 10**30) | json_values,
        "blacklist": st.lists(st.sampled_from(["tel:+1", "tel:+2 3", "x"]) | json_values),
    },
)


def deep_json(depth: int, opener: str) -> bytes:
    closer = {"[": "]", '{"k":': "}"}[opener]
    return (opener * depth + "1" + closer * depth).encode()


class LoaderTests(SynchronousTestCase):
    """Each account file loader answers any content with a value or an AccountError."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(os.path.join(self.dir, "acme"))
        self.owner = os.geteuid()

    def put(self, name: str, data: bytes, mode: int = 0o600) -> str:
        path = os.path.join(self.dir, "acme", name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        return path

    def refused(self, path: str, call: Callable[[], object]) -> str:
        try:
            call()
        except AccountError as exc:
            self.assertIn(path, str(exc))
            self.assertLess(len(str(exc)), 400)
            return str(exc)
        return ""

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=300))
    def test_random_bytes(self, data: bytes) -> None:
        """Random octets in secret, a month file or the blacklist: a value or a clear error."""
        secret = self.put("secret", data)
        month = self.put("2026-11.json", data, 0o640)
        listed = self.put("blacklist", data, 0o640)
        self.refused(secret, lambda: read_secret(secret, self.owner))
        self.refused(month, lambda: read_month(month, "acme", "2026-11", self.owner))
        self.refused(listed, lambda: read_blacklist(listed, self.owner))

    @settings(max_examples=200, deadline=None)
    @given(month_docs)
    def test_hostile_month_documents(self, doc: dict[str, Any]) -> None:
        """Valid JSON of the wrong shape is a clear error naming the file, never another one."""
        try:
            text = json.dumps(doc).encode()
        except ValueError:
            return
        month = self.put("2026-11.json", text, 0o640)
        try:
            loaded = read_month(month, "acme", "2026-11", self.owner)
        except AccountError as exc:
            self.assertIn(month, str(exc))
            return
        self.assertIsInstance(loaded, Month)
        self.assertIsInstance(loaded.revision, int)

    @settings(max_examples=20, deadline=None)
    @given(st.integers(1, 250_000), st.sampled_from(["[", '{"k":']))
    def test_deep_nesting(self, depth: int, opener: str) -> None:
        """Deeply nested JSON (200,000 levels) is refused clearly, no RecursionError."""
        month = self.put("2026-11.json", deep_json(depth, opener), 0o640)
        message = self.refused(month, lambda: read_month(month, "acme", "2026-11", self.owner))
        self.assertTrue(message)

    def test_two_hundred_thousand_levels(self) -> None:
        """The issue's own case: a month file 200,000 arrays deep."""
        month = self.put("2026-11.json", deep_json(200_000, "["), 0o640)
        exc = self.assertRaises(AccountError, read_month, month, "acme", "2026-11", self.owner)
        self.assertIn("nested too deeply", str(exc))

    def test_oversized_and_special_files(self) -> None:
        """Files over the size bound and FIFOs are refused without reading or hanging."""
        secret = self.put("secret", b"A" * 5000)
        self.assertIn("too large", self.refused(secret, lambda: read_secret(secret, self.owner)))
        os.unlink(secret)
        os.mkfifo(secret, 0o600)
        self.assertIn(
            "not a regular file", self.refused(secret, lambda: read_secret(secret, self.owner))
        )


class ReloadTests(SynchronousTestCase):
    """reload: a broken account is reported by file and keeps its state; the others reload."""

    def setUp(self) -> None:
        self.base = self.mktemp()
        os.makedirs(self.base)
        self.fresh_accounts()

    def fresh_accounts(self) -> None:
        """Three loaded accounts in a new directory (one per hypothesis example)."""
        self.dir = tempfile.mkdtemp(dir=self.base)
        self.store = AccountStore(self.dir)
        for name in ("alpha", "acme", "zulu"):
            self.store.create(name, SECRET)
        self.store.apply(update_bytes())
        self.store.set_blacklisted("acme", "tel:+2", True)

    def corrupt(self, kind: str, data: bytes) -> str:
        name = {"secret": "secret", "month": "2026-11.json", "blacklist": "blacklist"}[kind]
        path = os.path.join(self.dir, "acme", name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    @settings(max_examples=40, deadline=None)
    @given(
        st.sampled_from(["secret", "month", "blacklist"]),
        st.binary(min_size=1, max_size=200) | st.just(deep_json(200_000, "[")),
    )
    def test_one_broken_account(self, kind: str, data: bytes) -> None:
        """One corrupt file: its path is reported, the others reload, acme keeps its state."""
        self.fresh_accounts()
        before = self.store.get("acme")
        path = self.corrupt(kind, data)
        newcomer = os.path.join(self.dir, "newco")
        os.mkdir(newcomer, 0o750)
        with open(os.path.join(newcomer, "secret"), "w") as f:
            f.write(SECRET)
        os.chmod(os.path.join(newcomer, "secret"), 0o600)
        problems = self.store.reload()
        self.assertEqual(sorted(a.id for a in self.store), ["acme", "alpha", "newco", "zulu"])
        if problems:
            self.assertEqual(len(problems), 1, problems)
            self.assertIn(path, problems[0])
            self.assertEqual(self.store.get("acme"), before)

    def test_broken_account_never_loaded_stays_out(self) -> None:
        """An account broken on its first load is not loaded; the problem names its file."""
        path = self.corrupt("secret", b"\xff\xfe not base64")
        fresh = AccountStore(self.dir)
        problems = fresh.reload()
        self.assertEqual([a.id for a in fresh], ["alpha", "zulu"])
        self.assertEqual(problems, [f"{path}: the shared secret is not base64 text"])


class PermissionTests(SynchronousTestCase):
    """The CRS repairs the modes the manuals' procedures loosen on the files it owns."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        store = AccountStore(self.dir)
        self.account = store.create("acme", SECRET)
        store.apply(update_bytes())
        store.set_blacklisted("acme", "tel:+2", True)
        self.secret = os.path.join(self.account.path, "secret")
        self.month = os.path.join(self.account.path, "2026-11.json")
        self.logs = LogCapture(self)

    def test_restore_chmod_644(self) -> None:
        """The restore's chmod steps: the account loads, its secret is 0600 again, one warning."""
        chmod_tree(self.dir, lambda mode, is_dir: 0o755 if is_dir else 0o644)
        fresh = AccountStore(self.dir)
        self.assertEqual(fresh.reload(), [])
        loaded = fresh.get("acme")
        assert loaded is not None
        self.assertEqual(loaded.secret, SECRET)
        self.assertEqual(mode_of(self.secret), 0o600)
        self.assertEqual(mode_of(self.month), 0o644)
        warned = self.logs.warnings(self.secret)
        self.assertEqual(len(warned), 1)
        self.assertIn("0644", warned[0])
        self.assertNotIn(SECRET, "".join(self.logs.lines))

    def test_update_chmod_og_rw(self) -> None:
        """``chmod -R og+rw``: secrets back to 0600, group/other write removed everywhere."""
        chmod_tree(self.dir, lambda mode, is_dir: mode | 0o066)
        fresh = AccountStore(self.dir)
        self.assertEqual(fresh.reload(), [])
        self.assertEqual(mode_of(self.secret), 0o600)
        self.assertEqual(mode_of(self.month), 0o644)
        self.assertEqual(mode_of(os.path.join(self.account.path, "blacklist")), 0o644)
        self.assertEqual(mode_of(self.account.path) & 0o022, 0)
        self.assertEqual(mode_of(self.dir) & 0o022, 0)
        self.assertNotIn(SECRET, "".join(self.logs.lines))

    def test_loose_files_of_another_user_refused(self) -> None:
        """A loose file the CRS does not own cannot be made safe: its account is refused."""
        other = os.geteuid() + 1
        os.chmod(self.secret, 0o644)
        fresh = AccountStore(self.dir, owner=other)
        problems = fresh.reload()
        self.assertIsNone(fresh.get("acme"))
        self.assertEqual(len(problems), 1)
        self.assertIn(self.secret, problems[0])
        self.assertIn("chown", problems[0])
        self.assertEqual(mode_of(self.secret), 0o644)

    def test_world_writable_month_of_another_user_refused(self) -> None:
        """A month file anyone may write, owned by another user, keeps the old state."""
        store = AccountStore(self.dir)
        store.reload()
        before = store.get("acme")
        store.owner = os.geteuid() + 1
        os.chmod(self.month, 0o666)
        problems = store.reload()
        self.assertEqual(len(problems), 1)
        self.assertIn(self.month, problems[0])
        self.assertEqual(store.get("acme"), before)

    def test_private_files_of_another_user_still_read(self) -> None:
        """Files of another user with safe modes are read as before (a CRS run as root)."""
        fresh = AccountStore(self.dir, owner=os.geteuid() + 1)
        os.chmod(self.dir, 0o755)
        os.chmod(self.account.path, 0o750)
        self.assertEqual(fresh.reload(), [])
        self.assertIsNotNone(fresh.get("acme"))


class DroppedUpdateTests(SynchronousTestCase):
    """CMS older than 3.2.0: an update file dropped into the account directory."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.store = AccountStore(self.dir)
        self.account = self.store.create("acme", SECRET)

    def drop(self, name: str, data: bytes) -> str:
        path = os.path.join(self.account.path, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_picked_up_by_reload(self) -> None:
        """reload applies a dropped update file, after the manual's chmod og+rw, and marks it."""
        path = self.drop("2026-11.upd", update_bytes(revision=3, blacklist=("tel:+7",)))
        chmod_tree(self.dir, lambda mode, is_dir: mode | 0o066)
        self.assertEqual(self.store.reload(), [])
        account = self.store.get("acme")
        assert account is not None
        self.assertEqual(sorted(account.months), ["2026-11", "2026-12"])
        self.assertEqual(account.kpak_for("2026-11"), cms_account("acme").kpak)
        self.assertTrue(account.blacklisted("tel:+7", "2026-11"))
        self.assertFalse(os.path.exists(path))
        self.assertTrue(os.path.exists(path + ".applied"))
        self.assertEqual(mode_of(os.path.join(self.account.path, "secret")), 0o600)
        fresh = AccountStore(self.dir)
        self.assertEqual(fresh.reload(), [])
        again = fresh.get("acme")
        assert again is not None
        self.assertEqual(again.months, account.months)

    def test_refused_file_stays_and_is_reported(self) -> None:
        """A dropped file sealed with another secret, or older, is reported and stays."""
        self.store.apply(update_bytes(revision=5))
        before = self.store.get("acme")
        wrong = self.drop("a.upd", update_bytes(secret="b3RoZXI=", revision=6))
        older = self.drop("b.upd", update_bytes(revision=4))
        junk = self.drop("c.upd", os.urandom(64))
        problems = self.store.reload()
        self.assertEqual(len(problems), 3, problems)
        for path, problem in zip((wrong, older, junk), problems, strict=True):
            self.assertTrue(problem.startswith(f"{path}: "), problem)
            self.assertTrue(os.path.exists(path))
        self.assertIn("does not authenticate", problems[0])
        self.assertIn("older than the applied revision 5", problems[1])
        self.assertEqual(self.store.get("acme"), before)
