"""A Redis that hangs (accepts connections, never answers) must not stop budgeted traffic nor let
spend run free: every call is bounded; fail closed answers UNAVAILABLE; fail open enforces this
router's local share of each budget (limit x share, spend so far x share) until Redis answers,
and the spend made meanwhile reaches the shared counter when it does. Metrics say which mode."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from services.common.errors import ResourceExhausted, Unavailable
from services.router.budgets import RedisBudgets
from services.router.budgets.metrics import register_budget_metrics
from services.router.flow import RateLimits
from services.router.flow.redis_limits import RedisRateLimiter
from tests.unit.test_budgets import FakeLedger, rule

USD = 1_000_000


class HangingRedis:
    """A TCP server on port 0 that accepts, reads whatever comes, and never answers."""

    def __init__(self) -> None:
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self._writers.append(writer)
            while await reader.read(4096):
                pass

        self._server = await asyncio.start_server(hang, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def close(self) -> None:
        for w in self._writers:
            w.close()
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def hanging():
    h = HangingRedis()
    url = await h.start()
    yield h, url
    await h.close()


async def test_fail_closed_is_bounded_and_says_so(hanging):
    h, url = hanging
    budgets = RedisBudgets.from_url(url, "hang:", timeout_s=0.2, fail_open=False)
    metrics = CollectorRegistry()
    register_budget_metrics(metrics, budgets)
    try:
        with pytest.raises(Unavailable, match="budget store unavailable"):
            await asyncio.wait_for(budgets.reserve_cost([rule(limit=10 * USD)], USD), 5)  # never hangs
        assert h.connections >= 1
        assert metrics.get_sample_value("harness_router_budget_fail_open") == 0
        assert metrics.get_sample_value("harness_router_budget_store_degraded") == 1
        with pytest.raises(Unavailable, match="budget store unavailable"):  # each call bounded again
            await asyncio.wait_for(budgets.reserve_cost([rule(limit=10 * USD)], USD), 5)
    finally:
        await budgets.aclose()


async def test_fail_open_enforces_the_local_share_of_each_budget(hanging, caplog):
    _, url = hanging
    ledger = FakeLedger({"b": 4 * USD})  # 4 of 10 USD spent before the outage
    budgets = RedisBudgets.from_url(
        url, "hang:", timeout_s=0.2, fail_open=True, local_share=0.5, ledger=ledger
    )
    metrics = CollectorRegistry()
    register_budget_metrics(metrics, budgets)
    b = rule(limit=10 * USD)
    budgets.update([b])
    try:
        held = [await asyncio.wait_for(budgets.reserve_cost([b], USD), 5) for _ in range(3)]
        assert all(r.local is not None for r in held)  # share: 5 USD limit, 2 USD spent: room for 3
        with pytest.raises(ResourceExhausted, match=r"enforces its own share \(50%\)") as err:
            await budgets.reserve_cost([b], USD)
        assert "hard limit of $5" in err.value.message
        assert metrics.get_sample_value("harness_router_budget_fail_open") == 1
        assert metrics.get_sample_value("harness_router_budget_store_degraded") == 1
        assert "enforcing this router's local share (50%)" in caplog.text
        await budgets.settle(held[0], 0)  # a failed call frees its share
        again = await budgets.reserve_cost([b], USD)
        assert again.local is not None
    finally:
        await budgets.aclose()


@pytest.mark.redis
async def test_spend_on_the_local_share_reaches_the_shared_counter_after_the_outage(redis_url, caplog):
    prefix = f"harness-test:{uuid.uuid4().hex[:12]}:"
    client = aioredis.Redis.from_url(redis_url)
    budgets = RedisBudgets(client, prefix, timeout_s=0.5, fail_open=True, local_share=0.5,
                           ledger=FakeLedger({"b": 0}))  # fmt: skip
    b = rule(limit=10 * USD)
    budgets.update([b])
    try:
        first = await budgets.reserve_cost([b], USD)  # Redis answers: a shared reservation
        assert first.local is None
        await budgets.settle(first, USD)
        key = first.charges[0].key
        real = budgets._reserve_script

        async def frozen(**kw):
            await asyncio.sleep(10)  # as if Redis stopped answering

        budgets._reserve_script = frozen
        during = await budgets.reserve_cost([b], USD)  # bounded by the timeout, then local
        assert during.local is not None and budgets.degraded
        budgets._reserve_script = real
        await budgets.settle(during, 2 * USD)  # Redis answers again: the spend is shared too
        assert int(await client.hget(key, "spent")) == 3 * USD
        after = await budgets.reserve_cost([b], USD)
        assert after.local is None and not budgets.degraded
        assert "budget store reachable again" in caplog.text
        await budgets.settle(after, 0)
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await budgets.aclose()
        await client.aclose()


async def test_rate_limits_fail_open_to_the_local_share_too(hanging):
    _, url = hanging
    limiter = RedisRateLimiter.from_url(url, "hang:", timeout_s=0.2, fail_open=True, local_share=0.5)
    try:
        limits = RateLimits(agent_rpm=4)
        for _ in range(2):  # half of 4 requests per minute
            await asyncio.wait_for(limiter.admit("bot", "alice", limits, 1), 5)
        with pytest.raises(
            ResourceExhausted,
            match=r"enforces its share \(50%\) of each limit: agent 'bot' is over its RPM limit",
        ):
            await limiter.admit("bot", "alice", limits, 1)
    finally:
        await limiter.aclose()
    strict = RedisRateLimiter.from_url(url, "hang:", timeout_s=0.2, fail_open=False)
    try:
        with pytest.raises(Unavailable, match="rate limiter store unavailable"):
            await asyncio.wait_for(strict.admit("bot", "alice", RateLimits(agent_rpm=4), 1), 5)
    finally:
        await strict.aclose()


def test_the_mode_is_a_flag_and_in_the_config():
    from services.router.config import parse_args

    cfg = parse_args(
        ["--budget-on-redis-failure", "closed", "--redis-timeout", "0.1", "--budget-local-share", "0.25"]
    )
    assert (cfg.budget_fail_open, cfg.redis_timeout_s, cfg.budget_local_share) == (False, 0.1, 0.25)
    assert parse_args([]).budget_fail_open is True
