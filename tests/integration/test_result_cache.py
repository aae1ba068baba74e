"""Result cache (in memory and in real Redis, same tests) and in-flight coalescing."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis.asyncio as redis

from services.router.result_cache import (
    CachedResult,
    CacheKeys,
    Coalescer,
    MemoryResultCache,
    RedisResultCache,
    is_deterministic,
)
from tests.helpers.polling import eventually

RESULT = CachedResult("four", input_tokens=5, output_tokens=1, finish_reason="length", deployment="m@sim-0")


@pytest.fixture(params=["memory", "redis"])
async def cache(request):
    if request.param == "memory":
        yield MemoryResultCache()
        return
    prefix = f"test:{uuid.uuid4().hex}:"
    client = redis.from_url(request.getfixturevalue("redis_url"))
    yield RedisResultCache(client, prefix)
    keys = [k async for k in client.scan_iter(f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def test_only_greedy_or_seeded_requests_are_deterministic():
    assert is_deterministic(0.0, None) and is_deterministic(0.7, 42)
    assert not is_deterministic(0.7, None)


def test_the_key_covers_caller_model_parameters_and_prompt_and_ignores_dict_order():
    keys = CacheKeys("secret")
    base = keys.generation("a1", "alice", "m", {"max_tokens": 8, "temperature": 0.0}, "2+2?")
    assert base == keys.generation("a1", "alice", "m", {"temperature": 0.0, "max_tokens": 8}, "2+2?")
    assert base != keys.generation("a1", "alice", "m2", {"max_tokens": 8, "temperature": 0.0}, "2+2?")
    assert base != keys.generation("a1", "alice", "m", {"max_tokens": 9, "temperature": 0.0}, "2+2?")
    assert base != keys.generation("a1", "alice", "m", {"max_tokens": 8, "temperature": 0.0}, "2+3?")
    # Nothing crosses agents or users.
    assert base != keys.generation("a2", "alice", "m", {"max_tokens": 8, "temperature": 0.0}, "2+2?")
    assert base != keys.generation("a1", "bob", "m", {"max_tokens": 8, "temperature": 0.0}, "2+2?")


def test_keys_are_keyed_hashes_shared_only_with_the_same_secret():
    params = {"max_tokens": 8}
    same = CacheKeys("secret").generation("a", "u", "m", params, "p")
    assert same == CacheKeys(b"secret").generation("a", "u", "m", params, "p")  # every replica agrees
    assert same != CacheKeys("other").generation("a", "u", "m", params, "p")
    assert CacheKeys().generation("a", "u", "m", params, "p") != CacheKeys().generation(
        "a", "u", "m", params, "p"
    )


async def test_put_get_and_expiry(cache):
    key = CacheKeys("k").generation("a", "u", "m", {"max_tokens": 1}, "2+2?")
    assert await cache.get(key) is None
    # 1 s: the read right after the write must land inside it even on a loaded machine.
    written = time.monotonic()
    await cache.put(key, RESULT, ttl_s=1.0)
    assert await cache.get(key) == RESULT
    await cache.put("other", RESULT, ttl_s=0)  # TTL 0: not cached at all
    assert await cache.get("other") is None

    async def expired() -> bool:
        return await cache.get(key) is None

    await eventually(expired, within_s=10.0)
    assert time.monotonic() - written >= 0.9  # gone once its TTL ran out, not before


async def test_add_stores_only_when_absent_and_delete_frees_the_key(cache):
    assert await cache.add("claim", RESULT, 60)
    assert not await cache.add("claim", CachedResult("other", 0, 0, "", ""), 60)
    assert await cache.get("claim") == RESULT
    await cache.delete("claim")
    assert await cache.get("claim") is None and await cache.add("claim", RESULT, 60)


async def test_memory_cache_is_bounded_lru():
    cache = MemoryResultCache(max_entries=2)
    for key in ("a", "b"):
        await cache.put(key, RESULT, 60)
    await cache.get("a")  # a is now the most recent
    await cache.put("c", RESULT, 60)
    assert await cache.get("b") is None and await cache.get("a") == RESULT


async def test_an_unreadable_redis_entry_is_a_miss(redis_url):
    prefix = f"test:{uuid.uuid4().hex}:"
    client = redis.from_url(redis_url)
    cache = RedisResultCache(client, prefix)
    await client.set(f"{prefix}rc:k", b'{"text": "x", "unknown_field": 1}', px=60_000)
    await client.set(f"{prefix}rc:j", b"not json", px=60_000)
    assert await cache.get("k") is None and await cache.get("j") is None
    await client.delete(f"{prefix}rc:k", f"{prefix}rc:j")
    await client.aclose()


async def test_redis_down_is_a_miss_not_an_error():
    cache = RedisResultCache(redis.from_url("redis://127.0.0.1:1"), timeout_s=0.2)
    await cache.put("k", RESULT, 60)
    assert await cache.get("k") is None
    await cache.aclose()


async def test_identical_requests_in_flight_share_one_call():
    coalescer = Coalescer()
    calls = 0
    release = asyncio.Event()

    async def produce() -> CachedResult:
        nonlocal calls
        calls += 1
        await release.wait()
        return RESULT

    tasks = [asyncio.create_task(coalescer.run("k", produce)) for _ in range(5)]
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1 and all(r == RESULT for r, _ in results)
    assert sorted(shared for _, shared in results) == [False, True, True, True, True]
    assert coalescer.coalesced_total == 4


async def test_a_failed_call_fails_its_followers_and_a_cancelled_leader_hands_over():
    coalescer = Coalescer()

    async def boom() -> CachedResult:
        await asyncio.sleep(0.01)
        raise RuntimeError("backend down")

    results = await asyncio.gather(*(coalescer.run("k", boom) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)

    started = asyncio.Event()

    async def slow() -> CachedResult:
        started.set()
        await asyncio.sleep(10)
        return RESULT

    async def fast() -> CachedResult:
        return RESULT

    leader = asyncio.create_task(coalescer.run("k2", slow))
    await started.wait()
    follower = asyncio.create_task(coalescer.run("k2", fast))
    await asyncio.sleep(0.01)
    leader.cancel()
    assert await follower == (RESULT, False)  # it led the second attempt itself
