"""Helpers for tests that run the real programs (twistd, the CLIs)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

BIN = os.path.dirname(sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Longest wait for a process to come up or a condition to hold.
WAIT = 30.0


def short_tempdir(case: Any) -> str:
    """A fresh directory with a short path (UNIX socket paths max out at 107 bytes)."""
    path = tempfile.mkdtemp(prefix="cry-", dir="/tmp")
    if not os.environ.get("CRYPTIFY_KEEP_TMP"):
        case.addCleanup(shutil.rmtree, path, True)
    return path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port the kernel just gave out on 127.0.0.1 (free right now).

    A UDP port is also free for TCP: a SIP interface listens on both, and
    an outgoing TCP connection may hold a port that is free for UDP."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if kind != socket.SOCK_DGRAM:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def wait_for(predicate: Callable[[], object], what: str, timeout: float = WAIT) -> object:
    """Poll until ``predicate()`` is truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def unix_answers(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        return False
    finally:
        s.close()
    return True


def tcp_answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class Twistd:
    """One ``twistd -n PLUGIN ...`` child, stopped (and reaped) at cleanup."""

    def __init__(self, workdir: str, plugin: str, *args: str, prefix: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.name = plugin
        self.log = os.path.join(workdir, f"{plugin}.twistd.log")
        argv = [
            *prefix,
            os.path.join(BIN, "twistd"),
            "-n",
            "--pidfile=",
            f"--logfile={self.log}",
            plugin,
            *args,
        ]
        self.proc = subprocess.Popen(
            argv,
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def output(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    def wait_exit(self, timeout: float = WAIT) -> tuple[int, str]:
        """Wait for the process to end by itself; return (status, stderr)."""
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err.decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.communicate(timeout=WAIT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.communicate()
        if self.name == "crs":
            kill_managed_redis(self.workdir)


def kill_managed_redis(workdir: str) -> list[int]:
    """SIGKILL every ``redis-server`` whose pid file lies under ``workdir``.

    A CRS stops its Redis children itself; one that was killed outright (or
    failed half-way through its start) leaves them running in their own
    session, where nothing else would ever stop them.  Return their PIDs.
    """
    killed = []
    for top, _dirs, files in os.walk(workdir):
        for name in files:
            if not name.endswith(".pid"):
                continue
            try:
                with open(os.path.join(top, name)) as f:
                    pid = int(f.read(32).strip())
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read(4096)
                # Redis works in its data directory: this tells a stale pid
                # file whose PID was reused by someone else's redis-server
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except (OSError, ValueError):
                continue
            inside = os.path.realpath(cwd).startswith(os.path.realpath(workdir) + os.sep)
            if pid > 1 and b"redis-server" in cmdline and inside:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    continue
                killed.append(pid)
    return killed


def run_cli(
    program: str,
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> tuple[int, str, str]:
    """Run a console script; return (status, stdout, stderr)."""
    argv = [os.path.join(BIN, program), *args]
    done = subprocess.run(
        argv,
        env=dict(os.environ, **(env or {})),
        capture_output=True,
        text=True,
        timeout=WAIT,
        input=stdin,
    )
    return done.returncode, done.stdout, done.stderr


def as_user(uid: int, action: Callable[[], str]) -> str:
    """Run ``action`` in a forked child that has become ``uid`` (and its
    group), with no supplementary groups; return what it returned, or the
    text of what it raised.

    The child never executes a program, so this works wherever the checkout
    and its virtualenv live (a clone under ``/root`` that other users cannot
    enter included); it runs no reactor and leaves with ``os._exit``.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        text = ""
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            text = action()
        except BaseException as exc:
            text = f"{exc.__class__.__name__}: {exc}"
        finally:
            os.write(write_end, text.encode("utf-8", "replace"))
            os._exit(0)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as pipe:
        while chunk := pipe.read(4096):
            chunks.append(chunk)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode("utf-8", "replace")


def durable_redis(port: int, password: str, directory: str) -> subprocess.Popen[bytes]:
    """A redis-server on 127.0.0.1:``port`` configured as ``redis_low`` is:
    append-only, synced before every reply, no snapshots."""
    return subprocess.Popen(
        [
            "redis-server",
            *("--port", str(port), "--bind", "127.0.0.1", "--requirepass", password),
            *("--dir", directory, "--save", "", "--appendonly", "yes"),
            *("--appendfsync", "always"),
        ],
        stdout=subprocess.DEVNULL,
    )


def cli_ok(case: Any, program: str, *args: str, stdin: str | None = None) -> str:
    """Run a console script that must succeed (``case`` fails otherwise); its stdout."""
    status, out, err = run_cli(program, *args, stdin=stdin)
    case.assertEqual(status, 0, f"{program} {args}: {out}{err}")
    return out


def pids_of(pattern: str) -> list[int]:
    """PIDs whose command line contains ``pattern``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if pattern in cmdline:
            found.append(int(entry))
    return found


def write_crs_conf(directory: str, client_port: int, relay_port: int, extra: str = "") -> str:
    """A crs.conf for one loopback instance keeping every file in ``directory``.

    Redis ports are fresh; ``extra`` lines go at the end of the GLOBAL section.
    """
    d = directory
    path = os.path.join(d, "crs.conf")
    with open(path, "w") as f:
        f.write(
            f"""[GLOBAL]
key testpoolkey
features
listen 127.0.0.1 {client_port}
relay 127.0.0.1 {relay_port}
relay-control {d}/relay.sock
management {d}/crs.sock
data-dir {d}/data
accounts-dir {d}/accounts
log-dir {d}/log
redis managed
redis-high 127.0.0.1 {free_port()}
redis-low 127.0.0.1 {free_port()}
redis-backup 127.0.0.1 {free_port()}
{extra}
[POOL]
host crs1
ip crs1 127.0.0.1
"""
        )
    return path


def provision(
    directory: str, socket_path: str, account: str, uris: list[str], period: str
) -> dict[str, str]:
    """Create ``account`` on the CRS, keys for ``uris`` and its applied update file.

    Returns each URI's key material file.
    """
    status, out, err = run_cli(
        "crs-cli", "--socket", socket_path, "create", "account", account, "-B", "16"
    )
    assert status == 0, err
    secret = out.split("shared secret ")[1].strip()
    kms = ("--store", os.path.join(directory, "kms"))
    status, _, err = run_cli("cryptify-kms", *kms, "init", account)
    assert status == 0, err
    keys = {}
    for uri in uris:
        path = os.path.join(directory, uri.replace(":", "_").replace("+", "") + ".keys")
        status, _, err = run_cli(
            "cryptify-kms", *kms, "issue", account, uri, "--period", period, "-o", path
        )
        assert status == 0, err
        keys[uri] = path
    update = os.path.join(directory, f"{account}.upd")
    status, _, err = run_cli(
        "cryptify-kms",
        *kms,
        "update",
        account,
        "--secret",
        secret,
        "--period",
        period,
        "-o",
        update,
    )
    assert status == 0, err
    status, _, err = run_cli("crs-cli", "--socket", socket_path, "apply", update)
    assert status == 0, err
    return keys
