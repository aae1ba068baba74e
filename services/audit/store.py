"""The audit log store: idempotent, serialized appends to one hash chain; queries; verification.

Core code: no gRPC here. Methods are async and run their (blocking) SQLAlchemy work in a worker
thread so the server's event loop never waits on the database.

Why appends are safe under concurrency (several streams, several replicas):
- every append transaction first takes the chain lock (PostgreSQL: a transaction-level
  advisory lock; SQLite: BEGIN IMMEDIATE, i.e. the database's single write lock), and only then
  reads the head, so two writers can never extend the same head (no fork);
- `event_id` is UNIQUE and `sequence` is the primary key, so even a writer that bypassed the
  lock could neither store an event twice nor create two records with one sequence.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2
from sqlalchemy import Connection, Engine, func, insert, select, text

from services.audit import migrate
from services.audit.anchor import ChainAnchor
from services.audit.models import audit_records
from services.common import audit_chain as chain
from services.common.checkpoints import SignedCheckpoint
from services.common.db import IMMEDIATE, is_sqlite, make_engine
from services.common.errors import InvalidArgument
from services.common.limits import check_struct, page_offset, timestamp_us

T = audit_records.c
# pg_advisory_xact_lock key of the chain ("HARNESSA" as a big-endian int64).
CHAIN_LOCK_KEY = int.from_bytes(b"HARNESSA", "big")
MAX_EVENT_ID = 128
MAX_DETAILS_BYTES = 64 * 1024
DEFAULT_PAGE, MAX_PAGE = 50, 1000
# AuditFilter fields that compare equal to a column of the same name.
STRING_FILTERS = (
    "user",
    "agent",
    "agent_version",
    "session_id",
    "step_id",
    "trace_id",
    "request_id",
    "tool",
    "action",
    "object",
)
_ID_CHUNK = 500  # stay well under SQLite's bound-parameter limit
_VERIFY_CHUNK = 1000
_APPENDED = "harness_audit_appended"  # conn.info: (head before, head after) of this transaction
MAX_LINEAGE = 10_000  # records placed in one lineage tree


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_broken_sequence: int = 0
    reason: str = ""
    # Event id of the broken record ("" when ok or when the record is missing).
    first_broken_event_id: str = ""
    # "hash_mismatch", "link_broken" or "missing_record" ("" when ok).
    failure: str = ""
    expected: str = ""  # what the chain requires at that record
    found: str = ""  # what is stored there
    checkpoint: SignedCheckpoint | None = None  # the latest checkpoint checked against


def validate_events(events: Sequence[common_pb2.AuditEvent]) -> None:
    """Raises InvalidArgument naming the first bad event by its index in the batch."""
    for i, event in enumerate(events):
        if not event.event_id:
            raise InvalidArgument(f"event {i}: event_id is required")
        if len(event.event_id) > MAX_EVENT_ID:
            raise InvalidArgument(f"event {i}: event_id is longer than {MAX_EVENT_ID} characters")
        if event.kind == common_pb2.AUDIT_EVENT_KIND_UNSPECIFIED:
            raise InvalidArgument(f"event {i} ({event.event_id}): kind is required")
        if event.HasField("time"):
            timestamp_us(f"event {i} ({event.event_id}): time", event.time)
        check_struct(f"event {i} ({event.event_id}): details", event.details, max_bytes=MAX_DETAILS_BYTES)


def filter_conditions(flt: audit_pb2.AuditFilter) -> list:
    """SQL conditions for every set field of an AuditFilter (AND)."""
    conds = []
    for name in STRING_FILTERS:
        value = getattr(flt, name)
        if value:
            conds.append(T[name] == value)
    if flt.kind:
        conds.append(T.kind == flt.kind)
    if flt.decision:
        conds.append(T.decision == flt.decision)
    if flt.HasField("start_time"):
        conds.append(T.time_us >= timestamp_us("filter.start_time", flt.start_time))
    if flt.HasField("end_time"):
        conds.append(T.time_us < timestamp_us("filter.end_time", flt.end_time))
    return conds


def parse_page(page: common_pb2.PageRequest) -> tuple[int, int]:
    """(page size, last sequence already returned) from a PageRequest."""
    if page.page_size < 0:
        raise InvalidArgument("page.page_size must be >= 0")
    size = min(page.page_size or DEFAULT_PAGE, MAX_PAGE)
    if not page.page_token:
        return size, 0
    return size, page_offset(page.page_token)


class AuditStore:
    def __init__(
        self, url: str, *, now_us: Callable[[], int] | None = None, anchor: ChainAnchor | None = None
    ) -> None:
        """`anchor`: where appends are checkpointed and Verify looks (the service always has one;
        without it Verify checks only the chain's own links)."""
        self._engine = make_engine(url)
        self.anchor = anchor
        self._sqlite = is_sqlite(self._engine)
        # In-process writers queue here instead of spinning on the database lock.
        self._write_lock = threading.Lock()
        self._now_us = now_us or (lambda: time.time_ns() // 1000)
        try:
            migrate.open_schema(self._engine)  # the schema follows the code, or is checked (see migrate.py)
        except BaseException:
            self._engine.dispose()
            raise

    @classmethod
    async def open(cls, url: str, anchor: ChainAnchor | None = None) -> AuditStore:
        """Creates the store off the event loop (connecting and creating tables block); with an
        anchor, a log that has records but no checkpoint yet is anchored as found."""
        store = await asyncio.to_thread(cls, url, anchor=anchor)
        if anchor is not None:
            try:
                await asyncio.to_thread(store._adopt)
            except BaseException:
                await store.close()
                raise
        return store

    def _adopt(self) -> None:
        assert self.anchor is not None
        with self.chain_transaction() as conn:
            head = conn.execute(select(T.sequence, T.hash).order_by(T.sequence.desc()).limit(1)).first()
            self.anchor.adopt((head.sequence, head.hash) if head else (0, ""))

    async def close(self) -> None:
        await asyncio.to_thread(self._engine.dispose)

    # ---- append ----

    async def ingest(self, events: Sequence[common_pb2.AuditEvent]) -> IngestResult:
        """Appends one batch in one transaction; events already stored count as duplicates."""
        validate_events(events)
        if not events:
            return IngestResult(0, 0)
        return await asyncio.to_thread(self._ingest_sync, list(events))

    def _ingest_sync(self, events: list[common_pb2.AuditEvent]) -> IngestResult:
        now = self._now_us()
        rows, seen = [], set()
        for event in events:
            if event.event_id in seen:  # the same event twice in one batch
                continue
            seen.add(event.event_id)
            # An event without a time is dated at receipt (the router always sets it).
            time_us = chain.ts_to_us(event.time) if event.HasField("time") else now
            rows.append(chain.row_from_event(event, time_us))
        with self.chain_transaction() as conn:
            new = self.append_rows(conn, rows, now)
        return IngestResult(accepted=len(new), duplicates=len(events) - len(new))

    @contextmanager
    def chain_transaction(self) -> Iterator[Connection]:
        """A write transaction holding the chain lock (blocking; call from a worker thread).

        Everything done on the yielded connection commits together with the records appended
        through append_rows, or not at all (approvals use this to store a state change and its
        audit record atomically). Appended records are checkpointed before the commit."""
        with self._write_lock, self._engine.connect() as conn:
            conn.execution_options(**{IMMEDIATE: True})
            conn.info.pop(_APPENDED, None)
            try:
                with conn.begin():
                    if not self._sqlite:
                        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHAIN_LOCK_KEY})
                    yield conn
                    appended = conn.info.get(_APPENDED)
                    if appended is not None and self.anchor is not None:
                        self.anchor.seal(*appended)
            finally:
                conn.info.pop(_APPENDED, None)

    def append_rows(self, conn: Connection, rows: list[dict[str, Any]], now: int) -> list[dict[str, Any]]:
        """Appends rows (from chain.row_from_event) not stored yet to the chain; returns those.

        Must run inside chain_transaction()."""
        ids = [r["event_id"] for r in rows]
        stored: set[str] = set()
        for i in range(0, len(ids), _ID_CHUNK):
            chunk = ids[i : i + _ID_CHUNK]
            stored.update(conn.scalars(select(T.event_id).where(T.event_id.in_(chunk))))
        new = [r for r in rows if r["event_id"] not in stored]
        head = conn.execute(select(T.sequence, T.hash).order_by(T.sequence.desc()).limit(1)).first()
        sequence, prev = (head.sequence, head.hash) if head else (0, "")
        for row in new:
            sequence += 1
            row.update(sequence=sequence, prev_hash=prev, ingest_time_us=now)
            row["hash"] = prev = chain.record_hash(row, sequence, row["prev_hash"])
        if new:
            conn.execute(insert(audit_records), new)
            base = conn.info.get(_APPENDED, ((head.sequence, head.hash) if head else (0, ""), None))[0]
            conn.info[_APPENDED] = (base, (sequence, prev))
        return new

    @property
    def engine(self) -> Engine:
        return self._engine

    def now_us(self) -> int:
        """The store's clock (injectable for tests), in microseconds since the epoch."""
        return self._now_us()

    # ---- read ----

    async def query(
        self, flt: audit_pb2.AuditFilter, page: common_pb2.PageRequest | None = None
    ) -> tuple[list[audit_pb2.AuditRecord], str]:
        """Matching records oldest first, and the next page token ("" on the last page)."""
        size, after = parse_page(page or common_pb2.PageRequest())
        conds = [T.sequence > after, *filter_conditions(flt)]
        stmt = select(audit_records).where(*conds).order_by(T.sequence).limit(size + 1)

        def run():
            with self._engine.connect() as conn:
                return conn.execute(stmt).all()

        rows = await asyncio.to_thread(run)
        more = len(rows) > size
        records = [to_record(r) for r in rows[:size]]
        return records, (str(records[-1].sequence) if more else "")

    async def scan(
        self, flt: audit_pb2.AuditFilter, batch: int = MAX_PAGE
    ) -> AsyncIterator[list[audit_pb2.AuditRecord]]:
        """Every matching record oldest first, in batches: one short query per batch, so a slow
        reader holds no transaction open. Records appended meanwhile may be included."""
        token = ""
        while True:
            page = common_pb2.PageRequest(page_size=batch, page_token=token)
            records, token = await self.query(flt, page)
            if records:
                yield records
            if not token:
                return

    async def lineage_records(
        self, trace_id: str, session_id: str, limit: int = MAX_LINEAGE
    ) -> tuple[list[audit_pb2.AuditRecord], bool]:
        """Records of one trace and/or session oldest first (at most `limit`); True if more matched."""
        if not (trace_id or session_id):
            raise InvalidArgument("lineage needs a trace_id or a session_id")
        flt = audit_pb2.AuditFilter(trace_id=trace_id, session_id=session_id)
        stmt = select(audit_records).where(*filter_conditions(flt)).order_by(T.sequence).limit(limit + 1)

        def run():
            with self._engine.connect() as conn:
                return conn.execute(stmt).all()

        rows = await asyncio.to_thread(run)
        return [to_record(r) for r in rows[:limit]], len(rows) > limit

    async def head(self) -> tuple[int, str]:
        """(last sequence, its hash); (0, "") for an empty log."""

        def run():
            with self._engine.connect() as conn:
                return conn.execute(select(T.sequence, T.hash).order_by(T.sequence.desc()).limit(1)).first()

        row = await asyncio.to_thread(run)
        return (row.sequence, row.hash) if row else (0, "")

    # ---- verify ----

    async def verify(self, from_sequence: int = 0) -> VerifyResult:
        """Recomputes every hash from `from_sequence` on and checks each link to its predecessor."""
        if from_sequence < 0:
            raise InvalidArgument("from_sequence must be >= 0")
        return await asyncio.to_thread(self._verify_sync, max(from_sequence, 1))

    def _verify_sync(self, start: int) -> VerifyResult:
        if self.anchor is not None:
            # The head and the witness's extent together, under the chain lock: an append in
            # flight is either in both or in neither.
            with self.chain_transaction() as conn:
                head = conn.scalar(select(func.max(T.sequence))) or 0
                mark = self.anchor.mark()
        with self._engine.connect() as conn:
            if not self._sqlite:  # one snapshot for the whole walk (SQLite's BEGIN already is one)
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                result = self._walk(conn, start)
        if not result.ok or self.anchor is None:
            return result
        check = self.anchor.check(head, self._hash_at, mark)
        v = check.verdict
        if v is None:
            return replace(result, checkpoint=check.latest)
        return VerifyResult(
            False, result.checked, v.sequence, v.reason,
            failure=v.failure, expected=v.expected, found=v.found, checkpoint=check.latest,
        )  # fmt: skip

    def _hash_at(self, sequence: int) -> str | None:
        with self._engine.connect() as conn:
            return conn.scalar(select(T.hash).where(T.sequence == sequence))

    def _walk(self, conn, start: int) -> VerifyResult:
        checked = 0
        expected_seq = start
        if start == 1:
            expected_prev: str | None = ""
        else:  # trust the record before the range; its own check is a wider Verify's job
            expected_prev = conn.scalar(select(T.hash).where(T.sequence == start - 1))
        while True:
            rows = conn.execute(
                select(audit_records)
                .where(T.sequence >= expected_seq)
                .order_by(T.sequence)
                .limit(_VERIFY_CHUNK)
            ).all()
            if not rows:
                return VerifyResult(ok=True, checked=checked)
            for row in rows:
                seq = row.sequence
                if seq != expected_seq:
                    return VerifyResult(
                        False,
                        checked,
                        expected_seq,
                        f"record {expected_seq} is missing (the next stored record is {seq}): "
                        "records were deleted",
                        failure="missing_record",
                        expected=str(expected_seq),
                        found=str(seq),
                    )
                if expected_prev is not None and row.prev_hash != expected_prev:
                    return VerifyResult(
                        False,
                        checked,
                        seq,
                        f"prev_hash link broken: record {seq} (event {row.event_id}) has prev_hash "
                        f"{row.prev_hash!r} but record {seq - 1} has hash {expected_prev!r}",
                        first_broken_event_id=row.event_id,
                        failure="link_broken",
                        expected=expected_prev,
                        found=row.prev_hash,
                    )
                computed = chain.record_hash(row, seq, row.prev_hash)
                if computed != row.hash:
                    return VerifyResult(
                        False,
                        checked,
                        seq,
                        f"hash mismatch: record {seq} (event {row.event_id}) stores {row.hash} but "
                        f"its contents hash to {computed} (the record was changed after it was written)",
                        first_broken_event_id=row.event_id,
                        failure="hash_mismatch",
                        expected=computed,
                        found=row.hash,
                    )
                expected_prev = row.hash
                expected_seq += 1
                checked += 1


def to_record(row) -> audit_pb2.AuditRecord:
    return audit_pb2.AuditRecord(
        sequence=row.sequence,
        event=chain.event_from_row(row),
        prev_hash=row.prev_hash,
        hash=row.hash,
        ingest_time=chain.us_to_ts(row.ingest_time_us),
    )
