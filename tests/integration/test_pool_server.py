"""The pool server on a real port, probing in-process fake Tritons (and the engine simulator)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from harness.pool.v1 import pool_pb2, pool_pb2_grpc

from services.common.config import ServerConfig
from services.pool.app import serve
from services.pool.config import PoolConfig
from services.pool.state import GIB, EndpointSpec
from tests.helpers.fake_triton import FakeTriton
from tests.helpers.grpc import user_metadata
from tests.helpers.polling import wait_for

HEALTHY = pool_pb2.ENDPOINT_HEALTH_HEALTHY
UNHEALTHY = pool_pb2.ENDPOINT_HEALTH_UNHEALTHY
READY = pool_pb2.MODEL_STATE_READY


@pytest.fixture
async def fake():
    f = FakeTriton({"llama": "READY", "mistral": "UNAVAILABLE"})
    f.loads["llama"] = (3, 2, 0.4)  # active, waiting, kv fraction
    await f.start()
    yield f
    await f.close()


@pytest.fixture
async def pool(test_auth, fake):
    spec = EndpointSpec.make(
        "sim-0",
        fake.address,
        metrics_url=fake.metrics_url,
        gpu_type="H100-80GB",
        gpu_count=1,
        gpu_memory_bytes=80 * GIB,
        labels={"zone": "a"},
    )
    # Default probe settings (0.5 s, 2 misses): the timings asserted below are the real ones.
    cfg = PoolConfig(endpoints=(spec,), nvml=False)
    running, app = await serve(cfg, ServerConfig(name="pool", port=0, metrics_port=None, auth=test_auth))
    channel = grpc.aio.insecure_channel(running.address)
    yield pool_pb2_grpc.PoolStub(channel), app
    await channel.close()
    await running.stop(grace=0)


@pytest.fixture
def user(mint_token):
    return user_metadata(mint_token("alice"))


@pytest.fixture
def admin(mint_token):
    return user_metadata(mint_token("ops", "admin"))


def endpoint(stub, md, name: str = "sim-0"):
    async def fetch():
        eps = (await stub.ListEndpoints(pool_pb2.ListEndpointsRequest(), metadata=md)).endpoints
        return next((e for e in eps if e.name == name), None)

    return fetch


def healthy(e):
    return e is not None and e.health == HEALTHY


async def test_lists_endpoints_with_ready_models_load_and_gpus(pool, user):
    stub, app = pool
    ep = await wait_for(endpoint(stub, user), lambda e: healthy(e) and e.models[0].active_requests == 3)
    assert (ep.address, ep.gpu_type, ep.gpu_count, ep.gpu_memory_bytes) == (
        ep.address,
        "H100-80GB",
        1,
        80 * GIB,
    )
    assert dict(ep.labels) == {"zone": "a"} and ep.last_seen.seconds > 0
    assert ep.gpu_utilization == pytest.approx(0.25)
    llama, mistral = ep.models
    assert (llama.name, llama.version, llama.state) == ("llama", "1", READY)
    assert (llama.active_requests, llama.waiting_requests, llama.kv_cache_fraction) == (3, 2, 0.4)
    assert mistral.state == pool_pb2.MODEL_STATE_UNAVAILABLE

    by_model = await stub.ListEndpoints(pool_pb2.ListEndpointsRequest(model="llama"), metadata=user)
    assert [e.name for e in by_model.endpoints] == ["sim-0"]
    for model in ("mistral", "unknown"):
        assert not (
            await stub.ListEndpoints(pool_pb2.ListEndpointsRequest(model=model), metadata=user)
        ).endpoints

    gpus = (await stub.ListGpus(pool_pb2.ListGpusRequest(), metadata=user)).gpus
    assert [(g.endpoint, g.index, g.name, g.source) for g in gpus] == [
        ("sim-0", 0, "H100-80GB", "triton_metrics")
    ]
    assert (gpus[0].memory_total_bytes, gpus[0].memory_used_bytes) == (80 * GIB, 20 * GIB)
    assert not (await stub.ListGpus(pool_pb2.ListGpusRequest(endpoint="other"), metadata=user)).gpus

    reg = app.metrics_registry
    assert reg.get_sample_value("harness_pool_endpoint_healthy", {"endpoint": "sim-0"}) == 1.0
    labels = {"endpoint": "sim-0", "gpu": "0"}
    assert reg.get_sample_value("harness_pool_gpu_memory_used_bytes", labels) == 20 * GIB
    assert reg.get_sample_value("harness_pool_gpu_utilization", labels) == pytest.approx(0.25)


async def test_stopped_endpoint_goes_unhealthy_and_recovers_on_same_port(pool, fake, user):
    stub, app = pool
    await wait_for(endpoint(stub, user), healthy)
    port = fake.port
    await fake.stop()
    ep = await wait_for(endpoint(stub, user), lambda e: e.health == UNHEALTHY, timeout=20.0)
    assert all(m.state != READY for m in ep.models)
    assert not (
        await stub.ListEndpoints(pool_pb2.ListEndpointsRequest(model="llama"), metadata=user)
    ).endpoints
    assert (
        app.metrics_registry.get_sample_value("harness_pool_endpoint_healthy", {"endpoint": "sim-0"}) == 0.0
    )

    await fake.start()
    assert fake.port == port
    ep = await wait_for(
        endpoint(stub, user), lambda e: healthy(e) and e.models[0].state == READY, timeout=20.0
    )


async def test_not_ready_server_is_unhealthy(pool, fake, user):
    stub, _ = pool
    await wait_for(endpoint(stub, user), healthy)
    fake.ready = False
    await wait_for(endpoint(stub, user), lambda e: e.health == UNHEALTHY, timeout=20.0)


async def test_failed_metrics_scrape_does_not_mark_endpoint_down(pool, fake, admin, user):
    stub, _ = pool
    ep = pool_pb2.Endpoint(name="no-metrics", address=fake.address, metrics_url="http://127.0.0.1:1/metrics")
    await stub.RegisterEndpoint(pool_pb2.RegisterEndpointRequest(endpoint=ep), metadata=admin)
    got = await wait_for(endpoint(stub, user, "no-metrics"), healthy)
    assert got.models[0].state == READY and got.models[0].active_requests == 0


async def test_register_deregister_and_bad_inputs(pool, admin, user, mint_token):
    stub, _ = pool
    other = FakeTriton({"qwen": "READY"})
    await other.start()
    try:
        ep = pool_pb2.Endpoint(name="sim-1", address=other.address, metrics_url=other.metrics_url)
        resp = await stub.RegisterEndpoint(pool_pb2.RegisterEndpointRequest(endpoint=ep), metadata=admin)
        assert resp.endpoint.name == "sim-1" and resp.endpoint.health == pool_pb2.ENDPOINT_HEALTH_UNSPECIFIED
        await wait_for(endpoint(stub, user, "sim-1"), healthy)
        by_model = await stub.ListEndpoints(pool_pb2.ListEndpointsRequest(model="qwen"), metadata=user)
        assert [e.name for e in by_model.endpoints] == ["sim-1"]
        await stub.DeregisterEndpoint(pool_pb2.DeregisterEndpointRequest(name="sim-1"), metadata=admin)
        assert await endpoint(stub, user, "sim-1")() is None
    finally:
        await other.close()

    async def code_of(call) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        return err.value.code()

    def register(ep, md=admin):
        return stub.RegisterEndpoint(pool_pb2.RegisterEndpointRequest(endpoint=ep), metadata=md)

    bad = grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(register(pool_pb2.Endpoint(name="", address="127.0.0.1:1"))) == bad
    assert await code_of(register(pool_pb2.Endpoint(name="bad name", address="127.0.0.1:1"))) == bad
    assert await code_of(register(pool_pb2.Endpoint(name="x", address="no-port"))) == bad
    assert await code_of(register(pool_pb2.Endpoint(name="x", address="h:1", metrics_url="nope"))) == bad
    assert await code_of(stub.RegisterEndpoint(pool_pb2.RegisterEndpointRequest(), metadata=admin)) == bad
    good = pool_pb2.Endpoint(name="x", address="127.0.0.1:1")
    assert await code_of(register(good, user)) == grpc.StatusCode.PERMISSION_DENIED
    assert await code_of(stub.RegisterEndpoint(pool_pb2.RegisterEndpointRequest(endpoint=good))) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert (
        await code_of(
            stub.DeregisterEndpoint(pool_pb2.DeregisterEndpointRequest(name="ghost"), metadata=admin)
        )
        == grpc.StatusCode.NOT_FOUND
    )
    unauth = grpc.StatusCode.UNAUTHENTICATED
    assert await code_of(stub.ListEndpoints(pool_pb2.ListEndpointsRequest())) == unauth
    assert await code_of(stub.ListGpus(pool_pb2.ListGpusRequest())) == unauth
    watch = stub.WatchEndpoints(pool_pb2.WatchEndpointsRequest())
    assert await code_of(watch.read()) == unauth
    watch = stub.WatchEndpoints(pool_pb2.WatchEndpointsRequest(since_revision=-1), metadata=user)
    assert await code_of(watch.read()) == bad


async def test_watch_snapshot_then_live_updates(pool, fake, admin, user):
    stub, _ = pool
    await wait_for(endpoint(stub, user), lambda e: healthy(e) and e.models[0].active_requests == 3)
    call = stub.WatchEndpoints(pool_pb2.WatchEndpointsRequest(since_revision=0), metadata=user)
    first = await asyncio.wait_for(call.read(), 10)
    assert first.snapshot and [e.name for e in first.endpoints] == ["sim-0"] and first.revision > 0
    assert first.endpoints[0].health == HEALTHY

    fake.models["mistral"] = "READY"
    while True:  # the next change is ours (nothing else moves in the fake)
        msg = await asyncio.wait_for(call.read(), 10)
        assert not msg.snapshot and msg.revision > first.revision
        states = {m.name: m.state for e in msg.endpoints if e.name == "sim-0" for m in e.models}
        if states.get("mistral") == READY:
            break
    call.cancel()

    # A client at the current revision gets only what happens after it.
    live = stub.WatchEndpoints(pool_pb2.WatchEndpointsRequest(since_revision=msg.revision), metadata=user)
    ep = pool_pb2.Endpoint(name="late", address="127.0.0.1:1")
    await stub.RegisterEndpoint(pool_pb2.RegisterEndpointRequest(endpoint=ep), metadata=admin)
    nxt = await asyncio.wait_for(live.read(), 10)
    assert not nxt.snapshot and [e.name for e in nxt.endpoints] == ["late"] and nxt.revision > msg.revision
    await stub.DeregisterEndpoint(pool_pb2.DeregisterEndpointRequest(name="late"), metadata=admin)
    while True:
        gone = await asyncio.wait_for(live.read(), 10)
        if gone.removed:
            break
    assert list(gone.removed) == ["late"]
    live.cancel()

    # A revision this process cannot replay (an earlier pool process's) gets a snapshot.
    old = stub.WatchEndpoints(pool_pb2.WatchEndpointsRequest(since_revision=5), metadata=user)
    snap = await asyncio.wait_for(old.read(), 10)
    assert snap.snapshot and [e.name for e in snap.endpoints] == ["sim-0"]
    old.cancel()


async def test_against_engine_simulator(pool, admin, user):
    testing = pytest.importorskip("services.enginesim.testing")
    stub, _ = pool
    sim = await testing.start_enginesim(time_scale=1000)
    stopped = False
    try:
        ep = pool_pb2.Endpoint(
            name="sim-real",
            address=sim.address,
            metrics_url=sim.metrics_url,
            gpu_type="H100-80GB",
            gpu_count=1,
        )
        await stub.RegisterEndpoint(pool_pb2.RegisterEndpointRequest(endpoint=ep), metadata=admin)
        got = await wait_for(
            endpoint(stub, user, "sim-real"),
            lambda e: healthy(e) and any(m.state == READY for m in e.models),
            timeout=10,
        )
        ready = [m.name for m in got.models if m.state == READY]
        assert "llama-3-8b-instruct" in ready
        assert got.gpu_memory_bytes == 80 * GIB  # not registered: taken from nv_gpu_memory_total_bytes
        by_model = await stub.ListEndpoints(pool_pb2.ListEndpointsRequest(model=ready[0]), metadata=user)
        assert "sim-real" in [e.name for e in by_model.endpoints]
        gpus = (await stub.ListGpus(pool_pb2.ListGpusRequest(endpoint="sim-real"), metadata=user)).gpus
        assert len(gpus) == 1 and gpus[0].source == "triton_metrics" and gpus[0].memory_used_bytes > 0
        await sim.stop()
        stopped = True
        await wait_for(endpoint(stub, user, "sim-real"), lambda e: e.health == UNHEALTHY, timeout=20.0)
    finally:
        if not stopped:
            await sim.stop()
