"""Where a generation's text comes from: the result cache, an identical call already in flight
(coalescing), or a dispatch of our own; with the agent's output redaction applied before the
text leaves the router or enters the cache.

Deterministic requests (temperature 0 or a fixed seed) are cacheable. The key covers the calling
agent and user, the model, the sampling parameters, the redacted prompt and the agent's redaction
policy: an entry is only ever served to the caller it was made for, already redacted the way
that agent requires. `bypass_cache` skips the lookup (and coalescing) and refreshes the entry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from services.router.dispatch import Dispatcher, DispatchInfo
from services.router.flow import SloClass
from services.router.metrics import RouterMetrics
from services.router.privacy import OutputRedaction
from services.router.result_cache import CachedResult, CacheKeys, Coalescer, ResultCache, is_deterministic
from services.router.scheduling import SchedulingRequest
from services.router.triton import TritonChunk, TritonRequest


class Usage(Protocol):
    input_tokens: int
    output_tokens: int
    cached: str
    complete: bool


class Producer:
    def __init__(
        self,
        dispatcher: Dispatcher,
        cache: ResultCache,
        metrics: RouterMetrics,
        cache_ttl_s: float,
        keys: CacheKeys | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.cache = cache
        self.keys = keys or CacheKeys()
        self.coalescer = Coalescer()
        self.metrics = metrics
        self.cache_ttl_s = cache_ttl_s

    async def stream(
        self,
        request: TritonRequest,
        sched_request: SchedulingRequest,
        slo: SloClass,
        timeout_s: float | None,
        info: DispatchInfo,
        usage: Usage,
        output: OutputRedaction,
        *,
        user: str,
        bypass_cache: bool = False,
    ) -> AsyncIterator[str]:
        """Text deltas (already redacted); `usage` gets the token counts and where it came from.

        The cache is scoped to `sched_request.agent` and `user` (the caller's identity)."""

        def dispatched() -> AsyncIterator[str]:
            return self._dispatch(request, sched_request, slo, timeout_s, info, usage, output)

        if not (self.cache_ttl_s > 0 and is_deterministic(request.temperature, request.seed)):
            async for delta in dispatched():
                yield delta
            return
        params = {
            "max_tokens": request.max_tokens, "temperature": request.temperature, "top_p": request.top_p,
            "top_k": request.top_k, "seed": request.seed, "stop": list(request.stop),
            "redaction": output.fingerprint,
        }  # fmt: skip
        key = self.keys.generation(sched_request.agent, user, request.model, params, request.prompt)
        found = None if bypass_cache else await self.cache.get(key)
        kind = "hit"
        if found is None and not bypass_cache:
            found = await self.coalescer.follow(key)  # an identical call in flight: its result is ours
            kind = "coalesced"
        if found is not None:
            usage.cached = kind
            self.metrics.cache_hits.labels(kind).inc()
            usage.input_tokens, usage.output_tokens = found.input_tokens, found.output_tokens
            usage.complete = True
            yield found.text
            return
        async for delta in self._lead(key, dispatched, info, usage):
            yield delta

    async def _lead(
        self, key: str, dispatched: Callable[[], AsyncIterator[str]], info: DispatchInfo, usage: Usage
    ) -> AsyncIterator[str]:
        """Streams our own dispatch straight through and shares the result at the end."""
        lead = self.coalescer.lead(key)
        parts: list[str] = []
        outcome: CachedResult | BaseException = asyncio.CancelledError()
        try:
            async for delta in dispatched():
                parts.append(delta)
                yield delta
            deployment = info.endpoint.name if info.endpoint else ""
            outcome = CachedResult("".join(parts), usage.input_tokens, usage.output_tokens, "", deployment)
        except BaseException as exc:
            outcome = asyncio.CancelledError() if isinstance(exc, GeneratorExit) else exc
            raise
        finally:
            self.coalescer.done(key, lead, outcome)
        await self.cache.put(key, outcome, self.cache_ttl_s)

    async def _dispatch(
        self,
        request: TritonRequest,
        sched_request: SchedulingRequest,
        slo: SloClass,
        timeout_s: float | None,
        info: DispatchInfo,
        usage: Usage,
        output: OutputRedaction,
    ) -> AsyncIterator[str]:
        async for chunk in self.dispatcher.stream(sched_request, request, slo, timeout_s, info):
            _count(usage, chunk)
            text = await output.feed(chunk.text) if chunk.text else ""
            if chunk.final:  # the engine's last word: release what redaction held with it
                text += output.flush()
                usage.complete = bool(text)
            if text:
                yield text
        if tail := output.flush():
            yield tail


def _count(usage: Usage, chunk: TritonChunk) -> None:
    if chunk.input_tokens is not None:
        usage.input_tokens = chunk.input_tokens
    if chunk.output_tokens is not None:
        usage.output_tokens = max(usage.output_tokens, chunk.output_tokens)
