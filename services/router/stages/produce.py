"""Where the answer comes from: CacheCoalesce (the exact-result cache, or an identical call
already in flight) and Dispatch (schedule, queue when saturated, stream from the engine with one
failover; the source of the pipeline's chunks)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from services.router.call import Call, Chunk
from services.router.dispatch import Dispatcher
from services.router.engine import estimate_tokens
from services.router.metrics import RouterMetrics
from services.router.pipeline import Stage
from services.router.result_cache import CachedResult, CacheKeys, Coalescer, ResultCache, is_deterministic
from services.router.views import EndpointView


class CacheCoalesce(Stage):
    """Deterministic calls (temperature 0 or a fixed seed) are answered from the cache, or share
    an identical call in flight; otherwise this call leads and stores its redacted answer. The
    key covers the calling agent and user, the model, the sampling parameters, the redacted
    prompt and the agent's redaction policy."""

    name = "cache-coalesce"

    def __init__(self, cache: ResultCache, keys: CacheKeys, metrics: RouterMetrics, ttl_s: float) -> None:
        self.cache = cache
        self.keys = keys
        self.coalescer = Coalescer()
        self.metrics = metrics
        self.ttl_s = ttl_s

    def key(self, call: Call) -> str:
        inp = call.inp
        params = {
            "max_tokens": call.max_tokens, "temperature": inp.temperature, "top_p": inp.top_p,
            "top_k": inp.top_k, "seed": inp.seed, "stop": list(inp.stop),
            "redaction": call.output.fingerprint if call.output else "",
        }  # fmt: skip
        # Scoped to the calling agent and user: an entry is only served to the caller it was made for.
        model = call.engine_request().model
        return self.keys.generation(call.agent_name, call.ctx.identity.user, model, params, call.prompt)

    async def enter(self, call: Call) -> None:
        if not (self.ttl_s > 0 and is_deterministic(call.inp.temperature, call.inp.seed)):
            return
        key = self.key(call)
        found = kind = None
        if not call.inp.bypass_cache:  # a bypass skips lookup and coalescing; its result refreshes
            found, kind = await self.cache.get(key), "hit"
            if found is None:
                found, kind = await self.coalescer.follow(key), "coalesced"  # in flight: its result is ours
        if found is None:
            call.cache_key, call.cache_lead = key, self.coalescer.lead(key)
            return
        call.cached, call.answer = kind, found
        call.input_tokens, call.output_tokens = found.input_tokens, found.output_tokens
        self.metrics.cache_hits.labels(kind).inc()

    async def complete(self, call: Call, error: BaseException | None) -> None:
        if call.cache_lead is None:
            return
        outcome: CachedResult | BaseException
        if error is None:
            deployment = call.endpoint.name if call.endpoint else ""
            outcome = CachedResult(call.text, call.input_tokens, call.output_tokens, "", deployment)
        else:
            outcome = asyncio.CancelledError() if isinstance(error, GeneratorExit) else error
        self.coalescer.done(call.cache_key, call.cache_lead, outcome)
        if error is None:
            await self.cache.put(call.cache_key, outcome, self.ttl_s)


def estimate_cut_usage(call: Call) -> None:
    """A stream cut before the engine's usage arrived (an OpenAI-protocol engine sends it in its
    last event, which a caller who leaves early never lets come): the counts are estimated from
    the prompt and the text already sent, and marked so, rather than recorded and charged as 0."""
    call.input_tokens = call.input_tokens or call.prompt_tokens
    call.output_tokens = max(len(call.text_parts), estimate_tokens(call.text))
    call.usage_estimated = True


class Dispatch(Stage):
    """Streams the answer: a cached one, or the engine's (dispatcher.py: schedule, flow control,
    one failover before the first token)."""

    name = "dispatch"

    def __init__(self, dispatcher: Dispatcher, endpoints: EndpointView) -> None:
        self.dispatcher = dispatcher
        self.endpoints = endpoints

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        call.dispatched = True
        if call.answer is not None:
            call.reached_backend = True  # rate limits count a cached answer's tokens too
            yield Chunk(call.answer.text, True, call.answer.output_tokens)
        else:
            try:
                async for chunk in self.dispatcher.stream(call):
                    yield call.take(chunk)
            finally:
                call.gpu_type = self.endpoints.gpu_type(call.endpoint.name) if call.endpoint else ""
                if call.text_parts and not call.output_tokens:
                    estimate_cut_usage(call)
        call.reached_backend = True
        call.ended_normally()
