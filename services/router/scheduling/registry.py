"""Plugin interfaces and the registry that builds plugins by name from YAML params.

Three families, as in llm-d's endpoint picker: a Filter narrows the candidates, a Scorer gives
each remaining candidate a score in [0, 1], a Picker chooses one from the weighted totals.
Plugins get the whole candidate list at once (not one candidate per call) so a scorer can
normalise against the others and the hot path makes one call per plugin, not one per endpoint.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

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


T = TypeVar("T")


class PluginRegistry:
    """Plugin classes by (kind, name). Params from YAML become constructor keyword arguments."""

    def __init__(self) -> None:
        self._plugins: dict[tuple[str, str], Callable[..., Any]] = {}

    def register(self, kind: str, name: str) -> Callable[[T], T]:
        if kind not in KINDS:
            raise ValueError(f"plugin kind must be one of {KINDS}, got {kind!r}")

        def decorate(cls: T) -> T:
            if (kind, name) in self._plugins:
                raise ValueError(f"{kind} plugin {name!r} is already registered")
            self._plugins[(kind, name)] = cls  # type: ignore[assignment]
            return cls

        return decorate

    def names(self, kind: str) -> list[str]:
        return sorted(n for k, n in self._plugins if k == kind)

    def build(self, kind: str, name: str, params: Mapping[str, Any] | None = None) -> Any:
        """Constructs plugin ``name``; ValueError for an unknown plugin, an unknown or missing
        param, or a bad value (the plugin's own check)."""
        cls = self._plugins.get((kind, name))
        if cls is None:
            raise ValueError(f"unknown {kind} {name!r}; known: {self.names(kind)}")
        params = dict(params or {})
        accepted = {
            p.name
            for p in inspect.signature(cls).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        unknown = sorted(set(params) - accepted)
        if unknown:
            raise ValueError(f"{kind} {name!r}: unknown param(s) {unknown}; accepted: {sorted(accepted)}")
        try:
            return cls(**params)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{kind} {name!r}: {exc}") from exc


REGISTRY = PluginRegistry()


def register_filter(name: str) -> Callable[[T], T]:
    """Class decorator: registers a Filter under ``name`` in the default registry."""
    return REGISTRY.register(FILTER, name)


def register_scorer(name: str) -> Callable[[T], T]:
    """Class decorator: registers a Scorer under ``name`` in the default registry."""
    return REGISTRY.register(SCORER, name)


def register_picker(name: str) -> Callable[[T], T]:
    """Class decorator: registers a Picker under ``name`` in the default registry."""
    return REGISTRY.register(PICKER, name)
