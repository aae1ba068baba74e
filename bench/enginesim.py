"""Engine simulator benchmark: its own ceiling, and how closely streamed TTFT/TBT follow a profile.

Drives a simulator subprocess (``python -m services.enginesim --port 0 ...``, so client and
server do not share an event loop) with the real ``tritonclient.grpc.aio`` client, one
``ModelStreamInfer`` stream per request (``stream=True``, as the router sends them).

(a) Ceiling: a zero-latency profile (every step costs 0 ms) and a closed loop of C workers for
    a fixed time. ``short`` requests (max_tokens 1) give requests/s; ``long`` ones give
    streamed tokens/s. The simulator's CPU use says whether it (not the client) was the limit.
(b) Fidelity: a llama-3-8b-instruct-like profile (step 6.0 ms + 0.04 ms per running sequence +
    0.03 ms per prefilled prompt token) at time scale 1.0; N streams launched together
    (distinct prompts of P tokens, max_tokens T). The engine model in
    services/enginesim/engine.py predicts, for a wave of N:
        TTFT = one step that prefills all N = overhead + decode*N + prefill*N*P
        TBT  = one decode step over N        = overhead + decode*N
    and we print measured/expected at p50 and p90 (TBT = gap between a stream's chunks, as
    the client sees it). ``steps/wave`` is the engine's own iteration count (ModelStatistics
    execution_count) per wave: T when the whole wave was admitted into one step.

Usage: python bench/enginesim.py [--only ceiling|fidelity] [--duration 5] [--concurrency 32,128]
       [--waves 1,16,64] [--prompt-tokens 128] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no gRPC core INFO lines (GOAWAY at shutdown)

import tritonclient.grpc.aio as tgrpc_aio
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/enginesim.py` from anywhere

from _common import build_inputs, pct  # noqa: E402  (bench/ is on the path: python bench/enginesim.py)

from services.enginesim.text import count_tokens  # noqa: E402  (the simulator's tokenizer)

ZERO_MODEL = "zero-latency"
PROFILE_MODEL = "llama-3-8b-like"
PROFILE = {"step_overhead_ms": 6.0, "decode_ms_per_token": 0.04, "prefill_ms_per_token": 0.03}


def _model(name: str, latency: dict[str, float], running: int, queue: int, blocks: int) -> dict:
    return {
        "name": name,
        "decoupled": True,
        "layout": "ensemble",
        "memory_gb": 1,
        "load_time_s": 0,
        "latency": latency,
        "max_running_sequences": running,
        "max_queue_size": queue,
        "kv_block_size": 64,
        "kv_capacity_blocks": blocks,
    }


def write_catalog(path: Path) -> Path:
    zero = {"step_overhead_ms": 0.0, "decode_ms_per_token": 0.0, "prefill_ms_per_token": 0.0}
    models = [
        # Large enough that nothing ever waits or is refused: the loop itself is the limit.
        _model(ZERO_MODEL, zero, running=4096, queue=65536, blocks=1_000_000),
        # llama-3-8b-instruct's profile and limits (services/enginesim/models.yaml), cold start 0.
        _model(PROFILE_MODEL, PROFILE, running=64, queue=256, blocks=2048),
    ]
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return path


# --- the simulator subprocess ---------------------------------------------------------------
@dataclass
class SimProcess:
    proc: subprocess.Popen
    address: str
    log: Path

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the simulator so far (Linux /proc; None elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_simulator(catalog: Path, models: list[str], time_scale: float, workdir: Path) -> SimProcess:
    log = workdir / "enginesim.log"
    argv = [
        sys.executable, "-m", "services.enginesim", "--host", "127.0.0.1", "--port", "0",
        "--metrics-port", "-1", "--catalog", str(catalog), "--time-scale", str(time_scale),
        "--shutdown-grace", "0", "--no-preload", "--load", *models,
    ]  # fmt: skip
    with open(log, "wb") as out:  # a file, not a pipe: a full pipe would stall the simulator
        proc = subprocess.Popen(
            argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(r"ready grpc=(\S+)", log.read_text(errors="replace"))
        if match:
            return SimProcess(proc, match.group(1), log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"simulator did not start:\n{log.read_text(errors='replace')[-2000:]}")


# --- one streamed request through tritonclient.grpc.aio ----------------------------------------
@dataclass
class StreamTiming:
    ttft_ms: float = 0.0
    gaps_ms: list[float] = field(default_factory=list)  # between consecutive chunks
    chunks: int = 0


async def stream_one(
    client: tgrpc_aio.InferenceServerClient, model: str, prompt: str, max_tokens: int, request_id: str
) -> StreamTiming:
    """One request on its own ModelStreamInfer stream, until ``triton_final_response``."""
    done = asyncio.Event()

    async def requests() -> AsyncIterator[dict]:
        yield {"model_name": model, "inputs": build_inputs(prompt, max_tokens), "request_id": request_id}
        await done.wait()  # keep our side open until the last response, like the router

    timing = StreamTiming()
    start = last = time.perf_counter()
    responses = client.stream_infer(requests(), stream_timeout=120)
    try:
        async for result, error in responses:
            if error is not None:
                raise error
            now = time.perf_counter()
            if timing.chunks == 0:
                timing.ttft_ms = (now - start) * 1000
            else:
                timing.gaps_ms.append((now - last) * 1000)
            last = now
            timing.chunks += 1
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        done.set()
    return timing


def make_prompt(rng: random.Random, tag: str, tokens: int) -> str:
    """A prompt of exactly ``tokens`` simulator tokens (``\\w+`` runs), unlike any other, so no KV
    prefix block is ever shared: the tag, then random lowercase words."""
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(tokens - 1)]
    prompt = f"{tag} " + " ".join(words)
    assert count_tokens(prompt) == tokens, (count_tokens(prompt), tokens)
    return prompt


# --- (a) ceiling ---------------------------------------------------------------------------
@dataclass
class CeilingRow:
    workload: str
    concurrency: int
    requests: int
    tokens: int
    seconds: float
    sim_cpu: float | None  # fraction of one core
    client_cpu: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds


async def ceiling_run(
    sim: SimProcess, workload: str, concurrency: int, max_tokens: int, duration: float
) -> CeilingRow:
    rng = random.Random(f"{workload}-{concurrency}")
    counter = {"requests": 0, "tokens": 0, "n": 0}
    async with tgrpc_aio.InferenceServerClient(sim.address) as client:
        await stream_one(client, ZERO_MODEL, "warm up", max_tokens, "warm")
        stop_at = 0.0

        async def worker(w: int) -> None:
            while time.perf_counter() < stop_at:
                counter["n"] += 1
                prompt = make_prompt(rng, f"c{concurrency}w{w}n{counter['n']}", 16)
                t = await stream_one(client, ZERO_MODEL, prompt, max_tokens, f"r{counter['n']}")
                counter["requests"] += 1
                counter["tokens"] += t.chunks

        cpu0, wall0, proc0 = sim.cpu_seconds(), time.perf_counter(), time.process_time()
        stop_at = wall0 + duration
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - wall0
        cpu1, proc1 = sim.cpu_seconds(), time.process_time()
    sim_cpu = (cpu1 - cpu0) / wall if cpu0 is not None and cpu1 is not None else None
    return CeilingRow(
        workload, concurrency, counter["requests"], counter["tokens"], wall, sim_cpu, (proc1 - proc0) / wall
    )


async def ceiling(sim: SimProcess, args: argparse.Namespace) -> list[CeilingRow]:
    rows = []
    for workload, max_tokens in (("short", 1), ("long", args.long_tokens)):
        for c in args.concurrency:
            rows.append(await ceiling_run(sim, workload, c, max_tokens, args.duration))
    return rows


def print_ceiling(rows: list[CeilingRow], args: argparse.Namespace) -> None:
    print(
        f"\n(a) simulator ceiling: zero-latency profile, closed loop for {args.duration:g}s; "
        f"short = max_tokens 1, long = max_tokens {args.long_tokens}; prompts 16 tokens"
    )
    head = f"{'workload':<10}{'streams':>8}{'requests':>10}{'req/s':>10}{'tokens/s':>11}"
    print(head + f"{'sim CPU':>9}{'client CPU':>12}")
    for r in rows:
        sim_cpu = f"{r.sim_cpu:.0%}" if r.sim_cpu is not None else "n/a"
        print(
            f"{r.workload:<10}{r.concurrency:>8}{r.requests:>10}{r.rps:>10.0f}{r.tps:>11.0f}"
            f"{sim_cpu:>9}{r.client_cpu:>12.0%}"
        )
    best_rps = max(r.rps for r in rows if r.workload == "short")
    best_tps = max(r.tps for r in rows if r.workload == "long")
    print(f"ceiling: {best_rps:.0f} requests/s, {best_tps:.0f} streamed tokens/s (best of the rows above)")


# --- (b) fidelity --------------------------------------------------------------------------
@dataclass
class FidelityRow:
    n: int
    waves: int
    ttft_ms: list[float]
    tbt_ms: list[float]
    steps_per_wave: float
    expected_ttft: float
    expected_tbt: float


async def fidelity_wave_size(sim: SimProcess, n: int, waves: int, args: argparse.Namespace) -> FidelityRow:
    rng = random.Random(f"fidelity-{n}")
    p, t = args.prompt_tokens, args.max_tokens
    lat = PROFILE
    expected_ttft = (
        lat["step_overhead_ms"] + lat["decode_ms_per_token"] * n + lat["prefill_ms_per_token"] * n * p
    )
    expected_tbt = lat["step_overhead_ms"] + lat["decode_ms_per_token"] * n
    ttft: list[float] = []
    tbt: list[float] = []
    async with tgrpc_aio.InferenceServerClient(sim.address) as client:

        async def steps() -> int:
            stats = await client.get_inference_statistics(PROFILE_MODEL, as_json=True)
            return int(stats["model_stats"][0].get("execution_count", 0))

        # Warm up the channel (and a first stream) outside the measurement.
        await stream_one(client, PROFILE_MODEL, make_prompt(rng, f"warm{n}", p), 2, "warm")
        before = await steps()
        for w in range(waves):
            prompts = [make_prompt(rng, f"n{n}w{w}r{i}", p) for i in range(n)]
            timings = await asyncio.gather(
                *(stream_one(client, PROFILE_MODEL, pr, t, f"n{n}w{w}r{i}") for i, pr in enumerate(prompts))
            )
            for timing in timings:
                assert timing.chunks == t, f"expected {t} chunks, got {timing.chunks}"
                ttft.append(timing.ttft_ms)
                tbt.extend(timing.gaps_ms)
            await asyncio.sleep(0.05)  # let the engine go idle: each wave starts from an empty batch
        steps_per_wave = (await steps() - before) / waves
    return FidelityRow(n, waves, ttft, tbt, steps_per_wave, expected_ttft, expected_tbt)


def print_fidelity(rows: list[FidelityRow], args: argparse.Namespace) -> None:
    print(
        f"\n(b) fidelity: profile step {PROFILE['step_overhead_ms']} ms + decode "
        f"{PROFILE['decode_ms_per_token']} ms/seq + prefill {PROFILE['prefill_ms_per_token']} ms/token, "
        f"time scale 1.0; N streams launched together, prompts {args.prompt_tokens} tokens, "
        f"max_tokens {args.max_tokens}"
    )
    head = (
        f"{'N':>4}{'waves':>6}{'steps/wave':>11}"
        f" | {'TTFT exp':>9}{'p50':>8}{'p90':>8}{'p50 x':>7}{'p90 x':>7}"
        f" | {'TBT exp':>8}{'p50':>7}{'p90':>7}{'p50 x':>7}{'p90 x':>7}"
    )
    print(head + "\n" + "-" * len(head))
    for r in rows:
        t50, t90, b50, b90 = pct(r.ttft_ms, 50), pct(r.ttft_ms, 90), pct(r.tbt_ms, 50), pct(r.tbt_ms, 90)
        print(
            f"{r.n:>4}{r.waves:>6}{r.steps_per_wave:>11.1f} | {r.expected_ttft:>9.2f}{t50:>8.2f}{t90:>8.2f}"
            f"{t50 / r.expected_ttft:>7.2f}{t90 / r.expected_ttft:>7.2f} | {r.expected_tbt:>8.2f}{b50:>7.2f}"
            f"{b90:>7.2f}{b50 / r.expected_tbt:>7.2f}{b90 / r.expected_tbt:>7.2f}"
        )
    print("(times in ms; 'x' = measured / expected; steps/wave is ideal at max_tokens)")


async def fidelity(sim: SimProcess, args: argparse.Namespace) -> list[FidelityRow]:
    rows = []
    for n in args.waves:
        waves = max(2, min(10, 160 // n))  # about the same number of samples for each N
        rows.append(await fidelity_wave_size(sim, n, waves, args))
    return rows


# --- main ------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("ceiling", "fidelity"), help="run one part (default: both)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per ceiling row")
    p.add_argument("--concurrency", type=_ints, default=[32, 128], help="ceiling streams, comma-separated")
    p.add_argument("--long-tokens", type=int, default=256, help="max_tokens of the ceiling's long requests")
    p.add_argument("--waves", type=_ints, default=[1, 16, 64], help="fidelity wave sizes N")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=64)
    return p.parse_args(argv)


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="enginesim-bench-") as tmp:
        workdir = Path(tmp)
        catalog = write_catalog(workdir / "catalog.yaml")
        models = [
            m
            for part, m in (("ceiling", ZERO_MODEL), ("fidelity", PROFILE_MODEL))
            if args.only in (None, part)
        ]
        sim = start_simulator(catalog, models, 1.0, workdir)
        try:
            print(f"simulator pid {sim.proc.pid} at {sim.address}; {os.cpu_count()} CPUs on this machine")
            if args.only in (None, "ceiling"):
                print_ceiling(await ceiling(sim, args), args)
            if args.only in (None, "fidelity"):
                print_fidelity(await fidelity(sim, args), args)
        finally:
            sim.stop()


def main(argv: list[str] | None = None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    main()
