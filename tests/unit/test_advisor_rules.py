"""Advisor rules, one section per plugin, on hand-built facts (no store, no gRPC)."""

from __future__ import annotations

import pytest
from harness.cost.v1 import cost_pb2

from services.common.errors import InvalidArgument
from services.cost.advisor import (
    CatalogModel,
    DayRow,
    Facts,
    Fleet,
    FleetDeployment,
    UsageRow,
    rules,
    run,
)
from services.cost.advisor.base import GIB, HOURS_PER_MONTH, US_PER_DAY
from services.cost.advisor.rules import Consolidate, CutMaxTokens, Quantize, ScaleToZero, SmallerModel

K = cost_pb2
GPU = "H100-80GB"
PRICES = {
    (K.PRICE_KIND_GPU_HOUR, GPU): 2_500_000,
    (K.PRICE_KIND_MODEL_INPUT_TOKENS, "llama-3-8b"): 200_000,
    (K.PRICE_KIND_MODEL_OUTPUT_TOKENS, "llama-3-8b"): 600_000,
    (K.PRICE_KIND_MODEL_INPUT_TOKENS, "llama-3-8b-awq"): 80_000,
    (K.PRICE_KIND_MODEL_OUTPUT_TOKENS, "llama-3-8b-awq"): 240_000,
    (K.PRICE_KIND_MODEL_INPUT_TOKENS, "llama-3-70b-awq"): 900_000,
    (K.PRICE_KIND_MODEL_OUTPUT_TOKENS, "llama-3-70b-awq"): 900_000,
}
CATALOG = (
    CatalogModel("llama-3-8b", "llama-3", 8, "fp16", 33),
    CatalogModel("llama-3-8b-awq", "llama-3", 8, "awq-int4", 15),
    CatalogModel("llama-3-70b-awq", "llama-3", 70, "awq-int4", 63),
)


def dep(name, model="llama-3-8b", *, mem_gib=33, ttl=0.0, replicas=1):
    return FleetDeployment(name, model, replicas, mem_gib * GIB, GPU, 80 * GIB, ttl)


def row(agent, deployment, *, model="llama-3-8b", n=1000, inp=500_000, out=50_000, gpu=3600.0):
    return UsageRow("ledger", agent, model, deployment, n, inp, out, gpu, 0)


JAN_1_2025_US = 1_735_689_600_000_000  # the day rows below are dated in January 2025


def facts(usage=(), *, fleet=None, days=(), period_days=30, prices=PRICES):
    start = JAN_1_2025_US
    return Facts(start, start + period_days * US_PER_DAY, tuple(usage), tuple(days), prices, fleet)


MONTH = 30.4375 / 30


# ---- consolidate ----


def test_consolidate_five_agents_on_five_deployments():
    usage = [row(f"agent-{i}", f"llama-3-8b@sim-{i}", n=1000 + i) for i in range(5)]
    fleet = Fleet(tuple(dep(f"llama-3-8b@sim-{i}") for i in range(5)), CATALOG)
    result = Consolidate().advise(facts(usage, fleet=fleet))
    (rec,) = result.recommendations
    assert rec.rule == "consolidate"
    assert rec.vram_saved_bytes == 4 * 33 * GIB
    per_dep = 33 / 80 * HOURS_PER_MONTH * 2_500_000
    assert rec.monthly_saving_micro_usd == round(4 * per_dep)
    assert "llama-3-8b@sim-4" in rec.action  # the busiest one is kept
    assert "remove llama-3-8b@sim-0, llama-3-8b@sim-1" in rec.action
    assert "132.0 GiB" in rec.evidence and "0.41 GPU" in rec.evidence
    assert not result.notes


def test_consolidate_keeps_replicas_the_combined_load_needs():
    busy = HOURS_PER_MONTH * 3600 / MONTH  # one full GPU-month each
    usage = [row(f"a{i}", f"d{i}", gpu=busy) for i in range(3)]
    fleet = Fleet(tuple(dep(f"d{i}") for i in range(3)), CATALOG)
    (rec,) = Consolidate().advise(facts(usage, fleet=fleet)).recommendations
    assert rec.vram_saved_bytes == 0 and rec.monthly_saving_micro_usd == 0  # 3 busy GPUs stay 3 replicas


def test_consolidate_without_fleet_gives_no_dollars_and_says_why():
    usage = [row("a", "d0"), row("b", "d1")]
    result = Consolidate().advise(facts(usage))
    (rec,) = result.recommendations
    assert rec.monthly_saving_micro_usd == 0 and rec.vram_saved_bytes == 0
    assert "GPU-hour cost unknown" in rec.evidence
    assert "no fleet snapshot" in result.notes[0]


def test_consolidate_ignores_a_model_on_one_deployment():
    usage = [row("a", "d0"), row("b", "d0")]
    assert Consolidate().advise(facts(usage, fleet=Fleet((dep("d0"),), CATALOG))).recommendations == ()


# ---- quantize ----


def test_quantize_moves_fp16_to_awq_with_vram_and_token_savings():
    usage = [row("a", "d0", inp=10_000_000, out=1_000_000)]
    fleet = Fleet((dep("d0", replicas=2),), CATALOG)
    (rec,) = Quantize().advise(facts(usage, fleet=fleet)).recommendations
    assert rec.title == "Move llama-3-8b to llama-3-8b-awq"
    assert rec.vram_saved_bytes == 2 * 18 * GIB
    tokens = (10 * (200_000 - 80_000) + 1 * (600_000 - 240_000)) * MONTH
    gpu = 2 * 18 / 80 * HOURS_PER_MONTH * 2_500_000
    assert rec.monthly_saving_micro_usd == pytest.approx(tokens + gpu, abs=1)


def test_quantize_skips_quantized_models_and_needs_a_catalog():
    usage = [row("a", "d0", model="llama-3-8b-awq")]
    assert Quantize().advise(facts(usage, fleet=Fleet((), CATALOG))).recommendations == ()
    assert "no model catalog" in Quantize().advise(facts(usage)).notes[0]


# ---- scale_to_zero ----


def test_scale_to_zero_idle_deployment_without_ttl():
    days = [DayRow("d0", f"2025-01-{d:02d}", 10) for d in (1, 2, 3)] + [
        DayRow("d1", f"2025-01-{d:02d}", 10) for d in range(1, 31)
    ]
    fleet = Fleet((dep("d0"), dep("d1"), dep("d2", ttl=900)), CATALOG)
    (rec,) = ScaleToZero().advise(facts(fleet=fleet, days=days)).recommendations  # d1 busy, d2 has a TTL
    assert rec.title == "Scale d0 to zero when idle"
    assert "3 of 30 days" in rec.evidence
    assert rec.monthly_saving_micro_usd == pytest.approx(27 * 24 * 33 / 80 * 2_500_000 * MONTH, abs=1)
    assert rec.vram_saved_bytes == 33 * GIB


def test_scale_to_zero_judges_only_the_days_the_ledger_has_history_for():
    fleet = Fleet((dep("d0"), dep("d1")), CATALOG)
    young = [DayRow("d1", f"2025-01-{d:02d}", 10) for d in (30, 31)]  # the ledger began on day 30
    (rec,) = ScaleToZero().advise(facts(fleet=fleet, days=young)).recommendations
    assert "served requests on 0 of 2 days" in rec.evidence  # not "0 of 30"
    just_started = ScaleToZero().advise(facts(fleet=fleet, days=young[1:]))
    assert just_started.recommendations == () and "1 day(s) of requests" in just_started.notes[0]
    empty = ScaleToZero().advise(facts(fleet=fleet))
    assert empty.recommendations == () and "no requests in the ledger" in empty.notes[0]


def test_scale_to_zero_needs_the_fleet():
    result = ScaleToZero().advise(facts())
    assert result.recommendations == () and "no fleet snapshot" in result.notes[0]


# ---- smaller_model ----


def test_smaller_model_routes_short_requests_off_the_big_model():
    usage = [
        row("classifier", "d70", model="llama-3-70b-awq", n=10_000, inp=3_000_000, out=200_000),
        row("writer", "d70", model="llama-3-70b-awq", n=10_000, inp=3_000_000, out=5_000_000),
    ]
    (rec,) = SmallerModel().advise(facts(usage, fleet=Fleet((), CATALOG))).recommendations
    assert rec.title == "Route classifier's short requests from llama-3-70b-awq to llama-3-8b-awq"
    expected = (3 * (900_000 - 80_000) + 0.2 * (900_000 - 240_000)) * MONTH
    assert rec.monthly_saving_micro_usd == pytest.approx(expected, abs=1)
    assert "mean 300 input and 20 output" in rec.evidence


def test_smaller_model_leaves_small_models_alone():
    usage = [row("a", "d0", n=10_000, inp=1_000_000, out=100_000)]
    assert SmallerModel().advise(facts(usage, fleet=Fleet((), CATALOG))).recommendations == ()


# ---- cut_max_tokens ----


def test_cut_max_tokens_against_the_agent_default():
    usage = [row("a", "d0", n=1000, out=40_000), row("b", "d0", n=1000, out=900_000)]
    fleet = Fleet((), CATALOG, {"a": 1024, "b": 1024})
    (rec,) = CutMaxTokens().advise(facts(usage, fleet=fleet)).recommendations
    assert rec.title == "Cut a's max_tokens from 1024 to 80"
    assert rec.monthly_saving_micro_usd == 0 and "agent version default" in rec.evidence


def test_cut_max_tokens_falls_back_to_the_router_default():
    result = CutMaxTokens().advise(facts([row("a", "d0", n=1000, out=20_000)]))
    (rec,) = result.recommendations
    assert "from 256 to 48" in rec.title and "router default" in result.notes[0]


# ---- registry ----


def test_registry_runs_all_rules_ranked_and_rejects_unknown_names():
    assert list(rules()) == ["consolidate", "quantize", "scale_to_zero", "smaller_model", "cut_max_tokens"]
    usage = [row(f"a{i}", f"d{i}") for i in range(3)]
    fleet = Fleet(tuple(dep(f"d{i}") for i in range(3)), CATALOG)
    advice = run(facts(usage, fleet=fleet, days=[DayRow(f"d{i}", "2025-01-01", 1) for i in range(3)]))
    savings = [r.monthly_saving_micro_usd for r in advice.recommendations]
    assert savings == sorted(savings, reverse=True)
    assert {r.rule for r in advice.recommendations} >= {"consolidate", "quantize", "scale_to_zero"}
    assert {r.rule for r in run(facts(usage, fleet=fleet), ["quantize"]).recommendations} == {"quantize"}
    with pytest.raises(InvalidArgument, match="nope"):
        run(facts(), ["nope"])
