"""Which GPUs each set-up holds and what runs on them.

Both set-ups use the same inventory of simulated H100 SXM 80GB GPUs and the same three model
profiles (services/enginesim/models.yaml: memory, latency, batch and KV figures as sourced there).

(a) static binding, "one agent, one GPU": every agent gets its own deployment of its model on
    GPUs of its own (one, since each of the three profiles fits one 80 GB GPU). The deployment
    has a per-agent Triton model name (``<agent>--<model>``), so only that agent's requests can
    reach it.
(b) the Harness: each agent going online claims one replica of its catalog model, as the pool's
    ``on_agent_online`` does; a deployment runs max(claims) replicas, so agents on the same model
    share one deployment. Replicas are placed by the pool's own placement code
    (``services.pool.placement.plan_placement``: by GPU memory, 5% headroom, best fit, loads
    in flight counted), deployment by deployment in the order the agents come online. The GPUs
    the pool fills are the GPUs the Harness holds. ``--placement exclusive`` gives every replica
    a GPU of its own instead (a placement that never co-locates models).

The bench catalog copies each profile and sets ``load_time_s: 0`` (the run measures steady
state, not cold starts) and ``decoupled: true`` (the AWQ profile is a non-decoupled BLS model
in models.yaml, which cannot stream, and TTFT needs streaming).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from services.pool.placement import plan_placement
from services.pool.state import GIB, HEALTHY, EndpointSpec, EndpointState

from .workload import AGENTS, MODELS, AgentSpec

REPO = Path(__file__).resolve().parents[2]
GPU_TYPE = "H100-SXM-80GB"
GPU_GIB = 80
HEADROOM = 0.05  # the pool's default


@dataclass(frozen=True)
class GpuPlan:
    name: str
    models: tuple[str, ...]  # Triton model names loaded on it


@dataclass(frozen=True)
class FleetPlan:
    setup: str
    gpus: tuple[GpuPlan, ...]
    # catalog model name the registry resolves for each agent -> Triton model name
    agent_model: dict[str, tuple[str, str]]
    memory_gib: dict[str, float]  # Triton model -> GiB

    @property
    def vram_used_gib(self) -> float:
        return sum(self.memory_gib[m] for g in self.gpus for m in g.models)


def profiles() -> dict[str, dict]:
    raw = yaml.safe_load((REPO / "services/enginesim/models.yaml").read_text())
    return {m["name"]: m for m in raw["models"]}


def static_triton_name(agent: AgentSpec) -> str:
    return f"{agent.name}--{MODELS[agent.model]}"


def static_plan() -> FleetPlan:
    prof = profiles()
    gpus, agent_model, memory = [], {}, {}
    for i, agent in enumerate(AGENTS):
        triton = static_triton_name(agent)
        gpus.append(GpuPlan(f"gpu-{i:02d}", (triton,)))
        agent_model[agent.name] = (f"{agent.name}.{agent.model}", triton)
        memory[triton] = float(prof[MODELS[agent.model]]["memory_gb"])
    return FleetPlan("static", tuple(gpus), agent_model, memory)


def harness_plan(inventory: int, exclusive: bool = False) -> FleetPlan:
    """The pool's placement of the shared deployments on ``inventory`` empty GPUs."""
    prof = profiles()
    states = [
        EndpointState(
            spec=EndpointSpec.make(
                f"gpu-{i:02d}", f"127.0.0.1:{40000 + i}", gpu_type=GPU_TYPE, gpu_count=1,
                gpu_memory_bytes=GPU_GIB * GIB,
            ),
            health=HEALTHY,
        )
        for i in range(inventory)
    ]  # fmt: skip
    pending: dict[tuple[str, int], int] = {}
    placed: dict[str, list[str]] = {}  # triton model -> endpoints
    claims: dict[str, int] = {}
    for agent in AGENTS:  # agents come online in this order; each claims one replica
        triton = MODELS[agent.model]
        claims[triton] = max(claims.get(triton, 0), 1)
        holders = placed.get(triton, [])
        if len(holders) >= claims[triton]:
            continue  # the deployment already runs max(claims) replicas: the agent shares it
        need = int(prof[triton]["memory_gb"] * GIB)
        if exclusive:
            need = int(GPU_GIB * GIB * (1 - HEADROOM))
        plan = plan_placement(
            states, triton, need, claims[triton], headroom=HEADROOM, pending=pending, holders=holders
        )
        if plan.reason:
            raise SystemExit(f"pool placement failed: {plan.reason}")
        for p in plan.new:
            pending[(p.endpoint, p.gpu)] = pending.get((p.endpoint, p.gpu), 0) + need
            placed.setdefault(triton, []).append(p.endpoint)
    by_gpu: dict[str, list[str]] = {}
    for triton, endpoints in placed.items():
        for ep in endpoints:
            by_gpu.setdefault(ep, []).append(triton)
    gpus = tuple(GpuPlan(name, tuple(models)) for name, models in sorted(by_gpu.items()))
    agent_model = {a.name: (a.model, MODELS[a.model]) for a in AGENTS}
    memory = {m: float(prof[m]["memory_gb"]) for m in placed}
    return FleetPlan("harness", gpus, agent_model, memory)


def write_catalog(path: Path, plans: list[FleetPlan]) -> Path:
    """One simulator catalog with every Triton model name either set-up loads."""
    prof = profiles()
    models = []
    seen: set[str] = set()
    for plan in plans:
        for gpu in plan.gpus:
            for triton in gpu.models:
                if triton in seen:
                    continue
                seen.add(triton)
                base = triton.split("--", 1)[-1]
                entry = {k: v for k, v in prof[base].items() if k not in ("preload", "gpu")}
                entry.update(name=triton, load_time_s=0, decoupled=True, layout="ensemble")
                models.append(entry)
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return path
