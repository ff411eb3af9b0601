"""
A private network namespace (and mount namespace) for interop tests that
need fixed, well-known ports: RFC 3261 sends a UDP response to port 5060
when the Via names no port, and the README's recipes use fixed ports and
a host name in /etc/hosts. Inside the namespace, loopback is the test's
alone, so nothing else on the machine can hold those ports or see them.

Processes are started in it with L{NetNamespace.prefix} (nsenter); the
test's own sockets are made in it with L{NetNamespace.socket}. Making a
namespace needs root (CAP_SYS_ADMIN); without it the tests that need one
say so as a skip.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.trial.unittest import SkipTest

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class NetNamespace:
    """
    A network and mount namespace held by a sleeping process, removed at
    cleanup. C{hosts}, if given, is bind-mounted on /etc/hosts inside it.
    """

    def __init__(self, case: Any, workdir: str, hosts: str | None = None) -> None:
        unshare, nsenter = shutil.which("unshare"), shutil.which("nsenter")
        if os.geteuid() != 0 or unshare is None or nsenter is None:
            raise SkipTest("needs root and unshare/nsenter (util-linux) for a private network")
        self.nsenter = nsenter
        self.holder = subprocess.Popen(
            [unshare, "--net", "--mount", "--propagation", "private", "sleep", "3600"],
            start_new_session=True,
        )
        case.addCleanup(self.stop)
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while True:
            try:
                if os.readlink(f"/proc/{self.holder.pid}/ns/net") != own:
                    break
            except OSError:
                pass
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise SkipTest("cannot make a private network namespace here")
            time.sleep(0.02)
        self.run("ip", "link", "set", "lo", "up")
        if hosts is not None:
            path = os.path.join(workdir, "hosts")
            with open(path, "w") as f:
                f.write(hosts)
            self.run("mount", "--bind", path, "/etc/hosts")

    def prefix(self, cwd: str = "/") -> list[str]:
        """The command prefix that runs a program inside the namespace, in C{cwd}."""
        return [self.nsenter, f"--target={self.holder.pid}", "--net", "--mount", f"--wd={cwd}"]

    def run(self, *argv: str) -> None:
        subprocess.run([*self.prefix(), *argv], check=True, timeout=30)

    def socket(self, kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A new IPv4 socket that lives in the namespace."""
        with self.entered():
            return socket.socket(socket.AF_INET, kind)

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Run this thread in the namespace for the block: sockets made,
        interfaces listed and BPF programs attached there are its own."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/proc/{self.holder.pid}/ns/net", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)
            os.close(target)

    def stop(self) -> None:
        """Kill whatever still runs in the namespace (all of it ours), then the holder."""
        if self.holder.poll() is None:
            mine = os.readlink(f"/proc/{self.holder.pid}/ns/net")
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) == self.holder.pid:
                    continue
                try:
                    if os.readlink(f"/proc/{entry}/ns/net") == mine:
                        os.kill(int(entry), signal.SIGKILL)
                except OSError:
                    pass
            self.holder.send_signal(signal.SIGKILL)
            self.holder.wait()
