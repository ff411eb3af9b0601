"""A real twistd crs with the remote admin interface on (L{CrsWithAdmin}),
shared by the admin interop and browser tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.interop._procs import (
    Twistd,
    free_port,
    run_cli,
    short_tempdir,
    tcp_answers,
    unix_answers,
    wait_for,
    write_crs_conf,
)


class CrsWithAdmin(SynchronousTestCase):
    """A ``twistd crs`` with its admin interface on a free loopback port."""

    def setUp(self) -> None:
        if shutil.which("redis-server") is None:
            raise SkipTest("redis-server is not installed")
        self.dir = short_tempdir(self)
        self.port = free_port()
        self.conf = write_crs_conf(
            self.dir,
            free_port(),
            free_port(socket.SOCK_DGRAM),
            extra=f"admin-listen 127.0.0.1 {self.port}\n",
        )
        self.socket = os.path.join(self.dir, "crs.sock")
        self.crs = Twistd(self.dir, "crs", "--config", self.conf)
        self.addCleanup(self.stop)
        wait_for(lambda: unix_answers(self.socket), "CRS management socket")
        wait_for(lambda: tcp_answers(self.port), "CRS admin interface")

    def stop(self) -> None:
        self.crs.stop()
        for name in ("redis_high", "redis_low"):
            try:
                with open(os.path.join(self.dir, "data", "redis", name, "redis.pid")) as f:
                    pid = f.read().strip()
            except OSError:
                continue
            if pid and os.path.exists(f"/proc/{pid}"):
                os.kill(int(pid), signal.SIGKILL)

    def crs_cli(self, *args: str) -> str:
        status, out, err = run_cli("crs-cli", "--socket", self.socket, *args)
        self.assertEqual(status, 0, err)
        return out

    def admin(self, name: str, *args: str) -> tuple[int, str, str]:
        return run_cli(
            "cryptify-admin",
            "--url",
            f"https://127.0.0.1:{self.port}",
            "--ca",
            os.path.join(self.dir, "data", "tls", "crs.crt"),
            "--admin",
            name,
            "--secret-file",
            os.path.join(self.dir, f"{name}.secret"),
            *args,
        )

    def create_admin(self, name: str) -> None:
        out = self.crs_cli("create", "admin", name)
        secret = out.splitlines()[1].removeprefix("secret ")
        fd = os.open(os.path.join(self.dir, f"{name}.secret"), os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, secret.encode() + b"\n")
        os.close(fd)
