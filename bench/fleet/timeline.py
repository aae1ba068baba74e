"""GPUs over time: which are held, how busy while held, and the pool's scaling events.

A GPU is held from the sample where some model's memory is allocated on it (loaded or loading)
to the sample where none is; its utilisation counts only while held (busy time / time held),
and so do its GPU-hours. The static set-up holds all its GPUs all the time.
"""

from __future__ import annotations

import bisect

from .probe import GpuSeries
from .runner import SetupResult
from .workload import DAY_HOURS, DAY_START_H, DAYS

BLOCK_H = 2.0  # hours of the calendar per column of the per-GPU table


def _steps(s: GpuSeries, t0: float, t1: float):
    """(dt, util, held) per sample interval, the part of it inside [t0, t1) (an interval that
    spans a column's edge counts in both, each its own part); the first starts at the run's start."""
    prev = 0.0
    for t, u, h in zip(s.t, s.util, s.held, strict=True):
        dt = min(t, t1) - max(prev, t0)
        if dt > 0:
            yield dt, u, h
        prev = t


def busy_held(res: SetupResult, t0: float = 0.0, t1: float = float("inf")) -> tuple[float, float]:
    """Summed busy and held wall seconds over every GPU in [t0, t1)."""
    busy = held = 0.0
    for s in res.series.values():
        for dt, u, h in _steps(s, t0, t1):
            if h:
                busy, held = busy + u * dt, held + dt
    return busy, held


def utilisation(res: SetupResult, t0: float = 0.0, t1: float = float("inf")) -> float:
    busy, held = busy_held(res, t0, t1)
    return busy / held if held else 0.0


def gpu_utilisation(res: SetupResult, t0: float = 0.0, t1: float = float("inf")) -> dict[str, float]:
    """Per GPU: busy / held time in [t0, t1) (0 for a GPU never held)."""
    out = {}
    for name, s in res.series.items():
        busy = held = 0.0
        for dt, u, h in _steps(s, t0, t1):
            if h:
                busy, held = busy + u * dt, held + dt
        out[name] = busy / held if held else 0.0
    return out


def gpu_hours(res: SetupResult) -> float:
    """GPU-hours held over the calendar (engine time)."""
    _, held = busy_held(res, 0.0, len(DAYS) * res.day_s)
    return held * res.time_scale / 3600


def held_counts(res: SetupResult, step_s: float = 0.5) -> list[tuple[float, int]]:
    """(wall t, GPUs held) on a regular grid over the calendar."""
    horizon = len(DAYS) * res.day_s
    out = []
    for i in range(int(horizon / step_s) + 1):
        t = i * step_s
        n = 0
        for s in res.series.values():
            j = bisect.bisect_left(s.t, t)
            n += j < len(s.t) and s.held[j]
        out.append((t, n))
    return out


def calendar(t: float, day_s: float) -> str:
    day = min(len(DAYS) - 1, int(t // day_s))
    hour = DAY_START_H + DAY_HOURS * min(1.0, max(0.0, t - day * day_s) / day_s)
    return f"{DAYS[day]} {int(hour):02d}:{int(hour % 1 * 60):02d}"


def gpu_table(res: SetupResult) -> str:
    """Per GPU: utilisation while held in each BLOCK_H of the calendar ('-': not held)."""
    blocks = int(DAY_HOURS / BLOCK_H)
    span = res.day_s * BLOCK_H / DAY_HOURS
    heads = [
        f"{'wd' if d == 0 else 'me'} {int(DAY_START_H + b * BLOCK_H):02d}"
        for d in range(len(DAYS))
        for b in range(blocks)
    ]
    lines = [
        f"{'GPU':<8}" + "".join(f"{h:>7}" for h in heads) + f"{'held h':>8}  models",
        "-" * (8 + 7 * len(heads) + 30),
    ]
    for name, s in sorted(res.series.items()):
        cells, held_total = [], 0.0
        for i in range(len(heads)):
            busy = held = 0.0
            for dt, u, h in _steps(s, i * span, (i + 1) * span):
                if h:
                    busy, held = busy + u * dt, held + dt
            held_total += held
            cells.append(f"{busy / held:.0%}" if held > 0.05 * span else "-")
        hours = held_total / res.day_s * DAY_HOURS  # calendar hours
        models = ", ".join(sorted(m.split("--")[-1] for m in s.models)) or "(never used)"
        lines.append(f"{name:<8}" + "".join(f"{c:>7}" for c in cells) + f"{hours:>8.1f}  {models}")
    lines.append(
        f"(utilisation while held per {BLOCK_H:g} h of the calendar; wd = weekday, me = month-end; - = not held)"
    )
    return "\n".join(lines)


def events_text(res: SetupResult) -> str:
    if not res.events:
        return "scaling events: none"
    out = ["scaling events (the pool's loop; calendar time when decided):"]
    for t, model, before, after, reason, error in res.events:
        what = "applied" if not error else f"NOT applied: {error}"
        out.append(f"  {calendar(t, res.day_s)}  {model} {before} -> {after}: {what} ({reason})")
    return "\n".join(out)
