"""Accepted deployments survive a pool restart (SQLite and PostgreSQL): the new pool reads the
claims back and re-places what the endpoints lost; a scaled-to-zero deployment stays cold."""

from __future__ import annotations

from services.common.config import ServerConfig
from services.enginesim.testing import start_enginesim, write_catalog
from services.pool.app import serve
from services.pool.catalog import ModelSpec
from services.pool.config import PoolConfig
from services.pool.state import GIB, EndpointSpec
from tests.helpers.polling import until


async def test_claims_survive_a_pool_restart(tmp_path, test_auth, db_url):
    catalog = write_catalog(
        tmp_path / "models.yaml",
        [
            {"name": "a-trt", "memory_gb": 10, "preload": False},
            {"name": "b-trt", "memory_gb": 10, "preload": False},
        ],
    )
    sim = await start_enginesim(catalog_path=catalog, time_scale=1000, preload=False)
    engine = sim.server.sim
    cfg = PoolConfig(
        endpoints=(EndpointSpec.make("sim-0", sim.address, metrics_url=sim.metrics_url, gpu_count=1),),
        nvml=False,
        models=(ModelSpec("a", "a-trt", 10 * GIB), ModelSpec("b", "b-trt", 10 * GIB)),
        probe_interval_s=0.1,
        idle_check_interval_s=0.1,
        db_url=db_url,
    )
    server = ServerConfig(name="pool", port=0, metrics_port=None, auth=test_auth)
    try:
        running, app = await serve(cfg, server)
        await until(lambda: app.table.states()[0].health == 1)
        await app.deployments.deploy("a", 1, "team:x")
        await app.deployments.deploy("b", 1, "team:y", idle_ttl_s=0.2)
        await until(lambda: app.deployments.get("b").scaled_to_zero)  # idle: cold, and stored so
        await running.stop(grace=0)

        await engine.unload("a-trt")  # the endpoint lost the model while the pool was down
        assert not engine.is_ready("a-trt") and not engine.is_ready("b-trt")

        running, app = await serve(cfg, server)
        await until(lambda: engine.is_ready("a-trt"))  # re-placed from the stored claim
        views = {v.model: v for v in app.deployments.views()}
        assert set(views) == {"a", "b"}
        assert not engine.is_ready("b-trt")  # still scaled to zero: not loaded on restart
        await app.deployments.undeploy("a", "team:x")
        await running.stop(grace=0)
        running, app = await serve(cfg, server)
        assert {v.model for v in app.deployments.views()} == {"b"}
        await running.stop(grace=0)
    finally:
        await sim.stop()
