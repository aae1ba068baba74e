"""Schedule, queue when saturated, dispatch to an engine, fail over once (no gRPC server here).

schedule (filters -> scorers -> picker) -> if every candidate is saturated, wait in flow
control (SLO-class queues) -> stream from the chosen endpoint with the engine of its kind
(Triton gRPC or OpenAI HTTP, engine.py) -> if it fails before the first token, retry once on
another endpoint, of either kind (never after text was sent: that would duplicate it).
Feedback flows back into the scheduler: in-flight counts, where a prefix/session went, TTFT.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from services.common.errors import ResourceExhausted, Unavailable
from services.router.activation import Activator
from services.router.engine import (
    OPENAI,
    TRITON,
    Embedder,
    EmbeddingRequest,
    EmbeddingResult,
    Engine,
    EngineChunk,
)
from services.router.flow import FlowController
from services.router.scheduling import Candidate, Decision, Outcome, Scheduler, SchedulingRequest
from services.router.views import EndpointView

if TYPE_CHECKING:
    from services.router.call import Call


class Placement:
    """The call's journal entry for one try (`CallJournal.placed`), written when the engine says
    the request went out (`EngineRequest.on_sent`), so the write overlaps the engine's work, or at
    the latest before its first chunk goes on: the entry stands for the call before any of its
    answer is served. A failure to write it (fail-closed) ends the call without a retry: the next
    endpoint's entry could not be written either."""

    __slots__ = ("_journal", "done", "failed")

    def __init__(self, call: Call) -> None:
        self._journal = call.journal
        self.done = self._journal is None
        self.failed = False

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            self._journal.placed()  # type: ignore[union-attr]
        except Unavailable:
            self.failed = True
            raise


class Dispatcher:
    def __init__(
        self,
        endpoints: EndpointView,
        scheduler: Scheduler,
        flow: FlowController,
        triton: Engine,
        backend_timeout_s: float = 300.0,
        openai: Engine | None = None,
        activator: Activator | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.scheduler = scheduler
        self.flow = flow
        self.engines: dict[str, Engine] = {TRITON: triton}
        if openai is not None:
            self.engines[OPENAI] = openai
        self.backend_timeout_s = backend_timeout_s
        self.activator = activator  # None: a model with no ready endpoint is refused at once

    def engine(self, target: Candidate) -> Engine:
        engine = self.engines.get(target.kind or TRITON)
        if engine is None:  # retryable: another endpoint of a kind this router speaks may serve it
            raise Unavailable(
                f"endpoint {target.name} speaks {target.kind!r}, which this router has no engine for"
            )
        return engine

    def embedder(self, target: Candidate) -> Embedder:
        engine = self.engine(target)
        if not hasattr(engine, "embed"):  # retryable: a Triton endpoint may serve the model
            raise Unavailable(
                f"endpoint {target.name} speaks {target.kind!r}, which this router cannot embed on"
            )
        return engine  # type: ignore[return-value]

    def _pick(self, request: SchedulingRequest, exclude: frozenset[str]) -> Decision:
        candidates = self.endpoints.candidates(request.model)
        if exclude:
            candidates = [c for c in candidates if c.name not in exclude]
        return self.scheduler.pick(request, candidates)

    def _held(self, triton_model: str) -> bool:
        return self.activator is not None and self.activator.holds(triton_model)

    async def choose(
        self,
        request: SchedulingRequest,
        call: Call,
        exclude: frozenset[str] = frozenset(),
        *,
        place: bool = True,
    ) -> Candidate:
        """The endpoint for the call (queueing while every candidate is saturated). With `place`,
        the call's journal entry is written now; `stream` leaves it to the engine (`Placement`)."""
        decision = self._pick(request, exclude)
        if decision.outcome == Outcome.NO_READY and not exclude and self._held(request.model):
            # Scaled to zero: wait for the wake instead of failing, within the call's deadline.
            left = call.inp.timeout_s
            if left is not None:
                left -= time.perf_counter() - call.started
            await self.activator.hold(request.model, left)  # type: ignore[union-attr]
            decision = self._pick(request, exclude)
        if decision.outcome == Outcome.SATURATED:

            def saturated() -> bool:
                return self._pick(request, exclude).outcome == Outcome.SATURATED

            try:
                call.queue_s += await self.flow.wait_turn(
                    call.slo, request.agent, saturated, call.inp.timeout_s
                )
            except ResourceExhausted:
                call.shed = True
                raise
            decision = self._pick(request, exclude)
        if decision.endpoint is None:
            tried = f" (besides {sorted(exclude)})" if exclude else ""
            raise Unavailable(
                f"no ready endpoint serves model {request.model!r}{tried}; "
                "deploy it in the pool or wait for it to load"
            )
        call.endpoint = decision.endpoint
        if place and call.journal is not None:  # where it will run is known: made durable now
            call.journal.placed()
        return decision.endpoint

    async def stream(self, call: Call) -> AsyncIterator[EngineChunk]:
        """The engine's chunks for `call`; fills in where it ran, its queue time and GPU share."""
        request, engine_request = call.scheduling_request(), call.engine_request()
        tried: frozenset[str] = frozenset()
        first_failure: Unavailable | None = None
        while True:
            target = await self._choose_again(request, call, tried, first_failure, place=False)
            call.endpoint = target
            self.scheduler.acquire(target)
            sharing = max(1, self.scheduler.memory.load(target))
            started, sent = time.perf_counter(), False
            placement = Placement(call)
            try:
                engine = self.engine(target)
                req = dataclasses.replace(engine_request, on_sent=placement)
                async for chunk in engine.stream(target.address, req, self.backend_timeout_s):
                    if not placement.done:  # an engine that does not say when the request went out
                        placement()
                    if chunk.text and not sent:
                        sent = True
                        self.scheduler.observe_ttft(target, time.perf_counter() - started)
                    yield chunk
                self.scheduler.record(target, request)
                return
            except Unavailable as exc:
                if sent or tried or placement.failed:  # text went out, the retry, or unrecordable
                    raise
                first_failure = exc
                tried = frozenset({target.name})
                call.failed_over_from = target.name
            finally:
                call.gpu_seconds += (time.perf_counter() - started) / sharing
                self.scheduler.release(target)
                self.flow.capacity_changed(1)

    async def _choose_again(
        self,
        request: SchedulingRequest,
        call: Call,
        tried: frozenset[str],
        first_failure: Unavailable | None,
        place: bool = True,
    ) -> Candidate:
        """The endpoint for a first try, or for the one retry after `first_failure`."""
        try:
            return await self.choose(request, call, tried, place=place)
        except Unavailable as exc:
            if first_failure is None:
                raise
            raise Unavailable(
                f"{exc.message}; the first try failed: {first_failure.message}"
            ) from first_failure

    async def embed(self, call: Call) -> EmbeddingResult:
        """An embedding call's vectors from one endpoint; one retry elsewhere if it is unavailable.
        Fills in where it ran, its queue time and GPU share, as `stream` does."""
        request = call.scheduling_request()
        req = EmbeddingRequest(model=request.model, texts=call.texts, request_id=call.engine_request_id)
        tried: frozenset[str] = frozenset()
        first_failure: Unavailable | None = None
        while True:
            target = await self._choose_again(request, call, tried, first_failure)
            call.endpoint = target
            self.scheduler.acquire(target)
            sharing = max(1, self.scheduler.memory.load(target))
            started = time.perf_counter()
            try:
                result = await self.embedder(target).embed(target.address, req, self.backend_timeout_s)
                self.scheduler.record(target, request)
                return result
            except Unavailable as exc:
                if tried:
                    raise
                first_failure, tried, call.failed_over_from = exc, frozenset({target.name}), target.name
            finally:
                call.gpu_seconds += (time.perf_counter() - started) / sharing
                self.scheduler.release(target)
                self.flow.capacity_changed(1)
