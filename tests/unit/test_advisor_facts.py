"""Advisor facts gathered from a real cost store (SQLite and PostgreSQL): window, project, prices."""

from __future__ import annotations

import pytest
from harness.cost.v1 import cost_pb2

from services.common.errors import InvalidArgument
from services.cost.advisor import Fleet, advise, gather
from services.cost.advisor.base import US_PER_DAY
from services.cost.store import CostStore
from tests.helpers.cost_usage import demo_prices, us, usage

NOW = us("2024-06-30T12:00:00Z")


@pytest.fixture
async def store(db_url):
    s = await CostStore.open(db_url, now_us=lambda: NOW)
    await demo_prices(s)
    await s.record([
        usage("in-1", "2024-06-29T10:00:00Z", inp=100, out=10, agent="a"),
        usage("in-2", "2024-06-28T10:00:00Z", inp=100, out=10, agent="a"),
        usage("in-3", "2024-06-28T11:00:00Z", inp=50, out=5, agent="b", project="payroll"),
        usage("tool", "2024-06-28T11:00:00Z", model="", tool="ledger"),
        usage("old", "2024-05-01T10:00:00Z", inp=999, out=999, agent="a"),  # outside 30 days
    ])  # fmt: skip
    yield s
    await s.close()


async def test_gather_reads_the_window_project_and_prices(store):
    facts = await gather(store, now_us=NOW, project="ledger")
    assert facts.end_us - facts.start_us == 30 * US_PER_DAY
    ((row),) = facts.usage  # tool calls and other projects left out
    assert (row.agent, row.deployment, row.requests, row.input_tokens, row.output_tokens) == (
        "a", "llama-3-8b@sim-0", 2, 200, 20,
    )  # fmt: skip
    assert sorted(d.day for d in facts.days) == ["2024-06-28", "2024-06-29"]
    assert facts.gpu_hour_price("H100-80GB") == 2_500_000
    assert facts.token_prices("llama-3-8b") == (200_000, 600_000)
    assert facts.fleet is None
    assert len((await gather(store, now_us=NOW)).usage) == 2


async def test_advise_takes_the_fleet_from_the_provider_and_checks_input(store):
    async def fleet():
        return Fleet()

    advice = await advise(store, now_us=NOW, rule_names=["consolidate"], fleet=fleet)
    assert advice.recommendations == () and advice.notes == ()
    with pytest.raises(InvalidArgument, match="period_days"):
        await gather(store, now_us=NOW, period_days=-1)
    with pytest.raises(InvalidArgument, match="unknown advisor rule"):
        await advise(store, now_us=NOW, rule_names=["bogus"])
    assert cost_pb2.AdviseResponse(notes=["x"]).notes == ["x"]
