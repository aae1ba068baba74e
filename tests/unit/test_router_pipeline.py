"""The router's request path on fakes (no servers): the director's hook order and its promise that
every completion runs, and each stage's own job."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import pytest
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2
from harness.registry.v1 import registry_pb2
from prometheus_client import CollectorRegistry

from services.common import context as reqctx
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from services.router.budgets import MemoryBudgets
from services.router.budgets.follower import CostFollower
from services.router.call import Call, Chunk, GenerationInput
from services.router.core import Router, RouterPolicy
from services.router.flow import MemoryRateLimiter
from services.router.metrics import RouterMetrics
from services.router.openai_http.wire import usage as openai_usage
from services.router.pipeline import Director, Stage
from services.router.result_cache import MemoryResultCache
from services.router.scheduling import Candidate
from services.router.servicer import to_summary
from services.router.triton import TritonChunk
from tests.helpers.router_fakes import MODEL, Events, FakeRegistry, agent


# --- the director --------------------------------------------------------------------------
class Trace(Stage):
    def __init__(self, name: str, log: list[str], fail_enter: bool = False, fail_complete: bool = False):
        self.name, self.log, self.fail_enter, self.fail_complete = name, log, fail_enter, fail_complete

    async def enter(self, call: Call) -> None:
        self.log.append(f"enter {self.name}")
        if self.fail_enter:
            raise ResourceExhausted(f"{self.name} refused")

    async def on_chunk(self, call: Call, chunk: Chunk) -> Chunk:
        return Chunk(chunk.text + self.name, chunk.final)

    async def complete(self, call: Call, error: BaseException | None) -> None:
        self.log.append(f"complete {self.name} {type(error).__name__ if error else 'ok'}")
        if self.fail_complete:
            raise RuntimeError(f"{self.name} broke")


class ListSource(Stage):
    name = "source"

    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks

    async def stream(self, call: Call):
        for chunk in self.chunks:
            yield chunk


def director(stages: list[Stage]) -> tuple[Director, CollectorRegistry]:
    registry = CollectorRegistry()
    return Director(stages, stages[-1], RouterMetrics(registry).stage_errors), registry


async def drain(d: Director, call: Call) -> list[Chunk]:
    return [c async for c in d.run(call)]


async def test_chunks_travel_back_in_reverse_and_completions_run_in_reverse():
    log: list[str] = []
    d, _ = director([Trace("a", log), Trace("b", log), ListSource([Chunk("x"), Chunk("", True)])])
    call = Call(GenerationInput(prompt="p"))
    chunks = await drain(d, call)
    assert [c.text for c in chunks] == ["xba", "ba"]  # b's hook runs before a's
    assert log == ["enter a", "enter b", "complete b ok", "complete a ok"]
    assert call.text == "xbaba" and call.status == "OK"


async def test_every_completion_runs_when_one_raises_and_the_failure_is_counted():
    log: list[str] = []
    stages = [Trace("a", log), Trace("b", log, fail_complete=True), ListSource([Chunk("x", True)])]
    d, registry = director(stages)
    await drain(d, Call(GenerationInput(prompt="p")))
    assert log[-2:] == ["complete b ok", "complete a ok"]
    assert registry.get_sample_value("harness_router_stage_completion_errors_total", {"stage": "b"}) == 1


async def test_a_refusal_completes_only_the_stages_entered_and_keeps_its_status():
    log: list[str] = []
    stages = [Trace("a", log), Trace("b", log, fail_enter=True), Trace("c", log), ListSource([Chunk("x")])]
    d, _ = director(stages)
    call = Call(GenerationInput(prompt="p"))
    with pytest.raises(ResourceExhausted):
        await drain(d, call)
    assert log == ["enter a", "enter b", "complete b ResourceExhausted", "complete a ResourceExhausted"]
    assert call.status == "RESOURCE_EXHAUSTED"


async def test_a_caller_leaving_mid_stream_closes_the_source_and_completes_as_cancelled():
    log: list[str] = []
    closed: list[bool] = []

    class Endless(Stage):
        name = "endless"

        async def stream(self, call):
            try:
                while True:
                    yield Chunk("t")
            finally:
                closed.append(True)

    d, _ = director([Trace("a", log), Endless()])
    call = Call(GenerationInput(prompt="p"))
    gen = d.run(call)
    await gen.__anext__()
    await gen.aclose()
    assert closed == [True] and call.status == "CANCELLED"
    assert log[-1] == "complete a GeneratorExit"


# --- the whole path on fakes ----------------------------------------------------------------------
@dataclass
class FakeEndpoints:
    ready: bool = True

    def gpu_type(self, name: str) -> str:
        return "H100"

    def candidates(self, model: str) -> list[Candidate]:
        return []


@dataclass
class FakeDispatcher:
    """Streams a scripted answer from one endpoint, as the real Dispatcher fills in the call."""

    texts: list[str] = field(default_factory=lambda: ["Hello", " world"])
    fail: Exception | None = None
    calls: int = 0
    estimated: bool = False  # the engine gave no usage: the final chunk's counts are estimates

    async def stream(self, call: Call):
        self.calls += 1
        call.endpoint = Candidate(name="sim-0", address="127.0.0.1:1", model="m")
        if self.fail is not None:
            raise self.fail
        for i, text in enumerate(self.texts):
            yield TritonChunk(text, False, 3, i + 1)
        call.gpu_seconds += 0.5
        yield TritonChunk("", True, 3, len(self.texts), estimated=self.estimated)


PRICES = [
    cost_pb2.Price(kind=cost_pb2.PRICE_KIND_MODEL_INPUT_TOKENS, subject=MODEL, micro_usd=1_000_000),
    cost_pb2.Price(kind=cost_pb2.PRICE_KIND_MODEL_OUTPUT_TOKENS, subject=MODEL, micro_usd=1_000_000),
]
PROJECT_BUDGET = cost_pb2.Budget(
    name="p-daily", scope=cost_pb2.BUDGET_SCOPE_PROJECT, subject="p", period=cost_pb2.BUDGET_PERIOD_DAILY,
    limit_micro_usd=1_000,
)  # fmt: skip


class FailingLimiter(MemoryRateLimiter):
    async def settle(self, reservation, actual_tokens, *, refund_request=False):
        raise Unavailable("rate-limit store unavailable")


class FailClosedEvents(Events):
    """An outbox that refuses the first audit event (fail-closed) and takes the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    def emit_audit(self, event) -> None:
        if not self.refused:
            self.refused += 1
            raise Unavailable("the audit event could not be recorded durably; refused")
        super().emit_audit(event)


@dataclass
class Rig:
    router: Router
    registry: FakeRegistry
    dispatcher: FakeDispatcher
    events: Events
    budgets: MemoryBudgets
    metrics: CollectorRegistry


def rig(
    agent_record=None, *, limiter=None, events=None, dispatcher=None, cache_ttl_s=300.0, budgets=True
) -> Rig:
    registry = FakeRegistry(agent_record or agent())
    events = events or Events()
    dispatcher = dispatcher or FakeDispatcher()
    metrics = CollectorRegistry()
    mem_budgets = MemoryBudgets()
    router = Router(
        registry, FakeEndpoints(), dispatcher, events, limiter or MemoryRateLimiter(), MemoryResultCache(),
        RouterMetrics(metrics), RouterPolicy(default_max_tokens=8, cache_ttl_s=cache_ttl_s, redaction_key="k"),
        budgets=mem_budgets if budgets else None,
    )  # fmt: skip
    reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="a1", user="alice")))
    return Rig(router, registry, dispatcher, events, mem_budgets, metrics)


async def run(r: Rig, **kwargs) -> tuple[Call, list[Chunk]]:
    call = Call(GenerationInput(**{"prompt": "Summarise the ledger", **kwargs}))
    chunks = [c async for c in r.router.run(call)]
    return call, chunks


async def test_the_last_chunk_says_final_and_the_call_holds_the_summary():
    r = rig()
    call, chunks = await run(r)
    assert [(c.text, c.final) for c in chunks] == [("Hello", False), (" world", False), ("", True)]
    assert (call.text, call.input_tokens, call.output_tokens) == ("Hello world", 3, 2)
    assert call.deployment == f"{MODEL}@sim-0" and call.gpu_type == "H100"
    assert call.finish_reason == common_pb2.FINISH_REASON_STOP
    assert [e.kind for e in r.events.audit] == [common_pb2.AUDIT_EVENT_KIND_MODEL_CALL]
    assert r.events.usage[0].usage.output_tokens == 2


async def test_estimated_usage_is_marked_on_the_call_the_records_the_answers_and_a_metric():
    r = rig(dispatcher=FakeDispatcher(estimated=True), cache_ttl_s=0)
    call, _ = await run(r)
    assert call.usage_estimated and call.output_tokens == 2
    assert r.events.audit[-1].details["usage_estimated"] is True
    assert r.events.usage[0].usage.estimated  # the usage record the cost service bills from
    assert to_summary(call).usage.estimated  # the final Generate chunk
    assert openai_usage(call)["estimated"] is True  # the OpenAI API's usage object
    counted = r.metrics.get_sample_value(
        "harness_router_estimated_usage_total", {"agent": "a1", "model": MODEL}
    )
    assert counted == 1
    exact = rig(cache_ttl_s=0)
    exact_call, _ = await run(exact)
    assert "usage_estimated" not in exact.events.audit[-1].details
    assert not exact.events.usage[0].usage.estimated and not to_summary(exact_call).usage.estimated
    assert "estimated" not in openai_usage(exact_call)
    assert (
        exact.metrics.get_sample_value(
            "harness_router_estimated_usage_total", {"agent": "a1", "model": MODEL}
        )
        is None
    )


async def test_settlement_failures_still_settle_the_budget_and_record_usage_and_audit():
    # The rate-limit store fails while settling, and the outbox refuses the first audit event:
    # the budget is still settled, and the usage and (the other) audit events are recorded.
    events = FailClosedEvents()
    r = rig(agent(pii=True), limiter=FailingLimiter(), events=events)
    CostFollower(grpc.aio.insecure_channel("127.0.0.1:1"), r.budgets).apply([PROJECT_BUDGET], PRICES)
    call, _ = await run(r, prompt="call 13812345678 about the ledger")
    assert call.budget_hold.charges and call.budget_hold.settled
    assert call.cost_micro_usd == 3 + 2  # one micro-USD a token: settled at the actual cost
    assert len(r.events.usage) == 1 and r.events.usage[0].usage.output_tokens == 2
    assert events.refused == 1  # the model-call record was refused ...
    assert [e.kind for e in r.events.audit] == [common_pb2.AUDIT_EVENT_KIND_REDACTION]  # ... the rest went on
    errors = r.metrics.get_sample_value
    assert errors("harness_router_stage_completion_errors_total", {"stage": "rate-admit"}) == 1
    assert errors("harness_router_stage_completion_errors_total", {"stage": "record"}) == 1
    assert errors("harness_router_requests_total", {"agent": "a1", "outcome": "OK", "frontdoor": "grpc"}) == 1


async def test_a_refused_call_is_audited_with_its_reason_and_bills_nothing():
    r = rig(agent(rpm=1))
    await run(r)
    with pytest.raises(ResourceExhausted):
        await run(r)
    refusal = r.events.audit[-1]
    assert refusal.status == "RESOURCE_EXHAUSTED" and refusal.decision == common_pb2.DECISION_DENY
    assert "rpm" in refusal.details["refused"].lower()
    assert len(r.events.usage) == 1 and r.dispatcher.calls == 1


async def test_a_draining_agent_is_refused_with_the_command_that_brings_it_back():
    r = rig(agent(state=common_pb2.AGENT_STATE_DRAINING))
    with pytest.raises(FailedPrecondition, match="harness agents state a1 online"):
        await run(r)
    refusal = r.events.audit[-1]  # the refusal is in the audit log, with its reason
    assert refusal.status == "FAILED_PRECONDITION" and refusal.decision == common_pb2.DECISION_DENY
    assert "draining" in refusal.details["refused"] and not r.events.usage
    assert r.events.audit[-1].status == "FAILED_PRECONDITION"  # refusals are audited too


async def test_identity_comes_from_the_context():
    r = rig()
    reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="a1")))
    with pytest.raises(Unauthenticated, match="no user credentials"):
        await run(r)
    reqctx.set_current(reqctx.new_context(reqctx.Identity(user="alice")))
    with pytest.raises(Unauthenticated, match="no agent identity"):
        await run(r)


async def test_authorization_denial_writes_one_decision_record():
    r = rig()
    r.registry.denied.add(f"model:{MODEL}")
    with pytest.raises(PermissionDenied, match="may not invoke model:llama-3-8b"):
        await run(r)
    assert [e.kind for e in r.events.audit] == [common_pb2.AUDIT_EVENT_KIND_AUTHZ_DECISION]


async def test_validation_runs_before_redaction_and_names_the_limit():
    r = rig(agent(pii=True))
    r.registry.context_length = 100
    with pytest.raises(InvalidArgument, match="context of 100 tokens"):
        await run(r, prompt="13812345678 " * 100)
    assert not r.events.usage and r.dispatcher.calls == 0
    with pytest.raises(InvalidArgument, match="top_p"):
        await run(r, top_p=2.0)


async def test_the_prompt_and_the_streamed_answer_are_redacted():
    dispatcher = FakeDispatcher(texts=["call 1381234", "5678 now"])
    r = rig(agent(pii=True), dispatcher=dispatcher)
    seen: list[str] = []
    original = dispatcher.stream

    async def spy(call):
        seen.append(call.prompt)
        async for c in original(call):
            yield c

    dispatcher.stream = spy  # type: ignore[method-assign]
    call, _ = await run(r, prompt="my phone is 13912345678")
    assert "13912345678" not in seen[0]
    assert "13812345678" not in call.text and "now" in call.text
    assert call.redactions.get("phone") == 2


async def test_a_deterministic_call_is_answered_from_the_cache_without_billing():
    r = rig()
    first, _ = await run(r, temperature=0.0)
    second, chunks = await run(r, temperature=0.0)
    assert r.dispatcher.calls == 1 and second.cached == "hit"
    assert [(c.text, c.final) for c in chunks] == [(first.text, True)]
    assert second.cost_micro_usd == 0 and second.charged_gpu_s == 0.0


async def test_a_dispatch_failure_refunds_the_rate_limit_and_is_recorded():
    r = rig(dispatcher=FakeDispatcher(fail=Unavailable("no ready endpoint")), cache_ttl_s=0)
    with pytest.raises(Unavailable):
        await run(r)
    assert r.events.audit[-1].status == "UNAVAILABLE"
    assert r.events.usage[0].usage.output_tokens == 0  # dispatched: usage says what it cost (nothing)


async def test_a_requests_model_is_resolved_by_either_name_in_pin_order_and_only_if_allowed():
    """What both front doors ask (Router.allowed_model): the first pinned, allowed model whose
    catalog or engine name it is; a pinned model the policy denies is not found."""
    record = agent()
    record.versions[0].models[:] = ["old", "new", "denied"]
    r = rig(record)
    r.registry.models.update({
        "old": registry_pb2.Model(name="old", triton_model="shared-engine"),
        "new": registry_pb2.Model(name="new", triton_model="shared-engine"),
        "denied": registry_pb2.Model(name="denied", triton_model="denied-engine"),
    })  # fmt: skip
    r.registry.denied.add("model:denied")
    assert [m.name for m in await r.router.allowed_models()] == ["old", "new"]
    assert (await r.router.allowed_model("shared-engine")).name == "old"  # pin order
    assert (await r.router.allowed_model("new")).name == "new"
    assert await r.router.allowed_model("denied") is None
    assert await r.router.allowed_model("denied-engine") is None
    assert await r.router.allowed_model("") is None
    r.registry.denied.add("model:old")
    assert (await r.router.allowed_model("shared-engine")).name == "new"  # the next allowed one
