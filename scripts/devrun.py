"""``make run``: a complete local system on loopback, stopped with Ctrl-C.

Starts, each as ``twistd -n`` with the sample configs in ``etc/`` and a
scratch directory under ``run/``: the CRS (with its supervised Redis), the
CRS relay, the CIG and the CIG relay.  Prints where each listens and how to
point ``crs-cli`` and ``cig-cli`` at them, then waits; Ctrl-C (or SIGTERM)
stops them all, relays last.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

from _devprocs import last_lines, socket_answers, stop_in_order  # noqa: E402

from cryptify.config import load_cig_config, load_crs_config  # noqa: E402

RUN = os.path.join(HERE, "run")
BIN = os.path.dirname(sys.executable)
ETC = os.path.join(HERE, "etc")
NOTIFY = os.path.join(HERE, "scripts", "notify.sh")
START_TIMEOUT = 30.0


def path(*parts: str) -> str:
    return os.path.join(RUN, *parts)


def programs() -> list[tuple[str, list[str], str]]:
    """(name, twistd arguments, what to wait for) for each program, start order."""
    crs = [
        "crs",
        "--config",
        os.path.join(ETC, "crs.conf"),
        "--local-config",
        os.path.join(ETC, "crs-local.conf"),
        "--data-dir",
        path("crs", "data"),
        "--log-dir",
        path("crs", "log"),
        "--accounts-dir",
        path("crs", "accounts"),
        "--socket",
        path("crs", "crs.sock"),
        "--relay-control",
        path("crs", "relay.sock"),
        "--notify",
        NOTIFY,
    ]
    crs_relay = [
        "crs-relay",
        "--config",
        os.path.join(ETC, "crs.conf"),
        "--log-dir",
        path("crs", "log"),
        "--control",
        path("crs", "relay.sock"),
        "--notify",
        NOTIFY,
    ]
    cig_common = [
        "--config",
        os.path.join(ETC, "cig.conf"),
        "--log-dir",
        path("cig", "log"),
        "--relay-control",
        path("cig", "relay.sock"),
        "--notify",
        NOTIFY,
    ]
    cig = [
        "cig",
        *cig_common,
        "--data-dir",
        path("cig", "userdata"),
        "--socket",
        path("cig", "cig.sock"),
        "--cookie",
        path("cig", "mgmt.cookie"),
        # the CRS's development certificate, written when it starts
        "--crs-ca",
        path("crs", "data", "tls", "crs.crt"),
    ]
    cig_relay = ["cig-relay", *cig_common]
    return [
        ("crs_relay", crs_relay, path("crs", "relay.sock")),
        ("crs", crs, path("crs", "crs.sock")),
        ("cig-relay", cig_relay, path("cig", "relay.sock")),
        ("cig", cig, path("cig", "cig.sock")),
    ]


def start(name: str, args: list[str]) -> subprocess.Popen[bytes]:
    os.makedirs(path("pids"), exist_ok=True)
    argv = [
        os.path.join(BIN, "twistd"),
        "-n",
        f"--pidfile={path('pids', name + '.pid')}",
        f"--logfile={path(name + '.twistd.log')}",
        *args,
    ]
    env = dict(os.environ, CRYPTIFY_EVENTS_FILE=path("events.log"))
    # The CIG runs in run/cig, so that etc/cig.conf's relative mailbox
    # paths (mail/outgoing, mail/incoming) are Maildirs in there.
    cwd = path("cig") if name.startswith("cig") else HERE
    return subprocess.Popen(argv, cwd=cwd, env=env, start_new_session=True)


def stop_all(procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    """Stop the programs, last started first (the relays last)."""
    stop_in_order(reversed(procs))


def tail(name: str) -> str:
    return last_lines(path(name + ".twistd.log"))


def main() -> int:
    crs_conf = load_crs_config(os.path.join(ETC, "crs.conf")).global_
    cig_conf = load_cig_config(os.path.join(ETC, "cig.conf"))
    for sub in ("crs", "cig"):
        os.makedirs(path(sub), mode=0o750, exist_ok=True)
    mailboxes = [
        os.path.join(path("cig"), box.path)
        for box in (*cig_conf.mailboxes.write, *cig_conf.mailboxes.read)
    ]
    for box in mailboxes:
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(box, sub), mode=0o2770, exist_ok=True)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    for name, args, ready in programs():
        proc = start(name, args)
        procs.append((name, proc))
        deadline = time.monotonic() + START_TIMEOUT
        while not socket_answers(ready):
            if proc.poll() is not None or time.monotonic() > deadline or stopping:
                print(f"{name} did not start:\n{tail(name)}", file=sys.stderr)
                stop_all(procs)
                return 1
            time.sleep(0.1)
    mgmt = cig_conf.management.bind
    sip = cig_conf.interfaces.sip
    print(
        f"""
Cryptify is running on loopback (scratch files in {RUN}):

  CRS        client TLS {crs_conf.listen.host}:{crs_conf.listen.port}
             management {path("crs", "crs.sock")}   logs {path("crs", "log")}
  CRS relay  media {crs_conf.relay.host}:{crs_conf.relay.port}/udp
  CIG        SIP {sip.bind}:{sip.port}, management {mgmt.host}:{mgmt.port}
             logs {path("cig", "log")}
  CIG relay  control {path("cig", "relay.sock")}
  mailboxes  {", ".join(mailboxes) or "-"} (Maildirs; docs/cig-mail.md)
  events     {path("events.log")} (what notify.sh was told)

In another terminal:
  export CRS_CLI_SOCKET={path("crs", "crs.sock")}
  .venv/bin/crs-cli show services
  export CIG_CLI_ADDRESS={mgmt.host}:{mgmt.port} CIG_CLI_COOKIE={path("cig", "mgmt.cookie")}
  .venv/bin/cig-cli status

Ctrl-C stops everything.
""",
        flush=True,
    )
    try:
        while not stopping:
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"{name} exited unexpectedly:\n{tail(name)}", file=sys.stderr)
                    stopping = True
            time.sleep(0.5)
    finally:
        stop_all(procs)
    print("all stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
