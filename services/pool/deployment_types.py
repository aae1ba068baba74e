"""Deployment records (mutable, owned by DeploymentManager) and the frozen views RPCs and
metrics read. Split from deployments.py so the manager stays about behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.errors import InvalidArgument
from services.pool.catalog import ModelSpec
from services.pool.state import HEALTHY, LOADING, READY, UNAVAILABLE

# Contract limits (pool.proto says the same): a claim or plan asks for at most this many
# replicas, an idle TTL is at most a week, an owner name at most 128 characters.
MAX_REPLICAS = 64
MAX_IDLE_TTL_S = 7 * 24 * 3600
MAX_OWNER_CHARS = 128


def check_replicas(replicas: int) -> None:
    if not 1 <= replicas <= MAX_REPLICAS:
        raise InvalidArgument(f"replicas is {replicas}; it must be between 1 and {MAX_REPLICAS}")


@dataclass(frozen=True)
class Claim:
    replicas: int
    idle_ttl_s: float  # 0 = never scale to zero


@dataclass
class Placement:
    gpu: int
    load_time_s: float = 0.0  # 0: adopted (it was already loaded)


@dataclass
class Deployment:
    spec: ModelSpec
    claims: dict[str, Claim] = field(default_factory=dict)
    placements: dict[str, Placement] = field(default_factory=dict)  # endpoint -> placement
    target: int | None = None  # the autoscaler's replica count; None = max(claims)
    last_used: float = 0.0  # wall clock
    activity: tuple = ()  # request counters last seen, to tell idle from busy
    scaled_to_zero: bool = False
    waking: bool = False  # woken from zero, no replica seen READY yet (routers still hold)
    last_load_time_s: float = 0.0
    retry_at: float = 0.0  # monotonic; when reconcile may try to re-place lost replicas again
    retry_for: tuple[str, ...] = ()  # the healthy endpoints when it last failed

    @property
    def desired(self) -> int:
        if self.target is not None:
            return self.target
        return max((c.replicas for c in self.claims.values()), default=0)

    @property
    def idle_ttl_s(self) -> float:
        """Any claim that says "never" wins; otherwise the most patient claim decides."""
        ttls = [c.idle_ttl_s for c in self.claims.values()]
        return 0.0 if not ttls or 0 in ttls else max(ttls)


@dataclass(frozen=True)
class ReplicaView:
    endpoint: str
    gpu: int
    state: int
    load_time_s: float


@dataclass(frozen=True)
class DeploymentView:
    """A deployment as RPCs and metrics see it (a copy: safe for the metrics thread)."""

    model: str
    triton_model: str
    replicas: int
    placements: tuple[ReplicaView, ...]
    memory_bytes: int
    idle_ttl_s: float
    last_used: float
    owners: tuple[str, ...]
    scaled_to_zero: bool
    last_load_time_s: float

    @property
    def ready_replicas(self) -> int:
        return sum(1 for p in self.placements if p.state == READY)


def model_status(state, triton_model: str):
    """The endpoint state's entry for `triton_model` (None when unknown or not there)."""
    return next((m for m in state.models if m.name == triton_model), None) if state else None


def activity(dep: Deployment, table) -> tuple[tuple, bool]:
    """(the request counters of `dep`'s replicas, whether any is busy or loading now)."""
    sig, busy = [], False
    for endpoint in sorted(dep.placements):
        m = model_status(table.get(endpoint), dep.spec.triton_model)
        if m is not None:
            sig.append((endpoint, m.requests))
            busy = busy or m.waiting > 0 or m.active > 0 or m.state == LOADING
    return tuple(sig), busy


def has_ready(dep: Deployment, table) -> bool:
    """Whether a healthy endpoint of `dep` has its model READY."""
    return any((s := table.get(e)) is not None and s.has_ready(dep.spec.triton_model) for e in dep.placements)


def deployment_view(dep: Deployment, table, pending: dict) -> DeploymentView:
    """The frozen view of `dep`; `pending` holds loads this pool began that probes may not show."""
    replicas = []
    for endpoint, p in sorted(dep.placements.items()):
        state = table.get(endpoint)
        m = model_status(state, dep.spec.triton_model)
        healthy = state is not None and state.health == HEALTHY
        # A load that returned means READY (Triton answers once it is) even before the
        # next probe shows it in the index.
        loaded = pending.get((endpoint, p.gpu, dep.spec.triton_model), (0, None))[1] is not None
        if healthy and m is not None and not (loaded and m.state != READY):
            st = m.state
        else:
            st = READY if healthy and loaded else UNAVAILABLE
        replicas.append(ReplicaView(endpoint, p.gpu, st, p.load_time_s))
    return DeploymentView(
        model=dep.spec.name,
        triton_model=dep.spec.triton_model,
        replicas=dep.desired,
        placements=tuple(replicas),
        memory_bytes=dep.spec.memory_bytes,
        idle_ttl_s=dep.idle_ttl_s,
        last_used=dep.last_used,
        owners=tuple(sorted(dep.claims)),
        scaled_to_zero=dep.scaled_to_zero,
        last_load_time_s=dep.last_load_time_s,
    )
