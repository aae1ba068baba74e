"""The router's budget metrics, read from the enforcer at scrape time.

- `harness_router_budget_reservations`: reservations this router admitted and has not settled.
- `harness_router_budget_counter_rebuilds_total`: budget counters this router rebuilt from the
  ledger (a new period, a restart, or a budget store that lost its data).
- `harness_router_budget_reservations_reregistered_total`: in-flight reservations a renewal found
  gone from the budget store and registered again (the store lost data while they ran).
- `harness_router_budget_fail_open`: the configured mode when Redis does not answer (1 open with
  a local share, 0 closed); `harness_router_budget_store_degraded`: 1 while it does not answer.
- `harness_router_budgets_as_of_timestamp_seconds`: Unix time this router asked the cost service
  for the budgets and prices it enforces (0 before its first answer): how stale its copy may be.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .core import BudgetEnforcer


class BudgetCollector(Collector):
    def __init__(self, enforcer: BudgetEnforcer) -> None:
        self._enforcer = enforcer

    def collect(self) -> Iterable[Metric]:
        e = self._enforcer
        yield GaugeMetricFamily(
            "harness_router_budget_reservations",
            "Budget reservations admitted here, not settled yet",
            value=e.live,
        )
        yield CounterMetricFamily(
            "harness_router_budget_counter_rebuilds",
            "Budget counters rebuilt from the ledger",
            value=e.rebuilds,
        )
        yield GaugeMetricFamily(
            "harness_router_budget_fail_open",
            "1: when the budget store does not answer, this router enforces its local share of each "
            "budget; 0: budgeted requests are refused",
            value=int(e.fail_open),
        )
        yield GaugeMetricFamily(
            "harness_router_budget_store_degraded",
            "1 while the shared budget store does not answer (the fail-open or fail-closed mode is in force)",
            value=int(e.degraded),
        )
        yield CounterMetricFamily(
            "harness_router_budget_reservations_reregistered",
            "In-flight reservations registered again after the budget store lost them",
            value=e.reregistered,
        )
        yield GaugeMetricFamily(
            "harness_router_budgets_as_of_timestamp_seconds",
            "Unix time this router asked the cost service for the budgets and prices it enforces "
            "(0 before the first answer); changes committed before it are in force here",
            value=e.budgets_as_of,
        )


def register_budget_metrics(registry: CollectorRegistry, enforcer: BudgetEnforcer) -> BudgetCollector:
    collector = BudgetCollector(enforcer)
    registry.register(collector)
    return collector
