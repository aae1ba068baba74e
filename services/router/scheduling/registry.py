"""Plugin interfaces of the scheduler (the registry that builds them by name from YAML params is
services.common.plugins.PluginRegistry; the built-in plugins are listed in builtin.py).

Three families, as in llm-d's endpoint picker: a Filter narrows the candidates, a Scorer gives
each remaining candidate a score in [0, 1], a Picker chooses one from the weighted totals.
Plugins get the whole candidate list at once (not one candidate per call) so a scorer can
normalise against the others and the hot path makes one call per plugin, not one per endpoint.
"""

from __future__ import annotations

import random
from typing import Protocol

from services.common.plugins import PluginRegistry
from services.router.scheduling.memory import SchedulerMemory
from services.router.scheduling.types import Candidate, Outcome, SchedulingRequest

FILTER = "filter"
SCORER = "scorer"
PICKER = "picker"
KINDS = (FILTER, SCORER, PICKER)


class Filter(Protocol):
    """Returns the subset of ``candidates`` that may serve the request (order kept).

    ``empty_outcome`` tells the caller what an empty result from this filter means: NO_READY
    (nothing can serve the model) or SATURATED (something could, but everything is busy)."""

    empty_outcome: Outcome

    def filter(
        self, request: SchedulingRequest, candidates: list[Candidate], memory: SchedulerMemory
    ) -> list[Candidate]: ...


class Scorer(Protocol):
    """Returns one score in [0, 1] per candidate, aligned with ``candidates``; higher is better."""

    def score(
        self, request: SchedulingRequest, candidates: list[Candidate], memory: SchedulerMemory
    ) -> list[float]: ...


class Picker(Protocol):
    """Returns the index of the chosen candidate (``candidates`` is never empty)."""

    def pick(
        self,
        candidates: list[Candidate],
        totals: list[float],
        memory: SchedulerMemory,
        rng: random.Random,
    ) -> int: ...


def scheduler_registry(filters=None, scorers=None, pickers=None) -> PluginRegistry:
    """A registry of the three scheduler kinds holding exactly these plugin classes, by name."""
    return PluginRegistry(KINDS, {FILTER: filters or {}, SCORER: scorers or {}, PICKER: pickers or {}})
