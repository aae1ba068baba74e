"""scale_to_zero: deployments idle most of the period and never scaled down -> set an idle TTL.

Inputs: fleet deployments (idle_ttl 0 = never, GPU share, GPU type); the days of the period on
which the ledger shows each one serving requests; GPU-hour prices. A deployment that served on at
most IDLE_FRACTION of the period's days is "idle most of the period". Saving = its idle days (whole
days without a request; active days are assumed busy all day, so the figure is a floor) x 24 h x
its GPU share x the GPU-hour price, scaled to a month.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, date, datetime

from services.cost.advisor.base import Facts, Recommendation, RuleResult, gib, micro, usd

IDLE_FRACTION = 0.5
SUGGESTED_TTL = "15m"
MIN_HISTORY_DAYS = 2  # fewer days of ledger history say nothing about idleness


class ScaleToZero:
    name = "scale_to_zero"

    def advise(self, facts: Facts) -> RuleResult:
        if facts.fleet is None:
            return RuleResult(
                notes=(
                    "no fleet snapshot (no pool configured or reachable): deployments and idle TTLs unknown",
                )
            )
        active: dict[str, set[str]] = defaultdict(set)
        for d in facts.days:
            if d.requests:
                active[d.deployment].add(d.day)
        period = max(1, math.floor(facts.period_days + 0.5))
        # Idle days are only evidence where the ledger has history: a fleet whose first recorded
        # request is three days old cannot show a deployment idle for thirty.
        first = min((day for days in active.values() for day in days), default=None)
        if first is None:
            return RuleResult(
                notes=("no requests in the ledger for the period: idle deployments not judged",)
            )
        end_day = datetime.fromtimestamp(facts.end_us / 1e6, tz=UTC).date()
        period = min(period, (end_day - date.fromisoformat(first)).days + 1)
        if period < MIN_HISTORY_DAYS:
            return RuleResult(
                notes=(
                    f"the ledger holds {period} day(s) of requests: idle deployments need {MIN_HISTORY_DAYS}",
                )
            )
        recs = []
        for dep in facts.fleet.deployments:
            if dep.idle_ttl_s > 0:
                continue
            used = len(active.get(dep.name, ()))
            if used > IDLE_FRACTION * period:
                continue
            idle_days = period - used
            share, price = dep.gpu_share(), facts.gpu_hour_price(dep.gpu_type)
            if share is not None and price is not None:
                saving = facts.monthly(idle_days * 24 * share * price)
                cost = f" = {idle_days} d x 24 h x {share:.2f} GPU x {usd(price)}/GPU-h ({usd(saving)}/month)"
            else:
                saving, cost = 0.0, " (GPU share or GPU-hour price unknown: no dollar estimate)"
            if dep.idle_s is not None:
                cost += f"; last request {dep.idle_s / 3600:.1f} h ago"
            recs.append(Recommendation(
                rule=self.name,
                title=f"Scale {dep.name} to zero when idle",
                action=f"Set idle_ttl {SUGGESTED_TTL} on {dep.name} (it has none)",
                evidence=(f"{dep.name} ({dep.model}, {dep.replicas} replica(s), {gib(dep.memory_bytes * dep.replicas)}) "
                          f"served requests on {used} of {period} days; idle {idle_days} days{cost}"),
                monthly_saving_micro_usd=micro(saving),
                vram_saved_bytes=dep.memory_bytes * dep.replicas,
            ))  # fmt: skip
        return RuleResult(tuple(recs))
