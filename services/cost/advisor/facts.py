"""Gathers advisor facts from the cost store's public API (Report, ListPrices) and a fleet provider."""

from __future__ import annotations

import logging

from services.common.errors import InvalidArgument
from services.cost.advisor.base import (
    US_PER_DAY,
    DayRow,
    Facts,
    Fleet,
    FleetProvider,
    FleetSnapshot,
    UsageRow,
)

log = logging.getLogger("harness.cost.advisor")

DEFAULT_PERIOD_DAYS = 30
MAX_PERIOD_DAYS = 366


async def gather(
    store, *, now_us: int, period_days: int = 0, project: str = "", fleet: FleetProvider | None = None
) -> Facts:
    """Ledger totals over the last `period_days` (default 30) of one project (or all), plus the fleet."""
    if period_days < 0 or period_days > MAX_PERIOD_DAYS:
        raise InvalidArgument(f"period_days must be in 0..{MAX_PERIOD_DAYS} (0 = {DEFAULT_PERIOD_DAYS})")
    start = now_us - (period_days or DEFAULT_PERIOD_DAYS) * US_PER_DAY
    by_use = await store.report(["project", "agent", "model", "deployment"], start, now_us)
    by_day = await store.report(["project", "deployment", "day"], start, now_us)
    usage = tuple(
        UsageRow(
            project=r.group["project"],
            agent=r.group["agent"],
            model=r.group["model"],
            deployment=r.group["deployment"],
            requests=r.requests,
            input_tokens=r.input_tokens,
            output_tokens=r.output_tokens,
            gpu_seconds=r.gpu_seconds,
            cost_micro_usd=r.cost_micro_usd,
        )
        for r in by_use.rows
        if r.group["model"] and (not project or r.group["project"] == project)
    )
    days: dict[tuple[str, str], int] = {}
    for r in by_day.rows:
        if r.group["deployment"] and (not project or r.group["project"] == project):
            key = (r.group["deployment"], r.group["day"])
            days[key] = days.get(key, 0) + r.requests
    prices = {(p.kind, p.subject): p.micro_usd for p in await store.list_prices(now_us)}
    snapshot = await fleet_snapshot(fleet)
    return Facts(
        start_us=start, end_us=now_us, usage=usage,
        days=tuple(DayRow(d, day, n) for (d, day), n in sorted(days.items())),
        prices=prices, fleet=snapshot.fleet, fleet_notes=snapshot.notes,
    )  # fmt: skip


async def fleet_snapshot(fleet: FleetProvider | None) -> FleetSnapshot:
    """The provider's answer as a FleetSnapshot; a provider that raises gives no fleet and a note
    (Advise still answers from the ledger alone)."""
    if fleet is None:
        return FleetSnapshot(None)
    try:
        answer = await fleet()
    except Exception as exc:
        log.exception("the advisor's fleet provider failed")
        return FleetSnapshot(None, (f"the fleet provider failed ({type(exc).__name__}: {exc})",))
    if isinstance(answer, FleetSnapshot):
        return answer
    return FleetSnapshot(answer if isinstance(answer, Fleet) else None)
