"""Pool-wide operator commands between real ``twistd crs`` instances,
each in its own network namespace with its OWN accounts-dir (as on
separate hosts): an account created on crs1 is usable on crs2; with crs2
killed, ``blacklist add`` on crs1 says it is pending on crs2, and crs2
has it once it is back."""

from __future__ import annotations

import os
import stat
import time

from twisted.logger import Logger

from tests.interop._pool import CEILING, Client, PoolCase, address
from tests.interop._procs import unix_answers, wait_for

log = Logger(namespace="tests.pool")


class PoolOpsTests(PoolCase):
    COUNT = 2
    SHARED_ACCOUNTS = False

    def link_up(self, index: int, peer: int) -> bool:
        try:
            out = self.cli(index, "show", "services")
        except AssertionError:
            return False
        return any(
            line.split()[1:] == [f"pool_link_crs{peer}", "active"] for line in out.splitlines()[1:]
        )

    def blacklisted(self, index: int, uri: str) -> bool:
        try:
            out = self.cli(index, "show", "blacklist", "acme")
        except AssertionError:
            return False
        return uri in out.split()

    def test_account_everywhere_and_blacklist_while_down(self) -> None:
        # provision created acme and applied its update on crs1 only;
        # crs2's own accounts-dir has it, its secret private
        secret = os.path.join(self.dirs[1], "accounts", "acme", "secret")
        self.assertEqual(stat.S_IMODE(os.stat(secret).st_mode), 0o600)
        with open(os.path.join(self.dirs[0], "accounts", "acme", "secret")) as f:
            first = f.read()
        with open(secret) as f:
            self.assertEqual(f.read(), first)
        wait_for(lambda: self.formed([1, 2]), "the pool formed", CEILING)
        victim = next(u for u in self.uris if self.owner_index(u) == 2)
        client = Client(victim)
        self.clients.append(client)
        self.attach(client, [address(2)])
        self.assertEqual(client.at, address(2))

        self.kill(2)
        client.close()
        wait_for(lambda: not self.link_up(1, 2), "crs1 to see crs2 down", CEILING)
        out = self.cli(1, "blacklist", "add", "acme", victim)
        self.assertIn("applied on crs1; pending on crs2 (down)", out)
        log.info("pool ops: crs1 said {out!r}", out=out)
        services = self.cli(1, "show", "services")
        self.assertIn("crs2 lacks 1 (down)", services)

        back = time.monotonic()
        self.start(2)
        wait_for(lambda: unix_answers(self.socket(2)), "crs2's socket", CEILING)
        wait_for(lambda: self.blacklisted(2, victim), "the blacklist on crs2", CEILING)
        log.info(
            "convergence: crs2 blacklisted {s:.1f}s after its start", s=time.monotonic() - back
        )
        with open(os.path.join(self.dirs[1], "accounts", "acme", "blacklist")) as f:
            self.assertIn(victim, f.read().split())
        # and it is enforced there: the client is refused wherever it goes
        wait_for(lambda: self.formed([1, 2]), "the pool formed again", CEILING * 2)
        self.assertEqual(self.try_attach(client, address(2)), "refused blacklisted")

        out = self.cli(2, "blacklist", "remove", "acme", victim)
        self.assertIn("applied on crs2 crs1", out)
        self.assertFalse(self.blacklisted(1, victim))
        self.assertIn("crs1 has all", self.cli(2, "show", "services"))
