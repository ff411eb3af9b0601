"""``cryptify-client``: the reference secure client.

``cryptify-client attach --keys FILE --server HOST:PORT [--ca FILE | --insecure]``
attaches the URI of a key file (from ``cryptify-kms issue``) to a CRS, stays
attached, reconnects with backoff when the connection ends, and prints one
line per event until Ctrl-C or SIGTERM (then it detaches).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory

from cryptify import __version__
from cryptify.client.connection import AttachingClient, ConnectionEnded, Event
from cryptify.client.session import (
    Answered,
    Attached,
    ClientSession,
    Disconnected,
    Incoming,
    Moved,
    Refused,
)
from cryptify.crypto.errors import CryptoError
from cryptify.crypto.keymaterial import KeyMaterial, load_key_material
from cryptify.protocols.tls import TLSConfigError, client_context_factory
from cryptify.protocols.umsg import Message

HELP = """\
usage: cryptify-client ACTION [options]

The reference secure client of the Cryptify system.

actions:
  attach --keys FILE --server HOST:PORT [--ca FILE | --insecure] [--app VERSION]
                attach to a CRS and stay attached (Ctrl-C or SIGTERM detaches)
  help          show this help
"""


def describe(event: Event) -> str:
    """One line for an event."""
    if isinstance(event, Attached):
        resumed = ", with ticket" if event.resumed else ""
        return (
            f"attached {event.uri} to {event.crs} (slot {event.slot}, "
            f"keep-alive {event.keepalive} {event.interval_ms} ms{resumed})"
        )
    if isinstance(event, Moved):
        return f"moved to {event.crs} at {event.host}:{event.port}"
    if isinstance(event, Refused):
        who = "gave up" if event.local else "refused"
        return f"{who}: {event.code} ({event.reason})"
    if isinstance(event, Disconnected):
        return f"disconnected: {event.code} ({event.reason})"
    if isinstance(event, Answered):
        return f"answer to {event.id}: {event.message.type} {dict(event.message.fields)}"
    if isinstance(event, Incoming):
        return f"incoming {event.message.type}: {dict(event.message.fields)}"
    return f"connection ended: {event.why}"


def parse_server(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def tls_connector(
    reactor: Any, ca: str | None, insecure: bool, bind: str | None = None
) -> Callable[[str, int, Factory[Any]], defer.Deferred[Any]]:
    """A connector for AttachingClient: TLS to HOST:PORT (per-host context)."""
    creators: dict[str, Any] = {}

    def connect(host: str, port: int, factory: Factory[Any]) -> defer.Deferred[Any]:
        if host not in creators:
            creators[host] = client_context_factory(host, ca, verify=not insecure)
        bind_address = (bind, 0) if bind else None
        tcp = TCP4ClientEndpoint(reactor, host, port, timeout=10, bindAddress=bind_address)
        return wrapClientTLS(creators[host], tcp).connect(factory)

    return connect


def session_maker(
    material: KeyMaterial, app: str
) -> Callable[[Callable[[Message], None]], ClientSession]:
    """Sessions for the key file's account and URI, signing with its keys."""
    signers: dict[str, Any] = {}

    def signer_for(period: str) -> Any:
        if period not in signers:
            signers[period] = material.for_period(period).signer()
        return signers[period]

    def make(send: Callable[[Message], None]) -> ClientSession:
        return ClientSession(material.account, material.uri, signer_for, send, app=app)

    return make


def attach_main(reactor: Any, args: argparse.Namespace, out: IO[str]) -> defer.Deferred[None]:
    material: KeyMaterial = args.material
    host, port = args.server

    def show(event: Event) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out.write(f"{stamp} {describe(event)}\n")
        out.flush()

    client = AttachingClient(
        reactor,
        tls_connector(reactor, args.ca, args.insecure),
        session_maker(material, args.app),
        host,
        port,
        show,
    )
    out.write(f"attaching {material.uri} ({material.account}) to {host}:{port}\n")
    client.start()
    finished: defer.Deferred[None] = defer.Deferred()

    def shutdown() -> defer.Deferred[None]:
        d = client.stop()
        d.addBoth(lambda _: finished.callback(None) if not finished.called else None)
        return d

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    return finished


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryptify-client", add_help=False)
    sub = parser.add_subparsers(dest="action")
    attach = sub.add_parser("attach", help="attach and stay attached")
    attach.add_argument("--keys", required=True, help="key material file (cryptify-kms issue)")
    attach.add_argument("--server", required=True, type=parse_server, help="CRS HOST:PORT")
    trust = attach.add_mutually_exclusive_group()
    trust.add_argument("--ca", help="PEM file of the CA (or self-signed certificate) to trust")
    trust.add_argument("--insecure", action="store_true", help="accept any certificate (dev)")
    attach.add_argument("--app", default=f"cryptify-client/{__version__}", help="version shown")
    return parser


def run(argv: Sequence[str], out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Run with ``argv`` (without the program name); return the exit status."""
    if not argv or argv[0] in ("help", "-h", "--help"):
        out.write(HELP)
        return 0
    if argv[0] != "attach":
        err.write(HELP)
        err.write(f"cryptify-client: error: unknown action {argv[0]!r}\n")
        return 2
    parser = build_parser()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 2)
    try:
        args.material = load_key_material(args.keys)
    except (OSError, CryptoError) as exc:
        err.write(f"cryptify-client: cannot use key file {args.keys}: {exc}\n")
        return 1
    try:
        client_context_factory(args.server[0], args.ca, verify=not args.insecure)
    except TLSConfigError as exc:
        err.write(f"cryptify-client: {exc}\n")
        return 1
    from twisted.internet import reactor, task

    del reactor
    task.react(lambda r: attach_main(r, args, out))
    return 0  # pragma: no cover  (react exits)


def main() -> None:
    """Console script entry point."""
    sys.exit(run(sys.argv[1:]))


__all__ = ["ConnectionEnded", "main", "run"]
