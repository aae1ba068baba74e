"""Redaction of large inputs in worker processes, so one request never stalls the event loop.

Redaction is linear in its input, but a prompt dense with numbers costs several microseconds per
character (each candidate is validated by phonenumbers or a checksum): a 1 MB prompt is seconds
of CPU. A worker thread would not help, since it holds the GIL and the loop waits ~5 ms for it
at every turn. So an input over a few milliseconds of work goes to a process pool (spawned,
never forked: the router runs gRPC threads); smaller ones, nearly every prompt, stay inline.
The pool starts on first use, in a thread (spawning takes tens of milliseconds), and its queue
is bounded: past it, RESOURCE_EXHAUSTED. As with any spawned worker, the program's main module
is imported again in the worker: it must keep its work under `if __name__ == "__main__"`.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from services.common.errors import ResourceExhausted, Unavailable
from services.router.redaction import RedactionResult, Redactor
from services.router.redaction.normalize import folded_count

log = logging.getLogger("harness.router.redaction")

# Inline while the work stays within ~2-3 ms: a bounded size, and few characters that start
# the costly candidates (digits: phones, cards, IDs, IPs; ":" IPv6; "@" e-mail) or that are
# folded before matching (full-width digits, invisible separators).
INLINE_CHARS = 8192
INLINE_TRIGGERS = 256
_TRIGGERS = "0123456789:@"
MAX_QUEUED = 32  # per worker: large inputs waiting or running


def _triggers(text: str) -> int:
    n = sum(text.count(c) for c in _TRIGGERS)
    return n if text.isascii() else n + folded_count(text)


def is_small(text: str, limit_chars: int = INLINE_CHARS, limit_triggers: int = INLINE_TRIGGERS) -> bool:
    return len(text) <= limit_chars and _triggers(text) <= limit_triggers


def json_is_small(value: Any, limit_chars: int = INLINE_CHARS, limit_triggers: int = INLINE_TRIGGERS) -> bool:
    """Like is_small over every key and value; stops as soon as the budget is spent."""
    chars = triggers = 0
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, Mapping):
            stack.extend(v.keys())
            stack.extend(v.values())
            chars += 2
        elif isinstance(v, list | tuple):
            stack.extend(v)
            chars += 2
        else:
            text = v if isinstance(v, str) else str(v)
            chars += len(text)
            if chars > limit_chars:
                return False
            triggers += _triggers(text)
        if chars > limit_chars or triggers > limit_triggers:
            return False
    return True


def _ready() -> bool:
    return True


def _redact(redactor: Redactor, text: str) -> RedactionResult:
    return redactor.redact(text)


def _redact_json(redactor: Redactor, value: Any) -> tuple[Any, dict[str, int]]:
    return redactor.redact_json(value)


class RedactionWorkers:
    def __init__(self, workers: int = 1, max_queued: int = 0) -> None:
        self.workers = max(1, workers)
        self.max_queued = max_queued or MAX_QUEUED * self.workers
        self._pool: ProcessPoolExecutor | None = None
        self._starting: asyncio.Lock | None = None
        self._queued = 0
        self.offloaded_total = 0

    async def redact(self, redactor: Redactor, text: str) -> RedactionResult:
        if is_small(text):
            return redactor.redact(text)
        return await self._run(_redact, redactor, text)

    async def redact_json(self, redactor: Redactor, value: Any) -> tuple[Any, dict[str, int]]:
        if json_is_small(value):
            return redactor.redact_json(value)
        return await self._run(_redact_json, redactor, value)

    async def _run(self, fn, *args):
        if self._queued >= self.max_queued:
            raise ResourceExhausted(
                f"{self._queued} large inputs are being redacted (the limit is {self.max_queued}); retry shortly",
                retry_after_ms=1000,
            )
        self._queued += 1
        self.offloaded_total += 1
        try:
            pool = await self._executor()
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except BrokenProcessPool as exc:  # a worker died (OOM-killed...): a fresh pool next time
            log.error("a redaction worker died; starting a new pool")
            self._pool = None
            raise Unavailable("the redaction worker failed; retry") from exc
        finally:
            self._queued -= 1

    async def _executor(self) -> ProcessPoolExecutor:
        self._starting = self._starting or asyncio.Lock()
        async with self._starting:
            if self._pool is None:
                self._pool = await asyncio.to_thread(self._spawn)
        return self._pool

    def _spawn(self) -> ProcessPoolExecutor:
        """A pool whose workers are all running (a submit then never spawns on the loop)."""
        pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        for started in [pool.submit(_ready) for _ in range(self.workers)]:
            started.result()
        return pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
