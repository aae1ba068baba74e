"""Budget enforcement semantics (reserve, settle once, expiry, periods, rebuild from the ledger,
GPU and tool prices). The same suite runs on Redis in tests/integration/test_budgets_redis.py, which
overrides the `make` fixture."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from harness.cost.v1 import cost_pb2

from services.common.errors import ResourceExhausted, Unavailable
from services.router.budgets import BudgetRule, MemoryBudgets, PriceTable, Subjects
from tests.helpers.polling import until

DAILY, LIFETIME, MONTHLY = (
    cost_pb2.BUDGET_PERIOD_DAILY,
    cost_pb2.BUDGET_PERIOD_LIFETIME,
    cost_pb2.BUDGET_PERIOD_MONTHLY,
)
AGENT, USER, TEAM = cost_pb2.BUDGET_SCOPE_AGENT, cost_pb2.BUDGET_SCOPE_USER, cost_pb2.BUDGET_SCOPE_TEAM
WHO = Subjects(user="alice", team="red", project="p1", agent="bot")


class FakeClock:
    """Epoch milliseconds, moved by hand. Starts 2025-03-10 12:00 UTC (a Monday)."""

    def __init__(self) -> None:
        self.now = datetime(2025, 3, 10, 12, 0, tzinfo=UTC).timestamp() * 1000

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds * 1000


class FakeLedger:
    def __init__(self, spent: dict[str, int] | None = None) -> None:
        self.spent = dict(spent or {})
        self.calls = 0

    async def __call__(self, rule: BudgetRule, period_start_us: int | None) -> int | None:
        self.calls += 1
        return self.spent.get(rule.name, 0) if self.spent is not None else None


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make(clock):
    def build(**kw):
        kw.setdefault("clock_ms", clock)
        return MemoryBudgets(**kw)

    return build


def rule(name="b", scope=AGENT, subject="bot", period=DAILY, limit=1000, alerts=()) -> BudgetRule:
    return BudgetRule(name, scope, subject, period, limit, tuple(alerts))


async def test_no_budget_no_reservation(make):
    enf = make()
    enf.update([rule(subject="other")], PriceTable({"m": (1_000_000, 2_000_000)}))
    res = await enf.reserve(WHO, "m", 100, 100)
    assert res.charges == ()
    await enf.settle(res, 10**9)  # nothing to settle


def test_price_table_rounding():
    p = PriceTable({"m": (150_000, 600_000)})  # $0.15 / $0.60 per 1M tokens
    assert p.max_cost("m", 1, 0) == 1  # 0.15 micro-USD rounds up for a reservation
    assert p.cost("m", 1, 0) == 0  # ... and half-up for the actual cost, like the cost service
    assert p.cost("m", 10, 0) == 2 and p.max_cost("m", 10, 0) == 2
    assert p.max_cost("m", 1000, 500) == 450 and p.cost("m", 1000, 500) == 450
    assert p.max_cost("unpriced", 1000, 1000) == 0
    prices = [
        cost_pb2.Price(kind=cost_pb2.PRICE_KIND_MODEL_INPUT_TOKENS, subject="m", micro_usd=7),
        cost_pb2.Price(kind=cost_pb2.PRICE_KIND_MODEL_OUTPUT_TOKENS, subject="m", micro_usd=9),
        cost_pb2.Price(kind=cost_pb2.PRICE_KIND_GPU_HOUR, subject="m", micro_usd=99),
    ]
    assert PriceTable.from_protos(prices).max_cost("m", 1_000_000, 1_000_000) == 16


async def test_reserve_until_hard_limit(make, clock):
    enf = make()
    enf.update([rule(limit=1000)])
    for _ in range(4):
        await enf.reserve_cost([rule(limit=1000)], 250)
    with pytest.raises(ResourceExhausted) as e:
        await enf.reserve_cost([rule(limit=1000)], 1)
    msg = e.value.message
    assert "budget 'b' (agent 'bot', daily)" in msg and "hard limit of $0.001" in msg
    assert "resets at 2025-03-11T00:00:00+00:00" in msg
    assert e.value.retry_after_ms == 12 * 3600 * 1000


async def test_settle_replaces_reservation_once(make):
    enf = make()
    r = rule(limit=1000)
    res = await enf.reserve_cost([r], 600)
    with pytest.raises(ResourceExhausted):
        await enf.reserve_cost([r], 500)
    await enf.settle(res, 100)
    await enf.settle(res, 100)  # a second settle is a no-op
    await enf.reserve_cost([r], 900)  # 100 spent + 900 = the limit exactly
    with pytest.raises(ResourceExhausted) as e:
        await enf.reserve_cost([r], 1)
    assert "spent $0.0001, reserved $0.0009" in e.value.message


async def test_refund_settles_zero(make):
    enf = make()
    r = rule(limit=1000)
    res = await enf.reserve_cost([r], 1000)
    await enf.settle(res, 0)
    await enf.reserve_cost([r], 1000)


async def test_all_or_nothing(make):
    enf = make()
    agent_b, user_b = rule("a", AGENT, "bot", limit=1000), rule("u", USER, "alice", limit=300)
    enf.update([agent_b, user_b], PriceTable({"m": (1_000_000, 0)}))
    await enf.reserve(WHO, "m", 200, 0)  # 200 micro-USD against both
    with pytest.raises(ResourceExhausted) as e:
        await enf.reserve(WHO, "m", 200, 0)
    assert "budget 'u' (user 'alice'" in e.value.message
    # The refused request charged nothing to the agent budget: 800 still fit there.
    await enf.reserve_cost([agent_b], 800)


async def test_unsettled_reservation_expires(make, clock):
    enf = make(reservation_ttl_s=30)
    r = rule(limit=1000)
    leaked = await enf.reserve_cost([r], 1000)
    with pytest.raises(ResourceExhausted):
        await enf.reserve_cost([r], 1)
    clock.advance(30)
    held = await enf.reserve_cost([r], 1000)  # the leaked reservation is gone
    await enf.settle(held, 0)
    # A late settle of an expired reservation still counts its actual spend.
    await enf.settle(leaked, 400)
    await enf.reserve_cost([r], 600)
    with pytest.raises(ResourceExhausted):
        await enf.reserve_cost([r], 1)


async def test_renewed_reservation_outlives_its_ttl(make, clock):
    """A generation longer than the TTL keeps its reservation while its router renews it."""
    enf = make(reservation_ttl_s=30)
    r = rule(limit=1000)
    long_call = await enf.reserve_cost([r], 1000)
    for _ in range(4):  # 80 s: renewed every 20 s (the loop renews every 10 s)
        clock.advance(20)
        assert await enf.renew() == 0  # extended, not lost
        with pytest.raises(ResourceExhausted):
            await enf.reserve_cost([r], 1)
    await enf.settle(long_call, 300)
    assert enf.live == 0
    clock.advance(60)
    assert await enf.renew() == 0  # nothing left to renew
    await enf.reserve_cost([r], 700)
    with pytest.raises(ResourceExhausted):
        await enf.reserve_cost([r], 1)


async def test_a_reservation_never_settled_is_renewed_only_up_to_max_hold(make, clock):
    """A caller that never settles (a bug) cannot hold its budget forever."""
    enf = make(reservation_ttl_s=30, max_hold_s=60)
    r = rule(limit=1000)
    await enf.reserve_cost([r], 1000)
    for _ in range(3):  # renewed at 20 and 40 s; at 60 s it has been held max_hold_s
        clock.advance(20)
        await enf.renew()
        with pytest.raises(ResourceExhausted):
            await enf.reserve_cost([r], 1)
    clock.advance(20)
    await enf.renew()  # 80 s: dropped, no longer renewed
    assert enf.live == 0
    clock.advance(30)  # its last renewal (at 60 s) has run out
    await enf.reserve_cost([r], 1000)


async def test_a_settle_during_a_renewal_is_not_undone(make):
    """A renewal that registers a reservation again after it was settled takes it back out."""
    enf = make(reservation_ttl_s=30)
    r = rule(limit=1000)
    first, second = await enf.reserve_cost([r], 400), await enf.reserve_cost([r], 400)
    renew, settled = enf._renew, asyncio.Event()

    async def slow_renew(held, expiry_ms):
        await settled.wait()  # the settle lands between the snapshot and the store
        return await renew(held, expiry_ms)

    enf._renew = slow_renew
    renewal = asyncio.create_task(enf.renew())
    await asyncio.sleep(0)
    await enf.settle(first, 100)
    settled.set()
    assert await renewal == 0  # registered `first` again, then removed it: not a loss
    # Spent 100 + `second`'s 400 reserved: exactly 500 is left.
    await enf.reserve_cost([r], 500)
    with pytest.raises(ResourceExhausted):
        await enf.reserve_cost([r], 1)
    await enf.settle(second, 0)


async def test_renewal_loop_runs_until_closed(make):
    enf = make(reservation_ttl_s=0.03)  # renews every 10 ms
    res = await enf.reserve_cost([rule(limit=1000)], 1000)
    calls = 0
    renew = enf.renew

    async def counted():
        nonlocal calls
        calls += 1
        return await renew()

    enf.renew = counted
    enf.start()
    # Counted, not timed: a loaded machine may run the loop only once in 0.1 s of wall time.
    await until(lambda: calls >= 3)
    await enf.aclose()
    seen = calls
    await asyncio.sleep(0.05)
    assert calls == seen  # stopped
    await enf.settle(res, 0)


async def test_period_rollover_and_timezone(make, clock):
    enf = make(timezone="Asia/Shanghai")  # UTC+8: 12:00 UTC is 20:00 there
    r = rule(limit=1000)
    await enf.settle(await enf.reserve_cost([r], 1000), 1000)
    with pytest.raises(ResourceExhausted) as e:
        await enf.reserve_cost([r], 1)
    assert "resets at 2025-03-11T00:00:00+08:00" in e.value.message
    assert e.value.retry_after_ms == 4 * 3600 * 1000
    clock.advance(4 * 3600)
    await enf.reserve_cost([r], 1000)  # a new day, a new counter


def test_charges_name_the_period_in_force_as_the_clock_moves(make):
    """The period's bounds are kept until its end: a charge after midnight, or with the clock
    stepped back before the period's start, names the period of its own time."""
    enf = make()
    r = rule(limit=10)
    day = 86_400_000
    first = enf.charge(r, 10 * day + 5, 1)
    assert enf.charge(r, 10 * day + 6, 1).key == first.key
    assert first.reset_ms == 11 * day
    later = enf.charge(r, 11 * day, 1)
    assert later.key != first.key and later.reset_ms == 12 * day
    assert enf.charge(r, 10 * day + 7, 1).key == first.key  # stepped back: yesterday's again


async def test_monthly_and_lifetime(make, clock):
    enf = make()
    m, life = rule("m", period=MONTHLY, limit=10), rule("l", period=LIFETIME, limit=10)
    await enf.settle(await enf.reserve_cost([m, life], 10), 10)
    with pytest.raises(ResourceExhausted) as e:
        await enf.reserve_cost([m], 1)
    assert "resets at 2025-04-01T00:00:00+00:00" in e.value.message
    clock.advance(40 * 86400)
    await enf.reserve_cost([m], 10)
    with pytest.raises(ResourceExhausted) as e:
        await enf.reserve_cost([life], 1)
    assert "never resets" in e.value.message and e.value.retry_after_ms is None


async def test_zero_cost_refused_at_limit(make):
    enf = make()
    r = rule(limit=100)
    await enf.reserve_cost([r], 0)  # an unpriced model passes while under the limit
    await enf.settle(await enf.reserve_cost([r], 100), 100)
    with pytest.raises(ResourceExhausted):
        await enf.reserve_cost([r], 0)


async def test_missing_counter_rebuilt_from_ledger_once(make):
    ledger = FakeLedger({"b": 700})
    enf = make(ledger=ledger)
    r = rule(limit=1000)
    with pytest.raises(ResourceExhausted) as e:
        await enf.reserve_cost([r], 400)
    assert "spent $0.0007" in e.value.message
    await enf.reserve_cost([r], 300)
    assert ledger.calls == 1 and enf.rebuilds == 1


async def test_unknown_ledger_spend_is_unavailable(make):
    ledger = FakeLedger()
    ledger.spent = None
    enf = make(ledger=ledger)
    with pytest.raises(Unavailable):
        await enf.reserve_cost([rule()], 1)


def test_price_table_reads_every_kind_of_price():
    P = cost_pb2.Price
    table = PriceTable.from_protos(
        [
            P(kind=cost_pb2.PRICE_KIND_MODEL_INPUT_TOKENS, subject="m", micro_usd=2_000_000),
            P(kind=cost_pb2.PRICE_KIND_MODEL_OUTPUT_TOKENS, subject="m", micro_usd=4_000_000),
            P(kind=cost_pb2.PRICE_KIND_GPU_HOUR, subject="H100-80GB", micro_usd=3_600_000),
            P(kind=cost_pb2.PRICE_KIND_TOOL_CALL, subject="ledger", micro_usd=500),
        ]
    )
    assert table.max_cost("m", 10, 10) == 60 and table.cost("m", 10, 5) == 40
    assert table.gpu_cost("H100-80GB", 2.5) == 2500  # $3.60/h = 1,000 micro-USD per second
    assert table.gpu_cost("A10", 2.5) == 0  # unpriced GPU type: 0, as the cost service flags it
    assert table.tool_cost("ledger") == 500 and table.tool_cost("crm") == 0


async def test_gpu_time_bound_is_reserved_and_learned(make):
    enf = make()
    enf.update(
        [BudgetRule("b", AGENT, "bot", DAILY, 1_000_000)],
        PriceTable({"m": (0, 0)}, gpu_hour={"H100-80GB": 3_600_000, "A10": 360_000}),
    )
    first = await enf.reserve(WHO, "m", 50, 50)
    # Unobserved model: 100 tokens x 10 ms x 2 = 2 s at the highest price (1,000 micro-USD/s).
    assert enf.gpu_bound_s("m", 100) == pytest.approx(2.0) and first.cost == 2000
    actual = enf.cost("m", 50, 50, "H100-80GB", 0.2)  # 200 micro-USD: 2 ms a token
    assert actual == 200
    enf.gpu.observe("m", 100, 0.2)  # the router learns from the real share
    await enf.settle(first, actual)
    second = await enf.reserve(WHO, "m", 50, 50)
    assert enf.gpu_bound_s("m", 100) == pytest.approx(0.4) and second.cost == 400
    assert enf.cost("m", 0, 0, "A10", 0.4) == 40  # a cheaper GPU type costs less than reserved


async def test_tool_calls_reserve_their_price(make):
    enf = make()
    enf.update([BudgetRule("b", AGENT, "bot", DAILY, 1200)], PriceTable(tool_call={"ledger": 500}))
    a = await enf.reserve_tool(WHO, "ledger")
    b = await enf.reserve_tool(WHO, "ledger")
    assert a.cost == b.cost == 500
    with pytest.raises(ResourceExhausted, match="budget 'b'"):
        await enf.reserve_tool(WHO, "ledger")
    await enf.settle(a, 0)  # a failed call costs nothing and frees its reservation
    await enf.reserve_tool(WHO, "ledger")
