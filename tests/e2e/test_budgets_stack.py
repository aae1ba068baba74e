"""Issue 8, "Done when", on the real stack: the two router processes behind Envoy share Redis,
and 64 concurrent requests at a budget that fits about ten never settle more than its hard
limit; every refusal is RESOURCE_EXHAUSTED naming the budget. The same holds when Redis loses
every key of the stack in the middle of the run (a restarted, empty Redis)."""

from __future__ import annotations

import asyncio
import re
import time
from decimal import Decimal

import grpc
import redis.asyncio as aioredis
from harness.cost.v1 import cost_pb2, cost_pb2_grpc

from tests.e2e.calls import bearer, demo_channel, generate
from tests.helpers.router_budgets import until_routers_read_budgets

BUDGET = "e2e-alice-daily"
# The budget fits this many requests at the most one may cost when the run starts. That most is
# read from the routers (their GPU-time bound learns from settled requests, so it falls as the
# session's earlier requests settle), not assumed.
FITS = 10
MAX_COST = re.compile(r"this request may cost up to \$([0-9.,]+)")


def prompt(i: int) -> str:
    return f"Summarise ledger note {i:02d}"  # all of one length, so all of one maximum cost


async def set_limit(cost, admin, budget, headroom: int, routers: list[str]) -> None:
    """Sets the budget's limit to alice's spend today plus `headroom`; waits until both routers
    (their metrics URLs) have read it (they re-read budgets every 0.5 s in the test stack)."""
    budget.limit_micro_usd = 10**12
    got = await cost.SetBudget(cost_pb2.SetBudgetRequest(budget=budget), metadata=admin, timeout=10)
    budget.limit_micro_usd = got.budget.spent_micro_usd + headroom
    await cost.SetBudget(cost_pb2.SetBudgetRequest(budget=budget), metadata=admin, timeout=10)
    await until_routers_read_budgets(routers)


async def most_one_request_may_cost(channel, cost, admin, budget, routers: list[str]) -> int:
    """Micro-USD the routers reserve for one load request now, read from the refusals of a
    budget with no headroom (one probe per router behind Envoy, keeping the smallest)."""
    await set_limit(cost, admin, budget, 1, routers)
    seen = []
    for _ in range(4):
        try:
            await generate(channel, admin, prompt=prompt(0), max_tokens=16)
        except grpc.aio.AioRpcError as e:
            found = MAX_COST.search(e.details() or "")
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and found, e.details()
            seen.append(int(Decimal(found.group(1).replace(",", "")) * 1_000_000))
            continue
        raise AssertionError("a budget with 1 micro-USD of headroom admitted a request")
    return min(seen)


async def run_budgeted_load(stack, budget_name: str, lose_redis_after: int = 0):
    """Sets a daily budget on alice of (her spend today + room for about FITS requests), fires 64
    concurrent requests (optionally wiping the stack's Redis keys once `lose_redis_after` have
    finished), and returns (admitted, refusals, spent, limit) once every admitted request is in
    the ledger."""
    admin = bearer(stack.token("alice"))
    routers = stack.env["HARNESS_ROUTER_METRICS"].split(",")
    async with demo_channel(stack) as channel:
        cost = cost_pb2_grpc.CostStub(channel)
        budget = cost_pb2.Budget(
            name=budget_name, scope=cost_pb2.BUDGET_SCOPE_USER, subject="alice",
            period=cost_pb2.BUDGET_PERIOD_DAILY, limit_micro_usd=10**12,
        )  # fmt: skip
        start = cost_pb2.ReportRequest(group_by=["user"])
        try:
            each = await most_one_request_may_cost(channel, cost, admin, budget, routers)
            await set_limit(cost, admin, budget, FITS * each, routers)
            start.start_time.GetCurrentTime()
            finished = 0
            lost = asyncio.Event()

            async def one(i: int):
                nonlocal finished
                try:
                    return await generate(channel, admin, prompt=prompt(i), max_tokens=16)
                except grpc.aio.AioRpcError as e:
                    return e
                finally:
                    finished += 1
                    if finished == lose_redis_after:
                        lost.set()

            async def lose_redis() -> None:
                await lost.wait()
                assert await wipe(stack) > 0  # Redis restarted empty

            calls = [one(i) for i in range(64)]
            outcomes = (await asyncio.gather(*calls, *([lose_redis()] if lose_redis_after else [])))[:64]
            refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
            admitted = len(outcomes) - len(refused)

            # Every admitted request reaches the ledger (router outboxes ship within ~50 ms).
            deadline = time.monotonic() + 20
            while True:
                report = await cost.Report(start, metadata=admin, timeout=10)
                served = sum(r.requests for r in report.rows if r.group["user"] == "alice")
                if served >= admitted or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert served == admitted
            got = await cost.GetBudget(
                cost_pb2.GetBudgetRequest(name=budget_name), metadata=admin, timeout=10
            )
            return admitted, refused, got.budget.spent_micro_usd, budget.limit_micro_usd
        finally:
            await cost.DeleteBudget(
                cost_pb2.DeleteBudgetRequest(name=budget_name), metadata=admin, timeout=10
            )
            await until_routers_read_budgets(routers)  # forgotten before other tests run as alice


async def wipe(stack) -> int:
    """Deletes every Redis key of this stack (harness up's per-root prefix)."""
    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{stack.redis_prefix}*")]
        return await client.delete(*keys) if keys else 0
    finally:
        await client.aclose()


def check_refusals(refused, budget_name: str) -> None:
    for e in refused:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
        assert f"budget '{budget_name}'" in e.details() or "budgets are paused" in e.details(), e.details()


async def test_two_routers_sharing_redis_never_overspend_a_budget(stack, redis_url):
    assert stack.redis_url == redis_url, "the session stack's routers must share Redis"
    admitted, refused, spent, limit = await run_budgeted_load(stack, BUDGET)
    assert refused and admitted >= 1, f"{admitted} admitted, {len(refused)} refused"
    check_refusals(refused, BUDGET)
    assert all("paused" not in e.details() for e in refused)
    assert 0 < spent <= limit


async def test_redis_losing_its_keys_mid_run_admits_nothing_beyond_the_limit(stack, redis_url):
    assert stack.redis_url == redis_url
    name = BUDGET + "-redis-lost"
    try:
        admitted, refused, spent, limit = await run_budgeted_load(stack, name, lose_redis_after=4)
    finally:
        await until_budgets_resume(stack)
    assert refused and admitted >= 1, f"{admitted} admitted, {len(refused)} refused"
    check_refusals(refused, name)
    assert spent <= limit


async def until_budgets_resume(stack) -> None:
    """The recovery pause (5 s in the test stack) also holds the demo's ledger-monthly budget:
    wait it out so later tests are not refused."""
    async with demo_channel(stack) as channel:
        deadline = time.monotonic() + 30
        while True:
            try:
                await generate(
                    channel, bearer(stack.token("alice")), prompt=f"resume? {time.time()}", max_tokens=2
                )
                return
            except grpc.aio.AioRpcError as e:
                assert "paused" in e.details() and time.monotonic() < deadline, e.details()
                await asyncio.sleep(0.5)
