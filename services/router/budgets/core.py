"""Budget enforcement on the router's hot path: reserve the request's maximum cost at admission,
settle the actual cost once, never let the settled spend of a period pass the hard limit.

Model (the same in memory and in Redis; `redis_store.py` runs these steps in Lua):
- A *counter* per budget and period (key `{prefix}bud:{name}:{period start ms | life}`) holds
  `spent` (settled micro-USD), `reserved` (sum of live reservations), one entry per live
  reservation (id -> amount, with an expiry), and `orphan` (settled while the counter was lost).
- **reserve**: drops expired reservations, then admits iff for every budget that applies
  `spent + reserved + cost <= limit` (and `spent + reserved < limit`); all counters are charged
  or none. A counter without `spent` is *missing* (new period, lost Redis, restarted router):
  nothing is charged, its spend in the period is read from the ledger source and written with
  set-if-absent (so replicas racing to rebuild it count it once), and the reservation retries.
- **settle** (once per reservation): removes the reservation and adds the actual cost to
  `spent`. A reservation that already expired or was lost still adds its actual cost (the spend
  happened). On a lost counter the cost goes to `orphan`, added when the counter is rebuilt
  (conservative: it may also be in the ledger already).
- **renewal**: a reservation lives `reservation_ttl_s` unless renewed; the replica that made it
  renews all its unsettled reservations every third of the TTL, so a generation longer than the
  TTL keeps its reservation, and one whose router died frees its budget within the TTL. A renewal
  that finds its reservation gone (the store lost it) registers it again.
- **data loss**: an `epoch` key is created with the first rebuild. A replica that saw an epoch
  and finds it gone knows Redis lost state, including other replicas' in-flight reservations;
  it then sets a *hold* (default: the reservation TTL) during which budgeted requests are refused.
  Within it every replica's next renewal has registered its in-flight reservations again, so
  the rebuilt counters hold them before new spend is admitted.
- Soft thresholds are the cost service's: it raises alerts from the ledger, the one place
  that sees every replica's settled spend exactly once.
- GPU time: a request's GPU share is only known when it ends, so it is charged up to a bound
  fixed at admission, and the reservation holds that bound (`GpuTimeEstimate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from services.common.errors import ResourceExhausted, Unavailable
from services.common.pricing import period_bounds, to_us

from .prices import GpuTimeEstimate, PriceTable
from .rules import BudgetRule, BudgetTable, Subjects

log = logging.getLogger("harness.router.budgets")

KEY_GRACE_MS = 86_400_000  # a period's counter outlives the period by a day (late settles)


@dataclass(frozen=True)
class Charge:
    """One budget's counter as charged by one request."""

    key: str
    rule: BudgetRule
    cost: int
    period_start_us: int | None  # None: lifetime
    reset_ms: int | None  # when the period ends (epoch ms); None: lifetime
    ttl_ms: int  # counter expiry from now; 0 = never


@dataclass
class BudgetReservation:
    id: str = ""
    cost: int = 0
    charges: tuple[Charge, ...] = ()
    settled: bool = False
    since_ms: float = 0.0  # when it was admitted
    # Admitted against this router's local share (shared store unreachable): the local
    # reservation, and the shared counters its cost is added to afterwards.
    local: BudgetReservation | None = None
    shared: tuple[Charge, ...] = ()


# Backend answers to a reservation attempt.
OK, OVER, MISSING, HOLD = "ok", "over", "missing", "hold"


@dataclass(frozen=True)
class Attempt:
    status: str
    index: int = -1  # OVER: the budget refused
    spent: int = 0
    reserved: int = 0
    missing: tuple[int, ...] = ()  # MISSING: indices of counters to rebuild
    retry_ms: int = 0  # HOLD
    epoch: str = ""


# spend of `rule` in the period starting at `period_start_us` (None: lifetime), from the ledger;
# None when unknown (then the request is refused with UNAVAILABLE rather than guessed).
LedgerSource = Callable[[BudgetRule, "int | None"], Awaitable["int | None"]]


def _usd(micro: int) -> str:
    return f"${micro / 1_000_000:,.6f}".rstrip("0").rstrip(".")


class BudgetEnforcer(ABC):
    """Shared front of both backends: picks the budgets, prices the request, builds the charges,
    rebuilds missing counters, turns refusals into ResourceExhausted."""

    def __init__(
        self,
        prefix: str = "harness:",
        *,
        timezone: str = "UTC",
        reservation_ttl_s: float = 30.0,
        recovery_hold_s: float | None = None,
        max_hold_s: float = 6 * 3600.0,
        ledger: LedgerSource | None = None,
        clock_ms: Callable[[], float] | None = None,
        fail_open: bool = False,
    ) -> None:
        self._prefix = prefix
        self.tz = ZoneInfo(timezone)
        self.ttl_ms = int(reservation_ttl_s * 1000)
        self.max_hold_ms = max_hold_s * 1000  # longest a reservation is renewed
        self.hold_ms = int((reservation_ttl_s if recovery_hold_s is None else recovery_hold_s) * 1000)
        self._ledger = ledger
        self._clock = clock_ms or (lambda: time.time() * 1000.0)
        self._fail_open = fail_open
        self.table = BudgetTable()
        self.prices = PriceTable()
        self.gpu = GpuTimeEstimate()
        self.epoch = ""  # the store's epoch as last seen ("" = none yet)
        self.rebuilds = 0  # counters this instance rebuilt (tests, metrics)
        self.reregistered = 0  # reservations a renewal found lost and registered again
        # Unix time the cost service was asked for the budgets this copy holds (0: never).
        self.budgets_as_of = 0.0
        self._live: dict[str, BudgetReservation] = {}  # admitted here, not settled yet
        self._renewing: asyncio.Task | None = None
        # The calendar period in force, by period kind: (start us, end ms), reused until its
        # end (working out a period's bounds in the time zone costs more than the rest of a charge).
        self._periods: dict[int, tuple[int, int]] = {}

    def update(self, rules: Iterable[BudgetRule] | None = None, prices: PriceTable | None = None) -> None:
        if rules is not None:
            self.table = BudgetTable(rules)
        if prices is not None:
            self.prices = prices

    def set_ledger(self, ledger: LedgerSource | None) -> None:
        self._ledger = ledger

    def charge(self, rule: BudgetRule, now_ms: float, cost: int) -> Charge:
        bounds = self._period(rule.period, now_ms)
        if bounds is None:
            return Charge(f"{self._prefix}bud:{rule.name}:life", rule, cost, None, None, 0)
        start_us, end_ms = bounds
        key = f"{self._prefix}bud:{rule.name}:{start_us // 1000}"
        return Charge(key, rule, cost, start_us, end_ms, max(1, int(end_ms - now_ms)) + KEY_GRACE_MS)

    def _period(self, period: int, now_ms: float) -> tuple[int, int] | None:
        """(start us, end ms) of the calendar period of this kind holding `now_ms`; None: lifetime."""
        held = self._periods.get(period)
        if held is not None and held[0] <= now_ms * 1000 and now_ms < held[1]:
            return held
        start, end = period_bounds(period, datetime.fromtimestamp(now_ms / 1000, tz=UTC), self.tz)
        if start is None or end is None:
            return None
        held = self._periods[period] = (to_us(start), to_us(end) // 1000)
        return held

    def gpu_bound_s(self, model: str, tokens: int) -> float:
        """GPU seconds a request of `tokens` (prompt + max_tokens) may be charged at most."""
        return self.gpu.bound_s(model, tokens)

    def cost(
        self, model: str, input_tokens: int, output_tokens: int, gpu_type: str = "", gpu_seconds: float = 0.0
    ) -> int:
        """A model call's actual cost: tokens plus its (already bounded) GPU share."""
        return self.prices.cost(model, input_tokens, output_tokens) + self.prices.gpu_cost(
            gpu_type, gpu_seconds
        )

    async def reserve(
        self, subjects: Subjects, model: str, prompt_tokens: int, max_tokens: int
    ) -> BudgetReservation:
        """Reserves the request's maximum cost (tokens, and its GPU-time bound at the highest
        GPU-hour price) against every budget that applies, or refuses with RESOURCE_EXHAUSTED
        naming the budget and when it resets."""
        rules = self.table.applicable(subjects)
        if not rules:
            return BudgetReservation()
        tokens = self.prices.max_cost(model, prompt_tokens, max_tokens)
        gpu_s = self.gpu_bound_s(model, prompt_tokens + max_tokens)
        gpu = math.ceil(gpu_s * self.prices.max_gpu_hour() / 3600)
        return await self.reserve_cost(rules, tokens + gpu)

    async def reserve_tool(self, subjects: Subjects, tool: str) -> BudgetReservation:
        """Reserves one call of `tool` at its price (settle with `prices.tool_cost` or 0)."""
        return await self.reserve_cost(self.table.applicable(subjects), self.prices.tool_cost(tool))

    async def reserve_cost(self, rules: Sequence[BudgetRule], cost: int) -> BudgetReservation:
        if not rules:
            return BudgetReservation()
        now = self._clock()
        charges = tuple(self.charge(r, now, cost) for r in rules)
        rid = uuid.uuid4().hex
        for _ in range(4):
            try:
                a = await self._reserve(charges, rid, int(now + self.ttl_ms), now)
            except Unavailable:
                if self._fail_open:
                    return await self._reserve_unavailable(rules, cost, charges)
                raise
            if a.epoch:
                self.epoch = a.epoch
            if a.status == OK:
                res = BudgetReservation(rid, cost, charges, since_ms=now)
                self._live[rid] = res
                return res
            if a.status == OVER:
                raise self._over(charges[a.index], a, now)
            if a.status == HOLD:
                raise ResourceExhausted(
                    "budgets are paused while their counters recover from a lost budget store "
                    "(reservations in flight at the loss must settle first)",
                    retry_after_ms=max(1, a.retry_ms),
                )
            await self._rebuild([charges[i] for i in a.missing], now)
            now = self._clock()
        raise Unavailable("budget counters could not be rebuilt; retry")

    @property
    def fail_open(self) -> bool:
        return self._fail_open

    @property
    def degraded(self) -> bool:
        """True while the shared store is unreachable (requests use the fallback)."""
        return False

    async def _reserve_unavailable(
        self, rules: Sequence[BudgetRule], cost: int, charges: tuple[Charge, ...]
    ) -> BudgetReservation:
        """Fail-open admission while the store is unreachable (a backend bounds it: see RedisBudgets)."""
        log.warning("budget check skipped (fail-open): store unavailable")
        return BudgetReservation()

    async def _settle_local(self, res: BudgetReservation, actual: int) -> None:  # noqa: B027 - hook
        """Settles a reservation admitted by `_reserve_unavailable` (a backend's)."""

    async def _rebuild(self, charges: list[Charge], now: float) -> None:
        seeds = []
        for c in charges:
            spent = 0
            if self._ledger is not None:
                got = await self._ledger(c.rule, c.period_start_us)
                if got is None:
                    raise Unavailable(
                        f"{c.rule.describe()}: its spend so far is unknown (cost service unreachable); retry"
                    )
                spent = got
            seeds.append(spent)
        rebuilt, epoch = await self._seed(charges, seeds, now)
        self.rebuilds += rebuilt
        if rebuilt:
            log.info("rebuilt %d budget counter(s) from the ledger", rebuilt)
        self.epoch = epoch

    def _over(self, c: Charge, a: Attempt, now: float) -> ResourceExhausted:
        r = c.rule
        if c.reset_ms is None:
            when, retry = "it never resets (lifetime)", None
        else:
            reset = datetime.fromtimestamp(c.reset_ms / 1000, tz=self.tz)
            when, retry = f"it resets at {reset.isoformat()}", max(1, int(c.reset_ms - now))
        return ResourceExhausted(
            f"{r.describe()} would go over its hard limit of {_usd(r.limit_micro_usd)}: spent {_usd(a.spent)}, "
            f"reserved {_usd(a.reserved)}, this request may cost up to {_usd(c.cost)}; {when}",
            retry_after_ms=retry,
        )

    async def settle(self, res: BudgetReservation, actual_micro_usd: int) -> None:
        """Replaces the reservation with the actual cost, once; never raises (hot path `finally`)."""
        if res.settled or not res.charges:
            return
        res.settled = True
        if res.local is not None:
            await self._settle_local(res, max(0, int(actual_micro_usd)))
            return
        # Before the await: a renewal running meanwhile must see it gone (see `renew`).
        self._live.pop(res.id, None)
        try:
            await self._settle(res.charges, res.id, max(0, int(actual_micro_usd)))
        except Exception as e:
            log.warning("budget settle failed (%s); the reservation expires by itself", e)
            return

    @property
    def live(self) -> int:
        """Reservations this instance admitted and has not settled."""
        return len(self._live)

    async def renew(self) -> int:
        """Extends every unsettled reservation of this instance by the TTL; registers again the
        ones the store lost. Returns how many were registered again."""
        now = self._clock()
        # One never settled (a caller's bug) must not hold its budget forever: renewals stop
        # after max_hold_s and the store lets it expire.
        for res in [r for r in self._live.values() if now - r.since_ms > self.max_hold_ms]:
            del self._live[res.id]
            log.error(
                "budget reservation %s unsettled after %.0f s: no longer renewed",
                res.id,
                self.max_hold_ms / 1000,
            )
        if not self._live:
            return 0
        held = list(self._live.values())
        again = await self._renew(held, int(now + self.ttl_ms))
        # A reservation settled while the renewal ran may have been registered again after its
        # settle: take it back out (a settle of 0 removes it and adds nothing).
        lost = 0
        for res in held:
            if res.id not in again:
                continue
            if res.id in self._live:
                lost += 1
            else:
                await self._settle(res.charges, res.id, 0)
        if lost:
            self.reregistered += lost
            log.warning(
                "registered %d in-flight budget reservation(s) again: the budget store had lost them", lost
            )
        return lost

    def start(self) -> None:
        """Starts renewing this instance's reservations every third of the TTL (call on the loop)."""
        if self._renewing is None:
            self._renewing = asyncio.create_task(self._renew_forever(), name="budget-renewal")

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                await self.renew()
            except Exception as e:  # a store outage: reservations live on until their expiry
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    raise asyncio.CancelledError from e  # aclose() asked it to stop
                log.warning("budget reservation renewal failed (%s); retrying", e)

    async def aclose(self) -> None:
        """Stops renewing and releases backend resources."""
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
            self._renewing = None
        await self._close()

    async def _close(self) -> None:  # noqa: B027 - optional hook
        """Releases backend resources (no-op in memory)."""

    @abstractmethod
    async def _reserve(
        self, charges: tuple[Charge, ...], rid: str, expiry_ms: int, now: float
    ) -> Attempt: ...

    @abstractmethod
    async def _seed(self, charges: list[Charge], seeds: list[int], now: float) -> tuple[int, str]:
        """Writes `spent` of counters that are still missing; returns (how many it wrote, epoch)."""

    @abstractmethod
    async def _renew(self, held: list[BudgetReservation], expiry_ms: int) -> set[str]:
        """Sets the expiry of each reservation on each of its counters, registering it again
        where it is gone; returns the ids registered again anywhere."""

    @abstractmethod
    async def _settle(self, charges: tuple[Charge, ...], rid: str, actual: int) -> list[tuple[int, int]]:
        """Per counter (spent before, spent after); before = -1 when the counter was missing."""
