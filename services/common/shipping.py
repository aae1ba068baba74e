"""A background loop that ships work from a durable outbox (a table) to somewhere else.

Used by the registry's audit feed (change log -> Audit.Ingest) and the cost service's budget
alerts (alert rows -> Audit.Ingest, webhooks). The outbox is the source of truth; the loop only
decides *when* to look at it:

- `step()` does one round (read a batch, send it, record that it was sent) and returns how long
  to wait before the next round: 0 = at once (a full batch: more is waiting), a number of seconds,
  or None = until `wake()` or `poll_s`, whichever comes first (caught up; `poll_s` picks up what
  other replicas wrote).
- A `step()` that raises is retried with exponential backoff (`min_backoff_s` doubling up to
  `max_backoff_s`); the failure is logged once per outage, and the recovery once.
- `wake()` may be called from any thread (a store's commit listener runs in a worker thread).

`ingest_batch` is the send of such a round when it goes to the audit service (the registry's
feed, the pool's admin changes, the cost service's alerts and admin changes). A round's events
go in calls of at most MAX_BATCH_BYTES each (`bounded_prefix`, the rule the router's event lanes
follow too): the receivers refuse a request over 16 MiB, and a batch refused for its size alone
would be retried, and refused, for ever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.common.v1 import common_pb2

# Bytes of events in one call at most: a quarter of the receivers' 16 MiB request limit.
MAX_BATCH_BYTES = 4 * 1024 * 1024


def bounded_prefix(sizes: Sequence[int], limit: int = MAX_BATCH_BYTES) -> int:
    """How many of the first items (of these byte sizes) fit within `limit` together; at least
    one (when there is one), so an item is never left behind for its size alone."""
    total = 0
    for i, size in enumerate(sizes):
        total += size
        if total > limit and i:
            return i
    return len(sizes)


class ShippingLoop:
    """One asyncio task; `start` inside the serving loop, `stop` at shutdown."""

    def __init__(
        self,
        step: Callable[[], Awaitable[float | None]],
        *,
        name: str,
        log: logging.Logger,
        poll_s: float = 1.0,
        min_backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        failing_message: str = "",
        recovered: Callable[[], str] | None = None,
    ) -> None:
        if poll_s <= 0 or min_backoff_s <= 0 or max_backoff_s < min_backoff_s:
            raise ValueError("poll_s and min_backoff_s must be > 0 and max_backoff_s >= min_backoff_s")
        self._step = step
        self.name = name
        self._log = log
        self._poll_s = poll_s
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._failing_message = failing_message or f"{name} failed (will retry): %s"
        self._recovered = recovered or (lambda: f"{name} recovered")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.failing = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def wake(self) -> None:
        """Runs the next step now instead of at the end of the current wait. Thread-safe."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._wakeup.set)
        except RuntimeError:  # the loop closed in between
            pass

    async def _run(self) -> None:
        backoff = self._min_backoff_s
        while True:
            self._wakeup.clear()  # a wake() during the step ends the next wait at once
            try:
                delay = await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self.failing:  # once per outage, not every retry
                    self._log.warning(self._failing_message, exc)
                self.failing = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                continue
            if self.failing:
                self._log.info(self._recovered())
            self.failing, backoff = False, self._min_backoff_s
            if delay is None:
                await self._wait(self._poll_s)
            elif delay > 0:
                await self._wait(min(delay, self._poll_s))

    async def _wait(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._wakeup.wait()
        except TimeoutError:
            pass


async def ingest_batch(
    stub: audit_pb2_grpc.AuditStub, events: Sequence[common_pb2.AuditEvent], timeout_s: float
) -> audit_pb2.IngestResponse:
    """Sends a round's events to Audit.Ingest: one call (stored in one transaction) per
    MAX_BATCH_BYTES of them, oldest first; the counts are the calls' sums. A failed call raises
    and the round is retried whole: the receiver stores each event id once."""
    total = audit_pb2.IngestResponse()
    sizes = [event.ByteSize() for event in events]
    start = 0
    while start < len(events):
        count = bounded_prefix(sizes[start:])
        resp = await stub.Ingest(
            audit_pb2.IngestRequest(events=events[start : start + count]), timeout=timeout_s
        )
        total.accepted += resp.accepted
        total.duplicates += resp.duplicates
        start += count
    return total
