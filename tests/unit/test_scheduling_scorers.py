"""Scheduler scorers: queue depth, KV cache, prefix-cache affinity, session affinity, latency."""

from __future__ import annotations

import pytest

from services.router.scheduling import (
    REGISTRY,
    Candidate,
    MemoryConfig,
    SchedulerMemory,
    SchedulingRequest,
    chained_block_hashes,
    text_block_hashes,
)
from services.router.scheduling.scorers import (
    KvCacheScorer,
    LatencyScorer,
    PrefixCacheScorer,
    QueueDepthScorer,
    SessionAffinityScorer,
)

REQ = SchedulingRequest("llama")
THREE = [Candidate("a"), Candidate("b"), Candidate("c")]


def in_unit_range(scores: list[float]) -> bool:
    return all(0.0 <= s <= 1.0 for s in scores)


# --- queue depth ---------------------------------------------------------------------------
def test_queue_depth_prefers_shorter_queues():
    cands = [
        Candidate("a", waiting=4, active=4),
        Candidate("b", active=2),
        Candidate("c", waiting=1, active=4),
    ]
    scores = QueueDepthScorer().score(REQ, cands, SchedulerMemory())
    assert scores == [0.0, 1.0, pytest.approx(0.5)]


def test_queue_depth_all_equal_scores_one():
    assert QueueDepthScorer().score(REQ, THREE, SchedulerMemory()) == [1.0, 1.0, 1.0]


def test_queue_depth_uses_the_routers_in_flight_count_when_the_scrape_is_stale():
    memory = SchedulerMemory()
    memory.inflight[("a", "")] = 5  # the pool has not seen them yet
    scores = QueueDepthScorer().score(REQ, [Candidate("a"), Candidate("b", active=1)], memory)
    assert scores[1] > scores[0]


# --- kv cache ------------------------------------------------------------------------------
def test_kv_cache_prefers_lower_fraction_and_clamps():
    cands = [
        Candidate("a", kv_cache_fraction=0.9),
        Candidate("b", kv_cache_fraction=0.1),
        Candidate("c", kv_cache_fraction=1.5),
    ]
    scores = KvCacheScorer().score(REQ, cands, SchedulerMemory())
    assert scores == [pytest.approx(0.1), pytest.approx(0.9), 0.0]


def test_kv_cache_unknown_scores_the_mean_of_the_measured_ones():
    # A TGI (no KV figure, reported as 0) must not look like the emptiest cache.
    cands = [
        Candidate("a", kv_cache_fraction=0.8),
        Candidate("b", kv_cache_fraction=0.2),
        Candidate("tgi", kv_cache_known=False),
    ]
    assert KvCacheScorer().score(REQ, cands, SchedulerMemory()) == [
        pytest.approx(0.2),
        pytest.approx(0.8),
        pytest.approx(0.5),
    ]
    unknown = [Candidate("x", kv_cache_known=False), Candidate("y", kv_cache_known=False)]
    assert KvCacheScorer().score(REQ, unknown, SchedulerMemory()) == [1.0, 1.0]  # no preference


# --- prefix cache --------------------------------------------------------------------------
def tokens(n: int, start: int = 0) -> list[str]:
    return [f"t{i}" for i in range(start, start + n)]


def small_memory(**kw) -> SchedulerMemory:
    return SchedulerMemory(
        MemoryConfig(prefix_block_tokens=4, prefix_max_blocks=16, prefix_chars_per_token=1, **kw)
    )


def test_block_hashes_chain_like_the_engine_kv_cache():
    a = chained_block_hashes(tokens(8), 4)
    b = chained_block_hashes(tokens(4) + tokens(4, 100), 4)
    assert len(chained_block_hashes(tokens(9), 4)) == 2  # partial tail block not hashed
    assert a[0] == b[0] and a[1] != b[1]
    assert chained_block_hashes(tokens(4, 50) + tokens(4, 4), 4)[1] != a[1]  # a prefix, not a set
    assert len(chained_block_hashes(tokens(40), 4, max_blocks=3)) == 3
    assert text_block_hashes("abcdefgh", 4)[0] == text_block_hashes("abcdXXXX", 4)[0]
    assert text_block_hashes("abcdefgh", 4)[1] != text_block_hashes("abcdXXXX", 4)[1]


def test_prefix_cache_sends_a_repeated_prefix_to_the_endpoint_that_served_it():
    memory = small_memory()
    first = SchedulingRequest("llama", tokens=tokens(16))
    memory.prefix.record("b", memory.block_hashes(first))
    # Same 12-token prefix, different tail: 3 of its 4 blocks are on b.
    again = SchedulingRequest("llama", tokens=tokens(12) + tokens(4, 900))
    assert PrefixCacheScorer().score(again, THREE, memory) == [0.0, 0.75, 0.0]


def test_prefix_affinity_is_weighted_by_how_well_each_engines_cache_keeps_prefixes():
    memory = small_memory()
    first = SchedulingRequest("llama", tokens=tokens(16))
    for name in ("keeps", "thrashes", "triton", "off"):
        memory.prefix.record(name, memory.block_hashes(first))
    cands = [
        Candidate("keeps", prefix_hit_rate=0.8),
        Candidate("thrashes", prefix_hit_rate=0.2),
        Candidate("triton"),  # exports no hit rate: the guess stands
        Candidate("off", prefix_hit_rate=0.0),  # prefix caching off: no affinity at all
    ]
    scores = PrefixCacheScorer().score(first, cands, memory)
    assert scores == [1.0, pytest.approx(0.25), 1.0, 0.0]
    assert PrefixCacheScorer().score(first, [Candidate("keeps"), Candidate("triton")], memory) == [1.0, 1.0]


def test_prefix_cache_on_text_prompts():
    memory = small_memory()
    system = "You are a helpful assistant. " * 4
    memory.prefix.record(
        "c", memory.block_hashes(SchedulingRequest("llama", prompt=system + "first question"))
    )
    scores = PrefixCacheScorer().score(
        SchedulingRequest("llama", prompt=system + "another one"), THREE, memory
    )
    assert scores[0] == scores[1] == 0.0 and scores[2] > 0.8 and in_unit_range(scores)


def test_prefix_cache_short_prompt_scores_zero_everywhere():
    memory = small_memory()
    assert PrefixCacheScorer().score(SchedulingRequest("llama", tokens=tokens(3)), THREE, memory) == [0.0] * 3


def test_prefix_memory_is_bounded_and_evicts_tail_blocks_first():
    memory = small_memory(prefix_lru_blocks=4)
    long = SchedulingRequest("llama", tokens=tokens(24))  # 6 blocks, only 4 kept
    memory.prefix.record("a", memory.block_hashes(long))
    assert memory.prefix.size("a") == 4
    # The leading blocks survive: they are the ones other prompts share.
    assert PrefixCacheScorer().score(long, [Candidate("a")], memory) == [pytest.approx(4 / 6)]


def test_prefix_memory_lru_keeps_recently_used_prefixes():
    memory = small_memory(prefix_lru_blocks=4)
    hot = memory.block_hashes(SchedulingRequest("llama", tokens=tokens(8)))
    memory.prefix.record("a", hot)
    memory.prefix.record("a", memory.block_hashes(SchedulingRequest("llama", tokens=tokens(8, 100))))
    memory.prefix.record("a", hot)  # touched again: most recent
    memory.prefix.record("a", memory.block_hashes(SchedulingRequest("llama", tokens=tokens(8, 200))))
    assert memory.prefix.matched("a", hot) == 2


# --- session affinity ----------------------------------------------------------------------
def test_session_affinity_scores_the_sessions_last_endpoint():
    memory = SchedulerMemory()
    memory.sessions.record("s1", "c")
    scorer = SessionAffinityScorer()
    assert scorer.score(SchedulingRequest("llama", session_id="s1"), THREE, memory) == [0.0, 0.0, 1.0]
    assert scorer.score(SchedulingRequest("llama", session_id="s2"), THREE, memory) == [0.0] * 3
    assert scorer.score(SchedulingRequest("llama"), THREE, memory) == [0.0] * 3


def test_session_table_is_a_bounded_lru():
    memory = SchedulerMemory(MemoryConfig(sessions_max=2))
    for i, endpoint in enumerate("abc"):
        memory.sessions.record(f"s{i}", endpoint)
    assert len(memory.sessions) == 2 and memory.sessions.get("s0") == ""
    assert memory.sessions.get("s2") == "c"


# --- latency -------------------------------------------------------------------------------
def test_latency_prefers_lower_ewma():
    memory = SchedulerMemory(MemoryConfig(ttft_ewma_alpha=0.5))
    memory.latency.observe("a", 0.2)
    memory.latency.observe("b", 0.1)
    memory.latency.observe("c", 0.4)
    assert LatencyScorer().score(REQ, THREE, memory) == [pytest.approx(0.5), 1.0, pytest.approx(0.25)]


def test_latency_ewma_moves_with_observations():
    memory = SchedulerMemory(MemoryConfig(ttft_ewma_alpha=0.5))
    memory.latency.observe("a", 1.0)
    memory.latency.observe("a", 0.0)
    memory.latency.observe("a", -1.0)  # nonsense measurement: ignored
    assert memory.latency.get("a") == pytest.approx(0.5)


def test_latency_falls_back_to_the_pools_figure_and_is_optimistic_about_unknown_endpoints():
    memory = SchedulerMemory()
    cands = [Candidate("a", recent_ttft_s=0.3), Candidate("b", recent_ttft_s=0.1), Candidate("c")]
    assert LatencyScorer().score(REQ, cands, memory) == [pytest.approx(1 / 3), 1.0, 1.0]
    assert LatencyScorer().score(REQ, THREE, memory) == [1.0, 1.0, 1.0]


def test_scorers_are_registered_and_take_no_params():
    assert {
        "queue-depth",
        "kv-cache",
        "prefix-cache",
        "precise-prefix-cache",
        "session-affinity",
        "latency",
    } <= set(REGISTRY.names("scorer"))
    with pytest.raises(ValueError, match="unknown param"):
        REGISTRY.build("scorer", "latency", {"alpha": 0.1})
