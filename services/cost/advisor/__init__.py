"""The cost advisor: rule plugins over ledger and fleet facts (no gRPC).

The built-in rules (consolidate, quantize, scale_to_zero, smaller_model, cut_max_tokens) are
listed in rules/__init__.py; `advise` gathers facts and runs them.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.cost.advisor.base import (
    CatalogModel,
    DayRow,
    Facts,
    Fleet,
    FleetDeployment,
    FleetProvider,
    FleetSnapshot,
    Recommendation,
    Rule,
    RuleResult,
    UsageRow,
)
from services.cost.advisor.facts import gather
from services.cost.advisor.registry import RULES, Advice, check_names, rules, run


async def advise(
    store, *, now_us: int, period_days: int = 0, project: str = "",
    rule_names: Iterable[str] = (), fleet: FleetProvider | None = None,
) -> Advice:  # fmt: skip
    names = check_names(rule_names)  # before reading the ledger
    facts = await gather(store, now_us=now_us, period_days=period_days, project=project, fleet=fleet)
    return run(facts, names)


__all__ = [
    "RULES",
    "Advice",
    "CatalogModel",
    "DayRow",
    "Facts",
    "Fleet",
    "FleetDeployment",
    "FleetProvider",
    "FleetSnapshot",
    "Recommendation",
    "Rule",
    "RuleResult",
    "UsageRow",
    "advise",
    "check_names",
    "gather",
    "rules",
    "run",
]  # fmt: skip
