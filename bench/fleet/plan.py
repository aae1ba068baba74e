"""Which GPUs each set-up holds and what runs on them.

Both set-ups use the same inventory of simulated H100 SXM 80GB GPUs and the same three model
profiles (services/enginesim/models.yaml: memory, latency, batch and KV figures as sourced there).

(a) static binding, "one agent, one GPU": every agent gets its own deployment of its model on
    GPUs of its own (one, since each of the three profiles fits one 80 GB GPU). The deployment
    has a per-agent Triton model name (``<agent>--<model>``), so only that agent's requests can
    reach it.
(b) the Harness: an inventory of empty GPUs under the pool (pooled.py). Each agent going
    online claims one replica of its catalog model (the pool's ``on_agent_online``); agents on
    the same model share one deployment. The pool places replicas (memory, 5% headroom, best
    fit; compute for the replicas its scaling loop adds) and loads them; a GPU is held while
    a model is loaded or loading on it.

The bench catalog copies each profile with ``decoupled: true`` (the AWQ profile is a
non-decoupled BLS model in models.yaml, which cannot stream, and TTFT needs streaming). The
shared models keep their load times (the pool's loads during the run pay the cold start);
static's per-agent copies load at start-up with ``load_time_s: 0`` (not timed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

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


def harness_plan(inventory: int) -> FleetPlan:
    """The pool's inventory: ``inventory`` empty GPUs; the pool places and scales (pooled.py)."""
    prof = profiles()
    gpus = tuple(GpuPlan(f"gpu-{i:02d}", ()) for i in range(inventory))
    agent_model = {a.name: (a.model, MODELS[a.model]) for a in AGENTS}
    memory = {m: float(prof[m]["memory_gb"]) for m in MODELS.values()}
    return FleetPlan("harness", gpus, agent_model, memory)


def write_catalog(path: Path, plans: list[FleetPlan]) -> Path:
    """One simulator catalog with every Triton model name either set-up loads."""
    prof = profiles()
    models = []
    names = [m for plan in plans for gpu in plan.gpus for m in gpu.models] + list(MODELS.values())
    for triton in dict.fromkeys(names):
        base = triton.split("--", 1)[-1]
        entry = {k: v for k, v in prof[base].items() if k not in ("preload", "gpu")}
        entry.update(name=triton, decoupled=True, layout="ensemble")
        if triton != base:  # static's per-agent copies load before the run: no cold start to time
            entry["load_time_s"] = 0
        models.append(entry)
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return path
