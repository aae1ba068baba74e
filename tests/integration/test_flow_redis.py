"""RedisRateLimiter against a real Redis: the whole rate-limit suite of
tests/unit/test_flow_limits.py (re-collected here with a Redis `limiter`), plus Redis-only
behaviour: server time, key layout and expiry, atomicity across replicas, failure modes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.common.errors import ResourceExhausted, Unavailable
from services.router.flow import RateLimits, RedisRateLimiter
from tests.unit import test_flow_limits as suite

pytestmark = pytest.mark.redis

# Same tests, this module's fixtures (a module-level fixture overrides the imported one).
globals().update({n: getattr(suite, n) for n in dir(suite) if n.startswith("test_")})
clock = suite.clock


@pytest.fixture
async def client(redis_url) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


@pytest.fixture
async def prefix(client) -> AsyncIterator[str]:
    p = f"harness-test:{uuid.uuid4().hex[:12]}:"
    yield p
    keys = [k async for k in client.scan_iter(match=f"{p}*")]  # only this test's keys
    if keys:
        await client.delete(*keys)


@pytest.fixture
def limiter(client, prefix, clock) -> RedisRateLimiter:
    return RedisRateLimiter(client, prefix, clock_ms=clock)


async def test_server_time_keys_and_expiry(client, prefix):
    lim = RedisRateLimiter(client, prefix)  # server TIME, as in production
    limits = RateLimits(agent_rpm=2, agent_tpm=100, user_rpm=5, user_tpm=1000)
    await lim.admit("agent-x", "alice", limits, 50)
    keys = sorted([k.decode() async for k in client.scan_iter(match=f"{prefix}*")])
    assert keys == [
        f"{prefix}rl:agent:agent-x:rpm",
        f"{prefix}rl:agent:agent-x:tpm",
        f"{prefix}rl:user:alice:rpm",
        f"{prefix}rl:user:alice:tpm",
    ]
    # Each key lives until its bucket is full again: 1 of 2 RPM = 30 s, 50 of 100 TPM = 30 s.
    ttl = await client.pttl(f"{prefix}rl:agent:agent-x:rpm")
    assert 29_000 <= ttl <= 30_002
    await lim.admit("agent-x", "alice", limits, 50)
    with pytest.raises(ResourceExhausted) as e:
        await lim.admit("agent-x", "alice", limits, 1)
    assert 0 < e.value.retry_after_ms <= 30_002


async def test_refund_to_full_deletes_key(client, prefix):
    lim = RedisRateLimiter(client, prefix)
    res = await lim.admit("a", "", RateLimits(agent_tpm=1000), 300)
    await lim.settle(res, 0)
    assert await client.exists(f"{prefix}rl:agent:a:tpm") == 0


async def test_replicas_share_limits_atomically(client, prefix):
    # Three "router replicas" (own limiter objects) racing: exactly the limit gets through.
    replicas = [RedisRateLimiter(client, prefix) for _ in range(3)]
    limits = RateLimits(agent_rpm=20, user_tpm=100_000)

    async def one(i: int) -> bool:
        try:
            await replicas[i % 3].admit("a", "u", limits, 10)
            return True
        except ResourceExhausted:
            return False

    results = await asyncio.gather(*(one(i) for i in range(60)))
    assert sum(results) == 20


async def test_one_script_call_per_admission(client, prefix, monkeypatch):
    lim = RedisRateLimiter(client, prefix)
    calls = 0
    real = lim._admit_script.__call__

    async def counting(*a, **kw):
        nonlocal calls
        calls += 1
        return await real(*a, **kw)

    monkeypatch.setattr(lim, "_admit_script", counting)
    await lim.admit("a", "u", RateLimits(1, 2, 3, 4), 1)
    assert calls == 1


async def test_redis_down_fail_open_or_closed():
    dead = "redis://127.0.0.1:1/0"
    lim = RedisRateLimiter.from_url(dead, "harness-test:", timeout_s=0.2)
    res = await lim.admit("a", "u", RateLimits(agent_rpm=1), 1)  # fail-open admits
    await lim.settle(res, 5)
    await lim.aclose()
    strict = RedisRateLimiter.from_url(dead, "harness-test:", timeout_s=0.2, fail_open=False)
    with pytest.raises(Unavailable):
        await strict.admit("a", "u", RateLimits(agent_rpm=1), 1)
    await strict.aclose()
