"""The metrics endpoint: queries, families, the page, and the CRS's collector."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from cryptify.config import (
    ConfigError,
    parse_cig_config,
    parse_crs_config,
    parse_crs_local_config,
)
from cryptify.config.crs_model import METRICS_HOST, Endpoint
from cryptify.crs.attach.wiring import UmsgServerFactory
from cryptify.ops.cig import CigMetrics
from cryptify.ops.crs import CrsMetrics
from cryptify.ops.metrics import (
    MAX_COUNTERS,
    QUERY_TIMEOUT,
    MetricsPage,
    Queries,
    counter_families,
    metrics_site,
    registry_for,
)


def scrape(registry: Any) -> dict[str, float]:
    """Render and parse the page: each sample's name (with labels) and value."""
    page = MetricsPage(registry)
    request = DummyRequest([b""])
    body = page.render_GET(request)
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return samples


class QueriesTests(SynchronousTestCase):
    def test_answers_failures_and_timeouts(self) -> None:
        """An answer is kept; a failure or a query past its time limit is not ok
        and leaves no stale value; the refresh itself never fails."""
        clock = Clock()
        hang: defer.Deferred[int] = defer.Deferred()
        answers = iter([7, 8])

        async def good() -> int:
            return next(answers)

        async def bad() -> int:
            raise ConnectionError("redis down")

        async def slow() -> int:
            return await hang

        queries = Queries(clock, {"good": good, "bad": bad, "slow": slow})
        queries.values["bad"] = 99  # an older answer must not survive a failure
        done = queries.refresh()
        self.assertNoResult(done)
        clock.advance(QUERY_TIMEOUT)
        self.successResultOf(done)
        self.assertEqual(queries.values, {"good": 7})
        self.assertEqual(queries.ok, {"good": True, "bad": False, "slow": False})
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_concurrent_scrapes_share_one_run(self) -> None:
        """A scrape arriving while the queries run waits for that run."""
        clock = Clock()
        pending: list[defer.Deferred[int]] = []

        async def query() -> int:
            d: defer.Deferred[int] = defer.Deferred()
            pending.append(d)
            return await d

        queries = Queries(clock, {"q": query})
        first, second = queries.refresh(), queries.refresh()
        self.assertEqual(len(pending), 1)
        pending[0].callback(3)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(queries.values, {"q": 3})
        queries.refresh()
        self.assertEqual(len(pending), 2)
        pending[1].callback(4)


class FamiliesTests(SynchronousTestCase):
    def test_relay_counters(self) -> None:
        """A relay's counters become counters, ENTRIES a gauge; names are made safe."""
        stats = {"RX": 5, "TXB": 4, "ENTRIES": 2, "ERR-X": 1, "label": "text", "flag": True}
        registry = registry_for(
            lambda: counter_families("t_relay_", stats, {"entries": "sessions"})
        )
        got = scrape(registry)
        self.assertEqual(got["t_relay_rx_total"], 5)
        self.assertEqual(got["t_relay_txb_total"], 4)
        self.assertEqual(got["t_relay_err_x_total"], 1)
        self.assertEqual(got["t_relay_sessions"], 2)
        self.assertNotIn("t_relay_label_total", got)
        self.assertNotIn("t_relay_flag_total", got)

    @given(st.dictionaries(st.text(max_size=12), st.integers(0, 2**62) | st.text(), max_size=80))
    def test_any_counters_render(self, stats: dict[str, Any]) -> None:
        """Whatever another process answers, the page renders and parses, with at
        most MAX_COUNTERS families from it."""
        registry = registry_for(lambda: counter_families("x_", stats))
        got = scrape(registry)
        self.assertLessEqual(len([k for k in got if not k.endswith("_created")]), MAX_COUNTERS)


class PageTests(SynchronousTestCase):
    def test_page_waits_for_queries(self) -> None:
        """The page is written once the scrape's queries answered, with their values,
        in the text exposition format."""
        clock = Clock()
        answer: defer.Deferred[int] = defer.Deferred()

        async def waiting() -> int:
            return await answer

        queries = Queries(clock, {"waiting": waiting})

        def families() -> Any:
            from prometheus_client.core import GaugeMetricFamily

            if "waiting" in queries.values:
                yield GaugeMetricFamily("t_waiting", "w", value=queries.values["waiting"])

        page = MetricsPage(registry_for(families), queries)
        request = DummyRequest([b""])
        self.assertIs(page.render_GET(request), NOT_DONE_YET)
        self.assertEqual(request.finished, 0)
        answer.callback(12)
        self.assertEqual(request.finished, 1)
        self.assertIn(b"t_waiting 12.0", b"".join(request.written))
        content_type = request.responseHeaders.getRawHeaders(b"content-type")[0]
        self.assertTrue(content_type.startswith(b"text/plain"))

    def test_only_metrics_path(self) -> None:
        """The site answers /metrics and nothing else."""
        site = metrics_site(registry_for(lambda: []))
        self.assertIsInstance(
            site.resource.getChildWithDefault(b"metrics", DummyRequest([])), MetricsPage
        )
        missing = site.resource.getChildWithDefault(b"other", DummyRequest([]))
        self.assertNotIsInstance(missing, MetricsPage)


class FakeRegistry:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class FakeSessions:
    sessions = {"a": 1, "b": 2}
    counters = {"invites": 5, "talks": 3, "hangups": 2}


class FakeMessaging:
    counters = {"posted": 9, "delivered": 7, "refused": 1}


class FakeStore:
    expired = 4


class FakeReloader:
    reloads = 2
    failures = 1


class CrsMetricsTests(SynchronousTestCase):
    def test_families_read_running_state(self) -> None:
        """Every CRS family is read from the running objects at scrape time."""
        clients = UmsgServerFactory(Any, Clock())
        clients.pending.update({object(), object(), object()})  # type: ignore[arg-type]
        clients.evicted = 6
        queries = Queries(Clock(), {})
        queries.values = {"waiting": 11, "relay": {"RX": 100, "ENTRIES": 1}}
        queries.ok = {"waiting": True, "relay": True}
        redis_up = [True]
        metrics = CrsMetrics(
            FakeRegistry(2),  # type: ignore[arg-type]
            clients,
            FakeSessions(),  # type: ignore[arg-type]
            FakeMessaging(),  # type: ignore[arg-type]
            FakeStore(),  # type: ignore[arg-type]
            {
                "crs": lambda: True,
                "redis_low": lambda: redis_up[0],
                "db-backup": lambda: backup[0],
            },
            queries,
            FakeReloader(),  # type: ignore[arg-type]
        )
        backup = ["active (replica of crs2: link up, lag 1s)"]
        registry = registry_for(metrics.families)
        got = scrape(registry)
        expected = {
            "cryptify_crs_attached_clients": 2,
            "cryptify_crs_unattached_connections": 3,
            "cryptify_crs_evicted_connections_total": 6,
            "cryptify_crs_calls": 2,
            "cryptify_crs_call_invites_total": 5,
            "cryptify_crs_call_talks_total": 3,
            "cryptify_crs_call_hangups_total": 2,
            "cryptify_crs_messages_posted_total": 9,
            "cryptify_crs_messages_delivered_total": 7,
            "cryptify_crs_messages_refused_total": 1,
            "cryptify_crs_messages_expired_total": 4,
            "cryptify_crs_messages_waiting": 11,
            "cryptify_crs_service_up{service=crs}": 1,
            "cryptify_crs_service_up{service=redis_low}": 1,
            "cryptify_crs_service_up{service=db-backup}": 1,
            "cryptify_crs_query_ok{query=waiting}": 1,
            "cryptify_crs_relay_rx_total": 100,
            "cryptify_crs_relay_sessions": 1,
            "cryptify_crs_reloads_total": 2,
            "cryptify_crs_reload_failures_total": 1,
        }
        self.assertEqual({k: got.get(k) for k in expected}, expected)
        redis_up[0] = False
        backup[0] = "inactive (replica of crs2: link down)"
        queries.values = {}
        queries.ok = {"waiting": False}
        got = scrape(registry)
        self.assertEqual(got["cryptify_crs_service_up{service=redis_low}"], 0)
        self.assertEqual(got["cryptify_crs_service_up{service=db-backup}"], 0)
        self.assertEqual(got["cryptify_crs_query_ok{query=waiting}"], 0)
        self.assertNotIn("cryptify_crs_messages_waiting", got)
        self.assertNotIn("cryptify_crs_relay_rx_total", got)
        self.assertNotIn("cryptify_crs_pool_messages_forwarded_total", got)

    def test_pool_message_counters(self) -> None:
        """In a pool, the forwarder's counters are read at each scrape."""
        counters = {"forwarded": 4, "timeouts": 1}
        metrics = CrsMetrics(
            FakeRegistry(0),  # type: ignore[arg-type]
            UmsgServerFactory(Any, Clock()),
            FakeSessions(),  # type: ignore[arg-type]
            FakeMessaging(),  # type: ignore[arg-type]
            FakeStore(),  # type: ignore[arg-type]
            {},
            Queries(Clock(), {}),
            pool_messages=counters,
        )
        registry = registry_for(metrics.families)
        counters["duplicates"] = 2
        got = scrape(registry)
        p = "cryptify_crs_pool_messages_"
        self.assertEqual(got[p + "forwarded_total"], 4)
        self.assertEqual(got[p + "timeouts_total"], 1)
        self.assertEqual(got[p + "duplicates_total"], 2)
        for key in ("held", "handed", "taken", "gone", "learned"):
            self.assertEqual(got[p + key + "_total"], 0)


class MetricsDirectiveTests(SynchronousTestCase):
    def test_crs_and_cig_directives(self) -> None:
        """``metrics [ADDR] PORT`` (crs.conf) and ``metrics { bind [ADDR] PORT; }``
        (cig.conf): loopback without an address, off without the directive."""
        self.assertIsNone(parse_crs_config("[GLOBAL]\n").global_.metrics)
        self.assertEqual(
            parse_crs_config("[GLOBAL]\nmetrics 9100\n").global_.metrics,
            Endpoint(METRICS_HOST, 9100),
        )
        self.assertEqual(
            parse_crs_config("[GLOBAL]\nmetrics ::1 9100\n").global_.metrics, Endpoint("::1", 9100)
        )
        self.assertIsNone(parse_cig_config("").metrics)
        self.assertEqual(
            parse_cig_config("metrics { bind 9101; }").metrics, Endpoint(METRICS_HOST, 9101)
        )
        self.assertEqual(
            parse_cig_config("metrics { bind 0.0.0.0 9101; }").metrics, Endpoint("0.0.0.0", 9101)
        )

    @given(st.text(max_size=40))
    def test_crs_metrics_hostile(self, rest: str) -> None:
        """Any text after ``metrics`` parses or is refused with a ConfigError."""
        try:
            parse_crs_config(f"[GLOBAL]\nmetrics {rest}\n")
        except ConfigError:
            pass

    @given(st.text(max_size=40))
    def test_cig_metrics_hostile(self, rest: str) -> None:
        """Any text in a cig.conf metrics block parses or is refused with a ConfigError."""
        try:
            parse_cig_config(f"metrics {{ {rest} }}\n")
        except ConfigError:
            pass


class FakeCall:
    def __init__(self, state: Any) -> None:
        self.state = state


class FakeCalls:
    def __init__(self) -> None:
        from cryptify.cig.calls import CallState

        self.calls = [FakeCall(CallState.REJECT), FakeCall(CallState.HANGUP), FakeCall(None)]


class FakeKeepAlive:
    probes = 12

    def rows(self) -> list[tuple[str, str]]:
        return [("192.0.2.10:5060/udp", "UP"), ("192.0.2.11:5060/udp", "DOWN")]


class CigMetricsTests(SynchronousTestCase):
    def test_families_read_running_state(self) -> None:
        """The CIG's calls in progress (ended calls that linger are not counted),
        links, PBX servers and the bridge's counters."""
        queries = Queries(Clock(), {})
        queries.values = {"bridge": {"calls": 1, "packets_in": 40}}
        queries.ok = {"bridge": True}
        metrics = CigMetrics(
            FakeCalls(),  # type: ignore[arg-type]
            {"crs": lambda: True, "cig_relay": lambda: False},
            FakeKeepAlive(),  # type: ignore[arg-type]
            queries,
        )
        got = scrape(registry_for(metrics.families))
        expected = {
            "cryptify_cig_calls": 1,
            "cryptify_cig_link_up{link=crs}": 1,
            "cryptify_cig_link_up{link=cig_relay}": 0,
            "cryptify_cig_sip_peer_up{peer=192.0.2.10:5060/udp}": 1,
            "cryptify_cig_sip_peer_up{peer=192.0.2.11:5060/udp}": 0,
            "cryptify_cig_sip_keepalive_probes_total": 12,
            "cryptify_cig_bridge_calls": 1,
            "cryptify_cig_bridge_packets_in_total": 40,
            "cryptify_cig_query_ok{query=bridge}": 1,
        }
        self.assertEqual({k: got.get(k) for k in expected}, expected)


class CrsLocalMetricsTests(SynchronousTestCase):
    def test_local_metrics_replaces_crs_conf(self) -> None:
        """crs-local.conf's ``metrics`` (this instance's address) is used in place
        of crs.conf's; without either there is no metrics listener."""
        import attrs

        from cryptify.plugins import crs

        cfg = crs.dev_crs_config(self.mktemp())
        cfg = attrs.evolve(cfg, global_=attrs.evolve(cfg.global_, metrics=Endpoint("::1", 9100)))
        local = parse_crs_local_config("metrics 10.0.0.7 9200\n")

        def listeners(cfg: Any, local: Any) -> list[str]:
            root = crs.make_crs_service(cfg, local, Clock())
            return [s.where for s in root if getattr(s, "what", "") == "metrics"]

        self.assertEqual(listeners(cfg, local), ["10.0.0.7:9200"])
        self.assertEqual(listeners(cfg, parse_crs_local_config("")), ["::1:9100"])
        self.assertEqual(listeners(crs.dev_crs_config(self.mktemp()), local.__class__()), [])

    @given(st.text(max_size=40))
    def test_local_metrics_hostile(self, rest: str) -> None:
        """Any text after ``metrics`` in crs-local.conf parses or is a ConfigError."""
        try:
            parse_crs_local_config(f"metrics {rest}\n")
        except ConfigError:
            pass
