"""The cost store: price versions, the priced usage ledger, budgets, alerts and reports (whose
queries and response services/cost/reports.py builds).

Core code: no gRPC. Blocking SQLAlchemy work runs in a worker thread. Recording is idempotent
through the ledger's UNIQUE event_id and INSERT ... ON CONFLICT DO NOTHING, so concurrent
streams (or replicas) resending the same event store it once without any extra locking. Budget
alerts (services/cost/alerts.py) are checked right after each recorded batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite

from services.common.db import IMMEDIATE, is_sqlite, make_engine
from services.common.errors import InvalidArgument, NotFound
from services.common.limits import check_length, check_range, timestamp_us
from services.common.pricing import PriceBook, local_day, period_bounds, price_event, to_us
from services.cost import admin_changes, aggregates, migrate, reports
from services.cost.alerts import AlertBook, AlertRow
from services.cost.models import budgets, ledger, prices
from services.cost.validation import (
    MAX_MICRO_USD,
    MAX_NAME_CHARS,
    ts_to_us,
    us_to_ts,
    validate_budget,
    validate_usage,
)

log = logging.getLogger("harness.cost.store")
L = ledger.c


@dataclass(frozen=True)
class LedgerEntry:
    """A newly recorded, priced event (what the servicer turns into metrics)."""

    event_id: str
    team: str
    project: str
    agent: str
    model: str
    cost_micro_usd: int
    user: str = ""
    time_us: int = 0


@dataclass(frozen=True)
class RecordResult:
    accepted: int
    duplicates: int
    new: tuple[LedgerEntry, ...] = ()
    alerts: tuple[AlertRow, ...] = ()  # budget alerts this batch raised


class CostStore:
    def __init__(self, url: str, *, timezone: str = "UTC", now_us: Callable[[], int] | None = None) -> None:
        self._engine = make_engine(url)
        self._pg = not is_sqlite(self._engine)
        self.tz = ZoneInfo(timezone)
        self._now_us = now_us or (lambda: time.time_ns() // 1000)
        try:
            migrate.open_schema(self._engine)  # the schema follows the code, or is checked (see migrate.py)
        except BaseException:
            self._engine.dispose()
            raise
        self.alerts = AlertBook(self._engine, tz=self.tz, now_us=self._now_us, spend=aggregates.spend)
        # Called (from a worker thread) after a price or budget change committed: ship it now.
        self.admin_listeners: list[Callable[[], None]] = []

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

    def _changed(self) -> None:
        for listener in list(self.admin_listeners):
            listener()

    def pending_admin_changes(self, limit: int) -> list:
        return admin_changes.pending(self._engine, limit)

    def mark_admin_changes_shipped(self, ids) -> None:
        admin_changes.mark_shipped(self._write, ids, self._now_us())

    def _insert(self, table):
        return (postgresql.insert if self._pg else sqlite.insert)(table)

    # ---- prices ----

    async def set_price(self, price: cost_pb2.Price) -> cost_pb2.Price:
        """Stores a price version (replacing one with the same kind, subject and effective time)."""
        if price.kind not in cost_pb2.PriceKind.values() or price.kind == cost_pb2.PRICE_KIND_UNSPECIFIED:
            raise InvalidArgument(
                "price.kind is required (model_input_tokens, model_output_tokens, gpu_hour or tool_call)"
            )
        if not price.subject:
            raise InvalidArgument("price.subject is required (model name, GPU type or tool name)")
        if price.micro_usd < 0:
            raise InvalidArgument("price.micro_usd must not be negative")
        check_range("price.micro_usd", price.micro_usd, 0, MAX_MICRO_USD)
        check_length("price.subject", price.subject, MAX_NAME_CHARS)
        now = self._now_us()
        effective = (
            timestamp_us("price.effective_time", price.effective_time)
            if price.HasField("effective_time")
            else now
        )
        values = {"kind": price.kind, "subject": price.subject, "micro_usd": price.micro_usd}
        stmt = self._insert(prices).values(**values, effective_us=effective, set_us=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=["kind", "subject", "effective_us"],
            set_={"micro_usd": price.micro_usd, "set_us": now},
        )

        kind_name = cost_pb2.PriceKind.Name(price.kind).removeprefix("PRICE_KIND_").lower()
        change = {"kind": kind_name, "subject": price.subject, "micro_usd": price.micro_usd,
                  "effective_us": effective}  # fmt: skip

        def run():
            with self._write() as conn, conn.begin():
                conn.execute(stmt)
                admin_changes.record(conn, now, f"price:{kind_name}:{price.subject}", "set", change)
            self._changed()

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

    async def record(self, events: Sequence[common_pb2.UsageEvent]) -> RecordResult:
        """Prices and stores one batch in one transaction; resent events count as duplicates."""
        validate_usage(events)
        if not events:
            return RecordResult(0, 0)
        return await asyncio.to_thread(self._record_sync, list(events))

    def _record_sync(self, events: list[common_pb2.UsageEvent]) -> RecordResult:
        now = self._now_us()
        with self._write() as conn, conn.begin():
            cols = (prices.c.kind, prices.c.subject, prices.c.effective_us, prices.c.micro_usd)
            book = PriceBook(conn.execute(select(*cols)).all())
            # Insert in event_id order: two transactions taking the unique-index locks of
            # overlapping batches in one global order cannot deadlock on PostgreSQL. An id sent
            # twice in one batch counts once, as a resend does.
            rows = list({ev.event_id: self._ledger_row(ev, book, now) for ev in events}.values())
            rows.sort(key=lambda row: row["event_id"])
            # One statement for the batch (SQLAlchemy sends the rows as one multi-row INSERT),
            # not one per event: it was most of the cost service's CPU per request. RETURNING,
            # not rowcount: a skipped conflicting row returns nothing on both databases, while
            # rowcount reads -1 on psycopg (SQLAlchemy 2.1).
            stmt = self._insert(ledger).on_conflict_do_nothing(index_elements=["event_id"])
            stored = set(conn.execute(stmt.returning(L.event_id), rows).scalars())
            new = [
                LedgerEntry(row["event_id"], row["team"], row["project"], row["agent"], row["model"],
                            row["cost_micro_usd"], row["user"], row["time_us"])
                for row in rows
                if row["event_id"] in stored
            ]  # fmt: skip
            aggregates.add(conn, self._insert, new)
        # After the commit (see alerts.py for why). A failure here must not fail the batch, which
        # is stored: a resend would be all duplicates and check nothing. The sweep catches up.
        try:
            alerts = tuple(self.alerts.detect(new))
        except Exception:
            log.exception("budget alert check after a recorded batch failed (the sweep will retry)")
            alerts = ()
        return RecordResult(len(new), len(events) - len(new), tuple(new), alerts)

    def _ledger_row(self, ev: common_pb2.UsageEvent, book: PriceBook, now: int) -> dict:
        # An event without a time is priced and dated at receipt (the router always sets it).
        time_us = ts_to_us(ev.time) if ev.HasField("time") else now  # checked by validate_usage
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
            "usage_estimated": u.estimated,
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

        change = {k: v for k, v in values.items() if k not in ("webhook_url", "alert_percent", "updated_us")}
        change.update(alert_percent=list(alerts), webhook=bool(b.webhook_url))  # the URL may hold a token

        def run():
            with self._write() as conn, conn.begin():
                conn.execute(stmt)
                budget = self._budget(
                    conn, conn.execute(select(budgets).where(budgets.c.name == b.name)).one()
                )
                admin_changes.record(conn, values["updated_us"], f"budget:{b.name}", "set", change)
            self._changed()
            try:  # a lowered limit may already be reached
                self.alerts.check_current([b.name])
            except Exception:
                log.exception("budget alert check after SetBudget %s failed (the sweep will retry)", b.name)
            return budget

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
                deleted = conn.execute(delete(budgets).where(budgets.c.name == name)).rowcount
                if deleted:
                    admin_changes.record(conn, self._now_us(), f"budget:{name}", "delete", {"name": name})
            if deleted:
                self._changed()
            return deleted

        if not await asyncio.to_thread(run):
            raise NotFound(f"budget {name!r} does not exist")

    def _budget(self, conn, row) -> cost_pb2.Budget:
        """The stored budget plus its spend in the current period (calendar, configured timezone)."""
        now = datetime.fromtimestamp(self._now_us() / 1_000_000, tz=UTC)
        start, end = period_bounds(row.period, now, self.tz)
        bounds = (to_us(start), to_us(end)) if start is not None and end is not None else (None, None)
        budget = cost_pb2.Budget(
            name=row.name, scope=row.scope, subject=row.subject, period=row.period,
            limit_micro_usd=row.limit_micro_usd, alert_percent=json.loads(row.alert_percent),
            webhook_url=row.webhook_url, spent_micro_usd=aggregates.spend(conn, row.scope, row.subject, *bounds),
        )  # fmt: skip
        if end is not None:
            budget.reset_time.CopyFrom(us_to_ts(to_us(end)))
        return budget

    # ---- alerts ----

    async def list_alerts(self, budget: str = "", limit: int = 0) -> list[cost_pb2.Alert]:
        """Budget alerts (of one budget: NOT_FOUND when it does not exist), newest first."""
        rows = await asyncio.to_thread(self.alerts.list_alerts, budget, limit)
        return [a.to_proto() for a in rows]

    async def check_budgets(self) -> list[AlertRow]:
        """Raises what every budget's current-period spend has reached (the sweep)."""
        return await asyncio.to_thread(self.alerts.check_current)

    # ---- reports (services/cost/reports.py) ----

    async def report(
        self, group_by: Sequence[str], start_us: int, end_us: int | None
    ) -> cost_pb2.ReportResponse:
        """Ledger totals over [start, end) grouped by dimensions (largest cost first), and a total."""
        query = reports.report_query(group_by, start_us, self._now_us() if end_us is None else end_us)

        def run(stmt):
            with self._engine.connect() as conn:
                return conn.execute(stmt).all()

        rows = await asyncio.to_thread(run, query.totals)
        gap_rows = await asyncio.to_thread(run, query.unpriced)
        return reports.report_response(query.dims, rows, gap_rows)
