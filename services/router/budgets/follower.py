"""Keeps the router's copy of budgets and prices: polls the cost service's ListBudgets and
ListPrices in the background (the hot path never waits on it) and serves the last known spend
per budget as the ledger source that missing counters are rebuilt from. Less often it reads the
GPU seconds per token each model was charged lately (a Report by model and deployment), which
the GPU-time bound starts from before this router has observed the model itself."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import grpc
from google.protobuf import timestamp_pb2
from harness.cost.v1 import cost_pb2, cost_pb2_grpc

from services.common.streams import BackgroundFollower

from .core import BudgetEnforcer
from .prices import PriceTable
from .rules import BudgetRule

log = logging.getLogger("harness.router.budgets")


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


class CostFollower(BackgroundFollower):
    _task_name = "cost-follower"

    RATES_WINDOW_S = 86_400  # the ledger's last day of model calls

    def __init__(
        self,
        channel: grpc.aio.Channel,
        enforcer: BudgetEnforcer,
        interval_s: float = 5.0,
        rates_interval_s: float = 60.0,
    ) -> None:
        super().__init__()
        self._stub = cost_pb2_grpc.CostStub(channel)
        self._enforcer = enforcer
        self._interval = interval_s
        self._rates_interval = rates_interval_s
        self._rates_due = 0.0  # monotonic time of the next read of GPU rates
        # budget name -> (spent in its period, end of that period in us or None for lifetime)
        self._spent: dict[str, tuple[int, int | None]] = {}
        self._failing = False
        self._period_mismatch: set[str] = set()  # budgets whose period end disagreed last poll
        self._warned: set[str] = set()
        enforcer.set_ledger(self.spent)

    async def spent(self, rule: BudgetRule, period_start_us: int | None) -> int | None:
        got = self._spent.get(rule.name)
        if got is None:
            return None
        spent, end_us = got
        if period_start_us is not None and end_us is not None and end_us <= period_start_us:
            return 0  # the last poll saw an earlier period; this one has just begun
        return spent

    def apply(self, budgets: list[cost_pb2.Budget], prices: list[cost_pb2.Price]) -> None:
        self._spent = {
            b.name: (
                b.spent_micro_usd,
                b.reset_time.seconds * 1_000_000 + b.reset_time.nanos // 1000
                if b.HasField("reset_time")
                else None,
            )
            for b in budgets
        }
        rules = [BudgetRule.from_proto(b) for b in budgets]
        self._enforcer.update(rules, PriceTable.from_protos(prices))
        self._check_periods(rules, budgets)
        self._mark_ready()

    def _check_periods(self, rules: list[BudgetRule], budgets: list[cost_pb2.Budget]) -> None:
        """Says loudly when a budget's period ends elsewhere here than at the cost service (the
        two were given different timezones): the router would count against a different period
        than the ledger and the alerts. Two polls in a row, so a poll taken across a period
        boundary is not a mismatch."""
        now_ms = time.time() * 1000
        mismatched = set()
        for rule, b in zip(rules, budgets, strict=True):
            ours = self._enforcer.charge(rule, now_ms, 0).reset_ms
            theirs = b.reset_time.ToMilliseconds() if b.HasField("reset_time") else None
            if theirs is not None and ours is not None and abs(ours - theirs) > 1000:
                mismatched.add(rule.name)
                if rule.name in self._period_mismatch and rule.name not in self._warned:
                    self._warned.add(rule.name)
                    log.error(
                        "%s: its period ends at %s here but at %s at the cost service; give the router and "
                        "the cost service the same timezone (HARNESS_COST_TIMEZONE; router --budget-timezone)",
                        rule.describe(), _iso(ours), _iso(theirs),
                    )  # fmt: skip
        self._period_mismatch = mismatched

    @property
    def period_mismatches(self) -> set[str]:
        """Budgets whose period end disagreed with the cost service's at the last poll."""
        return set(self._period_mismatch)

    async def poll_once(self) -> None:
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        asked = time.time()  # every change the cost service committed before this is in the answer
        budgets = await self._stub.ListBudgets(cost_pb2.ListBudgetsRequest(), timeout=5.0)
        prices = await self._stub.ListPrices(cost_pb2.ListPricesRequest(at_time=now), timeout=5.0)
        self.apply(list(budgets.budgets), list(prices.prices))
        self._enforcer.budgets_as_of = asked

    async def poll_gpu_rates(self) -> dict[str, float]:
        """GPU seconds per token (input + output) each model was charged over the last day, from
        calls an engine served (rows with a deployment; cache answers have none and no GPU time)."""
        since = timestamp_pb2.Timestamp()
        since.FromSeconds(int(time.time()) - self.RATES_WINDOW_S)
        report = await self._stub.Report(
            cost_pb2.ReportRequest(group_by=["model", "deployment"], start_time=since), timeout=5.0
        )
        totals: dict[str, list[float]] = {}
        for row in report.rows:
            model, deployment = row.group["model"], row.group["deployment"]
            if model and deployment and row.gpu_seconds > 0:
                t = totals.setdefault(model, [0.0, 0.0])
                t[0] += row.gpu_seconds
                t[1] += row.input_tokens + row.output_tokens
        rates = {m: gpu / tokens for m, (gpu, tokens) in totals.items() if tokens > 0}
        self._enforcer.gpu.seed(rates)
        return rates

    async def _refresh_gpu_rates(self) -> None:
        # Only a better starting point for the GPU bound: a failure keeps the last rates and
        # must neither stop the budget polls nor mark the cost service down.
        try:
            await self.poll_gpu_rates()
        except Exception as exc:
            log.warning("reading GPU rates from the cost service failed (%s); keeping the last ones", exc)

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
                if time.monotonic() >= self._rates_due:
                    self._rates_due = time.monotonic() + self._rates_interval
                    await self._refresh_gpu_rates()
                if self._failing:
                    log.info("cost service reachable again; budgets and prices refreshed")
                self._failing = False
            except grpc.aio.AioRpcError as exc:
                level = logging.DEBUG if self._failing else logging.WARNING
                log.log(level, "cost service unreachable (%s); keeping last known budgets", exc.code().name)
                self._failing = True
            except Exception:  # a bad answer must not end the polling: budgets would freeze
                log.exception(
                    "applying budgets and prices from the cost service failed; keeping the last ones"
                )
            await asyncio.sleep(self._interval)
