"""Inter-working peers with ``workers N`` (docs/workers.md, Inter-working).

The parent keeps the inter-working link (``iw-crs.conf``), the routes of
the accounts each peer advertised and the forwarder of messages to them
(:class:`~cryptify.crs.interwork.forward.IwForwarder`), as one process
does.  A worker follows the routes (:func:`iw_view`, sent by the parent
when they change, over the parent's socket of :mod:`cryptify.crs.workers.pool`)
and posts through the parent (:class:`WorkerIw`, its messaging's
:class:`~cryptify.crs.messages.wiring.External`); its calls with other
operators' clients are its own (:class:`~cryptify.crs.interwork.calls.IwCalls`,
with its relay), their frames passed on by the parent
(:class:`WorkerIwLink`, :mod:`cryptify.crs.workers.pool_calls`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.logger import Logger

from cryptify.crs.interwork.forward import IwForwarder
from cryptify.crs.messages.wiring import Relayed
from cryptify.crs.pool.wire import WireError

if TYPE_CHECKING:  # (the pool module builds on this one)
    from cryptify.crs.workers.pool import WorkerPool

log = Logger(namespace="cryptify.crs.workers")

#: Most accounts and peers in a view.
MAX_ROUTES = 100_000
#: Longest account or peer name in a view.
MAX_NAME = 200


def iw_view(forwarder: IwForwarder) -> dict[str, object]:
    """The parent's routes, as a worker follows them: ``{"routes":
    {ACCOUNT: [PEER, ...]}, "silent": BOOL, "local": [ACCOUNT, ...]}`` (the
    peers of an account whose link is up first; ``silent``: some
    configured peer has not said which accounts it hosts yet)."""
    routes = forwarder.routes
    claimed = sorted({a for accounts in routes.claims.values() for a in accounts})
    found: dict[str, list[str]] = {}
    for account in claimed:
        peers = routes.peers_for(account)
        if peers:
            live = [p for p in peers if p in forwarder.up]
            found[account] = live + [p for p in peers if p not in forwarder.up]
    silent = any(peer not in routes.claims for peer in forwarder.iw.configured())
    return {"routes": found, "silent": silent, "local": sorted(routes.local)}


def iw_sign(forwarder: IwForwarder) -> object:
    """What :func:`iw_view` is made of, cheap to compare (the peers' claims
    are the same sets until a peer's accounts change)."""
    routes = forwarder.routes
    configured = tuple(forwarder.iw.configured())
    return (
        tuple(sorted(routes.claims.items())),
        tuple(sorted(routes.operators.items())),
        frozenset(forwarder.up),
        routes.local,
        configured,
    )


def _name(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise ValueError(f"not a name: {str(value)[:40]!r}")
    return value


class WorkerIw:
    """A worker's :class:`~cryptify.crs.messages.wiring.External` and the
    accounts of its :class:`~cryptify.crs.interwork.calls.IwCalls`.

    ``poster``: the worker's side of the parent's socket, through which
    its posts and ``delivered`` go; ``elsewhere(uri)``: the other worker
    ``uri`` is attached to (a ``delivered`` for a sender there goes to
    that worker, not the parent).
    """

    trace_account = "external"

    def __init__(self, poster: WorkerPool, elsewhere: Callable[[str], str | None]) -> None:
        self.poster = poster
        self.elsewhere = elsewhere
        self.routes: dict[str, tuple[str, ...]] = {}
        self.local: frozenset[str] = frozenset()
        self.silent = True
        self.refused = 0

    def adopt(self, value: object) -> None:
        """The parent's :func:`iw_view` (a bad one is counted and ignored)."""
        try:
            if not isinstance(value, dict):
                raise ValueError("an inter-working view is a map")
            routes, local = value.get("routes"), value.get("local")
            if not isinstance(routes, dict) or not isinstance(local, list):
                raise ValueError("an inter-working view has its routes and accounts")
            if len(routes) > MAX_ROUTES or len(local) > MAX_ROUTES:
                raise ValueError("an inter-working view too large")
            found = {}
            for account, peers in routes.items():
                if not isinstance(peers, list) or not peers or len(peers) > 64:
                    raise ValueError("an account's peers are a list")
                found[_name(account)] = tuple(_name(p) for p in peers)
            self.local = frozenset(_name(a) for a in local)
            self.routes = found
            self.silent = value.get("silent") is True
        except ValueError as exc:
            self.refused += 1
            log.warn("not an inter-working view from the parent: {why}", why=str(exc))

    # -- External -------------------------------------------------------------------------

    def remote(self, account: str) -> bool:
        return account in self.routes

    def unknown(self, account: str) -> bool:
        return account not in self.local and account not in self.routes and self.silent

    def post(
        self, sender: str, scope: str, to: str, account: str, kind: str, data: bytes
    ) -> defer.Deferred[Relayed]:
        return self.poster.post(sender, scope, to, account, kind, data, via="iw")

    def knows(self, sender: str) -> bool:
        """A sender attached to no other worker here: the parent decides
        (it knows the senders behind its peers)."""
        return self.elsewhere(sender) is None

    def tell_delivered(self, sender: str, message_id: str) -> None:
        self.poster.tell_parent_delivered(sender, message_id)

    # -- IwCalls' accounts ------------------------------------------------------------------

    def peer_for(self, account: str) -> str | None:
        peers = self.routes.get(account)
        return peers[0] if peers else None

    def hosts(self, account: str) -> bool:
        return account in self.local


class WorkerIwLink:
    """The inter-working link as a worker's calls see it: frames go to the
    parent, and come from it."""

    def __init__(self, send: Callable[[str, str, dict[str, object]], bool]) -> None:
        self._send = send
        self.handlers: dict[str, Callable[[str, dict[str, object]], None]] = {}
        self.listeners: list[Callable[[str, bool], None]] = []
        self.refused = 0

    def send(self, peer: str, frame_type: str, fields: dict[str, object]) -> bool:
        return self._send(peer, frame_type, fields)

    def handle(self, frame_type: str, handler: Callable[[str, dict[str, object]], None]) -> None:
        self.handlers[frame_type] = handler

    def on_link(self, listener: Callable[[str, bool], None]) -> None:
        self.listeners.append(listener)

    def deliver(self, peer: str, frame_type: str, fields: dict[str, object]) -> None:
        handler = self.handlers.get(frame_type)
        if handler is None:
            self.refused += 1
            return
        try:
            handler(peer, fields)
        except WireError as exc:
            self.refused += 1
            log.warn("call frame from {peer} refused: {why}", peer=peer, why=str(exc))

    def peer_changed(self, peer: str, up: bool) -> None:
        for listener in self.listeners:
            listener(peer, up)
