"""Shared pieces of the router benchmarks (bench/router_overhead.py, prefix_affinity.py,
overload.py): simulator subprocesses, the tritonclient stream call, percentiles, an in-process
Router over a small stand-in registry, and a stand-in for the pool's endpoint watch.

Not a benchmark itself. Everything here is the production code except two stand-ins:
``FakeRegistry`` (the registry mirror: one agent record per name, every policy check allowed)
and ``PoolStandIn`` (the pool: scrapes each simulator's /metrics every ``interval_s``, as the
pool's probe does, and feeds the router's EndpointView the same fields the pool would).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness.common.v1 import common_pb2  # noqa: E402
from harness.pool.v1 import pool_pb2  # noqa: E402
from harness.registry.v1 import registry_pb2  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from services.pool.scrape import http_get_text, parse_triton_metrics  # noqa: E402
from services.router.core import Call, GenerationInput, Router, RouterPolicy  # noqa: E402
from services.router.dispatch import Dispatcher  # noqa: E402
from services.router.flow import FlowController, MemoryRateLimiter  # noqa: E402
from services.router.metrics import RouterMetrics  # noqa: E402
from services.router.result_cache import MemoryResultCache  # noqa: E402
from services.router.scheduling import Scheduler  # noqa: E402
from services.router.triton import TritonPool  # noqa: E402
from services.router.views import AccessDecision, EndpointView  # noqa: E402


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# --- simulator subprocesses ----------------------------------------------------------------
def model_entry(
    name: str,
    latency: dict[str, float],
    *,
    running: int,
    queue: int,
    blocks: int,
    block_size: int = 64,
    reuse: bool = True,
) -> dict:
    return {
        "name": name, "decoupled": True, "layout": "ensemble", "memory_gb": 1, "load_time_s": 0,
        "latency": latency, "max_running_sequences": running, "max_queue_size": queue,
        "kv_block_size": block_size, "kv_capacity_blocks": blocks, "kv_cache_reuse": reuse,
    }  # fmt: skip


def write_catalog(path: Path, models: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return path


@dataclass
class SimProcess:
    name: str
    proc: subprocess.Popen
    address: str
    metrics_url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_simulators(
    catalog: Path, models: list[str], time_scale: float, workdir: Path, count: int, prefix: str = "sim"
) -> list[SimProcess]:
    """Starts ``count`` simulator processes at once (ports 0) and waits until each is ready."""
    return start_simulator_set(
        catalog, [(f"{prefix}-{i}", models) for i in range(count)], time_scale, workdir
    )


def start_simulator_set(
    catalog: Path,
    specs: list[tuple[str, list[str]]],
    time_scale: float,
    workdir: Path,
    extra_args: tuple[str, ...] = (),
    timeout_s: float = 60.0,
) -> list[SimProcess]:
    """Starts one simulator per (name, models) at once (ports 0) and waits until each is ready."""
    started = []
    for name, models in specs:
        log = workdir / f"{name}.log"
        argv = [
            sys.executable, "-m", "services.enginesim", "--host", "127.0.0.1", "--port", "0",
            "--metrics-port", "0", "--catalog", str(catalog), "--time-scale", str(time_scale),
            "--shutdown-grace", "0", "--no-preload", *extra_args, "--load", *models,
        ]  # fmt: skip
        with open(log, "wb") as out:  # a file, not a pipe: a full pipe would stall it
            proc = subprocess.Popen(
                argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        started.append((name, proc, log))
    sims: list[SimProcess] = []
    deadline = time.monotonic() + timeout_s
    for name, proc, log in started:
        while True:
            match = re.search(r"ready grpc=(\S+) metrics=(\d+)", log.read_text(errors="replace"))
            if match:
                url = f"http://127.0.0.1:{match.group(2)}/metrics"
                sims.append(SimProcess(name, proc, match.group(1), url, log))
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                for _, p, _ in started:
                    p.kill()
                raise SystemExit(
                    f"simulator {name} did not start:\n{log.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.05)
    return sims


def stop_all(sims: list[SimProcess]) -> None:
    for sim in sims:
        sim.stop()


async def scrape(sim: SimProcess) -> str:
    return await asyncio.to_thread(http_get_text, sim.metrics_url, 2.0)


def kv_metric(text: str, kind: str) -> float:
    """Sum over models of ``nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=kind}``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("nv_trt_llm_kv_cache_block_metrics{") and f'kv_cache_block_type="{kind}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- one streamed request through tritonclient.grpc.aio ------------------------------------
def build_inputs(prompt: str, max_tokens: int) -> list[tgrpc.InferInput]:
    """The TensorRT-LLM ensemble inputs (as services/router/triton.py sends them)."""
    text = tgrpc.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[prompt.encode()]], dtype=object))
    tokens = tgrpc.InferInput("max_tokens", [1, 1], "INT32")
    tokens.set_data_from_numpy(np.array([[max_tokens]], dtype=np.int32))
    stream = tgrpc.InferInput("stream", [1, 1], "BOOL")
    stream.set_data_from_numpy(np.array([[True]], dtype=bool))
    return [text, tokens, stream]


async def stream_one(
    client: tgrpc_aio.InferenceServerClient,
    model: str,
    prompt: str,
    max_tokens: int,
    request_id: str,
    headers: dict[str, str] | None = None,
) -> tuple[float, float, int]:
    """One request on its own ModelStreamInfer stream until ``triton_final_response``:
    (TTFT ms, end-to-end ms, chunks)."""
    done = asyncio.Event()

    async def requests() -> AsyncIterator[dict]:
        yield {"model_name": model, "inputs": build_inputs(prompt, max_tokens), "request_id": request_id}
        await done.wait()  # keep our side open until the last response, like the router

    start = time.perf_counter()
    ttft, chunks = 0.0, 0
    responses = client.stream_infer(requests(), stream_timeout=120, headers=headers)
    try:
        async for result, error in responses:
            if error is not None:
                raise error
            chunks += 1
            if chunks == 1:
                ttft = (time.perf_counter() - start) * 1000
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        done.set()
    return ttft, (time.perf_counter() - start) * 1000, chunks


# --- an in-process Router over a stand-in registry -----------------------------------------
@dataclass
class FakeRegistry:
    """The registry mirror's interface: agents by name, one catalog model, every check allowed."""

    agents: dict[str, registry_pb2.Agent]
    model_name: str
    triton_model: str
    context_length: int = 8192

    async def agent(self, name: str) -> registry_pb2.Agent:
        return self.agents[name]

    async def model(self, name: str) -> registry_pb2.Model:
        return registry_pb2.Model(
            name=self.model_name, triton_model=self.triton_model, context_length=self.context_length
        )

    async def user(self, name: str) -> None:
        return None  # no per-user limits in the benchmarks

    async def project_team(self, project: str) -> str:
        return ""

    async def check(self, subject: str, domain: str, obj: str, action: str) -> AccessDecision:
        return AccessDecision(True, "p, bench")


class NullEvents:
    """No audit, usage or durable call journal in the benches (the stages still run): the
    object is its own journal."""

    def journal(self, call) -> NullEvents:
        return self

    def start(self) -> None:
        pass

    progress = finish = start

    def emit_audit(self, event) -> None:
        pass

    def emit_usage(self, event) -> None:
        pass

    def check_durable(self) -> None:
        pass


def agent_record(
    name: str, model: str, slo_class: int = common_pb2.SLO_CLASS_INTERACTIVE
) -> registry_pb2.Agent:
    return registry_pb2.Agent(
        name=name,
        project="bench",
        state=common_pb2.AGENT_STATE_ONLINE,
        slo=registry_pb2.SloTargets(slo_class=slo_class),
        versions=[registry_pb2.AgentVersion(version="v1", models=[model])],
    )


def endpoint_msg(
    name: str,
    address: str,
    triton_model: str,
    waiting: int = 0,
    active: int = 0,
    kv_fraction: float = 0.0,
    max_running: int = 0,
    labels: dict[str, str] | None = None,
) -> pool_pb2.Endpoint:
    return pool_pb2.Endpoint(
        name=name,
        address=address,
        labels=labels or {},
        health=pool_pb2.ENDPOINT_HEALTH_HEALTHY,
        models=[
            pool_pb2.EndpointModel(
                name=triton_model,
                state=pool_pb2.MODEL_STATE_READY,
                waiting_requests=waiting,
                active_requests=active,
                kv_cache_fraction=kv_fraction,
                max_running_requests=max_running,
            )
        ],
    )


class PoolStandIn:
    """Feeds an EndpointView what the pool's watch stream would: each simulator's waiting and
    active requests and KV fraction, scraped from its /metrics every ``interval_s``."""

    def __init__(
        self,
        view: EndpointView,
        sims: list[SimProcess],
        triton_model: str,
        interval_s: float,
        labels: dict[str, dict[str, str]] | None = None,  # endpoint -> its pool labels
    ) -> None:
        self.view, self.sims, self.model, self.interval_s = view, sims, triton_model, interval_s
        self.labels = labels or {}
        self._task: asyncio.Task | None = None

    async def refresh(self) -> None:
        texts = await asyncio.gather(*(scrape(s) for s in self.sims), return_exceptions=True)
        eps = []
        for sim, text in zip(self.sims, texts, strict=True):
            if isinstance(text, BaseException):
                continue
            load = parse_triton_metrics(text).loads.get((self.model, "1")) or next(
                iter(parse_triton_metrics(text).loads.values()), None
            )
            labels = self.labels.get(sim.name)
            if load is None:
                eps.append(endpoint_msg(sim.name, sim.address, self.model, labels=labels))
            else:  # the figures the pool publishes
                eps.append(
                    endpoint_msg(sim.name, sim.address, self.model, load.waiting, load.active,
                                 load.kv_cache_fraction, load.max_running, labels=labels)
                )  # fmt: skip
        self.view.apply(eps)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.refresh()
            except Exception:
                pass

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@dataclass
class InProcessRouter:
    router: Router
    view: EndpointView
    flow: FlowController
    scheduler: Scheduler
    triton: TritonPool
    channel: grpc.aio.Channel
    metrics: CollectorRegistry = field(default_factory=CollectorRegistry)

    async def close(self) -> None:
        await self.triton.close()
        await self.channel.close()


def scheduler_with_default(profile: str, seed: int = 1) -> Scheduler:
    """The packaged profiles.yaml, but every request goes to ``profile`` (a baseline, or the
    packaged 'default'), whatever its SLO class or agent type."""
    raw = yaml.safe_load(Path(REPO / "services/router/scheduling/profiles.yaml").read_text())
    raw["selection"] = {"default": profile}
    return Scheduler.from_mapping(raw, seed=seed)


def build_router(
    registry: FakeRegistry, scheduler: Scheduler, flow: FlowController, *, max_tokens: int
) -> InProcessRouter:
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # unused: the view is fed by PoolStandIn/apply
    view = EndpointView(
        channel,
        on_change=flow.capacity_changed,
        own_inflight=scheduler.memory.own,  # as the router wires it
    )
    triton = TritonPool()
    metrics = CollectorRegistry()
    router = Router(
        registry, view, Dispatcher(view, scheduler, flow, triton), NullEvents(), MemoryRateLimiter(),
        MemoryResultCache(), RouterMetrics(metrics),
        RouterPolicy(default_max_tokens=max_tokens, cache_ttl_s=0.0),  # no result cache: every call dispatches
    )  # fmt: skip
    return InProcessRouter(router, view, flow, scheduler, triton, channel, metrics)


async def generate(router: Router, prompt: str, max_tokens: int, timeout_s: float | None = None) -> Call:
    """One Generate through the router core (the caller sets the request context first)."""
    call = Call(GenerationInput(prompt=prompt, max_tokens=max_tokens, timeout_s=timeout_s))
    async for _ in router.run(call):
        pass
    return call
