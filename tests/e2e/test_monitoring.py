"""Monitoring as a new user meets it: `harness up` starts a Prometheus that scrapes the whole
stack, and every dashboard panel's query returns data after traffic."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.stack.simulators import DEFAULT_SIMULATORS
from tests.e2e.dashboards import dashboards, panel_queries
from tests.e2e.promql import api, eventually, instant, prometheus_url
from tests.e2e.traffic import AGENTS, demo_traffic

pytestmark = pytest.mark.e2e
PICKED_AGENT = "ledger-rpa"  # the demo agent with RPM/TPM limits and a refused user
# One engine target per simulator of the default stack (Triton and OpenAI protocol alike).
JOBS = {
    "router": 2,
    "registry": 1,
    "pool": 1,
    "audit": 1,
    "cost": 1,
    "engine": len(DEFAULT_SIMULATORS),
    "envoy": 1,
}


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


def test_every_dashboard_panel_query_returns_data_after_traffic(stack):
    """A query that parses but returns nothing after traffic is a broken panel."""
    url = prometheus_url(stack)
    asyncio.run(demo_traffic(stack))
    queries = [
        (name, title, expr)
        for name, board in dashboards().items()
        for title, expr in panel_queries(board, {"$agent": PICKED_AGENT})
    ]
    assert len(queries) >= 40

    def still_empty() -> list[str]:
        # Parse errors raise at once; empty answers get until the deadline (rate() needs two
        # scrapes after the traffic, recording rules one evaluation).
        return [f"{name} / {title}: {expr}" for name, title, expr in queries if not instant(url, expr)]

    empty = still_empty()
    deadline = time.monotonic() + 60
    while empty and time.monotonic() < deadline:
        time.sleep(2)
        empty = still_empty()
    assert empty == []


def test_the_agent_dashboards_variable_lists_the_demo_agents(stack):
    url = prometheus_url(stack)
    (variable,) = dashboards()["agent"]["templating"]["list"]
    metric, label = variable["query"]["query"].removeprefix("label_values(").removesuffix(")").split(", ")
    series = api(url, "series", **{"match[]": metric})
    assert {s[label] for s in series} >= set(AGENTS)
