"""Waiting until routers enforce what the cost service holds now: each router's
harness_router_budgets_as_of_timestamp_seconds says when it last asked for budgets and prices,
so a test waits for that instead of sleeping for a few refresh intervals (a loaded machine can
delay a router's poll past any fixed sleep)."""

from __future__ import annotations

import asyncio
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

AS_OF = "harness_router_budgets_as_of_timestamp_seconds"


def budgets_as_of(metrics_url: str) -> float:
    """The router's AS_OF; 0 when it does not answer (restarting) or has not read budgets yet."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == AS_OF:
                return sample.value
    return 0.0


async def until_routers_read_budgets(metrics_urls: list[str], within_s: float = 60.0) -> None:
    """Returns once every router has asked the cost service for budgets after this call began:
    every budget change committed before the call is then in force on all of them."""
    since = time.time()
    deadline = time.monotonic() + within_s
    while True:
        seen = [await asyncio.to_thread(budgets_as_of, url) for url in metrics_urls]
        if all(as_of >= since for as_of in seen):
            return
        assert time.monotonic() < deadline, f"routers' budgets as of {seen}, wanted >= {since}"
        await asyncio.sleep(0.1)
