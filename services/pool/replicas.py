"""Placing, loading and unloading one deployment's replicas (the deployment manager decides how
many, services/pool/deployments.py; this makes the endpoints hold that many).

A scale-up plans where the new replicas fit, reserves their memory before the first await (so
concurrent plans see it), loads them all at once and, for those that failed, plans again
elsewhere (three rounds at most). A scale-down unloads the replicas that free the most.
Everything runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from services.common.errors import ResourceExhausted, Unavailable
from services.pool.catalog import ModelCatalog
from services.pool.control import ModelControl, ModelControlError
from services.pool.deployment_types import Deployment, Placement, check_replicas
from services.pool.endpoints import EndpointTable
from services.pool.pending import PendingLoads
from services.pool.placement import PlacementPlan, PlannedReplica, has_model, plan_placement, scale_in_victims
from services.pool.state import HEALTHY

log = logging.getLogger("harness.pool.deployments")  # one log for all of a deployment's work


class ReplicaScaler:
    def __init__(
        self,
        table: EndpointTable,
        catalog: ModelCatalog,
        control: ModelControl,
        pending: PendingLoads,
        *,
        headroom: float,
        on_load: Callable[[str, float], None],
    ) -> None:
        self.table, self.catalog, self.control, self.pending = table, catalog, control, pending
        self.headroom = headroom
        self._on_load = on_load

    def plan(
        self,
        model: str,
        replicas: int,
        holders: Iterable[str] = (),
        exclude: Iterable[str] = (),
        compute_share: float = 0.0,
    ) -> PlacementPlan:
        """Where ``replicas`` of ``model`` would run; ``holders``: the endpoints that hold one now."""
        check_replicas(replicas)
        spec = self.catalog.get(model)
        return plan_placement(
            self.table.states(),
            spec.triton_model,
            spec.memory_bytes,
            replicas,
            headroom=self.headroom,
            footprint=self._footprint,
            pending=self.pending.bytes_by_gpu(),
            holders=set(holders),
            exclude=set(exclude),
            compute_share=compute_share,
            pending_compute=self.pending.compute_by_gpu(),
        )

    def healthy_placements(self, dep: Deployment) -> list[str]:
        """Placements that serve now. Forgets those whose endpoint is gone, or is healthy but
        no longer has the model (a restarted Triton comes back empty), so they are re-placed."""
        live = []
        for name in list(dep.placements):
            state = self.table.get(name)
            if state is None:
                del dep.placements[name]
            elif state.health == HEALTHY:
                if has_model(state, dep.spec.triton_model) or self.pending.on(name, dep.spec.triton_model):
                    live.append(name)
                else:
                    del dep.placements[name]
        return live

    async def scale(self, dep: Deployment, n: int, compute_share: float = 0.0) -> None:
        """Brings ``dep`` to ``n`` serving replicas. RESOURCE_EXHAUSTED when the first plan finds
        no room; UNAVAILABLE when every load failed and none serves."""
        live = self.healthy_placements(dep)
        if len(live) > n:
            await self._scale_down(dep, live, n)
            return
        if len(live) == n:
            return
        excluded: set[str] = set()
        errors: list[str] = []
        for attempt in range(3):
            plan = self.plan(dep.spec.name, n, dep.placements, exclude=excluded, compute_share=compute_share)
            if plan.reason and attempt == 0 and not errors:
                raise ResourceExhausted(plan.reason)
            for p in plan.placements:
                if not p.new:
                    dep.placements.setdefault(p.endpoint, Placement(p.gpu))
            new = plan.new
            if not new:
                break
            for p in new:  # reserve before the first await: concurrent plans see it
                self.pending.begin(
                    (p.endpoint, p.gpu, dep.spec.triton_model), dep.spec.memory_bytes, compute_share
                )
            results = await asyncio.gather(*(self._load(dep, p) for p in new))
            failed = [(p, err) for p, err in zip(new, results, strict=True) if err]
            if not failed:
                break
            excluded |= {p.endpoint for p, _ in failed}
            errors += [err for _, err in failed]
        if not dep.placements and errors:
            raise Unavailable(f"could not load {dep.spec.triton_model} anywhere: {'; '.join(errors)}")
        if errors:
            log.warning("deployment %s is short of replicas: %s", dep.spec.name, "; ".join(errors))

    async def unload_all(self, dep: Deployment) -> None:
        await asyncio.gather(*(self._unload(dep, e) for e in list(dep.placements)))

    def _footprint(self, triton_model: str) -> int:
        spec = self.catalog.find(triton_model)
        return spec.memory_bytes if spec else 0

    async def _load(self, dep: Deployment, p: PlannedReplica) -> str:
        key = (p.endpoint, p.gpu, dep.spec.triton_model)
        state = self.table.get(p.endpoint)
        try:
            if state is None:
                raise ModelControlError(
                    p.endpoint, dep.spec.triton_model, "NOT_FOUND", "endpoint deregistered"
                )
            seconds = await self.control.load(state.spec.address, dep.spec.triton_model)
        except ModelControlError as exc:
            self.pending.failed(key)
            log.warning("load of %s on %s failed: %s", dep.spec.triton_model, p.endpoint, exc)
            return f"{p.endpoint}: {exc.code}: {exc.details}"
        self.pending.finished(key, dep.spec.memory_bytes)
        dep.placements[p.endpoint] = Placement(p.gpu, seconds)
        dep.last_load_time_s = seconds
        self._on_load(dep.spec.name, seconds)
        log.info("loaded %s on %s in %.3fs", dep.spec.triton_model, p.endpoint, seconds)
        return ""

    async def _unload(self, dep: Deployment, endpoint: str) -> None:
        placement = dep.placements.pop(endpoint, None)
        if placement is not None:  # a load that just returned no longer holds memory in reserve
            self.pending.failed((endpoint, placement.gpu, dep.spec.triton_model))
        state = self.table.get(endpoint)
        if state is None or state.spec.fixed:  # a fixed deployment keeps serving: no model control
            return
        try:
            await self.control.unload(state.spec.address, dep.spec.triton_model)
        except ModelControlError as exc:
            # A dead endpoint has nothing loaded to free; anything else is logged, not fatal.
            log.warning("unload of %s on %s failed: %s", dep.spec.triton_model, endpoint, exc)

    async def _scale_down(self, dep: Deployment, live: list[str], n: int) -> None:
        victims = scale_in_victims(
            [self.table.get(e) for e in live if self.table.get(e) is not None],
            dep.spec.triton_model,
            len(live) - n,
            self._footprint,
            order=list(dep.placements),
        )
        await asyncio.gather(*(self._unload(dep, e) for e in victims))
