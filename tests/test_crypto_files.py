"""Tests for key material files, the CIG keystore and monthly update files."""

from __future__ import annotations

import json
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crypto import keymaterial as km
from cryptify.crypto import updatefile as uf
from cryptify.crypto.errors import InsecurePermissions, KeyFileError, UpdateFileError
from cryptify.crypto.securefile import read_secret_file, write_secret_file
from cryptify.kms.store import KmsAccount

ACCOUNT = KmsAccount.generate("acme")
MATERIAL = ACCOUNT.issue("tel:+46701234567", "2025-12", with_next=True)
UPDATE = ACCOUNT.update("2025-12", with_next=True, blacklist=("tel:+4670666",))
SECRET = "c2hhcmVkIHNlY3JldA=="
SEALED = uf.seal_update_file(UPDATE, SECRET)


class SecretFileTests(SynchronousTestCase):
    """Secret files are written 0600 and refused when others can read them."""

    def test_written_0600(self) -> None:
        """write_secret_file creates the file with mode 0600."""
        path = self.mktemp()
        write_secret_file(path, b"secret")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(read_secret_file(path), b"secret")

    def test_group_readable_refused(self) -> None:
        """A group- or world-readable secret file is refused, naming the fix."""
        for mode in (0o640, 0o604, 0o660):
            path = self.mktemp()
            write_secret_file(path, b"secret")
            os.chmod(path, mode)
            with self.assertRaises(InsecurePermissions) as e:
                read_secret_file(path)
            self.assertIn("chmod 600", str(e.exception))

    def test_missing(self) -> None:
        """A missing file is a KeyFileError."""
        self.assertRaises(KeyFileError, read_secret_file, self.mktemp())


class KeyMaterialTests(SynchronousTestCase):
    """User key material and CIG keystores round trip and validate."""

    def test_round_trip(self) -> None:
        """Written then loaded (with validation) gives the same material."""
        path = self.mktemp()
        km.write_key_material(path, MATERIAL)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        loaded = km.load_key_material(path)
        self.assertEqual(loaded, MATERIAL)
        self.assertEqual([p.period for p in loaded.periods], ["2025-12", "2026-01"])
        self.assertEqual(loaded.for_period("2026-01").identifier, b"2026-01\0tel:+46701234567\0")

    def test_world_readable_refused(self) -> None:
        """A key material file readable by others is refused."""
        path = self.mktemp()
        km.write_key_material(path, MATERIAL)
        os.chmod(path, 0o644)
        self.assertRaises(InsecurePermissions, km.load_key_material, path)

    def test_keystore(self) -> None:
        """The CIG keystore is DIRECTORY/.ks.tel:NUMBER, 0600, and loads back."""
        directory = self.mktemp()
        os.mkdir(directory)
        cig = ACCOUNT.issue("tel:+4612345", "2025-12", kind=km.KIND_CIG)
        path = km.write_keystore(directory, cig)
        self.assertEqual(os.path.basename(path), ".ks.tel:+4612345")
        self.assertEqual(km.load_keystore(directory, "tel:+4612345"), cig)

    def test_blob(self) -> None:
        """The one-line blob (cig-cli set-key input) round trips."""
        blob = MATERIAL.to_blob()
        self.assertNotIn("\n", blob)
        self.assertEqual(km.KeyMaterial.from_blob(blob), MATERIAL)

    def test_revision(self) -> None:
        """Each period keeps the KMS revision it was issued at; material from before
        revisions were kept reads as revision 0; a junk revision is refused."""
        import attrs

        issued = attrs.evolve(ACCOUNT, revision=4).issue("tel:+4612", "2025-12", with_next=True)
        self.assertEqual([k.shown for k in issued.periods], ["2025-12-4", "2026-01-4"])
        self.assertEqual(km.KeyMaterial.from_blob(issued.to_blob()), issued)
        doc = MATERIAL.to_json()
        for period in doc["periods"]:  # type: ignore[attr-defined]
            del period["revision"]
        old = km.KeyMaterial.from_bytes(json.dumps(doc).encode())
        self.assertEqual([k.revision for k in old.periods], [0, 0])
        for junk in (-1, True, "3", 2**31, None, 1.5):
            doc["periods"][0]["revision"] = junk  # type: ignore[index]
            with self.assertRaises(KeyFileError):
                km.KeyMaterial.from_bytes(json.dumps(doc).encode())

    def test_tampered_key_refused(self) -> None:
        """A changed SSK or RSK fails validation on load."""
        for field in ("ssk", "rsk"):
            doc = MATERIAL.to_json()
            value = doc["periods"][0][field]
            doc["periods"][0][field] = value[:-2] + ("00" if value[-2:] != "00" else "01")
            data = json.dumps(doc).encode()
            self.assertRaises(KeyFileError, km.KeyMaterial.from_bytes, data)

    def test_other_identity_refused(self) -> None:
        """Keys moved to another identity (or month) fail validation."""
        doc = MATERIAL.to_json()
        doc["periods"][0]["identifier"] = doc["periods"][1]["identifier"]
        doc["periods"][0]["period"] = "2025-11"
        self.assertRaises(KeyFileError, km.KeyMaterial.from_bytes, json.dumps(doc).encode())

    def test_version(self) -> None:
        """An unknown format version is refused."""
        doc = MATERIAL.to_json()
        doc["version"] = 2
        self.assertRaises(KeyFileError, km.KeyMaterial.from_bytes, json.dumps(doc).encode())

    @settings(max_examples=150, deadline=None)
    @given(st.binary(max_size=300))
    def test_random_octets(self, data: bytes) -> None:
        """Random octets are refused with KeyFileError."""
        self.assertRaises(KeyFileError, km.KeyMaterial.from_bytes, data)

    @settings(max_examples=150, deadline=None)
    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
            max_leaves=10,
        ),
        st.sampled_from(["format", "version", "kind", "periods", "id_scheme", "account"]),
    )
    def test_mangled_document(self, value: object, field: str) -> None:
        """Replacing any top-level field with junk gives KeyFileError."""
        doc = MATERIAL.to_json()
        doc[field] = value
        try:
            km.KeyMaterial.from_bytes(json.dumps(doc).encode(), validate=False)
        except KeyFileError:
            pass

    @settings(max_examples=100, deadline=None)
    @given(
        st.sampled_from(["period", "identifier", "kpak", "z", "ssk", "pvt", "rsk"]),
        st.none() | st.integers() | st.text(max_size=10) | st.lists(st.integers(), max_size=2),
    )
    def test_mangled_period(self, field: str, value: object) -> None:
        """Replacing any period field with junk gives KeyFileError."""
        doc = MATERIAL.to_json()
        doc["periods"][0][field] = value
        self.assertRaises(KeyFileError, km.KeyMaterial.from_bytes, json.dumps(doc).encode())


class UpdateFileTests(SynchronousTestCase):
    """Update files open only with the right secret, account and octets."""

    def test_round_trip(self) -> None:
        """The sealed file opens to the same contents."""
        opened = uf.open_update_file(SEALED, SECRET, "acme")
        self.assertEqual(opened, UPDATE)
        self.assertEqual(opened.current.period, "2025-12")
        assert opened.next is not None
        self.assertEqual(opened.next.period, "2026-01")
        self.assertEqual(opened.current.blacklist, ("tel:+4670666",))
        self.assertEqual(opened.current.kpak, ACCOUNT.kpak)

    def test_wrong_secret(self) -> None:
        """Another secret is refused with a message naming the cause."""
        with self.assertRaises(UpdateFileError) as e:
            uf.open_update_file(SEALED, SECRET + "x", "acme")
        self.assertIn("wrong shared secret", str(e.exception))

    def test_other_account(self) -> None:
        """Another account's file is refused, even with the right secret."""
        with self.assertRaises(UpdateFileError) as e:
            uf.open_update_file(SEALED, SECRET, "other")
        self.assertIn("'acme'", str(e.exception))

    def test_account_name_swapped(self) -> None:
        """Rewriting the account name in the header breaks authentication."""
        forged = SEALED.replace(b"acme", b"acmf", 1)
        self.assertRaises(UpdateFileError, uf.open_update_file, forged, SECRET, "acmf")

    @settings(max_examples=100, deadline=None)
    @given(st.data())
    def test_truncated(self, data: st.DataObject) -> None:
        """Every truncation is refused."""
        cut = data.draw(st.integers(0, len(SEALED) - 1))
        self.assertRaises(UpdateFileError, uf.open_update_file, SEALED[:cut], SECRET)

    @settings(max_examples=100, deadline=None)
    @given(st.data())
    def test_altered(self, data: st.DataObject) -> None:
        """Altering any octet is refused."""
        index = data.draw(st.integers(0, len(SEALED) - 1))
        bad = bytearray(SEALED)
        bad[index] ^= data.draw(st.integers(1, 255))
        self.assertRaises(UpdateFileError, uf.open_update_file, bytes(bad), SECRET)

    @settings(max_examples=150, deadline=None)
    @given(st.binary(max_size=200))
    def test_random_octets(self, data: bytes) -> None:
        """Random octets (with or without the magic) are refused."""
        for candidate in (data, uf.MAGIC + data):
            self.assertRaises(UpdateFileError, uf.open_update_file, candidate, SECRET)

    def test_bytes_secret(self) -> None:
        """A secret given as octets is its UTF-8 text's octets."""
        self.assertEqual(uf.open_update_file(SEALED, SECRET.encode(), "acme"), UPDATE)

    def test_invalid_key_inside(self) -> None:
        """A correctly sealed file carrying a bad Z is refused."""
        bad = uf.UpdateFile(
            "acme", 1, (uf.MonthKeys("2025-12", ACCOUNT.kpak, b"\x04" + bytes(256)),)
        )
        sealed = uf.seal_update_file(bad, SECRET)
        self.assertRaises(UpdateFileError, uf.open_update_file, sealed, SECRET)

    def test_load_from_disk(self) -> None:
        """load_update_file reads a path."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(SEALED)
        self.assertEqual(uf.load_update_file(path, SECRET, "acme"), UPDATE)
        self.assertRaises(UpdateFileError, uf.load_update_file, self.mktemp(), SECRET)
