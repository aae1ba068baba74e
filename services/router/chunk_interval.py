"""Merging text deltas, for clients that ask for fewer, larger chunks (header
`x-harness-min-chunk-interval-ms`, 0 to 1000; 0 or absent: every delta as it comes).

Text deltas that arrive within the interval after the last chunk sent are merged into one
chunk, sent once the interval has passed (whether or not another delta arrived). The first
delta is never held (time to first token is what callers feel), nor the final chunk: it goes
out at once with whatever was held. Front doors only parse the header (`interval_ms`);
Router.run applies it to every front door's stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import aclosing
from typing import Protocol

from services.common.errors import InvalidArgument
from services.router.call import Chunk

HEADER = "x-harness-min-chunk-interval-ms"
MAX_INTERVAL_MS = 1000


def interval_ms(metadata: Iterable[tuple[str, str | bytes]] | None) -> int:
    """The interval a request's metadata (or HTTP headers) asks for; 0 when it asks for none."""
    for key, value in metadata or ():
        if key.lower() == HEADER:
            return parse_interval_ms(value if isinstance(value, str) else value.decode("latin-1"))
    return 0


def parse_interval_ms(value: str) -> int:
    try:
        ms = int(value.strip())
    except ValueError:
        ms = -1
    if not 0 <= ms <= MAX_INTERVAL_MS:
        raise InvalidArgument(
            f"{HEADER} is {value[:40]!r}: send a whole number of milliseconds from 0 to "
            f"{MAX_INTERVAL_MS} (0 or no header: every text delta as it comes)"
        )
    return ms


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> Awaitable[None]: ...


class LoopClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> Awaitable[None]:
        return asyncio.sleep(seconds)


_END = object()  # the pipeline's stream ended (its completion hooks have run)


async def merge_deltas(
    chunks: AsyncIterator[Chunk], interval_s: float, clock: Clock | None = None
) -> AsyncIterator[Chunk]:
    """`chunks` with text deltas merged as the module says. The pipeline runs in its own task
    (so a held delta goes out when the interval ends, not when the next one arrives), and this
    ends only once that stream ended: the call's summary is complete when the caller reads it."""
    clock = clock or LoopClock()
    arrived: asyncio.Queue = asyncio.Queue()
    pump = asyncio.create_task(_pump(chunks, arrived))
    held: list[str] = []
    last_sent: float | None = None  # None: nothing sent yet, the next delta goes out at once
    tokens = 0
    try:
        while True:
            if held:  # text waits: the next chunk, or the end of the interval, whichever is first
                item = await _next(arrived, clock, last_sent + interval_s - clock.now())
            else:
                item = await arrived.get()
            if item is None:  # the interval ended with text held: send it
                yield Chunk("".join(held), False, tokens)
                held.clear()
                last_sent = clock.now()
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            tokens = item.output_tokens
            if item.final:
                yield Chunk("".join(held) + item.text, True, tokens)
                held.clear()
            elif item.text and (last_sent is None or clock.now() - last_sent >= interval_s):
                yield Chunk("".join(held) + item.text, False, tokens)
                held.clear()
                last_sent = clock.now()
            elif item.text:
                held.append(item.text)
    finally:
        pump.cancel()  # the caller left: the pipeline's stream closes (recorded as cancelled)
        await asyncio.gather(pump, return_exceptions=True)


async def _pump(chunks: AsyncIterator[Chunk], arrived: asyncio.Queue) -> None:
    try:
        async with aclosing(chunks):
            async for chunk in chunks:
                arrived.put_nowait(chunk)
    except BaseException as exc:  # the caller gets the pipeline's error
        arrived.put_nowait(exc)
        if not isinstance(exc, Exception):
            raise
    else:
        arrived.put_nowait(_END)


async def _next(arrived: asyncio.Queue, clock: Clock, wait_s: float):
    """The next item, or None once `wait_s` passed without one."""
    if not arrived.empty() or wait_s <= 0:
        return arrived.get_nowait() if not arrived.empty() else None
    getter = asyncio.ensure_future(arrived.get())
    timer = asyncio.ensure_future(clock.sleep(wait_s))
    try:
        await asyncio.wait({getter, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        if not getter.done():
            getter.cancel()  # an item it had not taken stays in the queue
        await asyncio.gather(getter, timer, return_exceptions=True)
    return getter.result() if getter.done() and not getter.cancelled() else None
