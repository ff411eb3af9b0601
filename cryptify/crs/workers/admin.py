"""A worker's answers to its parent: who is attached here, the calls kept
here, its traces and counters (docs/workers.md).

Each worker listens on a UNIX socket of its own beside the management
socket (:func:`worker_socket`, mode 0600: only the service's user, which
is the parent's, may connect) and answers there the commands of
:class:`WorkerCommands`, the operator's own commands where a worker's
answer is a part of the whole instance's:

- ``show attach`` (:class:`~cryptify.protocols.crs_admin.ShowAttach`):
  the rows of the clients attached here, as one process answers;
- ``show account`` (:class:`~cryptify.protocols.crs_admin.ShowAccount`):
  this worker's row, as one process answers (the parent makes its MODULE
  ``app:attach/K``);
- :class:`~cryptify.protocols.crs_workers.WorkerSessions`: ``show
  session`` with the times that order the rows across workers;
- ``trace ELEMENT``: this worker's trace lines, for as long as the
  connection lasts;
- :class:`~cryptify.protocols.crs_workers.Disconnect`: ``purge
  client(s)``, ``delete account`` and the blacklists, for the clients
  attached here;
- :class:`~cryptify.protocols.crs_workers.WorkerCounters`: the counters
  of the metrics;
- :class:`~cryptify.protocols.crs_workers.WorkerHolds`: in a pool, the
  URIs attached here and the slot view followed (the parent's sweep);
- :class:`~cryptify.protocols.crs_workers.ClientRules`: the client
  limits and keep-alive rules a reload changed.

The parent's side (asking every worker, merging, what a worker that does
not answer becomes) is :mod:`cryptify.crs.workers.fanout`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable

import attrs
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.protocols import amp

from cryptify.config.crs_model import CrsGlobal, KeepAlive
from cryptify.crs.accounts import AccountStore
from cryptify.crs.attach.registry import AttachRegistry
from cryptify.crs.attach.wiring import Limits, UmsgServerFactory
from cryptify.crs.calls.core import SessionTable
from cryptify.crs.messages.wiring import Messaging
from cryptify.crs.operator.state import ATTACH_MODULE
from cryptify.crs.trace import ELEMENTS, TraceHub
from cryptify.protocols import crs_admin
from cryptify.protocols.crs_workers import (
    DISCONNECT_REASONS,
    ClientRules,
    Disconnect,
    WorkerCounters,
    WorkerHolds,
    WorkerSessions,
)
from cryptify.protocols.mgmt import CommandFailed, ManagementFactory, ManagementProtocol
from cryptify.reactor import IReactor
from cryptify.service import ListenService, prepare_socket_path

log = Logger(namespace="cryptify.crs.workers")

#: The longest path of a UNIX socket (``sun_path`` less its final NUL).
MAX_SOCKET_PATH = 107


def worker_socket(management: str, index: int) -> str:
    """The socket of worker ``index`` (0-based): beside the management
    socket, its name followed by ``.w1`` ..."""
    return f"{management}.w{index + 1}"


#: The numbers of :class:`ClientRules`: crs.conf's field, and its type.
RULE_FIELDS = {
    "max_message": ("client_max_message", int),
    "attach_timeout": ("client_attach_timeout", float),
    "max_unattached_per_address": ("client_max_unattached_per_address", int),
    "max_unattached": ("client_max_unattached", int),
    "max_handshakes": ("client_max_handshakes", int),
}


def client_rules(g: CrsGlobal) -> dict[str, object]:
    """The :class:`ClientRules` of crs.conf's GLOBAL section ``g``."""
    rules: dict[str, object] = {name: getattr(g, field) for name, (field, _) in RULE_FIELDS.items()}
    rules["keep_alive"] = [[str(k.network), k.method, k.interval_ms] for k in g.keep_alive]
    return rules


def with_rules(g: CrsGlobal, rules: object) -> CrsGlobal:
    """``g`` with the :class:`ClientRules` ``rules``.

    @raise CommandFailed: naming what is not a rule.
    """
    if not isinstance(rules, dict):
        raise CommandFailed("client rules are not a map")
    changes: dict[str, object] = {}
    for name, (field, kind) in RULE_FIELDS.items():
        value = rules.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise CommandFailed(f"client rule {name} is not a positive number")
        if kind is int and not isinstance(value, int):
            raise CommandFailed(f"client rule {name} is not a whole number")
        changes[field] = kind(value)
    keep = rules.get("keep_alive")
    if not isinstance(keep, list):
        raise CommandFailed("client rule keep_alive is not a list")
    found = []
    for rule in keep:
        try:
            cidr, method, interval = rule
            if method not in ("tcp", "ws") or not isinstance(interval, int) or interval <= 0:
                raise ValueError(rule)
            found.append(KeepAlive(ipaddress.ip_network(str(cidr)), method, interval))
        except (TypeError, ValueError) as exc:
            raise CommandFailed(f"not a keep-alive rule: {str(rule)[:60]}") from exc
    return attrs.evolve(g, keep_alive=tuple(found), **changes)  # type: ignore[arg-type]


@attrs.define
class WorkerView:
    """What a worker shows its parent: its parts that serve clients."""

    registry: AttachRegistry
    trace: TraceHub
    sessions: SessionTable
    messaging: Messaging
    clients: UmsgServerFactory | None = None
    #: crs.conf's GLOBAL section as this worker serves it (the parent
    #: sends what a reload changes in it).
    global_: CrsGlobal | None = None
    #: The accounts this worker has loaded (``show account``).
    accounts: AccountStore | None = None
    #: In a pool: the key of the slot view this worker follows.
    pool_key: Callable[[], str] | None = None
    pid: int = attrs.field(factory=os.getpid)

    def take_rules(self, rules: object) -> None:
        """A reload's client limits and keep-alive rules, from the parent.

        @raise CommandFailed: when they are not rules (nothing changes).
        """
        if self.clients is None or self.global_ is None:
            raise CommandFailed("this worker has no client listener")
        g = self.global_ = with_rules(self.global_, rules)
        made = Limits.from_config(g)
        self.clients.limits = attrs.evolve(
            self.clients.limits,
            max_message=made.max_message,
            attach_timeout=made.attach_timeout,
            max_unattached_per_address=made.max_unattached_per_address,
            max_unattached=made.max_unattached,
            max_handshakes=made.max_handshakes,
        )
        self.clients.keepalive_rule = g.keep_alive_for

    def session_rows(self) -> dict[str, list[list[object]]]:
        """The :class:`WorkerSessions` answer (calls kept here only)."""
        now = self.sessions.clock.seconds()
        live: list[list[object]] = [
            [s.started, s.caller, s.to, str(int(now - s.started)), s.state]
            for s in sorted(self.sessions.sessions.values(), key=lambda s: s.started)
        ]
        shown_for = self.sessions.ended_shown_for
        ended: list[list[object]] = [
            [e.ended, e.caller, e.to, str(int(e.ended - e.started)), e.state]
            for e in self.sessions.ended
            if now - e.ended < shown_for
        ]
        return {"live": live, "ended": ended}

    def counters(self) -> dict[str, int]:
        """The :class:`WorkerCounters` answer."""
        clients = self.clients
        calls = self.sessions.counters
        messages = self.messaging.counters
        return {
            "attached": len(self.registry),
            "unattached": len(clients.pending) if clients is not None else 0,
            "evicted": clients.evicted if clients is not None else 0,
            "calls": len(self.sessions.sessions),
            "invites": calls.get("invites", 0),
            "talks": calls.get("talks", 0),
            "hangups": calls.get("hangups", 0),
            "posted": messages.get("posted", 0),
            "delivered": messages.get("delivered", 0),
            "refused": messages.get("refused", 0),
        }


class WorkerCommands(amp.CommandLocator):
    """One connection from the parent: the commands of the module docstring."""

    def __init__(self, view: WorkerView, proto: ManagementProtocol | None = None) -> None:
        self.view = view
        self.proto = proto

    @crs_admin.ShowAttach.responder
    def show_attach(self) -> dict[str, object]:
        return {"table": {"columns": [], "rows": self.view.registry.rows()}}

    @crs_admin.ShowAccount.responder
    def show_account(self) -> dict[str, object]:
        view = self.view
        loaded = ",".join(a.id for a in view.accounts or ()) or "-"
        row = [view.registry.crs_name, ATTACH_MODULE, str(view.pid), loaded]
        return {"table": {"columns": [], "rows": [row]}}

    @WorkerHolds.responder
    def holds(self) -> dict[str, object]:
        key = self.view.pool_key() if self.view.pool_key is not None else ""
        return {"holds": {"uris": sorted(self.view.registry.by_uri), "view": key}}

    @WorkerSessions.responder
    def sessions(self) -> dict[str, object]:
        return {"sessions": self.view.session_rows()}

    @WorkerCounters.responder
    def counters(self) -> dict[str, object]:
        return {"counters": self.view.counters()}

    @ClientRules.responder
    def client_rules(self, rules: object) -> dict[str, object]:
        self.view.take_rules(rules)
        log.info("client limits and keep-alive rules from the parent's reload")
        return {}

    @crs_admin.Trace.responder
    def trace(self, element: str) -> dict[str, object]:
        if element not in ELEMENTS:
            raise CommandFailed(f"unknown trace element {element!r}")
        proto = self.proto
        if proto is None:
            raise CommandFailed("trace needs a live connection")
        proto.on_lost.append(self.view.trace.subscribe(element, proto.push_trace))
        return {}

    @Disconnect.responder
    def disconnect(self, account: str, reason: str, uri: str | None = None) -> dict[str, object]:
        if reason not in DISCONNECT_REASONS:
            raise CommandFailed(f"not a reason to disconnect: {reason[:40]!r}")
        registry = self.view.registry
        matches = registry.matching(account=account, uri=uri)
        return {"disconnected": registry.disconnect(matches, reason)}


def worker_listener(reactor: IReactor, path: str, view: WorkerView) -> ListenService:
    """The worker's socket for its parent (mode 0600)."""

    def listen() -> IListeningPort:
        prepare_socket_path(path)
        factory = ManagementFactory(lambda proto: WorkerCommands(view, proto))
        return reactor.listenUNIX(path, factory, mode=0o600)

    return ListenService("parent socket", path, listen)
