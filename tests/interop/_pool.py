"""
What the pool interop tests share: a pool of real ``twistd crs``
instances, each in its own network namespace with one address on a bridge
(10.99.0.N/24), the bridge in a "switch" namespace that is also the client
host (10.99.0.254); and clients that attach there with a blocking
WebSocket, following ``moved``.  Everything is made by the test and
removed at cleanup; no traffic leaves the namespaces.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import stat
import time
from typing import Any

import cbor2
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest, TestCase

from cryptify.crs.slots import SLOTS, slot_of
from cryptify.crypto.identity import period_of
from cryptify.crypto.keymaterial import load_key_material
from cryptify.protocols.umsg import attach_signed_octets
from tests.interop._netns import NetNamespace
from tests.interop._procs import (
    Twistd,
    kill_managed_redis,
    provision,
    run_cli,
    short_tempdir,
    unix_answers,
    wait_for,
)
from tests.interop._ws import available as websockets_available
from tests.interop._ws import ws_connect

log = Logger(namespace="tests.pool")

SUBNET = "10.99.0"
CLIENT_PORT = 5223
#: Ceiling of every wait (the machine is shared by several test runs).
CEILING = 90.0
#: URIs attached per instance's home range.
PER_HOME = 3


def address(index: int) -> str:
    return f"{SUBNET}.{index}"


class PoolNet:
    """The switch (bridge + client host) and one namespace per instance."""

    def __init__(self, case: TestCase, workdir: str, count: int) -> None:
        self.switch = NetNamespace(case, workdir)
        self.switch.run("ip", "link", "add", "br0", "type", "bridge")
        self.switch.run("ip", "addr", "add", f"{SUBNET}.254/24", "dev", "br0")
        self.switch.run("ip", "link", "set", "br0", "up")
        self.hosts: list[NetNamespace] = []
        for index in range(1, count + 1):
            host = NetNamespace(case, workdir)
            pid = str(host.holder.pid)
            self.switch.run(
                "ip",
                "link",
                "add",
                f"vh{index}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                pid,
            )
            self.switch.run("ip", "link", "set", f"vh{index}", "master", "br0", "up")
            host.run("ip", "addr", "add", f"{address(index)}/24", "dev", "eth0")
            host.run("ip", "link", "set", "eth0", "up")
            self.hosts.append(host)

    def client_socket(self, host: str, timeout: float = 5.0) -> socket.socket:
        """A TCP socket from the client host, connected to ``host``."""
        sock = self.switch.socket(socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((host, CLIENT_PORT))
        except OSError:
            sock.close()
            raise
        return sock


def crs_conf(directory: str, count: int, accounts: str, pool: bool = True) -> str:
    """One instance's crs.conf: the pool part is the same for all (none
    without ``pool``: a single instance, as each operator's in the
    inter-working tests)."""
    d = directory
    notify = os.path.join(d, "notify.sh")
    with open(notify, "w") as f:
        f.write(f'#!/bin/sh\necho "$1 $2" >> {d}/notify.log\n')
    os.chmod(notify, stat.S_IRWXU)
    hosts = "".join(f"host crs{i}\n" for i in range(1, count + 1))
    hosts += "".join(f"ip crs{i} {address(i)}\n" for i in range(1, count + 1))
    section = f"[POOL]\n{hosts}" if pool else ""
    path = os.path.join(d, "crs.conf")
    with open(path, "w") as f:
        f.write(
            f"""[GLOBAL]
key failover-test-pool-key
features
listen 0.0.0.0 {CLIENT_PORT}
relay 0.0.0.0 5146
relay-control {d}/relay.sock
management {d}/crs.sock
data-dir {d}/data
accounts-dir {accounts}
log-dir {d}/log
notify {notify}
redis managed
redis-high 127.0.0.1 6390
redis-low 127.0.0.1 6391
redis-backup 127.0.0.1 6392
{section}"""
        )
    return path


def send(ws: Any, **fields: Any) -> None:
    ws.send(cbor2.dumps(fields))


class Client:
    """One attached URI (a blocking WebSocket in the client host)."""

    def __init__(self, uri: str, account: str = "acme") -> None:
        self.uri = uri
        self.account = account
        self.ws: Any = None
        self.at: str | None = None
        self.moves: list[str] = []
        #: The last ``attached``'s standby-host (who takes its slot if ``at`` dies).
        self.standby: str | None = None

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:  # the peer may be dead already
                pass
            self.ws = None


class PoolCase(TestCase):
    """COUNT instances started in setUp, provisioned with URIs of every
    home range (``self.uris``), their keys in ``self.keys``."""

    timeout = 900
    COUNT = 2
    #: One accounts-dir for every instance; when False each has its own
    #: (as on separate hosts) and the pool's operator commands fill them.
    SHARED_ACCOUNTS = True
    #: More lines of crs{index}'s crs-local.conf (``workers 2``, say).
    LOCAL: dict[int, str] = {}

    def setUp(self) -> None:
        if not websockets_available():
            raise SkipTest("websockets is not installed")
        self.dir = short_tempdir(self)
        self.net = PoolNet(self, self.dir, self.COUNT)
        self.accounts = os.path.join(self.dir, "accounts")
        os.makedirs(self.accounts)
        self.dirs: list[str] = []
        self.procs: dict[int, Twistd] = {}
        for index in range(1, self.COUNT + 1):
            d = os.path.join(self.dir, f"crs{index}")
            os.makedirs(d)
            crs_conf(d, self.COUNT, self.accounts if self.SHARED_ACCOUNTS else f"{d}/accounts")
            with open(os.path.join(d, "crs-local.conf"), "w") as f:
                local = self.LOCAL.get(index, "")
                if "workers" not in local:
                    local += "workers 1\n"  # one process unless the test asks
                f.write(f"crsname crs{index}\ndb-backup none\n{local}")
            self.dirs.append(d)
        self.addCleanup(self.stop_all)
        for index in range(1, self.COUNT + 1):
            self.start(index)
        for index in range(1, self.COUNT + 1):
            wait_for(lambda i=index: unix_answers(self.socket(i)), f"crs{index}'s socket", CEILING)
        self.period = period_of(time.time())
        self.uris = self.pick_uris()
        files = self.key_files = provision(self.dir, self.socket(1), "acme", self.uris, self.period)
        for index in range(2, self.COUNT + 1):
            if self.SHARED_ACCOUNTS:
                self.cli(index, "reload", "account")
            else:
                wait_for(
                    lambda i=index: self.has_update(i), f"acme's update on crs{index}", CEILING
                )
        self.keys = {
            uri: load_key_material(path).for_period(self.period) for uri, path in files.items()
        }
        self.clients: list[Client] = []
        self.addCleanup(lambda: [c.close() for c in self.clients])

    # -- the instances ---------------------------------------------------

    def has_update(self, index: int) -> bool:
        """Whether crs{index} has acme with this month's update applied."""
        rows = self.cli(index, "show", "updates").splitlines()[1:]
        return any(r.split()[:1] == ["acme"] and r.split()[1] != "Not" for r in rows)

    def socket(self, index: int) -> str:
        return os.path.join(self.dirs[index - 1], "crs.sock")

    def start(self, index: int) -> None:
        d = self.dirs[index - 1]
        self.procs[index] = Twistd(
            d,
            "crs",
            "--config",
            os.path.join(d, "crs.conf"),
            "--local-config",
            os.path.join(d, "crs-local.conf"),
            prefix=tuple(self.net.hosts[index - 1].prefix(d)),
        )

    def start_relays(self) -> None:
        """A ``twistd crs-relay`` on each instance's host (stopped at
        cleanup), each answering on its control socket."""
        for index in range(1, self.COUNT + 1):
            d = self.dirs[index - 1]
            relay = Twistd(
                d,
                "crs-relay",
                "--config",
                os.path.join(d, "crs.conf"),
                prefix=tuple(self.net.hosts[index - 1].prefix(d)),
            )
            self.addCleanup(relay.stop)
            wait_for(lambda d=d: unix_answers(os.path.join(d, "relay.sock")), "relay control")

    def kill(self, index: int) -> None:
        """``kill -9`` the instance and its Redis children (a host dying)."""
        proc = self.procs.pop(index)
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait(timeout=CEILING)
        kill_managed_redis(self.dirs[index - 1])
        sock = self.socket(index)
        if os.path.exists(sock):
            os.unlink(sock)

    def stop_all(self) -> None:
        for index in list(self.procs):
            self.procs.pop(index).stop()
        for d in self.dirs:
            kill_managed_redis(d)

    def cli(self, index: int, *args: str) -> str:
        status, out, err = run_cli("crs-cli", "--socket", self.socket(index), *args)
        self.assertEqual(status, 0, f"crs{index} {args}: {out}{err}")
        return out

    def system(self, index: int) -> dict[str, tuple[str, str]]:
        """crs{index}'s ``show system``: instance -> (pid, slots) (an
        instance with workers: its parent's row, not its workers')."""
        rows = self.cli(index, "show", "system").splitlines()[1:]
        return {
            r.split()[0]: (r.split()[2], r.split()[3])
            for r in rows
            if r.strip() and "/" not in r.split()[1]
        }

    def home(self, index: int) -> str:
        first = (index - 1) * SLOTS // self.COUNT
        last = index * SLOTS // self.COUNT - 1
        return f"{first}-{last}"

    def formed(self, viewers: list[int]) -> bool:
        """Every viewer's show system gives every instance its home range."""
        try:
            views = [self.system(v) for v in viewers]
        except AssertionError:
            return False
        want = {f"crs{i}": self.home(i) for i in range(1, self.COUNT + 1)}
        return all({n: s for n, (_, s) in view.items()} == want for view in views)

    def owner_index(self, uri: str) -> int:
        return slot_of(uri) * self.COUNT // SLOTS + 1

    def home_uris(self, index: int) -> list[str]:
        """The URIs of ``self.uris`` in crs{index}'s home range."""
        return [u for u in self.uris if self.owner_index(u) == index]

    def pick_uris(self) -> list[str]:
        """PER_HOME URIs in each instance's home range."""
        picked: dict[int, list[str]] = {i: [] for i in range(1, self.COUNT + 1)}
        n = 0
        while any(len(v) < PER_HOME for v in picked.values()):
            uri = f"tel:+4670{n:07d}"
            n += 1
            home = picked[self.owner_index(uri)]
            if len(home) < PER_HOME:
                home.append(uri)
        return [u for v in picked.values() for u in v]

    # -- clients ---------------------------------------------------------

    def tls(self, host: str) -> ssl.SSLContext:
        """Trust the self-signed certificate of the instance at ``host``
        (each has its own, all named localhost, so one context each)."""
        index = int(host.rsplit(".", 1)[1])
        context = ssl.create_default_context()
        context.check_hostname = False
        cert = os.path.join(self.dirs[index - 1], "data", "tls", "crs.crt")
        if os.path.exists(cert):
            context.load_verify_locations(cafile=cert)
        return context

    def try_attach(self, client: Client, host: str) -> str:
        """One attach of ``client`` at ``host``: ``attached``, or where it
        was moved to (``moved HOST``), or why not (``refused CODE``,
        ``unreachable``)."""
        try:
            sock = self.net.client_socket(host)
            ws = ws_connect(
                f"wss://{host}:{CLIENT_PORT}/",
                sock=sock,
                ssl=self.tls(host),
                server_hostname="localhost",
                subprotocols=["umsg.1"],
            )
        except Exception as exc:
            # OSError and TimeoutError, and the websockets library's own
            # errors when the server closes during the opening handshake
            # (an instance being killed or starting): the caller tries again.
            return f"unreachable {type(exc).__name__}: {exc}"
        try:
            send(
                ws,
                type="attach",
                id=1,
                account=client.account,
                uri=client.uri,
                versions=[1],
                app="t",
            )
            answer = cbor2.loads(ws.recv(timeout=20))
            if answer.get("type") == "moved":
                ws.close()
                return f"moved {answer['host']}"
            if answer.get("type") != "challenge":
                ws.close()
                return f"refused {answer.get('code')}"
            octets = attach_signed_octets(
                answer["nonce"], client.account, client.uri, answer["period"]
            )
            signature = self.keys[client.uri].signer().sign(octets)
            send(ws, type="prove", id=2, signature=signature)
            answer = cbor2.loads(ws.recv(timeout=20))
        except Exception as exc:
            ws.close()
            return f"unreachable {exc}"
        if answer.get("type") != "attached":
            ws.close()
            return f"refused {answer.get('code')}"
        client.close()
        client.ws, client.at = ws, host
        client.standby = answer.get("standby-host")
        return "attached"

    def attach(self, client: Client, hosts: list[str], ceiling: float = CEILING) -> None:
        """Attach ``client`` trying ``hosts`` in turn (the addresses DNS
        gives), following ``moved`` as clients do; record the moves."""
        deadline = time.monotonic() + ceiling
        host = hosts[0]
        tried = 0
        result = "not tried"
        while time.monotonic() < deadline:
            result = self.try_attach(client, host)
            if result == "attached":
                return
            if result.startswith("moved "):
                host = result.split()[1]
                client.moves.append(host)
                continue
            client.moves.clear()  # a new chain of moves starts at the next address
            tried += 1
            host = hosts[tried % len(hosts)]
            time.sleep(0.5)
        raise AssertionError(f"{client.uri} did not attach at any of {hosts}: {result}")

    def attach_across(self) -> tuple[Client, Client]:
        """A client of crs1's home range and one of crs2's, both attached
        by way of crs1 (the second moved to crs2), closed at cleanup."""
        one, two = Client(self.home_uris(1)[0]), Client(self.home_uris(2)[0])
        self.clients.extend([one, two])
        self.attach(one, [address(1)])
        self.attach(two, [address(1)])
        return one, two

    def lost(self, client: Client) -> str:
        """Wait until ``client``'s connection ends; the disconnect code if
        the CRS sent one, else ``closed``."""
        deadline = time.monotonic() + CEILING
        while time.monotonic() < deadline:
            try:
                msg = cbor2.loads(client.ws.recv(timeout=CEILING))
            except TimeoutError:
                continue
            except Exception:
                client.close()
                return "closed"
            if msg.get("type") == "disconnect":
                client.close()
                return str(msg.get("code"))
        raise AssertionError(f"{client.uri}'s connection did not end")

    def notified(self, index: int) -> str:
        try:
            with open(os.path.join(self.dirs[index - 1], "notify.log")) as f:
                return f.read()
        except OSError:
            return ""
