"""RedisBudgets against a real Redis: the whole budget suite of tests/unit/test_budgets.py
(re-collected here with a Redis backend), plus Redis-only behaviour: key layout and expiry,
rebuild races between replicas, recovery after Redis lost its state."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.common.errors import ResourceExhausted, Unavailable
from services.router.budgets import RedisBudgets
from tests.unit import test_budgets as suite

pytestmark = pytest.mark.redis

globals().update({n: getattr(suite, n) for n in dir(suite) if n.startswith("test_")})
clock = suite.clock
rule, FakeLedger = suite.rule, suite.FakeLedger


@pytest.fixture
async def client(redis_url) -> AsyncIterator[aioredis.Redis]:
    # A command stuck on a connection fails after 10 s instead of hanging the test (as the
    # router's own client does with --redis-timeout).
    c = aioredis.Redis.from_url(redis_url, socket_timeout=10)
    yield c
    await c.aclose()


@pytest.fixture
async def prefix(client) -> AsyncIterator[str]:
    p = f"harness-test:{uuid.uuid4().hex[:12]}:"
    yield p
    await flush(client, p)


async def flush(client: aioredis.Redis, prefix: str) -> None:
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)


@pytest.fixture
def make(client, prefix, clock):
    def build(**kw):
        kw.setdefault("clock_ms", clock)
        return RedisBudgets(client, prefix, **kw)

    return build


async def test_key_layout_and_expiry(client, prefix, make):
    enf = make()
    res = await enf.reserve_cost([rule(limit=1000)], 300)
    keys = sorted([k.decode() async for k in client.scan_iter(match=f"{prefix}*")])
    day = 1741564800000  # 2025-03-10T00:00Z in ms
    assert keys == [f"{prefix}bud:b:{day}", f"{prefix}bud:b:{day}:x", f"{prefix}bud:epoch"]
    h = {k.decode(): v.decode() for k, v in (await client.hgetall(f"{prefix}bud:b:{day}")).items()}
    assert h == {"spent": "0", "reserved": "300", f"r:{res.id}": "300"}
    # The counter outlives its day by a day: 12 h left today + 24 h.
    assert 35.9 * 3600_000 < await client.pttl(f"{prefix}bud:b:{day}") <= 36 * 3600_000
    await enf.settle(res, 120)
    h = {k.decode(): v.decode() for k, v in (await client.hgetall(f"{prefix}bud:b:{day}")).items()}
    assert h == {"spent": "120", "reserved": "0"}
    assert await client.zcard(f"{prefix}bud:b:{day}:x") == 0


async def test_replicas_rebuild_a_missing_counter_once(make):
    ledger = FakeLedger({"b": 600})
    a, b = make(ledger=ledger), make(ledger=ledger)
    r = rule(limit=1000)
    got = await asyncio.gather(*(x.reserve_cost([r], 100) for x in (a, b, a, b)))
    assert len(got) == 4 and a.rebuilds + b.rebuilds == 1
    with pytest.raises(ResourceExhausted) as e:  # 600 from the ledger + 400 reserved
        await a.reserve_cost([r], 1)
    assert "spent $0.0006, reserved $0.0004" in e.value.message


async def test_lost_state_holds_budgets_until_in_flight_settles(client, prefix, make):
    ledger = FakeLedger({"b": 0})
    a, b = make(ledger=ledger, recovery_hold_s=0.3), make(ledger=ledger, recovery_hold_s=0.3)
    r = rule(limit=1000)
    in_flight = await a.reserve_cost([r], 500)
    await b.reserve_cost([r], 100)  # b learns the epoch
    before = a.rebuilds + b.rebuilds
    await flush(client, prefix)  # Redis restarted empty: nobody sees a's reservation any more
    ledger.spent["b"] = 50  # what reached the ledger before the loss
    await a.settle(in_flight, 450)  # settles onto the lost counter: kept as an orphan
    with pytest.raises(ResourceExhausted) as e:
        await b.reserve_cost([r], 100)
    assert "paused" in e.value.message and 0 < e.value.retry_after_ms <= 300
    with pytest.raises(ResourceExhausted):
        await a.reserve_cost([r], 100)
    await asyncio.sleep(0.35)
    # Rebuilt once: ledger 50 + orphan 450 (conservative: it may be in the ledger too).
    await a.reserve_cost([r], 500)
    with pytest.raises(ResourceExhausted):
        await b.reserve_cost([r], 1)
    assert a.rebuilds + b.rebuilds == before + 1


async def test_fresh_store_is_not_a_loss(make):
    enf = make(recovery_hold_s=60)
    await enf.reserve_cost([rule()], 1)  # first counter ever: no epoch known, no hold


async def test_unreachable_redis_fails_closed_or_open(clock):
    dead = aioredis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.1, socket_timeout=0.1, retry=Retry(NoBackoff(), 0)
    )
    try:
        with pytest.raises(Unavailable):
            await RedisBudgets(dead, clock_ms=clock).reserve_cost([rule()], 1)
        open_ = RedisBudgets(dead, clock_ms=clock, fail_open=True)
        res = await open_.reserve_cost([rule()], 1)
        assert res.local is not None and res.charges  # admitted against this router's local share
        await open_.settle(res, 1)
        res2 = await RedisBudgets(dead, clock_ms=clock).reserve_cost([], 1)
        await open_.settle(res2, 1)  # never raises
    finally:
        await dead.aclose()
