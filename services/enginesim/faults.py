"""Failure injection: which requests fail, and how (no gRPC here).

Every inference request draws once: with probability ``rate`` it gets one fault, picked
uniformly from ``kinds``:

- ``unavailable``: rejected before queueing with UNAVAILABLE (what an overloaded or
  restarting Triton answers; routers should retry elsewhere);
- ``internal``: rejected with INTERNAL (a backend error; not safe to retry blindly);
- ``midstream``: generation starts, then fails after ``midstream_after_tokens`` tokens (a
  streamed error response on ModelStreamInfer, INTERNAL on ModelInfer);
- ``slow_start``: the request waits ``slow_start_ms`` before it is queued, so its time to
  first token grows by that much (a cold CUDA graph, a paused process).

Durations are simulated time, like every duration of the simulator (divided by --time-scale).
Settings are set by flags and changed at runtime (``PUT /faults`` on the metrics port, see
``admin.py``); the injector swaps its settings object atomically, so an HTTP thread may
replace it while the event loop draws.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .sequence import EngineError

FAULT_KINDS = ("unavailable", "internal", "midstream", "slow_start")

INJECTED_UNAVAILABLE = "injected fault: server unavailable (enginesim failure injection)"
INJECTED_INTERNAL = "injected fault: internal backend error (enginesim failure injection)"
INJECTED_MIDSTREAM = "injected fault: generation failed after {n} token(s) (enginesim failure injection)"


class FaultSettingsError(ValueError):
    """A fault setting is out of range or unknown."""


class InjectedUnavailable(EngineError):
    def __init__(self) -> None:
        super().__init__(INJECTED_UNAVAILABLE)


class InjectedInternal(EngineError):
    """An injected backend error (before generation, or mid-stream)."""


@dataclass(frozen=True)
class FaultSettings:
    rate: float = 0.0  # probability that a request gets a fault, 0..1
    kinds: tuple[str, ...] = FAULT_KINDS  # the faults to pick from, uniformly
    slow_start_ms: float = 1000.0  # extra wait of a slow_start request (simulated ms)
    midstream_after_tokens: int = 1  # tokens a midstream request yields before failing
    models: tuple[str, ...] = ()  # models the faults apply to; empty = all

    def __post_init__(self) -> None:
        if not (isinstance(self.rate, int | float) and 0.0 <= self.rate <= 1.0):
            raise FaultSettingsError(f"fault rate must be between 0 and 1, got {self.rate!r}")
        unknown = [k for k in self.kinds if k not in FAULT_KINDS]
        if unknown or not self.kinds:
            raise FaultSettingsError(
                f"fault kinds must be a non-empty subset of {list(FAULT_KINDS)}, got {list(self.kinds)}"
            )
        if not (isinstance(self.slow_start_ms, int | float) and math.isfinite(self.slow_start_ms)):
            raise FaultSettingsError(f"slow_start_ms must be a number, got {self.slow_start_ms!r}")
        if self.slow_start_ms < 0:
            raise FaultSettingsError(f"slow_start_ms must be >= 0, got {self.slow_start_ms}")
        if isinstance(self.midstream_after_tokens, bool) or not isinstance(self.midstream_after_tokens, int):
            raise FaultSettingsError(
                f"midstream_after_tokens must be an integer, got {self.midstream_after_tokens!r}"
            )
        if self.midstream_after_tokens < 0:
            raise FaultSettingsError(
                f"midstream_after_tokens must be >= 0, got {self.midstream_after_tokens}"
            )

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "kinds": list(self.kinds), "models": list(self.models)}

    def updated(self, changes: Mapping[str, Any]) -> FaultSettings:
        """A copy with ``changes`` (JSON-shaped: lists for kinds/models) applied and validated."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise FaultSettingsError(f"unknown fault setting(s) {unknown}; known: {sorted(fields)}")
        values = dict(changes)
        for key in ("kinds", "models"):
            if key in values:
                if not isinstance(values[key], list | tuple) or not all(
                    isinstance(v, str) for v in values[key]
                ):
                    raise FaultSettingsError(f"{key} must be a list of strings, got {values[key]!r}")
                values[key] = tuple(values[key])
        return dataclasses.replace(self, **values)


@dataclass(frozen=True)
class Fault:
    kind: str
    slow_start_ms: float = 0.0
    after_tokens: int = 0


class FaultInjector:
    def __init__(self, settings: FaultSettings | None = None, seed: int | None = None) -> None:
        self.settings = settings or FaultSettings()
        self._rng = random.Random(seed)  # a seed makes a run's fault sequence reproducible
        self.injected: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)

    def draw(self, model: str) -> Fault | None:
        """The fault this request gets, if any (one draw per request)."""
        s = self.settings  # one read: a concurrent update applies to the next request
        if s.rate <= 0 or (s.models and model not in s.models):
            return None
        if self._rng.random() >= s.rate:
            return None
        kind = self._rng.choice(s.kinds)
        self.injected[kind] += 1
        return Fault(kind, slow_start_ms=s.slow_start_ms, after_tokens=s.midstream_after_tokens)
