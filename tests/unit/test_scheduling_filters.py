"""Scheduler filters: model-ready, healthy, not-saturated."""

from __future__ import annotations

import pytest

from services.router.scheduling import REGISTRY, Candidate, Outcome, SchedulerMemory, SchedulingRequest
from services.router.scheduling.filters import HealthyFilter, ModelReadyFilter, NotSaturatedFilter

REQ = SchedulingRequest("llama")
MEM = SchedulerMemory()


def names(cands: list[Candidate]) -> list[str]:
    return [c.name for c in cands]


def test_model_ready_keeps_ready_endpoints_of_the_requested_model():
    cands = [
        Candidate("a", model="llama"),
        Candidate("b", model="llama", ready=False),
        Candidate("c", model="mistral"),
        Candidate("d", model="llama"),
    ]
    assert names(ModelReadyFilter().filter(REQ, cands, MEM)) == ["a", "d"]
    assert ModelReadyFilter.empty_outcome is Outcome.NO_READY


def test_healthy_drops_unhealthy_endpoints():
    cands = [Candidate("a", healthy=False), Candidate("b")]
    assert names(HealthyFilter().filter(REQ, cands, MEM)) == ["b"]
    assert HealthyFilter.empty_outcome is Outcome.NO_READY


def test_not_saturated_excludes_long_queues_and_full_kv_caches():
    f = NotSaturatedFilter(max_waiting=5, max_kv_fraction=0.8)
    cands = [
        Candidate("ok", waiting=5, kv_cache_fraction=0.8),  # at the thresholds: still usable
        Candidate("queue", waiting=6),
        Candidate("kv", kv_cache_fraction=0.81),
    ]
    assert names(f.filter(REQ, cands, MEM)) == ["ok"]


def test_not_saturated_judges_an_engine_without_kv_figures_on_its_queue_alone():
    f = NotSaturatedFilter(max_waiting=5, max_kv_fraction=0.8)
    cands = [
        Candidate("tgi", kv_cache_fraction=0.95, kv_cache_known=False),
        Candidate("tgi-queued", waiting=6, kv_cache_known=False),
    ]
    assert names(f.filter(REQ, cands, MEM)) == ["tgi"]


def test_not_saturated_returns_empty_when_all_are_saturated_and_says_so():
    f = NotSaturatedFilter(max_waiting=0)
    assert f.filter(REQ, [Candidate("a", waiting=1), Candidate("b", waiting=3)], MEM) == []
    assert NotSaturatedFilter.empty_outcome is Outcome.SATURATED


def test_not_saturated_counts_the_routers_own_requests_beyond_the_running_limit():
    # The scrape says idle, but this router already sent 10 requests to an engine that runs 4:
    # 6 of them are waiting.
    memory = SchedulerMemory()
    memory.inflight[("a", "m")] = 10
    memory.inflight[("b", "other-model")] = 10  # another model on b: not this model's load
    cands = [Candidate("a", model="m", max_running=4), Candidate("b", model="m", max_running=4)]
    assert names(NotSaturatedFilter(max_waiting=5).filter(REQ, cands, memory)) == ["b"]
    assert names(NotSaturatedFilter(max_waiting=6).filter(REQ, cands, memory)) == ["a", "b"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_waiting": -1}, "max_waiting"),
        ({"max_kv_fraction": 0}, "max_kv_fraction"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_not_saturated_rejects_bad_params(params, message):
    with pytest.raises(ValueError, match=message):
        REGISTRY.build("filter", "not-saturated", params)


def test_filters_are_registered_by_name():
    assert {"model-ready", "healthy", "not-saturated"} <= set(REGISTRY.names("filter"))


def test_own_dispatches_and_completions_since_the_scrape_correct_stale_figures():
    memory = SchedulerMemory()
    # The scrape saw 8 running + 2 waiting while we had 4 in flight there.
    stale = Candidate("a", waiting=2, active=8, max_running=8, own_at_snapshot=4)
    memory.inflight[("a", "")] = 1  # since then 3 of ours finished: the engine has room again
    assert memory.load(stale) == 7 and memory.waiting(stale) == 0
    assert names(NotSaturatedFilter(max_waiting=0).filter(REQ, [stale], memory)) == ["a"]
    memory.inflight[("a", "")] = 6  # and now 5 more went out: 2 over the running limit
    assert memory.waiting(stale) == 4
    assert NotSaturatedFilter(max_waiting=1).filter(REQ, [stale], memory) == []
