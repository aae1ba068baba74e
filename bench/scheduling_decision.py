"""Cost of one scheduling decision with the precise prefix scorer, against the approximate one.

The router's scheduler (services/router/scheduling) in this process, no servers: 8 endpoints,
150 groups of users sharing a long system prompt. Every group's prefix is cached on one or two
endpoints, as their engines' KV events announced it (the precise scorer's index) and as the
router recorded sending it there (the approximate scorer's memory). Each decision is a new
request: a known group's prefix plus a suffix of words never seen before (a user's question),
so the unique tail is tokenized and hashed every time, as in bench/prefix_affinity.py.

Timed: ``Scheduler.pick`` with the packaged 'default' profile (precise-prefix-cache, queue-depth,
kv-cache, session-affinity) and with 'approximate-prefix' (the same with prefix-cache), over the
same requests; the median and p90 of the CPU time per decision (the thread's, so a neighbour
holding the core does not count) and their ratio, and the median wall time. Sizes: prefix_affinity.py's
(a 512-token prefix + a 128-token suffix) and llm-d's (6,000 + 1,200 tokens). The router's
budget is 1 ms per decision.

Usage: python bench/scheduling_decision.py [--decisions 300] [--quick]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import pct
from _inproc_router import scheduler_with_default

from services.common.kv_blocks import BlockHasher, sim_token_ids
from services.common.kv_events_wire import BlockStored, EventBatch
from services.router.scheduling.types import Candidate, SchedulingRequest

MODEL, BLOCK, ENDPOINTS, GROUPS = "big-model", 64, 8, 150
SIZES = {"prefix_affinity (512 + 128 tokens)": (512, 128), "llm-d (6,000 + 1,200 tokens)": (6000, 1200)}


def words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 8))) for _ in range(n))


def fleet() -> list[Candidate]:
    return [Candidate(f"sim-{i}", model=MODEL, active=i % 3, max_running=8) for i in range(ENDPOINTS)]


def warmed(profile: str, prefixes: list[str], homes: list[tuple[int, ...]]):
    """A scheduler whose engines hold, and whose router remembers, every group's prefix."""
    s = scheduler_with_default(profile)
    hasher = BlockHasher(BLOCK)
    for prefix, where in zip(prefixes, homes, strict=True):
        digests = tuple(hasher.digests(sim_token_ids(prefix)))
        for e in where:
            s.memory.engine_blocks.apply(
                f"sim-{e}", MODEL, EventBatch(0.0, (BlockStored(digests, None, (), BLOCK),))
            )
            s.record(f"sim-{e}", SchedulingRequest(MODEL, prompt=prefix))
    return s


def time_decisions(profile: str, prefixes, homes, prompts: list[str]) -> tuple[list[float], list[float]]:
    """(CPU ms, wall ms) per decision. CPU time is the decision's cost; wall time also counts
    waiting for a core, which on a shared machine is the neighbours' doing."""
    s = warmed(profile, prefixes, homes)
    cands = fleet()
    for p in prefixes:  # every prefix seen once before: the tokenizer's and hasher's memos know it
        s.pick(SchedulingRequest(MODEL, prompt=p + " warm"), cands)
    cpu, wall = [], []
    for p in prompts:
        req = SchedulingRequest(MODEL, prompt=p)
        c0, t0 = time.thread_time(), time.perf_counter()
        d = s.pick(req, cands)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.thread_time() - c0) * 1000)
        assert d.ok
    return cpu, wall


def run_size(label: str, prefix_tokens: int, suffix_tokens: int, n: int) -> None:
    rng = random.Random(7)
    prefixes = [f"Group {g} shared context. " + words(rng, prefix_tokens - 4) for g in range(GROUPS)]
    homes = [tuple(rng.sample(range(ENDPOINTS), rng.choice((1, 2)))) for _ in range(GROUPS)]
    prompts = [
        prefixes[g] + f"\nUser {rng.randrange(5)} of group {g}: " + words(rng, suffix_tokens - 6)
        for g in (rng.randrange(GROUPS) for _ in range(n))
    ]
    precise, precise_wall = time_decisions("default", prefixes, homes, prompts)
    approx, approx_wall = time_decisions("approximate-prefix", prefixes, homes, prompts)
    p50, a50 = pct(precise, 50), pct(approx, 50)
    p90, a90 = pct(precise, 90), pct(approx, 90)
    print(
        f"| {label} | {n} | {p50:.3f} / {p90:.3f} | {a50:.3f} / {a90:.3f} | {p50 / a50:.1f}x / {p90 / a90:.1f}x "
        f"| {pct(precise_wall, 50):.3f} / {pct(approx_wall, 50):.3f} | {'met' if p90 < 1.0 else 'MISSED'} |",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decisions", type=int, default=300, help="decisions timed per size and scorer")
    p.add_argument("--quick", action="store_true", help="100 decisions per size (for `make bench`)")
    args = p.parse_args(argv)
    n = 100 if args.quick else args.decisions
    print("Scheduling decision, 8 endpoints, CPU ms per Scheduler.pick (median / p90); wall ms median:")
    print(
        "| prompt | decisions | precise | approximate | precise / approximate | wall: precise / approximate | p90 < 1 ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, (prefix_tokens, suffix_tokens) in SIZES.items():
        run_size(label, prefix_tokens, suffix_tokens, n)


if __name__ == "__main__":
    main()
