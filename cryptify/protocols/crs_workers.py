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


class WorkerHolds(MgmtCommand):
    """The URIs attached to the worker, and the key of the pool's slot view
    it follows (``""`` before it has one): ``{"uris": [...], "view": KEY}``.
    In a pool the parent hands an inbox to another member only when no
    worker holds its client (docs/workers.md, Pools)."""

    arguments = []
    response = [(b"holds", JsonValue())]


# -- a worker and its parent in a pool (on the parent's socket ``.w0``) ------------


class _Note(amp.Command):
    """A one-way command: no answer (one lost with the connection is lost,
    as on the pool link)."""

    response = []
    requiresAnswer = False


#: The answer of a view asked for, and the argument of a view sent again.
_VIEW: list[tuple[bytes, amp.Argument]] = [(b"view", JsonValue())]
#: A call frame for or from ``peer`` (its fields in CBOR); ``via`` ``iw``:
#: an inter-working peer's, on that link (else a pool member's).
_FRAME: list[tuple[bytes, amp.Argument]] = [
    (b"peer", amp.Unicode()),
    (b"frame_type", amp.Unicode()),
    (b"data", amp.String()),
    (b"via", amp.Unicode(optional=True)),
]


class PoolView(amp.Command):
    """Worker -> parent: the pool's slot view (:func:`cryptify.crs.workers.slot_view.slot_view`)."""

    arguments = []
    response = _VIEW


class PoolViewChanged(_Note):
    """Parent -> worker: the slot view changed (the map, or a member late)."""

    arguments = _VIEW


class PoolPost(amp.Command):
    """Worker -> parent: a post for a URI another member serves (or none
    does at this moment), stored at that member or kept here, as one
    process's pool forwarder does, before the answer: the ID stored, and
    the member that stored it (none: kept here, then ``time_ms``); or the
    UMSG ``code`` and ``reason`` of a refusal."""

    arguments = [
        (b"sender", amp.Unicode()),
        (b"scope", amp.Unicode()),
        (b"to", amp.Unicode()),
        (b"account", amp.Unicode()),
        (b"kind", amp.Unicode()),
        (b"data", amp.String()),
        (b"via", amp.Unicode(optional=True)),
    ]
    response = [
        (b"id", amp.Unicode(optional=True)),
        (b"duplicate", amp.Boolean(optional=True)),
        (b"peer", amp.Unicode(optional=True)),
        (b"time_ms", amp.Integer(optional=True)),
        (b"code", amp.Unicode(optional=True)),
        (b"reason", amp.Unicode(optional=True)),
    ]


class PoolDelivered(_Note):
    """Worker -> parent: ``sender`` (served by another member) had
    ``message`` delivered: tell that member (``msg-delivered``)."""

    arguments = [(b"sender", amp.Unicode()), (b"message", amp.Unicode())]


class PoolSettled(_Note):
    """Worker -> parent: ``recipient`` confirmed ``message`` here (a member
    that may hold a twin drops it: ``msg-gone``)."""

    arguments = [(b"recipient", amp.Unicode()), (b"message", amp.Unicode())]


class PoolLearned(_Note):
    """Worker -> parent: ``uri`` attached to this instance for the first
    time (every live member takes posts for it: ``msg-known``)."""

    arguments = [(b"uri", amp.Unicode())]


class PoolFrame(_Note):
    """Worker -> parent: a call frame for pool member ``peer`` (its fields
    in CBOR), sent on the pool link (docs/workers.md, Pools); ``via``
    ``iw``: for an inter-working peer, on that link."""

    arguments = _FRAME


class PoolFrameIn(_Note):
    """Parent -> worker: a call frame from pool member ``peer`` (``via``
    ``iw``: from an inter-working peer); the arguments of :class:`PoolFrame`."""

    arguments = _FRAME


class PoolInvite(amp.Command):
    """Parent -> worker: a ``call-invite`` from pool member ``peer``:
    whether the callee is attached here (then the worker offers it)."""

    arguments = [
        (b"peer", amp.Unicode()),
        (b"data", amp.String()),
        (b"via", amp.Unicode(optional=True)),
    ]
    response = [(b"here", amp.Boolean())]


class PoolPeer(_Note):
    """Parent -> worker: pool member ``peer``'s link went up or down."""

    arguments = [
        (b"peer", amp.Unicode()),
        (b"up", amp.Boolean()),
        (b"via", amp.Unicode(optional=True)),
    ]


class IwView(amp.Command):
    """Worker -> parent: the inter-working routes
    (:func:`cryptify.crs.workers.iw.iw_view`)."""

    arguments = []
    response = _VIEW


class IwViewChanged(_Note):
    """Parent -> worker: the inter-working routes changed."""

    arguments = _VIEW
