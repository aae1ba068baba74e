"""Replica placement by GPU memory and compute: pure functions over the endpoint table's states.

Rules, in order:
- A Triton server loads a model once, so every replica is on a different endpoint; endpoints
  that already have the model (READY or LOADING) count as replicas first and cost nothing.
- Only HEALTHY endpoints with known memory are candidates.
- A GPU may be filled to `(1 - headroom) * total`: the headroom absorbs what figures lag
  (another client's load, runtime growth) so a placement rarely fails at load time.
- Compute: a replica whose expected compute share is known (`compute_share`: the fraction of
  one GPU it will keep busy, e.g. a deployment's measured load spread over one more replica)
  fits only a GPU whose compute in use (its utilisation at the last scrape, plus the shares
  reserved by loads in flight) leaves room for it under `busy_utilization`. Memory alone would
  put a replica added to relieve a hot model next to another hot model, where its steps only
  queue behind the others' (co-located models take turns on one GPU). With no share given
  (a first deploy: nothing measured yet) a busy GPU is only avoided while another one fits.
- Among the endpoints that fit, prefer a zone (`zone` label) no chosen replica uses yet
  (availability), then a GPU that is not busy (utilisation under `busy_utilization` at the last
  scrape: a replica added to relieve a hot model must not land on a GPU that is already
  saturated, where its steps would only queue behind the others'), then the tightest fit
  (best-fit bin packing keeps big holes for big models), then the name (stable plans).
- Used memory per GPU is the larger of what the GPU reports and what the catalog says the
  models in its RepositoryIndex take, plus loads the pool started that neither shows yet, so
  two Deploys a scrape apart do not both count the same free memory.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from services.pool.state import GIB, HEALTHY, LOADING, READY, UNLOADING, EndpointState

# (endpoint, gpu index) -> bytes of loads in flight that the endpoint's figures do not show yet
Pending = Mapping[tuple[str, int], int]
# (endpoint, gpu index) -> compute share reserved by loads in flight (not in the utilisation yet)
PendingCompute = Mapping[tuple[str, int], float]


@dataclass(frozen=True)
class GpuBin:
    endpoint: str
    gpu: int
    total: int
    used: int
    zone: str = ""
    utilization: float = 0.0  # at the last scrape, 0..1
    reserved_compute: float = 0.0  # shares of loads in flight

    def free(self, headroom: float) -> int:
        return int(self.total * (1.0 - headroom)) - self.used

    @property
    def compute(self) -> float:
        """The share of the GPU's compute in use or promised."""
        return self.utilization + self.reserved_compute


@dataclass(frozen=True)
class PlannedReplica:
    endpoint: str
    gpu: int
    new: bool  # False: the model is already there


@dataclass(frozen=True)
class GpuChange:
    endpoint: str
    gpu: int
    before: int
    after: int
    total: int


@dataclass(frozen=True)
class PlacementPlan:
    placements: tuple[PlannedReplica, ...]
    memory: tuple[GpuChange, ...]
    memory_bytes: int  # per replica
    shortfall_bytes: int = 0
    reason: str = ""

    @property
    def new(self) -> tuple[PlannedReplica, ...]:
        return tuple(p for p in self.placements if p.new)


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def has_model(state: EndpointState, triton_model: str) -> bool:
    return any(m.name == triton_model and m.state in (READY, LOADING) for m in state.models)


def gpu_bins(
    state: EndpointState,
    footprint: Callable[[str], int],
    pending: Pending,
    pending_compute: PendingCompute | None = None,
) -> list[GpuBin]:
    """The GPUs of one endpoint with used memory as placement should see it."""
    zone = dict(state.spec.labels).get("zone", "")
    if state.gpus:
        raw = [(g.index, g.memory_total_bytes, g.memory_used_bytes, g.utilization) for g in state.gpus]
    elif state.spec.gpu_memory_bytes > 0:
        raw = [(0, state.spec.gpu_memory_bytes, 0, 0.0)]  # no figures yet: the registered size, empty
    else:
        return []  # memory unknown: nothing can be placed here safely
    # An UNLOADING model still holds its memory (Triton answers the unload before it is freed).
    known = sum(footprint(m.name) for m in state.models if m.state in (READY, LOADING, UNLOADING))
    reported = sum(used for _, _, used, _ in raw)
    bins = []
    for i, (index, total, used, util) in enumerate(raw):
        # Loads the index shows but the memory figure does not yet (lagging scrape): on GPU 0.
        extra = max(0, known - reported) if i == 0 else 0
        used += extra + pending.get((state.name, index), 0)
        reserved = (pending_compute or {}).get((state.name, index), 0.0)
        bins.append(GpuBin(state.name, index, total, used, zone, util, reserved))
    return bins


def plan_placement(
    states: Collection[EndpointState],
    triton_model: str,
    memory_bytes: int,
    replicas: int,
    *,
    headroom: float = 0.05,
    footprint: Callable[[str], int] = lambda _name: 0,
    pending: Pending | None = None,
    holders: Collection[str] = (),
    exclude: Collection[str] = (),
    busy_utilization: float = 0.8,
    compute_share: float = 0.0,
    pending_compute: PendingCompute | None = None,
) -> PlacementPlan:
    """Where `replicas` copies would run. `holders` are endpoints the pool is loading the model
    on (not yet in their index); `exclude` are endpoints not to use (a load there just failed);
    `compute_share` is one new replica's expected share of a GPU's compute (0: unknown)."""
    pending = pending or {}
    healthy = [
        s for s in sorted(states, key=lambda s: s.name) if s.health == HEALTHY and s.name not in exclude
    ]
    bins = {s.name: gpu_bins(s, footprint, pending, pending_compute) for s in healthy}

    def compute_fits(b: GpuBin) -> bool:
        return compute_share <= 0 or b.compute + compute_share <= busy_utilization

    no_compute: list[GpuBin] = []  # had the memory but not the compute
    chosen: list[PlannedReplica] = []
    for s in healthy:
        if len(chosen) < replicas and (s.name in holders or has_model(s, triton_model)):
            gpu = bins[s.name][0].gpu if bins[s.name] else 0
            chosen.append(PlannedReplica(s.name, gpu, new=False))
    taken = {p.endpoint for p in chosen}
    zones = {dict(s.spec.labels).get("zone", "") for s in healthy if s.name in taken} - {""}
    added: dict[tuple[str, int], int] = {}
    # Fixed deployments (OpenAI-protocol servers) count where they already serve the model but
    # never receive a load.
    candidates = [s.name for s in healthy if s.name not in taken and not s.spec.fixed]
    while len(chosen) < replicas:
        best = None
        for name in candidates:
            roomy = [b for b in bins[name] if b.free(headroom) >= memory_bytes]
            fits = [b for b in roomy if compute_fits(b)]
            no_compute += [b for b in roomy if not compute_fits(b)]
            if not fits:
                continue
            b = min(fits, key=lambda b: (b.compute >= busy_utilization, b.free(headroom), b.gpu))
            busy = b.compute >= busy_utilization
            key = (1 if b.zone and b.zone in zones else 0, busy, b.free(headroom) - memory_bytes, name)
            if best is None or key < best[0]:
                best = (key, b)
        if best is None:
            break
        b = best[1]
        chosen.append(PlannedReplica(b.endpoint, b.gpu, new=True))
        candidates.remove(b.endpoint)
        if b.zone:
            zones.add(b.zone)
        added[(b.endpoint, b.gpu)] = memory_bytes

    memory = tuple(
        GpuChange(b.endpoint, b.gpu, b.used, b.used + added.get((b.endpoint, b.gpu), 0), b.total)
        for name in sorted(bins)
        for b in bins[name]
    )
    missing = replicas - len(chosen)
    if missing <= 0:
        return PlacementPlan(tuple(chosen), memory, memory_bytes)
    # Shortfall: what the best remaining endpoints lack, one per missing replica (an endpoint
    # that does not exist lacks the whole replica).
    frees = sorted((max((b.free(headroom) for b in bins[n]), default=0) for n in candidates), reverse=True)[
        :missing
    ]
    frees += [0] * (missing - len(frees))
    shortfall = sum(max(0, memory_bytes - max(0, f)) for f in frees)
    busy = sorted(
        {b.endpoint: b for b in no_compute if b.endpoint in candidates}.values(), key=lambda b: b.endpoint
    )
    if shortfall == 0 and busy:
        reason = (
            f"no GPU has the compute for {missing} more replica(s) of {triton_model} at {compute_share:.0%} of a "
            f"GPU each (limit {busy_utilization:.0%}): {len(chosen)} of {replicas} placed; "
            + _compute_note(busy)
        )
        return PlacementPlan(tuple(chosen), memory, memory_bytes, 0, reason)
    reason = (
        f"not enough GPU memory for {replicas} replica(s) of {triton_model} at {gib(memory_bytes)} each "
        f"(headroom {headroom:.0%}): {len(chosen)} placed on {len(healthy)} healthy endpoint(s); "
        f"short by {gib(shortfall)}"
    )
    if busy:
        reason += "; " + _compute_note(busy)
    return PlacementPlan(tuple(chosen), memory, memory_bytes, shortfall, reason)


def _compute_note(busy: list[GpuBin]) -> str:
    shown = ", ".join(f"{b.endpoint} at {b.compute:.0%}" for b in busy[:4])
    more = f" and {len(busy) - 4} more" if len(busy) > 4 else ""
    return f"{len(busy)} endpoint(s) have the memory but not the compute ({shown}{more})"


def scale_in_victims(
    states: Collection[EndpointState],
    triton_model: str,
    count: int,
    footprint: Callable[[str], int],
    order: Collection[str] = (),
) -> list[str]:
    """The endpoints whose replicas of `triton_model` go when a deployment shrinks by `count`.

    First those whose GPU would hold the least else once the replica leaves (an emptied GPU is
    one the fleet can give back; two models shrinking after a surge then leave the same GPU
    rather than one each), then the newest replica (`order`: oldest first; what a scale-out
    added is what a scale-in removes), then the least busy.
    """
    rank = {name: i for i, name in enumerate(order)}

    def key(state: EndpointState) -> tuple[int, int, int, str]:
        others = sum(
            footprint(m.name) for m in state.models if m.name != triton_model and m.state in (READY, LOADING)
        )
        m = next((m for m in state.models if m.name == triton_model), None)
        busy = (m.waiting + m.active) if m else 0
        return (others, -rank.get(state.name, -1), busy, state.name)

    return [s.name for s in sorted(states, key=key)[: max(0, count)]]
