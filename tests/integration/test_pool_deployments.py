"""Deployments through the pool's real gRPC server, against two in-process engine simulators.

sim-0 has an 80 GiB GPU, sim-1 a 40 GiB one; time_scale 1000 makes loads take milliseconds.
VRAM figures are read from each simulator's own /metrics (nv_gpu_memory_used_bytes).
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import tritonclient.grpc.aio as tc
from harness.pool.v1 import pool_pb2, pool_pb2_grpc
from tritonclient.grpc import service_pb2_grpc as pbg

from services.common import embedding_tensors
from services.common.config import ServerConfig
from services.enginesim.app import start_server as start_sim_server
from services.enginesim.config import SimulatorConfig
from services.enginesim.testing import start_enginesim, write_catalog
from services.pool.app import serve
from services.pool.catalog import ModelSpec
from services.pool.config import PoolConfig
from services.pool.state import GIB
from tests.helpers.grpc import agent_metadata, user_metadata
from tests.helpers.polling import wait_for
from tests.helpers.pool_server import Watcher, code_of, sim_endpoints, vram_used

HEALTHY = pool_pb2.ENDPOINT_HEALTH_HEALTHY
UNHEALTHY = pool_pb2.ENDPOINT_HEALTH_UNHEALTHY
READY = pool_pb2.MODEL_STATE_READY

SIM_MODELS = [
    {"name": "mid-trt", "memory_gb": 33, "load_time_s": 20, "preload": False},
    {"name": "small-trt", "memory_gb": 15, "load_time_s": 8, "preload": False},
    {"name": "big-trt", "memory_gb": 63, "load_time_s": 25, "preload": False},
    {
        "name": "embed-trt",
        "kind": "embedding",
        "dimensions": 8,
        "decoupled": False,
        "layout": "bls",
        "memory_gb": 2,
        "load_time_s": 3,
        "preload": False,
    },
]
POOL_MODELS = (
    ModelSpec("mid", "mid-trt", 33 * GIB),
    ModelSpec("small", "small-trt", 15 * GIB),
    ModelSpec("big", "big-trt", 63 * GIB),
    ModelSpec("ghost", "ghost-trt", GIB),  # in the pool's table, unknown to every Triton
    ModelSpec("embed", "embed-trt", 2 * GIB),  # an embedding model: placed like the others
)


@pytest.fixture
async def world(tmp_path, test_auth):
    catalog = write_catalog(tmp_path / "models.yaml", SIM_MODELS)
    sims = [
        await start_enginesim(catalog_path=catalog, gpu_memory_gb=gb, time_scale=1000, preload=False)
        for gb in (80, 40)
    ]
    specs = sim_endpoints(sims)
    cfg = PoolConfig(
        endpoints=specs,
        nvml=False,
        models=POOL_MODELS,
        headroom=0.0,
        probe_interval_s=0.1,
        idle_check_interval_s=0.1,
        agent_idle_ttl_s=0.0,
    )
    running, app = await serve(cfg, ServerConfig(name="pool", port=0, metrics_port=None, auth=test_auth))
    channel = grpc.aio.insecure_channel(running.address)
    w = {"stub": pool_pb2_grpc.PoolStub(channel), "app": app, "sims": sims, "catalog": catalog}
    yield w
    await channel.close()
    await running.stop(grace=0)
    for s in w["sims"]:
        await s.stop()


@pytest.fixture
def admin(mint_token):
    return user_metadata(mint_token("ops", "admin"))


async def all_healthy(stub, md):
    eps = (await stub.ListEndpoints(pool_pb2.ListEndpointsRequest(), metadata=md)).endpoints
    assert len(eps) == 2 and all(e.health == HEALTHY for e in eps), eps


async def all_healthy_ok(stub, md) -> bool:
    try:
        await all_healthy(stub, md)
        return True
    except AssertionError:
        return False


async def test_five_agents_share_one_load_per_endpoint_and_memory_is_respected(world, admin):
    stub, sim0, sim1 = world["stub"], *world["sims"]
    await wait_for(lambda: all_healthy_ok(stub, admin), bool)
    watcher = Watcher(stub, admin)
    before = vram_used(sim0) + vram_used(sim1)
    assert before == 0

    deploys = [
        stub.Deploy(pool_pb2.DeployRequest(model="mid", replicas=2, owner=f"agent:bot-{i}"), metadata=admin)
        for i in range(5)
    ]
    replies = await asyncio.gather(*deploys)
    dep = replies[-1].deployment
    assert sorted(p.endpoint for p in dep.placements) == ["sim-0", "sim-1"]
    assert all(p.load_time.ToNanoseconds() > 0 for p in dep.placements)
    # Loaded once per endpoint: 2 x 33 GiB in VRAM, not 5 x 2 x 33.
    used = vram_used(sim0) + vram_used(sim1)
    assert used == 2 * 33 * GIB and used < 5 * 2 * 33 * GIB
    listed = (await stub.ListDeployments(pool_pb2.ListDeploymentsRequest(), metadata=admin)).deployments
    assert [d.model for d in listed] == ["mid"]
    assert list(listed[0].owners) == [f"agent:bot-{i}" for i in range(5)]
    assert listed[0].ready_replicas == 2 and listed[0].last_load_time.ToNanoseconds() > 0
    await watcher.until(
        lambda w: w.model_state("sim-0", "mid-trt") == READY and w.model_state("sim-1", "mid-trt") == READY
    )

    # sim-1 has 7 GiB left, sim-0 47: a 63 GiB model is 16 GiB short; Plan says so, Deploy refuses.
    plan = await stub.Plan(pool_pb2.PlanRequest(model="big", replicas=1), metadata=admin)
    assert plan.shortfall_bytes == 16 * GIB and "short by 16.0 GiB" in plan.reason
    code, details = await code_of(
        stub.Deploy(pool_pb2.DeployRequest(model="big", replicas=1), metadata=admin)
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "short by 16.0 GiB" in details
    plan = await stub.Plan(pool_pb2.PlanRequest(model="small", replicas=1), metadata=admin)
    assert [(p.endpoint, p.state) for p in plan.placements] == [("sim-0", pool_pb2.MODEL_STATE_UNAVAILABLE)]
    mem = {m.endpoint: (m.used_before_bytes, m.used_after_bytes, m.total_bytes) for m in plan.memory}
    assert mem == {"sim-0": (33 * GIB, 48 * GIB, 80 * GIB), "sim-1": (33 * GIB, 33 * GIB, 40 * GIB)}
    assert vram_used(sim0) == 33 * GIB  # Plan changed nothing

    # Four agents let go: still loaded; the fifth lets go: unloaded, VRAM back to 0.
    for i in range(4):
        await stub.Undeploy(pool_pb2.UndeployRequest(model="mid", owner=f"agent:bot-{i}"), metadata=admin)
    assert vram_used(sim0) + vram_used(sim1) == 2 * 33 * GIB
    await stub.Undeploy(pool_pb2.UndeployRequest(model="mid", owner="agent:bot-4"), metadata=admin)
    assert vram_used(sim0) + vram_used(sim1) == 0
    await watcher.until(lambda w: w.model_state("sim-0", "mid-trt") != READY)
    assert not (await stub.ListDeployments(pool_pb2.ListDeploymentsRequest(), metadata=admin)).deployments
    reg = world["app"].metrics_registry
    assert reg.get_sample_value("harness_pool_model_load_seconds_count", {"model": "mid"}) == 2
    watcher.close()


async def test_bad_inputs(world, admin, mint_token):
    stub = world["stub"]
    await wait_for(lambda: all_healthy_ok(stub, admin), bool)
    cases = [
        (pool_pb2.DeployRequest(model="nope", replicas=1), grpc.StatusCode.NOT_FOUND),
        (pool_pb2.DeployRequest(model="mid", replicas=0), grpc.StatusCode.INVALID_ARGUMENT),
        (pool_pb2.DeployRequest(model="mid", replicas=3), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (pool_pb2.DeployRequest(model="ghost", replicas=1), grpc.StatusCode.UNAVAILABLE),
        (pool_pb2.DeployRequest(replicas=1), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for req, want in cases:
        code, details = await code_of(stub.Deploy(req, metadata=admin))
        assert code == want, (req, details)
    code, _ = await code_of(stub.Plan(pool_pb2.PlanRequest(model="mid", replicas=0), metadata=admin))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await code_of(stub.Undeploy(pool_pb2.UndeployRequest(model="mid"), metadata=admin))
    assert code == grpc.StatusCode.NOT_FOUND
    viewer = user_metadata(mint_token("alice"))
    code, _ = await code_of(stub.Deploy(pool_pb2.DeployRequest(model="mid", replicas=1), metadata=viewer))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    req = pool_pb2.DeployRequest(model="mid", replicas=1, owner="agent:other")
    code, _ = await code_of(stub.Deploy(req, metadata=agent_metadata("bot")))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # An agent certificate without a user never changes the pool, not even for itself.
    for call in (
        stub.Deploy(pool_pb2.DeployRequest(model="big", replicas=1), metadata=agent_metadata("bot")),
        stub.Undeploy(pool_pb2.UndeployRequest(model="mid"), metadata=agent_metadata("bot")),
        stub.Deploy(
            pool_pb2.DeployRequest(model="mid", replicas=1),
            metadata=agent_metadata("bot", mint_token("alice")),
        ),
    ):
        code, details = await code_of(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "operator" in details, details
    assert not (await stub.ListDeployments(pool_pb2.ListDeploymentsRequest(), metadata=admin)).deployments


async def test_counts_and_durations_are_bounded(world, admin, mint_token):
    """replicas 2^31-1 once grew the pool to 23 GB (Plan built a list per missing replica)."""
    stub = world["stub"]
    huge = 2**31 - 1
    week = 7 * 24 * 3600
    cases = [
        (stub.Plan, pool_pb2.PlanRequest(model="mid", replicas=65), "64"),
        (stub.Plan, pool_pb2.PlanRequest(model="mid", replicas=huge), "replicas"),
        (stub.Deploy, pool_pb2.DeployRequest(model="mid", replicas=huge), "replicas"),
        (stub.Deploy, pool_pb2.DeployRequest(model="x" * 200, replicas=1), "model"),
        (stub.Deploy, pool_pb2.DeployRequest(model="mid", replicas=1, owner="o" * 129), "owner"),
    ]
    long_ttl = pool_pb2.DeployRequest(model="small", replicas=1)
    long_ttl.idle_ttl.seconds = 10**7
    cases.append((stub.Deploy, long_ttl, f"{week}"))
    bad_nanos = pool_pb2.DeployRequest(model="small", replicas=1)
    bad_nanos.idle_ttl.seconds, bad_nanos.idle_ttl.nanos = 1, -5
    cases.append((stub.Deploy, bad_nanos, "idle_ttl"))
    ep = pool_pb2.Endpoint(name="e1", address="127.0.0.1:1", gpu_count=huge)
    cases.append((stub.RegisterEndpoint, pool_pb2.RegisterEndpointRequest(endpoint=ep), "gpu_count"))
    ep = pool_pb2.Endpoint(name="e1", address="127.0.0.1:1", metrics_url="http://[::1")
    cases.append((stub.RegisterEndpoint, pool_pb2.RegisterEndpointRequest(endpoint=ep), "metrics_url"))
    ep = pool_pb2.Endpoint(name="e1", address="127.0.0.1:²")
    cases.append((stub.RegisterEndpoint, pool_pb2.RegisterEndpointRequest(endpoint=ep), "host:port"))
    operator = user_metadata(mint_token("olga", "operator"))
    for method, req, needle in cases:
        code, details = await code_of(method(req, metadata=operator))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in details, (req, code, details)
        assert len(details) <= 1024
    assert not (await stub.ListDeployments(pool_pb2.ListDeploymentsRequest(), metadata=admin)).deployments


async def test_idle_unload_and_agent_warm_up_before_first_request(world, admin):
    stub, app, (sim0, sim1) = world["stub"], world["app"], world["sims"]
    await wait_for(lambda: all_healthy_ok(stub, admin), bool)
    watcher = Watcher(stub, admin)
    req = pool_pb2.DeployRequest(model="small", replicas=1)
    req.idle_ttl.FromMilliseconds(500)
    dep = (await stub.Deploy(req, metadata=admin)).deployment
    where = dep.placements[0].endpoint
    await watcher.until(lambda w: w.model_state(where, "small-trt") == READY)
    started = time.monotonic()

    async def listed():
        return (await stub.ListDeployments(pool_pb2.ListDeploymentsRequest(), metadata=admin)).deployments[0]

    got = await wait_for(listed, lambda d: d.scaled_to_zero, timeout=20)
    assert time.monotonic() - started >= 0.4 and not got.placements
    assert vram_used(sim0) + vram_used(sim1) == 0
    await watcher.until(lambda w: w.model_state(where, "small-trt") != READY)

    # An agent goes online: its models are loaded by the time the hook returns, before any request.
    result = await app.on_agent_online(["small", "mid"], agent="bot")
    assert result == {"small": "", "mid": ""}
    ready = {}
    for sim in (sim0, sim1):
        client = tc.InferenceServerClient(sim.address)
        try:
            for m in ("small-trt", "mid-trt"):
                ready[m] = ready.get(m, False) or await client.is_model_ready(m)
        finally:
            await client.close()
    assert ready == {"small-trt": True, "mid-trt": True}
    assert vram_used(sim0) + vram_used(sim1) == (15 + 33) * GIB
    d = await listed()
    assert not d.scaled_to_zero and "agent:bot" in d.owners
    # The pool's own changes wait in its audit outbox, made by the pool itself, not by a caller.
    own = [(r.object, r.action, r.actor_service, r.actor_user) for r in app.changes.pending(100)]
    assert ("deployment:small", "scale_to_zero", "pool", "") in own
    assert {("deployment:small", "deploy", "pool", ""), ("deployment:mid", "deploy", "pool", "")} <= set(own)
    await app.on_agent_offline("bot")
    undeployed = {
        r.object for r in app.changes.pending(100) if r.action == "undeploy" and r.actor_service == "pool"
    }
    assert undeployed == {"deployment:small", "deployment:mid"}
    watcher.close()


async def test_endpoint_failure_and_recovery_followed_by_watch(world, admin):
    stub, (_, sim1) = world["stub"], world["sims"]
    await wait_for(lambda: all_healthy_ok(stub, admin), bool)
    watcher = Watcher(stub, admin)
    await stub.Deploy(pool_pb2.DeployRequest(model="small", replicas=2), metadata=admin)
    await watcher.until(lambda w: w.model_state("sim-1", "small-trt") == READY)

    port, metrics_port = sim1.port, sim1.metrics_port
    await sim1.stop()
    await watcher.until(lambda w: w.eps["sim-1"].health == UNHEALTHY, timeout=20)
    assert watcher.model_state("sim-1", "small-trt") != READY
    ready = await stub.ListEndpoints(pool_pb2.ListEndpointsRequest(model="small-trt"), metadata=admin)
    assert [e.name for e in ready.endpoints] == ["sim-0"]
    dep = (await stub.ListDeployments(pool_pb2.ListDeploymentsRequest(), metadata=admin)).deployments[0]
    assert dep.ready_replicas == 1

    # Back on the same ports. A restarted Triton comes back empty: the pool notices the replica
    # is gone and re-places it by itself (reconcile), with no new Deploy.
    cfg = SimulatorConfig(
        port=port,
        metrics_port=metrics_port,
        catalog_path=world["catalog"],
        gpu_memory_gb=40,
        time_scale=1000,
        preload=False,
        shutdown_grace_s=0,
    )
    restarted = await start_sim_server(cfg)
    try:
        await watcher.until(lambda w: w.eps["sim-1"].health == HEALTHY, timeout=20)
        await watcher.until(lambda w: w.model_state("sim-1", "small-trt") == READY)
        dep = (await stub.ListDeployments(pool_pb2.ListDeploymentsRequest(), metadata=admin)).deployments[0]
        assert dep.ready_replicas == 2
    finally:
        await restarted.stop(0.0)
    watcher.close()


async def test_advise_scaling_and_apply_within_limits(world, admin, mint_token):
    stub, app, (sim0, sim1) = world["stub"], world["app"], world["sims"]
    await wait_for(lambda: all_healthy_ok(stub, admin), bool)
    await stub.Deploy(pool_pb2.DeployRequest(model="small", replicas=2), metadata=admin)

    async def advice(apply=False, md=admin):
        return (await stub.AdviseScaling(pool_pb2.AdviseScalingRequest(apply=apply), metadata=md)).advice

    # Idle (nothing waiting, KV and GPU cold): one replica can go. Only operators may apply.
    got = await wait_for(advice, lambda a: len(a) == 1 and a[0].current_replicas == 2)
    assert (got[0].model, got[0].advised_replicas, got[0].applied) == ("small", 1, False)
    assert "below the low marks" in got[0].reason
    code, _ = await code_of(
        stub.AdviseScaling(pool_pb2.AdviseScalingRequest(apply=True), metadata=agent_metadata("bot"))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    applied = await advice(apply=True)
    assert applied[0].applied and applied[0].advised_replicas == 1
    assert vram_used(sim0) + vram_used(sim1) == 15 * GIB
    dep = (await stub.ListDeployments(pool_pb2.ListDeploymentsRequest(), metadata=admin)).deployments[0]
    assert dep.replicas == 1 and len(dep.placements) == 1
    # At the floor (min 1 replica) the advice is to stay.
    got = await wait_for(advice, lambda a: a[0].current_replicas == 1)
    assert got[0].advised_replicas == 1

    app.deployments.views()
    reg = app.metrics_registry
    assert reg.get_sample_value("harness_pool_deployment_replicas", {"model": "small"}) == 1
    assert reg.get_sample_value("harness_pool_deployment_ready_replicas", {"model": "small"}) == 1
    assert reg.get_sample_value("harness_pool_deployment_last_load_seconds", {"model": "small"}) > 0


async def test_an_embedding_model_is_placed_loaded_and_unloaded_like_any_other(world, admin):
    stub, sim0, sim1 = world["stub"], *world["sims"]
    await wait_for(lambda: all_healthy_ok(stub, admin), bool)
    watcher = Watcher(stub, admin)
    reply = await stub.Deploy(
        pool_pb2.DeployRequest(model="embed", replicas=2, owner="agent:rag"), metadata=admin
    )
    assert sorted(p.endpoint for p in reply.deployment.placements) == ["sim-0", "sim-1"]
    assert vram_used(sim0) + vram_used(sim1) == 2 * 2 * GIB
    await watcher.until(
        lambda w: (
            w.model_state("sim-0", "embed-trt") == READY and w.model_state("sim-1", "embed-trt") == READY
        )
    )
    for sim in (sim0, sim1):  # each replica answers the embedding contract
        async with grpc.aio.insecure_channel(sim.address) as channel:
            resp = await pbg.GRPCInferenceServiceStub(channel).ModelInfer(
                embedding_tensors.build_request("embed-trt", ("ledger", "refund")), timeout=10
            )
        assert embedding_tensors.parse_response(resp, 2).vectors.shape == (2, 8)
    await stub.Undeploy(pool_pb2.UndeployRequest(model="embed", owner="agent:rag"), metadata=admin)
    assert vram_used(sim0) + vram_used(sim1) == 0
    await watcher.until(lambda w: w.model_state("sim-0", "embed-trt") != READY)
    watcher.close()
