"""One PNG per set-up: offered load per SLO class, TTFT p99 per class, GPU utilisation, on the
run's calendar (two simulated business days, 08:00-20:00 each, weekday then month-end)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench._common import pct

from . import timeline
from .report import SURGE
from .runner import SetupResult
from .workload import AGENTS, DAY_HOURS, DAYS, SLO_CLASSES, TTFT_TARGET_MS, Request, multiplier, sim_hours

COLOURS = {"realtime": "#d62728", "interactive": "#1f77b4", "batch": "#2ca02c"}


def _axis(ax) -> None:
    total = DAY_HOURS * len(DAYS)
    ticks = [h for h in range(0, int(total) + 1, 2)]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["20h" if h == total else f"{8 + h % int(DAY_HOURS):02d}h" for h in ticks])
    ax.set_xlim(0, total)
    ax.axvline(DAY_HOURS, color="grey", lw=1)
    surge0 = SURGE[0] * DAY_HOURS + SURGE[1] - 8
    ax.axvspan(surge0, surge0 + SURGE[2] - SURGE[1], color="orange", alpha=0.08)
    ax.grid(alpha=0.3)


def render(res: SetupResult, schedule: list[Request], figs: dict, path: Path, bin_h: float = 0.5) -> Path:
    scale, day_s = res.time_scale, res.day_s
    nbins = int(DAY_HOURS * len(DAYS) / bin_h)
    edges = [i * bin_h for i in range(nbins + 1)]
    mids = [e + bin_h / 2 for e in edges[:-1]]
    bin_engine_s = bin_h / DAY_HOURS * day_s * scale  # engine seconds in one bin
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(12, 10), sharex=True)

    counts = {c: [0] * nbins for c in SLO_CLASSES}
    for r in schedule:
        i = min(nbins - 1, int(sim_hours(r.day, r.hour) / bin_h))
        counts[r.slo][i] += 1
    ax1.stackplot(mids, *[[n / bin_engine_s for n in counts[c]] for c in SLO_CLASSES],
                  labels=SLO_CLASSES, colors=[COLOURS[c] for c in SLO_CLASSES], alpha=0.7)  # fmt: skip
    fine = [i / 20 for i in range(int(DAY_HOURS * len(DAYS) * 20) + 1)]  # the rate the arrivals sample
    ax1.plot(fine, [sum(a.rate * multiplier(a, min(1, int(h // DAY_HOURS)), 8 + h % DAY_HOURS) for a in AGENTS)
                    for h in fine], color="black", lw=1, ls="--", label="expected (tide x surge)")  # fmt: skip
    ax1.set_ylabel("offered load, req/s\n(engine time)")
    ax1.legend(loc="upper left", fontsize=8)
    ax1.set_title(
        f"{res.plan.setup}: {figs['gpus_mean']:.2f} GPUs held on average ({figs['gpus']} at most), "
        f"utilisation {figs['util']:.0%}, "
        f"${figs['cost_1k']:.2f} per 1k requests, {figs['served']:,}/{figs['sent']:,} served "
        f"(time scale {scale:g}, one business day = {day_s:g} s wall)"
    )
    _axis(ax1)

    wide = 1.0  # TTFT p99 per hour (fewer samples per bin than the load panel)
    for c in SLO_CLASSES:
        xs, ys = [], []
        for i in range(int(DAY_HOURS * len(DAYS) / wide)):
            vals = [r.ttft_ms for r in res.records if r.slo == c and r.outcome == "ok" and r.ttft_ms
                    and i * wide <= sim_hours(r.day, r.hour) < (i + 1) * wide]  # fmt: skip
            if vals:
                xs.append((i + 0.5) * wide)
                ys.append(pct(vals, 99))
        ax2.plot(xs, ys, marker="o", ms=3, color=COLOURS[c], label=f"{c} p99")
        ax2.axhline(TTFT_TARGET_MS[c], color=COLOURS[c], ls="--", lw=0.8)
    ax2.set_yscale("log")
    ax2.set_ylabel("TTFT p99 per hour, ms\n(engine time; dashed = target)")
    ax2.legend(loc="upper left", fontsize=8)
    _axis(ax2)

    for gpu, s in sorted(res.series.items()):
        if not any(s.held):
            continue
        hours = [t / day_s * DAY_HOURS for t in s.t]
        k = max(1, len(s.util) // nbins)  # smooth to about one point per bin
        xs, ys = [], []
        for i in range(0, len(hours), k):
            held = [u for u, h in zip(s.util[i : i + k], s.held[i : i + k], strict=True) if h]
            xs.append(sum(hours[i : i + k]) / len(hours[i : i + k]))
            ys.append(100 * sum(held) / len(held) if held else float("nan"))  # a gap: not held
        models = ", ".join(sorted(m.split("--")[-1] for m in s.models))
        label = f"{gpu}: {models}" if len(res.series) <= 6 else None
        ax3.plot(xs, ys, lw=0.8, alpha=0.7, label=label)
    ax3.axhline(60, color="grey", ls=":", lw=1)
    ax3.set_ylim(0, 105)
    ax3.set_ylabel("GPU utilisation while held, %\n(simulator busy time)")
    counts = timeline.held_counts(res)
    held_ax = ax3.twinx()
    held_ax.step([t / day_s * DAY_HOURS for t, _ in counts], [n for _, n in counts], where="post",
                 color="black", lw=1.5, label="GPUs held (right axis)")  # fmt: skip
    held_ax.set_ylim(0, max(n for _, n in counts) + 1)
    held_ax.set_ylabel("GPUs held")
    held_ax.legend(loc="upper right", fontsize=7)
    ax3.set_xlabel("simulated calendar: weekday 08-20h | month-end 08-20h (shaded: 10x surge window)")
    ax3.legend(loc="upper left", fontsize=7, ncol=2)
    _axis(ax3)

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
