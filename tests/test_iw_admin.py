"""``add|list|delete|show iw-crs`` over AMP in memory, and the file they keep."""

from __future__ import annotations

import os
import stat
from typing import Any

from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config.iw_crs import IwCrsConfig, load_iw_crs_config
from cryptify.crs.interwork.peers import MAX_PEERS, IwPeerError, IwPeers
from cryptify.crs.operator.admin import IW_COLUMNS, CrsAdmin
from cryptify.crs.operator.state import CrsState
from cryptify.crs.trace import TraceHub
from cryptify.protocols import crs_admin
from cryptify.protocols.mgmt import CommandFailed, ManagementClient, ManagementProtocol


class _Link:
    def __init__(self) -> None:
        self.seen: list[IwCrsConfig] = []

    def update(self, config: IwCrsConfig) -> None:
        self.seen.append(config)

    def rows(self) -> list[tuple[str, str, str, str, str, str, str, str]]:
        last = self.seen[-1] if self.seen else IwCrsConfig()
        return [(p.ip, "up", "up", "down", "-", "-", "-", "0.1") for p in last.instances]


class IwAdminTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.join(self.mktemp(), "iw-crs.conf")
        os.makedirs(os.path.dirname(self.path))
        self.peers = IwPeers.load(self.path)
        self.link = _Link()
        self.peers.listeners.append(self.link.update)
        self.state = CrsState("crs1", trace=TraceHub(Clock().seconds))
        self.state.iw = self.peers
        self.state.iw_link = self.link
        server = ManagementProtocol(lambda proto: CrsAdmin(self.state, proto))
        self.client = ManagementClient(lambda line: None)
        self.pump = iosim.connect(
            server, iosim.makeFakeServer(server), self.client, iosim.makeFakeClient(self.client)
        )

    def call(self, command: type[amp.Command], **kwargs: Any) -> Any:
        results: list[Any] = []
        self.client.callRemote(command, **kwargs).addBoth(results.append)
        self.pump.flush()
        self.assertEqual(len(results), 1)
        return results[0]

    def refused(self, command: type[amp.Command], **kwargs: Any) -> str:
        result = self.call(command, **kwargs)
        self.assertIsInstance(result, Failure)
        result.trap(CommandFailed)
        return str(result.value)

    def test_add_list_show_delete(self) -> None:
        """add writes iw-crs.conf (0600) and tells the link; list shows the
        secret and comment as the manual does; show iw-crs has the manual's
        columns; delete removes it."""
        self.call(crs_admin.AddIwCrs, ip="192.0.2.10", secret="Xk29sPq81", comment="operator B")
        self.call(crs_admin.AddIwCrs, ip="192.0.2.11", secret="Xk29sPq81")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        on_disk = load_iw_crs_config(self.path)
        self.assertEqual([p.ip for p in on_disk.instances], ["192.0.2.10", "192.0.2.11"])
        self.assertEqual(self.link.seen[-1], on_disk)
        listed = self.call(crs_admin.ListIwCrs)["table"]
        self.assertEqual(
            listed["rows"],
            [["192.0.2.10", "Xk29sPq81", "operator B"], ["192.0.2.11", "Xk29sPq81", ""]],
        )
        shown = self.call(crs_admin.ShowIwCrs)["table"]
        self.assertEqual(shown["columns"], IW_COLUMNS)
        self.assertEqual(shown["rows"][0][:2], ["192.0.2.10", "up"])
        self.call(crs_admin.DeleteIwCrs, ip="192.0.2.10")
        self.assertEqual([p.ip for p in load_iw_crs_config(self.path).instances], ["192.0.2.11"])
        self.assertIn("no inter-working CRS", self.refused(crs_admin.DeleteIwCrs, ip="192.0.2.10"))

    def test_refusals(self) -> None:
        """A bad address or secret is refused and nothing is written; the
        secret is never in the answer."""
        for ip, secret in (("not-an-ip", "abc123"), ("192.0.2.1", "has space"), ("1.2.3.4", "")):
            why = self.refused(crs_admin.AddIwCrs, ip=ip, secret=secret)
            self.assertTrue(why)
            if secret:
                self.assertNotIn(secret, why)
        self.assertFalse(os.path.exists(self.path))

    def test_not_available(self) -> None:
        """Without inter-working (no iw-crs.conf path) the commands say so."""
        self.state.iw = None
        self.assertIn("not available", self.refused(crs_admin.ListIwCrs))

    def test_peer_limit(self) -> None:
        """At most MAX_PEERS peers."""
        for n in range(MAX_PEERS):
            self.peers.add(f"10.0.{n // 256}.{n % 256}", "s3cret", None)
        with self.assertRaises(IwPeerError):
            self.peers.add("10.9.9.9", "s3cret", None)
