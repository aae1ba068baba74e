"""`harness_router_queued_requests{slo_class}`, the queue depth the Kubernetes HPA scales routers
on, reads the flow controller's live queue at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from services.router.flow import FlowController, SloClass
from services.router.metrics import export_queue_depth


async def test_gauge_follows_the_flow_queue_per_class():
    import asyncio

    flow = FlowController()
    metrics = CollectorRegistry()
    export_queue_depth(
        metrics, lambda name: flow.queued(SloClass[name.upper()]), [c.name.lower() for c in SloClass]
    )

    def depth(cls: str) -> float | None:
        return metrics.get_sample_value("harness_router_queued_requests", {"slo_class": cls})

    assert depth("batch") == 0 and depth("interactive") == 0
    saturated = True
    waiters = [
        asyncio.create_task(flow.wait_turn(SloClass.BATCH, "bot", lambda: saturated, timeout_s=30.0))
        for _ in range(3)
    ]
    await asyncio.sleep(0.05)
    assert depth("batch") == 3 and depth("realtime") == 0
    saturated = False
    flow.capacity_changed()
    await asyncio.wait_for(asyncio.gather(*waiters), 10)
    assert depth("batch") == 0
