"""Core engine model: one continuous-batching step loop per loaded model (no gRPC here).

Model of one iteration (TensorRT-LLM's in-flight batching, simplified):
  1. admit waiting requests, first come first served, while there is a free slot
     (``max_running_sequences``) and the KV pool can reserve the whole sequence
     (prompt + max_tokens blocks, like TRT-LLM's default GUARANTEED_NO_EVICT policy);
     prompt blocks already in the KV cache (same prefix, see ``kv_cache``) are reused;
  2. run one step over the batch: newly admitted sequences are prefilled (and yield their
     first token), the others decode one token each;
     ``step_ms = step_overhead_ms + decode_ms_per_token * batch + prefill_ms_per_token * new prompt tokens``
     where a sequence's new prompt tokens exclude its reused blocks (at least 1 token is
     always computed, to produce the first output token);
  3. hand each sequence its token; finished ones leave and release their KV blocks.

Time: steps sleep ``step_ms / time_scale`` real seconds against a running deadline: a step that
ends late (asyncio oversleeps, handing out tokens takes time) shortens the next sleep, so the
average rate is right. The deadline restarts after idle, or when the loop has fallen more than
``MAX_LAG_S`` behind (a stalled process does not then burst through the backlog). All durations in the stats are in *simulated* time
(``sim_now_ms`` advances by each step's ``step_ms``), so they are deterministic and do not
depend on ``time_scale``. Requests that arrive mid-step are stamped with the step's start.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from services.common.kv_blocks import BlockHasher
from services.common.kv_events_wire import KvEvent

from .catalog import ModelSpec
from .kv_cache import KvBlockCache
from .sequence import (
    CANCELLED,
    DONE,
    PREFILL,
    RUNNING,
    WAITING,
    EngineError,
    EngineStats,
    EngineStoppedError,
    GenerationRequest,
    InvalidRequestError,
    QueueFullError,
    Sequence,
)

MAX_LAG_S = 0.05


class GpuClock:
    """One simulated GPU shared by the models loaded on it: their steps run one at a time (a
    real GPU time-slices co-located engines' kernels rather than running both at full speed).
    `free_at` is the event-loop time at which the GPU finishes the last step given to it."""

    def __init__(self) -> None:
        self.free_at = 0.0


class ModelEngine:
    """The step loop of one loaded model. Create, :meth:`start`, :meth:`submit`, :meth:`stop`.

    Engines given the same :class:`GpuClock` share its compute: a step starts when both this
    engine's schedule and the GPU allow, so two busy co-located models each run slower.
    """

    def __init__(
        self,
        spec: ModelSpec,
        time_scale: float = 1.0,
        gpu: GpuClock | None = None,
        kv_events: Callable[[list[KvEvent]], None] | None = None,
        hash_seed: str = "0",
    ) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        self.spec = spec
        self.time_scale = time_scale
        self.gpu = gpu if gpu is not None else GpuClock()
        self.stats = EngineStats()
        self.sim_now_ms = 0.0
        self._waiting: deque[Sequence] = deque()
        self._prefill: list[Sequence] = []  # admitted, prefilled in the next step
        self._running: list[Sequence] = []
        self.kv_cache = KvBlockCache(
            spec.kv_capacity_blocks,
            spec.kv_block_size,
            spec.kv_cache_reuse,
            record_events=kv_events is not None,
        )
        self.hasher = BlockHasher(spec.kv_block_size, hash_seed)
        self._kv_events = kv_events  # publishes the KV cache's events (vLLM's format), once per step
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._deadline = 0.0

    # --- observable state (read by metrics, possibly from another thread) ----------------
    @property
    def running(self) -> int:
        return len(self._running) + len(self._prefill)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_blocks_used(self) -> int:
        """KV blocks held by admitted sequences (reserved for their whole length)."""
        return self.kv_cache.used

    def step_time_ms(self, batch: int, prefill_tokens: int) -> float:
        """Simulated duration of one iteration over ``batch`` sequences."""
        lat = self.spec.latency
        return (
            lat.step_overhead_ms + lat.decode_ms_per_token * batch + lat.prefill_ms_per_token * prefill_tokens
        )

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"enginesim-step-{self.spec.name}")

    async def drain(self) -> None:
        """Refuse new requests and wait until the admitted and waiting ones finish."""
        self._closing = True
        await self._idle.wait()

    async def stop(self) -> None:
        """Stop now: unfinished requests fail with EngineStoppedError."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for seq in [*self._waiting, *self._prefill, *self._running]:
            seq.state = CANCELLED
            self.stats.failures["OTHER"] += 1
            seq._fail(EngineStoppedError(f"model '{self.spec.name}' was unloaded"))
        self._waiting.clear()
        self._prefill.clear()
        self._running.clear()
        self.kv_cache.reset()
        self._publish_kv_events()
        self._idle.set()

    # --- requests --------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> Sequence:
        """Queue a request. Raises QueueFullError, InvalidRequestError or EngineStoppedError."""
        if self._closing:
            raise EngineStoppedError(f"model '{self.spec.name}' is unloading")
        if request.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be >= 1, got {request.max_tokens}")
        seq = Sequence(self, request)
        if seq.reserved_blocks > self.spec.kv_capacity_blocks:
            raise InvalidRequestError(
                f"request needs {seq.reserved_blocks} KV cache blocks (prompt {seq.input_tokens} + "
                f"max_tokens {request.max_tokens} tokens) but the pool holds {self.spec.kv_capacity_blocks}"
            )
        if self._waiting or not self._try_admit(seq):
            if len(self._waiting) >= self.spec.max_queue_size:
                self.stats.failures["REJECTED"] += 1
                raise QueueFullError()
            self._waiting.append(seq)
        self._idle.clear()
        self._wake.set()
        return seq

    def _try_admit(self, seq: Sequence) -> bool:
        """Admit ``seq`` if a slot is free and its KV blocks can be reserved."""
        if self.running >= self.spec.max_running_sequences:
            return False
        seq.kv = self.kv_cache.allocate(seq.prompt_block_hashes, seq.reserved_blocks, seq.prompt_token_ids)
        if seq.kv is None:
            return False
        seq.reused_blocks = seq.kv.reused
        seq.state = PREFILL
        self._prefill.append(seq)
        return True

    def _release(self, seq: Sequence, state: str) -> None:
        if seq.kv is not None:
            self.kv_cache.release(seq.kv)
            seq.kv = None
        if seq.state == RUNNING:
            self._running.remove(seq)
        elif seq.state == PREFILL:
            self._prefill.remove(seq)
        elif seq.state == WAITING:
            self._waiting.remove(seq)
        seq.state = state
        self._admit_waiting()
        if not (self._waiting or self._prefill or self._running):
            self._idle.set()

    def _cancel(self, seq: Sequence, reason: str, error: EngineError) -> None:
        if seq.done:
            return
        self._release(seq, CANCELLED)
        self.stats.failures[reason] += 1
        seq._fail(error)
        self._wake.set()

    def _admit_waiting(self) -> None:
        # FCFS with head-of-line blocking, as TRT-LLM's FCFS capacity scheduler does.
        while self._waiting and self._try_admit(self._waiting[0]):
            self._waiting.popleft()

    def _publish_kv_events(self) -> None:
        if self._kv_events is not None:
            events = self.kv_cache.take_events()
            if events:
                self._kv_events(events)

    # --- the step loop ---------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._admit_waiting()
            self._publish_kv_events()  # one batch per step, as vLLM's scheduler publishes them
            if not self._prefill and not self._running:
                self._wake.clear()
                await self._wake.wait()
                self._deadline = loop.time()  # idle time is not owed to anyone
                continue
            new, self._prefill = self._prefill, []
            scheduled_ns = time.time_ns()
            for seq in new:
                seq.state = RUNNING
                seq.admitted_ms = self.sim_now_ms
                seq.first_scheduled_time_ns = scheduled_ns
                self.stats.queue_ns += int((seq.admitted_ms - seq.arrival_ms) * 1e6)
            self._running.extend(new)
            batch = list(self._running)
            prefill_tokens = sum(seq.prefill_tokens for seq in new)
            step_ms = self.step_time_ms(len(batch), prefill_tokens)
            self.stats.last_step_batch, self.stats.last_step_context = len(batch), len(new)

            now = loop.time()
            if self._deadline < now - MAX_LAG_S:
                self._deadline = now
            step_s = step_ms / 1000.0 / self.time_scale
            # The step starts when this engine is due and the GPU is free of other models' steps.
            start = max(self._deadline, self.gpu.free_at if self.gpu.free_at > now - MAX_LAG_S else now)
            self._deadline = self.gpu.free_at = start + step_s
            self.stats.busy_clock = (self.stats.busy_real_s, start, self._deadline)
            await asyncio.sleep(max(0.0, self._deadline - now))
            self.stats.busy_real_s += step_s  # GPU time this model used (not time spent waiting)
            self.stats.busy_clock = (self.stats.busy_real_s, 0.0, 0.0)
            self.sim_now_ms += step_ms
            self.stats.execution_count += 1

            token_ns = time.time_ns()
            for seq in batch:
                if seq.state != RUNNING:  # cancelled while the step ran
                    continue
                seq.last_token_time_ns = token_ns
                if not seq.first_token_time_ns:
                    seq.first_token_time_ns = token_ns
                chunk = seq._next_chunk()
                seq._events.put_nowait(chunk)
                if chunk.final:
                    self._finish(seq)

    def _finish(self, seq: Sequence) -> None:
        stats = self.stats
        stats.success += 1
        stats.input_tokens += seq.input_tokens
        stats.output_tokens += seq.output_tokens
        stats.compute_ns += int((self.sim_now_ms - seq.admitted_ms) * 1e6)
        stats.request_ns += int((self.sim_now_ms - seq.arrival_ms) * 1e6)
        stats.last_inference_ms = int(time.time() * 1000)
        self._release(seq, DONE)
