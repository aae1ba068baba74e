"""CPU of every process of the local stack: at rest, then per request of a closed loop at
concurrency 1 on router-1's Triton front door (as row (b) of bench/router_overhead.py), next to
the same loop through a bare grpc.aio relay (bench/_grpc_relay.py, the floor of a Python hop).
The relay only talks to sim-0, so by default the stack's OpenAI-protocol simulators are drained
before the loop (as in router_overhead.py) and the router, too, reaches sim-0 over Triton's
protocol only; `--engines all` keeps them.

Read from /proc (user + system ticks), so less sensitive to other load on the machine than
latency is. Prints ms of CPU per second at rest for each process, ms per request under load,
the router's CPU per request as a multiple of the relay's (target <= 1.3x) and what the other
services (registry, pool, audit, cost) spend per request (target < 1 ms at 100 req/s).

Usage: python bench/stack_cpu.py [--idle-s 10] [--requests 1000] [--max-tokens 8] [--engines triton|all]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tritonclient.grpc.aio as tgrpc_aio
from _common import stream_one
from router_overhead import (
    MODEL,
    cpu_seconds,
    drain_openai_simulators,
    env_of,
    router_address,
    stack_pids,
    start_relay,
    start_stack,
)

OTHERS = ("registry", "pool", "audit", "cost")


async def loop(client, requests: int, max_tokens: int, tag: str, headers=None) -> float:
    """Seconds for `requests` sequential streamed calls (after a warm-up of 20)."""
    for i in range(20):
        await stream_one(client, MODEL, f"warm {tag} {i} ledger policy", max_tokens, f"w{i}", headers)
    start = time.perf_counter()
    for i in range(requests):
        prompt = f"{tag} request {i}: summarise the ledger policy for a new analyst"
        await stream_one(client, MODEL, prompt, max_tokens, f"r{i}", headers)
    return time.perf_counter() - start


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="stack-cpu-") as tmp:
        root = Path(tmp) / ".harness"
        print("starting the local stack (harness up --free-ports, time scale 1000)...", flush=True)
        proc = start_stack(root, 1000.0)
        relay = None
        try:
            pids, env = stack_pids(root), env_of(root)
            await asyncio.sleep(3)  # past the start-up work
            before = {n: cpu_seconds([p]) for n, p in pids.items()}
            await asyncio.sleep(args.idle_s)
            idle = {n: (cpu_seconds([p]) - before[n]) * 1000 / args.idle_s for n, p in pids.items()}
            if args.engines == "triton":
                drain_openai_simulators(root, env)
            tls = {"ssl": True, "root_certificates": env["HARNESS_CA"], "private_key": env["HARNESS_KEY"],
                   "certificate_chain": env["HARNESS_CERT"]}  # fmt: skip
            auth = {"authorization": f"Bearer {env['HARNESS_TOKEN']}"}
            before = {n: cpu_seconds([p]) for n, p in pids.items()}
            async with tgrpc_aio.InferenceServerClient(router_address(root), **tls) as client:
                secs = await loop(client, args.requests, args.max_tokens, "router", auth)
            load = {n: (cpu_seconds([p]) - before[n]) * 1000 / args.requests for n, p in pids.items()}
            relay, relay_addr = start_relay(env["HARNESS_TRITON_ADDRS"].split(",")[0])
            relay_before = cpu_seconds([relay.pid])
            async with tgrpc_aio.InferenceServerClient(relay_addr) as client:
                await loop(client, args.requests, args.max_tokens, "relay")
            relay_ms = (cpu_seconds([relay.pid]) - relay_before) * 1000 / args.requests
        finally:
            if relay is not None:
                relay.kill()
            proc.terminate()
            proc.wait(timeout=30)
    rate = args.requests / secs
    print(f"\nStack CPU (max_tokens {args.max_tokens}, engines {args.engines}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the end)")  # fmt: skip
    print(f"{'process':<14}{'at rest ms/s':>14}{'ms/request':>12}")
    for name in pids:
        print(f"{name:<14}{idle[name]:>14.1f}{load[name]:>12.2f}")
    others_idle, others = sum(idle[n] for n in OTHERS), sum(load[n] for n in OTHERS)
    print(f"{'(relay)':<14}{'':>14}{relay_ms:>12.2f}")
    print(
        f"router-1: {load['router-1']:.2f} ms of CPU per request = {load['router-1'] / relay_ms:.2f}x the bare "
        f"relay's {relay_ms:.2f} (target <= 1.3x)\nregistry + pool + audit + cost: {others:.2f} ms per "
        f"request at {rate:.0f} req/s (target < 1 ms at 100 req/s), {others_idle:.1f} ms/s at rest"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--idle-s", type=float, default=10.0)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument(
        "--engines", choices=("triton", "all"), default="triton",
        help="triton (default): the router serves from sim-0 only, as the relay does; all: also the OpenAI-protocol simulator",
    )  # fmt: skip
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
