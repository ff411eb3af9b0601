"""``workers 2``: a real ``twistd crs`` whose clients are served by two
worker processes behind the one client port (docs/workers.md).

Two clients attached on different workers (each connection's server side
is found in /proc, so the test knows which PID holds it) exchange messages
both ways (each notice addressed to the recipient's worker); a worker
killed with SIGKILL is started again by the parent, its client attaches
again and every message answered ``posted`` arrives; ``show system``
gives each worker half the slots.
The operator sees the whole instance: ``show attach`` lists the clients of
both workers, ``show session`` the call between them (once), one ``trace``
the message between them, and the metrics count every worker's clients.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import ssl
import subprocess
import threading
import time
from typing import Any

import cbor2

from cryptify.crypto import mikey
from cryptify.crypto.identity import tel_identifier
from tests.interop._crs import CALLEE, CALLER, CrsFixture, recv, send
from tests.interop._metrics import scrape
from tests.interop._procs import BIN, free_port, wait_for
from tests.interop._ws import ws_connect

try:
    from websockets.exceptions import ConnectionClosed
except ImportError:  # pragma: no cover
    ConnectionClosed = Exception  # type: ignore[assignment,misc]

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
        self.metrics_port = free_port()
        with open(path, "w") as f:
            f.write(f"workers 2\nmetrics 127.0.0.1 {self.metrics_port}\n")
        return ["--local-config", path]

    def trace(self, element: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
        """``crs-cli trace ELEMENT`` running; its lines as they come."""
        proc = subprocess.Popen(
            [os.path.join(BIN, "crs-cli"), "--socket", self.socket, "trace", element],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(proc.wait, 10)
        self.addCleanup(proc.send_signal, signal.SIGINT)
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))

        threading.Thread(target=read, daemon=True).start()
        return proc, lines

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
        system = self.cli("show", "system")[1]
        self.assertIn("app:crs", system)
        # each worker is the home of half the slots
        self.assertEqual(
            re.findall(r"app:attach/\d+\s+\d+\s+(\S+)", system), ["0-8191", "8192-16383"]
        )
        self.assertRegex(self.cli("show", "services")[1], r"workers\s+active")

    def test_operator_sees_the_whole_instance(self) -> None:
        """With two clients on two workers: ``show attach`` lists both (the
        format of one process), ``show session`` their call once, a trace
        started at the parent shows the message between them as it is
        posted on one worker and delivered on the other, and the metrics
        count both clients."""
        wait_for(lambda: len(self.workers()) == 2, "two workers in show system")
        a, pid_a = self.attach_on(CALLER, None)
        b, _ = self.attach_on(CALLEE, pid_a)
        try:
            status, out, err = self.cli("show", "attach")
            self.assertEqual((status, err), (0, ""))
            [header, *rows] = out.splitlines()
            self.assertEqual(
                header.split(), ["URI", "ACCOUNT", "TIME", "VERSION", "IP:PORT", "CRS"]
            )
            self.assertEqual([row.split()[0] for row in rows], [CALLER, CALLEE])
            # the call between them, listed once (by the caller's worker)
            keys = self.keys[CALLER]
            built = mikey.build_i_message(
                keys.signer(),
                keys.public_key(),
                tel_identifier(CALLEE, self.period),
                now=time.time(),
                idrs=mikey.tel_idrs(CALLER, CALLEE),
            )
            send(a, type="invite", id=21, to=CALLEE, mikey=built.data)
            recv(a, "session")
            invite = recv(b, "invite")
            send(b, type="talk", session=invite["session"])
            recv(a, "talk")
            status, out, err = self.cli("show", "session")
            self.assertEqual((status, err), (0, ""))
            [header, *rows] = out.splitlines()
            self.assertEqual(header.split(), ["CALLER", "CALLEE", "TIME", "STATE"])
            self.assertEqual(
                [(r.split()[0], r.split()[1], r.split()[3]) for r in rows],
                [(CALLER, CALLEE, "talk")],
            )
            send(a, type="hangup", session=invite["session"], code="normal")
            recv(b, "hangup")
            rows = self.cli("show", "session")[1].splitlines()[1:]
            self.assertEqual([r.split()[:2] for r in rows], [[CALLER, CALLEE]])
            self.assertTrue(rows[0].split()[3].startswith("hangup("), rows)
            # one trace at the parent: the message between the workers
            proc, lines = self.trace("message")
            seen: list[str] = []
            for msg_id in range(22, 52):
                # (the trace is in place once a post shows in it on both
                # workers: the parent starts it on each worker in turn, so
                # a first message may show on one only)
                send(a, type="post", id=msg_id, to=CALLEE, content=b"traced")
                posted = recv(a, "posted")["message"]
                got = recv(b, "message")
                send(b, type="delivered", message=got["message"])
                recv(a, "delivered")
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline:
                    try:
                        seen.append(lines.get(timeout=0.2))
                    except queue.Empty:
                        continue
                    if any("delivered" in line and posted in line for line in seen):
                        break
                states = [line.split(", ")[4] for line in seen if posted in line]
                if {"posted content", "delivered"} <= set(states):
                    break
            if proc.poll() is not None:
                self.fail(f"the trace ended: {proc.stderr.read() if proc.stderr else ''}")
            self.assertEqual(states, ["posted content", "delivered"], seen)
            status, samples = scrape(self.metrics_port)
            self.assertEqual(status, 200)
            self.assertEqual(samples["cryptify_crs_attached_clients"], 2)
            self.assertGreaterEqual(samples["cryptify_crs_messages_posted_total"], 1)
            self.assertEqual(samples["cryptify_crs_query_ok{query=worker_w1}"], 1)
        finally:
            a.close()
            b.close()

    def test_show_account_per_worker(self) -> None:
        """``show account`` lists the parent (``app:crs``) and each worker
        (``app:attach/K`` with its PID, as ``show system`` has it), each with
        the accounts it has loaded; an account created through the parent is
        loaded by every worker."""
        wait_for(lambda: len(self.workers()) == 2, "two workers in show system")
        self.cli("create", "account", "beta", "-B", "32")

        def rows() -> list[list[str]]:
            status, out, err = self.cli("show", "account")
            self.assertEqual((status, err), (0, ""))
            [header, *lines] = out.splitlines()
            self.assertEqual(header.split(), ["SERVER", "MODULE", "PID", "LOADED", "ACCOUNTS"])
            return [line.split() for line in lines]

        wait_for(lambda: all(r[3] == "acme,beta" for r in rows()), "beta loaded everywhere")
        pids = self.workers()
        crs = next(p for p in self.procs if p.name == "crs")
        self.assertEqual(
            [r[1:3] for r in rows()],
            [["app:crs", str(crs.proc.pid)]]
            + [[f"app:attach/{n}", str(pids[n])] for n in sorted(pids)],
        )

    def test_worker_that_does_not_answer(self) -> None:
        """A worker stopped (SIGSTOP) does not hang the operator: ``show
        attach`` prints the other worker's client within the bound, names
        the silent worker on standard error and exits 1; once the worker
        runs again, the answer is whole."""
        wait_for(lambda: len(self.workers()) == 2, "two workers in show system")
        a, pid_a = self.attach_on(CALLER, None)
        b, pid_b = self.attach_on(CALLEE, pid_a)
        number = {pid: n for n, pid in self.workers().items()}[pid_b]
        os.kill(pid_b, signal.SIGSTOP)
        try:
            status, out, err = self.cli("show", "attach")
            self.assertEqual(status, 1)
            self.assertEqual([row.split()[0] for row in out.splitlines()[1:]], [CALLER])
            self.assertIn(f"worker {number} did not answer", err)
        finally:
            os.kill(pid_b, signal.SIGCONT)
        try:
            status, out, err = self.cli("show", "attach")
            self.assertEqual((status, err), (0, ""))
            self.assertEqual([row.split()[0] for row in out.splitlines()[1:]], [CALLER, CALLEE])
        finally:
            a.close()
            b.close()

    def test_reload_reaches_the_workers(self) -> None:
        """SIGHUP with a new client-max-message: every worker takes it (its
        line in crs.log), and a new connection, on whichever worker, is held
        to it."""
        with open(self.conf) as f:
            text = f.read()
        marker = f"listen 127.0.0.1 {self.client_port}"
        self.assertIn(marker, text)
        with open(self.conf, "w") as f:
            f.write(text.replace(marker, f"{marker}\nclient-max-message 2048"))
        crs = next(p for p in self.procs if p.name == "crs")
        crs.proc.send_signal(signal.SIGHUP)
        taken = "client limits and keep-alive rules from the parent's reload"
        wait_for(lambda: self.crs_log().count(taken) >= 2, "both workers took the new limits")
        for _ in range(4):
            # (the kernel picks the worker of each connection)
            self.assertEqual(self.big_attach(), "too-large")

    def crs_log(self) -> str:
        try:
            with open(os.path.join(self.dir, "log", "crs.log")) as f:
                return f.read()
        except OSError:
            return ""

    def big_attach(self) -> object:
        """An attach frame of 3,000 octets on a new connection: the code of
        the CRS's error, ``too-large`` also when it closed with 1009."""
        cafile = os.path.join(self.dir, "data", "tls", "crs.crt")
        tls = ssl.create_default_context(cafile=cafile)
        ws = ws_connect(f"wss://127.0.0.1:{self.client_port}/", ssl=tls, subprotocols=["umsg.1"])
        try:
            send(ws, type="attach", id=1, account="acme", uri=CALLER, versions=[1], app="x" * 3000)
            try:
                return cbor2.loads(ws.recv(timeout=30)).get("code")
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
                return "too-large" if code == 1009 else code
        finally:
            ws.close()
