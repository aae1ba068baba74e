"""KV block cache: prefix hashing, reuse, LRU eviction, capacity; and its effect on the engine."""

from __future__ import annotations

import dataclasses

import pytest

from services.enginesim.catalog import LatencyProfile, ModelSpec
from services.enginesim.engine import ModelEngine
from services.enginesim.kv_cache import KvBlockCache, prefix_block_hashes
from services.enginesim.sequence import GenerationRequest


def words(n: int, start: int = 0) -> list[str]:
    return [f"w{i}" for i in range(start, start + n)]


def test_prefix_hashes_cover_full_blocks_only_and_chain_the_prefix():
    assert len(prefix_block_hashes(words(9), 4)) == 2  # the 9th token is a partial block
    a = prefix_block_hashes(words(8), 4)
    b = prefix_block_hashes(words(4) + words(4, 100), 4)
    assert a[0] == b[0] and a[1] != b[1]
    # Same second block after a different first block: a different hash (a prefix, not a set).
    c = prefix_block_hashes(words(4, 50) + words(4, 4), 4)
    assert c[1] != a[1]


def test_allocate_reuses_the_cached_prefix_and_release_keeps_it_cached():
    cache = KvBlockCache(capacity_blocks=10, block_size=4)
    hashes = prefix_block_hashes(words(12), 4)
    first = cache.allocate(hashes, total_blocks=5)
    assert first is not None and (first.reused, first.private, cache.used) == (0, 2, 5)
    second = cache.allocate(hashes[:2], total_blocks=4)  # shares 2 of the 3 blocks
    assert second is not None and second.reused == 2 and cache.used == 7
    cache.release(first)
    cache.release(second)
    assert (cache.used, cache.cached, cache.free, cache.reused_total) == (0, 3, 10, 2)
    third = cache.allocate(hashes, total_blocks=3)
    assert third is not None and third.reused == 3 and third.private == 0


def test_full_cache_evicts_least_recently_used_unreferenced_blocks():
    cache = KvBlockCache(capacity_blocks=4, block_size=2)
    old, new = prefix_block_hashes(words(4), 2), prefix_block_hashes(words(4, 10), 2)
    for hashes in (old, new):  # both end cached: 4 blocks, none referenced
        cache.release(cache.allocate(hashes, 2))
    assert cache.cached == 4
    # Reusing `new` makes it most recently used; a 2-block private request then evicts `old`.
    cache.release(cache.allocate(new, 2))
    other = cache.allocate((), 2)
    assert other is not None and cache.evicted_total == 2
    assert cache.cached_prefix_blocks(old) == 0 and cache.cached_prefix_blocks(new) == 2


def test_allocation_that_cannot_fit_changes_nothing():
    cache = KvBlockCache(capacity_blocks=4, block_size=2)
    held = cache.allocate(prefix_block_hashes(words(4), 2), 3)
    assert held is not None
    before = (cache.used, cache.cached, cache.reused_total)
    assert cache.allocate(prefix_block_hashes(words(4), 2), 4) is None  # needs 2 new, 1 free
    assert (cache.used, cache.cached, cache.reused_total) == before
    # Referenced blocks are never evicted, even under pressure.
    assert cache.allocate((), 2) is None and cache.cached_prefix_blocks(held.shared) == 2


def test_reuse_can_be_disabled():
    cache = KvBlockCache(capacity_blocks=10, block_size=2, enable_reuse=False)
    hashes = prefix_block_hashes(words(4), 2)
    cache.release(cache.allocate(hashes, 3))
    again = cache.allocate(hashes, 3)
    assert again is not None and again.reused == 0 and cache.reused_total == 0


SPEC = ModelSpec(
    name="m",
    decoupled=True,
    layout="ensemble",
    memory_gb=1,
    load_time_s=0,
    latency=LatencyProfile(prefill_ms_per_token=1.0, decode_ms_per_token=0.0, step_overhead_ms=1.0),
    max_running_sequences=4,
    max_queue_size=4,
    kv_block_size=16,
    kv_capacity_blocks=100,
)


@pytest.mark.parametrize("reuse", [True, False])
async def test_repeated_prefix_skips_its_prefill_in_the_engine(reuse):
    engine = ModelEngine(dataclasses.replace(SPEC, kv_cache_reuse=reuse), time_scale=10_000)
    engine.start()
    try:
        shared = " ".join(words(64))  # 64 tokens = 4 full blocks
        first = engine.submit(GenerationRequest(shared + " question one", max_tokens=1))
        await first.collect()
        t0 = engine.sim_now_ms
        second = engine.submit(GenerationRequest(shared + " question two", max_tokens=1))
        await second.collect()
        ttft = engine.sim_now_ms - t0  # one step: overhead + prefill of the new tokens
        if reuse:
            assert second.reused_blocks == 4 and second.prefill_tokens == 2
            assert ttft == pytest.approx(1.0 + 2 * 1.0)
            assert engine.kv_cache.reused_total == 4
        else:
            assert second.reused_blocks == 0 and ttft == pytest.approx(1.0 + 66 * 1.0)
    finally:
        await engine.stop()
