"""gRPC face of the pool: authorization, protobuf conversion, and calls into `PoolApp`.

Reads need an authenticated caller (a user token, an agent behind Envoy, or a Harness
service's certificate). Changing the endpoint set needs an admin user or a Harness service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.pool.v1 import pool_pb2, pool_pb2_grpc

from services.common.context import Identity, current_identity
from services.common.errors import InvalidArgument, PermissionDenied, Unauthenticated
from services.common.planned import planned
from services.pool.endpoints import WatchBatch
from services.pool.state import EndpointSpec, EndpointState, GpuSample

if TYPE_CHECKING:
    from services.pool.app import PoolApp

POOL_ISSUE = "pool issue #5"


def require_caller(identity: Identity) -> Identity:
    if not (identity.user or identity.agent or identity.service):
        raise Unauthenticated("the pool needs an authenticated caller (user token, agent or service cert)")
    return identity


def require_operator(identity: Identity) -> Identity:
    require_caller(identity)
    if not (identity.is_admin or identity.service):
        raise PermissionDenied(
            "changing the pool's endpoints needs the admin role or a Harness service identity"
        )
    return identity


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
    )


def endpoint_to_proto(s: EndpointState) -> pool_pb2.Endpoint:
    ep = pool_pb2.Endpoint(
        name=s.name,
        address=s.spec.address,
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
        )
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
    )


@planned(
    pool_pb2.DESCRIPTOR.services_by_name["Pool"],
    {
        "Deploy": f"placement and model load ({POOL_ISSUE})",
        "Undeploy": f"model unload ({POOL_ISSUE})",
        "ListDeployments": f"deployments ({POOL_ISSUE})",
        "Plan": f"placement planning ({POOL_ISSUE})",
        "AdviseScaling": f"replica scaling advice ({POOL_ISSUE})",
    },
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
        state = self._app.register_endpoint(spec_from_proto(request.endpoint))
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
