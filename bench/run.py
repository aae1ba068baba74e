"""Router overhead benchmark: the same generation called directly on the engine (Triton
ModelStreamInfer), through the router (mTLS), and through Envoy + router. Prints p50/p99 and
the added latency against the direct call.

Usage: python bench/run.py [--requests 200] [--max-tokens 8] [--time-scale 1000]
Starts its own stack (`harness up --free-ports`) in a temporary directory and stops it after.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from harness.common.v1 import common_pb2
from harness.router.v1 import router_pb2, router_pb2_grpc

from services.router.triton import TritonPool, TritonRequest

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Summarise the ledger policy for a new analyst"


def start_stack(root: Path, time_scale: float) -> subprocess.Popen:
    harness = Path(sys.executable).parent / "harness"
    proc = subprocess.Popen(
        [str(harness), "up", "--free-ports", "--root", str(root), "--time-scale", str(time_scale)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    for line in proc.stdout:  # type: ignore[union-attr]
        if line.startswith("healthy in"):
            return proc
    raise SystemExit("stack did not start; see " + str(root / "logs"))


def env_of(root: Path) -> dict[str, str]:
    pairs = (line.removeprefix("export ").split("=", 1) for line in (root / "env").read_text().splitlines())
    return {k: v.strip("'") for k, v in pairs}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def timed(n: int, call) -> list[float]:
    for _ in range(5):  # warm-up: channels, caches
        await call()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / ".harness"
        proc = start_stack(root, args.time_scale)
        try:
            env = env_of(root)
            sim_addr = env["HARNESS_TRITON_ADDRS"].split(",")[0]  # sim-0 serves llama-3-8b-instruct
            router_addr = next(
                line.split(" serving on ")[1].split()[0]
                for line in (root / "logs" / "router-1.log").read_text().splitlines()
                if " serving on " in line
            )
            ca, cert, key = (Path(env[k]).read_bytes() for k in ("HARNESS_CA", "HARNESS_CERT", "HARNESS_KEY"))
            creds = grpc.ssl_channel_credentials(ca, key, cert)
            auth = (("authorization", f"Bearer {env['HARNESS_TOKEN']}"),)
            req = router_pb2.GenerateRequest(
                prompt=PROMPT, sampling=common_pb2.SamplingParams(max_tokens=args.max_tokens)
            )
            triton = TritonPool()
            treq = TritonRequest(model="llama-3-8b-instruct", prompt=PROMPT, max_tokens=args.max_tokens)

            async def direct() -> None:
                async for _ in triton.stream(sim_addr, treq, 30):
                    pass

            results = {"direct to engine": await timed(args.requests, direct)}
            for label, target in (("router (mTLS)", router_addr), ("envoy + router", env["HARNESS_ADDR"])):
                async with grpc.aio.secure_channel(target, creds) as ch:
                    stub = router_pb2_grpc.RouterStub(ch)

                    async def via(stub=stub) -> None:
                        async for _ in stub.Generate(req, metadata=auth, timeout=30):
                            pass

                    results[label] = await timed(args.requests, via)
            await triton.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    base = statistics.median(results["direct to engine"])
    print(f"\n{args.requests} sequential Generate calls, max_tokens={args.max_tokens}, "
          f"simulator time scale {args.time_scale:g}")  # fmt: skip
    print(f"{'path':<20}{'p50 ms':>10}{'p99 ms':>10}{'added p50 ms':>15}{'ratio p50':>11}")
    for label, values in results.items():
        p50 = statistics.median(values)
        print(f"{label:<20}{p50:>10.2f}{pct(values, 99):>10.2f}{p50 - base:>15.2f}{p50 / base:>11.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--time-scale", type=float, default=1000.0)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
