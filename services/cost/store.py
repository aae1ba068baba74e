"""The cost store: price versions, the priced usage ledger, budgets and reports.

Core code: no gRPC. Blocking SQLAlchemy work runs in a worker thread. Recording is idempotent
through the ledger's UNIQUE event_id and INSERT ... ON CONFLICT DO NOTHING, so concurrent
streams (or replicas) resending the same event store it once without any extra locking.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from google.protobuf import timestamp_pb2
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2
from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from services.common.db import IMMEDIATE, is_sqlite, make_engine
from services.common.errors import InvalidArgument, NotFound
from services.cost.models import budgets, ledger, metadata, prices
from services.cost.pricing import PriceBook, local_day, period_bounds, price_event, to_us

L = ledger.c
MAX_EVENT_ID = 128
DEFAULT_ALERT_PERCENT = (50, 80, 95)
# Report dimensions -> ledger columns.
DIMENSIONS = ("user", "team", "project", "agent", "agent_version", "model", "deployment", "tool", "day")
SCOPE_COLUMN = {
    cost_pb2.BUDGET_SCOPE_USER: L.user,
    cost_pb2.BUDGET_SCOPE_TEAM: L.team,
    cost_pb2.BUDGET_SCOPE_PROJECT: L.project,
    cost_pb2.BUDGET_SCOPE_AGENT: L.agent,
}


def ts_to_us(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def us_to_ts(us: int) -> timestamp_pb2.Timestamp:
    seconds, micros = divmod(us, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


@dataclass(frozen=True)
class LedgerEntry:
    """A newly recorded, priced event (what the servicer turns into metrics)."""

    event_id: str
    team: str
    project: str
    agent: str
    model: str
    cost_micro_usd: int


@dataclass(frozen=True)
class RecordResult:
    accepted: int
    duplicates: int
    new: tuple[LedgerEntry, ...] = ()


def validate_usage(events: Sequence[common_pb2.UsageEvent], first_index: int = 0) -> None:
    for i, ev in enumerate(events, start=first_index):
        if not ev.event_id:
            raise InvalidArgument(f"event {i}: event_id is required")
        if len(ev.event_id) > MAX_EVENT_ID:
            raise InvalidArgument(f"event {i}: event_id is longer than {MAX_EVENT_ID} characters")
        u = ev.usage
        if min(u.input_tokens, u.output_tokens, u.cached_input_tokens) < 0:
            raise InvalidArgument(f"event {i} ({ev.event_id}): token counts must not be negative")
        if not math.isfinite(u.gpu_seconds) or u.gpu_seconds < 0:
            raise InvalidArgument(f"event {i} ({ev.event_id}): gpu_seconds must be a finite number >= 0")


def validate_budget(b: cost_pb2.Budget) -> tuple[int, ...]:
    """Checks a budget; returns its alert thresholds (defaults filled in, sorted, unique)."""
    if not b.name:
        raise InvalidArgument("budget.name is required")
    if b.scope not in SCOPE_COLUMN:
        raise InvalidArgument("budget.scope is required (user, team, project or agent)")
    if not b.subject:
        raise InvalidArgument("budget.subject is required (the user, team, project or agent name)")
    if b.period == cost_pb2.BUDGET_PERIOD_UNSPECIFIED:
        raise InvalidArgument("budget.period is required (daily, weekly, monthly or lifetime)")
    if b.limit_micro_usd <= 0:
        raise InvalidArgument("budget.limit_micro_usd must be > 0")
    if any(p <= 0 or p > 100 for p in b.alert_percent):
        raise InvalidArgument("budget.alert_percent values must be in 1..100")
    if b.webhook_url and not b.webhook_url.startswith(("http://", "https://")):
        raise InvalidArgument("budget.webhook_url must be an http(s) URL")
    return tuple(sorted(set(b.alert_percent))) or DEFAULT_ALERT_PERCENT


class CostStore:
    def __init__(self, url: str, *, timezone: str = "UTC", now_us: Callable[[], int] | None = None) -> None:
        self._engine = make_engine(url)
        self._pg = not is_sqlite(self._engine)
        self.tz = ZoneInfo(timezone)
        self._now_us = now_us or (lambda: time.time_ns() // 1000)
        # Thin slice: create tables on open. Alembic migrations take over with schema changes.
        metadata.create_all(self._engine)

    @classmethod
    async def open(cls, url: str, **kwargs) -> CostStore:
        return await asyncio.to_thread(lambda: cls(url, **kwargs))

    async def close(self) -> None:
        await asyncio.to_thread(self._engine.dispose)

    def _write(self):
        """A connection whose transaction takes SQLite's write lock at BEGIN."""
        conn = self._engine.connect()
        conn.execution_options(**{IMMEDIATE: True})
        return conn

    def _insert(self, table):
        return (postgresql.insert if self._pg else sqlite.insert)(table)

    # ---- prices ----

    async def set_price(self, price: cost_pb2.Price) -> cost_pb2.Price:
        """Stores a price version (replacing one with the same kind, subject and effective time)."""
        if price.kind == cost_pb2.PRICE_KIND_UNSPECIFIED:
            raise InvalidArgument("price.kind is required")
        if not price.subject:
            raise InvalidArgument("price.subject is required (model name, GPU type or tool name)")
        if price.micro_usd < 0:
            raise InvalidArgument("price.micro_usd must not be negative")
        now = self._now_us()
        effective = ts_to_us(price.effective_time) if price.HasField("effective_time") else now
        values = {"kind": price.kind, "subject": price.subject, "micro_usd": price.micro_usd}
        stmt = self._insert(prices).values(**values, effective_us=effective, set_us=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=["kind", "subject", "effective_us"],
            set_={"micro_usd": price.micro_usd, "set_us": now},
        )

        def run():
            with self._write() as conn, conn.begin():
                conn.execute(stmt)

        await asyncio.to_thread(run)
        return cost_pb2.Price(**values, effective_time=us_to_ts(effective))

    async def list_prices(self, at_us: int | None = None) -> list[cost_pb2.Price]:
        """Every version (at_us None), or per kind+subject the one in force at `at_us`."""
        stmt = select(prices).order_by(prices.c.kind, prices.c.subject, prices.c.effective_us)
        if at_us is not None:
            stmt = stmt.where(prices.c.effective_us <= at_us)

        def run():
            with self._engine.connect() as conn:
                return conn.execute(stmt).all()

        rows = await asyncio.to_thread(run)
        if at_us is not None:  # rows are ordered by time, so the last one per key wins
            rows = list({(r.kind, r.subject): r for r in rows}.values())
        return [
            cost_pb2.Price(
                kind=r.kind, subject=r.subject, micro_usd=r.micro_usd, effective_time=us_to_ts(r.effective_us)
            )
            for r in rows
        ]

    # ---- ledger ----

    async def record(self, events: Sequence[common_pb2.UsageEvent], first_index: int = 0) -> RecordResult:
        """Prices and stores one batch in one transaction; resent events count as duplicates."""
        validate_usage(events, first_index)
        if not events:
            return RecordResult(0, 0)
        return await asyncio.to_thread(self._record_sync, list(events))

    def _record_sync(self, events: list[common_pb2.UsageEvent]) -> RecordResult:
        now = self._now_us()
        new: list[LedgerEntry] = []
        with self._write() as conn, conn.begin():
            cols = (prices.c.kind, prices.c.subject, prices.c.effective_us, prices.c.micro_usd)
            book = PriceBook(conn.execute(select(*cols)).all())
            # Insert in event_id order: two transactions taking the unique-index locks of
            # overlapping batches in one global order cannot deadlock on PostgreSQL.
            for ev in sorted(events, key=lambda e: e.event_id):
                row = self._ledger_row(ev, book, now)
                stmt = self._insert(ledger).values(**row).on_conflict_do_nothing(index_elements=["event_id"])
                # RETURNING, not rowcount: a skipped conflicting row returns nothing on both
                # databases, while rowcount of this INSERT reads -1 on psycopg (SQLAlchemy 2.1).
                if conn.execute(stmt.returning(L.id)).first() is not None:
                    new.append(
                        LedgerEntry(ev.event_id, row["team"], row["project"], row["agent"], row["model"],
                                    row["cost_micro_usd"])
                    )  # fmt: skip
        return RecordResult(len(new), len(events) - len(new), tuple(new))

    def _ledger_row(self, ev: common_pb2.UsageEvent, book: PriceBook, now: int) -> dict:
        # An event without a time is priced and dated at receipt (the router always sets it).
        time_us = ts_to_us(ev.time) if ev.HasField("time") else now
        priced = price_event(ev, time_us, book)
        a, c, u = ev.actor, ev.correlation, ev.usage
        return {
            "event_id": ev.event_id, "time_us": time_us, "day": local_day(time_us, self.tz),
            "user": a.user, "team": a.team, "project": a.project, "agent": a.agent,
            "agent_version": a.agent_version, "model": ev.model, "deployment": ev.deployment,
            "gpu_type": ev.gpu_type, "tool": ev.tool, "tool_action": ev.tool_action,
            "request_id": c.request_id, "trace_id": c.trace_id, "session_id": c.session_id,
            "input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
            "cached_input_tokens": u.cached_input_tokens, "gpu_seconds": u.gpu_seconds,
            "cached": ev.cached, "token_micro_usd": priced.token_micro_usd,
            "gpu_micro_usd": priced.gpu_micro_usd, "tool_micro_usd": priced.tool_micro_usd,
            "cost_micro_usd": priced.total, "unpriced": ",".join(priced.unpriced), "recorded_us": now,
        }  # fmt: skip

    # ---- budgets ----

    async def set_budget(self, b: cost_pb2.Budget) -> cost_pb2.Budget:
        """Creates or replaces a budget by name; returns it with its current spend."""
        alerts = validate_budget(b)
        values = {
            "name": b.name, "scope": b.scope, "subject": b.subject, "period": b.period,
            "limit_micro_usd": b.limit_micro_usd, "alert_percent": json.dumps(list(alerts)),
            "webhook_url": b.webhook_url, "updated_us": self._now_us(),
        }  # fmt: skip
        stmt = self._insert(budgets).values(**values)
        replace = {k: v for k, v in values.items() if k != "name"}
        stmt = stmt.on_conflict_do_update(index_elements=["name"], set_=replace)

        def run():
            with self._write() as conn, conn.begin():
                conn.execute(stmt)
                return self._budget(conn, conn.execute(select(budgets).where(budgets.c.name == b.name)).one())

        return await asyncio.to_thread(run)

    async def get_budget(self, name: str) -> cost_pb2.Budget:
        if not name:
            raise InvalidArgument("name is required")

        def run():
            with self._engine.connect() as conn:
                row = conn.execute(select(budgets).where(budgets.c.name == name)).first()
                if row is None:
                    raise NotFound(f"budget {name!r} does not exist")
                return self._budget(conn, row)

        return await asyncio.to_thread(run)

    async def list_budgets(self, scope: int = 0) -> list[cost_pb2.Budget]:
        stmt = select(budgets).order_by(budgets.c.name)
        if scope:
            stmt = stmt.where(budgets.c.scope == scope)

        def run():
            with self._engine.connect() as conn:
                return [self._budget(conn, row) for row in conn.execute(stmt).all()]

        return await asyncio.to_thread(run)

    async def delete_budget(self, name: str) -> None:
        if not name:
            raise InvalidArgument("name is required")

        def run():
            with self._write() as conn, conn.begin():
                return conn.execute(delete(budgets).where(budgets.c.name == name)).rowcount

        if not await asyncio.to_thread(run):
            raise NotFound(f"budget {name!r} does not exist")

    def _budget(self, conn, row) -> cost_pb2.Budget:
        """The stored budget plus its spend in the current period (calendar, configured timezone)."""
        now = datetime.fromtimestamp(self._now_us() / 1_000_000, tz=UTC)
        start, end = period_bounds(row.period, now, self.tz)
        stmt = select(func.coalesce(func.sum(L.cost_micro_usd), 0)).where(
            SCOPE_COLUMN[row.scope] == row.subject
        )
        if start is not None and end is not None:
            stmt = stmt.where(L.time_us >= to_us(start), L.time_us < to_us(end))
        budget = cost_pb2.Budget(
            name=row.name, scope=row.scope, subject=row.subject, period=row.period,
            limit_micro_usd=row.limit_micro_usd, alert_percent=json.loads(row.alert_percent),
            webhook_url=row.webhook_url, spent_micro_usd=int(conn.scalar(stmt)),
        )  # fmt: skip
        if end is not None:
            budget.reset_time.CopyFrom(us_to_ts(to_us(end)))
        return budget

    # ---- reports ----

    async def report(
        self, group_by: Sequence[str], start_us: int, end_us: int | None
    ) -> cost_pb2.ReportResponse:
        """Ledger totals over [start, end) grouped by dimensions (largest cost first), and a total."""
        dims = list(dict.fromkeys(group_by))  # keep order, drop repeats
        unknown = [d for d in dims if d not in DIMENSIONS]
        if unknown:
            raise InvalidArgument(f"unknown group_by dimension(s) {unknown}; valid: {', '.join(DIMENSIONS)}")
        end = self._now_us() if end_us is None else end_us
        if end <= start_us:
            raise InvalidArgument("end_time must be after start_time")
        cols = [L[d] for d in dims]
        measures = [
            func.count().label("requests"),
            func.coalesce(func.sum(L.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(L.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum(L.gpu_seconds), 0.0).label("gpu_seconds"),
            func.coalesce(func.sum(L.cost_micro_usd), 0).label("cost_micro_usd"),
        ]
        stmt = select(*cols, *measures).where(L.time_us >= start_us, L.time_us < end)
        if cols:
            stmt = stmt.group_by(*cols).order_by(func.sum(L.cost_micro_usd).desc(), *cols)

        def run():
            with self._engine.connect() as conn:
                return conn.execute(stmt).all()

        rows = await asyncio.to_thread(run)
        out = cost_pb2.ReportResponse()
        total = out.total
        for r in rows:
            m = r._mapping
            if not cols and not m["requests"]:
                continue  # no grouping and nothing in range: no rows, zero total
            row = out.rows.add(
                requests=m["requests"], input_tokens=int(m["input_tokens"]), output_tokens=int(m["output_tokens"]),
                gpu_seconds=float(m["gpu_seconds"]), cost_micro_usd=int(m["cost_micro_usd"]),
            )  # fmt: skip
            for d in dims:
                row.group[d] = m[d] or ""
            total.requests += row.requests
            total.input_tokens += row.input_tokens
            total.output_tokens += row.output_tokens
            total.gpu_seconds += row.gpu_seconds
            total.cost_micro_usd += row.cost_micro_usd
        return out
