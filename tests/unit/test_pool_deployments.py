"""Pool deployments without servers: placement, claims, load failures, idle, warm-up, advice."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from services.pool.catalog import ModelCatalog, ModelSpec, parse_model_flag
from services.pool.endpoints import EndpointTable
from services.pool.placement import plan_placement
from services.pool.scaling import ScalingLimits, Signals, advise_one
from services.pool.scrape import parse_triton_metrics
from services.pool.state import (
    GIB,
    HEALTHY,
    READY,
    EndpointSpec,
    IndexEntry,
    MetricsSample,
    ModelLoad,
    ProbeResult,
)
from tests.helpers.pool_world import World


def test_plan_best_fit_zone_spread_and_shortfall():
    w = World(("a", 80, "z1"), ("b", 40, "z1"), ("c", 80, "z2"))
    states = w.table.states()
    # Best fit: the 40 GiB endpoint is the tightest home for 33 GiB.
    plan = plan_placement(states, "mid-trt", 33 * GIB, 1, headroom=0.0)
    assert [(p.endpoint, p.new) for p in plan.placements] == [("b", True)] and plan.shortfall_bytes == 0
    # Two replicas: after b (z1), the other zone beats the tighter same-zone fit.
    plan = plan_placement(states, "mid-trt", 33 * GIB, 2, headroom=0.0)
    assert [p.endpoint for p in plan.placements] == ["b", "c"]
    changes = {(m.endpoint, m.gpu): (m.before, m.after, m.total) for m in plan.memory}
    assert changes[("b", 0)] == (0, 33 * GIB, 40 * GIB) and changes[("a", 0)] == (0, 0, 80 * GIB)
    # Headroom: 40 GiB minus 20% leaves 32 GiB, too small.
    plan = plan_placement(states, "mid-trt", 33 * GIB, 1, headroom=0.2)
    assert [p.endpoint for p in plan.placements] == ["a"]
    # Four replicas of 63 GiB: two fit; the rest lack 63 - 40 (b) and a whole replica (none left).
    plan = plan_placement(states, "big-trt", 63 * GIB, 4, headroom=0.0)
    assert len(plan.placements) == 2
    assert plan.shortfall_bytes == (63 - 40) * GIB + 63 * GIB
    assert "short by 86.0 GiB" in plan.reason


def test_plan_avoids_a_saturated_gpu_while_another_fits():
    w = World(("a", 80, ""), ("b", 40, ""), ("c", 40, ""))
    w.utilization["b"] = 0.97  # the tightest fit is saturated by the models already there
    w.probe_all()
    plan = plan_placement(w.table.states(), "mid-trt", 33 * GIB, 1, headroom=0.0)
    assert [p.endpoint for p in plan.placements] == ["c"]  # the next tightest, not busy
    w.utilization["c"] = 0.85
    w.probe_all()
    plan = plan_placement(w.table.states(), "mid-trt", 33 * GIB, 1, headroom=0.0)
    assert [p.endpoint for p in plan.placements] == ["a"]  # a loose fit beats two busy GPUs
    w.utilization["a"] = 0.9
    w.probe_all()
    plan = plan_placement(w.table.states(), "mid-trt", 33 * GIB, 1, headroom=0.0)
    assert [p.endpoint for p in plan.placements] == ["b"]  # all busy: best fit again
    plan = plan_placement(w.table.states(), "mid-trt", 33 * GIB, 1, headroom=0.0, busy_utilization=1.0)
    assert [p.endpoint for p in plan.placements] == ["b"]


async def test_five_owners_share_one_load_per_endpoint_and_refcount_unload():
    w = World(("a", 80, ""), ("b", 80, ""))
    m = w.manager()
    for i in range(5):
        view = await m.deploy("mid", 2, f"agent:{i}")
        w.probe_all()
    assert sorted(w.loads()) == [("a", "mid-trt"), ("b", "mid-trt")]
    assert view.owners == tuple(f"agent:{i}" for i in range(5)) and view.ready_replicas == 2
    assert {p.load_time_s for p in view.placements} == {0.25}
    # By its Triton name too; the same owner again replaces its claim.
    await m.deploy("mid-trt", 1, "agent:0")
    assert len(w.loads()) == 2
    for i in range(4):
        await m.undeploy("mid", f"agent:{i}")
    assert w.loaded["a"] and w.loaded["b"]  # agent:4 still holds 2 replicas
    with pytest.raises(NotFound):
        await m.undeploy("mid", "agent:0")
    await m.undeploy("mid", "agent:4")
    assert not w.loaded["a"] and not w.loaded["b"] and m.views() == ()
    with pytest.raises(NotFound):
        await m.undeploy("mid", "agent:4")


async def test_scale_down_when_the_largest_claim_goes():
    w = World(("a", 80, ""), ("b", 80, ""))
    m = w.manager()
    await m.deploy("small", 2, "x")
    await m.deploy("small", 1, "y")
    w.probe_all()
    await m.undeploy("small", "x")
    assert sum(1 for e in w.loaded.values() if "small-trt" in e) == 1
    assert m.views()[0].replicas == 1


async def test_bad_inputs_and_memory_shortfall():
    w = World(("a", 40, ""), ("b", 40, ""))
    m = w.manager()
    with pytest.raises(InvalidArgument):
        await m.deploy("mid", 0, "x")
    with pytest.raises(NotFound):
        await m.deploy("nope", 1, "x")
    with pytest.raises(ResourceExhausted) as err:
        await m.deploy("big", 1, "x")
    assert "short by 23.0 GiB" in err.value.message
    assert w.calls == [] and m.views() == ()


async def test_pending_loads_count_before_the_figures_show_them():
    w = World(("a", 80, ""))
    m = w.manager()
    await m.deploy("mid", 1, "x")  # no probe afterwards: the GPU still reports 0 used
    with pytest.raises(ResourceExhausted):
        await m.deploy("big", 1, "x")
    w.probe_all()
    assert m.plan("small", 1).placements[0].endpoint == "a"


async def test_a_probe_taken_mid_load_does_not_unready_a_finished_load():
    """A probe that ran while a load was in progress shows the model LOADING; once the load has
    returned (Triton answers when the model is READY), that stale LOADING must not turn the
    replica back into "not ready" (seen as ready_replicas 1 of 2 under load)."""
    w = World(("a", 80, ""), ("b", 80, ""))
    load = w.load

    async def load_seen_mid_way(address: str, model: str) -> float:
        seconds = await load(address, model)
        if address.startswith("b:"):  # b's probe ran mid-load and answered after it; a's not yet
            w.probe("b", index_state="LOADING")
        return seconds

    w.load = load_seen_mid_way
    m = w.manager()
    await m.deploy("mid", 2, "agent:a")
    view = await m.deploy("mid", 2, "agent:b")  # re-checks the placements: a's is not in its index
    assert [p.state for p in view.placements] == [READY, READY]
    assert [p.state for p in m.views()[0].placements] == [READY, READY]
    w.probe_all()  # the next probes see it READY
    assert [p.state for p in m.views()[0].placements] == [READY, READY]


async def test_failed_load_moves_to_the_next_endpoint_and_all_failing_is_unavailable():
    w = World(("a", 40, ""), ("b", 80, ""))
    w.refuse = {"a"}
    m = w.manager()
    view = await m.deploy("mid", 1, "x")
    assert w.loads() == [("a", "mid-trt"), ("b", "mid-trt")]
    assert [p.endpoint for p in view.placements] == ["b"]
    w.refuse = {"a", "b"}
    with pytest.raises(Unavailable):
        await m.deploy("small", 1, "x")
    assert m.get("small") is None


async def test_idle_ttl_scales_to_zero_and_agent_online_warms_again():
    clock = [1000.0]
    w = World(("a", 80, ""))
    m = w.manager(wall_clock=lambda: clock[0], agent_idle_ttl_s=30)
    result = await m.on_agent_online(["mid", "nope"], agent="bot")
    assert result["mid"] == "" and "not in the pool's model catalog" in result["nope"]
    w.probe_all()
    assert m.views()[0].owners == ("agent:bot",) and m.views()[0].idle_ttl_s == 30
    await m.sweep_idle()
    clock[0] += 20
    w.loaded["a"]["mid-trt"] = 7  # requests were served
    w.probe_all()
    assert await m.sweep_idle() == []
    clock[0] += 29
    assert await m.sweep_idle() == []  # 29 s since the counters last moved
    clock[0] += 2
    assert await m.sweep_idle() == ["mid"]
    assert not w.loaded["a"]
    view = m.views()[0]
    assert view.scaled_to_zero and view.placements == ()
    w.probe_all()
    await m.on_agent_online(["mid"], agent="bot")
    assert "mid-trt" in w.loaded["a"] and not m.views()[0].scaled_to_zero
    await m.on_agent_offline("bot")
    assert not w.loaded["a"] and m.views() == ()


async def test_never_ttl_wins_and_unhealthy_replicas_report_unavailable():
    clock = [0.0]
    w = World(("a", 80, ""))
    m = w.manager(wall_clock=lambda: clock[0])
    await m.deploy("small", 1, "ops", idle_ttl_s=0)
    await m.deploy("small", 1, "agent:x", idle_ttl_s=5)
    w.probe_all()
    clock[0] += 100
    await m.sweep_idle()
    clock[0] += 100
    assert await m.sweep_idle() == []
    w.probe("a", ok=False)
    w.probe("a", ok=False)
    assert m.views()[0].placements[0].state != READY and m.views()[0].ready_replicas == 0


def test_advice_rules():
    limits = ScalingLimits(max_replicas=3)
    hot = advise_one("m", Signals(1, 5, 8, 0.5, 0.5), limits, endpoints=4)
    assert hot.advised == 2 and "waiting/replica" in hot.reason
    assert advise_one("m", Signals(1, 0, 1, 0.9, 0.2), limits, 4).advised == 2  # KV
    assert advise_one("m", Signals(3, 9, 3, 0.9, 0.95), limits, 4).advised == 3  # ceiling
    assert advise_one("m", Signals(2, 0, 0, 0.1, 0.1), limits, 4).advised == 1  # cold
    assert advise_one("m", Signals(1, 0, 0, 0.1, 0.1), limits, 4).advised == 1  # min
    assert advise_one("m", Signals(0, 0, 0, 0, 0), limits, 4).advised == 0
    # No replica reports KV use (an engine without KV metrics): the other figures decide.
    unknown = advise_one("m", Signals(1, 0, 1, None, 0.2), limits, 4)
    assert unknown.advised == 1 and "kv unknown" in unknown.reason
    assert advise_one("m", Signals(2, 0, 0, None, 0.1), limits, 4).advised == 1  # cold all the same
    assert advise_one("m", Signals(1, 5, 8, None, 0.5), limits, 4).advised == 2  # its queue still counts


def test_catalog_and_model_flag():
    spec = parse_model_flag("name=llama-3-8b,triton_model=llama-3-8b-instruct,memory_gb=33")
    assert spec == ModelSpec("llama-3-8b", "llama-3-8b-instruct", 33 * GIB)
    assert parse_model_flag("name=m,memory_gib=1.5").triton_model == "m"
    for bad in ("name=m", "name=m,memory_gb=1,colour=red", "name=,memory_gb=1", "oops"):
        with pytest.raises(ValueError):
            parse_model_flag(bad)
    cat = ModelCatalog([spec])
    assert cat.get("llama-3-8b-instruct") is spec
    with pytest.raises(NotFound):
        cat.get("x")


def test_request_counters_and_latency_ewma():
    text = """\
nv_inference_request_success{model="m",version="1"} 10
nv_inference_request_failure{model="m",reason="REJECTED",version="1"} 1
nv_inference_request_failure{model="m",reason="OTHER",version="1"} 2
nv_inference_request_duration_us{model="m",version="1"} 500000
"""
    load = parse_triton_metrics(text).loads[("m", "1")]
    assert (load.requests, load.successes, load.request_us) == (13, 10, 500000)
    t = EndpointTable(start_revision=1)
    spec = EndpointSpec.make("e", "e:1")
    t.upsert(spec)

    def probe(success: int, us: int) -> None:
        metrics = MetricsSample({("m", "1"): ModelLoad(requests=success, successes=success, request_us=us)})
        t.apply_probe("e", "e:1", ProbeResult(True, (IndexEntry("m", "1", "READY"),), metrics))

    probe(10, 500_000)
    assert t.get("e").models[0].recent_latency_ms == 0  # no previous scrape to diff against
    probe(20, 1_500_000)  # 10 requests, 1 s: 100 ms each
    assert t.get("e").models[0].recent_latency_ms == pytest.approx(100)
    probe(30, 1_700_000)  # 20 ms each: EWMA moves 30% of the way
    assert t.get("e").models[0].recent_latency_ms == pytest.approx(0.7 * 100 + 0.3 * 20)
    assert t.get("e").health == HEALTHY


def test_models_from_yaml_and_flags(tmp_path):
    import argparse

    from services.pool.config import PoolConfig, add_pool_args, pool_config_from_args

    cfg_file = tmp_path / "pool.yaml"
    cfg_file.write_text(
        "headroom: 0.1\nmodels:\n  - {name: a, triton_model: a-trt, memory_gb: 10}\n  - {name: b, memory_gib: 2}\n"
    )
    parser = argparse.ArgumentParser()
    add_pool_args(parser)
    args = parser.parse_args(
        ["--config", str(cfg_file), "--model", "name=b,memory_gb=3", "--agent-idle-ttl", "5"]
    )
    cfg = pool_config_from_args(args)
    assert cfg.models == (ModelSpec("a", "a-trt", 10 * GIB), ModelSpec("b", "b", 3 * GIB))
    assert cfg.headroom == 0.1 and cfg.agent_idle_ttl_s == 5
    for bad in ({"headroom": 1.0}, {"max_replicas": 0}, {"models": (ModelSpec("a", "a", 1),) * 2}):
        with pytest.raises(ValueError):
            PoolConfig(**bad)


def test_an_unloading_model_still_holds_its_memory():
    """Triton answers an unload while the model is UNLOADING; its memory is not free until it
    is UNAVAILABLE, even when the GPU figure has not caught up (no GPU metrics at all here)."""
    table = EndpointTable(start_revision=1)
    table.upsert(EndpointSpec.make("a", "a:1", gpu_memory_bytes=40 * GIB))
    for state in ("UNLOADING", "UNAVAILABLE"):
        index = (IndexEntry("mid-trt", "1", state),)
        table.apply_probe("a", "a:1", ProbeResult(True, index, MetricsSample({}), None))
        plan = plan_placement(
            table.states(), "other-trt", 33 * GIB, 1, headroom=0.0, footprint=lambda _m: 33 * GIB
        )
        assert bool(plan.placements) == (state == "UNAVAILABLE"), state
