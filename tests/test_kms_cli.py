"""Tests for the cryptify-kms command line tool and its store."""

from __future__ import annotations

import base64
import calendar
import io
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from cryptify.crypto import mikey
from cryptify.crypto.errors import InsecurePermissions
from cryptify.crypto.keymaterial import KeyMaterial, load_key_material
from cryptify.crypto.updatefile import load_update_file
from cryptify.kms.cli import run
from cryptify.kms.store import KmsStore
from tests.fixtures.crypto import fixture

NOW = calendar.timegm((2025, 10, 15, 12, 0, 0))


class _CliCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.mkdir(self.dir)
        self.store = os.path.join(self.dir, "store")

    def run_kms(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = run(["--store", self.store, *argv], stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)


class CommandTests(_CliCase):
    """init, issue, update and cig-keys write files the CRS and CIG can load."""

    def test_init(self) -> None:
        """init creates a 0600 account file in a 0700 store; secrets are not printed."""
        code, out, _ = self.run_kms("init", "acme")
        self.assertEqual(code, 0)
        path = KmsStore(self.store).path("acme")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(self.store).st_mode & 0o777, 0o700)
        secrets = json.loads(open(path).read())
        self.assertNotIn(secrets["ksak"], out)
        self.assertNotIn(secrets["z"], out)
        code, _, err = self.run_kms("init", "acme")
        self.assertEqual(code, 1)
        self.assertIn("already exists", err)

    def test_store_permissions_checked(self) -> None:
        """An account file readable by others is refused."""
        self.run_kms("init", "acme")
        os.chmod(KmsStore(self.store).path("acme"), 0o644)
        self.assertRaises(InsecurePermissions, KmsStore(self.store).load, "acme")
        code, _, err = self.run_kms("issue", "acme", "tel:+461", "--period", "2025-10")
        self.assertEqual(code, 1)
        self.assertIn("chmod 600", err)

    def test_issue(self) -> None:
        """issue writes valid key material for the month (and the next)."""
        self.run_kms("init", "acme")
        target = self.path("alice.keys")
        code, out, _ = self.run_kms(
            "issue", "acme", "tel:+46701234567", "--period", "2025-12", "--next", "-o", target
        )
        self.assertEqual(code, 0, out)
        material = load_key_material(target)
        self.assertEqual([p.period for p in material.periods], ["2025-12", "2026-01"])
        self.assertEqual(material.account, "acme")

    def test_update(self) -> None:
        """update writes a file that opens with the secret; revisions increase."""
        self.run_kms("init", "acme")
        target = self.path("u.upd")
        args = ["update", "acme", "--secret", "s3cret", "--period", "2025-10", "-o", target]
        self.assertEqual(self.run_kms(*args, "--blacklist", "tel:+4699")[0], 0)
        first = load_update_file(target, "s3cret", "acme")
        self.assertEqual(first.current.blacklist, ("tel:+4699",))
        self.assertIsNone(first.next)
        self.assertEqual(self.run_kms(*args, "--next")[0], 0)
        second = load_update_file(target, "s3cret", "acme")
        self.assertEqual((first.revision, second.revision), (1, 2))
        self.assertEqual(second.current.kpak, first.current.kpak)
        assert second.next is not None
        self.assertEqual(second.next.period, "2025-11")

    def test_cig_keys(self) -> None:
        """cig-keys prints the blob only with --reveal, else writes it 0600."""
        self.run_kms("init", "acme")
        code, out, _ = self.run_kms("cig-keys", "acme", "tel:+4612345", "--reveal")
        self.assertEqual(code, 0)
        material = KeyMaterial.from_blob(out)
        self.assertEqual((material.uri, material.kind), ("tel:+4612345", "cig"))
        target = self.path("cig.blob")
        code, out, _ = self.run_kms("cig-keys", "acme", "tel:+4612345", "-o", target)
        self.assertEqual(code, 0)
        self.assertEqual(os.stat(target).st_mode & 0o777, 0o600)
        self.assertNotIn(open(target).read().strip(), out)

    def test_bad_arguments(self) -> None:
        """Bad arguments print the usage and exit 2."""
        for argv in (
            [],
            ["frobnicate"],
            ["issue", "acme", "tel:+46 70", "--period", "2025-10"],
            ["issue", "acme", "tel:+4670", "--period", "2025-13"],
            ["update", "acme", "--period", "2025-10"],
            ["cig-keys", "acme", "tel:+4612345"],
            ["init", "bad/account"],
            ["inspect", "--kpak", "zz", "--z", "00", "--rsk", "00", "--id", "00", "-"],
        ):
            code, _, err = self.run_kms(*argv)
            self.assertEqual(code, 2, argv)
            self.assertIn("usage:", err)


class InspectTests(_CliCase):
    """inspect verifies and decapsulates I_MESSAGEs and prints one JSON object."""

    def _inspect(self, data: bytes, *extra: str, **keys: bytes) -> tuple[int, dict[str, object]]:
        target = self.path("msg")
        with open(target, "wb") as f:
            f.write(data)
        argv = ["inspect", *extra]
        for name in ("kpak", "z", "rsk", "id"):
            argv += [f"--{name}", keys[name].hex()]
        code, out, _ = self.run_kms(*argv, target)
        return code, json.loads(out)

    def test_streamwide(self) -> None:
        """The published MCX messages give the published key, from base64 and hex."""
        mcx = fixture("mcx-streamwide.json")
        keys = {
            "kpak": bytes.fromhex(mcx["kms"]["PubAuthKey_KPAK"]),
            "z": bytes.fromhex(mcx["kms"]["PubEncKey_Z"]),
        }
        for case in mcx["imessages"][:2]:
            user = mcx["users"][case["responder"]]
            keys["rsk"] = bytes.fromhex(user["UserDecryptKey"])
            keys["id"] = bytes.fromhex(user["UserID"])
            raw = base64.b64decode(case["imessage_b64"])
            for encoded in (case["imessage_b64"].encode(), raw.hex().encode(), raw):
                code, report = self._inspect(encoded, **keys)
                self.assertEqual(code, 0, report)
                self.assertEqual(report["ssv"], case["key"])
                self.assertEqual(report["signature"], {"valid": True, "covers": "whole message"})

    def test_built_for_another_user(self) -> None:
        """A message the project built for Bob is recovered with Bob's keys only."""
        self.run_kms("init", "acme")
        alice_path, bob_path = self.path("a.keys"), self.path("b.keys")
        self.run_kms("issue", "acme", "tel:+461", "--period", "2025-10", "-o", alice_path)
        self.run_kms("issue", "acme", "tel:+462", "--period", "2025-10", "-o", bob_path)
        alice = load_key_material(alice_path).periods[0]
        bob = load_key_material(bob_path).periods[0]
        built = mikey.build_i_message(
            alice.signer(),
            alice.public_key(),
            bob.identifier,
            now=NOW,
            idrs=mikey.tel_idrs("tel:+461", "tel:+462"),
        )
        keys = {"kpak": bob.kpak, "z": bob.z, "rsk": bob.rsk, "id": bob.identifier}
        code, report = self._inspect(built.data, **keys)
        self.assertEqual(code, 0, report)
        self.assertEqual(report["ssv"], built.ssv.hex())
        self.assertEqual(report["initiator_id"], alice.identifier.hex())
        wrong = dict(keys, rsk=alice.rsk, id=alice.identifier)
        code, report = self._inspect(built.data, **wrong)
        self.assertEqual(code, 1)
        self.assertIsNone(report["ssv"])
        self.assertFalse(report["decapsulation"]["ok"])  # type: ignore[index]
        code, report = self._inspect(built.data, "--initiator-id", bob.identifier.hex(), **keys)
        self.assertEqual(code, 1)
        self.assertFalse(report["signature"]["valid"])  # type: ignore[index]

    def test_garbage(self) -> None:
        """Garbage input prints a JSON error and exits 1."""
        mcx = fixture("mcx-streamwide.json")
        user = mcx["users"]["sip:alice@streamwide.com"]
        keys = {
            "kpak": bytes.fromhex(mcx["kms"]["PubAuthKey_KPAK"]),
            "z": bytes.fromhex(mcx["kms"]["PubEncKey_Z"]),
            "rsk": bytes.fromhex(user["UserDecryptKey"]),
            "id": bytes.fromhex(user["UserID"]),
        }
        code, report = self._inspect(b"\x01\x1a\x00garbage", **keys)
        self.assertEqual(code, 1)
        self.assertIn("error", report)
