"""The director: runs one call through an ordered list of stages, in the shape of the Gateway API
Inference Extension's request-control director (named phases, plugins per phase, response
hooks).

Each stage has three hooks:
- `enter(call)`: in list order, before anything is streamed; raising refuses the call.
- `await on_chunk(call, chunk)`: for every chunk, in reverse list order (the response travels back
  out through the stages, as through Envoy's filters); returns the chunk to pass on.
- `complete(call, error)`: once the call ends (normally, by an error, or because the caller went
  away), in reverse order, for every stage whose `enter` was called: what the call's records
  need (its cost, then the records themselves).
- `release(call, error)`: after every `complete`, in the same order: what the caller need not
  wait for (budget and rate-limit holds settled, metrics counted). A front door may run these
  once it has sent the answer's last byte (`Call.after_answer`); otherwise they run at once.
  The completions go there too when the call has a durable journal entry (it was dispatched):
  that entry already stands for the call in the audit and usage records (shipped as an aborted
  call should the process die first), so nothing is served unrecorded while the caller gets its
  last bytes before the records are written. A call without one (refused, served from the cache)
  completes before its answer ends, as every call does where no front door defers.
Each completion and release runs even when an earlier one raised: a failed budget settle must
not skip the others. Their errors are logged and counted, never silently swallowed, and never
replace the call's own outcome.

The last stage is the source: its `stream(call)` produces the engine's chunks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Protocol

from prometheus_client import Counter

from services.common.errors import HarnessError
from services.router.call import Call, Chunk

log = logging.getLogger("harness.router.pipeline")


class Stage:
    """A step of the request path; override the hooks it needs (the defaults do nothing)."""

    name = "stage"

    async def enter(self, call: Call) -> None:
        return None

    async def on_chunk(self, call: Call, chunk: Chunk) -> Chunk:
        return chunk

    async def complete(self, call: Call, error: BaseException | None) -> None:
        return None

    async def release(self, call: Call, error: BaseException | None) -> None:
        return None


class Source(Protocol):
    name: str

    def stream(self, call: Call) -> AsyncIterator[Chunk]: ...


def outcome_of(error: BaseException | None) -> str:
    """The status name a call ended with (what metrics and records say)."""
    if error is None:
        return "OK"
    if isinstance(error, HarnessError):
        return error.code.name
    if isinstance(error, GeneratorExit | asyncio.CancelledError):
        return "CANCELLED"
    return "INTERNAL"


class Director:
    def __init__(self, stages: Sequence[Stage], source: Source, completion_errors: Counter) -> None:
        self.stages = tuple(stages)
        self.source = source
        # Only stages that change chunks take part in the per-chunk loop.
        self._chunk_stages = tuple(s for s in reversed(self.stages) if type(s).on_chunk is not Stage.on_chunk)
        # Per completion hook, the stages that have work then (by id: stages need not be hashable).
        self._hooked = {
            hook: frozenset(id(s) for s in self.stages if getattr(type(s), hook) is not getattr(Stage, hook))
            for hook in ("complete", "release")
        }
        self._completion_errors = completion_errors

    async def run(self, call: Call) -> AsyncIterator[Chunk]:
        """Yields the answer's chunks (empty non-final ones are dropped); `call` holds the rest."""
        entered: list[Stage] = []
        error: BaseException | None = None
        try:
            for stage in self.stages:
                entered.append(stage)
                await stage.enter(call)
            async with aclosing(self.source.stream(call)) as chunks:  # closed at once: stops the engine
                async for chunk in chunks:
                    for stage in self._chunk_stages:
                        chunk = await stage.on_chunk(call, chunk)
                    if chunk.text:
                        now = time.perf_counter()
                        call.first_at = call.first_at or now
                        call.last_at = now
                        call.text_parts.append(chunk.text)
                    if chunk.text or chunk.final:
                        yield chunk
        except BaseException as exc:
            error = exc
            raise
        finally:
            call.ended_at = time.perf_counter()
            call.status = outcome_of(error)
            if call.after_answer is None or not call.journaled:
                await self._complete(entered, call, error, "complete")
                hooks: tuple[str, ...] = ("release",)
            else:
                hooks = ("complete", "release")
            finish = functools.partial(self._finish, entered, call, error, hooks)
            if call.after_answer is None or not call.after_answer.defer(finish):
                await finish()

    async def _finish(
        self, entered: list[Stage], call: Call, error: BaseException | None, hooks: tuple[str, ...]
    ) -> None:
        for hook in hooks:
            await self._complete(entered, call, error, hook)

    async def _complete(
        self, entered: list[Stage], call: Call, error: BaseException | None, hook: str
    ) -> None:
        hooked = self._hooked[hook]
        for stage in reversed(entered):
            if id(stage) not in hooked:
                continue  # the stage has nothing to do then
            try:
                await getattr(stage, hook)(call, error)
            except BaseException as exc:
                self._completion_errors.labels(stage.name).inc()
                log.error(
                    "stage %s failed (%s) for request %s: %r", stage.name, hook, call.request_id, exc,
                    exc_info=not isinstance(exc, HarnessError),
                )  # fmt: skip
