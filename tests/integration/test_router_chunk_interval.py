"""`x-harness-min-chunk-interval-ms` through the router's real gRPC server (the services'
interceptor, the Router servicer, the real core) over a real engine simulator: the text deltas
arrive merged, the first token still alone, and a bad value is INVALID_ARGUMENT. The core's other
refusals reach a gRPC caller the same way (an empty stop string)."""

from __future__ import annotations

import grpc
import pytest
from harness.common.v1 import common_pb2
from harness.router.v1 import router_pb2, router_pb2_grpc
from prometheus_client import CollectorRegistry

from services.common.config import ServerConfig
from services.common.server import start_server
from services.enginesim.testing import start_enginesim
from services.router.chunk_interval import HEADER
from services.router.core import Router, RouterPolicy
from services.router.dispatch import Dispatcher
from services.router.flow import FlowConfig, FlowController, MemoryRateLimiter
from services.router.metrics import RouterMetrics
from services.router.result_cache import MemoryResultCache
from services.router.scheduling import Scheduler
from services.router.servicer import RouterServicer
from services.router.triton import TritonPool
from services.router.views import EndpointView
from tests.helpers.grpc import agent_metadata
from tests.helpers.router_fakes import Events, FakeRegistry, agent
from tests.integration.test_router_hot_path import endpoint

TOKENS = 12


@pytest.fixture
async def generate(test_auth, mint_token):
    sim = await start_enginesim(time_scale=1000.0)
    flow = FlowController(FlowConfig(initial_grant_interval_s=0.0))
    view = EndpointView(grpc.aio.insecure_channel("127.0.0.1:1"), on_change=flow.capacity_changed)
    view.apply([endpoint("sim-0", sim.address)])
    triton = TritonPool()
    router = Router(
        FakeRegistry(agent()), view, Dispatcher(view, Scheduler(seed=1), flow, triton), Events(),
        MemoryRateLimiter(), MemoryResultCache(), RouterMetrics(CollectorRegistry()),
        RouterPolicy(default_max_tokens=TOKENS, redaction_key="k"),
    )  # fmt: skip

    def register(server) -> list[str]:
        router_pb2_grpc.add_RouterServicer_to_server(RouterServicer(router, tools=None), server)
        return [router_pb2.DESCRIPTOR.services_by_name["Router"].full_name]

    running = await start_server(ServerConfig(name="router", metrics_port=None, auth=test_auth), register)
    md = agent_metadata("a1", mint_token("alice"))
    channel = grpc.aio.insecure_channel(running.address)
    stub = router_pb2_grpc.RouterStub(channel)

    async def deltas(
        *extra: tuple[str, str], stop: tuple[str, ...] = ()
    ) -> tuple[list[str], router_pb2.GenerationSummary]:
        sampling = common_pb2.SamplingParams(max_tokens=TOKENS, stop=stop)
        request = router_pb2.GenerateRequest(
            prompt="Summarise the ledger policy", sampling=sampling,
            bypass_cache=True,
        )  # fmt: skip
        texts, summary = [], None
        async for resp in stub.Generate(request, metadata=(*md, *extra)):
            if resp.text_delta:
                texts.append(resp.text_delta)
            if resp.final:
                summary = resp.summary
        return texts, summary

    yield deltas
    await channel.close()
    await running.stop(0)
    await triton.close()
    await sim.stop()


async def test_deltas_within_the_interval_arrive_merged_and_the_first_token_alone(generate):
    plain, _ = await generate()
    assert len(plain) == TOKENS  # one message per token without the header
    merged, summary = await generate((HEADER, "1000"))
    # The whole answer streams in far less than a second: the first token, then the rest at once
    # with the final chunk (never held back for the interval).
    assert merged == [plain[0], "".join(plain[1:])]
    assert summary.usage.output_tokens == TOKENS
    again, _ = await generate((HEADER, "0"))  # 0: every delta as it comes
    assert again == plain


async def test_a_bad_interval_is_invalid_argument_with_what_to_send(generate):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await generate((HEADER, "5000"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "whole number of milliseconds from 0 to 1000" in err.value.details()


async def test_an_empty_stop_string_is_invalid_argument_naming_it(generate):
    """The OpenAI door refuses "" in `stop`; gRPC Generate took it before the core refused it."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await generate(stop=("\n", ""))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "sampling.stop[1] is empty: a stop string needs at least one character"
    texts, _ = await generate(stop=("\n",))
    assert texts
