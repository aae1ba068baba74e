"""SLO-class flow control: priority, per-agent fairness, bounds, shedding, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import DeadlineExceeded, ResourceExhausted
from services.router.flow import ClassBounds, FlowConfig, FlowController, SloClass

RT, IA, BA = SloClass.REALTIME, SloClass.INTERACTIVE, SloClass.BATCH


class Pool:
    """A model's endpoints: saturated while in-flight >= capacity."""

    def __init__(self, capacity: int = 0) -> None:
        self.capacity = capacity
        self.in_flight = 0

    def saturated(self) -> bool:
        return self.in_flight >= self.capacity


async def spin(n: int = 10) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class Harness:
    """Starts waiters as tasks and records the order in which they are granted."""

    def __init__(self, fc: FlowController) -> None:
        self.fc = fc
        self.order: list[str] = []
        self.tasks: dict[str, asyncio.Task] = {}

    async def start(self, label: str, cls: SloClass, agent: str, pool: Pool, timeout_s: float | None = None):
        async def run() -> float:
            waited = await self.fc.wait_turn(cls, agent, pool.saturated, timeout_s)
            pool.in_flight += 1  # takes its slot before its next await (the router contract)
            self.order.append(label)
            return waited

        self.tasks[label] = asyncio.create_task(run())
        await spin()

    async def free(self, pool: Pool, n: int = 1) -> None:
        pool.in_flight -= n
        self.fc.capacity_changed(n)
        await spin()


@pytest.fixture
def fc() -> FlowController:
    return FlowController(FlowConfig())


async def test_free_capacity_passes_straight_through(fc):
    assert await fc.wait_turn(IA, "a", lambda: False, 1.0) == 0.0
    assert fc.queued() == 0


async def test_priority_across_classes(fc):
    h, pool = Harness(fc), Pool(capacity=1)
    pool.in_flight = 1
    for label, cls in [("b1", BA), ("i1", IA), ("r1", RT), ("i2", IA), ("b2", BA), ("r2", RT)]:
        await h.start(label, cls, label, pool)
    assert fc.queued() == 6 and fc.queued(RT) == 2 and fc.queued(BA) == 2
    for _ in range(6):
        await h.free(pool)
    assert h.order == ["r1", "r2", "i1", "i2", "b1", "b2"]


async def test_round_robin_across_agents_within_class(fc):
    h, pool = Harness(fc), Pool(capacity=1)
    pool.in_flight = 1
    for i in range(10):
        await h.start(f"A{i}", IA, "agent-a", pool)
    await h.start("B0", IA, "agent-b", pool)
    await h.start("C0", IA, "agent-c", pool)
    for _ in range(12):
        await h.free(pool)
    assert h.order[:4] == ["A0", "B0", "C0", "A1"]
    assert [x for x in h.order if x.startswith("A")] == [f"A{i}" for i in range(10)]  # FIFO per agent


async def test_pool_change_grants_as_many_as_fit(fc):
    h, pool = Harness(fc), Pool(capacity=0)
    for i in range(5):
        await h.start(f"w{i}", IA, f"ag{i}", pool)
    pool.capacity = 3
    fc.capacity_changed()  # None: as many as fit, re-checking saturation after each grant
    await spin()
    assert h.order == ["w0", "w1", "w2"] and fc.queued() == 2


async def test_saturated_model_does_not_block_other_models(fc):
    h, busy, idle = Harness(fc), Pool(capacity=0), Pool(capacity=0)
    await h.start("rt-busy", RT, "a", busy)
    await h.start("batch-idle", BA, "b", idle)
    idle.capacity = 1
    fc.capacity_changed(1)
    await spin()
    assert h.order == ["batch-idle"] and fc.queued(RT) == 1


async def test_arrival_with_room_still_goes_behind_ready_waiters(fc):
    h, pool = Harness(fc), Pool(capacity=0)
    await h.start("first", IA, "a", pool)
    pool.capacity = 1  # room appeared but nobody called capacity_changed
    await h.start("second", IA, "b", pool)
    assert h.order == ["first"]


async def test_deadline_shorter_than_expected_wait_rejects_without_queueing():
    fc = FlowController(FlowConfig(initial_grant_interval_s=1.0))
    h, pool = Harness(fc), Pool(capacity=0)
    await h.start("w1", IA, "a", pool)
    await h.start("w2", IA, "a", pool)
    assert fc.expected_wait(IA) == pytest.approx(3.0)
    with pytest.raises(DeadlineExceeded, match="exceeds"):
        await fc.wait_turn(IA, "b", pool.saturated, timeout_s=0.5)
    assert fc.queued() == 2 and fc.stats.rejected["deadline"] == 1
    assert fc.expected_wait(RT) == pytest.approx(1.0)  # realtime is not behind interactive
    with pytest.raises(DeadlineExceeded):
        await fc.wait_turn(RT, "b", pool.saturated, timeout_s=0.0)  # already past
    for t in h.tasks.values():
        t.cancel()


async def test_deadline_while_queued(fc):
    with pytest.raises(DeadlineExceeded):
        await fc.wait_turn(IA, "a", lambda: True, timeout_s=0.02)
    assert fc.queued() == 0 and fc.stats.timed_out["deadline"] == 1


async def test_max_wait_gives_resource_exhausted_with_retry_after():
    cfg = FlowConfig(batch=ClassBounds(max_queue=10, max_wait_s=0.02), min_retry_after_ms=100)
    fc = FlowController(cfg)
    with pytest.raises(ResourceExhausted) as e:
        await fc.wait_turn(BA, "a", lambda: True, timeout_s=30.0)
    assert e.value.retry_after_ms >= 100 and e.value.trailers["retry-after-ms"]
    assert fc.queued() == 0 and fc.stats.timed_out["max_wait"] == 1


async def test_class_queue_bound():
    fc = FlowController(FlowConfig(interactive=ClassBounds(max_queue=2, max_wait_s=10)))
    h, pool = Harness(fc), Pool()
    await h.start("i1", IA, "a", pool)
    await h.start("i2", IA, "b", pool)
    with pytest.raises(ResourceExhausted, match="interactive queue is full") as e:
        await fc.wait_turn(IA, "c", pool.saturated, 5.0)
    assert e.value.retry_after_ms >= fc.config.min_retry_after_ms
    await h.start("r1", RT, "c", pool)  # other classes have their own bound
    assert fc.queued() == 3 and fc.stats.rejected["full"] == 1
    for t in h.tasks.values():
        t.cancel()


async def test_batch_is_shed_first():
    fc = FlowController(FlowConfig(max_total=3))
    h, pool = Harness(fc), Pool()
    await h.start("b1", BA, "x", pool)
    await h.start("b2", BA, "y", pool)
    await h.start("i1", IA, "z", pool)
    await h.start("r1", RT, "z", pool)  # full: evicts the newest batch request
    with pytest.raises(ResourceExhausted, match="shed") as e:
        await h.tasks["b2"]
    assert e.value.retry_after_ms >= fc.config.min_retry_after_ms
    assert fc.stats.shed_total == 1 and fc.queued(BA) == 1 and fc.queued(RT) == 1
    with pytest.raises(ResourceExhausted, match="all queues are full"):
        await fc.wait_turn(BA, "w", pool.saturated, 5.0)  # batch never evicts
    await h.start("i2", IA, "w", pool)  # evicts b1
    with pytest.raises(ResourceExhausted, match="shed"):
        await h.tasks["b1"]
    with pytest.raises(ResourceExhausted, match="all queues are full"):
        await fc.wait_turn(RT, "w", pool.saturated, 5.0)  # no batch left to shed
    assert fc.stats.shed_total == 2
    for t in h.tasks.values():
        t.cancel()


async def test_cancelled_waiter_is_removed(fc):
    h, pool = Harness(fc), Pool(capacity=1)
    pool.in_flight = 1
    await h.start("a", IA, "a", pool)
    await h.start("b", IA, "b", pool)
    h.tasks["a"].cancel()
    await spin()
    assert fc.queued() == 1
    await h.free(pool)
    assert h.order == ["b"]


async def test_cancel_in_the_same_step_as_grant_passes_the_slot_on(fc):
    h, pool = Harness(fc), Pool(capacity=1)
    pool.in_flight = 1
    await h.start("a", IA, "a", pool)
    await h.start("b", IA, "b", pool)
    pool.in_flight = 0
    fc.capacity_changed(1)
    await asyncio.sleep(0)  # the pump granted "a"; "a" has not run yet
    h.tasks["a"].cancel()
    await spin()
    assert h.order == ["b"] and fc.queued() == 0


async def test_wait_observer_and_stats():
    seen: list[tuple[SloClass, str, str]] = []
    fc = FlowController(on_wait=lambda c, a, s, o: seen.append((c, a, o)))
    h, pool = Harness(fc), Pool(capacity=1)
    pool.in_flight = 1
    await h.start("a", RT, "ag", pool)
    await h.free(pool)
    assert await h.tasks["a"] >= 0.0
    with pytest.raises(DeadlineExceeded):
        await fc.wait_turn(BA, "bg", pool.saturated, 0.01)
    assert seen == [(RT, "ag", "granted"), (BA, "bg", "deadline")]
    assert fc.stats.granted_total == 1


def test_slo_class_from_proto():
    assert SloClass.from_proto(1) is RT and SloClass.from_proto(3) is BA
    assert SloClass.from_proto(0) is IA and SloClass.from_proto(0, BA) is BA
