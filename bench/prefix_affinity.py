"""Prefix affinity: a shared-prefix workload (many users on a few long system prompts) over 4
simulator endpoints, routed by the router core (in-process Router + Dispatcher + Scheduler, as
in tests/integration/test_router_hot_path.py) with the 'default' profile vs the 'round-robin'
and 'least-request' baselines.

Setup: 4 simulator subprocesses, fresh for each policy (cold KV caches). Each serves one model
whose prefill is costly (0.1 ms per prompt token, step 10 ms + 0.05 ms per sequence: a
large-model profile), with kv_cache_reuse on and a KV pool of --kv-blocks blocks of 64 tokens,
so one endpoint holds only some of the system prompts at once. The workload: --prefixes system
prompts of --prefix-tokens tokens, each request one of them (random, the same sequence for every
policy) plus a short user question; a closed loop of --concurrency users sends --requests
requests with max_tokens --max-tokens. The endpoint view is refreshed from the simulators'
/metrics every 0.5 s (the pool's probe interval); the scheduler also counts its own in-flight
requests. TTFT is measured by the router (request start to first token) in wall-clock ms at
simulator time scale --time-scale (multiply by it for simulated engine time). KV reuse is the
simulators' cumulative reused prompt blocks (nv_trt_llm_kv_cache_block_metrics{reused}) as a
share of all full prompt blocks sent.

Usage: python bench/prefix_affinity.py [--quick] [--requests 1200] [--concurrency 16]
       [--prefixes 8] [--prefix-tokens 1500] [--kv-blocks 128] [--time-scale 10]
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

from _common import (
    FakeRegistry,
    PoolStandIn,
    agent_record,
    build_router,
    generate,
    kv_metric,
    model_entry,
    pct,
    scheduler_with_default,
    scrape,
    start_simulators,
    stop_all,
    write_catalog,
)

from services.common import context as reqctx
from services.enginesim.text import count_tokens
from services.router.flow import FlowConfig, FlowController

MODEL, TRITON_MODEL = "big-model", "big-model-trtllm"
LATENCY = {"step_overhead_ms": 10.0, "decode_ms_per_token": 0.05, "prefill_ms_per_token": 0.1}
BLOCK = 64
POLICIES = ("default", "round-robin", "least-request")


def words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8))) for _ in range(n))


def workload(args: argparse.Namespace) -> list[tuple[int, str, str]]:
    """(user, prompt, system prompt id) per request, the same for every policy."""
    rng = random.Random(7)
    systems = [
        f"System prompt {i}: you are assistant {i}. " + words(rng, args.prefix_tokens - 7)
        for i in range(args.prefixes)
    ]
    out = []
    for _ in range(args.requests):
        s = rng.randrange(args.prefixes)
        user = rng.randrange(1000)
        out.append((user, f"{systems[s]}\nUser {user} asks: {words(rng, rng.randint(10, 30))}?", f"s{s}"))
    return out


async def run_policy(policy: str, reqs, catalog: Path, workdir: Path, args: argparse.Namespace) -> dict:
    sims = await asyncio.to_thread(
        start_simulators, catalog, [TRITON_MODEL], args.time_scale, workdir, 4, policy
    )
    try:
        registry = FakeRegistry({"chat": agent_record("chat", MODEL)}, MODEL, TRITON_MODEL)
        flow = FlowController(FlowConfig(initial_grant_interval_s=0.0))
        rt = build_router(registry, scheduler_with_default(policy), flow, max_tokens=args.max_tokens)
        pool = PoolStandIn(rt.view, sims, TRITON_MODEL, 0.5)
        await pool.start()
        ttfts: list[float] = []
        served: dict[str, dict[str, int]] = {}
        queue = iter(reqs)

        async def user_loop() -> None:
            for user, prompt, sys_id in queue:
                reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="chat", user=f"u{user}")))
                result = await generate(rt.router, prompt, args.max_tokens, timeout_s=60)
                ttfts.append(result.ttft_ms)
                ep = result.deployment.rsplit("@", 1)[-1]
                served.setdefault(sys_id, {}).setdefault(ep, 0)
                served[sys_id][ep] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(user_loop() for _ in range(args.concurrency)))
        wall = time.perf_counter() - t0
        texts = await asyncio.gather(*(scrape(s) for s in sims))
        await pool.stop()
        await rt.close()
    finally:
        stop_all(sims)
    reused = sum(kv_metric(t, "reused") for t in texts)
    # endpoints per system prompt: how spread out each prefix got
    spread = sum(len(v) for v in served.values()) / max(1, len(served))
    return {"ttft": ttfts, "wall": wall, "reused": reused, "spread": spread}


async def main_async(args: argparse.Namespace) -> None:
    reqs = workload(args)
    prompt_blocks = sum(count_tokens(p) // BLOCK for _, p, _ in reqs)
    results = {}
    with tempfile.TemporaryDirectory(prefix="prefix-affinity-") as tmp:
        workdir = Path(tmp)
        catalog = write_catalog(
            workdir / "catalog.yaml",
            [
                model_entry(
                    TRITON_MODEL, LATENCY, running=8, queue=1024, blocks=args.kv_blocks, block_size=BLOCK
                )
            ],
        )
        for policy in POLICIES:
            results[policy] = await run_policy(policy, reqs, catalog, workdir, args)
            print(f"  {policy}: {len(reqs)} requests in {results[policy]['wall']:.1f}s", flush=True)

    per_prefix = args.prefix_tokens // BLOCK
    print(
        f"\nPrefix affinity: {args.requests} requests, {args.concurrency} concurrent users, {args.prefixes} system "
        f"prompts of ~{args.prefix_tokens} tokens (+10-30-token questions), max_tokens {args.max_tokens}; 4 simulator "
        f"endpoints, each with {args.kv_blocks} KV blocks of {BLOCK} tokens (~{args.kv_blocks // per_prefix} prompts "
        f"fit), prefill 0.1 ms/token, step 10 ms, time scale {args.time_scale:g}"
    )
    head = f"{'policy':<15}{'TTFT p50':>10}{'TTFT p90':>10}{'TTFT p99':>10}{'KV reused':>11}{'reuse %':>9}{'eps/prefix':>12}{'wall s':>8}"
    print(head + "\n" + "-" * len(head))
    for policy, r in results.items():
        print(
            f"{policy:<15}{pct(r['ttft'], 50):>10.1f}{pct(r['ttft'], 90):>10.1f}{pct(r['ttft'], 99):>10.1f}"
            f"{r['reused']:>11.0f}{100 * r['reused'] / prompt_blocks:>8.0f}%{r['spread']:>12.1f}{r['wall']:>8.1f}"
        )
    print(
        f"(TTFT in wall-clock ms at time scale {args.time_scale:g}, measured by the router; KV reused = prompt "
        f"blocks served from the simulators' caches, of {prompt_blocks} full prompt blocks sent; eps/prefix = "
        "endpoints each system prompt was served by)"
    )
    d = results["default"]
    best_base = min((p for p in POLICIES if p != "default"), key=lambda p: pct(results[p]["ttft"], 50))
    b = results[best_base]
    better = pct(d["ttft"], 50) < pct(b["ttft"], 50) and pct(d["ttft"], 90) <= pct(b["ttft"], 90)
    print(
        f"verdict: {'PASS' if better else 'FAIL'}: default profile TTFT p50 {pct(d['ttft'], 50):.1f} ms / p90 "
        f"{pct(d['ttft'], 90):.1f} ms vs best baseline ({best_base}) {pct(b['ttft'], 50):.1f} / "
        f"{pct(b['ttft'], 90):.1f} ms ({pct(b['ttft'], 50) / pct(d['ttft'], 50):.1f}x at p50); KV reuse "
        f"{100 * d['reused'] / prompt_blocks:.0f}% vs {100 * b['reused'] / prompt_blocks:.0f}%. "
        "Provisional: one run on a shared machine."
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer requests (for `make bench`)")
    p.add_argument("--requests", type=int, default=None, help="requests per policy (1200; quick 400)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--prefixes", type=int, default=8)
    p.add_argument("--prefix-tokens", type=int, default=1500)
    p.add_argument("--kv-blocks", type=int, default=128, help="KV cache blocks per endpoint")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--time-scale", type=float, default=10.0)
    args = p.parse_args(argv)
    if args.requests is None:
        args.requests = 400 if args.quick else 1200
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
