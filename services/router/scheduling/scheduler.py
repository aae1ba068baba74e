"""The Scheduler: picks an endpoint for a request and learns from where requests went."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from services.router.scheduling.memory import SchedulerMemory
from services.router.scheduling.profiles import Profile, SchedulerConfig, load_config, parse_config
from services.router.scheduling.types import Candidate, Decision, Outcome, SchedulingRequest


class Scheduler:
    """Filter -> weighted score -> pick over endpoint candidates, per the request's profile.

    Not thread-safe: it is meant for the router's event loop (plain method calls, no awaits).
    Feedback hooks, called by the router after dispatch:

    - ``record(endpoint, request)``: the request went there (prefix blocks and session learnt);
    - ``acquire(endpoint)`` / ``release(endpoint)``: bracket a request in flight there;
    - ``observe_ttft(endpoint, seconds)``: the measured time to first token.
    """

    def __init__(self, config: SchedulerConfig | None = None, *, seed: int | None = None) -> None:
        self.config = config or load_config()
        self.memory = SchedulerMemory(self.config.memory)
        self._profiles = self.config.profiles
        self._select = self.config.selector.select
        self._rng = random.Random(seed)

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, *, seed: int | None = None) -> Scheduler:
        return cls(load_config(path), seed=seed)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, seed: int | None = None) -> Scheduler:
        return cls(parse_config(raw), seed=seed)

    @property
    def profiles(self) -> Mapping[str, Profile]:
        return self._profiles

    def profile_for(self, request: SchedulingRequest) -> Profile:
        return self._profiles[self._select(request)]

    def pick(
        self, request: SchedulingRequest, candidates: Sequence[Candidate], profile: str | None = None
    ) -> Decision:
        """Chooses an endpoint. ``profile`` overrides the selection (e.g. a benchmark baseline);
        an unknown name raises KeyError. Never raises for an empty or unusable candidate list:
        the Decision's outcome says NO_READY or SATURATED instead."""
        prof = self._profiles[profile] if profile is not None else self.profile_for(request)
        memory = self.memory
        cands = list(candidates)
        if not cands:
            return Decision(Outcome.NO_READY, prof.name, reason="no candidates")
        for fname, filt in prof.filters:
            cands = filt.filter(request, cands, memory)
            if not cands:
                return Decision(filt.empty_outcome, prof.name, reason=fname)
        n = len(cands)
        totals = [0.0] * n
        per_scorer: list[tuple[str, list[float]]] = []
        for ws in prof.scorers:
            if ws.weight == 0.0:
                continue  # disabled in config; don't pay for it on the hot path
            scores = ws.scorer.score(request, cands, memory)
            per_scorer.append((ws.name, scores))
            w = ws.weight
            for i in range(n):
                totals[i] += w * scores[i]
        idx = prof.picker.pick(cands, totals, memory, self._rng) if n > 1 else 0
        return Decision(
            Outcome.PICKED,
            prof.name,
            cands[idx],
            tuple((name, scores[idx]) for name, scores in per_scorer),
            totals[idx],
            n,
        )

    # --- feedback -------------------------------------------------------------------------
    def record(self, endpoint: str | Candidate, request: SchedulingRequest) -> None:
        """Remembers that ``request`` was sent to ``endpoint`` (call it for the endpoint that
        actually served it, after a failover too)."""
        name = endpoint if isinstance(endpoint, str) else endpoint.name
        self.memory.prefix.record(name, self.memory.block_hashes(request))
        self.memory.sessions.record(request.session_id, name)

    def acquire(self, endpoint: Candidate) -> None:
        """A request for ``endpoint.model`` was dispatched to it; pair with ``release``."""
        inflight, key = self.memory.inflight, (endpoint.name, endpoint.model)
        inflight[key] = inflight.get(key, 0) + 1

    def release(self, endpoint: Candidate) -> None:
        """A request at ``endpoint`` finished, failed or was cancelled."""
        inflight, key = self.memory.inflight, (endpoint.name, endpoint.model)
        left = inflight.get(key, 0) - 1
        if left > 0:
            inflight[key] = left
        else:
            inflight.pop(key, None)

    def observe_ttft(self, endpoint: str | Candidate, seconds: float) -> None:
        name = endpoint if isinstance(endpoint, str) else endpoint.name
        self.memory.latency.observe(name, seconds)

    def forget(self, endpoints: Iterable[str]) -> None:
        """Drops memory of endpoints that left the pool (sessions pointing there just stop
        matching)."""
        self.memory.forget(endpoints)
