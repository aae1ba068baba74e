"""The router core over real engine simulators: cache, coalescing, failover, admission, flow
control, bad input, metrics. Every test runs against a simulator speaking Triton's gRPC protocol
and one speaking the OpenAI API (vLLM-flavoured), and failover goes across kinds. The registry is
a small in-memory stand-in (its real mirror is tested in test_router_registry_mirror.py);
everything else is the production code."""

from __future__ import annotations

import asyncio
import dataclasses
from contextlib import aclosing

import grpc
import pytest
from harness.common.v1 import common_pb2
from harness.pool.v1 import pool_pb2
from harness.registry.v1 import registry_pb2
from prometheus_client import CollectorRegistry

from services.common import context as reqctx
from services.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.enginesim.testing import start_enginesim
from services.router.core import Call, GenerationInput, Router, RouterPolicy
from services.router.dispatch import Dispatcher
from services.router.engine import EngineRequest
from services.router.flow import FlowConfig, FlowController, MemoryRateLimiter
from services.router.metrics import RouterMetrics
from services.router.openai_engine import OpenAIEngine
from services.router.result_cache import MemoryResultCache
from services.router.scheduling import Scheduler
from services.router.triton import TritonPool
from services.router.views import EndpointView
from tests.helpers.router_fakes import MODEL, TRITON_MODEL, Events, FakeRegistry, agent


def endpoint(name: str, address: str, waiting: int = 0, kind: str = "triton") -> pool_pb2.Endpoint:
    return pool_pb2.Endpoint(
        name=name,
        address=address,
        kind=kind,
        flavour="vllm" if kind == "openai" else "",
        health=pool_pb2.ENDPOINT_HEALTH_HEALTHY,
        models=[
            pool_pb2.EndpointModel(
                name=TRITON_MODEL, state=pool_pb2.MODEL_STATE_READY, waiting_requests=waiting
            )
        ],
    )


@pytest.fixture(params=["triton", "openai"])
async def sim(request):
    handle = await start_enginesim(time_scale=1000.0, protocol=request.param)
    yield handle
    await handle.stop()


def kind_of(sim) -> str:
    return "openai" if sim.openai_url else "triton"


def address_of(sim) -> str:
    return sim.openai_url or sim.address


def at(sim, name: str = "sim-0", waiting: int = 0) -> pool_pb2.Endpoint:
    """The simulator as the pool reports it, in its protocol."""
    return endpoint(name, address_of(sim), waiting, kind_of(sim))


def dead_other_kind(sim) -> pool_pb2.Endpoint:
    """An endpoint of the other protocol that refuses connections: failover crosses kinds."""
    if kind_of(sim) == "openai":
        return endpoint("dead", "127.0.0.1:1")
    return endpoint("dead", "http://127.0.0.1:1", kind="openai")


@pytest.fixture
async def harness(sim):
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # the view is fed directly
    flow = FlowController(FlowConfig(initial_grant_interval_s=0.0))
    view = EndpointView(channel, on_change=flow.capacity_changed)
    view.apply([at(sim)])
    triton, openai = TritonPool(), OpenAIEngine()
    registry = FakeRegistry(agent())
    metrics = CollectorRegistry()
    router = Router(
        registry, view, Dispatcher(view, Scheduler(seed=1), flow, triton, openai=openai), Events(), MemoryRateLimiter(),
        MemoryResultCache(), RouterMetrics(metrics), RouterPolicy(default_max_tokens=8, redaction_key="k"),
    )  # fmt: skip
    reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="a1", user="alice")))
    yield router, registry, view, metrics
    await triton.close()
    await openai.close()
    await channel.close()


async def run(router: Router, **kwargs) -> Call:
    call = Call(GenerationInput(**{"prompt": "Summarise the ledger", **kwargs}))
    async for _ in router.run(call):
        pass
    return call


def successes(sim) -> int:
    return sum(e.stats.success for e in sim.server.sim.engines().values())


async def test_a_deterministic_result_is_served_from_the_cache(harness, sim):
    router, _, _, metrics = harness
    first = await run(router)
    before = successes(sim)
    second = await run(router)
    assert (first.cached, second.cached) == ("", "hit")
    assert "".join(second.text_parts) == "".join(first.text_parts) and second.output_tokens == 8
    assert successes(sim) == before  # nothing dispatched
    assert metrics.get_sample_value("harness_router_cache_hits_total", {"kind": "hit"}) == 1
    sampled = await run(router, temperature=0.7)  # not deterministic: never cached
    assert sampled.cached == "" and successes(sim) == before + 1


async def test_identical_requests_in_flight_are_coalesced(harness, sim):
    router, *_ = harness
    before = successes(sim)
    results = await asyncio.gather(*(run(router, prompt="same question") for _ in range(5)))
    assert successes(sim) == before + 1
    assert sorted(r.cached for r in results) == ["", "coalesced", "coalesced", "coalesced", "coalesced"]
    assert len({"".join(r.text_parts) for r in results}) == 1


async def test_the_result_cache_and_coalescing_never_cross_users_or_agents(harness, sim):
    router, registry, *_ = harness

    async def as_caller(agent_name: str, user: str) -> Call:
        reqctx.set_current(reqctx.new_context(reqctx.Identity(agent=agent_name, user=user)))
        return await run(router, prompt="the same question")

    await as_caller("a1", "alice")
    before = successes(sim)
    assert (await as_caller("a1", "bob")).cached == ""
    other = agent()
    other.name = "a2"
    registry.agent_record = other
    assert (await as_caller("a2", "alice")).cached == ""
    assert successes(sim) == before + 2
    # In flight at once: each caller's request is dispatched, none follows another's.
    results = await asyncio.gather(*(as_caller("a2", u) for u in ("carol", "dave", "erin")))
    assert [r.cached for r in results] == ["", "", ""] and successes(sim) == before + 5
    assert (await as_caller("a2", "carol")).cached == "hit"  # each one's own entry


async def test_a_request_id_a_caller_chose_never_names_another_callers_engine_request(harness, sim):
    """x-request-id is the caller's to choose, and engines key running requests by the id they
    get (vLLM refuses a second one "already running" and aborts by id): each call sends its own."""
    router, *_ = harness
    engine = router.dispatcher.engines[kind_of(sim)]
    seen: list[str] = []
    real_stream = engine.stream

    def recording(address, req, timeout):
        seen.append(req.request_id)
        return real_stream(address, req, timeout)

    engine.stream = recording
    for user in ("alice", "bob"):
        ctx = reqctx.context_from_metadata([("x-request-id", "shared-id")])
        reqctx.set_current(dataclasses.replace(ctx, identity=reqctx.Identity(agent="a1", user=user)))
        call = await run(router, temperature=0.5)
        assert call.request_id == "shared-id"  # still what the caller reads back and records say
    assert len(seen) == 2 and len(set(seen)) == 2, seen
    assert all(s.startswith("shared-id-") for s in seen), seen  # the engine's logs still name the call


async def test_bypass_cache_dispatches_again_and_refreshes_the_entry(harness, sim):
    router, *_ = harness
    await run(router, prompt="fresh please")
    before = successes(sim)
    fresh = await run(router, prompt="fresh please", bypass_cache=True)
    assert fresh.cached == "" and successes(sim) == before + 1
    assert (await run(router, prompt="fresh please")).cached == "hit"


async def test_an_endpoint_failing_before_the_first_token_fails_over_once(harness, sim):
    router, _, view, _ = harness
    # The dead endpoint looks idle, so the scheduler tries it first.
    view.apply([dead_other_kind(sim), at(sim, waiting=1)])
    result = await run(router, temperature=0.5)
    assert result.deployment == f"{MODEL}@sim-0" and result.output_tokens == 8
    assert result.failed_over_from == "dead" and not result.usage_estimated
    view.apply([dead_other_kind(sim)])
    with pytest.raises(Unavailable):
        await run(router, temperature=0.5)


async def test_rate_limit_and_context_length_are_checked_before_dispatch(harness, sim):
    router, registry, _, _ = harness
    registry.agent_record = agent(rpm=2)
    for _ in range(2):
        await run(router, temperature=0.5)
    with pytest.raises(ResourceExhausted, match="RPM limit of 2") as err:
        await run(router, temperature=0.5)
    assert int(err.value.trailers["retry-after-ms"]) > 0
    registry.agent_record, registry.context_length = agent(), 100
    with pytest.raises(InvalidArgument, match=r"~100 tokens.*max_tokens 8 exceeds.*context of 100"):
        await run(router, prompt="x" * 400)
    with pytest.raises(InvalidArgument, match="prompt is empty"):
        await run(router, prompt="   ")


async def test_a_stream_left_early_is_charged_for_what_was_sent(harness, sim):
    """An OpenAI-protocol engine reports usage only in its last event, which a caller who leaves
    early never lets arrive: the router then estimates the counts from the text (marked so)
    instead of recording, and charging, zero tokens."""
    router, *_ = harness
    call = Call(GenerationInput(prompt="Summarise the ledger", max_tokens=2000, bypass_cache=True))
    pieces = 0
    async with aclosing(router.run(call)) as chunks:
        async for chunk in chunks:
            pieces += bool(chunk.text)
            if pieces == 3:
                break
    assert call.status == "CANCELLED"
    assert 3 <= call.output_tokens < 2000 and call.input_tokens > 0, (call.input_tokens, call.output_tokens)
    assert call.usage_estimated == (kind_of(sim) == "openai")


async def test_sizes_and_the_context_length_are_checked_before_redaction(harness, sim):
    router, registry, _, _ = harness
    registry.agent_record = agent()
    registry.agent_record.data_policy.pii.add(kind="phone", mode=registry_pb2.MASK_MODE_MASK)
    call = Call(GenerationInput(prompt="13812345678 " * 4000))
    with pytest.raises(InvalidArgument, match="context of 8192 tokens"):
        async for _ in router.run(call):
            pass
    assert call.redactions == {}  # refused before any redaction work
    with pytest.raises(InvalidArgument, match="the limit is 1000000"):
        await run(router, prompt="13812345678 " * 90_000)


async def test_a_user_rate_limit_from_the_registry_applies_across_agents(harness, sim):
    router, registry, _, _ = harness
    await run(router, temperature=0.5)  # alice is not in the registry: no user limit
    registry.users["alice"] = registry_pb2.User(name="alice", rpm_limit=1)
    await run(router, temperature=0.5)
    with pytest.raises(ResourceExhausted, match="user 'alice' is over its RPM limit of 1") as err:
        await run(router, temperature=0.5)
    assert int(err.value.trailers["retry-after-ms"]) > 0
    # Another agent, same user: the user's budget is already spent.
    registry.agent_record = registry_pb2.Agent(
        name="a2",
        project="p",
        state=common_pb2.AGENT_STATE_ONLINE,
        versions=[registry_pb2.AgentVersion(version="v1", models=[MODEL])],
    )
    reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="a2", user="alice")))
    with pytest.raises(ResourceExhausted, match="user 'alice'"):
        await run(router, temperature=0.5)
    # A user TPM limit smaller than one request can never pass: INVALID_ARGUMENT, not a retry.
    registry.users["bob"] = registry_pb2.User(name="bob", tpm_limit=3)
    reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="a2", user="bob")))
    with pytest.raises(InvalidArgument, match="user 'bob' limit of 3 tokens per minute"):
        await run(router, temperature=0.5)


async def test_saturated_endpoints_queue_the_request_until_capacity_frees(harness, sim):
    router, _, view, metrics = harness
    view.apply([at(sim, waiting=50)])  # over the not-saturated threshold
    waiting = asyncio.create_task(run(router, temperature=0.5))
    await asyncio.sleep(0.05)
    assert not waiting.done() and router.dispatcher.flow.queued() == 1
    view.apply([at(sim, waiting=0)])  # the pool reports room
    result = await asyncio.wait_for(waiting, 10)
    assert result.queue_ms > 0 and result.output_tokens == 8
    assert (
        metrics.get_sample_value(
            "harness_router_queue_seconds_count", {"agent": "a1", "model": MODEL, "slo_class": "interactive"}
        )
        == 1
    )


async def test_a_deadline_shorter_than_the_queue_is_refused_without_dispatch(harness, sim):
    router, _, view, _ = harness
    view.apply([at(sim, waiting=50)])
    with pytest.raises(DeadlineExceeded):
        await run(router, temperature=0.5, timeout_s=0.05)
    assert router.dispatcher.flow.queued() == 0


async def test_no_ready_endpoint_names_the_model_and_metrics_count_outcomes(harness):
    router, _, view, metrics = harness
    view.apply([])
    with pytest.raises(Unavailable, match="no ready endpoint serves model 'llama-3-8b-instruct'"):
        await run(router, temperature=0.5)
    assert (
        metrics.get_sample_value(
            "harness_router_requests_total", {"agent": "a1", "outcome": "UNAVAILABLE", "frontdoor": "grpc"}
        )
        == 1
    )


async def test_the_agents_data_policy_redacts_the_prompt_before_the_model_and_the_log(harness, sim):
    router, registry, _, _ = harness
    policy = registry_pb2.DataPolicy(
        pii=[
            registry_pb2.PiiRule(kind="phone", mode=registry_pb2.MASK_MODE_MASK),
            registry_pb2.PiiRule(kind="cn_resident_id", mode=registry_pb2.MASK_MODE_HASH),
        ]
    )
    registry.agent_record = agent()
    registry.agent_record.data_policy.CopyFrom(policy)
    prompt = "客户13812345678的身份证11010519491231002X需要核对"
    result = await run(router, prompt=prompt)
    assert result.redactions == {"phone": 1, "cn_resident_id": 1}
    # The model saw the redacted prompt: the simulator's text is a function of its prompt.
    redacted, _ = await router.redactors.prompt(registry.agent_record, prompt, {})
    assert "13812345678" not in redacted and "11010519491231002X" not in redacted and "[PHONE]" in redacted
    direct = [c.text async for c in router.dispatcher.engines[kind_of(sim)].stream(
        address_of(sim), EngineRequest(model=TRITON_MODEL, prompt=redacted, max_tokens=8, request_id="x"), 30
    )]  # fmt: skip
    assert "".join(result.text_parts) == "".join(direct)
    events = router.events.audit
    kinds = [e.kind for e in events]
    assert common_pb2.AUDIT_EVENT_KIND_REDACTION in kinds
    for e in events:  # counts only: no raw value anywhere in what is recorded
        assert "13812345678" not in str(e) and "11010519491231002X" not in str(e)
    call = next(e for e in events if e.kind == common_pb2.AUDIT_EVENT_KIND_MODEL_CALL)
    assert dict(call.details["redactions"]) == {"phone": 1.0, "cn_resident_id": 1.0}


async def test_a_data_policy_that_cannot_be_applied_refuses_the_request(harness):
    router, registry, _, _ = harness
    registry.agent_record = agent()
    registry.agent_record.data_policy.pii.add(kind="no-such-kind")
    registry.agent_record.revision = 7
    with pytest.raises(FailedPrecondition, match="data policy cannot be applied"):
        await run(router)
