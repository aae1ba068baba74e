"""A mixed pool: one model served by a Triton-protocol simulator and an OpenAI-protocol one.
Requests reach both kinds, and when one kind's engine fails before the first token the call
fails over to the other, in both directions, with the engine's own usage."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import CollectorRegistry

from services.common import context as reqctx
from services.enginesim.faults import FaultSettings
from services.enginesim.testing import start_enginesim
from services.router.core import Router, RouterPolicy
from services.router.dispatch import Dispatcher
from services.router.flow import FlowConfig, FlowController, MemoryRateLimiter
from services.router.metrics import RouterMetrics
from services.router.openai_engine import OpenAIEngine
from services.router.result_cache import MemoryResultCache
from services.router.scheduling import Scheduler
from services.router.triton import TritonPool
from services.router.views import EndpointView
from tests.helpers.router_fakes import Events, FakeRegistry, agent
from tests.integration.test_router_hot_path import endpoint, run


@pytest.fixture
async def mixed():
    trt = await start_enginesim(time_scale=1000.0, protocol="triton")
    vllm = await start_enginesim(time_scale=1000.0, protocol="openai")
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # the view is fed directly
    flow = FlowController(FlowConfig(initial_grant_interval_s=0.0))
    view = EndpointView(channel, on_change=flow.capacity_changed)
    view.apply([endpoint("trt", trt.address), endpoint("vllm", vllm.openai_url, kind="openai")])
    triton, openai = TritonPool(), OpenAIEngine()
    router = Router(
        FakeRegistry(agent()), view, Dispatcher(view, Scheduler(seed=3), flow, triton, openai=openai), Events(),
        MemoryRateLimiter(), MemoryResultCache(), RouterMetrics(CollectorRegistry()),
        RouterPolicy(default_max_tokens=8, redaction_key="k", cache_ttl_s=0),
    )  # fmt: skip
    reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="a1", user="alice")))
    yield router, trt, vllm
    await triton.close()
    await openai.close()
    await channel.close()
    await trt.stop()
    await vllm.stop()


def served(sim) -> int:
    return sum(e.stats.success for e in sim.server.sim.engines().values())


async def test_one_model_on_both_kinds_serves_and_fails_over_across_kinds(mixed):
    router, trt, vllm = mixed
    calls = [await run(router, prompt=f"question {i}", temperature=0.5) for i in range(12)]
    assert all(c.output_tokens == 8 and not c.usage_estimated for c in calls)
    assert {c.endpoint.name for c in calls} == {"trt", "vllm"}  # both kinds take traffic
    assert served(trt) + served(vllm) == 12

    for failing, healthy in ((trt, "vllm"), (vllm, "trt")):
        failing.server.faults.settings = FaultSettings(rate=1.0, kinds=("unavailable",))
        for i in range(4):
            call = await run(router, prompt=f"after fault {i}", temperature=0.5)
            assert call.endpoint.name == healthy and call.output_tokens == 8
            assert call.failed_over_from in ("", "trt" if healthy == "vllm" else "vllm")
        assert failing.server.faults.injected["unavailable"] >= 1  # some call did try it first
        failing.server.faults.settings = FaultSettings(rate=0.0)
