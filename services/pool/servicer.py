"""gRPC face of the pool: authorization, protobuf conversion, and calls into `PoolApp`.

Reads need an authenticated caller (a user token, an agent behind Envoy, or a Harness
service's certificate). Every change (endpoints, Deploy/Undeploy, applied scaling advice)
needs an operator: a user with the admin or operator role, or a Harness service. An agent's
certificate alone never changes the pool: agents get their pinned models loaded when they go
online (the pool follows the registry), not by asking.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.pool.v1 import pool_pb2, pool_pb2_grpc

from services.common.context import Identity, current_identity
from services.common.errors import InvalidArgument, PermissionDenied, Unauthenticated
from services.common.limits import check_length, duration_seconds
from services.pool.deployment_types import MAX_IDLE_TTL_S, MAX_OWNER_CHARS
from services.pool.deployments import DeploymentView
from services.pool.endpoints import WatchBatch
from services.pool.placement import PlacementPlan
from services.pool.state import EndpointSpec, EndpointState, GpuSample

if TYPE_CHECKING:
    from services.pool.app import PoolApp


def require_caller(identity: Identity) -> Identity:
    if not (identity.user or identity.agent or identity.service):
        raise Unauthenticated("the pool needs an authenticated caller (user token, agent or service cert)")
    return identity


OPERATOR_ROLES = ("admin", "operator")
MAX_MODEL_CHARS = 128  # catalog names (registry.proto)


def require_operator(identity: Identity, what: str = "changing the pool") -> Identity:
    require_caller(identity)
    if identity.service or (identity.user and any(r in OPERATOR_ROLES for r in identity.roles)):
        return identity
    who = f"user {identity.user!r}" if identity.user else f"agent {identity.agent!r} (no user)"
    raise PermissionDenied(
        f"{what} needs a user with the admin or operator role, or a Harness service identity; "
        f"{who} has roles [{', '.join(identity.roles)}]"
    )


def _check_model(name: str) -> None:
    if not name:
        raise InvalidArgument("model is required")
    check_length("model", name, MAX_MODEL_CHARS)


def claim_owner(identity: Identity, requested: str) -> str:
    """Whose claim a Deploy/Undeploy touches: operators name anyone, else themselves."""
    require_operator(identity, "deploying or undeploying models")
    check_length("owner", requested, MAX_OWNER_CHARS)
    if requested:
        return requested
    return f"service:{identity.service}" if identity.service else f"user:{identity.user}"


def _set_seconds(field, seconds: float) -> None:
    if seconds > 0:
        field.FromNanoseconds(int(seconds * 1e9))


def deployment_to_proto(d: DeploymentView) -> pool_pb2.Deployment:
    out = pool_pb2.Deployment(
        model=d.model,
        triton_model=d.triton_model,
        replicas=d.replicas,
        memory_bytes=d.memory_bytes,
        owners=list(d.owners),
        ready_replicas=d.ready_replicas,
        scaled_to_zero=d.scaled_to_zero,
    )
    for r in d.placements:
        _set_seconds(
            out.placements.add(endpoint=r.endpoint, gpu=r.gpu, state=r.state).load_time, r.load_time_s
        )
    _set_seconds(out.idle_ttl, d.idle_ttl_s)
    _set_seconds(out.last_load_time, d.last_load_time_s)
    if d.last_used:
        out.last_used.FromNanoseconds(int(d.last_used * 1e9))
    return out


def plan_to_proto(p: PlacementPlan) -> pool_pb2.PlanResponse:
    return pool_pb2.PlanResponse(
        placements=[
            pool_pb2.Replica(
                endpoint=r.endpoint,
                gpu=r.gpu,
                state=pool_pb2.MODEL_STATE_UNAVAILABLE if r.new else pool_pb2.MODEL_STATE_READY,
            )
            for r in p.placements
        ],
        memory=[
            pool_pb2.GpuMemoryChange(
                endpoint=m.endpoint,
                gpu=m.gpu,
                used_before_bytes=m.before,
                used_after_bytes=m.after,
                total_bytes=m.total,
            )
            for m in p.memory
        ],
        shortfall_bytes=p.shortfall_bytes,
        memory_bytes=p.memory_bytes,
        reason=p.reason,
    )


def spec_from_proto(ep: pool_pb2.Endpoint) -> EndpointSpec:
    """The operator-settable part of an Endpoint (health, models and last_seen are ignored)."""
    return EndpointSpec.make(
        ep.name.strip(),
        ep.address.strip(),
        labels=dict(ep.labels),
        metrics_url=ep.metrics_url.strip(),
        gpu_type=ep.gpu_type,
        gpu_count=ep.gpu_count,
        gpu_memory_bytes=ep.gpu_memory_bytes,
        kind=ep.kind.strip() or "triton",
        flavour=ep.flavour.strip(),
    )


def endpoint_to_proto(s: EndpointState) -> pool_pb2.Endpoint:
    ep = pool_pb2.Endpoint(
        name=s.name,
        address=s.spec.address,
        kind=s.spec.kind,
        flavour=s.spec.flavour,
        metrics_url=s.spec.metrics_url,
        labels=dict(s.spec.labels),
        gpu_type=s.spec.gpu_type,
        gpu_count=s.spec.gpu_count or len(s.gpus),
        gpu_memory_bytes=s.memory_total_bytes,
        health=s.health,
        gpu_utilization=s.gpu_utilization,
    )
    for m in s.models:
        pm = ep.models.add(
            name=m.name,
            version=m.version,
            state=m.state,
            waiting_requests=m.waiting,
            active_requests=m.active,
            kv_cache_fraction=m.kv_cache_fraction,
            recent_ttft_ms=m.recent_ttft_ms,
            recent_latency_ms=m.recent_latency_ms,
            max_running_requests=m.max_running,
            requests=m.requests,
            kv_cache_unknown=not m.kv_cache_known,
        )
        if m.prefix_hit_rate is not None:
            pm.prefix_cache_hit_rate = m.prefix_hit_rate
        if m.load_time_s > 0:
            pm.load_time.FromNanoseconds(int(m.load_time_s * 1e9))
    if s.last_seen is not None:
        ep.last_seen.FromNanoseconds(int(s.last_seen * 1e9))
    return ep


def gpu_to_proto(endpoint: str, g: GpuSample) -> pool_pb2.Gpu:
    return pool_pb2.Gpu(
        endpoint=endpoint,
        index=g.index,
        name=g.name,
        memory_total_bytes=g.memory_total_bytes,
        memory_used_bytes=g.memory_used_bytes,
        utilization=g.utilization,
        source=g.source,
    )


def batch_to_proto(b: WatchBatch) -> pool_pb2.WatchEndpointsResponse:
    return pool_pb2.WatchEndpointsResponse(
        snapshot=b.snapshot,
        endpoints=[endpoint_to_proto(s) for s in b.endpoints],
        removed=list(b.removed),
        revision=b.revision,
        scaled_to_zero_models=list(b.scaled_to_zero),
    )


class PoolServicer(pool_pb2_grpc.PoolServicer):
    def __init__(self, app: PoolApp) -> None:
        self._app = app

    async def RegisterEndpoint(self, request, context):
        """Adds or updates an endpoint (admin or service). INVALID_ARGUMENT for a bad name,
        address, metrics URL or label; probing starts at once, so health is UNSPECIFIED
        in the reply and follows within one probe interval."""
        require_operator(current_identity())
        if not request.HasField("endpoint"):
            raise InvalidArgument("endpoint is required")
        state = await self._app.register_endpoint(spec_from_proto(request.endpoint))
        return pool_pb2.RegisterEndpointResponse(endpoint=endpoint_to_proto(state))

    async def DeregisterEndpoint(self, request, context):
        """Removes an endpoint and stops probing it (admin or service); NOT_FOUND if unknown."""
        require_operator(current_identity())
        if not request.name:
            raise InvalidArgument("name is required")
        await self._app.deregister_endpoint(request.name)
        return pool_pb2.DeregisterEndpointResponse()

    async def ListEndpoints(self, request, context):
        """All endpoints, or with `model` set only the HEALTHY ones where that model is READY."""
        require_caller(current_identity())
        states = self._app.list_endpoints(request.model)
        return pool_pb2.ListEndpointsResponse(endpoints=[endpoint_to_proto(s) for s in states])

    async def ListGpus(self, request, context):
        """GPUs per endpoint; `source` says whether NVML or Triton's nv_gpu_* metrics measured them."""
        require_caller(current_identity())
        rows = self._app.gpu_rows(request.endpoint)
        return pool_pb2.ListGpusResponse(gpus=[gpu_to_proto(e, g) for e, g in rows])

    async def WatchEndpoints(self, request, context):
        """since_revision 0 (or one this process cannot replay): a snapshot, then live changes.
        A current revision: only future changes. Each message carries the full state of the
        endpoints that changed, the names removed, and the revision to resume from."""
        require_caller(current_identity())
        if request.since_revision < 0:
            raise InvalidArgument("since_revision must be >= 0")
        async for batch in self._app.watch(request.since_revision):
            yield batch_to_proto(batch)

    async def ActivateDeployment(self, request, context):
        """Wakes a deployment scaled to zero and returns at once (any authenticated caller: it
        restores only what claims hold). OK with `waking` false when it is not at zero;
        NOT_FOUND for a model the catalog lacks or no claim holds."""
        require_caller(current_identity())
        _check_model(request.model)
        waking, view = self._app.activate(request.model)
        return pool_pb2.ActivateDeploymentResponse(waking=waking, deployment=deployment_to_proto(view))

    async def Deploy(self, request, context):
        """Claims `replicas` of a model for the owner and loads what is missing (operators only).
        INVALID_ARGUMENT for replicas outside 1..64 or an idle TTL over a week; NOT_FOUND for a model the catalog lacks; RESOURCE_EXHAUSTED naming
        the shortfall in GiB; UNAVAILABLE when every chosen endpoint refused the load."""
        owner = claim_owner(current_identity(), request.owner.strip())
        _check_model(request.model)
        idle_ttl_s = duration_seconds("idle_ttl", request.idle_ttl, MAX_IDLE_TTL_S)
        view = await self._app.deploy(request.model, request.replicas, owner, idle_ttl_s)
        return pool_pb2.DeployResponse(deployment=deployment_to_proto(view))

    async def Undeploy(self, request, context):
        """Drops the owner's claim (or every claim with `all`, operators only); the model is
        unloaded when no claim remains. NOT_FOUND when there is no such deployment or claim."""
        owner = claim_owner(current_identity(), request.owner.strip())
        _check_model(request.model)
        await self._app.undeploy(request.model, owner, request.all)
        return pool_pb2.UndeployResponse()

    async def ListDeployments(self, request, context):
        """Every deployment with its placements, live replica states, owners and load times."""
        require_caller(current_identity())
        views = self._app.list_deployments()
        return pool_pb2.ListDeploymentsResponse(deployments=[deployment_to_proto(v) for v in views])

    async def Plan(self, request, context):
        """The placement Deploy would make now, changing nothing. A plan that does not fit is
        an answer, not an error: `shortfall_bytes` and `reason` say what is missing."""
        require_caller(current_identity())
        _check_model(request.model)
        return plan_to_proto(self._app.plan(request.model, request.replicas))

    async def AdviseScaling(self, request, context):
        """Replica advice per deployment from queue depth, KV fraction and GPU utilisation;
        `apply` (operators only) moves each deployment one replica toward it."""
        identity = current_identity()
        if request.apply:
            require_operator(identity)
        else:
            require_caller(identity)
        advice = await self._app.advise_scaling(request.apply)
        return pool_pb2.AdviseScalingResponse(
            advice=[
                pool_pb2.ScalingAdvice(
                    model=a.model,
                    current_replicas=a.current,
                    advised_replicas=a.advised,
                    reason=a.reason,
                    applied=a.applied,
                )
                for a in advice
            ]
        )
