"""Scorers: how good each candidate is for a request, in [0, 1], higher is better.

Load scorers normalise across the candidates (llm-d's min-max for queue depth), because only
the comparison matters to the picker: 3 vs 4 queued is a real difference, 0.31 vs 0.32 of KV
cache is not, which is why the KV scorer is absolute instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.router.scheduling.engine_blocks import EndpointBlocks
from services.router.scheduling.memory import SchedulerMemory
from services.router.scheduling.types import Candidate, SchedulingRequest


@dataclass(frozen=True)
class QueueDepthScorer:
    """Fewer requests at the endpoint (waiting + running, or the router's own in-flight count
    when larger) is better: min-max normalised, the least loaded scores 1, the most loaded 0."""

    def score(
        self, request: SchedulingRequest, candidates: list[Candidate], memory: SchedulerMemory
    ) -> list[float]:
        loads = [memory.load(c) for c in candidates]
        lo, hi = min(loads), max(loads)
        if hi == lo:
            return [1.0] * len(loads)
        span = hi - lo
        return [(hi - x) / span for x in loads]


@dataclass(frozen=True)
class KvCacheScorer:
    """More free KV cache is better: 1 - fraction in use. An engine that exports no KV figure
    (TGI, Ollama) scores the mean of the measured ones: neither preferred as if empty nor
    avoided as if full."""

    def score(
        self, request: SchedulingRequest, candidates: list[Candidate], memory: SchedulerMemory
    ) -> list[float]:
        scores = [1.0 - min(1.0, max(0.0, c.kv_cache_fraction)) for c in candidates]
        known = [s for s, c in zip(scores, candidates, strict=True) if c.kv_cache_known]
        if len(known) == len(scores):
            return scores
        neutral = sum(known) / len(known) if known else 1.0
        return [s if c.kv_cache_known else neutral for s, c in zip(scores, candidates, strict=True)]


@dataclass(frozen=True)
class PrefixCacheScorer:
    """Fraction of the request's leading prompt blocks recently sent to the endpoint (and so
    likely still in its KV cache, sparing their prefill). Blocks are chain-hashed as the
    engine's KV cache hashes them; a prompt shorter than one block scores 0 everywhere.

    The guess is weighted by how well each engine's cache keeps prefixes, from the prefix-cache
    hit rate it reports (vLLM, SGLang): see :func:`prefix_confidence`."""

    def score(
        self, request: SchedulingRequest, candidates: list[Candidate], memory: SchedulerMemory
    ) -> list[float]:
        hashes = memory.block_hashes(request)
        if not hashes:
            return [0.0] * len(candidates)
        n = len(hashes)
        matched = memory.prefix.matched
        scores = [matched(c.name, hashes) / n for c in candidates]
        confidence = prefix_confidence(candidates)
        if confidence is None:
            return scores
        return [s * w for s, w in zip(scores, confidence, strict=True)]


def prefix_confidence(candidates: list[Candidate]) -> list[float] | None:
    """How far to trust "these blocks went there, so they are cached there", per candidate:
    its engine's prefix-cache hit rate over the best one's among the candidates (they serve the
    same model to the same traffic, so a lower rate means a cache that keeps less). Unknown
    (Triton, TGI) counts as full trust; None when no candidate reports a rate. An engine whose
    cache finds nothing at all (prefix caching off) gets no affinity."""
    rates = [c.prefix_hit_rate for c in candidates]
    known = [r for r in rates if r >= 0.0]
    if not known:
        return None
    best = max(known)
    return [1.0 if r < 0.0 else (r / best if best > 0.0 else 0.0) for r in rates]


@dataclass(frozen=True)
class PrecisePrefixCacheScorer:
    """Fraction of the request's leading prompt blocks the endpoint's engine holds, as its KV
    events say (``memory.engine_blocks``): the prompt hashed with the engine's tokenizer, block
    size and hash chain, looked up in what the engine announced it stored and not yet evicted.

    An endpoint whose engine publishes no events, or whose index is resyncing after lost
    events, is scored as the approximate ``prefix-cache`` scorer scores it (the router's own
    record of where prompts went), so a profile can use this scorer over any mix of engines.
    While no engine publishes, the prompt is not tokenized at all."""

    def score(
        self, request: SchedulingRequest, candidates: list[Candidate], memory: SchedulerMemory
    ) -> list[float]:
        index = memory.engine_blocks
        out = [0.0] * len(candidates)
        by_block_size: dict[int, list[tuple[int, EndpointBlocks]]] = {}
        silent = []
        for i, c in enumerate(candidates):
            entry = index.live(c.name, c.model)
            if entry is None:
                silent.append(i)
            else:
                by_block_size.setdefault(entry.block_size, []).append((i, entry))
        if silent:
            approx = _APPROXIMATE.score(request, candidates, memory)
            for i in silent:
                out[i] = approx[i]
        for live in by_block_size.values():
            matched, blocks = memory.engine_prefix_matches(request, [entry for _, entry in live])
            if blocks:
                for (i, _), m in zip(live, matched, strict=True):
                    out[i] = m / blocks
        return out


_APPROXIMATE = PrefixCacheScorer()


@dataclass(frozen=True)
class SessionAffinityScorer:
    """1 for the endpoint the request's session last went to (its conversation is likely in
    that KV cache), 0 elsewhere; 0 everywhere without a session id."""

    def score(
        self, request: SchedulingRequest, candidates: list[Candidate], memory: SchedulerMemory
    ) -> list[float]:
        last = memory.sessions.get(request.session_id)
        if not last:
            return [0.0] * len(candidates)
        return [1.0 if c.name == last else 0.0 for c in candidates]


@dataclass(frozen=True)
class LatencyScorer:
    """Lower recent TTFT is better: best / own, so the fastest scores 1 and one twice as slow
    0.5 (a ratio, not min-max, so 100 ms vs 101 ms is not 1 vs 0). The router's own EWMA is
    used when it has one, else the pool's; an endpoint with neither scores 1, so it gets
    traffic and a measurement instead of being starved."""

    def score(
        self, request: SchedulingRequest, candidates: list[Candidate], memory: SchedulerMemory
    ) -> list[float]:
        get = memory.latency.get
        ttfts = [get(c.name) or c.recent_ttft_s for c in candidates]
        known = [t for t in ttfts if t > 0.0]
        if not known:
            return [1.0] * len(ttfts)
        best = min(known)
        return [best / t if t > 0.0 else 1.0 for t in ttfts]
