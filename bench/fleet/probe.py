"""Simulated GPUs as processes, and the one probe that reads them.

One simulator process = one simulated GPU (``--gpu-memory-gb 80``) with the models the plan put
on it. ``Probe`` scrapes their /metrics (the simulator's ``nv_gpu_utilization`` is the busy
share over a trailing window of about a second, whoever else scrapes).
Every ``interval_s`` it (1) feeds the router's EndpointView what the pool's WatchEndpoints would
carry: each model's waiting/active requests, KV fraction and running limit, parsed with the
pool's own parser; (2) records each GPU's utilisation x the interval, which integrates to the
GPU's busy time (the simulator's ``busy_real_s``: the step time its engines used; co-located
models share the GPU, their steps run one at a time, so the sum stays within 100%), and
whether the GPU is held (some model's memory is allocated on it: loaded or loading). The
harness's view is fed by the pool instead (pooled.py): there the probe only records.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.pool.v1 import pool_pb2

from bench._common import SimProcess, start_simulator_set
from services.pool.scrape import http_get_text, parse_triton_metrics
from services.router.views import EndpointView

from .plan import GPU_GIB, GPU_TYPE, GpuPlan


def start_gpus(
    catalog: Path, gpus: tuple[GpuPlan, ...], time_scale: float, workdir: Path
) -> list[SimProcess]:
    """Starts one simulator per GPU, all at once, and waits until every one is ready."""
    specs = [(gpu.name, list(gpu.models)) for gpu in gpus]
    return start_simulator_set(
        catalog, specs, time_scale, workdir, ("--gpu-memory-gb", str(GPU_GIB)), timeout_s=120
    )


_LINE = re.compile(r"^(nv_inference_exec_count|nv_trt_llm_kv_cache_block_metrics)\{([^}]*)\} (\S+)$", re.M)


def engine_counters(text: str) -> dict[str, dict[str, float]]:
    """Per model: step iterations and reused prompt blocks (cumulative)."""
    out: dict[str, dict[str, float]] = {}
    for name, labels, value in _LINE.findall(text):
        model = re.search(r'model="([^"]*)"', labels).group(1)
        if name == "nv_inference_exec_count":
            out.setdefault(model, {})["steps"] = float(value)
        elif 'kv_cache_block_type="reused"' in labels:
            out.setdefault(model, {})["reused"] = float(value)
    return out


@dataclass
class GpuSeries:
    t: list[float] = field(default_factory=list)  # wall seconds since the run started
    util: list[float] = field(default_factory=list)  # share of the interval ending at t
    held: list[bool] = field(default_factory=list)  # a model loaded or loading at t
    busy_s: float = 0.0  # integral of util dt (wall seconds)
    observed_s: float = 0.0
    models: set[str] = field(default_factory=set)  # every model seen on it
    counters: list[tuple[float, dict[str, dict[str, float]]]] = field(default_factory=list)  # (t, per model)
    max_waiting: dict[str, int] = field(default_factory=dict)  # per model: the engine queue's peak seen


class Probe:
    def __init__(
        self, sims: list[SimProcess], view: EndpointView | None, interval_s: float, keep_every_s: float = 0.0
    ) -> None:
        """``keep_every_s``: keep the engines' counters at most this often (a long run scrapes ~10^6 times)."""
        self.sims, self.view, self.interval_s, self.keep_every_s = sims, view, interval_s, keep_every_s
        self.series = {s.name: GpuSeries() for s in sims}
        self._last: dict[str, float] = {}
        self._task: asyncio.Task | None = None
        self.t0 = time.perf_counter()

    def _one(self, sim: SimProcess) -> tuple[float, pool_pb2.Endpoint | None, float | None, dict, bool]:
        """Runs in a worker thread: GET + parse (the pool's parser)."""
        try:
            text = http_get_text(sim.metrics_url, 2.0)
            sample = parse_triton_metrics(text)
        except (OSError, ValueError):
            return time.perf_counter(), None, None, {}, False
        now = time.perf_counter()
        models = [
            pool_pb2.EndpointModel(
                name=name, version=version, state=pool_pb2.MODEL_STATE_READY,
                waiting_requests=load.waiting, active_requests=load.active,
                kv_cache_fraction=load.kv_cache_fraction, max_running_requests=load.max_running,
            )
            for (name, version), load in sorted(sample.loads.items())
        ]  # fmt: skip
        util = sample.gpus[0].utilization if sample.gpus else 0.0
        ep = pool_pb2.Endpoint(
            name=sim.name, address=sim.address, gpu_type=GPU_TYPE, gpu_count=1,
            health=pool_pb2.ENDPOINT_HEALTH_HEALTHY, models=models, gpu_utilization=util,
        )  # fmt: skip
        held = bool(sample.gpus and sample.gpus[0].memory_used_bytes > 0)
        return now, ep, util, engine_counters(text), held

    async def refresh(self, record: bool = True, keep: bool = False) -> None:
        results = await asyncio.gather(*(asyncio.to_thread(self._one, s) for s in self.sims))
        eps = []
        for sim, (now, ep, util, counters, held) in zip(self.sims, results, strict=True):
            if ep is None:
                continue
            eps.append(ep)
            last = self._last.get(sim.name)
            self._last[sim.name] = now
            s = self.series[sim.name]
            if keep or not s.counters or now - self.t0 - s.counters[-1][0] >= self.keep_every_s:
                s.counters.append((now - self.t0, counters))
            for m in ep.models:
                s.max_waiting[m.name] = max(s.max_waiting.get(m.name, 0), m.waiting_requests)
                s.models.add(m.name)
            if record and last is not None and util is not None:
                s.t.append(now - self.t0)
                s.util.append(util)
                s.held.append(held)
                s.busy_s += util * (now - last)
                s.observed_s += (now - last) if held else 0.0
        if self.view is not None and eps:
            self.view.apply(eps)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.refresh()
            except Exception as exc:  # a lost scrape must not end the run
                print(f"\nprobe: {exc!r}", file=sys.stderr)

    async def start(self, t0: float) -> None:
        """``t0``: the run's start (perf_counter), the zero of the recorded series."""
        await self.refresh(record=False, keep=True)  # the view, and the utilisation windows' first edge
        self.t0 = t0
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.refresh(keep=True)  # closes the last window and keeps the final counters

    def utilisation(self) -> dict[str, float]:
        """Per GPU: busy time / time held (a GPU never held has none)."""
        return {n: (s.busy_s / s.observed_s if s.observed_s else 0.0) for n, s in self.series.items()}
