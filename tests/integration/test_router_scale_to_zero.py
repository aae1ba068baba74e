"""Scale to zero end to end: a real pool server (port 0) unloads an idle model from a real
engine simulator; the router's endpoint view follows its WatchEndpoints, holds requests for
the model, asks the pool to wake it (ActivateDeployment, once for a burst) and dispatches them
to the simulator once the woken replica is READY."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import CollectorRegistry

from services.common.config import ServerConfig
from services.enginesim.testing import start_enginesim, write_catalog
from services.pool.app import serve
from services.pool.catalog import ModelSpec
from services.pool.config import PoolConfig
from services.pool.state import GIB, HEALTHY
from services.router.activation import ActivationMetrics, Activator, pool_activate
from services.router.dispatch import Dispatcher
from services.router.flow import FlowController
from services.router.scheduling import Scheduler
from services.router.triton import TritonPool
from services.router.views import EndpointView
from tests.helpers.grpc import user_metadata
from tests.helpers.polling import until
from tests.helpers.pool_server import sim_endpoints
from tests.helpers.router_fakes import DispatchCall

MODEL = "small-trt"


class UnaryWithMetadata(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds a caller's credentials to every unary call (what mTLS gives the router in a stack)."""

    def __init__(self, metadata) -> None:
        self._md = tuple(metadata)

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(
            details._replace(metadata=tuple(details.metadata or ()) + self._md), request
        )


class StreamWithMetadata(grpc.aio.UnaryStreamClientInterceptor):
    """The same for server streams (WatchEndpoints)."""

    def __init__(self, metadata) -> None:
        self._md = tuple(metadata)

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(
            details._replace(metadata=tuple(details.metadata or ()) + self._md), request
        )


def Call() -> DispatchCall:
    return DispatchCall(MODEL, "summarise the month", timeout_s=30.0)


@pytest.fixture
async def stack(tmp_path, test_auth, mint_token):
    # time_scale 1000: the 300 s cold start takes 0.3 s, long enough for requests to be held.
    catalog = write_catalog(
        tmp_path / "models.yaml", [{"name": MODEL, "memory_gb": 15, "load_time_s": 300, "preload": False}]
    )
    sim = await start_enginesim(catalog_path=catalog, gpu_memory_gb=80, time_scale=1000, preload=False)
    cfg = PoolConfig(
        endpoints=sim_endpoints([sim]), nvml=False, models=(ModelSpec("small", MODEL, 15 * GIB),),
        headroom=0.0, probe_interval_s=0.1, idle_check_interval_s=0.1, model_idle_ttl_s=(("small", 0.3),),
    )  # fmt: skip
    running, app = await serve(cfg, ServerConfig(name="pool", port=0, metrics_port=None, auth=test_auth))
    md = user_metadata(mint_token("router", "viewer"))
    channel = grpc.aio.insecure_channel(
        running.address, interceptors=[UnaryWithMetadata(md), StreamWithMetadata(md)]
    )
    view = EndpointView(channel)
    view.start()
    metrics = CollectorRegistry()
    activator = Activator(view, pool_activate(channel), 30.0, ActivationMetrics(metrics))
    triton = TritonPool()
    dispatcher = Dispatcher(view, Scheduler(seed=1), FlowController(), triton, activator=activator)
    yield app, view, dispatcher, metrics
    await activator.close()
    await view.stop()
    await triton.close()
    await channel.close()
    await running.stop(grace=0)
    await sim.stop()


async def answer(dispatcher: Dispatcher) -> str:
    return "".join([c.text async for c in dispatcher.stream(Call())])


async def test_a_burst_for_a_model_at_zero_is_held_woken_once_and_served(stack):
    app, view, dispatcher, metrics = stack
    await until(lambda: app.table.states() and app.table.states()[0].health == HEALTHY)
    assert await app.on_agent_online(["small"], agent="summariser") == {"small": ""}
    await until(lambda: view.scaled_to_zero(MODEL) and not view.candidates(MODEL))  # idle: unloaded
    answers = await asyncio.gather(*(answer(dispatcher) for _ in range(5)))
    assert all(answers)
    assert metrics.get_sample_value("harness_router_activation_holds_total", {"outcome": "served"}) == 5
    assert metrics.get_sample_value("harness_router_activations_total", {"outcome": "ok"}) == 1
    assert (
        app.metrics_registry.get_sample_value(
            "harness_pool_wakes_total", {"model": "small", "outcome": "loaded"}
        )
        == 1
    )
    assert not view.scaled_to_zero(MODEL) and view.candidates(MODEL)
