"""Budget alerts: raised from the ledger, stored once per threshold and period, then delivered.

What raises an alert: a budget's spend in one period (the calendar period in the configured
timezone that contains the spend, or all time for lifetime budgets) reaching one of its
thresholds: the soft `alert_percent` values (default 50, 80, 95) and always 100, the hard limit.
"Reaching" is exact integer arithmetic: spent x 100 >= percent x limit.

When it is checked:
- right after each recorded batch (CostStore.record), for the budgets whose scope matches a new,
  non-zero-cost ledger entry, in the period of that entry's time (a late event is counted in the
  period it happened in). The check runs after the batch's transaction has committed: on
  PostgreSQL (READ COMMITTED) a check inside the transaction could not see a concurrent batch of
  another replica, so two batches could each see less than their sum and both miss a threshold;
  after commit, the later of the two checks sees both.
- after SetBudget, for that budget's current period (a lowered limit alerts at once);
- by the cost service's sweep (at start and every `sweep_s`) for every budget's current period,
  which also covers a crash between a batch's commit and its check.
Each check is cheap when there is nothing to do: thresholds already raised this period are read
first, and the period's spend (one indexed SUM, the same one GetBudget runs) is only computed
while some threshold is still open.

Exactly once: the UNIQUE (budget, period_start_us, percent) key and INSERT ... ON CONFLICT DO
NOTHING make a threshold fire once per period however many replicas, resends or sweeps see it;
only the process whose INSERT created the row tells its listeners (metric, delivery wake-up). A
threshold raised in a period stays raised for that period even if the budget's limit is changed
afterwards, and alert rows outlive a deleted budget (they are history, and may still be being
delivered). Delivery state lives on the row (services/cost/alert_delivery.py ships it).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from harness.cost.v1 import cost_pb2
from sqlalchemy import Engine, and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from services.common.db import IMMEDIATE, is_sqlite
from services.common.errors import InvalidArgument, NotFound
from services.common.pricing import period_bounds, to_us
from services.cost.models import budget_alerts, budgets
from services.cost.validation import us_to_ts

log = logging.getLogger("harness.cost.alerts")

A = budget_alerts.c
HARD_LIMIT_PERCENT = 100
EVENT_PREFIX = "cost-alert-"
DEFAULT_LIST_LIMIT = 500
MAX_LIST_LIMIT = 10_000
# Which ledger entry field a budget scope matches.
SCOPE_FIELD = {
    cost_pb2.BUDGET_SCOPE_USER: "user",
    cost_pb2.BUDGET_SCOPE_TEAM: "team",
    cost_pb2.BUDGET_SCOPE_PROJECT: "project",
    cost_pb2.BUDGET_SCOPE_AGENT: "agent",
}
WEBHOOK_NONE, WEBHOOK_PENDING, WEBHOOK_DELIVERED, WEBHOOK_FAILED = "", "pending", "delivered", "failed"
WEBHOOK_STATES = {
    WEBHOOK_NONE: cost_pb2.WEBHOOK_STATE_UNSPECIFIED,
    WEBHOOK_PENDING: cost_pb2.WEBHOOK_STATE_PENDING,
    WEBHOOK_DELIVERED: cost_pb2.WEBHOOK_STATE_DELIVERED,
    WEBHOOK_FAILED: cost_pb2.WEBHOOK_STATE_FAILED,
}
# (connection, scope, subject, start_us, end_us) -> spend in micro-USD; None bounds = all time.
SpendFn = Callable[[object, int, str, int | None, int | None], int]


def thresholds(alert_percent: Iterable[int]) -> tuple[int, ...]:
    """A budget's thresholds: its soft percentages plus 100 (the hard limit), sorted, unique."""
    return tuple(sorted({*alert_percent, HARD_LIMIT_PERCENT}))


def crossed(spent: int, limit: int, percents: Iterable[int]) -> tuple[int, ...]:
    """The thresholds that `spent` has reached (spent x 100 >= percent x limit)."""
    return tuple(p for p in percents if spent * 100 >= p * limit)


def event_id(budget: str, period_start_us: int, percent: int) -> str:
    """Names the threshold crossing itself, not the row: a rebuilt cost database cannot reuse an
    id the audit log already holds for a different alert."""
    digest = hashlib.sha256(f"{budget}\x00{period_start_us}\x00{percent}".encode()).hexdigest()[:24]
    return f"{EVENT_PREFIX}{digest}"


class Spender(Protocol):
    """What detection needs of a new ledger entry (store.LedgerEntry)."""

    user: str
    team: str
    project: str
    agent: str
    time_us: int
    cost_micro_usd: int


@dataclass(frozen=True)
class AlertRow:
    """One budget_alerts row (field names are the column names)."""

    id: int
    budget: str
    period_start_us: int
    percent: int
    scope: int
    subject: str
    period: int
    period_end_us: int
    limit_micro_usd: int
    spent_micro_usd: int
    created_us: int
    audit_shipped_us: int
    webhook_url: str
    webhook_state: str
    webhook_attempts: int
    webhook_next_us: int
    webhook_delivered_us: int
    webhook_last_error: str

    @classmethod
    def of(cls, row) -> AlertRow:
        return cls(**row._mapping)

    @property
    def event_id(self) -> str:
        return event_id(self.budget, self.period_start_us, self.percent)

    @property
    def lifetime(self) -> bool:
        return self.period == cost_pb2.BUDGET_PERIOD_LIFETIME

    def to_proto(self) -> cost_pb2.Alert:
        alert = cost_pb2.Alert(
            id=self.event_id, budget=self.budget, percent=self.percent, spent_micro_usd=self.spent_micro_usd,
            time=us_to_ts(self.created_us), limit_micro_usd=self.limit_micro_usd, scope=self.scope,
            subject=self.subject, period=self.period, audit_shipped=bool(self.audit_shipped_us),
            webhook=cost_pb2.WebhookDelivery(
                url=self.webhook_url, state=WEBHOOK_STATES.get(self.webhook_state, 0),
                attempts=self.webhook_attempts, last_error=self.webhook_last_error,
            ),
        )  # fmt: skip
        if not self.lifetime:
            alert.period_start.CopyFrom(us_to_ts(self.period_start_us))
            alert.period_end.CopyFrom(us_to_ts(self.period_end_us))
        if self.webhook_delivered_us:
            alert.webhook.delivered_time.CopyFrom(us_to_ts(self.webhook_delivered_us))
        return alert


@dataclass(frozen=True)
class _Budget:
    name: str
    scope: int
    subject: str
    period: int
    limit: int
    percents: tuple[int, ...]
    webhook_url: str

    @classmethod
    def of(cls, row) -> _Budget:
        percents = thresholds(json.loads(row.alert_percent))
        return cls(
            row.name, row.scope, row.subject, row.period, row.limit_micro_usd, percents, row.webhook_url
        )


class AlertBook:
    """Budget alert rows in the cost database: detection, listing and delivery bookkeeping.

    Synchronous (the store calls it from its worker threads; delivery through asyncio.to_thread).
    """

    def __init__(self, engine: Engine, *, tz: ZoneInfo, now_us: Callable[[], int], spend: SpendFn) -> None:
        self._engine = engine
        self._insert = (sqlite.insert if is_sqlite(engine) else postgresql.insert)(budget_alerts)
        self._tz = tz
        self._now_us = now_us
        self._spend = spend
        self._listeners: list[Callable[[list[AlertRow]], None]] = []

    def add_listener(self, listener: Callable[[list[AlertRow]], None]) -> Callable[[], None]:
        """Calls `listener(new_rows)` (in the calling thread) after this process raised alerts."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def now_us(self) -> int:
        return self._now_us()

    def _write(self):
        conn = self._engine.connect()
        conn.execution_options(**{IMMEDIATE: True})
        return conn

    def period_of(self, period: int, time_us: int) -> tuple[int, int]:
        """(start_us, end_us) of the budget period containing `time_us`; (0, 0) for lifetime."""
        at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_us)
        start, end = period_bounds(period, at, self._tz)
        if start is None or end is None:
            return 0, 0
        return to_us(start), to_us(end)

    # ---- detection ----

    def detect(self, entries: Sequence[Spender]) -> list[AlertRow]:
        """Raises the alerts that newly recorded ledger entries may have caused."""
        spent = [e for e in entries if e.cost_micro_usd > 0]
        if not spent:
            return []
        subjects: dict[int, set[str]] = {
            s: {getattr(e, f) for e in spent} - {""} for s, f in SCOPE_FIELD.items()
        }
        match = [
            and_(budgets.c.scope == s, budgets.c.subject.in_(sorted(v))) for s, v in subjects.items() if v
        ]
        if not match:
            return []
        with self._engine.connect() as conn:
            rows = conn.execute(select(budgets).where(or_(*match))).all()
        periods: list[tuple[_Budget, int, int]] = []
        for row in rows:
            b = _Budget.of(row)
            field = SCOPE_FIELD[b.scope]
            seen: list[tuple[int, int]] = []  # a batch is usually all in one period
            for e in spent:
                if getattr(e, field) != b.subject:
                    continue
                if any(start <= e.time_us < end or end == 0 for start, end in seen):
                    continue
                seen.append(self.period_of(b.period, e.time_us))
                periods.append((b, *seen[-1]))
        return self._raise(periods)

    def check_current(self, names: Sequence[str] | None = None) -> list[AlertRow]:
        """Raises what the current period's spend of every budget (or of `names`) has reached."""
        stmt = select(budgets)
        if names is not None:
            stmt = stmt.where(budgets.c.name.in_(list(names)))
        with self._engine.connect() as conn:
            rows = conn.execute(stmt).all()
        now = self._now_us()
        return self._raise([(b, *self.period_of(b.period, now)) for b in map(_Budget.of, rows)])

    def _raise(self, periods: Sequence[tuple[_Budget, int, int]]) -> list[AlertRow]:
        if not periods:
            return []
        found = []
        with self._engine.connect() as conn:
            # What is already raised in these periods: one query for all of them.
            raised = conn.execute(
                select(A.budget, A.period_start_us, A.percent).where(
                    A.budget.in_(sorted({b.name for b, _, _ in periods})),
                    A.period_start_us >= min(start for _, start, _ in periods),
                )
            ).all()
            fired: dict[tuple[str, int], set[int]] = {}
            for name, start, percent in raised:
                fired.setdefault((name, start), set()).add(percent)
            for b, start, end in periods:
                open_ = [p for p in b.percents if p not in fired.get((b.name, start), ())]
                if not open_:
                    continue
                bounds = (None, None) if b.period == cost_pb2.BUDGET_PERIOD_LIFETIME else (start, end)
                spent = self._spend(conn, b.scope, b.subject, *bounds)
                for p in crossed(spent, b.limit, open_):
                    found.append((b, start, end, p, spent))
        if not found:
            return []
        now = self._now_us()
        new: list[AlertRow] = []
        # Insert in key order: overlapping transactions take the unique-index locks in one global
        # order, so they cannot deadlock on PostgreSQL.
        with self._write() as conn, conn.begin():
            for b, start, end, p, spent in sorted(found, key=lambda f: (f[0].name, f[1], f[3])):
                stmt = self._insert.values(
                    budget=b.name, period_start_us=start, percent=p, scope=b.scope, subject=b.subject,
                    period=b.period, period_end_us=end, limit_micro_usd=b.limit, spent_micro_usd=spent,
                    created_us=now, audit_shipped_us=0, webhook_url=b.webhook_url,
                    webhook_state=WEBHOOK_PENDING if b.webhook_url else WEBHOOK_NONE, webhook_attempts=0,
                    webhook_next_us=0, webhook_delivered_us=0, webhook_last_error="",
                ).on_conflict_do_nothing(index_elements=["budget", "period_start_us", "percent"])  # fmt: skip
                row = conn.execute(stmt.returning(*budget_alerts.c)).first()
                if row is not None:  # None: another replica or an earlier check raised it
                    new.append(AlertRow.of(row))
        if new:
            log.info(
                "budget alerts raised: %s",
                ", ".join(f"{a.budget} {a.percent}% ({a.event_id})" for a in new),
            )
            for listener in list(self._listeners):
                try:
                    listener(new)
                except Exception:
                    log.exception("budget alert listener failed")
        return new

    # ---- listing ----

    def list_alerts(self, budget: str = "", limit: int = 0) -> list[AlertRow]:
        """Alerts, newest first; NOT_FOUND for a budget name that does not exist."""
        if limit < 0:
            raise InvalidArgument("limit must not be negative")
        limit = min(limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
        stmt = select(budget_alerts).order_by(A.created_us.desc(), A.id.desc()).limit(limit)
        with self._engine.connect() as conn:
            if budget:
                if conn.scalar(select(budgets.c.name).where(budgets.c.name == budget)) is None:
                    raise NotFound(f"budget {budget!r} does not exist")
                stmt = stmt.where(A.budget == budget)
            return [AlertRow.of(r) for r in conn.execute(stmt).all()]

    # ---- delivery bookkeeping ----

    def pending_audit(self, limit: int) -> list[AlertRow]:
        stmt = select(budget_alerts).where(A.audit_shipped_us == 0).order_by(A.id).limit(limit)
        with self._engine.connect() as conn:
            return [AlertRow.of(r) for r in conn.execute(stmt).all()]

    def mark_audit_shipped(self, ids: Sequence[int]) -> None:
        stmt = update(budget_alerts).where(A.id.in_(list(ids)), A.audit_shipped_us == 0)
        with self._write() as conn, conn.begin():
            conn.execute(stmt.values(audit_shipped_us=self._now_us()))

    def due_webhooks(self, limit: int) -> list[AlertRow]:
        stmt = (
            select(budget_alerts)
            .where(A.webhook_state == WEBHOOK_PENDING, A.webhook_next_us <= self._now_us())
            .order_by(A.webhook_next_us, A.id)
            .limit(limit)
        )
        with self._engine.connect() as conn:
            return [AlertRow.of(r) for r in conn.execute(stmt).all()]

    def next_webhook_us(self) -> int | None:
        """When the earliest pending webhook is due (None: none is pending)."""
        stmt = select(func.min(A.webhook_next_us)).where(A.webhook_state == WEBHOOK_PENDING)
        with self._engine.connect() as conn:
            return conn.scalar(stmt)

    def claim_webhook(self, alert: AlertRow, lease_us: int) -> int | None:
        """Takes one attempt of a due webhook for `lease_us` (no other replica tries it meanwhile).

        Compare-and-set on the row as read: returns the attempt number, or None when another
        replica claimed it first."""
        stmt = (
            update(budget_alerts)
            .where(
                A.id == alert.id,
                A.webhook_state == WEBHOOK_PENDING,
                A.webhook_attempts == alert.webhook_attempts,
                A.webhook_next_us == alert.webhook_next_us,
            )
            .values(webhook_attempts=A.webhook_attempts + 1, webhook_next_us=self._now_us() + lease_us)
            .returning(A.webhook_attempts)
        )
        with self._write() as conn, conn.begin():
            return conn.scalar(stmt)

    def webhook_result(self, alert_id: int, *, error: str = "", retry_in_us: int | None = None) -> None:
        """Records an attempt: delivered (no error), to retry in `retry_in_us`, or failed for good."""
        now = self._now_us()
        if not error:
            values = {
                "webhook_state": WEBHOOK_DELIVERED,
                "webhook_delivered_us": now,
                "webhook_last_error": "",
            }
        elif retry_in_us is not None:
            values = {"webhook_next_us": now + retry_in_us, "webhook_last_error": error[:1000]}
        else:
            values = {"webhook_state": WEBHOOK_FAILED, "webhook_last_error": error[:1000]}
        stmt = update(budget_alerts).where(A.id == alert_id, A.webhook_state == WEBHOOK_PENDING)
        with self._write() as conn, conn.begin():
            conn.execute(stmt.values(**values))
