"""Pickers: choose one candidate from the weighted score totals."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from services.router.scheduling.memory import SchedulerMemory
from services.router.scheduling.types import Candidate


def _random_best(values: list[float], rng: random.Random, tolerance: float) -> int:
    best = max(values)
    floor = best - tolerance
    ties = [i for i, v in enumerate(values) if v >= floor]
    # Random among ties: always taking the first would send every tied request (e.g. an idle
    # fleet, or no prefix history yet) to the same endpoint.
    return ties[0] if len(ties) == 1 else ties[rng.randrange(len(ties))]


@dataclass(frozen=True)
class MaxScorePicker:
    """Highest weighted total; ties (within ``tolerance``) broken at random."""

    tolerance: float = 1e-9

    def __post_init__(self) -> None:
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")

    def pick(
        self, candidates: list[Candidate], totals: list[float], memory: SchedulerMemory, rng: random.Random
    ) -> int:
        return _random_best(totals, rng, self.tolerance)


@dataclass(frozen=True)
class RandomPicker:
    """Uniformly random, ignoring scores (a benchmark baseline)."""

    def pick(
        self, candidates: list[Candidate], totals: list[float], memory: SchedulerMemory, rng: random.Random
    ) -> int:
        return rng.randrange(len(candidates))


@dataclass
class RoundRobinPicker:
    """Next endpoint in name order after the last one picked, ignoring scores (a baseline).

    Keyed by name rather than list position so the rotation survives candidates coming and
    going between requests."""

    _last: str = field(default="", init=False)

    def pick(
        self, candidates: list[Candidate], totals: list[float], memory: SchedulerMemory, rng: random.Random
    ) -> int:
        order = sorted(range(len(candidates)), key=lambda i: candidates[i].name)
        chosen = order[0]
        for i in order:
            if candidates[i].name > self._last:
                chosen = i
                break
        self._last = candidates[chosen].name
        return chosen


@dataclass(frozen=True)
class LeastRequestPicker:
    """Fewest requests at the endpoint (see SchedulerMemory.load), random among ties; ignores
    scores (a baseline, like AIBrix's least-request)."""

    def pick(
        self, candidates: list[Candidate], totals: list[float], memory: SchedulerMemory, rng: random.Random
    ) -> int:
        return _random_best([-float(memory.load(c)) for c in candidates], rng, 0.0)
