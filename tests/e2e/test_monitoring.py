"""Monitoring as a new user meets it: `harness up` starts a Prometheus that scrapes the whole
stack, and every dashboard panel's query returns data after traffic."""

from __future__ import annotations

import pytest

from tests.e2e.promql import api, eventually, prometheus_url

pytestmark = pytest.mark.e2e
JOBS = {"router": 2, "registry": 1, "pool": 1, "audit": 1, "cost": 1, "engine": 2, "envoy": 1}


def test_harness_up_prints_a_prometheus_whose_targets_are_all_up(stack):
    url = prometheus_url(stack)
    assert any("Prometheus" in line and url in line for line in stack.output), "banner names the URL"

    def all_up():
        targets = api(url, "targets", state="active")["activeTargets"]
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    targets = eventually(all_up, timeout_s=60)
    assert targets, api(url, "targets", state="active")["activeTargets"]
    jobs: dict[str, int] = {}
    for t in targets:
        jobs[t["labels"]["job"]] = jobs.get(t["labels"]["job"], 0) + 1
    assert jobs == JOBS
    envoy = next(t for t in targets if t["labels"]["job"] == "envoy")
    assert envoy["scrapeUrl"].endswith("/stats/prometheus")
