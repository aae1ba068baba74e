"""Pool core without servers: metric parsing, the health state machine, revisions, config."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from services.common.context import Identity
from services.common.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from services.pool.config import PoolConfig, add_pool_args, parse_endpoint_flag, pool_config_from_args
from services.pool.endpoints import EndpointTable, materially_changed
from services.pool.flavours import FLAVOURS, parse_flavour_metrics
from services.pool.gpus import Nvml, list_gpus
from services.pool.scrape import parse_triton_metrics
from services.pool.servicer import endpoint_to_proto, require_caller, require_operator
from services.pool.state import (
    GIB,
    HEALTH_UNKNOWN,
    HEALTHY,
    LOADING,
    READY,
    UNAVAILABLE,
    UNHEALTHY,
    EndpointSpec,
    GpuSample,
    IndexEntry,
    MetricsSample,
    ModelLoad,
    ProbeResult,
    next_health,
    validate_spec,
)

TRITON_TEXT = """\
# HELP nv_trt_llm_request_metrics TRT LLM request metrics
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 5
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting",version="1"} 3
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 64
# TYPE nv_trt_llm_kv_cache_block_metrics gauge
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="tensorrt_llm",version="1"} 0.42
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="other",version="1"} 25
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="other",version="1"} 100
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="other",version="1"} 7
nv_inference_pending_request_count{model="tensorrt_llm",version="1"} 99
# TYPE nv_inference_request_success untyped
nv_inference_request_success{model="other",version="1"} 12
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-a"} 0.5
nv_gpu_utilization{gpu_uuid="GPU-b"} 1.5
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{gpu_uuid="GPU-a"} 85899345920
nv_gpu_memory_total_bytes{gpu_uuid="GPU-b"} 85899345920
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-a"} 1073741824
"""


def test_parse_reads_trtllm_kv_pending_and_gpu_figures():
    sample = parse_triton_metrics(TRITON_TEXT, gpu_name="H100-80GB")
    trt = sample.loads[("tensorrt_llm", "1")]
    assert (trt.active, trt.waiting, trt.kv_cache_fraction) == (5, 3, 0.42)  # TRT-LLM waiting beats pending
    assert trt.max_running == 64 and sample.loads[("other", "1")].max_running == 0  # 0 = unknown
    other = sample.loads[("other", "1")]
    assert (other.active, other.waiting, other.kv_cache_fraction) == (0, 7, 0.25)  # pending; used/max
    assert [g.uuid for g in sample.gpus] == ["GPU-a", "GPU-b"]
    a, b = sample.gpus
    assert (a.index, a.name, a.memory_used_bytes, a.memory_total_bytes, a.utilization) == (
        0,
        "H100-80GB",
        GIB,
        80 * GIB,
        0.5,
    )
    assert b.utilization == 1.0 and b.memory_used_bytes == 0 and b.source == "triton_metrics"
    assert sample.load_for("other", "") == other  # RepositoryIndex may not name a version


def test_parse_empty_and_malformed():
    assert parse_triton_metrics("") == MetricsSample()
    with pytest.raises(ValueError):
        parse_triton_metrics('nv_gpu_utilization{gpu_uuid="a" 0.5\n')


def test_health_state_machine():
    assert next_health(HEALTH_UNKNOWN, 0, True, 2) == (HEALTHY, 0)
    assert next_health(HEALTHY, 0, False, 2) == (HEALTHY, 1)  # one miss is tolerated
    assert next_health(HEALTHY, 1, False, 2) == (UNHEALTHY, 2)
    assert next_health(UNHEALTHY, 5, True, 2) == (HEALTHY, 0)
    assert next_health(HEALTH_UNKNOWN, 0, False, 1) == (UNHEALTHY, 1)


def _table() -> EndpointTable:
    return EndpointTable(unhealthy_after=2, start_revision=100, tombstone_limit=2)


def _ok(load: ModelLoad | None = None, state: str = "READY", util: float = 0.2) -> ProbeResult:
    metrics = MetricsSample({("m", "1"): load}) if load else None
    gpus = (GpuSample(0, "g", "", 80 * GIB, GIB, util),)
    return ProbeResult(True, (IndexEntry("m", "1", state),), metrics, gpus)


SPEC = EndpointSpec.make("sim-0", "127.0.0.1:8001", metrics_url="http://127.0.0.1:8002/metrics")


def test_failures_mark_unhealthy_and_models_unavailable_then_recover():
    t = _table()
    t.upsert(SPEC)
    state, _ = t.apply_probe("sim-0", SPEC.address, _ok(ModelLoad(2, 3, 0.5)))
    assert state.health == HEALTHY and state.models[0].state == READY and state.models[0].waiting == 2
    assert [s.name for s in t.list("m")] == ["sim-0"] and t.list("nope") == ()
    state, _ = t.apply_probe("sim-0", SPEC.address, ProbeResult(False, error="refused"))
    assert state.health == HEALTHY and state.models[0].state == READY  # below threshold
    state, _ = t.apply_probe("sim-0", SPEC.address, ProbeResult(False, error="refused"))
    assert state.health == UNHEALTHY and state.error == "refused"
    assert state.models[0].state == UNAVAILABLE and state.models[0].active == 0
    assert t.list("m") == ()
    state, _ = t.apply_probe("sim-0", SPEC.address, _ok(ModelLoad(0, 0, 0.0)))
    assert state.health == HEALTHY and t.list("m")


def test_revision_bumps_only_on_observable_change():
    t = _table()
    t.upsert(SPEC)
    r0 = t.revision
    assert r0 == 101
    assert t.apply_probe("sim-0", SPEC.address, _ok(ModelLoad(1, 0, 0.5)))[1]
    r1 = t.revision
    assert not t.apply_probe("sim-0", SPEC.address, _ok(ModelLoad(1, 0, 0.5)))[1]  # same: last_seen only
    assert not t.apply_probe("sim-0", SPEC.address, _ok(ModelLoad(1, 0, 0.505), util=0.205))[1]  # < epsilon
    assert not t.apply_probe("sim-0", SPEC.address, _ok(ModelLoad(1, 0, 0.509)))[1]  # vs published 0.5
    assert t.revision == r1
    assert t.apply_probe("sim-0", SPEC.address, _ok(ModelLoad(1, 0, 0.52)))[1]  # drift adds up
    assert t.apply_probe("sim-0", SPEC.address, _ok(ModelLoad(2, 0, 0.52)))[1]  # counts are exact
    assert t.apply_probe("sim-0", SPEC.address, _ok(ModelLoad(2, 0, 0.52), util=0.9))[1]
    # One miss below the threshold changes nothing observable.
    assert not t.apply_probe("sim-0", SPEC.address, ProbeResult(False))[1]
    assert t.revision == r1 + 3
    assert t.upsert(SPEC) and t.revision == r1 + 3  # idempotent register
    t.upsert(EndpointSpec.make("sim-0", SPEC.address, labels={"zone": "a"}))
    assert t.revision == r1 + 4
    # A probe of an address the endpoint no longer has is dropped.
    t.upsert(EndpointSpec.make("sim-0", "127.0.0.1:9"))
    assert t.apply_probe("sim-0", SPEC.address, _ok()) == (None, False)


def test_scrape_failure_keeps_figures_and_load_time_is_measured():
    clock = [0.0]
    t = EndpointTable(start_revision=1, monotonic=lambda: clock[0])
    t.upsert(SPEC)
    t.apply_probe(
        "sim-0", SPEC.address, _ok(ModelLoad(waiting=4, active=1, kv_cache_fraction=0.3), state="LOADING")
    )
    assert t.get("sim-0").models[0].state == LOADING
    clock[0] = 12.5
    state, _ = t.apply_probe("sim-0", SPEC.address, _ok(None))  # READY, metrics failed
    m = state.models[0]
    assert (m.state, m.active, m.waiting, m.kv_cache_fraction, m.load_time_s) == (READY, 1, 4, 0.3, 12.5)
    assert state.health == HEALTHY


def test_changes_since_deltas_tombstones_and_snapshots():
    t = _table()
    t.upsert(SPEC)
    t.upsert(EndpointSpec.make("b", "127.0.0.1:2"))
    r = t.revision
    t.apply_probe("sim-0", SPEC.address, _ok(ModelLoad(1, 1, 0.1)))
    d = t.changes_since(r)
    assert not d.snapshot and [s.name for s in d.endpoints] == ["sim-0"] and d.removed == ()
    t.remove("b")
    d = t.changes_since(r)
    assert [s.name for s in d.endpoints] == ["sim-0"] and d.removed == ("b",)
    assert t.changes_since(t.revision).endpoints == ()
    for since in (0, 50, t.revision + 1):  # 0, before this process, from the future
        snap = t.changes_since(since)
        assert snap.snapshot and [s.name for s in snap.endpoints] == ["sim-0"]
    with pytest.raises(NotFound):
        t.remove("b")
    # Tombstones are bounded (limit 2): dropping one raises the replay floor.
    for n in ("c", "d", "e"):
        t.upsert(EndpointSpec.make(n, "127.0.0.1:3"))
        t.remove(n)
    assert t.changes_since(r).snapshot
    assert t.changes_since(t.revision - 1).removed == ("e",)


async def test_watch_snapshot_then_coalesced_live_changes():
    t = _table()
    t.upsert(SPEC)
    stream = t.watch(0)
    first = await anext(stream)
    assert first.snapshot and [s.name for s in first.endpoints] == ["sim-0"]
    nxt = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.01)
    assert not nxt.done()  # nothing changed yet
    t.apply_probe("sim-0", SPEC.address, _ok(ModelLoad(1, 0, 0.0)))
    t.upsert(EndpointSpec.make("b", "127.0.0.1:2"))
    batch = await asyncio.wait_for(nxt, 10)
    assert not batch.snapshot and batch.revision == t.revision
    assert {s.name for s in batch.endpoints} <= {"sim-0", "b"}
    # A watcher at the current revision gets only what happens next.
    live = t.watch(t.revision)
    nxt = asyncio.ensure_future(anext(live))
    await asyncio.sleep(0.01)
    assert not nxt.done()
    t.remove("b")
    batch = await asyncio.wait_for(nxt, 10)
    assert batch.removed == ("b",) and batch.endpoints == ()
    await stream.aclose()
    await live.aclose()


def test_materially_changed_ignores_last_seen():
    t = _table()
    a = t.upsert(SPEC)
    from dataclasses import replace

    assert not materially_changed(a, replace(a, last_seen=123.0, failures=1))
    assert materially_changed(a, replace(a, health=HEALTHY))


def test_validate_spec_rejects_bad_inputs():
    validate_spec(EndpointSpec.make("sim-0", "[::1]:8001"))
    validate_spec(EndpointSpec.make("a.b_c", "triton.svc:1", metrics_url="https://x/metrics"))
    for bad in (
        EndpointSpec.make("", "127.0.0.1:1"),
        EndpointSpec.make("-x", "127.0.0.1:1"),
        EndpointSpec.make("x y", "127.0.0.1:1"),
        EndpointSpec.make("x", "127.0.0.1"),
        EndpointSpec.make("x", "127.0.0.1:0"),
        EndpointSpec.make("x", "127.0.0.1:70000"),
        EndpointSpec.make("x", ":80"),
        EndpointSpec.make("x", "[zz]:80"),
        EndpointSpec.make("x", "h:1", metrics_url="ftp://h/metrics"),
        EndpointSpec.make("x", "h:1", gpu_count=-1),
        EndpointSpec.make("x", "h:1", labels={"": "v"}),
    ):
        with pytest.raises(InvalidArgument):
            validate_spec(bad)


def test_endpoint_flag_and_yaml_config(tmp_path):
    spec = parse_endpoint_flag(
        "name=sim-0,address=127.0.0.1:8001,metrics=http://127.0.0.1:8002/metrics,"
        "gpu_type=H100-80GB,gpus=1,memory_gb=80,label.zone=a"
    )
    assert spec == EndpointSpec.make(
        "sim-0",
        "127.0.0.1:8001",
        labels={"zone": "a"},
        metrics_url="http://127.0.0.1:8002/metrics",
        gpu_type="H100-80GB",
        gpu_count=1,
        gpu_memory_bytes=80 * GIB,
    )
    for bad in ("name=x", "name=x,address=h:1,colour=red", "name=x,address=h:1,oops"):
        with pytest.raises(ValueError):
            parse_endpoint_flag(bad)
    cfg_file = tmp_path / "pool.yaml"
    cfg_file.write_text(
        "probe_interval_s: 0.25\nendpoints:\n"
        "  - {name: sim-0, address: '127.0.0.1:1', gpus: 2, labels: {zone: b}}\n"
        "  - {name: sim-1, address: '127.0.0.1:2'}\n"
    )
    parser = argparse.ArgumentParser()
    add_pool_args(parser)
    args = parser.parse_args(["--config", str(cfg_file), "--endpoint", "name=sim-1,address=127.0.0.1:3"])
    cfg = pool_config_from_args(args)
    assert cfg.probe_interval_s == 0.25 and cfg.unhealthy_after == 2 and cfg.nvml
    assert [(e.name, e.address) for e in cfg.endpoints] == [
        ("sim-0", "127.0.0.1:1"),
        ("sim-1", "127.0.0.1:3"),
    ]
    assert cfg.endpoints[0].labels == (("zone", "b"),) and cfg.endpoints[0].gpu_count == 2
    with pytest.raises(ValueError):
        PoolConfig(probe_interval_s=0)


def test_nvml_missing_is_normal_and_gpus_come_from_metrics():
    nvml = Nvml(enabled=True)  # on a CPU host this must just report unavailable
    if not nvml.available:
        assert nvml.reason and nvml.read() == () and nvml.samples == ()
    nvml.close()
    assert not Nvml(enabled=False).available
    t = _table()
    t.upsert(EndpointSpec.make("sim-0", "127.0.0.1:1", gpu_type="H100-80GB"))
    t.apply_probe("sim-0", "127.0.0.1:1", _ok())
    rows = list_gpus(t.states(), (), "")
    assert [(e, g.name, g.source) for e, g in rows] == [("sim-0", "H100-80GB", "triton_metrics")]
    local = (GpuSample(0, "u", "NVIDIA H100", 80 * GIB, 0, 0.0, "nvml"),)
    assert [e for e, _ in list_gpus(t.states(), local, "")] == ["sim-0", ""]
    assert list_gpus(t.states(), local, "", endpoint="sim-0") == rows


def test_authorization_rules():
    with pytest.raises(Unauthenticated):
        require_caller(Identity())
    for who in (Identity(user="u"), Identity(agent="a"), Identity(service="router")):
        require_caller(who)
    with pytest.raises(PermissionDenied):
        require_operator(Identity(user="u", roles=("viewer",)))
    with pytest.raises(PermissionDenied):
        require_operator(Identity(agent="a"))
    require_operator(Identity(user="ops", roles=("admin",)))
    require_operator(Identity(service="router"))


def _openai_round(table: EndpointTable, spec: EndpointSpec, text: str, flavour: str):
    metrics = parse_flavour_metrics(text, FLAVOURS[flavour], ["llama"])
    state, _ = table.apply_probe(
        spec.name, spec.address, ProbeResult(True, (IndexEntry("llama", "", "READY"),), metrics)
    )
    return state


def test_unknown_kv_use_reaches_the_routers_as_unknown():
    t = _table()
    tgi = EndpointSpec.make("tgi-0", "http://127.0.0.1:9000", kind="openai", flavour="tgi")
    t.upsert(tgi)
    state = _openai_round(t, tgi, "tgi_queue_size 1\ntgi_batch_current_size 2\n", "tgi")
    model = endpoint_to_proto(state).models[0]
    assert model.kv_cache_unknown and model.waiting_requests == 1
    assert not model.HasField("prefix_cache_hit_rate")
    t.upsert(SPEC)  # a Triton model with TensorRT-LLM's KV metrics is known
    kv = 'nv_trt_llm_kv_cache_block_metrics{model="m",version="1",kv_cache_block_type="fraction"} 0.4\n'
    state, _ = t.apply_probe("sim-0", SPEC.address, _ok(parse_triton_metrics(kv).load_for("m", "1")))
    assert not endpoint_to_proto(state).models[0].kv_cache_unknown
    # A scrape that says nothing about the model (no TensorRT-LLM KV metrics): unknown.
    said_nothing = ProbeResult(True, (IndexEntry("m", "1", "READY"),), MetricsSample({}))
    state, _ = t.apply_probe("sim-0", SPEC.address, said_nothing)
    assert endpoint_to_proto(state).models[0].kv_cache_unknown


VLLM_PREFIX = (
    'vllm:num_requests_running{model_name="llama"} 1\nvllm:num_requests_waiting{model_name="llama"} 0\n'
    '# TYPE vllm:prefix_cache_queries counter\nvllm:prefix_cache_queries_total{model_name="llama"} %d\n'
    '# TYPE vllm:prefix_cache_hits counter\nvllm:prefix_cache_hits_total{model_name="llama"} %d\n'
)


def test_prefix_hit_rate_is_the_recent_share_of_looked_up_tokens_found():
    t = _table()
    vllm = EndpointSpec.make("vllm-0", "http://127.0.0.1:9001", kind="openai", flavour="vllm")
    t.upsert(vllm)
    first = _openai_round(t, vllm, VLLM_PREFIX % (1000, 800), "vllm")
    assert first.models[0].prefix_hit_rate == pytest.approx(0.8)
    # 1000 more tokens looked up, none found: the rate falls (EWMA), it does not jump to 0.
    second = _openai_round(t, vllm, VLLM_PREFIX % (2000, 800), "vllm")
    assert 0.0 < second.models[0].prefix_hit_rate < 0.8
    assert endpoint_to_proto(second).models[0].prefix_cache_hit_rate == pytest.approx(
        second.models[0].prefix_hit_rate
    )
    idle = _openai_round(t, vllm, VLLM_PREFIX % (2000, 800), "vllm")  # nothing looked up: kept
    assert idle.models[0].prefix_hit_rate == second.models[0].prefix_hit_rate
    restarted = _openai_round(t, vllm, VLLM_PREFIX % (100, 25), "vllm")  # counters went back
    assert restarted.models[0].prefix_hit_rate == pytest.approx(0.25)
