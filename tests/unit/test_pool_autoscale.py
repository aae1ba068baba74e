"""Compute-aware placement, scale-in victims and the scaling loop's decisions, on fakes."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import ResourceExhausted
from services.pool.autoscale import Autoscaler, AutoscaleSettings, Trend, decide
from services.pool.placement import plan_placement, scale_in_victims
from services.pool.scaling import Advice, ScalingLimits, Signals, advise_one, model_compute, signals_of
from services.pool.state import GIB
from tests.helpers.pool_world import CATALOG, World


def footprint(triton_model: str) -> int:
    spec = CATALOG.find(triton_model)
    return spec.memory_bytes if spec else 0


def test_placement_counts_compute_not_only_memory():
    w = World(("a", 80, ""), ("b", 80, ""))
    w.loaded["a"]["small-trt"] = 0
    w.utilization["a"] = 0.7  # the GPU the small model saturates less than fully
    w.probe_all()
    states = w.table.states()
    # Memory only (no share known): a is the tighter fit and below the busy mark.
    plan = plan_placement(states, "mid-trt", 33 * GIB, 1, headroom=0.0)
    assert [p.endpoint for p in plan.placements] == ["a"]
    # A replica expected to keep 30% of a GPU busy does not fit a's compute (70% + 30% > 80%).
    plan = plan_placement(states, "mid-trt", 33 * GIB, 1, headroom=0.0, compute_share=0.3)
    assert [p.endpoint for p in plan.placements] == ["b"]
    # 10% does.
    plan = plan_placement(states, "mid-trt", 33 * GIB, 1, headroom=0.0, compute_share=0.1)
    assert [p.endpoint for p in plan.placements] == ["a"]
    # Compute promised to a load in flight counts like measured utilisation.
    plan = plan_placement(
        states, "mid-trt", 33 * GIB, 1, headroom=0.0, compute_share=0.1, pending_compute={("a", 0): 0.05}
    )
    assert [p.endpoint for p in plan.placements] == ["b"]


def test_placement_says_when_memory_fits_but_compute_does_not():
    w = World(("a", 80, ""), ("b", 80, ""))
    w.utilization.update(a=0.75, b=0.9)
    w.probe_all()
    plan = plan_placement(w.table.states(), "mid-trt", 33 * GIB, 1, headroom=0.0, compute_share=0.2)
    assert plan.placements == () and plan.shortfall_bytes == 0
    assert "no GPU has the compute for 1 more replica(s) of mid-trt at 20%" in plan.reason
    assert "a at 75%" in plan.reason and "b at 90%" in plan.reason


async def test_scale_out_is_refused_rather_than_placed_on_a_saturated_gpu():
    w = World(("a", 80, ""), ("b", 80, ""))
    m = w.manager()
    await m.deploy("small", 1, "agent:x")
    w.probe_all()
    w.utilization.update(a=0.95, b=0.95)  # b is busy with another tenant's work
    w.probe_all()
    with pytest.raises(ResourceExhausted, match="not the compute"):
        await m.scale_to("small", 2, compute_share=0.3)
    assert m.get("small").desired == 1  # the refused target does not stick
    w.utilization["b"] = 0.1
    w.probe_all()
    await m.scale_to("small", 2, compute_share=0.3)
    assert w.loads()[-1] == ("b", "small-trt")


async def test_concurrent_scale_outs_do_not_share_the_same_spare_compute():
    w = World(("a", 80, ""), ("b", 80, ""), ("c", 80, ""))
    m = w.manager()
    await m.deploy("small", 1, "agent:x")
    await m.deploy("mid", 1, "agent:y")
    w.probe_all()
    assert {e for e, _ in w.loads()} == {"a"}  # best fit packs both on a
    w.utilization.update(a=0.95, b=0.0, c=0.4)
    w.probe_all()
    # Both models' new replicas want 0.45 of a GPU: b can take one (0.9 > 0.8 for two), c none.
    m.pending.begin(("b", 0, "mid-trt"), 33 * GIB, 0.45)
    plan = m.plan("small", 2, compute_share=0.45)
    assert plan.new == () and "b at 45%" in plan.reason


def test_scale_in_victims_free_a_gpu_then_take_the_newest():
    w = World(("a", 80, ""), ("b", 80, ""), ("c", 80, ""))
    w.loaded["a"].update({"small-trt": 0, "mid-trt": 0})
    w.loaded["b"].update({"small-trt": 0})
    w.loaded["c"].update({"small-trt": 0, "mid-trt": 0})
    w.probe_all()
    states = w.table.states()
    # b holds nothing else: giving it up frees a GPU.
    assert scale_in_victims(states, "small-trt", 1, footprint, order=["a", "b", "c"]) == ["b"]
    # Between a and c (each keeps mid), the newer replica goes: what a scale-out added.
    two = scale_in_victims(states, "small-trt", 2, footprint, order=["a", "c", "b"])
    assert two == ["b", "c"]
    # ...so mid shrinking next leaves c empty too, not a.
    w.loaded["c"].pop("small-trt")
    w.probe_all()
    assert scale_in_victims(w.table.states(), "mid-trt", 1, footprint, order=["a", "c"]) == ["c"]


def test_model_compute_splits_a_shared_gpu_by_active_requests():
    w = World(("a", 80, ""))
    w.loaded["a"].update({"small-trt": 0, "mid-trt": 0})
    w.utilization["a"] = 0.8
    w.active.update({("a", "small-trt"): 3, ("a", "mid-trt"): 1})
    w.probe_all()
    state = w.table.get("a")
    assert model_compute(state, "small-trt") == pytest.approx(0.6)
    assert model_compute(state, "mid-trt") == pytest.approx(0.2)
    w.active.clear()
    w.probe_all()
    assert model_compute(w.table.get("a"), "mid-trt") == pytest.approx(0.4)  # none active: even split
    assert model_compute(w.table.get("a"), "big-trt") == 0.0


def test_scale_in_when_the_others_can_absorb_the_load():
    limits = ScalingLimits(max_replicas=4)
    # Two replicas on GPUs at 35%, the model using 0.5 of a GPU in all: the one left would see
    # 35% + 25% = 60%: one can go.
    a = advise_one("m", Signals(2, 0, 6, 0.2, 0.35, 0.5), limits, 4)
    assert a.advised == 1 and "can absorb" in a.reason
    # Using 0.7 in all: 35% + 35% = 70%: stay.
    assert advise_one("m", Signals(2, 0, 6, 0.2, 0.35, 0.7), limits, 4).advised == 2
    # Something waiting: stay, however low the rest.
    assert advise_one("m", Signals(2, 1, 6, 0.2, 0.2, 0.1), limits, 4).advised == 2
    # Three at 38% using 1.14: two would run at 38% + 19% = 57%: one can go.
    assert advise_one("m", Signals(3, 0, 6, 0.2, 0.38, 1.14), limits, 4).advised == 2
    # KV the others could not hold: stay.
    assert advise_one("m", Signals(2, 0, 6, 0.4, 0.2, 0.2), limits, 4).advised == 2


def test_a_busy_gpu_calls_for_a_replica_only_when_requests_wait_or_models_take_turns():
    limits = ScalingLimits(max_replicas=4)
    # One long sequence keeps an engine alone on its GPU busy: not a reason for another GPU.
    assert advise_one("m", Signals(1, 0, 1, 0.05, 0.99, 0.99), limits, 4).advised == 1
    assert advise_one("m", Signals(1, 2, 3, 0.05, 0.99, 0.99), limits, 4).advised == 2  # queueing
    shared = advise_one("m", Signals(1, 0, 1, 0.05, 0.99, 0.5, contended=True), limits, 4)
    assert shared.advised == 2 and "shared GPU" in shared.reason


def test_decide_waits_out_the_windows_and_the_cooldown():
    s = AutoscaleSettings(interval_s=1, up_after_s=2, down_after_s=10, cooldown_s=5)
    out, hold, back = Advice("m", 1, 2, "hot"), Advice("m", 2, 2, "ok"), Advice("m", 2, 1, "cold")
    t = Trend(since=0.0)
    assert decide(out, t, 0.0, s, loading=False) is None  # hot just now
    assert decide(out, t, 1.0, s, loading=False) is None
    assert decide(out, t, 2.0, s, loading=True) is None  # a load is still running
    assert decide(out, t, 2.0, s, loading=False) == 2
    t.changed_at = 2.0
    assert decide(out, t, 3.0, s, loading=False) is None  # cooldown
    assert decide(hold, t, 8.0, s, loading=False) is None
    # Cold from 8 s: not before 18 s.
    assert decide(back, t, 8.0, s, loading=False) is None
    assert decide(back, t, 17.9, s, loading=False) is None
    assert decide(hold, t, 18.0, s, loading=False) is None  # a warm sample restarts the window
    assert decide(back, t, 19.0, s, loading=False) is None
    assert decide(back, t, 29.0, s, loading=False) == 1


def test_scale_in_window_tolerates_lone_samples_above_the_low_marks_but_not_a_hot_stretch():
    s = AutoscaleSettings(interval_s=1, up_after_s=2, down_after_s=10, cooldown_s=5, down_share=0.8)
    out, hold, back = Advice("m", 2, 3, "hot"), Advice("m", 2, 2, "ok"), Advice("m", 2, 1, "cold")

    def run(samples: list[Advice], loading_at: tuple[int, ...] = ()) -> int | None:
        """Evaluations 1 s apart after a change at 0; the first decision that is not None, or None."""
        t = Trend(since=0.0, changed_at=0.0)
        for i, advice in enumerate(samples, start=1):
            target = decide(advice, t, float(i), s, loading=i in loading_at)
            if target is not None:
                return i
        return None

    # Cold, with two bursty samples between the marks: scale in 10 s after the change.
    assert run([back] * 4 + [hold] + [back] * 3 + [hold] + [back] * 6) == 10
    # A lone hot sample counts against the share only; hot for up_after_s (5-7 s) restarts it.
    assert run([back] * 4 + [out] + [back] * 20) == 10
    # (a load still running, so the hot stretch is not acted on)
    assert run([back] * 4 + [out] * 3 + [back] * 20, loading_at=(5, 6, 7)) == 17
    # Mostly between the marks: never.
    assert run([back, hold, hold] * 10) is None
    with pytest.raises(ValueError, match="down_share"):
        AutoscaleSettings(down_share=0.0)


async def test_autoscaler_scales_out_on_spare_compute_and_back_to_the_claims():
    w = World(("a", 80, ""), ("b", 80, ""), ("c", 80, ""))
    m = w.manager()
    await m.deploy("small", 1, "agent:x")
    await m.deploy("mid", 1, "agent:y")
    w.probe_all()
    clock = [0.0]
    scaler = Autoscaler(m, ScalingLimits(max_replicas=3), AutoscaleSettings(1, 1, 4, 2), lambda: clock[0])
    # Both on a; a saturated, small has the queue and most of the work.
    w.utilization.update(a=0.97, b=0.0, c=0.85)
    w.active.update({("a", "small-trt"): 6, ("a", "mid-trt"): 2})
    w.probe_all()
    for _ in range(2):
        scaler.step()
        clock[0] += 1
    await wait_tasks(scaler)
    # Both hot (the GPU they share is): each gets a replica; b had the compute, c (85%) had not.
    assert sorted(w.loads()[2:]) == [("b", "mid-trt"), ("b", "small-trt")]
    assert {e.after for e in scaler.events} == {2} and not any(e.error for e in scaler.events)
    # The surge ends: every GPU cool. Not before the scale-in window has passed.
    w.utilization.update(a=0.1, b=0.1, c=0.1)
    w.active.clear()
    w.probe_all()
    scaler.step()
    clock[0] += 3
    scaler.step()
    assert m.get("small").desired == 2
    clock[0] += 2
    scaler.step()
    await wait_tasks(scaler)
    # Both leave b (the newer replicas), so b's GPU is empty; the claims' floor (1) holds.
    assert sorted(c for c in w.calls if c[0] == "unload") == [
        ("unload", "b", "mid-trt"),
        ("unload", "b", "small-trt"),
    ]
    clock[0] += 10
    w.probe_all()
    scaler.step()
    assert m.get("small").desired == 1 and m.get("mid").desired == 1


async def test_autoscaler_records_a_refused_scale_out_and_retries_after_the_cooldown():
    w = World(("a", 80, ""), ("b", 80, ""))
    m = w.manager()
    await m.deploy("big", 1, "agent:x")
    w.probe_all()
    clock = [0.0]
    scaler = Autoscaler(m, ScalingLimits(max_replicas=2), AutoscaleSettings(1, 0, 4, 2), lambda: clock[0])
    w.utilization.update(a=0.99, b=0.95)
    w.active[("a", "big-trt")] = 9
    w.waiting[("a", "big-trt")] = 4
    w.probe_all()
    assert scaler.step() == [("big", 2)]
    await wait_tasks(scaler)
    assert "not the compute" in scaler.events[-1].error and m.get("big").desired == 1
    clock[0] += 1
    assert scaler.step() == []  # cooling down
    clock[0] += 1.5
    w.utilization["b"] = 0.0
    w.probe_all()
    assert scaler.step() == [("big", 2)]
    await wait_tasks(scaler)
    assert scaler.events[-1].error == "" and w.loads()[-1] == ("b", "big-trt")
    assert signals_of(m, "big").replicas == 1  # b is READY only once a probe shows it
    w.probe_all()
    assert signals_of(m, "big").replicas == 2


async def wait_tasks(scaler: Autoscaler) -> None:
    while scaler._tasks:
        await asyncio.gather(*scaler._tasks.values())
        await asyncio.sleep(0)  # the done callbacks that forget the tasks


async def test_concurrent_change_records_on_the_memory_database():
    from services.pool.admin_changes import POOL_ITSELF, ChangeLog, memory_engine

    log = ChangeLog(memory_engine())
    try:
        await asyncio.gather(*(log.record(f"deployment:m{i}", "deploy", {}, POOL_ITSELF) for i in range(20)))
        assert sorted(r.object for r in log.pending(100)) == sorted(f"deployment:m{i}" for i in range(20))
    finally:
        log.engine.dispose()
