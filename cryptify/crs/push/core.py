"""Push wake-ups: the rules, without I/O (``docs/push.md``).

Fed the time (``now``, seconds) and the answers of the providers; answers
what to do with each wake asked for.

- A *client* is ``(account, uri)``; a *route* is where its wakes go
  (``cps:apns``, ``cps:fcm``, ``direct:apns``).
- Per client: at most one wake every :data:`WAKE_INTERVAL` and at most
  :data:`WAKES_PER_HOUR` an hour.  A wake asked sooner is
  :attr:`Decision.LIMITED`: the one already sent or waiting wakes the
  client for everything.
- Per route: after a provider said "later" (429, 5xx, unreachable, link
  down) the route is *blocked* for its ``Retry-After`` or an exponential
  delay (:data:`BACKOFF_FIRST` doubling up to :data:`BACKOFF_MAX`).  Wakes
  asked meanwhile are :attr:`Decision.DEFERRED`: kept, one per client, at
  most :data:`MAX_PENDING` in all, and handed back by :meth:`PushRules.due`
  once the route is open again.  A wake that failed that way is kept the
  same way, so it is never lost to a back-off.
- Each decision and outcome is counted (:class:`Counter`).
"""

from __future__ import annotations

import enum
from collections import deque

import attrs

SECOND = 1.0
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

#: Shortest time between two wakes of one client.
WAKE_INTERVAL = 30 * SECOND
#: Most wakes of one client in any hour.
WAKES_PER_HOUR = 20
#: First back-off of a route; doubles with each failure in a row.
BACKOFF_FIRST = 1 * SECOND
#: Longest back-off of a route (also the ceiling of a ``Retry-After``).
BACKOFF_MAX = 5 * MINUTE
#: Wakes kept while routes are blocked, at most (further ones are dropped).
MAX_PENDING = 10_000
#: Clients whose wake history is kept, at most (the oldest is forgotten).
MAX_CLIENTS = 100_000

Client = tuple[str, str]


class Decision(enum.Enum):
    """What to do with a wake that was asked for."""

    #: send it now
    SEND = "send"
    #: not sent: this client was woken (or is waiting to be) too recently
    LIMITED = "limited"
    #: kept until the route opens again (see :meth:`PushRules.due`)
    DEFERRED = "deferred"
    #: not kept: too many wakes wait already
    DROPPED = "dropped"


class Counter(enum.Enum):
    """The counters ``show services`` prints."""

    SENT = "sent"
    LIMITED = "limited"
    DEFERRED = "deferred"
    DROPPED = "dropped"
    FAILED = "failed"
    UNREGISTERED = "unregistered"


@attrs.define
class Route:
    """One way out: its back-off and the wakes waiting for it."""

    blocked_until: float = 0.0
    failures: int = 0
    pending: dict[Client, None] = attrs.field(factory=dict)


@attrs.define
class PushRules:
    """Per-client rate limits and per-route back-off."""

    interval: float = WAKE_INTERVAL
    per_hour: int = WAKES_PER_HOUR
    max_pending: int = MAX_PENDING
    max_clients: int = MAX_CLIENTS
    #: each client's wake times within the last hour, oldest first
    history: dict[Client, deque[float]] = attrs.field(factory=dict)
    routes: dict[str, Route] = attrs.field(factory=dict)
    counters: dict[Counter, int] = attrs.field(factory=lambda: dict.fromkeys(Counter, 0))

    def _route(self, name: str) -> Route:
        route = self.routes.get(name)
        if route is None:
            route = self.routes[name] = Route()
        return route

    def _pending(self) -> int:
        return sum(len(r.pending) for r in self.routes.values())

    def _allowed(self, client: Client, now: float) -> bool:
        times = self.history.get(client)
        if times is None:
            return True
        while times and times[0] <= now - HOUR:
            times.popleft()
        if not times:
            del self.history[client]
            return True
        return now - times[-1] >= self.interval and len(times) < self.per_hour

    def _record(self, client: Client, now: float) -> None:
        times = self.history.get(client)
        if times is None:
            if len(self.history) >= self.max_clients:
                del self.history[next(iter(self.history))]
            times = self.history[client] = deque()
        times.append(now)

    def blocked(self, route: str, now: float) -> bool:
        """Whether wakes on ``route`` must wait now."""
        return now < self._route(route).blocked_until

    def ask(self, client: Client, route: str, now: float, open_: bool = True) -> Decision:
        """A wake of ``client`` over ``route`` is wanted; ``open_`` is False
        when the route cannot be used now whatever its back-off (link down)."""
        state = self._route(route)
        if client in state.pending or not self._allowed(client, now):
            decision = Decision.LIMITED
        elif open_ and now >= state.blocked_until:
            decision = Decision.SEND
        elif self._pending() >= self.max_pending:
            decision = Decision.DROPPED
        else:
            state.pending[client] = None
            decision = Decision.DEFERRED
        if decision in (Decision.SEND, Decision.DEFERRED):
            self._record(client, now)
        if decision is not Decision.SEND:
            self.counters[Counter(decision.value)] += 1
        return decision

    def sent(self, route: str) -> None:
        """The provider accepted a wake: the route's back-off is over."""
        state = self._route(route)
        state.failures = 0
        self.counters[Counter.SENT] += 1

    def unregistered(self, route: str) -> None:
        """The provider answered that the token is dead (the route works)."""
        self._route(route).failures = 0
        self.counters[Counter.UNREGISTERED] += 1

    def refused(self) -> None:
        """The provider refused this wake for good (not retried)."""
        self.counters[Counter.FAILED] += 1

    def later(
        self, client: Client | None, route: str, now: float, retry_after: float | None = None
    ) -> float:
        """The provider (or the link) said "later": block the route, keep
        ``client``'s wake for then, and return the delay in seconds."""
        state = self._route(route)
        if retry_after is not None and retry_after > 0:
            delay = min(float(retry_after), BACKOFF_MAX)
        else:
            delay = min(BACKOFF_FIRST * 2**state.failures, BACKOFF_MAX)
        state.failures = min(state.failures + 1, 32)
        state.blocked_until = max(state.blocked_until, now + delay)
        self.counters[Counter.FAILED] += 1
        if client is not None and client not in state.pending:
            if self._pending() < self.max_pending:
                state.pending[client] = None
            else:
                self.counters[Counter.DROPPED] += 1
        return state.blocked_until - now

    def due(self, route: str, now: float) -> list[Client]:
        """The wakes waiting for ``route`` to send now (none while it is
        blocked); they are no longer kept."""
        state = self._route(route)
        if now < state.blocked_until or not state.pending:
            return []
        clients = list(state.pending)
        state.pending.clear()
        return clients

    def waiting(self) -> int:
        """How many wakes wait for a route."""
        return self._pending()
