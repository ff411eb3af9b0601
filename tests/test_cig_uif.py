"""The CIG's secure side (UIF): keystore, set-key, cig.raw, attach and status."""

from __future__ import annotations

import io
import os
import random
import stat
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.operator import cli as cig_cli
from cryptify.cig.operator.admin import CigAdmin
from cryptify.cig.operator.cli import render_status
from cryptify.cig.operator.state import CigState
from cryptify.cig.tel.uif import (
    EXPIRED,
    LEGACY_FILE,
    NO_KEYS,
    OK,
    Uif,
    consume_legacy,
    find_keystore,
    store_blob,
)
from cryptify.crypto._util import next_period
from cryptify.crypto.errors import KeyFileError
from cryptify.crypto.identity import period_of
from cryptify.crypto.keymaterial import KIND_CIG, KeyMaterial, load_keystore
from cryptify.kms.store import KmsAccount
from cryptify.protocols import cig_admin
from cryptify.protocols.mgmt import CommandFailed
from tests.fakes import call, pair
from tests.umsg_support import World, WorldConnector

URI = "tel:+8888"
_KMS: list[KmsAccount] = []


def cig_material(period: str, uri: str = URI, kind: str = KIND_CIG) -> KeyMaterial:
    """CIG key material for ``uri`` (one KMS for the whole run)."""
    if not _KMS:
        _KMS.append(KmsAccount.generate("acme"))
    return _KMS[0].issue(uri, period, kind=kind)


class KeystoreTests(SynchronousTestCase):
    """store_blob, find_keystore and consume_legacy on a real directory."""

    def setUp(self) -> None:
        self.dir = os.path.join(self.mktemp(), "userdata")
        self.material = cig_material("2026-11")

    def test_store_blob_writes_private_keystore(self) -> None:
        """A valid blob becomes .ks.tel:NUMBER, mode 0600, loadable with load_keystore."""
        material = store_blob(self.dir, self.material.to_blob() + "\n")
        self.assertEqual(material.uri, URI)
        path = os.path.join(self.dir, f".ks.{URI}")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(load_keystore(self.dir, URI), self.material)
        self.assertEqual(find_keystore(self.dir), URI)

    def test_bad_blobs_refused(self) -> None:
        """Garbage and user (not CIG) key material are refused; nothing is written."""
        self.assertRaises(KeyFileError, store_blob, self.dir, "not base64 at all!")
        user = cig_material("2026-11", kind="user")
        self.assertRaises(KeyFileError, store_blob, self.dir, user.to_blob())
        self.assertIsNone(find_keystore(self.dir))

    def test_legacy_consumed(self) -> None:
        """cig.raw is read as the blob, written as the keystore and deleted."""
        os.makedirs(self.dir)
        raw = os.path.join(self.dir, LEGACY_FILE)
        with open(raw, "w") as f:
            f.write(self.material.to_blob() + "\n")
        self.assertEqual(consume_legacy(self.dir), self.material)
        self.assertFalse(os.path.exists(raw))
        self.assertEqual(find_keystore(self.dir), URI)

    def test_legacy_invalid_kept(self) -> None:
        """An invalid cig.raw is refused and left where it is; no cig.raw is no-op."""
        self.assertIsNone(consume_legacy(self.dir))
        os.makedirs(self.dir)
        raw = os.path.join(self.dir, LEGACY_FILE)
        with open(raw, "w") as f:
            f.write("garbage\n")
        self.assertRaises(KeyFileError, consume_legacy, self.dir)
        self.assertTrue(os.path.exists(raw))


class UifTests(SynchronousTestCase):
    """Uif against an in-memory CRS (a World) on a Clock."""

    def setUp(self) -> None:
        self.world = World.make()
        self.dir = os.path.join(self.mktemp(), "userdata")
        self.period = period_of(self.world.clock.seconds())
        self.connector = WorldConnector(self.world)
        self.uif = Uif(
            self.world.clock,
            self.dir,
            "crs.test",
            5223,
            self.connector,
            lambda material: self.world.client_session(material.uri),
        )
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.uif.running:
            done = self.uif.stopService()
            self.connector.flush()
            self.successResultOf(done)

    def test_idle_without_keys(self) -> None:
        """No keystore: no connection attempt, status says NO KEYS and DISCONNECTED."""
        self.uif.startService()
        self.assertEqual(self.connector.calls, [])
        self.assertEqual(self.uif.info().crypto_state, NO_KEYS)
        state = CigState("crs.test", "127.0.0.1", umsg_info=lambda: self.uif.info().as_tuple())
        text = render_status(state.status("1"))
        self.assertIn("Public ID                 -", text)
        self.assertIn("Connection state          DISCONNECTED", text)
        self.assertIn("Crypto state              NO KEYS", text)

    def test_attaches_with_keystore(self) -> None:
        """With a keystore at start the UIF attaches its number and status shows it,
        the crypto periods as the manual does (YYYY-MM-REVISION) under the version."""
        cig_material(self.period)  # makes the run's KMS
        kms = attrs.evolve(_KMS[0], revision=7)
        store_blob(self.dir, kms.issue(URI, self.period, with_next=True, kind=KIND_CIG).to_blob())
        self.uif.startService()
        self.assertEqual(self.connector.calls, [("crs.test", 5223)])
        self.assertTrue(self.uif.connected)
        state = CigState(
            "crs.test",
            "127.0.0.1",
            crs_connected=lambda: self.uif.connected,
            umsg_info=lambda: self.uif.info().as_tuple(),
        )
        text = render_status(state.status("1"))
        self.assertIn(f"Public ID                 {URI}", text)
        self.assertIn("Security Domain           acme", text)
        self.assertIn("Connection state          CONNECTED", text)
        self.assertIn(f"Crypto state              {OK}", text)
        self.assertIn(f"Crypto period 1           {self.period}-7\n", text)
        self.assertIn(f"Crypto period 2           {next_period(self.period)}-7\n", text)
        self.assertTrue(text.startswith("Cryptify Interconnect Gateway v1\n"), text)

    def test_expired_keys(self) -> None:
        """Key material only for past periods is shown as EXPIRED."""
        store_blob(self.dir, cig_material("2001-01").to_blob())
        self.uif.startService()
        self.assertEqual(self.uif.info().crypto_state, EXPIRED)

    def test_cig_raw_at_start(self) -> None:
        """A cig.raw found at start is consumed and the UIF attaches with it."""
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, LEGACY_FILE), "w") as f:
            f.write(cig_material(self.period).to_blob())
        self.uif.startService()
        self.assertFalse(os.path.exists(os.path.join(self.dir, LEGACY_FILE)))
        self.assertEqual(find_keystore(self.dir), URI)
        self.assertTrue(self.uif.connected)

    def test_set_key_starts_attaching(self) -> None:
        """set_key on an idle UIF writes the keystore and attaches."""
        self.uif.startService()
        material = self.uif.set_key(cig_material(self.period).to_blob())
        self.assertEqual(material.uri, URI)
        self.assertTrue(self.uif.connected)
        self.assertEqual(len(self.connector.calls), 1)

    def test_set_key_replaces_connection(self) -> None:
        """New key material while attached: the old connection detaches, a new one attaches."""
        store_blob(self.dir, cig_material(self.period).to_blob())
        self.uif.startService()
        first = self.uif.client
        self.uif.set_key(cig_material(self.period, "tel:+9999").to_blob())
        self.connector.flush()
        self.assertIsNot(self.uif.client, first)
        self.assertEqual(self.uif.info().public_id, "tel:+9999")
        self.assertTrue(self.uif.connected)
        self.assertEqual(len(self.connector.calls), 2)

    def test_reconnects_with_backoff(self) -> None:
        """When the connection drops, the UIF is DISCONNECTED and comes back after a delay."""
        store_blob(self.dir, cig_material(self.period).to_blob())
        self.uif.startService()
        assert self.uif.client is not None
        self.uif.client.rng = random.Random(1)
        self.connector.pumps[0].clientIO.loseConnection()
        self.connector.flush()
        self.assertFalse(self.uif.connected)
        self.assertEqual(len(self.connector.calls), 1)
        self.world.clock.advance(2)
        self.assertEqual(len(self.connector.calls), 2)
        self.assertTrue(self.uif.connected)

    def test_connector_error_is_a_failed_attempt(self) -> None:
        """A connector that raises (say, a missing CA file) is retried, not fatal."""
        calls: list[str] = []

        def broken(host: str, port: int, factory: Factory[Any]) -> defer.Deferred[Any]:
            calls.append(host)
            raise OSError("no CA file")

        self.uif.connect = broken
        store_blob(self.dir, cig_material(self.period).to_blob())
        warnings: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "cryptify.cig.uif":
                warnings.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.uif.startService()
        self.assertFalse(self.uif.connected)
        self.world.clock.advance(2)
        self.assertEqual(len(calls), 2)
        # the reason is logged once, not at every retry
        failures = [w for w in warnings if w.startswith("cannot attach to the CRS")]
        self.assertEqual(len(failures), 1, warnings)
        self.assertIn("no CA file", failures[0])


class SetKeyCommandTests(SynchronousTestCase):
    """The SetKey management command and cig-cli set-key."""

    def test_set_key_over_amp(self) -> None:
        """SetKey hands the blob over and answers with the public ID and domain."""
        got: list[str] = []
        material = cig_material("2026-11")

        def take(blob: str) -> KeyMaterial:
            got.append(blob)
            return KeyMaterial.from_blob(blob)

        _, client, pump = pair(CigAdmin(CigState("a", "b"), take))
        answer = call(client, pump, cig_admin.SetKey, blob=material.to_blob())
        self.assertEqual(answer, {"public_id": URI, "domain": "acme"})
        self.assertEqual(got, [material.to_blob()])
        failure = call(client, pump, cig_admin.SetKey, blob="garbage")
        failure.trap(CommandFailed)
        self.assertIn("key material refused", str(failure.value))

    def test_without_uif_refused(self) -> None:
        """A CIG built without a UIF refuses SetKey."""
        _, client, pump = pair(CigAdmin(CigState("a", "b")))
        call(client, pump, cig_admin.SetKey, blob="x").trap(CommandFailed)

    def test_cli_empty_input(self) -> None:
        """cig-cli set-key prompts for the blob and gives up on empty input."""
        out, err = io.StringIO(), io.StringIO()
        status = cig_cli.run(["--socket", "/nonexistent", "set-key"], out, err, io.StringIO(""))
        self.assertEqual(status, 1)
        self.assertIn("Paste the CIG key material", out.getvalue())
        self.assertIn("no key material given", err.getvalue())
        self.assertEqual(cig_cli.run(["set-key", "extra"], out, err), 2)
