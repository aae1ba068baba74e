"""The pool service assembled: endpoint table, probes, GPU inventory and metrics.

`PoolApp` is the core the servicer calls; `PoolApp.register` is the `Registrar` for
`start_server`, and `serve` starts everything in the right order. Deployments (placement,
load/unload, idle scale-to-zero, agent warm-up) live in `DeploymentManager`, scaling advice in
scaling.py; both read the endpoint table the probes keep current.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import grpc
from harness.pool.v1 import pool_pb2, pool_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.config import ServerConfig
from services.common.jwt_settings import follow_jwt_settings
from services.common.mirror_metrics import register_mirror_metrics
from services.common.registry_mirror import RegistryMirror
from services.common.server import RunningServer, open_channel, start_server
from services.pool.access import NO_ACCESS
from services.pool.admin_changes import POOL_ITSELF, AuditShipper, ChangeLog, memory_engine
from services.pool.autoscale import Autoscaler
from services.pool.catalog import ModelCatalog
from services.pool.claims_store import ClaimStore
from services.pool.config import PoolConfig
from services.pool.control import ModelControl, TritonControl
from services.pool.deployments import DeploymentManager, DeploymentView
from services.pool.endpoints import EndpointTable, WatchBatch
from services.pool.gpus import Nvml, list_gpus
from services.pool.metrics import PoolCollector
from services.pool.placement import PlacementPlan
from services.pool.probe import EngineReach, ProbeSettings, ProbeSupervisor
from services.pool.registry_follow import RegistryFollower
from services.pool.scaling import Advice, ScalingLimits, advise
from services.pool.servicer import PoolServicer
from services.pool.state import EndpointSpec, EndpointState, GpuSample, validate_spec
from services.pool.wake import Waker

log = logging.getLogger("harness.pool")

SERVICE_NAME = pool_pb2.DESCRIPTOR.services_by_name["Pool"].full_name


class PoolApp:
    def __init__(
        self,
        config: PoolConfig,
        metrics_registry: CollectorRegistry | None = None,
        *,
        nvml: Nvml | None = None,
        control: ModelControl | None = None,
    ) -> None:
        self.config = config
        self.table = EndpointTable(unhealthy_after=config.unhealthy_after)
        self.nvml = nvml if nvml is not None else Nvml(enabled=config.nvml)
        settings = ProbeSettings(config.probe_interval_s, config.probe_timeout_s, config.metrics_timeout_s)
        access = dict(config.engine_access)
        self.engine_access = lambda address: access.get(address, NO_ACCESS)
        reach = EngineReach(
            self.engine_access, lambda: tuple(dict.fromkeys(m.triton_model for m in self.catalog.all()))
        )
        self.probes = ProbeSupervisor(self.table, settings, self._nvml_override, reach)
        self.metrics_registry = metrics_registry if metrics_registry is not None else CollectorRegistry()
        self.follower: RegistryFollower | None = None  # set when following the registry
        self.catalog = ModelCatalog(config.models)
        self.load_seconds = Histogram(
            "harness_pool_model_load_seconds",
            "RepositoryModelLoad duration (cold start) per model",
            ["model"],
            buckets=(0.05, 0.25, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=self.metrics_registry,
        )
        self.deployments = DeploymentManager(
            self.table,
            self.catalog,
            control
            if control is not None
            else TritonControl(config.load_timeout_s, access=self.engine_access),
            headroom=config.headroom,
            agent_idle_ttl_s=config.agent_idle_ttl_s,
            model_idle_ttl_s=dict(config.model_idle_ttl_s),
            on_load=lambda model, s: self.load_seconds.labels(model).observe(s),
            store=ClaimStore(config.db_url) if config.db_url else None,  # admin changes go there too
        )
        store = self.deployments.store
        self.changes = ChangeLog(store.engine if store is not None else memory_engine())
        self.wakes = Counter(
            "harness_pool_wakes_total",
            "Deployments woken from zero (ActivateDeployment), by outcome (loaded, failed)",
            ["model", "outcome"],
            registry=self.metrics_registry,
        )
        self.waker = Waker(self.deployments, self._woken)
        self.scaling_limits = ScalingLimits(max_replicas=config.max_replicas)
        self.autoscaler = Autoscaler(self.deployments, self.scaling_limits, config.autoscale)
        self._autoscale_task: asyncio.Task | None = None
        self.metrics_registry.register(
            PoolCollector(self.table, self.gpu_rows, self.deployments.cached_views)
        )
        self._nvml_task: asyncio.Task | None = None
        self._idle_task: asyncio.Task | None = None
        self._started = False
        for spec in config.endpoints:
            self.table.upsert(validate_spec(spec))

    # ---- lifecycle ---------------------------------------------------------------------------

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        """Registrar for `start_server`: adds the Pool servicer; probes start in `start()`."""
        pool_pb2_grpc.add_PoolServicer_to_server(PoolServicer(self), server)
        return (SERVICE_NAME,)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for state in self.table.states():
            self.probes.ensure(state.spec)
        self._idle_task = asyncio.get_running_loop().create_task(self._idle_loop(), name="pool-idle")
        if self.config.autoscale.interval_s > 0:
            self._autoscale_task = asyncio.get_running_loop().create_task(
                self.autoscaler.run(), name="pool-autoscale"
            )
        if self.nvml.available:
            await self.nvml.refresh()
            self._nvml_task = asyncio.get_running_loop().create_task(self._nvml_loop(), name="pool-nvml")

    async def stop(self) -> None:
        await self.probes.close()
        for task in (self._idle_task, self._autoscale_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._idle_task = self._autoscale_task = None
        await self.autoscaler.close()
        await self.waker.close()
        await self.deployments.control.close()
        if self._nvml_task is not None:
            self._nvml_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._nvml_task
            self._nvml_task = None
        self.nvml.close()
        await asyncio.to_thread(self.changes.close)  # before its engine goes
        if self.deployments.store is not None:
            self.deployments.store.close()
        else:
            self.changes.engine.dispose()
        self._started = False

    async def _nvml_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.probe_interval_s)
            try:
                await self.nvml.refresh()
            except Exception:  # one bad read must not end NVML figures for good
                log.exception("NVML refresh failed")

    async def _idle_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.idle_check_interval_s)
            try:
                for model in await self.deployments.sweep_idle():
                    dep = self.deployments.get(model)
                    details = {"reason": "idle", "idle_ttl_s": dep.idle_ttl_s if dep is not None else 0.0}
                    await self.changes.record(f"deployment:{model}", "scale_to_zero", details, POOL_ITSELF)
                await self.deployments.reconcile()
                self.deployments.views()  # refreshes what the metrics thread reads
            except Exception:  # one bad sweep must not end scale-to-zero for good
                log.exception("idle sweep failed")

    def _nvml_override(self, endpoint: str) -> tuple[GpuSample, ...] | None:
        """NVML's figures replace the metric ones for the endpoint on this host."""
        if self.nvml.available and self.config.nvml_endpoint and endpoint == self.config.nvml_endpoint:
            return self.nvml.samples or None
        return None

    # ---- operations (called by the servicer after authorization) -----------------------------
    # Each change is in the audit outbox (admin_changes.py) before the caller hears it is done.

    async def register_endpoint(self, spec: EndpointSpec) -> EndpointState:
        state = self.table.upsert(validate_spec(spec))
        if self._started:
            self.probes.ensure(spec)
        log.info("endpoint %s registered at %s", spec.name, spec.address)
        await self.changes.record(f"endpoint:{spec.name}", "register", endpoint_details(spec))
        return state

    async def deregister_endpoint(self, name: str) -> None:
        gone = self.table.remove(name)
        await self.probes.stop(name)
        log.info("endpoint %s deregistered", name)
        await self.changes.record(f"endpoint:{name}", "deregister", {"address": gone.spec.address})

    def list_endpoints(self, model: str = "") -> tuple[EndpointState, ...]:
        return self.table.list(model)

    def gpu_rows(self, endpoint: str = "") -> list[tuple[str, GpuSample]]:
        """(endpoint, GPU) rows; also read by the metrics thread, so it only takes copies."""
        return list_gpus(self.table.states(), self.nvml.samples, self.config.nvml_endpoint, endpoint)

    def watch(self, since_revision: int) -> AsyncIterator[WatchBatch]:
        return self.table.watch(since_revision)

    async def deploy(self, model: str, replicas: int, owner: str, idle_ttl_s: float) -> DeploymentView:
        view = await self.deployments.deploy(model, replicas, owner, idle_ttl_s)
        self.deployments.views()
        placed = sorted({p.endpoint for p in view.placements})
        details = {"owner": owner, "replicas": replicas, "idle_ttl_s": idle_ttl_s, "endpoints": placed}
        await self.changes.record(f"deployment:{model}", "deploy", details)
        return view

    async def undeploy(self, model: str, owner: str, drop_all: bool) -> None:
        await self.deployments.undeploy(model, owner, drop_all)
        self.deployments.views()
        await self.changes.record(f"deployment:{model}", "undeploy", {"owner": owner, "all": drop_all})

    def activate(self, model: str) -> tuple[bool, DeploymentView]:
        """ActivateDeployment: (whether a wake is under way, the deployment); returns at once."""
        return self.waker.activate(model)

    async def _woken(self, model: str, error: str) -> None:
        self.wakes.labels(model, "failed" if error else "loaded").inc()
        self.deployments.views()
        details = {"reason": "activation", "error": error}
        await self.changes.record(f"deployment:{model}", "wake", details, POOL_ITSELF)

    def list_deployments(self) -> tuple[DeploymentView, ...]:
        return self.deployments.views()

    def plan(self, model: str, replicas: int) -> PlacementPlan:
        return self.deployments.plan(model, replicas)

    async def advise_scaling(self, apply: bool) -> list[Advice]:
        advice = await advise(self.deployments, self.scaling_limits, apply)
        moved = [{"model": a.model, "from": a.current, "to": a.advised} for a in advice if a.applied]
        if moved:  # advice alone changes nothing
            await self.changes.record("scaling", "apply", {"moves": moved})
        return advice

    async def on_agent_online(self, models, agent: str = "") -> dict[str, str]:
        """Warm-up hook for the registry watch (agent went online): loads its models now."""
        results = await self.deployments.on_agent_online(models, agent)
        for model, error in results.items():
            if not error:
                details = {"owner": f"agent:{agent}", "reason": "agent online"}
                await self.changes.record(f"deployment:{model}", "deploy", details, POOL_ITSELF)
        return results

    async def on_agent_offline(self, agent: str) -> None:
        """The registry watch's hook (agent left online): its warm-up claims are dropped."""
        owner = f"agent:{agent}"
        held = [d.model for d in self.deployments.views() if owner in d.owners]
        await self.deployments.on_agent_offline(agent)
        for model in held:
            details = {"owner": owner, "reason": "agent offline"}
            await self.changes.record(f"deployment:{model}", "undeploy", details, POOL_ITSELF)


def endpoint_details(spec: EndpointSpec) -> dict:
    """What an audit record says about a registered endpoint: where and what it is, never its
    metrics URL (it may carry a token), only whether it has one."""
    return {
        "address": spec.address, "kind": spec.kind, "flavour": spec.flavour, "labels": dict(spec.labels),
        "gpu_type": spec.gpu_type, "gpu_count": spec.gpu_count, "gpu_memory_bytes": spec.gpu_memory_bytes,
        "metrics": bool(spec.metrics_url),
    }  # fmt: skip


async def serve(
    pool_config: PoolConfig,
    server_config: ServerConfig,
    metrics_registry: CollectorRegistry | None = None,
    *,
    nvml: Nvml | None = None,
    control: ModelControl | None = None,
) -> tuple[RunningServer, PoolApp]:
    """Starts the gRPC server and the probes; `running.stop()` stops both."""
    app = PoolApp(pool_config, metrics_registry, nvml=nvml, control=control)
    running = await start_server(server_config, app.register, metrics_registry=app.metrics_registry)
    running.on_stop(app.stop)
    await app.start()
    if pool_config.audit_addr:
        audit_channel = open_channel(pool_config.audit_addr, server_config.tls)
        shipper = AuditShipper(app.changes, audit_channel)
        shipper.start()

        async def stop_shipping() -> None:
            await shipper.stop()
            await audit_channel.close()

        running.on_stop(stop_shipping)
    else:
        log.warning("no audit service (--audit, HARNESS_AUDIT_ADDR): pool changes are not audited")
    if pool_config.registry_addr:
        channel = open_channel(pool_config.registry_addr, server_config.tls)
        mirror = RegistryMirror(channel)
        register_mirror_metrics(app.metrics_registry, mirror)
        app.follower = RegistryFollower(app, pool_config.models)
        mirror.subscribe(app.follower)
        if running.authenticator is not None:
            follow_jwt_settings(mirror, running.authenticator, server_config.auth)
        mirror.start()

        async def stop_following() -> None:
            await mirror.stop()
            await app.follower.close()
            await channel.close()

        running.on_stop(stop_following)
    return running, app
