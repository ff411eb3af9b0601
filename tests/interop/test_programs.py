"""The four programs for real: twistd processes, real Redis, the real CLIs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from cryptify.cookie import CookieError, read_cookie
from tests.interop._procs import (
    BIN,
    REPO,
    Twistd,
    as_user,
    free_port,
    run_cli,
    short_tempdir,
    tcp_answers,
    unix_answers,
    wait_for,
    write_crs_conf,
)

NOTIFY = """#!/bin/sh
echo "$1 $2" >> "{events}"
"""


def read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def write(path: str, text: str, mode: int = 0o644) -> str:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


class CrsTests(SynchronousTestCase):
    def setUp(self) -> None:
        if shutil.which("redis-server") is None:
            raise SkipTest("redis-server is not installed")
        self.dir = short_tempdir(self)
        self.events = os.path.join(self.dir, "events")
        self.client_port = free_port()
        self.relay_port = free_port(socket.SOCK_DGRAM)
        d = self.dir
        write(os.path.join(d, "notify.sh"), NOTIFY.format(events=self.events), 0o755)
        self.conf = write_crs_conf(
            d, self.client_port, self.relay_port, f"notify {d}/notify.sh\nnotify-timeout 5"
        )
        self.socket = os.path.join(d, "crs.sock")
        self.procs: list[Twistd] = []
        self.addCleanup(self.stop_all)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        for name in ("redis_high", "redis_low"):
            pid = read_text(os.path.join(self.dir, "data", "redis", name, "redis.pid")).strip()
            if pid and os.path.exists(f"/proc/{pid}"):
                os.kill(int(pid), signal.SIGKILL)

    def start(self, plugin: str) -> Twistd:
        proc = Twistd(self.dir, plugin, "--config", self.conf)
        self.procs.append(proc)
        return proc

    def services(self) -> str:
        status, out, err = run_cli("crs-cli", "--socket", self.socket, "show", "services")
        self.assertEqual(status, 0, err)
        return out

    def events_seen(self) -> list[str]:
        try:
            with open(self.events) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def test_services_redis_restart_and_logs(self) -> None:
        """All services come up; a killed redis_low is restarted and notify.sh told."""
        self.start("crs-relay")
        wait_for(lambda: unix_answers(os.path.join(self.dir, "relay.sock")), "relay control")
        crs = self.start("crs")
        wait_for(lambda: unix_answers(self.socket), "CRS management socket")

        def all_active() -> bool:
            rows = [line.split() for line in self.services().splitlines()[1:]]
            return {r[1]: r[2] for r in rows} == {
                "crs": "active",
                "crs_relay": "active",
                "redis_high": "active",
                "redis_low": "active",
            }

        wait_for(all_active, "every service active")
        self.assertEqual(self.services().splitlines()[0].split(), ["Server", "Service", "Status"])
        self.assertTrue(tcp_answers(self.client_port))

        pid_file = os.path.join(self.dir, "data", "redis", "redis_low", "redis.pid")
        old_pid = int(str(wait_for(lambda: read_text(pid_file).strip(), "redis_low pid file")))
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: "redis_low down" in self.events_seen(), "notify redis_low down")
        wait_for(lambda: "redis_low up" in self.events_seen(), "notify redis_low up")
        wait_for(all_active, "redis_low active again")
        new_pid = int(read_text(pid_file).strip())
        self.assertNotEqual(new_pid, old_pid)
        self.assertTrue(os.path.exists(f"/proc/{new_pid}"))

        self.assertEqual(stat.S_IMODE(os.stat(self.socket).st_mode), 0o660)
        crs.stop()
        # twistd ends with the signal that stopped it, as systemd expects
        self.assertIn(crs.proc.returncode, (0, -signal.SIGTERM))
        self.assertFalse(os.path.exists(f"/proc/{new_pid}"))
        self.assertIn("crs start", self.events_seen())
        self.assertIn("crs stop", self.events_seen())
        with open(os.path.join(self.dir, "log", "crs.log")) as f:
            log = f.read()
        self.assertRegex(
            log, r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| INIT \| \w+\(\d+\) \] Start crs"
        )
        self.assertIn("Stop crs", log)
        with open(os.path.join(self.dir, "log", "crs_relay.log")) as f:
            relay_log = f.read()
        self.assertIn("CONNECTION", relay_log)
        self.assertIn("Command poll", relay_log)
        self.assertIn("CLOSE", relay_log)
        secret_files = [
            os.path.join(self.dir, "data", "redis", name, leaf)
            for name in ("redis_high", "redis_low")
            for leaf in ("password", "redis.conf")
        ]
        for path in secret_files:
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)

    def test_operator_actions(self) -> None:
        """Accounts, update files from cryptify-kms, blacklist, slots and traces, for real."""
        crs = self.start("crs")
        wait_for(lambda: unix_answers(self.socket), "CRS management socket")

        def cli(*args: str) -> tuple[int, str, str]:
            return run_cli("crs-cli", "--socket", self.socket, *args)

        status, out, err = cli("create", "account", "acme", "-B", "32")
        self.assertEqual(status, 0, err)
        secret = out.split("shared secret ")[1].strip()
        self.assertEqual(cli("create", "account", "acme")[0], 1)
        self.assertEqual(cli("create", "account", "bad/id")[0], 1)
        status, out, _ = cli("list", "account")
        self.assertIn(f"shared secret  {secret}", out)
        period = time.strftime("%Y-%m", time.gmtime())
        kms = ("--store", os.path.join(self.dir, "kms"))
        self.assertEqual(run_cli("cryptify-kms", *kms, "init", "acme")[0], 0)
        update = os.path.join(self.dir, "acme.upd")
        status, _, err = run_cli(
            "cryptify-kms",
            *kms,
            "update",
            "acme",
            "--secret",
            secret,
            "--period",
            period,
            "--next",
            "--blacklist",
            "tel:+4611",
            "-o",
            update,
        )
        self.assertEqual(status, 0, err)
        status, out, err = cli("apply", update)
        self.assertEqual(status, 0, err)
        self.assertIn("update applied: account acme", out)
        wait_for(lambda: "crs reload" in self.events_seen(), "notify crs reload")
        rows = cli("show", "updates")[1].splitlines()
        self.assertEqual(rows[0].split(), ["Account", "Current", "Month", "Next", "Month"])
        self.assertNotIn("Not Available", rows[1])
        wrong = os.path.join(self.dir, "wrong.upd")
        run_cli(
            "cryptify-kms",
            *kms,
            "update",
            "acme",
            "--secret",
            "d3Jvbmc=",
            "--period",
            period,
            "-o",
            wrong,
        )
        status, _, err = cli("apply", wrong)
        self.assertEqual(status, 1)
        self.assertIn("refused", err)

        tracer = subprocess.Popen(
            [os.path.join(BIN, "crs-cli"), "--socket", self.socket, "trace", "object"],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.assertEqual(cli("blacklist", "add", "acme", "tel:+4622")[0], 0)
        self.assertEqual(
            cli("show", "blacklist", "acme")[1].split(), ["URI", "tel:+4611", "tel:+4622"]
        )
        self.assertEqual(cli("blacklist", "remove", "acme", "tel:+4699")[0], 1)
        self.assertIn("slot", cli("check", "slot", "tel:+4670123456")[1])
        self.assertIn("0-16383", cli("show", "system")[1])
        self.assertIn("acme", cli("show", "account")[1])
        self.assertEqual(
            cli("show", "attach")[1].split(),
            ["URI", "ACCOUNT", "TIME", "VERSION", "IP:PORT", "CRS"],
        )
        self.assertEqual(cli("purge", "clients", "acme")[1], "0 purged\n")
        time.sleep(0.5)
        tracer.send_signal(signal.SIGINT)
        self.assertEqual(tracer.wait(timeout=10), 0)
        status, out, _ = cli("delete", "account", "acme")
        self.assertEqual(status, 0)
        self.assertEqual(cli("list", "account")[1], "")
        self.assertEqual(cli("show", "bogus")[0], 2)
        crs.stop()

    def test_restart_after_crs_killed(self) -> None:
        """A CRS killed with -9 leaves Redis running; the next CRS stops it and starts cleanly."""
        crs = self.start("crs")
        wait_for(lambda: unix_answers(self.socket), "CRS management socket")
        pid_file = os.path.join(self.dir, "data", "redis", "redis_low", "redis.pid")
        old = int(str(wait_for(lambda: read_text(pid_file).strip(), "redis_low pid")))
        os.kill(crs.proc.pid, signal.SIGKILL)
        crs.proc.wait()
        self.assertTrue(os.path.exists(f"/proc/{old}"))
        self.start("crs")

        def all_redis_active() -> bool:
            if not unix_answers(self.socket):
                return False
            out = self.services()
            return "redis_low   active" in out and "redis_high  active" in out

        wait_for(all_redis_active, "Redis restarted by the new CRS")
        wait_for(lambda: not os.path.exists(f"/proc/{old}"), "leftover redis_low gone")
        with open(os.path.join(self.dir, "log", "crs.log")) as f:
            self.assertIn("leftover redis-server", f.read())

    def test_external_redis(self) -> None:
        """With redis external the CRS uses servers it does not run, with their password."""
        ports = {name: free_port() for name in ("high", "low")}
        password = os.path.join(self.dir, "redis.pw")
        write(password, "extpassword\n", 0o600)
        for name, port in ports.items():
            proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--requirepass",
                    "extpassword",
                    "--save",
                    "",
                    "--dir",
                    self.dir,
                ],
                stdout=subprocess.DEVNULL,
            )
            self.addCleanup(proc.wait)
            self.addCleanup(proc.terminate)
        text = read_text(self.conf).replace("redis managed\n", "redis external\n")
        text = "\n".join(
            line
            for line in text.splitlines()
            if not line.startswith(("redis-high", "redis-low", "redis-backup"))
        )
        text = text.replace(
            "redis external",
            f"redis external\nredis-high 127.0.0.1 {ports['high']}\n"
            f"redis-low 127.0.0.1 {ports['low']}\nredis-password-file {password}",
        )
        write(self.conf, text + "\n")
        self.start("crs")
        wait_for(lambda: unix_answers(self.socket), "CRS management socket")
        wait_for(
            lambda: (
                "redis_high  active" in self.services() and "redis_low   active" in self.services()
            ),
            "external Redis connected",
        )
        self.assertFalse(os.path.exists(os.path.join(self.dir, "data", "redis")))

    def test_bind_failure_stops_clearly(self) -> None:
        """A taken client port stops the CRS with one clear line and a non-zero exit."""
        taken = socket.socket()
        taken.bind(("127.0.0.1", self.client_port))
        taken.listen(1)
        self.addCleanup(taken.close)
        status, err = self.start("crs").wait_exit()
        self.assertNotEqual(status, 0)
        self.assertIn(
            f"crs: cannot start: cannot listen on 127.0.0.1:{self.client_port} (client TLS)", err
        )

    def test_cli_when_server_down(self) -> None:
        """With no CRS running, crs-cli prints one line and exits non-zero."""
        status, out, err = run_cli("crs-cli", "--socket", self.socket, "show", "services")
        self.assertEqual(status, 1)
        self.assertEqual(out, "")
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn("cannot reach the CRS", err)

    def test_check_config(self) -> None:
        """check-config says OK for a good file and names the line of a bad one."""
        status, out, _ = run_cli("crs-cli", "check-config", self.conf)
        self.assertEqual((status, out), (0, "OK\n"))
        bad = write(os.path.join(self.dir, "bad.conf"), "[GLOBAL]\nkey x\nlisten 127.0.0.1 99999\n")
        status, _, err = run_cli("crs-cli", "check-config", bad)
        self.assertEqual(status, 1)
        self.assertIn("bad.conf:3:", err)


class CigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = short_tempdir(self)
        d = self.dir
        self.port = free_port()
        self.cookie = os.path.join(d, "mgmt.cookie")
        self.socket = os.path.join(d, "cig.sock")
        self.conf = write(
            os.path.join(d, "cig.conf"),
            f"""interfaces {{
    sip {{
        bind 127.0.0.1 {free_port()};
    }}
}}
crs {{
    address 192.0.2.10 5223;
    keystore "{d}/userdata";
}}
relay {{
    control "{d}/relay.sock";
}}
management {{
    bind 127.0.0.1 {self.port};
    cookie "{self.cookie}";
    socket "{self.socket}";
}}
logging {{
    dir "{d}/log";
}}
notify "{d}/notify.sh";
""",
        )
        write(os.path.join(d, "notify.sh"), NOTIFY.format(events=os.path.join(d, "events")), 0o755)
        self.procs: list[Twistd] = []
        self.addCleanup(lambda: [p.stop() for p in reversed(self.procs)])

    def cli(self, *args: str, **kwargs: object) -> tuple[int, str, str]:
        return run_cli(
            "cig-cli",
            "--address",
            f"127.0.0.1:{self.port}",
            "--cookie",
            self.cookie,
            *args,
            **kwargs,  # type: ignore[arg-type]
        )

    def start_both(self) -> None:
        self.procs.append(Twistd(self.dir, "cig-relay", "--config", self.conf))
        wait_for(lambda: unix_answers(os.path.join(self.dir, "relay.sock")), "cig relay")
        self.procs.append(Twistd(self.dir, "cig", "--config", self.conf))
        wait_for(lambda: tcp_answers(self.port), "CIG management port")

    def test_cli_against_running_cig(self) -> None:
        """status, echo and show call work over the cookie-gated port."""
        self.start_both()
        status, out, err = self.cli("echo", "hello", "there")
        self.assertEqual((status, out), (0, "hello there\n"), err)
        wait_for(lambda: "Relay connection state    CONNECTED" in self.cli("status")[1], "relay")
        out = self.cli("status")[1]
        self.assertTrue(out.startswith("Cryptify Interconnect Gateway v"))
        self.assertIn("CRS Address               192.0.2.10", out)
        self.assertIn("SIP Bind address          127.0.0.1", out)
        self.assertIn("Crypto engines available  1/1", out)
        status, out, _ = self.cli("show", "call")
        self.assertEqual(status, 0)
        self.assertEqual(
            out.splitlines()[0].split(),
            ["IN-FROM", "IN-TO", "OUT-FROM", "OUT-TO", "STATE", "SOURCE"],
        )
        self.assertEqual(out.splitlines()[-1], "OK")
        self.assertEqual(stat.S_IMODE(os.stat(self.cookie).st_mode), 0o640)
        status, out, _ = run_cli("cig-cli", "--socket", self.socket, "show", "umsg")
        self.assertEqual(status, 0)
        self.assertEqual(out.splitlines()[0].split(), ["FROM", "TO", "STATE", "TIME", "ID"])

    def test_interactive(self) -> None:
        """Without an action cig-cli prompts with cig-cli$ and runs each line."""
        self.start_both()
        status, out, _ = self.cli(stdin="help\necho hi\nshow umsg\nquit\n")
        self.assertEqual(status, 0)
        self.assertIn("cig-cli$ ", out)
        self.assertIn("Cryptify Interconnect Gateway\n", out)
        self.assertIn("hi\n", out)
        self.assertIn("FROM", out)

    def test_set_key_bad_input(self) -> None:
        """
        cig-cli set-key on input that is not key material says what is
        wrong with it, never a bare "internal error".
        """
        self.start_both()
        for blob, reason in (
            ("A" * 70000, "too long"),
            ("not key material", "not base64"),
            ("QUJD", "not a JSON document"),
            ("é" * 10, "not base64"),
        ):
            status, _, err = self.cli("set-key", stdin=blob + "\n")
            self.assertEqual(status, 1, err)
            self.assertNotIn("internal error", err)
            self.assertIn(reason, err)
            self.assertEqual(len(err.splitlines()), 1, err)
        status, _, err = self.cli("set-key", stdin="A" * 70000)
        self.assertEqual(status, 1, err)
        self.assertIn("too long", err)

    def test_wrong_cookie_refused(self) -> None:
        """A wrong cookie gets nothing but a refusal."""
        self.start_both()
        wrong = write(os.path.join(self.dir, "wrong.cookie"), "0" * 64 + "\n", 0o600)
        status, out, err = run_cli(
            "cig-cli", "--address", f"127.0.0.1:{self.port}", "--cookie", wrong, "status"
        )
        self.assertEqual(status, 1)
        self.assertEqual(out, "")
        self.assertIn("refused", err)

    def test_unprivileged_user_gets_nowhere(self) -> None:
        """A local user outside the service group can neither read the cookie nor use the socket.

        The directory is opened to everyone, so only the modes the CIG gave
        the cookie (0640) and the socket (0660) stand in the way; the user's
        attempts run in a forked child, so the test does not depend on where
        the checkout lives.
        """
        if os.geteuid() != 0:
            raise SkipTest("needs root to act as another user")
        os.chmod(self.dir, 0o755)
        self.start_both()
        nobody = 65534

        def read() -> str:
            try:
                read_cookie(self.cookie)
            except CookieError as exc:
                return str(exc)
            return "read"

        def use_socket() -> str:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(self.socket)
                except OSError as exc:
                    return os.strerror(exc.errno or 0)
            return "connected"

        self.assertIn("permission denied", as_user(nobody, read))
        self.assertEqual(as_user(nobody, use_socket), "Permission denied")
        # Control: nobody can enter the directory, so the modes of the two
        # files, not the directory, are what keeps it out.
        self.assertEqual(as_user(nobody, lambda: str(os.access(self.dir, os.X_OK))), "True")

    def test_read_config(self) -> None:
        """read says OK for the sample config and names the line of a broken copy."""
        status, out, _ = run_cli("cig-cli", "read", os.path.join(REPO, "etc", "cig.conf"))
        self.assertEqual((status, out), (0, "OK\n"))
        with open(os.path.join(REPO, "etc", "cig.conf")) as f:
            lines = f.read().splitlines()
        index = next(i for i, line in enumerate(lines) if "extension map" in line)
        lines[index] = lines[index].replace("extension map", "extension mop")
        broken = write(os.path.join(self.dir, "broken.conf"), "\n".join(lines) + "\n")
        status, _, err = run_cli("cig-cli", "read", broken)
        self.assertEqual(status, 1)
        self.assertIn(f"broken.conf:{index + 1}:", err)


class ConfigErrorTests(SynchronousTestCase):
    """A broken configuration file, for real: one error line, never a usage text."""

    def setUp(self) -> None:
        self.dir = short_tempdir(self)

    def test_twistd_one_error_line(self) -> None:
        """
        twistd crs, crs-relay, cig and cig-relay on a broken file print just
        FILE:LINE:COLUMN and the problem, and exit 1.
        """
        crs_conf = write(os.path.join(self.dir, "crs.conf"), "[GLOBAL]\nlisen 127.0.0.1 5223\n")
        cig_conf = write(
            os.path.join(self.dir, "cig.conf"), "interfaces {\n  sip { bind 999.0.0.1; }\n}\n"
        )
        for plugin, conf, where in (
            ("crs", crs_conf, "2:1"),
            ("crs-relay", crs_conf, "2:1"),
            ("cig", cig_conf, "2:14"),
            ("cig-relay", cig_conf, "2:14"),
        ):
            status, err = Twistd(self.dir, plugin, "--config", conf).wait_exit()
            self.assertEqual(status, 1, err)
            self.assertNotIn("Usage", err)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertTrue(err.startswith(f"{conf}:{where}: "), err)

    def test_twistd_unreadable_config(self) -> None:
        """
        A configuration file that cannot be read is one line naming it.
        """
        missing = os.path.join(self.dir, "missing.conf")
        status, err = Twistd(self.dir, "crs", "--config", missing).wait_exit()
        self.assertEqual((status, err), (1, f"{missing}: cannot read: No such file or directory\n"))

    def test_endless_input(self) -> None:
        """
        crs-cli check-config and cig-cli read refuse /dev/zero at its first
        line instead of reading it until memory runs out.
        """
        for argv in (("crs-cli", "check-config"), ("cig-cli", "read")):
            status, out, err = run_cli(*argv, "/dev/zero")
            self.assertEqual(status, 1, err)
            self.assertEqual(err, "/dev/zero:1: line is longer than 8192 bytes\n")
            self.assertEqual(out, "")


class ClosedPipeTests(SynchronousTestCase):
    """Every command behaves like a Unix tool when its reader goes away."""

    def run_into_closed_pipe(self, *argv: str) -> tuple[int, str]:
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            done = subprocess.run(
                [os.path.join(BIN, argv[0]), *argv[1:]],
                stdout=write_end,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                timeout=60,
                text=True,
            )
        finally:
            os.close(write_end)
        return done.returncode, done.stderr

    def test_quiet_exit(self) -> None:
        """
        crs-cli, cig-cli, cryptify-client and cryptify-kms writing into a
        pipe nobody reads end quietly with status 141 (128 + SIGPIPE), as
        ``| head -1`` expects, instead of a BrokenPipeError traceback.
        """
        store = os.path.join(short_tempdir(self), "store")
        for argv in (
            ("crs-cli", "help"),
            ("cig-cli", "help"),
            ("cryptify-client", "help"),
            ("cryptify-kms", "--store", store, "init", "acme"),
        ):
            status, err = self.run_into_closed_pipe(*argv)
            self.assertEqual((status, err), (141, ""), argv)
