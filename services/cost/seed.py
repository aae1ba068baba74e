"""Applies the `cost` part of the demo YAML (prices and budgets) through the Cost API, idempotently.

```yaml
cost:
  prices:   # usd per 1M tokens, per GPU-hour or per call; optional `effective` (RFC3339)
    - {kind: model_input_tokens, subject: llama-3-8b, usd: 0.20}
  budgets:
    - {name: ledger-monthly, scope: project, subject: ledger, period: monthly, limit_usd: 500,
       alert_percent: [50, 80, 95], webhook_url: ""}
```
A price without `effective` is set (effective now) only when the price in force differs, so
seeding twice adds no versions; one with `effective` is upserted at that time. Budgets are
replaced by name (SetBudget is idempotent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import timestamp_pb2
from harness.cost.v1 import cost_pb2

from services.common.pricing import usd_to_micro


def _enum(enum_type, prefix: str, value: str, what: str) -> int:
    name = f"{prefix}{str(value).strip().upper()}"
    if name not in enum_type.keys():
        valid = [k.removeprefix(prefix).lower() for k in enum_type.keys() if not k.endswith("UNSPECIFIED")]
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
    return enum_type.Value(name)


def parse_price(item: dict[str, Any]) -> cost_pb2.Price:
    price = cost_pb2.Price(
        kind=_enum(cost_pb2.PriceKind, "PRICE_KIND_", item["kind"], "price kind"),
        subject=str(item["subject"]),
        micro_usd=usd_to_micro(item["usd"]),
    )
    if item.get("effective"):
        ts = timestamp_pb2.Timestamp()
        ts.FromJsonString(str(item["effective"]))
        price.effective_time.CopyFrom(ts)
    return price


def parse_budget(item: dict[str, Any]) -> cost_pb2.Budget:
    return cost_pb2.Budget(
        name=str(item["name"]),
        scope=_enum(cost_pb2.BudgetScope, "BUDGET_SCOPE_", item["scope"], "budget scope"),
        subject=str(item["subject"]),
        period=_enum(cost_pb2.BudgetPeriod, "BUDGET_PERIOD_", item["period"], "budget period"),
        limit_micro_usd=usd_to_micro(item["limit_usd"]),
        alert_percent=[int(p) for p in item.get("alert_percent", [])],
        webhook_url=str(item.get("webhook_url", "")),
    )


async def seed_cost(stub, data: dict, metadata: Sequence[tuple[str, str]] = ()) -> dict[str, int]:
    """Applies `data["cost"]` (or `data` itself when it has no `cost` key) with an admin's metadata.

    Returns counts: prices_set, prices_unchanged, budgets_set. Raises ValueError on bad YAML
    values before calling the service.
    """
    section = data.get("cost", data) if isinstance(data, dict) else {}
    section = section or {}
    wanted_prices = [parse_price(p) for p in section.get("prices") or []]
    wanted_budgets = [parse_budget(b) for b in section.get("budgets") or []]
    counts = {"prices_set": 0, "prices_unchanged": 0, "budgets_set": 0}
    in_force = {}
    if any(not p.HasField("effective_time") for p in wanted_prices):
        current = await stub.ListPrices(cost_pb2.ListPricesRequest(at_time=_now()), metadata=metadata)
        in_force = {(p.kind, p.subject): p.micro_usd for p in current.prices}
    for price in wanted_prices:
        if (
            not price.HasField("effective_time")
            and in_force.get((price.kind, price.subject)) == price.micro_usd
        ):
            counts["prices_unchanged"] += 1
            continue
        await stub.SetPrice(cost_pb2.SetPriceRequest(price=price), metadata=metadata)
        counts["prices_set"] += 1
    for budget in wanted_budgets:
        await stub.SetBudget(cost_pb2.SetBudgetRequest(budget=budget), metadata=metadata)
        counts["budgets_set"] += 1
    return counts


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts
