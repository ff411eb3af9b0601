"""The commands a CRS parent sends its worker processes (``workers N``,
docs/workers.md), over each worker's own UNIX socket (mode 0600).

A worker also answers two of the operator's own commands there
(:class:`~cryptify.protocols.crs_admin.ShowAttach`,
:class:`~cryptify.protocols.crs_admin.Trace`), with the same answers as
one process gives; the commands here are the parent's own.
"""

from __future__ import annotations

from twisted.protocols import amp

from cryptify.protocols.mgmt import JsonValue, MgmtCommand

#: The counters a worker reports (:class:`WorkerCounters`): its clients,
#: calls and messages, as the metrics of one process name them.
COUNTERS = (
    "attached",
    "unattached",
    "evicted",
    "calls",
    "invites",
    "talks",
    "hangups",
    "posted",
    "delivered",
    "refused",
)


class WorkerSessions(MgmtCommand):
    """``show session`` of one worker, with what orders the rows across
    workers: ``{"live": [[STARTED, CALLER, CALLEE, TIME, STATE], ...],
    "ended": [[ENDED, CALLER, CALLEE, TIME, STATE], ...]}`` (STARTED and
    ENDED in seconds since the epoch).  Calls offered by another worker
    of the instance are left out: the caller's worker lists them."""

    arguments = []
    response = [(b"sessions", JsonValue())]


class WorkerCounters(MgmtCommand):
    """One worker's counters (:data:`COUNTERS`): ``{"attached": 3, ...}``."""

    arguments = []
    response = [(b"counters", JsonValue())]


#: Why the parent has a worker close client connections (the reason the
#: client is told, as one process tells it).
DISCONNECT_REASONS = ("purged", "account deleted", "blacklisted")


class Disconnect(MgmtCommand):
    """Close the connections of the clients of ``account`` attached to
    the worker (only ``uri``'s, when given), telling them ``reason`` (one
    of :data:`DISCONNECT_REASONS`); how many were closed."""

    arguments = [
        (b"account", amp.Unicode()),
        (b"uri", amp.Unicode(optional=True)),
        (b"reason", amp.Unicode()),
    ]
    response = [(b"disconnected", amp.Integer())]


class ClientRules(MgmtCommand):
    """The client listener's rules a reload changed (``client-max-*``,
    ``keep-alive``), for connections from then on: ``{"max_message": N,
    "attach_timeout": SECONDS, "max_unattached_per_address": N,
    "max_unattached": N, "max_handshakes": N, "keep_alive": [[CIDR,
    METHOD, MS], ...]}``."""

    arguments = [(b"rules", JsonValue())]
    response = []
