"""Replica advice from live signals, and the `apply` mode that acts on it within limits.

Signals per deployment, over its READY replicas on healthy endpoints (from the scraped Triton
metrics): waiting requests per replica (queue depth), mean KV-cache fraction, mean GPU
utilisation, active requests per replica, and the GPU compute the model itself uses (each
GPU's utilisation split among the models on it by their active requests: co-located models
take turns on one GPU). One step at a time (+1 or -1 replica per call), so an advice loop
converges without overshooting on a noisy sample; the bounds are `min_replicas`..`max_replicas`
and the number of healthy endpoints.

A busy GPU calls for a replica only when requests wait or another busy model shares it (an
engine alone on its GPU is busy whenever one sequence runs). A replica can go when everything
is below the low marks, or when nothing waits and the others would absorb its share: their
GPU's utilisation plus the leaving replica's compute spread over them, and the KV fraction
scaled by n/(n-1), stay under the `absorb_` marks (well under the high marks, so the shrunk
deployment is not hot at once). The autoscale
loop (autoscale.py) applies the advice after it has held for a while.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from services.common.errors import HarnessError
from services.pool.deployments import DeploymentManager
from services.pool.state import HEALTHY, READY, EndpointState

log = logging.getLogger("harness.pool.scaling")


@dataclass(frozen=True)
class ScalingLimits:
    min_replicas: int = 1
    max_replicas: int = 8
    queue_high: float = 2.0  # waiting requests per replica that call for one more
    kv_high: float = 0.85  # KV-cache fraction that calls for one more
    util_high: float = 0.90  # GPU utilisation that calls for one more
    kv_low: float = 0.30  # below all the lows (and nothing waiting) one replica can go
    util_low: float = 0.30
    active_low: float = 1.0  # active requests per replica
    absorb_util: float = 0.6  # n-1 replicas may take the load if it leaves them under these
    absorb_kv: float = 0.6


@dataclass(frozen=True)
class Signals:
    replicas: int  # READY on healthy endpoints
    waiting: int
    active: int
    kv_fraction: float | None  # mean over the replicas that report KV use; None: none does
    utilization: float
    compute: float = 0.0  # GPU compute the model's replicas use, in GPUs (0..replicas)
    contended: bool = False  # a replica's GPU also runs another model that is busy


@dataclass(frozen=True)
class Advice:
    model: str
    current: int
    advised: int
    reason: str
    applied: bool = False


def advise_one(model: str, s: Signals, limits: ScalingLimits, endpoints: int) -> Advice:
    if s.replicas == 0:
        return Advice(model, 0, 0, "no ready replica: nothing to measure (scaled to zero or loading)")
    per_q = s.waiting / s.replicas
    per_a = s.active / s.replicas
    kv = f"{s.kv_fraction:.2f}" if s.kv_fraction is not None else "unknown"
    figures = f"waiting/replica {per_q:.1f}, active/replica {per_a:.1f}, kv {kv}, util {s.utilization:.2f}"
    ceiling = min(limits.max_replicas, endpoints)
    hot = []
    if per_q >= limits.queue_high:
        hot.append(f"waiting/replica >= {limits.queue_high:g}")
    if s.kv_fraction is not None and s.kv_fraction >= limits.kv_high:
        hot.append(f"kv >= {limits.kv_high:g}")
    # A busy GPU is a bottleneck when requests wait or when co-located models take turns on it.
    # Alone and with nothing waiting, it is not: an engine running one long sequence is busy
    # the whole time, and continuous batching would take many more.
    if s.utilization >= limits.util_high and (s.waiting > 0 or s.contended):
        hot.append(f"util >= {limits.util_high:g}" + (" on a shared GPU" if s.contended else ""))
    if hot:
        if s.replicas >= ceiling:
            return Advice(
                model,
                s.replicas,
                s.replicas,
                f"{figures}: hot ({', '.join(hot)}) but at the ceiling {ceiling}",
            )
        return Advice(model, s.replicas, s.replicas + 1, f"{figures}: {', '.join(hot)}")
    cold = (
        s.waiting == 0
        and (s.kv_fraction is None or s.kv_fraction < limits.kv_low)  # unknown: the other figures decide
        and s.utilization < limits.util_low
        and per_a < limits.active_low
    )
    if s.replicas > limits.min_replicas:
        if cold:
            return Advice(model, s.replicas, s.replicas - 1, f"{figures}: all below the low marks")
        # The leaving replica's share of the model's compute moves to the others' GPUs.
        util_after = s.utilization + s.compute / (s.replicas * (s.replicas - 1))
        kv_after = (s.kv_fraction or 0.0) * s.replicas / (s.replicas - 1)  # unknown: the others decide
        if s.waiting == 0 and util_after <= limits.absorb_util and kv_after <= limits.absorb_kv:
            return Advice(
                model, s.replicas, s.replicas - 1,
                f"{figures}: {s.replicas - 1} replica(s) can absorb the load (util {util_after:.2f}, "
                f"kv {kv_after:.2f} after)",
            )  # fmt: skip
    return Advice(model, s.replicas, s.replicas, f"{figures}: within bounds")


def signals_of(manager: DeploymentManager, model: str) -> Signals:
    dep = manager.get(model)
    waiting = active = replicas = kv_known = 0
    kv = util = compute = 0.0
    contended = False
    if dep is not None:
        for endpoint in dep.placements:
            state = manager.table.get(endpoint)
            if state is None or state.health != HEALTHY:
                continue
            m = next((m for m in state.models if m.name == dep.spec.triton_model and m.state == READY), None)
            if m is None:
                continue
            replicas += 1
            waiting += m.waiting
            active += m.active
            if m.kv_cache_known:
                kv += m.kv_cache_fraction
                kv_known += 1
            util += state.gpu_utilization
            compute += model_compute(state, m.name)
            contended = contended or any(
                o.name != m.name and o.state == READY and o.active for o in state.models
            )
    n = max(1, replicas)
    return Signals(
        replicas, waiting, active, kv / kv_known if kv_known else None, util / n, compute, contended
    )


def new_replica_share(s: Signals, replicas: int) -> float:
    """What one replica is expected to keep busy once the load is spread over `replicas`."""
    return s.compute / replicas if replicas > s.replicas > 0 else 0.0


def model_compute(state: EndpointState, triton_model: str) -> float:
    """The share of the endpoint's GPU compute `triton_model` uses: the utilisation split among
    the READY models by active requests (evenly when none is active)."""
    ready = [m for m in state.models if m.state == READY]
    mine = next((m for m in ready if m.name == triton_model), None)
    if mine is None:
        return 0.0
    total = sum(m.active for m in ready)
    weight = mine.active / total if total else 1 / len(ready)
    return state.gpu_utilization * weight


async def advise(manager: DeploymentManager, limits: ScalingLimits, apply: bool = False) -> list[Advice]:
    endpoints = sum(1 for s in manager.table.states() if s.health == HEALTHY)
    out = []
    for view in manager.views():
        s = signals_of(manager, view.model)
        a = advise_one(view.model, s, limits, endpoints)
        if apply and a.advised != a.current and a.current > 0:
            try:
                await manager.scale_to(view.model, a.advised, new_replica_share(s, a.advised))
                a = Advice(a.model, a.current, a.advised, a.reason, applied=True)
            except HarnessError as exc:
                a = Advice(a.model, a.current, a.advised, f"{a.reason}; not applied: {exc.message}")
                log.warning("scaling %s to %d failed: %s", view.model, a.advised, exc.message)
        out.append(a)
    return out
