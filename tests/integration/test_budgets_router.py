"""Budgets wired into the router's Generate path (engine simulator, in-memory budgets), and the
cost follower that feeds them."""

from __future__ import annotations

import grpc
import pytest
from harness.cost.v1 import cost_pb2
from prometheus_client import CollectorRegistry

from services.common import context as reqctx
from services.common.errors import ResourceExhausted
from services.router.budgets import MemoryBudgets, Subjects
from services.router.budgets.follower import CostFollower
from services.router.core import Router, RouterPolicy
from services.router.dispatch import Dispatcher
from services.router.flow import FlowConfig, FlowController, MemoryRateLimiter
from services.router.metrics import RouterMetrics
from services.router.openai_engine import OpenAIEngine
from services.router.result_cache import MemoryResultCache
from services.router.scheduling import Scheduler
from services.router.triton import TritonPool
from services.router.views import EndpointView
from tests.integration.test_router_hot_path import MODEL, Events, FakeRegistry, agent, at, run, sim  # noqa: F401

PRICES = [
    cost_pb2.Price(kind=cost_pb2.PRICE_KIND_MODEL_INPUT_TOKENS, subject=MODEL, micro_usd=1_000_000),
    cost_pb2.Price(kind=cost_pb2.PRICE_KIND_MODEL_OUTPUT_TOKENS, subject=MODEL, micro_usd=1_000_000),
]


def budget(limit: int, spent: int = 0) -> cost_pb2.Budget:
    return cost_pb2.Budget(
        name="p-daily", scope=cost_pb2.BUDGET_SCOPE_PROJECT, subject="p", period=cost_pb2.BUDGET_PERIOD_DAILY,
        limit_micro_usd=limit, alert_percent=[50], spent_micro_usd=spent,
    )  # fmt: skip


@pytest.fixture
async def wired(sim):  # noqa: F811
    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    flow = FlowController(FlowConfig(initial_grant_interval_s=0.0))
    view = EndpointView(channel, on_change=flow.capacity_changed)
    view.apply([at(sim)])  # each test runs on a Triton-protocol and an OpenAI-protocol simulator
    triton, openai = TritonPool(), OpenAIEngine()
    events = Events()
    budgets = MemoryBudgets()
    follower = CostFollower(channel, budgets)
    limiter = MemoryRateLimiter()
    router = Router(
        FakeRegistry(agent()), view, Dispatcher(view, Scheduler(seed=1), flow, triton, openai=openai), events, limiter,
        MemoryResultCache(), RouterMetrics(CollectorRegistry()), RouterPolicy(default_max_tokens=8, redaction_key="k"),
        budgets=budgets,
    )  # fmt: skip
    reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="a1", user="alice")))
    yield router, follower, budgets, events, limiter
    await triton.close()
    await openai.close()
    await channel.close()


async def test_router_reserves_settles_and_refuses(wired):
    router, follower, budgets, events, _ = wired
    # "Summarise the ledger" = 20 chars ~ 5 tokens + 8 max tokens: 13 micro-USD at most.
    follower.apply([budget(limit=40, spent=10)], PRICES)
    assert follower.ready
    r = await run(router)
    actual = r.input_tokens + r.output_tokens
    assert 0 < actual <= 13
    # Rebuilt from the follower's ledger figure (10), then the actual cost was added.
    [charge] = budgets.table.applicable(Subjects(project="p"))
    key = budgets.charge(charge, budgets._clock(), 0).key
    assert budgets.spent(key) == 10 + actual
    [usage] = events.usage
    assert usage.actor.project == "p" and usage.usage.gpu_seconds > 0 and not usage.cached
    await run(router, temperature=0.5)
    with pytest.raises(ResourceExhausted) as e:
        await run(router, temperature=0.5)
    assert "budget 'p-daily' (project 'p', daily)" in e.value.message and "resets at" in e.value.message
    assert e.value.retry_after_ms > 0


async def test_follower_spent_per_period():
    budgets = MemoryBudgets()
    f = CostFollower(grpc.aio.insecure_channel("127.0.0.1:1"), budgets)
    b = budget(limit=100, spent=42)
    b.reset_time.seconds = 2_000_000_000
    f.apply([b], PRICES)
    rule = budgets.table.applicable(Subjects(project="p"))[0]
    assert await f.spent(rule, 1_999_000_000 * 1_000_000) == 42  # the polled period
    assert await f.spent(rule, 2_000_000_000 * 1_000_000) == 0  # a newer one, just begun
    assert budgets.prices.max_cost(MODEL, 1, 1) == 2


async def test_a_result_cache_answer_costs_nothing_in_the_counter_and_the_usage_event(wired):
    router, follower, budgets, events, _ = wired
    follower.apply([budget(limit=1_000)], PRICES)
    await run(router)
    [charge] = budgets.table.applicable(Subjects(project="p"))
    key = budgets.charge(charge, budgets._clock(), 0).key
    spent = budgets.spent(key)
    again = await run(router)  # the same deterministic request: answered from the cache
    assert again.cached == "hit" and budgets.spent(key) == spent
    first, second = events.usage
    assert first.usage.gpu_seconds > 0 and not first.cached
    assert second.cached and second.usage.gpu_seconds == 0


async def test_follower_says_when_the_cost_service_counts_another_timezone(caplog):
    """A router told Asia/Shanghai and a cost service on UTC would count different days."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from services.common.pricing import period_bounds

    budgets = MemoryBudgets(timezone="Asia/Shanghai")
    f = CostFollower(grpc.aio.insecure_channel("127.0.0.1:1"), budgets)
    now = datetime.now(UTC)
    utc_day, shanghai_day = budget(limit=100), budget(limit=100)
    utc_day.name, shanghai_day.name = "utc-day", "shanghai-day"
    utc_day.reset_time.FromDatetime(period_bounds(utc_day.period, now, ZoneInfo("UTC"))[1])
    shanghai_day.reset_time.FromDatetime(
        period_bounds(shanghai_day.period, now, ZoneInfo("Asia/Shanghai"))[1]
    )
    with caplog.at_level("ERROR", logger="harness.router.budgets"):
        f.apply([utc_day, shanghai_day], PRICES)
        assert f.period_mismatches == {"utc-day"} and not caplog.records  # once may be a boundary
        f.apply([utc_day, shanghai_day], PRICES)
        f.apply([utc_day, shanghai_day], PRICES)
    [record] = caplog.records  # said once
    assert "budget 'utc-day'" in record.message and "same timezone" in record.message


async def test_follower_keeps_polling_when_an_answer_cannot_be_applied(caplog):
    """A bug or a bad answer while applying must not end the loop: budgets would freeze."""
    budgets = MemoryBudgets()
    f = CostFollower(grpc.aio.insecure_channel("127.0.0.1:1"), budgets, interval_s=0.01)
    calls = 0

    async def poll_once():
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("unexpected answer")
        f.apply([budget(limit=100)], PRICES)

    async def rates():
        raise KeyError("deployment")

    f.poll_once, f.poll_gpu_rates = poll_once, rates
    f.start()
    try:
        assert await f.wait_ready(2.0)  # the second poll applied
    finally:
        await f.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert any("applying budgets and prices" in m for m in messages)
    assert any("reading GPU rates" in m for m in messages)
