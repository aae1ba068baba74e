"""Which budgets a request is charged to: the budgets (rules) as the cost service defines them,
who a request is charged to (one subject per scope), and the table that matches the two."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from harness.cost.v1 import cost_pb2

SCOPES = {
    cost_pb2.BUDGET_SCOPE_USER: "user",
    cost_pb2.BUDGET_SCOPE_TEAM: "team",
    cost_pb2.BUDGET_SCOPE_PROJECT: "project",
    cost_pb2.BUDGET_SCOPE_AGENT: "agent",
}
PERIODS = {
    cost_pb2.BUDGET_PERIOD_DAILY: "daily",
    cost_pb2.BUDGET_PERIOD_WEEKLY: "weekly",
    cost_pb2.BUDGET_PERIOD_MONTHLY: "monthly",
    cost_pb2.BUDGET_PERIOD_LIFETIME: "lifetime",
}


@dataclass(frozen=True)
class BudgetRule:
    name: str
    scope: int  # cost_pb2.BudgetScope
    subject: str
    period: int  # cost_pb2.BudgetPeriod
    limit_micro_usd: int
    alert_percent: tuple[int, ...] = ()

    @classmethod
    def from_proto(cls, b: cost_pb2.Budget) -> BudgetRule:
        return cls(b.name, b.scope, b.subject, b.period, b.limit_micro_usd, tuple(b.alert_percent))

    def describe(self) -> str:
        return f"budget '{self.name}' ({SCOPES.get(self.scope, '?')} '{self.subject}', {PERIODS.get(self.period, '?')})"


@dataclass(frozen=True)
class Subjects:
    """Who a request is charged to, one name per budget scope ("" = none)."""

    user: str = ""
    team: str = ""
    project: str = ""
    agent: str = ""

    def of(self, scope: int) -> str:
        return getattr(self, SCOPES.get(scope, "user"), "") if scope in SCOPES else ""


class BudgetTable:
    """Budgets indexed by (scope, subject)."""

    def __init__(self, rules: Iterable[BudgetRule] = ()) -> None:
        self._by: dict[tuple[int, str], list[BudgetRule]] = {}
        for r in rules:
            if r.scope in SCOPES and r.period in PERIODS and r.subject:
                self._by.setdefault((r.scope, r.subject), []).append(r)

    def applicable(self, s: Subjects) -> list[BudgetRule]:
        out: list[BudgetRule] = []
        for scope in SCOPES:
            name = s.of(scope)
            if name:
                out += self._by.get((scope, name), ())
        return out

    def __len__(self) -> int:
        return sum(len(v) for v in self._by.values())
