"""SLO-class flow control: where a request waits while every candidate endpoint is saturated.

Order of service: strict priority across classes (realtime, then interactive, then batch);
round-robin across agents inside a class (an agent's own requests stay FIFO), so one chatty
agent cannot starve the others of its class. Each waiter carries its own `is_saturated` check
(its model's candidate endpoints), so a waiter for a busy model never blocks one for an idle
model: the pump skips waiters whose endpoints are still saturated.

Bounds: per class a max queue length and a max wait; all classes together `max_total`. A
request never waits past its gRPC deadline: when the expected wait already exceeds it, it is
rejected at once (DEADLINE_EXCEEDED) without queueing. When the queues are full, batch is shed
first: a realtime/interactive arrival evicts the newest queued batch request (which gets
RESOURCE_EXHAUSTED with retry-after); otherwise the arrival gets RESOURCE_EXHAUSTED.

Router contract: call `wait_turn` before scheduling; call `capacity_changed()` when a dispatch
finishes (slots=1) or pool state changes (slots=None). A granted request should count itself
against its endpoint before its next await, because the pump re-checks saturation one loop
step after each grant.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from services.common.errors import DeadlineExceeded, ResourceExhausted


class SloClass(IntEnum):
    """Values match harness.common.v1.SloClass; lower value = served first."""

    REALTIME = 1
    INTERACTIVE = 2
    BATCH = 3

    @classmethod
    def from_proto(cls, value: int, default: SloClass | None = None) -> SloClass:
        """Maps the proto enum (0 = unspecified -> `default`, interactive unless given)."""
        return cls(value) if value in cls._value2member_map_ else (default or cls.INTERACTIVE)


@dataclass(frozen=True)
class ClassBounds:
    max_queue: int
    max_wait_s: float


@dataclass(frozen=True)
class FlowConfig:
    realtime: ClassBounds = ClassBounds(max_queue=128, max_wait_s=2.0)
    interactive: ClassBounds = ClassBounds(max_queue=512, max_wait_s=15.0)
    batch: ClassBounds = ClassBounds(max_queue=2048, max_wait_s=120.0)
    max_total: int = 2048
    # Prior for the time between grants while queued, before any is observed; 0 = assume none.
    initial_grant_interval_s: float = 0.0
    ewma_alpha: float = 0.2
    # Retry-after bounds for shed/full responses (the estimate is clamped into them).
    min_retry_after_ms: int = 250
    max_retry_after_ms: int = 30_000

    def bounds(self, cls: SloClass) -> ClassBounds:
        return {SloClass.REALTIME: self.realtime, SloClass.INTERACTIVE: self.interactive}.get(cls, self.batch)


# Called once per request that went through the queue: (class, agent, seconds, outcome), outcome
# one of granted, deadline, max_wait, shed, cancelled. The lead maps it to harness_router_queue_seconds.
WaitObserver = Callable[[SloClass, str, float, str], None]


@dataclass(eq=False)
class _Waiter:
    slo_class: SloClass
    agent: str
    is_saturated: Callable[[], bool]
    fut: asyncio.Future[None]
    since: float
    seq: int


@dataclass
class FlowStats:
    """Plain counters for metrics; `queued` per class is `FlowController.queued()`."""

    granted_total: int = 0
    shed_total: int = 0  # queued batch requests evicted for higher classes
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> count (arrivals refused)
    timed_out: Counter[str] = field(default_factory=Counter)  # deadline / max_wait while queued


class _ClassQueue:
    """One class: an ordered ring of agents, each with a FIFO of waiters."""

    def __init__(self) -> None:
        self.agents: OrderedDict[str, deque[_Waiter]] = OrderedDict()
        self.size = 0

    def push(self, w: _Waiter) -> None:
        self.agents.setdefault(w.agent, deque()).append(w)  # a new agent joins the ring's end
        self.size += 1

    def remove(self, w: _Waiter) -> bool:
        q = self.agents.get(w.agent)
        if q is None or w not in q:
            return False
        q.remove(w)
        if not q:
            del self.agents[w.agent]
        self.size -= 1
        return True

    def next_eligible(self) -> _Waiter | None:
        """First waiter in round-robin order whose endpoints have room; rotates its agent."""
        for agent, q in self.agents.items():
            for w in q:
                if not w.is_saturated():
                    self.remove(w)
                    if agent in self.agents:
                        self.agents.move_to_end(agent)
                    return w
        return None

    def newest(self) -> _Waiter | None:
        return max((q[-1] for q in self.agents.values()), key=lambda w: w.seq, default=None)


class FlowController:
    def __init__(
        self,
        config: FlowConfig | None = None,
        *,
        on_wait: WaitObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or FlowConfig()
        self.stats = FlowStats()
        self._on_wait = on_wait
        self._clock = clock
        self._queues = {c: _ClassQueue() for c in SloClass}
        self._seq = 0
        self._budget: float = 0  # grants the pump may still make for the last capacity change
        self._pump_scheduled = False
        self._grant_interval = self.config.initial_grant_interval_s
        self._last_grant: float | None = None  # start of the current busy stretch or last grant

    # -- introspection for metrics and the router -------------------------------------------

    def queued(self, slo_class: SloClass | None = None) -> int:
        if slo_class is None:
            return sum(q.size for q in self._queues.values())
        return self._queues[slo_class].size

    def expected_wait(self, slo_class: SloClass) -> float:
        """Seconds a new arrival of this class would wait: requests served before it times the
        observed time between grants. 0 until a grant under load has been measured."""
        ahead = sum(self._queues[c].size for c in SloClass if c <= slo_class)
        return (ahead + 1) * self._grant_interval

    # -- the hot path ------------------------------------------------------------------------

    async def wait_turn(
        self,
        slo_class: SloClass,
        agent: str,
        is_saturated: Callable[[], bool],
        timeout_s: float | None = None,
    ) -> float:
        """Returns (seconds waited) when the request may be scheduled.

        `timeout_s` is the time left before the gRPC deadline (None = no deadline). Returns at
        once when its endpoints have room and no one of its class or higher is ready to go.
        Raises DeadlineExceeded or ResourceExhausted (with retry_after_ms) per the module doc.
        """
        if not is_saturated() and not self._eligible_at_or_above(slo_class):
            return 0.0
        if timeout_s is not None:
            expected = self.expected_wait(slo_class)
            if timeout_s <= 0 or expected > timeout_s:
                self.stats.rejected["deadline"] += 1
                raise DeadlineExceeded(
                    f"expected queue wait {expected:.3f}s exceeds the {max(timeout_s, 0):.3f}s left "
                    f"before the deadline ({slo_class.name.lower()} class)"
                )
        self._make_room(slo_class)
        w = self._enqueue(slo_class, agent, is_saturated)
        if not is_saturated():  # room now, but others first: let the pump order them
            self.capacity_changed()
        bound = self.config.bounds(slo_class).max_wait_s
        limit = bound if timeout_s is None else min(bound, timeout_s)
        outcome = "cancelled"
        try:
            async with asyncio.timeout(limit):
                await w.fut
            outcome = "granted"
            return self._clock() - w.since
        except TimeoutError:
            by_deadline = timeout_s is not None and timeout_s <= bound
            outcome = "deadline" if by_deadline else "max_wait"
            self.stats.timed_out[outcome] += 1
            if by_deadline:
                raise DeadlineExceeded(f"deadline passed after {limit:.3f}s in the queue") from None
            raise ResourceExhausted(
                f"waited the {slo_class.name.lower()} class maximum of {bound:.3f}s for capacity",
                retry_after_ms=self._retry_after_ms(slo_class),
            ) from None
        except ResourceExhausted:
            outcome = "shed"
            raise
        finally:
            left_queue = self._queues[slo_class].remove(w)  # cancel/timeout before its turn
            if not left_queue and (
                outcome != "granted" and w.fut.done() and not w.fut.cancelled() and w.fut.exception() is None
            ):
                # Granted in the same loop step it was cancelled or timed out: pass the slot on.
                self.capacity_changed(1)
            self._observe(w, outcome)

    def capacity_changed(self, slots: int | None = None) -> None:
        """Wakes waiters whose endpoints have room, in service order: at most `slots` of them
        (one finished dispatch frees one), or as many as fit when None (pool change)."""
        # A pool change (None) lets the pump run until nobody fits; finished dispatches add up.
        self._budget = math.inf if slots is None else self._budget + slots
        if not self._pump_scheduled and self.queued():
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    # -- internals ---------------------------------------------------------------------------

    def _pump(self) -> None:
        # One grant per loop step: the granted task runs (and takes its slot) before the
        # next saturation check, so a pool change cannot over-grant.
        self._pump_scheduled = False
        if self._budget <= 0:
            return
        for c in SloClass:
            w = self._queues[c].next_eligible()
            if w is not None:
                break
        else:
            self._budget = 0  # nobody can use the room now; later changes will call again
            return
        self._grant(w)
        self._budget -= 1
        if self._budget > 0 and self.queued():
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)
        else:
            self._budget = 0

    def _grant(self, w: _Waiter) -> None:
        now = self._clock()
        if self._last_grant is not None:
            a = self.config.ewma_alpha
            self._grant_interval = (1 - a) * self._grant_interval + a * (now - self._last_grant)
        # Measure the next interval from here only while others still wait (a busy stretch).
        self._last_grant = now if self.queued() else None
        self.stats.granted_total += 1
        if not w.fut.done():
            w.fut.set_result(None)

    def _eligible_at_or_above(self, slo_class: SloClass) -> bool:
        return any(
            not w.is_saturated()
            for c in SloClass
            if c <= slo_class
            for q in self._queues[c].agents.values()
            for w in q
        )

    def _make_room(self, slo_class: SloClass) -> None:
        bounds = self.config.bounds(slo_class)
        if self._queues[slo_class].size >= bounds.max_queue:
            self._reject_full(slo_class, f"{slo_class.name.lower()} queue is full ({bounds.max_queue})")
        if self.queued() < self.config.max_total:
            return
        victim = self._queues[SloClass.BATCH].newest() if slo_class != SloClass.BATCH else None
        if victim is None:
            self._reject_full(slo_class, f"all queues are full ({self.config.max_total})")
        self._queues[SloClass.BATCH].remove(victim)
        self.stats.shed_total += 1
        victim.fut.set_exception(
            ResourceExhausted(
                "batch request shed to make room for higher-priority traffic",
                retry_after_ms=self._retry_after_ms(SloClass.BATCH),
            )
        )

    def _reject_full(self, slo_class: SloClass, why: str) -> None:
        self.stats.rejected["full"] += 1
        raise ResourceExhausted(why, retry_after_ms=self._retry_after_ms(slo_class))

    def _enqueue(self, slo_class: SloClass, agent: str, is_saturated: Callable[[], bool]) -> _Waiter:
        self._seq += 1
        loop = asyncio.get_running_loop()
        w = _Waiter(slo_class, agent, is_saturated, loop.create_future(), self._clock(), self._seq)
        if self.queued() == 0:
            self._last_grant = w.since  # a busy stretch starts
        self._queues[slo_class].push(w)
        return w

    def _retry_after_ms(self, slo_class: SloClass) -> int:
        ms = self.expected_wait(slo_class) * 1000
        return int(min(max(ms, self.config.min_retry_after_ms), self.config.max_retry_after_ms))

    def _observe(self, w: _Waiter, outcome: str) -> None:
        if self._on_wait is not None:
            self._on_wait(w.slo_class, w.agent, self._clock() - w.since, outcome)
