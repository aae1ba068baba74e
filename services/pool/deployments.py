"""Shared model deployments: claims, placement, load/unload, idle scale-to-zero, warm-up.

One deployment per catalog model, whoever asks. Each asker (an agent, a team, an operator)
holds one *claim* with the replicas it wants; the deployment runs max(claims) replicas (or the
autoscaler's target), one per endpoint, so five agents deploying the same model load it once
per chosen endpoint. Dropping the last claim unloads it.

State is in memory: after a pool restart the claims are gone, but models stay loaded on the
endpoints and a new Deploy adopts them (an endpoint that has the model counts as a replica).

Everything runs on the event loop. Planning and reserving memory happen without an await in
between, so concurrent deploys of different models never count the same free memory; deploys
of one model are serialized by a per-model lock. Placing, loading and unloading the replicas
is services/pool/replicas.py's work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from services.common.errors import HarnessError, InvalidArgument, NotFound
from services.common.limits import check_length, check_range
from services.pool.catalog import ModelCatalog
from services.pool.claims_store import ClaimStore, StoredClaim
from services.pool.control import ModelControl
from services.pool.deployment_types import (
    MAX_IDLE_TTL_S,
    MAX_OWNER_CHARS,
    Claim,
    Deployment,
    DeploymentView,
    activity,
    check_replicas,
    deployment_view,
    has_ready,
)
from services.pool.endpoints import EndpointTable
from services.pool.pending import PendingLoads
from services.pool.placement import PlacementPlan
from services.pool.replicas import ReplicaScaler
from services.pool.state import HEALTHY

log = logging.getLogger("harness.pool.deployments")

RECONCILE_BACKOFF_S = 5.0


class DeploymentManager:
    def __init__(
        self,
        table: EndpointTable,
        catalog: ModelCatalog,
        control: ModelControl,
        *,
        headroom: float = 0.05,
        agent_idle_ttl_s: float = 0.0,
        model_idle_ttl_s: Mapping[str, float] | None = None,
        on_load: Callable[[str, float], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
        store: ClaimStore | None = None,
    ) -> None:
        self.table = table
        self.catalog = catalog
        self.control = control
        self.agent_idle_ttl_s = agent_idle_ttl_s
        self.model_idle_ttl_s = dict(model_idle_ttl_s or {})  # per model (catalog or Triton name)
        self._wall = wall_clock
        self._deps: dict[str, Deployment] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.pending = PendingLoads(table)  # loads this pool began that the figures may not show
        self._replicas = ReplicaScaler(
            table, catalog, control, self.pending,
            headroom=headroom, on_load=on_load or (lambda _model, _seconds: None),
        )  # fmt: skip
        self._views: tuple[DeploymentView, ...] = ()
        self.store = store
        # Claims read back at startup whose model the catalog does not know yet (the registry's
        # catalog may arrive a moment later): restored by `reconcile` once it does.
        self._unrestored: list[StoredClaim] = store.load() if store is not None else []
        self._restore()

    # ---- reads -------------------------------------------------------------------------------

    def get(self, model: str) -> Deployment | None:
        spec = self.catalog.find(model)
        return self._deps.get(spec.name if spec else model)

    def views(self) -> tuple[DeploymentView, ...]:
        """Fresh views (event loop only)."""
        self._views = tuple(self._view(d) for d in sorted(self._deps.values(), key=lambda d: d.spec.name))
        return self._views

    def view(self, model: str) -> DeploymentView | None:
        dep = self.get(model)
        return self._view(dep) if dep is not None else None

    def cached_views(self) -> tuple[DeploymentView, ...]:
        """The last views built, for the metrics thread (which must not touch live state)."""
        return self._views

    def loading(self, model: str) -> bool:
        """Whether a load of `model` this pool began has not returned yet."""
        spec = self.catalog.find(model)
        return spec is not None and self.pending.running(spec.triton_model)

    def plan(
        self, model: str, replicas: int, exclude: Iterable[str] = (), compute_share: float = 0.0
    ) -> PlacementPlan:
        dep = self.get(model)
        holders = dep.placements if dep is not None else ()
        return self._replicas.plan(model, replicas, holders, exclude, compute_share)

    # ---- deploy / undeploy -------------------------------------------------------------------

    async def deploy(self, model: str, replicas: int, owner: str, idle_ttl_s: float = 0.0) -> DeploymentView:
        """Adds or replaces `owner`'s claim and scales the deployment to max(claims)."""
        check_replicas(replicas)
        check_range("idle_ttl", idle_ttl_s, 0, MAX_IDLE_TTL_S)
        if not owner:
            raise InvalidArgument("owner is required")
        check_length("owner", owner, MAX_OWNER_CHARS)
        spec = self.catalog.get(model)
        async with self._lock(spec.name):
            dep = self._deps.setdefault(spec.name, Deployment(spec, last_used=self._wall()))
            previous = dep.claims.get(owner)
            dep.claims[owner] = Claim(replicas, idle_ttl_s)
            dep.target = None
            try:
                await self._replicas.scale(dep, dep.desired)
            except Exception:
                if previous is None:
                    dep.claims.pop(owner, None)
                else:
                    dep.claims[owner] = previous
                if not dep.claims and not dep.placements:
                    self._deps.pop(spec.name, None)
                raise
            dep.scaled_to_zero = False
            dep.last_used = self._wall()
            self._publish_cold()
            await self._persist("put", spec.name, owner, replicas, idle_ttl_s)
            return self._view(dep)

    async def undeploy(self, model: str, owner: str, drop_all: bool = False) -> None:
        dep = self.get(model)
        if dep is None:
            raise NotFound(f"model {model!r} is not deployed")
        async with self._lock(dep.spec.name):
            if drop_all:
                dep.claims.clear()
            elif dep.claims.pop(owner, None) is None:
                raise NotFound(
                    f"{owner!r} holds no claim on {dep.spec.name!r} (holders: {sorted(dep.claims)})"
                )
            await self._persist("remove", dep.spec.name, None if drop_all else owner)
            if dep.claims:
                dep.target = None
                await self._replicas.scale(dep, dep.desired)
                return
            await self._replicas.unload_all(dep)
            self._deps.pop(dep.spec.name, None)
            self._publish_cold()
            log.info("deployment %s removed", dep.spec.name)

    async def scale_to(self, model: str, replicas: int, compute_share: float = 0.0) -> None:
        """The autoscaler's lever: a replica count that overrides max(claims) until the next
        Deploy. `compute_share`: what one new replica is expected to keep busy of a GPU."""
        dep = self.get(model)
        if dep is None:
            raise NotFound(f"model {model!r} is not deployed")
        async with self._lock(dep.spec.name):
            previous, dep.target = dep.target, replicas
            try:
                await self._replicas.scale(dep, replicas, compute_share)
            except HarnessError:
                dep.target = previous  # nothing was placed: the old count still stands
                raise

    # ---- cold starts -------------------------------------------------------------------------

    async def on_agent_online(self, models: Iterable[str], agent: str = "") -> dict[str, str]:
        """Loads an agent's models ahead of its first request: one claim per model, owner
        `agent:<name>`, idle TTL `agent_idle_ttl_s`. Returns model -> "" or the error; never
        raises, since one missing model must not stop the others from warming."""
        owner = f"agent:{agent}" if agent else "agent-online"

        async def one(model: str) -> str:
            try:
                await self.deploy(model, 1, owner, self.agent_idle_ttl(model))
                return ""
            except Exception as exc:  # logged and returned: warm-up is best effort
                log.warning("warm-up of %s for %s failed: %s", model, owner, exc)
                return str(getattr(exc, "message", exc))

        names = list(dict.fromkeys(models))
        results = await asyncio.gather(*(one(m) for m in names))
        return dict(zip(names, results, strict=True))

    def agent_idle_ttl(self, model: str) -> float:
        """The idle TTL of an agent warm-up claim on `model`: its own setting, else the pool's."""
        spec = self.catalog.find(model)
        names = (spec.name, spec.triton_model) if spec else (model,)
        return next(
            (self.model_idle_ttl_s[n] for n in names if n in self.model_idle_ttl_s), self.agent_idle_ttl_s
        )

    async def on_agent_offline(self, agent: str) -> None:
        """Drops the agent's claims; models nobody else holds are unloaded."""
        owner = f"agent:{agent}"
        for dep in list(self._deps.values()):
            if owner in dep.claims:
                await self.undeploy(dep.spec.name, owner)

    async def sweep_idle(self) -> list[str]:
        """Unloads deployments whose request counters have not moved for their idle TTL.
        Activity = the engines' cumulative request counters and live waiting/active counts."""
        now = self._wall()
        scaled = []
        for dep in list(self._deps.values()):
            if not dep.placements:
                continue
            signature, busy = activity(dep, self.table)
            if busy or signature != dep.activity:
                dep.activity, dep.last_used = signature, now
                continue
            ttl = dep.idle_ttl_s
            if ttl <= 0 or now - dep.last_used < ttl:
                continue
            async with self._lock(dep.spec.name):
                if not dep.placements:
                    continue
                log.info("deployment %s idle for %.1fs: scaling to zero", dep.spec.name, now - dep.last_used)
                # Intent first: a pool stopped mid-sweep must not reload it on restart.
                await self._persist("set_scaled_to_zero", dep.spec.name, True)
                dep.scaled_to_zero, dep.waking = True, False
                self._publish_cold()  # routers hold new requests from now on, not refuse them
                await self._replicas.unload_all(dep)
                scaled.append(dep.spec.name)
        return scaled

    async def wake(self, model: str) -> None:
        """Loads a deployment scaled to zero back to its claimed replicas (ActivateDeployment's
        work, run as a task: wake.py). Routers keep holding its requests until a replica is
        READY (`waking`, cleared by reconcile). Raises HarnessError when nothing could load."""
        dep = self.get(model)
        if dep is None:
            return
        async with self._lock(dep.spec.name):
            if not dep.scaled_to_zero or not dep.claims:
                return
            dep.target = None
            await self._replicas.scale(dep, dep.desired)
            dep.scaled_to_zero, dep.waking = False, True
            dep.last_used, dep.activity = self._wall(), ()
            await self._persist("set_scaled_to_zero", dep.spec.name, False)
            log.info("deployment %s woken from zero on %s", dep.spec.name, sorted(dep.placements))

    def _publish_cold(self) -> None:
        """Tells the endpoint table (and so the routers' watch) which models are at zero."""
        cold = frozenset(
            d.spec.triton_model for d in self._deps.values() if d.claims and (d.scaled_to_zero or d.waking)
        )
        self.table.set_scaled_to_zero(cold)

    # ---- internals ---------------------------------------------------------------------------

    async def _persist(self, op: str, *args) -> None:
        if self.store is not None:
            await asyncio.to_thread(getattr(self.store, op), *args)

    def _restore(self) -> None:
        """Turns stored claims into deployments (reconcile then places their replicas)."""
        waiting = []
        for c in self._unrestored:
            spec = self.catalog.find(c.model)
            if spec is None:
                waiting.append(c)
                continue
            dep = self._deps.setdefault(spec.name, Deployment(spec, last_used=self._wall()))
            dep.claims.setdefault(c.owner, Claim(c.replicas, c.idle_ttl_s))
            dep.scaled_to_zero = dep.scaled_to_zero or c.scaled_to_zero
        self._unrestored = waiting
        self._publish_cold()

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def reconcile(self) -> None:
        """Brings deployments that lost replicas (endpoint died or restarted empty) back to
        their replica count where memory allows; scaled-to-zero ones stay cold. Retried at
        most every RECONCILE_BACKOFF_S per deployment, so a full pool is not hammered."""
        if self._unrestored:
            self._restore()
        now = time.monotonic()
        healthy = tuple(s.name for s in self.table.states() if s.health == HEALTHY)
        woken = [d for d in self._deps.values() if d.waking and has_ready(d, self.table)]
        for dep in woken:
            dep.waking = False
        if woken:
            self._publish_cold()
        for dep in list(self._deps.values()):
            # A change in the healthy set (an endpoint recovered) is worth an early retry.
            if dep.scaled_to_zero or not dep.claims or (now < dep.retry_at and healthy == dep.retry_for):
                continue
            if len(self._replicas.healthy_placements(dep)) >= dep.desired:
                continue
            async with self._lock(dep.spec.name):
                try:
                    await self._replicas.scale(dep, dep.desired)
                except HarnessError as exc:
                    dep.retry_at, dep.retry_for = now + RECONCILE_BACKOFF_S, healthy
                    log.info("deployment %s still short of replicas: %s", dep.spec.name, exc.message)

    def _view(self, dep: Deployment) -> DeploymentView:
        return deployment_view(dep, self.table, self.pending.loads)
