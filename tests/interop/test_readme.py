"""
The README's recipes, run as printed: the shell blocks README.md marks
with C{<!-- test_readme: NAME -->} are read from the README itself (so the
document and the test cannot drift) and run with bash against a system
started the way C{make run} starts it (scripts/devrun.py, etc/ configs).

The recipes use fixed ports (15223, 18083, 15060, sipp's 5060) and a
host name in /etc/hosts (pbx.local), so everything runs in a private
network and mount namespace (L{NetNamespace}) with its own /etc/hosts,
from a scratch directory that looks like a checkout (etc, scripts and
.venv linked to this one), leaving the real checkout's run/ alone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.interop._netns import NetNamespace
from tests.interop._procs import REPO, short_tempdir, wait_for

_MARKED = re.compile(r"<!-- test_readme: (\w+)[^>]*-->\n```[^\n]*\n(.*?)\n```", re.DOTALL)
#: Longest the recipes together may take.
RECIPES_WITHIN = 240


def readme_blocks() -> dict[str, str]:
    """The README's marked shell blocks, by name."""
    with open(os.path.join(REPO, "README.md")) as f:
        return {m.group(1): m.group(2) for m in _MARKED.finditer(f.read())}


class ReadmeRecipeTests(SynchronousTestCase):
    """
    "A secure call and a message on make run" and "A secure call into a
    SIP PBX through the CIG", one after the other in one shell, as a
    reader pastes them.
    """

    def setUp(self) -> None:
        self.dir = short_tempdir(self)
        self.ns = NetNamespace(
            self, self.dir, hosts="127.0.0.1 localhost\n127.0.0.1 pbx.local\n::1 localhost\n"
        )
        self.home = os.path.join(self.dir, "checkout")
        os.mkdir(self.home)
        for name in ("etc", "scripts", ".venv"):
            os.symlink(os.path.join(REPO, name), os.path.join(self.home, name))
        self.run_log = os.path.join(self.dir, "make-run.out")
        with open(self.run_log, "wb") as out:
            self.system = subprocess.Popen(
                [
                    *self.ns.prefix(),
                    sys.executable,
                    os.path.join(self.home, "scripts", "devrun.py"),
                ],
                cwd=self.home,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.addCleanup(self.stop_system)
        wait_for(self.system_up, "make run's system to come up", timeout=90)

    def system_up(self) -> bool:
        if self.system.poll() is not None:
            raise AssertionError(f"devrun.py exited:\n{self.output(self.run_log)}")
        return "Cryptify is running" in self.output(self.run_log)

    def output(self, path: str) -> str:
        try:
            with open(path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop_system(self) -> None:
        if self.system.poll() is None:
            self.system.send_signal(signal.SIGTERM)
            try:
                self.system.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.system.kill()
                self.system.wait()

    def test_blocks_marked(self) -> None:
        """
        The README marks both recipes, and the PBX one no longer uses
        sipp's built-in UAS (which the CIG's OPTIONS keep-alive defeats).
        """
        blocks = readme_blocks()
        self.assertEqual(sorted(blocks), ["pbx", "secure"])
        self.assertNotIn("-sn uas", blocks["pbx"])

    def test_recipes(self) -> None:
        """
        Both recipes run to the end with every command succeeding: the
        secure call records the callee's tone and the message is posted;
        the call into the PBX is answered by sipp (which stops by itself
        once the call has ended), listed by C{show call} and logged to
        session.log from routing to hangup.
        """
        blocks = readme_blocks()
        script = "set -e -x\n" + blocks["secure"] + "\n" + blocks["pbx"] + "\n"
        env = dict(os.environ, HOME=self.dir)
        env.pop("CRS_CLI_SOCKET", None)
        env.pop("CIG_CLI_ADDRESS", None)
        shell = subprocess.Popen(
            [*self.ns.prefix(self.home), "bash", "-c", script],
            cwd=self.home,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = shell.communicate(timeout=RECIPES_WITHIN)
        except subprocess.TimeoutExpired:
            os.killpg(shell.pid, signal.SIGKILL)
            out, _ = shell.communicate()
        text = out.decode("utf-8", "replace")
        logs = "\n".join(
            self.output(os.path.join(self.home, "run", name))[-3000:]
            for name in ("cig.twistd.log", "crs.twistd.log")
        )
        self.assertEqual(shell.returncode, 0, f"recipes failed:\n{text[-6000:]}\n{logs}")
        self.assertGreater(os.path.getsize(os.path.join(self.home, "a.wav")), 1000)
        self.assertIn("sip:101@pbx.local", text)
        session = self.output(os.path.join(self.home, "run", "cig", "log", "session.log"))
        states = [line.split(", ")[6] for line in session.splitlines() if ", " in line]
        self.assertIn("talk", states, session)
        self.assertEqual(states[-1], "hangup", session)
        wait_for(lambda: not self.sipp_running(), "sipp to stop after the call", timeout=30)

    def sipp_running(self) -> bool:
        mine = os.readlink(f"/proc/{self.ns.holder.pid}/ns/net")
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/net") != mine:
                    continue
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == "sipp":
                        return True
            except OSError:
                continue
        time.sleep(0)
        return False
