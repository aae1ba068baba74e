"""A pool without servers: endpoints as the probes would see them and a fake Triton model
control that edits them (unit tests of placement, deployments and scaling)."""

from __future__ import annotations

from services.pool.catalog import ModelCatalog, ModelSpec
from services.pool.control import ModelControlError
from services.pool.deployments import DeploymentManager
from services.pool.endpoints import EndpointTable
from services.pool.state import (
    GIB,
    EndpointSpec,
    GpuSample,
    IndexEntry,
    MetricsSample,
    ModelLoad,
    ProbeResult,
)

CATALOG = ModelCatalog(
    [
        ModelSpec("small", "small-trt", 15 * GIB),
        ModelSpec("mid", "mid-trt", 33 * GIB),
        ModelSpec("big", "big-trt", 63 * GIB),
    ]
)


class World:
    """Endpoints as the probes would see them; a fake Triton control that edits them."""

    def __init__(self, *endpoints: tuple[str, int, str]) -> None:
        self.table = EndpointTable(start_revision=1)
        self.loaded: dict[str, dict[str, int]] = {}  # endpoint -> triton model -> requests
        self.total = {}
        self.utilization: dict[str, float] = {}  # endpoint -> its GPU's utilisation (default 0.1)
        self.active: dict[tuple[str, str], int] = {}  # (endpoint, triton model) -> active requests
        self.waiting: dict[tuple[str, str], int] = {}  # (endpoint, triton model) -> queued requests
        self.calls: list[tuple[str, str, str]] = []
        self.refuse: set[str] = set()
        for name, gib, zone in endpoints:
            self.table.upsert(EndpointSpec.make(name, f"{name}:1", labels={"zone": zone} if zone else None))
            self.loaded[name] = {}
            self.total[name] = gib * GIB
            self.probe(name)

    def probe(self, name: str, ok: bool = True, index_state: str = "READY") -> None:
        models = self.loaded[name]
        used = sum(CATALOG.get(m).memory_bytes for m in models)
        loads = {
            (m, "1"): ModelLoad(
                requests=r, active=self.active.get((name, m), 0), waiting=self.waiting.get((name, m), 0)
            )
            for m, r in models.items()
        }
        gpus = (GpuSample(0, "", "", self.total[name], used, self.utilization.get(name, 0.1)),)
        index = tuple(IndexEntry(m, "1", index_state) for m in models)
        self.table.apply_probe(name, f"{name}:1", ProbeResult(ok, index, MetricsSample(loads), gpus))

    def probe_all(self) -> None:
        for name in self.loaded:
            self.probe(name)

    async def load(self, address: str, model: str) -> float:
        name = address.split(":")[0]
        self.calls.append(("load", name, model))
        if name in self.refuse:
            raise ModelControlError(address, model, "INTERNAL", "not enough GPU memory")
        self.loaded[name].setdefault(model, 0)
        return 0.25

    async def unload(self, address: str, model: str) -> None:
        name = address.split(":")[0]
        self.calls.append(("unload", name, model))
        self.loaded[name].pop(model, None)

    async def close(self) -> None:
        pass

    def manager(self, **kw) -> DeploymentManager:
        return DeploymentManager(self.table, CATALOG, self, headroom=0.0, **kw)

    def loads(self) -> list[tuple[str, str]]:
        return [(e, m) for op, e, m in self.calls if op == "load"]
