"""Start the engine simulator in-process for tests (the router's tests use this too).

    async with enginesim_server(time_scale=1000) as sim:
        client = tritonclient.grpc.aio.InferenceServerClient(sim.address)

or, without a context manager::

    sim = await start_enginesim(...)
    ...
    await sim.stop()

Both gRPC and metrics bind port 0 on 127.0.0.1, so tests can run in parallel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .app import RunningServer, start_server
from .config import SimulatorConfig


@dataclass(frozen=True)
class EngineSimHandle:
    address: str  # "127.0.0.1:PORT", what tritonclient and grpc channels take
    port: int  # the gRPC port (0 with protocol="openai")
    metrics_port: int  # GET http://127.0.0.1:{metrics_port}/metrics
    stop: Callable[[], Awaitable[None]]  # stops the server (in-flight requests fail at once)
    server: RunningServer  # the running server and its Simulator, for white-box assertions
    openai_url: str = ""  # "http://127.0.0.1:PORT" with protocol "openai" or "both"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


async def start_enginesim(
    *,
    catalog_path: str | Path | None = None,
    time_scale: float = 1000.0,
    gpu_memory_gb: float = 80.0,
    load: tuple[str, ...] = (),
    preload: bool = True,
    metrics: bool = True,
    protocol: str = "triton",
) -> EngineSimHandle:
    """Start a simulator on 127.0.0.1:0 and return once it is ready.

    ``time_scale`` defaults to 1000 so model loads (tens of seconds simulated) and steps take
    milliseconds; pass 1.0 for real-time behaviour. ``protocol`` "openai" or "both" also
    serves the OpenAI API (on a free port: ``openai_url``).
    """
    config = SimulatorConfig(
        host="127.0.0.1",
        port=0,
        metrics_port=0 if metrics else -1,
        catalog_path=Path(catalog_path) if catalog_path is not None else None,
        gpu_memory_gb=gpu_memory_gb,
        time_scale=time_scale,
        load=tuple(load),
        preload=preload,
        shutdown_grace_s=0.0,
        protocol=protocol,
        openai_port=0,
    )
    running = await start_server(config)

    async def stop() -> None:
        await running.stop(0.0)

    return EngineSimHandle(
        address=running.address,
        port=running.port,
        metrics_port=running.metrics_port or 0,
        stop=stop,
        server=running,
        openai_url=running.openai_url,
    )


@asynccontextmanager
async def enginesim_server(**kwargs: Any) -> AsyncIterator[EngineSimHandle]:
    """Context-manager form of :func:`start_enginesim` (same keyword arguments)."""
    handle = await start_enginesim(**kwargs)
    try:
        yield handle
    finally:
        await handle.stop()


def write_catalog(path: str | Path, models: list[dict[str, Any]]) -> Path:
    """Write a catalog YAML (e.g. tiny queues for a test) and return its path.

    Each model dict takes the fields of models.yaml; missing fields get small test defaults.
    """
    defaults: dict[str, Any] = {
        "decoupled": True,
        "layout": "ensemble",
        "memory_gb": 10,
        "load_time_s": 1,
        "latency": {"prefill_ms_per_token": 0.1, "decode_ms_per_token": 0.1, "step_overhead_ms": 5.0},
        "max_running_sequences": 8,
        "max_queue_size": 16,
        "kv_block_size": 16,
        "kv_capacity_blocks": 1024,
        "preload": True,
    }
    file = Path(path)
    file.write_text(yaml.safe_dump({"models": [{**defaults, **m} for m in models]}, sort_keys=False))
    return file
