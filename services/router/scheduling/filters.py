"""Filters: which candidates may serve a request at all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from services.router.scheduling.memory import SchedulerMemory
from services.router.scheduling.types import Candidate, Outcome, SchedulingRequest


@dataclass(frozen=True)
class ModelReadyFilter:
    """Keeps endpoints that have the request's model loaded and READY."""

    empty_outcome: ClassVar[Outcome] = Outcome.NO_READY

    def filter(
        self, request: SchedulingRequest, candidates: list[Candidate], memory: SchedulerMemory
    ) -> list[Candidate]:
        model = request.model
        return [c for c in candidates if c.ready and c.model == model]


@dataclass(frozen=True)
class HealthyFilter:
    """Keeps endpoints whose last probe succeeded."""

    empty_outcome: ClassVar[Outcome] = Outcome.NO_READY

    def filter(
        self, request: SchedulingRequest, candidates: list[Candidate], memory: SchedulerMemory
    ) -> list[Candidate]:
        return [c for c in candidates if c.healthy]


@dataclass(frozen=True)
class NotSaturatedFilter:
    """Drops endpoints over a load threshold: more than ``max_waiting`` queued requests, or KV
    cache use above ``max_kv_fraction`` (llm-d's defaults: 5 and 0.8).

    A request only waits in TRT-LLM when the running batch or the KV cache is full, so a queue
    means the next request pays at least one full generation before its first token. When every
    candidate is dropped the scheduler reports SATURATED and the router's flow control decides
    (queue by SLO class, or shed). An engine that exports no KV figure is judged on its queue
    alone."""

    empty_outcome: ClassVar[Outcome] = Outcome.SATURATED
    max_waiting: int = 5
    max_kv_fraction: float = 0.8

    def __post_init__(self) -> None:
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting}")
        if not 0.0 < self.max_kv_fraction <= 1.0:
            raise ValueError(f"max_kv_fraction must be in (0, 1], got {self.max_kv_fraction}")

    def filter(
        self, request: SchedulingRequest, candidates: list[Candidate], memory: SchedulerMemory
    ) -> list[Candidate]:
        max_waiting, max_kv = self.max_waiting, self.max_kv_fraction
        waiting = memory.waiting
        return [
            c
            for c in candidates
            if (c.kv_cache_fraction <= max_kv or not c.kv_cache_known) and waiting(c) <= max_waiting
        ]
