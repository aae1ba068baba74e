"""consolidate: agents running the same model on separate deployments -> one shared deployment.

Inputs: ledger (model, deployment, agent, requests, GPU-seconds) over the period; fleet deployments
(VRAM per replica, GPU type, VRAM of one GPU); GPU-hour prices. The saving is the GPU time the
redundant deployments hold: VRAM share of a GPU x hours in a month x the GPU-hour price. The shared
deployment keeps as many replicas as the combined busy GPU-seconds need (at least one), so
consolidation never claims capacity the traffic uses. Without the fleet, the catalog's memory_gib
gives the VRAM, no dollar figure is claimed, and the evidence says so.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from services.common.pricing import SECONDS_PER_HOUR
from services.cost.advisor.base import (
    GIB,
    HOURS_PER_MONTH,
    Facts,
    FleetDeployment,
    Recommendation,
    RuleResult,
    gib,
    micro,
    usd,
)


@dataclass
class _Dep:
    name: str
    agents: set[str]
    requests: int = 0
    gpu_seconds: float = 0.0
    fleet: FleetDeployment | None = None


class Consolidate:
    name = "consolidate"

    def advise(self, facts: Facts) -> RuleResult:
        fleet = facts.fleet
        by_model: dict[str, dict[str, _Dep]] = defaultdict(dict)
        for u in facts.usage:
            if not u.deployment:
                continue
            d = by_model[u.model].setdefault(u.deployment, _Dep(u.deployment, set()))
            d.agents.add(u.agent)
            d.requests += u.requests
            d.gpu_seconds += u.gpu_seconds
        for fd in fleet.deployments if fleet else ():  # idle deployments of a used model count too
            if fd.model in by_model:
                by_model[fd.model].setdefault(fd.name, _Dep(fd.name, set(fd.owners)))
        notes: list[str] = []
        if fleet is None:
            notes.append("no fleet snapshot (no pool configured or reachable): GPU share and GPU type of deployments "
                         "unknown, so no GPU-hour saving is estimated")  # fmt: skip
        recs = []
        for model, deps in sorted(by_model.items()):
            if len(deps) < 2:
                continue
            for d in deps.values():
                d.fleet = fleet.deployment(d.name) if fleet else None
            recs.append(self._one(facts, model, sorted(deps.values(), key=lambda d: (-d.requests, d.name))))
        return RuleResult(tuple(recs), tuple(notes))

    def _one(self, facts: Facts, model: str, deps: list[_Dep]) -> Recommendation:
        agents = sorted(set().union(*(d.agents for d in deps)) - {""})
        busy_gpu_hours = facts.monthly(sum(d.gpu_seconds for d in deps)) / SECONDS_PER_HOUR
        keep = max(1, math.ceil(busy_gpu_hours / HOURS_PER_MONTH))
        kept, redundant = deps[:keep], deps[keep:]
        catalog = facts.catalog_model(model)
        vram = saving = 0.0
        lines, unknown = [], []
        for d in redundant:
            f = d.fleet
            mem = (
                (f.memory_bytes * f.replicas)
                if f and f.memory_bytes
                else (catalog.memory_gib * GIB if catalog else 0)
            )
            vram += mem
            share = f.gpu_share() if f else None
            price = facts.gpu_hour_price(f.gpu_type) if f and f.gpu_type else None
            if share is None or price is None:
                unknown.append(d.name)
                lines.append(f"{d.name}: {gib(mem) if mem else 'VRAM unknown'}, GPU-hour cost unknown")
                continue
            dollars = share * HOURS_PER_MONTH * price
            saving += dollars
            lines.append(
                f"{d.name}: {gib(mem)} = {share:.2f} GPU x {HOURS_PER_MONTH:.0f} h x {usd(price)}/GPU-h "
                f"({f.gpu_type}) = {usd(dollars)}/month"
            )
        usage = ", ".join(
            f"{d.name} {d.requests} req ({', '.join(sorted(d.agents - {''})) or 'no agent'})" for d in deps
        )
        evidence = (
            f"{len(deps)} deployments of {model} over {facts.period_days:.0f} days: {usage}. "
            f"Combined busy time {busy_gpu_hours:.1f} GPU-h/month needs {keep} replica(s). "
            f"Redundant: {'; '.join(lines)}. Frees {gib(vram)} of VRAM."
        )
        if unknown:
            evidence += (
                f" No GPU-hour estimate for {', '.join(unknown)} (fleet VRAM/GPU type or price missing)."
            )
        return Recommendation(
            rule=self.name,
            title=f"Consolidate {len(agents)} agents on one {model} deployment",
            action=(
                f"Serve {', '.join(agents) or model} from {', '.join(k.name for k in kept)} "
                f"and remove {', '.join(sorted(d.name for d in redundant))}"
            ),
            evidence=evidence,
            monthly_saving_micro_usd=micro(saving),
            vram_saved_bytes=int(vram),
        )
