"""Prometheus metrics of the cost service, read from the store at scrape time.

- `harness_cost_usd_total{team,project,agent,model}`: ledger cost in USD since the ledger began.
  The ledger is append-only, so each series only grows (a counter); because it is read from the
  database rather than counted in memory, it is the same on every replica and survives restarts.
  It is read from `cost_totals`, which the store keeps in each batch's transaction: a scrape
  costs one row per label set, not a pass over the ledger.
  Cardinality is bounded: the `max_series` costliest label sets are exported and everything else
  is summed into one series whose labels are all `__other__`. Zero-cost (unpriced) usage exports
  no series.
- `harness_budget_remaining_usd{budget}`: a budget's limit minus its spend in the current
  period (negative when overspent), computed exactly as GetBudget computes it.
- `harness_budget_limit_usd{budget}`, `harness_budget_spent_usd{budget}`: the limit and the
  spend in the current period; `harness_budget_period_end_timestamp_seconds{budget}` (Unix time
  the period resets; no series for a lifetime budget). Burn-rate rules project the spend rate
  to the period end.
- `harness_cost_metrics_up`: 1 when the last scrape could read the store, else 0 (the two
  families above are then missing from that scrape, and the error is logged).
- `harness_budget_alerts_total{budget,percent}`: budget alerts this process raised (inserted the
  alert row of; services/cost/alerts.py). Each threshold is raised once per budget period across
  all replicas, so the sum over replicas counts every alert once. Counted in memory: it starts
  at 0 with the process, like any Prometheus counter.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from services.cost.alerts import AlertRow
from services.cost.models import budgets, cost_totals
from services.cost.store import CostStore

log = logging.getLogger(__name__)

T = cost_totals.c
MICRO = 1_000_000
DEFAULT_MAX_SERIES = 500
OTHER = "__other__"
LABELS = ("team", "project", "agent", "model")
COST_HELP = "Cost of recorded usage, USD (ledger sum; the costliest label sets, the rest as __other__)"
BUDGET_HELP = "Budget limit minus spend in its current period, USD"
BUDGET_FAMILIES = {
    "harness_budget_limit_usd": "Budget limit per period, USD",
    "harness_budget_spent_usd": "Budget spend in its current period, USD",
    "harness_budget_period_end_timestamp_seconds": "When the budget's current period ends (Unix time)",
}
UP_HELP = "1 when the cost metrics could be read from the store at this scrape"


def _families() -> tuple[CounterMetricFamily, GaugeMetricFamily, dict[str, GaugeMetricFamily]]:
    return (
        CounterMetricFamily("harness_cost_usd", COST_HELP, labels=LABELS),
        GaugeMetricFamily("harness_budget_remaining_usd", BUDGET_HELP, labels=["budget"]),
        {name: GaugeMetricFamily(name, doc, labels=["budget"]) for name, doc in BUDGET_FAMILIES.items()},
    )


class CostCollector(Collector):
    """Sums the ledger and budgets each time the registry is collected (a scrape)."""

    def __init__(self, store: CostStore, *, max_series: int = DEFAULT_MAX_SERIES) -> None:
        if max_series < 1:
            raise ValueError("max_series must be >= 1")
        self._store = store
        self._max_series = max_series

    def describe(self) -> Iterable[Metric]:
        # Names only (no database work at registration); lets the registry reject duplicates.
        cost, remaining, per_budget = _families()
        yield from (cost, remaining, *per_budget.values())
        yield GaugeMetricFamily("harness_cost_metrics_up", UP_HELP)

    def collect(self) -> Iterable[Metric]:
        try:
            cost, remaining, per_budget = self._read()
        except Exception:  # a scrape must not fail the whole endpoint
            log.exception("cost metrics: reading the store failed")
            yield GaugeMetricFamily("harness_cost_metrics_up", UP_HELP, value=0)
            return
        yield cost
        yield remaining
        yield from per_budget.values()
        yield GaugeMetricFamily("harness_cost_metrics_up", UP_HELP, value=1)

    def _read(self) -> tuple[CounterMetricFamily, GaugeMetricFamily, dict[str, GaugeMetricFamily]]:
        cost, remaining, per_budget = _families()
        top = (
            select(T.team, T.project, T.agent, T.model, T.cost_micro_usd.label("micro"))
            .where(T.cost_micro_usd > 0)
            .order_by(T.cost_micro_usd.desc(), T.team, T.project, T.agent, T.model)
            .limit(self._max_series + 1)
        )
        total = select(func.coalesce(func.sum(T.cost_micro_usd), 0))
        # The store's engine and budget computation (no public sync API): run in this thread,
        # which is the metrics HTTP server's (or the caller's, for registry.get_sample_value).
        store = self._store
        with store._engine.connect() as conn:
            rows = conn.execute(top).all()
            all_micro = int(conn.scalar(total))
            budget_rows = conn.execute(select(budgets).order_by(budgets.c.name)).all()
            current = [store._budget(conn, row) for row in budget_rows]
        shown = rows[: self._max_series]
        for r in shown:
            cost.add_metric([r.team, r.project, r.agent, r.model], int(r.micro) / MICRO)
        if len(rows) > self._max_series:
            rest = all_micro - sum(int(r.micro) for r in shown)
            cost.add_metric([OTHER] * len(LABELS), rest / MICRO)
        for b in current:
            remaining.add_metric([b.name], (b.limit_micro_usd - b.spent_micro_usd) / MICRO)
            per_budget["harness_budget_limit_usd"].add_metric([b.name], b.limit_micro_usd / MICRO)
            per_budget["harness_budget_spent_usd"].add_metric([b.name], b.spent_micro_usd / MICRO)
            if b.HasField("reset_time"):
                end = per_budget["harness_budget_period_end_timestamp_seconds"]
                end.add_metric([b.name], b.reset_time.seconds + b.reset_time.nanos / 1e9)
        return cost, remaining, per_budget


class CostMetrics:
    """The cost service's metrics on the server's registry (served on its /metrics port)."""

    def __init__(
        self, registry: CollectorRegistry, store: CostStore, *, max_series: int = DEFAULT_MAX_SERIES
    ) -> None:
        self.collector = CostCollector(store, max_series=max_series)
        registry.register(self.collector)
        self.alerts = Counter(
            "harness_budget_alerts",
            "Budget alerts raised by this process (threshold percent of the limit crossed in a period)",
            ["budget", "percent"],
            registry=registry,
        )
        self._unlisten = store.alerts.add_listener(self.alerts_raised)

    def alerts_raised(self, alerts: list[AlertRow]) -> None:
        """Store listener (runs in the store's worker thread; prometheus counters are thread-safe)."""
        for a in alerts:
            self.alerts.labels(budget=a.budget, percent=str(a.percent)).inc()
