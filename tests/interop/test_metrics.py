"""The Prometheus endpoint of a real ``twistd crs``, scraped over HTTP.

Two clients attach, one posts a message to the other while the
recipient is away (so it waits in Redis) and they place a call; the
scrape, parsed with ``prometheus_client.parser``, shows each of these.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import threads

from tests.interop._crs import CALLEE, CALLER, CrsFixture, recv, send
from tests.interop._metrics import scrape
from tests.interop._procs import free_port, tcp_answers, wait_for


class CrsMetricsTests(CrsFixture):
    def conf_extra(self) -> str:
        self.metrics_port = free_port()
        return f"metrics {self.metrics_port}"

    def scenario(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        wait_for(lambda: tcp_answers(self.metrics_port), "metrics endpoint")
        sender, callee = self.attach(CALLER), self.attach(CALLEE)
        try:
            callee.close()
            wait_for(
                lambda: scrape(self.metrics_port)[1].get("cryptify_crs_attached_clients") == 1,
                "callee detached",
            )
            send(sender, type="post", id=21, to=CALLEE, content=b"\x00hello")
            recv(sender, "posted")
            results["waiting"] = scrape(self.metrics_port)
            callee = self.attach(CALLEE)
            got = recv(callee, "message")
            send(callee, type="delivered", message=got["message"])
            recv(sender, "delivered")
            send(sender, type="invite", id=11, to=CALLEE, mikey=b"\x01")
            recv(sender, "session")
            invite = recv(callee, "invite")
            send(callee, type="talk", session=invite["session"])
            recv(sender, "talk")
            results["call"] = scrape(self.metrics_port)
            results["other"] = scrape(self.metrics_port, "/")
        finally:
            sender.close()
            callee.close()
        return results

    async def test_scrape(self) -> None:
        """The scrape counts attached clients, posted, delivered and waiting
        messages, calls placed and in progress, and shows the relay link and
        the Redis servers up, with the relay's counters."""
        results = await threads.deferToThread(self.scenario)
        status, waiting = results["waiting"]
        self.assertEqual(status, 200)
        self.assertEqual(waiting["cryptify_crs_attached_clients"], 1)
        self.assertEqual(waiting["cryptify_crs_messages_posted_total"], 1)
        self.assertEqual(waiting["cryptify_crs_messages_waiting"], 1)
        self.assertEqual(waiting["cryptify_crs_query_ok{query=waiting}"], 1)
        status, call = results["call"]
        self.assertEqual(call["cryptify_crs_attached_clients"], 2)
        self.assertEqual(call["cryptify_crs_messages_delivered_total"], 1)
        self.assertEqual(call["cryptify_crs_messages_waiting"], 0)
        self.assertEqual(call["cryptify_crs_calls"], 1)
        self.assertEqual(call["cryptify_crs_call_invites_total"], 1)
        self.assertEqual(call["cryptify_crs_call_talks_total"], 1)
        for service in ("crs", "crs_relay", "redis_high", "redis_low"):
            self.assertEqual(call[f"cryptify_crs_service_up{{service={service}}}"], 1, service)
        self.assertEqual(call["cryptify_crs_query_ok{query=relay}"], 1)
        self.assertEqual(call["cryptify_crs_relay_sessions"], 1)
        self.assertIn("cryptify_crs_relay_rx_total", call)
        self.assertEqual(results["other"][0], 404)
