"""Cost service over a real gRPC channel: batched record, prices, budgets, report, access."""

from __future__ import annotations

import time

import grpc
import pytest
import yaml
from google.protobuf import timestamp_pb2
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2, cost_pb2_grpc
from prometheus_client import CollectorRegistry

from services.cost.seed import seed_cost
from tests.helpers.cost import start_test_cost
from tests.helpers.grpc import agent_metadata, user_metadata

DEMO_YAML = """
cost:
  prices:
    - {kind: model_input_tokens, subject: llama-3-8b, usd: 0.20}    # per 1M tokens
    - {kind: model_output_tokens, subject: llama-3-8b, usd: 0.60}
    - {kind: gpu_hour, subject: H100-80GB, usd: 2.50}
    - {kind: tool_call, subject: ledger, usd: 0.001}
  budgets:
    - {name: ledger-monthly, scope: project, subject: ledger, period: monthly, limit_usd: 500, alert_percent: [50, 80, 95]}
"""


def now_ts(offset_s: int = 0) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.GetCurrentTime()
    t.seconds += offset_s
    return t


def usage(event_id: str, *, inp=0, out=0, gpu=0.0, tool="", model="llama-3-8b", project="ledger"):
    return common_pb2.UsageEvent(
        event_id=event_id, time=now_ts(), model=model, gpu_type="H100-80GB", tool=tool,
        deployment=f"{model}@sim-0" if model else "",
        actor=common_pb2.Actor(user="alice", team="finance", project=project, agent="ledger-bot"),
        usage=common_pb2.Usage(input_tokens=inp, output_tokens=out, gpu_seconds=gpu),
    )  # fmt: skip


def batch(events) -> cost_pb2.RecordRequest:
    return cost_pb2.RecordRequest(events=events)


@pytest.fixture
async def cost_server(tmp_path, test_auth):
    registry = CollectorRegistry()
    running = await start_test_cost(tmp_path, test_auth, registry=registry)
    yield running, registry
    await running.stop(grace=0)


@pytest.fixture
async def cost(cost_server):
    running, registry = cost_server
    channel = grpc.aio.insecure_channel(running.address)
    yield cost_pb2_grpc.CostStub(channel), registry
    await channel.close()


@pytest.fixture
def admin(mint_token):
    return user_metadata(mint_token("svc", "admin"))


async def test_seed_then_record_report_and_budget(cost, admin, mint_token):
    stub, registry = cost
    data = yaml.safe_load(DEMO_YAML)
    assert await seed_cost(stub, data, admin) == {"prices_set": 4, "prices_unchanged": 0, "budgets_set": 1}
    # Seeding again adds no price versions.
    assert await seed_cost(stub, data, admin) == {"prices_set": 0, "prices_unchanged": 4, "budgets_set": 1}
    prices = (await stub.ListPrices(cost_pb2.ListPricesRequest(), metadata=admin)).prices
    assert {p.subject: p.micro_usd for p in prices if p.kind == cost_pb2.PRICE_KIND_GPU_HOUR} == {
        "H100-80GB": 2_500_000
    }
    assert len(prices) == 4

    first = await stub.Record(
        batch([usage("u1", inp=1_000_000, out=500_000), usage("u2", gpu=3600),
               usage("u3", model="", tool="ledger"), usage("u4", inp=1_000_000, project="payroll")]),
        metadata=admin,
    )  # fmt: skip
    assert (first.accepted, first.duplicates) == (4, 0)
    resend = await stub.Record(batch([usage("u3", model="", tool="ledger"), usage("u5", out=1_000_000)]),
                               metadata=admin)  # fmt: skip
    assert (resend.accepted, resend.duplicates) == (1, 1)

    labels = {"team": "finance", "project": "ledger", "agent": "ledger-bot", "model": "llama-3-8b"}
    # u1 0.5 + u2 2.5 + u5 0.6 USD for this label set; the resent u3 is not counted twice.
    assert registry.get_sample_value("harness_cost_usd_total", labels) == pytest.approx(3.6)
    assert registry.get_sample_value("harness_cost_usd_total", {**labels, "model": ""}) == pytest.approx(
        0.001
    )

    finance = user_metadata(mint_token("fiona", "finance"))
    report = await stub.Report(cost_pb2.ReportRequest(group_by=["project"], start_time=now_ts(-3600)),
                               metadata=finance)  # fmt: skip
    assert {r.group["project"]: r.cost_micro_usd for r in report.rows} == {
        "ledger": 3_601_000,
        "payroll": 200_000,
    }
    assert report.total.cost_micro_usd == 3_801_000 and report.total.requests == 5

    budget = (await stub.GetBudget(cost_pb2.GetBudgetRequest(name="ledger-monthly"), metadata=finance)).budget
    assert budget.limit_micro_usd == 500_000_000 and list(budget.alert_percent) == [50, 80, 95]
    assert budget.spent_micro_usd == 3_601_000 and budget.reset_time.seconds > now_ts().seconds
    listed = await stub.ListBudgets(cost_pb2.ListBudgetsRequest(scope=cost_pb2.BUDGET_SCOPE_PROJECT),
                                    metadata=finance)  # fmt: skip
    assert [b.name for b in listed.budgets] == ["ledger-monthly"]
    await stub.DeleteBudget(cost_pb2.DeleteBudgetRequest(name="ledger-monthly"), metadata=admin)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetBudget(cost_pb2.GetBudgetRequest(name="ledger-monthly"), metadata=finance)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_inputs(cost, admin):
    stub, _ = cost
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Record(batch([usage("ok"), usage("ok2"), usage("")]), metadata=admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "event 2" in err.value.details()
    # One transaction per batch: the good events before the bad one are not recorded either.
    assert (await stub.Record(batch([usage("ok"), usage("ok2")]), metadata=admin)).accepted == 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Report(cost_pb2.ReportRequest(group_by=["project", "colour"]), metadata=admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "colour" in err.value.details() and "agent_version" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SetPrice(cost_pb2.SetPriceRequest(price=cost_pb2.Price(subject="x")), metadata=admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SetBudget(cost_pb2.SetBudgetRequest(budget=cost_pb2.Budget(name="b")), metadata=admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeleteBudget(cost_pb2.DeleteBudgetRequest(name="nope"), metadata=admin)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ValueError, match="valid: model_input_tokens"):
        await seed_cost(stub, {"cost": {"prices": [{"kind": "gpu_minute", "subject": "x", "usd": 1}]}}, admin)


async def test_access_rules(cost, admin, mint_token):
    stub, _ = cost
    user = user_metadata(mint_token("dave", "analyst"))
    finance = user_metadata(mint_token("fiona", "finance"))

    async def code(coro) -> grpc.StatusCode:
        try:
            await coro
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    price = cost_pb2.SetPriceRequest(
        price=cost_pb2.Price(kind=cost_pb2.PRICE_KIND_TOOL_CALL, subject="ledger", micro_usd=1000)
    )
    assert await code(stub.Record(batch([usage("x")]))) == grpc.StatusCode.UNAUTHENTICATED
    assert await code(stub.Report(cost_pb2.ReportRequest())) == grpc.StatusCode.UNAUTHENTICATED
    assert await code(stub.Record(batch([usage("x")]), metadata=user)) == grpc.StatusCode.PERMISSION_DENIED
    assert await code(stub.Record(batch([usage("x")]), metadata=finance)) == grpc.StatusCode.PERMISSION_DENIED
    agent = agent_metadata("ledger-bot")
    assert await code(stub.Record(batch([usage("x")]), metadata=agent)) == grpc.StatusCode.PERMISSION_DENIED
    assert (
        await code(stub.Report(cost_pb2.ReportRequest(), metadata=user)) == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await code(stub.ListPrices(cost_pb2.ListPricesRequest(), metadata=user))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await code(stub.SetPrice(price, metadata=finance)) == grpc.StatusCode.PERMISSION_DENIED
    )  # reads only
    assert await code(stub.SetPrice(price, metadata=admin)) == grpc.StatusCode.OK
    assert await code(stub.Report(cost_pb2.ReportRequest(), metadata=finance)) == grpc.StatusCode.OK
    assert await code(stub.ListBudgets(cost_pb2.ListBudgetsRequest(), metadata=finance)) == grpc.StatusCode.OK
    report = await stub.Report(cost_pb2.ReportRequest(), metadata=admin)
    assert report.total.requests == 0  # refused records stored nothing


async def test_list_alerts_of_an_unknown_budget_is_not_found(cost, admin):
    # ListAlerts is covered in tests/integration/test_cost_alerts.py; this was a planned RPC.
    stub, _ = cost
    assert list((await stub.ListAlerts(cost_pb2.ListAlertsRequest(), metadata=admin)).alerts) == []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListAlerts(cost_pb2.ListAlertsRequest(budget="nope"), metadata=admin)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in err.value.details()


class _WithMetadata(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds a caller's metadata to every unary call (what mTLS gives the router in a stack)."""

    def __init__(self, metadata) -> None:
        self._md = tuple(metadata)

    async def intercept_unary_unary(self, continuation, details, request):
        details = details._replace(metadata=tuple(details.metadata or ()) + self._md)
        return await continuation(details, request)


async def test_router_starts_its_gpu_bound_from_the_rates_the_ledger_charged(cost, cost_server, admin):
    """A router that has not yet served a model reserves GPU time at the rate every replica was
    charged lately (cost Report), not at the 10 ms-a-token prior."""
    from services.router.budgets import MemoryBudgets
    from services.router.budgets.follower import CostFollower

    stub, _ = cost
    cached = usage("c1", inp=500, out=500)  # a cache answer: no deployment, no GPU time
    cached.deployment, cached.cached = "", True
    got = await stub.Record(
        batch([usage("u1", inp=100, out=300, gpu=0.4), usage("u2", inp=50, out=50, gpu=0.1), cached,
                 usage("u3", inp=10, out=10, gpu=5.0, model="other-model"), usage("t1", tool="ledger")]),
        metadata=admin,
    )  # fmt: skip
    assert got.accepted == 5
    budgets = MemoryBudgets()
    assert budgets.gpu.rate("llama-3-8b") == budgets.gpu.PRIOR_S_PER_TOKEN
    channel = grpc.aio.insecure_channel(cost_server[0].address, interceptors=[_WithMetadata(admin)])
    try:
        rates = await CostFollower(channel, budgets).poll_gpu_rates()
    finally:
        await channel.close()
    # 0.5 GPU seconds over 500 tokens; the cached answer and the tool call do not count.
    assert rates == pytest.approx({"llama-3-8b": 0.001, "other-model": 0.25})
    assert budgets.gpu_bound_s("llama-3-8b", 100) == pytest.approx(2 * 0.001 * 100)
    budgets.gpu.observe("llama-3-8b", 100, 0.3)  # what this router sees itself comes first
    assert budgets.gpu.rate("llama-3-8b") == pytest.approx(0.003)


async def test_a_router_says_when_it_asked_for_the_budgets_it_enforces(cost_server, cost, admin):
    """harness_router_budgets_as_of_timestamp_seconds: a budget set before that time is in force
    on the router (what tests and operators wait on instead of guessing a refresh delay)."""
    from services.router.budgets import MemoryBudgets, Subjects
    from services.router.budgets.follower import CostFollower
    from services.router.budgets.metrics import register_budget_metrics

    stub, _ = cost
    budgets, metrics = MemoryBudgets(), CollectorRegistry()
    register_budget_metrics(metrics, budgets)
    assert metrics.get_sample_value("harness_router_budgets_as_of_timestamp_seconds") == 0
    b = cost_pb2.Budget(name="b1", scope=cost_pb2.BUDGET_SCOPE_USER, subject="alice",
                        period=cost_pb2.BUDGET_PERIOD_DAILY, limit_micro_usd=10)  # fmt: skip
    await stub.SetBudget(cost_pb2.SetBudgetRequest(budget=b), metadata=admin)
    set_at = time.time()
    channel = grpc.aio.insecure_channel(cost_server[0].address, interceptors=[_WithMetadata(admin)])
    try:
        await CostFollower(channel, budgets).poll_once()
    finally:
        await channel.close()
    as_of = metrics.get_sample_value("harness_router_budgets_as_of_timestamp_seconds")
    assert set_at <= as_of <= time.time()
    assert [r.name for r in budgets.table.applicable(Subjects(user="alice"))] == ["b1"]


async def test_huge_usage_and_times_are_invalid_argument_not_internal(cost, admin):
    """gpu_seconds 1e308 priced at a GPU-hour rate overflowed to INTERNAL; Timestamps beyond
    what the ledger holds did the same in Record, SetPrice, ListPrices and Report."""
    stub, _ = cost
    price = cost_pb2.Price(kind=cost_pb2.PRICE_KIND_GPU_HOUR, subject="H100-80GB", micro_usd=2_000_000)
    price.effective_time.CopyFrom(now_ts(-60))
    await stub.SetPrice(cost_pb2.SetPriceRequest(price=price), metadata=admin)
    huge = usage("huge", gpu=1e308)
    huge.gpu_type = "H100-80GB"
    far = usage("far")
    far.time.seconds = 2**62
    for events, needle in (([huge], "gpu_seconds"), ([far], "time")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Record(batch(events), metadata=admin)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details()
    future = timestamp_pb2.Timestamp(seconds=2**62)
    calls = [
        stub.ListPrices(cost_pb2.ListPricesRequest(at_time=future), metadata=admin),
        stub.Report(cost_pb2.ReportRequest(group_by=["project"], start_time=future), metadata=admin),
        stub.SetPrice(cost_pb2.SetPriceRequest(price=cost_pb2.Price(
            kind=cost_pb2.PRICE_KIND_GPU_HOUR, subject="x", micro_usd=1, effective_time=future)), metadata=admin),
    ]  # fmt: skip
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "1970" in err.value.details()
