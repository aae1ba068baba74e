"""Scale to zero and ActivateDeployment through the pool's real gRPC server, against one
in-process engine simulator (time_scale 1000: loads take milliseconds)."""

from __future__ import annotations

import grpc
import pytest
from harness.pool.v1 import pool_pb2, pool_pb2_grpc

from services.common.config import ServerConfig
from services.enginesim.testing import start_enginesim, write_catalog
from services.pool.app import serve
from services.pool.catalog import ModelSpec
from services.pool.config import PoolConfig
from services.pool.state import GIB
from tests.helpers.grpc import user_metadata
from tests.helpers.pool_server import Watcher, code_of, sim_endpoints, vram_used

READY = pool_pb2.MODEL_STATE_READY
HEALTHY = pool_pb2.ENDPOINT_HEALTH_HEALTHY


@pytest.fixture
async def world(tmp_path, test_auth):
    catalog = write_catalog(
        tmp_path / "models.yaml",
        [
            {"name": "small-trt", "memory_gb": 15, "load_time_s": 8, "preload": False},
            {"name": "mid-trt", "memory_gb": 33, "load_time_s": 20, "preload": False},
        ],
    )
    sim = await start_enginesim(catalog_path=catalog, gpu_memory_gb=80, time_scale=1000, preload=False)
    cfg = PoolConfig(
        endpoints=sim_endpoints([sim]),
        nvml=False,
        models=(ModelSpec("small", "small-trt", 15 * GIB), ModelSpec("mid", "mid-trt", 33 * GIB)),
        headroom=0.0,
        probe_interval_s=0.1,
        idle_check_interval_s=0.1,
        agent_idle_ttl_s=0.0,  # agents' claims never go to zero ...
        model_idle_ttl_s=(("small", 0.3),),  # ... except on 'small'
    )
    running, app = await serve(cfg, ServerConfig(name="pool", port=0, metrics_port=None, auth=test_auth))
    channel = grpc.aio.insecure_channel(running.address)
    yield pool_pb2_grpc.PoolStub(channel), app, sim
    await channel.close()
    await running.stop(grace=0)
    await sim.stop()


async def test_scaled_to_zero_is_watched_and_activate_wakes_it(world, mint_token):
    stub, app, sim = world
    md = user_metadata(mint_token("dev", "viewer"))  # any authenticated caller may wake
    watcher = Watcher(stub, md)
    await watcher.until(lambda w: w.eps.get("sim-0") is not None and w.eps["sim-0"].health == HEALTHY)
    assert await app.on_agent_online(["small", "mid"], agent="bot") == {"small": "", "mid": ""}
    # Idle for 0.3 s: unloaded, and listed to watchers (routers) as scaled to zero.
    await watcher.until(lambda w: w.scaled_to_zero == ("small-trt",))
    await watcher.until(lambda w: w.model_state("sim-0", "small-trt") != READY)
    assert vram_used(sim) == 33 * GIB

    first = await stub.ActivateDeployment(pool_pb2.ActivateDeploymentRequest(model="small"), metadata=md)
    assert first.waking and first.deployment.model == "small"
    await watcher.until(lambda w: w.model_state("sim-0", "small-trt") == READY and not w.scaled_to_zero)
    assert vram_used(sim) == (15 + 33) * GIB
    again = await stub.ActivateDeployment(pool_pb2.ActivateDeploymentRequest(model="small-trt"), metadata=md)
    assert not again.waking and again.deployment.ready_replicas == 1
    # 'mid' (TTL 0 for agents) is not at zero: OK, nothing to wake.
    mid = await stub.ActivateDeployment(pool_pb2.ActivateDeploymentRequest(model="mid"), metadata=md)
    assert not mid.waking and mid.deployment.ready_replicas == 1
    own = [(r.object, r.action, r.actor_service) for r in app.changes.pending(100)]
    assert ("deployment:small", "scale_to_zero", "pool") in own and (
        "deployment:small",
        "wake",
        "pool",
    ) in own
    watcher.close()


async def test_activate_statuses(world, mint_token):
    stub, _app, _sim = world
    md = user_metadata(mint_token("dev", "viewer"))
    cases = [
        ("", grpc.StatusCode.INVALID_ARGUMENT, "model is required"),
        ("x" * 129, grpc.StatusCode.INVALID_ARGUMENT, "model"),
        ("no-such-model", grpc.StatusCode.NOT_FOUND, "no-such-model"),
        ("mid", grpc.StatusCode.NOT_FOUND, "not deployed"),  # in the catalog, held by no claim
    ]
    for model, code, needle in cases:
        req = pool_pb2.ActivateDeploymentRequest(model=model)
        got, details = await code_of(stub.ActivateDeployment(req, metadata=md))
        assert got == code and needle in details, (model, got, details)
    got, _ = await code_of(stub.ActivateDeployment(pool_pb2.ActivateDeploymentRequest(model="mid")))
    assert got == grpc.StatusCode.UNAUTHENTICATED
