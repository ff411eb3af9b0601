"""
The Prometheus metrics endpoint, shared by the CRS and the CIG.

Each program has its own :class:`~prometheus_client.CollectorRegistry`
(never the library's global one) holding one custom collector that reads
the program's state when scraped, so nothing is counted twice and no
counter has to be kept in step with the state it describes.

Some values need a round trip (the number of stored messages in Redis,
the relay's counters over its control link).  :class:`Queries` runs
those when a scrape arrives, each with a time limit, and the collector
reports the last answers; a query that failed is reported as not
``ok`` and its values are left out rather than shown stale.

The page is rendered in the reactor thread (:class:`MetricsPage`), not in
a thread pool as ``prometheus_client.twisted.MetricsResource`` does: the
collectors read objects that only the reactor thread may touch.

Only ``GET /metrics`` answers; connections that stay idle are closed
after :data:`IDLE_TIMEOUT`, and at most :data:`MAX_CONNECTIONS` are open
at once.  Requests are not logged (a scrape every few seconds would fill
the program's log).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.policies import ThrottlingFactory
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from cryptify.config.crs_model import Endpoint
from cryptify.reactor import IReactor
from cryptify.service import ListenService

log = Logger(namespace="cryptify.metrics")

#: Seconds a query (Redis, relay) may take before a scrape goes on without it.
QUERY_TIMEOUT = 5.0
#: Seconds an idle connection to the endpoint stays open.
IDLE_TIMEOUT = 30
#: Connections the endpoint keeps open at once.
MAX_CONNECTIONS = 16
#: Counters taken from one answer of another process (relay, bridge).
MAX_COUNTERS = 64

_NOT_NAME = re.compile(r"[^a-z0-9_]")


class Queries:
    """Named asynchronous queries run for a scrape; their last answers.

    A scrape that arrives while the queries are running waits for the
    same run instead of starting another one.
    """

    def __init__(
        self,
        clock: IReactorTime,
        queries: dict[str, Callable[[], Awaitable[object]]],
        timeout: float = QUERY_TIMEOUT,
    ) -> None:
        self.clock = clock
        self.queries = queries
        self.timeout = timeout
        #: The last answers, as the queries gave them: each reader checks
        #: the shape it expects.
        self.values: dict[str, object] = {}
        self.ok: dict[str, bool] = {}
        self._running: defer.Deferred[None] | None = None
        self._waiting: list[defer.Deferred[None]] = []

    def refresh(self) -> defer.Deferred[None]:
        """Fires (never fails) when every query has answered, failed or timed out."""
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(waiter)
        if self._running is None:
            self._running = self._run_all()
        return waiter

    def _run_all(self) -> defer.Deferred[None]:
        runs = [self._run(name, query) for name, query in self.queries.items()]
        return defer.gatherResults(runs, consumeErrors=True).addBoth(self._finished)

    def _run(self, name: str, query: Callable[[], Awaitable[object]]) -> defer.Deferred[None]:
        async def once() -> object:
            return await query()

        d: defer.Deferred[object] = defer.ensureDeferred(once())
        d.addTimeout(self.timeout, self.clock)

        def answered(value: object) -> None:
            self.values[name] = value
            self.ok[name] = True

        def failed(failure: Failure) -> None:
            self.values.pop(name, None)
            self.ok[name] = False
            log.debug(
                "metrics query {query} failed: {why}", query=name, why=failure.getErrorMessage()
            )

        return d.addCallbacks(answered, failed)

    def _finished(self, _: object) -> None:
        self._running = None
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)


def counter_families(
    prefix: str, stats: Mapping[str, object], gauges: Mapping[str, str] | None = None
) -> Iterator[Metric]:
    """One family per numeric entry of C{stats} (a relay's or bridge's counters).

    Names are lower-cased, anything but C{[a-z0-9_]} becomes C{_}; the
    entries named in C{gauges} are gauges (under the name given there),
    the others counters.  At most L{MAX_COUNTERS} entries are taken.
    """
    gauges = gauges or {}
    seen: set[str] = set()
    for key in sorted(stats)[:MAX_COUNTERS]:
        value = stats[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = _NOT_NAME.sub("_", str(key).lower())
        if not name or name in seen:
            continue
        seen.add(name)
        if name in gauges:
            yield GaugeMetricFamily(prefix + gauges[name], f"{key} (now)", value=value)
        else:
            yield CounterMetricFamily(
                prefix + name, f"{key} (since the process started)", value=value
            )


class StateCollector(Collector):
    """A collector whose metric families come from a function of the live state."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return list(self.families())


def registry_for(families: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    """A registry of its own with one L{StateCollector}."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(families))
    return registry


class MetricsPage(resource.Resource):
    """``GET /metrics``: refresh the queries, then the text exposition format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry, queries: Queries | None = None) -> None:
        resource.Resource.__init__(self)
        self.registry = registry
        self.queries = queries

    def render_GET(self, request: server.Request) -> bytes | int:
        if self.queries is None:
            return self._page(request)
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        def write(_: object) -> None:
            if finished[0]:
                return
            request.write(self._page(request))
            request.finish()

        def broken(failure: Failure) -> None:
            log.failure("metrics page could not be rendered", failure)
            if not finished[0]:
                request.setResponseCode(500)
                request.finish()

        self.queries.refresh().addCallback(write).addErrback(broken)
        return server.NOT_DONE_YET

    def _page(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


class QuietSite(server.Site):
    """A site that does not log each request."""

    def log(self, request: http.Request) -> None:
        pass


def metrics_site(registry: CollectorRegistry, queries: Queries | None = None) -> server.Site:
    """The site answering ``/metrics`` (and 404 for anything else)."""
    root = resource.Resource()
    root.putChild(b"metrics", MetricsPage(registry, queries))
    site = QuietSite(root, timeout=IDLE_TIMEOUT)  # type: ignore[no-untyped-call]
    site.displayTracebacks = False
    return site


def metrics_listener(
    reactor: IReactor,
    where: Endpoint,
    registry: CollectorRegistry,
    queries: Queries | None = None,
) -> ListenService:
    """Listen for scrapes on C{where} while running; a bind failure stops start-up."""

    def listen() -> IListeningPort:
        site = metrics_site(registry, queries)
        factory = ThrottlingFactory(site, MAX_CONNECTIONS)
        return reactor.listenTCP(where.port, cast(ServerFactory, factory), interface=where.host)

    return ListenService("metrics", f"{where.host}:{where.port}", listen)
