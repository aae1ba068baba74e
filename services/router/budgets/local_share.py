"""What one router may spend on its own while the shared budget store (Redis) is unreachable.

Failing open without a bound would let every router spend without limit for as long as Redis
is down; failing closed stops all budgeted traffic. In fail-open mode a router enforces, in
memory, its *share* of each budget: limit x share, with the spend so far in the period (from
the ledger) also counted at x share. With `share` <= 1 / number of routers, the routers
together can add at most (limit - spent) during an outage: spend stays within the limit.

Every request still tries Redis first (bounded by the Redis timeout), so the router returns to
the shared counters as soon as Redis answers. A reservation made locally
is settled locally and its actual cost is also added to the shared counter when Redis answers
(so the shared counters do not miss the outage's spend).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace

from services.common.errors import ResourceExhausted

from .core import BudgetReservation, LedgerSource
from .memory_store import MemoryBudgets
from .prices import PriceTable
from .rules import BudgetRule

log = logging.getLogger("harness.router.budgets")


class LocalShare:
    def __init__(self, share: float, *, timezone: str, reservation_ttl_s: float, clock_ms=None) -> None:
        if not 0 < share <= 1:
            raise ValueError("the local budget share must be in (0, 1]")
        self.share = share
        self._local = MemoryBudgets(
            "local:", timezone=timezone, reservation_ttl_s=reservation_ttl_s, clock_ms=clock_ms
        )
        self._scaled: dict[str, BudgetRule] = {}
        self.reservations = 0  # admitted locally (metric)

    def update(self, rules: Iterable[BudgetRule] | None, prices: PriceTable | None) -> None:
        if rules is not None:
            self._scaled = {
                r.name: replace(r, limit_micro_usd=int(r.limit_micro_usd * self.share)) for r in rules
            }
        self._local.update(self._scaled.values() if rules is not None else None, prices)

    def set_ledger(self, ledger: LedgerSource | None) -> None:
        if ledger is None:
            self._local.set_ledger(None)
            return

        async def share_of_spend(rule: BudgetRule, start_us: int | None) -> int | None:
            spent = await ledger(rule, start_us)
            return None if spent is None else int(spent * self.share)

        self._local.set_ledger(share_of_spend)

    async def reserve_cost(self, rules: Sequence[BudgetRule], cost: int) -> BudgetReservation:
        scaled = [self._scaled.get(r.name, replace(r, limit_micro_usd=int(r.limit_micro_usd * self.share)))
                  for r in rules]  # fmt: skip
        try:
            res = await self._local.reserve_cost(scaled, cost)
        except ResourceExhausted as exc:
            raise ResourceExhausted(
                f"the shared budget store is unreachable, so this router enforces its own share "
                f"({self.share:.0%}) of each budget: {exc}",
                retry_after_ms=int(exc.trailers["retry-after-ms"])
                if "retry-after-ms" in exc.trailers
                else None,
            ) from None
        self.reservations += 1
        return BudgetReservation(res.id, res.cost, res.charges, since_ms=res.since_ms, local=res)

    async def settle(self, res: BudgetReservation, actual: int) -> None:
        if res.local is not None:
            await self._local.settle(res.local, actual)

    def start(self) -> None:
        self._local.start()

    async def aclose(self) -> None:
        await self._local.aclose()
