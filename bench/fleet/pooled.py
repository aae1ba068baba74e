"""The harness set-up's pool: the production PoolApp, in this process, over an inventory of
empty simulated GPUs.

Nothing is placed by the benchmark. Before the run each agent comes online and the pool's
``on_agent_online`` deploys its model (one claim per agent; agents on the same model share the
deployment), placed by the pool's placement over the inventory and loaded with real
RepositoryModelLoad calls (the catalog's load times: cold starts are paid). During the run the
pool's own probes scrape the simulators, its scaling loop (services/pool/autoscale.py) adds and
removes replicas from what they see, placing new ones by memory and compute, and the router's
endpoint view follows the pool's endpoint table through its watch stream, as a router follows
WatchEndpoints. A GPU with no model loaded is not held (a cloud node given back); one that is
loading is held and idle.

Every pool setting that is a duration in engine time is divided by the time scale, like the
router's (runner.py). The scale-in window is the exception: how long the load must have fallen
before a replica goes is a span of the calendar (the load's shape), like an autoscaler's
cooldown (KEDA's default: 300 s), so it is set in calendar minutes and converted with the run's
compression, but never shorter than a few of the loop's evaluations (the figures are sampled
once per engine second). The probe, the hot window and the cooldown measure the engines and
the probes' lag, so they stay in engine time.

Scale to zero (on by default; `--no-scale-to-zero` turns it off): the batch model's warm-up
claims get an idle TTL (the pool's `model_idle_ttl_s`), the scale-in window's calendar span, so
the pool unloads the 70B once nothing has run on it that long and gives its GPU back. The router
then holds a summary that arrives for it, asks the pool to wake it (ActivateDeployment's core,
`PoolApp.activate`, in this process) and dispatches it once the woken replica is READY: the
summary pays the 25 s cold start within its 60 s TTFT target. Only the batch model: the
realtime and interactive models' targets (200 ms, 1 s) cannot absorb an 8-13 s cold start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from prometheus_client import CollectorRegistry

from bench._common import SimProcess
from services.pool.app import PoolApp
from services.pool.autoscale import AutoscaleSettings
from services.pool.catalog import ModelSpec
from services.pool.config import PoolConfig
from services.pool.gpus import Nvml
from services.pool.servicer import endpoint_to_proto
from services.pool.state import GIB, HEALTHY, READY, EndpointSpec
from services.router.views import EndpointView

from .plan import GPU_GIB, GPU_TYPE, HEADROOM, profiles
from .workload import AGENTS, DAY_HOURS, MODELS

INVENTORY = 5  # simulated GPUs the pool may use: two hold the fleet at rest, three are spare
MAX_REPLICAS = 2  # per model
# Engine seconds (divided by the time scale for the wall clock):
PROBE_S = 1.0  # the pool's probe interval (its default is 0.5 s; 1 s halves the probes' CPU here)
AUTOSCALE = {"interval_s": 1.0, "up_after_s": 2.0, "cooldown_s": 6.0}
SCALE_IN_CALENDAR_S = 300.0  # calendar seconds the load must have fallen before a replica goes
SCALE_IN_EVALUATIONS = 3  # the window's floor, in evaluations of the loop
SCALE_TO_ZERO_MODELS = ("llama-3-70b-awq",)  # batch only: its 60 s TTFT target absorbs a cold start
ACTIVATION_WAIT_S = 120.0  # engine seconds a held request waits for a wake (the router's default)


def scale_in_window_s(time_scale: float, day_s: float) -> float:
    """Engine seconds of the scale-in window: SCALE_IN_CALENDAR_S of the compressed calendar, at
    least SCALE_IN_EVALUATIONS evaluations (quick scale: 3 s engine, 24 calendar minutes)."""
    compression = DAY_HOURS * 3600 / (day_s * time_scale)  # calendar seconds per engine second
    return max(SCALE_IN_CALENDAR_S / compression, SCALE_IN_EVALUATIONS * AUTOSCALE["interval_s"])


def pool_config(
    sims: list[SimProcess],
    time_scale: float,
    day_s: float,
    max_replicas: int = MAX_REPLICAS,
    scale_to_zero: bool = True,
) -> PoolConfig:
    prof = profiles()
    idle_s = scale_in_window_s(time_scale, day_s) / time_scale  # wall seconds, like the window
    endpoints = tuple(
        EndpointSpec.make(
            s.name, s.address, metrics_url=s.metrics_url, gpu_type=GPU_TYPE, gpu_count=1,
            gpu_memory_bytes=GPU_GIB * GIB,
        )
        for s in sims
    )  # fmt: skip
    models = tuple(
        ModelSpec(name, triton, int(prof[triton]["memory_gb"] * GIB)) for name, triton in MODELS.items()
    )
    return PoolConfig(
        endpoints=endpoints,
        probe_interval_s=PROBE_S / time_scale,
        # Network deadlines stay wall-clock and generous: a loaded machine must not make a
        # healthy simulator look dead.
        probe_timeout_s=2.0,
        metrics_timeout_s=2.0,
        unhealthy_after=3,
        nvml=False,
        models=models,
        headroom=HEADROOM,
        agent_idle_ttl_s=0.0,  # the agents stay online all run; only these models go to zero:
        model_idle_ttl_s=tuple((m, idle_s) for m in SCALE_TO_ZERO_MODELS) if scale_to_zero else (),
        idle_check_interval_s=PROBE_S / time_scale,
        max_replicas=max_replicas,
        autoscale=AutoscaleSettings(
            **{k: v / time_scale for k, v in AUTOSCALE.items()},
            down_after_s=scale_in_window_s(time_scale, day_s) / time_scale,
        ),
    )


class PooledFleet:
    def __init__(
        self,
        sims: list[SimProcess],
        view: EndpointView,
        time_scale: float,
        day_s: float,
        max_replicas: int,
        scale_to_zero: bool = True,
    ) -> None:
        config = pool_config(sims, time_scale, day_s, max_replicas, scale_to_zero)
        self.app = PoolApp(config, CollectorRegistry(), nvml=Nvml(enabled=False))
        self.view = view
        self._mirror: asyncio.Task | None = None
        self.t0 = time.monotonic()  # the autoscaler's clock at the run's start
        self.wall0 = time.time()  # the change log's clock at the run's start

    async def activate(self, triton_model: str) -> None:
        """What a router's ActivateDeployment call does, in this process."""
        self.app.activate(triton_model)

    async def start(self) -> float:
        """Probes, the agents' warm-up loads (waited for), the view; returns the seconds it took."""
        started = time.monotonic()
        await self.app.start()
        await self._until(lambda: all(s.health == HEALTHY for s in self.app.table.states()), 60)
        # In this order, as the registry's watch would announce them: each deploy plans and
        # reserves before its first await, so the loads overlap but the placement is sequential.
        results = await asyncio.gather(*(self.app.on_agent_online([a.model], a.name) for a in AGENTS))
        for agent, errors in zip(AGENTS, results, strict=True):
            if any(errors.values()):
                raise SystemExit(f"pool warm-up failed for {agent.name}: {errors}")
        wanted = {MODELS[a.model] for a in AGENTS}
        await self._until(lambda: wanted <= self.ready_models(), 120)
        self._mirror = asyncio.create_task(self._follow())
        await self._until(lambda: all(self.view.candidates(m) for m in MODELS.values()), 30)
        return time.monotonic() - started

    def ready_models(self) -> set[str]:
        return {m.name for s in self.app.table.states() for m in s.models if m.state == READY}

    async def _follow(self) -> None:
        async for batch in self.app.watch(0):
            eps = [endpoint_to_proto(s) for s in batch.endpoints]
            self.view.apply(
                eps, list(batch.removed), snapshot=batch.snapshot, scaled_to_zero=batch.scaled_to_zero
            )

    @staticmethod
    async def _until(cond, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            if time.monotonic() > deadline:
                raise SystemExit("the pool did not get ready in time (see the simulators' logs)")
            await asyncio.sleep(0.05)

    def mark_start(self) -> None:
        self.t0, self.wall0 = time.monotonic(), time.time()

    def events(self) -> list[tuple[float, str, int, int, str, str]]:
        """(wall seconds since the run's start, model, before, after, reason, error): the scaling
        loop's changes, and scale to zero and wakes from the pool's change log (when done)."""
        out = [
            (e.at - self.t0, e.model, e.before, e.after, e.reason, e.error)
            for e in self.app.autoscaler.events
        ]
        for row in self.app.changes.pending(10_000):
            model = row.object.removeprefix("deployment:")
            if row.action == "scale_to_zero":
                out.append(
                    (row.time_us / 1e6 - self.wall0, model, 1, 0, "idle: scaled to zero, GPU given back", "")
                )
            elif row.action == "wake":
                error = json.loads(row.details or "{}").get("error", "")
                out.append(
                    (
                        row.time_us / 1e6 - self.wall0,
                        model,
                        0,
                        1,
                        "woken for a held request (load done)",
                        error,
                    )
                )
        return sorted(out)

    async def stop(self) -> None:
        if self._mirror is not None:
            self._mirror.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mirror
        await self.app.stop()
