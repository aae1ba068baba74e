"""Embeddings through the router's core: the embedding path's stages against a real engine
simulator (Triton's gRPC protocol) serving its embedding model, with the in-memory registry
stand-in, so policy, redaction and refusals can be set per test."""

from __future__ import annotations

import dataclasses
import re

import grpc
import numpy as np
import pytest
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2
from harness.pool.v1 import pool_pb2
from harness.registry.v1 import registry_pb2
from prometheus_client import CollectorRegistry

from services.common import context as reqctx
from services.common.errors import InvalidArgument, PermissionDenied, ResourceExhausted, Unavailable
from services.enginesim.embedder import vector
from services.enginesim.testing import start_enginesim
from services.router.budgets import MemoryBudgets, Subjects
from services.router.budgets.follower import CostFollower
from services.router.core import Call, EmbeddingInput, GenerationInput, Router, RouterPolicy
from services.router.dispatch import Dispatcher
from services.router.engine import EmbeddingRequest
from services.router.flow import FlowConfig, FlowController, MemoryRateLimiter
from services.router.metrics import RouterMetrics
from services.router.openai_engine import OpenAIEngine
from services.router.result_cache import MemoryResultCache
from services.router.scheduling import Scheduler
from services.router.triton import TritonPool
from services.router.views import EndpointView
from tests.helpers.router_fakes import (
    EMBED_DIMENSIONS,
    EMBED_MODEL,
    EMBED_TRITON_MODEL,
    MODEL,
    TRITON_MODEL,
    Events,
    FakeRegistry,
    agent,
    embedding_model,
)


def endpoint(name: str, address: str) -> pool_pb2.Endpoint:
    ready = pool_pb2.MODEL_STATE_READY
    return pool_pb2.Endpoint(
        name=name, address=address, kind="triton", health=pool_pb2.ENDPOINT_HEALTH_HEALTHY,
        models=[pool_pb2.EndpointModel(name=m, state=ready) for m in (TRITON_MODEL, EMBED_TRITON_MODEL)],
    )  # fmt: skip


def embedding_agent(**kw) -> registry_pb2.Agent:
    record = agent(**kw)
    record.versions[0].models.append(EMBED_MODEL)
    return record


@pytest.fixture
async def sim():
    handle = await start_enginesim(time_scale=1000.0, preload=False, load=(TRITON_MODEL, EMBED_TRITON_MODEL))
    yield handle
    await handle.stop()


@pytest.fixture
async def harness(sim):
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # the view is fed directly
    flow = FlowController(FlowConfig(initial_grant_interval_s=0.0))
    view = EndpointView(channel, on_change=flow.capacity_changed)
    view.apply([endpoint("sim-0", sim.address)])
    triton = TritonPool()
    registry = FakeRegistry(embedding_agent(pii=True), models={EMBED_MODEL: embedding_model()})
    events = Events()
    router = Router(
        registry, view, Dispatcher(view, Scheduler(seed=1), flow, triton), events, MemoryRateLimiter(),
        MemoryResultCache(), RouterMetrics(CollectorRegistry()), RouterPolicy(default_max_tokens=8, redaction_key="k"),
    )  # fmt: skip
    reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="a1", user="alice")))
    yield router, registry, view, events
    await triton.close()
    await channel.close()


async def embed(router: Router, *texts: str, **kw) -> Call:
    call = Call(EmbeddingInput(inputs=texts, **kw))
    await router.embed(call)
    return call


def engine_successes(sim, model: str) -> int:
    return sim.server.sim.engines()[model].stats.success


async def test_each_input_gets_its_vector_in_order_with_the_engines_token_counts(harness, sim):
    router, _, _, events = harness
    texts = ("The ledger policy covers refunds", "Refunds follow the ledger policy", "Weather in Lisbon")
    call = await embed(router, *texts)
    assert call.model == EMBED_MODEL and call.deployment == f"{EMBED_MODEL}@sim-0"
    assert call.vectors.shape == (3, EMBED_DIMENSIONS) and call.vectors.dtype == np.float32
    for text, row in zip(texts, call.vectors, strict=True):
        assert np.allclose(row, vector(text, EMBED_DIMENSIONS))  # deterministic, in the inputs' order
    cos = call.vectors @ call.vectors.T
    assert cos[0, 1] > cos[0, 2] + 0.2  # shared words bring texts together
    assert call.input_tokens == 5 + 5 + 3 and not call.usage_estimated  # the simulator's own counts
    assert engine_successes(sim, EMBED_TRITON_MODEL) == 3  # one engine sequence per text
    (usage,) = events.usage
    assert (usage.usage.input_tokens, usage.usage.output_tokens, usage.model) == (13, 0, EMBED_MODEL)
    audit = [e for e in events.audit if e.kind == common_pb2.AUDIT_EVENT_KIND_MODEL_CALL]
    assert audit[0].details["operation"] == "embed" and audit[0].details["inputs"] == 3
    assert audit[0].decision == common_pb2.DECISION_ALLOW


async def test_pii_is_redacted_in_every_input_before_the_engine_sees_it(harness):
    router, _, _, events = harness
    call = await embed(router, "no numbers here", "call me on 13812345678 today")
    assert np.allclose(call.vectors[1], vector("call me on [PHONE] today", EMBED_DIMENSIONS))
    assert not np.allclose(call.vectors[1], vector("call me on 13812345678 today", EMBED_DIMENSIONS))
    assert call.redactions == {"phone": 1}
    assert all("13812345678" not in str(e) for e in events.audit + events.usage)


async def test_the_model_is_named_by_catalog_or_triton_name_or_defaults_to_the_embedding_one(harness):
    router, *_ = harness
    assert (await embed(router, "a", model=EMBED_TRITON_MODEL)).model == EMBED_MODEL
    assert (await embed(router, "a")).model == EMBED_MODEL  # not the version's primary (a generation model)


@pytest.mark.parametrize(
    ("inputs", "kw", "words"),
    [
        ((), {}, "1 to 2048 inputs"),
        (("a",) * 2049, {}, "1 to 2048 inputs"),
        (("fine", "  "), {}, "input[1] is empty"),
        (("x" * 4000,), {}, "input[0] is ~1000 tokens"),
        (("a",), {"dimensions": 128}, "produces 384-dimensional vectors and cannot shorten them"),
        (("a",), {"model": MODEL}, "is a generation model, not an embedding model"),
    ],
)
async def test_bad_requests_are_refused_before_the_engine(harness, sim, inputs, kw, words):
    router, _, _, events = harness
    with pytest.raises(InvalidArgument, match=re.escape(words)):
        await embed(router, *inputs, **kw)
    assert engine_successes(sim, EMBED_TRITON_MODEL) == 0 and not events.usage
    assert "refused" in events.audit[-1].details  # the refusal is audited


async def test_dimensions_equal_to_the_models_are_served(harness):
    router, *_ = harness
    assert (await embed(router, "a", dimensions=EMBED_DIMENSIONS)).vectors.shape == (1, EMBED_DIMENSIONS)


async def test_generating_with_an_embedding_model_is_refused(harness):
    router, *_ = harness
    call = Call(GenerationInput(prompt="hello", model=EMBED_MODEL))
    with pytest.raises(InvalidArgument, match="is an embedding model"):
        async for _ in router.run(call):
            pass


async def test_policy_denial_of_the_model_is_permission_denied(harness):
    router, registry, _, events = harness
    registry.denied.add(f"model:{EMBED_MODEL}")
    with pytest.raises(PermissionDenied):
        await embed(router, "a")
    assert events.audit[-1].kind == common_pb2.AUDIT_EVENT_KIND_AUTHZ_DECISION


async def test_an_unreachable_endpoint_fails_over_once_and_none_left_is_unavailable(harness, sim):
    router, _, view, _ = harness
    view.apply([endpoint("dead", "127.0.0.1:1"), endpoint("sim-0", sim.address)])
    for _ in range(4):  # whichever the scheduler picks first, the batch is served
        call = await embed(router, "one", "two")
        assert call.endpoint.name == "sim-0" and call.vectors.shape == (2, EMBED_DIMENSIONS)
    view.apply([endpoint("dead", "127.0.0.1:1")])
    with pytest.raises(Unavailable):
        await embed(router, "one")


async def test_more_inputs_than_the_models_max_batch_size_are_sent_in_batches(harness, sim):
    router, *_ = harness
    texts = tuple(f"document number {i}" for i in range(150))  # the model's max_batch_size is 64
    call = await embed(router, *texts)
    assert call.vectors.shape == (150, EMBED_DIMENSIONS)
    assert np.allclose(call.vectors[149], vector(texts[149], EMBED_DIMENSIONS))
    assert engine_successes(sim, EMBED_TRITON_MODEL) == 150 and call.input_tokens == 150 * 3


async def test_budgets_reserve_and_bill_input_tokens_only(harness, sim):
    """A budget of 30 micro-USD at 1 micro-USD per input token: a call is billed its engine-counted
    input tokens; one whose estimate exceeds what is left is refused before the engine."""
    _, registry, view, events = harness
    budgets = MemoryBudgets()
    follower = CostFollower(grpc.aio.insecure_channel("127.0.0.1:1"), budgets)
    per_token = cost_pb2.Price(
        kind=cost_pb2.PRICE_KIND_MODEL_INPUT_TOKENS, subject=EMBED_MODEL, micro_usd=1_000_000
    )
    rule = cost_pb2.Budget(
        name="p-daily", scope=cost_pb2.BUDGET_SCOPE_PROJECT, subject="p", period=cost_pb2.BUDGET_PERIOD_DAILY,
        limit_micro_usd=30,
    )  # fmt: skip
    follower.apply([rule], [per_token])
    triton = TritonPool()
    flow = FlowController(FlowConfig(initial_grant_interval_s=0.0))
    router = Router(
        registry, view, Dispatcher(view, Scheduler(seed=1), flow, triton), events, MemoryRateLimiter(),
        MemoryResultCache(), RouterMetrics(CollectorRegistry()), RouterPolicy(redaction_key="k"), budgets=budgets,
    )  # fmt: skip
    try:
        call = await embed(router, "The ledger policy covers refunds", "Weather in Lisbon")
        assert call.input_tokens == 8 and call.cost_micro_usd == 8  # the engine's count, input only
        [charge] = budgets.table.applicable(Subjects(project="p"))
        assert budgets.spent(budgets.charge(charge, budgets._clock(), 0).key) == 8
        with pytest.raises(ResourceExhausted, match="budget 'p-daily'"):
            await embed(router, "refund " * 20)  # ~35 tokens estimated, 22 micro-USD left
        assert engine_successes(sim, EMBED_TRITON_MODEL) == 2
    finally:
        await triton.close()


async def test_an_openai_protocol_engine_embeds_too_and_a_dead_triton_fails_over_to_it(harness):
    """vLLM's `/v1/embeddings` as the simulator serves it: the same vectors and counts, and
    failover across kinds."""
    _, registry, view, events = harness
    load = (EMBED_TRITON_MODEL, "llama-3-8b-instruct-awq")
    sim = await start_enginesim(time_scale=1000.0, preload=False, load=load, protocol="openai")
    openai_engine, triton = OpenAIEngine(), TritonPool()
    flow = FlowController(FlowConfig(initial_grant_interval_s=0.0))
    dispatcher = Dispatcher(view, Scheduler(seed=1), flow, triton, openai=openai_engine)
    router = Router(
        registry, view, dispatcher, events, MemoryRateLimiter(), MemoryResultCache(),
        RouterMetrics(CollectorRegistry()), RouterPolicy(redaction_key="k"),
    )  # fmt: skip
    vllm = endpoint("vllm-0", sim.openai_url)
    vllm.kind, vllm.flavour = "openai", "vllm"
    try:
        view.apply([vllm])
        call = await embed(router, "The ledger policy covers refunds", "Weather in Lisbon")
        assert call.deployment == f"{EMBED_MODEL}@vllm-0" and not call.usage_estimated
        assert np.allclose(call.vectors[1], vector("Weather in Lisbon", EMBED_DIMENSIONS), atol=1e-6)
        assert call.input_tokens == 8
        view.apply([endpoint("dead", "127.0.0.1:1"), vllm])
        for _ in range(4):
            assert (await embed(router, "one")).endpoint.name == "vllm-0"
        with pytest.raises(InvalidArgument, match="does not support the Embeddings API"):
            await openai_engine.embed(sim.openai_url, EmbeddingRequest("llama-3-8b-instruct-awq", ("a",)), 10)
    finally:
        await openai_engine.close()
        await triton.close()
        await sim.stop()


async def test_tokens_per_minute_count_the_inputs(harness, sim):
    router, registry, _, _ = harness
    registry.agent_record.tpm_limit = 40  # input tokens: an embedding call has no output
    await embed(router, "refund " * 20)  # ~35 tokens estimated, 20 counted by the engine
    with pytest.raises(ResourceExhausted):
        await embed(router, "refund " * 20)
    assert engine_successes(sim, EMBED_TRITON_MODEL) == 1


async def test_a_request_id_a_caller_chose_never_names_another_callers_engine_request(harness):
    """As for generations: the engine's id is each call's own, whatever x-request-id said."""
    router, *_ = harness
    engine = router.dispatcher.engines["triton"]
    seen: list[str] = []
    real_embed = engine.embed

    async def recording(address, req, timeout):
        seen.append(req.request_id)
        return await real_embed(address, req, timeout)

    engine.embed = recording
    for user in ("alice", "bob"):
        ctx = reqctx.context_from_metadata([("x-request-id", "shared-id")])
        reqctx.set_current(dataclasses.replace(ctx, identity=reqctx.Identity(agent="a1", user=user)))
        assert (await embed(router, "The ledger policy")).request_id == "shared-id"
    assert len(seen) == 2 and len(set(seen)) == 2 and all(s.startswith("shared-id-") for s in seen), seen
