"""Budget alert detection on SQLite and PostgreSQL: each threshold once per budget period.

Every usage event here is one call of the tool "t", priced at exactly 1 USD, so N events cost N USD.
"""

from __future__ import annotations

import asyncio

import pytest
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2
from sqlalchemy import select

from services.common.errors import NotFound
from services.cost import alerts
from services.cost.alert_delivery import audit_event, webhook_payload
from services.cost.alerts import crossed, thresholds
from services.cost.models import budget_alerts
from services.cost.store import CostStore
from tests.helpers.cost_usage import ts, us

K = cost_pb2
USD = 1_000_000
_seq = iter(range(1_000_000))


def ev(at: str = "2024-06-15T10:00:00Z", *, event_id: str = "", user="alice", team="fin", project="ledger",
       agent="ledger-bot", tool="t") -> common_pb2.UsageEvent:  # fmt: skip
    return common_pb2.UsageEvent(
        event_id=event_id or f"e{next(_seq)}", time=ts(at), tool=tool,
        actor=common_pb2.Actor(user=user, team=team, project=project, agent=agent),
    )  # fmt: skip


def budget(name="ledger-monthly", *, scope=K.BUDGET_SCOPE_PROJECT, subject="ledger",
           period=K.BUDGET_PERIOD_MONTHLY, limit_usd=10, percents=(), webhook="") -> cost_pb2.Budget:  # fmt: skip
    return K.Budget(name=name, scope=scope, subject=subject, period=period, limit_micro_usd=limit_usd * USD,
                    alert_percent=list(percents), webhook_url=webhook)  # fmt: skip


@pytest.fixture
def clock():
    return {"now": us("2024-06-15T12:00:00Z")}


TOOL_PRICE = K.Price(
    kind=K.PRICE_KIND_TOOL_CALL, subject="t", micro_usd=USD, effective_time=ts("2020-01-01T00:00:00Z")
)


async def open_store(url: str, clock, **kwargs) -> CostStore:
    s = await CostStore.open(url, now_us=lambda: clock["now"], **kwargs)
    await s.set_price(TOOL_PRICE)
    return s


@pytest.fixture
async def store(db_url, clock):
    s = await open_store(db_url, clock)
    raised: list = []
    s.alerts.add_listener(raised.extend)
    s.raised = raised  # what the listeners (metric, delivery) were told, in order
    yield s
    await s.close()


def keys(alerts) -> list[tuple[str, int]]:
    return [(a.budget, a.percent) for a in alerts]


async def spend(store: CostStore, n: int, at: str = "2024-06-15T10:00:00Z", **actor):
    return await store.record([ev(at, **actor) for _ in range(n)])


def test_thresholds_and_crossed_are_exact():
    assert thresholds([]) == (100,) and thresholds([95, 50, 80, 50]) == (50, 80, 95, 100)
    assert thresholds([100, 25]) == (25, 100)
    limit = 3 * USD  # 1/3 of it is not a whole micro-USD: compare exactly, no floats
    assert crossed(USD, limit, (33, 34, 100)) == (33,)
    assert crossed(limit // 2, limit, (50,)) == (50,)  # reaching a threshold is crossing it
    odd = limit + 1  # half of it is 1_500_000.5 micro-USD
    assert crossed(odd // 2, odd, (50,)) == () and crossed(odd // 2 + 1, odd, (50,)) == (50,)
    assert crossed(limit * 2, limit, (50, 100)) == (50, 100)


async def test_each_threshold_fires_once_per_period(store):
    await store.set_budget(budget())
    r = await spend(store, 4)  # 40%
    assert r.alerts == () and store.raised == []
    r = await spend(store, 1)  # 50%: reaching a threshold is crossing it
    assert keys(r.alerts) == [("ledger-monthly", 50)]
    a = r.alerts[0]
    assert (a.spent_micro_usd, a.limit_micro_usd, a.scope, a.subject) == (5 * USD, 10 * USD, K.BUDGET_SCOPE_PROJECT,
                                                                           "ledger")  # fmt: skip
    assert a.period_start_us == us("2024-06-01T00:00:00Z") and a.period_end_us == us("2024-07-01T00:00:00Z")
    assert a.created_us == us("2024-06-15T12:00:00Z") and a.event_id == alerts.event_id(
        a.budget, a.period_start_us, a.percent
    )
    assert a.webhook_state == "" and a.audit_shipped_us == 0
    assert (await spend(store, 2)).alerts == ()  # 70%: 50 already raised, 80 not reached
    # A resent batch is all duplicates and raises nothing.
    again = ev(event_id="resend-1")
    assert keys((await store.record([again])).alerts) == [("ledger-monthly", 80)]
    assert (await store.record([again])).alerts == ()
    assert (await store.check_budgets()) == []  # the sweep finds nothing new either
    assert keys(store.raised) == [("ledger-monthly", 50), ("ledger-monthly", 80)]
    listed = await store.list_alerts("ledger-monthly")
    assert [(a.percent, a.spent_micro_usd) for a in listed] == [(80, 8 * USD), (50, 5 * USD)]  # newest first
    assert (
        listed[0].id.startswith("cost-alert-")
        and listed[0].period_start.ToJsonString() == "2024-06-01T00:00:00Z"
    )


async def test_several_thresholds_in_one_batch_then_the_hard_limit(store):
    await store.set_budget(budget())
    r = await spend(store, 10 - 1)  # 90% at once
    assert keys(r.alerts) == [("ledger-monthly", 50), ("ledger-monthly", 80)]
    r = await spend(store, 3)  # 120%
    assert keys(r.alerts) == [("ledger-monthly", 95), ("ledger-monthly", 100)]
    assert r.alerts[-1].spent_micro_usd == 12 * USD
    assert (await spend(store, 5)).alerts == ()  # everything raised: no more for this month
    assert [a.percent for a in await store.list_alerts()] == [
        100,
        95,
        80,
        50,
    ]  # newest (then highest id) first


async def test_a_new_period_re_arms_and_late_events_count_in_their_own_period(store, clock):
    await store.set_budget(budget("rpa-daily", scope=K.BUDGET_SCOPE_AGENT, subject="rpa-bot",
                                  period=K.BUDGET_PERIOD_DAILY, limit_usd=2, percents=[50]))  # fmt: skip
    r = await spend(store, 1, "2024-06-14T23:59:59Z", agent="rpa-bot")
    assert keys(r.alerts) == [("rpa-daily", 50)] and r.alerts[0].period_start_us == us("2024-06-14T00:00:00Z")
    r = await spend(store, 1, "2024-06-15T00:00:00Z", agent="rpa-bot")  # the next day: 50% again
    assert keys(r.alerts) == [("rpa-daily", 50)] and r.alerts[0].period_start_us == us("2024-06-15T00:00:00Z")
    # A late event of the 14th (resent from an outbox) completes the 14th, not today.
    r = await spend(store, 1, "2024-06-14T08:00:00Z", agent="rpa-bot")
    assert keys(r.alerts) == [("rpa-daily", 100)] and r.alerts[0].period_start_us == us(
        "2024-06-14T00:00:00Z"
    )
    assert r.alerts[0].spent_micro_usd == 2 * USD
    # and today's spend is still 1 of 2 USD.
    assert (await store.get_budget("rpa-daily")).spent_micro_usd == USD


async def test_periods_follow_the_configured_timezone(db_url, clock):
    s = await open_store(db_url, clock, timezone="Asia/Shanghai")
    try:
        await s.set_budget(budget("d", period=K.BUDGET_PERIOD_DAILY, limit_usd=1))
        # 2024-06-14T16:30Z is 00:30 on the 15th in Shanghai (UTC+8).
        r = await s.record([ev("2024-06-14T16:30:00Z")])
        assert r.alerts[0].period_start_us == us("2024-06-14T16:00:00Z")
        assert r.alerts[0].period_end_us == us("2024-06-15T16:00:00Z")
    finally:
        await s.close()


async def test_custom_thresholds(store):
    await store.set_budget(budget(percents=[25, 60]))
    r = await spend(store, 3)
    assert keys(r.alerts) == [("ledger-monthly", 25)]
    r = await spend(store, 7)
    assert keys(r.alerts) == [("ledger-monthly", 60), ("ledger-monthly", 100)]  # no 50/80/95


async def test_lifetime_budgets_sum_all_time(store):
    await store.set_budget(budget("life", period=K.BUDGET_PERIOD_LIFETIME, limit_usd=4, percents=[50]))
    assert (await spend(store, 1, "2021-03-01T00:00:00Z")).alerts == ()
    r = await spend(store, 1, "2024-06-15T00:00:00Z")  # years apart, one period
    assert keys(r.alerts) == [("life", 50)]
    a = r.alerts[0]
    assert (a.period_start_us, a.period_end_us, a.spent_micro_usd) == (0, 0, 2 * USD)
    proto = (await store.list_alerts("life"))[0]
    assert not proto.HasField("period_start") and not proto.HasField("period_end")
    assert keys((await spend(store, 2, "2020-01-01T00:00:00Z")).alerts) == [("life", 100)]


async def test_every_scope_matches_its_own_field(store):
    await store.set_budget(budget("u", scope=K.BUDGET_SCOPE_USER, subject="bob", limit_usd=1))
    await store.set_budget(budget("t", scope=K.BUDGET_SCOPE_TEAM, subject="ops", limit_usd=1))
    await store.set_budget(budget("p", scope=K.BUDGET_SCOPE_PROJECT, subject="payroll", limit_usd=1))
    await store.set_budget(budget("a", scope=K.BUDGET_SCOPE_AGENT, subject="pay-bot", limit_usd=1))
    # Other subjects in every field: nothing. ("bob" as an agent name is not the user bob.)
    other = {"user": "alice", "team": "fin", "project": "ledger", "agent": "bob"}
    assert (await spend(store, 3, **other)).alerts == ()
    for name, field, subject in [("u", "user", "bob"), ("t", "team", "ops"), ("p", "project", "payroll"),
                                 ("a", "agent", "pay-bot")]:  # fmt: skip
        r = await spend(store, 1, **{**other, field: subject})
        assert {k for k in keys(r.alerts)} == {(name, p) for p in (50, 80, 95, 100)}, name
    # One event can cross several budgets (its user, team, project and agent).
    for name, limit in [("u", 1), ("t", 1), ("p", 1), ("a", 1)]:
        await store.set_budget(budget(f"{name}2", scope={"u": 1, "t": 2, "p": 3, "a": 4}[name],
                                      subject={"u": "carol", "t": "hr", "p": "hiring", "a": "hr-bot"}[name],
                                      limit_usd=limit, percents=[100]))  # fmt: skip
    r = await spend(store, 1, user="carol", team="hr", project="hiring", agent="hr-bot")
    assert sorted(keys(r.alerts)) == [("a2", 100), ("p2", 100), ("t2", 100), ("u2", 100)]


async def test_zero_cost_usage_and_unbudgeted_subjects_raise_nothing(store):
    await store.set_budget(budget(limit_usd=1))
    assert (await spend(store, 3, tool="free")).alerts == ()  # unpriced tool: 0 USD
    assert (await spend(store, 3, project="other")).alerts == ()
    assert await store.list_alerts() == []


async def test_setting_a_budget_below_its_spend_alerts_at_once(store):
    await spend(store, 6)  # 6 USD this month, before any budget exists
    await store.set_budget(budget(limit_usd=100))
    assert store.raised == []
    await store.set_budget(budget(limit_usd=10))  # now 60%
    assert keys(store.raised) == [("ledger-monthly", 50)]
    # Raised once per period even though the budget changed: lowering further raises only the rest.
    await store.set_budget(budget(limit_usd=6))
    assert keys(store.raised)[1:] == [("ledger-monthly", 80), ("ledger-monthly", 95), ("ledger-monthly", 100)]


async def test_the_sweep_checks_current_periods(store, monkeypatch):
    await store.set_budget(budget(limit_usd=10))

    def crash(entries):
        raise RuntimeError("the database went away between the commit and the check")

    # Spend recorded by a process whose check never ran (a crash right after the commit).
    with monkeypatch.context() as m:
        m.setattr(store.alerts, "detect", crash)
        r = await spend(store, 6)
    assert r.accepted == 6 and r.alerts == ()  # the batch is stored although the check failed
    assert keys(await store.check_budgets()) == [("ledger-monthly", 50)]


async def test_list_alerts_unknown_budget_and_limit(store):
    with pytest.raises(NotFound, match="'nope'"):
        await store.list_alerts("nope")
    await store.set_budget(budget(limit_usd=1))
    await spend(store, 1)
    assert len(await store.list_alerts()) == 4 and len(await store.list_alerts(limit=2)) == 2
    # Alerts outlive their budget (history; they may still be being delivered).
    await store.delete_budget("ledger-monthly")
    assert len(await store.list_alerts()) == 4
    with pytest.raises(NotFound):
        await store.list_alerts("ledger-monthly")


async def test_replicas_on_one_database_raise_each_threshold_once(db_url, clock):
    """Two stores (replicas) recording concurrently: every threshold exactly once between them."""
    a, b = await open_store(db_url, clock), await open_store(db_url, clock)
    told: list = []
    a.alerts.add_listener(told.extend)
    b.alerts.add_listener(told.extend)
    try:
        await a.set_budget(budget(limit_usd=40))
        told.clear()
        for _ in range(4):  # 10 USD per round, split across the replicas in small batches
            await asyncio.gather(*(s.record([ev() for _ in range(1)]) for s in (a, b) for _ in range(5)))
        assert sorted(p for _, p in keys(told)) == [50, 80, 95, 100]
        with a._engine.connect() as conn:
            assert len(conn.execute(select(budget_alerts)).all()) == 4
    finally:
        await a.close()
        await b.close()


async def test_webhook_claims_are_compare_and_set(store):
    await store.set_budget(budget(limit_usd=1, percents=[100], webhook="http://127.0.0.1:9/hook"))
    (alert,) = (await spend(store, 1)).alerts
    book = store.alerts
    assert alert.webhook_state == "pending"
    (due,) = book.due_webhooks(10)
    assert book.claim_webhook(due, 60_000_000) == 1
    assert book.claim_webhook(due, 60_000_000) is None  # stale row: another replica took it
    assert book.due_webhooks(10) == []  # leased
    book.webhook_result(due.id, error="HTTP 500 boom", retry_in_us=0)
    (due,) = book.due_webhooks(10)
    assert (due.webhook_attempts, due.webhook_last_error) == (1, "HTTP 500 boom")
    assert book.claim_webhook(due, 60_000_000) == 2
    book.webhook_result(due.id)
    (listed,) = await store.list_alerts()
    assert listed.webhook.state == K.WEBHOOK_STATE_DELIVERED and listed.webhook.attempts == 2
    assert (
        listed.webhook.last_error == ""
        and listed.webhook.delivered_time.ToJsonString() == "2024-06-15T12:00:00Z"
    )
    assert book.next_webhook_us() is None


async def test_audit_event_and_webhook_payload(store):
    await store.set_budget(budget(percents=[50], webhook="https://hooks.example/x"))
    (alert,) = (await spend(store, 5)).alerts
    e = audit_event(alert)
    assert e.event_id == alert.event_id and e.kind == common_pb2.AUDIT_EVENT_KIND_BUDGET_DECISION
    assert (e.object, e.action, e.source, e.actor.project) == (
        "budget:ledger-monthly",
        "alert",
        "cost",
        "ledger",
    )
    assert e.time.ToJsonString() == "2024-06-15T12:00:00Z"
    assert dict(e.details) == {
        "alert_id": alert.event_id, "percent": 50, "limit_reached": False, "spent_micro_usd": 5 * USD,
        "limit_micro_usd": 10 * USD, "scope": "project", "subject": "ledger", "period": "monthly",
        "period_start": "2024-06-01T00:00:00Z", "period_end": "2024-07-01T00:00:00Z",
    }  # fmt: skip
    body = webhook_payload(alert)
    assert body["id"] == alert.event_id and body["budget"] == "ledger-monthly" and body["percent"] == 50
    assert body["time"] == "2024-06-15T12:00:00Z" and "alert_id" not in body


def test_config_flags_and_env(monkeypatch):
    from services.cost.config import AlertConfig, build_parser, config_from_args

    monkeypatch.setenv("HARNESS_AUDIT_ADDR", "127.0.0.1:50091")
    config = config_from_args(build_parser().parse_args([]))
    assert config.alerts.audit_addr == "127.0.0.1:50091" and config.alerts.webhook_attempts == 8
    config = config_from_args(build_parser().parse_args(["--audit", "", "--webhook-attempts", "3"]))
    assert config.alerts.audit_addr == "" and config.alerts.webhook_attempts == 3
    with pytest.raises(ValueError, match="webhook_attempts"):
        AlertConfig(webhook_attempts=0)
