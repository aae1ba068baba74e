"""The pool's scaling loop against real simulators: it runs in PoolApp when configured, reads
the probes' figures and loads/unloads over Triton's model control."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from services.enginesim.testing import start_enginesim, write_catalog
from services.pool.app import PoolApp
from services.pool.autoscale import AutoscaleSettings
from services.pool.catalog import ModelSpec
from services.pool.config import PoolConfig
from services.pool.gpus import Nvml
from services.pool.state import GIB, HEALTHY
from tests.helpers.polling import until
from tests.helpers.pool_server import sim_endpoints, vram_used

SIM_MODELS = [{"name": "small-trt", "memory_gb": 15, "load_time_s": 1, "preload": False}]


async def test_the_loop_gives_back_an_idle_replica_down_to_the_claims(tmp_path):
    catalog = write_catalog(tmp_path / "models.yaml", SIM_MODELS)
    sims = [await start_enginesim(catalog_path=catalog, time_scale=1000, preload=False) for _ in range(2)]
    specs = sim_endpoints(sims)
    cfg = PoolConfig(
        endpoints=specs,
        nvml=False,
        models=(ModelSpec("small", "small-trt", 15 * GIB),),
        probe_interval_s=0.1,
        agent_idle_ttl_s=0.0,
        autoscale=AutoscaleSettings(interval_s=0.1, up_after_s=0.2, down_after_s=0.5, cooldown_s=0.3),
    )
    app = PoolApp(cfg, CollectorRegistry(), nvml=Nvml(enabled=False))
    await app.start()
    try:
        await until(lambda: all(s.health == HEALTHY for s in app.table.states()))
        await app.deploy("small", 1, "agent:a", 0.0)
        await app.deployments.scale_to("small", 2)  # an operator's scale-out, then nothing to do
        assert vram_used(sims[0]) + vram_used(sims[1]) == 30 * GIB
        # Idle: the loop takes one replica away after the scale-in window, and stops at the claim.
        await until(lambda: any(e.done and e.after == 1 for e in app.autoscaler.events))
        await until(lambda: vram_used(sims[0]) + vram_used(sims[1]) == 15 * GIB)
        await asyncio.sleep(1.0)
        assert app.deployments.get("small").desired == 1
        assert [(e.before, e.after, e.error) for e in app.autoscaler.events] == [(2, 1, "")]
        assert "below the low marks" in app.autoscaler.events[0].reason
    finally:
        await app.stop()
        for s in sims:
            await s.stop()
