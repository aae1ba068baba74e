"""Precise prefix routing end to end: engine simulators (real processes) publish their KV-cache
events over real ZeroMQ sockets, the router follows them (found through the endpoints' pool
labels) and routes a shared-prefix request to the engine that holds the prefix, though the router
never sent that prefix anywhere itself; when the engine evicts the blocks, the router stops
preferring it. And the router's hashes of a prompt are the simulator's own cache keys."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
import yaml
from harness.pool.v1 import pool_pb2
from prometheus_client import CollectorRegistry

from services.common import context as reqctx
from services.common.kv_blocks import external_hash, sim_token_ids
from services.common.kv_events_wire import AllBlocksCleared
from services.enginesim.app import start_server
from services.enginesim.config import SimulatorConfig
from services.router.core import Call, GenerationInput, Router, RouterPolicy
from services.router.dispatch import Dispatcher
from services.router.flow import FlowConfig, FlowController, MemoryRateLimiter
from services.router.kv_events import EVENTS_LABEL, REPLAY_LABEL, KvEventFollower
from services.router.kv_events_metrics import register_kv_event_metrics
from services.router.metrics import RouterMetrics
from services.router.result_cache import MemoryResultCache
from services.router.scheduling import Scheduler, SchedulingRequest
from services.router.triton import TritonPool, TritonRequest
from services.router.views import EndpointView
from tests.helpers.polling import until
from tests.helpers.router_fakes import TRITON_MODEL, Events, FakeRegistry, agent

REPO = Path(__file__).resolve().parents[2]
BLOCK = 16
PREFIX = "Shared context of the billing team, read it carefully before answering. " * 12


def catalog(path: Path) -> Path:
    model = {
        "name": TRITON_MODEL, "decoupled": True, "layout": "ensemble", "memory_gb": 1, "load_time_s": 0,
        "latency": {"step_overhead_ms": 1.0, "decode_ms_per_token": 0.01, "prefill_ms_per_token": 0.01},
        "max_running_sequences": 8, "max_queue_size": 64, "kv_block_size": BLOCK,
        "kv_capacity_blocks": 40, "kv_cache_reuse": True,
    }  # fmt: skip
    path.write_text(yaml.safe_dump({"models": [model]}))
    return path


def start_sim(name: str, catalog_path: Path, log: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    argv = [
        sys.executable, "-m", "services.enginesim", "--port", "0", "--metrics-port", "-1",
        "--catalog", str(catalog_path), "--time-scale", "50", "--no-preload", "--load", TRITON_MODEL,
        "--shutdown-grace", "0", "--kv-events-port", "0", "--kv-events-replay-port", "0",
        "--kv-events-pod", name,
    ]  # fmt: skip
    out = open(log, "wb")
    proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = re.search(r"ready grpc=(\S+) .* kv-events=(\S+) kv-replay=(\S+)", log.read_text(errors="replace"))
        if m:
            return proc, {"address": m.group(1), EVENTS_LABEL: m.group(2), REPLAY_LABEL: m.group(3)}
        assert proc.poll() is None, log.read_text(errors="replace")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"simulator {name} did not start: {log.read_text(errors='replace')}")


async def followed(
    follower: KvEventFollower, endpoint: str, publish: Callable[[int], Awaitable[None]]
) -> None:
    """Waits (10 s at most) until the router's subscriber for ``endpoint`` has taken in a batch,
    having the engine publish one after another meanwhile: a SUB socket receives only what is
    published after its subscription reaches the publisher (ZeroMQ's slow joiner), so waiting
    for one batch to arrive is the readiness signal; the batches before it come from the replay
    socket. Fails if none arrives."""
    sub = follower.subscriber(endpoint)
    assert sub is not None, f"the router follows no KV events of {endpoint}"
    deadline = time.monotonic() + 10
    attempt = 0
    while sub.batches == 0:
        assert time.monotonic() < deadline, f"{endpoint}: no KV event reached the router within 10 s"
        await publish(attempt)
        attempt += 1
        published = time.monotonic()
        while sub.batches == 0 and time.monotonic() - published < 0.2:
            await asyncio.sleep(0.01)


@pytest.fixture
async def fleet(tmp_path):
    cat = catalog(tmp_path / "catalog.yaml")
    procs, endpoints = [], []
    try:
        for i in range(2):
            proc, info = await asyncio.to_thread(start_sim, f"sim-{i}", cat, tmp_path / f"sim-{i}.log")
            procs.append(proc)
            labels = {EVENTS_LABEL: info[EVENTS_LABEL], REPLAY_LABEL: info[REPLAY_LABEL]}
            endpoints.append(
                pool_pb2.Endpoint(
                    name=f"sim-{i}",
                    address=info["address"],
                    labels=labels,
                    health=pool_pb2.ENDPOINT_HEALTH_HEALTHY,
                    models=[pool_pb2.EndpointModel(name=TRITON_MODEL, state=pool_pb2.MODEL_STATE_READY)],
                )
            )
        yield endpoints
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def test_the_router_routes_by_what_engines_announce_they_hold(fleet):
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # the view is fed directly, as by the pool
    flow = FlowController(FlowConfig(initial_grant_interval_s=0.0))
    scheduler = Scheduler(seed=3)
    follower = KvEventFollower(scheduler.memory.engine_blocks)
    view = EndpointView(
        channel, on_change=lambda: follower.sync(view.kv_event_sources(EVENTS_LABEL, REPLAY_LABEL))
    )
    view.apply(fleet)  # as the pool's watch stream delivers them; the follower subscribes
    triton = TritonPool()
    router = Router(
        FakeRegistry(agent()), view, Dispatcher(view, scheduler, flow, triton), Events(), MemoryRateLimiter(),
        MemoryResultCache(), RouterMetrics(CollectorRegistry()), RouterPolicy(default_max_tokens=4, redaction_key="k"),
    )  # fmt: skip
    blocks = scheduler.memory.engine_blocks
    holder = fleet[1]

    async def generate(prompt: str) -> None:  # on sim-1, behind the router's back
        request = TritonRequest(model=TRITON_MODEL, prompt=prompt, max_tokens=2)
        async for _ in triton.stream(holder.address, request, 30):
            pass

    try:
        # Each probe stores a block or two of its own, unrelated to the prefix.
        await followed(
            follower, "sim-1", lambda n: generate(f"Readiness probe {n} of the event stream. " * 3)
        )
        # Warm sim-1's cache: the router has no record of it.
        await generate(PREFIX + "first question?")
        warmed = scheduler.memory.engine_block_hashes(SchedulingRequest(TRITON_MODEL, prompt=PREFIX), BLOCK)
        await until(
            lambda: (e := blocks.live("sim-1", TRITON_MODEL)) and e.matched(warmed) == len(warmed) > 0
        )
        assert blocks.live("sim-0", TRITON_MODEL) is None  # sim-0 announced nothing yet
        assert scheduler.memory.prefix.size("sim-1") == 0

        reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="a1", user="alice")))
        for user in range(3):
            call = Call(GenerationInput(prompt=PREFIX + f"question from user {user}?", max_tokens=2))
            async for _ in router.run(call):
                pass
            assert call.deployment.endswith("sim-1"), call.deployment

        # Fill sim-1's small cache with other prompts: it evicts the prefix and says so.
        for i in range(6):
            await generate(f"Unrelated document {i} " * 40)
        req = SchedulingRequest(TRITON_MODEL, prompt=PREFIX + "late question?")
        entry = blocks.live("sim-1", TRITON_MODEL)
        await until(lambda: entry.matched(scheduler.memory.engine_block_hashes(req, BLOCK)) == 0)
        assert entry.removed > 0 and follower.subscriber("sim-1").resyncs == 0
        scraped = CollectorRegistry()
        register_kv_event_metrics(scraped, follower)
        sample = scraped.get_sample_value
        assert sample("harness_router_kv_events_batches_total", {"endpoint": "sim-1"}) >= 4
        assert (
            sample("harness_router_kv_events_gaps_total", {"endpoint": "sim-1", "outcome": "resynced"}) == 0
        )
        assert sample("harness_router_kv_events_blocks", {"endpoint": "sim-1"}) == len(entry.blocks) > 0
    finally:
        await follower.close()
        await triton.close()
        await channel.close()


async def test_the_routers_hashes_are_the_simulators_cache_keys():
    config = SimulatorConfig(
        port=0, metrics_port=-1, time_scale=200, load=(TRITON_MODEL,), preload=False, shutdown_grace_s=0,
        kv_events_port=0, kv_events_replay_port=0, kv_events_pod="sim", kv_events_format="array",
    )  # fmt: skip
    running = await start_server(config)
    scheduler = Scheduler()
    follower = KvEventFollower(scheduler.memory.engine_blocks)
    triton = TritonPool()
    try:
        follower.sync({"sim": (running.kv_events.endpoint, running.kv_events.replay_endpoint)})

        async def clear(_: int) -> None:  # true of the engine's cache, empty so far
            running.kv_events.publish(TRITON_MODEL, [AllBlocksCleared()])

        await followed(follower, "sim", clear)
        prompt = (
            PREFIX * 4 + "what changed in the ledger policy this quarter?"
        )  # the catalog's 64-token blocks
        async for _ in triton.stream(
            running.address, TritonRequest(model=TRITON_MODEL, prompt=prompt, max_tokens=3), 30
        ):
            pass
        blocks = scheduler.memory.engine_blocks
        await until(lambda: blocks.live("sim", TRITON_MODEL) is not None)
        entry = blocks.live("sim", TRITON_MODEL)
        engine = running.sim.engines()[TRITON_MODEL]
        router_hashes = scheduler.memory.engine_block_hashes(
            SchedulingRequest(TRITON_MODEL, prompt=prompt), entry.block_size
        )
        cache_keys = {external_hash(h) for h in engine.kv_cache._refs}
        assert entry.block_size == engine.spec.kv_block_size
        assert len(router_hashes) == len(sim_token_ids(prompt)) // entry.block_size >= 8
        assert set(router_hashes) == cache_keys == set(entry.blocks)
    finally:
        await follower.close()
        await triton.close()
        await running.stop(0)
