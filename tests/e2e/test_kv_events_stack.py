"""The local stack's engine simulators publish their KV-cache events, the pool carries their
addresses as endpoint labels, and every router follows every simulator's stream: after a call
through Envoy, both routers (not only the one that served it) index the blocks the engine stored."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.calls import bearer, demo_channel, generate

pytestmark = pytest.mark.e2e


def kv_figures(url: str) -> dict[tuple[str, str], float]:
    """(sample name, endpoint) -> value of the router's harness_router_kv_events_* samples."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, s.labels.get("endpoint", "")): s.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("harness_router_kv_events")
        for s in family.samples
    }


def test_every_router_follows_every_simulators_kv_events(stack):
    routers = stack.env["HARNESS_ROUTER_METRICS"].split(",")
    deadline = time.monotonic() + 60
    while not all(("harness_router_kv_events_blocks", "sim-0") in kv_figures(u) for u in routers):
        assert time.monotonic() < deadline, "the routers never subscribed to sim-0's KV events"
        time.sleep(0.5)

    async def call() -> None:
        channel = demo_channel(stack)
        try:
            prompt = "Summarise the ledger policy for the quarterly close. " * 40
            await generate(channel, bearer(stack.token("alice")), prompt=prompt, max_tokens=4)
        finally:
            await channel.close()

    asyncio.run(call())
    deadline = time.monotonic() + 60
    while True:
        figures = [kv_figures(u) for u in routers]
        indexed = [
            sum(v for (name, _), v in f.items() if name == "harness_router_kv_events_blocks") for f in figures
        ]
        if all(n > 0 for n in indexed):
            break
        assert time.monotonic() < deadline, f"blocks indexed per router: {indexed}"
        time.sleep(0.5)
    for f in figures:
        assert all(v == 0 for (name, _), v in f.items() if name == "harness_router_kv_events_bad_total")
