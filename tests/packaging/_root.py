"""
A fresh Debian 12 root to install the packages into, and the packages.

The root comes from C{debootstrap} (minbase plus systemd, for
C{systemd-analyze}), cached as a tarball under L{CACHE_DIR} keyed on the
date, so a second run the same day unpacks it in seconds. It uses the
Debian mirror the host's apt sources name. Services are started the way
their systemd units say (user, groups, capabilities, runtime and logs
directories, umask, working directory, command line), with C{chroot} and
C{setpriv}, inside a network namespace of their own so the real ports
(146, 5223, 5060, 8083) touch nothing on the host. systemd does not run
in the root.
"""

from __future__ import annotations

import datetime
import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CACHE_DIR = os.environ.get("CRYPTIFY_DEBOOTSTRAP_CACHE", "/var/cache/cryptify-debootstrap")
SUITE = "bookworm"
#: What the root has beyond minbase: systemd for systemd-analyze verify.
INCLUDE = "systemd,ca-certificates,iproute2,procps"
#: How long a service or a command may take to answer (seconds).
ANSWER_WITHIN = 120.0


def log(text: str) -> None:
    """Progress lines on stderr (trial keeps stdout for its report)."""
    print(f"[packaging {time.strftime('%H:%M:%S')}] {text}", flush=True)


def not_root_reason() -> str | None:
    """The reason to skip, when the tests cannot run: only not being root."""
    if os.geteuid() != 0:
        return (
            "packaging tests need root (debootstrap, chroot, dpkg, setpriv): "
            "run `make test-packages` as root"
        )
    return None


def run(cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, failing with its output when it fails."""
    kw.setdefault("check", True)
    kw.setdefault("text", True)
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.STDOUT)
    try:
        return subprocess.run(list(cmd), **kw)
    except subprocess.CalledProcessError as exc:
        raise AssertionError(
            f"{shlex.join(cmd)} exited {exc.returncode}:\n{exc.stdout or ''}{exc.stderr or ''}"
        ) from None


def project_version() -> str:
    with open(os.path.join(TOP, "cryptify", "__init__.py")) as f:
        match = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M)
    assert match, "no __version__ in cryptify/__init__.py"
    return match.group(1)


_built: dict[str, str] = {}


def packages(version: str) -> str:
    """
    The directory holding crs and cig .deb and .rpm files of C{version},
    built once per test run with C{packaging/build.sh} (C{PKG_VERSION}
    gives versions other than the project's). With
    C{CRYPTIFY_REUSE_PACKAGES=1}, packages an earlier run left are used
    as they are (for working on the tests, not on the packages).
    """
    if version in _built:
        return _built[version]
    out = os.path.join(TOP, "build", "packaging-tests", version)
    if os.environ.get("CRYPTIFY_REUSE_PACKAGES") and glob.glob(os.path.join(out, "*.deb")):
        log(f"reusing the packages in {out}")
        _built[version] = out
        return out
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    if version != project_version():
        env["PKG_VERSION"] = version
    started = time.monotonic()
    log(f"building packages {version} into {out}")
    run([os.path.join(TOP, "packaging", "build.sh"), out], env=env, cwd=TOP)
    log(f"built {version} in {time.monotonic() - started:.0f} s")
    _built[version] = out
    return out


def package_file(directory: str, pattern: str) -> str:
    found = glob.glob(os.path.join(directory, pattern))
    assert len(found) == 1, f"{pattern} in {directory}: {found}"
    return found[0]


def debian_mirror() -> str:
    """The Debian archive the host's apt sources use (not the security one)."""
    texts = []
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
        if path.endswith((".list", ".sources")) and os.path.isfile(path):
            with open(path) as f:
                texts.append(f.read())
    text = "\n".join(texts)
    candidates = re.findall(r"^URIs:\s*(\S+)", text, re.M)
    candidates += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", text, re.M)
    for uri in candidates:
        if "security" not in uri and "debian" in uri:
            return uri
    return "http://deb.debian.org/debian"


def cached_tarball() -> str:
    """Today's debootstrap root as a tarball, made if missing."""
    os.makedirs(CACHE_DIR, exist_ok=True)
    today = datetime.date.today().strftime("%Y%m%d")
    tarball = os.path.join(CACHE_DIR, f"{SUITE}-minbase-{today}.tar")
    if os.path.exists(tarball):
        return tarball
    work = tempfile.mkdtemp(prefix=f"{SUITE}-", dir=CACHE_DIR)
    # mkdtemp makes 0700; the root of a system must be 0755, or nobody but
    # root can load a library in it (crsuser's services exit 127).
    os.chmod(work, 0o755)
    mirror = debian_mirror()
    log(f"debootstrap {SUITE} from {mirror} (cached in {tarball})")
    started = time.monotonic()
    run(["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE, work, mirror])
    run(["tar", "-C", work, "-cf", tarball + ".tmp", "."])
    os.replace(tarball + ".tmp", tarball)
    shutil.rmtree(work)
    for old in glob.glob(os.path.join(CACHE_DIR, f"{SUITE}-minbase-*.tar")):
        if old != tarball:
            os.unlink(old)
    log(f"debootstrap took {time.monotonic() - started:.0f} s")
    return tarball


class Unit:
    """The [Service] settings of a systemd unit that decide how it runs."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.settings: dict[str, str] = {}
        section = ""
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line
                continue
            if section == "[Service]" and "=" in line:
                key, value = line.split("=", 1)
                self.settings[key.strip()] = value.strip()

    def get(self, key: str, default: str = "") -> str:
        return self.settings.get(key, default)

    def exec_start(self) -> list[str]:
        return shlex.split(self.get("ExecStart"))


def sweep_stale_roots() -> None:
    """
    Unmount and delete what an interrupted run left: the roots and network
    namespaces named after a test process that no longer exists.
    """
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in listing.stdout.splitlines():
        match = re.match(r"(cryptify-pkg-(\d+)-(root-\S+))", line)
        if not match or os.path.exists(f"/proc/{match.group(2)}"):
            continue
        for root_path in glob.glob(f"/tmp/cryptify-packaging-*/{match.group(3)}"):
            stale = DebianRoot(root_path)
            stale.netns = match.group(1)
            with open("/proc/mounts") as f:
                stale.mounts = sorted(
                    {fields.split()[1] for fields in f if fields.split()[1].startswith(root_path)},
                    key=len,
                )
            log(f"removing a root left by process {match.group(2)}: {root_path}")
            stale.close()
            shutil.rmtree(os.path.dirname(root_path), ignore_errors=True)
        subprocess.run(["ip", "netns", "delete", match.group(1)], check=False, capture_output=True)


class DebianRoot:
    """A Debian root unpacked from the cached tarball, with its own network."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.netns = f"cryptify-pkg-{os.getpid()}-{os.path.basename(path)}"
        self.mounts: list[str] = []
        self.services: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def create(cls, parent: str) -> DebianRoot:
        sweep_stale_roots()
        tarball = cached_tarball()
        path = tempfile.mkdtemp(prefix="root-", dir=parent)
        root = cls(path)
        run(["tar", "-C", path, "-xf", tarball])
        os.chmod(path, 0o755)  # a tarball made with a 0700 top (see cached_tarball)
        try:
            root._prepare()
        except BaseException:
            root.close()
            raise
        return root

    def _prepare(self) -> None:
        # The root is a private mount of its own, and so is its /dev: no
        # mount made inside (devpts above all) may propagate to the host's
        # mounts, as it would under a shared / (systemd's default).
        for fs, where, opts in (
            (self.path, "", ["--bind"]),
            ("proc", "proc", ["-t", "proc"]),
            ("/dev", "dev", ["--bind"]),
            ("devpts", "dev/pts", ["-t", "devpts", "-o", "newinstance,ptmxmode=0666"]),
            ("sysfs", "sys", ["-t", "sysfs"]),
        ):
            target = os.path.join(self.path, where).rstrip("/")
            os.makedirs(target, exist_ok=True)
            run(["mount", *opts, fs, target])
            self.mounts.append(target)
            if "--bind" in opts:
                run(["mount", "--make-private", target])
        shutil.copy("/etc/resolv.conf", os.path.join(self.path, "etc", "resolv.conf"))
        # Like a freshly installed system without a running init: package
        # scripts must not try to start daemons.
        policy = os.path.join(self.path, "usr", "sbin", "policy-rc.d")
        with open(policy, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
        run(["ip", "netns", "add", self.netns])
        run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"])

    # -- commands --------------------------------------------------------

    def chroot(
        self, *cmd: str, check: bool = True, env: dict[str, str] | None = None, netns: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the root (in its network namespace by default)."""
        full = ["chroot", self.path, *cmd]
        if netns:
            full = ["ip", "netns", "exec", self.netns, *full]
        environment = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "HOME": "/root",
            "DEBIAN_FRONTEND": "noninteractive",
        }
        environment.update(env or {})
        return run(full, check=check, env=environment)

    def apt_install(self, *args: str) -> str:
        """apt-get install in the root; dependencies come from Debian."""
        self.chroot("apt-get", "update", "-qq", netns=False)
        return self.chroot(
            "apt-get", "install", "-y", "-q", "--no-install-recommends", *args, netns=False
        ).stdout

    def copy_in(self, source: str, target_dir: str = "/root") -> str:
        """Copy a host file into the root; its path inside the root."""
        inside = os.path.join(target_dir, os.path.basename(source))
        shutil.copy(source, self.path + inside)
        return inside

    def file(self, inside: str) -> str:
        """The host path of a path inside the root."""
        return self.path + inside

    def read(self, inside: str) -> str:
        with open(self.file(inside)) as f:
            return f.read()

    # -- services --------------------------------------------------------

    def unit(self, name: str) -> Unit:
        return Unit(name, self.read(f"/lib/systemd/system/{name}.service"))

    def _ids(self, user: str, group: str) -> tuple[int, int]:
        uid = int(self.chroot("id", "-u", user, netns=False).stdout.strip())
        gid = int(self.chroot("getent", "group", group, netns=False).stdout.split(":")[2])
        return uid, gid

    def start_unit(self, name: str) -> subprocess.Popen[bytes]:
        """
        Start a unit's ExecStart the way systemd would: as its User= and
        Group= (with the user's groups and SupplementaryGroups=), with its
        AmbientCapabilities= only, NoNewPrivileges=, UMask=,
        WorkingDirectory=, and its RuntimeDirectory= and LogsDirectory=
        made first.
        """
        unit = self.unit(name)
        user, group = unit.get("User", "root"), unit.get("Group", "root")
        uid, gid = self._ids(user, group)
        for key, base in (("RuntimeDirectory", "/run"), ("LogsDirectory", "/var/log")):
            for entry in unit.get(key).split():
                directory = self.file(os.path.join(base, entry))
                os.makedirs(directory, exist_ok=True)
                os.chown(directory, uid, gid)
                os.chmod(directory, int(unit.get(key + "Mode", "0755"), 8))
        groups = self.chroot("id", "-G", user, netns=False).stdout.split()
        for extra in unit.get("SupplementaryGroups").split():
            groups.append(self.chroot("getent", "group", extra, netns=False).stdout.split(":")[2])
        setpriv = [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            f"--groups={','.join(sorted(set(groups)))}",
        ]
        if unit.get("NoNewPrivileges") == "yes":
            setpriv.append("--no-new-privs")
        caps = [
            "+" + cap.lower().removeprefix("cap_")
            for cap in unit.get("AmbientCapabilities").split()
        ]
        if caps:
            setpriv += [f"--inh-caps={','.join(caps)}", f"--ambient-caps={','.join(caps)}"]
        umask = unit.get("UMask", "0022")
        workdir = shlex.quote(unit.get("WorkingDirectory", "/"))
        shell = f'umask {umask} && cd {workdir} && exec "$@"'
        cmd = [
            "ip", "netns", "exec", self.netns, "chroot", self.path,
            *setpriv, "--", "/bin/sh", "-c", shell, name, *unit.exec_start(),
        ]  # fmt: skip
        output = open(os.path.join(os.path.dirname(self.path), f"{name}.out"), "ab")
        proc = subprocess.Popen(
            cmd,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        )
        output.close()
        self.services[name] = proc
        return proc

    def stop_unit(self, name: str) -> None:
        """SIGTERM as systemctl stop does, then wait for the exit."""
        proc = self.services.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def service_output(self, name: str) -> str:
        path = os.path.join(os.path.dirname(self.path), f"{name}.out")
        with open(path, errors="replace") as f:
            return f.read()

    def wait_for(self, check: Callable[[], Any], what: str, within: float = ANSWER_WITHIN) -> Any:
        """Poll C{check} until it returns something true (the services are
        real processes starting in their own time)."""
        deadline = time.monotonic() + within
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            for name, proc in self.services.items():
                if proc.poll() is not None:
                    raise AssertionError(
                        f"{name} exited {proc.returncode} while waiting for {what}:\n"
                        + self.service_output(name)[-4000:]
                    )
            time.sleep(0.5)
        raise AssertionError(f"no {what} within {within:.0f} s (last: {last!r})")

    def pids_inside(self) -> Iterator[int]:
        """Processes whose root directory is this root."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/root") == self.path:
                    yield int(entry)
            except OSError:
                continue

    def close(self) -> None:
        for name in list(self.services):
            self.stop_unit(name)
        for pid in list(self.pids_inside()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for target in reversed(self.mounts):
            subprocess.run(["umount", "-l", target], check=False)
        self.mounts.clear()
        subprocess.run(["ip", "netns", "delete", self.netns], check=False, capture_output=True)
        with open("/proc/mounts") as f:
            left = [line.split()[1] for line in f if line.split()[1].startswith(self.path)]
        # Never delete through a mount still in place (the host's /dev).
        if left:
            raise AssertionError(f"still mounted in {self.path}: {left}; not deleting it")
        shutil.rmtree(self.path, ignore_errors=True)
