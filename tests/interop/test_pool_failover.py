"""
Interop: a pool of real ``twistd crs`` instances, each on its own host.

Each instance runs in its own network namespace with one address on a
bridge (10.99.0.N/24); the bridge lives in a "switch" namespace, which is
also the client host (10.99.0.254): the test's clients make their sockets
there.  Everything (namespaces, veth pairs, the bridge, the processes in
them) is made by the test and removed at cleanup; no traffic leaves the
namespaces.

Clients attach to the first instance: those whose slot another instance
owns are moved there.  Then one instance is killed with ``kill -9`` (its
Redis children too, as when a host dies): its clients find the connection
gone and attach at a survivor, which took the slots over and attaches
them without ``moved``: each goes first to the standby its ``attached``
named, whose attach waits (parked) until the takeover gives it the slot.
The instance is started again: its slots trickle
back, the survivors tell the clients of those slots to come back, and
they are moved to it.  How long the takeover and the hand-back took is
logged (``convergence``), not asserted.  A last test takes one host's link
down with ``ip link set down`` instead of killing it.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from twisted.logger import Logger

from tests.interop._pool import CEILING, Client, PoolCase, address
from tests.interop._procs import wait_for

log = Logger(namespace="tests.pool_failover")


class _PoolCase(PoolCase):
    # -- the scenario ----------------------------------------------------

    def form_and_attach(self) -> list[Client]:
        everyone = list(range(1, self.COUNT + 1))
        wait_for(lambda: self.formed(everyone), "the pool to form", CEILING)
        clients = [Client(uri) for uri in self.uris]
        self.clients.extend(clients)
        for client in clients:
            self.attach(client, [address(1)])
            owner = self.owner_index(client.uri)
            self.assertEqual(client.at, address(owner))
            self.assertEqual(client.moves, [] if owner == 1 else [address(owner)])
            # The standby it is told is another member: the one that takes
            # its slot if its own dies.
            self.assertIn(client.standby, [address(i) for i in everyone if i != owner])
        return clients

    def fail_over(self, victim: int, break_host: Any) -> None:
        clients = self.form_and_attach()
        survivors = [i for i in range(1, self.COUNT + 1) if i != victim]
        orphans = [c for c in clients if self.owner_index(c.uri) == victim]
        began = time.monotonic()
        break_host()
        for client in orphans:
            self.assertEqual(self.lost(client), "closed")
            client.moves.clear()
            # As the reference client does: its standby first, then the others.
            standby = client.standby
            assert standby is not None
            self.attach(
                client, [standby] + [address(i) for i in survivors if address(i) != standby]
            )
        took_over = time.monotonic() - began
        moved = 0
        for client in orphans:
            # The standby it was told took its slot: attached there at the
            # first try (its attach waited for the takeover), not moved.
            # One race remains (docs/pool.md): an orphan that reaches its
            # standby before the standby has read the dead member's reset
            # connections is moved to the dead address, and comes back
            # through another survivor, which moves it to the owner.
            owner = self.cli(survivors[0], "check", "slot", client.uri).split("(")[1].rstrip(")\n")
            self.assertEqual(client.at, address(int(owner[3:])))
            self.assertIn(client.moves, ([], [client.at]))
            moved += bool(client.moves)
        self.assertLessEqual(moved, 1, "more than the one orphan of the race was moved")
        for index in survivors:
            view = self.system(index)
            self.assertEqual(view[f"crs{victim}"][1], "-")
        self.assertIn(f"pool_link_crs{victim} down", self.notified(survivors[0]))
        self.assertIn(f"pool takeover crs{victim}", self.notified(survivors[0]))
        log.info(
            "convergence: {count} clients of crs{victim} attached at the survivors "
            "{seconds:.1f}s after it failed",
            count=len(orphans),
            victim=victim,
            seconds=took_over,
        )
        self.hand_back(victim, survivors, orphans)

    def hand_back(self, victim: int, survivors: list[int], orphans: list[Client]) -> None:
        began = time.monotonic()
        self.restore(victim)
        wait_for(
            lambda: self.formed(list(range(1, self.COUNT + 1))),
            "the slots to come back",
            CEILING * 2,
        )
        formed = time.monotonic() - began
        for client in orphans:
            self.assertEqual(self.lost(client), "disconnected")
            client.moves.clear()
            self.attach(client, [address(i) for i in survivors])
            self.assertEqual(client.at, address(victim))
            self.assertEqual(client.moves, [address(victim)])
        notes = self.notified(survivors[0])
        self.assertIn("pool hand-back start", notes)
        self.assertIn("pool hand-back done", notes)
        log.info(
            "convergence: crs{victim} back, the map settled after {formed:.1f}s and its "
            "{count} clients were back on it after {seconds:.1f}s",
            victim=victim,
            formed=formed,
            count=len(orphans),
            seconds=time.monotonic() - began,
        )

    def restore(self, victim: int) -> None:
        self.start(victim)


class TwoInstanceTests(_PoolCase):
    COUNT = 2

    def test_kill_and_return(self) -> None:
        """kill -9 of crs2: its clients attach at crs1 without moved; crs2
        restarted: its slots trickle back and its clients are moved back."""
        self.fail_over(2, lambda: self.kill(2))

    def test_link_down(self) -> None:
        """ip link set down on crs2's host: crs1 takes over its slots and its
        clients (reconnecting to crs1) attach there; link up: they go back."""
        host = self.net.hosts[1]
        self.restore = lambda victim: host.run("ip", "link", "set", "eth0", "up")  # type: ignore[method-assign]

        def link_down() -> None:
            host.run("ip", "link", "set", "eth0", "down")
            # The clients' TCP connections to a silent host do not end by
            # themselves soon: the client notices its keep-alive failing;
            # here the test closes them for it.
            for client in self.clients:
                if client.at == address(2):
                    client.ws.socket.shutdown(socket.SHUT_RDWR)

        self.fail_over(2, link_down)


class ThreeInstanceTests(_PoolCase):
    COUNT = 3

    def test_kill_and_return(self) -> None:
        """kill -9 of crs3 in a pool of three: crs1 and crs2 share its slots
        and its clients; when it returns they go back to it."""
        self.fail_over(3, lambda: self.kill(3))
