"""The commands a CRS parent sends its worker processes (``workers N``,
docs/workers.md), over each worker's own UNIX socket (mode 0600).

A worker also answers a few of the operator's own commands there
(:class:`~cryptify.protocols.crs_admin.ShowAttach`,
:class:`~cryptify.protocols.crs_admin.Trace`,
:class:`~cryptify.protocols.crs_admin.PurgeClient`,
:class:`~cryptify.protocols.crs_admin.PurgeClients`), with the same
answers as one process gives; the commands here are those whose answer
the parent must merge with more than a table's rows.
"""

from __future__ import annotations

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
