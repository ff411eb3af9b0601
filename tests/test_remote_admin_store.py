"""Remote admins: the store (``admins.json``) and the crs-cli actions that change it."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import stat
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.accounts import AccountStore
from cryptify.crs.operator import cli
from cryptify.crs.operator.admin import CrsAdmin
from cryptify.crs.operator.state import CrsState
from cryptify.crs.remote_admin.store import (
    KEY_BYTES,
    Admin,
    AdminError,
    AdminStore,
    decode_secret,
    fingerprint,
    new_secret,
    parse_admins,
    public_key_of,
    render_admins,
)
from cryptify.crs.trace import TraceHub
from cryptify.protocols import crs_admin
from cryptify.protocols.mgmt import ManagementClient, ManagementProtocol
from tests.fakes import SECRET

KEY = public_key_of(b"\x01" * KEY_BYTES)


class StoreTests(SynchronousTestCase):
    """What the store keeps, where, and what it refuses."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.path = os.path.join(self.dir, "admins.json")
        self.store = AdminStore(self.path, clock=lambda: 1234.5)

    def reread(self) -> AdminStore:
        again = AdminStore(self.path)
        self.assertIsNone(again.load())
        return again

    def test_created_admin_durable_private_without_secret(self) -> None:
        """create admin writes a 0600 file holding the public key only, never the secret."""
        secret, key = new_secret()
        self.store.create("alice", key)
        mode = stat.S_IMODE(os.stat(self.path).st_mode)
        self.assertEqual(mode, 0o600)
        with open(self.path, "rb") as f:
            data = f.read()
        self.assertNotIn(secret.encode(), data)
        self.assertNotIn(decode_secret(secret).hex().encode(), data)
        again = self.reread().admin("alice")
        self.assertEqual(again, Admin("alice", key, 1234, {}))
        self.assertEqual(public_key_of(decode_secret(secret)), again.key)

    def test_rights_default_to_nothing_and_round_trip(self) -> None:
        """A new admin manages no account; an added account carries no authorization."""
        self.store.create("alice", KEY)
        self.store.add_account("alice", "acme")
        self.assertFalse(self.store.admin("alice").may("acme", "statistics"))
        self.store.add_authorization("alice", "acme", "statistics")
        self.assertTrue(self.reread().admin("alice").may("acme", "statistics"))
        self.assertFalse(self.reread().admin("alice").may("acme", "update"))
        self.store.delete_authorization("alice", "acme", "statistics")
        self.assertEqual(self.reread().admin("alice").accounts, {"acme": frozenset()})
        self.store.delete_account("alice", "acme")
        self.assertEqual(self.reread().admin("alice").accounts, {})
        self.store.delete("alice")
        self.assertIsNone(self.reread().get("alice"))

    def test_refusals_say_why(self) -> None:
        """Each impossible change is refused with its reason and changes nothing."""
        self.store.create("alice", KEY)
        before = self.store.admins
        cases = [
            (lambda: self.store.create("alice", KEY), "already exists"),
            (lambda: self.store.create("bad name", KEY), "invalid admin name"),
            (lambda: self.store.create("x" * 21, KEY), "invalid admin name"),
            (lambda: self.store.delete("bob"), "no admin bob"),
            (lambda: self.store.add_account("alice", "a/b"), "invalid account ID"),
            (lambda: self.store.add_authorization("alice", "acme", "update"), "add admin-account"),
            (lambda: self.store.delete_account("alice", "acme"), "has no account"),
        ]
        for change, why in cases:
            with self.assertRaises(AdminError) as caught:
                change()
            self.assertIn(why, str(caught.exception))
        self.assertEqual(self.store.admins, before)
        self.store.add_account("alice", "acme")
        before = self.store.admins
        for change, why in [
            (lambda: self.store.add_authorization("alice", "acme", "root"), "one of"),
            (lambda: self.store.delete_authorization("alice", "acme", "update"), "no update"),
            (lambda: self.store.add_account("alice", "acme"), "already has"),
        ]:
            with self.assertRaises(AdminError) as caught:
                change()
            self.assertIn(why, str(caught.exception))
        self.assertEqual(self.store.admins, before)

    def test_write_failure_changes_nothing(self) -> None:
        """When the file cannot be written the change is refused and not taken in memory."""
        self.store.create("alice", KEY)
        os.chmod(self.dir, 0o500)
        self.addCleanup(os.chmod, self.dir, 0o700)
        if os.geteuid() == 0:
            # root ignores the directory mode: make the target a directory instead
            os.chmod(self.dir, 0o700)
            self.store.path = os.path.join(self.dir, "gone", "x", "admins.json")
            os.makedirs(os.path.dirname(self.store.path))
            os.mkdir(self.store.path)
        with self.assertRaises(AdminError):
            self.store.add_account("alice", "acme")
        self.assertEqual(self.store.admin("alice").accounts, {})

    def test_broken_file_kept_and_changes_refused(self) -> None:
        """A broken admins file admits nobody, is reported, and is never overwritten."""
        os.makedirs(self.dir)
        with open(self.path, "wb") as f:
            f.write(b'{"version": 1, "admins": {"alice": 3}}')
        os.chmod(self.path, 0o600)
        problem = self.store.load()
        assert problem is not None
        self.assertIn(self.path, problem)
        self.assertEqual(list(self.store), [])
        with self.assertRaises(AdminError) as caught:
            self.store.create("bob", KEY)
        self.assertIn("broken", str(caught.exception))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b'{"version": 1, "admins": {"alice": 3}}')

    def test_loose_mode_repaired(self) -> None:
        """A group-readable admins file of ours is set back to 0600 when read."""
        self.store.create("alice", KEY)
        os.chmod(self.path, 0o644)
        self.reread()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_forget_account(self) -> None:
        """A deleted account is taken from every admin (a new one of that ID starts clean)."""
        self.store.create("alice", KEY)
        self.store.create("bob", KEY)
        for name in ("alice", "bob"):
            self.store.add_account(name, "acme")
        self.store.add_account("bob", "other")
        self.assertEqual(self.store.forget_account("acme"), ["alice", "bob"])
        again = self.reread()
        self.assertEqual(again.admin("alice").accounts, {})
        self.assertEqual(set(again.admin("bob").accounts), {"other"})


names = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)
admins_strategy = st.dictionaries(
    names,
    st.builds(
        lambda key, created, accounts: (key, created, accounts),
        st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES),
        st.integers(min_value=0, max_value=2**40),
        st.dictionaries(
            names, st.frozensets(st.sampled_from(["statistics", "update"])), max_size=4
        ),
    ),
    max_size=4,
)


def _json_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=30),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=20,
    )


class ParserTests(SynchronousTestCase):
    """parse_admins answers every input with admins or one AdminError."""

    @given(admins_strategy)
    @settings(max_examples=100, deadline=None)
    def test_round_trip(self, drawn: dict[str, Any]) -> None:
        """What render_admins writes, parse_admins reads back the same."""
        admins = {
            name: Admin(name, key, created, dict(accounts))
            for name, (key, created, accounts) in drawn.items()
        }
        self.assertEqual(parse_admins(render_admins(admins)), admins)

    @given(st.binary(max_size=300))
    @settings(max_examples=300, deadline=None)
    def test_hostile_bytes(self, data: bytes) -> None:
        """Arbitrary octets: a clean AdminError or admins, never another exception."""
        try:
            parse_admins(data)
        except AdminError:
            pass

    @given(_json_values(), _json_values())
    @settings(max_examples=300, deadline=None)
    def test_hostile_json(self, admins: Any, entry: Any) -> None:
        """Well-formed JSON of the wrong shape, anywhere in the file, is refused cleanly."""
        for doc in (
            admins,
            {"version": 1, "admins": admins},
            {"version": 1, "admins": {"alice": entry}},
            {"version": 1, "admins": {"alice": {"created": 1, "key": "AA==", "accounts": entry}}},
        ):
            try:
                parsed = parse_admins(json.dumps(doc).encode())
            except AdminError:
                continue
            for admin in parsed.values():
                self.assertEqual(len(admin.key), KEY_BYTES)

    @given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=20))
    @settings(max_examples=300, deadline=None)
    def test_names_from_the_command_line(self, name: str, account: str, auth: str) -> None:
        """Whatever crs-cli passes on, the store takes exactly the manual's names and rights."""
        store = AdminStore(os.path.join(self.mktemp(), "admins.json"))
        valid = re.fullmatch(r"[A-Za-z0-9_-]{1,20}", name) is not None
        try:
            store.create(name, KEY)
        except AdminError:
            self.assertFalse(valid)
            return
        self.assertTrue(valid)
        try:
            store.add_account(name, account)
            store.add_authorization(name, account, auth)
        except AdminError:
            pass
        else:
            self.assertIn(auth, ("statistics", "update"))
            self.assertRegex(account, r"\A[A-Za-z0-9_-]{1,20}\Z")
        self.assertEqual(parse_admins(render_admins(store.admins)), store.admins)

    def test_deep_nesting(self) -> None:
        """JSON nested past the recursion limit is an AdminError, not a crash."""
        with self.assertRaises(AdminError):
            parse_admins(b"[" * 100000 + b"]" * 100000)

    @given(st.text(max_size=60))
    @settings(max_examples=200, deadline=None)
    def test_secret_decoding(self, text: str) -> None:
        """decode_secret takes exactly 32 octets of base64 and refuses everything else cleanly."""
        try:
            raw = decode_secret(text)
        except AdminError:
            return
        self.assertEqual(len(raw), KEY_BYTES)


class CliActionTests(SynchronousTestCase):
    """crs-cli's admin actions against the CRS's responders, in memory."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.admins = AdminStore(
            os.path.join(self.mktemp(), "admins.json"), clock=self.clock.seconds
        )
        self.state = CrsState(
            "crs1",
            {"crs": lambda: True},
            AccountStore(self.mktemp()),
            TraceHub(self.clock.seconds),
            admins=self.admins,
        )
        server = ManagementProtocol(lambda proto: CrsAdmin(self.state, proto))
        self.client = ManagementClient(lambda line: None)
        self.pump = iosim.connect(
            server, iosim.makeFakeServer(server), self.client, iosim.makeFakeClient(self.client)
        )
        self.state.accounts.create("acme", SECRET)
        self.state.accounts.create("beta", SECRET)

    def crs_cli(self, *argv: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        args: argparse.Namespace = cli.build_parser(err).parse_args(list(argv))
        done = ensureDeferred(cli.remote_action(args, out, err)(self.client))
        self.pump.flush()
        failures: list[Any] = []
        done.addErrback(failures.append)
        if failures:
            return 1, str(failures[0].value)
        return self.successResultOf(done), out.getvalue()

    def test_create_prints_secret_once_and_keeps_verifier(self) -> None:
        """create admin prints a secret; the CRS keeps its public key; show admin hides it."""
        status, text = self.crs_cli("create", "admin", "alice")
        self.assertEqual(status, 0)
        lines = text.splitlines()
        self.assertEqual(lines[0], "admin alice created")
        secret = lines[1].removeprefix("secret ")
        key = public_key_of(decode_secret(secret))
        self.assertEqual(self.admins.admin("alice").key, key)
        status, shown = self.crs_cli("show", "admin", "alice")
        self.assertEqual(shown.splitlines()[0].split(), ["Name", "Secret"])
        self.assertEqual(shown.splitlines()[1].split(), ["alice", fingerprint(key)])
        self.assertNotIn(secret, shown)

    def test_layouts(self) -> None:
        """show admins / admin-accounts print the manual's columns with each admin's rights."""
        self.crs_cli("create", "admin", "alice")
        self.crs_cli("create", "admin", "bob")
        self.assertEqual(self.crs_cli("add", "admin-account", "alice", "acme")[0], 0)
        self.crs_cli("add", "admin-account", "alice", "beta")
        status, text = self.crs_cli(
            "add", "admin-account-authorization", "alice", "acme", "statistics"
        )
        self.assertEqual((status, text), (0, "admin alice now has statistics on acme\n"))
        self.crs_cli("add", "admin-account-authorization", "alice", "acme", "update")
        rows = [line.split() for line in self.crs_cli("show", "admins")[1].splitlines()]
        self.assertEqual(rows, [["Admin", "Accounts"], ["alice", "acme,beta"], ["bob", "-"]])
        rows = [
            line.split() for line in self.crs_cli("show", "admin-accounts", "alice")[1].splitlines()
        ]
        self.assertEqual(
            rows, [["Account", "Authorizations"], ["acme", "statistics,update"], ["beta", "-"]]
        )
        self.crs_cli("delete", "admin-account-authorization", "alice", "acme", "update")
        self.crs_cli("delete", "admin-account", "alice", "beta")
        rows = [
            line.split() for line in self.crs_cli("show", "admin-accounts", "alice")[1].splitlines()
        ]
        self.assertEqual(rows, [["Account", "Authorizations"], ["acme", "statistics"]])
        self.assertEqual(self.crs_cli("delete", "admin", "bob"), (0, "admin bob deleted\n"))
        rows = [line.split() for line in self.crs_cli("show", "admins")[1].splitlines()]
        self.assertEqual(rows, [["Admin", "Accounts"], ["alice", "acme"]])

    def test_unknown_account_and_admin_refused(self) -> None:
        """An account the CRS does not have, or an admin that does not exist, is refused."""
        self.crs_cli("create", "admin", "alice")
        status, why = self.crs_cli("add", "admin-account", "alice", "nosuch")
        self.assertEqual(status, 1)
        self.assertIn("no account nosuch", why)
        status, why = self.crs_cli("show", "admin", "bob")
        self.assertIn("no admin bob", why)
        self.assertEqual(self.admins.admin("alice").accounts, {})

    def test_unknown_authorization_is_usage_error(self) -> None:
        """crs-cli refuses an authorization other than statistics or update before connecting."""
        err = io.StringIO()
        status = cli.run(
            ["add", "admin-account-authorization", "alice", "acme", "root"], io.StringIO(), err
        )
        self.assertEqual(status, 2)
        self.assertIn("statistics", err.getvalue())

    def test_deleted_account_leaves_admins(self) -> None:
        """delete account takes the account from the admins that managed it."""
        self.crs_cli("create", "admin", "alice")
        self.crs_cli("add", "admin-account", "alice", "acme")
        self.crs_cli("add", "admin-account-authorization", "alice", "acme", "update")
        self.assertEqual(self.crs_cli("delete", "account", "acme")[0], 0)
        self.assertEqual(self.admins.admin("alice").accounts, {})

    def test_reload_rereads_admins(self) -> None:
        """reload account reports a broken admins file, and takes it back once repaired."""
        self.crs_cli("create", "admin", "alice")
        with open(self.admins.path, "rb") as f:
            good = f.read()
        with open(self.admins.path, "wb") as f:
            f.write(b"{")
        status, text = self.crs_cli("reload", "account")
        self.assertEqual(
            (status, text), (1, "accounts reloaded, except for the 1 problem(s) above\n")
        )
        self.assertEqual(list(self.admins), [])
        self.assertEqual(self.crs_cli("create", "admin", "bob")[0], 1)
        with open(self.admins.path, "wb") as f:
            f.write(good)
        self.assertEqual(self.crs_cli("reload", "account"), (0, "accounts reloaded\n"))
        self.assertEqual([a.name for a in self.admins], ["alice"])

    def test_public_key_checked(self) -> None:
        """A CreateAdmin whose key is not 32 octets of base64 is refused."""
        for key in ("not base64!", base64.b64encode(b"short").decode()):
            failures: list[Any] = []
            self.client.callRemote(crs_admin.CreateAdmin, name="x", key=key).addErrback(
                failures.append
            )
            self.pump.flush()
            self.assertEqual(len(failures), 1)
        self.assertIsNone(self.admins.get("x"))
