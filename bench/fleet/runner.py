"""Runs one set-up: its simulated GPUs, an in-process router core, the schedule, a live line.

The router core is the production code (Router + Dispatcher + Scheduler + FlowController, as
bench/_inproc_router.build_router assembles it) over a stand-in registry that knows the ten agents and
the catalog models. Static's endpoint view is fed by the Probe (probe.py); the harness's by
the production pool running in this process (pooled.py), whose scaling loop acts during the run.

  static   every agent pinned to its own deployment (a per-agent Triton model name on its own
           GPU); the 'round-robin' baseline profile for every request. It has no not-saturated
           filter, so flow control never engages: requests queue in the engine (and fail when
           its queue is full).
  harness  shared deployments the pool places and scales; the packaged profiles.yaml as the
           router ships it (realtime -> low-latency, batch -> throughput, RAG -> prefix-heavy,
           else default) and flow control by SLO class.

Every wall-clock setting of the router is divided by the time scale so it means the same in
engine time: the flow-control class waits (realtime 2 s, interactive 15 s, batch 120 s), the
pool's probe interval and scaling windows (pooled.py) and the callers' deadlines
(workload.DEADLINE_MS).

A request's outcome: ok; shed (RESOURCE_EXHAUSTED: flow control refused or evicted it, or it
waited its class's maximum); timeout (its deadline passed: DEADLINE_EXCEEDED or the caller gave
up); failed (any other error, e.g. the engine's queue was full); cut (still running when the
drain after the last arrival ended).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.registry.v1 import registry_pb2

from bench._common import pct, stop_all
from bench._inproc_router import FakeRegistry, agent_record, build_router, scheduler_with_default
from services.common import context as reqctx
from services.common.errors import DeadlineExceeded, HarnessError, ResourceExhausted
from services.router.activation import Activator
from services.router.core import Call, GenerationInput
from services.router.flow import ClassBounds, FlowConfig, FlowController, FlowStats
from services.router.scheduling import Scheduler

from .plan import FleetPlan
from .pooled import ACTIVATION_WAIT_S, PooledFleet
from .probe import GpuSeries, Probe, start_gpus
from .workload import AGENTS, DAY_HOURS, DAY_START_H, DAYS, DEADLINE_MS, SLO_PROTO, Request

RECORD_S = 1.0  # wall seconds between the harness's utilisation records
STATIC_PROBE_S = 1.0  # wall seconds


@dataclass
class Record:
    agent: str
    slo: str
    day: int
    hour: float
    outcome: str
    ttft_ms: float  # engine ms (wall x time scale); 0 = no first token
    e2e_ms: float
    queue_ms: float
    gpu: str
    input_tokens: int
    output_tokens: int


@dataclass
class SetupResult:
    plan: FleetPlan
    time_scale: float
    day_s: float
    records: list[Record]
    series: dict[str, GpuSeries]
    util: dict[str, float]
    run_wall_s: float  # from the first arrival to the end of the drain
    flow: FlowStats | None = None
    wall_total_s: float = 0.0  # including start-up and shut-down
    loop_lag_ms: list[float] | None = None  # the router process's event-loop lag (wall ms)
    # harness: the pool's scaling events (wall s since the start, model, before, after, reason, error)
    events: list[tuple[float, str, int, int, str, str]] | None = None
    warmup_s: float = 0.0  # harness: the agents' warm-up loads before the run


class FleetRegistry(FakeRegistry):
    """The bench registry: the ten agents and the catalog models they pin, every check allowed."""

    def __init__(self, agents: dict[str, registry_pb2.Agent], models: dict[str, str]) -> None:
        super().__init__(agents, "", "")
        self.models = models  # catalog name -> Triton model

    async def model(self, name: str) -> registry_pb2.Model:
        return registry_pb2.Model(
            name=name, triton_model=self.models[name], context_length=self.context_length
        )


def scaled_flow(time_scale: float) -> FlowConfig:
    d = FlowConfig()
    return FlowConfig(
        realtime=ClassBounds(d.realtime.max_queue, d.realtime.max_wait_s / time_scale),
        interactive=ClassBounds(d.interactive.max_queue, d.interactive.max_wait_s / time_scale),
        batch=ClassBounds(d.batch.max_queue, d.batch.max_wait_s / time_scale),
        max_total=d.max_total,
    )


class Progress:
    """One live line on stderr, rewritten in place."""

    def __init__(self, label: str, total: int, horizon_s: float, day_s: float) -> None:
        self.label, self.total, self.horizon_s, self.day_s = label, total, horizon_s, day_s
        self.tty = sys.stderr.isatty()
        self._last_plain = -1

    def show(
        self, t: float, sent: int, done: list[Record], inflight: int, util: float, final: bool = False
    ) -> None:
        frac = min(1.0, t / self.horizon_s)
        day = min(len(DAYS) - 1, int(t // self.day_s))
        hour = DAY_START_H + DAY_HOURS * min(1.0, (t - day * self.day_s) / self.day_s)
        rt = [r.ttft_ms for r in done[-4000:] if r.slo == "realtime" and r.ttft_ms][-200:]
        bar = "#" * int(frac * 20) + "." * (20 - int(frac * 20))
        line = (
            f"{self.label:<8}[{bar}] {frac:4.0%} t={t:4.0f}s {DAYS[day]:<9} {int(hour):02d}:{int(hour % 1 * 60):02d}"
            f"  {sent:>5,}/{self.total:,} sent {len(done):>5,} done {inflight:>3} in flight"
            f"  realtime p99 {pct(rt, 99):5.0f} ms  GPU util {util:4.0%}"
        )
        if self.tty:
            print("\r" + line, end="\n" if final else "", file=sys.stderr, flush=True)
        elif final or int(frac * 10) != self._last_plain:  # a log file gets one line per 10%
            self._last_plain = int(frac * 10)
            print(line, file=sys.stderr, flush=True)


async def run_setup(
    plan: FleetPlan, schedule: list[Request], catalog: Path, workdir: Path, args
) -> SetupResult:
    started = time.perf_counter()
    scale = args.time_scale
    logs = workdir / plan.setup
    logs.mkdir(parents=True, exist_ok=True)
    print(f"{plan.setup}: starting {len(plan.gpus)} simulated GPUs ...", file=sys.stderr, flush=True)
    sims = await asyncio.to_thread(start_gpus, catalog, plan.gpus, scale, logs)
    fleet: PooledFleet | None = None
    try:
        agents = {}
        for a in AGENTS:
            rec = agent_record(a.name, plan.agent_model[a.name][0], SLO_PROTO[a.slo])
            rec.type = a.agent_type
            agents[a.name] = rec
        registry = FleetRegistry(agents, dict(plan.agent_model.values()))
        flow = FlowController(scaled_flow(scale))
        scheduler = scheduler_with_default("round-robin") if plan.setup == "static" else Scheduler(seed=1)
        rt = build_router(registry, scheduler, flow, max_tokens=256)
        # The harness routes on the pool's figures (its own probes, pooled.py); this probe only
        # records, once a wall second. Static round-robin ignores figures, so its (10) GPUs are
        # read once a wall second, for utilisation only.
        if plan.setup == "harness":
            fleet = PooledFleet(sims, rt.view, scale, args.day_s, args.max_replicas, args.scale_to_zero)
            if args.scale_to_zero:  # the router holds requests for the 70B while the pool wakes it
                wait_s = ACTIVATION_WAIT_S / scale
                rt.router.dispatcher.activator = Activator(rt.view, fleet.activate, wait_s)
            warmup = await fleet.start()
            print(f"harness: agents online, the pool loaded their models in {warmup:.1f} s", file=sys.stderr)
        view = None if fleet else rt.view
        interval = RECORD_S if fleet else STATIC_PROBE_S
        probe = Probe(sims, view, interval, keep_every_s=args.day_s / 240)  # 3 simulated minutes
        records: list[Record] = []
        horizon = len(DAYS) * args.day_s
        progress = Progress(plan.setup, len(schedule), horizon, args.day_s)

        async def one(i: int, req: Request) -> None:
            reqctx.set_current(reqctx.new_context(reqctx.Identity(agent=req.agent, user=f"user-{i % 97}")))
            outcome = "ok"
            deadline = DEADLINE_MS[req.slo] / 1000 / scale
            result = Call(GenerationInput(prompt=req.prompt, max_tokens=req.max_tokens, timeout_s=deadline))
            try:
                async with asyncio.timeout(deadline):
                    async for _ in rt.router.run(result):
                        pass
            except ResourceExhausted:
                outcome = "shed"
            except (DeadlineExceeded, TimeoutError):
                outcome = "timeout"
            except HarnessError:
                outcome = "failed"
            except asyncio.CancelledError:
                outcome = "cut"
                raise
            except Exception as exc:  # a bug, not a refusal: counted, and said once
                outcome = "failed"
                if not bugs:
                    print(f"\nrequest failed unexpectedly: {exc!r}", file=sys.stderr)
                bugs.append(exc)
            finally:
                gpu = result.deployment.rsplit("@", 1)[-1] if result.deployment else ""
                records.append(
                    Record(
                        req.agent, req.slo, req.day, req.hour, outcome, result.ttft_ms * scale,
                        result.e2e_ms * scale, result.queue_ms * scale, gpu, result.input_tokens,
                        result.output_tokens,
                    )
                )  # fmt: skip

        bugs: list[Exception] = []
        t0 = time.perf_counter()
        if fleet:
            fleet.mark_start()
        await probe.start(t0)
        tasks: set[asyncio.Task] = set()
        sent = 0

        async def show() -> None:
            while True:
                last = [s.util[-1] for s in probe.series.values() if s.util]
                util = sum(last) / len(last) if last else 0.0
                progress.show(time.perf_counter() - t0, sent, records, len(tasks), util)
                await asyncio.sleep(0.5)

        lags: list[float] = []

        async def lag() -> None:  # how late a 20 ms timer fires: CPU starvation of this process
            while True:
                before = time.perf_counter()
                await asyncio.sleep(0.02)
                lags.append((time.perf_counter() - before - 0.02) * 1000)

        shower, lagger = asyncio.create_task(show()), asyncio.create_task(lag())
        for i, req in enumerate(schedule):
            delay = t0 + req.at_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(i, req))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        wait_until = max(horizon, time.perf_counter() - t0) + args.drain_s
        while tasks and time.perf_counter() - t0 < wait_until:
            await asyncio.wait(set(tasks), timeout=0.2)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        run_wall = time.perf_counter() - t0
        await probe.stop()
        shower.cancel()
        lagger.cancel()
        await asyncio.gather(shower, lagger, return_exceptions=True)
        last = [s.util[-1] for s in probe.series.values() if s.util]
        progress.show(run_wall, sent, records, 0, sum(last) / max(1, len(last)), final=True)
        events = fleet.events() if fleet else None
        await rt.close()
    finally:
        if fleet:
            await fleet.stop()
        stop_all(sims)
    return SetupResult(
        plan, scale, args.day_s, records, probe.series, probe.utilisation(), run_wall,
        flow.stats if plan.setup != "static" else None, time.perf_counter() - started, lags, events,
        warmup if fleet else 0.0,
    )  # fmt: skip
