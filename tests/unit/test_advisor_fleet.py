"""The advisor's live fleet from the pool's and the registry's protos (no servers), the provider's
notes and cache, and how the advisor passes a provider's notes on."""

from __future__ import annotations

import socket

import pytest
from harness.common.v1 import common_pb2
from harness.pool.v1 import pool_pb2
from harness.registry.v1 import registry_pb2

from services.cost.advisor import Fleet, FleetSnapshot, advise, run
from services.cost.advisor.base import GIB, US_PER_DAY, Facts, UsageRow
from services.cost.advisor.rules.quantize import Quantize, variant_of
from services.cost.fleet_source import LiveFleet, agent_max_tokens, fleet_from_protos, live_fleet
from tests.unit.test_advisor_facts import NOW, store  # noqa: F401  (the store fixture)

READY, LOADING = pool_pb2.MODEL_STATE_READY, pool_pb2.MODEL_STATE_LOADING
UNAVAILABLE = pool_pb2.MODEL_STATE_UNAVAILABLE
NOW_S = 1_750_000_000.0

MODELS = [
    registry_pb2.Model(name="llama-3-8b", triton_model="llama-3-8b-instruct", family="llama-3", parameters_b=8,
                       quantization="fp16", memory_gib=33, context_length=8192),
    registry_pb2.Model(name="llama-3-8b-awq", triton_model="llama-3-8b-instruct-awq", family="llama-3",
                       parameters_b=8, quantization="awq-int4", memory_gib=15, context_length=8192),
    registry_pb2.Model(name="llama-3-70b-awq", triton_model="llama-3-70b-instruct-awq", family="llama-3",
                       parameters_b=70, quantization="awq-int4", memory_gib=63, context_length=8192),
]  # fmt: skip


def endpoint(name, *models, gpu_type="H100-80GB", gpus=1, memory_gib=0):
    ep = pool_pb2.Endpoint(name=name, gpu_type=gpu_type, gpu_count=gpus, gpu_memory_bytes=memory_gib * GIB)
    for model, state in models:
        ep.models.add(name=model, state=state)
    return ep


def deployment(model, triton, *placements, memory_gib=33, owners=(), ttl_s=0, last_used_s=0.0):
    d = pool_pb2.Deployment(model=model, triton_model=triton, replicas=len(placements),
                            memory_bytes=memory_gib * GIB, owners=list(owners))  # fmt: skip
    for ep, gpu, state in placements:
        d.placements.add(endpoint=ep, gpu=gpu, state=state)
    if ttl_s:
        d.idle_ttl.FromSeconds(ttl_s)
    if last_used_s:
        d.last_used.FromNanoseconds(int(last_used_s * 1e9))
    return d


def gpu(ep, index, memory_gib):
    return pool_pb2.Gpu(endpoint=ep, index=index, memory_total_bytes=memory_gib * GIB)


def test_deployments_on_shared_gpus_become_one_entry_per_model_and_endpoint():
    deps = [
        deployment("llama-3-8b", "llama-3-8b-instruct", ("sim-0", 0, READY), ("sim-1", 1, LOADING),
                   ("sim-2", 0, UNAVAILABLE), owners=("agent:a", "agent:b"), last_used_s=NOW_S - 7200),
        deployment("llama-3-8b-awq", "llama-3-8b-instruct-awq", ("sim-0", 0, READY), memory_gib=15, ttl_s=900),
    ]  # fmt: skip
    eps = [
        endpoint("sim-0", ("llama-3-8b-instruct", READY), ("llama-3-8b-instruct-awq", READY)),
        endpoint("sim-1", ("llama-3-8b-instruct", LOADING), gpu_type="A100-40GB", gpus=2, memory_gib=80),
        endpoint("sim-2"),
    ]
    fleet, notes = fleet_from_protos(deps, eps, [gpu("sim-0", 0, 80)], MODELS, now_s=NOW_S)
    assert notes == ()
    assert [d.name for d in fleet.deployments] == [
        "llama-3-8b-awq@sim-0",
        "llama-3-8b@sim-0",
        "llama-3-8b@sim-1",
    ]
    big0, big1 = fleet.deployment("llama-3-8b@sim-0"), fleet.deployment("llama-3-8b@sim-1")
    # Two models share sim-0's one 80 GiB GPU; each holds its own share of it.
    assert (big0.model, big0.replicas, big0.memory_bytes, big0.gpu_type, big0.gpu_memory_bytes) == (
        "llama-3-8b", 1, 33 * GIB, "H100-80GB", 80 * GIB,
    )  # fmt: skip
    assert big0.gpu_share() == pytest.approx(33 / 80)
    assert fleet.deployment("llama-3-8b-awq@sim-0").gpu_share() == pytest.approx(15 / 80)
    # sim-1: no ListGpus figure, so its 80 GiB total over 2 GPUs; the load still holds VRAM.
    assert (big1.gpu_type, big1.gpu_memory_bytes, big1.state) == ("A100-40GB", 40 * GIB, "loading")
    assert big0.owners == ("agent:a", "agent:b") and big0.idle_ttl_s == 0 and big0.idle_s == 7200
    awq = fleet.deployment("llama-3-8b-awq@sim-0")
    assert awq.idle_ttl_s == 900 and awq.idle_s is None and awq.state == "ready" and awq.endpoint == "sim-0"
    assert fleet.deployment("llama-3-8b@sim-2") is None  # UNAVAILABLE: not loaded, holds nothing


def test_catalog_keeps_sizes_context_and_finds_quantized_variants():
    fleet, _ = fleet_from_protos([deployment("llama-3-8b", "llama-3-8b-instruct", ("sim-0", 0, READY))],
                                 [endpoint("sim-0")], [gpu("sim-0", 0, 80)], MODELS)  # fmt: skip
    big = fleet.model("llama-3-8b")
    assert (big.family, big.parameters_b, big.quantization, big.memory_gib, big.context_length) == (
        "llama-3", 8, "fp16", 33, 8192,
    )  # fmt: skip
    assert big.triton_model == "llama-3-8b-instruct"
    assert variant_of(big, fleet.catalog).name == "llama-3-8b-awq"
    assert variant_of(fleet.model("llama-3-70b-awq"), fleet.catalog) is None  # already quantized
    facts = Facts(0, 30 * US_PER_DAY, (UsageRow("p", "a", "llama-3-8b", "llama-3-8b@sim-0", 10, 1, 1, 0, 0),),
                  (), {}, fleet)  # fmt: skip
    (rec,) = Quantize().advise(facts).recommendations
    assert rec.title == "Move llama-3-8b to llama-3-8b-awq" and rec.vram_saved_bytes == 18 * GIB


def test_unknown_models_are_kept_or_named():
    deps = [deployment("mystery", "mystery-trt", ("sim-0", 0, READY), memory_gib=20)]
    eps = [endpoint("sim-0", ("mystery-trt", READY), ("llama-3-8b-instruct", READY), ("odd-trt", READY),
                    ("llama-3-70b-instruct-awq", UNAVAILABLE))]  # fmt: skip
    fleet, notes = fleet_from_protos(deps, eps, [gpu("sim-0", 0, 80)], MODELS)
    # The pool's own deployment stays (its VRAM is the pool's); a model loaded outside the pool
    # counts by its catalog entry; an unknown Triton model and an unloaded one do not.
    assert [(d.name, d.memory_bytes) for d in fleet.deployments] == [
        ("llama-3-8b@sim-0", 33 * GIB), ("mystery@sim-0", 20 * GIB),
    ]  # fmt: skip
    assert fleet.deployment("llama-3-8b@sim-0").owners == () and fleet.model("mystery") is None
    assert len(notes) == 2
    assert "catalog lacks: mystery" in notes[0] and "odd-trt@sim-0" in notes[1] and "left out" in notes[1]


def test_empty_pool_and_no_registry():
    fleet, notes = fleet_from_protos([], [], [], MODELS)
    assert fleet.deployments == () and len(fleet.catalog) == 3 and notes == ()
    # Without the registry a pool deployment keeps its pool figures; nothing else is guessed.
    fleet, notes = fleet_from_protos([deployment("llama-3-8b", "t", ("e", 0, READY))],
                                     [endpoint("e", ("other", READY))], [gpu("e", 0, 80)])  # fmt: skip
    assert [d.name for d in fleet.deployments] == ["llama-3-8b@e"] and fleet.catalog == () and notes == ()


def test_agent_max_tokens_follow_the_main_version():
    def agent(name, versions, traffic=()):
        a = registry_pb2.Agent(name=name)
        for label, max_tokens in versions:
            a.versions.add(version=label, default_sampling=common_pb2.SamplingParams(max_tokens=max_tokens))
        for label, weight in traffic:
            a.traffic.add(version=label, weight=weight)
        return a

    agents = [
        agent("newest", [("v1", 100), ("v2", 1024)]),
        agent("canary", [("v1", 512), ("v2", 2048)], [("v1", 90), ("v2", 10)]),
        agent("tie", [("v1", 512), ("v2", 2048)], [("v1", 50), ("v2", 50)]),
        agent("unset", [("v1", 0)]),
        agent("none", []),
    ]
    assert agent_max_tokens(agents) == {"newest": 1024, "canary": 512, "tie": 2048}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_pool_gives_no_fleet_and_says_which_and_why():
    dead = f"127.0.0.1:{_closed_port()}"
    source = LiveFleet(dead, "", timeout_s=2.0)
    try:
        snap = await source()
    finally:
        await source.close()
    assert snap.fleet is None
    pool_note, registry_note = snap.notes
    assert pool_note.startswith(f"the pool at {dead} did not answer ListDeployments (UNAVAILABLE: ")
    assert "no registry configured" in registry_note


async def test_the_snapshot_is_cached_for_ttl_s():
    now = [100.0]
    source = LiveFleet("127.0.0.1:1", ttl_s=5.0, clock=lambda: now[0])
    reads = []

    async def read():
        reads.append(now[0])
        return FleetSnapshot(Fleet(), (f"read {len(reads)}",))

    source.read = read
    assert (await source()).notes == ("read 1",)
    now[0] += 4.9
    assert (await source()).notes == ("read 1",)
    now[0] += 0.2
    assert (await source()).notes == ("read 2",) and len(reads) == 2
    assert live_fleet("") is None and isinstance(live_fleet("127.0.0.1:1"), LiveFleet)
    with pytest.raises(ValueError, match="pool"):
        LiveFleet("")


async def test_advise_passes_the_provider_notes_on(store):  # noqa: F811
    async def down():
        return FleetSnapshot(None, ("the pool at x did not answer ListDeployments (UNAVAILABLE: gone)",))

    advice = await advise(store, now_us=NOW, rule_names=["scale_to_zero"], fleet=down)
    assert advice.notes == (
        "fleet: the pool at x did not answer ListDeployments (UNAVAILABLE: gone)",
        "scale_to_zero: no fleet snapshot (no pool configured or reachable): deployments and idle TTLs unknown",
    )

    async def broken():
        raise RuntimeError("boom")

    advice = await advise(store, now_us=NOW, rule_names=["scale_to_zero"], fleet=broken)
    assert advice.notes[0] == "fleet: the fleet provider failed (RuntimeError: boom)"
    facts = Facts(0, US_PER_DAY, (), (), {}, Fleet(), fleet_notes=("registry down",))
    assert run(facts, ["scale_to_zero"]).notes[0] == "fleet: registry down"
