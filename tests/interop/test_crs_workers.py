"""``workers 2``: a real ``twistd crs`` whose clients are served by two
worker processes behind the one client port (docs/workers.md).

Two clients attached on different workers (each connection's server side
is found in /proc, so the test knows which PID holds it) exchange messages
both ways; a worker killed with SIGKILL is started again by the parent,
its client attaches again and every message answered ``posted`` arrives.
"""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

from cryptify.crypto import mikey
from cryptify.crypto.identity import tel_identifier
from tests.interop._crs import CALLEE, CALLER, CrsFixture, recv, send
from tests.interop._procs import wait_for

#: Connections tried before two clients land on different workers.
ATTEMPTS = 40


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds."""
    found = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def server_inode(client_port: int, server_port: int) -> str | None:
    """The inode of the server side of the loopback connection from ``client_port``."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.split(":")[1], 16) == server_port and (
                int(remote.split(":")[1], 16) == client_port
            ):
                return inode
    return None


class WorkersTests(CrsFixture):
    """Clients on two workers of one instance."""

    timeout = 180

    def crs_args(self) -> list[str]:
        path = os.path.join(self.dir, "crs-local.conf")
        with open(path, "w") as f:
            f.write("workers 2\n")
        return ["--local-config", path]

    def workers(self) -> dict[int, int]:
        """Worker number -> PID, from ``show system`` (running workers only)."""
        out = self.cli("show", "system")[1]
        return {int(n): int(pid) for n, pid in re.findall(r"app:attach/(\d+)\s+(\d+)", out)}

    def holder(self, ws: Any) -> int | None:
        """The worker PID holding the server side of ``ws``."""
        inode = None
        port = ws.socket.getsockname()[1]
        for _ in range(50):
            inode = server_inode(port, self.client_port)
            if inode is not None:
                break
            time.sleep(0.05)
        for pid in self.workers().values():
            if inode in socket_inodes(pid):
                return pid
        return None

    def attach_on(self, uri: str, avoid: int | None) -> tuple[Any, int]:
        """Attach ``uri`` on a worker other than ``avoid`` (any when None)."""
        for _ in range(ATTEMPTS):
            ws = self.attach(uri)
            pid = self.holder(ws)
            if pid is not None and pid != avoid:
                return ws, pid
            ws.close()
        raise AssertionError(f"{uri} never landed on a worker other than {avoid}")

    def exchange(self, sender: Any, recipient: Any, to: str, text: bytes, msg_id: int) -> None:
        """``sender`` posts ``text`` to ``to``; ``recipient`` gets it and confirms."""
        send(sender, type="post", id=msg_id, to=to, content=text)
        posted = recv(sender, "posted")
        got = recv(recipient, "message")
        self.assertEqual((got["message"], got["content"]), (posted["message"], text))
        send(recipient, type="delivered", message=got["message"])
        told = recv(sender, "delivered")
        self.assertEqual(told["message"], posted["message"])

    def test_call_between_workers(self) -> None:
        """A call from a client on one worker to a client on the other rings,
        is answered, carries media both ways through the relay and hangs up,
        as between two clients of one process."""
        wait_for(lambda: len(self.workers()) == 2, "two workers in show system")
        caller, pid = self.attach_on(CALLER, None)
        callee, _ = self.attach_on(CALLEE, pid)
        # (attach_on asked crs-cli after the attach: the callee's worker has
        # long told the caller's one where it is attached)
        results = self.call(caller, callee)
        self.assertEqual(results["unknown"]["code"], "not-found")
        self.assertTrue(results["ssv_match"])
        self.assertEqual(results["invite"]["from"], CALLER)
        self.assertEqual(results["hangup"]["code"], "normal")
        self.assertEqual(results["hangup"]["who"], "caller")
        self.assertTrue(results["media"][0].endswith(b"caller audio"))
        self.assertTrue(results["media"][1].endswith(b"callee audio"))

    def test_worker_lost_during_a_call(self) -> None:
        """When the callee's worker is killed -9 during a call, the parent
        says it is gone and the caller's worker ends the call:
        ``hangup not-connected`` from ``crs``."""
        wait_for(lambda: len(self.workers()) == 2, "two workers in show system")
        caller, pid = self.attach_on(CALLER, None)
        callee, callee_pid = self.attach_on(CALLEE, pid)
        try:
            keys = self.keys[CALLER]
            built = mikey.build_i_message(
                keys.signer(),
                keys.public_key(),
                tel_identifier(CALLEE, self.period),
                now=time.time(),
                idrs=mikey.tel_idrs(CALLER, CALLEE),
            )
            send(caller, type="invite", id=11, to=CALLEE, mikey=built.data)
            offer = recv(caller, "session")
            invite = recv(callee, "invite")
            send(callee, type="talk", session=invite["session"])
            recv(caller, "talk")
            os.kill(callee_pid, signal.SIGKILL)
            hangup = recv(caller, "hangup")
            self.assertEqual(
                (hangup["session"], hangup["code"], hangup["who"]),
                (offer["session"], "not-connected", "crs"),
            )
        finally:
            caller.close()
            callee.close()

    def test_messages_between_workers_and_restart(self) -> None:
        """Messages go both ways between clients on two workers; a worker
        killed -9 is restarted (``show system`` shows its new PID), its
        client attaches again and gets what was posted meanwhile."""
        wait_for(lambda: len(self.workers()) == 2, "two workers in show system")
        a, pid_a = self.attach_on(CALLER, None)
        b, pid_b = self.attach_on(CALLEE, pid_a)
        try:
            self.exchange(a, b, CALLEE, b"from a", 10)
            self.exchange(b, a, CALLER, b"from b", 11)
            os.kill(pid_b, signal.SIGKILL)
            wait_for(
                lambda: len(self.workers()) == 2 and pid_b not in self.workers().values(),
                "the killed worker started again",
            )
            send(a, type="post", id=12, to=CALLEE, content=b"while b was away")
            posted = recv(a, "posted")
            b.close()
            b = self.attach(CALLEE)
            got = recv(b, "message")
            self.assertEqual(
                (got["message"], got["content"]), (posted["message"], b"while b was away")
            )
            send(b, type="delivered", message=got["message"])
            self.assertEqual(recv(a, "delivered")["message"], posted["message"])
        finally:
            a.close()
            b.close()
        self.assertIn("app:crs", self.cli("show", "system")[1])
        self.assertRegex(self.cli("show", "services")[1], r"workers\s+active")
