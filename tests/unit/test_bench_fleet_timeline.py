"""The fleet benchmark's accounting (bench/fleet): per-GPU held time and utilisation over the
calendar's columns, and the pool's scale-in window converted from calendar time."""

import pytest

from bench.fleet import pooled, timeline
from bench.fleet.plan import harness_plan
from bench.fleet.probe import GpuSeries
from bench.fleet.runner import SetupResult

DAY_S = 12.0  # wall seconds per business day: one 2-hour column = 2 s


def result(series: GpuSeries) -> SetupResult:
    return SetupResult(harness_plan(1), 2.0, DAY_S, [], {"gpu-00": series}, {}, 2 * DAY_S)


def test_an_interval_across_a_column_edge_counts_in_both_columns():
    # Samples every 1.5 s: the interval (1.5, 3.0] spans the edge at 2 s between the first two
    # columns. The GPU is held throughout, busy 100% in that interval and idle otherwise.
    ts = [1.5 * i for i in range(1, 17)]  # up to 24 s: the whole two-day calendar
    s = GpuSeries(t=ts, util=[1.0 if t == 3.0 else 0.0 for t in ts], held=[True] * len(ts))
    res = result(s)
    assert timeline.busy_held(res, 0.0, 2.0) == pytest.approx((0.5, 2.0))
    assert timeline.busy_held(res, 2.0, 4.0) == pytest.approx((1.0, 2.0))
    held = sum(timeline.busy_held(res, 2.0 * i, 2.0 * (i + 1))[1] for i in range(12))
    assert held == pytest.approx(24.0)  # the columns add up to the whole calendar
    table = timeline.gpu_table(res)
    row = next(line for line in table.splitlines() if line.startswith("gpu-00"))
    assert "24.0" in row.split()  # held hours: every column, edges included
    assert row.split()[1:3] == ["25%", "50%"]


def test_time_after_the_calendar_is_not_counted():
    s = GpuSeries(t=[10.0, 20.0, 30.0], util=[0.5, 0.5, 1.0], held=[True, True, True])
    busy, held = timeline.busy_held(result(s), 0.0, 24.0)
    assert held == pytest.approx(24.0)
    assert busy == pytest.approx(0.5 * 20.0 + 1.0 * 4.0)


def test_scale_in_window_is_calendar_time_with_a_floor_of_evaluations():
    # Quick scale: 480x compression, 300 calendar s = 0.625 engine s, under three evaluations.
    assert pooled.scale_in_window_s(2.0, 45.0) == pytest.approx(3 * pooled.AUTOSCALE["interval_s"])
    # Long scale: 36x, 300 calendar s = 8.3 engine s.
    assert pooled.scale_in_window_s(2.0, 600.0) == pytest.approx(300.0 / 36.0)
    # The real calendar: 300 s.
    assert pooled.scale_in_window_s(1.0, 12 * 3600.0) == pytest.approx(300.0)
