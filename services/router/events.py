"""Ships audit and usage events to the audit and cost services, from the durable outbox.

`emit_*` writes the event into the outbox (outbox.py) on the caller's path, so it is durable
before the request's answer completes (serialized there, once: the lanes send the stored bytes
as they are, packed into the request without parsing them again); a lane per destination sends the oldest events in
batches (one unary `Audit.Ingest` / `Cost.Record` call each), deletes them once the
receiver acknowledged, and retries with backoff while the receiver is down. Receivers
deduplicate by event id, so a resend after a crash is harmless.

Fail-closed (`fail_closed=True`): an event that cannot be made durable raises Unavailable,
and `check_durable` refuses new requests while the outbox is failing, so nothing is served
unaudited. Fail-open logs and keeps the event in memory until the outbox accepts it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import grpc
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.common.errors import Unavailable
from services.common.shipping import MAX_BATCH_BYTES, bounded_prefix
from services.router.call_journal import CallJournal
from services.router.outbox import Outbox, OutboxError

log = logging.getLogger("harness.router.events")


def within_bytes(rows: list[tuple[int, bytes]], limit: int = MAX_BATCH_BYTES) -> list[tuple[int, bytes]]:
    """The oldest of `rows` (seq, payload) whose payloads together stay within `limit` bytes
    (the receivers refuse a request over 16 MiB, and a batch of 256 events with large details
    could pass that, then be refused on every retry and stop its lane for good)."""
    return rows[: bounded_prefix([len(payload) for _, payload in rows], limit)]


class _Lane:
    """One destination: the outbox rows of one lane and a task that sends them in batches."""

    def __init__(
        self,
        name: str,
        outbox: Outbox,
        send: Callable[[list[bytes]], Awaitable[None]],
        batch: int,
        pending: Gauge,
        shipped: Counter,
        linger_s: float,
        send_failures: Counter | None = None,
        oldest_age: Gauge | None = None,
    ) -> None:
        self.name = name
        self._outbox = outbox
        self._send = send
        self._batch = batch
        self._pending = pending.labels(name)
        self._shipped = shipped.labels(name)
        self._failures = send_failures.labels(name) if send_failures is not None else None
        # Unix time of the oldest event still waiting (None: none waits), kept by the shipping
        # loop so a scrape reads a float instead of the outbox.
        self._oldest: float | None = None
        if oldest_age is not None:
            oldest_age.labels(name).set_function(self.oldest_age_s)
        # Wait this long after an event before sending: one call carries the events of many
        # requests instead of one call per request competing with the hot path for CPU.
        self._linger = linger_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._held: list[bytes] = []  # fail-open only: events the outbox refused, kept in memory

    def oldest_age_s(self) -> float:
        """Seconds the oldest unshipped event has waited; 0 when the lane is empty."""
        oldest = self._oldest
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def start(self) -> None:
        self._pending.set(self._outbox.pending(self.name))
        self._oldest = self._outbox.oldest(self.name)
        self._wake.set()  # what a previous process left behind goes first
        self._task = asyncio.create_task(self._run(), name=f"ship-{self.name}")

    def put(self, payload: bytes, fail_closed: bool) -> None:
        try:
            self._outbox.append(self.name, payload)
        except OutboxError as exc:
            if fail_closed:
                raise Unavailable(
                    f"the {self.name} event could not be recorded durably ({exc}); refused"
                ) from exc
            log.error("%s: %s; holding the event in memory", self.name, exc)
            self._held.append(payload)
        self.added()

    def added(self) -> None:
        """An event of this lane is in the outbox (or held): count it and wake the shipper."""
        if self._oldest is None:
            self._oldest = time.time()
        self._pending.inc()
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._linger > 0:
                await asyncio.sleep(self._linger)
            try:
                while await self._ship_some():
                    pass
            except Exception:  # the events stay in the outbox; shipping must not stop for good
                log.exception("%s: shipping failed; retrying in 1 s", self.name)
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _ship_some(self) -> bool:
        """Sends one batch; True while more are waiting."""
        if self._held:  # give the outbox another chance at what it refused
            try:
                for payload in self._held:
                    self._outbox.append(self.name, payload)
                self._held.clear()
            except OutboxError:
                pass
        peeked = self._outbox.peek(self.name, self._batch)
        rows = within_bytes(peeked)
        self._oldest = self._outbox.oldest(self.name) if rows else None
        if self._oldest is None and self._held:
            self._oldest = time.time()
        if not rows:
            return False
        delay = 0.1
        while True:
            try:
                await self._send([payload for _, payload in rows])
                break
            except grpc.aio.AioRpcError as exc:
                if self._failures is not None:
                    self._failures.inc()
                log.warning(
                    "%s: send of %d events failed (%s); retrying", self.name, len(rows), exc.code().name
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        self._outbox.ack([seq for seq, _ in rows])
        self._oldest = self._outbox.oldest(self.name)
        self._pending.dec(len(rows))
        self._shipped.inc(len(rows))
        return len(peeked) == self._batch or len(rows) < len(peeked)

    async def drain(self, timeout: float) -> None:
        """Ships what it can within `timeout`; the rest stays in the outbox for the next start."""
        if self._task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._outbox.pending(self.name) and loop.time() < deadline:
            self._wake.set()
            await asyncio.sleep(0.05)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        left = self._outbox.pending(self.name)
        if left:
            log.warning("%s: %d events stay in the outbox for the next start", self.name, left)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def events_tag(request_type) -> bytes:
    """The wire tag of `request_type`'s repeated `events` field (length-delimited)."""
    return _varint(request_type.DESCRIPTOR.fields_by_name["events"].number << 3 | 2)


def packed_events(payloads: list[bytes], request_type=audit_pb2.IngestRequest) -> bytes:
    """A `request_type` (IngestRequest, RecordRequest) holding `payloads` (serialized events) as
    its `events`, in protobuf's wire format: a repeated message field is each element's bytes
    behind its tag and length, so the outbox's bytes are sent as they are, never parsed and
    serialized again."""
    tag = events_tag(request_type)
    return b"".join(tag + _varint(len(p)) + p for p in payloads)


def _packed_sender(channel: grpc.aio.Channel, module, service: str, method: str) -> Callable:
    """`method` (unary), sending an already-serialized request (packed_events)."""
    desc = module.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    request_type = getattr(module, desc.input_type.name)
    response_type = getattr(module, desc.output_type.name)
    path = f"/{desc.containing_service.full_name}/{method}"
    # No request serializer: the request is the bytes themselves.
    call = channel.unary_unary(path, request_serializer=None, response_deserializer=response_type.FromString)

    async def send(payloads: list[bytes]) -> None:
        await call(packed_events(payloads, request_type), timeout=10.0)

    return send


class EventShipper:
    def __init__(
        self,
        audit_channel: grpc.aio.Channel,
        cost_channel: grpc.aio.Channel,
        metrics: CollectorRegistry,
        outbox: Outbox,
        *,
        batch: int = 256,
        linger_s: float = 0.05,
        fail_closed: bool = False,
    ) -> None:
        send_audit = _packed_sender(audit_channel, audit_pb2, "Audit", "Ingest")
        send_usage = _packed_sender(cost_channel, cost_pb2, "Cost", "Record")
        pending = Gauge("harness_router_events_pending", "Events waiting to ship", ["lane"], registry=metrics)
        shipped = Counter("harness_router_events_shipped", "Events shipped", ["lane"], registry=metrics)
        failures = Counter(
            "harness_router_events_send_failures",
            "Batches the receiver (audit Ingest, cost Record) did not accept; they are retried",
            ["lane"],
            registry=metrics,
        )
        oldest = Gauge(
            "harness_router_events_oldest_age_seconds",
            "How long the oldest event not yet shipped has waited (0: none waits)",
            ["lane"],
            registry=metrics,
        )

        self.outbox = outbox
        self.fail_closed = fail_closed
        lane_metrics = {"send_failures": failures, "oldest_age": oldest}
        self._audit = _Lane("audit", outbox, send_audit, batch, pending, shipped, linger_s, **lane_metrics)
        self._usage = _Lane("usage", outbox, send_usage, batch, pending, shipped, linger_s, **lane_metrics)

    def start(self) -> None:
        aborted = self.outbox.recover_calls()  # before the lanes count what waits
        if aborted:
            log.warning("%d calls were under way when this router last stopped: shipped as aborted", aborted)
        self._audit.start()
        self._usage.start()

    def journal(self, call) -> CallJournal:
        """A model call's durable start (call_journal.py); the dispatcher writes it (`placed()`)."""
        return CallJournal(self.outbox, call, self.fail_closed)

    def check_durable(self) -> None:
        """Fail-closed admission: refuse while the outbox cannot take events."""
        if self.fail_closed and self.outbox.failing and not self.outbox.writable():
            raise Unavailable(
                "the audit outbox cannot record events durably; requests are refused (fail-closed)"
            )

    def emit_audit(self, event: common_pb2.AuditEvent) -> None:
        self._audit.put(event.SerializeToString(), self.fail_closed)

    def emit_usage(self, event: common_pb2.UsageEvent) -> None:
        self._usage.put(event.SerializeToString(), self.fail_closed)

    def emit_call(
        self, events: list[common_pb2.AuditEvent | common_pb2.UsageEvent], journal: CallJournal | None
    ) -> None:
        """A finished call's events and the end of its journal entry, durable in one transaction
        (one commit instead of one per event). If the outbox refuses it, each event is tried on
        its own (`emit_each`)."""
        lanes = [self._usage if isinstance(event, common_pb2.UsageEvent) else self._audit for event in events]
        rows = [(lane.name, event.SerializeToString()) for lane, event in zip(lanes, events, strict=True)]
        try:
            self.outbox.append_call_end(rows, journal.open_id() if journal is not None else "")
        except OutboxError:
            emit_each(self, events, journal)
            return
        if journal is not None:
            journal.ended()
        for lane in lanes:
            lane.added()

    async def drain(self, timeout: float = 5.0) -> None:
        await asyncio.gather(self._audit.drain(timeout), self._usage.drain(timeout))
        self.outbox.close()


def emit_each(
    shipper, events: list[common_pb2.AuditEvent | common_pb2.UsageEvent], journal: CallJournal | None
) -> None:
    """A finished call's events one by one (`shipper.emit_*`): one failing (fail-closed outbox)
    must not skip the others, and then the journal entry stays, so the next start ships the
    call as aborted; the first failure is raised once all were tried."""
    failures: list[Exception] = []
    for event in events:
        emit = shipper.emit_usage if isinstance(event, common_pb2.UsageEvent) else shipper.emit_audit
        try:
            emit(event)
        except Exception as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
    if journal is not None:
        journal.finish()
