"""Scraping a program's metrics endpoint over HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.interop._procs import WAIT


def scrape(port: int, path: str = "/metrics") -> tuple[int, dict[str, float]]:
    """GET the page: its status and each sample (``name{label=value}``)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=WAIT) as answer:
            status, body = answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, {}
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return status, samples
