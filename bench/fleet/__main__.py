"""Fleet scenario benchmark: ten agents on tidal traffic, static per-agent binding vs the
pooled Harness, on simulated H100s. ``make bench-fleet`` or ``python -m bench.fleet [--scale S]``.

The thesis under test: pooling plus agent-aware scheduling beats "one agent, one GPU": higher
utilisation, fewer GPUs, SLOs kept through a month-end surge, lower cost.

  workload.py  the agents (kind, SLO class, model, rates, prompt/output lengths, shared system
               prompts), the tidal calendar and the month-end 10x surge; the clocks
  plan.py      the GPUs each set-up holds: one per agent (static) or the pool's inventory
  pooled.py    the harness's pool: the production PoolApp in-process, its placement and scaling
               loop acting during the run
  probe.py     simulator processes (one per GPU) and the probe that feeds the router and
               integrates each GPU's busy time
  runner.py    one set-up: in-process router core, the schedule, the live progress line
  report.py    figures, table, verdicts        charts.py  one PNG per set-up

Scales (the quick one is the default; every one runs the same code):
  quick  time scale 2, one business day = 45 s wall: ~3 minutes for both set-ups on 2 cores
  long   time scale 2, one business day = 600 s wall: ~45 minutes, ~13x the requests
  full   time scale 1, one business day = 12 h wall: the real calendar in real engine time
"""

from __future__ import annotations

import os

os.environ["GRPC_VERBOSITY"] = "ERROR"  # before grpc loads: no transport chatter at shutdown

import argparse
import asyncio
import contextlib
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from . import charts, plan, pooled, report, runner, timeline, workload

SCALES = {"quick": (2.0, 45.0), "long": (2.0, 600.0), "full": (1.0, workload.DAY_HOURS * 3600)}


def describe(args: argparse.Namespace, schedule: list[workload.Request]) -> str:
    s, d = args.time_scale, args.day_s
    lines = [
        f"Fleet benchmark: {len(workload.AGENTS)} agents, {len(schedule):,} requests over two simulated business "
        f"days (weekday, month-end), the same schedule for both set-ups.",
        f"Scale '{args.scale}': engine time scale {s:g} (1 wall ms = {s:g} simulated engine ms); one 12-hour business "
        f"day = {d:g} s wall = {d * s / 3600:.3g} engine hours (calendar compressed {workload.DAY_HOURS * 3600 / (d * s):,.0f}x).",
        "SLO targets (TTFT, engine time): "
        + ", ".join(f"{c} {workload.TTFT_TARGET_MS[c]:,.0f} ms" for c in workload.SLO_CLASSES)
        + "; callers' deadlines "
        + ", ".join(f"{c} {workload.DEADLINE_MS[c] / 1000:g} s" for c in workload.SLO_CLASSES)
        + ".",
        f"{'agent':<19}{'kind':<22}{'class':<13}{'model':<17}{'req/s':>6}{'x month-end':>12}"
        f"{'system':>8}{'body':>12}{'output':>10}{'sent':>6}",
    ]
    for a in workload.AGENTS:
        n = sum(1 for r in schedule if r.agent == a.name)
        lines.append(
            f"{a.name:<19}{a.kind:<22}{a.slo:<13}{a.model:<17}{a.rate:>6g}{a.month_end:>12g}{a.system_tokens:>8}"
            f"{'{}-{}'.format(*a.body_tokens):>12}{'{}-{}'.format(*a.out_tokens):>10}{n:>6}"
        )
    lines.append("(req/s per engine second in a weekday's busiest hour; prompt and output lengths in tokens)")
    return "\n".join(lines)


def describe_plans(plans: list[plan.FleetPlan], args: argparse.Namespace) -> str:
    out = []
    for p in plans:
        gpus = "; ".join(f"{g.name}: {', '.join(m.split('--')[-1] for m in g.models)}" for g in p.gpus)
        if p.setup == "static":
            gpus = f"one GPU per agent ({len(p.gpus)}): " + ", ".join(
                sorted({m.split("--")[-1] for g in p.gpus for m in g.models})
            )
        else:
            gpus = (
                f"an inventory of {len(p.gpus)} empty GPUs; the pool places the agents' models and its "
                f"scaling loop adds and removes replicas (at most {args.max_replicas} per model; a replica "
                f"goes after {pooled.scale_in_window_s(args.time_scale, args.day_s):g} s engine time with "
                "the load down)"
                + (
                    f"; the 70B batch model scales to zero after {pooled.scale_in_window_s(args.time_scale, args.day_s):g} s "
                    "engine time idle and wakes for a held request"
                    if args.scale_to_zero
                    else "; nothing scales to zero"
                )
            )
        out.append(f"  {p.setup:<8} {gpus}")
    return "GPUs (simulated H100 SXM 80GB, one simulator process each):\n" + "\n".join(out)


async def main_async(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    schedule = workload.build_schedule(args.day_s, args.time_scale, args.seed)
    gc.collect()
    gc.freeze()  # the schedule and the imports are permanent: keep them out of every GC pass
    plans = [plan.static_plan(), plan.harness_plan(pooled.INVENTORY)]
    print(describe(args, schedule) + "\n" + describe_plans(plans, args), flush=True)
    results: dict[str, runner.SetupResult] = {}
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        catalog = plan.write_catalog(Path(tmp) / "catalog.yaml", plans)
        for p in plans:
            results[p.setup] = await runner.run_setup(p, schedule, catalog, Path(tmp), args)
    figs = {k: report.figures(v) for k, v in results.items()}
    out = Path(args.out)
    pngs = [charts.render(results[k], schedule, figs[k], out / f"fleet-{k}.png") for k in results]
    machine = f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), no GPU"
    text = "\n".join(
        [
            "",
            f"Results (engine-time figures; time scale {args.time_scale:g}; machine: {machine}; "
            f"wall {time.perf_counter() - t_start:.0f} s):",
            report.table(figs),
            "",
            *(f"verdict: {v}" for v in report.verdicts(figs)),
            "",
            "harness GPUs over the calendar:",
            timeline.gpu_table(results["harness"]),
            timeline.events_text(results["harness"]),
            "Provisional: one run on a shared machine; every wall-clock hiccup is multiplied by the time scale.",
        ]
    )
    print(text)
    report.write_text(
        out / "fleet-report.txt", describe(args, schedule) + "\n" + describe_plans(plans, args) + "\n" + text
    )
    (out / "fleet-figures.json").write_text(json.dumps(figs, indent=1, default=str) + "\n")
    print(f"charts: {', '.join(str(p) for p in pngs)}; report: {out / 'fleet-report.txt'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scale", choices=sorted(SCALES), default="quick", help="preset time scale and day length"
    )
    p.add_argument("--time-scale", type=float, default=None, help="engine time scale (overrides the preset)")
    p.add_argument("--day-s", type=float, default=None, help="wall seconds per simulated business day")
    p.add_argument(
        "--drain-s", type=float, default=15.0, help="wall seconds after the last arrival before cutting"
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--max-replicas", type=int, default=pooled.MAX_REPLICAS,
        help="the pool's replicas per model (1: never scale out, the GPUs the models need at rest)",
    )  # fmt: skip
    p.add_argument(
        "--no-scale-to-zero", dest="scale_to_zero", action="store_false",
        help="keep the 70B batch model loaded all run (by default the pool unloads it when idle and "
        "the router holds a summary while it loads again)",
    )  # fmt: skip
    p.add_argument(
        "--out", default=str(plan.REPO / "bench/fleet/out"), help="directory for the PNGs and report"
    )
    args = p.parse_args(argv)
    if args.max_replicas < 1:
        p.error(f"--max-replicas must be at least 1, got {args.max_replicas}")
    scale, day = SCALES[args.scale]
    args.time_scale = args.time_scale or scale
    args.day_s = args.day_s or day
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(main_async(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
