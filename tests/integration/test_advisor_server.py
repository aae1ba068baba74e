"""Advise through the real cost gRPC server: a seeded month, five agents on five 8B deployments."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import timestamp_pb2
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2, cost_pb2_grpc

from services.cost.advisor import CatalogModel, Fleet, FleetDeployment
from services.cost.advisor.base import GIB, HOURS_PER_MONTH
from tests.helpers.cost import start_test_cost
from tests.helpers.grpc import agent_metadata, user_metadata

GPU = "H100-80GB"
CATALOG = (
    CatalogModel("llama-3-8b", "llama-3", 8, "fp16", 33),
    CatalogModel("llama-3-8b-awq", "llama-3", 8, "awq-int4", 15),
)
# Five agents, each with its own deployment of the same 8B model (one H100 endpoint each).
FLEET = Fleet(
    tuple(FleetDeployment(f"llama-3-8b@sim-{i}", "llama-3-8b", 1, 33 * GIB, GPU, 80 * GIB) for i in range(5)),
    CATALOG,
)
PRICES = [
    (cost_pb2.PRICE_KIND_MODEL_INPUT_TOKENS, "llama-3-8b", 200_000),
    (cost_pb2.PRICE_KIND_MODEL_OUTPUT_TOKENS, "llama-3-8b", 600_000),
    (cost_pb2.PRICE_KIND_GPU_HOUR, GPU, 2_500_000),
]
DAY = 86_400


def month_of_usage() -> list[common_pb2.UsageEvent]:
    now = int(time.time())
    events = []
    for day in range(30):
        for i in range(5):
            for k in range(4):
                events.append(
                    common_pb2.UsageEvent(
                        event_id=f"d{day}-a{i}-{k}", model="llama-3-8b", deployment=f"llama-3-8b@sim-{i}",
                        time=timestamp_pb2.Timestamp(seconds=now - day * DAY - 60 * (k + 1)), gpu_type=GPU,
                        actor=common_pb2.Actor(user="alice", team="finance", project="ledger", agent=f"agent-{i}"),
                        usage=common_pb2.Usage(input_tokens=800, output_tokens=200, gpu_seconds=2.0),
                    )
                )  # fmt: skip
    return events


async def _server(tmp_path, test_auth, fleet):
    return await start_test_cost(tmp_path, test_auth, fleet=fleet)


@pytest.fixture
async def seeded(tmp_path, test_auth, mint_token):
    async def fleet():
        return FLEET

    running = await _server(tmp_path, test_auth, fleet)
    channel = grpc.aio.insecure_channel(running.address)
    stub = cost_pb2_grpc.CostStub(channel)
    admin = user_metadata(mint_token("ops", "admin"))
    for kind, subject, micro in PRICES:
        price = cost_pb2.Price(kind=kind, subject=subject, micro_usd=micro)
        price.effective_time.FromSeconds(int(time.time()) - 60 * DAY)
        await stub.SetPrice(cost_pb2.SetPriceRequest(price=price), metadata=admin)

    month = cost_pb2.RecordRequest(events=month_of_usage())
    assert (await stub.Record(month, metadata=admin)).accepted == 600
    yield stub, admin
    await channel.close()
    await running.stop(grace=0)


async def test_advise_consolidates_five_agents_on_one_8b_deployment(seeded, mint_token):
    stub, admin = seeded
    resp = await stub.Advise(cost_pb2.AdviseRequest(), metadata=user_metadata(mint_token("fin", "finance")))
    top = resp.recommendations[0]
    assert top.rule == "consolidate"
    assert top.title == "Consolidate 5 agents on one llama-3-8b deployment"
    # Four redundant deployments, 33 GiB each, 33/80 of an H100 at $2.50/GPU-hour for a month.
    assert top.vram_saved_bytes == 4 * 33 * GIB
    assert top.monthly_saving_micro_usd == round(4 * 33 / 80 * HOURS_PER_MONTH * 2_500_000)  # ~$3,013
    assert "5 deployments of llama-3-8b" in top.evidence and "120 req" in top.evidence
    assert "132.0 GiB" in top.evidence and "$753.33/month" in top.evidence
    rules = {r.rule for r in resp.recommendations}
    assert "quantize" in rules  # llama-3-8b-awq is in the catalog
    assert "scale_to_zero" not in rules  # every deployment served every day
    savings = [r.monthly_saving_micro_usd for r in resp.recommendations]
    assert savings == sorted(savings, reverse=True)

    only = await stub.Advise(cost_pb2.AdviseRequest(rules=["consolidate"], project="payroll"), metadata=admin)
    assert list(only.recommendations) == []  # no usage in that project


async def test_advise_bad_input_and_access(seeded, mint_token):
    stub, admin = seeded
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Advise(cost_pb2.AdviseRequest(rules=["nope"]), metadata=admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nope" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Advise(cost_pb2.AdviseRequest(period_days=400), metadata=admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Advise(cost_pb2.AdviseRequest(), metadata=agent_metadata("agent-0"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_advise_without_a_fleet_says_so(tmp_path, test_auth, mint_token):
    running = await _server(tmp_path, test_auth, None)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            resp = await cost_pb2_grpc.CostStub(channel).Advise(
                cost_pb2.AdviseRequest(), metadata=user_metadata(mint_token("ops", "admin"))
            )
        assert list(resp.recommendations) == []
        assert any(n.startswith("scale_to_zero: no fleet snapshot") for n in resp.notes)
    finally:
        await running.stop(grace=0)
