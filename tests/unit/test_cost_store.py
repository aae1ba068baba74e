"""Cost store on SQLite and PostgreSQL: pricing by effective date, dedup, budget CRUD and validation
(spend over periods and reports: test_cost_spend.py)."""

from __future__ import annotations

import asyncio

import pytest
from harness.cost.v1 import cost_pb2
from sqlalchemy import create_engine, func, insert, select
from sqlalchemy.exc import IntegrityError

from services.common.errors import InvalidArgument, NotFound
from services.common.pricing import usd_to_micro
from services.cost.models import cost_totals, ledger
from services.cost.store import CostStore
from tests.helpers.cost_usage import demo_prices, ts, us, usage

K = cost_pb2


@pytest.fixture
def clock():
    return {"now": us("2024-06-15T12:00:00Z")}


@pytest.fixture
async def store(db_url, clock):
    s = await CostStore.open(db_url, now_us=lambda: clock["now"])
    yield s
    await s.close()


async def total(store: CostStore, *group_by: str) -> cost_pb2.ReportResponse:
    return await store.report(list(group_by), 0, None)


def cost_totals_by_labels(db_url: str) -> tuple[dict, dict]:
    """(cost_totals rows, the ledger's sums per label set with a cost): they must be equal."""
    engine = create_engine(db_url)
    labels = (ledger.c.team, ledger.c.project, ledger.c.agent, ledger.c.model)
    try:
        with engine.connect() as conn:
            kept = {tuple(r[:4]): r[4] for r in conn.execute(select(cost_totals))}
            spent = func.sum(ledger.c.cost_micro_usd)
            summed = conn.execute(select(*labels, spent).group_by(*labels).having(spent > 0))
            return kept, {tuple(r[:4]): r[4] for r in summed}
    finally:
        engine.dispose()


def test_usd_to_micro_is_exact():
    assert usd_to_micro(0.001) == 1000 and usd_to_micro(0.2) == 200_000 and usd_to_micro(500) == 500_000_000


async def test_events_are_priced_with_the_prices_in_force_at_their_time(store):
    await demo_prices(store)
    cheaper = K.Price(kind=K.PRICE_KIND_MODEL_INPUT_TOKENS, subject="llama-3-8b", micro_usd=100_000,
                      effective_time=ts("2024-03-01T00:00:00Z"))  # fmt: skip
    await store.set_price(cheaper)
    r = await store.record([
        # 1M in x 0.20 + 0.5M out x 0.60 + 1800 s x 2.50/h = 0.2 + 0.3 + 1.25 USD
        usage("before", "2024-02-29T23:59:59Z", inp=1_000_000, out=500_000, gpu=1800),
        usage("after", "2024-03-01T00:00:00Z", inp=1_000_000),  # 0.10 USD after the change
        usage("tool", "2024-03-02T00:00:00Z", model="", tool="ledger"),  # 0.001 USD per call
        usage("cached", "2024-03-02T00:00:00Z", inp=1_000_000, out=1000, gpu=5, cached=True),
        usage("rounding", "2024-03-02T00:00:00Z", inp=7, out=3),  # 0.7 + 1.8 micro-USD -> 3
    ])  # fmt: skip
    assert (r.accepted, r.duplicates) == (5, 0)
    by_event = {e.event_id: e.cost_micro_usd for e in r.new}
    assert by_event == {"before": 1_750_000, "after": 100_000, "tool": 1000, "cached": 0, "rounding": 3}
    report = await total(store)
    assert report.total.cost_micro_usd == 1_851_003 and report.total.requests == 5
    assert report.total.input_tokens == 3_000_007 and report.total.gpu_seconds == pytest.approx(1805)

    in_force = await store.list_prices(us("2024-02-15T00:00:00Z"))
    assert {(p.subject, p.kind): p.micro_usd for p in in_force}[("llama-3-8b", K.PRICE_KIND_MODEL_INPUT_TOKENS)] \
        == 200_000  # fmt: skip
    now_prices = {
        (p.subject, p.kind): p.micro_usd for p in await store.list_prices(us("2024-06-01T00:00:00Z"))
    }
    assert now_prices[("llama-3-8b", K.PRICE_KIND_MODEL_INPUT_TOKENS)] == 100_000 and len(now_prices) == 4
    assert len(await store.list_prices()) == 5  # every version
    assert await store.list_prices(us("2023-12-31T00:00:00Z")) == []


async def test_setting_the_same_price_version_again_replaces_it(store):
    p = K.Price(kind=K.PRICE_KIND_GPU_HOUR, subject="H100-80GB", micro_usd=2_500_000,
                effective_time=ts("2024-01-01T00:00:00Z"))  # fmt: skip
    await store.set_price(p)
    p.micro_usd = 3_000_000
    await store.set_price(p)
    assert [x.micro_usd for x in await store.list_prices()] == [3_000_000]
    with pytest.raises(InvalidArgument, match="kind"):
        await store.set_price(K.Price(subject="x", micro_usd=1))
    with pytest.raises(InvalidArgument, match=r"price\.kind is required"):
        await store.set_price(K.Price(kind=42, subject="x", micro_usd=1))
    with pytest.raises(InvalidArgument, match="negative"):
        await store.set_price(K.Price(kind=K.PRICE_KIND_TOOL_CALL, subject="x", micro_usd=-1))
    with pytest.raises(InvalidArgument, match="subject"):
        await store.set_price(K.Price(kind=K.PRICE_KIND_TOOL_CALL, micro_usd=1))


async def test_missing_prices_cost_nothing_and_are_flagged(store, db_url):
    r = await store.record(
        [usage("e1", "2024-06-01T00:00:00Z", model="mystery", inp=10, gpu_type="A100", gpu=60)]
    )
    assert r.new[0].cost_micro_usd == 0
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            unpriced = conn.scalar(select(ledger.c.unpriced))
    finally:
        engine.dispose()
    assert unpriced == "model_input_tokens:mystery,gpu_hour:A100"
    await store.record([usage("e2", "2024-06-01T00:00:01Z", model="mystery", inp=5)])
    report = await store.report(["model"], us("2024-06-01T00:00:00Z"), us("2024-06-02T00:00:00Z"))
    [row] = report.rows  # reported as unknown cost, not as zero cost
    assert row.requests == 2 and row.unpriced_requests == 2 and row.cost_micro_usd == 0
    assert list(row.unpriced) == ["gpu_hour:A100", "model_input_tokens:mystery"]
    assert report.total.unpriced_requests == 2 and list(report.total.unpriced) == list(row.unpriced)


async def test_resent_usage_is_recorded_once(store, db_url):
    await demo_prices(store)
    first = await store.record(
        [usage("e1", "2024-06-01T00:00:00Z", inp=1000), usage("e2", "2024-06-01T00:00:00Z")]
    )
    again = await store.record([usage("e2", "2024-06-01T00:00:00Z"), usage("e3", "2024-06-01T00:00:00Z"),
                                usage("e3", "2024-06-01T00:00:00Z")])  # fmt: skip
    assert (first.accepted, first.duplicates) == (2, 0) and (again.accepted, again.duplicates) == (1, 2)
    assert [e.event_id for e in again.new] == ["e3"]
    assert (await total(store)).total.requests == 3
    kept, summed = cost_totals_by_labels(db_url)
    assert kept == summed == {("fin", "ledger", "ledger-bot", "llama-3-8b"): 200}  # resends add nothing
    engine = create_engine(db_url)  # the database itself refuses a second row for an event id
    try:
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(insert(ledger).values(event_id="e1", time_us=0, day="2024-06-01", recorded_us=0))
    finally:
        engine.dispose()


async def test_concurrent_records_from_two_writers_store_each_event_once(db_url, clock):
    a = await CostStore.open(db_url, now_us=lambda: clock["now"])
    b = await CostStore.open(db_url, now_us=lambda: clock["now"])
    try:
        await demo_prices(a)
        ids = [f"e{i}" for i in range(40)]

        async def writer(s: CostStore, order: list[str]) -> tuple[int, int]:
            acc = dup = 0
            for i in range(0, len(order), 5):
                r = await s.record(
                    [usage(x, "2024-06-01T00:00:00Z", inp=1_000_000, agent=f"bot-{int(x[1:]) % 3}")
                     for x in order[i : i + 5]]
                )  # fmt: skip
                acc, dup = acc + r.accepted, dup + r.duplicates
            return acc, dup

        results = await asyncio.gather(writer(a, ids), writer(b, ids[::-1]))
        assert sum(r[0] for r in results) == 40 and sum(r[1] for r in results) == 40
        report = await total(a)
        assert report.total.requests == 40 and report.total.cost_micro_usd == 40 * 200_000
        kept, summed = cost_totals_by_labels(db_url)
        assert kept == summed and sum(kept.values()) == 40 * 200_000 and len(kept) == 3
    finally:
        await a.close()
        await b.close()


async def test_budget_crud_and_validation(store):
    b = K.Budget(name="ledger-monthly", scope=K.BUDGET_SCOPE_PROJECT, subject="ledger",
                 period=K.BUDGET_PERIOD_MONTHLY, limit_micro_usd=500_000_000, alert_percent=[95, 50])  # fmt: skip
    assert list((await store.set_budget(b)).alert_percent) == [50, 95]
    await store.set_budget(K.Budget(name="alice-daily", scope=K.BUDGET_SCOPE_USER, subject="alice",
                                    period=K.BUDGET_PERIOD_DAILY, limit_micro_usd=1_000_000))  # fmt: skip
    b.limit_micro_usd = 600_000_000
    await store.set_budget(b)  # replace
    assert (await store.get_budget("ledger-monthly")).limit_micro_usd == 600_000_000
    assert [x.name for x in await store.list_budgets()] == ["alice-daily", "ledger-monthly"]
    assert [x.name for x in await store.list_budgets(K.BUDGET_SCOPE_USER)] == ["alice-daily"]
    await store.delete_budget("alice-daily")
    with pytest.raises(NotFound):
        await store.get_budget("alice-daily")
    with pytest.raises(NotFound):
        await store.delete_budget("alice-daily")
    for bad, msg in [
        (K.Budget(scope=1, subject="x", period=1, limit_micro_usd=1), "name"),
        (K.Budget(name="n", subject="x", period=1, limit_micro_usd=1), "scope"),
        (K.Budget(name="n", scope=1, period=1, limit_micro_usd=1), "subject"),
        (K.Budget(name="n", scope=1, subject="x", limit_micro_usd=1), "period"),
        (K.Budget(name="n", scope=1, subject="x", period=1), "limit"),
        (K.Budget(name="n", scope=1, subject="x", period=1, limit_micro_usd=1, alert_percent=[101]), "alert"),
        (K.Budget(name="n", scope=1, subject="x", period=1, limit_micro_usd=1, alert_percent=[0]), "alert"),
        (K.Budget(name="n", scope=9, subject="x", period=1, limit_micro_usd=1), "scope"),
        (
            K.Budget(name="n", scope=1, subject="x", period=9, limit_micro_usd=1),
            "budget.period 9 cannot be aligned",
        ),
        (K.Budget(name="n", scope=1, subject="x", period=1, limit_micro_usd=-5), "limit"),
    ]:
        with pytest.raises(InvalidArgument, match=msg):
            await store.set_budget(bad)
