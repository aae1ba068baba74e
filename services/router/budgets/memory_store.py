"""The in-memory budget backend: a single router without Redis (same steps as the Redis scripts)."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from .core import MISSING, OK, OVER, Attempt, BudgetEnforcer


@dataclass
class _Counter:
    spent: int | None = None
    reserved: int = 0
    orphan: int = 0
    live: dict[str, int] = field(default_factory=dict)  # reservation id -> amount
    expiry: dict[str, float] = field(default_factory=dict)  # reservation id -> expiry ms
    # heap of (expiry ms, id); an entry whose expiry is no longer the id's (renewed) is stale
    expiries: list[tuple[float, str]] = field(default_factory=list)
    expires_at: float = 0.0  # 0 = never


class MemoryBudgets(BudgetEnforcer):
    """Counters in this process (a single router without Redis). No awaits inside a decision,
    so each step is atomic under asyncio. A restart loses them; they are rebuilt from the ledger."""

    def __init__(self, prefix: str = "harness:", **kw) -> None:
        super().__init__(prefix, **kw)
        self._c: dict[str, _Counter] = {}
        self._ops = 0

    def _prune(self, c: _Counter, now: float) -> None:
        while c.expiries and c.expiries[0][0] <= now:
            at, rid = heapq.heappop(c.expiries)
            if c.expiry.get(rid) == at:
                self._drop(c, rid)

    @staticmethod
    def _drop(c: _Counter, rid: str) -> None:
        amount = c.live.pop(rid, None)
        c.expiry.pop(rid, None)
        if amount is not None:
            c.reserved -= amount

    @staticmethod
    def _hold(c: _Counter, rid: str, amount: int, expiry_ms: float) -> None:
        c.live[rid] = amount
        c.reserved += amount
        c.expiry[rid] = expiry_ms
        heapq.heappush(c.expiries, (expiry_ms, rid))

    async def _reserve(self, charges, rid, expiry_ms, now) -> Attempt:
        self._sweep(now)
        counters = [self._c.get(ch.key) for ch in charges]
        missing = tuple(i for i, c in enumerate(counters) if c is None or c.spent is None)
        if missing:
            return Attempt(MISSING, missing=missing)
        for i, (ch, c) in enumerate(zip(charges, counters, strict=True)):
            self._prune(c, now)
            total = c.spent + c.reserved
            if total + ch.cost > ch.rule.limit_micro_usd or total >= ch.rule.limit_micro_usd:
                return Attempt(OVER, index=i, spent=c.spent, reserved=c.reserved)
        for ch, c in zip(charges, counters, strict=True):
            self._hold(c, rid, ch.cost, expiry_ms)
            c.expires_at = now + ch.ttl_ms if ch.ttl_ms else 0.0
        return Attempt(OK)

    async def _renew(self, held, expiry_ms) -> set[str]:
        again: set[str] = set()
        for res in held:
            for ch in res.charges:
                c = self._c.setdefault(ch.key, _Counter())
                if res.id in c.live:
                    c.expiry[res.id] = expiry_ms
                    heapq.heappush(c.expiries, (expiry_ms, res.id))
                else:
                    self._hold(c, res.id, ch.cost, expiry_ms)
                    again.add(res.id)
        return again

    async def _seed(self, charges, seeds, now) -> tuple[int, str]:
        n = 0
        for ch, seed in zip(charges, seeds, strict=True):
            c = self._c.setdefault(ch.key, _Counter())
            if c.spent is None:
                c.spent, c.orphan = seed + c.orphan, 0
                c.expires_at = now + ch.ttl_ms if ch.ttl_ms else 0.0
                n += 1
        return n, ""

    async def _settle(self, charges, rid, actual) -> list[tuple[int, int]]:
        out = []
        for ch in charges:
            c = self._c.setdefault(ch.key, _Counter())
            self._drop(c, rid)
            if c.spent is None:
                c.orphan += actual
                out.append((-1, -1))
            else:
                out.append((c.spent, c.spent + actual))
                c.spent += actual
        return out

    def _sweep(self, now: float) -> None:
        self._ops += 1
        if self._ops % 4096 == 0:
            self._c = {k: c for k, c in self._c.items() if not c.expires_at or c.expires_at > now}

    def spent(self, key: str) -> int | None:
        c = self._c.get(key)
        return None if c is None else c.spent
