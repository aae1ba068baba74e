"""Rate limit semantics (GCRA per agent/user, RPM/TPM). The same suite runs on Redis in
tests/integration/test_flow_redis.py, which overrides the `limiter` fixture."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument, ResourceExhausted
from services.router.flow import MemoryRateLimiter, RateLimiter, RateLimits
from services.router.flow.limits import PERIOD_MS


class FakeClock:
    """Milliseconds, moved by hand: deterministic windows on both backends."""

    def __init__(self, start: float = 1_700_000_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds * 1000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock) -> RateLimiter:
    return MemoryRateLimiter(clock_ms=clock)


async def test_unlimited_admits_everything(limiter):
    for _ in range(500):
        res = await limiter.admit("a", "u", RateLimits(), 10_000)
        assert res.cells == ()


async def test_agent_rpm(limiter, clock):
    limits = RateLimits(agent_rpm=3)
    for _ in range(3):
        await limiter.admit("a", "u", limits, 1)
    with pytest.raises(ResourceExhausted) as e:
        await limiter.admit("a", "u", limits, 1)
    assert "agent 'a'" in e.value.message and "RPM limit of 3" in e.value.message
    # One request refills every 20 s; the 4th must wait exactly that long.
    assert 19_000 <= e.value.retry_after_ms <= 20_001
    assert e.value.trailers["retry-after-ms"] == str(e.value.retry_after_ms)
    await limiter.admit("b", "u", limits, 1)  # other agents are not affected
    clock.advance(e.value.retry_after_ms / 1000)
    await limiter.admit("a", "u", limits, 1)


async def test_user_rpm_across_agents(limiter):
    limits = RateLimits(user_rpm=2)
    await limiter.admit("a", "alice", limits, 1)
    await limiter.admit("b", "alice", limits, 1)
    with pytest.raises(ResourceExhausted) as e:
        await limiter.admit("c", "alice", limits, 1)
    assert "user 'alice'" in e.value.message and "RPM limit of 2" in e.value.message
    await limiter.admit("c", "bob", limits, 1)
    # No user identity: user limits do not apply.
    for _ in range(5):
        await limiter.admit("c", "", limits, 1)


async def test_agent_tpm(limiter, clock):
    limits = RateLimits(agent_tpm=1000)
    await limiter.admit("a", "u", limits, 600)
    with pytest.raises(ResourceExhausted) as e:
        await limiter.admit("a", "u", limits, 600)
    assert "TPM limit of 1000 tokens" in e.value.message
    # 200 tokens short at 1000/min: 12 s.
    assert 11_900 <= e.value.retry_after_ms <= 12_001
    await limiter.admit("a", "u", limits, 400)  # what fits still fits
    clock.advance(60)
    await limiter.admit("a", "u", limits, 1000)


async def test_user_tpm(limiter):
    limits = RateLimits(agent_tpm=10_000, user_tpm=500)
    await limiter.admit("a", "u", limits, 500)
    with pytest.raises(ResourceExhausted) as e:
        await limiter.admit("b", "u", limits, 1)
    assert "user 'u'" in e.value.message and "TPM" in e.value.message


async def test_denial_charges_nothing(limiter):
    # Agent RPM has room but user TPM does not: the agent's request count must not move.
    limits = RateLimits(agent_rpm=2, user_tpm=100)
    await limiter.admit("a", "u", limits, 100)
    for _ in range(3):
        with pytest.raises(ResourceExhausted, match="user 'u'"):
            await limiter.admit("a", "u", limits, 50)
    await limiter.admit("a", "other", limits, 1)  # 2nd agent request still available


async def test_longest_wait_is_reported(limiter):
    limits = RateLimits(agent_rpm=1, user_rpm=60)
    await limiter.admit("a", "u", limits, 1)
    with pytest.raises(ResourceExhausted) as e:
        await limiter.admit("a", "u", limits, 1)
    assert "agent 'a'" in e.value.message and e.value.retry_after_ms > 50_000


async def test_settle_refunds_overestimate(limiter):
    limits = RateLimits(agent_tpm=1000)
    res = await limiter.admit("a", "u", limits, 900)
    with pytest.raises(ResourceExhausted):
        await limiter.admit("a", "u", limits, 500)
    await limiter.settle(res, 100)  # only 100 used
    await limiter.admit("a", "u", limits, 800)


async def test_settle_charges_underestimate(limiter):
    limits = RateLimits(agent_tpm=1000, user_tpm=1000)
    res = await limiter.admit("a", "u", limits, 100)
    await limiter.settle(res, 900)
    with pytest.raises(ResourceExhausted) as e:
        await limiter.admit("a", "u", limits, 200)
    assert 5_900 <= e.value.retry_after_ms <= 6_001


async def test_settle_refund_never_below_full(limiter, clock):
    limits = RateLimits(agent_tpm=1000)
    res = await limiter.admit("a", "u", limits, 1000)
    clock.advance(120)
    await limiter.settle(res, 0)  # refund of an already refilled bucket gives no extra credit
    await limiter.admit("a", "u", limits, 1000)
    with pytest.raises(ResourceExhausted):
        await limiter.admit("a", "u", limits, 1)


async def test_settle_refund_request(limiter):
    limits = RateLimits(agent_rpm=1)
    res = await limiter.admit("a", "u", limits, 1)
    with pytest.raises(ResourceExhausted):
        await limiter.admit("a", "u", limits, 1)
    await limiter.settle(res, 0, refund_request=True)
    await limiter.admit("a", "u", limits, 1)


async def test_settle_uses_limits_from_admission(limiter):
    res = await limiter.admit("a", "u", RateLimits(agent_tpm=1000), 1000)
    await limiter.settle(res, 500)  # refund 500 at the 1000/min rate
    await limiter.admit("a", "u", RateLimits(agent_tpm=1000), 500)


async def test_cost_over_limit_is_invalid(limiter):
    with pytest.raises(InvalidArgument, match=r"1001 tokens.*limit of 1000"):
        await limiter.admit("a", "u", RateLimits(agent_tpm=1000), 1001)
    with pytest.raises(InvalidArgument):
        await limiter.admit("a", "u", RateLimits(), -1)


@pytest.mark.parametrize("now", [123_456_789.0, 4_220_250.123, 1_700_000_000_000.0, 1_764_684_000_123.457])
@pytest.mark.parametrize("limit", [1, 3, 7, 13, 600])
async def test_a_full_burst_is_admitted_whatever_the_clock_reads(limiter, clock, now, limit):
    # Float times: with a limit of 7 the 7th request overran the window by a rounding error
    # (3e-8 ms at 123456789.0) and was refused; a limit of 1 refused its only request at some
    # readings. The whole limit passes at once, and the next request waits a full interval.
    clock.now = now
    limits = RateLimits(agent_rpm=limit)
    for _ in range(limit):
        await limiter.admit("a", "u", limits, 1)
    with pytest.raises(ResourceExhausted) as e:
        await limiter.admit("a", "u", limits, 1)
    assert PERIOD_MS / limit - 1 <= e.value.retry_after_ms <= PERIOD_MS / limit + 1


async def test_steady_rate_is_sustained(limiter, clock):
    limits = RateLimits(agent_rpm=60)
    for _ in range(60):
        await limiter.admit("a", "u", limits, 1)
    admitted = 0
    for _ in range(120):  # two more minutes, one request a second: all at the refill rate
        clock.advance(1)
        await limiter.admit("a", "u", limits, 1)
        admitted += 1
    assert admitted == 120
    with pytest.raises(ResourceExhausted) as e:
        await limiter.admit("a", "u", limits, 1)
    assert 1 <= e.value.retry_after_ms <= 1_001
