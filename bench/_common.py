"""Shared pieces of the router benchmarks (bench/router_overhead.py, prefix_affinity.py,
overload.py): simulator subprocesses, the tritonclient stream call, percentiles, and a stand-in
for the pool's endpoint watch. The in-process Router they drive is in ``_inproc_router.py``.

Not a benchmark itself. ``PoolStandIn`` stands in for the pool: it scrapes each simulator's
/metrics every ``interval_s``, as the pool's probe does, and feeds the router's EndpointView the
same fields the pool would.
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
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness.pool.v1 import pool_pb2  # noqa: E402

from services.pool.scrape import http_get_text, parse_triton_metrics  # noqa: E402
from services.router.views import EndpointView  # noqa: E402


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


# --- a stand-in for the pool's endpoint watch ----------------------------------------------
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
