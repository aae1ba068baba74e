"""Shared shapes of long-lived async work: a bidirectional stream whose requests run
concurrently (Triton's ModelStreamInfer), and a background follower of another service's
watch stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

Req = TypeVar("Req")
Resp = TypeVar("Resp")


# Bounds on one stream, so a client cannot make it grow without end: requests running at once
# (past it, the next request is not read: HTTP/2 flow control holds the client back), and
# responses waiting for a client that does not read them (past it, no new request starts).
MAX_IN_FLIGHT = 256
MAX_QUEUED = 4096


async def serve_concurrently(
    requests: AsyncIterator[Req],
    handle: Callable[[Req, Callable[[Resp], None]], Awaitable[None]],
    *,
    max_in_flight: int = MAX_IN_FLIGHT,
    max_queued: int = MAX_QUEUED,
) -> AsyncIterator[Resp]:
    """Runs `handle(request, emit)` for each request as it arrives and yields what they emit,
    interleaved. When the client half-closes, the stream ends after the running ones finish;
    when the call ends early (client cancelled), whatever is still running is cancelled. At most
    `max_in_flight` run at once, and none starts while `max_queued` responses wait to be sent."""
    out: asyncio.Queue[Resp | None] = asyncio.Queue()
    tasks: set[asyncio.Task[None]] = set()
    room = asyncio.Semaphore(max_in_flight)
    drained = asyncio.Event()
    drained.set()

    def finished(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        room.release()

    async def read() -> None:
        try:
            async for request in requests:
                await room.acquire()
                if out.qsize() >= max_queued:
                    drained.clear()
                    await drained.wait()
                task = asyncio.create_task(handle(request, out.put_nowait))
                tasks.add(task)
                task.add_done_callback(finished)
            while tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            out.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (item := await out.get()) is not None:
            if not drained.is_set() and out.qsize() < max_queued // 2:
                drained.set()
            yield item
        await reader  # surfaces a failure of the request stream itself
    finally:
        reader.cancel()
        for task in list(tasks):
            task.cancel()


class BackgroundFollower:
    """Lifecycle of a task that keeps a local copy of another service's state: start, stop,
    and readiness once the first state arrived (subclasses call `_mark_ready`)."""

    _task_name = "follower"

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None
        self._first = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._task_name)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def ready(self) -> bool:
        """Holds a copy (possibly stale while the source is unreachable)."""
        return self._first.is_set()

    async def wait_ready(self, timeout: float | None) -> bool:
        try:
            await asyncio.wait_for(self._first.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def _mark_ready(self) -> None:
        self._first.set()

    async def _run(self) -> None:
        raise NotImplementedError


async def cancel_all(tasks: list[asyncio.Task]) -> None:
    """Cancels background tasks (a service closing) and waits until each has ended."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
