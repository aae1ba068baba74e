"""Prefix affinity at llm-d's shared-prefix workload, scaled to this machine: many groups of users
share long system prompts, the groups' prefixes are ~6x one endpoint's KV cache and ~70% of the
cluster's, and Poisson load ramps from light to past saturation. Five routing policies, each on
fresh simulators (cold caches), the same request schedule for all:

- precise: the packaged 'default' profile, whose precise-prefix-cache scorer reads what each
  engine's KV events (vLLM's ZeroMQ stream, followed by the router) say it holds;
- approximate: the same profile with the approximate prefix-cache scorer (the router's own
  record of where prompts went), i.e. the 'approximate-prefix' profile;
- least-request, round-robin, random: the baselines.

llm-d's published run (8 vLLM replicas): 150 groups x 5 users, 6,000-token shared prefixes +
1,200-token unique suffixes, prefixes ~6x one replica's KV capacity and ~73% of the cluster's.
Here (defaults; every one is a flag): 8 simulator endpoints; --groups 150 groups of --users 5, a
--prefix-tokens 512-token shared prefix (8 blocks of 64 tokens) + a --suffix-tokens 128-token
unique suffix per request, --max-tokens 16 output tokens; --kv-blocks 200 blocks per endpoint,
so the prefixes (150 x 8 = 1,200 blocks) are 6.0x one endpoint's cache and 75% of the cluster's
(1,600), and one endpoint's cache holds ~20 whole requests, as one of llm-d's replicas does. Token
counts are 1/12 of llm-d's; the groups, users and ratios are llm-d's. Engine: step 5 ms + 0.05 ms
per sequence + 1.2 ms per prefilled prompt token, at most 8 running sequences: 12x the per-token
prefill cost of a large model (~0.1 ms) for 1/12 of the tokens keeps a request's prefill where
llm-d's is (a whole 640-token prompt ~0.8 s, ~0.15 s when its prefix is cached). Time scale
--time-scale 1 (real time). Load: Poisson arrivals at --rates requests/s, --step-s seconds each,
ramped on the same engines (caches carry over, as in llm-d's ramp); a request not finished
--drain-s after its step ends is cut and counted. Default: 120 s at 4 req/s (the caches fill),
then 120 s at 18 req/s, the step the bars are read at. The baselines saturate near 11 req/s
(~173 output tokens/s), and at 16 req/s precise serves the whole offered load (256 tokens/s),
so no routing could reach 1.5x random's tokens/s there; short steps let the baselines' queues
grow only as long as the step lasts. `--rates 4,8,12,16,20 --step-s 20` is the ramp.

Reported per policy and step: completed/sent, TTFT p50/p90 (router-measured, wall ms; a cut
request counts at its age when cut), output tokens/s (tokens of the requests that finished within
the step, over the step's length: what the cluster delivered while the load lasted), and KV
reuse (prompt blocks the simulators served from cache, of all full prompt blocks of the step's
requests, from nv_trt_llm_kv_cache_block_metrics).

With --routers N the requests take turns over N router replicas, each with its own memory of
where prompts went (what the approximate scorer knows) and, for precise, its own subscribers.

Usage: python bench/prefix_affinity.py [--quick] [--rates 4,18] [--step-s 120] [--routers 1] ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PoolStandIn,
    kv_metric,
    model_entry,
    pct,
    scrape,
    start_simulator_set,
    stop_all,
    write_catalog,
)
from _inproc_router import FakeRegistry, agent_record, build_router, generate, scheduler_with_default

from services.common import context as reqctx
from services.enginesim.text import count_tokens
from services.router.flow import FlowConfig, FlowController
from services.router.kv_events import EVENTS_LABEL, REPLAY_LABEL, KvEventFollower

MODEL, TRITON_MODEL = "big-model", "big-model-trtllm"
LATENCY = {"step_overhead_ms": 5.0, "decode_ms_per_token": 0.05, "prefill_ms_per_token": 1.2}
BLOCK = 64
ENDPOINTS = 8
POLICIES = {  # name -> profile
    "precise": "default",
    "approximate": "approximate-prefix",
    "least-request": "least-request",
    "round-robin": "round-robin",
    "random": "random",
}


def words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 8))) for _ in range(n))


def schedule(args: argparse.Namespace) -> list[tuple[int, float, str]]:
    """(step, arrival offset s, prompt) for every request, the same for every policy."""
    rng = random.Random(11)
    prefixes = [
        f"Group {g} shared context. " + words(rng, args.prefix_tokens - 4) for g in range(args.groups)
    ]
    out = []
    t = 0.0
    for step, rate in enumerate(args.rates):
        end = t + args.step_s
        t += rng.expovariate(rate)
        while t < end:
            group, user = rng.randrange(args.groups), rng.randrange(args.users)
            suffix = f"\nUser {user} of group {group}: " + words(rng, args.suffix_tokens - 6)
            out.append((step, t, prefixes[group] + suffix))
            t += rng.expovariate(rate)
        t = end
    return out


def kv_addresses(sims) -> dict[str, dict[str, str]]:
    """Each simulator's KV event addresses, from its ready line, as pool labels."""
    out = {}
    for sim in sims:
        m = re.search(r"kv-events=(\S+) kv-replay=(\S+)", sim.log.read_text(errors="replace"))
        if m:
            out[sim.name] = {EVENTS_LABEL: m.group(1), REPLAY_LABEL: m.group(2)}
    return out


async def run_policy(policy: str, reqs, catalog: Path, workdir: Path, args) -> list[dict]:
    kv_args = ("--kv-events-port", "0", "--kv-events-replay-port", "0")
    specs = [(f"{policy}-{i}", [TRITON_MODEL]) for i in range(ENDPOINTS)]
    sims = await asyncio.to_thread(start_simulator_set, catalog, specs, args.time_scale, workdir, kv_args)
    routers, pools, followers = [], [], []
    try:
        registry = FakeRegistry({"chat": agent_record("chat", MODEL)}, MODEL, TRITON_MODEL)
        labels = kv_addresses(sims) if policy == "precise" else {}
        for _ in range(args.routers):  # each router: its own scheduler memory, pool view and followers
            flow = FlowController(FlowConfig(initial_grant_interval_s=0.0))
            rt = build_router(
                registry, scheduler_with_default(POLICIES[policy]), flow, max_tokens=args.max_tokens
            )
            routers.append(rt)
            pools.append(PoolStandIn(rt.view, sims, TRITON_MODEL, 0.5, labels))
            await pools[-1].start()
            if policy == "precise":  # as the router does on each pool change (services/router/__main__.py)
                followers.append(KvEventFollower(rt.scheduler.memory.engine_blocks))
                followers[-1].sync(rt.view.kv_event_sources(EVENTS_LABEL, REPLAY_LABEL))
        await asyncio.sleep(0.5)  # let the SUB sockets connect before the first events
        steps = []
        for step in range(len(args.rates)):
            steps.append(await run_step(routers, sims, [r for r in reqs if r[0] == step], step, args))
            print(f"  {policy} step {step + 1}: {steps[-1]['done']}/{steps[-1]['sent']} done", flush=True)
        for pool, rt in zip(pools, routers, strict=True):
            await pool.stop()
            await rt.close()
    finally:
        for follower in followers:
            await follower.close()
        stop_all(sims)
    return steps


async def run_step(routers, sims, reqs, step: int, args) -> dict:
    before = await asyncio.gather(*(scrape(s) for s in sims))
    ttfts: list[float] = []
    out_tokens = completed = 0
    t0 = time.perf_counter()
    base = step * args.step_s

    async def one(offset: float, prompt: str, rt) -> None:
        nonlocal out_tokens, completed
        await asyncio.sleep(max(0.0, t0 + offset - base - time.perf_counter()))
        reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="chat", user="u")))
        started = time.perf_counter()
        try:
            call = await generate(rt.router, prompt, args.max_tokens, timeout_s=120)
        except asyncio.CancelledError:
            ttfts.append((time.perf_counter() - started) * 1000)  # cut: counted at its age
            raise
        except Exception:
            ttfts.append((time.perf_counter() - started) * 1000)
            return
        ttfts.append(call.ttft_ms)
        completed += 1
        if time.perf_counter() - t0 <= args.step_s:  # throughput delivered within the step
            out_tokens += call.output_tokens

    # Requests take turns over the routers (as Envoy's least-request spreads them over replicas).
    tasks = [
        asyncio.create_task(one(off, p, routers[i % len(routers)])) for i, (_, off, p) in enumerate(reqs)
    ]
    _, pending = await asyncio.wait(tasks, timeout=args.step_s + args.drain_s) if tasks else ((), ())
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    after = await asyncio.gather(*(scrape(s) for s in sims))
    reused = sum(kv_metric(a, "reused") - kv_metric(b, "reused") for a, b in zip(after, before, strict=True))
    blocks = sum(count_tokens(p) // BLOCK for _, _, p in reqs)
    return {
        "sent": len(reqs),
        "done": completed,
        "cut": len(pending),
        "p50": pct(ttfts, 50) if ttfts else 0.0,
        "p90": pct(ttfts, 90) if ttfts else 0.0,
        "tok_s": out_tokens / args.step_s,
        "reuse": reused / blocks if blocks else 0.0,
    }


def report(results: dict[str, list[dict]], args) -> None:
    prefix_blocks = args.groups * (args.prefix_tokens // BLOCK)
    print(
        f"\nShared-prefix workload: {ENDPOINTS} simulator endpoints x {args.kv_blocks} KV blocks of {BLOCK} tokens; "
        f"{args.groups} groups x {args.users} users, {args.prefix_tokens}-token shared prefix + {args.suffix_tokens}-"
        f"token suffix, {args.max_tokens} output tokens; prefixes = {prefix_blocks / args.kv_blocks:.1f}x one "
        f"endpoint's cache, {100 * prefix_blocks / (ENDPOINTS * args.kv_blocks):.0f}% of the cluster's; Poisson "
        f"steps of {args.step_s:g} s at {', '.join(f'{r:g}' for r in args.rates)} req/s; time scale {args.time_scale:g}; {args.routers} router(s)"
    )
    head = f"{'policy':<14}{'req/s':>6}{'done/sent':>11}{'TTFT p50':>10}{'TTFT p90':>10}{'out tok/s':>10}{'KV reuse':>9}"
    print(head + "\n" + "-" * len(head))
    for policy, steps in results.items():
        for rate, r in zip(args.rates, steps, strict=True):
            print(
                f"{policy:<14}{rate:>6g}{r['done']:>6}/{r['sent']:<4}{r['p50']:>10.0f}{r['p90']:>10.0f}"
                f"{r['tok_s']:>10.1f}{100 * r['reuse']:>8.0f}%"
            )
    print(
        "(TTFT in wall-clock ms measured by the router; a request cut at the end of its step counts at its age)"
    )
    verdicts(results, args)


def verdicts(results: dict[str, list[dict]], args) -> None:
    """The bars at the step just past saturation: the first step where round-robin's TTFT p90
    is over 5x its light-load p90 (the last step when none is); then the same ratios at every
    later step."""
    rr = results.get("round-robin")
    if not rr or "precise" not in results:
        return
    light = max(rr[0]["p90"], 1e-9)
    first = next((i for i, r in enumerate(rr) if r["p90"] > 5 * light), len(rr) - 1)
    for step in range(first, len(rr)):
        p = results["precise"][step]
        why = " (round-robin's TTFT p90 first over 5x its light-load p90)" if step == first else ""
        print(f"verdicts at {args.rates[step]:g} req/s{why}:")
        for other, bar in (("round-robin", 10.0), ("random", 10.0), ("approximate", 2.0)):
            if other in results:
                ratio = results[other][step]["p90"] / max(p["p90"], 1e-9)
                print(
                    f"  TTFT p90 {other} / precise = {ratio:.1f}x (bar {bar:g}x): {'PASS' if ratio >= bar else 'MISS'}"
                )
        if "random" in results:
            ratio = p["tok_s"] / max(results["random"][step]["tok_s"], 1e-9)
            print(
                f"  output tok/s precise / random = {ratio:.2f}x (bar 1.5x): {'PASS' if ratio >= 1.5 else 'MISS'}"
            )


async def main_async(args: argparse.Namespace) -> None:
    reqs = schedule(args)
    results = {}
    with tempfile.TemporaryDirectory(prefix="prefix-affinity-") as tmp:
        workdir = Path(tmp)
        entry = model_entry(
            TRITON_MODEL, LATENCY, running=8, queue=100_000, blocks=args.kv_blocks, block_size=BLOCK
        )
        catalog = write_catalog(workdir / "catalog.yaml", [entry])
        for policy in args.policies:
            started = time.perf_counter()
            results[policy] = await run_policy(policy, reqs, catalog, workdir, args)
            print(f"  {policy}: {len(reqs)} requests in {time.perf_counter() - started:.0f}s", flush=True)
    report(results, args)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 short steps (for `make bench`)")
    floats = lambda t: [float(x) for x in t.split(",") if x.strip()]  # noqa: E731
    p.add_argument("--rates", type=floats, default=None, help="Poisson rate per step, req/s (4,18)")
    p.add_argument("--step-s", type=float, default=None, help="seconds per step (120; quick 8)")
    p.add_argument(
        "--drain-s", type=float, default=10.0, help="a request unfinished this long after its step is cut"
    )
    p.add_argument("--groups", type=int, default=150)
    p.add_argument("--users", type=int, default=5)
    p.add_argument("--prefix-tokens", type=int, default=512)
    p.add_argument("--suffix-tokens", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--kv-blocks", type=int, default=200, help="KV cache blocks per endpoint")
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--routers", type=int, default=1, help="router replicas the requests take turns over")
    p.add_argument("--policies", type=lambda t: [x for x in t.split(",") if x], default=list(POLICIES))
    args = p.parse_args(argv)
    args.rates = args.rates or ([4.0, 12.0, 20.0] if args.quick else [4.0, 18.0])
    args.step_s = args.step_s or (8.0 if args.quick else 120.0)
    unknown = sorted(set(args.policies) - set(POLICIES))
    if unknown:
        p.error(f"unknown policies {unknown}; known: {list(POLICIES)}")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
