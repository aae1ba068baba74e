"""Ships audit and usage events to the audit and cost services, in batches, off the hot path.

Thin slice: events wait in memory and go out over the `Audit.Ingest` / `Cost.Record` client
streams with retries and backoff; receivers deduplicate by event id, so resending is safe.
On shutdown the queue is drained (bounded). The audit issue replaces the in-memory queue
with a durable SQLite WAL outbox behind the same `emit_*` methods.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import grpc
from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2, cost_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger("harness.router.events")


class _Lane:
    """One destination: a queue and a task that sends it in batches."""

    def __init__(
        self,
        name: str,
        send: Callable[[Sequence], Awaitable[None]],
        batch: int,
        pending: Gauge,
        shipped: Counter,
        max_queue: int = 100_000,
        linger_s: float = 0.05,
    ) -> None:
        self.name = name
        # Wait this long after the first event before sending: one call carries the events of
        # many requests instead of one call per request competing with the hot path for CPU.
        self._linger = linger_s
        self._send = send
        self._batch = batch
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=max_queue)
        self._pending = pending.labels(name)
        self._shipped = shipped.labels(name)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"ship-{self.name}")

    def put(self, event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            log.error("%s queue full: event %s dropped", self.name, event.event_id)
            return
        self._pending.inc()

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if self._linger > 0 and self._queue.qsize() < self._batch:
                await asyncio.sleep(self._linger)
            batch = [first]
            while len(batch) < self._batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._ship(batch)

    async def _ship(self, batch: list) -> None:
        delay = 0.1
        while True:
            try:
                await self._send(batch)
                self._pending.dec(len(batch))
                self._shipped.inc(len(batch))
                return
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "%s: send of %d events failed (%s); retrying", self.name, len(batch), exc.code().name
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def drain(self, timeout: float) -> None:
        if self._task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._queue.empty() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        # Let an in-flight batch finish, then stop.
        await asyncio.sleep(0)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if not self._queue.empty():
            log.error("%s: %d events not shipped at shutdown", self.name, self._queue.qsize())


class EventShipper:
    def __init__(
        self,
        audit_channel: grpc.aio.Channel,
        cost_channel: grpc.aio.Channel,
        metrics: CollectorRegistry,
        batch: int = 256,
    ) -> None:
        audit = audit_pb2_grpc.AuditStub(audit_channel)
        cost = cost_pb2_grpc.CostStub(cost_channel)
        pending = Gauge("harness_router_events_pending", "Events waiting to ship", ["lane"], registry=metrics)
        shipped = Counter("harness_router_events_shipped", "Events shipped", ["lane"], registry=metrics)

        async def send_audit(events: Sequence[common_pb2.AuditEvent]) -> None:
            await audit.Ingest(iter([audit_pb2.IngestRequest(events=events)]), timeout=10.0)

        async def send_usage(events: Sequence[common_pb2.UsageEvent]) -> None:
            await cost.Record(iter([cost_pb2.RecordRequest(events=events)]), timeout=10.0)

        self._audit = _Lane("audit", send_audit, batch, pending, shipped)
        self._usage = _Lane("usage", send_usage, batch, pending, shipped)

    def start(self) -> None:
        self._audit.start()
        self._usage.start()

    def emit_audit(self, event: common_pb2.AuditEvent) -> None:
        self._audit.put(event)

    def emit_usage(self, event: common_pb2.UsageEvent) -> None:
        self._usage.put(event)

    async def drain(self, timeout: float = 5.0) -> None:
        await asyncio.gather(self._audit.drain(timeout), self._usage.drain(timeout))
