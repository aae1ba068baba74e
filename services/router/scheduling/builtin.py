"""The built-in scheduler plugins, listed in one place (profiles name them in YAML)."""

from __future__ import annotations

from services.router.scheduling import filters, pickers, scorers
from services.router.scheduling.registry import scheduler_registry

FILTERS = {
    "model-ready": filters.ModelReadyFilter,
    "healthy": filters.HealthyFilter,
    "not-saturated": filters.NotSaturatedFilter,
}

SCORERS = {
    "queue-depth": scorers.QueueDepthScorer,
    "kv-cache": scorers.KvCacheScorer,
    "prefix-cache": scorers.PrefixCacheScorer,
    "precise-prefix-cache": scorers.PrecisePrefixCacheScorer,
    "session-affinity": scorers.SessionAffinityScorer,
    "latency": scorers.LatencyScorer,
}

PICKERS = {
    "max-score": pickers.MaxScorePicker,
    "random": pickers.RandomPicker,
    "round-robin": pickers.RoundRobinPicker,
    "least-request": pickers.LeastRequestPicker,
}

REGISTRY = scheduler_registry(FILTERS, SCORERS, PICKERS)
