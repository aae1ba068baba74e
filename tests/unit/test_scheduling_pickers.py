"""Scheduler pickers: max-score (random, seedable tie-break), round-robin, least-request, random."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from services.router.scheduling import REGISTRY, Candidate, SchedulerMemory
from services.router.scheduling.pickers import (
    LeastRequestPicker,
    MaxScorePicker,
    RandomPicker,
    RoundRobinPicker,
)

CANDS = [Candidate("a"), Candidate("b"), Candidate("c"), Candidate("d")]
MEM = SchedulerMemory()


def test_max_score_picks_the_highest_total():
    assert MaxScorePicker().pick(CANDS, [0.1, 3.0, 2.9, 0.0], MEM, random.Random(0)) == 1


def test_max_score_breaks_ties_at_random():
    picker, rng = MaxScorePicker(), random.Random(1)
    seen = Counter(picker.pick(CANDS, [1.0, 2.0, 2.0, 2.0], MEM, rng) for _ in range(300))
    assert set(seen) == {1, 2, 3}  # never the lower score; every tied one gets a share


def test_max_score_tie_break_is_seedable():
    def run(seed: int) -> list[int]:
        rng = random.Random(seed)
        return [MaxScorePicker().pick(CANDS, [1.0] * 4, MEM, rng) for _ in range(20)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_max_score_tolerance_treats_near_equal_totals_as_ties():
    picker, rng = MaxScorePicker(tolerance=0.1), random.Random(3)
    seen = {picker.pick(CANDS, [1.0, 0.95, 0.5, 0.0], MEM, rng) for _ in range(100)}
    assert seen == {0, 1}
    with pytest.raises(ValueError, match="tolerance"):
        REGISTRY.build("picker", "max-score", {"tolerance": -1})


def test_round_robin_cycles_in_name_order_and_survives_membership_changes():
    picker, rng = RoundRobinPicker(), random.Random(0)
    shuffled = [CANDS[2], CANDS[0], CANDS[3], CANDS[1]]
    picks = [shuffled[picker.pick(shuffled, [0.0] * 4, MEM, rng)].name for _ in range(5)]
    assert picks == ["a", "b", "c", "d", "a"]
    fewer = [Candidate("a"), Candidate("c")]  # b left: continue after a with c
    assert fewer[picker.pick(fewer, [0.0, 0.0], MEM, rng)].name == "c"


def test_least_request_picks_the_least_loaded_ignoring_scores():
    memory = SchedulerMemory()
    memory.inflight["b"] = 1
    cands = [Candidate("a", active=3), Candidate("b"), Candidate("c", waiting=2)]
    assert LeastRequestPicker().pick(cands, [9.0, 0.0, 9.0], memory, random.Random(0)) == 1


def test_random_picker_spreads_and_is_seedable():
    rng = random.Random(5)
    picks = [RandomPicker().pick(CANDS, [9.0, 0, 0, 0], MEM, rng) for _ in range(200)]
    assert set(picks) == {0, 1, 2, 3}
    rng2 = random.Random(5)
    assert picks == [RandomPicker().pick(CANDS, [9.0, 0, 0, 0], MEM, rng2) for _ in range(200)]


def test_pickers_are_registered_by_name():
    assert {"max-score", "round-robin", "least-request", "random"} <= set(REGISTRY.names("picker"))
