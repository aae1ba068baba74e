"""Cost store spend over time on SQLite and PostgreSQL: calendar periods in the configured
timezone, budget spend per period (from quarter-hour buckets, equal to the ledger's), and reports
grouped by dimension over a half-open range."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from harness.cost.v1 import cost_pb2
from sqlalchemy import create_engine, func, select

from services.common.errors import InvalidArgument
from services.common.pricing import period_bounds
from services.cost.models import ledger
from services.cost.store import CostStore
from tests.helpers.cost_usage import demo_prices, us, usage

K = cost_pb2


@pytest.fixture
def clock():
    return {"now": us("2024-06-15T12:00:00Z")}


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
