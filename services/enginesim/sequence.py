"""One request inside the simulated engine: what is asked (`GenerationRequest`), what each step
hands back (`TokenChunk`), the handle a caller streams from (`Sequence`), the errors a request
can fail with, and the counters the engine keeps (engine.py runs the step loop over these)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from services.common.kv_blocks import sim_token_ids

from .kv_cache import KvAllocation
from .text import END_OF_SCRIPT, TextGenerator
from .tool_calls import tool_call_script

if TYPE_CHECKING:
    from .engine import ModelEngine

QUEUE_FULL_MESSAGE = "Exceeds maximum queue size"  # Triton's wording, clients match on it


class EngineError(Exception):
    """Base class of errors a request can fail with inside the engine."""


class QueueFullError(EngineError):
    def __init__(self) -> None:
        super().__init__(QUEUE_FULL_MESSAGE)


class InvalidRequestError(EngineError):
    """The request can never be served (bad max_tokens, larger than the KV pool...)."""


class RequestCancelledError(EngineError):
    pass


class EngineStoppedError(EngineError):
    """The model was unloaded or the server stopped before the request finished."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_tokens: int
    seed: int = 0
    temperature: float = 0.0
    end_id: int | None = None
    stop_words: tuple[str, ...] = ()
    min_tokens: int = 0
    request_id: str = ""
    script: str | None = None  # the answer, fixed (the OpenAI API's tool calls); else generated


@dataclass(frozen=True)
class TokenChunk:
    """One step's output for one sequence: a text delta, or an empty final marker."""

    text: str
    token_id: int  # -1 when the chunk carries no token (stopped on end_id)
    index: int  # output tokens so far, including this one
    final: bool
    finish_reason: str | None = None  # "length" | "stop" | "end_id" on the final chunk


FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")  # Triton's failure reasons


@dataclass
class EngineStats:
    """Counters for ModelStatistics and /metrics; durations in simulated nanoseconds."""

    success: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))
    execution_count: int = 0  # engine iterations
    request_ns: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    last_inference_ms: int = 0  # wall clock, ms since the epoch, like Triton
    busy_real_s: float = 0.0  # real time spent inside finished steps (GPU utilization)
    # (busy_real_s before the step in progress, its start, its end) in the event loop's
    # (monotonic) time; (busy_real_s, 0, 0) between steps. One tuple, replaced whole, so a
    # scrape from another thread reads a consistent triple and counts the part of a long step
    # already run instead of all of it when it ends (which a 1 s utilisation window clips).
    busy_clock: tuple[float, float, float] = (0.0, 0.0, 0.0)
    last_step_batch: int = 0
    last_step_context: int = 0


WAITING, PREFILL, RUNNING, DONE, CANCELLED = "waiting", "prefill", "running", "done", "cancelled"


class Sequence:
    """Handle of one submitted request. Iterate :meth:`stream` for its chunks."""

    def __init__(self, engine: ModelEngine, request: GenerationRequest) -> None:
        spec = engine.spec
        tokens = sim_token_ids(request.prompt)
        self.request = request
        self.input_tokens = max(1, len(tokens))  # the BOS token of an empty prompt
        self.output_tokens = 0
        self.state = WAITING
        self.arrival_ms = engine.sim_now_ms
        self.admitted_ms = 0.0
        self.reserved_blocks = spec.kv_blocks_for(self.input_tokens + request.max_tokens)
        # vLLM's block hash chain (the digests the KV events announce; services/common/kv_blocks).
        self.prompt_block_hashes = tuple(engine.hasher.digests(tokens))
        self.prompt_token_ids = tokens
        self.kv: KvAllocation | None = None  # held from admission to the end
        self.reused_blocks = 0  # prompt blocks found in the KV cache on admission
        # Wall-clock nanoseconds, as TRT-LLM's perf-metric outputs report them.
        self.arrival_time_ns = time.time_ns()
        self.first_scheduled_time_ns = 0
        self.first_token_time_ns = 0
        self.last_token_time_ns = 0
        self._engine = engine
        self._pieces: list[str] = []
        self._tail = ""  # last characters, for stop-word matching without re-joining the text
        self._tail_len = max((len(w) for w in request.stop_words), default=0)
        script = request.script
        if script is None:
            script = tool_call_script(request.prompt)  # a prompt offering functions gets a call
        self._gen = TextGenerator(request.prompt, request.seed, request.temperature, script)
        self._events: asyncio.Queue[TokenChunk | EngineError] = asyncio.Queue()

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    @property
    def done(self) -> bool:
        return self.state in (DONE, CANCELLED)

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens this sequence's prefill computes (cached prefix blocks are skipped)."""
        cached = self.reused_blocks * self._engine.spec.kv_block_size
        return max(1, self.input_tokens - cached)

    async def stream(self) -> AsyncIterator[TokenChunk]:
        """Chunks until the final one; raises the EngineError the request failed with."""
        while True:
            item = await self._events.get()
            if isinstance(item, EngineError):
                raise item
            yield item
            if item.final:
                return

    async def collect(self) -> str:
        async for _ in self.stream():
            pass
        return self.text

    def cancel(self) -> None:
        """Drop the sequence wherever it is; a no-op once it finished."""
        self._engine._cancel(self, "CANCELED", RequestCancelledError("request was cancelled"))

    def fail(self, error: EngineError) -> None:
        """End the sequence with a backend error (failure injection); a no-op once finished."""
        self._engine._cancel(self, "BACKEND", error)

    # --- called by the engine -------------------------------------------------------------
    def _next_chunk(self) -> TokenChunk:
        token_id, piece = self._gen.next_token()
        req = self.request
        if token_id == END_OF_SCRIPT:
            return TokenChunk("", -1, self.output_tokens, final=True, finish_reason="stop")
        may_stop = self.output_tokens >= req.min_tokens
        if may_stop and req.end_id is not None and token_id == req.end_id:
            return TokenChunk("", -1, self.output_tokens, final=True, finish_reason="end_id")
        self.output_tokens += 1
        self._pieces.append(piece)
        reason = None
        if self._tail_len:
            self._tail = (self._tail + piece)[-self._tail_len :]
            if may_stop and any(self._tail.endswith(w) for w in req.stop_words if w):
                reason = "stop"
        if reason is None and self.output_tokens >= req.max_tokens:
            reason = "length"
        return TokenChunk(piece, token_id, self.output_tokens, final=reason is not None, finish_reason=reason)

    def _fail(self, error: EngineError) -> None:
        self._events.put_nowait(error)
