"""Issue 8, "Done when": two router replicas (two RedisBudgets, each with its own connection)
share Redis and take 64 concurrent requests at a budget that fits about ten. The settled spend
never exceeds the hard limit and every refusal is RESOURCE_EXHAUSTED; the same holds when Redis
loses its state mid-run (the counter is then rebuilt from the ledger, once)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from harness.cost.v1 import cost_pb2
from prometheus_client import CollectorRegistry

from services.common.errors import ResourceExhausted
from services.router.budgets import BudgetRule, PriceTable, RedisBudgets, Subjects
from services.router.budgets.metrics import register_budget_metrics
from tests.helpers.polling import until

pytestmark = pytest.mark.redis

MODEL = "llama-3-8b"
PRICES = PriceTable({MODEL: (1_000_000, 2_000_000)})  # $1 / $2 per 1M tokens
PROMPT, MAX_TOKENS = 200, 400  # max cost: 200 + 800 = 1000 micro-USD
LIMIT = 10_000  # fits ten requests at their maximum
RULES = [
    BudgetRule("team-red", cost_pb2.BUDGET_SCOPE_TEAM, "red", cost_pb2.BUDGET_PERIOD_DAILY, LIMIT, (50, 80)),
    BudgetRule("bot-life", cost_pb2.BUDGET_SCOPE_AGENT, "bot", cost_pb2.BUDGET_PERIOD_LIFETIME, 10 * LIMIT),
]
WHO = Subjects(user="alice", team="red", project="p1", agent="bot")


class Ledger:
    """The cost service's view: the actual cost of every settled request (shipped instantly)."""

    def __init__(self) -> None:
        self.total = 0
        self.calls = 0

    def add(self, micro: int) -> None:
        self.total += micro

    async def spent(self, rule: BudgetRule, period_start_us: int | None) -> int:
        self.calls += 1
        return self.total


@pytest.fixture
async def prefix(redis_url) -> AsyncIterator[str]:
    p = f"harness-test:{uuid.uuid4().hex[:12]}:"
    yield p
    await wipe(redis_url, p)


async def wipe(redis_url: str, prefix: str) -> int:
    c = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in c.scan_iter(match=f"{prefix}*")]
        return await c.delete(*keys) if keys else 0
    finally:
        await c.aclose()


async def run_load(
    replicas, ledger: Ledger, *, spread_s: float, lost_after: int = 0, redis_url="", prefix=""
):
    admitted, refusals, settled = 0, [], []
    done = asyncio.Event()
    rng = random.Random(8)

    async def request(i: int) -> None:
        nonlocal admitted
        await asyncio.sleep(rng.uniform(0, spread_s))
        enf = replicas[i % len(replicas)]
        try:
            res = await enf.reserve(WHO, MODEL, PROMPT, MAX_TOKENS)
        except Exception as e:
            refusals.append(e)
            return
        admitted += 1
        assert res.cost == 1000
        await asyncio.sleep(rng.uniform(0, 0.03))  # the generation
        actual = PRICES.cost(MODEL, PROMPT, rng.randint(0, MAX_TOKENS))
        assert actual <= res.cost
        await enf.settle(res, actual)
        ledger.add(actual)
        settled.append(actual)
        if lost_after and len(settled) == lost_after:
            done.set()

    async def lose_state() -> None:
        await done.wait()
        assert await wipe(redis_url, prefix) > 0  # Redis restarted empty

    tasks = [request(i) for i in range(64)]
    if lost_after:
        tasks.append(lose_state())
    await asyncio.gather(*tasks)
    return admitted, refusals, settled


def replicas_on(redis_url: str, prefix: str, ledger: Ledger, **kw) -> list[RedisBudgets]:
    out = []
    for _ in range(2):
        # A generous Redis timeout: on a loaded test machine slowness must not become refusals.
        r = RedisBudgets.from_url(redis_url, prefix, ledger=ledger.spent, timeout_s=2.0, **kw)
        r.update(RULES, PRICES)
        out.append(r)
    return out


async def counter_spent(redis_url: str, prefix: str) -> int:
    c = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in c.scan_iter(match=f"{prefix}bud:team-red:*") if not k.endswith(b":x")]
        assert len(keys) == 1
        return int(await c.hget(keys[0], "spent"))
    finally:
        await c.aclose()


async def test_two_replicas_never_overspend(redis_url, prefix):
    ledger = Ledger()
    replicas = replicas_on(redis_url, prefix, ledger)
    try:
        admitted, refusals, settled = await run_load(replicas, ledger, spread_s=0.2)
    finally:
        for r in replicas:
            await r.aclose()
    assert sum(settled) <= LIMIT
    assert admitted == len(settled) >= 10 and admitted + len(refusals) == 64
    assert refusals and all(isinstance(e, ResourceExhausted) for e in refusals)
    assert all("budget 'team-red'" in e.message and e.retry_after_ms for e in refusals)
    assert await counter_spent(redis_url, prefix) == sum(settled)  # settled exactly once each
    # Each budget's counter was built from the ledger once (replicas may both read it; one writes).
    assert sum(r.rebuilds for r in replicas) == 2 and ledger.calls >= 2


async def test_two_replicas_redis_lost_mid_run(redis_url, prefix):
    ledger = Ledger()
    # Reservations live 0.3 s (requests take < 0.05 s), so budgets pause 0.3 s after the loss.
    replicas = replicas_on(redis_url, prefix, ledger, reservation_ttl_s=0.3)
    try:
        admitted, refusals, settled = await run_load(
            replicas, ledger, spread_s=1.0, lost_after=4, redis_url=redis_url, prefix=prefix
        )
    finally:
        for r in replicas:
            await r.aclose()
    assert sum(settled) <= LIMIT
    assert admitted == len(settled) and admitted + len(refusals) == 64
    assert refusals and all(isinstance(e, ResourceExhausted) for e in refusals)
    # Rebuilt from the ledger once before the loss and once after (per budget), never twice.
    assert sum(r.rebuilds for r in replicas) == 4
    assert any("paused" in e.message for e in refusals)  # the recovery hold was exercised
    assert any("budget 'team-red'" in e.message for e in refusals)  # and the limit was reached


async def test_in_flight_reservations_survive_a_redis_loss(redis_url, prefix):
    """Redis loses its state while replica A has six requests in flight. A's renewals register
    them again, so once the recovery pause ends replica B admits only what is left of the
    limit, not the whole limit again (which would overspend when A's requests settle)."""
    ledger = Ledger()
    a, b = replicas_on(redis_url, prefix, ledger, reservation_ttl_s=0.3)
    metrics = CollectorRegistry()  # replica A's /metrics
    register_budget_metrics(metrics, a)
    try:
        for r in (a, b):  # both have seen the store's epoch
            await r.settle(await r.reserve(WHO, MODEL, PROMPT, MAX_TOKENS), 0)
        in_flight = [await a.reserve(WHO, MODEL, PROMPT, MAX_TOKENS) for _ in range(6)]
        a.start()  # renews every 0.1 s
        assert await wipe(redis_url, prefix) > 0
        with pytest.raises(ResourceExhausted, match="paused"):
            await b.reserve(WHO, MODEL, PROMPT, MAX_TOKENS)
        await asyncio.sleep(0.4)  # the pause (0.3 s, held by Redis) ends
        # A renews every 0.1 s; a loaded machine may not have run a renewal since the wipe yet.
        await until(lambda: a.reregistered >= 6)
        assert a.reregistered == 6
        assert metrics.get_sample_value("harness_router_budget_reservations_reregistered_total") == 6
        assert metrics.get_sample_value("harness_router_budget_reservations") == 6
        admitted = []
        for _ in range(5):
            try:
                admitted.append(await b.reserve(WHO, MODEL, PROMPT, MAX_TOKENS))
            except ResourceExhausted as e:
                assert "budget 'team-red'" in e.message
        assert len(admitted) == 4  # 6 in flight + 4 = the limit
        for res in in_flight + admitted:
            await (a if res in in_flight else b).settle(res, 1000)
        assert await counter_spent(redis_url, prefix) == 10 * 1000 <= LIMIT
        assert metrics.get_sample_value("harness_router_budget_reservations") == 0
        assert metrics.get_sample_value("harness_router_budget_counter_rebuilds_total") == a.rebuilds
    finally:
        for r in (a, b):
            await r.aclose()
