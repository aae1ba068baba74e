"""Overload: realtime + interactive + batch agents at ~3x an engine's capacity; realtime TTFT
and SLO attainment with the router's flow control vs plain FIFO.

Setup: one simulator subprocess (time scale 1) serving one model with 8 running sequences,
step 20 ms + 0.05 ms per sequence, prefill 0.02 ms/token, an engine queue of 4096 (it never
refuses), fresh for each mode. Its capacity C (requests/s) is measured first with a closed loop
of 8 streams. Then an open-loop Poisson load of --load x C requests/s for --duration seconds:
20% realtime, 30% interactive, 50% batch requests, from two agents per class, each a distinct
~50-token prompt with max_tokens 16. The router core runs in-process (Router + Dispatcher +
Scheduler + FlowController, as tests/integration/test_router_hot_path.py assembles it); a pool
stand-in feeds its endpoint view from the simulator's /metrics every --probe-interval seconds
(the pool's default probe is 0.5 s). Modes:

  fifo          every class uses the 'least-request' baseline profile, which has no
                not-saturated filter: every request goes straight to the engine's FIFO queue;
  flow control  the packaged profiles (realtime -> low-latency, batch -> throughput; their
                not-saturated filters trip at 5 / 2 waiting requests) and the default
                FlowConfig: requests wait in the router's SLO-class queues (realtime first,
                batch shed first); shown at the pool's 0.5 s probe and at a 0.1 s probe;
  (the pool publishes each engine's running limit, so between probes the scheduler's
  saturation check counts the router's own in-flight requests against it.)

Arrivals stop after --duration; requests still without a first token --drain seconds later are
cancelled and count as SLO misses (as do refused ones). TTFT is measured by the caller.

Usage: python bench/overload.py [--quick] [--duration 15] [--load 3] [--slo-ms 500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import string
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PoolStandIn, model_entry, pct, start_simulators, stop_all, stream_one, write_catalog
from _inproc_router import FakeRegistry, agent_record, build_router, scheduler_with_default
from harness.common.v1 import common_pb2

from services.common import context as reqctx
from services.common.errors import HarnessError
from services.router.core import Call, GenerationInput
from services.router.flow import FlowConfig, FlowController
from services.router.scheduling import Scheduler

MODEL, TRITON_MODEL = "chat-model", "chat-model-trtllm"
LATENCY = {"step_overhead_ms": 20.0, "decode_ms_per_token": 0.05, "prefill_ms_per_token": 0.02}
RUNNING = 8
MIX = (("realtime", common_pb2.SLO_CLASS_REALTIME, 0.2),
       ("interactive", common_pb2.SLO_CLASS_INTERACTIVE, 0.3),
       ("batch", common_pb2.SLO_CLASS_BATCH, 0.5))  # fmt: skip
CLASSES = tuple(name for name, _, _ in MIX)


def prompt(rng: random.Random, i: int) -> str:
    words = " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8))) for _ in range(48))
    return f"request {i}: {words}"


async def capacity(address: str, max_tokens: int, seconds: float) -> float:
    """Requests/s of the engine with RUNNING streams always in flight (closed loop, direct)."""
    import tritonclient.grpc.aio as tgrpc_aio

    rng = random.Random(1)
    done = 0
    async with tgrpc_aio.InferenceServerClient(address) as client:
        stop_at = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            nonlocal done
            n = 0
            while time.perf_counter() < stop_at:
                n += 1
                await stream_one(client, TRITON_MODEL, prompt(rng, w * 100000 + n), max_tokens, f"c{w}-{n}")
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(RUNNING)))
        return done / (time.perf_counter() - t0)


async def run_mode(mode: str, probe_s: float, rate: float, catalog: Path, workdir: Path, args) -> dict:
    sims = await asyncio.to_thread(
        start_simulators, catalog, [TRITON_MODEL], 1.0, workdir, 1, mode.replace(" ", "-")
    )
    agents = {f"{cls}-{k}": agent_record(f"{cls}-{k}", MODEL, slo) for cls, slo, _ in MIX for k in range(2)}
    registry = FakeRegistry(agents, MODEL, TRITON_MODEL)
    flow = FlowController(FlowConfig())
    scheduler = scheduler_with_default("least-request") if mode == "fifo" else Scheduler(seed=1)
    rt = build_router(registry, scheduler, flow, max_tokens=args.max_tokens)
    pool = PoolStandIn(rt.view, sims, TRITON_MODEL, probe_s)
    stats = {c: {"ttft": [], "ok": 0, "refused": 0, "cancelled": 0, "sent": 0} for c in CLASSES}
    rng = random.Random(42)  # the same arrivals for every mode
    tasks: list[asyncio.Task] = []
    try:
        await pool.start()

        async def one(i: int, cls: str, agent: str, text: str) -> None:
            reqctx.set_current(reqctx.new_context(reqctx.Identity(agent=agent, user=f"u{i % 50}")))
            st = stats[cls]
            st["sent"] += 1
            start = time.perf_counter()
            first = False
            try:
                async for _ in rt.router.run(Call(GenerationInput(prompt=text, max_tokens=args.max_tokens))):
                    if not first:
                        first = True
                        st["ttft"].append((time.perf_counter() - start) * 1000)
                st["ok"] += 1
            except HarnessError:
                st["refused"] += 1
            except asyncio.CancelledError:
                st["cancelled"] += 1
                raise

        t0 = time.perf_counter()
        i = 0
        next_at = 0.0
        while next_at < args.duration:
            delay = t0 + next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            cls = rng.choices(CLASSES, weights=[share for _, _, share in MIX])[0]
            tasks.append(asyncio.create_task(one(i, cls, f"{cls}-{i % 2}", prompt(rng, i))))
            i += 1
            next_at += rng.expovariate(rate)
        _, pending = await asyncio.wait(tasks, timeout=args.drain) if tasks else (set(), set())
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await pool.stop()
        await rt.close()
    finally:
        stop_all(sims)
    return {"stats": stats, "shed": flow.stats.shed_total, "sent": i}


async def main_async(args: argparse.Namespace) -> None:
    results = {}
    with tempfile.TemporaryDirectory(prefix="overload-") as tmp:
        workdir = Path(tmp)
        catalog = write_catalog(
            workdir / "catalog.yaml",
            [model_entry(TRITON_MODEL, LATENCY, running=RUNNING, queue=4096, blocks=100_000)],
        )
        sims = await asyncio.to_thread(
            start_simulators, catalog, [TRITON_MODEL], 1.0, workdir, 1, "calibrate"
        )
        try:
            cap = await capacity(sims[0].address, args.max_tokens, args.calibrate)
        finally:
            stop_all(sims)
        rate = args.load * cap
        print(
            f"  engine capacity {cap:.1f} req/s (closed loop of {RUNNING}); offered load {rate:.1f} req/s",
            flush=True,
        )
        modes = [
            ("fifo", "fifo", args.probe_interval),
            ("flow control", "flow control (probe 0.5s)", 0.5),
            ("flow control", "flow control (probe 0.1s)", 0.1),
        ]
        for mode, key, probe in modes:
            results[key] = await run_mode(mode, probe, rate, catalog, workdir, args)
            print(f"  {key}: {results[key]['sent']} requests sent", flush=True)

    print(
        f"\nOverload: one engine (8 running sequences, step 20 ms, time scale 1), capacity {cap:.1f} req/s; "
        f"Poisson arrivals at {args.load:g}x = {rate:.1f} req/s for {args.duration:g}s (20% realtime, 30% interactive, "
        f"50% batch; 2 agents per class; ~50-token prompts, max_tokens {args.max_tokens}); cancelled {args.drain:g}s "
        f"after the last arrival. Realtime SLO: TTFT <= {args.slo_ms:g} ms."
    )
    head = (
        f"{'mode':<26}{'class':<12}{'sent':>6}{'done':>6}{'refused':>8}{'cut':>5}"
        f"{'TTFT p50':>10}{'TTFT p99':>10}{'SLO met':>9}"
    )
    print(head + "\n" + "-" * len(head))
    attainment = {}
    for key, res in results.items():
        for cls in CLASSES:
            st = res["stats"][cls]
            met = sum(1 for t in st["ttft"] if t <= args.slo_ms)
            share = met / st["sent"] if st["sent"] else float("nan")
            if cls == "realtime":
                attainment[key] = (
                    share,
                    pct(st["ttft"], 99) if len(st["ttft"]) == st["sent"] else float("inf"),
                )
            print(
                f"{key if cls == 'realtime' else '':<26}{cls:<12}{st['sent']:>6}{st['ok']:>6}{st['refused']:>8}"
                f"{st['cancelled']:>5}{pct(st['ttft'], 50):>10.0f}{pct(st['ttft'], 99):>10.0f}{share:>8.0%}"
            )
    print(
        "(TTFT ms over requests that got a first token; 'SLO met' = share of all sent requests with TTFT <= "
        f"{args.slo_ms:g} ms; refused = RESOURCE_EXHAUSTED/DEADLINE_EXCEEDED (shed); cut = cancelled at the end)"
    )
    fifo = attainment["fifo"]
    shipped = attainment["flow control (probe 0.5s)"]
    ok = shipped[0] >= 0.99 and shipped[0] > fifo[0]
    print(
        f"verdict: {'PASS' if ok else 'FAIL'}: realtime SLO attainment {shipped[0]:.0%} with flow control as "
        f"shipped vs {fifo[0]:.0%} with plain FIFO (target >= 99%); realtime TTFT p99 {shipped[1]:.0f} ms vs "
        f"{fifo[1]:.0f} ms (inf = some never got a first token). Provisional: one run on a shared machine."
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter runs (for `make bench`)")
    p.add_argument("--duration", type=float, default=None, help="seconds of arrivals per mode (20; quick 10)")
    p.add_argument(
        "--drain", type=float, default=5.0, help="seconds after the last arrival before cancelling"
    )
    p.add_argument("--load", type=float, default=3.0, help="offered load as a multiple of measured capacity")
    p.add_argument("--slo-ms", type=float, default=500.0, help="realtime TTFT target")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--probe-interval", type=float, default=0.5, help="endpoint refresh for the fifo mode")
    p.add_argument("--calibrate", type=float, default=3.0, help="seconds of the capacity measurement")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 10.0 if args.quick else 20.0
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
