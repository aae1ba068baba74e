"""The cost advisor's live fleet: the pool's deployments, endpoints and GPUs, and the registry's
model catalog and agents, read over the mesh's channels and cached for a few seconds.

`LiveFleet` is the FleetProvider `start_cost(fleet=...)` takes. It calls the pool (ListDeployments,
ListEndpoints, ListGpus) and the registry (ListModels, ListAgents) with the cost service's own
certificate (`open_channel`), which both accept as a Harness service. When the pool cannot be
read the answer has no fleet and a note naming the pool, its address, the RPC and the gRPC status;
when only the registry cannot be read the fleet keeps the pool's deployments without a catalog and
a note says so. Failures are cached like answers, so a down pool costs one RPC per TTL.

`fleet_from_protos` is the pure conversion. One advisor deployment is one model on one endpoint,
named as the router names it in the ledger (`<catalog model>@<endpoint>`): a pool deployment
with replicas on three endpoints becomes three. Models an endpoint has loaded outside any pool
deployment (a Triton started with `--load`) count too, by their catalog entry, since they hold
VRAM and serve traffic the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable

import grpc
from harness.pool.v1 import pool_pb2, pool_pb2_grpc
from harness.registry.v1 import registry_pb2, registry_pb2_grpc

from services.common.config import TlsFiles
from services.common.server import open_channel
from services.cost.advisor.base import GIB, CatalogModel, Fleet, FleetDeployment, FleetSnapshot

DEFAULT_TTL_S = 5.0
DEFAULT_TIMEOUT_S = 3.0
PAGE_SIZE = 1000
# Replica states that hold GPU memory (UNAVAILABLE: not loaded; UNLOADING: on its way out).
_HOLDING = frozenset(
    {pool_pb2.MODEL_STATE_UNSPECIFIED, pool_pb2.MODEL_STATE_LOADING, pool_pb2.MODEL_STATE_READY}
)
_LOADED = frozenset({pool_pb2.MODEL_STATE_LOADING, pool_pb2.MODEL_STATE_READY})


def _state(value: int) -> str:
    return "" if not value else pool_pb2.ModelState.Name(value).removeprefix("MODEL_STATE_").lower()


def catalog_from_protos(models: Iterable[registry_pb2.Model]) -> tuple[CatalogModel, ...]:
    return tuple(
        CatalogModel(
            name=m.name, family=m.family, parameters_b=m.parameters_b, quantization=m.quantization,
            memory_gib=m.memory_gib, context_length=m.context_length, triton_model=m.triton_model,
        )
        for m in models
    )  # fmt: skip


def agent_max_tokens(agents: Iterable[registry_pb2.Agent]) -> dict[str, int]:
    """Each agent's max_tokens default from its main version: the one with the largest traffic
    weight (the newer on a tie), else the newest. Agents whose version sets none are left out
    (the router's default applies to them)."""
    out: dict[str, int] = {}
    for a in agents:
        weights = {t.version: t.weight for t in a.traffic if t.weight > 0}
        live = [(weights[v.version], i, v) for i, v in enumerate(a.versions) if v.version in weights]
        main = max(live, key=lambda x: x[:2])[2] if live else (a.versions[-1] if a.versions else None)
        if main is not None and main.default_sampling.max_tokens > 0:
            out[a.name] = main.default_sampling.max_tokens
    return out


def fleet_from_protos(
    deployments: Iterable[pool_pb2.Deployment],
    endpoints: Iterable[pool_pb2.Endpoint],
    gpus: Iterable[pool_pb2.Gpu] = (),
    models: Iterable[registry_pb2.Model] = (),
    agents: Iterable[registry_pb2.Agent] = (),
    *,
    now_s: float | None = None,
) -> tuple[Fleet, tuple[str, ...]]:
    """The advisor's Fleet from the pool's and the registry's answers, and notes on what did not fit."""
    now_s = time.time() if now_s is None else now_s
    endpoints = list(endpoints)
    catalog = catalog_from_protos(models)
    by_name = {m.name: m for m in catalog}
    by_triton: dict[str, str] = {}
    for m in catalog:
        by_triton.setdefault(m.triton_model or m.name, m.name)
    eps = {e.name: e for e in endpoints}
    gpu_mem = {(g.endpoint, g.index): g.memory_total_bytes for g in gpus if g.memory_total_bytes > 0}

    def gpu_memory(endpoint: str, index: int | None) -> int:
        """VRAM of one GPU: ListGpus' figure, else the endpoint's total over its GPU count."""
        own = sorted(i for e, i in gpu_mem if e == endpoint)
        if index is None and own:
            index = own[0]  # the GPU of a model loaded outside the pool is not known: the first
        if (endpoint, index) in gpu_mem:
            return gpu_mem[(endpoint, index)]
        ep = eps.get(endpoint)
        return ep.gpu_memory_bytes // max(1, ep.gpu_count) if ep is not None else 0

    out: dict[str, FleetDeployment] = {}

    def add(d: FleetDeployment) -> None:
        have = out.get(d.name)
        out[d.name] = dataclasses.replace(have, replicas=have.replicas + d.replicas) if have else d

    held: set[tuple[str, str]] = set()  # (endpoint, Triton model) the pool's deployments cover
    uncatalogued: set[str] = set()
    for d in deployments:
        cat = by_name.get(d.model)
        if cat is None:
            uncatalogued.add(d.model)
        memory = d.memory_bytes or (round(cat.memory_gib * GIB) if cat else 0)
        ttl = d.idle_ttl.seconds + d.idle_ttl.nanos / 1e9
        idle = max(0.0, now_s - d.last_used.ToNanoseconds() / 1e9) if d.HasField("last_used") else None
        triton = d.triton_model or (cat.triton_model if cat and cat.triton_model else d.model)
        for p in d.placements:
            held.add((p.endpoint, triton))
            if p.state not in _HOLDING:
                continue
            ep = eps.get(p.endpoint)
            add(FleetDeployment(
                name=f"{d.model}@{p.endpoint}", model=d.model, replicas=1, memory_bytes=memory,
                gpu_type=ep.gpu_type if ep else "", gpu_memory_bytes=gpu_memory(p.endpoint, p.gpu),
                idle_ttl_s=ttl, owners=tuple(d.owners), endpoint=p.endpoint, state=_state(p.state), idle_s=idle,
            ))  # fmt: skip
    strays: list[str] = []
    for ep in endpoints:
        for m in ep.models:
            if m.state not in _LOADED or (ep.name, m.name) in held:
                continue
            name = by_triton.get(m.name)
            if name is None:
                strays.append(f"{m.name}@{ep.name}")
                continue
            add(FleetDeployment(
                name=f"{name}@{ep.name}", model=name, replicas=1, memory_bytes=round(by_name[name].memory_gib * GIB),
                gpu_type=ep.gpu_type, gpu_memory_bytes=gpu_memory(ep.name, None), endpoint=ep.name,
                state=_state(m.state),
            ))  # fmt: skip
    notes = []
    if catalog and uncatalogued:
        notes.append(
            f"pool deployments of models the registry's catalog lacks: {', '.join(sorted(uncatalogued))} "
            "(their VRAM comes from the pool; no family, size or quantized variant is known)"
        )
    if catalog and strays:
        notes.append(
            f"models loaded on endpoints that neither the pool's deployments nor the registry's catalog "
            f"know: {', '.join(sorted(strays))} (left out: their VRAM is unknown)"
        )
    fleet = Fleet(tuple(sorted(out.values(), key=lambda d: d.name)), catalog, agent_max_tokens(agents))
    return fleet, tuple(notes)


class _Failed(Exception):
    def __init__(self, rpc: str, why: str) -> None:
        super().__init__(f"{rpc}: {why}")
        self.rpc, self.why = rpc, why


async def _ask(rpc: str, call: Awaitable):
    """Awaits one RPC; a gRPC error becomes _Failed naming the RPC and the status."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise _Failed(rpc, f"{exc.code().name}: {exc.details()}") from exc


async def _all(rpc: str, method, request, items: str, timeout_s: float) -> list:
    """Every item of a paged registry List RPC."""
    request.page.page_size = PAGE_SIZE
    out: list = []
    while True:
        resp = await _ask(rpc, method(request, timeout=timeout_s))
        out.extend(getattr(resp, items))
        token = resp.page.next_page_token
        if not token or token == request.page.page_token:
            return out
        request.page.page_token = token


async def _each(*calls: Awaitable) -> list:
    """Runs the calls concurrently; the first failure in argument order is raised (a stable note)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


class LiveFleet:
    """FleetProvider over the live pool and registry; `await close()` when the server stops."""

    def __init__(
        self,
        pool_addr: str,
        registry_addr: str = "",
        tls: TlsFiles | None = None,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not pool_addr:
            raise ValueError("LiveFleet needs the pool's address")
        if ttl_s < 0 or timeout_s <= 0:
            raise ValueError("ttl_s must be >= 0 and timeout_s > 0")
        self.pool_addr, self.registry_addr, self.tls = pool_addr, registry_addr, tls
        self.ttl_s, self.timeout_s, self._clock = ttl_s, timeout_s, clock
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._lock = asyncio.Lock()
        self._cached: FleetSnapshot | None = None
        self._expires = 0.0

    async def __call__(self) -> FleetSnapshot:
        """The cached snapshot while it is younger than ttl_s; concurrent callers share one read."""
        async with self._lock:
            if self._cached is None or self._clock() >= self._expires:
                self._cached = await self.read()
                self._expires = self._clock() + self.ttl_s
            return self._cached

    def _channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = open_channel(address, self.tls)
        return self._channels[address]

    async def _pool(self) -> tuple[list, list, list]:
        stub = pool_pb2_grpc.PoolStub(self._channel(self.pool_addr))
        t = self.timeout_s
        deps, eps, gpus = await _each(
            _ask("ListDeployments", stub.ListDeployments(pool_pb2.ListDeploymentsRequest(), timeout=t)),
            _ask("ListEndpoints", stub.ListEndpoints(pool_pb2.ListEndpointsRequest(), timeout=t)),
            _ask("ListGpus", stub.ListGpus(pool_pb2.ListGpusRequest(), timeout=t)),
        )
        return list(deps.deployments), list(eps.endpoints), list(gpus.gpus)

    async def _registry(self) -> tuple[list, list]:
        stub = registry_pb2_grpc.RegistryStub(self._channel(self.registry_addr))
        return await _each(
            _all("ListModels", stub.ListModels, registry_pb2.ListModelsRequest(), "models", self.timeout_s),
            _all("ListAgents", stub.ListAgents, registry_pb2.ListAgentsRequest(), "agents", self.timeout_s),
        )

    async def _try(self, service: str, address: str, read, lacking: str):
        """(answer, None) or (None, a note naming the service, its address, the RPC and why)."""
        try:
            return await read(), None
        except _Failed as exc:
            return None, f"the {service} at {address} did not answer {exc.rpc} ({exc.why}): {lacking}"
        except (OSError, ValueError) as exc:  # TLS files unreadable, bad address
            return None, f"cannot reach the {service} at {address} ({exc}): {lacking}"

    async def read(self) -> FleetSnapshot:
        """Reads the pool and the registry now (concurrently), bypassing the cache."""
        pool_read = self._try("pool", self.pool_addr, self._pool, "no fleet snapshot")
        if self.registry_addr:
            registry_read = self._try(
                "registry", self.registry_addr, self._registry,
                "no model catalog or agents' max_tokens (deployments come from the pool alone)",
            )  # fmt: skip
            (pool, pool_note), (registry, registry_note) = await asyncio.gather(pool_read, registry_read)
        else:
            (pool, pool_note), registry = await pool_read, None
            registry_note = "no registry configured: no model catalog or agents' max_tokens"
        notes = tuple(n for n in (pool_note, registry_note) if n)
        if pool is None:
            return FleetSnapshot(None, notes)
        fleet, more = fleet_from_protos(*pool, *(registry or ((), ())))
        return FleetSnapshot(fleet, notes + more)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


def live_fleet(
    pool_addr: str, registry_addr: str = "", tls: TlsFiles | None = None, *, ttl_s: float = DEFAULT_TTL_S
) -> LiveFleet | None:
    """The provider the cost service's main() passes to start_cost: None without a pool address."""
    return LiveFleet(pool_addr, registry_addr, tls, ttl_s=ttl_s) if pool_addr else None
