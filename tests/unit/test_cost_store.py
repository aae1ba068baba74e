"""Cost store on SQLite and PostgreSQL: pricing by effective date, dedup, budgets, reports."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from google.protobuf import timestamp_pb2
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2
from sqlalchemy import create_engine, func, insert, select
from sqlalchemy.exc import IntegrityError

from services.common.errors import InvalidArgument, NotFound
from services.common.pricing import period_bounds, usd_to_micro
from services.cost.models import cost_totals, ledger
from services.cost.store import CostStore

K = cost_pb2


def us(dt: str) -> int:
    d = datetime.fromisoformat(dt.replace("Z", "+00:00"))
    return int(d.timestamp()) * 1_000_000 + d.microsecond


def ts(dt: str) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromJsonString(dt)
    return t


def usage(
    event_id: str,
    at: str,
    *,
    model="llama-3-8b",
    inp=0,
    out=0,
    gpu=0.0,
    tool="",
    cached=False,
    user="alice",
    team="fin",
    project="ledger",
    agent="ledger-bot",
    gpu_type="H100-80GB",
    version="v1",
):
    return common_pb2.UsageEvent(
        event_id=event_id, time=ts(at), model=model, deployment=f"{model}@sim-0" if model else "",
        gpu_type=gpu_type, tool=tool, cached=cached,
        actor=common_pb2.Actor(user=user, team=team, project=project, agent=agent, agent_version=version),
        usage=common_pb2.Usage(input_tokens=inp, output_tokens=out, gpu_seconds=gpu),
    )  # fmt: skip


async def demo_prices(store: CostStore, effective: str = "2024-01-01T00:00:00Z") -> None:
    for kind, subject, usd in [
        (K.PRICE_KIND_MODEL_INPUT_TOKENS, "llama-3-8b", 0.20),
        (K.PRICE_KIND_MODEL_OUTPUT_TOKENS, "llama-3-8b", 0.60),
        (K.PRICE_KIND_GPU_HOUR, "H100-80GB", 2.50),
        (K.PRICE_KIND_TOOL_CALL, "ledger", 0.001),
    ]:
        price = K.Price(kind=kind, subject=subject, micro_usd=usd_to_micro(usd), effective_time=ts(effective))
        await store.set_price(price)


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


def test_period_bounds_follow_the_calendar_in_the_timezone():
    ny = ZoneInfo("America/New_York")
    now = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)  # DST starts that day in New York: 23 hours
    start, end = period_bounds(K.BUDGET_PERIOD_DAILY, now, ny)
    assert start.astimezone(UTC) == datetime(2024, 3, 10, 5, tzinfo=UTC)
    assert end.astimezone(UTC) == datetime(2024, 3, 11, 4, tzinfo=UTC)
    start, end = period_bounds(K.BUDGET_PERIOD_WEEKLY, now, ny)  # Sunday: week began Monday 4th
    assert (start.date().isoformat(), end.date().isoformat()) == ("2024-03-04", "2024-03-11")
    start, end = period_bounds(K.BUDGET_PERIOD_MONTHLY, datetime(2024, 12, 31, 23, tzinfo=UTC), ny)
    assert (start.date().isoformat(), end.date().isoformat()) == ("2024-12-01", "2025-01-01")
    assert period_bounds(K.BUDGET_PERIOD_LIFETIME, now, ny) == (None, None)


@pytest.mark.parametrize(
    ("tz", "period", "spent", "reset"),
    [
        # now = 2024-06-01 01:00 in Shanghai (UTC+8) but still 2024-05-31 in UTC.
        ("Asia/Shanghai", K.BUDGET_PERIOD_MONTHLY, 2 * 200_000, "2024-06-30T16:00:00Z"),
        ("Asia/Shanghai", K.BUDGET_PERIOD_DAILY, 2 * 200_000, "2024-06-01T16:00:00Z"),
        ("Asia/Shanghai", K.BUDGET_PERIOD_WEEKLY, 4 * 200_000, "2024-06-02T16:00:00Z"),
        ("UTC", K.BUDGET_PERIOD_MONTHLY, 5 * 200_000, "2024-06-01T00:00:00Z"),
        ("UTC", K.BUDGET_PERIOD_DAILY, 3 * 200_000, "2024-06-01T00:00:00Z"),
        ("UTC", K.BUDGET_PERIOD_LIFETIME, 5 * 200_000, None),
    ],
)
async def test_budget_spend_covers_the_current_period_in_the_configured_timezone(
    db_url, tz, period, spent, reset
):
    now = us("2024-05-31T17:00:00Z")
    s = await CostStore.open(db_url, timezone=tz, now_us=lambda: now)
    try:
        await demo_prices(s)
        await s.record([
            usage("old-week", "2024-05-26T15:59:59Z", inp=1_000_000),  # Sunday 23:59:59 Shanghai
            usage("may-1", "2024-05-27T00:00:00Z", inp=1_000_000),
            usage("may-2", "2024-05-31T15:59:59Z", inp=1_000_000),  # May 31 23:59:59 Shanghai
            usage("jun-1", "2024-05-31T16:00:00Z", inp=1_000_000),  # June 1 00:00 Shanghai
            usage("jun-2", "2024-05-31T16:30:00Z", inp=1_000_000),
            usage("other", "2024-05-31T16:30:00Z", inp=1_000_000, project="payroll"),
        ])  # fmt: skip
        b = await s.set_budget(K.Budget(name="b", scope=K.BUDGET_SCOPE_PROJECT, subject="ledger", period=period,
                                        limit_micro_usd=500_000_000))  # fmt: skip
        assert b.spent_micro_usd == spent
        assert b.HasField("reset_time") == (reset is not None)
        if reset:
            assert b.reset_time.ToJsonString() == reset
        assert list(b.alert_percent) == [50, 80, 95]  # defaults
    finally:
        await s.close()


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


async def test_report_groups_by_dimensions_over_a_half_open_range(db_url, clock):
    s = await CostStore.open(db_url, timezone="Asia/Shanghai", now_us=lambda: clock["now"])
    try:
        await demo_prices(s)
        await s.record([
            usage("a", "2024-06-01T15:00:00Z", inp=1_000_000, user="alice"),  # day 2024-06-01 (23:00 +8)
            usage("b", "2024-06-01T16:00:00Z", inp=2_000_000, user="alice"),  # day 2024-06-02
            usage("c", "2024-06-01T17:00:00Z", out=1_000_000, user="bob", project="payroll", version="v2"),
            usage("d", "2024-06-01T18:00:00Z", model="", tool="ledger", user="bob"),
            usage("late", "2024-06-03T00:00:00Z", inp=1_000_000, user="carol"),
        ])  # fmt: skip
        start, end = us("2024-06-01T00:00:00Z"), us("2024-06-03T00:00:00Z")  # excludes "late"
        r = await s.report(["project", "model"], start, end)
        rows = {(x.group["project"], x.group["model"]): (x.requests, x.cost_micro_usd) for x in r.rows}
        assert rows == {("ledger", "llama-3-8b"): (2, 600_000), ("payroll", "llama-3-8b"): (1, 600_000),
                        ("ledger", ""): (1, 1000)}  # fmt: skip
        assert r.total.requests == 4 and r.total.cost_micro_usd == 1_201_000
        assert r.rows[-1].cost_micro_usd == 1000  # largest cost first
        days = await s.report(["day"], start, end)
        assert {x.group["day"]: x.requests for x in days.rows} == {"2024-06-01": 1, "2024-06-02": 3}
        by_user = await s.report(["user", "agent_version", "user"], start, end)  # repeats are ignored
        assert {(x.group["user"], x.group["agent_version"]) for x in by_user.rows} == {
            ("alice", "v1"), ("bob", "v2"), ("bob", "v1")}  # fmt: skip
        ungrouped = await s.report([], start, end)
        assert len(ungrouped.rows) == 1 and ungrouped.rows[0].cost_micro_usd == 1_201_000
        empty = await s.report([], 0, 1)
        assert list(empty.rows) == [] and empty.total.requests == 0
        with pytest.raises(InvalidArgument, match="valid: user, team, project, agent, agent_version"):
            await s.report(["colour"], start, end)
        with pytest.raises(InvalidArgument, match="after"):
            await s.report(["user"], end, start)
    finally:
        await s.close()


async def test_report_counts_requests_billed_on_estimated_tokens(db_url, clock):
    s = await CostStore.open(db_url, now_us=lambda: clock["now"])
    try:
        await demo_prices(s)
        guessed = usage("g", "2024-06-01T15:00:00Z", out=1_000_000, user="alice")
        guessed.usage.estimated = True  # the engine sent no counts: the router counted the text
        await s.record([guessed, usage("e", "2024-06-01T16:00:00Z", out=1_000_000, user="bob")])
        r = await s.report(["user"], us("2024-06-01T00:00:00Z"), us("2024-06-02T00:00:00Z"))
        assert {x.group["user"]: x.estimated_requests for x in r.rows} == {"alice": 1, "bob": 0}
        assert r.total.estimated_requests == 1 and r.total.requests == 2
    finally:
        await s.close()


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata", "Asia/Kathmandu", "America/New_York"])
async def test_budget_spend_from_buckets_equals_the_ledgers_in_any_timezone(db_url, clock, zone):
    """Quarter-hour buckets give exactly the ledger's spend for every calendar period, in zones
    15, 30 and 45 minutes off the hour and across a DST change (New York, 2024-11-03)."""
    import random

    from services.cost import aggregates

    store = await CostStore.open(db_url, now_us=lambda: clock["now"], timezone=zone)
    try:
        await demo_prices(store)
        rng = random.Random(zone)
        start = us("2024-10-28T00:00:00Z")
        events = [
            usage(f"e{i}", "2024-10-28T00:00:00Z", inp=rng.randint(1, 5) * 100_000,
                  user=rng.choice(["alice", "bob"]), team=rng.choice(["fin", "ops"]), agent=rng.choice(["a", "b"]))
            for i in range(300)
        ]  # fmt: skip
        for ev in events:  # spread over 9 days, on and around local midnights
            ev.time.FromMicroseconds(start + rng.randrange(9 * 86_400) * 1_000_000)
        await store.record(events)
        tz = ZoneInfo(zone)
        engine = create_engine(db_url)
        try:
            with engine.connect() as conn:
                for day in range(9):
                    at = datetime.fromtimestamp(start / 1e6 + day * 86_400 + 3_600, tz=UTC)
                    for period in (K.BUDGET_PERIOD_DAILY, K.BUDGET_PERIOD_WEEKLY, K.BUDGET_PERIOD_MONTHLY):
                        lo, hi = period_bounds(period, at, tz)
                        bounds = (us(lo.isoformat()), us(hi.isoformat()))
                        for scope, col, subject in ((K.BUDGET_SCOPE_USER, ledger.c.user, "alice"),
                                                    (K.BUDGET_SCOPE_TEAM, ledger.c.team, "ops")):  # fmt: skip
                            direct = conn.scalar(
                                select(func.coalesce(func.sum(ledger.c.cost_micro_usd), 0)).where(
                                    col == subject,
                                    ledger.c.time_us >= bounds[0],
                                    ledger.c.time_us < bounds[1],
                                )
                            )
                            assert aggregates.spend(conn, scope, subject, *bounds) == direct, (period, at)
                total = conn.scalar(select(func.sum(ledger.c.cost_micro_usd)).where(ledger.c.agent == "a"))
                assert aggregates.spend(conn, K.BUDGET_SCOPE_AGENT, "a", None, None) == total > 0
                # A window off the quarter hour is summed from the ledger, exactly.
                odd = (start + 7 * 60 * 1_000_000, start + 86_400 * 1_000_000 + 1)
                direct = conn.scalar(
                    select(func.coalesce(func.sum(ledger.c.cost_micro_usd), 0)).where(
                        ledger.c.team == "fin", ledger.c.time_us >= odd[0], ledger.c.time_us < odd[1]
                    )
                )
                assert aggregates.spend(conn, K.BUDGET_SCOPE_TEAM, "fin", *odd) == direct
        finally:
            engine.dispose()
    finally:
        await store.close()
