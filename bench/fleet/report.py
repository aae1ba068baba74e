"""Figures, the printed table and the verdicts.

Definitions (engine time = wall x time scale; see workload.py):
  GPUs held        a GPU is held while a model is loaded or loading on it (timeline.py): static
                   holds its ten all the time; the harness what the pool's placement and
                   scaling loop use. Mean = GPU-hours held / calendar hours; peak = most at once.
  GPU utilisation  the simulators' busy time (nv_gpu_utilization integrated over the probe's
                   windows) / time held, summed over the GPUs (a time-weighted mean). The
                   simulator counts the part of a step in progress already run, so a long step
                   (the 70B's prefills) is spread over the windows it spans, not credited at
                   its end into one window that clips at 100%.
  compute demand   per GPU, the summed step time of its engines, rebuilt from their counters:
                   steps x step_overhead + decode_ms x output tokens + prefill_ms x prompt tokens
                   not served from the KV cache. Co-located engines share their simulated GPU
                   (their steps run one at a time, services/enginesim GpuClock), so demand near
                   100% means that GPU was the bottleneck and its engines slowed each other.
  TTFT             measured by the router core from the call to the first token (flow-control
                   queueing included), x time scale.
  SLO attainment   requests with TTFT <= the class target / requests sent (shed, timed out,
                   failed and cut requests count as misses).
  cost per 1k      GPU-hours held (engine time) x $/GPU-hour / requests served.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from bench._common import pct

from . import timeline
from .plan import REPO, profiles
from .runner import Record, SetupResult
from .workload import AGENTS, DAYS, SLO_CLASSES, TTFT_TARGET_MS

SURGE = (1, 13.0, 17.0)  # month-end day, 13:00-17:00: the 10x window
UTIL_CLAIM = 0.60
ATTAIN_TARGET = 0.99


def gpu_hour_usd() -> tuple[float, str]:
    """The H100's price from the demo price table (compose/demo.yaml), else the same default."""
    try:
        data = yaml.safe_load((REPO / "compose/demo.yaml").read_text())
        for p in data["cost"]["prices"]:
            if p["kind"] == "gpu_hour" and "H100" in p["subject"]:
                return float(p["usd"]), f"compose/demo.yaml gpu_hour {p['subject']}"
    except (OSError, KeyError, TypeError, ValueError):
        pass
    return 2.50, "default"


def in_surge(r: Record) -> bool:
    return r.day == SURGE[0] and SURGE[1] <= r.hour < SURGE[2]


def class_figures(records: list[Record], cls: str) -> dict:
    sent = [r for r in records if r.slo == cls]
    ttft = [r.ttft_ms for r in sent if r.outcome == "ok" and r.ttft_ms]
    met = sum(1 for r in sent if r.outcome == "ok" and 0 < r.ttft_ms <= TTFT_TARGET_MS[cls])
    return {
        "sent": len(sent), "p50": pct(ttft, 50), "p99": pct(ttft, 99),
        "attain": met / len(sent) if sent else float("nan"),
    }  # fmt: skip


def _counters_at(series, t: float) -> dict:
    best = series.counters[0][1] if series.counters else {}
    for ts, c in series.counters:
        if ts <= t:
            best = c
    return best


def compute_demand(res: SetupResult, window: tuple[float, float] | None = None) -> dict[str, float]:
    """Per GPU: summed engine step time / time, over the run or a wall window (t0, t1)."""
    prof = profiles()
    scale = res.time_scale
    t0, t1 = window or (0.0, float("inf"))
    out = {}
    for gpu, series in res.series.items():
        start = _counters_at(series, t0) if window else {}
        end = _counters_at(series, t1)
        busy_ms = 0.0
        for model, c in end.items():
            lat = prof[model.split("--", 1)[-1]]
            steps = c.get("steps", 0) - start.get(model, {}).get("steps", 0)
            reused = c.get("reused", 0) - start.get(model, {}).get("reused", 0)
            recs = [
                r for r in res.records
                if r.gpu == gpu and res.plan.agent_model[r.agent][1] == model
                and t0 <= (r.day * res.day_s + (r.hour - 8) / 12 * res.day_s) < t1
            ]  # fmt: skip
            out_tok = sum(r.output_tokens for r in recs)
            in_tok = max(0.0, sum(r.input_tokens for r in recs) - reused * lat["kv_block_size"])
            la = lat["latency"]
            busy_ms += (
                steps * la["step_overhead_ms"] + out_tok * la["decode_ms_per_token"]
                + in_tok * la["prefill_ms_per_token"]
            )  # fmt: skip
        span = (min(t1, series.t[-1] if series.t else 0.0) - t0) if series.t else 0.0
        out[gpu] = busy_ms / (span * scale * 1000) if span > 0 else 0.0
    return out


def figures(res: SetupResult) -> dict:
    usd, _ = gpu_hour_usd()
    recs = res.records
    served = sum(1 for r in recs if r.outcome == "ok")
    hours = len(DAYS) * res.day_s * res.time_scale / 3600  # engine hours of the calendar
    gpu_h = timeline.gpu_hours(res)
    counts = [n for _, n in timeline.held_counts(res)]
    day = res.day_s
    surge_w = (day + (SURGE[1] - 8) / 12 * day, day + (SURGE[2] - 8) / 12 * day)
    demand, surge_demand = compute_demand(res), compute_demand(res, surge_w)
    lags = res.loop_lag_ms or [0.0]
    rt_models = {res.plan.agent_model[a.name][1] for a in AGENTS if a.slo == "realtime"}
    return {
        "setup": res.plan.setup, "time_scale": res.time_scale, "gpus": max(counts), "gpus_mean": gpu_h / hours,
        "colocated": [n for n, s in res.series.items() if len(s.models) > 1],
        # Over the calendar, like the GPU-hours: the drain after 20:00 (which may wait out a
        # held summary's cold start) is not part of the business days.
        "util": timeline.utilisation(res, 0.0, len(DAYS) * day),
        "util_per_gpu": timeline.gpu_utilisation(res, 0.0, len(DAYS) * day),
        "util_days": [timeline.utilisation(res, d * day, (d + 1) * day) for d in range(len(DAYS))],
        "util_surge": timeline.utilisation(res, *surge_w),
        "sent": len(recs), "served": served,
        **{k: sum(1 for r in recs if r.outcome == k) for k in ("shed", "timeout", "failed", "cut")},
        "gpu_hours": gpu_h, "cost_1k": gpu_h * usd / served * 1000 if served else float("nan"),
        "monthly_usd": gpu_h / hours * 730 * usd, "events": len(res.events or []),
        "events_failed": sum(1 for e in res.events or [] if e[5]), "warmup_s": res.warmup_s,
        "classes": {c: class_figures(recs, c) for c in SLO_CLASSES},
        "surge": {c: class_figures([r for r in recs if in_surge(r)], c) for c in SLO_CLASSES},
        "demand": demand, "surge_demand": surge_demand,
        "lag_p99": pct(lags, 99), "lag_max": max(lags),
        # the deepest engine queue the probe saw under the realtime agents' models
        "rt_queue": max(s.max_waiting.get(m, 0) for s in res.series.values() for m in rt_models),
    }  # fmt: skip


def _ms(v: float) -> str:
    if v != v:
        return "-"
    return f"{v / 1000:,.1f} s" if v >= 10_000 else f"{v:,.0f}"


def table(figs: dict[str, dict]) -> str:
    s, h = figs["static"], figs["harness"]
    usd, src = gpu_hour_usd()
    rows = [
        ("GPUs held (H100 SXM 80GB), mean / peak", f"{s['gpus_mean']:.2f} / {s['gpus']}", f"{h['gpus_mean']:.2f} / {h['gpus']}"),
        ("scaling changes (refused)", "-", f"{h['events']} ({h['events_failed']})"),
        ("mean GPU utilisation (busy / held time)", f"{s['util']:.0%}", f"{h['util']:.0%}"),
        ("  weekday / month-end / surge 13-17h", "{:.0%} / {:.0%} / {:.0%}".format(*s["util_days"], s["util_surge"]),
         "{:.0%} / {:.0%} / {:.0%}".format(*h["util_days"], h["util_surge"])),
        ("GPU compute demand (est.), busiest: run / surge", f"{max(s['demand'].values()):.0%} / {max(s['surge_demand'].values()):.0%}",
         f"{max(h['demand'].values()):.0%} / {max(h['surge_demand'].values()):.0%}"),
        ("requests sent / served", f"{s['sent']:,} / {s['served']:,}", f"{h['sent']:,} / {h['served']:,}"),
        ("shed (flow control) / timed out / failed / cut",
         f"{s['shed']} / {s['timeout']} / {s['failed']} / {s['cut']}", f"{h['shed']} / {h['timeout']} / {h['failed']} / {h['cut']}"),
        ("GPU-hours held (engine time)", f"{s['gpu_hours']:.2f}", f"{h['gpu_hours']:.2f}"),
        (f"cost per 1k requests (${usd:.2f}/GPU-h)", f"${s['cost_1k']:.2f}", f"${h['cost_1k']:.2f}"),
        ("GPU bill per month (730 h at the mean)", f"${s['monthly_usd']:,.0f}", f"${h['monthly_usd']:,.0f}"),
        ("router event-loop lag p99 / max, wall ms", f"{s['lag_p99']:.0f} / {s['lag_max']:.0f}", f"{h['lag_p99']:.0f} / {h['lag_max']:.0f}"),
    ]  # fmt: skip
    w0 = max(len(r[0]) for r in rows) + 2
    out = [f"{'':<{w0}}{'static':>22}{'harness':>22}", "-" * (w0 + 44)]
    out += [f"{a:<{w0}}{b:>22}{c:>22}" for a, b, c in rows]
    out.append("")
    head = f"{'class (TTFT target)':<30}{'sent':>6}  {'static p50 / p99 ms':>22}{'SLO':>6}  {'harness p50 / p99 ms':>22}{'SLO':>6}"
    out += [head, "-" * len(head)]
    for label, key in (("", "classes"), (" surge", "surge")):
        for c in SLO_CLASSES:
            a, b = s[key][c], h[key][c]
            name = f"{c}{label} ({_ms(TTFT_TARGET_MS[c])} ms)".replace(" s ms", " s")
            out.append(
                f"{name:<30}{a['sent']:>6}  {_ms(a['p50']) + ' / ' + _ms(a['p99']):>22}{a['attain']:>6.0%}"
                f"  {_ms(b['p50']) + ' / ' + _ms(b['p99']):>22}{b['attain']:>6.0%}"
            )
    out.append(f"(price: {src}; 'surge' = month-end 13:00-17:00 arrivals; per-GPU demand in the verdicts)")
    return "\n".join(out)


def verdicts(figs: dict[str, dict]) -> list[str]:
    s, h = figs["static"], figs["harness"]
    out = []
    yes = lambda ok: "yes" if ok else "no"  # noqa: E731
    out.append(
        f"utilisation over {UTIL_CLAIM:.0%}: static {s['util']:.0%} / harness {h['util']:.0%} -> "
        f"harness {yes(h['util'] >= UTIL_CLAIM)}, static {yes(s['util'] >= UTIL_CLAIM)}"
    )
    fewer = 1 - h["gpus"] / s["gpus"]
    out.append(
        f"fewer GPUs: static {s['gpus']} / harness {h['gpus']} -> {yes(h['gpus'] < s['gpus'])}"
        + (f" ({fewer:.0%} fewer)" if h["gpus"] < s["gpus"] else "")
    )
    t = TTFT_TARGET_MS["realtime"]
    for key, label in (("classes", "whole run"), ("surge", "month-end surge")):
        a, b = s[key]["realtime"]["p99"], h[key]["realtime"]["p99"]
        out.append(
            f"realtime TTFT p99 within {t:.0f} ms ({label}): static {_ms(a)} ms / harness {_ms(b)} ms -> "
            f"harness {yes(b <= t)}, static {yes(a <= t)}"
        )
    for k, x in figs.items():
        if x["classes"]["realtime"]["p99"] > t and x["rt_queue"] == 0:
            out.append(
                f"  ({k}: the realtime engines never queued a request in the probe's samples, so those misses "
                f"are CPU stalls of the benchmark machine, not engine queueing (router event-loop lag max {x['lag_max']:.0f} ms "
                f"wall = {x['lag_max'] * x['time_scale']:.0f} ms engine time))"
            )
    kept = {k: [c for c in SLO_CLASSES if figs[k]["surge"][c]["attain"] >= ATTAIN_TARGET] for k in figs}
    lost = [c for c in SLO_CLASSES if c not in kept["harness"]]
    out.append(
        f"SLOs kept through the month-end surge (>= {ATTAIN_TARGET:.0%} attainment per class): "
        + ", ".join(f"{c} {s['surge'][c]['attain']:.0%}/{h['surge'][c]['attain']:.0%}" for c in SLO_CLASSES)
        + f" (static/harness) -> harness {'yes' if not lost else 'no: missed ' + ', '.join(lost)}"
        + f"; static {'yes' if len(kept['static']) == len(SLO_CLASSES) else 'no'}"
    )
    s_lost, h_lost = (x["shed"] + x["timeout"] + x["failed"] + x["cut"] for x in (s, h))
    out.append(
        f"requests not served (shed + timed out + failed + cut): static {s_lost} / harness {h_lost} -> "
        + (
            "harness sheds none"
            if h_lost == 0
            else ("harness sheds more" if h_lost > s_lost else "harness sheds fewer or as many")
        )
    )
    ratio = h["cost_1k"] / s["cost_1k"]
    out.append(
        f"cost ratio harness/static per 1k requests: {ratio:.2f} (${h['cost_1k']:.2f} vs ${s['cost_1k']:.2f}) -> "
        f"harness {'cheaper' if ratio < 1 else 'dearer'}"
    )
    shared = h["colocated"]
    if not shared:
        out.append(
            "co-located models within one GPU's compute: n/a (the Harness's placement gave every model its own GPU)"
        )
        return out
    worst = max(shared, key=h["surge_demand"].get)
    over = h["surge_demand"][worst]
    out.append(
        f"co-located models within one GPU's compute: harness {worst} demand {h['demand'][worst]:.0%} over the run, "
        f"{over:.0%} in the surge -> {yes(over < 0.95)}"
        + ("" if over < 0.95 else ": that GPU was saturated in the surge (its engines time-slice it), "
           "so its models' latencies carry the contention")
    )  # fmt: skip
    return out


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
